//! The handshake, versions and hostile input, against the real agent in
//! native mode.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use hearth_agent_protocol::{
    encode, kind, v1_error_text, ErrorKind, Message, PathReq, Spawn, MAX_FRAME, MIN_VERSION, VERSION,
};

fn expect_error(m: Option<Message>, kind: ErrorKind) -> String {
    match m {
        Some(Message::Error(e)) => {
            assert_eq!(e.kind, kind, "{e:?}");
            e.message
        }
        other => panic!("expected an ERROR {kind:?}, got {other:?}"),
    }
}

#[test]
fn handshake_and_a_request() {
    let agent = Agent::start();
    let mut c = agent.raw_client();
    c.send(&hello(VERSION, MIN_VERSION));
    match c.recv() {
        Some(Message::HelloOk(ok)) => {
            assert_eq!(ok.version, 2);
            assert!(ok.agent.starts_with("hearth-init"), "{}", ok.agent);
        }
        other => panic!("{other:?}"),
    }
    c.send(&Message::List);
    assert!(matches!(c.recv(), Some(Message::Processes(p)) if p.is_empty()));
    assert!(c.recv().is_none());
    // A host speaking 1 to 5 gets 2.
    let mut c = agent.raw_client();
    c.send(&hello(5, 1));
    assert!(matches!(c.recv(), Some(Message::HelloOk(ok)) if ok.version == 2));
}

#[test]
fn versions_that_do_not_overlap_get_a_version_error() {
    let agent = Agent::start();
    for (v, min) in [(3, 3), (1, 1)] {
        let mut c = agent.raw_client();
        c.send(&hello(v, min));
        let msg = expect_error(c.recv(), ErrorKind::Version);
        assert!(msg.contains("this agent 2 to 2"), "{msg}");
        assert!(c.recv().is_none());
    }
}

