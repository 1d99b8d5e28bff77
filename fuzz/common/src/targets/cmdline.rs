//! The kernel command line: `validate_cmdline` (what `VmConfig::validate`
//! checks) and `build_cmdline` (the user's line plus the device manager's
//! `virtio_mmio.device=` entries, in the kernel's buffer), via
//! `hearth::fuzzing`.
//!
//! Invariants: no panic; an accepted line is printable ASCII and shorter
//! than the limit; the entries are well formed and distinct; a built line
//! from an accepted one fits its buffer with its NUL, is printable ASCII,
//! has every entry as a kernel parameter (a whole word, outside quotes,
//! before any bare `--`), and keeps the user's init arguments.

use arbitrary::{Arbitrary, Unstructured};
use hearth::fuzzing::{build_cmdline, validate_cmdline, virtio_mmio_cmdline_entries, CMDLINE_MAX_SIZE};

#[derive(Arbitrary, Debug)]
struct Input {
    devices: u8,
    /// The bzImage header's cmdline_size + 1, or the default.
    capacity: Option<u16>,
    line: String,
}

/// The `cmdline` target.
pub fn cmdline(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let line = input.line.as_str();
    let valid = validate_cmdline(line).is_ok();
    if valid {
        assert!(
            line.bytes().all(|b| (b' '..=b'~').contains(&b)),
            "accepted a non-printable line"
        );
        assert!(
            line.len() < CMDLINE_MAX_SIZE,
            "accepted a line of {} bytes",
            line.len()
        );
    }
    let count = usize::from(input.devices % 24);
    let entries = match virtio_mmio_cmdline_entries(count) {
        Ok(e) => e,
        // IRQs 5..=23: 19 devices at most.
        Err(_) => {
            assert!(count > 19, "{count} devices refused");
            return;
        }
    };
    assert_eq!(entries.len(), count);
    for (i, e) in entries.iter().enumerate() {
        assert!(
            e.starts_with("virtio_mmio.device=4K@0x") && !e.contains(' '),
            "entry {e}"
        );
        assert!(!entries[..i].contains(e), "duplicate entry {e}");
    }
    // What boot::load can pass: the header's cmdline_size + 1, capped.
    let capacity = input
        .capacity
        .map_or(CMDLINE_MAX_SIZE, |c| (usize::from(c) + 2).min(CMDLINE_MAX_SIZE));
    let built = build_cmdline(line, &entries, capacity);
    if !valid {
        return;
    }
    let Ok(built) = built else { return };
    assert!(
        built.len() < capacity,
        "{} bytes in a {capacity}-byte buffer",
        built.len()
    );
    assert!(
        built.bytes().all(|b| (b' '..=b'~').contains(&b)),
        "built a non-printable line"
    );
    // What the kernel makes of it: the user's parameters after the
    // entries, and the user's init arguments, as it reads the user's line.
    let (params, init) = kernel_split(&built);
    // linux-loader trims the line (which matters inside an unclosed quote).
    let (user_params, user_init) = kernel_split(line.trim());
    let expected: Vec<&str> = entries.iter().map(String::as_str).chain(user_params).collect();
    assert_eq!(params, expected, "kernel parameters of {built:?}");
    // Without entries the line is linux-loader's reading of the user's
    // alone, whose quirks (`-- -- ` loses the init `--`) are not Hearth's.
    if count > 0 {
        assert_eq!(init, user_init, "init arguments of {built:?}");
    }
}

/// Splits a command line as the kernel's `parse_args` does: words split
/// at spaces outside double quotes, up to the first bare `--`; what
/// follows it is for init (`None` if nothing does).
fn kernel_split(line: &str) -> (Vec<&str>, Option<&str>) {
    let mut params = Vec::new();
    let mut start = None;
    let mut quoted = false;
    let mut words = Vec::new();
    for (i, c) in line.char_indices() {
        match c {
            '"' => {
                quoted = !quoted;
                start.get_or_insert(i);
            }
            ' ' if !quoted => {
                if let Some(s) = start.take() {
                    words.push((s, i));
                }
            }
            _ => {
                start.get_or_insert(i);
            }
        }
    }
    if let Some(s) = start {
        words.push((s, line.len()));
    }
    for (s, e) in words {
        let w = &line[s..e];
        if w == "--" {
            let rest = line[e..].trim();
            return (params, (!rest.is_empty()).then_some(rest));
        }
        params.push(w);
    }
    (params, None)
}
