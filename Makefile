# Arca: `make demo` runs the main job, `make test` runs every test. Both install what
# they need (Debian packages, the guest kernel build) on a fresh machine.

SHELL := /bin/bash
CARGO ?= cargo
LAB := tests/lab/lab
# The guest kernel, built once per config hash and cached outside git.
KERNEL = $(shell kernels/build.sh)

.PHONY: all build kernel lab-prepare test-deps lint unit e2e test demo bench fuzz clean

all: build

build:
	$(CARGO) build --release --workspace

kernel:
	kernels/build.sh

lab-prepare:
	$(LAB) prepare >/dev/null

# Host tools the end-to-end tests use (ext4 images, vsock peers, a registry and a pusher,
# debootstrap for a real Debian image, setpriv to act as another local user, virtiofsd
# for virtio-fs: built from crates.io with its Debian build dependencies).
VIRTIOFSD_VERSION := 1.14.0
test-deps:
	@command -v socat >/dev/null && command -v mkfs.ext4 >/dev/null && command -v debugfs >/dev/null && \
	  command -v docker-registry >/dev/null && command -v skopeo >/dev/null && \
	  command -v openssl >/dev/null && command -v nft >/dev/null && command -v ip >/dev/null && \
	  command -v wget >/dev/null && command -v debootstrap >/dev/null && command -v setpriv >/dev/null && \
	  command -v htpasswd >/dev/null && command -v podman >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat e2fsprogs docker-registry skopeo openssl ca-certificates iproute2 nftables wget debootstrap util-linux apache2-utils podman; }
	@command -v virtiofsd >/dev/null || { \
	  dpkg-query -W -f='$${Status}\n' libseccomp-dev libcap-ng-dev pkg-config 2>/dev/null | grep -c 'install ok installed' | grep -qx 3 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libseccomp-dev libcap-ng-dev pkg-config; }; \
	  $(CARGO) install virtiofsd --version $(VIRTIOFSD_VERSION) --locked; }

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Unit tests and vmm/tests: no root, and /dev/kvm only where a test says so.
unit:
	$(CARGO) test --workspace --exclude arca-e2e

# End-to-end tests: directly on a host with real KVM, else through the nested lab.
e2e: build kernel lab-prepare test-deps
	ARCA_KERNEL=$(KERNEL) $(CARGO) test -p arca-e2e --tests -- --test-threads=2

test: lint unit e2e

demo: build kernel lab-prepare
	@tools/demo.sh

# Benchmarks print figures beside their peers'; they are never pass/fail tests.
# (test-deps: the storage benchmark's volumes need virtiofsd.)
bench: build kernel lab-prepare test-deps
	tests/bench/boot.sh $(or $(ROUNDS),10)
	tests/bench/devices.sh
	tests/bench/agent.sh $(or $(ROUNDS),10)
	tests/bench/net.sh
	tests/bench/storage.sh
	tests/bench/build.sh

# Fuzz every device target for FUZZ_SECONDS each (default 60). cargo-fuzz needs
# nightly features; RUSTC_BOOTSTRAP=1 unlocks them on the stable toolchain here.
FUZZ_SECONDS ?= 60
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in virtio_blk vsock_packets mmio_transport virtio_net agent_frames vhost_user_replies virtio_fs_eio seccomp_profile go_template registry_answers snapshot_state dockerfile layer_chunks add_archive dns_query compose_file oci_config; do \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done

clean:
	$(CARGO) clean
