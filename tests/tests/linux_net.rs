//! Linux tier, virtio-net: the kernel configures eth0 itself (`ip=`),
//! hearth-init exchanges a UDP datagram with a host socket, and the host
//! pings the guest, answered by Linux's own stack through our device. All
//! of it inside a private network namespace.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::net::UdpSocket;

use hearth::{NetConfig, VsockConfig};
use hearth_tests::linux::{guest, linux_vm, LINUX_TIMEOUT};
use hearth_tests::netns::NetNs;

/// Answers every datagram with `pong:` and the datagram, until the
/// socket is dropped... or the test process ends.
fn pong_server(socket: UdpSocket) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let mut reply = b"pong:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from);
        }
    });
}

/// `rtt min/avg/max/mdev = a/b/c/d ms` from ping's summary.
fn rtt_ms(ping_output: &str) -> Vec<f64> {
    ping_output
        .lines()
        .find_map(|l| l.split_once(" = ").filter(|(k, _)| k.starts_with("rtt")))
        .map(|(_, v)| {
            v.trim_end_matches(" ms")
                .split('/')
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn linux_configures_eth0_answers_ping_and_exchanges_udp() {
    let Some(g) = guest("linux_configures_eth0_answers_ping_and_exchanges_udp") else {
        return;
    };
    let ns = NetNs::new();
    ns.enter();
    let server = UdpSocket::bind((ns.host_ip, 9000)).unwrap();
    pong_server(server);

    let (guest_ip, host_ip) = (ns.guest_ip, ns.host_ip);
    let vsock = std::env::temp_dir().join(format!("hearth-linux-net-{}.sock", std::process::id()));
    // Agent mode keeps the guest up after its checks, for the pings.
    let t = linux_vm(
        &g,
        &format!(
            "ip={guest_ip}::{host_ip}:255.255.255.0::eth0:off hearth.checks=udp \
             hearth.udp.peer={host_ip}:9000 hearth.agent=1"
        ),
    )
    .initrd(g.initramfs.clone())
    .net(NetConfig::tap(&ns.tap).mac("52:54:00:12:34:02"))
    .vsock(VsockConfig::new(3, &vsock))
    .start();
    t.expect("CHECK udp PASS", LINUX_TIMEOUT);
    t.expect("AGENT-READY", LINUX_TIMEOUT);
    eprintln!("{}", t.lines_with("CHECK udp").join(""));

    let out = ns
        .command("ping")
        .args(["-c", "10", "-i", "0.2", "-W", "10", &guest_ip.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\nconsole:\n{}", t.console.text());
    assert!(text.contains("10 received"), "{text}");
    let rtt = rtt_ms(&text);
    assert_eq!(rtt.len(), 4, "{text}");
    eprintln!(
        "ping to the Linux guest: rtt min {:.3} / avg {:.3} / max {:.3} ms",
        rtt[0], rtt[1], rtt[2]
    );
    let c = t.vm.net_counters()[0];
    assert!(c.rx_frames >= 11 && c.tx_frames >= 11, "{c:?}");
    t.vm.stop();
    let _ = std::fs::remove_file(&vsock);
}
