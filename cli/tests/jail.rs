//! `hearth run --jail`: the VMM runs as an unprivileged user, pid 1 of its
//! own pid namespace, in its own network namespace, and sees only the
//! files its VM needs. Every failure is one line and status 1.
//!
//! The launcher's test-only hook `HEARTH_JAIL_PROBE=PATH` makes the jailed
//! process print what it sees (pid, credentials, interfaces, the root
//! directory, and what opening PATH gives) before it starts the VM.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

mod common;

use common::{assert_one_line_error, hearth, needs_root, stderr, testguest};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

const NOBODY: u32 = 65534;
const JAIL: &str = "uid=65534,gid=65534";
const TIMEOUT: Duration = Duration::from_secs(60);

/// A fresh directory of this test's own, traversable by everyone.
fn tmp(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-jail-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o755)).unwrap();
    dir
}

fn chown_nobody(path: &Path) {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

/// The jail directory is gone and nothing is mounted under it.
fn assert_cleaned_up(jail: &Path) {
    assert!(!jail.exists(), "{} left behind", jail.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(jail.to_str().unwrap()), "{mounts}");
}

/// The probe line's `key=value` fields, and what opening the path gave.
fn probe(err: &str) -> (HashMap<String, String>, String) {
    let line = err
        .lines()
        .find_map(|l| l.strip_prefix("hearth: jail-probe: "))
        .unwrap_or_else(|| panic!("no probe line in: {err}"));
    let (fields, open) = line.split_once(" open ").unwrap();
    let fields = fields
        .split(' ')
        .map(|kv| kv.split_once('=').unwrap())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (fields, open.to_string())
}

/// Forwards a child's stdout lines to a channel.
fn lines(child: &mut Child) -> Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(rx: &Receiver<String>, want: &str) {
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("no {want:?} line: {seen:?}"));
        if line.contains(want) {
            return;
        }
        seen.push(line);
    }
}

/// Kills the launcher if a test fails while it runs (its jailed child
/// gets SIGKILL when it dies).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn api(sock: &Path, cmd: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap();
    writeln!(s, "{cmd}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn hello_in_a_jail_sees_nothing_of_the_host() {
    needs_root!("hello_in_a_jail_sees_nothing_of_the_host");
    let dir = tmp("hello");
    // A host file the jail user could read were it not jailed.
    let secret = dir.join("secret.txt");
    std::fs::write(&secret, "host data\n").unwrap();
    std::fs::set_permissions(&secret, PermissionsExt::from_mode(0o644)).unwrap();
    let outside = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(&secret)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&outside.stdout),
        "host data\n",
        "{outside:?}"
    );

    let jail = dir.join("jail");
    let o = hearth()
        .args(["run", "--kernel", &testguest(), "--cmdline", "tg.scenario=hello"])
        .args(["--jail", &format!("{JAIL},dir={}", jail.display())])
        .env("HEARTH_JAIL_PROBE", &secret)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "GUEST-READY\n");

    let (f, open) = probe(&err);
    // pid 1 of a new pid namespace, the unprivileged ids, no groups, no
    // capabilities, no_new_privs, a network namespace of its own.
    assert_eq!(f["pid"], "1", "{err}");
    assert_eq!(f["uids"], "65534,65534,65534", "{err}");
    assert_eq!(f["gids"], "65534,65534,65534", "{err}");
    assert_eq!(f["groups"], "0", "{err}");
    assert_eq!(f["caps"], "0x0,0x0", "{err}");
    assert_eq!(f["no_new_privs"], "1", "{err}");
    assert_eq!(f["ifaces"], "lo", "{err}");
    // The root holds only what the VM needs; the host file is not there.
    assert_eq!(f["root"], "dev,kernel,proc", "{err}");
    assert_eq!(
        open,
        format!("{}: No such file or directory (os error 2)", secret.display()),
        "{err}"
    );
    assert_cleaned_up(&jail);
}

