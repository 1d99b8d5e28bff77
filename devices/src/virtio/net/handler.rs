//! The queue loops: frames from the guest to the backend (tx), and from the
//! backend to the guest through a bounded backlog (rx). No fds here: the
//! backend is a trait object and the event loop lives in `event_handler`.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::backend::NetBackend;
use super::metrics::NetMetrics;
use super::rxtx::{
    self, parse_rx_chain, plan_rx, write_rx_frame, RxChain, RxPlan, MAX_CHAIN_DESCRIPTORS, MAX_PACKET_LEN,
    VNET_HDR_LEN,
};
use crate::guest_log::GuestLog;
use crate::rate_limiter::RateLimiter;
use crate::virtio::{drain, Handled, QueueError, QueueOutcome};

use crate::GuestMemoryMmap;

/// Frames the receive backlog holds at most, by default.
pub const RX_BACKLOG_FRAMES: usize = 64;
/// Bytes the receive backlog holds at most (give or take the last frame),
/// by default.
pub const RX_BACKLOG_BYTES: usize = 1 << 20;

/// Most frames one turn moves from the backend to the guest.
pub const RX_TURN_FRAMES: usize = 256;

/// Sends every frame the guest queued on the transmit queue.
#[derive(Debug)]
pub struct TxHandler {
    buf: Vec<u8>,
    metrics: Arc<NetMetrics>,
    log: Arc<GuestLog>,
}

impl TxHandler {
    /// A handler counting into `metrics` and logging through `log`.
    pub fn new(metrics: Arc<NetMetrics>, log: Arc<GuestLog>) -> Self {
        Self {
            buf: vec![0; MAX_PACKET_LEN],
            metrics,
            log,
        }
    }

    /// Validates the chain `descs` and hands its frame to the
    /// backend; a bad or refused frame is dropped and counted. Returns
    /// `Err(bytes)`, having done nothing, when the rate limiter holds the
    /// frame back.
    fn send(
        &mut self,
        descs: &[Descriptor],
        mem: &GuestMemoryMmap,
        backend: &mut dyn NetBackend,
        limiter: &mut RateLimiter,
    ) -> Result<(), u64> {
        let frame = rxtx::read_tx_frame(descs, mem, &mut self.buf);
        // A malformed frame costs an operation but no bytes.
        let bytes = frame
            .as_ref()
            .map_or(0, |len| len.saturating_sub(VNET_HDR_LEN) as u64);
        if !limiter.consume(bytes) {
            return Err(bytes);
        }
        let len = match frame {
            Ok(len) => len,
            Err(e) => {
                NetMetrics::add(&self.metrics.tx_dropped_malformed, 1);
                self.log.warn(format_args!("dropped a tx frame: {e}"));
                return Ok(());
            }
        };
        match backend.write_frame(&[IoSlice::new(&self.buf[..len])]) {
            Ok(()) => {
                NetMetrics::add(&self.metrics.tx_frames, 1);
                NetMetrics::add(&self.metrics.tx_bytes, (len - VNET_HDR_LEN) as u64);
            }
            Err(e) => {
                NetMetrics::add(&self.metrics.tx_dropped_backend, 1);
                if e.kind() != io::ErrorKind::WouldBlock {
                    self.log.warn(format_args!("backend refused a frame: {e}"));
                }
            }
        }
        Ok(())
    }

    /// Handles, for one turn, every available chain the rate limiter
    /// allows (see [`drain`]); each goes to the used ring with length 0,
    /// whatever became of its frame.
    pub fn process(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        backend: &mut dyn NetBackend,
        limiter: &mut RateLimiter,
    ) -> Result<QueueOutcome, QueueError> {
        let log = self.log.clone();
        // One more than allowed, so that too many can be told.
        drain(
            queue,
            mem,
            limiter,
            MAX_CHAIN_DESCRIPTORS + 1,
            &log,
            |_, descs, limiter| match self.send(descs, mem, backend, limiter) {
                Ok(()) => Handled::Done(0),
                Err(bytes) => Handled::Throttled(bytes),
            },
        )
    }
}

