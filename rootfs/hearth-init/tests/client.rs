//! The host's agent client (`hearth::AgentClient`) against the real agent
//! in native mode: everything through the client's public API, never raw
//! frames (except for the fake peers that are not agents at all).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use common::{status_field, Agent, Scratch, PATIENCE};
use hearth::{AgentClient, AgentError, Command, FileKind, GuestErrorKind, ProcessState};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------- harness

/// Tests that measure this process's memory run alone: every other test
/// holds the lock shared.
static MEMORY: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    MEMORY.read().unwrap_or_else(|p| p.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    MEMORY.write().unwrap_or_else(|p| p.into_inner())
}

fn client(agent: &Agent) -> AgentClient {
    AgentClient::unix(&agent.sock).timeout(Some(PATIENCE))
}

fn argv(cmd: &[&str]) -> Command {
    Command::new(cmd.iter().copied())
}

/// Resets the peak resident set of `pid` ("self" or a number) to its
/// current one (clear_refs 5, Linux 4.0+).
fn reset_peak(pid: &str) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

fn self_kib(field: &str) -> u64 {
    status_field(std::process::id(), field)
}

/// Peak resident growth of this process and of the agent while `f` runs,
/// KiB.
fn peak_growth<T>(agent: &Agent, f: impl FnOnce() -> T) -> (u64, u64, T) {
    let agent_pid = agent.pid().to_string();
    reset_peak("self");
    reset_peak(&agent_pid);
    let (me, them) = (self_kib("VmRSS:"), agent.vm_rss_kib());
    let out = f();
    let me = self_kib("VmHWM:").saturating_sub(me);
    let them = agent.vm_hwm_kib().saturating_sub(them);
    (me, them, out)
}

/// `len` deterministic bytes generated as they are read, hashed on the
/// way.
struct Generator {
    left: u64,
    x: u64,
    hash: Sha256,
}

impl Generator {
    fn new(len: u64, seed: u64) -> Self {
        Self {
            left: len,
            x: seed | 1,
            hash: Sha256::new(),
        }
    }
    fn digest(self) -> [u8; 32] {
        self.hash.finalize().into()
    }
}

impl Read for Generator {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        for word in buf[..n].chunks_mut(8) {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            word.copy_from_slice(&self.x.to_le_bytes()[..word.len()]);
        }
        self.hash.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

/// A `Write` that only hashes and counts.
#[derive(Default)]
struct Hasher {
    hash: Sha256,
    len: u64,
}

impl Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hash.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Hasher {
    fn digest(self) -> (u64, [u8; 32]) {
        (self.len, self.hash.finalize().into())
    }
}

/// Reads `out` on a thread of its own; chunks come out of the channel.
fn chunks(mut out: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Collects chunks into `seen` until it contains `text`.
fn read_until(rx: &Receiver<Vec<u8>>, seen: &mut Vec<u8>, text: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !String::from_utf8_lossy(seen).contains(text) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(c) => seen.extend_from_slice(&c),
            Err(_) => panic!("no {text:?} in the output: {:?}", String::from_utf8_lossy(seen)),
        }
    }
}

fn guest_error(e: AgentError) -> (GuestErrorKind, i32, String) {
    match e {
        AgentError::Guest { kind, errno, message } => (kind, errno, message),
        other => panic!("expected the guest's error, got {other:?}"),
    }
}

/// The guest's error of `kind` whose message names `what` and says
/// `errno_text`.
fn assert_guest<T: std::fmt::Debug>(
    r: Result<T, AgentError>,
    kind: GuestErrorKind,
    what: &str,
    errno_text: &str,
) {
    let (k, errno, message) = guest_error(r.expect_err("expected an error"));
    assert_eq!(k, kind, "{message}");
    assert!(errno > 0, "{message}");
    assert!(
        message.contains(what) && message.contains(errno_text),
        "{message:?} should name {what:?} and say {errno_text:?}"
    );
}

// -------------------------------------------------------------- processes

#[test]
fn exec_collects_output_stderr_and_status() {
    let _g = shared();
    let agent = Agent::start();
    let c = client(&agent);
    let out = c
        .exec(&argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]))
        .unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.stdout_text(), "out\n");
    assert_eq!(
        (out.status.code, out.status.signal, out.status.timed_out),
        (Some(3), None, false)
    );
    assert!(!out.status.success());
    assert_eq!(out.status.shell_code(), 3);
    let killed = c.exec(&argv(&["sh", "-c", "kill -KILL $$"])).unwrap();
    assert_eq!((killed.status.code, killed.status.signal), (None, Some(9)));
    assert_eq!(killed.status.shell_code(), 137);
    // env, cwd, user.
    let out = c
        .exec(
            &argv(&["sh", "-c", "echo $K; pwd; id -u; id -g"])
                .env("K", "v w")
                .env("PATH", "/usr/bin:/bin")
                .cwd("/tmp")
                .user(65534, 65534),
        )
        .unwrap();
    assert_eq!(out.stdout_text(), "v w\n/tmp\n65534\n65534\n");
    // stdin is /dev/null for exec.
    let out = c.exec(&argv(&["cat"]).stdin(true)).unwrap();
    assert_eq!((out.stdout.len(), out.status.success()), (0, true));
}

