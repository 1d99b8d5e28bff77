//! Everything that talks to KVM: the host's capabilities, the VM file
//! descriptor, and the vCPU threads.

pub(crate) mod emulation;
pub(crate) mod kick;
pub(crate) mod vcpu;
pub(crate) mod vcpu_state;
pub(crate) mod vm;
pub(crate) mod vm_state;

use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

/// Errors from KVM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvmError {
    /// /dev/kvm is absent.
    #[error("cannot open /dev/kvm: it does not exist (is KVM enabled on this host?)")]
    NotPresent,
    /// /dev/kvm exists but this user may not open it.
    #[error(
        "cannot open /dev/kvm: permission denied (the user needs read/write access, e.g. the kvm group)"
    )]
    PermissionDenied,
    /// Any other failure opening /dev/kvm.
    #[error("cannot open /dev/kvm: {0}")]
    Open(io::Error),
    /// The kernel's KVM lacks something Hearth needs.
    #[error("KVM lacks a required capability: {0}")]
    MissingCapability(&'static str),
    /// More vCPUs than KVM allows.
    #[error("{requested} vCPUs requested, but KVM on this host allows at most {max}")]
    TooManyVcpus {
        /// vCPUs asked for.
        requested: u32,
        /// KVM's limit.
        max: usize,
    },
    /// Saved state is malformed.
    #[error("invalid saved KVM state: {0}")]
    BadState(&'static str),
    /// KVM refused to restore an MSR.
    #[error("KVM refused to restore MSR {0:#x}")]
    MsrRefused(u32),
    /// More MSRs or entries than KVM takes in one call.
    #[error("too many entries ({0}) for one KVM call")]
    MsrListTooLong(usize),
    /// An ioctl failed.
    #[error("{op} failed: {source}")]
    Ioctl {
        /// The operation.
        op: &'static str,
        /// The error KVM returned.
        source: kvm_ioctls::Error,
    },
}

impl KvmError {
    pub(crate) fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Self {
        move |source| Self::Ioctl { op, source }
    }
}

/// What Hearth learns about the host's KVM once per process.
#[derive(Debug)]
pub(crate) struct Host {
    pub kvm: Kvm,
    pub cpuid: CpuId,
    /// MSRs KVM lists as saveable (filtered per vCPU when saving).
    pub msr_indices: Vec<u32>,
    pub max_vcpus: usize,
    pub tsc_deadline: bool,
}

static HOST: Mutex<Option<Arc<Host>>> = Mutex::new(None);

const REQUIRED_CAPS: [(Cap, &str); 6] = [
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

fn open_host() -> Result<Host, KvmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::NotPresent,
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
        n => KvmError::Open(io::Error::from_raw_os_error(n)),
    })?;
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCapability(name));
        }
    }
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(KvmError::ioctl("KVM_GET_SUPPORTED_CPUID"))?;
    let msr_indices = kvm
        .get_msr_index_list()
        .map_err(KvmError::ioctl("KVM_GET_MSR_INDEX_LIST"))?
        .as_slice()
        .to_vec();
    Ok(Host {
        msr_indices,
        max_vcpus: kvm.get_max_vcpus(),
        tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
        cpuid,
        kvm,
    })
}

/// Opens /dev/kvm and queries it, once per process; later calls share it.
/// A failure is not cached, so a later call can succeed.
pub(crate) fn host() -> Result<Arc<Host>, KvmError> {
    let mut cached = HOST.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(host) = cached.as_ref() {
        return Ok(host.clone());
    }
    let host = Arc::new(open_host()?);
    *cached = Some(host.clone());
    Ok(host)
}
