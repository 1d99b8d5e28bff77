//! The guest-agent protocol, version 2: how the host asks the agent inside
//! a Linux guest (`hearth-init`) to run processes and move files, over
//! vsock. Pure encoding and decoding; no I/O policy. docs/AGENT.md is the
//! specification; in short:
//!
//! - one vsock connection per request: a handshake ([`Hello`] /
//!   [`HelloOk`]), one request, then the request's own exchange (a
//!   process's streams, a file's data) until either side closes;
//! - every message is one [`frame`]: `u32 LE length | u8 kind | body`,
//!   at most [`MAX_FRAME`] bytes, data in chunks of at most [`MAX_CHUNK`];
//! - flow control is the connection's own (vsock credit): a client that
//!   stops reading one process's output stalls that process only.

pub mod frame;
pub mod message;

pub use frame::{encode, read_frame, write_frame, BadLength, Frame, FrameBuf, MAX_CHUNK, MAX_FRAME};
pub use message::*;