#[test]
fn a_missing_program_is_a_typed_not_found() {
    let _g = shared();
    let agent = Agent::start();
    let c = client(&agent);
    let e = c.exec(&argv(&["no-such-program-hearth"])).unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    let (kind, errno, message) = guest_error(e);
    assert_eq!((kind, errno), (GuestErrorKind::NotFound, libc::ENOENT));
    assert!(message.contains("no-such-program-hearth"), "{message}");
    let e = c.spawn(&argv(&["/no/such/program"])).unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    assert!(e.to_string().contains("/no/such/program"), "{e}");
    let e = c.exec(&argv(&["true"]).cwd("/no/such/dir")).unwrap_err();
    assert!(e.is_not_found() && e.to_string().contains("/no/such/dir"), "{e}");
    let e = c.exec(&argv(&[])).unwrap_err();
    assert!(
        matches!(
            e,
            AgentError::Guest {
                kind: GuestErrorKind::InvalidInput,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!e.is_not_found());
}

#[test]
fn spawn_streams_output_as_it_is_produced() {
    let _g = shared();
    let agent = Agent::start();
    let c = client(&agent);
    // "second" waits for stdin, which comes only after "first": "first"
    // came while the process ran, however slow the machine.
    let mut p = c
        .spawn(&argv(&["sh", "-c", "echo first; read go; echo second"]).stdin(true))
        .unwrap();
    assert!(p.id() > 0 && p.pid() > 0);
    let rx = chunks(p.take_stdout().unwrap());
    let mut seen = Vec::new();
    read_until(&rx, &mut seen, "first\n");
    p.stdin().unwrap().write_all(b"go\n").unwrap();
    let status = p.wait().unwrap();
    assert!(status.success(), "{status}");
    read_until(&rx, &mut seen, "second\n");
    assert_eq!(seen, b"first\nsecond\n");
}

/// Sends `len` generated bytes through `cat`, writing from one thread and
/// reading from another; returns when both hashes matched.
fn cat_round_trip(c: &AgentClient, len: u64, seed: u64) {
    let mut p = c.spawn(&argv(&["cat"]).stdin(true)).unwrap();
    let mut stdin = p.take_stdin().unwrap();
    let mut stdout = p.take_stdout().unwrap();
    let writer = std::thread::spawn(move || {
        let mut g = Generator::new(len, seed);
        std::io::copy(&mut g, &mut stdin).unwrap();
        stdin.close().unwrap();
        g.digest()
    });
    let reader = std::thread::spawn(move || {
        let mut h = Hasher::default();
        std::io::copy(&mut stdout, &mut h).unwrap();
        h.digest()
    });
    let sent = writer.join().unwrap();
    let (got_len, got) = reader.join().unwrap();
    assert_eq!(got_len, len);
    assert_eq!(got, sent, "cat's output differs from its input");
    assert!(p.wait().unwrap().success());
}

#[test]
fn sixteen_mib_through_cat_in_bounded_memory() {
    let _g = exclusive();
    let agent = Agent::start();
    let c = client(&agent);
    // Warm up (threads, heap) before measuring.
    cat_round_trip(&c, 1 << 20, 1);
    let (me1, agent1, ()) = peak_growth(&agent, || cat_round_trip(&c, 1 << 20, 2));
    let start = Instant::now();
    let (me16, agent16, ()) = peak_growth(&agent, || cat_round_trip(&c, 16 << 20, 3));
    let took = start.elapsed();
    eprintln!(
        "stdin/stdout through cat: peak growth, client {me1} KiB (1 MiB) vs {me16} KiB (16 MiB); \
         agent {agent1} KiB vs {agent16} KiB; 16 MiB in {took:?} ({:.0} MB/s each way)",
        16.0 * 1.048_576 / took.as_secs_f64()
    );
    assert!(
        me16 < me1 + 8192,
        "the client's memory grew with the size: {me1} KiB vs {me16} KiB"
    );
    assert!(
        agent16 < agent1 + 8192,
        "the agent's memory grew with the size: {agent1} KiB vs {agent16} KiB"
    );
}

#[test]
fn sixty_four_concurrent_spawns_without_cross_talk() {
    let _g = shared();
    let agent = Agent::start();
    let c = client(&agent);
    let threads: Vec<_> = (0..64u64)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || {
                let data: Vec<u8> = format!("thread {i} talks to its own cat; ")
                    .into_bytes()
                    .into_iter()
                    .cycle()
                    .take(200_000 + i as usize * 1000)
                    .collect();
                let mut p = c.spawn(&argv(&["cat"]).stdin(true)).unwrap();
                let mut stdin = p.take_stdin().unwrap();
                let feed = data.clone();
                let writer = std::thread::spawn(move || {
                    stdin.write_all(&feed).unwrap();
                    stdin.close().unwrap();
                });
                let mut back = Vec::new();
                p.stdout().unwrap().read_to_end(&mut back).unwrap();
                writer.join().unwrap();
                assert!(p.wait().unwrap().success());
                assert!(back == data, "thread {i}: its output is not its input");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let left = c.list().unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_timeout_kills_a_process_that_ignores_sigterm() {
    let _g = shared();
    let agent = Agent::start();
    let c = client(&agent);
    let start = Instant::now();
    let out = c
        .exec(&argv(&["sh", "-c", "trap '' TERM; sleep 30"]).timeout(Duration::from_secs(1)))
        .unwrap();
    let took = start.elapsed();
    assert_eq!(
        (out.status.code, out.status.signal, out.status.timed_out),
        (None, Some(9), true)
    );
    assert_eq!(out.status.to_string(), "killed by signal 9 (timed out)");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // The same through spawn.
    let p = c
        .spawn(&argv(&["sh", "-c", "trap '' TERM; sleep 30"]).timeout(Duration::from_millis(300)))
        .unwrap();
    let status = p.wait().unwrap();
    assert!(status.timed_out && status.signal == Some(9), "{status}");
}

#[test]
fn kill_and_signal_through_the_handle() {
    let _g = shared();
    let agent = Agent::start();
    let c = client(&agent);
    let p = c.spawn(&argv(&["sleep", "30"])).unwrap();
    p.signal(libc::SIGTERM).unwrap();
    assert_eq!(p.wait().unwrap().signal, Some(libc::SIGTERM));
    // A handle dropped without detach kills the process.
    let p = c.spawn(&argv(&["sleep", "30"])).unwrap();
    let pid = p.pid();
    drop(p);
    common::eventually("the dropped process to die", || !alive(pid));
    common::eventually("the agent to forget it", || c.list().unwrap().is_empty());
}

/// Makes `go` (see [`common::wait_for_file`]) once the agent has seen
/// every spawning client go.
fn release(c: &AgentClient, go: &Path) {
    common::eventually("the clients to be gone", || {
        c.list().unwrap().iter().all(|p| !p.attached)
    });
    std::fs::write(go, "").unwrap();
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"),
        Err(_) => false,
    }
}

#[test]
fn detached_processes_list_attach_signal_wait() {
    let _g = shared();
    let agent = Agent::start();
    let c = client(&agent);
    let p = c.spawn(&argv(&["sleep", "30"]).detach(true)).unwrap();
    let (id, pid) = (p.id(), p.pid());
    drop(p);
    std::thread::sleep(Duration::from_millis(200));
    let list = c.list().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let info = &list[0];
    assert_eq!(
        (info.id, info.pid, info.detached, info.attached, info.tty),
        (id, pid, true, false, false)
    );
    assert_eq!(info.state, ProcessState::Running);
    assert_eq!(info.argv[0].as_slice(), b"sleep");
    assert!(alive(pid));

    // A waiter on the running process, before it ends.
    let waiter = {
        let c = c.clone();
        std::thread::spawn(move || c.wait(id))
    };
    std::thread::sleep(Duration::from_millis(200));
    let attached = c.attach(id).unwrap();
    assert_eq!((attached.id(), attached.pid()), (id, pid));
    assert!(c.list().unwrap()[0].attached);
    // One client at a time.
    let e = c.attach(id).unwrap_err();
    assert!(e.to_string().contains("attached"), "{e}");
    c.signal(id, libc::SIGTERM).unwrap();
    let status = attached.wait().unwrap();
    assert_eq!(
        (status.code, status.signal, status.timed_out),
        (None, Some(15), false)
    );
    assert_eq!(status.shell_code(), 143);
    assert_eq!(waiter.join().unwrap().unwrap().signal, Some(15));
    drop(attached);
    common::eventually("the process to be forgotten", || c.list().unwrap().is_empty());
    // Gone: typed errors.
    for e in [
        c.attach(id).map(drop).unwrap_err(),
        c.signal(id, 15).unwrap_err(),
        c.wait(id).map(drop).unwrap_err(),
    ] {
        let (kind, _, message) = guest_error(e);
        assert_eq!(kind, GuestErrorKind::NoSuchProcess, "{message}");
        assert!(message.contains(&id.to_string()), "{message}");
    }

    // Waited on while nobody is attached, then attached after its end.
    let p = c.spawn(&argv(&["sleep", "30"]).detach(true)).unwrap();
    let id = p.id();
    drop(p);
    c.signal(id, libc::SIGTERM).unwrap();
    assert_eq!(c.wait(id).unwrap().signal, Some(15));
    assert!(matches!(
        c.list().unwrap()[0].state,
        ProcessState::Exited(e) if e.signal == Some(15)
    ));
    assert_eq!(c.attach(id).unwrap().wait().unwrap().signal, Some(15));
}

#[test]
fn output_kept_while_detached_is_replayed_on_attach() {
    let _g = shared();
    let agent = Agent::start();
    let c = client(&agent);
    // Output written while the spawning client is still connected goes to
    // it, not to the ring: "a" comes after the handle is dropped.
    let go = agent.dir.path("go");
    let script = format!(
        "{}; echo a; sleep 1; echo b; sleep 30",
        common::wait_for_file(&go)
    );
    let p = c.spawn(&argv(&["sh", "-c", &script]).detach(true)).unwrap();
    let id = p.id();
    drop(p);
    release(&c, &go);
    common::eventually("the output to be kept", || c.list().unwrap()[0].buffered == 4);
    let info = c.list().unwrap().remove(0);
    assert_eq!((info.state, info.attached), (ProcessState::Running, false));
    let mut attached = c.attach(id).unwrap();
    let rx = chunks(attached.take_stdout().unwrap());
    let mut seen = Vec::new();
    read_until(&rx, &mut seen, "b\n");
    assert_eq!(seen, b"a\nb\n");
    assert_eq!(attached.dropped_output(), 0);
    attached.signal(libc::SIGKILL).unwrap();
    assert_eq!(attached.wait().unwrap().signal, Some(9));
}

#[test]
fn output_past_the_detached_ring_is_counted_as_dropped() {
    let _g = shared();
    let agent = Agent::start();
    let c = client(&agent);
    let total: u64 = 3 << 20;
    let go = agent.dir.path("go");
    let p = c
        .spawn(
            &argv(&[
                "sh",
                "-c",
                &format!(
                    "{}; head -c {total} /dev/zero; echo end; sleep 30",
                    common::wait_for_file(&go)
                ),
            ])
            .detach(true),
        )
        .unwrap();
    let id = p.id();
    drop(p);
    release(&c, &go);
    common::eventually("the output to be kept or counted", || {
        let info = c.list().unwrap().remove(0);
        info.buffered + info.dropped == total + 4
    });
    let info = c.list().unwrap().remove(0);
    assert!(info.dropped > 0, "{info:?}");
    assert_eq!(info.buffered + info.dropped, total + 4, "{info:?}");
    let mut a = c.attach(id).unwrap();
    let rx = chunks(a.take_stdout().unwrap());
    let mut seen = Vec::new();
    read_until(&rx, &mut seen, "end\n");
    assert_eq!(seen.len() as u64, info.buffered);
    assert_eq!(a.dropped_output(), info.dropped);
    c.signal(id, libc::SIGKILL).unwrap();
    assert_eq!(a.wait().unwrap().signal, Some(9));
}

#[test]
fn a_pty_reports_its_size_and_follows_resizes() {
    let _g = shared();
    let agent = Agent::start();
    let c = client(&agent);
    let out = c.exec(&argv(&["tty"]).tty(24, 80)).unwrap();
    assert!(
        out.stdout_text().starts_with("/dev/pts/"),
        "{:?}",
        out.stdout_text()
    );
    assert!(out.stderr.is_empty());
    let out = c.exec(&argv(&["stty", "size"]).tty(24, 80)).unwrap();
    assert_eq!(out.stdout_text().trim(), "24 80");
    // One shell, resized between two `stty size`.
    let mut p = c
        .spawn(&argv(&["sh"]).tty(24, 80).stdin(true).env("PS1", "$ "))
        .unwrap();
    let rx = chunks(p.take_stdout().unwrap());
    let mut seen = Vec::new();
    p.stdin().unwrap().write_all(b"stty size\n").unwrap();
    read_until(&rx, &mut seen, "24 80");
    p.resize(50, 132).unwrap();
    p.stdin().unwrap().write_all(b"stty size\n").unwrap();
    read_until(&rx, &mut seen, "50 132");
    p.stdin().unwrap().write_all(b"exit 5\n").unwrap();
    assert_eq!(p.wait().unwrap().code, Some(5));
}

#[test]
fn wait_before_reading_many_small_writes() {
    // Like `std::process::Child`: a process writing less than a pipe's
    // worth may be waited for before its output is read, however many
    // writes it makes.
    let _g = shared();
    let agent = Agent::start();
    let c = client(&agent);
    let mut p = c
        .spawn(&argv(&[
            "sh",
            "-c",
            "for i in $(seq 300); do echo $i; sleep 0.002; done",
        ]))
        .unwrap();
    let mut stdout = p.take_stdout().unwrap();
    let status = within(Duration::from_secs(20), move || p.wait().map(|s| s.code));
    assert_eq!(status.unwrap(), Some(0));
    let mut text = String::new();
    stdout.read_to_string(&mut text).unwrap();
    let want: String = (1..=300).map(|i| format!("{i}\n")).collect();
    assert_eq!(text, want);
}

#[test]
fn stdin_handles_close_once_and_never_break_the_connection() {
    let _g = shared();
    let agent = Agent::start();
    let c = client(&agent);
    // wait_with_output closes stdin (dropping its handle).
    let mut p = c.spawn(&argv(&["cat"]).stdin(true)).unwrap();
    p.stdin().unwrap().write_all(b"hi\n").unwrap();
    let out = within(Duration::from_secs(10), move || p.wait_with_output(1 << 20)).unwrap();
    assert_eq!((out.stdout.as_slice(), out.status.code), (&b"hi\n"[..], Some(0)));
    // Dropping a taken handle closes stdin too.
    let mut p = c.spawn(&argv(&["cat"]).stdin(true)).unwrap();
    let mut stdin = p.take_stdin().unwrap();
    stdin.write_all(b"dropped\n").unwrap();
    drop(stdin);
    let out = within(Duration::from_secs(10), move || p.wait_with_output(1 << 20)).unwrap();
    assert_eq!(out.stdout, b"dropped\n");
    // A taken and closed handle, then close_stdin: one STDIN_CLOSE only
    // (a second would end the connection and kill the process).
    let mut p = c
        .spawn(&argv(&["sh", "-c", "cat; echo after"]).stdin(true))
        .unwrap();
    p.take_stdin().unwrap().close().unwrap();
    p.close_stdin().unwrap();
    p.close_stdin().unwrap();
    let out = within(Duration::from_secs(10), move || p.wait_with_output(1 << 20)).unwrap();
    assert_eq!((out.stdout_text(), out.status.code), ("after\n".into(), Some(0)));
    // Without stdin: no handle, and closing is a no-op.
    let mut p = c.spawn(&argv(&["sh", "-c", "sleep 0.2; echo fine"])).unwrap();
    assert!(p.take_stdin().is_none() && p.stdin().is_none());
    p.close_stdin().unwrap();
    // RESIZE of a process without a terminal is refused here, not by the
    // agent (which would end the connection and kill the process).
    let e = p.resize(10, 10).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let out = within(Duration::from_secs(10), move || p.wait_with_output(1 << 20)).unwrap();
    assert_eq!((out.stdout_text(), out.status.code), ("fine\n".into(), Some(0)));
}

#[test]
fn dropping_a_handle_never_waits_for_a_blocked_writer() {
    let _g = shared();
    let agent = Agent::start();
    let c = client(&agent);
    // cat's output is not read: it stalls, then its stdin, then the
    // writer thread (holding the connection's write side).
    let mut p = c.spawn(&argv(&["cat"]).stdin(true)).unwrap();
    let pid = p.pid();
    let mut stdin = p.take_stdin().unwrap();
    let stdout = p.take_stdout().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0usize;
        while stdin.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!writer.is_finished(), "the writer should be blocked by now");
    within(Duration::from_secs(5), move || drop(p));
    let sent = within(Duration::from_secs(10), move || writer.join().unwrap());
    assert!(sent > 0);
    common::eventually("cat to be killed", || !alive(pid));
    drop(stdout);
}

#[test]
fn attach_with_stdin_feeds_a_detached_process() {
    let _g = shared();
    let agent = Agent::start();
    let c = client(&agent);
    let p = c
        .spawn(
            &argv(&["sh", "-c", "read a; echo got $a"])
                .detach(true)
                .stdin(true),
        )
        .unwrap();
    let id = p.id();
    drop(p);
    let mut a = c.attach_with_stdin(id).unwrap();
    a.stdin().unwrap().write_all(b"later\n").unwrap();
    let out = within(Duration::from_secs(10), move || a.wait_with_output(1 << 20)).unwrap();
    assert_eq!(
        (out.stdout_text(), out.status.code),
        ("got later\n".into(), Some(0))
    );
}

// ------------------------------------------------------------------ files

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// Uploads `len` generated bytes and downloads them back; returns the
/// upload's and the download's durations.
fn upload_download(c: &AgentClient, path: &str, len: u64, seed: u64) -> (Duration, Duration) {
    let start = Instant::now();
    let mut g = Generator::new(len, seed);
    assert_eq!(c.upload(path, 0o600, false, &mut g).unwrap(), len);
    let up = start.elapsed();
    let sent = g.digest();
    let start = Instant::now();
    let mut h = Hasher::default();
    assert_eq!(c.download(path, &mut h).unwrap(), len);
    let down = start.elapsed();
    assert_eq!(h.digest(), (len, sent));
    (up, down)
}

#[test]
fn upload_and_download_64_mib_streamed_in_bounded_memory() {
    let _g = exclusive();
    let agent = Agent::start();
    let dir = Scratch::new("client-big");
    let c = client(&agent);
    let small = dir.path("small");
    let big = dir.path("big");
    let (small, big) = (small.to_str().unwrap(), big.to_str().unwrap());
    upload_download(&c, small, 1 << 20, 1);
    let (me1, agent1, _) = peak_growth(&agent, || upload_download(&c, small, 1 << 20, 2));
    let (me64, agent64, (up, down)) = peak_growth(&agent, || upload_download(&c, big, 64 << 20, 3));
    assert_eq!(std::fs::metadata(big).unwrap().len(), 64 << 20);
    assert_eq!(
        std::fs::metadata(big).unwrap().permissions().mode() & 0o777,
        0o600
    );
    eprintln!(
        "64 MiB: upload {up:?} ({:.0} MB/s), download {down:?} ({:.0} MB/s); peak growth: \
         client {me1} KiB (1 MiB) vs {me64} KiB (64 MiB), agent {agent1} KiB vs {agent64} KiB",
        mb_per_s(64 << 20, up),
        mb_per_s(64 << 20, down)
    );
    assert!(
        me64 < me1 + 8192,
        "the client's memory grew with the size: {me1} KiB vs {me64} KiB"
    );
    assert!(
        agent64 < agent1 + 8192,
        "the agent's memory grew with the size: {agent1} KiB vs {agent64} KiB"
    );
}

#[test]
fn write_read_and_transfer_errors() {
    let _g = shared();
    let agent = Agent::start();
    let dir = Scratch::new("client-rw");
    let c = client(&agent);
    let f = dir.path("f.txt");
    let f = f.to_str().unwrap();
    c.write_file(f, b"hello\n", 0o640).unwrap();
    assert_eq!(std::fs::read(f).unwrap(), b"hello\n");
    assert_eq!(std::fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o640);
    assert_eq!(c.read_file(f).unwrap(), b"hello\n");
    c.write_file(f, b"", 0o644).unwrap();
    assert_eq!(c.read_file(f).unwrap(), b"");
    // Errors name the path.
    let missing = dir.path("no/such/file");
    let missing = missing.to_str().unwrap();
    assert_guest(
        c.write_file(missing, b"x", 0o644),
        GuestErrorKind::NotFound,
        missing,
        "No such file or directory",
    );
    assert_guest(
        c.upload(missing, 0o644, false, Generator::new(4 << 20, 1)),
        GuestErrorKind::NotFound,
        missing,
        "No such file or directory",
    );
    assert_guest(
        c.read_file(missing),
        GuestErrorKind::NotFound,
        missing,
        "No such file or directory",
    );
    assert_guest(
        c.download(missing, Hasher::default()),
        GuestErrorKind::NotFound,
        missing,
        "No such file or directory",
    );
    let d = dir.0.to_str().unwrap();
    assert_guest(c.read_file(d), GuestErrorKind::IsADirectory, d, "Is a directory");
    // With parents.
    let deep = dir.path("a/b/c/f");
    assert_eq!(
        c.upload(deep.to_str().unwrap(), 0o600, true, &b"deep"[..])
            .unwrap(),
        4
    );
    assert_eq!(std::fs::read(&deep).unwrap(), b"deep");
    // The client's cap on read_file.
    c.write_file(f, &[7u8; 100_000], 0o644).unwrap();
    let e = c.clone().output_cap(1000).read_file(f).unwrap_err();
    assert!(matches!(e, AgentError::OutputTooLarge(1000)), "{e:?}");
    assert!(!dir.path("no").exists());
}

/// A reader that fails after `ok` bytes.
struct FailingReader {
    ok: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ok == 0 {
            return Err(std::io::Error::other("the source broke"));
        }
        let n = buf.len().min(self.ok);
        buf[..n].fill(b'z');
        self.ok -= n;
        Ok(n)
    }
}

/// A writer that fails after `ok` bytes.
struct FailingWriter {
    ok: usize,
}

impl Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.ok == 0 {
            return Err(std::io::Error::other("the sink broke"));
        }
        let n = buf.len().min(self.ok);
        self.ok -= n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn broken_transfers_fail_cleanly_and_leave_the_old_file() {
    let _g = shared();
    let agent = Agent::start();
    let dir = Scratch::new("client-broken");
    let c = client(&agent);
    let f = dir.path("f");
    let f = f.to_str().unwrap();
    c.write_file(f, b"old contents", 0o644).unwrap();
    // The local source fails half way: the upload fails, the old file
    // stays, no temporary is left.
    let e = c
        .upload(f, 0o644, false, FailingReader { ok: 3 << 20 })
        .unwrap_err();
    match &e {
        AgentError::Io(io) => assert!(io.to_string().contains("the source broke"), "{io}"),
        other => panic!("{other:?}"),
    }
    common::eventually("the temporary file to go", || {
        std::fs::read_dir(&dir.0).unwrap().count() == 1
    });
    assert_eq!(std::fs::read(f).unwrap(), b"old contents");
    // The local sink fails half way.
    c.upload(f, 0o644, false, Generator::new(8 << 20, 9)).unwrap();
    let e = c.download(f, FailingWriter { ok: 1 << 20 }).unwrap_err();
    assert!(e.to_string().contains("the sink broke"), "{e}");
    // The agent is fine.
    let (len, _) = {
        let mut h = Hasher::default();
        c.download(f, &mut h).unwrap();
        h.digest()
    };
    assert_eq!(len, 8 << 20);
    assert!(c.list().unwrap().is_empty());
}

#[test]
fn metadata_operations_and_their_errors() {
    let _g = shared();
    let agent = Agent::start();
    let dir = Scratch::new("client-meta");
    let c = client(&agent);
    let p = |rel: &str| dir.path(rel).to_str().unwrap().to_string();
    const ENOENT: &str = "No such file or directory";

    // mkdir
    c.mkdir(&p("d"), 0o750, false).unwrap();
    c.mkdir(&p("x/y/z"), 0o755, true).unwrap();
    c.mkdir(&p("x/y/z"), 0o755, true).unwrap();
    assert!(dir.path("x/y/z").is_dir());
    assert_guest(
        c.mkdir(&p("d"), 0o755, false),
        GuestErrorKind::AlreadyExists,
        &p("d"),
        "File exists",
    );
    assert_guest(
        c.mkdir(&p("no/d"), 0o755, false),
        GuestErrorKind::NotFound,
        &p("no/d"),
        ENOENT,
    );

    // stat
    c.write_file(&p("d/f"), b"12345", 0o640).unwrap();
    let s = c.stat(&p("d/f")).unwrap();
    assert_eq!((s.kind, s.size, s.mode & 0o7777), (FileKind::File, 5, 0o640));
    assert_eq!((s.uid, s.gid), (0, 0));
    assert!(s.mtime_ns > 0);
    let s = c.stat(&p("d")).unwrap();
    assert_eq!((s.kind, s.mode & 0o7777), (FileKind::Dir, 0o750));
    std::os::unix::fs::symlink("f", dir.path("d/link")).unwrap();
    assert_eq!(c.stat(&p("d/link")).unwrap().kind, FileKind::Symlink);
    assert_guest(c.stat(&p("nope")), GuestErrorKind::NotFound, &p("nope"), ENOENT);
    assert_guest(
        c.stat(&p("d/f/x")),
        GuestErrorKind::NotADirectory,
        &p("d/f/x"),
        "Not a directory",
    );

    // list_dir
    let mut names: Vec<(String, FileKind)> = c
        .list_dir(&p("d"))
        .unwrap()
        .into_iter()
        .map(|e| (String::from_utf8_lossy(&e.name).into_owned(), e.kind))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        names,
        [
            ("f".to_string(), FileKind::File),
            ("link".to_string(), FileKind::Symlink)
        ]
    );
    for i in 0..1500 {
        std::fs::write(dir.path(&format!("x/many-{i}")), b"").unwrap();
    }
    assert_eq!(c.list_dir(&p("x")).unwrap().len(), 1501);
    assert_guest(
        c.list_dir(&p("nope")),
        GuestErrorKind::NotFound,
        &p("nope"),
        ENOENT,
    );
    assert_guest(
        c.list_dir(&p("d/f")),
        GuestErrorKind::NotADirectory,
        &p("d/f"),
        "Not a directory",
    );

    // chmod
    c.chmod(&p("d/f"), 0o604).unwrap();
    assert_eq!(
        std::fs::metadata(dir.path("d/f")).unwrap().permissions().mode() & 0o7777,
        0o604
    );
    assert_guest(
        c.chmod(&p("nope"), 0o600),
        GuestErrorKind::NotFound,
        &p("nope"),
        ENOENT,
    );

    // rename
    c.rename(&p("d/f"), &p("d/g")).unwrap();
    assert!(!dir.path("d/f").exists() && dir.path("d/g").exists());
    assert_guest(
        c.rename(&p("d/f"), &p("d/h")),
        GuestErrorKind::NotFound,
        &p("d/f"),
        ENOENT,
    );
    assert_guest(
        c.rename(&p("d/g"), &p("no/h")),
        GuestErrorKind::NotFound,
        &p("no/h"),
        ENOENT,
    );

    // remove
    assert_guest(
        c.remove(&p("x"), false),
        GuestErrorKind::DirectoryNotEmpty,
        &p("x"),
        "Directory not empty",
    );
    c.remove(&p("x"), true).unwrap();
    assert!(!dir.path("x").exists());
    c.remove(&p("d/link"), false).unwrap();
    c.remove(&p("d/g"), false).unwrap();
    c.remove(&p("d"), false).unwrap();
    assert!(!dir.path("d").exists());
    assert_guest(
        c.remove(&p("nope"), false),
        GuestErrorKind::NotFound,
        &p("nope"),
        ENOENT,
    );
    assert_guest(
        c.remove(&p("nope"), true),
        GuestErrorKind::NotFound,
        &p("nope"),
        ENOENT,
    );

    // A recursive remove does not follow symlinks.
    std::fs::create_dir(dir.path("keep")).unwrap();
    std::fs::write(dir.path("keep/precious"), b"1").unwrap();
    std::fs::create_dir(dir.path("tree")).unwrap();
    std::os::unix::fs::symlink(dir.path("keep"), dir.path("tree/link")).unwrap();
    c.remove(&p("tree"), true).unwrap();
    assert!(dir.path("keep/precious").exists());

    c.sync().unwrap();
}

