//! One module per fuzz target.

pub mod agent_frames;
pub mod cmdline;
pub mod config_json;
pub mod mmio_transport;
pub mod overlay_image;
pub mod serial;
pub mod snapshot_state_decode;
pub mod user_net;
pub mod virtio_blk;
pub mod virtio_net_rx;
pub mod virtio_net_tx;
pub mod vsock_packets;
