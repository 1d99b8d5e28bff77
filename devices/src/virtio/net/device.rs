//! The virtio-net device: features, config space, activation, and the
//! entry points the event loop calls.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{GuestOffloads, NetBackend};
use super::handler::{RxHandler, TxHandler, RX_BACKLOG_BYTES, RX_BACKLOG_FRAMES};
use super::metrics::NetMetrics;
use crate::guest_log::GuestLog;
use crate::rate_limiter::RateLimit;
use crate::throttle::Throttle;
use crate::virtio::device::{read_config_bytes, ActivateContext, ActivateError, VirtioDevice};
use crate::virtio::QueueError;
use crate::virtio::{VirtioInterrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::GuestMemoryMmap;

/// Receive queue index.
pub const RXQ: usize = 0;
/// Transmit queue index.
pub const TXQ: usize = 1;
/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// MTU when none is given.
pub const DEFAULT_MTU: u16 = 1500;
/// The smallest MTU a driver accepts (IPv4's 68 bytes).
pub const MIN_MTU: u16 = 68;
/// Size of the config space: mac, status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;

/// An Ethernet address, written `52:54:00:12:34:56`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Whether it is a group (multicast or broadcast) address.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not six colon-separated hex bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex bytes like 52:54:00:12:34:56")]
pub struct MacParseError(String);

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_owned());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(out))
    }
}

/// How a network device presents itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetOptions {
    /// The guest's MAC address (VIRTIO_NET_F_MAC); `None` lets the guest
    /// driver pick a random one.
    pub mac: Option<MacAddr>,
    /// The MTU offered (VIRTIO_NET_F_MTU), 68 to 65535.
    pub mtu: u16,
    /// Limits on frames the guest receives.
    pub rx_rate_limit: RateLimit,
    /// Limits on frames the guest sends.
    pub tx_rate_limit: RateLimit,
    /// Received frames held while the guest has no buffers: (frames,
    /// bytes).
    pub backlog: (usize, usize),
}

impl Default for NetOptions {
    fn default() -> Self {
        Self {
            mac: None,
            mtu: DEFAULT_MTU,
            rx_rate_limit: RateLimit::default(),
            tx_rate_limit: RateLimit::default(),
            backlog: (RX_BACKLOG_FRAMES, RX_BACKLOG_BYTES),
        }
    }
}

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The MTU is below 68.
    #[error("MTU {0} is too small: it must be {MIN_MTU} to 65535")]
    BadMtu(u16),
    /// A group address cannot be a NIC's address.
    #[error("MAC address {0} is a multicast address; use a unicast one")]
    MulticastMac(MacAddr),
    /// An eventfd could not be created.
    #[error("virtio-net: {0}")]
    Io(#[from] std::io::Error),
}

struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio-net device (one queue pair) over a [`NetBackend`].
pub struct Net {
    features: u64,
    config: [u8; CONFIG_LEN],
    queue_evts: [EventFd; 2],
    pub(super) activate_evt: EventFd,
    backend: Box<dyn NetBackend>,
    rx: RxHandler,
    tx: TxHandler,
    pub(super) rx_throttle: Throttle,
    pub(super) tx_throttle: Throttle,
    active: Option<Active>,
    metrics: Arc<NetMetrics>,
    /// The backend's fd reported an error or hang-up: stop polling it
    /// until the next reset.
    pub(super) backend_broken: bool,
    /// What the event loop currently watches.
    pub(super) watching_queues: bool,
    pub(super) watching_backend: bool,
    pub(super) log: Arc<GuestLog>,
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("features", &format_args!("{:#x}", self.features))
            .field("active", &self.active.is_some())
            .field("backlog", &self.rx.backlog().len())
            .finish()
    }
}

fn config_space(mac: Option<MacAddr>, mtu: u16) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    if let Some(mac) = mac {
        c[0..6].copy_from_slice(&mac.0);
    }
    c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    c[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
    c[10..12].copy_from_slice(&mtu.to_le_bytes());
    c
}

impl Net {
    /// A device over `backend`.
    pub fn new(backend: Box<dyn NetBackend>, options: &NetOptions) -> Result<Self, NetError> {
        if options.mtu < MIN_MTU {
            return Err(NetError::BadMtu(options.mtu));
        }
        let mut features = 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_MTU
            | 1 << VIRTIO_NET_F_CSUM
            | 1 << VIRTIO_NET_F_GUEST_CSUM
            | 1 << VIRTIO_NET_F_GUEST_TSO4
            | 1 << VIRTIO_NET_F_GUEST_TSO6
            | 1 << VIRTIO_NET_F_HOST_TSO4
            | 1 << VIRTIO_NET_F_HOST_TSO6
            | 1 << VIRTIO_NET_F_MRG_RXBUF;
        if let Some(mac) = options.mac {
            if mac.is_multicast() {
                return Err(NetError::MulticastMac(mac));
            }
            features |= 1 << VIRTIO_NET_F_MAC;
        }
        let metrics = Arc::new(NetMetrics::default());
        let log = Arc::new(GuestLog::new("virtio-net"));
        let mut rx = RxHandler::new(metrics.clone(), log.clone());
        rx.set_backlog_limits(options.backlog.0, options.backlog.1);
        Ok(Self {
            features,
            config: config_space(options.mac, options.mtu),
            queue_evts: [EventFd::new(EFD_NONBLOCK)?, EventFd::new(EFD_NONBLOCK)?],
            activate_evt: EventFd::new(EFD_NONBLOCK)?,
            backend,
            rx,
            tx: TxHandler::new(metrics.clone(), log.clone()),
            rx_throttle: Throttle::new(options.rx_rate_limit)?,
            tx_throttle: Throttle::new(options.tx_rate_limit)?,
            active: None,
            metrics,
            backend_broken: false,
            watching_queues: false,
            watching_backend: false,
            log,
        })
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// Whether the driver activated the device.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Frames read from the backend that wait for guest buffers.
    pub fn rx_backlog_len(&self) -> usize {
        self.rx.backlog().len()
    }

    /// The backend's fd, if it has one.
    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.backend.fd()
    }

