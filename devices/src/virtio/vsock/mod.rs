//! virtio-vsock with a host side compatible with Firecracker's hybrid
//! vsock (Unix sockets).
//!
//! - [`defs`]: protocol constants and the packet header;
//! - [`handshake`]: the `CONNECT <port>` line of host clients (pure);
//! - [`connection`]: one stream's state machine and credit accounting;
//! - [`muxer`]: the VM's Unix socket, pending clients and connections;
//! - [`device`]: the virtio device and its three queues;
//! - `event_handler`: the event-loop subscriber.

pub mod connection;
pub mod defs;
pub mod device;
mod event_handler;
pub mod handshake;
pub mod muxer;
pub mod persist;
#[cfg(test)]
mod tests;

pub use defs::{DEFAULT_CONN_BUFFER, DEFAULT_MAX_CONNECTIONS};
pub use device::{Vsock, VsockError};
pub use muxer::{MuxerError, VsockLimits, VsockTraffic, MAX_CONTROL_PACKETS, MAX_PENDING_CLIENTS};