fn write_generation(path: &Path, generation: u64) {
    let mut bytes = generation.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[generation as u8; 32]);
    bytes.extend_from_slice(&1_700_000_000_000_000_000u64.to_le_bytes());
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

#[test]
fn refresh_reports_a_changed_generation_once() {
    let _g = shared();
    let dir = Scratch::new("client-gen");
    let file = dir.path("generation");
    write_generation(&file, 0x11);
    let agent = Agent::start_with(&["--generation-file", file.to_str().unwrap()]);
    let c = client(&agent);
    let r = c.refresh().unwrap();
    assert_eq!((r.restored, r.generation), (false, 0x11));
    write_generation(&file, 0x22);
    let r = c.refresh().unwrap();
    assert_eq!((r.restored, r.generation), (true, 0x22));
    let r = c.refresh().unwrap();
    assert_eq!((r.restored, r.generation), (false, 0x22));
}

#[test]
fn exec_output_cap() {
    let _g = shared();
    let agent = Agent::start();
    let c = client(&agent).output_cap(1000);
    let e = c.exec(&argv(&["head", "-c", "100000", "/dev/zero"])).unwrap_err();
    assert!(matches!(e, AgentError::OutputTooLarge(1000)), "{e:?}");
    let e = c
        .exec(&argv(&["sh", "-c", "head -c 5000 /dev/zero >&2"]))
        .unwrap_err();
    assert!(matches!(e, AgentError::OutputTooLarge(1000)), "{e:?}");
    // At the cap exactly is fine.
    let out = c.exec(&argv(&["head", "-c", "1000", "/dev/zero"])).unwrap();
    assert_eq!(out.stdout.len(), 1000);
    // The agent is not stuck on the abandoned process.
    common::eventually("the abandoned processes to be gone", || {
        c.list().unwrap().is_empty()
    });
}

