//! The host's own IPv4 addresses (every interface's, from
//! `getifaddrs`): flows to them are refused unless a rule names them.

use std::net::Ipv4Addr;

/// The IPv4 addresses of the host's interfaces, loopback left out (the
/// loopback range is closed on its own). Empty if they cannot be read.
pub fn host_addrs() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head`, which is a valid
    // out-pointer; on failure it writes nothing and we return.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null node of the list getifaddrs made,
        // alive until freeifaddrs below.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr is non-null and points at a sockaddr whose
            // family field is always readable.
            let family = unsafe { (*ifa.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                // SAFETY: an AF_INET sockaddr is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_addrs_are_not_loopback() {
        // Whatever the machine has, loopback is never listed.
        assert!(super::host_addrs().iter().all(|ip| !ip.is_loopback()));
    }
}
