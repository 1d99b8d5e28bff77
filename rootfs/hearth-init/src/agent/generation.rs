//! The restore hook (docs/AGENT.md, "Clones are new machines"): the VM
//! generation device says when the VM was restored or forked; the agent
//! then reseeds the kernel's CRNG from the device's seed, sets the wall
//! clock from the host's and prints `AGENT-REFRESHED generation=<hex>`.
//!
//! The source is pluggable: `/dev/port` in the guest ([`DevPort`]), a
//! 48-byte file of the same layout in native mode ([`GenerationFile`]),
//! where the RNG and the clock are never touched (only logged).

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::fd::{self, Fd};
use crate::console;

/// /dev/port offsets of the VM generation device.
pub const GENERATION_PORT: u64 = 0x448;
/// The 32-byte seed.
pub const SEED_PORT: u64 = 0x450;
/// The host's wall clock (Unix ns, latched when this offset is read).
pub const TIME_PORT: u64 = 0x470;
/// The file layout of native mode: generation at 0, seed at 8, time at 40.
pub const FILE_LEN: usize = 48;
/// How often the agent looks when idle.
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The generation, seed and time, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The generation.
    pub generation: u64,
    /// Entropy from the host.
    pub seed: [u8; 32],
    /// The host's wall clock, Unix ns.
    pub time_ns: u64,
}

/// Where the generation comes from.
pub trait Source: std::fmt::Debug {
    /// The current generation (one cheap read).
    fn generation(&mut self) -> io::Result<u64>;
    /// The seed and the host time, read after a change.
    fn seed_and_time(&mut self) -> io::Result<([u8; 32], u64)>;
}

/// The guest's device through /dev/port.
#[derive(Debug)]
pub struct DevPort {
    port: Fd,
}

impl DevPort {
    /// Opens /dev/port (guest only: never on a host).
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            port: fd::open(b"/dev/port", libc::O_RDONLY, 0)?,
        })
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let off = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `buf` is a valid writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::pread(self.port.raw(), buf.as_mut_ptr().cast(), buf.len(), off) };
        match usize::try_from(n) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(_) => Err(io::ErrorKind::UnexpectedEof.into()),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }
}

impl Source for DevPort {
    fn generation(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.pread(&mut b, GENERATION_PORT)?;
        Ok(u64::from_le_bytes(b))
    }

    fn seed_and_time(&mut self) -> io::Result<([u8; 32], u64)> {
        let mut seed = [0u8; 32];
        self.pread(&mut seed, SEED_PORT)?;
        // One read of all 8 bytes: the first latches the clock.
        let mut t = [0u8; 8];
        self.pread(&mut t, TIME_PORT)?;
        Ok((seed, u64::from_le_bytes(t)))
    }
}

/// Native mode: a file with the device's layout, read afresh each time
/// (so that a test may replace it).
#[derive(Debug)]
pub struct GenerationFile {
    path: PathBuf,
}

impl GenerationFile {
    /// Reads from `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    fn read(&self) -> io::Result<Reading> {
        parse_file(&std::fs::read(&self.path)?)
    }
}

/// Parses the 48-byte layout (longer files: the rest is ignored).
pub fn parse_file(bytes: &[u8]) -> io::Result<Reading> {
    let short = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} bytes, want {FILE_LEN}", bytes.len()),
        )
    };
    let (generation, rest) = bytes.split_first_chunk::<8>().ok_or_else(short)?;
    let (seed, rest) = rest.split_first_chunk::<32>().ok_or_else(short)?;
    let (time, _) = rest.split_first_chunk::<8>().ok_or_else(short)?;
    Ok(Reading {
        generation: u64::from_le_bytes(*generation),
        seed: *seed,
        time_ns: u64::from_le_bytes(*time),
    })
}

impl Source for GenerationFile {
    fn generation(&mut self) -> io::Result<u64> {
        Ok(self.read()?.generation)
    }

    fn seed_and_time(&mut self) -> io::Result<([u8; 32], u64)> {
        let r = self.read()?;
        Ok((r.seed, r.time_ns))
    }
}

/// Watches the generation and refreshes the machine when it changes.
#[derive(Debug)]
pub struct Watch {
    source: Option<Box<dyn Source>>,
    /// Reseed and set the clock (guest), or only log (native).
    live: bool,
    current: u64,
    /// A change seen and not yet reported by REFRESH.
    unreported: bool,
    next_check: Instant,
    /// The last read error logged (logged once until it changes).
    last_error: Option<String>,
}

impl Watch {
    /// Records the source's generation now. No source: the generation is
    /// 0 and never changes.
    pub fn new(mut source: Option<Box<dyn Source>>, live: bool, now: Instant) -> Self {
        let mut last_error = None;
        let current = match source.as_mut().map(|s| s.generation()) {
            Some(Ok(g)) => g,
            Some(Err(e)) => {
                let text = format!("hearth-init: agent: VM generation: {}", fd::error_text(&e));
                console::line(&text);
                last_error = Some(text);
                0
            }
            None => 0,
        };
        Self {
            source,
            live,
            current,
            unreported: false,
            next_check: now + IDLE_CHECK,
            last_error,
        }
    }

    /// The generation the agent runs under.
    pub fn generation(&self) -> u64 {
        self.current
    }

    /// When the next idle check is due (`None`: no source).
    pub fn next_check(&self) -> Option<Instant> {
        self.source.is_some().then_some(self.next_check)
    }

