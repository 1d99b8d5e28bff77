//! The name a TCP flow is for, read from its first bytes, pure: the
//! server name (SNI) of a TLS ClientHello, or the Host header of an HTTP
//! request. Nothing is forwarded until this answers.

use super::policy::{normalize_name, valid_name};

/// Most bytes the backend waits for before giving up on a name.
pub const MAX_SNIFF_BYTES: usize = 16 * 1024;

/// What the first bytes say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// The name (lower case, no port).
    Name(String),
    /// Not enough bytes yet.
    NeedMore,
    /// Neither a ClientHello with a server name nor an HTTP request with
    /// a Host header.
    NoName,
}

/// Reads the name from the first bytes of a flow.
pub fn sniff(data: &[u8]) -> Sniffed {
    match data.first() {
        None => Sniffed::NeedMore,
        Some(0x16) => tls_sni(data),
        Some(b) if b.is_ascii_uppercase() => http_host(data),
        Some(_) => Sniffed::NoName,
    }
}

/// A cursor over a byte slice that never panics.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.b.len() {
            return None;
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

fn name_from(bytes: &[u8]) -> Sniffed {
    match std::str::from_utf8(bytes) {
        Ok(s) if valid_name(&normalize_name(s)) => Sniffed::Name(normalize_name(s)),
        _ => Sniffed::NoName,
    }
}

/// The SNI of a ClientHello that may span several handshake records.
fn tls_sni(data: &[u8]) -> Sniffed {
    // Gather the handshake bytes from consecutive records.
    let mut hs = Vec::new();
    let mut r = Reader { b: data };
    let hello_len = loop {
        let Some(header) = r.take(5) else {
            return Sniffed::NeedMore;
        };
        if header[0] != 0x16 || header[1] != 3 {
            return Sniffed::NoName;
        }
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        if len == 0 || len > 1 << 14 {
            return Sniffed::NoName;
        }
        match r.take(len) {
            Some(body) => hs.extend_from_slice(body),
            None => {
                let rest = r.b;
                hs.extend_from_slice(rest);
                r.b = &[];
            }
        }
        if hs.len() >= 4 {
            if hs[0] != 1 {
                return Sniffed::NoName;
            }
            let want = (hs[1] as usize) << 16 | (hs[2] as usize) << 8 | hs[3] as usize;
            if want + 4 > MAX_SNIFF_BYTES {
                return Sniffed::NoName;
            }
            if hs.len() >= want + 4 {
                break want;
            }
        }
        if r.b.is_empty() {
            return Sniffed::NeedMore;
        }
    };
    let mut h = Reader {
        b: &hs[4..4 + hello_len],
    };
    client_hello_sni(&mut h).unwrap_or(Sniffed::NoName)
}

fn client_hello_sni(h: &mut Reader<'_>) -> Option<Sniffed> {
    h.take(2)?; // legacy_version
    h.take(32)?; // random
    h.vec8()?; // session id
    h.vec16()?; // cipher suites
    h.vec8()?; // compression methods
    let mut exts = Reader { b: h.vec16()? };
    while !exts.b.is_empty() {
        let kind = exts.u16()?;
        let body = exts.vec16()?;
        if kind == 0 {
            let mut list = Reader { b: body };
            let mut names = Reader { b: list.vec16()? };
            while !names.b.is_empty() {
                let name_type = names.u8()?;
                let name = names.vec16()?;
                if name_type == 0 {
                    return Some(name_from(name));
                }
            }
            return Some(Sniffed::NoName);
        }
    }
    Some(Sniffed::NoName)
}

/// The Host header of an HTTP/1.x request, once its headers are complete.
fn http_host(data: &[u8]) -> Sniffed {
    // A first line that is not a request line ends the wait early.
    if let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        if !is_request_line(&data[..eol]) {
            return Sniffed::NoName;
        }
    }
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if data.len() >= MAX_SNIFF_BYTES {
            Sniffed::NoName
        } else {
            Sniffed::NeedMore
        };
    };
    let head = &data[..end];
    let mut lines = head.split(|&b| b == b'\n');
    let Some(request_line) = lines.next() else {
        return Sniffed::NoName;
    };
    if !is_request_line(request_line) {
        return Sniffed::NoName;
    }
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (key, value) = line.split_at(colon);
        if key.eq_ignore_ascii_case(b"host") {
            let value = value[1..].trim_ascii();
            // Strip a port, but not from an IPv6 literal (which fails
            // the name check anyway).
            let host = match value.iter().rposition(|&b| b == b':') {
                Some(i) if value[i + 1..].iter().all(u8::is_ascii_digit) => &value[..i],
                _ => value,
            };
            return name_from(host);
        }
    }
    Sniffed::NoName
}

