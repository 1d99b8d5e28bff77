//! The network device on the event loop: activation, both queue
//! notifications, and the backend's fd, watched only while the receive
//! backlog has room (it is level-triggered: watching it while the device
//! cannot read would spin).

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::{Net, RXQ, TXQ};
use crate::virtio::VirtioDevice;

impl Net {
    /// Brings what the event loop watches in line with the device's state.
    fn update_watches(&mut self, ops: &mut EventOps) {
        let active = self.is_active();
        if active != self.watching_queues {
            for q in [RXQ, TXQ] {
                let evt = Events::new(&self.queue_events()[q], EventSet::IN);
                if active {
                    if let Err(e) = ops.add(evt) {
                        log::error!("virtio-net: cannot watch queue {q}: {e}");
                    }
                } else {
                    let _ = ops.remove(evt);
                }
            }
            self.watching_queues = active;
        }
        let want = self.wants_backend_events();
        if let Some(fd) = self.backend_fd() {
            if want != self.watching_backend {
                let evt = Events::new_raw(fd, EventSet::IN);
                if want {
                    if let Err(e) = ops.add(evt) {
                        log::error!("virtio-net: cannot watch the backend: {e}");
                    }
                } else {
                    let _ = ops.remove(evt);
                }
                self.watching_backend = want;
            }
        }
    }
}

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            // Notifications may have come before the queues were watched.
            self.process_tx();
            self.process_rx();
        } else if fd == self.queue_events()[RXQ].as_raw_fd() {
            let _ = self.queue_events()[RXQ].read();
            self.process_rx();
        } else if fd == self.queue_events()[TXQ].as_raw_fd() {
            let _ = self.queue_events()[TXQ].read();
            self.process_tx();
        } else if fd == self.rx_throttle.timer_fd() {
            if self.rx_throttle.on_timer() {
                self.process_rx();
            }
        } else if fd == self.tx_throttle.timer_fd() {
            if self.tx_throttle.on_timer() {
                self.process_tx();
            }
        } else if Some(fd) == self.backend_fd() {
            if events.event_set().intersects(EventSet::ERROR | EventSet::HANG_UP) {
                if !self.backend_broken {
                    self.log.warn(format_args!(
                        "the backend's fd reports an error; receiving stops until a reset"
                    ));
                }
                self.backend_broken = true;
            } else {
                self.process_rx();
            }
        }
        self.update_watches(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            log::error!("virtio-net: cannot watch the activation eventfd: {e}");
        }
        for fd in [self.rx_throttle.timer_fd(), self.tx_throttle.timer_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("virtio-net: cannot watch a rate limiter timer: {e}");
            }
        }
        if self.is_active() {
            self.process_tx();
            self.process_rx();
        }
        self.update_watches(ops);
    }
}
