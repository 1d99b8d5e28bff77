//! A DHCP server for one client, pure: it reads DISCOVER and REQUEST
//! messages and builds the OFFER, ACK or NAK that gives the guest its one
//! address, the gateway and the DNS server (RFC 2131, RFC 2132).

use std::net::Ipv4Addr;

/// DHCP message types (option 53).
pub const DISCOVER: u8 = 1;
/// Offer.
pub const OFFER: u8 = 2;
/// Request.
pub const REQUEST: u8 = 3;
/// Acknowledge.
pub const ACK: u8 = 5;
/// Negative acknowledge.
pub const NAK: u8 = 6;

const BOOTP_LEN: usize = 236;
const COOKIE: [u8; 4] = [99, 130, 83, 99];
const OPT_PAD: u8 = 0;
const OPT_SUBNET: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_MTU: u8 = 26;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE: u8 = 51;
const OPT_MSG_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_END: u8 = 255;

/// Why a message is not a request to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DhcpError {
    /// Shorter than BOOTP plus the cookie, or an option runs past the end.
    #[error("truncated DHCP message")]
    Truncated,
    /// Not a BOOTREQUEST over Ethernet with the DHCP cookie.
    #[error("not a DHCP request")]
    NotDhcp,
}

/// A client's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The message type (option 53).
    pub msg_type: u8,
    /// Transaction id.
    pub xid: u32,
    /// Flags (the broadcast bit).
    pub flags: u16,
    /// The client's hardware address.
    pub chaddr: [u8; 6],
    /// `ciaddr`, the address the client already has (renewals).
    pub ciaddr: Ipv4Addr,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    match b.get(at..at + 4) {
        Some(&[a, c, d, e]) => Ipv4Addr::new(a, c, d, e),
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

/// Parses a client's message (the UDP payload).
pub fn parse(msg: &[u8]) -> Result<Request, DhcpError> {
    if msg.len() < BOOTP_LEN + COOKIE.len() {
        return Err(DhcpError::Truncated);
    }
    // op BOOTREQUEST, htype Ethernet, hlen 6, and the magic cookie.
    if msg[0] != 1 || msg[1] != 1 || msg[2] != 6 || msg[BOOTP_LEN..BOOTP_LEN + 4] != COOKIE {
        return Err(DhcpError::NotDhcp);
    }
    let mut chaddr = [0u8; 6];
    chaddr.copy_from_slice(&msg[28..34]);
    let mut req = Request {
        msg_type: 0,
        xid: u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]),
        flags: u16::from_be_bytes([msg[10], msg[11]]),
        chaddr,
        ciaddr: ip_at(msg, 12),
        requested_ip: None,
        server_id: None,
    };
    let mut at = BOOTP_LEN + 4;
    // Each step moves forward by at least one byte: bounded by the length.
    while let Some(&code) = msg.get(at) {
        match code {
            OPT_PAD => at += 1,
            OPT_END => break,
            _ => {
                let len = *msg.get(at + 1).ok_or(DhcpError::Truncated)? as usize;
                let val = msg.get(at + 2..at + 2 + len).ok_or(DhcpError::Truncated)?;
                match (code, val) {
                    (OPT_MSG_TYPE, &[t]) => req.msg_type = t,
                    (OPT_REQUESTED_IP, &[a, b, c, d]) => req.requested_ip = Some(Ipv4Addr::new(a, b, c, d)),
                    (OPT_SERVER_ID, &[a, b, c, d]) => req.server_id = Some(Ipv4Addr::new(a, b, c, d)),
                    _ => {}
                }
                at += 2 + len;
            }
        }
    }
    if req.msg_type == 0 {
        return Err(DhcpError::NotDhcp);
    }
    Ok(req)
}

/// What the server hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The guest's address.
    pub guest: Ipv4Addr,
    /// The gateway, DNS server and server id.
    pub gateway: Ipv4Addr,
    /// The subnet mask.
    pub netmask: Ipv4Addr,
    /// Lease time in seconds.
    pub lease_secs: u32,
    /// The interface MTU, sent when not 1500.
    pub mtu: u16,
}

/// The reply type for `req`, or `None` when the server stays silent
/// (a request meant for another server, RELEASE, DECLINE, INFORM).
pub fn reply_type(req: &Request, lease: &Lease) -> Option<u8> {
    match req.msg_type {
        DISCOVER => Some(OFFER),
        REQUEST => {
            if req.server_id.is_some_and(|s| s != lease.gateway) {
                return None;
            }
            let wanted = req.requested_ip.unwrap_or(req.ciaddr);
            Some(if wanted == lease.guest { ACK } else { NAK })
        }
        _ => None,
    }
}

