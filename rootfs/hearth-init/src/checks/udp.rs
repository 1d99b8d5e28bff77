//! `udp`: sends a datagram to `hearth.udp.peer=IP:PORT` over the network
//! the kernel configured (`ip=` on the command line) and expects the peer
//! to answer `pong:` followed by what it got. Retries a few times, so a
//! peer that starts listening late still passes.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::{Context, Outcome};

/// The command-line parameter naming the peer.
pub const PEER_PARAM: &str = "hearth.udp.peer";
const TRIES: u32 = 10;
const WAIT: Duration = Duration::from_secs(3);

pub fn run(ctx: &Context<'_>) -> Outcome {
    let Some(peer) = ctx.cmdline.get(PEER_PARAM) else {
        return Outcome::Fail(format!("{PEER_PARAM}=IP:PORT is not on the command line"));
    };
    let Ok(peer) = peer.parse::<SocketAddr>() else {
        return Outcome::Fail(format!("{PEER_PARAM}={peer:?} is not IP:PORT"));
    };
    match exchange(peer) {
        Ok((local, rtt, tries)) => Outcome::Pass(format!(
            "from={local} peer={peer} rtt_us={} tries={tries}",
            rtt.as_micros()
        )),
        Err(e) => Outcome::Fail(e),
    }
}

fn exchange(peer: SocketAddr) -> Result<(SocketAddr, Duration, u32), String> {
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    socket.connect(peer).map_err(|e| format!("connect {peer}: {e}"))?;
    socket.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    let mut last = String::from("no answer");
    for attempt in 1..=TRIES {
        let payload = format!("hearth-udp {local} try {attempt}");
        let sent = Instant::now();
        if let Err(e) = socket.send(payload.as_bytes()) {
            last = format!("send: {e}");
            std::thread::sleep(WAIT);
            continue;
        }
        match socket.recv(&mut buf) {
            Ok(n) => {
                let got = buf.get(..n).unwrap_or_default();
                let want = format!("pong:{payload}");
                if got == want.as_bytes() {
                    return Ok((local, sent.elapsed(), attempt));
                }
                last = format!("unexpected answer {:?}", String::from_utf8_lossy(got));
            }
            Err(e) => last = format!("recv: {e}"),
        }
    }
    Err(format!("peer={peer} after {TRIES} tries: {last}"))
}
