//! Saving and restoring a vCPU's KVM state, in the order KVM needs.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, Xsave,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use super::KvmError;

const MSR_IA32_TSC: u32 = 0x10;
const XSAVE_LEGACY_SIZE: usize = std::mem::size_of::<kvm_xsave>();

/// The XSAVE area: the legacy 4 KiB region and, where the host's KVM has
/// `KVM_CAP_XSAVE2` with a larger area (e.g. AMX), the rest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct XsaveState {
    region: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    extra: Vec<u32>,
}

/// Everything KVM keeps about one vCPU.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: XsaveState,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub vcpu_events: kvm_vcpu_events,
    #[serde(default)]
    pub tsc_khz: Option<u32>,
}

/// Reads the MSRs in `indices` that this vCPU can save. KVM stops a
/// KVM_GET_MSRS batch at the first MSR it cannot read; that one is left
/// out and the rest are read again. Returns the values and the indices
/// that worked.
pub(crate) fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<(Vec<kvm_msr_entry>, Vec<u32>), KvmError> {
    let mut wanted: Vec<u32> = indices.to_vec();
    // The TSC first, so that restoring it does not disturb MSRs that
    // depend on it (e.g. the TSC deadline).
    if let Some(pos) = wanted.iter().position(|&i| i == MSR_IA32_TSC) {
        let tsc = wanted.remove(pos);
        wanted.insert(0, tsc);
    }
    loop {
        let entries: Vec<kvm_msr_entry> = wanted
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| KvmError::MsrListTooLong(entries.len()))?;
        let n = fd.get_msrs(&mut msrs).map_err(KvmError::ioctl("KVM_GET_MSRS"))?;
        if n >= wanted.len() {
            return Ok((msrs.as_slice().to_vec(), wanted));
        }
        wanted.remove(n);
    }
}

fn save_xsave(fd: &VcpuFd, xsave_size: usize) -> Result<XsaveState, KvmError> {
    if xsave_size <= XSAVE_LEGACY_SIZE {
        let x = fd.get_xsave().map_err(KvmError::ioctl("KVM_GET_XSAVE"))?;
        return Ok(XsaveState {
            region: x.region.to_vec(),
            extra: Vec::new(),
        });
    }
    let fam_len = (xsave_size - XSAVE_LEGACY_SIZE).div_ceil(4);
    let mut x = Xsave::new(fam_len).map_err(|_| KvmError::BadState("the XSAVE area is too large"))?;
    // SAFETY: `x` was allocated for `xsave_size` bytes, the size KVM_CAP_XSAVE2
    // reported for this VM, so KVM_GET_XSAVE2 writes inside it.
    unsafe { fd.get_xsave2(&mut x) }.map_err(KvmError::ioctl("KVM_GET_XSAVE2"))?;
    Ok(XsaveState {
        region: x.as_fam_struct_ref().xsave.region.to_vec(),
        extra: x.as_slice().to_vec(),
    })
}

/// Restores the XSAVE area. `xsave_size` is this VM's KVM_CAP_XSAVE2 size
/// (0 without the capability): KVM_SET_XSAVE reads that many bytes, so a
/// saved area any smaller is refused.
fn restore_xsave(fd: &VcpuFd, s: &XsaveState, xsave_size: usize) -> Result<(), KvmError> {
    let region: [u32; 1024] = s
        .region
        .as_slice()
        .try_into()
        .map_err(|_| KvmError::BadState("the XSAVE region is not 4 KiB"))?;
    let saved_size = XSAVE_LEGACY_SIZE.saturating_add(s.extra.len().saturating_mul(4));
    if saved_size < xsave_size {
        return Err(KvmError::BadState(
            "the saved XSAVE area is smaller than this host's (KVM_CAP_XSAVE2)",
        ));
    }
    if s.extra.is_empty() {
        let x = kvm_xsave {
            region,
            ..Default::default()
        };
        // SAFETY: KVM_SET_XSAVE reads the VM's XSAVE2 size, at most 4 KiB
        // here (checked above), and `x` is a 4 KiB area.
        return unsafe { fd.set_xsave(&x) }.map_err(KvmError::ioctl("KVM_SET_XSAVE"));
    }
    let mut x =
        Xsave::from_entries(&s.extra).map_err(|_| KvmError::BadState("the XSAVE area is too large"))?;
    // SAFETY: only the fixed-size region is written; the flexible array's
    // length (the FAM `len`) is left as `from_entries` set it.
    unsafe { x.as_mut_fam_struct() }.xsave.region = region;
    // SAFETY: KVM_SET_XSAVE reads the VM's XSAVE2 size, and `x` holds at
    // least that many bytes (checked above).
    unsafe { fd.set_xsave2(&x) }.map_err(KvmError::ioctl("KVM_SET_XSAVE2"))
}

