//! Turning a SPAWN request into what execve(2) needs, and the small
//! encodings around a starting child. Pure, unit tested on the host.
//!
//! The PATH search costs the agent no system call: the child tries each
//! candidate with execve itself, like execvp(3) (ENOENT and ENOTDIR go on
//! to the next, EACCES is remembered, anything else stops).

use std::ffi::CString;

use hearth_agent_protocol::{ErrorInfo, ErrorKind, Spawn};
use serde_bytes::ByteBuf;

use super::errors;

/// PATH when the environment has none (docs/AGENT.md).
pub const DEFAULT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// A SPAWN ready for fork and execve: every string NUL-terminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The files to try, in order (argv[0] itself when it has a `/`).
    pub candidates: Vec<CString>,
    /// The arguments, argv[0] as the client gave it.
    pub argv: Vec<CString>,
    /// The environment.
    pub envp: Vec<CString>,
    /// The working directory.
    pub cwd: CString,
    /// argv[0] as text, for messages.
    pub name: String,
    /// The directory to chroot into first, if any.
    pub root: Option<CString>,
    /// Resource limits to set: (resource, soft, hard).
    pub rlimits: Vec<(u32, u64, u64)>,
}

/// Prepares `spawn`. `agent_env` is the agent's own environment, used
/// when the request gives none (plus a default PATH if it has none).
pub fn prepare(spawn: &Spawn, agent_env: &[CString]) -> Result<Command, ErrorInfo> {
    let argv0 = spawn
        .argv
        .first()
        .ok_or_else(|| invalid("spawn: empty argv, nothing to execute".into()))?;
    let name = errors::show(argv0);
    if argv0.is_empty() {
        return Err(errors::os("exec", b"", libc::ENOENT));
    }
    let argv = to_cstrings(&spawn.argv, "argument")?;
    let envp = if spawn.env.is_empty() {
        let mut env = agent_env.to_vec();
        if !env.iter().any(|e| e.as_bytes().starts_with(b"PATH=")) {
            env.push(to_cstring(
                format!("PATH={DEFAULT_PATH}").as_bytes(),
                "environment entry",
            )?);
        }
        env
    } else {
        to_cstrings(&spawn.env, "environment entry")?
    };
    let cwd = match &spawn.cwd {
        Some(cwd) if !cwd.is_empty() => cwd.as_slice(),
        _ => b"/",
    };
    let cwd = to_cstring(cwd, "working directory")?;
    let path = search_path(&envp);
    let candidates = candidates(argv0, path)
        .into_iter()
        .map(|c| to_cstring(&c, "program path"))
        .collect::<Result<Vec<_>, _>>()?;
    if candidates.is_empty() {
        return Err(errors::os("exec", argv0, libc::ENOENT));
    }
    let root = match &spawn.extra.root {
        Some(root) if !root.is_empty() => Some(to_cstring(root, "root directory")?),
        Some(_) => return Err(invalid("spawn: empty root directory".into())),
        None => None,
    };
    let rlimits = spawn
        .extra
        .rlimits
        .iter()
        .map(|r| {
            if r.soft > r.hard {
                Err(invalid(format!(
                    "spawn: rlimit {}: soft limit {} above hard limit {}",
                    r.resource, r.soft, r.hard
                )))
            } else {
                Ok((r.resource, r.soft, r.hard))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Command {
        candidates,
        argv,
        envp,
        cwd,
        name,
        root,
        rlimits,
    })
}

fn invalid(message: String) -> ErrorInfo {
    ErrorInfo {
        kind: ErrorKind::InvalidInput,
        errno: libc::EINVAL,
        message,
    }
}

/// The PATH to search: the first `PATH=` of `env`, else [`DEFAULT_PATH`].
pub fn search_path(env: &[CString]) -> &[u8] {
    env.iter()
        .find_map(|entry| entry.as_bytes().strip_prefix(b"PATH="))
        .unwrap_or(DEFAULT_PATH.as_bytes())
}

/// The files execvp(3) would try for `name`: `name` itself if it has a
/// `/`, else `dir/name` for each non-empty directory of `path` (an empty
/// component is not taken as the current directory).
pub fn candidates(name: &[u8], path: &[u8]) -> Vec<Vec<u8>> {
    if name.contains(&b'/') {
        return vec![name.to_vec()];
    }
    path.split(|&b| b == b':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| {
            let mut candidate = dir.to_vec();
            if !candidate.ends_with(b"/") {
                candidate.push(b'/');
            }
            candidate.extend_from_slice(name);
            candidate
        })
        .collect()
}

/// One C string; `what` names it in the error (an interior NUL).
pub fn to_cstring(bytes: &[u8], what: &str) -> Result<CString, ErrorInfo> {
    CString::new(bytes).map_err(|_| {
        invalid(format!(
            "spawn: {what} {:?} contains a NUL byte",
            errors::show(bytes)
        ))
    })
}

/// C strings for each item.
pub fn to_cstrings(items: &[ByteBuf], what: &str) -> Result<Vec<CString>, ErrorInfo> {
    items.iter().map(|item| to_cstring(item, what)).collect()
}

/// The step of starting a child that failed, reported through its status
/// pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Setting up fds 0-2.
    Stdio = 1,
    /// setsid / setpgid / the controlling terminal.
    Session = 2,
    /// setgroups.
    Groups = 3,
    /// setgid.
    Gid = 4,
    /// setuid.
    Uid = 5,
    /// chdir to the working directory.
    Chdir = 6,
    /// execve.
    Exec = 7,
    /// chroot to the root directory.
    Root = 8,
    /// setrlimit.
    Rlimit = 9,
}

