//! x86_64: the guest physical layout, boot structures and vCPU register,
//! CPUID and MSR setup.

pub(crate) mod boot_params;
pub(crate) mod cpuid;
pub(crate) mod gdt;
pub(crate) mod lapic;
pub(crate) mod layout;
pub(crate) mod mptable;
pub(crate) mod msr;
pub(crate) mod regs;
