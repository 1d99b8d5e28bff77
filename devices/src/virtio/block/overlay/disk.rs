//! [`OverlayDisk`]: the live, writable layer, as a virtio-blk backend.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use super::error::OverlayError;
use super::format::{Header, BLOCK_SIZE};
use super::image::{check_range, random_id, CreateMode, Image};
use super::layer::{check_parent, Layer, Parent, ReadLayer};
use crate::virtio::block::backend::DiskBackend;

/// A copy-on-write overlay: blocks the VM wrote live in this file, the
/// others are read from the read-only parent chain.
///
/// Memory: the bitmap and one block buffer, whatever the request size.
/// Bitmap changes reach the file on [`flush`](DiskBackend::flush) (after
/// the data is synced) and when the disk is dropped.
#[derive(Debug)]
pub struct OverlayDisk {
    pub(crate) image: Image,
    pub(crate) parent: Layer,
    spec: Parent,
    /// One block, for read-modify-write and zeroing.
    scratch: Vec<u8>,
    /// Data was written since the last sync.
    data_dirty: bool,
    /// Tests: drop without writing the bitmap (a crash).
    #[cfg(test)]
    pub(crate) skip_bitmap_on_drop: bool,
}

impl OverlayDisk {
    /// Makes a new, empty overlay at `path` on `parent`; refuses an
    /// existing file.
    pub fn create(path: &Path, parent: Parent) -> Result<Self, OverlayError> {
        Self::create_with(path, parent, CreateMode::New)
    }

    /// Makes a new, empty overlay at `path` on `parent`; `mode` says
    /// whether an existing file is replaced.
    pub fn create_with(path: &Path, parent: Parent, mode: CreateMode) -> Result<Self, OverlayError> {
        let layer = parent.open_for(Some(path))?;
        if let Ok(meta) = std::fs::metadata(path) {
            if layer.contains(&meta) {
                return Err(OverlayError::InChain { path: path.into() });
            }
        }
        let header = Header::new(layer.size(), random_id()?, layer.as_parent_ref(), parent.path());
        let image = Image::create(path, header, mode)?;
        log::info!(
            "created overlay {} (layer {:016x}) on {}",
            path.display(),
            image.header.layer_id,
            parent.path().display()
        );
        Ok(Self::new(image, layer, parent))
    }

    /// Opens the overlay at `path`, read-write, on `parent`: refused when
    /// it is damaged or was made on another parent.
    pub fn open(path: &Path, parent: Parent) -> Result<Self, OverlayError> {
        let image = Image::open(path, true)?;
        let layer = parent.open_for(Some(path))?;
        check_parent(path, &image.header, parent.path(), &layer)?;
        Ok(Self::new(image, layer, parent))
    }

    fn new(image: Image, parent: Layer, spec: Parent) -> Self {
        Self {
            image,
            parent,
            spec,
            scratch: vec![0; BLOCK_SIZE as usize],
            data_dirty: false,
            #[cfg(test)]
            skip_bitmap_on_drop: false,
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.image.path
    }

    /// Its layer id (what an overlay made on it once frozen records).
    pub fn layer_id(&self) -> u64 {
        self.image.header.layer_id
    }

    /// Its header.
    pub fn header(&self) -> &Header {
        &self.image.header
    }

    /// The chain below it, as given.
    pub fn parent(&self) -> &Parent {
        &self.spec
    }

    /// The chain below it, opened.
    pub fn parent_layer(&self) -> &Layer {
        &self.parent
    }

    /// The chain with this file as its top layer: the parent of an overlay
    /// made on this one (once it is no longer written).
    pub fn as_parent(&self) -> Parent {
        Parent::Overlay(self.image.path.clone(), Box::new(self.spec.clone()))
    }

    /// Blocks whose contents are in this layer.
    pub fn present_blocks(&self) -> u64 {
        self.image.bitmap.count()
    }

    /// Whether block `i` is covered entirely by `start..end`.
    fn covers(&self, i: u64, start: u64, end: u64) -> bool {
        start <= i * BLOCK_SIZE && end >= self.image.block_end(i)
    }

    /// Writes `patch` (zeros when `None`) over `len` bytes at `at`, inside
    /// block `i`: in place when the block is present, else by reading the
    /// block from the layer below, modifying and writing all of it.
    fn patch_block(&mut self, i: u64, at: u64, len: u64, patch: Option<&[u8]>) -> io::Result<()> {
        let data = self.image.header.data_offset;
        let start = i * BLOCK_SIZE;
        if self.image.bitmap.get(i) {
            return match patch {
                Some(p) => self.image.file.write_all_at(p, data + at),
                None => {
                    let zeros = &mut self.scratch[..len as usize];
                    zeros.fill(0);
                    self.image.file.write_all_at(zeros, data + at)
                }
            };
        }
        let block = &mut self.scratch[..(self.image.block_end(i) - start) as usize];
        self.parent.read_at(block, start)?;
        let piece = &mut block[(at - start) as usize..(at - start + len) as usize];
        match patch {
            Some(p) => piece.copy_from_slice(p),
            None => piece.fill(0),
        }
        self.image.file.write_all_at(block, data + start)?;
        self.image.bitmap.set_range(i, i + 1);
        Ok(())
    }

    /// Makes `start..end` of the data region (whole blocks) read as zeros:
    /// punches a hole, or writes zeros where that fails.
    fn zero_data(&mut self, start: u64, end: u64) -> io::Result<()> {
        let data = self.image.header.data_offset;
        if let Err(e) = fallocate(
            &self.image.file,
            FallocateMode::PunchHole,
            true,
            data + start,
            end - start,
        ) {
            log::debug!(
                "overlay {}: punch hole failed ({e}), writing zeros",
                self.image.path.display()
            );
            self.scratch.fill(0);
            let mut at = start;
            while at < end {
                let n = (end - at).min(BLOCK_SIZE);
                self.image
                    .file
                    .write_all_at(&self.scratch[..n as usize], data + at)?;
                at += n;
            }
        }
        Ok(())
    }

    /// Syncs data, then writes the changed bitmap pages and syncs again.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if self.data_dirty {
            self.image.file.sync_data()?;
            self.data_dirty = false;
        }
        if !self.image.bitmap.is_dirty() {
            return Ok(());
        }
        let at = self.image.header.bitmap_offset;
        let runs = self.image.bitmap.take_dirty();
        for (k, r) in runs.iter().enumerate() {
            if let Err(e) = self
                .image
                .file
                .write_all_at(&self.image.bitmap.bytes()[r.clone()], at + r.start as u64)
            {
                for r in &runs[k..] {
                    self.image.bitmap.mark_dirty(r.clone());
                }
                return Err(e);
            }
        }
        self.image.file.sync_data()
    }
}

