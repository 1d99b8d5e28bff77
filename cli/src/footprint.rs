//! Dropping start-up code from the launcher's resident set.
//!
//! Starting a VM runs a lot of code once (argument and config parsing,
//! KVM and boot setup) and little afterwards (the vCPU loop, the devices).
//! The kernel maps executable pages in 64 KiB clusters, so by the time the
//! guest runs nearly the whole binary is resident. Once the VM is up the
//! launcher unmaps its own code pages (`MADV_DONTNEED` on the read-only
//! executable mapping); they stay in the page cache, and what is still
//! used faults back in at the cost of a minor fault. Writable and
//! relocated mappings are never touched.

/// One line of /proc/self/maps that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping<'a> {
    start: usize,
    end: usize,
    perms: &'a str,
    path: &'a str,
}

fn parse_line(line: &str) -> Option<Mapping<'_>> {
    let mut fields = line.split_whitespace();
    let (range, perms) = (fields.next()?, fields.next()?);
    let path = fields.nth(3).unwrap_or("");
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    (start < end).then_some(Mapping {
        start,
        end,
        perms,
        path,
    })
}

/// The executable's read-only code mappings, as (start, length).
fn code_ranges(maps: &str, exe: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(parse_line)
        .filter(|m| m.perms == "r-xp" && m.path == exe)
        .map(|m| (m.start, m.end - m.start))
        .collect()
}

/// Unmaps the launcher's code pages (see the module docs). Best effort:
/// on any failure nothing changes but the footprint.
pub fn drop_code_pages() {
    let (Ok(maps), Ok(exe)) = (
        std::fs::read_to_string("/proc/self/maps"),
        std::fs::read_link("/proc/self/exe"),
    ) else {
        return;
    };
    let Some(exe) = exe.to_str() else { return };
    for (start, len) in code_ranges(&maps, exe) {
        // SAFETY: the range is a read-only, private, file-backed mapping of
        // our own executable: it holds no data of ours, only page-cache
        // pages, and MADV_DONTNEED just drops them from the page tables; the
        // next access faults in the same bytes from the file.
        let r = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if r != 0 {
            log::debug!(
                "madvise on the launcher's code failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0a0000000-55d0a0086000 r--p 00000000 fd:01 1234   /usr/bin/hearth
55d0a0087000-55d0a027d000 r-xp 00087000 fd:01 1234   /usr/bin/hearth
55d0a027e000-55d0a0289000 r--p 0027d000 fd:01 1234   /usr/bin/hearth
55d0a0289000-55d0a028a000 rw-p 00288000 fd:01 1234   /usr/bin/hearth
7f0000000000-7f0008000000 rw-s 00000000 00:01 99     /memfd:guest (deleted)
7f1000000000-7f1000021000 r-xp 00000000 fd:01 77     /usr/lib/libother.so
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0      [stack]
garbage line
";

    #[test]
    fn only_the_executables_code_is_chosen() {
        assert_eq!(
            code_ranges(MAPS, "/usr/bin/hearth"),
            vec![(0x55d0_a008_7000, 0x1f_6000)]
        );
        assert!(code_ranges(MAPS, "/usr/bin/other").is_empty());
        assert_eq!(parse_line("garbage line"), None);
        assert_eq!(parse_line("20-10 r-xp 0 0:0 0 /x"), None);
    }

    /// Rss in KiB of the smaps entry that starts at `start`.
    fn rss_kib_at(start: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let head = format!("{start:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
        lines
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap()
    }

    #[test]
    fn dropping_code_pages_shrinks_the_mapping_and_code_runs_on() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let ranges = code_ranges(&maps, exe.to_str().unwrap());
        let (start, _) = *ranges.first().unwrap();
        let before = rss_kib_at(start);
        drop_code_pages();
        let after = rss_kib_at(start);
        assert!(after < before, "code Rss {before} KiB -> {after} KiB");
        // Code runs on (this assertion, formatting, the test harness),
        // faulting back in what it uses.
        assert_eq!(format!("{}", after * 2 / 2), after.to_string());
    }
}
