//! The guest-agent protocol: how the host asks the agent inside a Linux
//! guest to run a command, write a file or read one, over one vsock
//! stream per request. Pure encoding and decoding; no I/O policy.
//!
//! A stream carries one request, then the responses, then the agent
//! closes it. Every message is a **frame**:
//!
//! ```text
//! u32 LE  length of what follows (kind + payload), at most MAX_FRAME
//! u8      kind
//! ...     payload
//! ```
//!
//! Payload fields are `u32 LE` integers, `i32 LE` integers, **bytes**
//! (`u32 LE` length + the bytes) and **lists** (`u32 LE` count + items).
//!
//! | kind | direction | payload |
//! |---|---|---|
//! | 0x01 EXEC | host → guest | argv: list of bytes; env: list of bytes (`KEY=VALUE`); cwd: bytes (empty: `/`); stdin: bytes |
//! | 0x02 WRITE_FILE | host → guest | path: bytes; mode: u32; data: bytes |
//! | 0x03 READ_FILE | host → guest | path: bytes |
//! | 0x81 STDOUT | guest → host | chunk: bytes |
//! | 0x82 STDERR | guest → host | chunk: bytes |
//! | 0x83 EXIT | guest → host | status: i32 (exit code, or minus the signal number) |
//! | 0x84 ERROR | guest → host | message: bytes (UTF-8) |
//! | 0x85 OK | guest → host | (empty) |
//! | 0x86 DATA | guest → host | contents: bytes |
//!
//! EXEC is answered by any number of STDOUT/STDERR frames then one EXIT,
//! or by one ERROR (e.g. the program does not exist). WRITE_FILE by OK or
//! ERROR; READ_FILE by DATA or ERROR.

use std::io::{self, Read, Write};

/// The vsock port the agent listens on by default.
pub const DEFAULT_PORT: u32 = 52;
/// The largest frame accepted (kind + payload).
pub const MAX_FRAME: u32 = 64 << 20;

mod kind {
    pub const EXEC: u8 = 0x01;
    pub const WRITE_FILE: u8 = 0x02;
    pub const READ_FILE: u8 = 0x03;
    pub const STDOUT: u8 = 0x81;
    pub const STDERR: u8 = 0x82;
    pub const EXIT: u8 = 0x83;
    pub const ERROR: u8 = 0x84;
    pub const OK: u8 = 0x85;
    pub const DATA: u8 = 0x86;
}

/// A command to run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exec {
    /// Program and arguments; `argv[0]` is looked up in PATH if it has no `/`.
    pub argv: Vec<Vec<u8>>,
    /// Environment, `KEY=VALUE` each.
    pub env: Vec<Vec<u8>>,
    /// Working directory (empty: `/`).
    pub cwd: Vec<u8>,
    /// Bytes fed to the command's standard input, which is then closed.
    pub stdin: Vec<u8>,
}

/// What the host asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Run a command.
    Exec(Exec),
    /// Create or replace a file.
    WriteFile {
        /// Absolute path.
        path: Vec<u8>,
        /// Permission bits.
        mode: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// Read a whole file.
    ReadFile {
        /// Absolute path.
        path: Vec<u8>,
    },
}

/// What the agent answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Part of the command's standard output.
    Stdout(Vec<u8>),
    /// Part of the command's standard error.
    Stderr(Vec<u8>),
    /// The command ended: exit code, or minus the signal that killed it.
    Exit(i32),
    /// The request failed.
    Error(String),
    /// The file was written.
    Ok,
    /// The file's contents.
    Data(Vec<u8>),
}

/// A malformed or oversized frame.
#[derive(Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A frame longer than [`MAX_FRAME`] or shorter than its kind byte.
    BadLength(u32),
    /// An unknown kind byte.
    UnknownKind(u8),
    /// The payload ends early or has bytes left over.
    BadPayload(u8),
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadLength(n) => write!(f, "frame length {n} is out of range"),
            Self::UnknownKind(k) => write!(f, "unknown frame kind {k:#04x}"),
            Self::BadPayload(k) => write!(f, "malformed payload in frame kind {k:#04x}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

fn put_list(out: &mut Vec<u8>, items: &[Vec<u8>]) {
    put_u32(out, items.len() as u32);
    for i in items {
        put_bytes(out, i);
    }
}

/// Reads fields from a payload, never past its end.
struct Fields<'a> {
    rest: &'a [u8],
    kind: u8,
}

