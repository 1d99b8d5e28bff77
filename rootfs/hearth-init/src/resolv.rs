//! `/etc/resolv.conf` from the kernel's own network configuration: with
//! `ip=<client>::<gateway>:<netmask>::eth0:off:<dns0>` the kernel
//! configures eth0 and lists its DNS servers in `/proc/net/pnp`; init
//! copies them to `/etc/resolv.conf`, so a program's resolver (busybox
//! `wget http://NAME/`) asks them. A user-mode interface's DNS server is
//! its gateway, 10.0.2.2 (docs/NETWORK.md). An existing resolv.conf is
//! left alone.

use std::io;
use std::path::Path;

/// The kernel's IP autoconfiguration summary.
pub const PNP_PATH: &str = "/proc/net/pnp";
/// Where resolvers look.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The resolv.conf for the `nameserver` (and `domain`) lines of a
/// `/proc/net/pnp`, or `None` when it names no server (nothing to write).
/// The kernel writes `0.0.0.0` for unset servers: those are skipped.
pub fn resolv_conf_from_pnp(pnp: &str) -> Option<String> {
    let mut out = String::new();
    for line in pnp.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("nameserver"), Some(ip))
                if ip
                    .parse::<std::net::Ipv4Addr>()
                    .is_ok_and(|a| !a.is_unspecified()) =>
            {
                out.push_str(&format!("nameserver {ip}\n"));
            }
            (Some("domain"), Some(d)) if !d.is_empty() => out.push_str(&format!("search {d}\n")),
            _ => {}
        }
    }
    out.contains("nameserver").then_some(out)
}

/// Writes `/etc/resolv.conf` from `/proc/net/pnp` if the kernel learned a
/// DNS server and no resolv.conf exists. `Ok(false)`: nothing to do.
pub fn write_from_kernel() -> io::Result<bool> {
    if Path::new(RESOLV_CONF).exists() {
        return Ok(false);
    }
    let pnp = match std::fs::read_to_string(PNP_PATH) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let Some(text) = resolv_conf_from_pnp(&pnp) else {
        return Ok(false);
    };
    std::fs::create_dir_all("/etc")?;
    std::fs::write(RESOLV_CONF, text)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pnp_to_resolv_conf() {
        let pnp = "#MANUAL\nnameserver 10.0.2.2\nnameserver 0.0.0.0\ndomain test\nbootserver 10.0.2.2\n";
        assert_eq!(
            resolv_conf_from_pnp(pnp).as_deref(),
            Some("nameserver 10.0.2.2\nsearch test\n")
        );
        assert_eq!(resolv_conf_from_pnp("#MANUAL\nnameserver 0.0.0.0\n"), None);
        assert_eq!(resolv_conf_from_pnp(""), None);
        assert_eq!(resolv_conf_from_pnp("nameserver bogus\n"), None);
    }
}
