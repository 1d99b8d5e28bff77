//! Freezing: the overlay layers of a chain collapsed into one new layer
//! on the raw base, for snapshots and forks.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::bitmap::Bitmap;
use super::disk::OverlayDisk;
use super::error::OverlayError;
use super::format::{Header, ParentRef, BLOCK_SIZE};
use super::image::{create_file, random_id, write_header, CreateMode, Image};

/// Bytes copied at once.
const COPY_CHUNK: usize = 1 << 20;

impl OverlayDisk {
    /// The overlay files of the chain, this one first.
    fn layers(&self) -> Vec<&Image> {
        let mut v = vec![&self.image];
        v.extend(self.parent.images());
        v
    }

    /// Bytes of the blocks present in any overlay layer of the chain: what
    /// [`freeze_into`](Self::freeze_into) copies.
    pub fn merged_bytes(&self) -> u64 {
        let layers = self.layers();
        let h = &self.image.header;
        let mut blocks = 0u64;
        for j in 0..self.image.bitmap.bytes().len() {
            let b = layers.iter().fold(0u8, |acc, im| acc | im.bitmap.bytes()[j]);
            blocks += u64::from(b.count_ones());
        }
        let last = h.blocks().saturating_sub(1);
        let short = (last + 1) * BLOCK_SIZE - h.virtual_size;
        let last_present = layers.iter().any(|im| im.bitmap.get(last));
        blocks * BLOCK_SIZE - if last_present { short } else { 0 }
    }

    /// Flushes, then writes a new overlay at `dest` (refused if it exists)
    /// on the raw base at the bottom of the chain, holding every block
    /// present in an overlay layer of the chain (the topmost layer's copy
    /// wins). Only present blocks are copied, and all-zero blocks stay
    /// holes. Returns the bytes of present blocks (see
    /// [`merged_bytes`](Self::merged_bytes)).
    ///
    /// A VM can then run on `base ← dest ← a new overlay`, so chains stay
    /// at most three files deep. The header is written last: a crash
    /// leaves a file that [`open`](Self::open) refuses.
    pub fn freeze_into(&mut self, dest: &Path) -> Result<u64, OverlayError> {
        let path = self.image.path.clone();
        self.sync().map_err(OverlayError::io("flush overlay", &path))?;
        let base = self.parent.base();
        let header = Header::new(
            self.image.header.virtual_size,
            random_id()?,
            ParentRef::Raw(base.identity()),
            base.path(),
        );
        let hbytes = header.encode()?;
        let out = create_file(dest, CreateMode::New)?;
        let result = self.write_frozen(&out, &header, &hbytes, dest);
        match &result {
            Ok(copied) => log::info!(
                "froze overlay {} ({} layers) into {}: {copied} bytes",
                path.display(),
                self.layers().len(),
                dest.display()
            ),
            Err(_) => {
                let _ = std::fs::remove_file(dest);
            }
        }
        result
    }

    fn write_frozen(
        &self,
        out: &File,
        header: &Header,
        hbytes: &[u8],
        dest: &Path,
    ) -> Result<u64, OverlayError> {
        out.set_len(header.file_len())
            .map_err(OverlayError::io("size overlay", dest))?;
        let layers = self.layers();
        let blocks = header.blocks();
        let mut union = Bitmap::new(blocks);
        let mut copier = Copier {
            out,
            dest,
            out_data: header.data_offset,
            size: header.virtual_size,
            buf: vec![0; COPY_CHUNK],
            copied: 0,
        };
        // (layer, first block, end block) of the run being gathered.
        let mut run: Option<(usize, u64, u64)> = None;
        let mut i = 0;
        while i < blocks {
            let byte = (i / 8) as usize;
            if i.is_multiple_of(8) && layers.iter().all(|im| im.bitmap.bytes()[byte] == 0) {
                i += 8;
                continue;
            }
            let owner = layers.iter().position(|im| im.bitmap.get(i));
            match (run, owner) {
                (Some((k, s, e)), Some(o)) if k == o && e == i => run = Some((k, s, i + 1)),
                (_, owner) => {
                    if let Some((k, s, e)) = run {
                        copier.copy(layers[k], s, e)?;
                        union.set_range(s, e);
                    }
                    run = owner.map(|o| (o, i, i + 1));
                }
            }
            i += 1;
        }
        if let Some((k, s, e)) = run {
            copier.copy(layers[k], s, e)?;
            union.set_range(s, e);
        }
        let write_err = OverlayError::io("write overlay", dest);
        out.write_all_at(union.bytes(), header.bitmap_offset)
            .and_then(|()| out.sync_data())
            .map_err(write_err)?;
        write_header(out, hbytes, dest)?;
        Ok(copier.copied)
    }
}

/// Copies runs of blocks into the new layer, skipping all-zero blocks.
struct Copier<'a> {
    out: &'a File,
    dest: &'a Path,
    out_data: u64,
    size: u64,
    buf: Vec<u8>,
    copied: u64,
}

impl Copier<'_> {
    /// Copies blocks `start..end` of `src`.
    fn copy(&mut self, src: &Image, start: u64, end: u64) -> Result<(), OverlayError> {
        let (mut pos, end) = (start * BLOCK_SIZE, (end * BLOCK_SIZE).min(self.size));
        self.copied += end - pos;
        while pos < end {
            let n = (end - pos).min(COPY_CHUNK as u64) as usize;
            let piece = &mut self.buf[..n];
            src.file
                .read_exact_at(piece, src.header.data_offset + pos)
                .map_err(OverlayError::io("read overlay", &src.path))?;
            // Write the runs of blocks that are not all zeros.
            let mut at = 0;
            while at < n {
                let nonzero = |a: usize| piece[a..(a + BLOCK_SIZE as usize).min(n)].iter().any(|b| *b != 0);
                if !nonzero(at) {
                    at += BLOCK_SIZE as usize;
                    continue;
                }
                let mut to = at;
                while to < n && nonzero(to) {
                    to += BLOCK_SIZE as usize;
                }
                let to = to.min(n);
                self.out
                    .write_all_at(&piece[at..to], self.out_data + pos + at as u64)
                    .map_err(OverlayError::io("write overlay", self.dest))?;
                at = to;
            }
            pos += n as u64;
        }
        Ok(())
    }
}
