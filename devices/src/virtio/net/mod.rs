//! virtio-net: one queue pair over a pluggable backend (a TAP interface
//! or the library user's own networking).
//!
//! - [`rxtx`]: frames in descriptor chains, pure (tx validation, rx
//!   placement across one or more chains);
//! - [`backend`]: the public backend trait and an in-memory backend;
//! - [`tap`]: the TAP backend (its ioctls);
//! - [`user`]: the user-mode backend (smoltcp, deny-by-default egress
//!   policy, no root);
//! - `persist`: what the device saves (its backend's state);
//! - [`handler`]: the rx and tx queue loops and the bounded rx backlog;
//! - [`device`]: features, config space and activation;
//! - `event_handler`: the event-loop subscriber;
//! - [`metrics`]: counters of frames, bytes and drops.
//!
//! Receive path: the backend's fd is polled only while the rx backlog has
//! room. Frames go straight to guest buffers; when the guest has none,
//! they wait in the backlog (at most [`handler::RX_BACKLOG_FRAMES`] frames
//! or [`handler::RX_BACKLOG_BYTES`]), and once it is full the device stops
//! reading, so further frames wait in (and are dropped by) the backend,
//! e.g. the TAP's kernel queue, until the guest posts buffers.

pub mod backend;
pub mod device;
mod event_handler;
pub mod handler;
pub mod metrics;
mod persist;
pub mod rxtx;
pub mod tap;
#[cfg(test)]
mod tests;
pub mod user;

pub use backend::{GuestOffloads, MemoryNet, NetBackend};
pub use device::{MacAddr, MacParseError, Net, NetError, NetOptions};
pub use metrics::{NetCounters, NetMetrics};
pub use rxtx::MAX_PACKET_LEN;
pub use tap::{Tap, TapError};
