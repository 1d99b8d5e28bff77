//! Runs a target over files or directories of inputs and reports the
//! time per input: for profiling a target on stable Rust, e.g.
//! `cargo run --release --example replay -- virtio_blk ../corpus/virtio_blk`.

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(name) = args.next() else {
        eprintln!("usage: replay TARGET PATH... [--repeat N]");
        std::process::exit(2);
    };
    let Some(&(_, f)) = hearth_fuzz_common::TARGETS.iter().find(|(n, _)| *n == name) else {
        eprintln!("no target {name}");
        std::process::exit(2);
    };
    let mut inputs = Vec::new();
    let mut repeat = 1;
    while let Some(a) = args.next() {
        if a == "--repeat" {
            repeat = args.next().and_then(|n| n.parse().ok()).unwrap_or(1);
            continue;
        }
        let p = std::path::PathBuf::from(a);
        let files: Vec<_> = if p.is_dir() {
            std::fs::read_dir(&p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect()
        } else {
            vec![p]
        };
        for file in files {
            if let Ok(data) = std::fs::read(&file) {
                inputs.push(data);
            }
        }
    }
    let start = Instant::now();
    for _ in 0..repeat {
        for data in &inputs {
            f(data);
        }
    }
    let n = inputs.len() * repeat;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name}: {n} inputs in {secs:.3} s, {:.0} inputs/s",
        n as f64 / secs
    );
}