// ----------------------------------------------------------- bad peers

#[test]
fn no_agent_listening_is_a_connect_error() {
    let _g = shared();
    let dir = Scratch::new("client-none");
    let c = AgentClient::unix(dir.path("nobody.sock")).timeout(Some(Duration::from_secs(5)));
    let e = c.exec(&argv(&["true"])).unwrap_err();
    assert!(matches!(e, AgentError::Connect(_)), "{e:?}");
    assert!(e.to_string().contains("nobody.sock"), "{e}");
    // A socket file nobody listens on.
    let path = dir.path("stale.sock");
    drop(UnixListener::bind(&path).unwrap());
    let e = AgentClient::unix(&path).list().unwrap_err();
    assert!(matches!(e, AgentError::Connect(_)), "{e:?}");
    // Through the vsock path with no VM socket either.
    let e = AgentClient::vsock(dir.path("no-vm.sock"), 52).list().unwrap_err();
    assert!(matches!(e, AgentError::Connect(_)), "{e:?}");
}

/// A fake peer on a fresh socket: `serve` gets each accepted stream.
fn fake_peer(
    dir: &Scratch,
    name: &str,
    serve: impl Fn(std::os::unix::net::UnixStream) + Send + 'static,
) -> AgentClient {
    let path = dir.path(name);
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            serve(s);
        }
    });
    AgentClient::unix(path).timeout(Some(Duration::from_secs(3)))
}

