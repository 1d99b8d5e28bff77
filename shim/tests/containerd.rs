//! End to end against a private containerd (Debian's, installed by
//! scripts/test) driven with `ctr`, the shim built by this crate as the
//! runtime, and the Linux tier's guest (HEARTH_VMLINUX, HEARTH_ROOTFS_DIR).
//!
//! One test runs every case in order against one containerd: two Linux
//! boots in all (the boot path once, and the template every other task
//! restores).
//!
//! Missing containerd or ctr fails the test: scripts/test installs them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-hearth-v2");
/// The Linux tier's command line for PVM hosts (tests/src/linux.rs),
/// beyond what the shim always gives.
const CMDLINE_EXTRA: &str = "nokaslr mitigations=off tsc=reliable no_timer_check noxsave nopku nofsgsbase \
clearcpuid=cx16,rdrand,rdseed,smap,popcnt,erms,fsrm nopv noreplace-smp lpj=4005 quiet rodata=off";
const COUNTER: &str = "i=0; while true; do echo $i; echo $i > /n; i=$((i+1)); sleep 1; done";
const IMAGE: &str = "hearth.test/busybox:1";

fn find(program: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "{program} is not installed: scripts/test installs Debian's containerd (apt-get install containerd)"
    );
    PathBuf::from(path)
}

fn busybox() -> PathBuf {
    let out = Command::new("dpkg")
        .args(["-L", "busybox-static"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.ends_with("/bin/busybox"))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("busybox-static is not installed"))
}

/// A private containerd in a scratch directory; stopped and removed on
/// drop.
struct Containerd {
    dir: PathBuf,
    child: Child,
}