    /// Reads the generation; on a change refreshes the machine. Returns
    /// whether it changed.
    pub fn check(&mut self, now: Instant) -> bool {
        self.next_check = now + IDLE_CHECK;
        let Some(source) = self.source.as_mut() else {
            return false;
        };
        let generation = match source.generation() {
            Ok(g) => g,
            Err(e) => {
                let text = format!("hearth-init: agent: VM generation: {}", fd::error_text(&e));
                if self.last_error.as_deref() != Some(text.as_str()) {
                    console::line(&text);
                    self.last_error = Some(text);
                }
                return false;
            }
        };
        self.last_error = None;
        if generation == self.current {
            return false;
        }
        match source.seed_and_time() {
            Ok((seed, time_ns)) => refresh(self.live, &seed, time_ns),
            Err(e) => console::line(&format!(
                "hearth-init: agent: VM generation seed and time: {}",
                fd::error_text(&e)
            )),
        }
        self.current = generation;
        self.unreported = true;
        console::line(&format!("AGENT-REFRESHED generation={generation:016x}"));
        true
    }

    /// For REFRESH with no generation change: sets the wall clock from the
    /// host's (after a long pause the guest's may lag, where its
    /// clocksource stopped with its vCPUs).
    pub fn sync_clock(&mut self) {
        let Some(source) = self.source.as_mut() else {
            return;
        };
        match source.seed_and_time() {
            Ok((_, time_ns)) if self.live => {
                if let Err(e) = set_clock(time_ns) {
                    console::line(&format!(
                        "hearth-init: agent: clock_settime: {}",
                        fd::error_text(&e)
                    ));
                }
            }
            Ok((_, time_ns)) => console::line(&format!(
                "hearth-init: agent: native mode: would set CLOCK_REALTIME to {time_ns} ns (skipped)"
            )),
            Err(e) => console::line(&format!("hearth-init: agent: host time: {}", fd::error_text(&e))),
        }
    }

    /// For REFRESH: whether a change was seen since the last REFRESH
    /// answered (by this check or an earlier one), and clears it.
    pub fn take_restored(&mut self) -> bool {
        std::mem::take(&mut self.unreported)
    }
}

/// `_IOW('R', 0x03, int[2])`: add entropy, crediting it.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// struct rand_pool_info with a 32-byte buffer.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; 32],
}

/// Mixes `seed` into the kernel's pool (256 bits credited), reseeds the
/// CRNG and sets CLOCK_REALTIME, or in native mode says it would.
fn refresh(live: bool, seed: &[u8; 32], time_ns: u64) {
    if !live {
        console::line(&format!(
            "hearth-init: agent: native mode: would reseed the CRNG and set CLOCK_REALTIME to {time_ns} ns (skipped)"
        ));
        return;
    }
    if let Err(e) = reseed(seed) {
        console::line(&format!("hearth-init: agent: reseed: {}", fd::error_text(&e)));
    }
    if let Err(e) = set_clock(time_ns) {
        console::line(&format!(
            "hearth-init: agent: clock_settime: {}",
            fd::error_text(&e)
        ));
    }
}

fn reseed(seed: &[u8; 32]) -> io::Result<()> {
    let random = fd::open(b"/dev/urandom", libc::O_WRONLY, 0)?;
    let info = RandPoolInfo {
        entropy_count: 256,
        buf_size: 32,
        buf: *seed,
    };
    // SAFETY: RNDADDENTROPY reads a rand_pool_info of `buf_size` bytes of
    // buffer through the pointer, valid here.
    fd::check(unsafe { libc::ioctl(random.raw(), RNDADDENTROPY, &info) })?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    fd::check(unsafe { libc::ioctl(random.raw(), RNDRESEEDCRNG) })?;
    Ok(())
}

fn set_clock(time_ns: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(time_ns / 1_000_000_000).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::try_from(time_ns % 1_000_000_000).unwrap_or(0),
    };
    // SAFETY: clock_settime reads a valid timespec.
    fd::check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[derive(Debug)]
    struct Fake(Rc<Cell<u64>>);

    impl Source for Fake {
        fn generation(&mut self) -> io::Result<u64> {
            Ok(self.0.get())
        }
        fn seed_and_time(&mut self) -> io::Result<([u8; 32], u64)> {
            Ok(([1; 32], 5))
        }
    }

    #[test]
    fn file_layout() {
        let mut bytes = vec![0u8; FILE_LEN];
        bytes[..8].copy_from_slice(&0x1122u64.to_le_bytes());
        bytes[8..40].copy_from_slice(&[9; 32]);
        bytes[40..].copy_from_slice(&77u64.to_le_bytes());
        assert_eq!(
            parse_file(&bytes).unwrap(),
            Reading {
                generation: 0x1122,
                seed: [9; 32],
                time_ns: 77
            }
        );
        assert!(parse_file(&bytes[..47]).is_err());
    }

    #[test]
    fn a_change_is_seen_once_and_reported_once() {
        let g = Rc::new(Cell::new(7));
        let now = Instant::now();
        let mut w = Watch::new(Some(Box::new(Fake(g.clone()))), false, now);
        assert_eq!(w.generation(), 7);
        assert_eq!(w.next_check(), Some(now + IDLE_CHECK));
        assert!(!w.check(now));
        assert!(!w.take_restored());
        g.set(8);
        assert!(w.check(now));
        assert_eq!(w.generation(), 8);
        assert!(!w.check(now));
        // The idle check saw it first: REFRESH still reports it, once.
        assert!(w.take_restored());
        assert!(!w.take_restored());
    }

    #[test]
    fn no_source_never_changes() {
        let mut w = Watch::new(None, false, Instant::now());
        assert!(!w.check(Instant::now()));
        assert_eq!((w.generation(), w.next_check()), (0, None));
    }
}