impl<'a> Fields<'a> {
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<4>()
            .ok_or(ProtocolError::BadPayload(self.kind))?;
        self.rest = rest;
        Ok(u32::from_le_bytes(*head))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, ProtocolError> {
        let n = self.u32()? as usize;
        if n > self.rest.len() {
            return Err(ProtocolError::BadPayload(self.kind));
        }
        let (b, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(b.to_vec())
    }

    fn list(&mut self) -> Result<Vec<Vec<u8>>, ProtocolError> {
        let n = self.u32()? as usize;
        // Each item takes at least 4 bytes: bound the allocation.
        if n > self.rest.len() / 4 {
            return Err(ProtocolError::BadPayload(self.kind));
        }
        (0..n).map(|_| self.bytes()).collect()
    }

    fn end(self) -> Result<(), ProtocolError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::BadPayload(self.kind))
        }
    }
}

/// Builds a frame from its kind and payload.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    put_u32(&mut out, payload.len() as u32 + 1);
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

impl Request {
    /// The frame for this request.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::new();
        let k = match self {
            Request::Exec(e) => {
                put_list(&mut p, &e.argv);
                put_list(&mut p, &e.env);
                put_bytes(&mut p, &e.cwd);
                put_bytes(&mut p, &e.stdin);
                kind::EXEC
            }
            Request::WriteFile { path, mode, data } => {
                put_bytes(&mut p, path);
                put_u32(&mut p, *mode);
                put_bytes(&mut p, data);
                kind::WRITE_FILE
            }
            Request::ReadFile { path } => {
                put_bytes(&mut p, path);
                kind::READ_FILE
            }
        };
        frame(k, &p)
    }

    /// Decodes a frame's kind and payload.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Self, ProtocolError> {
        let mut f = Fields { rest: payload, kind };
        let r = match kind {
            kind::EXEC => Request::Exec(Exec {
                argv: f.list()?,
                env: f.list()?,
                cwd: f.bytes()?,
                stdin: f.bytes()?,
            }),
            kind::WRITE_FILE => Request::WriteFile {
                path: f.bytes()?,
                mode: f.u32()?,
                data: f.bytes()?,
            },
            kind::READ_FILE => Request::ReadFile { path: f.bytes()? },
            k => return Err(ProtocolError::UnknownKind(k)),
        };
        f.end()?;
        Ok(r)
    }
}

impl Response {
    /// The frame for this response.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::new();
        let k = match self {
            Response::Stdout(b) => {
                put_bytes(&mut p, b);
                kind::STDOUT
            }
            Response::Stderr(b) => {
                put_bytes(&mut p, b);
                kind::STDERR
            }
            Response::Exit(code) => {
                p.extend_from_slice(&code.to_le_bytes());
                kind::EXIT
            }
            Response::Error(msg) => {
                put_bytes(&mut p, msg.as_bytes());
                kind::ERROR
            }
            Response::Ok => kind::OK,
            Response::Data(b) => {
                put_bytes(&mut p, b);
                kind::DATA
            }
        };
        frame(k, &p)
    }

    /// Decodes a frame's kind and payload.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Self, ProtocolError> {
        let mut f = Fields { rest: payload, kind };
        let r = match kind {
            kind::STDOUT => Response::Stdout(f.bytes()?),
            kind::STDERR => Response::Stderr(f.bytes()?),
            kind::EXIT => Response::Exit(f.u32()? as i32),
            kind::ERROR => Response::Error(String::from_utf8_lossy(&f.bytes()?).into_owned()),
            kind::OK => Response::Ok,
            kind::DATA => Response::Data(f.bytes()?),
            k => return Err(ProtocolError::UnknownKind(k)),
        };
        f.end()?;
        Ok(r)
    }
}

/// Reads one frame: `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len);
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            ProtocolError::BadLength(len),
        ));
    }
    let mut kind = [0u8; 1];
    r.read_exact(&mut kind)?;
    let mut payload = vec![0u8; len as usize - 1];
    r.read_exact(&mut payload)?;
    Ok(Some((kind[0], payload)))
}

