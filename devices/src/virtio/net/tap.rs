//! A TAP interface as a [`NetBackend`]: Ethernet frames with virtio-net
//! headers, straight from and to the host kernel.
//!
//! The fd is opened non-blocking and close-on-exec, with `IFF_TAP |
//! IFF_NO_PI | IFF_VNET_HDR` and a 12-byte header (`TUNSETVNETHDRSZ`), so a
//! frame read or written is exactly what sits in a virtqueue.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::backend::{GuestOffloads, NetBackend};
use super::rxtx::VNET_HDR_LEN;

/// The TUN/TAP clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// Why a TAP interface cannot be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TapError {
    /// Not a valid Linux interface name.
    #[error("invalid TAP interface name {0:?}: use 1 to 15 bytes without '/', ':' or whitespace")]
    InvalidName(String),
    /// The interface does not exist and was not to be created.
    #[error("TAP interface {0} does not exist (create it with `ip tuntap add {0} mode tap`)")]
    Missing(String),
    /// Another process (or fd) has the interface open.
    #[error("TAP interface {0} is busy: another process has it open")]
    Busy(String),
    /// EPERM/EACCES from /dev/net/tun or TUNSETIFF.
    #[error("not permitted to open TAP interface {0}: needs CAP_NET_ADMIN, or a TAP owned by this user")]
    NotPermitted(String),
    /// /dev/net/tun is absent, or the tun driver is not loaded.
    #[error("{TUN_DEVICE} is missing: load the tun module (modprobe tun)")]
    NoTunDevice,
    /// An interface of that name exists but is not a TAP.
    #[error("interface {0} exists but is not a TAP interface")]
    NotATap(String),
    /// Any other failure.
    #[error("TAP interface {name}: {op} failed: {source}")]
    Io {
        /// The interface.
        name: String,
        /// What failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// An open TAP interface. Closing it (dropping) removes the interface
/// unless it was made persistent by its creator.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// Checks `name` as Linux's `dev_valid_name` does and returns it as
/// `ifr_name`.
fn if_name(name: &str) -> Result<[libc::c_char; libc::IFNAMSIZ], TapError> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !bytes
            .iter()
            .any(|&b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace());
    if !valid {
        return Err(TapError::InvalidName(name.to_owned()));
    }
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (o, &b) in out.iter_mut().zip(bytes) {
        *o = b as libc::c_char;
    }
    Ok(out)
}

/// The TUNSETOFFLOAD flags for what the guest accepts. UFO is never used.
pub fn tun_offload_flags(offloads: GuestOffloads) -> libc::c_uint {
    let mut flags = 0;
    if offloads.csum {
        flags |= libc::TUN_F_CSUM;
        if offloads.tso4 {
            flags |= libc::TUN_F_TSO4;
        }
        if offloads.tso6 {
            flags |= libc::TUN_F_TSO6;
        }
    }
    flags
}

