//! The guest-agent protocol's decoding, as either side sees bytes from the
//! other (the guest is hostile to the host, and the agent checks what the
//! host sends): a stream of arbitrary bytes cut into frames by `FrameBuf`
//! fed in arbitrary pieces, each frame decoded as a message.
//!
//! Invariants: no panic; `FrameBuf` never holds more than one frame plus
//! one piece; every frame it yields has a length in range; every message
//! that decodes encodes back to a frame that decodes to the same message.

use arbitrary::{Arbitrary, Unstructured};
use hearth_agent_protocol::{Frame, FrameBuf, Message, MAX_FRAME};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Sizes of the pieces the stream arrives in.
    pieces: Vec<u16>,
    /// Frames to put in the stream as valid ones (kind, body).
    frames: Vec<(u8, Vec<u8>)>,
    /// Raw bytes appended after them.
    tail: Vec<u8>,
}

fn check(frame: &Frame) {
    assert!(frame.body.len() < MAX_FRAME, "a frame of {} bytes", frame.body.len());
    if let Ok(m) = Message::decode(frame) {
        let bytes = m.encode();
        let mut fb = FrameBuf::new();
        fb.extend(&bytes);
        let again = fb.next_frame().ok().flatten();
        let again = again.as_ref().map(Message::decode);
        assert_eq!(again, Some(Ok(m)), "re-encoding changed the message");
    }
}

/// The `agent_frames` target.
pub fn agent_frames(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut stream = Vec::new();
    for (kind, body) in &input.frames {
        stream.extend(hearth_agent_protocol::encode(*kind, body));
    }
    stream.extend_from_slice(&input.tail);
    let mut fb = FrameBuf::new();
    let mut at = 0;
    let mut pieces = input.pieces.iter().cycle();
    while at < stream.len() {
        let size = usize::from(pieces.next().copied().unwrap_or(u16::MAX)).max(1);
        let end = (at + size).min(stream.len());
        fb.extend(&stream[at..end]);
        at = end;
        loop {
            match fb.next_frame() {
                Ok(Some(frame)) => check(&frame),
                Ok(None) => break,
                // A bad length ends the stream, as on a connection.
                Err(_) => return,
            }
        }
        assert!(fb.pending() <= MAX_FRAME + 4 + size, "FrameBuf holds {} bytes", fb.pending());
    }
}