/// Reads the client's HELLO frame (whatever it is).
fn read_hello(s: &mut std::os::unix::net::UnixStream) {
    let mut len = [0u8; 4];
    if s.read_exact(&mut len).is_ok() {
        let mut body = vec![0u8; u32::from_le_bytes(len).min(1 << 20) as usize];
        let _ = s.read_exact(&mut body);
    }
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = ((body.len() + 1) as u32).to_le_bytes().to_vec();
    f.push(kind);
    f.extend_from_slice(body);
    f
}

/// The HELLO_OK a v2 agent sends: version 2, agent "fake".
fn hello_ok() -> Vec<u8> {
    frame(0x11, &[2, 4, b'f', b'a', b'k', b'e'])
}

/// Runs `f` on a thread and fails if it takes longer than `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("the client hung (or panicked)")
}

#[test]
fn an_old_agent_is_a_version_error() {
    let _g = shared();
    let dir = Scratch::new("client-v1");
    let c = fake_peer(&dir, "v1.sock", |mut s| {
        read_hello(&mut s);
        let text = b"unknown request kind 0x10";
        let mut body = (text.len() as u32).to_le_bytes().to_vec();
        body.extend_from_slice(text);
        let _ = s.write_all(&frame(0x84, &body));
    });
    let e = within(Duration::from_secs(10), move || c.exec(&argv(&["true"]))).unwrap_err();
    match &e {
        AgentError::Version { agent, host, message } => {
            assert_eq!((*agent, *host), (1, 2));
            assert!(message.contains("unknown request kind"), "{message}");
        }
        other => panic!("expected a version error, got {other:?}"),
    }
}

