//! The allow-lists, per thread kind: the system calls each kind of thread
//! makes after setup, found by reading the code and confirmed by tracing
//! the integration suite (`strace -f -Y`, see docs/SECCOMP.md).
//!
//! Arguments are checked where a call could do much more than the thread
//! needs: `ioctl` (only the requests listed), `socket` (Unix only), `fcntl`
//! (descriptor flags only), `mmap` and `mprotect` (never executable).

use std::collections::BTreeMap;

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;

/// Rules: each allowed syscall with its argument conditions (an empty
/// list allows any arguments).
pub(super) type Rules = BTreeMap<i64, Vec<SeccompRule>>;

// KVM and TUN ioctl numbers (include/uapi/linux/kvm.h, if_tun.h): request
// numbers, not pointers, so plain constants.
const KVM_RUN: u64 = 0xae80;
const KVM_GET_REGS: u64 = 0x8090_ae81;
const KVM_SET_REGS: u64 = 0x4090_ae82;
const KVM_GET_SREGS: u64 = 0x8138_ae83;
const KVM_GET_MSRS: u64 = 0xc008_ae88;
const KVM_GET_LAPIC: u64 = 0x8400_ae8e;
const KVM_GET_MP_STATE: u64 = 0x8004_ae98;
const KVM_GET_VCPU_EVENTS: u64 = 0x8040_ae9f;
const KVM_GET_DEBUGREGS: u64 = 0x8080_aea1;
const KVM_GET_XSAVE: u64 = 0x9000_aea4;
const KVM_GET_XCRS: u64 = 0x8188_aea6;
const KVM_GET_TSC_KHZ: u64 = 0xaea3;
const KVM_GET_XSAVE2: u64 = 0x9000_aecf;
const KVM_GET_CLOCK: u64 = 0x8030_ae7c;
const KVM_CHECK_EXTENSION: u64 = 0xae03;
const KVM_GET_IRQCHIP: u64 = 0xc208_ae62;
const KVM_GET_PIT2: u64 = 0x8070_ae9f;
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const FIONBIO: u64 = libc::FIONBIO;

/// Calls every thread makes: locks, memory, signals (vCPU kicks), time,
/// logging, and thread exit.
const COMMON: &[i64] = &[
    libc::SYS_futex,
    libc::SYS_munmap,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_read,
    libc::SYS_close,
    libc::SYS_exit,
];

/// vCPU threads: KVM_RUN and the state ioctls a snapshot or the
/// instruction skipper asks for, device register writes (eventfds, serial
/// output), and the TAP offload setting made when a driver activates a
/// network device.
const VCPU_IOCTLS: &[u64] = &[
    KVM_RUN,
    KVM_GET_REGS,
    KVM_SET_REGS,
    KVM_GET_SREGS,
    KVM_GET_MSRS,
    KVM_GET_LAPIC,
    KVM_GET_MP_STATE,
    KVM_GET_VCPU_EVENTS,
    KVM_GET_DEBUGREGS,
    KVM_GET_XSAVE,
    KVM_GET_XSAVE2,
    KVM_GET_XCRS,
    KVM_GET_TSC_KHZ,
    TUNSETOFFLOAD,
];

/// The event loop: epoll, eventfds and timerfds, disk and TAP I/O, and
/// the vsock device's Unix sockets.
const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_timerfd_settime,
    libc::SYS_readv,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    // The user-mode network backend's host sockets (TCP connects, UDP
    // flows): bind (UDP to an ephemeral port), TCP_NODELAY, and the
    // finished connect's peer.
    libc::SYS_bind,
    libc::SYS_setsockopt,
    libc::SYS_getpeername,
];

/// An API thread (the launcher's control socket): it serves clients and
/// runs pause, snapshot and rate-limit requests, which save VM state with
/// KVM ioctls and write the snapshot files.
const API: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_openat,
    libc::SYS_mkdirat,
    libc::SYS_mkdir,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlinkat,
    libc::SYS_unlink,
    libc::SYS_getdents64,
    // realpath (a snapshot's directory is recorded canonical).
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_mincore,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
];

