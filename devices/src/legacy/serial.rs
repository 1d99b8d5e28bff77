//! The 16550A UART on COM1: vm-superio's model on the PIO bus, with output
//! to a caller-chosen sink and input fed by an event-loop subscriber.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use vm_superio::serial::{SerialEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;
use crate::interrupt::IrqLine;

/// COM1's I/O base.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1's legacy IRQ.
pub const COM1_IRQ: u32 = 4;
/// Length of the UART's register window.
pub const SERIAL_PORT_LEN: u64 = 8;

/// Where the guest's serial output goes.
pub type SerialSink = Box<dyn Write + Send>;

/// Raises the serial interrupt through an [`IrqLine`].
#[derive(Debug)]
pub struct IrqTrigger(pub Arc<dyn IrqLine>);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// Tells the input subscriber when the guest drained the receive FIFO.
#[derive(Debug)]
pub struct InputEvents {
    buffer_ready: EventFd,
}

impl SerialEvents for InputEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // A full counter only means a wake-up is already pending.
        let _ = self.buffer_ready.write(1);
    }
}

type Uart = Serial<IrqTrigger, InputEvents, SerialSink>;

/// The UART's registers and receive FIFO, for snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for SerialSnapshot {
    fn from(s: SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialSnapshot> for SerialState {
    fn from(s: &SerialSnapshot) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// The serial port device.
pub struct SerialDevice {
    uart: Mutex<Uart>,
}

impl fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SerialDevice")
    }
}

impl SerialDevice {
    /// Creates a UART that raises `irq` and writes guest output to `sink`.
    pub fn new(irq: Arc<dyn IrqLine>, sink: SerialSink) -> io::Result<Self> {
        let events = InputEvents {
            buffer_ready: EventFd::new(EFD_NONBLOCK)?,
        };
        Ok(Self {
            uart: Mutex::new(Serial::with_events(IrqTrigger(irq), events, sink)),
        })
    }

    /// A UART in a saved state (the FIFO must fit; registers are taken as
    /// they are, since any value is one the guest could have written).
    pub fn from_snapshot(irq: Arc<dyn IrqLine>, sink: SerialSink, snap: &SerialSnapshot) -> io::Result<Self> {
        let events = InputEvents {
            buffer_ready: EventFd::new(EFD_NONBLOCK)?,
        };
        let uart = Serial::from_state(&SerialState::from(snap), IrqTrigger(irq), events, sink)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("serial state: {e:?}")))?;
        Ok(Self {
            uart: Mutex::new(uart),
        })
    }

    /// The registers and FIFO now.
    pub fn save(&self) -> SerialSnapshot {
        // A poisoned lock still holds the registers as they were.
        let uart = self.uart.lock().unwrap_or_else(|p| p.into_inner());
        uart.state().into()
    }

    /// Queues bytes for the guest to read. Returns how many fitted in the FIFO.
    pub fn enqueue_input(&self, bytes: &[u8]) -> usize {
        let Ok(mut uart) = self.uart.lock() else { return 0 };
        uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.lock().map(|u| u.fifo_capacity()).unwrap_or(0)
    }

    fn buffer_ready_fd(&self) -> io::Result<EventFd> {
        let uart = self
            .uart
            .lock()
            .map_err(|_| io::Error::other("serial lock poisoned"))?;
        uart.events().buffer_ready.try_clone()
    }

    /// Flushes the output sink.
    pub fn flush(&self) {
        if let Ok(mut uart) = self.uart.lock() {
            let _ = uart.writer_mut().flush();
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let Ok(mut uart) = self.uart.lock() else { return };
        let Ok(offset) = u8::try_from(offset) else { return };
        // Wider or repeated accesses hit the same byte register each time.
        for byte in data.iter_mut() {
            *byte = uart.read(offset);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let Ok(mut uart) = self.uart.lock() else { return };
        let Ok(offset) = u8::try_from(offset) else { return };
        for &byte in data {
            if let Err(e) = uart.write(offset, byte) {
                log::debug!("serial write: {e:?}");
            }
        }
    }
}

/// Event-loop subscriber that moves host input into the guest's UART,
/// pausing while the guest's receive FIFO is full.
pub struct SerialInput {
    serial: Arc<SerialDevice>,
    input: File,
    buffer_ready: EventFd,
    input_registered: bool,
}

impl fmt::Debug for SerialInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerialInput")
            .field("input", &self.input.as_raw_fd())
            .finish()
    }
}

