//! Linux tier: our kernel and hearth-init reach user space, with 1 and 2
//! vCPUs. ~30 s each on PVM hosts, where kernel code is emulated.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use hearth::ExitReason;
use hearth_tests::linux::{guest, linux_vm, LINUX_TIMEOUT};

fn boot_to_init(test: &str, vcpus: u32) {
    let Some(g) = guest(test) else { return };
    let t = linux_vm(
        &g,
        &format!("hearth.checks=uname,cpus hearth.expect_cpus={vcpus}"),
    )
    .initrd(g.initramfs.clone())
    .vcpus(vcpus)
    .start();
    // On failure, `expect` prints the whole console: the exact point where
    // the boot stopped.
    // The release comes from the kernel tree that was built, never from a
    // constant: Debian's linux-source-6.1 moves.
    t.expect(
        &format!("CHECK uname PASS release={} ", g.kernel_release),
        LINUX_TIMEOUT,
    );
    t.expect(&format!("CHECK cpus PASS online={vcpus} "), LINUX_TIMEOUT);
    t.expect("HEARTH-INIT DONE pass=2 fail=0", LINUX_TIMEOUT);
    assert_eq!(t.expect_exit(LINUX_TIMEOUT), ExitReason::Reset);
    let ready =
        t.vm.boot_time()
            .expect("hearth-init writes the boot-timer marker");
    eprintln!(
        "{test}: Linux user space ready after {:.1} s ({:.1} s VMM CPU)",
        ready.wall.as_secs_f64(),
        ready.cpu.as_secs_f64()
    );
}

#[test]
fn linux_boots_to_hearth_init_with_one_vcpu() {
    boot_to_init("linux_boots_to_hearth_init_with_one_vcpu", 1);
}

#[test]
fn linux_boots_to_hearth_init_with_two_vcpus() {
    boot_to_init("linux_boots_to_hearth_init_with_two_vcpus", 2);
}