/// Reads and decodes a request.
pub fn read_request(r: &mut impl Read) -> io::Result<Option<Request>> {
    match read_frame(r)? {
        None => Ok(None),
        Some((k, p)) => Request::decode(k, &p)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
    }
}

/// Reads and decodes a response.
pub fn read_response(r: &mut impl Read) -> io::Result<Option<Response>> {
    match read_frame(r)? {
        None => Ok(None),
        Some((k, p)) => Response::decode(k, &p)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
    }
}

/// Writes a frame built by an `encode` method.
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    w.write_all(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_req(r: Request) {
        let f = r.encode();
        let got = read_request(&mut &f[..]).unwrap().unwrap();
        assert_eq!(got, r);
    }

    #[test]
    fn requests_round_trip() {
        roundtrip_req(Request::Exec(Exec {
            argv: vec![b"/bin/busybox".to_vec(), b"uname".to_vec(), b"-a".to_vec()],
            env: vec![b"PATH=/bin".to_vec()],
            cwd: b"/tmp".to_vec(),
            stdin: b"input".to_vec(),
        }));
        roundtrip_req(Request::Exec(Exec::default()));
        roundtrip_req(Request::WriteFile {
            path: b"/tmp/x".to_vec(),
            mode: 0o644,
            data: vec![7; 70_000],
        });
        roundtrip_req(Request::ReadFile {
            path: b"/etc/hostname".to_vec(),
        });
    }

    #[test]
    fn responses_round_trip() {
        for r in [
            Response::Stdout(b"out".to_vec()),
            Response::Stderr(vec![]),
            Response::Exit(0),
            Response::Exit(-9),
            Response::Exit(127),
            Response::Error("no such program".into()),
            Response::Ok,
            Response::Data(vec![1, 2, 3]),
        ] {
            let f = r.encode();
            assert_eq!(read_response(&mut &f[..]).unwrap().unwrap(), r);
        }
    }

    #[test]
    fn streams_of_frames_and_clean_end() {
        let mut s = Vec::new();
        s.extend(Response::Stdout(b"a".to_vec()).encode());
        s.extend(Response::Exit(3).encode());
        let mut r = &s[..];
        assert_eq!(
            read_response(&mut r).unwrap(),
            Some(Response::Stdout(b"a".to_vec()))
        );
        assert_eq!(read_response(&mut r).unwrap(), Some(Response::Exit(3)));
        assert_eq!(read_response(&mut r).unwrap(), None);
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        // Length zero, oversized, truncated.
        assert!(read_frame(&mut &[0u8, 0, 0, 0][..]).is_err());
        assert!(read_frame(&mut &(MAX_FRAME + 1).to_le_bytes()[..]).is_err());
        assert!(read_frame(&mut &[9u8, 0, 0, 0, 1, 2][..]).is_err());
        // Unknown kinds, short and long payloads, absurd counts.
        assert_eq!(Request::decode(0x7f, &[]), Err(ProtocolError::UnknownKind(0x7f)));
        assert_eq!(
            Request::decode(kind::READ_FILE, &[5, 0, 0, 0, b'a']),
            Err(ProtocolError::BadPayload(kind::READ_FILE))
        );
        assert_eq!(
            Request::decode(kind::READ_FILE, &[1, 0, 0, 0, b'a', b'b']),
            Err(ProtocolError::BadPayload(kind::READ_FILE))
        );
        assert_eq!(
            Request::decode(kind::EXEC, &u32::MAX.to_le_bytes()),
            Err(ProtocolError::BadPayload(kind::EXEC))
        );
        assert_eq!(
            Response::decode(kind::EXIT, &[1, 2]),
            Err(ProtocolError::BadPayload(kind::EXIT))
        );
        assert_eq!(
            Response::decode(kind::OK, &[1]),
            Err(ProtocolError::BadPayload(kind::OK))
        );
    }

    #[test]
    fn every_prefix_of_every_byte_string_decodes_or_errs() {
        let f = Request::Exec(Exec {
            argv: vec![b"a".to_vec()],
            env: vec![b"b=c".to_vec()],
            cwd: b"/".to_vec(),
            stdin: b"xy".to_vec(),
        })
        .encode();
        for n in 0..f.len() {
            let _ = Request::decode(kind::EXEC, &f[5..5 + n.saturating_sub(5).min(f.len() - 5)]);
            let _ = read_request(&mut &f[..n]);
        }
    }
}
