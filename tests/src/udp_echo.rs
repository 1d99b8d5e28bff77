//! The test guest's `net` scenario as a UDP echo server behind a TAP in a
//! [`NetNs`]: booting it, and sending it many datagrams.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hearth::NetConfig;

use crate::netns::NetNs;
use crate::{TestVm, GUEST_TIMEOUT};

/// The guest's MAC address.
pub const MAC: &str = "52:54:00:12:34:56";
/// The host port the guest sends its hello to.
pub const HOST_PORT: u16 = 7777;
/// The guest's echo port.
pub const GUEST_PORT: u16 = 7778;

/// Boots the `net` scenario in `ns` (the calling thread enters it) on
/// `ns`'s TAP, with `net` choosing the rest (e.g. rate limits).
pub fn boot(ns: &NetNs, net: impl FnOnce(NetConfig) -> NetConfig) -> TestVm {
    ns.enter();
    TestVm::scenario("net")
        .arg(&format!(
            "tg.net.ip={} tg.net.host={} tg.net.port={HOST_PORT} tg.net.listen={GUEST_PORT}",
            ns.guest_ip, ns.host_ip
        ))
        .net(net(NetConfig::tap(&ns.tap).mac(MAC)))
        .start()
}

/// Binds the host's socket in `ns`, boots the scenario as [`boot`] does,
/// and waits for the guest's hello: the echo server is then up.
pub fn boot_echo(ns: &NetNs, net: impl FnOnce(NetConfig) -> NetConfig) -> (TestVm, UdpSocket) {
    ns.enter();
    let host = UdpSocket::bind((ns.host_ip, HOST_PORT)).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = boot(ns, net);
    t.expect("NET-UDP-SENT\n", GUEST_TIMEOUT);
    let mut hello = [0u8; 64];
    host.recv_from(&mut hello).unwrap();
    (t, host)
}

/// The guest's echo address in `ns`.
pub fn echo_addr(ns: &NetNs) -> SocketAddr {
    SocketAddr::from((ns.guest_ip, GUEST_PORT))
}

/// Sends `count` distinct datagrams of `len` bytes with at most `window`
/// unanswered, and checks every echo. Returns the time taken.
pub fn echo_many(host: &UdpSocket, guest: SocketAddr, count: u32, len: usize, window: u32) -> Duration {
    let payload = |i: u32| -> Vec<u8> {
        let mut p = format!("{i:08}:").into_bytes();
        p.resize(len, b'a' + (i % 26) as u8);
        p
    };
    let (mut sent, mut got) = (0u32, HashSet::new());
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    while got.len() < count as usize {
        while sent < count && sent - got.len() as u32 <= window {
            host.send_to(&payload(sent), guest).unwrap();
            sent += 1;
        }
        let (n, from) = host
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{} of {count} echoes back, then: {e}", got.len()));
        assert_eq!(from, guest);
        let i: u32 = std::str::from_utf8(&buf[..8]).unwrap().parse().unwrap();
        assert_eq!(&buf[..n], &payload(i)[..], "echo {i} differs");
        assert!(got.insert(i), "echo {i} came twice");
    }
    start.elapsed()
}
