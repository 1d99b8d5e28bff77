//! Register reads and writes (any offset, 1 to 8 bytes) to the 16550A
//! wrapper `hearth_devices::legacy::SerialDevice`, host input, and
//! snapshot round trips.
//!
//! Invariants: no panic; a model of the registers the guest owns agrees
//! with the device: the scratch register reads back what was written,
//! bytes written to THR (DLAB clear, not in loopback) reach the output in
//! order and nothing else does, LSR's data-ready bit is set exactly when
//! the receive FIFO holds bytes, host input never exceeds the FIFO's free
//! space; `from_snapshot(save())` saves the same state again.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use arbitrary::{Arbitrary, Unstructured};
use hearth_devices::bus::BusDevice;
use hearth_devices::legacy::SerialDevice;

use crate::NoIrq;

const FIFO: usize = 64;

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() < 1 << 16 {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A register offset: mostly the eight registers, sometimes anything.
#[derive(Debug)]
struct Offset(u64);

impl<'a> Arbitrary<'a> for Offset {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self(match u8::arbitrary(u)? {
            0..=239 => u64::from(u8::arbitrary(u)? % 8),
            240..=249 => u64::from(u8::arbitrary(u)?),
            _ => u.arbitrary()?,
        }))
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read(Offset, u8),
    Write(Offset, Vec<u8>),
    Input(Vec<u8>),
    Snapshot,
}

#[derive(Debug, Default)]
struct Model {
    lcr: u8,
    mcr: u8,
    scratch: u8,
    out: Vec<u8>,
}

/// The `serial` target.
pub fn serial(data: &[u8]) {
    let Ok(ops) = Vec::<Op>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let sink = Sink::default();
    let Ok(mut dev) = SerialDevice::new(Arc::new(NoIrq), Box::new(sink.clone())) else {
        return;
    };
    let mut m = Model {
        lcr: 0b11,
        mcr: 0b1000,
        ..Model::default()
    };
    for op in ops.iter().take(256) {
        match op {
            Op::Read(off, width) => {
                let mut buf = vec![0u8; usize::from(width % 8) + 1];
                let fifo_bytes = FIFO - dev.input_capacity();
                dev.read(off.0, &mut buf);
                match off.0 {
                    7 => assert!(buf.iter().all(|&b| b == m.scratch), "scratch register"),
                    5 => assert_eq!(
                        buf[0] & 1 != 0,
                        fifo_bytes > 0,
                        "LSR data-ready with {fifo_bytes} bytes in the FIFO"
                    ),
                    3 => assert!(buf.iter().all(|&b| b == m.lcr), "LCR"),
                    4 => assert!(buf.iter().all(|&b| b == m.mcr), "MCR"),
                    _ => {}
                }
            }
            Op::Write(off, bytes) => {
                let bytes = &bytes[..bytes.len().min(8)];
                dev.write(off.0, bytes);
                for &b in bytes {
                    match off.0 {
                        0 if m.lcr & 0x80 == 0 && m.mcr & 0x10 == 0 => m.out.push(b),
                        3 => m.lcr = b,
                        4 => m.mcr = b,
                        7 => m.scratch = b,
                        _ => {}
                    }
                }
            }
            Op::Input(bytes) => {
                let before = dev.input_capacity();
                let n = dev.enqueue_input(bytes);
                assert!(
                    n <= before && n <= bytes.len(),
                    "took {n} bytes with room for {before}"
                );
                assert_eq!(dev.input_capacity(), before - n, "FIFO space after input");
            }
            Op::Snapshot => {
                let snap = dev.save();
                let Ok(copy) = SerialDevice::from_snapshot(Arc::new(NoIrq), Box::new(sink.clone()), &snap)
                else {
                    panic!("a saved serial state does not restore");
                };
                assert_eq!(copy.save(), snap, "serial snapshot round trip");
                dev = copy;
            }
        }
    }
    let out = sink.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let n = out.len().min(m.out.len());
    assert_eq!(out.len(), m.out.len().min(1 << 16), "serial output length");
    assert_eq!(out[..n], m.out[..n], "serial output");
}
