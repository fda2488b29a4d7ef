//! `arca-vmm` boots the guest kernel: to init and back, on 1 and 2 vCPUs, through every
//! boot path, and ends with the exit code that says how the guest ended.

use std::process::Output;

use arca_e2e::guest::{bzimage, initramfs, initramfs_with, pvh_elf};
use arca_e2e::{TestFile, assert_success, run_with_kvm, stderr, stdout};

const READY: &str = "ARCA-GUEST-READY";

fn run(files: &[TestFile], script: &str) -> Output {
    run_with_kvm(script, files, 300)
}

#[test]
fn guest_reaches_init_and_its_reboot_ends_the_vmm_with_0() {
    let dir = tempfile::tempdir().unwrap();
    let init = initramfs(dir.path(), "init-hello");
    let out = run(
        &[init],
        r#"arca-vmm --kernel "$ARCA_KERNEL" --initrd "$ARCA_E2E_DIR/init-hello.cpio" --boot-timing; echo "vmm-exit=$?""#,
    );
    assert_success(&out);
    let text = stdout(&out);
    assert!(text.contains(&format!("{READY} cpus=1")), "{text}");
    assert!(text.contains("vmm-exit=0"), "{text}\n{}", stderr(&out));
    // The timeline has every point, the init marker from the guest's debug port write.
    let timing = stderr(&out);
    let line = timing
        .lines()
        .find(|l| l.contains("boot-timing"))
        .expect("a boot-timing line");
    for point in ["first-kvm-run", "first-output", "init", "end"] {
        assert!(
            !line.contains(&format!("{point} -")),
            "{point} is missing: {line}"
        );
    }
}

#[test]
fn guest_with_two_vcpus_sees_two_cpus() {
    let dir = tempfile::tempdir().unwrap();
    let init = initramfs(dir.path(), "init-hello");
    let out = run(
        &[init],
        r#"arca-vmm --cpus 2 --kernel "$ARCA_KERNEL" --initrd "$ARCA_E2E_DIR/init-hello.cpio" --cmdline quiet"#,
    );
    assert_success(&out);
    assert!(
        stdout(&out).contains(&format!("{READY} cpus=2")),
        "{}",
        stdout(&out)
    );
}

#[test]
fn vmlinux_boots_with_the_64_bit_protocol_and_the_bzimage_boots_too() {
    let dir = tempfile::tempdir().unwrap();
    let files = [initramfs(dir.path(), "init-hello"), bzimage()];
    let out = run(
        &files,
        r#"
        arca-vmm --kernel "$ARCA_KERNEL" --boot-protocol linux64 --initrd "$ARCA_E2E_DIR/init-hello.cpio" --cmdline quiet || exit 10
        arca-vmm --kernel "$ARCA_E2E_DIR/bzImage" --cpus 2 --initrd "$ARCA_E2E_DIR/init-hello.cpio" --cmdline quiet || exit 11
        "#,
    );
    assert_success(&out);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("{READY} cpus=1")) && text.contains(&format!("{READY} cpus=2")),
        "{text}"
    );
}

