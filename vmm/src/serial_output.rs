//! Where a guest's serial console output goes, for library users: a
//! shared in-memory buffer that can be waited on, or a callback.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Default cap on a [`SerialBuffer`]'s size.
pub const DEFAULT_SERIAL_BUFFER_LIMIT: usize = 4 << 20;

#[derive(Debug, Default)]
struct BufferState {
    bytes: Vec<u8>,
    /// Bytes discarded from the front to respect the limit.
    dropped: u64,
}

#[derive(Debug)]
struct BufferInner {
    state: Mutex<BufferState>,
    grew: Condvar,
    limit: usize,
}

/// An in-memory serial sink, cheap to clone (clones share the contents).
///
/// It keeps at most its limit in bytes, dropping the oldest half when full,
/// so a guest that prints forever cannot exhaust the host's memory.
#[derive(Clone, Debug)]
pub struct SerialBuffer {
    inner: Arc<BufferInner>,
}

impl Default for SerialBuffer {
    fn default() -> Self {
        Self::with_limit(DEFAULT_SERIAL_BUFFER_LIMIT)
    }
}

impl PartialEq for SerialBuffer {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl SerialBuffer {
    /// A buffer with the default limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// A buffer that keeps at most `limit` bytes (at least 1 KiB).
    pub fn with_limit(limit: usize) -> Self {
        Self {
            inner: Arc::new(BufferInner {
                state: Mutex::new(BufferState::default()),
                grew: Condvar::new(),
                limit: limit.max(1024),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, BufferState> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bytes held now.
    pub fn contents(&self) -> Vec<u8> {
        self.state().bytes.clone()
    }

    /// The bytes held now, as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.state().bytes).into_owned()
    }

    /// Empties the buffer.
    pub fn clear(&self) {
        let mut st = self.state();
        st.dropped += st.bytes.len() as u64;
        st.bytes.clear();
    }

    /// Waits until the output contains `needle` (anywhere in what is held),
    /// or `timeout` passes. Returns whether it was found.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let needle = needle.as_bytes();
        let deadline = Instant::now() + timeout;
        let mut st = self.state();
        // Absolute stream position up to which no match can start.
        let mut searched: u64 = st.dropped;
        loop {
            let start = searched.saturating_sub(st.dropped) as usize;
            if let Some(hay) = st.bytes.get(start..) {
                if hay.windows(needle.len().max(1)).any(|w| w == needle) {
                    return true;
                }
                let total = st.dropped + st.bytes.len() as u64;
                searched = total
                    .saturating_sub(needle.len().saturating_sub(1) as u64)
                    .max(searched);
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            st = self
                .inner
                .grew
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn append(&self, data: &[u8]) {
        let mut st = self.state();
        st.bytes.extend_from_slice(data);
        if st.bytes.len() > self.inner.limit {
            let cut = st.bytes.len() - self.inner.limit / 2;
            st.bytes.drain(..cut);
            st.dropped += cut as u64;
        }
        drop(st);
        self.inner.grew.notify_all();
    }
}

/// A function called with each chunk of serial output.
#[derive(Clone)]
pub struct SerialCallback(Arc<CallbackFn>);

type CallbackFn = dyn Fn(&[u8]) + Send + Sync;

impl SerialCallback {
    /// Wraps `f`.
    pub fn new(f: impl Fn(&[u8]) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl fmt::Debug for SerialCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SerialCallback")
    }
}

impl PartialEq for SerialCallback {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The writer the UART model writes to.
pub(crate) enum SerialWriter {
    Stdout(io::Stdout),
    File(File),
    Sink,
    Buffer(SerialBuffer),
    Callback(SerialCallback),
}

impl Write for SerialWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Stdout(s) => s.write(buf),
            Self::File(f) => f.write(buf),
            Self::Sink => Ok(buf.len()),
            Self::Buffer(b) => {
                b.append(buf);
                Ok(buf.len())
            }
            Self::Callback(c) => {
                (c.0)(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout(s) => s.flush(),
            Self::File(f) => f.flush(),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_sees_text_across_writes() {
        let b = SerialBuffer::new();
        let mut w = SerialWriter::Buffer(b.clone());
        let writer = std::thread::spawn(move || {
            for chunk in [&b"GUEST-"[..], b"RE", b"ADY\n"] {
                std::thread::sleep(Duration::from_millis(5));
                w.write_all(chunk).unwrap();
            }
        });
        assert!(b.wait_for("GUEST-READY", Duration::from_secs(5)));
        writer.join().unwrap();
        assert!(!b.wait_for("nope", Duration::from_millis(10)));
        assert_eq!(b.text(), "GUEST-READY\n");
    }

    #[test]
    fn limit_drops_oldest_and_search_still_works() {
        let b = SerialBuffer::with_limit(1024);
        let mut w = SerialWriter::Buffer(b.clone());
        for i in 0..1000 {
            writeln!(w, "line {i}").unwrap();
        }
        assert!(b.contents().len() <= 1024);
        assert!(b.wait_for("line 999\n", Duration::from_millis(1)));
        assert!(!b.text().contains("line 0\n"));
        b.clear();
        assert!(b.contents().is_empty());
    }

    #[test]
    fn callback_receives_bytes() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut w = SerialWriter::Callback(SerialCallback::new(move |d| {
            s.lock().unwrap().extend_from_slice(d)
        }));
        w.write_all(b"abc").unwrap();
        assert_eq!(*seen.lock().unwrap(), b"abc");
    }
}