#[test]
fn a_version_1_request_gets_a_version_1_error() {
    let agent = Agent::start();
    // A version-1 EXEC: length 64 MiB (over version 2's limit), kind 0x01.
    let mut c = agent.raw_client();
    let mut head = (64u32 << 20).to_le_bytes().to_vec();
    head.push(0x01);
    head.extend_from_slice(&[0; 100]);
    c.send_raw(&head).unwrap();
    let f = c.frame().unwrap();
    assert_eq!(f.kind, kind::V1_ERROR);
    let text = v1_error_text(&f.body).unwrap();
    assert!(text.contains("protocol 2"), "{text}");
    assert!(c.recv().is_none());
    // The same, its header split: the length alone (over version 2's
    // limit) must not decide before the kind arrives.
    let mut c = agent.raw_client();
    c.send_raw(&(64u32 << 20).to_le_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    c.send_raw(&[0x02, 0, 0]).unwrap();
    assert_eq!(c.frame().unwrap().kind, kind::V1_ERROR);
    assert!(c.recv().is_none());
    // READ_FILE, small.
    let mut c = agent.raw_client();
    let mut body = 4u32.to_le_bytes().to_vec();
    body.extend_from_slice(b"/etc");
    c.send_raw(&encode(0x03, &body)).unwrap();
    assert_eq!(c.frame().unwrap().kind, kind::V1_ERROR);
    assert!(c.recv().is_none());
}

#[test]
fn garbage_gets_bad_request_and_a_close() {
    let agent = Agent::start();
    // A zero length.
    let mut c = agent.raw_client();
    c.send_raw(&[0, 0, 0, 0, 0x10]).unwrap();
    let msg = expect_error(c.recv(), ErrorKind::BadRequest);
    assert!(msg.contains("frame length 0"), "{msg}");
    assert!(c.recv().is_none());
    // Oversized.
    let mut c = agent.raw_client();
    c.send_raw(&((MAX_FRAME as u32 + 1).to_le_bytes())).unwrap();
    c.send_raw(&[kind::HELLO]).unwrap();
    let msg = expect_error(c.recv(), ErrorKind::BadRequest);
    assert!(msg.contains("out of range"), "{msg}");
    assert!(c.recv().is_none());
    // Larger than any frame of any version: refused before its kind.
    let mut c = agent.raw_client();
    c.send_raw(&u32::MAX.to_le_bytes()).unwrap();
    expect_error(c.recv(), ErrorKind::BadRequest);
    // Unknown kind.
    let mut c = agent.raw_client();
    c.send_raw(&encode(0x7e, b"zz")).unwrap();
    let msg = expect_error(c.recv(), ErrorKind::BadRequest);
    assert!(msg.contains("unknown frame kind 0x7e"), "{msg}");
    // A HELLO whose body does not decode.
    let mut c = agent.raw_client();
    c.send_raw(&encode(kind::HELLO, &[0xff; 20])).unwrap();
    expect_error(c.recv(), ErrorKind::BadRequest);
    // Trailing bytes after a valid body.
    let mut c = agent.raw_client();
    let (k, mut body) = hello(2, 2).to_frame();
    body.push(0);
    c.send_raw(&encode(k, &body)).unwrap();
    expect_error(c.recv(), ErrorKind::BadRequest);
    // A request before HELLO.
    let mut c = agent.raw_client();
    c.send(&Message::List);
    let msg = expect_error(c.recv(), ErrorKind::BadRequest);
    assert!(msg.contains("expected HELLO"), "{msg}");
    // A non-request after HELLO.
    let mut c = agent.connect();
    c.send(&Message::Ok);
    expect_error(c.recv(), ErrorKind::BadRequest);
    assert!(c.recv().is_none());
    // A second request on the same connection.
    let mut c = agent.connect();
    c.send(&Message::Stat(PathReq { path: b("/") }));
    c.send(&Message::Stat(PathReq { path: b("/") }));
    assert!(matches!(c.recv(), Some(Message::StatResult(_))));
    // The agent closed after the first answer; the second is dropped.
    assert!(c.recv().is_none());
    // Stdin for a process started without stdin.
    let mut c = agent.connect();
    c.send(&Message::Spawn(spawn_msg(&["sleep", "5"])));
    c.started();
    c.send(&Message::Stdin(b"x".to_vec()));
    expect_error(c.recv(), ErrorKind::BadRequest);
    assert!(c.recv().is_none());
    // RESIZE without a terminal.
    let mut c = agent.connect();
    c.send(&Message::Spawn(spawn_msg(&["sleep", "5"])));
    c.started();
    c.send(&Message::Resize(hearth_agent_protocol::WinSize {
        rows: 1,
        cols: 1,
    }));
    expect_error(c.recv(), ErrorKind::BadRequest);
    // The agent is still fine.
    assert!(matches!(agent.ask_one(&Message::List), Message::Processes(_)));
}

#[test]
fn a_truncated_frame_then_close_is_harmless() {
    let agent = Agent::start();
    let mut c = agent.connect();
    // Half of an UPLOAD header, then gone.
    c.send_raw(&[100, 0, 0, 0, kind::UPLOAD, 1, 2]).unwrap();
    drop(c);
    // Many half-open connections that say nothing, then one that works.
    let idle: Vec<_> = (0..50).map(|_| agent.raw_client()).collect();
    assert!(matches!(agent.ask_one(&Message::List), Message::Processes(_)));
    drop(idle);
}

#[test]
fn silence_is_closed_after_the_hello_timeout() {
    let agent = Agent::start_with(&["--hello-timeout-ms", "300"]);
    let start = Instant::now();
    let mut c = agent.raw_client();
    let msg = expect_error(c.recv(), ErrorKind::BadRequest);
    assert!(msg.contains("no HELLO within 300 ms"), "{msg}");
    assert!(c.recv().is_none());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // The request has the same deadline once the handshake is done.
    let mut c = agent.connect();
    let msg = expect_error(c.recv(), ErrorKind::BadRequest);
    assert!(msg.contains("no request"), "{msg}");
    // A partial HELLO does not help.
    let mut c = agent.raw_client();
    let whole = hello(2, 2).encode();
    c.s.write_all(&whole[..whole.len() - 1]).unwrap();
    expect_error(c.recv(), ErrorKind::BadRequest);
}

#[test]
fn a_flood_of_small_bad_frames_does_not_grow_the_agent() {
    let agent = Agent::start();
    let before = agent.vm_rss_kib();
    for _ in 0..200 {
        let mut c = agent.raw_client();
        let _ = c.send_raw(&((MAX_FRAME as u32).to_le_bytes()));
        // A frame announced at the maximum, never completed.
        let _ = c.send_raw(&[kind::HELLO; 1000]);
    }
    assert!(matches!(agent.ask_one(&Message::List), Message::Processes(_)));
    let after = agent.vm_rss_kib();
    assert!(after < before + 64 * 1024, "{before} -> {after} KiB");
    // Spawn after all that still works.
    let out = run(
        &agent,
        Spawn {
            ..spawn_msg(&["true"])
        },
    );
    assert_eq!(out.code(), Some(0));
}
