//! The vsock device on the event loop: queue notifications, the host
//! socket, every connection's stream, and a timer for timeouts.

use std::os::fd::AsRawFd;
use std::time::Instant;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::{Vsock, EVQ, RXQ, TXQ};
use super::muxer::Watch;
use crate::virtio::VirtioDevice;

impl Vsock {
    fn watch_queues(&mut self, ops: &mut EventOps) {
        for q in [RXQ, TXQ, EVQ] {
            let evt = Events::new(&self.queue_events()[q], EventSet::IN);
            if self.is_active() {
                let _ = ops.add(evt);
            } else {
                let _ = ops.remove(evt);
            }
        }
    }

    /// Applies the muxer's interest changes, then closes dead streams.
    fn apply_watches(&mut self, ops: &mut EventOps) {
        for change in self.muxer.take_watch_changes() {
            match change {
                Watch::Set(fd, set) => {
                    let evt = Events::new_raw(fd, set);
                    let result = if self.registered.contains(&fd) {
                        ops.modify(evt)
                    } else {
                        ops.add(evt)
                    };
                    match result {
                        Ok(()) => {
                            self.registered.insert(fd);
                        }
                        Err(e) => log::warn!("virtio-vsock: cannot watch fd {fd}: {e}"),
                    }
                }
                Watch::Remove(fd) => {
                    if self.registered.remove(&fd) {
                        let _ = ops.remove(Events::empty_raw(fd));
                    }
                }
            }
        }
        self.muxer.release_closed();
        // Arm the timer for the next deadline, if it changed.
        let next = self.muxer.next_deadline();
        if next != self.timer_deadline {
            self.timer_deadline = next;
            let _ = match next {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    self.timer
                        .reset(left.max(std::time::Duration::from_millis(1)), None)
                }
                None => self.timer.clear(),
            };
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let q = |i: usize| self.queue_events()[i].as_raw_fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            self.watch_queues(ops);
            self.process_event_queue();
            self.process_tx();
            self.process_rx();
        } else if fd == q(RXQ) {
            let _ = self.queue_events()[RXQ].read();
            self.process_rx();
        } else if fd == q(TXQ) {
            let _ = self.queue_events()[TXQ].read();
            self.process_tx();
            self.process_rx();
        } else if fd == q(EVQ) {
            let _ = self.queue_events()[EVQ].read();
            self.on_event_queue_notify();
            self.process_rx();
        } else if fd == self.timer.as_raw_fd() {
            self.on_timer();
            self.process_rx();
        } else {
            self.muxer.on_fd_event(fd, events.event_set());
            self.process_rx();
        }
        self.apply_watches(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (fd, what) in [
            (self.activate_evt.as_raw_fd(), "activation eventfd"),
            (self.timer.as_raw_fd(), "timer"),
            (self.muxer.listener_fd(), "host socket"),
        ] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("virtio-vsock: cannot watch the {what}: {e}");
            }
        }
        if self.is_active() {
            self.watch_queues(ops);
        }
    }
}
