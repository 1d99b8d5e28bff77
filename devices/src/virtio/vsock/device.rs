//! The virtio-vsock device: rx, tx and event queues in front of the muxer.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::throttle::nonblocking_timer;

use super::defs::{Header, EVENT_TRANSPORT_RESET, MAX_PKT_DATA};
use super::muxer::{Muxer, MuxerError, VsockLimits, RESET_ACK_TIMEOUT};
use crate::guest_log::GuestLog;
use crate::virtio::device::{read_config_bytes, ActivateContext, ActivateError, VirtioDevice};
use crate::virtio::persist::{DeviceRestoreError, DeviceState};
use crate::virtio::TURN_CHAINS;
use crate::virtio::{VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::GuestMemoryMmap;

/// Queue indices.
pub const RXQ: usize = 0;
/// Transmit queue.
pub const TXQ: usize = 1;
/// Event queue.
pub const EVQ: usize = 2;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved.
    #[error("vsock guest cid must be at least 3 and fit in 32 bits, got {0}")]
    BadCid(u64),
    /// The host socket could not be set up.
    #[error(transparent)]
    Muxer(#[from] MuxerError),
    /// An eventfd or timerfd failed.
    #[error("vsock: {0}")]
    Io(#[from] std::io::Error),
}

pub(super) struct Active {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    pub interrupt: Arc<VirtioInterrupt>,
}

/// A virtio-vsock device.
pub struct Vsock {
    cid: u64,
    config: [u8; 8],
    queue_evts: [EventFd; 3],
    pub(super) activate_evt: EventFd,
    pub(super) timer: TimerFd,
    /// The deadline the timer is armed for.
    pub(super) timer_deadline: Option<Instant>,
    /// Host fds registered with the event loop.
    pub(super) registered: std::collections::HashSet<std::os::fd::RawFd>,
    pub(super) muxer: Muxer,
    pub(super) active: Option<Active>,
    /// A TRANSPORT_RESET event waits for an event-queue buffer.
    pending_reset_event: bool,
    /// The guest got a TRANSPORT_RESET and has not yet handed back an
    /// event buffer (which Linux does once it has handled the event).
    reset_unacked: bool,
    log: Arc<GuestLog>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("cid", &self.cid)
            .field("active", &self.active.is_some())
            .field("connections", &self.muxer.connection_count())
            .finish()
    }
}

fn header_of<B: vm_memory::bitmap::BitmapSlice>(pkt: &VsockPacket<'_, B>) -> Header {
    Header {
        src_cid: pkt.src_cid(),
        dst_cid: pkt.dst_cid(),
        src_port: pkt.src_port(),
        dst_port: pkt.dst_port(),
        len: pkt.len(),
        type_: pkt.type_(),
        op: pkt.op(),
        flags: pkt.flags(),
        buf_alloc: pkt.buf_alloc(),
        fwd_cnt: pkt.fwd_cnt(),
    }
}

fn write_header<B: vm_memory::bitmap::BitmapSlice>(pkt: &mut VsockPacket<'_, B>, h: &Header) {
    pkt.set_src_cid(h.src_cid)
        .set_dst_cid(h.dst_cid)
        .set_src_port(h.src_port)
        .set_dst_port(h.dst_port)
        .set_len(h.len)
        .set_type(h.type_)
        .set_op(h.op)
        .set_flags(h.flags)
        .set_buf_alloc(h.buf_alloc)
        .set_fwd_cnt(h.fwd_cnt);
}

impl Vsock {
    /// A device for guest `cid` whose host side listens on `uds_path`,
    /// within `limits`.
    pub fn new(cid: u64, uds_path: &Path, limits: VsockLimits) -> Result<Self, VsockError> {
        if !(3..=u64::from(u32::MAX)).contains(&cid) {
            return Err(VsockError::BadCid(cid));
        }
        let log = Arc::new(GuestLog::new("virtio-vsock"));
        Ok(Self {
            cid,
            config: cid.to_le_bytes(),
            queue_evts: [
                EventFd::new(EFD_NONBLOCK)?,
                EventFd::new(EFD_NONBLOCK)?,
                EventFd::new(EFD_NONBLOCK)?,
            ],
            activate_evt: EventFd::new(EFD_NONBLOCK)?,
            timer: nonblocking_timer()?,
            timer_deadline: None,
            registered: std::collections::HashSet::new(),
            muxer: Muxer::new(cid, uds_path, limits, log.clone())?,
            active: None,
            pending_reset_event: false,
            reset_unacked: false,
            log,
        })
    }

    /// The guest CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The muxer (for tests and metrics).
    pub fn muxer(&self) -> &Muxer {
        &self.muxer
    }

    pub(super) fn muxer_mut(&mut self) -> &mut Muxer {
        &mut self.muxer
    }

    /// Whether the driver activated the device.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn broken_queue(&mut self, e: virtio_queue::Error) {
        self.log
            .warn(format_args!("virtqueue error: {e}; the device needs a reset"));
        if let Some(a) = self.active.take() {
            a.interrupt.set_needs_reset();
        }
    }

    /// Takes up to `max` available chains of queue `q`. Heads beyond the
    /// queue's size are skipped (no used entry can name them) and logged.
    fn chains<'m>(
        &mut self,
        q: usize,
        mem: &'m GuestMemoryMmap,
        max: usize,
    ) -> Option<Vec<DescriptorChain<&'m GuestMemoryMmap>>> {
        let queue = self.active.as_mut()?.queues.get_mut(q)?;
        let size = queue.size();
        match queue.iter(mem) {
            Ok(iter) => {
                let (good, bad): (Vec<_>, Vec<_>) = iter.take(max).partition(|c| c.head_index() < size);
                if let Some(c) = bad.first() {
                    self.log.warn(format_args!(
                        "skipped {} avail entries of queue {q} with heads beyond its size {size} (e.g. {})",
                        bad.len(),
                        c.head_index()
                    ));
                }
                Some(good)
            }
            Err(e) => {
                self.broken_queue(e);
                None
            }
        }
    }

    fn memory(&self) -> Option<GuestMemoryMmap> {
        self.active.as_ref().map(|a| a.mem.clone())
    }

    fn rx_queue_size(&self) -> u16 {
        self.active
            .as_ref()
            .and_then(|a| a.queues.get(RXQ))
            .map_or(0, |q| q.size())
    }

    fn add_used(&mut self, q: usize, head: u16, len: u32) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let result = match active.queues.get_mut(q) {
            Some(queue) => queue.add_used(&active.mem, head, len),
            None => return false,
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                self.broken_queue(e);
                false
            }
        }
    }

    fn notify(&mut self, q: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(queue) = active.queues.get_mut(q) else {
            return;
        };
        match queue.needs_notification(&active.mem) {
            Ok(true) => active.interrupt.signal_used_queue(),
            Ok(false) => {}
            Err(e) => self.broken_queue(e),
        }
    }

    /// Handles the packets the guest queued, for one turn of at most
    /// [`TURN_CHAINS`]; a turn that leaves packets signals the queue's
    /// eventfd so the event loop comes back after serving the rest.
    pub fn process_tx(&mut self) {
        let Some(mem) = self.memory() else { return };
        let Some(chains) = self.chains(TXQ, &mem, TURN_CHAINS) else {
            return;
        };
        if chains.len() == TURN_CHAINS {
            let _ = self.queue_evts[TXQ].write(1);
        }
        let mut used = false;
        for mut chain in chains {
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(&mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    let hdr = header_of(&pkt);
                    self.muxer.on_guest_packet(&hdr, pkt.data_slice());
                }
                Err(e) => self.log.warn(format_args!("dropped a malformed tx packet: {e}")),
            }
            used |= self.add_used(TXQ, head, 0);
        }
        if used {
            self.notify(TXQ);
        }
    }

    /// Fills guest rx buffers while the muxer has packets, for one turn of
    /// at most [`TURN_CHAINS`] packets (then the queue's eventfd brings the
    /// event loop back).
    pub fn process_rx(&mut self) {
        let Some(mem) = self.memory() else { return };
        let mut used = false;
        let mut budget = TURN_CHAINS;
        while self.muxer.has_pending_rx() {
            if budget == 0 {
                let _ = self.queue_evts[RXQ].write(1);
                break;
            }
            budget -= 1;
            let Some(active) = self.active.as_mut() else { break };
            let Some(queue) = active.queues.get_mut(RXQ) else {
                break;
            };
            let next = match queue.iter(&mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => {
                    self.broken_queue(e);
                    break;
                }
            };
            let Some(mut chain) = next else { break };
            let head = chain.head_index();
            if head >= QUEUE_SIZE.min(self.rx_queue_size()) {
                self.log.warn(format_args!(
                    "skipped an rx avail entry with head {head} beyond the queue size"
                ));
                continue;
            }
            let len = match VsockPacket::from_rx_virtq_chain(&mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => match self.muxer.next_rx(pkt.data_slice()) {
                    Some(hdr) => {
                        write_header(&mut pkt, &hdr);
                        PKT_HEADER_SIZE as u32 + hdr.len
                    }
                    None => {
                        // Nothing after all: give the buffer back.
                        if let Some(q) = self.active.as_mut().and_then(|a| a.queues.get_mut(RXQ)) {
                            q.go_to_previous_position();
                        }
                        break;
                    }
                },
                Err(e) => {
                    self.log.warn(format_args!("unusable rx buffer: {e}"));
                    0
                }
            };
            used |= self.add_used(RXQ, head, len);
        }
        if used {
            self.notify(RXQ);
        }
    }

    /// Sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (after a restore): the
    /// guest drops its connections and reconnects.
    pub fn send_transport_reset(&mut self) {
        self.pending_reset_event = true;
        self.muxer.hold_host_connects(Instant::now() + RESET_ACK_TIMEOUT);
        self.process_event_queue();
    }

    /// The guest notified the event queue: after a TRANSPORT_RESET it
    /// does so once it has handled the event, so held host connections
    /// may go ahead.
    pub fn on_event_queue_notify(&mut self) {
        if self.reset_unacked {
            self.reset_unacked = false;
            self.muxer.release_host_connects();
        }
        self.process_event_queue();
    }

    /// Delivers a pending event if the guest posted an event buffer.
    pub fn process_event_queue(&mut self) {
        if !self.pending_reset_event {
            return;
        }
        let Some(mem) = self.memory() else { return };
        let Some(chains) = self.chains(EVQ, &mem, usize::from(QUEUE_SIZE)) else {
            return;
        };
        let mut chains = chains.into_iter();
        let Some(mut chain) = chains.next() else { return };
        // Return the other buffers unused, in order.
        let extra = chains.count();
        if let Some(q) = self.active.as_mut().and_then(|a| a.queues.get_mut(EVQ)) {
            for _ in 0..extra {
                q.go_to_previous_position();
            }
        }
        let head = chain.head_index();
        let len = match chain.find(|d| d.is_write_only() && d.len() >= 4) {
            Some(d) if mem.write_obj(EVENT_TRANSPORT_RESET.to_le(), d.addr()).is_ok() => 4,
            _ => 0,
        };
        if self.add_used(EVQ, head, len) {
            self.pending_reset_event = false;
            self.reset_unacked = true;
            self.notify(EVQ);
        }
    }

    /// Expires timed-out handshakes and connections.
    pub fn on_timer(&mut self) {
        // Non-blocking: if the timer was re-armed or cleared earlier in this
        // epoll batch, this finds nothing and the deadlines are simply
        // re-checked.
        let _ = self.timer.wait();
        // Re-arm for whatever is next.
        self.timer_deadline = None;
        self.muxer.on_timer(Instant::now());
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
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
        for (i, q) in ctx.queues.iter().enumerate() {
            if !q.ready() {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        if ctx.queues.len() != 3 {
            return Err(ActivateError::QueueNotReady(ctx.queues.len()));
        }
        self.active = Some(Active {
            mem: ctx.mem,
            queues: ctx.queues,
            interrupt: ctx.interrupt,
        });
        let _ = self.activate_evt.write(1);
        Ok(())
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active
            .as_ref()
            .map(|a| a.queues.iter().map(|q| q.state()).collect())
    }

    fn save_device(&self) -> Option<DeviceState> {
        Some(self.save_state())
    }

    fn restore_device(&mut self, state: &DeviceState) -> Result<(), DeviceRestoreError> {
        self.load_state(state)
    }

    fn restored(&mut self) {
        // Connections did not survive the snapshot: tell the guest.
        self.send_transport_reset();
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending_reset_event = false;
        self.reset_unacked = false;
        self.muxer.reset();
        let _ = self.activate_evt.write(1);
    }
}