#[test]
fn disks_and_serial_file_in_a_jail() {
    needs_root!("disks_and_serial_file_in_a_jail");
    let dir = tmp("blk");
    let rw = dir.join("rw.img");
    std::fs::write(&rw, vec![0u8; 1 << 20]).unwrap();
    chown_nobody(&rw);
    // Root's, world-readable: fine read-only.
    let ro = dir.join("ro.img");
    std::fs::write(&ro, vec![0u8; 1 << 20]).unwrap();
    std::fs::set_permissions(&ro, PermissionsExt::from_mode(0o644)).unwrap();
    let serial = dir.join("serial.txt");
    let jail = dir.join("jail");
    let o = hearth()
        .args(["run", "--kernel", &testguest(), "--cmdline", "tg.scenario=blk"])
        .args(["--disk", rw.to_str().unwrap()])
        .args(["--disk", &format!("{},ro", ro.display())])
        .args(["--serial", &format!("file:{}", serial.display())])
        .args(["--jail", &format!("{JAIL},dir={}", jail.display())])
        .env("HEARTH_JAIL_PROBE", "/")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let (f, _) = probe(&err);
    assert_eq!(f["root"], "dev,disks,kernel,proc,serial", "{err}");
    let text = std::fs::read_to_string(&serial).unwrap();
    for want in ["BLK-WRITE-OK", "BLK-RO-REFUSED", "BLK-OK"] {
        assert!(text.contains(want), "{want} missing: {text}");
    }
    // Created for the jail user; the guest's write reached the host file.
    assert_eq!(std::fs::metadata(&serial).unwrap().uid(), NOBODY);
    assert!(std::fs::read(&rw).unwrap().iter().any(|&b| b != 0));
    assert!(std::fs::read(&ro).unwrap().iter().all(|&b| b == 0));
    assert_cleaned_up(&jail);
}

