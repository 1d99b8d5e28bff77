//! One container process (the task's init, or an exec): its state, its
//! stdio between containerd's FIFOs (or `file://` logs) and the agent's
//! streams, and its exit.
//!
//! Every process is started detached in the guest: its stdio travels on
//! the connection that started (or attached to) it, and the process
//! outlives that connection, so a checkpoint restored in another VM can
//! attach to it again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use hearth::{AgentClient, Process, ProcessOutput, ProcessStdin};

use crate::spec::ProcessSpec;

/// How long an exit waits for its output to reach containerd.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// Where a process's stdio goes (containerd's paths).
#[derive(Clone, Debug, Default)]
pub struct Stdio {
    /// stdin FIFO ("" for none).
    pub stdin: String,
    /// stdout FIFO or `file://` URI ("" for none).
    pub stdout: String,
    /// stderr, likewise.
    pub stderr: String,
    /// On a terminal (stderr then merges into stdout).
    pub terminal: bool,
}

/// Where a process is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Created, not started.
    Created,
    /// Running in the guest.
    Running,
    /// Ended.
    Stopped,
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// containerd's status: the code, or 128 + the signal.
    pub status: u32,
    /// When.
    pub at: SystemTime,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// The agent's id for it.
    agent_id: Option<u64>,
    /// Its pid in the guest.
    guest_pid: i32,
    exit: Option<Exit>,
    /// The connection's handle (signals go through the agent client;
    /// this one resizes the terminal).
    handle: Option<Arc<Process>>,
}

/// A container process.
#[derive(Debug)]
pub struct Proc {
    /// "" for the task's init.
    pub exec_id: String,
    /// Its stdio.
    pub stdio: Stdio,
    /// What to run (`None` for a process restored from a checkpoint).
    pub spec: Option<ProcessSpec>,
    state: Mutex<State>,
    changed: Condvar,
    /// Its stdin, shared by the pump and CloseIO.
    stdin: Arc<Mutex<Option<ProcessStdin>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Called once with the exit of a process.
pub type OnExit = Box<dyn FnOnce(&Proc, Exit) + Send>;

impl Proc {
    /// A process not started yet.
    pub fn new(exec_id: &str, stdio: Stdio, spec: Option<ProcessSpec>) -> Arc<Self> {
        Arc::new(Self {
            exec_id: exec_id.to_string(),
            stdio,
            spec,
            state: Mutex::new(State {
                phase: Phase::Created,
                agent_id: None,
                guest_pid: 0,
                exit: None,
                handle: None,
            }),
            changed: Condvar::new(),
            stdin: Arc::new(Mutex::new(None)),
        })
    }

    /// Its phase.
    pub fn phase(&self) -> Phase {
        lock(&self.state).phase
    }

    /// Its exit, once it ended.
    pub fn exit(&self) -> Option<Exit> {
        lock(&self.state).exit
    }

    /// The agent's id for it, once started.
    pub fn agent_id(&self) -> Option<u64> {
        lock(&self.state).agent_id
    }

    /// Its guest pid (0 before it starts).
    pub fn guest_pid(&self) -> i32 {
        lock(&self.state).guest_pid
    }

    /// Starts it in the guest (spawn), wiring its stdio.
    pub fn start(self: &Arc<Self>, agent: &AgentClient, on_exit: OnExit) -> Result<()> {
        let spec = self.spec.as_ref().context("the process has no spec")?;
        if self.phase() != Phase::Created {
            bail!("process {:?} was started already", self.exec_id);
        }
        let command = spec.command(!self.stdio.stdin.is_empty())?;
        let process = agent
            .spawn(&command)
            .context("starting the process in the guest")?;
        self.run(process, on_exit)
    }

    /// Attaches to process `agent_id` (running in a restored VM), wiring
    /// its stdio; `had_stdin`: it was started with stdin (else the new
    /// stdin is not connected: the agent would end the attachment at the
    /// first write).
    pub fn attach(
        self: &Arc<Self>,
        agent: &AgentClient,
        agent_id: u64,
        had_stdin: bool,
        on_exit: OnExit,
    ) -> Result<()> {
        let process = if self.stdio.stdin.is_empty() || !had_stdin {
            agent.attach(agent_id)
        } else {
            agent.attach_with_stdin(agent_id)
        }
        .with_context(|| format!("attaching to guest process {agent_id}"))?;
        self.run(process, on_exit)
    }