/// Guest memory accounting (`Vm::metrics`) from the API and lifecycle
/// threads.
const PAGEMAP_SCAN: u64 = crate::observe::memory::PAGEMAP_SCAN;

const API_IOCTLS: &[u64] = &[
    PAGEMAP_SCAN,
    KVM_CHECK_EXTENSION,
    KVM_GET_CLOCK,
    KVM_GET_IRQCHIP,
    KVM_GET_PIT2,
    KVM_GET_MSRS,
    KVM_GET_TSC_KHZ,
];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    // Indices below 6 are always valid: this cannot fail.
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).unwrap_or_else(|_| unreachable!())
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    // Non-empty condition lists are always valid.
    SeccompRule::new(conditions).unwrap_or_else(|_| unreachable!())
}

/// `syscall` allowed when argument `arg` equals one of `values`.
fn one_of(rules: &mut Rules, syscall: i64, arg: u8, values: &[u64]) {
    let list = rules.entry(syscall).or_default();
    list.extend(values.iter().map(|&v| rule(vec![cond(arg, SeccompCmpOp::Eq, v)])));
}

fn allow(rules: &mut Rules, syscalls: &[i64]) {
    for &s in syscalls {
        rules.insert(s, Vec::new());
    }
}

/// Memory mappings and protection changes that are never executable.
fn no_exec(rules: &mut Rules) {
    let not_exec = || {
        vec![rule(vec![cond(
            2,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )])]
    };
    rules.insert(libc::SYS_mmap, not_exec());
    rules.insert(libc::SYS_mprotect, not_exec());
}

/// Calls the refuse-open filter answers with EACCES (and the allow-lists
/// then let through to it).
const OPENS: &[i64] = &[libc::SYS_open, libc::SYS_openat];

/// The refuse-open filter's rules.
pub(super) fn refused_opens() -> Rules {
    let mut r = Rules::new();
    allow(&mut r, OPENS);
    r
}

/// The rules for `kind`.
pub(super) fn rules(kind: ThreadKind) -> Rules {
    let mut r = Rules::new();
    allow(&mut r, COMMON);
    no_exec(&mut r);
    let fcntl_ops = [libc::F_GETFD, libc::F_SETFD, libc::F_GETFL, libc::F_SETFL].map(|op| op as u64);
    match kind {
        ThreadKind::Vcpu => {
            one_of(&mut r, libc::SYS_ioctl, 1, VCPU_IOCTLS);
            // Refused with EACCES by the refuse-open filter (glibc malloc
            // reads /proc/sys/vm/overcommit_memory when it first trims).
            allow(&mut r, OPENS);
        }
        ThreadKind::EventLoop => {
            allow(&mut r, EVENT_LOOP);
            allow(&mut r, OPENS);
            one_of(&mut r, libc::SYS_ioctl, 1, &[FIONBIO]);
            // Unix sockets for vsock; IPv4 for the user-mode network
            // backend's flows (docs/SECCOMP.md).
            one_of(
                &mut r,
                libc::SYS_socket,
                0,
                &[libc::AF_UNIX as u64, libc::AF_INET as u64],
            );
            one_of(&mut r, libc::SYS_fcntl, 1, &fcntl_ops);
        }
        ThreadKind::Api => {
            allow(&mut r, API);
            // `pause` with `sync` asks the guest agent through the VM's
            // vsock socket.
            one_of(&mut r, libc::SYS_socket, 0, &[libc::AF_UNIX as u64]);
            one_of(&mut r, libc::SYS_ioctl, 1, API_IOCTLS);
            one_of(&mut r, libc::SYS_ioctl, 1, &[FIONBIO]);
            one_of(&mut r, libc::SYS_fcntl, 1, &fcntl_ops);
            // Duplicating a client's socket for its writer half.
            one_of(&mut r, libc::SYS_fcntl, 1, &[libc::F_DUPFD_CLOEXEC as u64]);
        }
    }
    r
}
