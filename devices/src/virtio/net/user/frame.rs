//! Ethernet frames between the guest and the user-mode backend, pure:
//! what a guest frame is (ARP, UDP, a TCP segment, an ICMP echo, or
//! something dropped), and the UDP and ICMP frames the backend builds
//! itself. TCP and ARP go to smoltcp; nothing here trusts a length field
//! it has not checked against the buffer.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::virtio::net::rxtx::{ETH_HLEN, VNET_HDR_LEN};

/// EtherType IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType ARP.
pub const ETH_P_ARP: u16 = 0x0806;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const IP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// The broadcast MAC.
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// What a guest frame is.
#[derive(Debug, PartialEq, Eq)]
pub enum GuestFrame<'a> {
    /// ARP, for smoltcp, asking about (or announcing) `target`.
    Arp {
        /// The address asked about.
        target: Ipv4Addr,
    },
    /// A UDP datagram (not a fragment).
    Udp {
        /// From.
        src: SocketAddrV4,
        /// To.
        dst: SocketAddrV4,
        /// The payload.
        payload: &'a [u8],
    },
    /// A TCP segment, for smoltcp.
    Tcp {
        /// From.
        src: SocketAddrV4,
        /// To.
        dst: SocketAddrV4,
        /// SYN without ACK: a new connection.
        syn: bool,
    },
    /// An ICMP echo request.
    Echo {
        /// From.
        src: Ipv4Addr,
        /// To.
        dst: Ipv4Addr,
        /// The ICMP message (type, code, checksum, id, seq, data).
        icmp: &'a [u8],
    },
    /// Anything else (IPv6, fragments, other protocols): dropped.
    Other,
}

/// A frame the guest sent, split at the Ethernet header.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// The sender's MAC.
    pub src_mac: [u8; 6],
    /// What it carries.
    pub kind: GuestFrame<'a>,
}

/// Why a frame is dropped before it is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than its headers say.
    #[error("truncated frame")]
    Truncated,
    /// An IPv4 header that is not one.
    #[error("malformed IPv4 header")]
    BadIp,
}

fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

fn ip4(b: &[u8], at: usize) -> Ipv4Addr {
    match b.get(at..at + 4) {
        Some(&[a, c, d, e]) => Ipv4Addr::new(a, c, d, e),
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

/// Classifies an Ethernet frame (no virtio-net header).
pub fn classify(eth: &[u8]) -> Result<Parsed<'_>, FrameError> {
    let Some((header, payload)) = eth.split_at_checked(ETH_HLEN) else {
        return Err(FrameError::Truncated);
    };
    let mut src_mac = [0u8; 6];
    src_mac.copy_from_slice(&header[6..12]);
    let kind = match be16(header, 12) {
        ETH_P_ARP => {
            if payload.len() < 28 {
                return Err(FrameError::Truncated);
            }
            GuestFrame::Arp {
                target: ip4(payload, 24),
            }
        }
        ETH_P_IP => ipv4(payload)?,
        _ => GuestFrame::Other,
    };
    Ok(Parsed { src_mac, kind })
}

fn ipv4(p: &[u8]) -> Result<GuestFrame<'_>, FrameError> {
    let first = *p.first().ok_or(FrameError::Truncated)?;
    let ihl = usize::from(first & 0xf) * 4;
    if first >> 4 != 4 || ihl < IP_HLEN {
        return Err(FrameError::BadIp);
    }
    let total = usize::from(be16(p, 2));
    if total < ihl || total > p.len() {
        return Err(FrameError::Truncated);
    }
    // Fragments are not reassembled: the guest's MTU is ours.
    if be16(p, 6) & 0x3fff != 0 {
        return Ok(GuestFrame::Other);
    }
    let (src, dst) = (ip4(p, 12), ip4(p, 16));
    let l4 = &p[ihl..total];
    Ok(match p[9] {
        PROTO_UDP => {
            if l4.len() < UDP_HLEN {
                return Err(FrameError::Truncated);
            }
            let len = usize::from(be16(l4, 4));
            if len < UDP_HLEN || len > l4.len() {
                return Err(FrameError::Truncated);
            }
            GuestFrame::Udp {
                src: SocketAddrV4::new(src, be16(l4, 0)),
                dst: SocketAddrV4::new(dst, be16(l4, 2)),
                payload: &l4[UDP_HLEN..len],
            }
        }
        PROTO_TCP => {
            if l4.len() < 20 {
                return Err(FrameError::Truncated);
            }
            let flags = l4[13];
            GuestFrame::Tcp {
                src: SocketAddrV4::new(src, be16(l4, 0)),
                dst: SocketAddrV4::new(dst, be16(l4, 2)),
                syn: flags & 0x12 == 0x02,
            }
        }
        PROTO_ICMP if l4.len() >= 8 && l4[0] == 8 && l4[1] == 0 => GuestFrame::Echo { src, dst, icmp: l4 },
        _ => GuestFrame::Other,
    })
}

/// The Internet checksum of `data` added to `sum`, not yet folded.
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(0, data))
}

/// A frame for the guest: zero virtio-net header, Ethernet, IPv4 with
/// `proto` and `l4` as its payload.
fn ip_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    l4: &[u8],
) -> Vec<u8> {
    let total = IP_HLEN + l4.len();
    let mut f = Vec::with_capacity(VNET_HDR_LEN + ETH_HLEN + total);
    f.resize(VNET_HDR_LEN, 0);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    let ip_start = f.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]); // DF, TTL 64
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let csum = checksum(&f[ip_start..ip_start + IP_HLEN]);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(l4);
    f
}

