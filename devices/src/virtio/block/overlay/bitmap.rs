//! The presence bitmap: one bit per block, 1 when the block's current
//! contents are in this layer. Bit `i` is bit `i % 8` of byte `i / 8`.
//! Changes are tracked per 4 KiB page of the bitmap, so a flush writes
//! only the pages that changed.

/// Bitmap bytes per tracked page.
const PAGE: usize = 4096;

/// A layer's bitmap in memory.
#[derive(Debug, Clone)]
pub struct Bitmap {
    bytes: Vec<u8>,
    blocks: u64,
    /// One bit per page of `bytes` that changed since the last `take_dirty`.
    dirty: Vec<u64>,
}

impl Bitmap {
    /// An all-clear bitmap of `blocks` blocks.
    pub fn new(blocks: u64) -> Self {
        Self::from_bytes(vec![0; blocks.div_ceil(8) as usize], blocks)
    }

    /// A bitmap of `blocks` blocks from its file bytes (padding ignored).
    pub fn from_bytes(mut bytes: Vec<u8>, blocks: u64) -> Self {
        let len = blocks.div_ceil(8) as usize;
        bytes.resize(len, 0);
        if !blocks.is_multiple_of(8) {
            // Bits past the last block mean nothing; keep them clear.
            if let Some(last) = bytes.last_mut() {
                *last &= (1u8 << (blocks % 8)) - 1;
            }
        }
        Self {
            bytes,
            blocks,
            dirty: vec![0; len.div_ceil(PAGE).div_ceil(64)],
        }
    }

    /// The bytes as stored in the file.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether block `i` is present.
    pub fn get(&self, i: u64) -> bool {
        self.bytes
            .get((i / 8) as usize)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    /// The first block in `start..end` whose bit is not `value`, or `end`.
    pub fn run_end(&self, start: u64, end: u64, value: bool) -> u64 {
        let end = end.min(self.blocks);
        let skip = if value { 0xff } else { 0x00 };
        let mut i = start;
        while i < end {
            if i.is_multiple_of(8) && end - i >= 8 && self.bytes[(i / 8) as usize] == skip {
                i += 8;
                continue;
            }
            if self.get(i) != value {
                return i;
            }
            i += 1;
        }
        end
    }

    /// Marks blocks `start..end` present.
    pub fn set_range(&mut self, start: u64, end: u64) {
        let end = end.min(self.blocks);
        let mut i = start;
        while i < end {
            let byte = (i / 8) as usize;
            let mask = if i.is_multiple_of(8) && end - i >= 8 {
                0xff
            } else {
                1u8 << (i % 8)
            };
            if self.bytes[byte] & mask != mask {
                self.bytes[byte] |= mask;
                let page = byte / PAGE;
                self.dirty[page / 64] |= 1 << (page % 64);
            }
            i += if mask == 0xff { 8 } else { 1 };
        }
    }

    /// Whether a page changed since the last [`take_dirty`](Self::take_dirty).
    pub fn is_dirty(&self) -> bool {
        self.dirty.iter().any(|w| *w != 0)
    }

    /// The byte ranges of changed pages (runs of pages coalesced), and
    /// forgets them.
    pub fn take_dirty(&mut self) -> Vec<std::ops::Range<usize>> {
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        for (w, word) in self.dirty.iter_mut().enumerate() {
            while *word != 0 {
                let bit = word.trailing_zeros() as usize;
                *word &= !(1 << bit);
                let page = w * 64 + bit;
                let r = page * PAGE..((page + 1) * PAGE).min(self.bytes.len());
                match runs.last_mut() {
                    Some(last) if last.end == r.start => last.end = r.end,
                    _ => runs.push(r),
                }
            }
        }
        runs
    }

    /// Marks every page changed again (a bitmap write failed).
    pub fn mark_dirty(&mut self, range: std::ops::Range<usize>) {
        for page in range.start / PAGE..range.end.div_ceil(PAGE) {
            self.dirty[page / 64] |= 1 << (page % 64);
        }
    }

    /// Blocks present.
    pub fn count(&self) -> u64 {
        self.bytes.iter().map(|b| u64::from(b.count_ones())).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_dirty_pages() {
        let mut b = Bitmap::new(100_000);
        assert_eq!(b.run_end(0, 100_000, false), 100_000);
        b.set_range(3, 20);
        b.set_range(40_000, 40_001);
        assert!(!b.get(2) && b.get(3) && b.get(19) && !b.get(20));
        assert_eq!(b.run_end(0, 100, false), 3);
        assert_eq!(b.run_end(3, 100, true), 20);
        assert_eq!(b.run_end(20, 50_000, false), 40_000);
        assert_eq!(b.count(), 18);
        assert_eq!(b.take_dirty(), vec![0..8192], "adjacent pages coalesce");
        assert!(!b.is_dirty());
        b.set_range(5, 6);
        assert!(!b.is_dirty(), "an already set bit is not a change");
        b.set_range(99_999, 200_000);
        assert_eq!(b.take_dirty(), vec![12288..12500]);
    }

    #[test]
    fn padding_bits_are_ignored() {
        let b = Bitmap::from_bytes(vec![0xff; 4096], 3);
        assert_eq!(b.count(), 3);
        assert_eq!(b.bytes(), &[0b111]);
        assert_eq!(b.run_end(0, 10, true), 3);
    }
}