impl Containerd {
    fn start(dir: &Path, shim_config: &Path) -> Self {
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new(find("containerd"))
            .arg("--config")
            .arg(&config)
            .env("HEARTH_SHIM_CONFIG", shim_config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Self {
            dir: dir.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !c.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not start: {}", c.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` with a bounded run time.
    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("300")
            .arg(find("ctr"))
            .arg("--address")
            .arg(self.dir.join("c.sock"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `ctr`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\nstdout: {}\nstderr: {}\ncontainerd log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn task_status(&self, id: &str) -> String {
        let ls = self.ok(&["task", "ls"]);
        ls.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or("")
            .to_string()
    }

    fn wait_status(&self, id: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let st = self.task_status(id);
            if st == want {
                return;
            }
            assert!(Instant::now() < deadline, "task {id} is {st:?}, not {want}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn exec(&self, task: &str, exec_id: &str, argv: &[&str]) -> String {
        let mut args = vec!["task", "exec", "--exec-id", exec_id, task];
        args.extend(argv);
        self.ok(&args)
    }

    /// Kills, deletes and removes a task and its container; the status
    /// `task delete` reports.
    fn remove(&self, id: &str, signal: &str) -> String {
        if matches!(self.task_status(id).as_str(), "RUNNING" | "PAUSED") {
            self.ok(&["task", "kill", "-s", signal, id]);
            self.wait_status(id, "STOPPED");
        }
        let out = self.ctr(&["task", "delete", id]);
        assert!(
            out.status.success(),
            "task delete {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.ok(&["containers", "rm", id]);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A failed test may leave shims (they outlive containerd): end the
        // ones this containerd started.
        let address = self.dir.join("c.sock").display().to_string();
        for pid in shim_processes() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&address) {
                // SAFETY: kill(2) of a shim this test's containerd started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                let args = String::from_utf8_lossy(&cmdline).into_owned();
                let mut it = args.split('\0');
                if let Some(socket) = it.find(|a| *a == "-socket").and_then(|_| it.next()) {
                    let _ = std::fs::remove_file(socket.trim_start_matches("unix://"));
                }
            }
        }
        // SAFETY: kill(2) of the child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().lines().count()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Shim processes (this build's binary) still running.
fn shim_processes() -> Vec<u32> {
    let shim = std::fs::canonicalize(SHIM).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == shim))
        .collect()
}

/// An OCI image layout (one uncompressed layer: `rootfs`) as a tar, for
/// `ctr images import`.
fn oci_image(rootfs: &Path, dir: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let layout = dir.join("oci");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let layer = dir.join("layer.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let put = |bytes: &[u8]| -> (String, usize) {
        let d = format!("{:x}", Sha256::digest(bytes));
        std::fs::write(blobs.join(&d), bytes).unwrap();
        (d, bytes.len())
    };
    let (l, ls) = put(&std::fs::read(&layer).unwrap());
    let (c, cs) = put(
        format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{l}"]}}}}"#
        )
        .as_bytes(),
    );
    let (m, ms) = put(
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{c}","size":{cs}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{l}","size":{ls}}}]}}"#
        )
        .as_bytes(),
    );
    std::fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{m}","size":{ms},"annotations":{{"io.containerd.image.name":"{IMAGE}","org.opencontainers.image.ref.name":"1"}}}}]}}"#
        ),
    )
    .unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let tar = dir.join("image.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    tar
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn containerd_runs_tasks_in_hearth_vms() {
    if std::env::var_os("HEARTH_SKIP_LINUX").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED containerd_runs_tasks_in_hearth_vms: HEARTH_SKIP_LINUX=1");
        return;
    }
    let var = |n: &str| {
        PathBuf::from(std::env::var_os(n).unwrap_or_else(|| {
            panic!("{n} is not set: eval \"$(scripts/guests)\" (scripts/test does), or HEARTH_SKIP_LINUX=1")
        }))
    };
    let (vmlinux, guest_dir) = (var("HEARTH_VMLINUX"), var("HEARTH_ROOTFS_DIR"));
    let agent_rootfs = guest_dir.join("rootfs.ext4");
    assert!(vmlinux.is_file() && agent_rootfs.is_file());
    // SAFETY: geteuid(2) has no memory effects.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "containerd and its shims need root");

    let scratch = Scratch(std::env::temp_dir().join(format!("hearth-shim-e2e-{}", std::process::id())));
    let dir = scratch.0.clone();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rootfs/bin")).unwrap();
    std::fs::copy(busybox(), dir.join("rootfs/bin/busybox")).unwrap();
    for applet in ["sh", "echo", "cat", "sleep", "date", "stty"] {
        std::os::unix::fs::symlink("busybox", dir.join("rootfs/bin").join(applet)).unwrap();
    }
    let shim_state = dir.join("shim-state");
    let shim_config = |template: Option<&Path>| {
        let mut text = format!(
            "kernel = \"{}\"\nagent_rootfs = \"{}\"\ncmdline_extra = \"{CMDLINE_EXTRA}\"\n\
             cache_dir = \"{}\"\nstate_dir = \"{}\"\ndisk_size_mib = 64\n",
            vmlinux.display(),
            agent_rootfs.display(),
            dir.join("cache").display(),
            shim_state.display()
        );
        if let Some(t) = template {
            text.push_str(&format!("template = \"{}\"\n", t.display()));
        }
        text
    };
    let boot_config = dir.join("shim-boot.toml");
    std::fs::write(&boot_config, shim_config(None)).unwrap();
    let template = dir.join("template");
    let config = dir.join("shim.toml");
    std::fs::write(&config, shim_config(Some(&template))).unwrap();
    let rootfs = dir.join("rootfs").display().to_string();

    let c = Containerd::start(&dir, &config);

    // The boot path: the runtime options name the config without a
    // template.
    let t = Instant::now();
    let out = c.ok(&[
        "run",
        "--rm",
        "--runtime",
        SHIM,
        "--runtime-config-path",
        boot_config.to_str().unwrap(),
        "--rootfs",
        &rootfs,
        "boot1",
        "/bin/busybox",
        "echo",
        "hi",
    ]);
    assert_eq!(out, "hi\n");
    eprintln!("boot path: ctr run echo hi took {} ms", t.elapsed().as_millis());

    // The template every other task restores.
    let st = Command::new(SHIM)
        .args([
            "template",
            template.to_str().unwrap(),
            "--config",
            boot_config.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success());

    let t = Instant::now();
    let out = c.ok(&[
        "run",
        "--rm",
        "--runtime",
        SHIM,
        "--rootfs",
        &rootfs,
        "t1",
        "/bin/busybox",
        "echo",
        "hi",
    ]);
    assert_eq!(out, "hi\n");
    eprintln!(
        "template path: ctr run echo hi took {} ms",
        t.elapsed().as_millis()
    );
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        SHIM,
        "--rootfs",
        &rootfs,
        "t2",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // stdin streams to the process, and its end (CloseIO) is end of file.
    let ctr = find("ctr");
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'hello\\nworld\\n' | {} --address {} run --rm --runtime {SHIM} --rootfs {rootfs} in1 cat",
            ctr.display(),
            dir.join("c.sock").display()
        ))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&piped.stdout),
        "hello\nworld\n",
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert!(piped.status.success());

    // A terminal (ctr needs one: script(1) gives it a pseudo-terminal of
    // 33x77), resized to ctr's size through ResizePty.
    let tty = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "stty rows 33 cols 77; {} --address {} run --rm -t --runtime {SHIM} --rootfs {rootfs} tty1 \
             sh -c 'sleep 1; stty size; exit 3'",
            ctr.display(),
            dir.join("c.sock").display()
        ))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&tty.stdout).into_owned();
    assert!(text.contains("33 77"), "{text:?}");
    assert_eq!(tty.status.code(), Some(3), "{text:?}");

    // A detached, counting task: exec, pause, resume, metrics, kill.
    let log = dir.join("counter.log");
    let log_uri = format!("file://{}", log.display());
    c.ok(&[
        "run",
        "-d",
        "--log-uri",
        &log_uri,
        "--runtime",
        SHIM,
        "--rootfs",
        &rootfs,
        "count",
        "sh",
        "-c",
        COUNTER,
    ]);
    wait_until("the counter's output", Duration::from_secs(60), || {
        lines(&log) >= 2
    });
    assert_eq!(c.exec("count", "e1", &["echo", "from-exec"]), "from-exec\n");
    c.wait_status("count", "RUNNING");
    c.ok(&["task", "pause", "count"]);
    assert_eq!(c.task_status("count"), "PAUSED");
    let before = lines(&log);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(lines(&log), before, "the counter made progress while paused");
    c.ok(&["task", "resume", "count"]);
    assert_eq!(c.task_status("count"), "RUNNING");
    let guest_now: i64 = c.exec("count", "e2", &["date", "+%s"]).trim().parse().unwrap();
    assert!(
        (guest_now - now_secs()).abs() <= 2,
        "guest clock {guest_now}, host {}",
        now_secs()
    );
    wait_until("the counter after resume", Duration::from_secs(60), || {
        lines(&log) > before
    });
    let counted: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(counted.windows(2).all(|w| w[1] == w[0] + 1), "{counted:?}");
    let metrics = c.ok(&["task", "metrics", "count"]);
    for key in ["cpuacct.usage", "memory.usage_in_bytes", "pids.current"] {
        assert!(metrics.contains(key), "{metrics}");
    }
    let pids = c.ok(&["task", "ps", "count"]);
    assert!(pids.lines().count() >= 2, "{pids}");
    // SIGKILL of a paused task: the VM answers nothing while paused, so
    // the shim stops it whole.
    c.ok(&["task", "pause", "count"]);
    let deleted = c.remove("count", "SIGKILL");
    assert!(deleted.contains("exit code 137"), "{deleted}");

    // Kill statuses of attached tasks: SIGTERM 143, SIGKILL 137.
    for (signal, want) in [("SIGTERM", 143), ("SIGKILL", 137)] {
        let id = format!("kill-{}", signal.to_lowercase());
        let addr = dir.join("c.sock");
        let (shim, rootfs_arg, idc) = (SHIM.to_string(), rootfs.clone(), id.clone());
        let run = std::thread::spawn(move || {
            Command::new(find("ctr"))
                .arg("--address")
                .arg(&addr)
                .args([
                    "run",
                    "--rm",
                    "--runtime",
                    &shim,
                    "--rootfs",
                    &rootfs_arg,
                    &idc,
                    "sleep",
                    "1000",
                ])
                .stdin(Stdio::null())
                .output()
                .unwrap()
        });
        c.wait_status(&id, "RUNNING");
        c.ok(&["task", "kill", "-s", signal, &id]);
        let out = run.join().unwrap();
        assert_eq!(
            out.status.code(),
            Some(want),
            "{signal}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Checkpoint a running task, restore it as a new container: the
    // counter goes on from where it was.
    let image = oci_image(&dir.join("rootfs"), &dir);
    c.ok(&[
        "images",
        "import",
        "--snapshotter",
        "native",
        image.to_str().unwrap(),
    ]);
    // containerd's default snapshotter (overlayfs): the shim copies the
    // mounted snapshot into an image.
    c.ok(&["images", "import", image.to_str().unwrap()]);
    let out = c.ok(&[
        "run",
        "--rm",
        "--runtime",
        SHIM,
        IMAGE,
        "ov1",
        "sh",
        "-c",
        "echo x > /y; cat /y",
    ]);
    assert_eq!(out, "x\n");
    c.ok(&[
        "run",
        "-d",
        "--snapshotter",
        "native",
        "--runtime",
        SHIM,
        IMAGE,
        "ck1",
        "sh",
        "-c",
        COUNTER,
    ]);
    // The counter's value (0 until it wrote one).
    let read_n = |task: &str, exec: &str| -> u64 {
        let out = c.ctr(&["task", "exec", "--exec-id", exec, task, "cat", "/n"]);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    };
    let mut n = 0;
    wait_until("the counter to reach 3", Duration::from_secs(60), || {
        n += 1;
        read_n("ck1", &format!("r{n}")) >= 3
    });
    c.ok(&["containers", "checkpoint", "--task", "ck1", "hearth.test/ckpt:1"]);
    let at_checkpoint = read_n("ck1", "after");
    c.remove("ck1", "SIGKILL");
    c.ok(&["containers", "restore", "--live", "ck2", "hearth.test/ckpt:1"]);
    c.wait_status("ck2", "RUNNING");
    let restored = read_n("ck2", "r-a");
    assert!(
        restored + 1 >= at_checkpoint,
        "restored counter {restored}, {at_checkpoint} at checkpoint"
    );
    wait_until("the restored counter to go on", Duration::from_secs(60), || {
        n += 1;
        read_n("ck2", &format!("r{n}")) > restored
    });
    c.remove("ck2", "SIGKILL");

    // Nothing is left: no shim (and so no VM thread), no task file, socket
    // or mount; the image cache holds images only.
    wait_until("every shim to exit", Duration::from_secs(30), || {
        shim_processes().is_empty()
    });
    let left: Vec<_> = walk(&shim_state);
    assert!(
        left.iter().all(|p| p.is_dir()),
        "files left in the shim's state: {left:?}"
    );
    for e in std::fs::read_dir(dir.join("cache")).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(
            p.extension().and_then(|e| e.to_str()),
            Some("ext4"),
            "{}",
            p.display()
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(shim_state.to_str().unwrap()),
        "mounts left under {}",
        shim_state.display()
    );
    let address = dir.join("c.sock").display().to_string();
    for id in [
        "boot1",
        "t1",
        "t2",
        "in1",
        "tty1",
        "count",
        "kill-sigterm",
        "kill-sigkill",
        "ov1",
        "ck1",
        "ck2",
    ] {
        let socket = containerd_shim::socket_address(&address, "default", id);
        let path = socket.trim_start_matches("unix://");
        assert!(
            !Path::new(path).exists(),
            "the shim socket of {id} is left: {path}"
        );
    }
    for p in walk(&dir.join("state")) {
        let ft = std::fs::symlink_metadata(&p).unwrap().file_type();
        assert!(
            !ft.is_socket() || p.ends_with("c.sock.ttrpc"),
            "socket left: {}",
            p.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}
