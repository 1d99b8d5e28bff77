//! `hearth exec` and `hearth cp`: the guest agent from another process,
//! through a running VM's vsock socket (docs/AGENT.md).

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use hearth::{AgentClient, Command, ProcessOutput, ProcessState};

/// Exit status of `hearth exec` when it fails itself (not the command).
pub const EXEC_FAILED: u8 = 125;

/// Where the agent is.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The VM's vsock socket (as given to `--vsock ...,uds=PATH`).
    #[arg(long, value_name = "PATH", required_unless_present = "unix")]
    pub vsock_uds: Option<PathBuf>,
    /// The agent's vsock port.
    #[arg(long, value_name = "N", default_value_t = hearth::DEFAULT_AGENT_PORT)]
    pub port: u32,
    /// An agent listening on a Unix socket directly (its native mode).
    #[arg(long, value_name = "PATH", hide = true)]
    pub unix: Option<PathBuf>,
}

impl AgentArgs {
    fn client(&self) -> AgentClient {
        match (&self.unix, &self.vsock_uds) {
            (Some(path), _) => AgentClient::unix(path),
            (None, Some(uds)) => AgentClient::vsock(uds, self.port),
            // clap requires one of them.
            (None, None) => AgentClient::unix(""),
        }
    }
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub agent: AgentArgs,
    /// KEY=VALUE for the command's environment. Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory in the guest.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Run as UID[:GID].
    #[arg(long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Kill the command's process group after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Run on a pseudo-terminal (this terminal goes raw).
    #[arg(long)]
    pub tty: bool,
    /// Start the command detached: print its id and exit 0.
    #[arg(long)]
    pub detach: bool,
    /// List the agent's processes: id, state, argv.
    #[arg(long, conflicts_with_all = ["detach", "attach", "signal"])]
    pub list: bool,
    /// Attach to detached process ID: stream its output, exit with its status.
    #[arg(long, value_name = "ID")]
    pub attach: Option<u64>,
    /// Send a signal (name or number) to process ID.
    #[arg(long, value_name = "ID:SIG")]
    pub signal: Option<String>,
    /// The command and its arguments (after --).
    #[arg(last = true, value_name = "ARGV")]
    pub argv: Vec<String>,
}

/// A signal by name (`TERM`, `SIGTERM`) or number.
pub fn parse_signal(s: &str) -> anyhow::Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        bail!("signal {n} is out of range (1-64)");
    }
    let name = s.trim_start_matches("SIG").to_ascii_uppercase();
    let n = match name.as_str() {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "WINCH" => libc::SIGWINCH,
        _ => bail!("unknown signal {s:?}"),
    };
    Ok(n)
}

fn parse_user(s: &str) -> anyhow::Result<(u32, u32)> {
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    let uid = u.parse().with_context(|| format!("bad uid in --user {s:?}"))?;
    let gid = g.parse().with_context(|| format!("bad gid in --user {s:?}"))?;
    Ok((uid, gid))
}

/// How a [`pump`] ended.
#[derive(Debug, PartialEq, Eq)]
enum PumpEnd {
    /// The source ended (or failed).
    Source,
    /// Writing failed.
    Sink,
}

/// Copies `from` to `to` until the end, flushing as it goes.
fn pump(mut from: impl Read, mut to: impl Write) -> PumpEnd {
    let mut buf = [0u8; 32 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return PumpEnd::Source,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                    return PumpEnd::Sink;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return PumpEnd::Source,
        }
    }
}

/// Copies one of the process's streams to ours. When ours is gone (`hearth
/// exec ... | head -1`), the process gets SIGPIPE, as it would writing to
/// a closed pipe here; otherwise it would run on, its output dropped, and
/// `hearth exec` would never end.
fn output_thread(
    out: Option<ProcessOutput>,
    stderr: bool,
    client: &AgentClient,
    id: u64,
) -> Option<std::thread::JoinHandle<()>> {
    let client = client.clone();
    out.map(|o| {
        std::thread::spawn(move || {
            let end = if stderr {
                pump(o, io::stderr())
            } else {
                pump(o, io::stdout())
            };
            if end == PumpEnd::Sink {
                // On a connection of its own: the process's stream may be
                // stalled behind its stdin.
                let _ = client.signal(id, libc::SIGPIPE);
            }
        })
    })
}