/// Saves a paused vCPU. MP state first and vCPU events last, as KVM's
/// documentation asks.
/// `cpuid` is the table Hearth set on this vCPU (KVM_GET_CPUID2 is not
/// used: some KVMs report the host's raw CPUID there).
pub(crate) fn save(
    fd: &VcpuFd,
    cpuid: Vec<kvm_cpuid_entry2>,
    msr_indices: &[u32],
    xsave_size: usize,
) -> Result<VcpuState, KvmError> {
    let mp_state = fd.get_mp_state().map_err(KvmError::ioctl("KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(KvmError::ioctl("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(KvmError::ioctl("KVM_GET_SREGS"))?;
    let xsave = save_xsave(fd, xsave_size)?;
    let xcrs = fd.get_xcrs().map_err(KvmError::ioctl("KVM_GET_XCRS"))?;
    let debug_regs = fd
        .get_debug_regs()
        .map_err(KvmError::ioctl("KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(KvmError::ioctl("KVM_GET_LAPIC"))?;
    let (msrs, _) = read_msrs(fd, msr_indices)?;
    let tsc_khz = fd.get_tsc_khz().ok();
    let vcpu_events = fd
        .get_vcpu_events()
        .map_err(KvmError::ioctl("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        cpuid,
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        msrs,
        vcpu_events,
        tsc_khz,
    })
}

/// Restores a vCPU that has not run. The LAPIC goes after the special
/// registers and before the MSRs; vCPU events after the registers.
/// `xsave_size` is the VM's KVM_CAP_XSAVE2 size.
pub(crate) fn restore(fd: &VcpuFd, s: &VcpuState, xsave_size: usize) -> Result<(), KvmError> {
    if let Some(khz) = s.tsc_khz {
        // Scaling is only possible with TSC scaling; same-frequency hosts
        // need nothing.
        if fd.get_tsc_khz().ok() != Some(khz) {
            fd.set_tsc_khz(khz).map_err(KvmError::ioctl("KVM_SET_TSC_KHZ"))?;
        }
    }
    let cpuid = CpuId::from_entries(&s.cpuid).map_err(|_| KvmError::BadState("too many CPUID entries"))?;
    fd.set_cpuid2(&cpuid).map_err(KvmError::ioctl("KVM_SET_CPUID2"))?;
    fd.set_mp_state(s.mp_state)
        .map_err(KvmError::ioctl("KVM_SET_MP_STATE"))?;
    fd.set_regs(&s.regs).map_err(KvmError::ioctl("KVM_SET_REGS"))?;
    fd.set_sregs(&s.sregs).map_err(KvmError::ioctl("KVM_SET_SREGS"))?;
    restore_xsave(fd, &s.xsave, xsave_size)?;
    fd.set_xcrs(&s.xcrs).map_err(KvmError::ioctl("KVM_SET_XCRS"))?;
    fd.set_debug_regs(&s.debug_regs)
        .map_err(KvmError::ioctl("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&s.lapic).map_err(KvmError::ioctl("KVM_SET_LAPIC"))?;
    let msrs = Msrs::from_entries(&s.msrs).map_err(|_| KvmError::MsrListTooLong(s.msrs.len()))?;
    let n = fd.set_msrs(&msrs).map_err(KvmError::ioctl("KVM_SET_MSRS"))?;
    if n != s.msrs.len() {
        let index = s.msrs.get(n).map_or(0, |m| m.index);
        return Err(KvmError::MsrRefused(index));
    }
    fd.set_vcpu_events(&s.vcpu_events)
        .map_err(KvmError::ioctl("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}
