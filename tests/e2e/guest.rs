//! Test guests: initramfs images built by `tests/guest/mkinitramfs`, and a hand-made ELF
//! kernel for behaviour Linux cannot be made to show on demand.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{TestFile, repo_root};

/// Builds an uncompressed initramfs whose `/init` is `tests/guest/<init>`.
pub fn initramfs(dir: &Path, init: &str) -> TestFile {
    initramfs_with(dir, init, &[])
}

/// The same, with extra `HOST_PATH:GUEST_PATH` files (executables bring their libraries).
pub fn initramfs_with(dir: &Path, init: &str, extra: &[&str]) -> TestFile {
    let out = dir.join(format!("{init}.cpio"));
    let status = Command::new(repo_root().join("tests/guest/mkinitramfs"))
        .arg(&out)
        .arg(repo_root().join("tests/guest").join(init))
        .args(extra)
        .status()
        .expect("run tests/guest/mkinitramfs");
    assert!(status.success(), "mkinitramfs {init} failed");
    TestFile {
        source: out,
        name: format!("{init}.cpio"),
    }
}

/// The bzImage built beside the vmlinux by `kernels/build.sh`.
pub fn bzimage() -> TestFile {
    let source: PathBuf = crate::kernel().with_file_name("bzImage");
    assert!(
        source.is_file(),
        "{} is missing: rebuild with kernels/build.sh",
        source.display()
    );
    TestFile {
        source,
        name: "bzImage".into(),
    }
}

/// An ELF64 "kernel" with a PVH entry note whose code is `code`, loaded at 1 MiB.
pub fn pvh_elf(code: &[u8]) -> Vec<u8> {
    const LOAD_ADDR: u64 = 0x10_0000;
    let ehdr_size = 64u64;
    let phdr_size = 56u64;
    // The PVH note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18), 4-byte entry.
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&18u32.to_le_bytes());
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(LOAD_ADDR as u32).to_le_bytes());
    let note_off = ehdr_size + 2 * phdr_size;
    let code_off = (note_off + note.len() as u64).next_multiple_of(16);

    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF");
    elf.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    elf.extend_from_slice(&ehdr_size.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(ehdr_size as u16).to_le_bytes());
    elf.extend_from_slice(&(phdr_size as u16).to_le_bytes());
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    let phdr = |elf: &mut Vec<u8>, kind: u32, off: u64, addr: u64, size: u64| {
        elf.extend_from_slice(&kind.to_le_bytes());
        elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
        elf.extend_from_slice(&off.to_le_bytes());
        elf.extend_from_slice(&addr.to_le_bytes());
        elf.extend_from_slice(&addr.to_le_bytes());
        elf.extend_from_slice(&size.to_le_bytes());
        elf.extend_from_slice(&size.to_le_bytes());
        elf.extend_from_slice(&4u64.to_le_bytes());
    };
    phdr(&mut elf, 1, code_off, LOAD_ADDR, code.len() as u64); // PT_LOAD
    phdr(&mut elf, 4, note_off, 0, note.len() as u64); // PT_NOTE
    elf.extend_from_slice(&note);
    elf.resize(code_off as usize, 0);
    elf.extend_from_slice(code);
    elf
}

/// `tests/guest/udp_echo.rs` built static (so that it runs in the busybox image), once
/// per test process.
pub fn udp_echo() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| build_static("udp_echo.rs", "udp-echo"))
}

/// `tests/guest/spoof_frame.rs` built static, once per test process.
pub fn spoof_frame() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| build_static("spoof_frame.rs", "spoof-frame"))
}

/// `tests/guest/vsock_flood.rs` built static, once per test process.
pub fn vsock_flood() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| build_static("vsock_flood.rs", "vsock-flood"))
}

/// `tests/guest/SOURCE` built static as `NAME` in a temporary directory of its own.
fn build_static(source: &str, name: &str) -> PathBuf {
    let dir = tempfile::tempdir()
        .expect("create a temporary directory")
        .keep();
    let out = dir.join(name);
    let status = Command::new("rustc")
        .args([
            "--edition",
            "2024",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(&out)
        .arg(repo_root().join("tests/guest").join(source))
        .status()
        .expect("run rustc");
    assert!(status.success(), "building tests/guest/{source} failed");
    out
}

/// The busybox test rootfs (`tests/guest/mkrootfs`, plus `/bin/udp-echo`,
/// `/bin/spoof-frame`, `/bin/vsock-flood` and `/srv/data/seed`) packed as a
/// `docker save` tarball named `busybox:latest` (`tests/guest/mkimage`), in `dir`.
pub fn busybox_image(dir: &Path) -> PathBuf {
    let tree = dir.join("rootfs");
    let tar = dir.join("busybox.tar");
    let ok = Command::new(repo_root().join("tests/guest/mkrootfs"))
        .arg(&tree)
        .status()
        .is_ok_and(|s| s.success())
        && std::fs::copy(udp_echo(), tree.join("bin/udp-echo")).is_ok()
        && std::fs::copy(spoof_frame(), tree.join("bin/spoof-frame")).is_ok()
        && std::fs::copy(vsock_flood(), tree.join("bin/vsock-flood")).is_ok()
        // Content a new volume at /srv/data is filled with, owned by app (1000).
        && std::fs::create_dir_all(tree.join("srv/data")).is_ok()
        && std::fs::write(tree.join("srv/data/seed"), "seeded\n").is_ok()
        && Command::new("chown")
            .args(["-R", "1000:1000"])
            .arg(tree.join("srv/data"))
            .status()
            .is_ok_and(|s| s.success())
        && Command::new(repo_root().join("tests/guest/mkimage"))
            .arg(&tree)
            .arg(&tar)
            .arg("busybox:latest")
            .status()
            .is_ok_and(|s| s.success());
    assert!(ok, "building the busybox test image failed");
    tar
}

/// The rootfs of [`busybox_image`] (call that first, with the same `dir`) as
/// `volbox:latest`, whose config declares `VOLUME /srv/data`, in `dir/volbox.tar`.
pub fn volume_image(dir: &Path) -> PathBuf {
    let tar = dir.join("volbox.tar");
    let ok = Command::new(repo_root().join("tests/guest/mkimage"))
        .arg(dir.join("rootfs"))
        .arg(&tar)
        .args(["volbox:latest", r#"["sh"]"#, r#"{"/srv/data":{}}"#])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "building the volbox test image failed");
    tar
}
