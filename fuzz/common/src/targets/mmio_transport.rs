//! Sequences of MMIO reads and writes (any offset, widths 1/2/4/8) to a
//! `hearth_devices::virtio::MmioTransport` wrapping a real virtio-blk
//! device over a `MemoryDisk`. Besides raw accesses the input has driver
//! steps (status bring-up, feature negotiation, queue setup with a usable
//! ring layout, DRIVER_OK) so that activation is reached often, queue
//! notifies (the device then drains its queue, as the event loop would),
//! block requests posted on that ring, and snapshot save/restore.
//!
//! Invariants: no panic; the identification registers read their fixed
//! values; control registers read as zero at any width but 4; QueueNumMax
//! is the device's for queue 0 and zero for the others; the device is
//! active exactly when the status shows DRIVER_OK without NEEDS_RESET;
//! a saved transport restores into a fresh one and saves the same again.

use std::sync::{Arc, Mutex};

use arbitrary::{Arbitrary, Unstructured};
use hearth_devices::bus::BusDevice;
use hearth_devices::virtio::block::{device::QUEUE_SIZE, Block, BlockOptions, MemoryDisk};
use hearth_devices::virtio::{MmioTransport, VirtioDevice, VirtioInterrupt};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_queue::QueueT;

use crate::guest::Guest;
use crate::ring::{queue_size, Desc, Ring};
use crate::NoIrq;

/// Register offsets (virtio 1.2, 4.2.2).
const REGS: [u64; 26] = [
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050, 0x060, 0x064,
    0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0b0, 0x0b8, 0x0fc, 0x100,
];
const STATUS: u64 = 0x070;
const ACK: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;
const NEEDS_RESET: u32 = 64;

#[derive(Debug)]
struct Offset(u64);

impl<'a> Arbitrary<'a> for Offset {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self(match u8::arbitrary(u)? {
            0..=179 => REGS[usize::from(u8::arbitrary(u)?) % REGS.len()],
            180..=209 => 0x100 + u64::from(u8::arbitrary(u)? % 80),
            210..=239 => REGS[usize::from(u8::arbitrary(u)?) % REGS.len()] + u64::from(u8::arbitrary(u)? % 4),
            240..=249 => u64::from(u16::arbitrary(u)? % 0x1000),
            _ => u.arbitrary()?,
        }))
    }
}

#[derive(Debug)]
struct Width(usize);

impl<'a> Arbitrary<'a> for Width {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self(match u8::arbitrary(u)? % 8 {
            0 => 1,
            1 => 2,
            2 => 8,
            _ => 4,
        }))
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read(Offset, Width),
    Write(Offset, Width, u64),
    /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK.
    Negotiate {
        low: u32,
        high: u32,
        use_offered: bool,
    },
    /// Queue 0 on the harness's ring layout, or queue `sel` anywhere.
    SetupQueue {
        sel: u8,
        size: u8,
        standard: bool,
        desc: u64,
        avail: u64,
        used: u64,
        ready: bool,
    },
    DriverOk,
    Status(u8),
    Notify(u32),
    Request {
        write: bool,
        sector: u8,
    },
    SaveRestore,
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Input {
    read_only: bool,
    ops: Vec<Op>,
}

struct Rig {
    g: Guest,
    block: Arc<Mutex<Block>>,
    t: MmioTransport,
    ring: Option<Ring>,
    read_only: bool,
}

fn lock(b: &Mutex<Block>) -> std::sync::MutexGuard<'_, Block> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

fn new_device(g: &Guest, read_only: bool) -> Option<(Arc<Mutex<Block>>, MmioTransport)> {
    let options = BlockOptions {
        read_only,
        ..BlockOptions::default()
    };
    let block = Arc::new(Mutex::new(
        Block::new(Box::new(MemoryDisk::new(16)), &options).ok()?,
    ));
    let interrupt = Arc::new(VirtioInterrupt::new(Arc::new(NoIrq)));
    let t = MmioTransport::new(block.clone(), g.mem.clone(), interrupt).ok()?;
    Some((block, t))
}

