//! The same snapshot round trip for every virtio device, through one
//! helper: a driver brings the device up through its MMIO registers
//! (every queue placed apart), the transport and device state are saved,
//! restored into a fresh device of the same kind, and saved again: the
//! two saves must be equal, and the restored device must be live.

use std::sync::{Arc, Mutex};

use vm_memory::GuestAddress;

use super::device::VirtioDevice;
use super::mmio::MmioTransport;
use super::persist::TransportSnapshot;
use super::{status, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;
use crate::interrupt::test_utils::CountingIrq;
use crate::GuestMemoryMmap;

const STATUS: u64 = 0x70;

fn w(t: &MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r(t: &MmioTransport, off: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(off, &mut d);
    u32::from_le_bytes(d)
}

fn transport<D: VirtioDevice + 'static>(dev: D, mem: &GuestMemoryMmap) -> MmioTransport {
    let interrupt = Arc::new(VirtioInterrupt::new(Arc::new(CountingIrq::default())));
    MmioTransport::new(Arc::new(Mutex::new(dev)), mem.clone(), interrupt).unwrap()
}

/// Brings the device up with every queue (16 entries, rings 16 KiB apart).
fn bring_up(t: &MmioTransport) {
    let ack = status::ACKNOWLEDGE | status::DRIVER;
    w(t, STATUS, status::ACKNOWLEDGE);
    w(t, STATUS, ack);
    w(t, 0x24, 1);
    w(t, 0x20, 1 << (VIRTIO_F_VERSION_1 - 32));
    w(t, STATUS, ack | status::FEATURES_OK);
    for q in 0..8u32 {
        w(t, 0x30, q);
        if r(t, 0x34) == 0 {
            break;
        }
        let base = 0x10_0000 + u64::from(q) * 0x4000;
        w(t, 0x38, 16);
        w(t, 0x80, base as u32);
        w(t, 0x90, (base + 0x1000) as u32);
        w(t, 0xa0, (base + 0x2000) as u32);
        w(t, 0x44, 1);
    }
    w(t, STATUS, ack | status::FEATURES_OK | status::DRIVER_OK);
    assert_eq!(r(t, STATUS) & status::NEEDS_RESET, 0, "the device went live");
}

/// The round trip for the devices `make` builds (two of the same kind).
pub(crate) fn round_trip<D: VirtioDevice + 'static>(make: impl Fn() -> D) -> TransportSnapshot {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let first = transport(make(), &mem);
    bring_up(&first);
    let saved = first.save();
    assert_ne!(saved.status & status::DRIVER_OK, 0);
    drop(first);
    let second = transport(make(), &mem);
    second.restore(&saved).unwrap();
    let again = second.save();
    assert_eq!(again, saved, "a restored device saves what it was restored from");
    assert_eq!(r(&second, STATUS), saved.status, "the restored device is live");
    saved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::{Block, BlockOptions, MemoryDisk};
    use crate::virtio::net::{MemoryNet, Net, NetOptions};
    use crate::virtio::vsock::{Vsock, VsockLimits};

    #[test]
    fn block_round_trips() {
        let saved =
            round_trip(|| Block::new(Box::new(MemoryDisk::new(64)), &BlockOptions::default()).unwrap());
        assert_eq!(saved.device.as_ref().map(|d| d.kind()), Some("block"));
        // A disk of another size is refused, naming both sizes.
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let other = transport(
            Block::new(Box::new(MemoryDisk::new(128)), &BlockOptions::default()).unwrap(),
            &mem,
        );
        let e = other.restore(&saved).unwrap_err().to_string();
        assert!(e.contains("128 sectors") && e.contains("64"), "{e}");
    }

    #[test]
    fn net_round_trips() {
        let saved =
            round_trip(|| Net::new(Box::new(MemoryNet::new().unwrap()), &NetOptions::default()).unwrap());
        assert_eq!(saved.queues.len(), 2);
    }

    #[test]
    fn vsock_round_trips() {
        let dir = std::env::temp_dir().join(format!("hearth-roundtrip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let n = std::sync::atomic::AtomicU32::new(0);
        let saved = round_trip(|| {
            let path = dir.join(format!(
                "v{}.sock",
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            ));
            Vsock::new(3, &path, VsockLimits::default()).unwrap()
        });
        assert_eq!(saved.device.as_ref().map(|d| d.kind()), Some("vsock"));
        assert_eq!(saved.queues.len(), 3);
    }
}
