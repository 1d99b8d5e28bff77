//! A private network namespace with a TAP interface, for network tests.
//!
//! Each test makes its own namespace (`ip netns add`), creates the TAP
//! and its host address inside it, and moves its own thread into it: the
//! VMM then opens the TAP there and the test's sockets live there too.
//! Nothing outside the namespace is touched; dropping it deletes it.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The namespace; deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    /// Its name (under /run/netns).
    pub name: String,
    /// The TAP interface inside it.
    pub tap: String,
    /// The host's address on the TAP (a /24).
    pub host_ip: Ipv4Addr,
    /// An address in the /24 for the guest.
    pub guest_ip: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip (iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// A new namespace holding TAP `tap0` at 10.0.0.1/24, up, for a guest
    /// at 10.0.0.2. The namespace has no route out.
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "hearth-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let ns = Self {
            name,
            tap: "tap0".into(),
            host_ip: Ipv4Addr::new(10, 0, 0, 1),
            guest_ip: Ipv4Addr::new(10, 0, 0, 2),
        };
        ip(&["netns", "add", &ns.name]);
        ns.exec(&["link", "set", "lo", "up"]);
        ns.exec(&["tuntap", "add", "dev", &ns.tap, "mode", "tap", "vnet_hdr"]);
        ns.exec(&["addr", "add", &format!("{}/24", ns.host_ip), "dev", &ns.tap]);
        // Room for bursts from the host while the guest catches up.
        ns.exec(&["link", "set", &ns.tap, "txqueuelen", "5000", "up"]);
        ns
    }

    /// Runs `ip <args>` inside the namespace.
    pub fn exec(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Moves the calling thread into the namespace (for good: test
    /// threads end with their test). The VMM started from this thread
    /// opens the TAP here, and sockets made here live here.
    pub fn enter(&self) {
        let f = File::open(format!("/run/netns/{}", self.name)).unwrap();
        // SAFETY: setns on a namespace descriptor we hold open; it changes
        // only this thread's network namespace.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