    fn run(self: &Arc<Self>, mut process: Process, on_exit: OnExit) -> Result<()> {
        let (out, err) = (self.stdio.stdout.clone(), self.stdio.stderr.clone());
        let (done_tx, done_rx) = mpsc::channel();
        let mut pumps = 0;
        for (stream, sink) in [(process.take_stdout(), out), (process.take_stderr(), err)] {
            if let Some(stream) = stream {
                pumps += 1;
                spawn_output_pump(stream, sink, done_tx.clone())?;
            }
        }
        if let Some(stdin) = process.take_stdin() {
            *lock(&self.stdin) = Some(stdin);
            spawn_input_pump(&self.stdio.stdin, self.stdin.clone())?;
        }
        let process = Arc::new(process);
        {
            let mut s = lock(&self.state);
            s.phase = Phase::Running;
            s.agent_id = Some(process.id());
            s.guest_pid = process.pid();
            s.handle = Some(process.clone());
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("shim-wait".into())
            .spawn(move || {
                let status = match process.wait() {
                    Ok(s) => u32::try_from(s.shell_code()).unwrap_or(255),
                    Err(e) => {
                        log::warn!("process {:?}: lost ({e})", me.exec_id);
                        255
                    }
                };
                // The output first: containerd's client reads it to its
                // end before it reports the exit.
                for _ in 0..pumps {
                    if done_rx.recv_timeout(OUTPUT_DRAIN).is_err() {
                        log::warn!("process {:?}: output not drained in {OUTPUT_DRAIN:?}", me.exec_id);
                        break;
                    }
                }
                if let Some(exit) = me.set_exit(status) {
                    on_exit(&me, exit);
                }
            })?;
        Ok(())
    }

    /// Records the exit (the first one wins); `None` if it had ended.
    pub fn set_exit(&self, status: u32) -> Option<Exit> {
        let mut s = lock(&self.state);
        if s.exit.is_some() {
            return None;
        }
        let exit = Exit {
            status,
            at: SystemTime::now(),
        };
        s.exit = Some(exit);
        s.phase = Phase::Stopped;
        s.handle = None;
        drop(s);
        lock(&self.stdin).take();
        self.changed.notify_all();
        Some(exit)
    }

    /// Waits for the exit.
    pub fn wait(&self) -> Exit {
        let mut s = lock(&self.state);
        loop {
            if let Some(e) = s.exit {
                return e;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Closes its stdin (the process reads end of file).
    pub fn close_stdin(&self) {
        if let Some(stdin) = lock(&self.stdin).take() {
            let _ = stdin.close();
        }
    }

    /// Resizes its terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let handle = lock(&self.state).handle.clone();
        match handle {
            Some(h) => h.resize(rows, cols).context("resizing the terminal"),
            None => bail!("the process is not running"),
        }
    }
}

fn open_output(uri: &str) -> Option<Result<File>> {
    if uri.is_empty() {
        return None;
    }
    Some(if let Some(path) = uri.strip_prefix("file://") {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {path}"))
    } else if uri.contains("://") {
        Err(anyhow::anyhow!(
            "stdio {uri:?}: only FIFOs and file:// are supported"
        ))
    } else {
        // A FIFO: blocks until containerd's side has it open.
        OpenOptions::new()
            .write(true)
            .open(uri)
            .with_context(|| format!("opening {uri}"))
    })
}

fn spawn_output_pump(mut stream: ProcessOutput, uri: String, done: mpsc::Sender<()>) -> Result<()> {
    std::thread::Builder::new()
        .name("shim-out".into())
        .spawn(move || {
            let mut sink = match open_output(&uri) {
                Some(Ok(f)) => Some(f),
                Some(Err(e)) => {
                    log::warn!("output: {e:#}");
                    None
                }
                None => None,
            };
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Some(f) = &mut sink {
                            if f.write_all(&buf[..n]).is_err() {
                                // Reader gone: keep draining so the guest
                                // process is not stalled.
                                sink = None;
                            }
                        }
                    }
                }
            }
            drop(sink);
            let _ = done.send(());
        })?;
    Ok(())
}

fn spawn_input_pump(fifo: &str, stdin: Arc<Mutex<Option<ProcessStdin>>>) -> Result<()> {
    let fifo = fifo.to_string();
    std::thread::Builder::new()
        .name("shim-in".into())
        .spawn(move || {
            let mut src = match File::open(&fifo) {
                Ok(f) => f,
                Err(e) => {
                    log::warn!("stdin {fifo}: {e}");
                    return;
                }
            };
            let mut buf = vec![0u8; 32 << 10];
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut guard = lock(&stdin);
                let Some(w) = guard.as_mut() else { return };
                if w.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            // End of the FIFO: the process reads end of file.
            if let Some(w) = lock(&stdin).take() {
                let _ = w.close();
            }
        })?;
    Ok(())
}
