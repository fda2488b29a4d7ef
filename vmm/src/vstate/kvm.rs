//! The KVM system handle (`/dev/kvm`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kvm_ioctls::Cap;

/// The one KVM API version there has ever been.
pub const KVM_API_VERSION: i32 = 12;

/// Capabilities the VMM cannot work without, with the names the kernel documents.
pub const REQUIRED_CAPABILITIES: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::SetIdentityMapAddr, "KVM_CAP_SET_IDENTITY_MAP_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// Errors of the KVM system handle.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// The device path holds a NUL byte.
    #[error("Invalid KVM device path {0:?}")]
    InvalidPath(PathBuf),
    /// `open(2)` of the KVM device failed.
    #[error("Cannot open {path}")]
    Open {
        /// The device path.
        path: PathBuf,
        /// What `open(2)` said.
        #[source]
        source: std::io::Error,
    },
    /// `KVM_GET_API_VERSION` answered something other than 12.
    #[error("KVM API version is {0}, but Arca needs version {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// A system ioctl failed.
    #[error("{what} failed")]
    Ioctl {
        /// The ioctl.
        what: &'static str,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A capability in [`REQUIRED_CAPABILITIES`] is missing.
    #[error("Host KVM lacks {0}")]
    MissingCapability(&'static str),
}

/// An open `/dev/kvm`.
#[derive(Debug)]
pub struct Kvm {
    fd: kvm_ioctls::Kvm,
}

impl Kvm {
    /// Opens the KVM device at `path` (normally `/dev/kvm`).
    pub fn open(path: &Path) -> Result<Self, KvmError> {
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| KvmError::InvalidPath(path.to_owned()))?;
        let fd = kvm_ioctls::Kvm::new_with_path(&c_path).map_err(|e| KvmError::Open {
            path: path.to_owned(),
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        Ok(Self { fd })
    }

    /// The API version the host reports.
    pub fn api_version(&self) -> i32 {
        self.fd.get_api_version()
    }

    /// Checks the API version and every capability in [`REQUIRED_CAPABILITIES`].
    pub fn check_requirements(&self) -> Result<(), KvmError> {
        let version = self.api_version();
        if version != KVM_API_VERSION {
            return Err(KvmError::ApiVersion(version));
        }
        for (cap, name) in REQUIRED_CAPABILITIES {
            if !self.fd.check_extension(*cap) {
                return Err(KvmError::MissingCapability(name));
            }
        }
        Ok(())
    }

    /// Whether KVM emulates the LAPIC's TSC-deadline timer mode.
    pub fn has_tsc_deadline_timer(&self) -> bool {
        self.fd.check_extension(Cap::TscDeadlineTimer)
    }

    /// The CPUID entries KVM can give a guest on this host.
    pub fn supported_cpuid(&self) -> Result<Vec<kvm_bindings::kvm_cpuid_entry2>, KvmError> {
        self.fd
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map(|cpuid| cpuid.as_slice().to_vec())
            .map_err(|e| KvmError::Ioctl {
                what: "KVM_GET_SUPPORTED_CPUID",
                source: e,
            })
    }

    /// The MSRs KVM can save and restore on this host (`KVM_GET_MSR_INDEX_LIST`).
    pub fn msr_index_list(&self) -> Result<Vec<u32>, KvmError> {
        self.fd
            .get_msr_index_list()
            .map(|list| list.as_slice().to_vec())
            .map_err(|e| KvmError::Ioctl {
                what: "KVM_GET_MSR_INDEX_LIST",
                source: e,
            })
    }

    pub(crate) fn fd(&self) -> &kvm_ioctls::Kvm {
        &self.fd
    }
}
