//! Linux tier, the sandbox agent: commands run with their output and exit
//! status, a missing program is a clear error, a 1 MiB file round-trips
//! intact, and the host's socket survives the agent being killed.
//! Each fork+exec costs about a second of emulated kernel here, so this is
//! one boot and a handful of commands.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::time::Instant;

use hearth::AgentError;
use hearth_tests::linux::{guest, AgentGuest, LINUX_TIMEOUT};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn linux_agent_runs_commands_moves_files_and_survives_a_crash() {
    let Some(g) = guest("linux_agent_runs_commands_moves_files_and_survives_a_crash") else {
        return;
    };
    let a = AgentGuest::new(&g, "agent");
    let t = a.vm(&g).start();
    t.expect("AGENT-READY port=52", LINUX_TIMEOUT);

    // Output, error output and exit status of a busybox shell.
    let start = Instant::now();
    let out =
        t.vm.exec(&["sh", "-c", "echo out; echo err >&2; exit 3"])
            .unwrap();
    eprintln!("exec sh: {:?}", start.elapsed());
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice(), out.status.code),
        (&b"out\n"[..], &b"err\n"[..], Some(3))
    );
    let out = t.vm.exec(&["uname", "-r"]).unwrap();
    assert_eq!(
        (out.stdout_text().trim(), out.status.code),
        (g.kernel_release.as_str(), Some(0))
    );

    // A program that does not exist.
    match t.vm.exec(&["/no/such/program"]) {
        Err(AgentError::Guest { message: msg, .. }) => {
            assert!(
                msg.contains("/no/such/program") && msg.contains("No such file"),
                "{msg}"
            )
        }
        other => panic!("expected the agent's error, got {other:?}"),
    }

    // 1 MiB in, hashed in the guest, and back out.
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let want = hex(&Sha256::digest(&data));
    let start = Instant::now();
    t.vm.write_file("/tmp/big.bin", &data, 0o600).unwrap();
    eprintln!("write 1 MiB: {:?}", start.elapsed());
    let out = t.vm.exec(&["sha256sum", "/tmp/big.bin"]).unwrap();
    assert_eq!(out.stdout_text().split_whitespace().next(), Some(want.as_str()));
    let start = Instant::now();
    let back = t.vm.read_file("/tmp/big.bin").unwrap();
    eprintln!("read 1 MiB: {:?}", start.elapsed());
    assert_eq!(hex(&Sha256::digest(&back)), want);

    // Kill the agent from inside: the request fails, PID 1 starts a new
    // agent, and the same host socket reaches it.
    let e = t.vm.exec(&["sh", "-c", "kill -9 $PPID; sleep 5"]).unwrap_err();
    assert!(matches!(e, AgentError::Disconnected | AgentError::Io(_)), "{e}");
    t.expect("AGENT-EXITED status=-9", LINUX_TIMEOUT);
    let deadline = Instant::now() + LINUX_TIMEOUT;
    while t.lines_with("AGENT-READY port=52").len() < 2 {
        assert!(Instant::now() < deadline, "no new agent: {}", t.console.text());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = t.vm.exec(&["sha256sum", "/tmp/big.bin"]).unwrap();
    assert_eq!(out.stdout_text().split_whitespace().next(), Some(want.as_str()));
    t.vm.stop();
}