/// Whether the interface exists in the calling thread's namespace.
fn interface_exists(name: &[libc::c_char; libc::IFNAMSIZ]) -> bool {
    // SAFETY: `name` is NUL-terminated (if_name leaves the last byte 0).
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

impl Tap {
    /// Opens TAP interface `name`; with `create`, creates it if it does not
    /// exist (which needs CAP_NET_ADMIN). Without `create`, a missing
    /// interface is [`TapError::Missing`].
    pub fn open(name: &str, create: bool) -> Result<Self, TapError> {
        let ifr_name = if_name(name)?;
        // TUNSETIFF would create a missing interface: look first, in this
        // thread's network namespace (not through /sys, which shows the
        // namespace it was mounted in).
        if !create && !interface_exists(&ifr_name) {
            return Err(TapError::Missing(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => TapError::NoTunDevice,
                Some(libc::EACCES | libc::EPERM) => TapError::NotPermitted(name.to_owned()),
                _ => TapError::Io {
                    name: name.to_owned(),
                    op: "opening /dev/net/tun",
                    source: e,
                },
            })?;

        // SAFETY: ifreq is plain C data (a name array and a union of
        // integers, sockaddrs and a pointer); all zeroes is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        ifr.ifr_name = ifr_name;
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which
        // `ifr` is and which outlives the call; the fd is ours and open.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            let name = name.to_owned();
            return Err(match e.raw_os_error() {
                Some(libc::EBUSY) => TapError::Busy(name),
                Some(libc::EPERM | libc::EACCES) => TapError::NotPermitted(name),
                Some(libc::EINVAL) => TapError::NotATap(name),
                _ => TapError::Io {
                    name,
                    op: "TUNSETIFF",
                    source: e,
                },
            });
        }
        // The kernel fills in the final name (it expands a "%d" pattern).
        let name = {
            let raw: Vec<u8> = ifr.ifr_name.iter().map(|&c| c as u8).collect();
            CStr::from_bytes_until_nul(&raw)
                .ok()
                .and_then(|c| c.to_str().ok())
                .unwrap_or(name)
                .to_owned()
        };

        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at `hdr_len` for the duration of the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if ret < 0 {
            return Err(TapError::Io {
                name,
                op: "TUNSETVNETHDRSZ",
                source: io::Error::last_os_error(),
            });
        }
        Ok(Self { file, name })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Lets the kernel hand over frames with the offloads the guest
    /// accepts (`TUNSETOFFLOAD`); with none, it finishes checksums and
    /// segmentation itself.
    pub fn set_offload_flags(&self, offloads: GuestOffloads) -> io::Result<()> {
        let flags = libc::c_ulong::from(tun_offload_flags(offloads));
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is
        // passed. The fd is ours and open.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETOFFLOAD, flags) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn write_frame(&mut self, frame: &[IoSlice<'_>]) -> io::Result<()> {
        let len: usize = frame.iter().map(|s| s.len()).sum();
        let n = self.file.write_vectored(frame)?;
        if n != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write to {}: {n} of {len} bytes", self.name),
            ));
        }
        Ok(())
    }

    fn set_offload(&mut self, offloads: GuestOffloads) -> io::Result<()> {
        self.set_offload_flags(offloads)
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-bytes-xx", "nul\0"] {
            assert!(
                matches!(Tap::open(bad, true), Err(TapError::InvalidName(_))),
                "{bad:?}"
            );
        }
        assert!(if_name("fifteen-bytes-x").is_ok());
    }

    #[test]
    fn missing_interface_is_not_created() {
        let name = format!("hrthno{}", std::process::id());
        let e = Tap::open(&name, false).unwrap_err();
        assert!(matches!(e, TapError::Missing(_)), "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(!Path::new("/sys/class/net").join(&name).exists());
    }

    #[test]
    fn offload_flags() {
        let o = |csum, tso4, tso6| GuestOffloads { csum, tso4, tso6 };
        assert_eq!(tun_offload_flags(o(false, false, false)), 0);
        assert_eq!(tun_offload_flags(o(false, true, true)), 0);
        assert_eq!(tun_offload_flags(o(true, false, false)), libc::TUN_F_CSUM);
        assert_eq!(
            tun_offload_flags(o(true, true, true)),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
    }

    #[test]
    fn create_offload_busy_and_cleanup() {
        if !is_root() || !Path::new(TUN_DEVICE).exists() {
            println!("skipped: needs root and {TUN_DEVICE}");
            return;
        }
        let name = format!("hrthtest{}", std::process::id());
        let sys = Path::new("/sys/class/net").join(&name);
        let mut tap = Tap::open(&name, true).unwrap();
        assert_eq!(tap.name(), name);
        assert!(sys.exists());
        tap.set_offload(GuestOffloads {
            csum: true,
            tso4: true,
            tso6: true,
        })
        .unwrap();
        tap.set_offload(GuestOffloads::default()).unwrap();
        // Non-blocking: nothing to read on a fresh (down) interface.
        let mut buf = vec![0u8; super::super::rxtx::MAX_PACKET_LEN];
        assert_eq!(
            tap.read_frame(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        // Close-on-exec.
        // SAFETY: F_GETFD on our own open fd.
        let fd_flags = unsafe { libc::fcntl(tap.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(fd_flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        let e = Tap::open(&name, false).unwrap_err();
        assert!(matches!(e, TapError::Busy(_)), "{e}");
        assert!(e.to_string().contains("busy"), "{e}");
        drop(tap);
        assert!(!sys.exists(), "a non-persistent TAP goes with its last fd");
    }

    #[test]
    fn existing_non_tap_interface_is_refused() {
        if !is_root() || !Path::new(TUN_DEVICE).exists() {
            println!("skipped: needs root and {TUN_DEVICE}");
            return;
        }
        let e = Tap::open("lo", false).unwrap_err();
        assert!(matches!(e, TapError::NotATap(_)), "{e}");
    }
}
