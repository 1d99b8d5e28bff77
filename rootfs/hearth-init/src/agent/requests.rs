//! The request that follows the handshake (docs/AGENT.md, "Requests"):
//! answered at once (LIST, SIGNAL, STAT, MKDIR, REMOVE, RENAME, CHMOD,
//! SYNC, REFRESH, MOUNT), or the start of an exchange the connection's state then
//! carries (SPAWN, ATTACH, WAIT, UPLOAD, DOWNLOAD, LIST_DIR). The VM
//! generation is checked first.

use std::time::{Duration, Instant};

use hearth_agent_protocol::{ErrorInfo, ErrorKind, Message, ProcessInfo, Refreshed, Spawn};
use serde_bytes::ByteBuf;

use super::command;
use super::errors;
use super::files;
use super::process::{ConnId, Phase, Process, MAX_RUNNING};
use super::reactor::Agent;
use super::session::{Conn, State};
use super::spawn;
use super::transfer::{Download, ListDir, Upload};

/// argv bytes kept per process for LIST.
const ARGV_KEPT: usize = 4 << 10;
/// The PROCESSES frame's budget for all argvs (it must fit in a frame).
const LIST_ARGV_BUDGET: usize = 160 << 10;

/// The first arguments of `argv`, at most `budget` bytes in all (the last
/// one kept may be cut).
pub fn trim_argv(argv: &[ByteBuf], budget: usize) -> Vec<ByteBuf> {
    let mut left = budget;
    let mut out = Vec::new();
    for arg in argv {
        if left == 0 {
            break;
        }
        let take = arg.len().min(left);
        out.push(ByteBuf::from(arg.get(..take).unwrap_or_default().to_vec()));
        left -= take;
    }
    out
}

/// LIST's entries, argvs trimmed so that the frame stays in bounds.
pub fn list(entries: Vec<ProcessInfo>) -> Vec<ProcessInfo> {
    let per = (LIST_ARGV_BUDGET / entries.len().max(1)).min(ARGV_KEPT);
    entries
        .into_iter()
        .map(|mut e| {
            e.argv = trim_argv(&e.argv, per);
            e
        })
        .collect()
}

fn no_such_process(op: &str, id: u64) -> ErrorInfo {
    errors::os(op, format!("process {id}").as_bytes(), libc::ESRCH)
}

impl Agent {
    /// Answers `request` (a request message) on `conn`.
    pub(super) fn request(&mut self, cid: ConnId, conn: &mut Conn, request: Message, now: Instant) {
        self.check_generation(now);
        let answer = match request {
            Message::Spawn(s) => return self.spawn(cid, conn, s, now),
            Message::Attach(a) => return self.attach(cid, conn, a.id, now),
            Message::Wait(w) => match self.procs.get(w.id) {
                None => Err(no_such_process("wait", w.id)),
                Some(p) => match p.exit() {
                    Some(info) => Ok(Message::Exit(info)),
                    None => {
                        conn.state = State::Wait(w.id);
                        return;
                    }
                },
            },
            Message::List => Ok(Message::Processes(list(self.procs.list()))),
            Message::Signal(s) => match self.procs.get(s.id) {
                None => Err(no_such_process("signal", s.id)),
                Some(p) => p
                    .signal(s.signal)
                    .map(|()| Message::Ok)
                    .map_err(|e| errors::io("signal", format!("process {}", s.id).as_bytes(), &e)),
            },
            Message::Upload(u) => {
                self.upload_seq += 1;
                match Upload::start(&u.path, u.mode, u.parents, self.upload_seq) {
                    Ok(up) => {
                        conn.state = State::Upload(Box::new(up));
                        return;
                    }
                    Err(e) => Err(e),
                }
            }
            Message::Download(d) => match Download::start(&d.path) {
                Ok((down, info)) => {
                    conn.out.push(&Message::FileInfo(info));
                    conn.state = State::Download(Box::new(down));
                    return;
                }
                Err(e) => Err(e),
            },
            Message::ListDir(d) => match ListDir::start(&d.path) {
                Ok(l) => {
                    conn.state = State::ListDir(Box::new(l));
                    return;
                }
                Err(e) => Err(e),
            },
            Message::Stat(s) => files::stat(&s.path).map(Message::StatResult),
            Message::Mkdir(m) => {
                files::mkdir(&m.path, m.mode, m.parents, self.cfg.umask).map(|()| Message::Ok)
            }
            Message::Remove(r) => files::remove(&r.path, r.recursive).map(|()| Message::Ok),
            Message::Rename(r) => files::rename(&r.from, &r.to).map(|()| Message::Ok),
            Message::Chmod(c) => files::chmod(&c.path, c.mode).map(|()| Message::Ok),
            Message::Sync => {
                files::sync();
                Ok(Message::Ok)
            }
            Message::Mount(m) => super::mount::mount(&m).map(|()| Message::Ok),
            Message::Refresh => {
                let restored = self.watch.take_restored();
                if !restored {
                    // No new machine: still bring the clock up to date.
                    self.watch.sync_clock();
                }
                Ok(Message::Refreshed(Refreshed {
                    restored,
                    generation: self.watch.generation(),
                }))
            }
            other => Err(errors::bad_request(format!(
                "frame kind {:#04x} is not a request",
                other.to_frame().0
            ))),
        };
        match answer {
            Ok(m) => conn.finish(&m, now),
            Err(e) => conn.finish(&Message::Error(e), now),
        }
    }

