//! The host side of Firecracker's hybrid vsock handshake: a client of the
//! VM's Unix socket writes `CONNECT <port>\n` and gets `OK <host port>\n`.

/// The longest handshake line accepted, newline included.
pub const MAX_HANDSHAKE_LEN: usize = 64;

/// What the bytes received so far amount to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// No newline yet.
    Incomplete,
    /// A valid request for this guest port; `used` bytes were the line.
    Connect {
        /// The guest port.
        port: u32,
        /// Length of the line including the newline.
        used: usize,
    },
    /// Not a valid request.
    Invalid(&'static str),
}

/// Parses the start of a client's stream.
pub fn parse(buf: &[u8]) -> Handshake {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_HANDSHAKE_LEN {
            Handshake::Invalid("no newline within 64 bytes")
        } else {
            Handshake::Incomplete
        };
    };
    if nl >= MAX_HANDSHAKE_LEN {
        return Handshake::Invalid("no newline within 64 bytes");
    }
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(port) = line.strip_prefix(b"CONNECT ") else {
        return Handshake::Invalid("expected CONNECT <port>");
    };
    let port = std::str::from_utf8(port).ok().map(str::trim);
    match port.and_then(|p| p.parse::<u32>().ok()) {
        Some(port) => Handshake::Connect { port, used: nl + 1 },
        None => Handshake::Invalid("port is not a number from 0 to 4294967295"),
    }
}

/// The reply once the guest accepted.
pub fn ok_reply(local_port: u32) -> Vec<u8> {
    format!("OK {local_port}\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connect_lines() {
        assert_eq!(parse(b"CONNECT 52\n"), Handshake::Connect { port: 52, used: 11 });
        assert_eq!(
            parse(b"CONNECT 52\r\nhello"),
            Handshake::Connect { port: 52, used: 12 }
        );
        assert_eq!(
            parse(b"CONNECT 4294967295\n"),
            Handshake::Connect {
                port: u32::MAX,
                used: 19
            }
        );
        assert_eq!(parse(b"CONN"), Handshake::Incomplete);
        assert_eq!(parse(b""), Handshake::Incomplete);
    }

    #[test]
    fn refuses_bad_lines() {
        for bad in [
            &b"CONNECT abc\n"[..],
            b"CONNECT 4294967296\n",
            b"CONNECT -1\n",
            b"connect 5\n",
            b"\n",
            b"CONNECT\n",
        ] {
            assert!(
                matches!(parse(bad), Handshake::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(parse(&[b'x'; 64]), Handshake::Invalid(_)));
        let mut long = vec![b'x'; 70];
        long.push(b'\n');
        assert!(matches!(parse(&long), Handshake::Invalid(_)));
        assert_eq!(ok_reply(1073741824), b"OK 1073741824\n");
    }
}