#[test]
fn vsock_and_api_socket_in_a_jail() {
    needs_root!("vsock_and_api_socket_in_a_jail");
    let dir = tmp("vsock");
    let socks = dir.join("vsock");
    std::fs::create_dir(&socks).unwrap();
    chown_nobody(&socks);
    let uds = socks.join("v.sock");
    // The guest connects out to host port 6000 at boot.
    let out_path = format!("{}_6000", uds.display());
    let listener = UnixListener::bind(&out_path).unwrap();
    std::fs::set_permissions(&out_path, PermissionsExt::from_mode(0o777)).unwrap();
    let api_sock = dir.join("api.sock");
    let jail = dir.join("jail");
    let mut vm = Running(
        hearth()
            .args(["run", "--kernel", &testguest()])
            .args(["--cmdline", "tg.scenario=vsock tg.vsock.connect=6000"])
            .args(["--vsock", &format!("cid=3,uds={}", uds.display())])
            .args(["--api-sock", api_sock.to_str().unwrap()])
            .args(["--jail", &format!("{JAIL},dir={}", jail.display())])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let rx = lines(&mut vm.0);
    wait_line(&rx, "VSOCK-CONNECTED port=6000");
    let (mut from_guest, _) = listener.accept().unwrap();
    from_guest.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut hello = vec![0u8; b"HELLO-FROM-GUEST cid=3\n".len()];
    from_guest.read_exact(&mut hello).unwrap();
    assert_eq!(hello, b"HELLO-FROM-GUEST cid=3\n");

    // Host to guest through the socket the jailed VMM created.
    let mut to_guest = UnixStream::connect(&uds).unwrap();
    to_guest.set_read_timeout(Some(TIMEOUT)).unwrap();
    to_guest.write_all(b"CONNECT 5000\n").unwrap();
    let mut reply = [0u8; 3];
    to_guest.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"OK ");
    let mut byte = [0u8; 1];
    while byte != *b"\n" {
        to_guest.read_exact(&mut byte).unwrap();
    }
    to_guest.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    to_guest.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");

    // The API socket, bound before entering the jail.
    assert_eq!(api(&api_sock, r#"{"cmd":"status"}"#)["state"], "running");
    assert_eq!(api(&api_sock, r#"{"cmd":"stop"}"#)["ok"], true);
    assert_eq!(vm.0.wait().unwrap().code(), Some(0));
    assert_cleaned_up(&jail);
}

/// A network namespace with TAP `tap0` at 10.0.0.1/24, deleted on drop.
struct NetNs(String);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip (iproute2)");
    assert!(out.status.success(), "ip {args:?}: {}", stderr(&out));
}

impl NetNs {
    fn new() -> Self {
        let ns = Self(format!("hearth-jail-{}", std::process::id()));
        ip(&["netns", "add", &ns.0]);
        ip(&[
            "-n", &ns.0, "tuntap", "add", "dev", "tap0", "mode", "tap", "vnet_hdr",
        ]);
        ip(&["-n", &ns.0, "addr", "add", "10.0.0.1/24", "dev", "tap0"]);
        ip(&["-n", &ns.0, "link", "set", "tap0", "up"]);
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn tap_opened_before_the_jail_carries_traffic_and_sigterm_ends_it() {
    needs_root!("tap_opened_before_the_jail_carries_traffic_and_sigterm_ends_it");
    let ns = NetNs::new();
    let jail = tmp("net").join("jail");
    // The launcher starts in the namespace that holds tap0; the jailed VMM
    // is in a new, empty one and still uses the TAP.
    let mut vm = Running(
        Command::new("ip")
            .args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_hearth")])
            .args(["run", "--kernel", &testguest(), "--net", "tap=tap0"])
            .args([
                "--cmdline",
                "tg.scenario=net tg.net.ip=10.0.0.2 tg.net.host=10.0.0.1",
            ])
            .args(["--jail", &format!("{JAIL},dir={}", jail.display())])
            .env_remove("RUST_LOG")
            .env("HEARTH_JAIL_PROBE", "/sys/class/net")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let rx = lines(&mut vm.0);
    // ARP answered by the host's kernel, then an ICMP echo both ways.
    wait_line(&rx, "NET-ARP-OK");
    wait_line(&rx, "NET-PING-OK");

    // SIGTERM to the launcher: the VMM is killed, the jail removed, and
    // the launcher dies of the same signal.
    // SAFETY: kill takes integers; the pid is our unreaped child's.
    assert_eq!(unsafe { libc::kill(vm.0.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let status = vm.0.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    let mut err = String::new();
    vm.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let (f, open) = probe(&err);
    assert_eq!(f["ifaces"], "lo", "{err}");
    assert!(open.ends_with("No such file or directory (os error 2)"), "{err}");
    assert_cleaned_up(&jail);
}

#[test]
fn guest_crash_in_a_jail_exits_two() {
    needs_root!("guest_crash_in_a_jail_exits_two");
    let o = hearth()
        .args(["run", "--kernel", &testguest(), "--cmdline", "tg.scenario=fault"])
        .args(["--serial", "none", "--jail", JAIL])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("guest crashed: triple fault"), "{err}");
}

#[test]
fn bad_jail_specs_get_one_line() {
    let run = |spec: &str| {
        hearth()
            .args(["run", "--kernel", &testguest(), "--jail", spec])
            .output()
            .unwrap()
    };
    assert_one_line_error(
        &run("uid=65534"),
        "jail gid missing; expected uid=N,gid=N[,dir=PATH]",
    );
    assert_one_line_error(&run("gid=65534"), "jail uid missing");
    assert_one_line_error(&run("uid=nobody,gid=1"), "bad jail uid \"nobody\"");
    assert_one_line_error(&run("uid=0,gid=0"), "jail uid=0 is root");
    assert_one_line_error(&run("uid=1,gid=1,dir=jail"), "jail dir must be an absolute path");
    assert_one_line_error(&run("uid=1,gid=1,chroot=/x"), "unknown jail option \"chroot=/x\"");
}

#[test]
fn jail_needs_root() {
    needs_root!("jail_needs_root");
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_hearth"))
        .args(["run", "--kernel", &testguest(), "--jail", JAIL])
        .output()
        .unwrap();
    assert_one_line_error(&o, "--jail needs root");
}

#[test]
fn failures_in_the_jail_get_one_line_and_leave_nothing() {
    needs_root!("failures_in_the_jail_get_one_line_and_leave_nothing");
    let dir = tmp("fail");
    let jail = dir.join("jail");
    let spec = format!("{JAIL},dir={}", jail.display());
    let run = |extra: &[&str]| {
        hearth()
            .args(["run", "--cmdline", "tg.scenario=hello", "--jail", &spec])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert_one_line_error(
        &run(&["--kernel", "/nonexistent/vmlinux"]),
        "cannot bind kernel /nonexistent/vmlinux into the jail: No such file",
    );
    assert_cleaned_up(&jail);

    // Root's and private: the jail user may not open it. The message
    // names the host path and the jail's ids.
    let private = dir.join("private.img");
    std::fs::write(&private, vec![0u8; 4096]).unwrap();
    std::fs::set_permissions(&private, PermissionsExt::from_mode(0o600)).unwrap();
    assert_one_line_error(
        &run(&["--kernel", &testguest(), "--disk", private.to_str().unwrap()]),
        &format!(
            "cannot open disk {}: Permission denied (os error 13) (as the jail's uid 65534 gid 65534)",
            private.display()
        ),
    );
    assert_cleaned_up(&jail);

    // A vsock socket directory the jail user cannot write to.
    let socks = dir.join("root-only");
    std::fs::create_dir(&socks).unwrap();
    let vsock = format!("cid=3,uds={}/v.sock", socks.display());
    let o = run(&["--kernel", &testguest(), "--vsock", &vsock]);
    assert_one_line_error(&o, &format!("{}/v.sock", socks.display()));
    assert_one_line_error(&o, "Permission denied");
    assert_cleaned_up(&jail);

    // A jail directory that is not empty is refused, and left alone.
    std::fs::create_dir(&jail).unwrap();
    std::fs::write(jail.join("keep"), "").unwrap();
    assert_one_line_error(&run(&["--kernel", &testguest()]), "is not empty");
    assert!(jail.join("keep").exists());
}
