//! Replays every checked-in input under stable `cargo test`: the corpora
//! (`fuzz/corpus/<target>/`, seeds plus what the fuzzer kept for coverage)
//! and the crash reproducers (`fuzz/regressions/<target>/`), which must
//! all pass now that their bugs are fixed. A few thousand deterministic
//! pseudo-random inputs per target run too, so that the invariants are
//! exercised even where a corpus is small.

use std::path::{Path, PathBuf};

use hearth_fuzz_common::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

fn target(name: &str) -> hearth_fuzz_common::Target {
    match TARGETS.iter().find(|(n, _)| *n == name) {
        Some((_, f)) => *f,
        None => panic!("no fuzz target {name}"),
    }
}

/// Runs every corpus and regression input of `name`; returns how many.
fn replay(name: &str) -> usize {
    let f = target(name);
    let mut n = 0;
    for kind in ["corpus", "regressions"] {
        for path in inputs(&fuzz_dir().join(kind).join(name)) {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let result = std::panic::catch_unwind(|| f(&data));
            assert!(result.is_ok(), "{name}: {} fails", path.display());
            n += 1;
        }
    }
    n
}

/// Deterministic pseudo-random inputs (xorshift), of lengths up to 4 KiB.
fn smoke(name: &str, count: usize) {
    let f = target(name);
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ name.len() as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..count {
        let len = (next() % 4096) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let result = std::panic::catch_unwind(|| f(&data));
        assert!(result.is_ok(), "{name}: pseudo-random input {i} fails");
    }
}

macro_rules! target_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let n = replay(stringify!($name));
                eprintln!("{}: replayed {n} corpus and regression inputs", stringify!($name));
                smoke(stringify!($name), 2000);
            }
        )*

        #[test]
        fn every_target_has_a_test_and_a_corpus() {
            let tested = [$(stringify!($name)),*];
            for (name, _) in TARGETS {
                assert!(tested.contains(&name), "{name} has no test here");
                assert!(
                    !inputs(&fuzz_dir().join("corpus").join(name)).is_empty(),
                    "{name} has no corpus"
                );
                assert!(
                    fuzz_dir().join("fuzz_targets").join(format!("{name}.rs")).is_file(),
                    "{name} has no fuzz target"
                );
            }
        }
    };
}

target_tests!(
    mmio_transport,
    virtio_blk,
    virtio_net_tx,
    virtio_net_rx,
    vsock_packets,
    serial,
    snapshot_state_decode,
    config_json,
    user_net,
    cmdline,
    agent_frames,
    overlay_image,
);
