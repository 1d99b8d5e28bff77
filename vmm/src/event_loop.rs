//! The event loop: one thread running event-manager over every device's
//! eventfds and host sockets.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A subscriber as the loop holds it: shared with whoever created it.
pub(crate) type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Ends the loop when its eventfd is written.
struct StopOnEvent {
    evt: EventFd,
    stop: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopOnEvent {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stop.store(true, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("event loop: cannot watch its stop eventfd: {e}");
        }
    }
}

/// The running loop.
#[derive(Debug)]
pub(crate) struct EventLoop {
    thread: Option<JoinHandle<()>>,
    stop: EventFd,
}

impl EventLoop {
    /// Registers `subscribers` and starts the thread.
    pub fn start(subscribers: Vec<Subscriber>) -> io::Result<Self> {
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(|e| io::Error::other(format!("event manager: {e:?}")))?;
        for s in subscribers {
            manager.add_subscriber(s);
        }
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let flag = Arc::new(AtomicBool::new(false));
        manager.add_subscriber(Arc::new(Mutex::new(StopOnEvent {
            evt: stop.try_clone()?,
            stop: flag.clone(),
        })));
        let thread = std::thread::Builder::new()
            .name("hearth-events".into())
            .spawn(move || {
                while !flag.load(Ordering::SeqCst) {
                    if let Err(e) = manager.run() {
                        log::error!("event loop failed: {e:?}");
                        break;
                    }
                }
            })?;
        log::trace!("event loop started, stop fd {}", stop.as_raw_fd());
        Ok(Self {
            thread: Some(thread),
            stop,
        })
    }

    /// Stops the loop and joins its thread.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.stop.write(1);
            if thread.join().is_err() {
                log::error!("the event loop thread panicked");
            }
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}
