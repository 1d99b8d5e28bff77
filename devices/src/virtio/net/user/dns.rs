//! DNS messages, pure: the guest's queries (one question, no compression
//! needed), the answers the backend builds, and the A records of an
//! upstream resolver's answer (with compression, bounded).

use std::net::Ipv4Addr;

use super::policy::{normalize_name, valid_name, MAX_NAME_LEN};

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
/// Class IN.
pub const CLASS_IN: u16 = 1;
/// Response code: no error.
pub const RCODE_NOERROR: u8 = 0;
/// Response code: format error.
pub const RCODE_FORMERR: u8 = 1;
/// Response code: server failure.
pub const RCODE_SERVFAIL: u8 = 2;
/// Response code: no such name.
pub const RCODE_NXDOMAIN: u8 = 3;
/// Most A records read from, or put in, one answer.
pub const MAX_ANSWERS: usize = 16;
/// Most compression pointers followed for one name.
const MAX_POINTERS: usize = 16;
/// Most resource records looked at in one upstream answer.
const MAX_RECORDS: usize = 64;
const HEADER_LEN: usize = 12;

/// Why a message is not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Shorter than its header or its fields say.
    #[error("truncated DNS message")]
    Truncated,
    /// Not a standard query with exactly one question.
    #[error("not a standard query with one question")]
    NotQuery,
    /// A name that is too long, badly encoded, or loops.
    #[error("bad name")]
    BadName,
}

/// A guest's question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// The message id.
    pub id: u16,
    /// Recursion desired, echoed in the answer.
    pub rd: bool,
    /// The name as the guest wrote it (case kept, no trailing dot).
    pub name: String,
    /// The question's type.
    pub qtype: u16,
    /// The question's class.
    pub qclass: u16,
}

impl Query {
    /// The name lower case, for policy checks.
    pub fn normalized(&self) -> String {
        normalize_name(&self.name)
    }
}

fn be16(b: &[u8], at: usize) -> Result<u16, DnsError> {
    match b.get(at..at + 2) {
        Some(&[x, y]) => Ok(u16::from_be_bytes([x, y])),
        _ => Err(DnsError::Truncated),
    }
}

fn be32(b: &[u8], at: usize) -> Result<u32, DnsError> {
    match b.get(at..at + 4) {
        Some(&[a, c, d, e]) => Ok(u32::from_be_bytes([a, c, d, e])),
        _ => Err(DnsError::Truncated),
    }
}

/// Reads the name at `at`, following at most [`MAX_POINTERS`] pointers;
/// returns it (labels joined by dots) and the offset just past it where
/// it started.
fn read_name(msg: &[u8], mut at: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut end = None;
    let mut pointers = 0;
    loop {
        let len = *msg.get(at).ok_or(DnsError::Truncated)? as usize;
        match len & 0xc0 {
            0x00 if len == 0 => {
                return Ok((name, end.unwrap_or(at + 1)));
            }
            0x00 => {
                let label = msg.get(at + 1..at + 1 + len).ok_or(DnsError::Truncated)?;
                if !name.is_empty() {
                    name.push('.');
                }
                // Bytes outside printable ASCII cannot be in a name we allow.
                if !label.iter().all(|b| b.is_ascii_graphic()) || label.contains(&b'.') {
                    return Err(DnsError::BadName);
                }
                name.extend(label.iter().map(|&b| b as char));
                if name.len() > MAX_NAME_LEN {
                    return Err(DnsError::BadName);
                }
                at += 1 + len;
            }
            0xc0 => {
                pointers += 1;
                if pointers > MAX_POINTERS {
                    return Err(DnsError::BadName);
                }
                let ptr = be16(msg, at)? as usize & 0x3fff;
                end.get_or_insert(at + 2);
                at = ptr;
            }
            _ => return Err(DnsError::BadName),
        }
    }
}

/// Parses a guest's query: a standard query (QR=0, opcode 0) with one
/// question. Extra sections (EDNS) are ignored.
pub fn parse_query(msg: &[u8]) -> Result<Query, DnsError> {
    if msg.len() < HEADER_LEN {
        return Err(DnsError::Truncated);
    }
    let id = be16(msg, 0)?;
    let flags = be16(msg, 2)?;
    let qdcount = be16(msg, 4)?;
    if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 || qdcount != 1 {
        return Err(DnsError::NotQuery);
    }
    let (name, end) = read_name(msg, HEADER_LEN)?;
    Ok(Query {
        id,
        rd: flags & 0x0100 != 0,
        name,
        qtype: be16(msg, end)?,
        qclass: be16(msg, end + 2)?,
    })
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let bytes = label.as_bytes();
        let len = bytes.len().min(63);
        out.push(len as u8);
        out.extend_from_slice(&bytes[..len]);
    }
    out.push(0);
}

/// Builds the answer to `q`: `rcode`, and one A record per address
/// (at most [`MAX_ANSWERS`]) with `ttl`, all under the question's name
/// (a compression pointer to it).
pub fn build_answer(q: &Query, rcode: u8, addrs: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
    let addrs = &addrs[..addrs.len().min(MAX_ANSWERS)];
    let mut out = Vec::with_capacity(HEADER_LEN + q.name.len() + 6 + addrs.len() * 16);
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, opcode 0, AA=0, RD echoed, RA=1.
    let flags: u16 = 0x8000 | if q.rd { 0x0100 } else { 0 } | 0x0080 | u16::from(rcode & 0xf);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    put_name(&mut out, &q.name);
    out.extend_from_slice(&q.qtype.to_be_bytes());
    out.extend_from_slice(&q.qclass.to_be_bytes());
    for a in addrs {
        out.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&a.octets());
    }
    out
}