impl DiskBackend for OverlayDisk {
    fn capacity(&self) -> u64 {
        self.image.header.virtual_size
    }

    fn overlay(&mut self) -> Option<&mut OverlayDisk> {
        Some(self)
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.image.read_at(&self.parent, buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = check_range(offset, buf.len() as u64, self.capacity())?;
        if buf.is_empty() {
            return Ok(());
        }
        self.data_dirty = true;
        let (first, last) = (offset / BLOCK_SIZE, (end - 1) / BLOCK_SIZE);
        // What is left for one direct write: whole blocks, and parts of
        // blocks already present.
        let (mut lo, mut hi) = (offset, end);
        if !self.covers(first, offset, end) && !self.image.bitmap.get(first) {
            lo = self.image.block_end(first).min(end);
            self.patch_block(first, offset, lo - offset, Some(&buf[..(lo - offset) as usize]))?;
        }
        if last > first && !self.covers(last, offset, end) && !self.image.bitmap.get(last) {
            hi = last * BLOCK_SIZE;
            self.patch_block(last, hi, end - hi, Some(&buf[(hi - offset) as usize..]))?;
        }
        if lo < hi {
            let piece = &buf[(lo - offset) as usize..(hi - offset) as usize];
            self.image
                .file
                .write_all_at(piece, self.image.header.data_offset + lo)?;
            self.image
                .bitmap
                .set_range(lo / BLOCK_SIZE, hi.div_ceil(BLOCK_SIZE));
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sync()
    }

    /// Whole blocks present here read as zeros afterwards; other blocks
    /// keep their contents (virtio allows either).
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let end = check_range(offset, len, self.capacity())?;
        let lo = offset.next_multiple_of(BLOCK_SIZE);
        let hi = if end == self.capacity() {
            end
        } else {
            end / BLOCK_SIZE * BLOCK_SIZE
        };
        if lo < hi {
            self.data_dirty = true;
            // Absent blocks' data is unused: punching it too is harmless.
            self.zero_data(lo, hi)?;
        }
        Ok(())
    }

    /// The range reads as zeros afterwards: whole blocks become present
    /// holes, partial blocks are read-modify-written.
    fn write_zeroes(&mut self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        let end = check_range(offset, len, self.capacity())?;
        if len == 0 {
            return Ok(());
        }
        self.data_dirty = true;
        let (first, last) = (offset / BLOCK_SIZE, (end - 1) / BLOCK_SIZE);
        let (mut lo, mut hi) = (offset, end);
        if !self.covers(first, offset, end) {
            lo = self.image.block_end(first).min(end);
            self.patch_block(first, offset, lo - offset, None)?;
        }
        if last > first && !self.covers(last, offset, end) {
            hi = last * BLOCK_SIZE;
            self.patch_block(last, hi, end - hi, None)?;
        }
        if lo < hi {
            self.zero_data(lo, hi)?;
            self.image
                .bitmap
                .set_range(lo / BLOCK_SIZE, hi.div_ceil(BLOCK_SIZE));
        }
        Ok(())
    }
}

impl Drop for OverlayDisk {
    fn drop(&mut self) {
        #[cfg(test)]
        if self.skip_bitmap_on_drop {
            return;
        }
        if let Err(e) = self.sync() {
            log::warn!(
                "overlay {}: saving the bitmap on close failed: {e}",
                self.image.path.display()
            );
        }
    }
}