/// Frames read from the backend that wait for guest buffers, oldest first.
#[derive(Debug)]
pub struct RxBacklog {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
    max_frames: usize,
    max_bytes: usize,
}

impl Default for RxBacklog {
    fn default() -> Self {
        Self {
            frames: VecDeque::new(),
            bytes: 0,
            max_frames: RX_BACKLOG_FRAMES,
            max_bytes: RX_BACKLOG_BYTES,
        }
    }
}

impl RxBacklog {
    /// Whether the device may read another frame from the backend. Once
    /// it may not, the device stops reading (and polling) until the guest
    /// takes frames, so the backlog never exceeds its frame bound, or its
    /// byte bound plus one frame.
    pub fn has_room(&self) -> bool {
        self.frames.len() < self.max_frames && self.bytes < self.max_bytes
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame waits.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    fn push(&mut self, frame: Vec<u8>) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    fn pop(&mut self) {
        if let Some(f) = self.frames.pop_front() {
            self.bytes -= f.len();
        }
    }

    /// Drops every frame; returns how many there were.
    fn clear(&mut self) -> usize {
        let n = self.frames.len();
        self.frames.clear();
        self.bytes = 0;
        n
    }
}

/// What became of one received frame.
enum Placed {
    Delivered,
    Dropped,
    /// The guest has not posted enough buffers: try again later.
    Stalled,
    /// The rate limiter holds the frame back (`bytes` long).
    Throttled(u64),
}

/// The receive queue's side: chains taken from the ring but not used yet
/// (a frame spread over mergeable buffers may wait for more of them).
#[derive(Debug)]
struct RxRing {
    held: VecDeque<RxChain>,
    descs: Vec<Descriptor>,
    used: Vec<(u16, u32)>,
    used_any: bool,
    mergeable: bool,
    metrics: Arc<NetMetrics>,
    log: Arc<GuestLog>,
}

impl RxRing {
    fn add_used(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        queue.add_used(mem, head, len)?;
        self.used_any = true;
        Ok(())
    }

    /// Takes the next chain from the ring into `held`; false if none.
    /// Malformed chains go back to the guest unused.
    fn take_chain(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        let next = queue.iter(mem)?.next();
        let Some(chain) = next else {
            return Ok(false);
        };
        let head = chain.head_index();
        if head >= queue.size() {
            NetMetrics::add(&self.metrics.rx_invalid_buffers, 1);
            self.log.warn(format_args!(
                "skipped rx avail entry with head {head} beyond the queue size {}",
                queue.size()
            ));
            return Ok(true);
        }
        self.descs.clear();
        self.descs.extend(chain.take(MAX_CHAIN_DESCRIPTORS + 1));
        match parse_rx_chain(head, &self.descs, mem) {
            Ok(c) => self.held.push_back(c),
            Err(e) => {
                NetMetrics::add(&self.metrics.rx_invalid_buffers, 1);
                self.log.warn(format_args!("returned an unusable rx buffer: {e}"));
                self.add_used(queue, mem, head, 0)?;
            }
        }
        Ok(true)
    }

