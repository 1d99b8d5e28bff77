//! A connection's outbound queue: whole frames waiting to be sent, sent
//! with one `sendmsg` of many frames at a time. Producers (a process's
//! pipes, a download) add to it only while it holds less than
//! [`HIGH_WATER`], so it stays bounded by that plus one chunk plus small
//! control frames.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use hearth_agent_protocol::Message;

use super::fd::Fd;

/// Producers stop while this much waits to be sent.
pub const HIGH_WATER: usize = 256 << 10;
/// Most frames handed to one sendmsg.
const MAX_IOV: usize = 64;

/// Frames waiting to be sent.
#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<Vec<u8>>,
    /// Bytes of the front frame already sent.
    sent: usize,
    /// Bytes waiting.
    bytes: usize,
}

/// What a flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything was sent.
    All,
    /// The socket is full: wait for POLLOUT.
    Blocked,
}

impl OutQueue {
    /// Bytes waiting to be sent.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Whether producers may add more.
    pub fn has_room(&self) -> bool {
        self.bytes < HIGH_WATER
    }

    /// Room left below [`HIGH_WATER`].
    pub fn room(&self) -> usize {
        HIGH_WATER.saturating_sub(self.bytes)
    }

    /// Queues a whole frame's bytes.
    pub fn push_frame(&mut self, frame: Vec<u8>) {
        if frame.is_empty() {
            return;
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Queues a message.
    pub fn push(&mut self, message: &Message) {
        self.push_frame(message.encode());
    }

    /// Drops everything queued (the peer is gone).
    pub fn clear(&mut self) {
        self.frames.clear();
        self.sent = 0;
        self.bytes = 0;
    }

    /// Sends as much as the socket takes.
    pub fn flush(&mut self, sock: &Fd) -> io::Result<Flushed> {
        while !self.frames.is_empty() {
            let mut iov = Vec::with_capacity(self.frames.len().min(MAX_IOV));
            for (i, frame) in self.frames.iter().take(MAX_IOV).enumerate() {
                let from = if i == 0 { self.sent } else { 0 };
                iov.push(IoSlice::new(frame.get(from..).unwrap_or_default()));
            }
            let wanted: usize = iov.iter().map(|s| s.len()).sum();
            let n = match sock.send_vectored(&iov) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) => return Err(e),
            };
            drop(iov);
            self.consume(n);
            if n < wanted {
                // A short send: the socket's buffer is full.
                return Ok(Flushed::Blocked);
            }
        }
        Ok(Flushed::All)
    }

    /// Forgets `n` bytes sent from the front.
    fn consume(&mut self, mut n: usize) {
        self.bytes = self.bytes.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let left = front.len() - self.sent;
            if n < left {
                self.sent += n;
                return;
            }
            n -= left;
            self.sent = 0;
            self.frames.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn flush_sends_frames_in_order_and_resumes_after_blocking() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let a = Fd::from_owned(a.into());
        let mut q = OutQueue::default();
        let mut expected = Vec::new();
        for i in 0..40u32 {
            let frame = vec![(i % 251) as u8; 50_000 + i as usize];
            expected.extend_from_slice(&frame);
            q.push_frame(frame);
        }
        assert!(!q.has_room());
        assert_eq!(q.len(), expected.len());
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let r = q.flush(&a).unwrap();
            b.set_nonblocking(true).unwrap();
            while let Ok(n) = b.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            if r == Flushed::All {
                break;
            }
        }
        assert!(q.is_empty());
        assert_eq!(got.len(), expected.len());
        assert!(got == expected);
    }

    #[test]
    fn flush_to_a_gone_peer_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let a = Fd::from_owned(a.into());
        let mut q = OutQueue::default();
        q.push(&Message::Ok);
        assert!(q.flush(&a).is_err());
        q.clear();
        assert!(q.is_empty());
        assert_eq!(q.flush(&a).unwrap(), Flushed::All);
    }
}