/// Builds the reply (UDP payload) of type `kind` to `req`.
pub fn build_reply(req: &Request, lease: &Lease, kind: u8) -> Vec<u8> {
    let mut out = vec![0u8; BOOTP_LEN];
    out[0] = 2; // BOOTREPLY
    out[1] = 1;
    out[2] = 6;
    out[4..8].copy_from_slice(&req.xid.to_be_bytes());
    out[10..12].copy_from_slice(&req.flags.to_be_bytes());
    if kind != NAK {
        out[16..20].copy_from_slice(&lease.guest.octets());
        out[20..24].copy_from_slice(&lease.gateway.octets());
    }
    out[28..34].copy_from_slice(&req.chaddr);
    out.extend_from_slice(&COOKIE);
    out.extend_from_slice(&[OPT_MSG_TYPE, 1, kind]);
    out.push(OPT_SERVER_ID);
    out.push(4);
    out.extend_from_slice(&lease.gateway.octets());
    if kind != NAK {
        out.extend_from_slice(&[OPT_LEASE, 4]);
        out.extend_from_slice(&lease.lease_secs.to_be_bytes());
        for (code, ip) in [
            (OPT_SUBNET, lease.netmask),
            (OPT_ROUTER, lease.gateway),
            (OPT_DNS, lease.gateway),
        ] {
            out.extend_from_slice(&[code, 4]);
            out.extend_from_slice(&ip.octets());
        }
        if lease.mtu != 1500 {
            out.extend_from_slice(&[OPT_MTU, 2]);
            out.extend_from_slice(&lease.mtu.to_be_bytes());
        }
    }
    out.push(OPT_END);
    // Some clients want at least the 300-byte BOOTP minimum.
    if out.len() < 300 {
        out.resize(300, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease {
        Lease {
            guest: Ipv4Addr::new(10, 0, 2, 15),
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            lease_secs: 86400,
            mtu: 1500,
        }
    }

    fn client(msg_type: u8, requested: Option<Ipv4Addr>) -> Vec<u8> {
        let mut m = vec![0u8; BOOTP_LEN];
        m[0] = 1;
        m[1] = 1;
        m[2] = 6;
        m[4..8].copy_from_slice(&0xdeadbeefu32.to_be_bytes());
        m[28..34].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        m.extend_from_slice(&COOKIE);
        m.extend_from_slice(&[OPT_PAD, OPT_MSG_TYPE, 1, msg_type]);
        if let Some(ip) = requested {
            m.extend_from_slice(&[OPT_REQUESTED_IP, 4]);
            m.extend_from_slice(&ip.octets());
        }
        m.extend_from_slice(&[55, 3, 1, 3, 6, OPT_END]);
        m
    }

    #[test]
    fn discover_offer_request_ack() {
        let l = lease();
        let d = parse(&client(DISCOVER, None)).unwrap();
        assert_eq!(d.xid, 0xdeadbeef);
        assert_eq!(reply_type(&d, &l), Some(OFFER));
        let offer = build_reply(&d, &l, OFFER);
        assert_eq!(ip_at(&offer, 16), l.guest);
        assert_eq!(&offer[28..34], &[2, 0, 0, 0, 0, 1]);
        // The offer's options, read back.
        let opts = &offer[BOOTP_LEN + 4..];
        assert_eq!(&opts[..3], &[OPT_MSG_TYPE, 1, OFFER]);
        assert!(opts.windows(6).any(|w| w == [OPT_ROUTER, 4, 10, 0, 2, 2]));
        assert!(opts.windows(6).any(|w| w == [OPT_DNS, 4, 10, 0, 2, 2]));
        assert!(opts.windows(6).any(|w| w == [OPT_SUBNET, 4, 255, 255, 255, 0]));

        let r = parse(&client(REQUEST, Some(l.guest))).unwrap();
        assert_eq!(reply_type(&r, &l), Some(ACK));
        let r = parse(&client(REQUEST, Some(Ipv4Addr::new(10, 0, 2, 99)))).unwrap();
        assert_eq!(reply_type(&r, &l), Some(NAK));
        let nak = build_reply(&r, &l, NAK);
        assert_eq!(ip_at(&nak, 16), Ipv4Addr::UNSPECIFIED);
    }

    #[test]
    fn silence_for_other_servers_and_types() {
        let l = lease();
        let mut r = parse(&client(REQUEST, Some(l.guest))).unwrap();
        r.server_id = Some(Ipv4Addr::new(10, 0, 2, 3));
        assert_eq!(reply_type(&r, &l), None);
        let release = parse(&client(7, None)).unwrap();
        assert_eq!(reply_type(&release, &l), None);
    }

    #[test]
    fn malformed_messages() {
        assert_eq!(parse(&[0; 10]), Err(DhcpError::Truncated));
        let mut m = client(DISCOVER, None);
        m[0] = 2;
        assert_eq!(parse(&m), Err(DhcpError::NotDhcp));
        let mut m = client(DISCOVER, None);
        m[BOOTP_LEN] = 0;
        assert_eq!(parse(&m), Err(DhcpError::NotDhcp));
        // An option whose length runs past the end.
        let mut m = client(DISCOVER, None);
        m.truncate(BOOTP_LEN + 4);
        m.extend_from_slice(&[OPT_MSG_TYPE, 200, 1]);
        assert_eq!(parse(&m), Err(DhcpError::Truncated));
        // No message type.
        let mut m = client(DISCOVER, None);
        m.truncate(BOOTP_LEN + 4);
        m.push(OPT_END);
        assert_eq!(parse(&m), Err(DhcpError::NotDhcp));
    }
}
