//! Facts about the running system: kernel release, machine, online CPUs.

use std::io;

const ONLINE_CPUS: &str = "/sys/devices/system/cpu/online";

/// What init learns about the system once, at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// `uname -r`.
    pub release: String,
    /// `uname -m`.
    pub machine: String,
    /// Number of online CPUs, or why it is unknown.
    pub online_cpus: Result<u32, String>,
}

impl SystemInfo {
    /// Gathers the facts (a handful of system calls).
    pub fn gather() -> Self {
        let (release, machine) = match uname() {
            Ok(names) => names,
            Err(e) => (format!("unknown({e})"), "unknown".to_owned()),
        };
        let online_cpus = std::fs::read_to_string(ONLINE_CPUS)
            .map_err(|e| format!("{ONLINE_CPUS}: {e}"))
            .and_then(|list| {
                count_cpu_list(&list).ok_or_else(|| format!("{ONLINE_CPUS}: bad list {list:?}"))
            });
        Self {
            release,
            machine,
            online_cpus,
        }
    }
}

/// Release and machine from uname(2).
fn uname() -> io::Result<(String, String)> {
    // SAFETY: `utsname` is plain old data; all-zero bytes are a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname for the duration of the call.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((field(&uts.release), field(&uts.machine)))
}

fn field(raw: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .map(|&c| c.to_ne_bytes()[0])
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Counts the CPUs in a kernel CPU list such as `0`, `0-3` or `0,2-5,7`.
/// Returns `None` for a malformed list.
pub fn count_cpu_list(list: &str) -> Option<u32> {
    let list = list.trim();
    if list.is_empty() {
        return Some(0);
    }
    let mut total: u32 = 0;
    for item in list.split(',') {
        let count = match item.split_once('-') {
            Some((first, last)) => {
                let first: u32 = first.trim().parse().ok()?;
                let last: u32 = last.trim().parse().ok()?;
                last.checked_sub(first)?.checked_add(1)?
            }
            None => {
                item.trim().parse::<u32>().ok()?;
                1
            }
        };
        total = total.checked_add(count)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0\n"), Some(1));
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0,2-5,7"), Some(6));
        assert_eq!(count_cpu_list(""), Some(0));
    }

    #[test]
    fn bad_cpu_lists() {
        assert_eq!(count_cpu_list("x"), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("0,"), None);
        assert_eq!(count_cpu_list("1-"), None);
    }

    #[test]
    fn uname_field_stops_at_nul() {
        let raw: Vec<libc::c_char> = b"6.1\0junk"
            .iter()
            .map(|&b| libc::c_char::from_ne_bytes([b]))
            .collect();
        assert_eq!(field(&raw), "6.1");
    }

    #[test]
    fn gather_on_host_works() {
        let info = SystemInfo::gather();
        assert!(!info.release.is_empty());
        assert!(!info.machine.is_empty());
    }
}
