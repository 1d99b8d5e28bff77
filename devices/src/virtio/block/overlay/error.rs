//! Errors creating, opening and freezing overlays.

use std::io;
use std::path::PathBuf;

use super::format::RawIdentity;

/// What went wrong with an overlay or its parent chain. Every message
/// names the file (and, for a mismatch, both files) and the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverlayError {
    /// A system call on a file failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("open overlay", "read header", ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A parent in the chain cannot be opened (missing, unreadable).
    #[error("cannot open parent {} of overlay {}: {source}", parent.display(), overlay.display())]
    ParentMissing {
        /// The overlay that needs the parent.
        overlay: PathBuf,
        /// The parent's path.
        parent: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `create` was asked for a file that already exists.
    #[error("overlay {} already exists", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The file is shorter than its header says it must be.
    #[error("overlay {} is truncated: {detail}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What is missing.
        detail: String,
    },
    /// The file does not start with the overlay magic.
    #[error("{} is not a Hearth overlay (bad magic {found:02x?})", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first 8 bytes.
        found: [u8; 8],
    },
    /// The format version is not one this Hearth reads.
    #[error("overlay {} has format version {version}; this Hearth reads version {supported}", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        version: u32,
        /// The version supported.
        supported: u32,
    },
    /// The header's checksum does not match its contents.
    #[error("overlay {} has a corrupt header (CRC-64 {stored:#018x} stored, {computed:#018x} computed)", path.display())]
    HeaderCrc {
        /// The file.
        path: PathBuf,
        /// The CRC in the header.
        stored: u64,
        /// The CRC of the header's contents.
        computed: u64,
    },
    /// A header field is out of range (block size, offsets, sizes, parent
    /// kind, path).
    #[error("overlay {} has a bad header: {detail}", path.display())]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// Which field and why.
        detail: String,
    },
    /// A raw parent is not the image the overlay was made on.
    #[error(
        "overlay {} belongs to base {} ({recorded}), not {} ({found}): the {mismatch} differs",
        overlay.display(), recorded_path.display(), given_path.display()
    )]
    WrongBase {
        /// The overlay.
        overlay: PathBuf,
        /// The base path recorded in the overlay.
        recorded_path: PathBuf,
        /// The base identity recorded in the overlay.
        recorded: Box<RawIdentity>,
        /// The base that was given.
        given_path: PathBuf,
        /// Its identity now.
        found: Box<RawIdentity>,
        /// "size", "mtime" or "content hash".
        mismatch: &'static str,
    },
    /// An overlay parent is not the layer the overlay was made on.
    #[error(
        "overlay {} belongs to layer {} (id {recorded_id:016x}, size {recorded_size}), not {} (id {found_id:016x}, size {found_size})",
        overlay.display(), recorded_path.display(), given_path.display()
    )]
    WrongLayer {
        /// The overlay.
        overlay: PathBuf,
        /// The parent path recorded in the overlay.
        recorded_path: PathBuf,
        /// The layer id recorded.
        recorded_id: u64,
        /// The parent size recorded.
        recorded_size: u64,
        /// The layer that was given.
        given_path: PathBuf,
        /// Its layer id.
        found_id: u64,
        /// Its size.
        found_size: u64,
    },
    /// The overlay's parent is of the other kind (raw image or overlay)
    /// than the one given.
    #[error(
        "overlay {} was made on {recorded} {}, but {given} {} was given",
        overlay.display(), recorded_path.display(), given_path.display()
    )]
    ParentKind {
        /// The overlay.
        overlay: PathBuf,
        /// The recorded parent's kind ("raw image" or "overlay layer").
        recorded: &'static str,
        /// The recorded parent's path.
        recorded_path: PathBuf,
        /// The given parent's kind.
        given: &'static str,
        /// The given parent's path.
        given_path: PathBuf,
    },
    /// A raw parent whose size is not a whole number of sectors, or not a
    /// regular file or block device.
    #[error("base {} cannot back an overlay: {detail}", path.display())]
    BadBase {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// A path that cannot be recorded in a header (not UTF-8, too long).
    #[error("cannot record parent path {}: {detail}", path.display())]
    BadPath {
        /// The path.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The overlay to create is one of the files of its parent chain.
    #[error("overlay {} is a file of its own parent chain", path.display())]
    InChain {
        /// The file.
        path: PathBuf,
    },
    /// The host's random source failed (new layer id).
    #[error("cannot draw a layer id: {0}")]
    Random(io::Error),
}

impl OverlayError {
    /// An `Io` error for `path`.
    pub(crate) fn io<'a>(op: &'static str, path: &'a std::path::Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
