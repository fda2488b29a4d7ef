//! Can this host's KVM run a standard Linux guest? The answer, with the reason when it
//! cannot, for `arca-vmm --check-kvm` and for every command that is about to boot a VM.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use devices::bus::{Bus, BusDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::vstate::kvm::{Kvm, KvmError};
use crate::vstate::vcpu::{IoBuses, VcpuError, VcpuEvent};
use crate::vstate::vm::{Vm, VmError};

/// Where the nested lab lives, for messages that send users there.
const LAB_HINT: &str = "on a host like this, run Arca inside the nested KVM lab (tests/lab/lab)";

/// A host KVM that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsableKvm {
    /// The KVM device that was checked.
    pub device: PathBuf,
    /// `KVM_GET_API_VERSION`.
    pub api_version: i32,
    /// The KVM module the host loaded (`kvm_intel`, `kvm_amd`), when sysfs names one.
    pub module: Option<&'static str>,
}

/// Why this host's KVM cannot run a standard guest.
#[derive(Debug, thiserror::Error)]
pub enum KvmProbeError {
    /// There is no KVM device.
    #[error(
        "{0} does not exist: this host has no KVM (enable VT-x/AMD-V or nested virtualization and load kvm_intel or kvm_amd); {LAB_HINT}"
    )]
    NoDevice(PathBuf),
    /// The device exists but this user may not open it.
    #[error(
        "Permission denied opening {0}: add this user to the group that owns it (usually `kvm`) or run as root"
    )]
    PermissionDenied(PathBuf),
    /// Opening the device failed for another reason.
    #[error("Cannot use the KVM device")]
    Open(#[source] KvmError),
    /// The host KVM is kvm_pvm, which only runs PVM-enlightened guests.
    #[error(
        "Host KVM is kvm_pvm (Pagetable-based Virtual Machine, no VT-x/AMD-V): it emulates a standard guest kernel's ring-0 code and cannot boot it; {LAB_HINT}"
    )]
    Pvm,
    /// API version or a capability is missing.
    #[error("Host KVM is too old or too limited")]
    Requirements(#[source] KvmError),
    /// The test guest could not be set up.
    #[error("Cannot set up a test VM")]
    TestVm(#[source] VmError),
    /// The test guest did not run as it must.
    #[error("A test guest did not run")]
    TestVcpu(#[source] VcpuError),
    /// The test guest ran but did something else than its program says.
    #[error("A test guest misbehaved: {0}")]
    TestGuest(String),
}

/// Opens the KVM device at `device` and checks it the quick way: not kvm_pvm (judged
/// from the sysfs tree at `sys`), API version, capabilities. This is what every boot does.
pub fn open_checked(device: &Path, sys: &Path) -> Result<Kvm, KvmProbeError> {
    let kvm = Kvm::open(device).map_err(|e| classify_open_error(device, e))?;
    if sys.join("module/kvm_pvm").exists() {
        return Err(KvmProbeError::Pvm);
    }
    kvm.check_requirements()
        .map_err(KvmProbeError::Requirements)?;
    Ok(kvm)
}

/// Checks the KVM device at `device`, reading module facts from the sysfs tree at `sys`
/// (normally `/dev/kvm` and `/sys`), and finally runs a tiny guest through `KVM_RUN`.
pub fn probe(device: &Path, sys: &Path) -> Result<UsableKvm, KvmProbeError> {
    let kvm = open_checked(device, sys)?;
    run_test_guest(&kvm)?;
    let module = ["kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| sys.join("module").join(m).exists());
    Ok(UsableKvm {
        device: device.to_owned(),
        api_version: kvm.api_version(),
        module,
    })
}

/// Probes `/dev/kvm` with the real `/sys`.
pub fn probe_host() -> Result<UsableKvm, KvmProbeError> {
    probe(Path::new("/dev/kvm"), Path::new("/sys"))
}

fn classify_open_error(device: &Path, err: KvmError) -> KvmProbeError {
    match &err {
        KvmError::Open { source, .. } if source.kind() == ErrorKind::NotFound => {
            KvmProbeError::NoDevice(device.to_owned())
        }
        KvmError::Open { source, .. } if source.kind() == ErrorKind::PermissionDenied => {
            KvmProbeError::PermissionDenied(device.to_owned())
        }
        _ => KvmProbeError::Open(err),
    }
}

/// Where the test program sits; real mode reaches it with CS = 0.
const TEST_CODE_ADDR: u16 = 0x1000;
/// The port the test program writes to.
const TEST_PORT: u16 = 0x3f0;
/// The byte it writes: the sum of its two immediates, so KVM must really execute it.
const TEST_VALUE: u8 = 0x2a;

/// `mov al, 0x28; add al, 0x02; out 0x3f0 via dx; hlt`.
const TEST_PROGRAM: &[u8] = &[
    0xb0, 0x28, // mov al, 0x28
    0x04, 0x02, // add al, 0x02
    0xba, 0xf0, 0x03, // mov dx, 0x3f0
    0xee, // out dx, al
    0xf4, // hlt
];

/// Records the bytes written to the test port.
#[derive(Debug, Default)]
struct PortRecorder(Vec<u8>);

impl BusDevice for PortRecorder {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        self.0.extend_from_slice(data);
    }
}

fn run_test_guest(kvm: &Kvm) -> Result<(), KvmProbeError> {
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)])
        .map_err(|e| KvmProbeError::TestGuest(format!("cannot allocate guest memory: {e}")))?;
    memory
        .write_slice(TEST_PROGRAM, GuestAddress(u64::from(TEST_CODE_ADDR)))
        .map_err(|e| KvmProbeError::TestGuest(format!("cannot load the test program: {e}")))?;
    let vm = Vm::new(kvm).map_err(KvmProbeError::TestVm)?;
    vm.register_memory(&memory).map_err(KvmProbeError::TestVm)?;
    let mut vcpu = vm
        .create_vcpu(0, Arc::from([]))
        .map_err(KvmProbeError::TestVcpu)?;
    vcpu.setup_real_mode(TEST_CODE_ADDR)
        .map_err(KvmProbeError::TestVcpu)?;

    let recorder = Arc::new(Mutex::new(PortRecorder::default()));
    let mut pio = Bus::new();
    pio.insert(recorder.clone(), u64::from(TEST_PORT), 1)
        .map_err(|e| KvmProbeError::TestGuest(e.to_string()))?;
    let buses = IoBuses {
        pio,
        ..Default::default()
    };
    let event = vcpu.run(&buses).map_err(KvmProbeError::TestVcpu)?;
    if event != VcpuEvent::Halted {
        return Err(KvmProbeError::TestGuest(format!(
            "expected hlt, got {event:?}"
        )));
    }
    let written = recorder.lock().map(|r| r.0.clone()).unwrap_or_default();
    if written != [TEST_VALUE] {
        return Err(KvmProbeError::TestGuest(format!(
            "expected the byte {TEST_VALUE:#x} on port {TEST_PORT:#x}, saw {written:x?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_says_there_is_no_kvm_and_points_to_the_lab() {
        let dir = tempfile::tempdir().unwrap();
        let err = probe(&dir.path().join("kvm"), dir.path()).unwrap_err();
        assert!(matches!(err, KvmProbeError::NoDevice(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("does not exist") && msg.contains("tests/lab/lab"),
            "{msg}"
        );
    }

    #[test]
    fn permission_errors_name_the_kvm_group() {
        let source = std::io::Error::from_raw_os_error(libc::EACCES);
        let err = classify_open_error(
            Path::new("/dev/kvm"),
            KvmError::Open {
                path: "/dev/kvm".into(),
                source,
            },
        );
        assert!(matches!(err, KvmProbeError::PermissionDenied(_)));
        assert!(err.to_string().contains("`kvm`"));
    }

    #[test]
    fn other_open_errors_keep_their_cause() {
        let dir = tempfile::tempdir().unwrap();
        // A directory opens with EISDIR: neither missing nor forbidden.
        let err = probe(dir.path(), dir.path()).unwrap_err();
        let KvmProbeError::Open(KvmError::Open { source, .. }) = &err else {
            panic!("unexpected {err:?}");
        };
        assert_eq!(source.raw_os_error(), Some(libc::EISDIR));
    }

    #[test]
    fn pvm_host_is_refused_when_the_device_opens() {
        let sys = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(sys.path().join("module/kvm_pvm")).unwrap();
        // Any openable character device stands in for /dev/kvm: the PVM check comes
        // before any KVM ioctl.
        match probe(Path::new("/dev/null"), sys.path()) {
            Err(KvmProbeError::Pvm) => {}
            other => panic!("expected the PVM verdict, got {other:?}"),
        }
        assert!(KvmProbeError::Pvm.to_string().contains("cannot boot"));
    }

    #[test]
    fn test_program_writes_its_value_then_halts() {
        // mov al, a; add al, b: the value on the port is a + b.
        assert_eq!(TEST_PROGRAM[1].wrapping_add(TEST_PROGRAM[3]), TEST_VALUE);
        assert_eq!(
            u16::from_le_bytes([TEST_PROGRAM[5], TEST_PROGRAM[6]]),
            TEST_PORT
        );
        assert_eq!(TEST_PROGRAM.last(), Some(&0xf4));
    }
}
