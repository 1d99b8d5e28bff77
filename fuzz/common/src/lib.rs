//! Hearth's fuzz targets as plain functions over bytes, so that the
//! libFuzzer binaries in `fuzz/fuzz_targets/` stay thin and the corpora
//! and crash reproducers replay under stable `cargo test`
//! (`tests/corpus.rs`).
//!
//! Each target decodes its input with `arbitrary` into a structure that is
//! mostly valid, with rare invalid choices, runs the code under test and
//! asserts its invariants with `assert!` (a failed assertion is a crash
//! for libFuzzer). The shared pieces:
//!
//! - [`guest`]: a small guest memory reused across iterations, and the
//!   check that a device writes only where the guest allowed it;
//! - [`ring`]: the driver's side of a virtqueue and the used-ring checks;
//! - [`limiter`]: rate limiters on a clock the input moves.

pub mod guest;
pub mod limiter;
pub mod ring;
mod targets;

pub use targets::agent_frames::agent_frames;
pub use targets::cmdline::cmdline;
pub use targets::config_json::config_json;
pub use targets::mmio_transport::mmio_transport;
pub use targets::overlay_image::overlay_image;
pub use targets::serial::serial;
pub use targets::snapshot_state_decode::snapshot_state_decode;
pub use targets::user_net::user_net;
pub use targets::virtio_blk::virtio_blk;
pub use targets::virtio_net_rx::virtio_net_rx;
pub use targets::virtio_net_tx::virtio_net_tx;
pub use targets::vsock_packets::vsock_packets;

/// A target's entry point.
pub type Target = fn(&[u8]);

/// Every target, by name (the names of `fuzz/fuzz_targets/*.rs` and of
/// the corpus directories).
pub const TARGETS: [(&str, Target); 12] = [
    ("mmio_transport", mmio_transport),
    ("virtio_blk", virtio_blk),
    ("virtio_net_tx", virtio_net_tx),
    ("virtio_net_rx", virtio_net_rx),
    ("vsock_packets", vsock_packets),
    ("serial", serial),
    ("snapshot_state_decode", snapshot_state_decode),
    ("config_json", config_json),
    ("cmdline", cmdline),
    ("agent_frames", agent_frames),
    ("user_net", user_net),
    ("overlay_image", overlay_image),
];

/// An interrupt line that goes nowhere.
#[derive(Debug, Default)]
pub struct NoIrq;

impl hearth_devices::interrupt::IrqLine for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}
