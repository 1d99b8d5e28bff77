//! Copy-on-write disk overlays: a sparse file holding only the blocks a VM
//! wrote, over a read-only parent chain (a raw base image, optionally
//! under one or more frozen overlay layers). The format is described in
//! `docs/DISK.md`; in short (little-endian):
//!
//! - a 4096-byte header ([`mod@format`]): magic `HRTHOVL1`, version 1, block
//!   size 4096, virtual size, bitmap and data offsets, this layer's random
//!   id, a CRC-64/XZ of the header, and the parent reference: kind (1 raw
//!   image, 2 overlay layer), size, identity (a raw image's mtime and the
//!   SHA-256 of its first and last 64 KiB; an overlay's layer id) and
//!   path;
//! - a bitmap at 4096, one bit per block (1 = the block's current contents
//!   are in this layer), padded to 4096 bytes;
//! - the data region, identity layout: block `i` at
//!   `data_offset + i * 4096`, so unwritten blocks are holes.
//!
//! [`OverlayDisk`] is the live layer (a [`DiskBackend`](super::DiskBackend));
//! [`Parent`] names the chain below it and [`Layer`] is that chain opened.
//! [`OverlayDisk::freeze_into`] collapses the chain's overlay layers into
//! one new layer on the base, for snapshots and forks.
//!
//! Durability: data is synced before the bitmap pages that mark it present
//! are written (on flush and on drop), so a crash leaves every block with
//! either its old or its new contents.

mod bitmap;
mod disk;
mod error;
pub mod format;
mod freeze;
mod image;
mod layer;
#[cfg(test)]
mod tests;

pub use disk::OverlayDisk;
pub use error::OverlayError;
pub use format::{Header, ParentRef, RawIdentity};
pub use image::CreateMode;
pub use layer::{inspect, FrozenLayer, Layer, Parent, RawLayer, ReadLayer};
