//! Turning an `Exec` request into what execve(2) needs, and the small
//! encodings around a child process. Pure functions (the file system is
//! reached through a probe the caller passes), unit tested on the host.

use std::ffi::CString;

use hearth_agent_protocol::Exec;

/// PATH when the request's environment has none.
pub const DEFAULT_PATH: &str = "/bin:/sbin:/usr/bin:/usr/sbin";

/// What a PATH candidate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A file we may execute.
    Executable,
    /// Something is there, but not executable (or a directory).
    NotExecutable,
    /// Nothing there.
    Missing,
}

/// An `Exec` ready for fork and execve: every string NUL-terminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The file to execute (argv[0] resolved through PATH).
    pub program: CString,
    /// The arguments, argv[0] as the client gave it.
    pub argv: Vec<CString>,
    /// The environment.
    pub envp: Vec<CString>,
    /// The working directory.
    pub cwd: CString,
    /// argv[0] as text, for messages.
    pub name: String,
}

/// Prepares `exec`. `probe` says what is at a path (for the PATH search).
/// The error is the message for the client.
pub fn prepare(exec: &Exec, probe: impl Fn(&[u8]) -> Probe) -> Result<Command, String> {
    let argv0 = exec.argv.first().ok_or("empty argv: nothing to execute")?;
    let name = String::from_utf8_lossy(argv0).into_owned();
    let argv = to_cstrings(&exec.argv, "argument")?;
    let envp = if exec.env.is_empty() {
        vec![to_cstring(
            format!("PATH={DEFAULT_PATH}").as_bytes(),
            "environment entry",
        )?]
    } else {
        to_cstrings(&exec.env, "environment entry")?
    };
    let cwd = if exec.cwd.is_empty() {
        b"/".as_slice()
    } else {
        &exec.cwd
    };
    let cwd = to_cstring(cwd, "working directory")?;
    let program = lookup(argv0, search_path(&exec.env), probe)
        .map_err(|errno| format!("cannot execute {name}: {}", super::fd::strerror(errno)))?;
    let program = to_cstring(&program, "program path")?;
    Ok(Command {
        program,
        argv,
        envp,
        cwd,
        name,
    })
}

/// The PATH to search: the first `PATH=` of `env`, else [`DEFAULT_PATH`].
pub fn search_path(env: &[Vec<u8>]) -> &[u8] {
    env.iter()
        .find_map(|entry| entry.strip_prefix(b"PATH="))
        .unwrap_or(DEFAULT_PATH.as_bytes())
}

/// Resolves `name` like execvp(3): a name with a `/` is used as is;
/// otherwise the first executable `dir/name` of `path` (empty components
/// are skipped, not taken as the current directory). The error is the
/// errno execvp would give: EACCES when only non-executable candidates
/// exist, else ENOENT.
pub fn lookup(name: &[u8], path: &[u8], probe: impl Fn(&[u8]) -> Probe) -> Result<Vec<u8>, i32> {
    if name.is_empty() {
        return Err(libc::ENOENT);
    }
    if name.contains(&b'/') {
        return Ok(name.to_vec());
    }
    let mut errno = libc::ENOENT;
    for dir in path.split(|&b| b == b':').filter(|dir| !dir.is_empty()) {
        let mut candidate = dir.to_vec();
        if !candidate.ends_with(b"/") {
            candidate.push(b'/');
        }
        candidate.extend_from_slice(name);
        match probe(&candidate) {
            Probe::Executable => return Ok(candidate),
            Probe::NotExecutable => errno = libc::EACCES,
            Probe::Missing => {}
        }
    }
    Err(errno)
}

/// One C string; `what` names it in the error (an interior NUL).
pub fn to_cstring(bytes: &[u8], what: &str) -> Result<CString, String> {
    CString::new(bytes)
        .map_err(|_| format!("{what} {:?} contains a NUL byte", String::from_utf8_lossy(bytes)))
}

/// C strings for each item.
pub fn to_cstrings(items: &[Vec<u8>], what: &str) -> Result<Vec<CString>, String> {
    items.iter().map(|item| to_cstring(item, what)).collect()
}

