//! CPU time of a VM's threads. Each thread registers itself when it
//! starts; reading costs one `clock_gettime` per thread (the thread's CPU
//! clock, named by its tid) plus, where `/proc` is mounted, one `pread` of
//! its `stat` file for the user/system split (an fd opened once, at
//! registration). Inside a jail without `/proc`, only the total is known.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// Most threads a VM registers (vCPUs, the event loop, helpers): a bound
/// on the fds held for `stat` files.
const MAX_THREADS: usize = 300;

/// One thread's CPU time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ThreadCpu {
    /// The thread's name (`vcpu0`, `events`, …).
    pub name: String,
    /// CPU time, user plus system, microseconds (the thread's CPU clock).
    pub cpu_us: u64,
    /// User time, microseconds (clock-tick resolution), where `/proc` is
    /// readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_us: Option<u64>,
    /// System time, microseconds (clock-tick resolution), where `/proc`
    /// is readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_us: Option<u64>,
}

#[derive(Debug)]
struct Entry {
    tid: libc::pid_t,
    stat: Option<File>,
    /// The last reading: kept once the thread is gone.
    last: ThreadCpu,
}

/// The threads of one VM.
#[derive(Clone, Debug, Default)]
pub(crate) struct ThreadSet {
    entries: Arc<Mutex<Vec<Entry>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The calling thread's id.
fn gettid() -> libc::pid_t {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// The CPU-time clock of thread `tid` of this process (Linux's encoding:
/// `MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`). The kernel refuses it
/// for a thread outside this process, or one that has exited.
fn thread_clock(tid: libc::pid_t) -> libc::clockid_t {
    ((!tid) << 3) | 6
}

fn cpu_clock_us(tid: libc::pid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(thread_clock(tid), &mut ts) } != 0 {
        return None;
    }
    Some(u64::try_from(ts.tv_sec).ok()? * 1_000_000 + u64::try_from(ts.tv_nsec).ok()? / 1000)
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// User and system time in clock ticks from a `/proc/<pid>/task/<tid>/stat`
/// line: fields 14 and 15, counted after the parenthesised command name
/// (which may itself hold spaces and parentheses).
pub(crate) fn parse_stat_times(line: &str) -> Option<(u64, u64)> {
    let rest = &line[line.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3 (state): utime is field 14, the 12th here.
    let utime = fields.nth(11)?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

impl ThreadSet {
    /// Registers the calling thread as `name`. Call [`ThreadSet::finish`]
    /// on the thread before it ends, so that its last reading is kept.
    pub fn register_current(&self, name: &str) {
        let tid = gettid();
        let stat = File::open("/proc/thread-self/stat").ok();
        let mut entries = lock(&self.entries);
        if entries.len() >= MAX_THREADS {
            return;
        }
        entries.push(Entry {
            tid,
            stat,
            last: ThreadCpu {
                name: name.to_string(),
                ..ThreadCpu::default()
            },
        });
    }

    /// Records the calling thread's final CPU time (its own CPU clock; the
    /// user/system split keeps its last reading).
    pub fn finish(&self) {
        let tid = gettid();
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec for the call to fill.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
            return;
        }
        let us =
            u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000;
        let mut entries = lock(&self.entries);
        if let Some(e) = entries.iter_mut().find(|e| e.tid == tid) {
            e.last.cpu_us = us;
            // Another thread may reuse the tid later. (The stat file stays
            // open: closing it here could need calls this thread's seccomp
            // filter refuses.)
            e.tid = 0;
        }
    }

    /// Each registered thread's CPU time now (or when it was last seen).
    pub fn read(&self) -> Vec<ThreadCpu> {
        let tick_us = 1_000_000 / ticks_per_second();
        let mut buf = [0u8; 1024];
        let mut entries = lock(&self.entries);
        entries
            .iter_mut()
            .map(|e| {
                if let Some(cpu_us) = (e.tid != 0).then(|| cpu_clock_us(e.tid)).flatten() {
                    e.last.cpu_us = cpu_us;
                    let split = e.stat.as_ref().and_then(|f| {
                        let n = f.read_at(&mut buf, 0).ok()?;
                        parse_stat_times(std::str::from_utf8(buf.get(..n)?).ok()?)
                    });
                    if let Some((user, system)) = split {
                        e.last.user_us = Some(user * tick_us);
                        e.last.system_us = Some(system * tick_us);
                    }
                } else {
                    // The thread is gone: its stat fd is of no more use.
                    e.stat = None;
                }
                e.last.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_skip_a_tricky_command_name() {
        let line = "1234 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 42 17 0 0 20 0 1 0";
        assert_eq!(parse_stat_times(line), Some((42, 17)));
        assert_eq!(parse_stat_times("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_times("garbage"), None);
    }

    #[test]
    fn a_spinning_thread_accumulates_cpu_time_and_keeps_it_after_exit() {
        let set = ThreadSet::default();
        let s = set.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            s.register_current("spin");
            tx.send(()).unwrap();
            // 60 ms of this thread's own CPU time, however long a loaded
            // host takes to give it.
            let mut x = 0u64;
            while cpu_clock_us(gettid()).unwrap() < 60_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            s.finish();
        });
        rx.recv().unwrap();
        t.join().unwrap();
        let after = set.read();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].name, "spin");
        assert!(after[0].cpu_us >= 60_000, "{after:?}");
    }
}