/// Builds a recursive A query for `name` with `id`, to send upstream.
pub fn build_query(id: u16, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    put_name(&mut out, name);
    out.extend_from_slice(&TYPE_A.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// What an upstream resolver answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamAnswer {
    /// The message id.
    pub id: u16,
    /// The response code.
    pub rcode: u8,
    /// The question's name, lower case.
    pub name: String,
    /// A records (address, TTL), at most [`MAX_ANSWERS`].
    pub addrs: Vec<(Ipv4Addr, u32)>,
}

/// Reads an upstream answer: its id, rcode, question name and every A
/// record in the answer section (CNAME chains are the resolver's
/// business: the addresses count for the name asked).
pub fn parse_answer(msg: &[u8]) -> Result<UpstreamAnswer, DnsError> {
    if msg.len() < HEADER_LEN {
        return Err(DnsError::Truncated);
    }
    let id = be16(msg, 0)?;
    let flags = be16(msg, 2)?;
    if flags & 0x8000 == 0 || be16(msg, 4)? != 1 {
        return Err(DnsError::NotQuery);
    }
    let ancount = be16(msg, 6)? as usize;
    let (name, mut at) = read_name(msg, HEADER_LEN)?;
    if !valid_name(&normalize_name(&name)) {
        return Err(DnsError::BadName);
    }
    at += 4;
    let mut addrs = Vec::new();
    for _ in 0..ancount.min(MAX_RECORDS) {
        let (_, end) = read_name(msg, at)?;
        let rtype = be16(msg, end)?;
        let class = be16(msg, end + 2)?;
        let ttl = be32(msg, end + 4)?;
        let rdlen = be16(msg, end + 8)? as usize;
        let rdata = msg.get(end + 10..end + 10 + rdlen).ok_or(DnsError::Truncated)?;
        if rtype == TYPE_A && class == CLASS_IN && addrs.len() < MAX_ANSWERS {
            if let &[a, b, c, d] = rdata {
                addrs.push((Ipv4Addr::new(a, b, c, d), ttl));
            }
        }
        at = end + 10 + rdlen;
    }
    Ok(UpstreamAnswer {
        id,
        rcode: (flags & 0xf) as u8,
        name: normalize_name(&name),
        addrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trip_through_answer() {
        let q = build_query(0x1234, "Www.Example.com");
        let parsed = parse_query(&q).unwrap();
        assert_eq!(parsed.id, 0x1234);
        assert_eq!(parsed.name, "Www.Example.com");
        assert_eq!(parsed.normalized(), "www.example.com");
        assert_eq!((parsed.qtype, parsed.qclass), (TYPE_A, CLASS_IN));
        assert!(parsed.rd);

        let addrs = [Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(5, 6, 7, 8)];
        let a = build_answer(&parsed, RCODE_NOERROR, &addrs, 300);
        let up = parse_answer(&a).unwrap();
        assert_eq!(up.id, 0x1234);
        assert_eq!(up.rcode, RCODE_NOERROR);
        assert_eq!(up.name, "www.example.com");
        assert_eq!(up.addrs, vec![(addrs[0], 300), (addrs[1], 300)]);

        let nx = parse_answer(&build_answer(&parsed, RCODE_NXDOMAIN, &[], 0)).unwrap();
        assert_eq!(nx.rcode, RCODE_NXDOMAIN);
        assert!(nx.addrs.is_empty());
    }

    #[test]
    fn bad_queries_are_refused() {
        assert_eq!(parse_query(&[0; 5]), Err(DnsError::Truncated));
        let mut q = build_query(1, "a.b");
        q[2] |= 0x80; // a response, not a query
        assert_eq!(parse_query(&q), Err(DnsError::NotQuery));
        let mut q = build_query(1, "a.b");
        q[5] = 2; // two questions
        assert_eq!(parse_query(&q), Err(DnsError::NotQuery));
        let mut q = build_query(1, "a.b");
        q.truncate(q.len() - 3);
        assert_eq!(parse_query(&q), Err(DnsError::Truncated));
        // A label running past the end.
        let mut q = build_query(1, "abc");
        q[12] = 60;
        assert!(parse_query(&q).is_err());
        // A pointer loop.
        let mut q = build_query(1, "a");
        q[12] = 0xc0;
        q[13] = 12;
        assert_eq!(parse_query(&q), Err(DnsError::BadName));
        // Non-printable bytes in a label.
        let mut q = build_query(1, "abc");
        q[13] = 0;
        assert_eq!(parse_query(&q), Err(DnsError::BadName));
    }

    #[test]
    fn upstream_answers_with_cnames_and_compression() {
        // Question www.x.org; answers: CNAME -> y.x.org (compressed), A.
        let mut m = vec![0xab, 0xcd, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        put_name(&mut m, "www.x.org");
        m.extend_from_slice(&[0, 1, 0, 1]);
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4, 1, b'y', 0xc0, 16]);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 9, 9, 9, 9]);
        let a = parse_answer(&m).unwrap();
        assert_eq!(a.name, "www.x.org");
        assert_eq!(a.addrs, vec![(Ipv4Addr::new(9, 9, 9, 9), 30)]);
        // An answer count larger than the records present.
        m[7] = 9;
        assert_eq!(parse_answer(&m), Err(DnsError::Truncated));
    }

    #[test]
    fn long_names_are_bounded() {
        let long = vec!["a".repeat(63); 5].join(".");
        let q = build_query(1, &long);
        assert_eq!(parse_query(&q), Err(DnsError::BadName));
    }
}