    /// Puts one packet (header first) into guest buffers.
    fn place(
        &mut self,
        packet: &mut [u8],
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        limiter: &mut RateLimiter,
    ) -> Result<Placed, QueueError> {
        let max_chains = usize::from(queue.size());
        loop {
            match plan_rx(packet.len(), &self.held, self.mergeable, max_chains) {
                RxPlan::Fits(n) => {
                    // Charged only once the frame is sure to be delivered.
                    let bytes = packet.len().saturating_sub(VNET_HDR_LEN) as u64;
                    if !limiter.consume(bytes) {
                        return Ok(Placed::Throttled(bytes));
                    }
                    self.used.clear();
                    let result = write_rx_frame(packet, &self.held, n, mem, &mut self.used);
                    let ok = result.is_ok();
                    for i in 0..n {
                        let (head, len) = match self.used.get(i) {
                            Some(&(head, len)) if ok => (head, len),
                            _ => (self.held[i].head, 0),
                        };
                        self.add_used(queue, mem, head, len)?;
                    }
                    self.held.drain(..n);
                    if let Err(e) = result {
                        // Checked chains in memory that cannot shrink: not
                        // expected, but never a panic.
                        NetMetrics::add(&self.metrics.rx_dropped_no_buffer, 1);
                        self.log.warn(format_args!("cannot write an rx frame: {e}"));
                        return Ok(Placed::Dropped);
                    }
                    NetMetrics::add(&self.metrics.rx_frames, 1);
                    NetMetrics::add(&self.metrics.rx_bytes, (packet.len() - VNET_HDR_LEN) as u64);
                    return Ok(Placed::Delivered);
                }
                RxPlan::TooBig => {
                    NetMetrics::add(&self.metrics.rx_dropped_no_buffer, 1);
                    self.log.warn(format_args!(
                        "dropped a {}-byte rx frame larger than the guest's buffers",
                        packet.len()
                    ));
                    return Ok(Placed::Dropped);
                }
                RxPlan::NeedMore => {
                    if !self.take_chain(queue, mem)? {
                        return Ok(Placed::Stalled);
                    }
                }
            }
        }
    }
}

/// Why delivery stopped.
enum Stop {
    BackendEmpty,
    NoBuffers,
    Throttled(u64),
    /// The turn's frame budget is spent.
    Budget,
}

/// Moves frames from the backend to the receive queue.
#[derive(Debug)]
pub struct RxHandler {
    backlog: RxBacklog,
    scratch: Vec<u8>,
    ring: RxRing,
}

impl RxHandler {
    /// A handler counting into `metrics` and logging through `log`.
    pub fn new(metrics: Arc<NetMetrics>, log: Arc<GuestLog>) -> Self {
        Self {
            backlog: RxBacklog::default(),
            scratch: vec![0; MAX_PACKET_LEN],
            ring: RxRing {
                held: VecDeque::new(),
                descs: Vec::with_capacity(MAX_CHAIN_DESCRIPTORS + 1),
                used: Vec::new(),
                used_any: false,
                mergeable: false,
                metrics,
                log,
            },
        }
    }

    /// Sets the backlog's bounds (frames, bytes); at least one frame.
    pub fn set_backlog_limits(&mut self, frames: usize, bytes: usize) {
        self.backlog.max_frames = frames.max(1);
        self.backlog.max_bytes = bytes.max(1);
    }

    /// Starts over with a new queue; `mergeable` is VIRTIO_NET_F_MRG_RXBUF.
    pub fn activate(&mut self, mergeable: bool) {
        self.ring.held.clear();
        self.ring.mergeable = mergeable;
    }

    /// Chains taken from the ring and not used yet: a snapshot saves the
    /// ring as if they had not been taken, so that the restored device
    /// takes them again.
    pub fn held_chains(&self) -> u16 {
        self.ring.held.len() as u16
    }

    /// Forgets the queue; frames still waiting are dropped and counted.
    pub fn reset(&mut self) {
        self.ring.held.clear();
        let n = self.backlog.clear();
        NetMetrics::add(&self.ring.metrics.rx_dropped_no_buffer, n as u64);
    }

    /// The backlog.
    pub fn backlog(&self) -> &RxBacklog {
        &self.backlog
    }

    /// Reads one frame from the backend into `scratch`.
    fn read(&mut self, backend: &mut dyn NetBackend) -> Option<usize> {
        loop {
            match backend.read_frame(&mut self.scratch) {
                Ok(0) => return None,
                Ok(n) if n >= VNET_HDR_LEN => return Some(n.min(self.scratch.len())),
                Ok(n) => {
                    NetMetrics::add(&self.ring.metrics.rx_backend_errors, 1);
                    self.ring.log.warn(format_args!(
                        "backend gave a {n}-byte frame, shorter than the header"
                    ));
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    NetMetrics::add(&self.ring.metrics.rx_backend_errors, 1);
                    self.ring
                        .log
                        .warn(format_args!("reading the backend failed: {e}"));
                    return None;
                }
            }
        }
    }

