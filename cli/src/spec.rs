//! Parsers for the launcher's compact device specs (`--disk`, `--net`,
//! `--vsock`, ...): pure functions from text to library config (but
//! `policy=FILE`, which reads the file).

use std::path::PathBuf;

use hearth::{
    BootProtocol, BucketConfig, DiskConfig, NetBackendKind, NetConfig, NetPolicy, RateLimit, SeccompMode,
    SerialOutput, UserNetSpec, VsockConfig,
};

use crate::jail::JailSpec;

/// A rate per second: a number with an optional binary suffix K, M or G
/// (`10M` is 10 MiB/s for bandwidth, 10 Mi operations/s for a count).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("bad rate {s:?}: expected a number with an optional K, M or G"))?;
    match n.checked_mul(1 << shift) {
        Some(v) if v > 0 => Ok(v),
        Some(_) => Err(format!("bad rate {s:?}: it must be positive")),
        None => Err(format!("bad rate {s:?}: too large")),
    }
}

/// A bucket refilling `rate` tokens per second (with one second's worth of
/// burst).
fn per_second(rate: &str) -> Result<BucketConfig, String> {
    parse_rate(rate).map(BucketConfig::per_second)
}

pub fn parse_serial(s: &str) -> Result<SerialOutput, String> {
    match s {
        "stdout" => Ok(SerialOutput::Stdout),
        "none" => Ok(SerialOutput::None),
        _ => match s.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(SerialOutput::File(path.into())),
            _ => Err(format!("expected stdout, none or file:PATH, got {s:?}")),
        },
    }
}

pub fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let mut parts = s.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("expected PATH[,ro][,overlay=PATH][,id=NAME][,bw=RATE][,iops=N]")?;
    let mut disk = DiskConfig::file(path);
    let mut limit = RateLimit::default();
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "ro" => disk = disk.read_only(true),
            Some(("id", id)) => disk = disk.id(id),
            Some(("overlay", o)) if !o.is_empty() => disk = disk.overlay(o),
            Some(("bw", v)) => limit.bandwidth = Some(per_second(v)?),
            Some(("iops", v)) => limit.ops = Some(per_second(v)?),
            _ => {
                return Err(format!(
                    "unknown disk option {opt:?}; expected ro, overlay=PATH, id=NAME, bw=RATE or iops=N"
                ))
            }
        }
    }
    Ok(disk.rate_limit(limit))
}

pub fn parse_net(s: &str) -> Result<NetConfig, String> {
    let mut net: Option<NetConfig> = None;
    let (mut mac, mut mtu, mut create) = (None, None, false);
    let (mut rx, mut tx) = (RateLimit::default(), RateLimit::default());
    let mut policy: Option<NetPolicy> = None;
    for opt in s.split(',') {
        match opt.split_once('=') {
            Some(("tap", v)) if !v.is_empty() => net = Some(NetConfig::tap(v)),
            None if opt == "user" => net = Some(NetConfig::user(UserNetSpec::default())),
            Some(("policy", v)) if !v.is_empty() => policy = Some(read_policy(v)?),
            Some(("mac", v)) => mac = Some(v.to_string()),
            Some(("mtu", v)) => mtu = Some(v.parse::<u16>().map_err(|_| format!("bad mtu {v:?}"))?),
            Some(("rx-bw", v)) => rx.bandwidth = Some(per_second(v)?),
            Some(("tx-bw", v)) => tx.bandwidth = Some(per_second(v)?),
            Some(("rx-pps", v)) => rx.ops = Some(per_second(v)?),
            Some(("tx-pps", v)) => tx.ops = Some(per_second(v)?),
            None if opt == "create" => create = true,
            _ => {
                return Err(format!(
                    "unknown net option {opt:?}; expected tap=NAME[,mac=MAC][,mtu=N][,create]\
                     [,rx-bw=RATE][,tx-bw=RATE][,rx-pps=N][,tx-pps=N] or user[,policy=FILE][,mac=MAC]..."
                ))
            }
        }
    }
    let mut net = net
        .ok_or("expected tap=NAME or user")?
        .create(create)
        .rate_limits(rx, tx);
    match (&mut net.kind, policy) {
        (NetBackendKind::User(spec), Some(p)) => spec.policy = p,
        (_, Some(_)) => return Err("policy= needs a user-mode interface (--net user,policy=FILE)".into()),
        _ => {}
    }
    if let Some(m) = mac {
        net = net.mac(m);
    }
    if let Some(m) = mtu {
        net = net.mtu(m);
    }
    Ok(net)
}

