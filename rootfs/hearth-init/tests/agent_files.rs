//! File requests, SYNC and REFRESH, against the real agent in native
//! mode.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use hearth_agent_protocol::{
    Chmod, ErrorKind, FileKind, Message, Mkdir, PathReq, Refreshed, Remove, Rename, Upload, DIR_CHUNK,
    MAX_CHUNK,
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

/// Deterministic bytes (xorshift), `len` of them.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn upload(agent: &Agent, path: &Path, data: &[u8], mode: u32, parents: bool) -> Message {
    let mut c = agent.connect();
    c.send(&Message::Upload(Upload {
        path: bp(path),
        mode,
        parents,
    }));
    for chunk in data.chunks(MAX_CHUNK) {
        c.send(&Message::Data(chunk.to_vec()));
    }
    c.send(&Message::DataEnd);
    let answer = c.recv().unwrap();
    assert!(c.recv().is_none());
    answer
}

/// Downloads: (size from FILE_INFO, mode, bytes).
fn download(agent: &Agent, path: &Path) -> Result<(u64, u32, Vec<u8>), Message> {
    let mut c = agent.connect();
    c.send(&Message::Download(PathReq { path: bp(path) }));
    let info = match c.recv().unwrap() {
        Message::FileInfo(i) => i,
        other => return Err(other),
    };
    let mut data = Vec::new();
    loop {
        match c.recv().unwrap() {
            Message::Data(d) => {
                assert!(d.len() <= MAX_CHUNK);
                data.extend_from_slice(&d);
            }
            Message::DataEnd => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(c.recv().is_none());
    Ok((info.size, info.mode, data))
}

#[test]
fn upload_and_download_64_mib_in_bounded_memory() {
    let agent = Agent::start();
    let dir = Scratch::new("big");
    let mut peaks = Vec::new();
    for (mib, seed) in [(1usize, 1u64), (64, 2)] {
        let data = pattern(mib << 20, seed);
        let path = dir.path(&format!("f{mib}"));
        assert_eq!(
            upload(&agent, &path, &data, 0o640, false),
            Message::Uploaded(data.len() as u64)
        );
        assert_eq!(sha256(&std::fs::read(&path).unwrap()), sha256(&data));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        let (size, mode, back) = download(&agent, &path).unwrap();
        assert_eq!((size, mode), (data.len() as u64, 0o640));
        assert_eq!(sha256(&back), sha256(&data));
        peaks.push(agent.vm_hwm_kib());
    }
    eprintln!(
        "agent VmHWM after 1 MiB: {} KiB, after 64 MiB: {} KiB",
        peaks[0], peaks[1]
    );
    assert!(
        peaks[1] < peaks[0] + 2048,
        "peak RSS grew with the size: {peaks:?}"
    );
}

#[test]
fn upload_errors_and_broken_transfers_leave_nothing() {
    let agent = Agent::start();
    let dir = Scratch::new("up");
    // The error comes at once, before any data.
    let mut c = agent.connect();
    let missing = dir.path("no/such/f");
    c.send(&Message::Upload(Upload {
        path: bp(&missing),
        mode: 0o600,
        parents: false,
    }));
    let msg = expect_error(c.recv(), ErrorKind::NotFound);
    assert_eq!(
        msg,
        format!("open {}: No such file or directory", missing.display())
    );
    // With parents: created.
    assert_eq!(
        upload(&agent, &missing, b"deep", 0o600, true),
        Message::Uploaded(4)
    );
    assert_eq!(std::fs::read(&missing).unwrap(), b"deep");
    // Replacing: new contents and mode.
    assert_eq!(
        upload(&agent, &missing, b"new", 0o755, false),
        Message::Uploaded(3)
    );
    assert_eq!(std::fs::read(&missing).unwrap(), b"new");
    assert_eq!(
        std::fs::metadata(&missing).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    // A broken transfer: the old file stays, no temporary is left.
    let mut c = agent.connect();
    c.send(&Message::Upload(Upload {
        path: bp(&missing),
        mode: 0o600,
        parents: false,
    }));
    c.send(&Message::Data(vec![1; 1000]));
    drop(c);
    let sub = dir.path("no/such");
    eventually("the temporary file to go", || {
        std::fs::read_dir(&sub).unwrap().count() == 1
    });
    assert_eq!(std::fs::read(&missing).unwrap(), b"new");
    // An out-of-order frame mid-upload: BadRequest, nothing left.
    let fresh = dir.path("fresh");
    let mut c = agent.connect();
    c.send(&Message::Upload(Upload {
        path: bp(&fresh),
        mode: 0o600,
        parents: false,
    }));
    c.send(&Message::Data(b"abc".to_vec()));
    c.send(&Message::StdinClose);
    expect_error(c.recv(), ErrorKind::BadRequest);
    assert!(!fresh.exists());
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);
    // Over a directory: refused, nothing left.
    let msg = expect_error(
        Some(upload(&agent, &dir.0, b"x", 0o600, false)),
        ErrorKind::IsADirectory,
    );
    assert!(msg.starts_with("rename "), "{msg}");
    expect_error(
        Some(upload(&agent, Path::new("relative"), b"", 0o600, false)),
        ErrorKind::InvalidInput,
    );
}

#[test]
fn download_errors() {
    let agent = Agent::start();
    let dir = Scratch::new("down");
    let e = download(&agent, Path::new("/no/such")).unwrap_err();
    assert_eq!(
        expect_error(Some(e), ErrorKind::NotFound),
        "open /no/such: No such file or directory"
    );
    let e = download(&agent, &dir.0).unwrap_err();
    assert_eq!(
        expect_error(Some(e), ErrorKind::IsADirectory),
        format!("read {}: Is a directory", dir.0.display())
    );
    let e = download(&agent, Path::new("/dev/null")).unwrap_err();
    expect_error(Some(e), ErrorKind::InvalidInput);
    // An empty file and a /proc file (size 0 in stat, contents on read).
    let empty = dir.path("empty");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(download(&agent, &empty).unwrap(), (0, 0o644, Vec::new()));
    let (_, _, status) = download(&agent, Path::new("/proc/self/status")).unwrap();
    assert!(String::from_utf8_lossy(&status).contains("Name:"));
}

#[test]
fn stat_mkdir_chmod_rename_remove() {
    let agent = Agent::start();
    let dir = Scratch::new("ops");
    let f = dir.path("f");
    std::fs::write(&f, b"hello").unwrap();
    std::os::unix::fs::symlink("f", dir.path("l")).unwrap();
    let stat = |p: &Path| agent.ask_one(&Message::Stat(PathReq { path: bp(p) }));
    match stat(&f) {
        Message::StatResult(s) => {
            assert_eq!((s.kind, s.size, s.mode), (FileKind::File, 5, 0o644));
            assert!(s.mtime_ns > 0);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(stat(&dir.path("l")), Message::StatResult(s) if s.kind == FileKind::Symlink));
    assert!(matches!(stat(&dir.0), Message::StatResult(s) if s.kind == FileKind::Dir));
    let msg = expect_error(Some(stat(Path::new("/no/such"))), ErrorKind::NotFound);
    assert_eq!(msg, "stat /no/such: No such file or directory");

    // MKDIR.
    let mkdir = |p: &Path, mode, parents| {
        agent.ask_one(&Message::Mkdir(Mkdir {
            path: bp(p),
            mode,
            parents,
        }))
    };
    let deep = dir.path("a/b/c");
    let msg = expect_error(Some(mkdir(&deep, 0o700, false)), ErrorKind::NotFound);
    assert_eq!(
        msg,
        format!("mkdir {}: No such file or directory", deep.display())
    );
    assert_eq!(mkdir(&deep, 0o700, true), Message::Ok);
    assert_eq!(
        std::fs::metadata(&deep).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    assert_eq!(mkdir(&deep, 0o700, true), Message::Ok);
    expect_error(Some(mkdir(&deep, 0o700, false)), ErrorKind::AlreadyExists);
    expect_error(Some(mkdir(&f.join("x"), 0o700, true)), ErrorKind::NotADirectory);

    // CHMOD.
    let chmod = |p: &Path, mode| agent.ask_one(&Message::Chmod(Chmod { path: bp(p), mode }));
    assert_eq!(chmod(&f, 0o604), Message::Ok);
    assert_eq!(
        std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777,
        0o604
    );
    let msg = expect_error(Some(chmod(&dir.path("gone"), 0o600)), ErrorKind::NotFound);
    assert_eq!(
        msg,
        format!("chmod {}: No such file or directory", dir.path("gone").display())
    );

    // RENAME.
    let rename = |a: &Path, b: &Path| {
        agent.ask_one(&Message::Rename(Rename {
            from: bp(a),
            to: bp(b),
        }))
    };
    let g = dir.path("g");
    assert_eq!(rename(&f, &g), Message::Ok);
    assert!(g.exists() && !f.exists());
    let msg = expect_error(Some(rename(&f, &g)), ErrorKind::NotFound);
    assert_eq!(
        msg,
        format!(
            "rename {} to {}: No such file or directory",
            f.display(),
            g.display()
        )
    );

    // REMOVE: a tree with a symlink out of it.
    let keep = Scratch::new("keep");
    std::fs::write(keep.path("precious"), b"x").unwrap();
    std::os::unix::fs::symlink(&keep.0, dir.path("a/b/link")).unwrap();
    let remove = |p: &Path, recursive| {
        agent.ask_one(&Message::Remove(Remove {
            path: bp(p),
            recursive,
        }))
    };
    let msg = expect_error(Some(remove(&dir.path("a"), false)), ErrorKind::DirectoryNotEmpty);
    assert_eq!(
        msg,
        format!("remove {}: Directory not empty", dir.path("a").display())
    );
    assert_eq!(remove(&dir.path("a"), true), Message::Ok);
    assert!(!dir.path("a").exists());
    assert!(keep.path("precious").exists());
    assert_eq!(remove(&g, false), Message::Ok);
    assert_eq!(remove(&dir.path("l"), false), Message::Ok);
    expect_error(Some(remove(&g, false)), ErrorKind::NotFound);
    expect_error(Some(remove(Path::new("/"), true)), ErrorKind::InvalidInput);
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
}

#[test]
fn list_dir_in_chunks_of_512() {
    let agent = Agent::start();
    let dir = Scratch::new("list");
    let n = 2 * DIR_CHUNK + 76;
    for i in 0..n {
        std::fs::write(dir.path(&format!("file-{i}")), vec![0u8; i % 7]).unwrap();
    }
    std::fs::create_dir(dir.path("sub")).unwrap();
    let answer = agent.ask(&Message::ListDir(PathReq { path: bp(&dir.0) }));
    let chunks: Vec<_> = answer
        .into_iter()
        .map(|m| match m {
            Message::DirEntries(c) => c,
            other => panic!("{other:?}"),
        })
        .collect();
    let shape: Vec<_> = chunks.iter().map(|c| (c.entries.len(), c.more)).collect();
    assert_eq!(shape, [(DIR_CHUNK, true), (DIR_CHUNK, true), (77, false)]);
    let mut names: Vec<String> = chunks
        .iter()
        .flat_map(|c| c.entries.iter())
        .map(|e| {
            if e.name.as_slice() == b"sub" {
                assert_eq!(e.kind, FileKind::Dir);
            } else {
                let i: usize = std::str::from_utf8(&e.name[5..]).unwrap().parse().unwrap();
                assert_eq!((e.kind, e.size, e.mode), (FileKind::File, (i % 7) as u64, 0o644));
            }
            String::from_utf8(e.name.to_vec()).unwrap()
        })
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n + 1);
    let msg = expect_error(
        agent
            .ask(&Message::ListDir(PathReq { path: b("/no/such") }))
            .pop(),
        ErrorKind::NotFound,
    );
    assert_eq!(msg, "opendir /no/such: No such file or directory");
    expect_error(
        agent
            .ask(&Message::ListDir(PathReq {
                path: bp(&dir.path("file-1")),
            }))
            .pop(),
        ErrorKind::NotADirectory,
    );
}

#[test]
fn sync_answers_ok() {
    let agent = Agent::start();
    assert_eq!(agent.ask_one(&Message::Sync), Message::Ok);
}

fn write_generation(path: &Path, generation: u64, time_ns: u64) {
    let mut bytes = generation.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[generation as u8; 32]);
    bytes.extend_from_slice(&time_ns.to_le_bytes());
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

#[test]
fn refresh_follows_the_generation_file() {
    let scratch = Scratch::new("gen");
    let file = scratch.path("generation");
    write_generation(&file, 0xabc, 1);
    let agent = Agent::start_with(&["--generation-file", file.to_str().unwrap()]);
    let refresh = || match agent.ask_one(&Message::Refresh) {
        Message::Refreshed(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        refresh(),
        Refreshed {
            restored: false,
            generation: 0xabc
        }
    );
    // A restore: the next request sees it.
    write_generation(&file, 0x1234_5678_9abc_def0, 1_700_000_000_000_000_000);
    assert_eq!(
        refresh(),
        Refreshed {
            restored: true,
            generation: 0x1234_5678_9abc_def0
        }
    );
    agent.wait_line("AGENT-REFRESHED generation=123456789abcdef0");
    let would = agent.wait_line("would reseed");
    assert!(would.contains("1700000000000000000"), "{would}");
    assert!(!refresh().restored);
    // The idle check sees a change without any request; REFRESH still
    // reports it, once.
    write_generation(&file, 7, 2);
    agent.wait_line("AGENT-REFRESHED generation=0000000000000007");
    assert_eq!(
        refresh(),
        Refreshed {
            restored: true,
            generation: 7
        }
    );
    assert!(!refresh().restored);
    // The host's clock was not touched (a 2023 time was "set" above).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    assert!(now > Duration::from_secs(1_700_000_000 + 86_400));
    // Without a file: generation 0, never restored.
    let plain = Agent::start();
    assert_eq!(
        plain.ask_one(&Message::Refresh),
        Message::Refreshed(Refreshed {
            restored: false,
            generation: 0
        })
    );
}
