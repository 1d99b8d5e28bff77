//! The virtio-mmio register file (MMIO version 2).
//!
//! Control registers (below 0x100) accept only aligned 32-bit accesses,
//! as the spec requires of drivers; other accesses are ignored (reads
//! return zero) and logged through the device's rate-limited
//! [`GuestLog`]. The device config space (0x100 and up) takes any width.
//!
//! A vCPU's register access never waits behind device I/O: the device
//! type, features and queue eventfds are copied here at creation, so only
//! config-space accesses and status changes (activation, reset) take the
//! device's lock, which the event loop holds for one bounded turn at most.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};

use super::device::{ActivateContext, VirtioDevice};
use super::interrupt::VirtioInterrupt;
use super::persist::{QueueSnapshot, RestoreError, TransportSnapshot};
use super::placement;
use super::status::{self, Transition};
use super::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::bus::BusDevice;
use crate::guest_log::GuestLog;
use crate::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4854_5248; // "HRTH"

mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// The transport's state for one device (also what a snapshot saves).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportState {
    /// Device status register.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// Features the driver acknowledged.
    pub acked_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
}

struct Inner {
    device: Arc<Mutex<dyn VirtioDevice>>,
    /// Copies of what never changes, read without the device's lock.
    device_type: u32,
    features: u64,
    max_sizes: Vec<u16>,
    queue_evts: Vec<EventFd>,
    log: Arc<GuestLog>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    regs: TransportState,
    /// The driver's queue configuration, up to activation.
    queues: Vec<Queue>,
}

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    inner: Mutex<Inner>,
}

impl fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmioTransport")
            .field("state", &self.state())
            .finish()
    }
}

fn fresh_queues(max_sizes: &[u16]) -> Vec<Queue> {
    max_sizes
        .iter()
        .map(|&max| Queue::new(max).unwrap_or_else(|_| Queue::new(1).unwrap_or_default()))
        .collect()
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MmioTransport {
    /// Puts `device` behind a transport raising `interrupt`. Fails only if
    /// the device's queue eventfds cannot be duplicated.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
    ) -> std::io::Result<Self> {
        let d = lock(&device);
        let (device_type, features, log) = (d.device_type(), d.avail_features(), d.guest_log().clone());
        let max_sizes = d.queue_max_sizes().to_vec();
        let queue_evts = d
            .queue_events()
            .iter()
            .map(EventFd::try_clone)
            .collect::<std::io::Result<Vec<_>>>()?;
        drop(d);
        Ok(Self {
            inner: Mutex::new(Inner {
                device,
                device_type,
                features,
                queues: fresh_queues(&max_sizes),
                max_sizes,
                queue_evts,
                log,
                mem,
                interrupt,
                regs: TransportState::default(),
            }),
        })
    }

    /// The register state.
    pub fn state(&self) -> TransportState {
        lock(&self.inner).regs.clone()
    }

    /// The interrupt this transport raises.
    pub fn interrupt(&self) -> Arc<VirtioInterrupt> {
        lock(&self.inner).interrupt.clone()
    }

    /// The device's log of guest-triggered problems.
    pub fn guest_log(&self) -> Arc<GuestLog> {
        lock(&self.inner).log.clone()
    }

    /// The virtio device type.
    pub fn device_type(&self) -> u32 {
        lock(&self.inner).device_type
    }
}

impl MmioTransport {
    /// Saves the registers and the queues (the device's running queues
    /// once it is active). Call it while the VM is paused.
    pub fn save(&self) -> TransportSnapshot {
        let inner = lock(&self.inner);
        let device = lock(&inner.device);
        let queues = match device.queue_states() {
            Some(states) => states.into_iter().map(QueueSnapshot::from).collect(),
            None => inner
                .queues
                .iter()
                .map(|q| QueueSnapshot::from(q.state()))
                .collect(),
        };
        TransportSnapshot {
            device_type: device.device_type(),
            status: inner.regs.status,
            device_features_sel: inner.regs.device_features_sel,
            driver_features_sel: inner.regs.driver_features_sel,
            acked_features: inner.regs.acked_features,
            queue_sel: inner.regs.queue_sel,
            interrupt_status: inner.interrupt.status(),
            config_generation: inner.interrupt.generation(),
            needs_reset: inner.interrupt.needs_reset(),
            queues,
            device: device.save_device(),
            id: None,
        }
    }