    /// The backend's own state, for a snapshot.
    pub(super) fn backend_state(&self) -> Option<serde_json::Value> {
        self.backend.save_state()
    }

    /// Gives the backend its saved state.
    pub(super) fn restore_backend_state(&mut self, state: &serde_json::Value) -> std::io::Result<()> {
        self.backend.restore_state(state)
    }

    /// The receive and transmit rate limits in force.
    pub fn rate_limits(&self) -> (RateLimit, RateLimit) {
        (self.rx_throttle.config(), self.tx_throttle.config())
    }

    /// Replaces the receive and transmit rate limits.
    pub fn set_rate_limits(&mut self, rx: RateLimit, tx: RateLimit) {
        self.rx_throttle.update(rx);
        self.tx_throttle.update(tx);
    }

    /// Whether the event loop should poll the backend: the device is live,
    /// not throttled, and its receive backlog has room.
    pub fn wants_backend_events(&self) -> bool {
        self.active.is_some()
            && !self.backend_broken
            && !self.rx_throttle.is_blocked()
            && self.rx.backlog().has_room()
    }

    fn broken_queue(&mut self, which: &str, e: QueueError) {
        self.log
            .warn(format_args!("{which} {e}; the device needs a reset"));
        if let Some(a) = self.active.take() {
            a.interrupt.set_needs_reset();
        }
        self.rx.reset();
    }

    /// Fills the guest's receive buffers from the backlog and the backend
    /// (the event loop calls this on an rx notify or a readable backend).
    pub fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if self.rx_throttle.is_blocked() {
            return;
        }
        let limiter = self.rx_throttle.limiter();
        match self.rx.process(&mut a.rx, &a.mem, self.backend.as_mut(), limiter) {
            Ok(outcome) => {
                if outcome.notify {
                    a.interrupt.signal_used_queue();
                }
                if let Some(wait) = outcome.throttled {
                    NetMetrics::add(&self.metrics.rx_throttled, 1);
                    NetMetrics::add(&self.metrics.rx_throttled_us, micros(wait));
                    self.rx_throttle.block_for(wait);
                }
                if outcome.more {
                    // Come back after the event loop served the rest.
                    let _ = self.queue_evts[RXQ].write(1);
                }
            }
            Err(e) => self.broken_queue("rx", e),
        }
    }

    /// Sends every frame the guest queued (the event loop calls this on a
    /// tx notify).
    pub fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if self.tx_throttle.is_blocked() {
            return;
        }
        let limiter = self.tx_throttle.limiter();
        match self.tx.process(&mut a.tx, &a.mem, self.backend.as_mut(), limiter) {
            Ok(outcome) => {
                if outcome.notify {
                    a.interrupt.signal_used_queue();
                }
                if let Some(wait) = outcome.throttled {
                    NetMetrics::add(&self.metrics.tx_throttled, 1);
                    NetMetrics::add(&self.metrics.tx_throttled_us, micros(wait));
                    self.tx_throttle.block_for(wait);
                }
                if outcome.more {
                    let _ = self.queue_evts[TXQ].write(1);
                }
            }
            Err(e) => self.broken_queue("tx", e),
        }
    }
}

/// `d` in whole microseconds, saturating.
fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn avail_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn guest_log(&self) -> &Arc<GuestLog> {
        &self.log
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let n = ctx.queues.len();
        let mut queues = ctx.queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(ActivateError::QueueNotReady(n));
        };
        if !rx.ready() {
            return Err(ActivateError::QueueNotReady(RXQ));
        }
        if !tx.ready() {
            return Err(ActivateError::QueueNotReady(TXQ));
        }
        let offloads = GuestOffloads::from_features(ctx.acked_features);
        self.backend.set_offload(offloads).map_err(|e| {
            ActivateError::Device(format!("virtio-net: cannot set the backend's offloads: {e}"))
        })?;
        self.rx
            .activate(ctx.acked_features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0);
        self.backend_broken = false;
        self.active = Some(Active {
            mem: ctx.mem,
            rx,
            tx,
            interrupt: ctx.interrupt,
        });
        // Let the event loop start watching the queues and the backend.
        let _ = self.activate_evt.write(1);
        Ok(())
    }

    /// Receive buffers taken from the ring but not filled yet are saved as
    /// not taken: the restored device takes them again, so a snapshot
    /// loses no buffer.
    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active.as_ref().map(|a| {
            let mut rx = a.rx.state();
            rx.next_avail = rx.next_avail.wrapping_sub(self.rx.held_chains());
            vec![rx, a.tx.state()]
        })
    }

    fn save_device(&self) -> Option<crate::virtio::persist::DeviceState> {
        self.save_state()
    }

    fn restore_device(
        &mut self,
        state: &crate::virtio::persist::DeviceState,
    ) -> Result<(), crate::virtio::persist::DeviceRestoreError> {
        self.restore_state(state)
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx.reset();
        self.backend_broken = false;
        let _ = self.activate_evt.write(1);
    }
}