/// A policy file (JSON, docs/NETWORK.md).
fn read_policy(path: &str) -> Result<NetPolicy, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read policy {path}: {e}"))?;
    let p: NetPolicy = serde_json::from_str(&text).map_err(|e| format!("policy {path}: {e}"))?;
    p.validate().map_err(|e| format!("policy {path}: {e}"))?;
    Ok(p)
}

/// `--host NAME=IP`: a static host-map entry.
pub fn parse_host(s: &str) -> Result<(String, std::net::Ipv4Addr), String> {
    let (name, ip) = s.split_once('=').ok_or("expected NAME=IPV4")?;
    let ip = ip.parse().map_err(|_| format!("bad IPv4 address {ip:?}"))?;
    Ok((name.trim_end_matches('.').to_ascii_lowercase(), ip))
}

pub fn parse_vsock(s: &str) -> Result<VsockConfig, String> {
    let (mut cid, mut uds) = (None, None);
    for opt in s.split(',') {
        match opt.split_once('=') {
            Some(("cid", v)) => cid = Some(v.parse::<u64>().map_err(|_| format!("bad cid {v:?}"))?),
            Some(("uds", v)) if !v.is_empty() => uds = Some(v.to_string()),
            _ => return Err(format!("unknown vsock option {opt:?}; expected cid=N,uds=PATH")),
        }
    }
    match (cid, uds) {
        (Some(cid), Some(uds)) => Ok(VsockConfig::new(cid, uds)),
        _ => Err("expected cid=N,uds=PATH".into()),
    }
}

pub fn parse_seccomp(s: &str) -> Result<SeccompMode, String> {
    match s {
        "enforce" => Ok(SeccompMode::Enforce),
        "log" => Ok(SeccompMode::Log),
        "off" => Ok(SeccompMode::Off),
        _ => Err(format!("expected enforce, log or off, got {s:?}")),
    }
}

/// `uid=N,gid=N[,dir=PATH]`: both ids required, neither 0 (root) nor
/// 4294967295 (the "unchanged" value of setresuid); `dir` absolute.
pub fn parse_jail(s: &str) -> Result<JailSpec, String> {
    const EXPECTED: &str = "expected uid=N,gid=N[,dir=PATH][,net=host]";
    let (mut uid, mut gid, mut dir, mut host_net) = (None, None, None, false);
    for opt in s.split(',') {
        match opt.split_once('=') {
            Some(("uid", v)) => uid = Some(parse_jail_id("uid", v)?),
            Some(("gid", v)) => gid = Some(parse_jail_id("gid", v)?),
            Some(("dir", v)) if v.starts_with('/') => dir = Some(PathBuf::from(v)),
            Some(("dir", v)) => return Err(format!("jail dir must be an absolute path, got {v:?}")),
            Some(("net", "host")) => host_net = true,
            _ => return Err(format!("unknown jail option {opt:?}; {EXPECTED}")),
        }
    }
    match (uid, gid) {
        (Some(uid), Some(gid)) => Ok(JailSpec {
            uid,
            gid,
            dir,
            host_net,
        }),
        (None, _) => Err(format!("jail uid missing; {EXPECTED}")),
        (_, None) => Err(format!("jail gid missing; {EXPECTED}")),
    }
}

fn parse_jail_id(name: &str, v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(0) => Err(format!("jail {name}=0 is root: give an unprivileged {name}")),
        Ok(u32::MAX) | Err(_) => Err(format!(
            "bad jail {name} {v:?}: expected a number from 1 to 4294967294"
        )),
        Ok(id) => Ok(id),
    }
}

