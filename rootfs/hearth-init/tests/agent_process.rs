//! Processes: streams, stdin, timeouts, detach/attach, the output ring,
//! terminals, users, against the real agent in native mode.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

mod common;

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use hearth_agent_protocol::{
    Attach, ErrorKind, Message, ProcessState, Signal, Spawn, User, Wait, WinSize, MAX_CHUNK,
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

fn proc_alive(pid: i32) -> bool {
    // A zombie is as good as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"),
        Err(_) => false,
    }
}

#[test]
fn stdout_stderr_and_exit_code() {
    let agent = Agent::start();
    let out = run(&agent, spawn_msg(&["sh", "-c", "echo out; echo err >&2; exit 3"]));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let exit = out.exit.unwrap();
    assert_eq!((exit.code, exit.signal, exit.timed_out), (Some(3), None, false));
}

#[test]
fn env_cwd_and_path_lookup() {
    let agent = Agent::start();
    let mut s = spawn_msg(&["sh", "-c", "echo $FOO; pwd"]);
    s.env = vec![b("FOO=bar"), b("PATH=/usr/bin:/bin")];
    s.cwd = Some(b("/tmp"));
    assert_eq!(run(&agent, s).stdout_text(), "bar\n/tmp\n");
    // No env: the agent's own (with its PATH).
    let out = run(&agent, spawn_msg(&["sh", "-c", "test -n \"$PATH\" && pwd"]));
    assert_eq!(out.stdout_text(), "/\n");
}

#[test]
fn spawn_errors_name_the_program_or_directory() {
    let agent = Agent::start();
    let msg = expect_error(
        agent
            .ask(&Message::Spawn(spawn_msg(&["no-such-program-hearth"])))
            .pop(),
        ErrorKind::NotFound,
    );
    assert_eq!(msg, "exec no-such-program-hearth: No such file or directory");
    let msg = expect_error(
        agent.ask(&Message::Spawn(spawn_msg(&["/no/such"]))).pop(),
        ErrorKind::NotFound,
    );
    assert_eq!(msg, "exec /no/such: No such file or directory");
    let msg = expect_error(
        agent.ask(&Message::Spawn(spawn_msg(&["/"]))).pop(),
        ErrorKind::PermissionDenied,
    );
    assert_eq!(msg, "exec /: Permission denied");
    let mut s = spawn_msg(&["true"]);
    s.cwd = Some(b("/no/such/dir"));
    let msg = expect_error(agent.ask(&Message::Spawn(s)).pop(), ErrorKind::NotFound);
    assert_eq!(msg, "chdir /no/such/dir: No such file or directory");
    expect_error(
        agent.ask(&Message::Spawn(Spawn::default())).pop(),
        ErrorKind::InvalidInput,
    );
}

#[test]
fn output_streams_as_it_is_produced() {
    let agent = Agent::start();
    let mut c = agent.connect();
    // "second" waits for stdin, which comes only after "first": "first"
    // came while the process ran, however slow the machine.
    let mut s = spawn_msg(&["sh", "-c", "echo first; read go; echo second"]);
    s.stdin = true;
    c.send(&Message::Spawn(s));
    c.started();
    assert!(matches!(c.recv(), Some(Message::Stdout(b)) if b == b"first\n"));
    c.send(&Message::Stdin(b"go\n".to_vec()));
    let rest = c.collect();
    assert_eq!(rest.stdout, b"second\n");
    assert_eq!(rest.code(), Some(0));
}

#[test]
fn background_processes_do_not_hold_the_exit() {
    let agent = Agent::start();
    let start = Instant::now();
    let out = run(
        &agent,
        spawn_msg(&["sh", "-c", "echo hi; sleep 5 >/dev/null & exit 0"]),
    );
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.code(), Some(0));
    assert!(start.elapsed() < Duration::from_secs(4));
}

/// Sends `data` as stdin of `cat` on a connection of its own and checks
/// what comes back.
fn cat_round_trip(agent: &Agent, data: Vec<u8>) {
    let mut c = agent.connect();
    let mut s = spawn_msg(&["cat"]);
    s.stdin = true;
    c.send(&Message::Spawn(s));
    c.started();
    let mut writer = common::Client {
        s: c.s.try_clone().unwrap(),
    };
    let want = sha256(&data);
    let len = data.len();
    let feeder = std::thread::spawn(move || {
        for chunk in data.chunks(MAX_CHUNK) {
            writer.send(&Message::Stdin(chunk.to_vec()));
        }
        writer.send(&Message::StdinClose);
    });
    let out = c.collect();
    feeder.join().unwrap();
    assert_eq!(out.code(), Some(0));
    assert_eq!(out.stdout.len(), len);
    assert_eq!(sha256(&out.stdout), want);
}