impl SerialInput {
    /// Feeds `input` (a readable fd: stdin, a pipe, a pty) into `serial`.
    pub fn new(serial: Arc<SerialDevice>, input: File) -> io::Result<Self> {
        let buffer_ready = serial.buffer_ready_fd()?;
        Ok(Self {
            serial,
            input,
            buffer_ready,
            input_registered: false,
        })
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let capacity = self.serial.input_capacity();
        if capacity == 0 {
            // Wait for the guest to drain the FIFO (buffer_ready) first.
            self.unregister_input(ops);
            return;
        }
        let mut buf = [0u8; 64];
        let want = capacity.min(buf.len());
        match self.input.read(&mut buf[..want]) {
            Ok(0) => self.unregister_input(ops),
            Ok(n) => {
                self.serial.enqueue_input(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("serial input: {e}; no more input will be read");
                self.unregister_input(ops);
            }
        }
    }

    fn register_input(&mut self, ops: &mut EventOps) {
        if !self.input_registered && ops.add(Events::new(&self.input, EventSet::IN)).is_ok() {
            self.input_registered = true;
        }
    }

    fn unregister_input(&mut self, ops: &mut EventOps) {
        if self.input_registered {
            let _ = ops.remove(Events::new(&self.input, EventSet::IN));
            self.input_registered = false;
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.buffer_ready.as_raw_fd() {
            let _ = self.buffer_ready.read();
            self.register_input(ops);
        } else if events.fd() == self.input.as_raw_fd() {
            if events.event_set().contains(EventSet::IN) {
                self.read_input(ops);
            } else {
                // Hang-up or error with nothing to read.
                self.unregister_input(ops);
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.buffer_ready, EventSet::IN)) {
            log::warn!("serial input: cannot watch buffer-ready eventfd: {e}");
        }
        self.register_input(ops);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::test_utils::CountingIrq;

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_sink_and_input_reaches_guest() {
        let irq = Arc::new(CountingIrq::default());
        let out = SharedBuf::default();
        let dev = SerialDevice::new(irq.clone(), Box::new(out.clone())).unwrap();
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        // rep outsb: several bytes in one exit.
        dev.write(0, b"ok");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\nok");

        // Enable the receive interrupt, then feed input.
        dev.write(1, &[0x01]);
        let before = irq.count();
        assert_eq!(dev.enqueue_input(b"xy"), 2);
        assert!(irq.count() > before);
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b, [b'x']);
        dev.read(0, &mut b);
        assert_eq!(b, [b'y']);
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 0);
    }

    #[test]
    fn odd_offsets_and_widths_are_harmless() {
        let dev = SerialDevice::new(Arc::new(CountingIrq::default()), Box::new(io::sink())).unwrap();
        let mut d = [0u8; 8];
        dev.read(1 << 40, &mut d);
        dev.write(u64::MAX, &[1, 2, 3]);
        dev.read(7, &mut d);
        dev.write(3, &[]);
    }

    #[test]
    fn snapshot_round_trip_keeps_registers_and_fifo() {
        let dev = SerialDevice::new(Arc::new(CountingIrq::default()), Box::new(io::sink())).unwrap();
        dev.write(3, &[0x03]); // 8N1
        dev.write(7, &[0x5a]); // scratch
        dev.write(1, &[0x01]);
        dev.enqueue_input(b"abc");
        let snap = dev.save();
        assert_eq!(snap.in_buffer, b"abc");
        let copy = SerialDevice::from_snapshot(Arc::new(CountingIrq::default()), Box::new(io::sink()), &snap)
            .unwrap();
        assert_eq!(copy.save(), snap);
        let mut b = [0u8];
        copy.read(7, &mut b);
        assert_eq!(b, [0x5a]);
        copy.read(0, &mut b);
        assert_eq!(b, [b'a']);
        let mut too_big = snap.clone();
        too_big.in_buffer = vec![0; 1000];
        assert!(SerialDevice::from_snapshot(
            Arc::new(CountingIrq::default()),
            Box::new(io::sink()),
            &too_big
        )
        .is_err());
    }

    #[test]
    fn input_fifo_fills_and_refuses() {
        let dev = SerialDevice::new(Arc::new(CountingIrq::default()), Box::new(io::sink())).unwrap();
        let cap = dev.input_capacity();
        assert!(cap > 0);
        assert_eq!(dev.enqueue_input(&vec![b'a'; cap + 10]), cap);
        assert_eq!(dev.input_capacity(), 0);
        assert_eq!(dev.enqueue_input(b"b"), 0);
    }
}
