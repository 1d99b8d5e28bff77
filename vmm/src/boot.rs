//! Loading the kernel, initrd and command line into guest memory and
//! writing the structures the chosen boot protocol hands to the kernel.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::boot_params::{write_pvh_info, write_zero_page, BootInfo};
use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use crate::arch::x86_64::mptable::{setup_mptable, MptableError};
use crate::arch::x86_64::regs::{EntryPoint, WriteError};
use crate::config::BootProtocol;
use crate::memory::GuestMemoryMmap;

/// The 64-bit entry sits 0x200 bytes into a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `xloadflags` bit: the kernel has the 64-bit entry point.
const XLF_KERNEL_64: u16 = 1;
const PAGE_SIZE: u64 = 4096;

/// Errors booting: bad kernel, initrd or command line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    /// The kernel cannot be opened.
    #[error("cannot open kernel {}: {source}", path.display())]
    KernelOpen {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The kernel path is a directory or a device.
    #[error("kernel {} is not a regular file", path.display())]
    KernelNotFile {
        /// The path.
        path: PathBuf,
    },
    /// The kernel is neither format.
    #[error("kernel {} is neither an ELF vmlinux nor a bzImage", path.display())]
    KernelFormat {
        /// The path.
        path: PathBuf,
    },
    /// The loader refused the kernel.
    #[error("cannot load kernel {}: {reason}", path.display())]
    KernelLoad {
        /// The path.
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },
    /// PVH asked for, but the kernel cannot do it.
    #[error("kernel {} cannot boot with PVH: {why}", path.display())]
    NoPvh {
        /// The path.
        path: PathBuf,
        /// Why.
        why: &'static str,
    },
    /// A bzImage without the 64-bit entry point.
    #[error("bzImage {} does not support the 64-bit boot protocol", path.display())]
    BzImageNot64 {
        /// The path.
        path: PathBuf,
    },
    /// The initrd cannot be opened or read.
    #[error("cannot read initrd {}: {source}", path.display())]
    Initrd {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The initrd does not fit.
    #[error("initrd {} ({size} bytes) does not fit in guest memory above the kernel", path.display())]
    InitrdTooLarge {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The command line is invalid (with Hearth's device entries added).
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// The MP table did not fit.
    #[error(transparent)]
    Mptable(#[from] MptableError),
    /// A boot structure did not fit.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// The kernel and initrd, opened before any KVM work so that a bad path
/// fails fast.
#[derive(Debug)]
pub(crate) struct BootFiles {
    kernel: File,
    initrd: Option<(File, u64)>,
}

impl BootFiles {
    /// Opens and checks both files.
    pub fn open(kernel: &Path, initrd: Option<&Path>) -> Result<Self, BootError> {
        let kernel = open_file(kernel)?;
        let initrd = match initrd {
            Some(path) => {
                let io_err = |source| BootError::Initrd {
                    path: path.into(),
                    source,
                };
                let file = File::open(path).map_err(io_err)?;
                let meta = file.metadata().map_err(io_err)?;
                if !meta.is_file() {
                    return Err(io_err(std::io::Error::other("not a regular file")));
                }
                Some((file, meta.len()))
            }
            None => None,
        };
        Ok(Self { kernel, initrd })
    }
}

/// What to boot.
#[derive(Debug)]
pub(crate) struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    /// Entries Hearth adds, e.g. `virtio_mmio.device=...`.
    pub extra_cmdline: &'a [String],
    pub protocol: BootProtocol,
    pub vcpus: u32,
}

struct LoadedKernel {
    entry: EntryPoint,
    header: Option<setup_header>,
    end: u64,
}

fn open_file(path: &Path) -> Result<File, BootError> {
    let file = File::open(path).map_err(|source| BootError::KernelOpen {
        path: path.into(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| BootError::KernelOpen {
        path: path.into(),
        source,
    })?;
    if !meta.is_file() {
        return Err(BootError::KernelNotFile { path: path.into() });
    }
    Ok(file)
}

fn load_kernel(
    mem: &GuestMemoryMmap,
    file: &mut File,
    path: &Path,
    protocol: BootProtocol,
) -> Result<LoadedKernel, BootError> {
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(|source| BootError::KernelOpen {
        path: path.into(),
        source,
    })?;
    let load_err = |e: linux_loader::loader::Error| BootError::KernelLoad {
        path: path.into(),
        reason: e.to_string(),
    };
    if n == 4 && magic == *b"\x7fELF" {
        let r = Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
        let entry = match (protocol, r.pvh_boot_cap) {
            (BootProtocol::Pvh | BootProtocol::Auto, PvhBootCapability::PvhEntryPresent(addr)) => {
                EntryPoint::Pvh(addr.raw_value())
            }
            (BootProtocol::Pvh, _) => {
                return Err(BootError::NoPvh {
                    path: path.into(),
                    why: "the ELF has no XEN_ELFNOTE_PHYS32_ENTRY note",
                })
            }
            _ => EntryPoint::Linux64(r.kernel_load.raw_value()),
        };
        return Ok(LoadedKernel {
            entry,
            header: None,
            end: r.kernel_end,
        });
    }
    let mut hdr_magic = [0u8; 4];
    let is_bzimage = file.seek(SeekFrom::Start(0x202)).is_ok()
        && file.read_exact(&mut hdr_magic).is_ok()
        && hdr_magic == *b"HdrS";
    if !is_bzimage {
        return Err(BootError::KernelFormat { path: path.into() });
    }
    if protocol == BootProtocol::Pvh {
        return Err(BootError::NoPvh {
            path: path.into(),
            why: "it is a bzImage; PVH needs an ELF vmlinux",
        });
    }
    let r = BzImage::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
    let header = r
        .setup_header
        .ok_or_else(|| BootError::KernelFormat { path: path.into() })?;
    if header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::BzImageNot64 { path: path.into() });
    }
    Ok(LoadedKernel {
        entry: EntryPoint::Linux64(r.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET),
        header: Some(header),
        end: r.kernel_end,
    })
}

/// Builds the final command line: Hearth's entries, then the user's line
/// (its boot arguments, then any init arguments after ` -- `). The entries
/// go first so that they stay kernel parameters whatever the user's line
/// holds: after a bare `--` (e.g. a line ending in ` --`) the kernel would
/// pass them to init, and after an unbalanced `"` they would be part of a
/// quoted value.
pub(crate) fn build_cmdline(user: &str, extra: &[String], capacity: usize) -> Result<Cmdline, BootError> {
    let too_long = |e: linux_loader::cmdline::Error| {
        let len = user.len() + extra.iter().map(|s| s.len() + 1).sum::<usize>();
        match e {
            linux_loader::cmdline::Error::TooLarge | linux_loader::cmdline::Error::InvalidCapacity => {
                BootError::Cmdline(format!(
                    "{len} bytes with Hearth's device entries; the limit is {}",
                    capacity.saturating_sub(1)
                ))
            }
            other => BootError::Cmdline(other.to_string()),
        }
    };
    let mut line = extra.join(" ");
    if !user.trim().is_empty() {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(user);
    }
    if line.trim().is_empty() {
        Cmdline::new(capacity).map_err(too_long)
    } else {
        Cmdline::try_from(&line, capacity).map_err(too_long)
    }
}

/// Places the initrd page-aligned at the top of low RAM, above the kernel.
fn load_initrd(
    mem: &GuestMemoryMmap,
    (file, size): (&mut File, u64),
    path: &Path,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let io_err = |source| BootError::Initrd {
        path: path.into(),
        source,
    };
    let low_end = mem
        .iter()
        .next()
        .map(|r| r.start_addr().raw_value() + r.len())
        .unwrap_or(0);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|&a| a >= kernel_end)
        .ok_or_else(|| BootError::InitrdTooLarge {
            path: path.into(),
            size,
        })?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooLarge {
        path: path.into(),
        size,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, len)
        .map_err(|e| io_err(std::io::Error::other(e.to_string())))?;
    Ok((addr, size))
}

/// Loads everything and returns where the boot vCPU starts.
pub(crate) fn load(
    mem: &GuestMemoryMmap,
    files: BootFiles,
    spec: &BootSpec,
) -> Result<EntryPoint, BootError> {
    let BootFiles {
        kernel: mut kernel_file,
        initrd: initrd_file,
    } = files;
    let kernel = load_kernel(mem, &mut kernel_file, spec.kernel, spec.protocol)?;
    let capacity = match &kernel.header {
        Some(h) if h.cmdline_size > 0 => (h.cmdline_size as usize + 1).min(CMDLINE_MAX_SIZE),
        _ => CMDLINE_MAX_SIZE,
    };
    let cmdline = build_cmdline(spec.cmdline, spec.extra_cmdline, capacity)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_size = cmdline
        .as_cstring()
        .map(|c| c.as_bytes_with_nul().len())
        .map_err(|e| BootError::Cmdline(e.to_string()))?;

    let initrd = match (initrd_file, spec.initrd) {
        (Some((mut file, size)), Some(path)) => Some(load_initrd(mem, (&mut file, size), path, kernel.end)?),
        _ => None,
    };
    setup_mptable(mem, spec.vcpus)?;
    let ram: Vec<(u64, u64)> = mem
        .iter()
        .map(|r| (r.start_addr().raw_value(), r.len()))
        .collect();
    let info = BootInfo {
        ram: &ram,
        cmdline_size,
        initrd,
    };
    match kernel.entry {
        EntryPoint::Linux64(_) => write_zero_page(mem, &info, kernel.header)?,
        EntryPoint::Pvh(_) => write_pvh_info(mem, &info)?,
    }
    Ok(kernel.entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_gets_device_entries_and_limits() {
        let extra = vec!["virtio_mmio.device=4K@0xd0000000:5".to_string()];
        let c = build_cmdline("console=ttyS0 -- init-arg", &extra, 2048).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "virtio_mmio.device=4K@0xd0000000:5 console=ttyS0 -- init-arg"
        );
        // Found by the cmdline fuzz target: a bare `--` that linux-loader
        // does not take for the init separator, or an unbalanced quote,
        // must not swallow the device entries.
        for user in ["console=ttyS0 --", "-- init-arg", "a=\"b c"] {
            let c = build_cmdline(user, &extra, 2048).unwrap();
            let built = c.as_cstring().unwrap().into_string().unwrap();
            assert!(
                built.starts_with(&format!("{} ", extra[0])),
                "{user:?} -> {built:?}"
            );
        }
        let c = build_cmdline("", &extra, 2048).unwrap();
        assert_eq!(c.as_cstring().unwrap().to_str().unwrap(), extra[0]);
        let err = build_cmdline(&"a".repeat(2040), &extra, 2048).unwrap_err();
        assert!(err.to_string().contains("limit is 2047"), "{err}");
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    fn boot(kernel: &Path) -> Result<EntryPoint, BootError> {
        load(&mem(), BootFiles::open(kernel, None)?, &spec(kernel))
    }

    fn spec(kernel: &Path) -> BootSpec<'_> {
        BootSpec {
            kernel,
            initrd: None,
            cmdline: "x",
            extra_cmdline: &[],
            protocol: BootProtocol::Auto,
            vcpus: 1,
        }
    }

    #[test]
    fn bad_kernels_are_refused_with_their_reason() {
        let dir = std::env::temp_dir().join(format!("hearth-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing");
        assert!(matches!(boot(&missing), Err(BootError::KernelOpen { .. })));
        assert!(matches!(boot(&dir), Err(BootError::KernelNotFile { .. })));
        let junk = dir.join("junk");
        std::fs::write(&junk, vec![0x41u8; 4096]).unwrap();
        let e = boot(&junk).unwrap_err();
        assert!(matches!(e, BootError::KernelFormat { .. }), "{e}");
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(boot(&empty), Err(BootError::KernelFormat { .. })));
        let bad_elf = dir.join("bad.elf");
        std::fs::write(&bad_elf, b"\x7fELF\x01\x01\x01").unwrap();
        assert!(matches!(boot(&bad_elf), Err(BootError::KernelLoad { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