/// A UDP datagram for the guest, virtio-net header first; the payload
/// must fit the guest's MTU (the caller checks).
pub fn build_udp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let len = UDP_HLEN + payload.len();
    let mut l4 = Vec::with_capacity(len);
    l4.extend_from_slice(&src.port().to_be_bytes());
    l4.extend_from_slice(&dst.port().to_be_bytes());
    l4.extend_from_slice(&(len as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    let mut sum = sum16(0, &src.ip().octets());
    sum = sum16(sum, &dst.ip().octets());
    sum += u32::from(PROTO_UDP) + len as u32;
    let csum = match fold(sum16(sum, &l4)) {
        0 => 0xffff,
        c => c,
    };
    l4[6..8].copy_from_slice(&csum.to_be_bytes());
    ip_frame(src_mac, dst_mac, *src.ip(), *dst.ip(), PROTO_UDP, &l4)
}

/// The reply to an ICMP echo request `icmp` from `to`, sent by `from`.
pub fn build_echo_reply(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    from: Ipv4Addr,
    to: Ipv4Addr,
    icmp: &[u8],
) -> Vec<u8> {
    let mut l4 = icmp.to_vec();
    if l4.len() < 8 {
        l4.resize(8, 0);
    }
    l4[0] = 0;
    l4[1] = 0;
    l4[2] = 0;
    l4[3] = 0;
    let csum = checksum(&l4);
    l4[2..4].copy_from_slice(&csum.to_be_bytes());
    ip_frame(src_mac, dst_mac, from, to, PROTO_ICMP, &l4)
}

/// The largest UDP payload that fits in one frame of `mtu`.
pub fn max_udp_payload(mtu: u16) -> usize {
    usize::from(mtu).saturating_sub(IP_HLEN + UDP_HLEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const GW_MAC: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn udp_round_trip() {
        let f = build_udp(
            GUEST_MAC,
            GW_MAC,
            sa("10.0.2.15:5000"),
            sa("10.0.2.2:53"),
            b"hello",
        );
        let eth = &f[VNET_HDR_LEN..];
        let p = classify(eth).unwrap();
        assert_eq!(p.src_mac, GUEST_MAC);
        assert_eq!(
            p.kind,
            GuestFrame::Udp {
                src: sa("10.0.2.15:5000"),
                dst: sa("10.0.2.2:53"),
                payload: b"hello"
            }
        );
        // The IP header checksum verifies, and so does UDP's.
        assert_eq!(checksum(&eth[ETH_HLEN..ETH_HLEN + IP_HLEN]), 0);
        let udp = &eth[ETH_HLEN + IP_HLEN..];
        let mut sum = sum16(0, &[10, 0, 2, 15, 10, 0, 2, 2]);
        sum += u32::from(PROTO_UDP) + udp.len() as u32;
        assert_eq!(fold(sum16(sum, udp)), 0);
        // Ethernet padding past the IP length is ignored.
        let mut padded = eth.to_vec();
        padded.extend_from_slice(&[0; 20]);
        assert!(matches!(
            classify(&padded).unwrap().kind,
            GuestFrame::Udp {
                payload: b"hello",
                ..
            }
        ));
    }

    #[test]
    fn echo_reply_verifies() {
        let req = [8u8, 0, 0, 0, 0, 1, 0, 7, b'p', b'i', b'n', b'g'];
        let f = build_echo_reply(
            GW_MAC,
            GUEST_MAC,
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::new(10, 0, 2, 15),
            &req,
        );
        let icmp = &f[VNET_HDR_LEN + ETH_HLEN + IP_HLEN..];
        assert_eq!(icmp[0], 0);
        assert_eq!(&icmp[4..], &req[4..]);
        assert_eq!(checksum(icmp), 0);
    }

    #[test]
    fn malformed_frames_are_refused_or_ignored() {
        assert_eq!(classify(&[0; 10]), Err(FrameError::Truncated));
        let f = build_udp(GUEST_MAC, GW_MAC, sa("10.0.2.15:1"), sa("1.2.3.4:2"), &[1; 40]);
        let eth = &f[VNET_HDR_LEN..];
        // Every truncation and every single-byte corruption is handled.
        for cut in 0..eth.len() {
            let _ = classify(&eth[..cut]);
        }
        for i in 0..eth.len() {
            for v in [0u8, 0xff, 0x45, 0x06] {
                let mut m = eth.to_vec();
                m[i] = v;
                let _ = classify(&m);
            }
        }
        // A UDP length past the packet.
        let mut m = eth.to_vec();
        m[ETH_HLEN + IP_HLEN + 4] = 0xff;
        assert_eq!(classify(&m), Err(FrameError::Truncated));
        // A fragment is ignored.
        let mut m = eth.to_vec();
        m[ETH_HLEN + 6] = 0x20;
        assert_eq!(classify(&m).unwrap().kind, GuestFrame::Other);
        // IPv6 is ignored.
        let mut m = eth.to_vec();
        m[12] = 0x86;
        m[13] = 0xdd;
        assert_eq!(classify(&m).unwrap().kind, GuestFrame::Other);
    }
}