#[test]
fn a_peer_that_closes_at_once_is_disconnected() {
    let _g = shared();
    let dir = Scratch::new("client-close");
    let c = fake_peer(&dir, "close.sock", drop);
    for _ in 0..20 {
        let c = c.clone();
        let e = within(Duration::from_secs(10), move || c.list()).unwrap_err();
        assert!(matches!(e, AgentError::Disconnected), "{e:?}");
    }
    // Closing after the HELLO, before HELLO_OK.
    let c = fake_peer(&dir, "close2.sock", |mut s| read_hello(&mut s));
    let e = within(Duration::from_secs(10), move || c.list()).unwrap_err();
    assert!(matches!(e, AgentError::Disconnected), "{e:?}");
    // Closing right after the handshake, and inside a process stream.
    let c = fake_peer(&dir, "close3.sock", |mut s| {
        read_hello(&mut s);
        let _ = s.write_all(&hello_ok());
    });
    let c2 = c.clone();
    let e = within(Duration::from_secs(10), move || c2.list()).unwrap_err();
    assert!(matches!(e, AgentError::Disconnected), "{e:?}");
    let e = within(Duration::from_secs(10), move || c.spawn(&argv(&["true"]))).unwrap_err();
    assert!(matches!(e, AgentError::Disconnected), "{e:?}");
}

