//! Metrics, lifecycle events, TTL and idle timeout on the bare-metal test
//! guest (docs/OBSERVABILITY.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use hearth::{
    DiskConfig, EventKind, EventSink, ExitReason, IdleAction, IdlePolicy, RestoreOptions, SerialBuffer,
    SerialOutput, Vm, VmConfig, VmEvent, VmMetrics,
};
use hearth_tests::{TestVm, TestVmBuilder, GUEST_TIMEOUT};

fn start(b: TestVmBuilder, f: impl FnOnce(&mut VmConfig)) -> TestVm {
    let console = SerialBuffer::new();
    let mut config = b.config(&console);
    f(&mut config);
    let vm = Vm::start(config).unwrap_or_else(|e| panic!("Vm::start failed: {e}"));
    TestVm { vm, console }
}

fn vcpu_cpu_us(m: &VmMetrics) -> u64 {
    m.vcpus.iter().map(|v| v.cpu.cpu_us).sum()
}

/// Events received so far, waiting up to `timeout` for one of `until`.
fn events_until(rx: &Receiver<VmEvent>, until: &str, timeout: Duration) -> Vec<VmEvent> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(e) => {
                let done = kind_name(&e.kind) == until;
                out.push(e);
                if done {
                    return out;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no {until} event within {timeout:?}; got {:?}", names(&out));
}

fn kind_name(k: &EventKind) -> String {
    let v = serde_json::to_value(k).unwrap();
    v["event"].as_str().unwrap().to_string()
}

fn names(events: &[VmEvent]) -> Vec<String> {
    events.iter().map(|e| kind_name(&e.kind)).collect()
}

#[test]
fn metrics_show_the_bytes_a_guest_reads_and_its_exits() {
    let dir = tempdir("metrics-blk");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
    let bench = 64;
    let t = start(
        TestVm::scenario("blk")
            .arg(&format!("tg.blk.bench={bench}"))
            .disk(DiskConfig::file(&disk)),
        |_| {},
    );
    t.expect("BLK-OK", GUEST_TIMEOUT);
    let m = t.vm.metrics();
    // Sector 0, the 8-sector read-back, then the bench's 4 KiB reads.
    let expected = 512 + 8 * 512 + bench * 4096;
    assert_eq!(m.disks[0].read_bytes, expected, "{:?}", m.disks[0]);
    assert_eq!(m.disks[0].write_bytes, 8 * 512);
    assert_eq!(m.vcpus.len(), 1);
    let exits = m.vcpus[0].exits;
    assert!(
        exits.mmio_write > 0 && exits.mmio_read > 0,
        "virtio register exits: {exits:?}"
    );
    assert!(exits.io_out > 0, "serial output exits: {exits:?}");
    assert!(
        m.vmm_threads.iter().any(|t| t.name == "events"),
        "{:?}",
        m.vmm_threads
    );
    let mem = m.memory.expect("pagemap readable here");
    assert_eq!(mem.guest_bytes, t.vm.config().memory_mib << 20);
    assert!(
        mem.resident_bytes > 0 && mem.resident_bytes <= mem.guest_bytes,
        "{mem:?}"
    );
    assert_eq!(mem.private_bytes + mem.shared_bytes, mem.resident_bytes);
    assert_eq!(m.vm, t.vm.id());
    // The JSON form round-trips.
    let json = serde_json::to_string(&m).unwrap();
    assert_eq!(serde_json::from_str::<VmMetrics>(&json).unwrap(), m);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn vcpu_time_grows_while_the_guest_spins_and_not_while_it_halts() {
    let t = start(TestVm::scenario("spin"), |_| {});
    t.expect("GUEST-READY", GUEST_TIMEOUT);
    let window = Duration::from_millis(400);
    let a = vcpu_cpu_us(&t.vm.metrics());
    // A loaded host may give the vCPU thread little of the wall-clock time:
    // wait for 40 ms of vCPU time.
    let spinning = Instant::now();
    let mut b = a;
    while b - a <= 40_000 {
        assert!(
            spinning.elapsed() < GUEST_TIMEOUT,
            "spinning for {:?} used {} us of vCPU time",
            spinning.elapsed(),
            b - a
        );
        std::thread::sleep(Duration::from_millis(20));
        b = vcpu_cpu_us(&t.vm.metrics());
    }
    t.vm.send_serial_input(b"x");
    t.expect("SPIN-HALT", GUEST_TIMEOUT);
    std::thread::sleep(Duration::from_millis(100));
    let c = vcpu_cpu_us(&t.vm.metrics());
    std::thread::sleep(window);
    let d = vcpu_cpu_us(&t.vm.metrics());
    assert!(
        d - c < 10_000,
        "halted for {window:?} yet used {} us of vCPU time",
        d - c
    );
}

#[test]
fn a_clones_private_pages_grow_as_it_writes_memory() {
    let dir = tempdir("metrics-clone");
    let snap = dir.join("snap");
    let parent = TestVm::scenario("memory")
        .memory_mib(128)
        .arg("tg.mem.touch_mib=16")
        .arg("tg.mem.change_kib=8192")
        .start();
    parent.expect("MEM-READY", GUEST_TIMEOUT);
    parent.vm.pause().unwrap();
    parent.vm.snapshot(&snap).unwrap();
    drop(parent);

    let console = SerialBuffer::new();
    let clone = Vm::restore(
        &snap,
        &RestoreOptions::new().serial(SerialOutput::Buffer(console.clone())),
    )
    .unwrap();
    let before = clone.memory_usage().expect("pagemap readable here");
    console.clear();
    clone.send_serial_input(b"x");
    assert!(
        console.wait_for("MEM-CHANGED 1", GUEST_TIMEOUT),
        "{}",
        console.text()
    );
    let after = clone.memory_usage().unwrap();
    let grown = after.private_bytes - before.private_bytes;
    // The guest wrote 8 MiB it had only read since the restore.
    assert!(grown >= 8 << 20, "private {before:?} -> {after:?}");
    assert!(after.shared_bytes > 0, "{after:?}");
    drop(clone);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn events_of_a_vms_life_are_complete_ordered_and_labelled() {
    let dir = tempdir("events");
    let snap = dir.join("snap");
    let (sink, rx) = EventSink::channel(64);
    let t = start(TestVm::scenario("counter"), |c| {
        c.id = Some("vm-events-1".into());
        c.labels.insert("tenant".into(), "t7".into());
        c.labels.insert("trace".into(), "abc".into());
        c.events = Some(sink.clone());
    });
    t.expect("COUNT 2", GUEST_TIMEOUT);
    t.vm.pause().unwrap();
    t.vm.resume().unwrap();
    t.vm.pause().unwrap();
    t.vm.snapshot(&snap).unwrap();
    drop(t);
    let events = events_until(&rx, "exited", Duration::from_secs(10));
    assert_eq!(
        names(&events),
        [
            "created",
            "booted",
            "paused",
            "resumed",
            "paused",
            "snapshotted",
            "exited"
        ]
    );
    for e in &events {
        assert_eq!(e.vm, "vm-events-1");
        assert_eq!(e.labels.get("tenant").map(String::as_str), Some("t7"), "{e:?}");
    }
    assert!(events.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
    match &events[6].kind {
        EventKind::Exited { reason, totals } => {
            assert_eq!(reason, "stopped");
            assert!(totals.uptime_ms > 0 && totals.paused_ms > 0, "{totals:?}");
            assert!(totals.vcpu_cpu_us > 0, "{totals:?}");
        }
        other => panic!("{other:?}"),
    }

    // The restore is the same VM, with a label added.
    let vm = Vm::restore(
        &snap,
        &RestoreOptions::new()
            .serial(SerialOutput::None)
            .events(sink)
            .label("phase", "restored"),
    )
    .unwrap();
    assert_eq!(vm.id(), "vm-events-1");
    drop(vm);
    let events = events_until(&rx, "exited", Duration::from_secs(10));
    assert_eq!(names(&events), ["created", "restored", "exited"]);
    match &events[1].kind {
        EventKind::Restored {
            from_vm, snapshot, ..
        } => {
            assert_eq!(from_vm.as_deref(), Some("vm-events-1"));
            assert_eq!(snapshot.as_deref(), Some(snap.as_path()));
        }
        other => panic!("{other:?}"),
    }
    assert!(events
        .iter()
        .all(|e| e.labels.get("phase").map(String::as_str) == Some("restored")
            && e.labels.contains_key("tenant")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_ttl_of_2s_stops_a_spinning_guest_on_time() {
    let (sink, rx) = EventSink::channel(64);
    let t0 = Instant::now();
    let t = start(TestVm::scenario("spin"), |c| {
        c.ttl = Some(Duration::from_secs(2));
        c.events = Some(sink);
    });
    // The TTL runs from a moment inside Vm::start, which a slow machine
    // may take long over.
    let started = t0.elapsed();
    let reason =
        t.vm.wait_timeout(Duration::from_secs(10))
            .expect("the TTL stops the VM");
    let took = t0.elapsed();
    assert_eq!(reason, ExitReason::TtlExpired);
    eprintln!("a 2 s TTL stopped the VM {took:?} after Vm::start was called ({started:?} in it)");
    assert!(
        took >= Duration::from_millis(1900) && took <= started + Duration::from_millis(2100),
        "stopped after {took:?} ({started:?} in Vm::start)"
    );
    drop(t);
    let events = events_until(&rx, "exited", Duration::from_secs(5));
    assert!(
        names(&events).contains(&"ttl_expired".to_string()),
        "{:?}",
        names(&events)
    );
}

#[test]
fn the_ttl_can_be_changed_and_survives_a_snapshot() {
    let dir = tempdir("ttl-snap");
    let t = start(TestVm::scenario("counter"), |c| {
        c.ttl = Some(Duration::from_secs(600))
    });
    t.expect("GUEST-READY", GUEST_TIMEOUT);
    t.vm.set_ttl(Some(Duration::from_secs(30)));
    let left = t.vm.ttl_remaining().unwrap();
    assert!(
        left <= Duration::from_secs(30) && left > Duration::from_secs(25),
        "{left:?}"
    );
    t.vm.pause().unwrap();
    t.vm.snapshot(dir.join("s")).unwrap();
    drop(t);
    let vm = Vm::restore(dir.join("s"), &RestoreOptions::new().serial(SerialOutput::None)).unwrap();
    let left = vm.ttl_remaining().unwrap();
    assert!(
        left <= Duration::from_secs(30) && left > Duration::from_secs(20),
        "{left:?}"
    );
    drop(vm);
    let vm = Vm::restore(
        dir.join("s"),
        &RestoreOptions::new()
            .serial(SerialOutput::None)
            .ttl(Duration::from_millis(300)),
    )
    .unwrap();
    assert_eq!(
        vm.wait_timeout(Duration::from_secs(5)),
        Some(ExitReason::TtlExpired)
    );
    drop(vm);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_idle_timeout_snapshots_a_halting_guest_and_a_restore_continues_it() {
    let dir = tempdir("idle");
    let snap = dir.join("idle-snap");
    let (sink, rx) = EventSink::channel(64);
    let t = start(TestVm::scenario("counter").arg("tg.period_ms=1000"), |c| {
        c.idle = Some(IdlePolicy::new(
            Duration::from_millis(1500),
            IdleAction::Snapshot(snap.clone()),
        ));
        c.events = Some(sink);
    });
    t.expect("COUNT 1", GUEST_TIMEOUT);
    let reason =
        t.vm.wait_timeout(Duration::from_secs(20))
            .expect("idle stops the VM");
    assert_eq!(reason, ExitReason::IdleSnapshot(snap.clone()));
    let last: u64 = t
        .lines_with("COUNT ")
        .last()
        .and_then(|l| l.trim_start_matches("COUNT ").trim().parse().ok())
        .expect("a COUNT line");
    drop(t);
    let events = events_until(&rx, "exited", Duration::from_secs(5));
    let n = names(&events);
    let idle = n.iter().position(|e| e == "idle").expect("idle event");
    assert_eq!(&n[idle..], ["idle", "paused", "snapshotted", "exited"], "{n:?}");

    let console = SerialBuffer::new();
    let vm = Vm::restore(
        &snap,
        &RestoreOptions::new()
            .serial(SerialOutput::Buffer(console.clone()))
            .idle_timeout(IdlePolicy::new(Duration::from_secs(600), IdleAction::Pause)),
    )
    .unwrap();
    let next = format!("COUNT {}", last + 1);
    assert!(console.wait_for(&next, GUEST_TIMEOUT), "{}", console.text());
    drop(vm);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_idle_timeout_can_pause_instead() {
    let t = start(TestVm::scenario("spin"), |c| {
        c.idle = Some(IdlePolicy::new(Duration::from_millis(300), IdleAction::Pause));
    });
    t.expect("GUEST-READY", GUEST_TIMEOUT);
    // Spinning is not idle.
    std::thread::sleep(Duration::from_millis(900));
    assert!(!t.vm.is_paused());
    t.vm.send_serial_input(b"x");
    t.expect("SPIN-HALT", GUEST_TIMEOUT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.vm.is_paused() {
        assert!(Instant::now() < deadline, "a halted guest was not paused");
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = t.vm.metrics();
    assert!(m.paused);
    t.vm.resume().unwrap();
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("hearth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