    fn spawn(&mut self, cid: ConnId, conn: &mut Conn, s: Spawn, now: Instant) {
        if self.procs.running() >= MAX_RUNNING {
            let e = errors::plain(
                ErrorKind::TooManyProcesses,
                format!("spawn: the agent already runs {MAX_RUNNING} processes"),
            );
            return conn.finish(&Message::Error(e), now);
        }
        if s.extra.release && !s.detach {
            let e = errors::bad_request("spawn: release without detach would kill the process at once");
            return conn.finish(&Message::Error(e), now);
        }
        let cmd = match command::prepare(&s, &self.cfg.agent_env) {
            Ok(cmd) => cmd,
            Err(e) => return conn.finish(&Message::Error(e), now),
        };
        let req = spawn::Request {
            cmd: &cmd,
            user: s.user,
            tty: s.tty,
            stdin: s.stdin,
            nofile: self.cfg.nofile,
        };
        let child = match spawn::spawn(&req) {
            Ok(child) => child,
            Err(e) => return conn.finish(&Message::Error(e), now),
        };
        let id = self.procs.next_id();
        let mut p = Process::new(id, child, cmd, trim_argv(&s.argv, ARGV_KEPT), s.detach);
        p.release = s.extra.release;
        p.user = s.user.map(|u| (u.uid, u.gid));
        p.stdin_open = s.stdin;
        p.deadline = s
            .timeout_ms
            .and_then(|ms| now.checked_add(Duration::from_millis(ms)));
        p.client = Some(cid);
        self.procs.insert(p);
        conn.state = State::Process(id);
    }

    fn attach(&mut self, cid: ConnId, conn: &mut Conn, id: u64, now: Instant) {
        let error = match self.procs.get_mut(id) {
            None => Some(no_such_process("attach", id)),
            Some(p) if p.exit_sent => Some(no_such_process("attach", id)),
            Some(p) if p.client.is_some() => Some(errors::plain(
                ErrorKind::Other,
                format!("attach process {id}: another client is attached"),
            )),
            Some(p) if !p.detached => Some(errors::plain(
                ErrorKind::InvalidInput,
                format!("attach process {id}: it was not started detached"),
            )),
            Some(p) => {
                p.client = Some(cid);
                p.announced = false;
                None
            }
        };
        if let Some(e) = error {
            return conn.finish(&Message::Error(e), now);
        }
        self.procs.unkeep(id);
        conn.state = State::Process(id);
        // STARTED now, or once the exec is confirmed. The connection is
        // out of the map while it is handled: announce through it.
        if let Some(p) = self.procs.get_mut(id) {
            if !matches!(p.phase, Phase::Starting { .. }) {
                conn.out.push(&Message::Started(hearth_agent_protocol::Started {
                    id,
                    pid: p.pid,
                }));
                let dropped = p.ring.take_dropped();
                if dropped > 0 {
                    conn.out.push(&Message::OutputDropped(dropped));
                }
                p.announced = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_agent_protocol::{ProcessState, MAX_FRAME};

    fn b(s: &[u8]) -> ByteBuf {
        ByteBuf::from(s.to_vec())
    }

    #[test]
    fn argv_is_trimmed_to_a_budget() {
        let argv = vec![b(b"sh"), b(b"-c"), b(b"echo hello")];
        assert_eq!(trim_argv(&argv, 100), argv);
        assert_eq!(trim_argv(&argv, 6), vec![b(b"sh"), b(b"-c"), b(b"ec")]);
        assert_eq!(trim_argv(&argv, 2), vec![b(b"sh")]);
        assert!(trim_argv(&argv, 0).is_empty());
    }

    #[test]
    fn a_full_list_fits_in_a_frame() {
        let entry = ProcessInfo {
            id: u64::MAX,
            pid: i32::MAX,
            argv: vec![b(&[b'x'; 4096])],
            state: ProcessState::Running,
            detached: true,
            attached: false,
            tty: false,
            buffered: 1 << 20,
            dropped: u64::MAX,
        };
        let entries = vec![entry; MAX_RUNNING + 256];
        let (_, body) = Message::Processes(list(entries)).to_frame();
        assert!(body.len() < MAX_FRAME, "{}", body.len());
    }
}
