//! A simulated guest for tests and benches (feature `test-utils`): a
//! smoltcp interface at the guest's address that exchanges frames with a
//! [`NetBackend`] directly, the virtio-net header added and removed as a
//! device would. No VM, no queues.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use super::config::{GATEWAY, GUEST};
use crate::virtio::net::backend::NetBackend;
use crate::virtio::net::rxtx::{MAX_PACKET_LEN, VNET_HDR_LEN};

/// The simulated guest's MAC.
pub const SIM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x15];

#[derive(Debug, Default)]
struct GuestPhy {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    mtu: usize,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut v = vec![0u8; len];
        let r = f(&mut v);
        self.0.push(v);
        r
    }
}

impl phy::Device for GuestPhy {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _t: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _t: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = self.mtu + 14;
        c
    }
}

/// The simulated guest.
pub struct SimGuest {
    iface: Interface,
    /// The guest's sockets.
    pub sockets: SocketSet<'static>,
    phy: GuestPhy,
    epoch: Instant,
    buf: Vec<u8>,
    /// Every frame the backend sent (Ethernet, no header), while
    /// `capture` is set.
    pub seen: Vec<Vec<u8>>,
    /// Keep a copy of every frame received in `seen`.
    pub capture: bool,
}

impl std::fmt::Debug for SimGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimGuest")
    }
}

impl SimGuest {
    /// A guest at 10.0.2.15/24 with the gateway as its default route.
    pub fn new(mtu: u16) -> Self {
        let mut phy = GuestPhy {
            mtu: usize::from(mtu),
            ..Default::default()
        };
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(SIM_MAC)));
        let mut iface = Interface::new(config, &mut phy, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(GUEST), 24));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(GATEWAY);
        Self {
            iface,
            sockets: SocketSet::new(Vec::new()),
            phy,
            epoch: Instant::now(),
            buf: vec![0; MAX_PACKET_LEN],
            seen: Vec::new(),
            capture: false,
        }
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Opens a TCP connection from `local_port` to `dst`, with buffers of
    /// `buffer` bytes each way.
    pub fn connect(&mut self, dst: SocketAddrV4, local_port: u16, buffer: usize) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buffer]),
            tcp::SocketBuffer::new(vec![0; buffer]),
        );
        let remote = (IpAddress::Ipv4(*dst.ip()), dst.port());
        let _ = s.connect(self.iface.context(), remote, local_port);
        self.sockets.add(s)
    }

    /// The TCP socket `h`.
    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// Sends a raw Ethernet frame to the backend.
    pub fn inject(&mut self, net: &mut dyn NetBackend, eth: &[u8]) -> io::Result<()> {
        let hdr = [0u8; VNET_HDR_LEN];
        net.write_frame(&[IoSlice::new(&hdr), IoSlice::new(eth)])
    }

    /// One exchange: the guest's output to the backend, the backend's
    /// output to the guest. Returns the frames moved.
    pub fn step(&mut self, net: &mut dyn NetBackend) -> usize {
        let t = self.now();
        self.iface.poll(t, &mut self.phy, &mut self.sockets);
        let mut moved = 0;
        for f in std::mem::take(&mut self.phy.tx) {
            let _ = self.inject(net, &f);
            moved += 1;
        }
        while let Ok(n) = net.read_frame(&mut self.buf) {
            let frame = self.buf.get(VNET_HDR_LEN..n).unwrap_or_default().to_vec();
            if self.capture {
                self.seen.push(frame.clone());
            }
            self.phy.rx.push_back(frame);
            moved += 1;
        }
        let t = self.now();
        self.iface.poll(t, &mut self.phy, &mut self.sockets);
        moved
    }

    /// Steps until `done` or `timeout`; between idle steps, waits up to
    /// 2 ms for the backend's fd.
    pub fn run_until(
        &mut self,
        net: &mut dyn NetBackend,
        timeout: Duration,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> bool {
        let end = Instant::now() + timeout;
        loop {
            let moved = self.step(net);
            if done(self) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            if moved == 0 {
                if let Some(fd) = net.fd() {
                    wait_readable(fd, 2);
                }
            }
        }
    }
}

/// Waits up to `ms` for `fd` to be readable.
pub fn wait_readable(fd: std::os::fd::RawFd, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, valid for the call.
    let _ = unsafe { libc::poll(&mut p, 1, ms) };
}

/// A TCP SYN frame from the guest (for floods: no socket behind it).
pub fn syn_frame(src: SocketAddrV4, dst: SocketAddrV4, seq: u32) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&8192u16.to_be_bytes());
    let f = super::frame::build_udp(SIM_MAC, super::config::GATEWAY_MAC, src, dst, &[]);
    // Reuse the IPv4 framing of a UDP frame, then turn it into TCP.
    let mut eth = f[VNET_HDR_LEN..VNET_HDR_LEN + 14 + 20].to_vec();
    eth[14 + 9] = 6;
    let total = (20 + tcp.len()) as u16;
    eth[14 + 2..14 + 4].copy_from_slice(&total.to_be_bytes());
    eth[14 + 10] = 0;
    eth[14 + 11] = 0;
    let c = super::frame::checksum(&eth[14..34]);
    eth[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    eth.extend_from_slice(&tcp);
    eth
}

/// A UDP frame from the guest at `src` to `dst`.
pub fn udp_frame(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let f = super::frame::build_udp(SIM_MAC, super::config::GATEWAY_MAC, src, dst, payload);
    f[VNET_HDR_LEN..].to_vec()
}

/// The UDP payloads in `frames` sent to the guest's `port`, with their
/// source.
pub fn udp_to(frames: &[Vec<u8>], port: u16) -> Vec<(SocketAddrV4, Vec<u8>)> {
    frames
        .iter()
        .filter_map(|f| match super::frame::classify(f).ok()?.kind {
            super::frame::GuestFrame::Udp { src, dst, payload } if dst.port() == port => {
                Some((src, payload.to_vec()))
            }
            _ => None,
        })
        .collect()
}

/// The guest's address on `port`.
pub fn guest_addr(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(GUEST, port)
}

/// The gateway on `port` (the host's loopback for flows).
pub fn gateway(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(GATEWAY, port)
}

/// Unused but for symmetry with `gateway`.
pub fn addr(ip: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}
