//! The harness of the agent's integration tests: the built binary in
//! native mode (`hearth-init agent --unix PATH`) on a temporary socket,
//! and a blocking client speaking the protocol with
//! `hearth-agent-protocol`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_agent_protocol::{
    read_frame, ExitInfo, Frame, Hello, Message, Spawn, Started, MIN_VERSION, VERSION,
};
use serde_bytes::ByteBuf;

/// How long any single wait in a test may take.
pub const PATIENCE: Duration = Duration::from_secs(30);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hearth-agent-it-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running agent.
pub struct Agent {
    child: Child,
    pub sock: PathBuf,
    pub dir: Scratch,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts the agent with extra arguments; waits for AGENT-READY.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_under(&[], extra)
    }

    /// Starts the agent as the last argument of `wrapper` (e.g. `unshare
    /// --mount`), with extra arguments; waits for AGENT-READY.
    #[allow(dead_code)]
    pub fn start_under(wrapper: &[&str], extra: &[&str]) -> Self {
        let dir = Scratch::new("agent");
        let sock = dir.path("agent.sock");
        let agent = env!("CARGO_BIN_EXE_hearth-init");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(agent);
                c
            }
            None => Command::new(agent),
        };
        let mut child = command
            .arg("agent")
            .arg("--unix")
            .arg(&sock)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("AGENT-READY") {
                    let _ = ready_tx.send(());
                }
                sink.lock().unwrap().push(line);
            }
        });
        ready_rx.recv_timeout(PATIENCE).expect("no AGENT-READY");
        Self {
            child,
            sock,
            dir,
            lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The console lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a console line containing `text`.
    pub fn wait_line(&self, text: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.contains(text)) {
                return l;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "no line with {text:?}: {:?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A raw connection (no handshake).
    pub fn raw(&self) -> UnixStream {
        let s = UnixStream::connect(&self.sock).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s
    }

    /// A raw client (no handshake).
    pub fn raw_client(&self) -> Client {
        Client { s: self.raw() }
    }

    /// A connection after a successful handshake.
    pub fn connect(&self) -> Client {
        let mut c = Client { s: self.raw() };
        c.send(&hello(VERSION, MIN_VERSION));
        match c.recv() {
            Some(Message::HelloOk(ok)) => assert_eq!(ok.version, VERSION),
            other => panic!("handshake: {other:?}"),
        }
        c
    }

    /// One request and its whole answer (until the agent closes).
    pub fn ask(&self, request: &Message) -> Vec<Message> {
        let mut c = self.connect();
        c.send(request);
        c.recv_all()
    }

    /// One request answered by one message.
    pub fn ask_one(&self, request: &Message) -> Message {
        let mut answer = self.ask(request);
        assert_eq!(answer.len(), 1, "{answer:?}");
        answer.remove(0)
    }

    /// The agent's peak resident set (VmHWM), KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        status_field(self.pid(), "VmHWM:")
    }

    /// CPU time the agent used so far (user + system), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command (which ends with the last ')').
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 here.
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// The agent's resident set now (VmRSS), KiB.
    pub fn vm_rss_kib(&self) -> u64 {
        status_field(self.pid(), "VmRSS:")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub fn hello(version: u32, min_version: u32) -> Message {
    Message::Hello(Hello {
        version,
        min_version,
        client: "hearth-init tests".into(),
    })
}

/// A blocking client.
pub struct Client {
    pub s: UnixStream,
}

impl Client {
    pub fn send(&mut self, m: &Message) {
        self.s.write_all(&m.encode()).unwrap();
    }

    /// Writes raw bytes (errors ignored: the agent may have closed).
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes)
    }

    /// The next frame, `None` at the end of the stream.
    pub fn frame(&mut self) -> Option<Frame> {
        read_frame(&mut self.s).unwrap()
    }

    /// The next message, `None` at the end of the stream.
    pub fn recv(&mut self) -> Option<Message> {
        let f = self.frame()?;
        Some(Message::decode(&f).unwrap())
    }

    /// Everything until the agent closes.
    pub fn recv_all(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(m) = self.recv() {
            out.push(m);
        }
        out
    }

    /// Whether the agent closed (EOF), within the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0))
    }

    pub fn started(&mut self) -> Started {
        match self.recv() {
            Some(Message::Started(s)) => s,
            other => panic!("expected STARTED, got {other:?}"),
        }
    }

    /// Reads stdout, stderr and the exit of a process stream.
    pub fn collect(&mut self) -> Output {
        let mut out = Output::default();
        loop {
            match self.recv() {
                Some(Message::Stdout(b)) => out.stdout.extend_from_slice(&b),
                Some(Message::Stderr(b)) => out.stderr.extend_from_slice(&b),
                Some(Message::OutputDropped(n)) => out.dropped += n,
                Some(Message::Exit(e)) => {
                    out.exit = Some(e);
                    assert!(self.recv().is_none(), "frames after EXIT");
                    return out;
                }
                other => panic!("in a process stream: {other:?}"),
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub dropped: u64,
    pub exit: Option<ExitInfo>,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn code(&self) -> Option<i32> {
        self.exit.and_then(|e| e.code)
    }
}

pub fn b(s: &str) -> ByteBuf {
    ByteBuf::from(s.as_bytes().to_vec())
}

pub fn bp(p: &Path) -> ByteBuf {
    use std::os::unix::ffi::OsStrExt;
    ByteBuf::from(p.as_os_str().as_bytes().to_vec())
}

pub fn spawn_msg(argv: &[&str]) -> Spawn {
    Spawn {
        argv: argv.iter().map(|a| b(a)).collect(),
        ..Spawn::default()
    }
}

/// Spawns and reads the process's whole output.
pub fn run(agent: &Agent, spawn: Spawn) -> Output {
    let mut c = agent.connect();
    c.send(&Message::Spawn(spawn));
    c.started();
    c.collect()
}

/// A shell command that waits until `go` exists. A detached process's
/// output is kept for an ATTACH only once the agent has seen its spawning
/// client go: a test makes `go` after that, however slow the machine.
pub fn wait_for_file(go: &Path) -> String {
    format!("until [ -e '{}' ]; do sleep 0.05; done", go.display())
}

/// Waits until `cond` holds.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}