impl Rig {
    fn r(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(&self, off: u64, v: u32) {
        self.t.write(off, &v.to_le_bytes());
    }

    fn check_read(&self, off: u64, width: usize, bytes: &[u8]) {
        if off >= 0x100 {
            return;
        }
        if width != 4 || !off.is_multiple_of(4) {
            assert!(
                bytes.iter().all(|&b| b == 0),
                "{width}-byte read at {off:#x} is not zero"
            );
            return;
        }
        let v = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        match off {
            0x000 => assert_eq!(v, 0x7472_6976, "MagicValue"),
            0x004 => assert_eq!(v, 2, "Version"),
            0x008 => assert_eq!(v, 2, "DeviceID"),
            0x034 => {
                let sel = self.t.state().queue_sel;
                let max = if sel == 0 { u32::from(QUEUE_SIZE) } else { 0 };
                assert_eq!(v, max, "QueueNumMax of queue {sel}");
            }
            _ => {}
        }
    }

    /// The device is live exactly when the driver sees DRIVER_OK without
    /// NEEDS_RESET.
    fn check_status(&self) {
        let s = self.r(STATUS);
        let active = lock(&self.block).is_active();
        let live = s & DRIVER_OK != 0 && s & NEEDS_RESET == 0;
        assert_eq!(active, live, "device active = {active} with status {s:#x}");
    }

    fn notify(&mut self, value: u32) {
        self.w(0x050, value);
        let signalled = lock(&self.block).queue_events()[0].read().is_ok();
        if signalled {
            if let Some(ring) = &self.ring {
                ring.before_device(&self.g);
            }
            lock(&self.block).process_queue();
            if let Some(ring) = &mut self.ring {
                ring.after_device(&self.g, "mmio_transport");
            }
        }
    }

    fn request(&mut self, write: bool, sector: u8) {
        let Some(ring) = &mut self.ring else { return };
        let g = &mut self.g;
        let hdr = g.alloc(16);
        let kind = if write { VIRTIO_BLK_T_OUT } else { VIRTIO_BLK_T_IN };
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&u64::from(sector % 20).to_le_bytes());
        g.write_data(hdr, &h);
        let data = g.alloc(512);
        let status = g.alloc(1);
        let descs = [
            Desc {
                addr: hdr,
                len: 16,
                write: false,
            },
            Desc {
                addr: data,
                len: 512,
                write: !write,
            },
            Desc {
                addr: status,
                len: 1,
                write: true,
            },
        ];
        ring.post(g, &descs, false);
    }

    fn save_restore(&mut self) {
        let snap = self.t.save();
        let Some((block, t)) = new_device(&self.g, self.read_only) else {
            return;
        };
        let restored = t.restore(&snap);
        assert_eq!(restored, Ok(()), "a saved transport does not restore: {snap:?}");
        assert_eq!(t.save(), snap, "transport save/restore round trip");
        self.block = block;
        self.t = t;
    }
}

/// The `mmio_transport` target.
pub fn mmio_transport(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut g = Guest::new();
    // Queue addresses come from the input: the memory invariants do not
    // apply here (virtio_blk checks them); the used ring is only read back.
    g.taint();
    let Some((block, t)) = new_device(&g, input.read_only) else {
        return;
    };
    let mut rig = Rig {
        g,
        block,
        t,
        ring: None,
        read_only: input.read_only,
    };
    for op in input.ops.iter().take(96) {
        match op {
            Op::Read(off, width) => {
                let mut b = vec![0xeeu8; width.0];
                rig.t.read(off.0, &mut b);
                rig.check_read(off.0, width.0, &b);
            }
            Op::Write(off, width, v) => rig.t.write(off.0, &v.to_le_bytes()[..width.0]),
            Op::Negotiate {
                low,
                high,
                use_offered,
            } => {
                rig.w(STATUS, ACK);
                rig.w(STATUS, ACK | DRIVER);
                let offered = {
                    rig.w(0x014, 0);
                    let lo = rig.r(0x010);
                    rig.w(0x014, 1);
                    u64::from(rig.r(0x010)) << 32 | u64::from(lo)
                };
                let acked = if *use_offered {
                    offered & (u64::from(*high) << 32 | u64::from(*low)) | offered & (1 << 32)
                } else {
                    u64::from(*high) << 32 | u64::from(*low)
                };
                rig.w(0x024, 0);
                rig.w(0x020, acked as u32);
                rig.w(0x024, 1);
                rig.w(0x020, (acked >> 32) as u32);
                rig.w(STATUS, ACK | DRIVER | FEATURES_OK);
            }
            Op::SetupQueue {
                sel,
                size,
                standard,
                desc,
                avail,
                used,
                ready,
            } => {
                let size = queue_size(*size);
                let (sel, desc, avail, used) = if *standard {
                    let ring = Ring::new(&mut rig.g, 0, size);
                    let q = ring.queue(false);
                    rig.ring = Some(ring);
                    (0, q.desc_table(), q.avail_ring(), q.used_ring())
                } else {
                    (u32::from(*sel % 3), *desc, *avail, *used)
                };
                rig.w(0x030, sel);
                rig.w(0x038, u32::from(size));
                rig.w(0x080, desc as u32);
                rig.w(0x084, (desc >> 32) as u32);
                rig.w(0x090, avail as u32);
                rig.w(0x094, (avail >> 32) as u32);
                rig.w(0x0a0, used as u32);
                rig.w(0x0a4, (used >> 32) as u32);
                rig.w(0x044, u32::from(*ready || *standard));
            }
            Op::DriverOk => rig.w(STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK),
            Op::Status(s) => rig.w(STATUS, u32::from(*s)),
            Op::Notify(v) => rig.notify(if *v < 0x1000_0000 { 0 } else { *v }),
            Op::Request { write, sector } => rig.request(*write, *sector),
            Op::SaveRestore => rig.save_restore(),
            Op::Reset => rig.w(STATUS, 0),
        }
        rig.check_status();
    }
}