    /// Restores saved state into a freshly created transport, checking it
    /// first as the untrusted input it is, and activates the device if the
    /// driver had.
    pub fn restore(&self, snap: &TransportSnapshot) -> Result<(), RestoreError> {
        let mut inner = lock(&self.inner);
        let (device_type, max_sizes, offered) = (inner.device_type, inner.max_sizes.clone(), inner.features);
        if snap.device_type != device_type {
            return Err(RestoreError::DeviceType {
                saved: snap.device_type,
                actual: device_type,
            });
        }
        if snap.queues.len() != max_sizes.len() {
            return Err(RestoreError::QueueCount {
                saved: snap.queues.len(),
                actual: max_sizes.len(),
            });
        }
        let steps = [
            0,
            status::ACKNOWLEDGE,
            status::ACKNOWLEDGE | status::DRIVER,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        ];
        if !steps.contains(&(snap.status & !(status::FAILED | status::NEEDS_RESET))) {
            return Err(RestoreError::BadStatus(snap.status));
        }
        // Before FEATURES_OK the driver may have written any features (they
        // are checked when it sets FEATURES_OK), so only a negotiated set
        // must be one the device offers.
        if snap.status & status::FEATURES_OK != 0 && snap.acked_features & !offered != 0 {
            return Err(RestoreError::BadFeatures {
                acked: snap.acked_features,
                offered,
            });
        }
        if let Some(state) = &snap.device {
            lock(&inner.device).restore_device(state)?;
        }
        let active = snap.status & status::DRIVER_OK != 0 && !snap.needs_reset;
        let mut queues = Vec::with_capacity(max_sizes.len());
        for (i, (q, &max)) in snap.queues.iter().zip(&max_sizes).enumerate() {
            let queue =
                Queue::try_from(virtio_queue::QueueState::from(*q)).map_err(|_| RestoreError::BadQueue(i))?;
            if q.max_size != max {
                return Err(RestoreError::BadQueue(i));
            }
            queues.push(queue);
        }
        if active {
            placement::check(&queues, &max_sizes, &inner.mem).map_err(RestoreError::Placement)?;
        }
        inner.regs = TransportState {
            status: snap.status & !status::NEEDS_RESET,
            device_features_sel: snap.device_features_sel,
            driver_features_sel: snap.driver_features_sel,
            acked_features: snap.acked_features,
            queue_sel: snap.queue_sel,
        };
        inner
            .interrupt
            .restore(snap.interrupt_status, snap.config_generation, snap.needs_reset);
        if active {
            let ctx = ActivateContext {
                mem: inner.mem.clone(),
                queues,
                interrupt: inner.interrupt.clone(),
                acked_features: snap.acked_features,
            };
            let mut device = lock(&inner.device);
            device
                .activate(ctx)
                .map_err(|e| RestoreError::Activate(e.to_string()))?;
            device.restored();
        } else {
            inner.queues = queues;
        }
        Ok(())
    }
}

impl Inner {
    fn warn(&self, msg: std::fmt::Arguments) {
        self.log.warn(format_args!("virtio-mmio: {msg}"));
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let sel = self.regs.queue_sel as usize;
        self.queues.get_mut(sel)
    }

    fn queue_setup_allowed(&mut self) -> bool {
        let s = self.regs.status;
        let ok = s & status::FEATURES_OK != 0 && s & (status::DRIVER_OK | status::FAILED) == 0;
        if !ok {
            self.warn(format_args!("queue register written in status {s:#x}; ignored"));
        }
        ok
    }

    fn read(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device_type,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => {
                let features = self.features;
                match self.regs.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => {
                let device_bits = if self.interrupt.needs_reset() {
                    status::NEEDS_RESET
                } else {
                    0
                };
                self.regs.status | device_bits
            }
            // No shared memory regions: the length reads as -1.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.interrupt.generation(),
            _ => 0,
        }
    }