/// `METHOD target HTTP/x`.
fn is_request_line(line: &[u8]) -> bool {
    line.split(|&b| b == b' ')
        .next()
        .is_some_and(|m| !m.is_empty() && m.iter().all(u8::is_ascii_uppercase))
        && line.windows(5).any(|w| w == b"HTTP/")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal TLS 1.2-style ClientHello with `sni` (and a padding
    /// extension of `pad` bytes before it).
    pub(crate) fn client_hello(sni: Option<&str>, pad: usize) -> Vec<u8> {
        let mut exts = Vec::new();
        exts.extend_from_slice(&[0x00, 0x15]);
        exts.extend_from_slice(&(pad as u16).to_be_bytes());
        exts.extend(std::iter::repeat_n(0u8, pad));
        if let Some(name) = sni {
            let n = name.as_bytes();
            let mut list = vec![0u8];
            list.extend_from_slice(&(n.len() as u16).to_be_bytes());
            list.extend_from_slice(n);
            exts.extend_from_slice(&[0, 0]);
            exts.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
            exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
            exts.extend_from_slice(&list);
        }
        let mut hello = vec![3, 3];
        hello.extend_from_slice(&[7; 32]);
        hello.push(0);
        hello.extend_from_slice(&[0, 2, 0x13, 0x01]);
        hello.extend_from_slice(&[1, 0]);
        hello.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        hello.extend_from_slice(&exts);
        let mut hs = vec![1];
        hs.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&hello);
        // Split into records of at most 1000 bytes.
        let mut out = Vec::new();
        for chunk in hs.chunks(1000) {
            out.extend_from_slice(&[0x16, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn tls_server_name() {
        let hello = client_hello(Some("Api.Example.com"), 10);
        assert_eq!(sniff(&hello), Sniffed::Name("api.example.com".into()));
        for cut in [0, 1, 5, 20, hello.len() - 1] {
            assert_eq!(sniff(&hello[..cut]), Sniffed::NeedMore, "cut at {cut}");
        }
        assert_eq!(sniff(&client_hello(None, 10)), Sniffed::NoName);
        assert_eq!(sniff(&client_hello(Some("bad name"), 0)), Sniffed::NoName);
    }

    #[test]
    fn tls_hello_across_records() {
        let hello = client_hello(Some("big.example.com"), 2500);
        assert!(hello.len() > 2500);
        assert_eq!(sniff(&hello), Sniffed::Name("big.example.com".into()));
        assert_eq!(sniff(&hello[..1500]), Sniffed::NeedMore);
    }

    #[test]
    fn tls_garbage_never_panics() {
        let hello = client_hello(Some("a.example.com"), 0);
        for i in 0..hello.len() {
            for v in [0u8, 0xff, 0x80] {
                let mut m = hello.clone();
                m[i] = v;
                let _ = sniff(&m);
            }
        }
        assert_eq!(sniff(&[0x16, 3, 1, 0, 0]), Sniffed::NoName);
        assert_eq!(sniff(&[0x16, 3, 1, 0xff, 0xff, 2]), Sniffed::NoName);
    }

    #[test]
    fn http_host_header() {
        let req = b"GET /x HTTP/1.1\r\nUser-Agent: t\r\nhost: Svc.Test:8080\r\n\r\n";
        assert_eq!(sniff(req), Sniffed::Name("svc.test".into()));
        assert_eq!(sniff(&req[..20]), Sniffed::NeedMore);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\nX: y\r\n\r\n"), Sniffed::NoName);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), Sniffed::NoName);
        assert_eq!(sniff(b"HELLO there\r\n\r\n"), Sniffed::NoName);
        assert_eq!(sniff(b"SSH-2.0-OpenSSH\r\n"), Sniffed::NoName);
        assert_eq!(sniff(b"SSH-2.0-Open"), Sniffed::NeedMore);
        assert_eq!(sniff(&[b'G'; MAX_SNIFF_BYTES]), Sniffed::NoName);
        assert_eq!(sniff(b"\x00\x01"), Sniffed::NoName);
    }
}
