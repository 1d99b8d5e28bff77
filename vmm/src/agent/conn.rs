//! One connection to the agent: transport, handshake, and frames in and
//! out, with every guest frame checked (the guest is not trusted).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use hearth_agent_protocol::{
    kind, read_frame, v1_error_text, ErrorInfo, ErrorKind, Frame, Hello, Message, MIN_VERSION, VERSION,
};

use super::error::AgentError;
use crate::vsock;

/// Where the agent listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A guest vsock port, through the VM's Firecracker-style Unix socket.
    Vsock {
        /// The VM's vsock socket.
        uds_path: PathBuf,
        /// The guest port.
        port: u32,
    },
    /// A Unix socket the agent listens on directly (`hearth-init agent
    /// --unix PATH`, the agent's native mode for tests).
    Unix(PathBuf),
}

/// A connection past its handshake.
#[derive(Debug)]
pub(crate) struct Conn {
    pub stream: UnixStream,
    pub timeout: Option<Duration>,
}

/// Reads one frame of a stream that may be silent for long (a process's
/// output, a WAIT): waits for the frame's first byte as long as it takes,
/// then gives the rest `timeout`. A frame once begun comes whole; a peer
/// stuck inside one is not an agent, and must not hang the client.
pub(crate) fn read_frame_patiently(
    stream: &mut UnixStream,
    timeout: Option<Duration>,
) -> io::Result<Option<Frame>> {
    stream.set_read_timeout(None)?;
    let mut first = [0u8; 1];
    loop {
        match stream.read(&mut first) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    stream.set_read_timeout(timeout)?;
    let frame = read_frame(&mut (&first[..]).chain(&mut *stream))?;
    // Not `None`: the chain starts with a byte.
    frame.map(Some).ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
}

pub(crate) fn map_read_err(e: io::Error, timeout: Option<Duration>) -> AgentError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            AgentError::Timeout(timeout.unwrap_or_default())
        }
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
            AgentError::Disconnected
        }
        io::ErrorKind::InvalidData => AgentError::Protocol(e.to_string()),
        _ => AgentError::Io(e),
    }
}

fn map_write_err(e: io::Error) -> AgentError {
    match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => AgentError::Disconnected,
        _ => AgentError::Io(e),
    }
}

impl Conn {
    /// Connects and shakes hands; `timeout` bounds every later read.
    pub fn open(endpoint: &Endpoint, timeout: Option<Duration>) -> Result<Self, AgentError> {
        let stream = match endpoint {
            Endpoint::Vsock { uds_path, port } => vsock::connect(uds_path, *port)?,
            Endpoint::Unix(path) => UnixStream::connect(path).map_err(|source| {
                AgentError::Connect(vsock::VsockConnectError::Socket {
                    path: path.clone(),
                    source,
                })
            })?,
        };
        stream.set_read_timeout(timeout)?;
        let mut conn = Self { stream, timeout };
        conn.send(&Message::Hello(Hello {
            version: VERSION,
            min_version: MIN_VERSION,
            client: format!("hearth {}", env!("CARGO_PKG_VERSION")),
        }))?;
        match conn.recv_raw()? {
            Reply::Message(Message::HelloOk(ok)) if ok.version == VERSION => Ok(conn),
            Reply::Message(Message::HelloOk(ok)) => Err(AgentError::Version {
                agent: ok.version,
                host: VERSION,
                message: format!("the agent chose version {}", ok.version),
            }),
            Reply::Message(Message::Error(e)) if e.kind == ErrorKind::Version => Err(AgentError::Version {
                agent: 0,
                host: VERSION,
                message: e.message,
            }),
            Reply::Message(Message::Error(e)) => Err(guest(e)),
            Reply::V1Error(text) => Err(AgentError::Version {
                agent: 1,
                host: VERSION,
                message: text,
            }),
            Reply::Message(other) => Err(unexpected("HELLO_OK", &other)),
            Reply::Closed => Err(AgentError::Disconnected),
        }
    }

    /// Sends one message.
    pub fn send(&mut self, m: &Message) -> Result<(), AgentError> {
        self.stream.write_all(&m.encode()).map_err(map_write_err)
    }

    fn recv_raw(&mut self) -> Result<Reply, AgentError> {
        let frame = read_frame(&mut self.stream);
        self.decode_reply(frame)
    }

    fn decode_reply(&self, frame: io::Result<Option<Frame>>) -> Result<Reply, AgentError> {
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(Reply::Closed),
            Err(e) => return Err(map_read_err(e, self.timeout)),
        };
        if frame.kind == kind::V1_ERROR {
            return Ok(Reply::V1Error(
                v1_error_text(&frame.body).unwrap_or_else(|| "an old agent".into()),
            ));
        }
        Message::decode(&frame)
            .map(Reply::Message)
            .map_err(|e| AgentError::Protocol(e.to_string()))
    }

    /// The next message; the guest's ERROR becomes `AgentError::Guest`,
    /// a close `Disconnected`.
    pub fn recv(&mut self) -> Result<Message, AgentError> {
        let reply = self.recv_raw()?;
        Self::message(reply)
    }

    /// Like [`recv`](Self::recv), waiting as long as it takes for the next
    /// frame to begin (process streams, WAIT): see
    /// [`read_frame_patiently`].
    pub fn recv_patiently(&mut self) -> Result<Message, AgentError> {
        let frame = read_frame_patiently(&mut self.stream, self.timeout);
        let reply = self.decode_reply(frame)?;
        Self::message(reply)
    }

    fn message(reply: Reply) -> Result<Message, AgentError> {
        match reply {
            Reply::Message(Message::Error(e)) => Err(guest(e)),
            Reply::Message(m) => Ok(m),
            Reply::V1Error(text) => Err(AgentError::Protocol(format!(
                "version-1 frame mid-exchange: {text}"
            ))),
            Reply::Closed => Err(AgentError::Disconnected),
        }
    }

    /// Expects `OK`.
    pub fn expect_ok(&mut self) -> Result<(), AgentError> {
        match self.recv()? {
            Message::Ok => Ok(()),
            other => Err(unexpected("OK", &other)),
        }
    }
}

enum Reply {
    Message(Message),
    V1Error(String),
    Closed,
}

pub(crate) fn guest(e: ErrorInfo) -> AgentError {
    AgentError::Guest {
        kind: e.kind,
        errno: e.errno,
        message: e.message,
    }
}

pub(crate) fn unexpected(wanted: &str, got: &Message) -> AgentError {
    let (k, _) = got.to_frame();
    AgentError::Protocol(format!("expected {wanted}, got a frame of kind {k:#04x}"))
}

/// Reads into `buf` until it is full or the reader ends; returns the
/// count (for streaming uploads in whole chunks).
pub(crate) fn read_chunk(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