/// The bytes a child writes to its status pipe when `stage` failed with
/// `errno`: the stage then the errno, native-endian `i32`s (one write of
/// 8 bytes, atomic on a pipe).
pub fn encode_failure(stage: Stage, errno: i32) -> [u8; 8] {
    let mut out = [0u8; 8];
    let (head, tail) = out.split_at_mut(4);
    head.copy_from_slice(&(stage as i32).to_ne_bytes());
    tail.copy_from_slice(&errno.to_ne_bytes());
    out
}

/// Decodes [`encode_failure`]'s bytes; `None` for anything else.
pub fn decode_failure(bytes: &[u8]) -> Option<(Stage, i32)> {
    let (stage, errno) = bytes.split_first_chunk::<4>()?;
    let errno: [u8; 4] = errno.try_into().ok()?;
    let stage = match i32::from_ne_bytes(*stage) {
        1 => Stage::Stdio,
        2 => Stage::Session,
        3 => Stage::Groups,
        4 => Stage::Gid,
        5 => Stage::Uid,
        6 => Stage::Chdir,
        7 => Stage::Exec,
        8 => Stage::Root,
        9 => Stage::Rlimit,
        _ => return None,
    };
    Some((stage, i32::from_ne_bytes(errno)))
}

/// The client's error for a child that failed at `stage`.
pub fn failure(cmd: &Command, user: Option<(u32, u32)>, stage: Stage, errno: i32) -> ErrorInfo {
    let (uid, gid) = user.unwrap_or((0, 0));
    match stage {
        Stage::Stdio => errors::os("spawn", format!("{}: stdio", cmd.name).as_bytes(), errno),
        Stage::Session => errors::os("spawn", format!("{}: session", cmd.name).as_bytes(), errno),
        Stage::Groups => errors::os("setgroups", b"[]", errno),
        Stage::Gid => errors::os("setgid", gid.to_string().as_bytes(), errno),
        Stage::Uid => errors::os("setuid", uid.to_string().as_bytes(), errno),
        Stage::Chdir => errors::os("chdir", cmd.cwd.as_bytes(), errno),
        Stage::Exec => errors::os("exec", cmd.name.as_bytes(), errno),
        Stage::Root => errors::os(
            "chroot",
            cmd.root.as_ref().map_or(&b""[..], |r| r.as_bytes()),
            errno,
        ),
        Stage::Rlimit => errors::os("setrlimit", cmd.name.as_bytes(), errno),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bufs(items: &[&str]) -> Vec<ByteBuf> {
        items
            .iter()
            .map(|s| ByteBuf::from(s.as_bytes().to_vec()))
            .collect()
    }

    fn spawn(argv: &[&str]) -> Spawn {
        Spawn {
            argv: bufs(argv),
            ..Spawn::default()
        }
    }

    #[test]
    fn candidates_follow_path_in_order() {
        assert_eq!(
            candidates(b"x", b"/bin:/usr/bin/::/sbin"),
            [b"/bin/x".to_vec(), b"/usr/bin/x".to_vec(), b"/sbin/x".to_vec()]
        );
        assert_eq!(candidates(b"./x", b"/bin"), [b"./x".to_vec()]);
        assert_eq!(candidates(b"/no/such", b"/bin"), [b"/no/such".to_vec()]);
        assert!(candidates(b"x", b"").is_empty());
    }

    #[test]
    fn prepare_fills_defaults_from_the_agent_env() {
        let agent_env = [c"HOME=/".to_owned()];
        let cmd = prepare(&spawn(&["uname", "-a"]), &agent_env).unwrap();
        assert_eq!(cmd.candidates.first().unwrap().as_bytes(), b"/usr/sbin/uname");
        assert_eq!(cmd.candidates.len(), 4);
        assert_eq!(cmd.argv, [c"uname".to_owned(), c"-a".to_owned()]);
        assert_eq!(
            cmd.envp,
            [
                c"HOME=/".to_owned(),
                c"PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_owned()
            ]
        );
        assert_eq!(cmd.cwd.as_bytes(), b"/");
        assert_eq!(cmd.name, "uname");
        // The agent's own PATH is kept and searched.
        let agent_env = [c"PATH=/opt".to_owned()];
        let cmd = prepare(&spawn(&["x"]), &agent_env).unwrap();
        assert_eq!(cmd.candidates, [c"/opt/x".to_owned()]);
        assert_eq!(cmd.envp, agent_env);
    }

    #[test]
    fn prepare_uses_request_env_and_cwd() {
        let mut s = spawn(&["tool"]);
        s.env = bufs(&["A=1", "PATH=/opt/bin:/bin"]);
        s.cwd = Some(ByteBuf::from(b"/tmp".to_vec()));
        let cmd = prepare(&s, &[c"PATH=/ignored".to_owned()]).unwrap();
        assert_eq!(
            cmd.candidates,
            [c"/opt/bin/tool".to_owned(), c"/bin/tool".to_owned()]
        );
        assert_eq!(cmd.envp, [c"A=1".to_owned(), c"PATH=/opt/bin:/bin".to_owned()]);
        assert_eq!(cmd.cwd.as_bytes(), b"/tmp");
    }

    #[test]
    fn prepare_takes_root_and_rlimits() {
        let mut s = spawn(&["sh"]);
        s.extra.root = Some(ByteBuf::from(b"/mnt/task".to_vec()));
        s.extra.rlimits = vec![hearth_agent_protocol::Rlimit {
            resource: 7,
            soft: 64,
            hard: 128,
        }];
        let cmd = prepare(&s, &[]).unwrap();
        assert_eq!(cmd.root.as_deref(), Some(c"/mnt/task"));
        assert_eq!(cmd.rlimits.len(), 1);
        assert_eq!(cmd.rlimits, [(7, 64, 128)]);
        let e = failure(&cmd, None, Stage::Root, libc::ENOENT);
        assert_eq!(e.message, "chroot /mnt/task: No such file or directory");
        s.extra.rlimits[0].soft = 256;
        let e = prepare(&s, &[]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        s.extra.rlimits.clear();
        s.extra.root = Some(ByteBuf::new());
        assert_eq!(prepare(&s, &[]).unwrap_err().kind, ErrorKind::InvalidInput);
    }

    #[test]
    fn prepare_errors() {
        let e = prepare(&Spawn::default(), &[]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert_eq!(e.message, "spawn: empty argv, nothing to execute");
        let e = prepare(&spawn(&["/bin/sh", "a\0b"]), &[]).unwrap_err();
        assert_eq!(e.message, "spawn: argument \"a\\0b\" contains a NUL byte");
        let mut s = spawn(&["x"]);
        s.env = bufs(&["PATH="]);
        let e = prepare(&s, &[]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(e.message, "exec x: No such file or directory");
    }

    #[test]
    fn failure_round_trip_and_messages() {
        for stage in [
            Stage::Stdio,
            Stage::Session,
            Stage::Groups,
            Stage::Gid,
            Stage::Uid,
            Stage::Chdir,
            Stage::Exec,
            Stage::Root,
            Stage::Rlimit,
        ] {
            assert_eq!(
                decode_failure(&encode_failure(stage, libc::ENOENT)),
                Some((stage, libc::ENOENT))
            );
        }
        assert_eq!(decode_failure(&[]), None);
        assert_eq!(decode_failure(&[10, 0, 0, 0, 2, 0, 0, 0]), None);
        let mut s = spawn(&["frob"]);
        s.cwd = Some(ByteBuf::from(b"/gone".to_vec()));
        let cmd = prepare(&s, &[]).unwrap();
        let e = failure(&cmd, None, Stage::Exec, libc::ENOENT);
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::NotFound, "exec frob: No such file or directory")
        );
        let e = failure(&cmd, None, Stage::Chdir, libc::ENOENT);
        assert_eq!(e.message, "chdir /gone: No such file or directory");
        let e = failure(&cmd, Some((7, 8)), Stage::Uid, libc::EPERM);
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::PermissionDenied, "setuid 7: Operation not permitted")
        );
    }
}
