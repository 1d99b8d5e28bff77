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
use hearth_devices::legacy::{BootTimer, Cmos, SerialDevice, SerialInput, BOOT_TIMER_PORT, I8042};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{SerialInput as SerialInputConfig, SerialOutput, VmConfig};
use crate::event_loop::Subscriber;
use crate::exit::{ExitReason, RunState};
use crate::kvm::vcpu::IoBuses;
use crate::kvm::vm::KvmVm;
use crate::kvm::KvmError;
use crate::serial_output::SerialWriter;

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
}

/// Handles to the devices the `Vm` talks to after start.
#[derive(Debug)]
pub(crate) struct Devices {
    pub serial: Arc<SerialDevice>,
    pub boot_timer: Arc<BootTimer>,
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

/// Builds the legacy devices: COM1, i8042, CMOS and the boot timer.
pub(crate) fn setup(
    vm: &KvmVm,
    config: &VmConfig,
    run_state: &Arc<RunState>,
    start: (Instant, Duration),
) -> Result<DeviceSetup, DeviceError> {
    let mut io = IoBuses::default();
    let mut subscribers: Vec<Subscriber> = Vec::new();

    let com1_irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
    vm.register_irqfd(&com1_irq, COM1_IRQ)?;
    let irq_line = Arc::new(com1_irq.try_clone().map_err(DeviceError::EventFd)?);
    let serial = Arc::new(
        SerialDevice::new(irq_line, Box::new(serial_writer(&config.serial)?))
            .map_err(DeviceError::EventFd)?,
    );
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
    io.pio
        .insert(CMOS_PORT, CMOS_PORT_LEN, Arc::new(Cmos::default()))?;

    let rs = run_state.clone();
    let boot_timer = Arc::new(BootTimer::new(
        start.0,
        start.1,
        Arc::new(move |t| rs.record_boot(t)),
    ));
    io.pio
        .insert(BOOT_TIMER_PORT, 1, boot_timer.clone() as Arc<dyn BusDevice>)?;

    Ok(DeviceSetup {
        devices: Devices {
            serial,
            boot_timer,
            _irqfds: vec![com1_irq],
        },
        io,
        subscribers,
        cmdline_extra: Vec::new(),
    })
}
