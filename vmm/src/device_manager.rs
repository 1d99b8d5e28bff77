//! Creates the devices, places them on the buses, wires their interrupts
//! to KVM and collects their event-loop subscribers.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_devices::bus::{BusDevice, BusError};
use hearth_devices::legacy::cmos::{CMOS_PORT, CMOS_PORT_LEN};
use hearth_devices::legacy::i8042::{I8042_PORT, I8042_PORT_LEN};
use hearth_devices::legacy::serial::{COM1_IRQ, COM1_PORT, SERIAL_PORT_LEN};
use hearth_devices::legacy::{
    BootTimer, Cmos, Generation, SerialDevice, SerialInput, VmGeneration, BOOT_TIMER_PORT, I8042,
    VM_GENERATION_LEN, VM_GENERATION_PORT,
};
use hearth_devices::virtio::block::{Block, BlockOptions, DiskError};
use hearth_devices::virtio::net::{Net, NetError, TapError};
use hearth_devices::virtio::vsock::{Vsock, VsockError};
use hearth_devices::virtio::{
    MmioTransport, VirtioDevice, VirtioInterrupt, MMIO_WINDOW_SIZE, NOTIFY_REG_OFFSET,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::layout::{IRQ_BASE, IRQ_MAX, VIRTIO_MMIO_START};
use crate::config::{SerialInput as SerialInputConfig, SerialOutput, VmConfig};
use crate::event_loop::Subscriber;
use crate::exit::{ExitReason, RunState};
use crate::kvm::vcpu::IoBuses;
use crate::kvm::vm::KvmVm;
use crate::kvm::KvmError;
use crate::memory::GuestMemoryMmap;
use crate::registry::{Entry, Handle, Registry};
use crate::serial_cap::{CappedSink, SerialTally};
use crate::serial_output::SerialWriter;
use crate::snapshot::state::DevicesState;

/// Errors creating devices.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The serial output file cannot be opened.
    #[error("cannot open serial output file {}: {source}", path.display())]
    SerialFile {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Standard input cannot be used for serial input.
    #[error("cannot use stdin as serial input: {0}")]
    SerialInput(io::Error),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(io::Error),
    /// Wiring to KVM failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Two devices claimed one address.
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
    /// A disk image is unusable.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A disk overlay or layer is unusable (wrong base, corrupt...).
    #[error(transparent)]
    Overlay(#[from] hearth_devices::virtio::block::OverlayError),
    /// A custom disk backend failed to open.
    #[error("cannot open disk {}: {source}", name.display())]
    CustomDisk {
        /// Its name.
        name: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A TAP device is missing, busy or not permitted.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// A custom network backend failed to open.
    #[error("cannot open network backend {name}: {source}")]
    CustomNet {
        /// Its name.
        name: String,
        /// The error.
        source: io::Error,
    },
    /// The user-mode network backend could not be made.
    #[error("cannot open network backend {name}: {source}")]
    UserNet {
        /// Its name.
        name: String,
        /// The error.
        source: hearth_devices::virtio::net::user::UserNetError,
    },
    /// The net device could not be created.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The vsock device could not be created.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// Saved device state does not fit the devices being restored.
    #[error("saved device state does not match the configuration: {0}")]
    Restore(String),
    /// The snapshot has a device the configuration lacks.
    #[error("the snapshot has device {0}, which the configuration does not")]
    NotInConfig(String),
    /// The configuration has a device the snapshot lacks.
    #[error("device {0} is not in the snapshot (devices cannot be added at restore)")]
    NotInSnapshot(String),
    /// A device refused its saved state.
    #[error("device {id}: {source}")]
    RestoreDevice {
        /// The device's id.
        id: String,
        /// Why.
        source: hearth_devices::virtio::persist::RestoreError,
    },
    /// More virtio devices than IRQs.
    #[error("too many virtio devices: at most {0}")]
    TooManyDevices(u32),
    /// The host's random source failed (getrandom).
    #[error("cannot read the host's random source for the VM generation")]
    Entropy,
}

/// Handles to the devices the `Vm` talks to after start.
#[derive(Debug)]
pub(crate) struct Devices {
    pub serial: Arc<SerialDevice>,
    /// What the guest wrote to the serial console, and dropped past its
    /// limit.
    pub serial_tally: Arc<SerialTally>,
    pub boot_timer: Arc<BootTimer>,
    pub cmos: Arc<Cmos>,
    pub generation: Arc<VmGeneration>,
    /// The virtio devices, in MMIO slot order (disks, nets, then vsock).
    pub virtio: Registry,
    /// irqfds stay open as long as the VM.
    _irqfds: Vec<EventFd>,
}

/// The result of device setup.
pub(crate) struct DeviceSetup {
    pub devices: Devices,
    pub io: IoBuses,
    pub subscribers: Vec<Subscriber>,
    pub cmdline_extra: Vec<String>,
}

fn serial_writer(out: &SerialOutput) -> Result<SerialWriter, DeviceError> {
    Ok(match out {
        SerialOutput::Stdout => SerialWriter::Stdout(io::stdout()),
        SerialOutput::None => SerialWriter::Sink,
        SerialOutput::File(path) => SerialWriter::File(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| DeviceError::SerialFile {
                    path: path.clone(),
                    source,
                })?,
        ),
        SerialOutput::Buffer(b) => SerialWriter::Buffer(b.clone()),
        SerialOutput::Callback(c) => SerialWriter::Callback(c.clone()),
    })
}

/// Places virtio devices in MMIO windows with their own IRQs.
#[derive(Debug, Default)]
pub(crate) struct VirtioSlots {
    next: u32,
}

/// The command-line entry that tells Linux where a virtio-mmio device is.
pub(crate) fn virtio_mmio_cmdline_entry(addr: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{addr:#x}:{irq}")
}

impl VirtioSlots {
    /// The next free window and IRQ, or an error once the IRQs run out.
    pub(crate) fn next(&mut self) -> Result<(u64, u32), DeviceError> {
        let irq = IRQ_BASE + self.next;
        if irq > IRQ_MAX {
            return Err(DeviceError::TooManyDevices(IRQ_MAX - IRQ_BASE + 1));
        }
        let addr = VIRTIO_MMIO_START + u64::from(self.next) * MMIO_WINDOW_SIZE;
        self.next += 1;
        Ok((addr, irq))
    }
}

/// What device setup works on.
struct Builder<'a> {
    vm: &'a KvmVm,
    mem: &'a GuestMemoryMmap,
    io: IoBuses,
    subscribers: Vec<Subscriber>,
    cmdline_extra: Vec<String>,
    irqfds: Vec<EventFd>,
    slots: VirtioSlots,
    registry: Registry,
}

impl Builder<'_> {
    /// Wires a virtio device: MMIO window, irqfd, ioeventfds, command
    /// line; returns its transport.
    fn add_virtio<D>(&mut self, device: Arc<Mutex<D>>) -> Result<Arc<MmioTransport>, DeviceError>
    where
        D: VirtioDevice + event_manager::MutEventSubscriber + 'static,
    {
        let (addr, irq) = self.slots.next()?;
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        self.vm.register_irqfd(&irqfd, irq)?;
        let interrupt = Arc::new(VirtioInterrupt::new(Arc::new(
            irqfd.try_clone().map_err(DeviceError::EventFd)?,
        )));
        self.irqfds.push(irqfd);
        {
            let dev = device.lock().unwrap_or_else(|p| p.into_inner());
            for (queue, evt) in dev.queue_events().iter().enumerate() {
                self.vm
                    .register_mmio_ioevent(evt, addr + NOTIFY_REG_OFFSET, queue as u32)?;
            }
        }
        let transport = Arc::new(
            MmioTransport::new(device.clone(), self.mem.clone(), interrupt).map_err(DeviceError::EventFd)?,
        );
        self.io.mmio.insert(addr, MMIO_WINDOW_SIZE, transport.clone())?;
        self.cmdline_extra.push(virtio_mmio_cmdline_entry(addr, irq));
        self.subscribers.push(device);
        Ok(transport)
    }
}

/// Builds the devices: COM1, i8042, CMOS, the boot timer, then the
/// virtio devices in config order.
pub(crate) fn setup(
    vm: &KvmVm,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    run_state: &Arc<RunState>,
    start: (Instant, Duration),
    saved: Option<&DevicesState>,
) -> Result<DeviceSetup, DeviceError> {
    let mut b = Builder {
        vm,
        mem,
        io: IoBuses::default(),
        subscribers: Vec::new(),
        cmdline_extra: Vec::new(),
        irqfds: Vec::new(),
        slots: VirtioSlots::default(),
        registry: Registry::default(),
    };
    let io = &mut b.io;
    let subscribers = &mut b.subscribers;

    let com1_irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
    vm.register_irqfd(&com1_irq, COM1_IRQ)?;
    let irq_line = Arc::new(com1_irq.try_clone().map_err(DeviceError::EventFd)?);
    // The VMM bounds what it writes to host files and its stdout; a
    // buffer bounds itself, a callback is the embedder's.
    let serial_limit = match config.serial {
        SerialOutput::Stdout | SerialOutput::File(_) => config.limits.serial_output_bytes,
        _ => u64::MAX,
    };
    let serial_tally = Arc::new(SerialTally::default());
    let sink = Box::new(CappedSink::new(
        serial_writer(&config.serial)?,
        serial_limit,
        serial_tally.clone(),
    ));
    let serial = Arc::new(match saved {
        Some(s) => SerialDevice::from_snapshot(irq_line, sink, &s.serial)
            .map_err(|e| DeviceError::Restore(e.to_string()))?,
        None => SerialDevice::new(irq_line, sink).map_err(DeviceError::EventFd)?,
    });
    io.pio
        .insert(COM1_PORT, SERIAL_PORT_LEN, serial.clone() as Arc<dyn BusDevice>)?;
    if config.serial_input == SerialInputConfig::Stdin {
        let stdin = io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(DeviceError::SerialInput)?;
        let input = SerialInput::new(serial.clone(), File::from(stdin)).map_err(DeviceError::SerialInput)?;
        subscribers.push(Arc::new(Mutex::new(input)));
    }

    let rs = run_state.clone();
    let i8042 = Arc::new(I8042::new(Arc::new(move || rs.request_exit(ExitReason::Reset))));
    io.pio.insert(I8042_PORT, I8042_PORT_LEN, i8042)?;
    let cmos = Arc::new(Cmos::default());
    if let Some(s) = saved {
        cmos.restore(&s.cmos).map_err(DeviceError::Restore)?;
    }
    io.pio.insert(CMOS_PORT, CMOS_PORT_LEN, cmos.clone())?;

    let rs = run_state.clone();
    let boot_timer = Arc::new(BootTimer::new(
        start.0,
        start.1,
        Arc::new(move |t| rs.record_boot(t)),
    ));
    io.pio
        .insert(BOOT_TIMER_PORT, 1, boot_timer.clone() as Arc<dyn BusDevice>)?;

    // A new generation at every boot and restore: a restored guest learns
    // it is a new machine (docs/AGENT.md).
    let generation = Arc::new(VmGeneration::new(
        Generation::fresh().ok_or(DeviceError::Entropy)?,
    ));
    io.pio.insert(
        VM_GENERATION_PORT,
        VM_GENERATION_LEN,
        generation.clone() as Arc<dyn BusDevice>,
    )?;

    b.irqfds.push(com1_irq);

    for (i, disk) in config.disks.iter().enumerate() {
        let options = BlockOptions {
            read_only: disk.read_only,
            id: disk.id.clone().unwrap_or_default(),
            rate_limit: disk.rate_limit,
        };
        let block = Block::new(disk.open()?, &options).map_err(DeviceError::EventFd)?;
        let metrics = block.metrics();
        let block = Arc::new(Mutex::new(block));
        let transport = b.add_virtio(block.clone())?;
        b.registry.push(Entry {
            id: format!("disk{i}"),
            transport,
            handle: Handle::Block(block),
            block_metrics: Some(metrics),
            net_metrics: None,
            user_net: None,
        });
    }

    for (i, net) in config.nets.iter().enumerate() {
        let mut options = net
            .options()
            .map_err(|e| DeviceError::Restore(format!("net {}: {e}", net.tap)))?;
        options.backlog = (config.limits.net_backlog_frames, config.limits.net_backlog_bytes);
        let id = format!("net{i}");
        let (backend, user_net) = net.open(&id, run_state)?;
        let dev = Net::new(backend, &options)?;
        let metrics = dev.metrics();
        let dev = Arc::new(Mutex::new(dev));
        let transport = b.add_virtio(dev.clone())?;
        b.registry.push(Entry {
            id,
            transport,
            handle: Handle::Net(dev),
            block_metrics: None,
            net_metrics: Some(metrics),
            user_net,
        });
    }

    if let Some(v) = &config.vsock {
        let vsock = Arc::new(Mutex::new(Vsock::new(
            v.guest_cid,
            &v.uds_path,
            config.limits.vsock(),
        )?));
        let transport = b.add_virtio(vsock.clone())?;
        b.registry.push(Entry {
            id: "vsock".into(),
            transport,
            handle: Handle::Vsock(vsock),
            block_metrics: None,
            net_metrics: None,
            user_net: None,
        });
    }

    if let Some(s) = saved {
        b.registry.restore(&s.virtio)?;
    }

    Ok(DeviceSetup {
        devices: Devices {
            serial,
            serial_tally,
            boot_timer,
            cmos,
            generation,
            virtio: b.registry,
            _irqfds: b.irqfds,
        },
        io: b.io,
        subscribers: b.subscribers,
        cmdline_extra: b.cmdline_extra,
    })
}