#[test]
fn sixteen_mib_of_stdin_round_trip_through_cat() {
    let agent = Agent::start();
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    cat_round_trip(&agent, data);
}

#[test]
fn sixty_four_processes_at_once_without_cross_talk() {
    let agent = std::sync::Arc::new(Agent::start());
    let threads: Vec<_> = (0..64u32)
        .map(|i| {
            let agent = agent.clone();
            std::thread::spawn(move || {
                let data: Vec<u8> = format!("process {i} says hello; ")
                    .into_bytes()
                    .into_iter()
                    .cycle()
                    .take(300_000 + i as usize * 1000)
                    .collect();
                cat_round_trip(&agent, data);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(matches!(agent.ask_one(&Message::List), Message::Processes(p) if p.is_empty()));
}

#[test]
fn a_timeout_kills_a_process_that_ignores_sigterm() {
    let agent = Agent::start();
    let mut s = spawn_msg(&["sh", "-c", "trap '' TERM; sleep 30"]);
    s.timeout_ms = Some(500);
    let start = Instant::now();
    let out = run(&agent, s);
    let exit = out.exit.unwrap();
    assert_eq!((exit.code, exit.signal, exit.timed_out), (None, Some(9), true));
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn kill_frame_signals_the_group() {
    let agent = Agent::start();
    let mut c = agent.connect();
    c.send(&Message::Spawn(spawn_msg(&["sleep", "30"])));
    c.started();
    c.send(&Message::Kill(libc::SIGTERM));
    let exit = c.collect().exit.unwrap();
    assert_eq!((exit.signal, exit.timed_out), (Some(15), false));
}

#[test]
fn a_disconnect_kills_the_process_group() {
    let agent = Agent::start();
    let mut c = agent.connect();
    c.send(&Message::Spawn(spawn_msg(&[
        "sh",
        "-c",
        "sleep 30 & echo $$ $!; wait",
    ])));
    let started = c.started();
    let line = match c.recv() {
        Some(Message::Stdout(b)) => String::from_utf8(b).unwrap(),
        other => panic!("{other:?}"),
    };
    let pids: Vec<i32> = line.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids[0], started.pid);
    assert!(proc_alive(pids[0]) && proc_alive(pids[1]));
    drop(c);
    eventually("the group to die", || {
        !proc_alive(pids[0]) && !proc_alive(pids[1])
    });
    eventually(
        "the process to be forgotten",
        || matches!(agent.ask_one(&Message::List), Message::Processes(p) if p.is_empty()),
    );
}

fn list(agent: &Agent) -> Vec<hearth_agent_protocol::ProcessInfo> {
    match agent.ask_one(&Message::List) {
        Message::Processes(p) => p,
        other => panic!("{other:?}"),
    }
}

/// Makes `go` (see [`wait_for_file`]) once the agent has seen every
/// spawning client go.
fn release(agent: &Agent, go: &Path) {
    eventually("the clients to be gone", || {
        list(agent).iter().all(|p| !p.attached)
    });
    std::fs::write(go, "").unwrap();
}

#[test]
fn detach_list_attach_replay_signal() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let go = agent.dir.path("go");
    let script = format!(
        "echo a; {}; echo b >&2; while :; do sleep 0.1; done",
        wait_for_file(&go)
    );
    let mut s = spawn_msg(&["sh", "-c", &script]);
    s.detach = true;
    c.send(&Message::Spawn(s));
    let started = c.started();
    let id = started.id;
    assert!(matches!(c.recv(), Some(Message::Stdout(b)) if b == b"a\n"));
    drop(c);
    // It goes on, detached; "b" is kept for the next ATTACH.
    release(&agent, &go);
    eventually("\"b\" to be kept", || list(&agent)[0].buffered == 2);
    let l = list(&agent);
    assert_eq!(l.len(), 1);
    let p = &l[0];
    assert_eq!(
        (p.id, p.pid, p.detached, p.attached, p.tty),
        (id, started.pid, true, false, false)
    );
    assert_eq!(p.state, ProcessState::Running);
    assert_eq!((p.buffered, p.dropped), (2, 0));
    assert_eq!(p.argv[0].as_slice(), b"sh");

    let mut a = agent.connect();
    a.send(&Message::Attach(Attach { id }));
    assert_eq!(a.started(), started);
    assert!(matches!(a.recv(), Some(Message::Stderr(b)) if b == b"b\n"));
    // One client at a time.
    let mut other = agent.connect();
    other.send(&Message::Attach(Attach { id }));
    let msg = expect_error(other.recv(), ErrorKind::Other);
    assert!(msg.contains("another client is attached"), "{msg}");
    assert!(list(&agent)[0].attached);
    // SIGNAL goes to the group; the attached client sees the end.
    assert_eq!(
        agent.ask_one(&Message::Signal(Signal {
            id,
            signal: libc::SIGTERM
        })),
        Message::Ok
    );
    let exit = a.collect().exit.unwrap();
    assert_eq!(
        (exit.code, exit.signal, exit.timed_out),
        (None, Some(libc::SIGTERM), false)
    );
    // EXIT delivered: forgotten.
    eventually("the process to be forgotten", || list(&agent).is_empty());
    let msg = expect_error(
        agent.ask(&Message::Attach(Attach { id })).pop(),
        ErrorKind::NoSuchProcess,
    );
    assert_eq!(msg, format!("attach process {id}: No such process"));
    expect_error(
        agent.ask(&Message::Signal(Signal { id, signal: 15 })).pop(),
        ErrorKind::NoSuchProcess,
    );
    expect_error(
        agent.ask(&Message::Wait(Wait { id })).pop(),
        ErrorKind::NoSuchProcess,
    );
}

#[test]
fn wait_then_attach_delivers_the_exit() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let go = agent.dir.path("go");
    let script = format!("{}; echo done; exit 4", wait_for_file(&go));
    let mut s = spawn_msg(&["sh", "-c", &script]);
    s.detach = true;
    c.send(&Message::Spawn(s));
    let id = c.started().id;
    drop(c);
    release(&agent, &go);
    let exit = match agent.ask_one(&Message::Wait(Wait { id })) {
        Message::Exit(e) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(exit.code, Some(4));
    // WAIT again answers at once; the process stays listed until ATTACH.
    assert_eq!(agent.ask_one(&Message::Wait(Wait { id })), Message::Exit(exit));
    let l = list(&agent);
    assert_eq!(l[0].state, ProcessState::Exited(exit));
    let mut a = agent.connect();
    a.send(&Message::Attach(Attach { id }));
    a.started();
    let out = a.collect();
    assert_eq!((out.stdout.as_slice(), out.exit), (&b"done\n"[..], Some(exit)));
    eventually("the process to be forgotten", || list(&agent).is_empty());
    // A waiter on a running process gets the EXIT when it ends.
    let mut c = agent.connect();
    let mut s = spawn_msg(&["sleep", "0.5"]);
    s.detach = true;
    c.send(&Message::Spawn(s));
    let id = c.started().id;
    let mut w = agent.connect();
    w.send(&Message::Wait(Wait { id }));
    assert!(matches!(w.recv(), Some(Message::Exit(e)) if e.code == Some(0)));
    assert!(matches!(c.collect().exit, Some(e) if e.code == Some(0)));
}

#[test]
fn the_ring_keeps_the_last_mib_and_counts_the_rest() {
    let agent = Agent::start();
    let total: u64 = 3_000_000;
    let mut c = agent.connect();
    let go = agent.dir.path("go");
    let mut s = spawn_msg(&[
        "sh",
        "-c",
        &format!("{}; head -c {total} /dev/zero; echo -n end", wait_for_file(&go)),
    ]);
    s.detach = true;
    c.send(&Message::Spawn(s));
    let id = c.started().id;
    drop(c);
    release(&agent, &go);
    assert!(matches!(agent.ask_one(&Message::Wait(Wait { id })), Message::Exit(e) if e.code == Some(0)));
    let l = list(&agent);
    let kept = 1u64 << 20;
    assert_eq!((l[0].buffered, l[0].dropped), (kept, total + 3 - kept));
    let mut a = agent.connect();
    a.send(&Message::Attach(Attach { id }));
    a.started();
    assert_eq!(a.recv(), Some(Message::OutputDropped(total + 3 - kept)));
    let out = a.collect();
    assert_eq!(out.stdout.len() as u64, kept);
    assert!(out.stdout.ends_with(b"\0end"));
    assert_eq!(out.code(), Some(0));
}

#[test]
fn a_slow_reader_stalls_its_process_only() {
    let agent = Agent::start();
    let total: usize = 64 << 20;
    let mut c = agent.connect();
    c.send(&Message::Spawn(spawn_msg(&[
        "head",
        "-c",
        &total.to_string(),
        "/dev/zero",
    ])));
    c.started();
    // Not reading: the agent stops reading the pipe, the process blocks.
    std::thread::sleep(Duration::from_millis(500));
    let rss = agent.vm_rss_kib();
    // Meanwhile other requests are served.
    assert_eq!(run(&agent, spawn_msg(&["echo", "hi"])).stdout, b"hi\n");
    let out = c.collect();
    assert_eq!(out.stdout.len(), total);
    assert!(rss < 32 * 1024, "agent RSS {rss} KiB while stalled");
}

#[test]
fn a_terminal_with_resize_and_eof() {
    let agent = Agent::start();
    let mut s = spawn_msg(&["tty"]);
    s.tty = Some(WinSize { rows: 24, cols: 80 });
    let out = run(&agent, s);
    assert!(
        out.stdout_text().starts_with("/dev/pts/"),
        "{:?}",
        out.stdout_text()
    );
    assert_eq!(out.code(), Some(0));
    assert!(out.stderr.is_empty());

    let mut c = agent.connect();
    let mut s = spawn_msg(&["sh", "-c", "stty size; read x; stty size; echo err >&2"]);
    s.tty = Some(WinSize { rows: 24, cols: 80 });
    s.stdin = true;
    c.send(&Message::Spawn(s));
    c.started();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("24 80") {
        match c.recv() {
            Some(Message::Stdout(b)) => seen.extend_from_slice(&b),
            other => panic!("{other:?}"),
        }
    }
    c.send(&Message::Resize(WinSize { rows: 33, cols: 101 }));
    c.send(&Message::Stdin(b"go\n".to_vec()));
    let out = c.collect();
    let text = out.stdout_text();
    assert!(text.contains("33 101"), "{text:?}");
    // Everything is STDOUT on a terminal.
    assert!(text.contains("err"), "{text:?}");
    assert!(out.stderr.is_empty());
    assert_eq!(out.code(), Some(0));

    // STDIN_CLOSE writes the terminal's EOF character: cat ends.
    let mut c = agent.connect();
    let mut s = spawn_msg(&["cat"]);
    s.tty = Some(WinSize { rows: 24, cols: 80 });
    s.stdin = true;
    c.send(&Message::Spawn(s));
    c.started();
    c.send(&Message::Stdin(b"hello\n".to_vec()));
    c.send(&Message::StdinClose);
    let out = c.collect();
    assert!(out.stdout_text().contains("hello"), "{:?}", out.stdout_text());
    assert_eq!(out.code(), Some(0), "{:?} {:?}", out.exit, out.stdout_text());
}

#[test]
fn a_user_and_group_without_supplementary_groups() {
    // SAFETY: geteuid(2) has no memory effects.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: setuid needs root");
        return;
    }
    let agent = Agent::start();
    let mut s = spawn_msg(&["sh", "-c", "id -u; id -g; id -G"]);
    s.user = Some(User {
        uid: 65534,
        gid: 65534,
    });
    let out = run(&agent, s);
    assert_eq!(out.stdout_text(), "65534\n65534\n65534\n");
}

#[test]
fn stdin_of_a_process_that_does_not_read_it() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let mut s = spawn_msg(&["sh", "-c", "exec 0<&-; sleep 0.2; echo ok"]);
    s.stdin = true;
    c.send(&Message::Spawn(s));
    c.started();
    for _ in 0..4 {
        c.send(&Message::Stdin(vec![b'x'; MAX_CHUNK]));
    }
    let out = c.collect();
    assert_eq!((out.stdout.as_slice(), out.code()), (&b"ok\n"[..], Some(0)));
    // STDIN after the exit raced with it: not an error, the EXIT came.
    let mut c = agent.connect();
    let mut s = spawn_msg(&["true"]);
    s.stdin = true;
    c.send(&Message::Spawn(s));
    c.started();
    std::thread::sleep(Duration::from_millis(200));
    let _ = c.send_raw(&Message::Stdin(b"late".to_vec()).encode());
    let mut rest = Vec::new();
    let _ = c.s.read_to_end(&mut rest);
    let mut r = &rest[..];
    let mut kinds = Vec::new();
    while let Ok(Some(f)) = hearth_agent_protocol::read_frame(&mut r) {
        kinds.push(Message::decode(&f).unwrap());
    }
    assert!(
        matches!(kinds.last(), Some(Message::Exit(e)) if e.code == Some(0)),
        "{kinds:?}"
    );
}

#[test]
#[ignore = "starts 1024 processes; run with --ignored"]
fn at_most_1024_processes_run_at_once() {
    let agent = Agent::start();
    let start = Instant::now();
    for i in 0..1024 {
        let mut c = agent.connect();
        let mut s = spawn_msg(&["sleep", "120"]);
        s.detach = true;
        c.send(&Message::Spawn(s));
        match c.recv() {
            Some(Message::Started(_)) => {}
            other => panic!("process {i}: {other:?}"),
        }
    }
    eprintln!("1024 spawns in {:?}", start.elapsed());
    let msg = expect_error(
        agent.ask(&Message::Spawn(spawn_msg(&["true"]))).pop(),
        ErrorKind::TooManyProcesses,
    );
    assert!(msg.contains("1024"), "{msg}");
    assert_eq!(list(&agent).len(), 1024);
    // One ends: room for one more.
    let first = list(&agent)[0].id;
    assert_eq!(
        agent.ask_one(&Message::Signal(Signal { id: first, signal: 9 })),
        Message::Ok
    );
    assert!(matches!(
        agent.ask_one(&Message::Wait(Wait { id: first })),
        Message::Exit(_)
    ));
    assert_eq!(run(&agent, spawn_msg(&["true"])).code(), Some(0));
    eprintln!("agent VmHWM with 1024 processes: {} KiB", agent.vm_hwm_kib());
}

#[test]
fn no_busy_loop_while_waiting() {
    let agent = Agent::start();
    // Idle.
    let before = agent.cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    // A terminal whose process closed every descriptor of it and goes on
    // (the master reads EIO until the exit), a process with a silent
    // pipe, and one whose client does not read.
    let mut s = spawn_msg(&["sh", "-c", "exec 0<&- 1>&- 2>&-; sleep 1.5"]);
    s.tty = Some(WinSize { rows: 24, cols: 80 });
    let mut quiet = agent.connect();
    quiet.send(&Message::Spawn(spawn_msg(&["sleep", "1.5"])));
    quiet.started();
    let mut stalled = agent.connect();
    stalled.send(&Message::Spawn(spawn_msg(&[
        "head",
        "-c",
        "100000000",
        "/dev/zero",
    ])));
    stalled.started();
    let out = run(&agent, s);
    assert_eq!(out.code(), Some(0));
    assert_eq!(quiet.collect().code(), Some(0));
    let used = agent.cpu_ticks() - before;
    eprintln!("agent CPU while waiting 2.5 s: {used} ticks");
    // 2.5 s of waiting; a spinning loop would use all of it (250 ticks).
    assert!(used < 50, "the agent used {used} ticks while waiting");
    drop(stalled);
}

/// GNU cat closes its terminal descriptors itself just before exiting; the
/// master then reads EIO. Closing the master at that point hung the
/// terminal up and killed cat with SIGHUP about once in a hundred runs.
#[test]
fn a_terminal_is_not_hung_up_before_its_process_exits() {
    let agent = Agent::start();
    let mut bad = Vec::new();
    for i in 0..300 {
        let mut c = agent.connect();
        let mut s = spawn_msg(&["cat"]);
        s.tty = Some(WinSize { rows: 24, cols: 80 });
        s.stdin = true;
        c.send(&Message::Spawn(s));
        c.started();
        c.send(&Message::Stdin(b"hello\n".to_vec()));
        c.send(&Message::StdinClose);
        let out = c.collect();
        if out.code() != Some(0) {
            bad.push((i, out.exit));
        }
    }
    assert!(bad.is_empty(), "{bad:?}");
}

/// With `release`, the agent lets go of the spawning connection right
/// after STARTED: output and an exit that come at once are kept for the
/// ATTACH (without it, they went to the closing connection and were lost).
#[test]
fn release_keeps_everything_from_the_first_byte() {
    let agent = Agent::start();
    for _ in 0..20 {
        let mut c = agent.connect();
        let mut s = spawn_msg(&["sh", "-c", "echo kept; echo err >&2; exit 4"]);
        s.detach = true;
        s.extra.release = true;
        c.send(&Message::Spawn(s));
        let id = c.started().id;
        assert_eq!(c.recv(), None, "the agent closes after STARTED");
        let mut a = agent.connect();
        a.send(&Message::Attach(Attach { id }));
        a.started();
        let out = a.collect();
        assert_eq!(out.stdout, b"kept\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.exit.and_then(|e| e.code), Some(4));
    }
    eventually("the processes to be forgotten", || list(&agent).is_empty());
    // Without detach, a release would kill the process at once: refused.
    let mut c = agent.connect();
    let mut s = spawn_msg(&["true"]);
    s.extra.release = true;
    c.send(&Message::Spawn(s));
    let msg = expect_error(c.recv(), ErrorKind::BadRequest);
    assert!(msg.contains("release without detach"), "{msg}");
}
