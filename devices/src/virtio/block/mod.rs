//! virtio-blk: a raw disk over virtio-mmio.
//!
//! - [`request`]: the pure parser of a request's descriptor chain;
//! - [`backend`]: the storage trait, with file and memory backends;
//! - [`handler`]: executing requests and the queue loop;
//! - [`device`]: features, config space and activation;
//! - `event_handler`: the event-loop subscriber;
//! - [`metrics`]: counters of requests and bytes;
//! - [`overlay`]: copy-on-write overlay files over a read-only base.

pub mod backend;
pub mod device;
mod event_handler;
pub mod handler;
pub mod metrics;
pub mod overlay;
pub mod persist;
pub mod request;

pub use backend::{DiskBackend, DiskError, FileDisk, MemoryDisk};
pub use device::{Block, BlockOptions};
pub use handler::MAX_CHUNK;
pub use metrics::{BlockCounters, BlockMetrics};
pub use overlay::{OverlayDisk, OverlayError, Parent};