    fn write(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.regs.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.regs.driver_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.regs.queue_sel = value,
            reg::QUEUE_NUM => self.write_queue_num(value),
            reg::QUEUE_READY => {
                if self.queue_setup_allowed() {
                    if let Some(q) = self.selected_queue() {
                        q.set_ready(value == 1);
                    }
                }
            }
            reg::QUEUE_DESC_LOW..=reg::QUEUE_USED_HIGH => self.write_queue_address(offset, value),
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.write_status(value),
            reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {}
            _ => self.warn(format_args!("write to unknown register {offset:#x}; ignored")),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        let current = self.regs.status;
        if current != status::ACKNOWLEDGE | status::DRIVER {
            self.warn(format_args!(
                "driver features written in status {current:#x}; ignored"
            ));
            return;
        }
        let shift = match self.regs.driver_features_sel {
            0 => 0,
            1 => 32,
            _ => return,
        };
        let acked = &mut self.regs.acked_features;
        *acked = (*acked & !(0xffff_ffffu64 << shift)) | (u64::from(value) << shift);
    }

    fn write_queue_num(&mut self, value: u32) {
        if !self.queue_setup_allowed() {
            return;
        }
        let Some(max) = self.selected_queue().map(|q| q.max_size()) else {
            return;
        };
        match u16::try_from(value) {
            Ok(size) if size.is_power_of_two() && size <= max => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(size);
                }
            }
            _ => self.warn(format_args!(
                "queue size {value} is not a power of two up to {max}; ignored"
            )),
        }
    }

    fn write_queue_address(&mut self, offset: u64, value: u32) {
        if !self.queue_setup_allowed() {
            return;
        }
        // Alignment as virtio 1.2 2.7.2 requires; a misaligned low half is
        // refused here so that virtio-queue never logs it.
        let align = match offset {
            reg::QUEUE_DESC_LOW => 16,
            reg::QUEUE_AVAIL_LOW => 2,
            reg::QUEUE_USED_LOW => 4,
            _ => 1,
        };
        if !value.is_multiple_of(align) {
            self.warn(format_args!("queue address {value:#x} is misaligned; ignored"));
            return;
        }
        let Some(q) = self.selected_queue() else { return };
        match offset {
            reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(value), None),
            reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(value)),
            reg::QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(value), None),
            reg::QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(value)),
            reg::QUEUE_USED_LOW => q.set_used_ring_address(Some(value), None),
            reg::QUEUE_USED_HIGH => q.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    fn notify(&mut self, value: u32) {
        if self.regs.status & status::DRIVER_OK == 0 {
            return;
        }
        if let Some(evt) = self.queue_evts.get(value as usize) {
            let _ = evt.write(1);
        }
    }

    fn write_status(&mut self, value: u32) {
        let current = self.regs.status
            | if self.interrupt.needs_reset() {
                status::NEEDS_RESET
            } else {
                0
            };
        match status::transition(current, value) {
            Transition::Unchanged => {}
            Transition::Reset => self.reset(),
            Transition::Set(s) => self.regs.status = s & !status::NEEDS_RESET,
            Transition::CheckFeatures(s) => {
                let offered = self.features;
                let acked = self.regs.acked_features;
                if acked & !offered == 0 && acked & (1 << VIRTIO_F_VERSION_1) != 0 {
                    self.regs.status = s & !status::NEEDS_RESET;
                } else {
                    self.warn(format_args!(
                        "driver acked features {acked:#x} of {offered:#x}; FEATURES_OK refused"
                    ));
                }
            }
            Transition::Activate(s) => self.activate(s),
            Transition::Refused => self.warn(format_args!(
                "status {current:#x} -> {value:#x} is not allowed; ignored"
            )),
        }
    }

    fn activate(&mut self, new_status: u32) {
        if self.interrupt.needs_reset() {
            self.warn(format_args!("DRIVER_OK while NEEDS_RESET is set; ignored"));
            return;
        }
        let event_idx = self.regs.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        if let Err(e) = placement::check(&self.queues, &self.max_sizes, &self.mem) {
            self.fail(format_args!("DRIVER_OK refused: {e}"));
            return;
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            match Queue::try_from(q.state()) {
                Ok(copy) => queues.push(copy),
                Err(e) => {
                    self.fail(format_args!("queue {i} is misconfigured: {e}"));
                    return;
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            acked_features: self.regs.acked_features,
        };
        let result = lock(&self.device).activate(ctx);
        match result {
            Ok(()) => self.regs.status = new_status & !status::NEEDS_RESET,
            Err(e) => self.fail(format_args!("activation failed: {e}")),
        }
    }

    /// Sets NEEDS_RESET and tells the driver, as virtio 1.2 2.1.2 says.
    fn fail(&mut self, why: std::fmt::Arguments) {
        self.warn(why);
        self.interrupt.set_needs_reset();
    }

    fn reset(&mut self) {
        let mut device = lock(&self.device);
        device.reset();
        self.queues = fresh_queues(device.queue_max_sizes());
        drop(device);
        self.regs = TransportState::default();
        self.interrupt.reset();
    }
}

impl BusDevice for MmioTransport {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let mut inner = lock(&self.inner);
        if offset >= reg::CONFIG {
            lock(&inner.device).read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            inner.warn(format_args!(
                "{}-byte read at {offset:#x}; control registers are 32-bit",
                data.len()
            ));
            return;
        }
        let value = inner.read(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut inner = lock(&self.inner);
        if offset >= reg::CONFIG {
            // Config writes are legal only once the driver knows the device.
            if inner.regs.status & status::DRIVER != 0 {
                lock(&inner.device).write_config(offset - reg::CONFIG, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            inner.warn(format_args!(
                "{}-byte write at {offset:#x}; control registers are 32-bit",
                data.len()
            ));
            return;
        };
        if !offset.is_multiple_of(4) {
            inner.warn(format_args!("misaligned write at {offset:#x}"));
            return;
        }
        inner.write(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::interrupt::test_utils::CountingIrq;
    use crate::virtio::device::{read_config_bytes, ActivateError};
    use crate::virtio::interrupt::INT_CONFIG;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// A device that records what happens to it.
    pub struct DummyDevice {
        pub features: u64,
        pub config: Vec<u8>,
        pub evts: Vec<EventFd>,
        pub activated: Option<ActivateContext>,
        pub resets: usize,
        pub fail_activation: bool,
        pub log: Arc<GuestLog>,
    }

    impl DummyDevice {
        pub fn new() -> Self {
            Self {
                features: 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX | 0b101,
                config: vec![0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5],
                evts: vec![
                    EventFd::new(EFD_NONBLOCK).unwrap(),
                    EventFd::new(EFD_NONBLOCK).unwrap(),
                ],
                activated: None,
                resets: 0,
                fail_activation: false,
                log: Arc::new(GuestLog::new("dummy")),
            }
        }
    }

    impl VirtioDevice for DummyDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn avail_features(&self) -> u64 {
            self.features
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            read_config_bytes(&self.config, offset, data);
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            if let Some(dst) = self.config.get_mut(offset as usize..offset as usize + data.len()) {
                dst.copy_from_slice(data);
            }
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.evts
        }
        fn guest_log(&self) -> &Arc<GuestLog> {
            &self.log
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            if self.fail_activation {
                return Err(ActivateError::Device("nope".into()));
            }
            self.activated = Some(ctx);
            Ok(())
        }
        fn reset(&mut self) {
            self.activated = None;
            self.resets += 1;
        }
        fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
            self.activated
                .as_ref()
                .map(|a| a.queues.iter().map(|q| q.state()).collect())
        }
    }

    pub struct Harness {
        pub t: MmioTransport,
        pub dev: Arc<Mutex<DummyDevice>>,
        pub irq: Arc<CountingIrq>,
    }

    impl Harness {
        pub fn new() -> Self {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            let dev = Arc::new(Mutex::new(DummyDevice::new()));
            let irq = Arc::new(CountingIrq::default());
            let t =
                MmioTransport::new(dev.clone(), mem, Arc::new(VirtioInterrupt::new(irq.clone()))).unwrap();
            Self { t, dev, irq }
        }
        pub fn r(&self, off: u64) -> u32 {
            let mut d = [0u8; 4];
            self.t.read(off, &mut d);
            u32::from_le_bytes(d)
        }
        pub fn w(&self, off: u64, v: u32) {
            self.t.write(off, &v.to_le_bytes());
        }
        /// Negotiates features and sets queue 0 up at sane addresses.
        pub fn drive_to_features_ok(&self, features: u64) {
            self.w(reg::STATUS, status::ACKNOWLEDGE);
            self.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
            self.w(reg::DRIVER_FEATURES_SEL, 0);
            self.w(reg::DRIVER_FEATURES, features as u32);
            self.w(reg::DRIVER_FEATURES_SEL, 1);
            self.w(reg::DRIVER_FEATURES, (features >> 32) as u32);
            self.w(
                reg::STATUS,
                status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
            );
        }
        pub fn setup_queue0(&self) {
            self.w(reg::QUEUE_SEL, 0);
            self.w(reg::QUEUE_NUM, 16);
            self.w(reg::QUEUE_DESC_LOW, 0x1000);
            self.w(reg::QUEUE_DESC_HIGH, 0);
            self.w(reg::QUEUE_AVAIL_LOW, 0x2000);
            self.w(reg::QUEUE_USED_LOW, 0x3000);
            self.w(reg::QUEUE_READY, 1);
        }
    }

    const V1: u64 = 1 << VIRTIO_F_VERSION_1;
    const ALL_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    #[test]
    fn identity_registers() {
        let h = Harness::new();
        assert_eq!(h.r(reg::MAGIC), MAGIC_VALUE);
        assert_eq!(h.r(reg::VERSION), 2);
        assert_eq!(h.r(reg::DEVICE_ID), 42);
        h.w(reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(h.r(reg::DEVICE_FEATURES), 1);
        h.w(reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(h.r(reg::DEVICE_FEATURES), (1 << VIRTIO_RING_F_EVENT_IDX) | 0b101);
        h.w(reg::DEVICE_FEATURES_SEL, 7);
        assert_eq!(h.r(reg::DEVICE_FEATURES), 0);
        h.w(reg::QUEUE_SEL, 1);
        assert_eq!(h.r(reg::QUEUE_NUM_MAX), 8);
        h.w(reg::QUEUE_SEL, 2);
        assert_eq!(h.r(reg::QUEUE_NUM_MAX), 0);
        assert_eq!(h.r(reg::SHM_LEN_LOW), u32::MAX);
    }

    #[test]
    fn full_bring_up_activates_with_event_idx() {
        let h = Harness::new();
        h.drive_to_features_ok(V1 | 1 << VIRTIO_RING_F_EVENT_IDX);
        assert_eq!(h.r(reg::STATUS) & status::FEATURES_OK, status::FEATURES_OK);
        h.setup_queue0();
        h.w(reg::STATUS, ALL_OK);
        assert_eq!(h.r(reg::STATUS), ALL_OK);
        let dev = h.dev.lock().unwrap();
        let ctx = dev.activated.as_ref().unwrap();
        assert_eq!(ctx.acked_features, V1 | 1 << VIRTIO_RING_F_EVENT_IDX);
        assert!(ctx.queues[0].ready());
        assert!(ctx.queues[0].event_idx_enabled());
        assert_eq!(ctx.queues[0].size(), 16);
        assert_eq!(ctx.queues[0].desc_table(), 0x1000);
        assert!(!ctx.queues[1].ready());
    }

    #[test]
    fn features_without_version_1_or_not_offered_are_refused() {
        let h = Harness::new();
        h.drive_to_features_ok(0b1);
        assert_eq!(h.r(reg::STATUS), status::ACKNOWLEDGE | status::DRIVER);
        let h = Harness::new();
        h.drive_to_features_ok(V1 | 0b10);
        assert_eq!(h.r(reg::STATUS), status::ACKNOWLEDGE | status::DRIVER);
        // Features after FEATURES_OK are ignored.
        let h = Harness::new();
        h.drive_to_features_ok(V1);
        h.w(reg::DRIVER_FEATURES_SEL, 0);
        h.w(reg::DRIVER_FEATURES, 0b100);
        assert_eq!(h.t.state().acked_features, V1);
    }

    #[test]
    fn queue_outside_memory_sets_needs_reset() {
        let h = Harness::new();
        h.drive_to_features_ok(V1);
        h.setup_queue0();
        h.w(reg::QUEUE_USED_LOW, 0xff_fff0); // past the 1 MiB of memory
        h.w(reg::STATUS, ALL_OK);
        let s = h.r(reg::STATUS);
        assert_eq!(s & status::DRIVER_OK, 0);
        assert_ne!(s & status::NEEDS_RESET, 0);
        assert_ne!(h.r(reg::INTERRUPT_STATUS) & INT_CONFIG, 0);
        assert_eq!(h.r(reg::CONFIG_GENERATION), 1);
        assert!(h.dev.lock().unwrap().activated.is_none());
        assert_eq!(h.irq.count(), 1);
        // Reset clears everything.
        h.w(reg::STATUS, 0);
        assert_eq!(h.r(reg::STATUS), 0);
        assert_eq!(h.r(reg::INTERRUPT_STATUS), 0);
        assert_eq!(h.dev.lock().unwrap().resets, 1);
    }

    /// Finding: a used ring at the avail ring + 2 (used.flags over
    /// avail.idx) made the device's queue loop run forever. Such rings are
    /// refused at DRIVER_OK.
    #[test]
    fn aliased_rings_are_refused_at_driver_ok() {
        let h = Harness::new();
        h.drive_to_features_ok(V1);
        h.setup_queue0();
        h.w(reg::QUEUE_AVAIL_LOW, 0x2002);
        h.w(reg::QUEUE_USED_LOW, 0x2004);
        h.w(reg::STATUS, ALL_OK);
        let s = h.r(reg::STATUS);
        assert_eq!(s & status::DRIVER_OK, 0);
        assert_ne!(s & status::NEEDS_RESET, 0);
        assert!(h.dev.lock().unwrap().activated.is_none());
        assert_eq!(h.dev.lock().unwrap().log.counters().warnings, 1);
    }

    /// A vCPU's register access never waits behind device I/O: with the
    /// device's lock held (the event loop in a long turn), identity,
    /// features, interrupt status and QueueNotify still answer.
    #[test]
    fn register_accesses_do_not_take_the_device_lock() {
        let h = Harness::new();
        h.drive_to_features_ok(V1);
        h.setup_queue0();
        h.w(reg::STATUS, ALL_OK);
        let dev = h.dev.clone();
        let _busy = dev.lock().unwrap();
        assert_eq!(h.r(reg::DEVICE_ID), 42);
        h.w(reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(h.r(reg::DEVICE_FEATURES), 1);
        assert_eq!(h.r(reg::INTERRUPT_STATUS), 0);
        h.w(reg::QUEUE_NOTIFY, 0);
        assert_eq!(
            _busy.evts[0].read().unwrap(),
            1,
            "the notify reached the queue's eventfd"
        );
    }

    #[test]
    fn failed_activation_sets_needs_reset() {
        let h = Harness::new();
        h.dev.lock().unwrap().fail_activation = true;
        h.drive_to_features_ok(V1);
        h.setup_queue0();
        h.w(reg::STATUS, ALL_OK);
        assert_ne!(h.r(reg::STATUS) & status::NEEDS_RESET, 0);
    }

    #[test]
    fn bad_queue_values_are_ignored() {
        let h = Harness::new();
        // Before FEATURES_OK nothing sticks.
        h.w(reg::QUEUE_NUM, 8);
        h.w(reg::QUEUE_READY, 1);
        assert_eq!(h.r(reg::QUEUE_READY), 0);
        h.drive_to_features_ok(V1);
        h.w(reg::QUEUE_SEL, 0);
        for bad in [0, 3, 32, 0x1_0000] {
            h.w(reg::QUEUE_NUM, bad);
        }
        h.w(reg::QUEUE_DESC_LOW, 0x1001);
        h.w(reg::QUEUE_SEL, 9);
        h.w(reg::QUEUE_NUM, 4);
        h.w(reg::QUEUE_READY, 1);
        h.w(reg::QUEUE_SEL, 0);
        h.w(reg::QUEUE_DESC_LOW, 0x1000);
        h.w(reg::QUEUE_AVAIL_LOW, 0x2000);
        h.w(reg::QUEUE_USED_LOW, 0x3000);
        h.w(reg::QUEUE_READY, 1);
        h.w(reg::STATUS, ALL_OK);
        let dev = h.dev.lock().unwrap();
        // The default size (the max) stayed.
        assert_eq!(dev.activated.as_ref().unwrap().queues[0].size(), 16);
        assert_eq!(dev.activated.as_ref().unwrap().queues[0].desc_table(), 0x1000);
    }

    #[test]
    fn odd_widths_and_offsets_never_panic() {
        let h = Harness::new();
        for off in (0..0x120u64).chain([0xfff, 0x1000, u64::MAX - 3, u64::MAX]) {
            for len in [0usize, 1, 2, 3, 4, 8] {
                let mut d = vec![0xeeu8; len];
                h.t.read(off, &mut d);
                h.t.write(off, &d);
            }
        }
        let mut d = [0xffu8; 2];
        h.t.read(reg::MAGIC, &mut d);
        assert_eq!(d, [0, 0]);
    }

    #[test]
    fn config_space_any_width_and_notify() {
        let h = Harness::new();
        let mut b = [0u8; 1];
        h.t.read(reg::CONFIG + 1, &mut b);
        assert_eq!(b, [0xa1]);
        let mut q = [0u8; 8];
        h.t.read(reg::CONFIG + 2, &mut q);
        assert_eq!(q, [0xa2, 0xa3, 0xa4, 0xa5, 0, 0, 0, 0]);
        // Config writes need DRIVER.
        h.t.write(reg::CONFIG, &[1, 2]);
        assert_eq!(h.dev.lock().unwrap().config[0], 0xa0);
        h.drive_to_features_ok(V1);
        h.t.write(reg::CONFIG, &[1, 2]);
        assert_eq!(h.dev.lock().unwrap().config[..2], [1, 2]);
        // Notify before DRIVER_OK is dropped; after, it reaches the queue event.
        h.w(reg::QUEUE_NOTIFY, 1);
        assert!(h.dev.lock().unwrap().evts[1].read().is_err());
        h.setup_queue0();
        h.w(reg::STATUS, ALL_OK);
        h.w(reg::QUEUE_NOTIFY, 1);
        h.w(reg::QUEUE_NOTIFY, 77);
        assert_eq!(h.dev.lock().unwrap().evts[1].read().unwrap(), 1);
    }

    #[test]
    fn interrupt_ack_clears_bits() {
        let h = Harness::new();
        h.t.interrupt().signal_used_queue();
        h.t.interrupt().signal_config_change();
        assert_eq!(h.r(reg::INTERRUPT_STATUS), 3);
        h.w(reg::INTERRUPT_ACK, 1);
        assert_eq!(h.r(reg::INTERRUPT_STATUS), 2);
    }
}

#[cfg(test)]
mod persist_tests {
    use super::tests::Harness;
    use super::*;
    use crate::virtio::persist::RestoreError;
    use crate::virtio::placement::{PlacementError, Ring};

    const V1: u64 = 1 << VIRTIO_F_VERSION_1;
    const ALL_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    fn active() -> Harness {
        let h = Harness::new();
        h.drive_to_features_ok(V1 | 1 << VIRTIO_RING_F_EVENT_IDX);
        h.setup_queue0();
        h.w(reg::STATUS, ALL_OK);
        h.t.interrupt().signal_used_queue();
        h
    }

    #[test]
    fn round_trip_restores_an_active_device() {
        let h = active();
        let snap = h.t.save();
        assert_eq!(snap.status, ALL_OK);
        assert_eq!(snap.queues[0].desc_table, 0x1000);
        assert!(snap.queues[0].event_idx);
        let fresh = Harness::new();
        fresh.t.restore(&snap).unwrap();
        assert_eq!(fresh.t.save(), snap);
        let dev = fresh.dev.lock().unwrap();
        let ctx = dev.activated.as_ref().expect("restore activates the device");
        assert_eq!(ctx.queues[0].avail_ring(), 0x2000);
        assert_eq!(fresh.r(reg::INTERRUPT_STATUS), 1);
    }

    #[test]
    fn inactive_device_round_trips_without_activation() {
        let h = Harness::new();
        h.drive_to_features_ok(V1);
        h.setup_queue0();
        let snap = h.t.save();
        let fresh = Harness::new();
        fresh.t.restore(&snap).unwrap();
        assert!(fresh.dev.lock().unwrap().activated.is_none());
        // The driver can finish bringing it up.
        fresh.w(reg::STATUS, ALL_OK);
        assert!(fresh.dev.lock().unwrap().activated.is_some());
    }

    #[test]
    fn corrupt_state_is_refused() {
        let snap = active().t.save();
        type Corrupt = fn(&mut TransportSnapshot);
        let cases: Vec<(Corrupt, RestoreError)> = vec![
            (
                |s| s.device_type = 7,
                RestoreError::DeviceType { saved: 7, actual: 42 },
            ),
            (
                |s| {
                    s.queues.pop();
                },
                RestoreError::QueueCount { saved: 1, actual: 2 },
            ),
            (|s| s.status = 0x5, RestoreError::BadStatus(0x5)),
            (
                |s| s.queues[0].used_ring = 0xff_fff0,
                RestoreError::Placement(PlacementError::OutsideMemory {
                    queue: 0,
                    ring: Ring::Used,
                    addr: 0xff_fff0,
                }),
            ),
            (
                |s| s.queues[0].used_ring = s.queues[0].avail_ring + 4,
                RestoreError::Placement(PlacementError::Overlap(0, Ring::Avail, 0, Ring::Used)),
            ),
            (|s| s.queues[0].size = 3, RestoreError::BadQueue(0)),
            (|s| s.queues[0].max_size = 1024, RestoreError::BadQueue(0)),
            (|s| s.queues[0].desc_table = 0x1001, RestoreError::BadQueue(0)),
        ];
        for (corrupt, expected) in cases {
            let mut bad = snap.clone();
            corrupt(&mut bad);
            assert_eq!(Harness::new().t.restore(&bad), Err(expected));
        }
        let mut bad = snap.clone();
        bad.acked_features |= 1 << 40;
        assert!(matches!(
            Harness::new().t.restore(&bad),
            Err(RestoreError::BadFeatures { .. })
        ));
    }

    #[test]
    fn features_written_before_features_ok_round_trip() {
        // Found by the mmio_transport fuzz target: the driver may write
        // features the device does not offer until it sets FEATURES_OK.
        let h = Harness::new();
        h.w(reg::STATUS, status::ACKNOWLEDGE);
        h.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        h.w(reg::DRIVER_FEATURES_SEL, 1);
        h.w(reg::DRIVER_FEATURES, 0xffff_ffff);
        let snap = h.t.save();
        let fresh = Harness::new();
        fresh.t.restore(&snap).unwrap();
        assert_eq!(fresh.t.save(), snap);
        // FEATURES_OK is still refused after the restore.
        fresh.w(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(fresh.r(reg::STATUS), status::ACKNOWLEDGE | status::DRIVER);
    }

    #[test]
    fn needs_reset_round_trips_without_an_interrupt() {
        // Found by the mmio_transport fuzz target: restoring NEEDS_RESET
        // used to bump the config generation and raise an interrupt.
        let h = Harness::new();
        h.dev.lock().unwrap().fail_activation = true;
        h.drive_to_features_ok(V1);
        h.setup_queue0();
        h.w(reg::STATUS, ALL_OK);
        let snap = h.t.save();
        assert!(snap.needs_reset);
        let fresh = Harness::new();
        fresh.t.restore(&snap).unwrap();
        assert_eq!(fresh.t.save(), snap);
        assert_eq!(fresh.irq.count(), 0, "no interrupt on restore");
        assert_ne!(fresh.r(reg::STATUS) & status::NEEDS_RESET, 0);
    }
}
