//! The read-only parent chain: raw base images and frozen overlay layers.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::OverlayError;
use super::format::{Header, ParentRef, RawIdentity, HASH_SPAN, MAX_VIRTUAL_SIZE};
use super::image::{check_range, Image};

/// Read access to a layer of a disk: `&self` and positional reads, so
/// layers can be shared.
pub trait ReadLayer: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset` (the range must lie within the size).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// The chain below an overlay, as paths: what [`Parent::open`] opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parent {
    /// A raw image (opened read-only).
    Raw(PathBuf),
    /// A frozen overlay layer (opened read-only) and its own parent.
    Overlay(PathBuf, Box<Parent>),
}

impl Parent {
    /// The topmost file of the chain.
    pub fn path(&self) -> &Path {
        match self {
            Self::Raw(p) | Self::Overlay(p, _) => p,
        }
    }

    /// The raw image at the bottom of the chain.
    pub fn base(&self) -> &Path {
        match self {
            Self::Raw(p) => p,
            Self::Overlay(_, below) => below.base(),
        }
    }

    /// Opens the chain, checking that each overlay layer belongs to the
    /// layer given below it.
    pub fn open(&self) -> Result<Layer, OverlayError> {
        self.open_for(None)
    }

    /// Opens the chain as the parent of overlay `child` (named in errors).
    pub(crate) fn open_for(&self, child: Option<&Path>) -> Result<Layer, OverlayError> {
        let missing = |path: &Path, source: io::Error| match child {
            Some(c) => OverlayError::ParentMissing {
                overlay: c.into(),
                parent: path.into(),
                source,
            },
            None => OverlayError::Io {
                op: "open",
                path: path.into(),
                source,
            },
        };
        match self {
            Self::Raw(path) => {
                let file = File::open(path).map_err(|e| missing(path, e))?;
                Ok(Layer::Raw(RawLayer::from_file(path, file)?))
            }
            Self::Overlay(path, below) => {
                let file = File::open(path).map_err(|e| missing(path, e))?;
                let image = Image::from_file(path, file)?;
                let parent = below.open_for(Some(path))?;
                check_parent(&image.path, &image.header, below.path(), &parent)?;
                Ok(Layer::Frozen(FrozenLayer {
                    image,
                    parent: Box::new(parent),
                }))
            }
        }
    }
}

/// Checks that `header` (of overlay `overlay`) was made on `given`, found
/// at `given_path`.
pub(crate) fn check_parent(
    overlay: &Path,
    header: &Header,
    given_path: &Path,
    given: &Layer,
) -> Result<(), OverlayError> {
    match (&header.parent, given) {
        (ParentRef::Raw(rec), Layer::Raw(raw)) => {
            let found = raw.identity;
            let mismatch = if rec.size != found.size {
                "size"
            } else if rec.mtime_ns != found.mtime_ns {
                "mtime"
            } else if rec.hash != found.hash {
                "content hash"
            } else {
                return Ok(());
            };
            Err(OverlayError::WrongBase {
                overlay: overlay.into(),
                recorded_path: header.parent_path.clone(),
                recorded: Box::new(*rec),
                given_path: given_path.into(),
                found: Box::new(found),
                mismatch,
            })
        }
        (ParentRef::Overlay { size, layer_id }, Layer::Frozen(f)) => {
            if *layer_id == f.layer_id() && *size == f.size() {
                return Ok(());
            }
            Err(OverlayError::WrongLayer {
                overlay: overlay.into(),
                recorded_path: header.parent_path.clone(),
                recorded_id: *layer_id,
                recorded_size: *size,
                given_path: given_path.into(),
                found_id: f.layer_id(),
                found_size: f.size(),
            })
        }
        (rec, _) => Err(OverlayError::ParentKind {
            overlay: overlay.into(),
            recorded: rec.kind_name(),
            recorded_path: header.parent_path.clone(),
            given: given.kind_name(),
            given_path: given_path.into(),
        }),
    }
}

/// An opened layer of a chain.
#[derive(Debug)]
pub enum Layer {
    /// A raw base image.
    Raw(RawLayer),
    /// A frozen overlay layer, with the chain below it.
    Frozen(FrozenLayer),
}

impl Layer {
    /// The file's path.
    pub fn path(&self) -> &Path {
        match self {
            Self::Raw(r) => &r.path,
            Self::Frozen(f) => &f.image.path,
        }
    }

    /// The raw image at the bottom of the chain.
    pub fn base(&self) -> &RawLayer {
        match self {
            Self::Raw(r) => r,
            Self::Frozen(f) => f.parent.base(),
        }
    }

    /// What an overlay made on this layer records about it.
    pub fn as_parent_ref(&self) -> ParentRef {
        match self {
            Self::Raw(r) => ParentRef::Raw(r.identity),
            Self::Frozen(f) => ParentRef::Overlay {
                size: f.size(),
                layer_id: f.layer_id(),
            },
        }
    }

    fn kind_name(&self) -> &'static str {
        match self {
            Self::Raw(_) => "raw image",
            Self::Frozen(_) => "overlay layer",
        }
    }

    /// Whether the file `meta` describes is one of the chain's files.
    pub(crate) fn contains(&self, meta: &std::fs::Metadata) -> bool {
        let file = match self {
            Self::Raw(r) => &r.file,
            Self::Frozen(f) => &f.image.file,
        };
        let same = file
            .metadata()
            .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
        same || matches!(self, Self::Frozen(f) if f.parent.contains(meta))
    }

    /// The overlay files of the chain, top first.
    pub(crate) fn images(&self) -> Vec<&Image> {
        let mut v = Vec::new();
        let mut at = self;
        while let Self::Frozen(f) = at {
            v.push(&f.image);
            at = &f.parent;
        }
        v
    }
}

impl ReadLayer for Layer {
    fn size(&self) -> u64 {
        match self {
            Self::Raw(r) => r.size(),
            Self::Frozen(f) => f.size(),
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Self::Raw(r) => r.read_at(buf, offset),
            Self::Frozen(f) => f.read_at(buf, offset),
        }
    }
}

/// A raw image, read-only.
#[derive(Debug)]
pub struct RawLayer {
    path: PathBuf,
    file: File,
    identity: RawIdentity,
}

impl RawLayer {
    /// Checks `file` (opened from `path`) and computes its identity.
    fn from_file(path: &Path, mut file: File) -> Result<Self, OverlayError> {
        let bad = |detail: String| OverlayError::BadBase {
            path: path.into(),
            detail,
        };
        let meta = file.metadata().map_err(OverlayError::io("stat base", path))?;
        if !meta.is_file() && !meta.file_type().is_block_device() {
            return Err(bad("not a regular file or block device".into()));
        }
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(OverlayError::io("size base", path))?;
        if !size.is_multiple_of(512) {
            return Err(bad(format!("{size} bytes, not a multiple of 512")));
        }
        if size > MAX_VIRTUAL_SIZE {
            return Err(bad(format!(
                "{size} bytes, over the {MAX_VIRTUAL_SIZE}-byte limit"
            )));
        }
        let mtime_ns = meta
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec());
        let hash = hash_ends(&file, size).map_err(OverlayError::io("read base", path))?;
        Ok(Self {
            path: path.into(),
            file,
            identity: RawIdentity { size, mtime_ns, hash },
        })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size, mtime and hash.
    pub fn identity(&self) -> RawIdentity {
        self.identity
    }
}

impl ReadLayer for RawLayer {
    fn size(&self) -> u64 {
        self.identity.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        self.file.read_exact_at(buf, offset)
    }
}

/// SHA-256 of the first and last [`HASH_SPAN`] bytes of a `size`-byte
/// file, or of all of it when it is at most twice that.
fn hash_ends(file: &File, size: u64) -> io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; HASH_SPAN as usize];
    let spans = if size <= 2 * HASH_SPAN {
        [(0, size), (0, 0)]
    } else {
        [(0, HASH_SPAN), (size - HASH_SPAN, HASH_SPAN)]
    };
    for (at, len) in spans {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(HASH_SPAN) as usize;
            file.read_exact_at(&mut buf[..n], at + done)?;
            h.update(&buf[..n]);
            done += n as u64;
        }
    }
    Ok(h.finalize().into())
}

/// A frozen overlay layer, read-only, over its own parent chain.
#[derive(Debug)]
pub struct FrozenLayer {
    image: Image,
    parent: Box<Layer>,
}

impl FrozenLayer {
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.image.path
    }

    /// Its layer id.
    pub fn layer_id(&self) -> u64 {
        self.image.header.layer_id
    }

    /// Its header.
    pub fn header(&self) -> &Header {
        &self.image.header
    }

    /// The chain below it.
    pub fn parent(&self) -> &Layer {
        &self.parent
    }

    /// Blocks whose contents are in this layer.
    pub fn present_blocks(&self) -> u64 {
        self.image.bitmap.count()
    }
}

impl ReadLayer for FrozenLayer {
    fn size(&self) -> u64 {
        self.image.header.virtual_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.image.read_at(&self.parent, buf, offset)
    }
}

/// Reads the header of the overlay at `path` (validated: magic, version,
/// CRC, layout) without opening its parents; to find what it was made on.
pub fn inspect(path: &Path) -> Result<Header, OverlayError> {
    Ok(Image::open(path, false)?.header)
}