    /// The guest ran out of buffers: read ahead into the backlog while it
    /// has room, then leave the rest to the backend (and its own queue).
    fn fill_backlog(&mut self, backend: &mut dyn NetBackend) {
        while self.backlog.has_room() {
            let Some(n) = self.read(backend) else { break };
            self.backlog.push(self.scratch[..n].to_vec());
        }
    }

    /// Delivers the backlog, then frames straight from the backend, until
    /// one of them runs out, the rate limiter says stop, or `budget`
    /// frames were handled.
    fn deliver(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        backend: &mut dyn NetBackend,
        limiter: &mut RateLimiter,
        budget: &mut usize,
    ) -> Result<Stop, QueueError> {
        while let Some(frame) = self.backlog.frames.front_mut() {
            if *budget == 0 {
                return Ok(Stop::Budget);
            }
            *budget -= 1;
            match self.ring.place(frame, queue, mem, limiter)? {
                Placed::Delivered | Placed::Dropped => self.backlog.pop(),
                Placed::Stalled => {
                    self.fill_backlog(backend);
                    return Ok(Stop::NoBuffers);
                }
                Placed::Throttled(bytes) => return Ok(Stop::Throttled(bytes)),
            }
        }
        loop {
            if *budget == 0 {
                return Ok(Stop::Budget);
            }
            *budget -= 1;
            let Some(n) = self.read(backend) else {
                return Ok(Stop::BackendEmpty);
            };
            match self.ring.place(&mut self.scratch[..n], queue, mem, limiter)? {
                Placed::Delivered | Placed::Dropped => {}
                Placed::Stalled => {
                    self.backlog.push(self.scratch[..n].to_vec());
                    self.fill_backlog(backend);
                    return Ok(Stop::NoBuffers);
                }
                Placed::Throttled(bytes) => {
                    self.backlog.push(self.scratch[..n].to_vec());
                    return Ok(Stop::Throttled(bytes));
                }
            }
        }
    }

    /// Fills the guest's receive buffers, for one turn of at most
    /// [`RX_TURN_FRAMES`] frames, as far as they, the backend and the rate
    /// limiter allow. If it stopped for lack of buffers, it re-checks after
    /// re-enabling notifications, so buffers posted meanwhile are not
    /// missed (EVENT_IDX-safe).
    pub fn process(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        backend: &mut dyn NetBackend,
        limiter: &mut RateLimiter,
    ) -> Result<QueueOutcome, QueueError> {
        self.ring.used_any = false;
        let mut throttled = None;
        let mut budget = RX_TURN_FRAMES;
        let mut more = false;
        loop {
            queue.disable_notification(mem)?;
            let stop = self.deliver(queue, mem, backend, limiter, &mut budget)?;
            let posted = queue.enable_notification(mem)?;
            match stop {
                Stop::NoBuffers if posted => continue,
                Stop::Throttled(bytes) => throttled = Some(limiter.wait_time(bytes)),
                Stop::Budget => more = true,
                _ => {}
            }
            break;
        }
        Ok(QueueOutcome {
            notify: self.ring.used_any && queue.needs_notification(mem)?,
            throttled,
            more,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_bounds() {
        let mut b = RxBacklog::default();
        for _ in 0..RX_BACKLOG_FRAMES {
            assert!(b.has_room());
            b.push(vec![0; 100]);
        }
        assert!(!b.has_room(), "frame bound");
        assert_eq!(b.clear(), RX_BACKLOG_FRAMES);
        assert!(b.is_empty() && b.has_room());
        for _ in 0..16 {
            b.push(vec![0; MAX_PACKET_LEN]);
        }
        assert!(!b.has_room(), "byte bound");
        b.pop();
        assert!(b.has_room());
        assert_eq!(b.len(), 15);
    }
}
