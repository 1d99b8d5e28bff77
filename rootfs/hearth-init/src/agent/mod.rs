//! The guest agent: serves the host's requests (`hearth-agent-protocol`)
//! on a vsock port, one connection at a time, one request per connection.
//!
//! It runs as a child of PID 1 (see `supervisor`), which restarts it if it
//! dies. Console lines: `AGENT-READY port=<p> pid=<pid>` once listening,
//! and `hearth-init: agent: ...` for a failed connection.

mod command;
mod conn;
mod exec;
mod fd;
mod files;

use std::convert::Infallible;
use std::io::{self, Write};
use std::time::Duration;

use hearth_agent_protocol::{read_request, write_frame, Request, Response};

use crate::console;

pub use command::exit_status;

/// Pause after a failed accept (e.g. out of descriptors) before retrying.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Buffers up to this size come from the heap, not from their own mmap.
const HEAP_ALLOC_MAX: libc::c_int = 4 << 20;
/// Free memory at the top of the heap kept for the next request.
const HEAP_KEEP: libc::c_int = 8 << 20;

/// Listens on `port` and serves requests forever; returns only if the
/// socket cannot be set up.
pub fn serve(port: u32) -> Result<Infallible, String> {
    keep_heap();
    let listener = conn::Listener::bind(port).map_err(|e| format!("vsock port {port}: {e}"))?;
    console::line(&format!("AGENT-READY port={port} pid={}", std::process::id()));
    loop {
        match listener.accept() {
            Ok(mut conn) => {
                if let Err(e) = handle(&mut conn) {
                    console::line(&format!("hearth-init: agent: connection: {e}"));
                }
            }
            Err(e) => {
                console::line(&format!("hearth-init: agent: accept: {e}"));
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// Reads one request from `conn` and answers it. An `Err` is an I/O error
/// on the connection (nothing more can be told to the client).
fn handle(conn: &mut (impl io::Read + exec::Client)) -> io::Result<()> {
    let request = match read_request(conn) {
        Ok(Some(request)) => request,
        // Connected and closed without a request.
        Ok(None) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return reply(conn, Response::Error(format!("bad request: {e}")));
        }
        Err(e) => return Err(e),
    };
    match request {
        Request::Exec(ref e) => exec::run(e, conn),
        Request::WriteFile { path, mode, data } => {
            let response = files::write(&path, mode, &data);
            // Free the request's copy of the data before answering.
            drop(data);
            reply(conn, response)
        }
        Request::ReadFile { path } => reply(conn, files::read(&path)),
    }
}

/// Keeps the memory of one request's buffers for the next. With guest
/// kernel code emulated, a fresh page costs ~3 ms (the kernel zeroes it a
/// byte at a time), about 0.7 s per MiB; glibc would otherwise give
/// buffers over 128 KiB back to the kernel after every request. The cost
/// is at most [`HEAP_KEEP`] of idle memory.
fn keep_heap() {
    // SAFETY: mallopt(3) only changes malloc's tuning; no memory is passed.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_ALLOC_MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, HEAP_KEEP);
    }
}

fn reply(conn: &mut impl Write, response: Response) -> io::Result<()> {
    write_frame(conn, &response.encode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_agent_protocol::{read_response, Exec};

    /// A fake connection: the request bytes in, the replies out.
    struct Fake {
        input: io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl io::Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl exec::Client for Fake {
        fn hangup_fd(&self) -> Option<std::os::fd::RawFd> {
            None
        }
        fn is_gone(&self) -> bool {
            false
        }
    }

    fn exchange(request: Vec<u8>) -> Vec<Response> {
        let mut fake = Fake {
            input: io::Cursor::new(request),
            output: Vec::new(),
        };
        handle(&mut fake).unwrap();
        let mut rest = &fake.output[..];
        let mut responses = Vec::new();
        while let Some(r) = read_response(&mut rest).unwrap() {
            responses.push(r);
        }
        responses
    }

    #[test]
    fn malformed_request_gets_an_error() {
        // A frame of kind 0x7f.
        let r = exchange(vec![1, 0, 0, 0, 0x7f]);
        assert_eq!(
            r,
            [Response::Error("bad request: unknown frame kind 0x7f".into())]
        );
        let r = exchange(vec![0, 0, 0, 0]);
        assert_eq!(
            r,
            [Response::Error(
                "bad request: frame length 0 is out of range".into()
            )]
        );
    }

    #[test]
    fn empty_connection_gets_nothing() {
        assert_eq!(exchange(Vec::new()), []);
    }

    #[test]
    fn requests_are_dispatched() {
        let exec = Request::Exec(Exec {
            argv: vec![b"echo".to_vec(), b"hi".to_vec()],
            ..Exec::default()
        });
        assert_eq!(
            exchange(exec.encode()),
            [Response::Stdout(b"hi\n".to_vec()), Response::Exit(0)]
        );
        let read = Request::ReadFile {
            path: b"/no/such".to_vec(),
        };
        assert_eq!(
            exchange(read.encode()),
            [Response::Error("open /no/such: No such file or directory".into())]
        );
    }
}
