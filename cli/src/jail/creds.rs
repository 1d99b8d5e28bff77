//! Dropping root for good: supplementary groups, gid, uid (in that order),
//! checked afterwards, then no_new_privs.

use std::io;

use anyhow::{anyhow, bail};

fn check(what: &str, ret: libc::c_int) -> anyhow::Result<()> {
    if ret < 0 {
        bail!("{what}: {}", io::Error::last_os_error());
    }
    Ok(())
}

/// The real, effective and saved uids.
pub fn uids() -> [libc::uid_t; 3] {
    let mut ids = [0; 3];
    let [r, e, s] = &mut ids;
    // SAFETY: getresuid writes three uid_t through the pointers, which
    // point at distinct live integers.
    unsafe { libc::getresuid(r, e, s) };
    ids
}

/// The real, effective and saved gids.
pub fn gids() -> [libc::gid_t; 3] {
    let mut ids = [0; 3];
    let [r, e, s] = &mut ids;
    // SAFETY: as in `uids`.
    unsafe { libc::getresgid(r, e, s) };
    ids
}

/// The number of supplementary groups.
pub fn group_count() -> libc::c_int {
    // SAFETY: with a size of 0, getgroups only counts and writes nothing.
    unsafe { libc::getgroups(0, std::ptr::null_mut()) }
}

/// The effective and permitted capability sets (both 64-bit halves).
pub fn capabilities() -> io::Result<(u64, u64)> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget reads the header and, for version 3, writes two data
    // structs; both are repr(C) matching the kernel's and outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| u64::from(hi) << 32 | u64::from(lo);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
    ))
}

/// `prctl(option, arg2, 0, 0, 0)` for options whose arguments are plain
/// integers. The kernel reads each as an unsigned long: pass them as such
/// through the variadic call.
pub fn prctl(option: libc::c_int, arg2: libc::c_ulong) -> libc::c_int {
    let zero: libc::c_ulong = 0;
    // SAFETY: callers pass only options that take integer arguments; no
    // memory is read or written.
    unsafe { libc::prctl(option, arg2, zero, zero, zero) }
}

/// Whether no_new_privs is set.
pub fn no_new_privs() -> bool {
    prctl(libc::PR_GET_NO_NEW_PRIVS, 0) == 1
}

/// Becomes `uid`:`gid` with no supplementary groups and no capabilities,
/// for good, and sets no_new_privs. Every step is verified.
pub fn drop_to(uid: u32, gid: u32) -> anyhow::Result<()> {
    // SAFETY: an empty list: no pointer is read.
    check("setgroups", unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: setresgid takes three integers.
    check("setresgid", unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: setresuid takes three integers. Leaving uid 0 clears the
    // capability sets (no SECBIT_KEEP_CAPS is set).
    check("setresuid", unsafe { libc::setresuid(uid, uid, uid) })?;

    if uids() != [uid; 3] || gids() != [gid; 3] || group_count() != 0 {
        bail!(
            "credentials did not change: uids {:?}, gids {:?}, {} groups",
            uids(),
            gids(),
            group_count()
        );
    }
    // SAFETY: setuid takes an integer. Getting root back must fail.
    if unsafe { libc::setuid(0) } == 0 {
        bail!("could regain uid 0 after dropping it");
    }
    match capabilities() {
        Ok((0, 0)) => {}
        Ok((e, p)) => bail!("capabilities left after dropping root: effective {e:#x}, permitted {p:#x}"),
        Err(e) => bail!("capget: {e}"),
    }
    check("PR_SET_NO_NEW_PRIVS", prctl(libc::PR_SET_NO_NEW_PRIVS, 1))?;
    if !no_new_privs() {
        return Err(anyhow!("no_new_privs did not stick"));
    }
    Ok(())
}
