//! vsock through the test guest's echo server: both directions, many
//! connections, a large transfer, refusals, bad handshakes, and after a
//! snapshot restore.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hearth::{ExitReason, RestoreOptions, SerialBuffer, SerialOutput, Vm, VsockConfig, VsockConnectError};
use hearth_tests::{TestVm, GUEST_TIMEOUT};
use sha2::{Digest, Sha256};

fn uds(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-vsock-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn echo_vm(name: &str, extra: &str) -> (TestVm, PathBuf) {
    let path = uds(name);
    let t = TestVm::scenario("vsock")
        .arg(extra)
        .vsock(VsockConfig::new(3, &path))
        .start();
    t.expect("VSOCK-READY cid=3 listen=5000", GUEST_TIMEOUT);
    (t, path)
}

fn echo_once(s: &mut UnixStream, data: &[u8]) {
    s.write_all(data).unwrap();
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn echo_both_ways() {
    let path = uds("both.sock");
    // The guest connects out at boot: listen before it starts.
    let listener = UnixListener::bind(format!("{}_6000", path.display())).unwrap();
    let t = TestVm::scenario("vsock")
        .arg("tg.vsock.connect=6000")
        .vsock(VsockConfig::new(3, &path))
        .start();
    t.expect("VSOCK-CONNECTED port=6000", GUEST_TIMEOUT);
    let (mut from_guest, _) = listener.accept().unwrap();
    from_guest.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
    let hello = b"HELLO-FROM-GUEST cid=3\n";
    let mut got = vec![0u8; hello.len()];
    from_guest.read_exact(&mut got).unwrap();
    assert_eq!(got, hello);
    echo_once(&mut from_guest, b"host to guest, back again");
    let mut to_guest = t.vm.vsock_connect(5000).unwrap();
    to_guest.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
    echo_once(&mut to_guest, b"ping");
    echo_once(&mut to_guest, &[0x5a; 10_000]);
}

#[test]
fn sixty_four_concurrent_connections() {
    let (t, _) = echo_vm("many.sock", "");
    let mut conns: Vec<UnixStream> = (0..64).map(|_| t.vm.vsock_connect(5000).unwrap()).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
        c.write_all(format!("conn {i:02} ").repeat(50).as_bytes())
            .unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let expect = format!("conn {i:02} ").repeat(50);
        let mut back = vec![0u8; expect.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, expect.as_bytes(), "connection {i}");
    }
}

#[test]
fn sixteen_mib_round_trip_matches_sha256() {
    let (t, _) = echo_vm("big.sock", "");
    let mut s = t.vm.vsock_connect(5000).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let sent = Sha256::digest(&data);
    let mut writer = s.try_clone().unwrap();
    let t0 = Instant::now();
    let w = std::thread::spawn(move || writer.write_all(&data).unwrap());
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0usize;
    while total < 16 << 20 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {total} bytes");
        hasher.update(&buf[..n]);
        total += n;
    }
    w.join().unwrap();
    eprintln!("16 MiB echoed in {:.2} s", t0.elapsed().as_secs_f64());
    assert_eq!(hasher.finalize(), sent);
}

#[test]
fn port_without_listener_is_refused() {
    let (t, path) = echo_vm("refuse.sock", "");
    match t.vm.vsock_connect(5001) {
        Err(VsockConnectError::Refused(5001)) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The same through a raw client: it sees the close.
    let mut c = UnixStream::connect(&path).unwrap();
    c.write_all(b"CONNECT 5001\n").unwrap();
    c.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
    assert_closed(&mut c);
}

/// The peer closed `c`: end of file or a reset, not a read timeout.
fn assert_closed(c: &mut UnixStream) {
    match c.read(&mut [0u8; 16]) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection closed, got {other:?}"),
    }
}

#[test]
fn bad_handshakes_close_only_that_client() {
    let (t, path) = echo_vm("bad.sock", "");
    let mut good = t.vm.vsock_connect(5000).unwrap();
    good.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
    let mut bad: Vec<UnixStream> = Vec::new();
    for line in [&b"CONNECT abc\n"[..], &[b'x'; 70][..], b"CONNECT 4294967296\n"] {
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(line).unwrap();
        bad.push(c);
    }
    let silent = UnixStream::connect(&path).unwrap();
    for mut c in bad.into_iter().chain([silent]) {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let t0 = Instant::now();
        assert_closed(&mut c);
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
    echo_once(&mut good, b"still fine");
    assert!(t.vm.vsock_connect(5000).is_ok());
}

#[test]
fn echo_works_on_a_new_connection_after_restore() {
    let (t, path) = echo_vm("snap.sock", "");
    let mut before = t.vm.vsock_connect(5000).unwrap();
    before.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
    echo_once(&mut before, b"before");
    t.vm.pause().unwrap();
    let dir = std::env::temp_dir().join(format!("hearth-vsock-snap-{}", std::process::id()));
    t.vm.snapshot(&dir).unwrap();
    drop(t);
    // The old connection is gone with the old VM.
    assert_closed(&mut before);

    let console = SerialBuffer::new();
    let new_path = path.with_extension("restored");
    let vm = Vm::restore(
        &dir,
        &RestoreOptions::new()
            .serial(SerialOutput::Buffer(console.clone()))
            .vsock_uds_path(&new_path),
    )
    .unwrap();
    assert!(
        console.wait_for("VSOCK-TRANSPORT-RESET", GUEST_TIMEOUT),
        "{}",
        console.text()
    );
    let mut after = vm.vsock_connect(5000).unwrap();
    after.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
    echo_once(&mut after, b"after restore");
    assert_eq!(vm.stop(), ExitReason::Stopped);
}