#[test]
fn garbage_from_the_peer_is_a_protocol_error_never_a_hang() {
    let _g = shared();
    let dir = Scratch::new("client-garbage");
    // STARTED {id 1, pid 2}.
    let started = frame(0x5b, &[1, 2]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("zero length", vec![0, 0, 0, 0, 0x11]),
        ("huge length", vec![0xff, 0xff, 0xff, 0x7f, 0x11, 1, 2, 3]),
        ("unknown kind", frame(0xee, b"what")),
        (
            "bad HELLO_OK body",
            frame(0x11, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        ),
        ("HELLO_OK with trailing bytes", {
            let mut f = hello_ok();
            f[0] += 3;
            f.extend_from_slice(b"xyz");
            f
        }),
        ("text", b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()),
        ("a request instead of an answer", frame(0x22, &[])),
        ("garbage after HELLO_OK", [hello_ok(), frame(0xee, b"x")].concat()),
        (
            "bad length after HELLO_OK",
            [hello_ok(), vec![0, 0, 0x40, 0]].concat(),
        ),
        (
            "garbage in the process stream",
            [hello_ok(), started.clone(), frame(0x58, b"ok"), frame(0xee, b"x")].concat(),
        ),
        (
            "bad EXIT in the process stream",
            [hello_ok(), started.clone(), frame(0x5a, &[9, 9, 9])].concat(),
        ),
        (
            "truncated frame in the process stream",
            [hello_ok(), started.clone(), vec![100, 0, 0, 0, 0x58, 1]].concat(),
        ),
    ];
    for (i, (what, bytes)) in cases.into_iter().enumerate() {
        eprintln!("case {what}");
        let c = fake_peer(&dir, &format!("g{i}.sock"), move |mut s| {
            read_hello(&mut s);
            let _ = s.write_all(&bytes);
            // Stay open a while: the client must not wait for the close.
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(20));
                drop(s);
            });
        });
        let (list, exec, spawned) = within(Duration::from_secs(15), move || {
            let list = c.list();
            let exec = c.exec(&argv(&["true"]));
            let spawned = c.spawn(&argv(&["true"])).and_then(|p| p.wait());
            (list, exec, spawned)
        });
        for (call, r) in [
            ("list", list.map(drop)),
            ("exec", exec.map(drop)),
            ("spawn", spawned.map(drop)),
        ] {
            let e = r.unwrap_err();
            let ok = match what {
                // Cut short, then silent: the client's timeout.
                "truncated frame in the process stream" if call != "list" => {
                    matches!(e, AgentError::Protocol(_) | AgentError::Timeout(_))
                }
                _ => matches!(e, AgentError::Protocol(_)),
            };
            assert!(ok, "{what}: {call} gave {e:?}");
        }
    }
    // A peer that accepts and says nothing: the client's timeout.
    let c = fake_peer(&dir, "silent.sock", |s| {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(20));
            drop(s);
        });
    })
    .timeout(Some(Duration::from_millis(500)));
    let start = Instant::now();
    let e = within(Duration::from_secs(10), move || c.list()).unwrap_err();
    assert!(matches!(e, AgentError::Timeout(_)), "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
}

// ------------------------------------------------------------ numbers

#[test]
fn exec_round_trip_of_true() {
    let _g = exclusive();
    let agent = Agent::start();
    let c = client(&agent);
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut through_agent = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..100 {
        let start = Instant::now();
        assert!(c.exec(&argv(&["true"])).unwrap().status.success());
        through_agent.push(start.elapsed());
        let start = Instant::now();
        assert!(std::process::Command::new("true")
            .spawn()
            .unwrap()
            .wait()
            .unwrap()
            .success());
        direct.push(start.elapsed());
    }
    let (a, d) = (median(through_agent), median(direct));
    eprintln!("exec `true`, median of 100: through the agent {a:?}, direct spawn+wait {d:?}");
    assert!(a < Duration::from_millis(200), "{a:?}");
}
