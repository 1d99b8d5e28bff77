//! Disk configuration: a raw image file, or storage the library user
//! supplies through the [`DiskBackend`] trait.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use hearth_devices::rate_limiter::RateLimit;
use hearth_devices::virtio::block::{DiskBackend, FileDisk, OverlayDisk, Parent};
use serde::{Deserialize, Serialize};

use crate::device_manager::DeviceError;

/// Creates a backend for one VM (called once per VM started or restored).
#[derive(Clone)]
pub struct DiskFactory(Arc<FactoryFn>);

type FactoryFn = dyn Fn() -> io::Result<Box<dyn DiskBackend>> + Send + Sync;

impl DiskFactory {
    /// Wraps `f`.
    pub fn new(f: impl Fn() -> io::Result<Box<dyn DiskBackend>> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl fmt::Debug for DiskFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DiskFactory")
    }
}

impl PartialEq for DiskFactory {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// One virtio-blk disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DiskConfig {
    /// The raw image (or block device). For a custom backend, a name
    /// used in messages.
    pub path: PathBuf,
    /// Offer the disk read-only; writes fail with an I/O error.
    #[serde(default)]
    pub read_only: bool,
    /// Serial returned by VIRTIO_BLK_T_GET_ID (up to 20 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Bandwidth (bytes) and request-rate limits; none by default.
    #[serde(default, skip_serializing_if = "RateLimit::is_unlimited")]
    pub rate_limit: RateLimit,
    /// A copy-on-write overlay (docs/DISK.md): `path` is then a read-only
    /// base, and the VM's writes go to this file, created if missing and
    /// checked against the base if not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<PathBuf>,
    /// Frozen overlay layers between the base and the overlay, bottom
    /// first (a snapshot's or a fork's disk state; set by Hearth). With
    /// layers and no overlay, the top layer itself takes the writes (one
    /// restore of that snapshot; clones each need an overlay).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<PathBuf>,
    /// A custom backend instead of the file (library only).
    #[serde(skip)]
    pub backend: Option<DiskFactory>,
}

impl DiskConfig {
    /// A raw image file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            read_only: false,
            id: None,
            rate_limit: RateLimit::default(),
            overlay: None,
            layers: Vec::new(),
            backend: None,
        }
    }

    /// `base` (read-only) with the VM's writes in the overlay file
    /// `overlay`.
    pub fn overlay(mut self, overlay: impl Into<PathBuf>) -> Self {
        self.overlay = Some(overlay.into());
        self
    }

    /// The disk's copy-on-write chain: its writable top, and the read-only
    /// layers under it (bottom first) down to the base, if it has one.
    pub(crate) fn chain(&self) -> Option<(PathBuf, Parent)> {
        let mut parent = Parent::Raw(self.path.clone());
        let mut layers = self.layers.clone();
        let top = match &self.overlay {
            Some(o) => o.clone(),
            None => layers.pop()?,
        };
        for layer in layers {
            parent = Parent::Overlay(layer, Box::new(parent));
        }
        Some((top, parent))
    }

    /// Storage from `factory`; `name` appears in messages.
    pub fn custom(name: impl Into<PathBuf>, factory: DiskFactory) -> Self {
        Self {
            backend: Some(factory),
            ..Self::file(name)
        }
    }

    /// Read-only.
    pub fn read_only(mut self, ro: bool) -> Self {
        self.read_only = ro;
        self
    }

    /// The GET_ID serial.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Limits the disk's bandwidth and request rate.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = limit;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.backend.is_none() && self.path.as_os_str().is_empty() {
            return Err("path must be set".into());
        }
        self.rate_limit
            .validate()
            .map_err(|e| format!("rate_limit: {e}"))?;
        if self.overlay.is_some() || !self.layers.is_empty() {
            if self.read_only {
                return Err("a read-only disk cannot have an overlay".into());
            }
            if self.backend.is_some() {
                return Err("a custom backend cannot have an overlay".into());
            }
            if self.overlay.as_ref() == Some(&self.path) || self.layers.contains(&self.path) {
                return Err(format!("overlay {} is the base itself", self.path.display()));
            }
        }
        if let Some(id) = &self.id {
            if id.len() > 20 {
                return Err(format!("id {id:?} is longer than 20 bytes"));
            }
            if !id.bytes().all(|b| (b' '..=b'~').contains(&b)) {
                return Err(format!("id {id:?} must be printable ASCII"));
            }
        }
        Ok(())
    }

    /// Opens the backend.
    pub(crate) fn open(&self) -> Result<Box<dyn DiskBackend>, DeviceError> {
        match &self.backend {
            Some(factory) => (factory.0)().map_err(|source| DeviceError::CustomDisk {
                name: self.path.clone(),
                source,
            }),
            None => match self.chain() {
                Some((top, parent)) => {
                    let disk = if top.exists() {
                        OverlayDisk::open(&top, parent)
                    } else {
                        OverlayDisk::create(&top, parent)
                    };
                    Ok(Box::new(disk?))
                }
                None => Ok(Box::new(FileDisk::open(&self.path, self.read_only)?)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(DiskConfig::file("/x").id("serial-1").validate().is_ok());
        assert!(DiskConfig::file("").validate().is_err());
        assert!(DiskConfig::file("/x").id("a".repeat(21)).validate().is_err());
        assert!(DiskConfig::file("/x").id("tab\t").validate().is_err());
        let zero = RateLimit {
            bandwidth: Some(hearth_devices::rate_limiter::BucketConfig::per_second(0)),
            ops: None,
        };
        let e = DiskConfig::file("/x").rate_limit(zero).validate().unwrap_err();
        assert!(e.contains("rate_limit: bandwidth"), "{e}");
    }
}
