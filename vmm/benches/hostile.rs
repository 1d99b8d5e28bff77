//! How fast pause and snapshot answer while a hostile guest attacks
//! (docs/LIMITS.md; the aim is 100 ms whatever the guest does): for each
//! attack of the test guest's `hostile` scenario, the median and worst of
//! `RUNS` pauses (then resumes) and snapshots, in ms.
//!
//! `cargo bench -p hearth --bench hostile [-- RUNS]` (default 20).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hearth::{
    DiskConfig, MemoryNet, NetBackend, NetConfig, NetFactory, SerialBuffer, SerialOutput, Vm, VmConfig,
    VsockConfig,
};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-hostile-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn disk(name: &str, mib: u64, dir: Option<PathBuf>) -> PathBuf {
    let p = dir.map_or_else(|| tmp(name), |d| d.join(name));
    std::fs::File::create(&p).unwrap().set_len(mib << 20).unwrap();
    p
}

fn median_max(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    println!("pause and snapshot under attack: test guest `hostile`, 64 MiB, 1 vCPU, {runs} runs each (median / worst, ms)");
    let shm = std::path::Path::new("/dev/shm")
        .is_dir()
        .then(|| PathBuf::from("/dev/shm"));
    let attacks: Vec<(&str, &str)> = vec![
        ("none (idle guest)", "tg.attack=vsock-idle"),
        ("alias-blk", "tg.attack=alias-blk"),
        ("alias-net", "tg.attack=alias-net"),
        ("vsock-norx", "tg.attack=vsock-norx"),
        ("blk-flood (8 MiB reads)", "tg.attack=blk-flood"),
        ("zeroes (tmpfs image)", "tg.attack=zeroes"),
        ("vsock-conn-flood", "tg.attack=vsock-conn-flood"),
        ("random campaign", "tg.seed=7 tg.steps=1000000"),
    ];
    for (name, args) in attacks {
        let console = SerialBuffer::new();
        let net = MemoryNet::new().unwrap();
        let n2 = net.clone();
        let uds = tmp(&format!("{}.sock", name.split(' ').next().unwrap()));
        let listener = std::os::unix::net::UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
        listener.set_nonblocking(true).unwrap();
        let img_dir = if name.starts_with("zeroes") {
            shm.clone()
        } else {
            None
        };
        let config = VmConfig::builder(hearth_testguest::elf())
            .memory_mib(64)
            .cmdline(format!("tg.scenario=hostile {args}"))
            .serial(SerialOutput::Buffer(console.clone()))
            .disk(DiskConfig::file(disk(
                &format!("hearth-hostile-bench-{}.img", std::process::id()),
                256,
                img_dir,
            )))
            .net(NetConfig::custom(
                "memory",
                NetFactory::new(move || Ok(Box::new(n2.clone()) as Box<dyn NetBackend>)),
            ))
            .vsock(VsockConfig::new(3, &uds))
            .build()
            .unwrap();
        let vm = Vm::start(config).unwrap();
        assert!(
            console.wait_for("HOSTILE-FIRED", Duration::from_secs(30)),
            "{name}: {}",
            console.text()
        );
        std::thread::sleep(Duration::from_millis(300));
        let (mut pauses, mut snaps) = (Vec::new(), Vec::new());
        let mut held = Vec::new();
        for i in 0..runs {
            while let Ok((s, _)) = listener.accept() {
                held.push(s);
            }
            let t = Instant::now();
            vm.pause().unwrap();
            pauses.push(t.elapsed().as_secs_f64() * 1e3);
            if i < runs.min(5) {
                let t = Instant::now();
                vm.snapshot(tmp("snap")).unwrap();
                snaps.push(t.elapsed().as_secs_f64() * 1e3);
            }
            vm.resume().unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        let (pm, px) = median_max(pauses);
        let (sm, sx) = median_max(snaps);
        println!("{name:<28} pause {pm:>7.2} / {px:>7.2}   snapshot {sm:>7.2} / {sx:>7.2}");
        vm.stop();
        drop(vm);
        drop(net);
    }
    let _ = std::fs::remove_dir_all(tmp(""));
    if let Some(d) = shm {
        let _ = std::fs::remove_file(d.join(format!("hearth-hostile-bench-{}.img", std::process::id())));
    }
}
