//! The block device on the event loop: queue notifications in, requests
//! processed.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Block;
use crate::virtio::VirtioDevice;

impl Block {
    fn set_queue_watch(&mut self, ops: &mut EventOps) {
        let evt = Events::new(&self.queue_events()[0], EventSet::IN);
        if self.is_active() {
            // Already watched after a reset-and-reactivate is fine.
            let _ = ops.add(evt);
            // Notifications may have come before we watched the fd.
            self.process_queue();
        } else {
            let _ = ops.remove(evt);
        }
    }
}

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            self.set_queue_watch(ops);
        } else if fd == self.queue_events()[0].as_raw_fd() {
            let _ = self.queue_events()[0].read();
            self.process_queue();
        } else if fd == self.throttle.timer_fd() && self.throttle.on_timer() {
            self.process_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            log::error!("virtio-blk: cannot watch the activation eventfd: {e}");
        }
        if let Err(e) = ops.add(Events::new_raw(self.throttle.timer_fd(), EventSet::IN)) {
            log::error!("virtio-blk: cannot watch the rate limiter timer: {e}");
        }
        if self.is_active() {
            self.set_queue_watch(ops);
        }
    }
}
