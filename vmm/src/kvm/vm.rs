//! The KVM VM: memslots, the in-kernel irqchip and PIT, irqfds and
//! ioeventfds.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::{Host, KvmError};
use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::memory::{host_regions, GuestMemoryMmap};

/// A KVM virtual machine file descriptor.
#[derive(Debug)]
pub(crate) struct KvmVm {
    fd: VmFd,
}

impl KvmVm {
    pub fn new(host: &Host) -> Result<Self, KvmError> {
        let fd = host.kvm.create_vm().map_err(KvmError::ioctl("KVM_CREATE_VM"))?;
        Ok(Self { fd })
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Registers every RAM region as a memslot.
    ///
    /// Call this before creating the irqchip or any irqfd/ioeventfd: on
    /// some hosts a memslot added after those waits for an SRCU grace
    /// period (measured 6-11 ms on PVM), while one added before is free.
    ///
    /// The caller must keep `mem` mapped for as long as this VM exists.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), KvmError> {
        for (slot, (guest_phys_addr, memory_size, userspace_addr)) in
            host_regions(mem).into_iter().enumerate()
        {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr,
                memory_size,
                userspace_addr,
            };
            // SAFETY: the region describes a live mapping owned by `mem`, which
            // the caller keeps alive for the VM's lifetime (Vm drops the VM fd
            // before guest memory), and the slots do not overlap.
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// Creates the in-kernel PIC and IOAPIC (and the PIT if asked).
    pub fn setup_irqchip(&self, pit: bool) -> Result<(), KvmError> {
        self.fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(KvmError::ioctl("KVM_SET_TSS_ADDR"))?;
        self.fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(KvmError::ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        self.fd
            .create_irq_chip()
            .map_err(KvmError::ioctl("KVM_CREATE_IRQCHIP"))?;
        if pit {
            let config = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            self.fd
                .create_pit2(config)
                .map_err(KvmError::ioctl("KVM_CREATE_PIT2"))?;
        }
        Ok(())
    }

    /// Makes a write to `fd` raise `gsi`.
    pub fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), KvmError> {
        self.fd
            .register_irqfd(fd, gsi)
            .map_err(KvmError::ioctl("KVM_IRQFD"))
    }

    /// Makes a guest MMIO write of `value` at `addr` signal `fd` without
    /// a VM exit.
    pub fn register_mmio_ioevent(&self, fd: &EventFd, addr: u64, value: u32) -> Result<(), KvmError> {
        self.fd
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), value)
            .map_err(KvmError::ioctl("KVM_IOEVENTFD"))
    }

    pub fn create_vcpu(&self, id: u64) -> Result<VcpuFd, KvmError> {
        self.fd
            .create_vcpu(id)
            .map_err(KvmError::ioctl("KVM_CREATE_VCPU"))
    }
}