/// A wait(2) status as the protocol's exit status: the exit code, or minus
/// the signal that killed the process.
pub fn exit_status(wait_status: libc::c_int) -> i32 {
    if libc::WIFEXITED(wait_status) {
        libc::WEXITSTATUS(wait_status)
    } else if libc::WIFSIGNALED(wait_status) {
        -libc::WTERMSIG(wait_status)
    } else {
        // Stopped or continued: not asked for (no WUNTRACED), so unreachable.
        -1
    }
}

/// The step of starting a child that failed, reported through its status
/// pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// dup2 of the standard descriptors.
    Stdio = 1,
    /// chdir to the working directory.
    Chdir = 2,
    /// execve.
    Exec = 3,
}

/// The bytes a child writes to its status pipe when `stage` failed with
/// `errno`: the stage then the errno, native-endian `i32`s.
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
        2 => Stage::Chdir,
        3 => Stage::Exec,
        _ => return None,
    };
    Some((stage, i32::from_ne_bytes(errno)))
}

/// The client's message for a child that failed at `stage`.
pub fn failure_message(cmd: &Command, stage: Stage, errno: i32) -> String {
    let why = super::fd::strerror(errno);
    match stage {
        Stage::Stdio => format!("cannot set up stdio for {}: {why}", cmd.name),
        Stage::Chdir => format!("cannot change directory to {}: {why}", cmd.cwd.to_string_lossy()),
        Stage::Exec => format!("cannot execute {}: {why}", cmd.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(items: &[&str]) -> Vec<Vec<u8>> {
        items.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    /// A file system where only `exec` paths are executable and `plain`
    /// paths exist.
    fn fs<'a>(exec: &'a [&str], plain: &'a [&str]) -> impl Fn(&[u8]) -> Probe + 'a {
        move |path| {
            let path = std::str::from_utf8(path).unwrap();
            if exec.contains(&path) {
                Probe::Executable
            } else if plain.contains(&path) {
                Probe::NotExecutable
            } else {
                Probe::Missing
            }
        }
    }

    #[test]
    fn lookup_searches_path_in_order() {
        let probe = fs(&["/sbin/x", "/usr/bin/x"], &[]);
        assert_eq!(
            lookup(b"x", b"/bin:/sbin:/usr/bin", &probe),
            Ok(b"/sbin/x".to_vec())
        );
        assert_eq!(
            lookup(b"x", b"/usr/bin/:/sbin", &probe),
            Ok(b"/usr/bin/x".to_vec())
        );
        assert_eq!(lookup(b"y", b"/bin:/sbin", &probe), Err(libc::ENOENT));
    }

    #[test]
    fn lookup_skips_empty_components_and_reports_eacces() {
        let probe = fs(&["x"], &["/bin/y"]);
        // An empty component is not the current directory.
        assert_eq!(lookup(b"x", b"::/bin:", &probe), Err(libc::ENOENT));
        assert_eq!(lookup(b"y", b"/bin:/sbin", &probe), Err(libc::EACCES));
        assert_eq!(lookup(b"x", b"", &probe), Err(libc::ENOENT));
        assert_eq!(lookup(b"", b"/bin", &probe), Err(libc::ENOENT));
    }

    #[test]
    fn lookup_keeps_names_with_a_slash() {
        let probe = fs(&[], &[]);
        assert_eq!(lookup(b"/no/such", b"/bin", &probe), Ok(b"/no/such".to_vec()));
        assert_eq!(lookup(b"./x", b"/bin", &probe), Ok(b"./x".to_vec()));
    }

    #[test]
    fn search_path_comes_from_env() {
        assert_eq!(search_path(&[]), DEFAULT_PATH.as_bytes());
        assert_eq!(
            search_path(&bytes(&["HOME=/", "PATH=/opt:/bin", "PATH=/x"])),
            b"/opt:/bin"
        );
        assert_eq!(search_path(&bytes(&["MYPATH=/x"])), DEFAULT_PATH.as_bytes());
    }

    #[test]
    fn prepare_fills_defaults() {
        let exec = Exec {
            argv: bytes(&["uname", "-a"]),
            ..Exec::default()
        };
        let cmd = prepare(&exec, fs(&["/bin/uname"], &[])).unwrap();
        assert_eq!(cmd.program.as_bytes(), b"/bin/uname");
        assert_eq!(cmd.argv, [c"uname".to_owned(), c"-a".to_owned()]);
        assert_eq!(cmd.envp, [c"PATH=/bin:/sbin:/usr/bin:/usr/sbin".to_owned()]);
        assert_eq!(cmd.cwd.as_bytes(), b"/");
        assert_eq!(cmd.name, "uname");
    }

    #[test]
    fn prepare_uses_request_env_and_cwd() {
        let exec = Exec {
            argv: bytes(&["tool"]),
            env: bytes(&["A=1", "PATH=/opt/bin"]),
            cwd: b"/tmp".to_vec(),
            stdin: Vec::new(),
        };
        let cmd = prepare(&exec, fs(&["/opt/bin/tool", "/bin/tool"], &[])).unwrap();
        assert_eq!(cmd.program.as_bytes(), b"/opt/bin/tool");
        assert_eq!(cmd.envp, [c"A=1".to_owned(), c"PATH=/opt/bin".to_owned()]);
        assert_eq!(cmd.cwd.as_bytes(), b"/tmp");
    }

    #[test]
    fn prepare_errors_are_messages() {
        let none = fs(&[], &["/bin/notes.txt"]);
        assert_eq!(
            prepare(&Exec::default(), &none).unwrap_err(),
            "empty argv: nothing to execute"
        );
        let missing = Exec {
            argv: bytes(&["frob"]),
            ..Exec::default()
        };
        assert_eq!(
            prepare(&missing, &none).unwrap_err(),
            "cannot execute frob: No such file or directory"
        );
        let not_exec = Exec {
            argv: bytes(&["notes.txt"]),
            ..Exec::default()
        };
        assert_eq!(
            prepare(&not_exec, &none).unwrap_err(),
            "cannot execute notes.txt: Permission denied"
        );
        let nul = Exec {
            argv: vec![b"/bin/sh".to_vec(), b"a\0b".to_vec()],
            ..Exec::default()
        };
        assert_eq!(
            prepare(&nul, &none).unwrap_err(),
            "argument \"a\\0b\" contains a NUL byte"
        );
    }

    #[test]
    fn exit_status_encoding() {
        assert_eq!(exit_status(0), 0);
        assert_eq!(exit_status(3 << 8), 3);
        assert_eq!(exit_status(255 << 8), 255);
        assert_eq!(exit_status(libc::SIGKILL), -9);
        // Killed by SIGSEGV with a core dump (0x80).
        assert_eq!(exit_status(libc::SIGSEGV | 0x80), -11);
    }

    #[test]
    fn failure_round_trip() {
        for stage in [Stage::Stdio, Stage::Chdir, Stage::Exec] {
            assert_eq!(
                decode_failure(&encode_failure(stage, libc::ENOENT)),
                Some((stage, libc::ENOENT))
            );
        }
        assert_eq!(decode_failure(&[]), None);
        assert_eq!(decode_failure(&[3, 0, 0, 0]), None);
        assert_eq!(decode_failure(&encode_failure(Stage::Exec, 2)[..7]), None);
        assert_eq!(decode_failure(&[9, 0, 0, 0, 2, 0, 0, 0]), None);
    }

    #[test]
    fn failure_messages() {
        let exec = Exec {
            argv: bytes(&["/no/such"]),
            cwd: b"/gone".to_vec(),
            ..Exec::default()
        };
        let cmd = prepare(&exec, fs(&[], &[])).unwrap();
        assert_eq!(
            failure_message(&cmd, Stage::Exec, libc::ENOENT),
            "cannot execute /no/such: No such file or directory"
        );
        assert_eq!(
            failure_message(&cmd, Stage::Chdir, libc::ENOENT),
            "cannot change directory to /gone: No such file or directory"
        );
    }
}