#[test]
fn guest_kernel_panic_ends_the_vmm_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let init = initramfs(dir.path(), "init-panic");
    let out = run(
        &[init],
        r#"arca-vmm --kernel "$ARCA_KERNEL" --initrd "$ARCA_E2E_DIR/init-panic.cpio" --console file:/tmp/console.log; echo "vmm-exit=$?"; grep -c 'Kernel panic' /tmp/console.log"#,
    );
    assert_success(&out);
    assert_eq!(stdout(&out), "vmm-exit=2\n1\n", "stderr:\n{}", stderr(&out));
    assert!(
        stderr(&out).contains("arca-vmm: guest kernel panicked"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn guest_triple_fault_ends_the_vmm_with_3() {
    // A PVH "kernel" that executes ud2 with an empty IDT: #UD, #GP, #DF, shutdown.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ud2.elf");
    std::fs::write(&path, pvh_elf(&[0x0f, 0x0b])).unwrap();
    let out = run(
        &[TestFile {
            source: path,
            name: "ud2.elf".into(),
        }],
        r#"arca-vmm --kernel "$ARCA_E2E_DIR/ud2.elf" --cpus 2; echo "vmm-exit=$?""#,
    );
    assert_success(&out);
    assert_eq!(stdout(&out), "vmm-exit=3\n", "stderr:\n{}", stderr(&out));
    assert!(
        stderr(&out).contains("vCPU 0 triple-faulted"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_configuration_is_refused_with_a_clear_message_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a kernel at all").unwrap();
    let config = dir.path().join("vm.json");
    std::fs::write(&config, r#"{"kernel": "/nonexistent", "vcpus": 2}"#).unwrap();
    let files = [
        TestFile {
            source: junk,
            name: "junk".into(),
        },
        TestFile {
            source: config,
            name: "vm.json".into(),
        },
    ];
    let out = run(
        &files,
        r#"
        try() { "$@" >/dev/null 2>err; echo "exit=$? $(cat err)"; }
        try arca-vmm --kernel /nonexistent/vmlinux
        try arca-vmm --kernel "$ARCA_KERNEL" --memory 0
        try arca-vmm --kernel "$ARCA_KERNEL" --memory 99999999999
        try arca-vmm --kernel "$ARCA_KERNEL" --cpus 64
        try arca-vmm --kernel "$ARCA_KERNEL" --console serial
        try arca-vmm --config "$ARCA_E2E_DIR/vm.json"
        try arca-vmm --kernel "$ARCA_E2E_DIR/junk"
        try arca-vmm --kernel "$ARCA_KERNEL" --initrd "$ARCA_E2E_DIR/junk" --memory 32 --cmdline "$(head -c 5000 /dev/zero | tr '\0' x)"
        try arca-vmm --kernel "$ARCA_KERNEL" --fs tag=vol
        try arca-vmm --kernel "$ARCA_KERNEL" --fs tag=a-tag-longer-than-thirty-six-bytes-xx,socket=/tmp
        try arca-vmm --kernel "$ARCA_KERNEL" --fs tag=v,socket=/tmp --fs tag=v,socket=/tmp
        try arca-vmm --kernel "$ARCA_KERNEL" --fs tag=vol,socket=/nonexistent/vfs.sock
        try arca-vmm --kernel "$ARCA_KERNEL" --fs tag=vol,socket="$ARCA_E2E_DIR/junk"
        "#,
    );
    assert_success(&out);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let expect = [
        "The kernel /nonexistent/vmlinux does not exist or is not a file",
        "Invalid memory size 0 MiB",
        "Invalid memory size 99999999999 MiB",
        "Invalid vCPU count 64",
        "Invalid console \"serial\"",
        "unknown field `vcpus`",
        "is not a kernel Arca can boot: expected an ELF vmlinux or a bzImage",
        "Invalid kernel command line",
        "Invalid virtio-fs device \"tag=vol\": use tag=NAME,socket=PATH[,queue-size=N]",
        "Invalid virtio-fs tag \"a-tag-longer-than-thirty-six-bytes-xx\": use 1 to 36 bytes",
        "The virtio-fs tag \"v\" is given twice",
        "The virtio-fs socket /nonexistent/vfs.sock does not exist",
        "Cannot connect to the virtio-fs backend socket",
    ];
    assert_eq!(lines.len(), expect.len(), "{lines:#?}");
    for (line, want) in lines.iter().zip(expect) {
        assert!(line.starts_with("exit=1 arca-vmm: error: "), "{line}");
        assert!(line.contains(want), "{line:?} should say {want:?}");
    }
}

#[test]
fn guest_reads_and_writes_an_ext4_disk_and_a_read_only_disk_stays_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    std::fs::create_dir(&content).unwrap();
    std::fs::write(content.join("hello.txt"), "hello from the host\n").unwrap();
    let image = |name: &str| {
        let path = dir.path().join(name);
        let status = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&content)
            .arg(&path)
            .arg("8M")
            .stdout(std::process::Stdio::null())
            .status()
            .expect("mkfs.ext4 (e2fsprogs) runs");
        assert!(status.success());
        TestFile {
            source: path,
            name: name.into(),
        }
    };
    let ro_image = image("ro.ext4");
    let ro_before = std::fs::read(&ro_image.source).unwrap();
    let files = [
        initramfs(dir.path(), "init-disk"),
        image("rw.ext4"),
        ro_image,
        TestFile {
            source: "/usr/sbin/debugfs".into(),
            name: "debugfs".into(),
        },
    ];
    let out = run(
        &files,
        r#"
        cd "$ARCA_E2E_DIR"
        md5sum ro.ext4 > ro.md5
        arca-vmm --kernel "$ARCA_KERNEL" --initrd init-disk.cpio --cmdline quiet \
            --disk rw.ext4,serial=arca-rw --disk ro.ext4,ro || exit 10
        echo "HOST: $(./debugfs -R 'cat /written.txt' rw.ext4 2>/dev/null)"
        md5sum -c ro.md5 >/dev/null && echo "HOST: ro image unchanged"
        "#,
    );
    assert_success(&out);
    let text = stdout(&out);
    for want in [
        "DISK: vda says: hello from the host",
        "DISK: vdb says: hello from the host",
        "DISK: vdb ro flag: 1",
        "DISK: raw write to vdb refused",
        "DISK: vda serial: arca-rw",
        "HOST: written by the guest",
        "HOST: ro image unchanged",
    ] {
        assert!(
            text.contains(want),
            "missing {want:?} in:\n{text}\nstderr:\n{}",
            stderr(&out)
        );
    }
    assert!(!text.contains("failed"), "{text}");
    // In host mode the image on this side is the one the VM used.
    if arca_e2e::runner() == arca_e2e::Runner::Host {
        assert_eq!(std::fs::read(&files[2].source).unwrap(), ro_before);
    }
}

#[test]
fn host_and_guest_talk_over_vsock_in_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let socat = TestFile {
        source: "/usr/bin/socat".into(),
        name: "socat".into(),
    };
    let init = initramfs_with(dir.path(), "init-vsock", &["/usr/bin/socat:/bin/socat"]);
    let out = run(
        &[init, socat],
        r#"
        cd "$ARCA_E2E_DIR"
        export PATH="$PWD:$PATH"
        S=/tmp/arca-vsock-$$.sock
        # Guest-to-host: a listener on <uds>_6000 before the guest starts.
        socat -u UNIX-LISTEN:${S}_6000 CREATE:from-guest.bin &
        arca-vmm --kernel "$ARCA_KERNEL" --initrd init-vsock.cpio --memory 256 --cmdline quiet \
            --vsock cid=3,uds=$S > console.log 2>&1 &
        vmm=$!
        head -c 67108864 /dev/urandom > data.bin
        # Host-to-guest: retry until the guest's echo server listens.
        for i in $(seq 200); do
            if [ -S "$S" ]; then
                { printf 'CONNECT 5000\n'; cat data.bin; } | socat -t 120 - UNIX-CONNECT:$S > echo.out 2>/dev/null
                head -c 3 echo.out | grep -q OK && break
            fi
            sleep 0.2
        done
        echo "HOST: reply $(head -n 1 echo.out | cut -c1-3)"
        [ "$(tail -n +2 echo.out | md5sum)" = "$(md5sum < data.bin)" ] && echo "HOST: 64 MiB echoed intact"
        printf 'CONNECT 5001\n' | socat -t 5 - UNIX-CONNECT:$S > /dev/null
        wait $vmm; echo "HOST: vmm exit $?"
        wait
        grep VSOCK console.log
        echo "HOST: received md5 $(md5sum < from-guest.bin | cut -d' ' -f1)"
        test ! -e "$S" && echo "HOST: socket removed"
        "#,
    );
    assert_success(&out);
    let text = stdout(&out);
    for want in [
        "HOST: reply OK ",
        "HOST: 64 MiB echoed intact",
        "HOST: vmm exit 0",
        "VSOCK: sent to host",
        "VSOCK: host said done",
        "HOST: socket removed",
    ] {
        assert!(
            text.contains(want),
            "missing {want:?} in:\n{text}\nstderr:\n{}",
            stderr(&out)
        );
    }
    let md5_of = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
            .map(str::to_owned)
            .expect(prefix)
    };
    assert_eq!(
        md5_of("VSOCK: guest file md5 "),
        md5_of("HOST: received md5 "),
        "{text}"
    );
}

#[test]
fn guest_mounts_a_host_directory_over_virtio_fs_and_survives_virtiofsd_dying() {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v virtiofsd"])
        .output()
        .ok()
        .filter(|o| o.status.success());
    let Some(found) = found else {
        eprintln!("SKIP: virtiofsd is needed (make test-deps installs it)");
        return;
    };
    let virtiofsd = std::path::PathBuf::from(stdout(&found).trim());
    let dir = tempfile::tempdir().unwrap();
    let files = [
        initramfs(dir.path(), "init-fs"),
        TestFile {
            source: virtiofsd,
            name: "virtiofsd".into(),
        },
    ];
    let out = run(
        &files,
        r#"
        cd "$ARCA_E2E_DIR"
        mkdir -p shared
        echo "hello from the host" > shared/hello.txt
        S=/tmp/arca-vfs-$$.sock
        # virtiofsd's own sandbox (namespaces); cache never: every guest access is a
        # request, so the guest notices the backend's death at its next one.
        ./virtiofsd --socket-path $S --shared-dir "$PWD/shared" --sandbox namespace \
            --cache never > virtiofsd.log 2>&1 &
        vfs=$!
        for i in $(seq 100); do [ -S $S ] && break; sleep 0.1; done
        arca-vmm --kernel "$ARCA_KERNEL" --initrd init-fs.cpio --cmdline quiet \
            --fs tag=vol,socket=$S > console.log 2> vmm.err &
        vmm=$!
        for i in $(seq 600); do [ -e shared/from-guest.txt ] && break; sleep 0.1; done
        echo "HOST: guest wrote: $(cat shared/from-guest.txt)"
        echo "HOST: owner and mode: $(stat -c '%u:%g %a' shared/from-guest.txt)"
        kill -9 $vfs
        wait $vmm; echo "HOST: vmm exit $?"
        grep '^FS:' console.log
        cat vmm.err
        "#,
    );
    assert_success(&out);
    let text = stdout(&out);
    for want in [
        "FS: mounted",
        "FS: host file says: hello from the host",
        "FS: mounted again after a reset: hello from the host",
        "FS: wrote from-guest.txt",
        "HOST: guest wrote: written by the guest",
        "HOST: owner and mode: 1234:5678 640",
        "FS: after the backend died: cat: can't open '/mnt/vol/hello.txt': Input/output error",
        "can't create /mnt/vol/late.txt: Input/output error",
        "arca-vmm: virtio-fs \"vol\": the backend is gone",
        "HOST: vmm exit 0",
    ] {
        assert!(
            text.contains(want),
            "missing {want:?} in:\n{text}\nstderr:\n{}",
            stderr(&out)
        );
    }
}