pub fn parse_protocol(s: &str) -> Result<BootProtocol, String> {
    match s {
        "auto" => Ok(BootProtocol::Auto),
        "linux" => Ok(BootProtocol::Linux),
        "pvh" => Ok(BootProtocol::Pvh),
        _ => Err(format!("expected auto, linux or pvh, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_net_specs() {
        let n = parse_net("user,mac=52:54:00:00:00:09,mtu=1400").unwrap();
        assert!(matches!(n.kind, NetBackendKind::User(_)), "{n:?}");
        assert_eq!((n.mac.as_deref(), n.mtu), (Some("52:54:00:00:00:09"), Some(1400)));
        let dir = std::env::temp_dir().join(format!("hearth-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.json");
        std::fs::write(
            &file,
            r#"{"allow":["10.1.0.0/16:22"],"hosts":{"db.test":"10.1.2.3"}}"#,
        )
        .unwrap();
        let n = parse_net(&format!("user,policy={}", file.display())).unwrap();
        let NetBackendKind::User(spec) = n.kind else {
            panic!()
        };
        assert_eq!(spec.policy.allow[0].to_string(), "10.1.0.0/16:22");
        std::fs::write(&file, r#"{"allow":["no such rule"]}"#).unwrap();
        assert!(parse_net(&format!("user,policy={}", file.display())).is_err());
        assert!(parse_net(&format!("tap=t0,policy={}", file.display())).is_err());
        assert!(parse_net("user,policy=/nonexistent/p.json").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            parse_host("Svc.Test.=127.0.0.1"),
            Ok(("svc.test".into(), std::net::Ipv4Addr::LOCALHOST))
        );
        assert!(parse_host("svc").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1500"), Ok(1500));
        assert_eq!(parse_rate("4K"), Ok(4096));
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("2g"), Ok(2 << 30));
        for bad in ["", "M", "0", "-1", "1.5M", "10T", "99999999999G"] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn disk_rate_options() {
        let d = parse_disk("/a.img,bw=8M,iops=200").unwrap();
        assert_eq!(d.rate_limit.bandwidth, Some(BucketConfig::per_second(8 << 20)));
        assert_eq!(d.rate_limit.ops, Some(BucketConfig::per_second(200)));
        assert!(parse_disk("/a.img").unwrap().rate_limit.is_unlimited());
        assert!(parse_disk("/a.img,bw=0").unwrap_err().contains("positive"));
    }

    #[test]
    fn jail_specs() {
        let j = parse_jail("uid=65534,gid=100").unwrap();
        assert_eq!((j.uid, j.gid, j.dir), (65534, 100, None));
        let j = parse_jail("gid=7,dir=/srv/jail,uid=8").unwrap();
        assert_eq!((j.uid, j.gid), (8, 7));
        assert_eq!(j.dir.as_deref(), Some(std::path::Path::new("/srv/jail")));
        assert!(!j.host_net);
        assert!(parse_jail("uid=8,gid=7,net=host").unwrap().host_net);
        for (bad, why) in [
            ("", "unknown jail option"),
            ("uid=1", "gid missing"),
            ("gid=1", "uid missing"),
            ("uid=0,gid=1", "is root"),
            ("uid=1,gid=0", "is root"),
            ("uid=-1,gid=1", "bad jail uid"),
            ("uid=1,gid=4294967295", "bad jail gid"),
            ("uid=nobody,gid=1", "bad jail uid"),
            ("uid=1,gid=1,dir=rel/dir", "absolute"),
            ("uid=1,gid=1,net=none", "unknown jail option"),
        ] {
            let e = parse_jail(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn net_rate_options() {
        let n = parse_net("tap=t0,rx-bw=1M,tx-pps=1000").unwrap();
        assert_eq!(n.rx_rate_limit.bandwidth, Some(BucketConfig::per_second(1 << 20)));
        assert_eq!(n.rx_rate_limit.ops, None);
        assert_eq!(n.tx_rate_limit.ops, Some(BucketConfig::per_second(1000)));
        assert!(parse_net("tap=t0,rx-bw=fast").is_err());
    }
}
