//! Saving and restoring the VM-wide KVM state: the in-kernel PICs and
//! IOAPIC, the PIT, and kvm-clock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::KvmError;

/// The VM's interrupt controllers, timer and clock.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    #[serde(default)]
    pub pit: Option<kvm_pit_state2>,
    pub clock: kvm_clock_data,
}

fn get_chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, KvmError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(KvmError::ioctl("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

/// Saves the VM state; `pit` says whether the VM has one.
pub(crate) fn save(vm: &VmFd, pit: bool) -> Result<VmState, KvmError> {
    Ok(VmState {
        pic_master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: if pit {
            Some(vm.get_pit2().map_err(KvmError::ioctl("KVM_GET_PIT2"))?)
        } else {
            None
        },
        clock: vm.get_clock().map_err(KvmError::ioctl("KVM_GET_CLOCK"))?,
    })
}

/// Restores the VM state into a VM with the same irqchip (and PIT).
pub(crate) fn restore(vm: &VmFd, s: &VmState) -> Result<(), KvmError> {
    for (chip, expected) in [
        (&s.pic_master, KVM_IRQCHIP_PIC_MASTER),
        (&s.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
        (&s.ioapic, KVM_IRQCHIP_IOAPIC),
    ] {
        if chip.chip_id != expected {
            return Err(KvmError::BadState("irqchip ids are out of order"));
        }
        vm.set_irqchip(chip).map_err(KvmError::ioctl("KVM_SET_IRQCHIP"))?;
    }
    if let Some(pit) = &s.pit {
        vm.set_pit2(pit).map_err(KvmError::ioctl("KVM_SET_PIT2"))?;
    }
    // Only the clock value carries over; the flags describe the old host.
    let clock = kvm_clock_data {
        clock: s.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(KvmError::ioctl("KVM_SET_CLOCK"))
}
