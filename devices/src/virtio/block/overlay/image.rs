//! An overlay file opened: its header, bitmap and data region, and the
//! read path shared by live and frozen layers.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::bitmap::Bitmap;
use super::error::OverlayError;
use super::format::{Header, BLOCK_SIZE, HEADER_SIZE, MAGIC};
use super::layer::{Layer, ReadLayer};

/// How `create` treats an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CreateMode {
    /// Refuse it.
    #[default]
    New,
    /// Replace it (its contents are lost).
    Replace,
}

/// An overlay file: header, bitmap and data.
#[derive(Debug)]
pub(crate) struct Image {
    pub path: PathBuf,
    pub file: File,
    pub header: Header,
    pub bitmap: Bitmap,
}

impl Image {
    /// Opens and validates the overlay at `path`.
    pub fn open(path: &Path, writable: bool) -> Result<Self, OverlayError> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(OverlayError::io("open overlay", path))?;
        Self::from_file(path, file)
    }

    /// Validates an opened overlay file.
    pub fn from_file(path: &Path, file: File) -> Result<Self, OverlayError> {
        let len = file
            .metadata()
            .map_err(OverlayError::io("stat overlay", path))?
            .len();
        let mut b = [0u8; HEADER_SIZE as usize];
        let have = len.min(HEADER_SIZE) as usize;
        file.read_exact_at(&mut b[..have], 0)
            .map_err(OverlayError::io("read the header of overlay", path))?;
        if have >= MAGIC.len() && b[..MAGIC.len()] != MAGIC {
            let mut found = [0u8; 8];
            found.copy_from_slice(&b[..8]);
            return Err(OverlayError::BadMagic {
                path: path.into(),
                found,
            });
        }
        if len < HEADER_SIZE {
            return Err(OverlayError::Truncated {
                path: path.into(),
                detail: format!("{len} bytes, shorter than the {HEADER_SIZE}-byte header"),
            });
        }
        let header = Header::decode(&b, path, len)?;
        let len = header.blocks().div_ceil(8) as usize;
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(len).map_err(|e| OverlayError::Io {
            op: "allocate the bitmap of overlay",
            path: path.into(),
            source: std::io::Error::new(std::io::ErrorKind::OutOfMemory, e),
        })?;
        bytes.resize(len, 0);
        file.read_exact_at(&mut bytes, header.bitmap_offset)
            .map_err(OverlayError::io("read the bitmap of overlay", path))?;
        let bitmap = Bitmap::from_bytes(bytes, header.blocks());
        Ok(Self {
            path: path.into(),
            file,
            header,
            bitmap,
        })
    }

    /// Creates the file for a new layer described by `header`, sized for
    /// its layout, with the header written (last, so a crash leaves a file
    /// that `open` refuses) and synced.
    pub fn create(path: &Path, header: Header, mode: CreateMode) -> Result<Self, OverlayError> {
        let bytes = header.encode()?;
        let file = create_file(path, mode)?;
        let made = (|| {
            file.set_len(header.file_len())
                .map_err(OverlayError::io("size overlay", path))?;
            write_header(&file, &bytes, path)
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        let bitmap = Bitmap::new(header.blocks());
        Ok(Self {
            path: path.into(),
            file,
            header,
            bitmap,
        })
    }

    /// The byte just past block `i` (the last block may be short).
    pub fn block_end(&self, i: u64) -> u64 {
        ((i + 1) * BLOCK_SIZE).min(self.header.virtual_size)
    }

    /// Fills `buf` from `offset`: runs of present blocks from this file,
    /// runs of absent ones from `parent`, one call per run.
    pub fn read_at(&self, parent: &Layer, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = check_range(offset, buf.len() as u64, self.header.virtual_size)?;
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK_SIZE;
            let present = self.bitmap.get(block);
            let last = (end - 1) / BLOCK_SIZE + 1;
            let run_end = (self.bitmap.run_end(block, last, present) * BLOCK_SIZE).min(end);
            let piece = &mut buf[(pos - offset) as usize..(run_end - offset) as usize];
            if present {
                self.file.read_exact_at(piece, self.header.data_offset + pos)?;
            } else {
                parent.read_at(piece, pos)?;
            }
            pos = run_end;
        }
        Ok(())
    }
}

/// `offset + len`, or an error when the range passes `size`.
pub(crate) fn check_range(offset: u64, len: u64, size: u64) -> io::Result<u64> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(end),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("range {offset}+{len} passes the end of the disk ({size} bytes)"),
        )),
    }
}

/// Creates `path` read-write as `mode` asks.
pub(crate) fn create_file(path: &Path, mode: CreateMode) -> Result<File, OverlayError> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    match mode {
        CreateMode::New => o.create_new(true),
        CreateMode::Replace => o.create(true).truncate(true),
    };
    o.open(path).map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => OverlayError::Exists { path: path.into() },
        _ => OverlayError::Io {
            op: "create overlay",
            path: path.into(),
            source,
        },
    })
}

/// Writes a header at offset 0 and syncs the file.
pub(crate) fn write_header(file: &File, bytes: &[u8], path: &Path) -> Result<(), OverlayError> {
    file.write_all_at(bytes, 0)
        .map_err(OverlayError::io("write the header of overlay", path))?;
    file.sync_all().map_err(OverlayError::io("sync overlay", path))
}

/// A random non-zero layer id.
pub(crate) fn random_id() -> Result<u64, OverlayError> {
    loop {
        let mut b = [0u8; 8];
        // SAFETY: getrandom writes at most `b.len()` bytes into `b`, which
        // is valid and exclusively borrowed for the call.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(OverlayError::Random(e));
        }
        let id = u64::from_le_bytes(b);
        if n as usize == b.len() && id != 0 {
            return Ok(id);
        }
    }
}
