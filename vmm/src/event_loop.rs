//! The event loop: one thread running event-manager over every device's
//! eventfds and host sockets.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::observe::threads::ThreadSet;
use crate::seccomp::Filter;

/// A subscriber as the loop holds it: shared with whoever created it.
pub(crate) type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Pause state shared between the `Vm` and the loop thread.
#[derive(Debug, Default)]
struct PauseState {
    requested: bool,
    parked: bool,
}

#[derive(Debug, Default)]
struct Pause {
    state: Mutex<PauseState>,
    changed: Condvar,
}

/// Controls the loop from outside: a stop flag and a pause gate, both
/// signalled through one eventfd.
struct Control {
    evt: EventFd,
    stop: Arc<AtomicBool>,
    pause: Arc<Pause>,
}

impl MutEventSubscriber for Control {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        #[cfg(feature = "test-hooks")]
        crate::test_hooks::before_event_loop_park();
        let mut st = self.pause.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.requested && !self.stop.load(Ordering::SeqCst) {
            // Park the whole loop: no device runs until resumed.
            st.parked = true;
            self.pause.changed.notify_all();
            while st.requested && !self.stop.load(Ordering::SeqCst) {
                st = self.pause.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.parked = false;
            self.pause.changed.notify_all();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("event loop: cannot watch its control eventfd: {e}");
        }
    }
}

/// The running loop.
#[derive(Debug)]
pub(crate) struct EventLoop {
    thread: Option<JoinHandle<()>>,
    evt: EventFd,
    stop: Arc<AtomicBool>,
    pause: Arc<Pause>,
}

impl EventLoop {
    /// Registers `subscribers` and starts the thread.
    pub fn start(subscribers: Vec<Subscriber>, filter: Filter, threads: ThreadSet) -> io::Result<Self> {
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(|e| io::Error::other(format!("event manager: {e:?}")))?;
        for s in subscribers {
            manager.add_subscriber(s);
        }
        let evt = EventFd::new(EFD_NONBLOCK)?;
        let flag = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(Pause::default());
        manager.add_subscriber(Arc::new(Mutex::new(Control {
            evt: evt.try_clone()?,
            stop: flag.clone(),
            pause: pause.clone(),
        })));
        let stop = flag.clone();
        let thread = std::thread::Builder::new()
            .name("hearth-events".into())
            .spawn(move || {
                threads.register_current("events");
                if let Err(e) = filter.install() {
                    // Devices stop; the guest sees them hang, the log says why.
                    log::error!("event loop not started: {e}");
                    threads.finish();
                    return;
                }
                while !flag.load(Ordering::SeqCst) {
                    if let Err(e) = manager.run() {
                        log::error!("event loop failed: {e:?}");
                        break;
                    }
                }
                threads.finish();
            })?;
        log::trace!("event loop started, control fd {}", evt.as_raw_fd());
        Ok(Self {
            thread: Some(thread),
            evt,
            stop,
            pause,
        })
    }

    /// Parks the loop between events; returns once it is parked (or
    /// `false` if it did not park by `deadline`: the request then stays
    /// pending until [`resume`](Self::resume) cancels it).
    pub fn pause(&self, deadline: Instant) -> bool {
        let mut st = self.pause.state.lock().unwrap_or_else(|p| p.into_inner());
        st.requested = true;
        let _ = self.evt.write(1);
        while !st.parked {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            st = self
                .pause
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Lets a parked loop run again, or cancels a pause it has not reached.
    pub fn resume(&self) {
        let mut st = self.pause.state.lock().unwrap_or_else(|p| p.into_inner());
        st.requested = false;
        self.pause.changed.notify_all();
    }

    /// Stops the loop and joins its thread.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            self.resume();
            let _ = self.evt.write(1);
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
