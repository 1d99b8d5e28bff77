//! Frames: `u32 LE length | u8 kind | body`, the length counting the kind
//! byte and the body, at most [`MAX_FRAME`]. Pure: [`encode`] builds a
//! frame, [`FrameBuf`] cuts frames out of bytes as they arrive (from a
//! blocking or a non-blocking stream), and [`read_frame`] is the blocking
//! form.

use std::io::{self, Read, Write};

/// The largest frame (kind + body). A data chunk is at most
/// [`MAX_CHUNK`], so every frame fits with room to spare.
pub const MAX_FRAME: usize = 256 << 10;
/// The largest data chunk (stdout, stderr, stdin, file data) in a frame.
pub const MAX_CHUNK: usize = 64 << 10;

/// A frame whose length is out of range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadLength(pub u32);

impl std::fmt::Display for BadLength {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "frame length {} is out of range (1 to {MAX_FRAME})", self.0)
    }
}

impl std::error::Error for BadLength {}

/// One frame, kind and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What the body is.
    pub kind: u8,
    /// The body.
    pub body: Vec<u8>,
}

/// The bytes of a frame of `kind` with `body`. A body longer than
/// [`MAX_FRAME`] - 1 is the caller's bug; it is cut there so that the
/// frame stays decodable (and the receiver refuses its contents).
pub fn encode(kind: u8, body: &[u8]) -> Vec<u8> {
    let body = &body[..body.len().min(MAX_FRAME - 1)];
    let mut out = Vec::with_capacity(5 + body.len());
    out.extend_from_slice(&((body.len() + 1) as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, kind: u8, body: &[u8]) -> io::Result<()> {
    w.write_all(&encode(kind, body))
}

/// Reads one frame; `Ok(None)` at a clean end of stream (before any byte
/// of a frame). A bad length is `InvalidData`; an end of stream inside a
/// frame is `UnexpectedEof`.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let n = u32::from_le_bytes(len);
    let size = check_len(n).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut buf = vec![0u8; size];
    r.read_exact(&mut buf)?;
    let kind = buf[0];
    buf.remove(0);
    Ok(Some(Frame { kind, body: buf }))
}

fn check_len(n: u32) -> Result<usize, BadLength> {
    match usize::try_from(n) {
        Ok(size) if (1..=MAX_FRAME).contains(&size) => Ok(size),
        _ => Err(BadLength(n)),
    }
}

/// Collects bytes and hands out whole frames. Holds at most one frame
/// plus what the caller feeds it in one go.
#[derive(Debug, Default)]
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes received.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not a whole frame yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// How many more bytes the next frame needs (0 if one is whole). Read
    /// at most this much at a time to hold at most one frame.
    pub fn wanted(&self) -> Result<usize, BadLength> {
        if self.buf.len() < 4 {
            return Ok(4 - self.buf.len() + 1);
        }
        let n = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let size = check_len(n)?;
        Ok((4 + size).saturating_sub(self.buf.len()))
    }

    /// The next whole frame, if there is one; an error if the length is
    /// out of range (the stream is then unusable).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, BadLength> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let n = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let size = check_len(n)?;
        if self.buf.len() < 4 + size {
            return Ok(None);
        }
        let kind = self.buf[4];
        let body = self.buf[5..4 + size].to_vec();
        self.buf.drain(..4 + size);
        Ok(Some(Frame { kind, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_whole_and_byte_by_byte() {
        let mut stream = Vec::new();
        stream.extend(encode(7, b"hello"));
        stream.extend(encode(9, b""));
        stream.extend(encode(1, &[0xaa; MAX_CHUNK]));
        // Blocking reader.
        let mut r = &stream[..];
        assert_eq!(read_frame(&mut r).unwrap().unwrap().body, b"hello");
        assert_eq!(read_frame(&mut r).unwrap().unwrap().kind, 9);
        assert_eq!(read_frame(&mut r).unwrap().unwrap().body.len(), MAX_CHUNK);
        assert!(read_frame(&mut r).unwrap().is_none());
        // Incremental, one byte at a time.
        let mut fb = FrameBuf::new();
        let mut frames = Vec::new();
        for b in &stream {
            fb.extend(&[*b]);
            while let Some(f) = fb.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(fb.pending(), 0);
    }

    #[test]
    fn bad_lengths_and_truncation_are_errors() {
        let mut r: &[u8] = &[0, 0, 0, 0];
        assert_eq!(read_frame(&mut r).unwrap_err().kind(), io::ErrorKind::InvalidData);
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        let mut r: &[u8] = &huge;
        assert_eq!(read_frame(&mut r).unwrap_err().kind(), io::ErrorKind::InvalidData);
        let mut fb = FrameBuf::new();
        fb.extend(&huge);
        assert_eq!(fb.next_frame(), Err(BadLength(MAX_FRAME as u32 + 1)));
        assert!(fb.wanted().is_err());
        let mut r: &[u8] = &[5, 0, 0, 0, 1, 2];
        assert_eq!(
            read_frame(&mut r).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut r: &[u8] = &[5, 0];
        assert_eq!(
            read_frame(&mut r).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn wanted_never_asks_past_one_frame() {
        let mut fb = FrameBuf::new();
        assert_eq!(fb.wanted(), Ok(5));
        let f = encode(3, b"abcdef");
        fb.extend(&f[..4]);
        assert_eq!(fb.wanted(), Ok(7));
        fb.extend(&f[4..]);
        assert_eq!(fb.wanted(), Ok(0));
    }
}