/// The local terminal in raw mode while it lives.
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enter() -> Self {
        let fd = io::stdin().as_raw_fd();
        // SAFETY: `termios` is plain old data; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd and termios pointer.
        if unsafe { libc::isatty(fd) } != 1 || unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return Self(None);
        }
        let saved = t;
        // SAFETY: `t` is a valid termios.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: a valid fd and termios pointer.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
        Self(Some(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = self.0 {
            // SAFETY: restores the attributes read in `enter`.
            unsafe { libc::tcsetattr(io::stdin().as_raw_fd(), libc::TCSANOW, &saved) };
        }
    }
}

fn terminal_size() -> Option<(u16, u16)> {
    // SAFETY: `winsize` is plain old data; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and winsize pointer for TIOCGWINSZ.
    let rc = unsafe { libc::ioctl(io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

fn state_text(state: &ProcessState) -> String {
    match state {
        ProcessState::Running => "running".into(),
        ProcessState::Exited(e) => hearth::ExitStatus::from(*e).to_string().replace(' ', "-"),
    }
}

/// Runs `hearth exec`.
pub fn exec(args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let client = args.agent.client();
    if args.list {
        let mut out = io::stdout().lock();
        for p in client.list()? {
            let argv: Vec<String> = p
                .argv
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            writeln!(out, "{} {} {}", p.id, state_text(&p.state), argv.join(" "))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(spec) = &args.signal {
        let (id, sig) = spec
            .split_once(':')
            .ok_or_else(|| anyhow!("--signal wants ID:SIG, got {spec:?}"))?;
        let id = id.parse().with_context(|| format!("bad process id {id:?}"))?;
        client.signal(id, parse_signal(sig)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut process = match args.attach {
        Some(id) => client.attach(id)?,
        None => {
            if args.argv.is_empty() {
                bail!("no command given (hearth exec ... -- ARGV...)");
            }
            let mut cmd = Command::new(args.argv.iter().map(String::as_bytes))
                .detach(args.detach)
                .stdin(!args.detach);
            for kv in &args.env {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--env wants KEY=VALUE, got {kv:?}"))?;
                cmd = cmd.env(k, v);
            }
            if let Some(dir) = &args.cwd {
                cmd = cmd.cwd(dir);
            }
            if let Some(user) = &args.user {
                let (uid, gid) = parse_user(user)?;
                cmd = cmd.user(uid, gid);
            }
            if let Some(secs) = args.timeout {
                match Duration::try_from_secs_f64(secs) {
                    Ok(t) if !t.is_zero() => cmd = cmd.timeout(t),
                    _ => bail!("--timeout must be a positive number of seconds, got {secs}"),
                }
            }
            if args.tty {
                let (rows, cols) = terminal_size().unwrap_or((24, 80));
                cmd = cmd.tty(rows, cols);
            }
            if args.detach {
                // The agent lets go at once: all the output and the exit
                // are kept for --attach.
                let started = client.start_detached(&cmd)?;
                writeln!(io::stdout(), "{}", started.id)?;
                return Ok(ExitCode::SUCCESS);
            }
            client.spawn(&cmd)?
        }
    };
    let _raw = args.tty.then(RawTerminal::enter);
    let outs = [
        output_thread(process.take_stdout(), false, &client, process.id()),
        output_thread(process.take_stderr(), true, &client, process.id()),
    ];
    if let Some(mut stdin) = process.take_stdin() {
        std::thread::spawn(move || {
            pump(io::stdin(), &mut stdin);
            let _ = stdin.close();
        });
    }
    let status = if args.tty {
        watch_size_while(&process)?
    } else {
        process.wait()?
    };
    for t in outs.into_iter().flatten() {
        let _ = t.join();
    }
    let code = status.shell_code();
    Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(EXEC_FAILED)))
}

/// Waits for `process`, passing terminal size changes on.
fn watch_size_while(process: &hearth::Process) -> anyhow::Result<hearth::ExitStatus> {
    let mut last = terminal_size();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| -> anyhow::Result<hearth::ExitStatus> {
        let p = process;
        s.spawn(move || loop {
            if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                return;
            }
            let now = terminal_size();
            if now != last {
                if let Some((rows, cols)) = now {
                    let _ = p.resize(rows, cols);
                }
                last = now;
            }
        });
        let status = p.wait();
        let _ = tx.send(());
        Ok(status?)
    })
}

#[derive(Debug, Args)]
pub struct CpArgs {
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Create missing parent directories in the guest.
    #[arg(long)]
    pub parents: bool,
    /// The source: a local path, `-` (stdin), or `guest:PATH`.
    #[arg(value_name = "SRC")]
    pub src: String,
    /// The destination: a local path, `-` (stdout), or `guest:PATH`.
    #[arg(value_name = "DST")]
    pub dst: String,
}

const GUEST: &str = "guest:";

/// Where a download goes: into DST's directory under the guest file's
/// name when DST is a directory; straight into DST when it is a device,
/// pipe or socket (`/dev/null`, a FIFO: a rename would replace the node);
/// else into a temporary name renamed over DST when complete.
fn download_to(client: &AgentClient, guest: &str, dst: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(dst).ok();
    if meta.as_ref().is_some_and(|m| m.is_dir()) {
        let name = Path::new(guest)
            .file_name()
            .with_context(|| format!("guest path {guest} names no file"))?;
        return download_to(client, guest, &dst.join(name));
    }
    if meta.as_ref().is_some_and(|m| !m.is_file()) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dst)
            .with_context(|| format!("cannot open {}", dst.display()))?;
        let mut w = io::BufWriter::new(f);
        client.download(guest, &mut w)?;
        return w
            .flush()
            .with_context(|| format!("cannot write {}", dst.display()));
    }
    let mut tmp = dst.as_os_str().to_owned();
    tmp.push(format!(".hearth-cp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut w = io::BufWriter::new(f);
    let result = client
        .download(guest, &mut w)
        .map_err(anyhow::Error::from)
        .and_then(|_| {
            w.flush()
                .with_context(|| format!("cannot write {}", tmp.display()))
        });
    drop(w);
    match result {
        Ok(_) => std::fs::rename(&tmp, dst).with_context(|| format!("cannot rename to {}", dst.display())),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Runs `hearth cp`: one side is `guest:PATH`, the other local.
pub fn cp(args: &CpArgs) -> anyhow::Result<ExitCode> {
    let client = args.agent.client();
    match (args.src.strip_prefix(GUEST), args.dst.strip_prefix(GUEST)) {
        (None, Some(guest)) => {
            let (reader, mode): (Box<dyn Read>, u32) = if args.src == "-" {
                (Box::new(io::stdin()), 0o644)
            } else {
                let f =
                    std::fs::File::open(&args.src).with_context(|| format!("cannot open {}", args.src))?;
                let mode = std::os::unix::fs::PermissionsExt::mode(&f.metadata()?.permissions()) & 0o7777;
                (Box::new(f), mode)
            };
            client.upload(guest, mode, args.parents, reader)?;
        }
        (Some(guest), None) => {
            if args.dst == "-" {
                let mut out = io::stdout().lock();
                client.download(guest, &mut out)?;
                out.flush().context("cannot write to stdout")?;
            } else {
                download_to(&client, guest, Path::new(&args.dst))?;
            }
        }
        _ => bail!("exactly one of SRC and DST must be guest:PATH"),
    }
    Ok(ExitCode::SUCCESS)
}
