//! The VM's threads as one unit: the vCPUs and the device event loop are
//! paused, resumed and stopped together. A pause that fails at any step
//! rolls every part back to running (and cancels the event loop's pending
//! park), so [`Runner::is_paused`] is always the truth.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;

use crate::error::Error;
use crate::event_loop::EventLoop;
use crate::exit::{ExitReason, RunState};
use crate::kvm::vcpu::{VcpuHandle, VcpuRequest, VcpuResponse, SPAWN_PAUSE_SEQ};

/// How long a vCPU or the event loop may take to answer a pause, resume
/// or save request before the request is given up (and a pause rolled
/// back).
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer bound in force (tests shorten it through `test-hooks`).
pub(crate) fn answer_timeout() -> Duration {
    #[cfg(feature = "test-hooks")]
    if let Some(t) = crate::test_hooks::answer_timeout() {
        return t;
    }
    ANSWER_TIMEOUT
}

/// The vCPU threads and the event loop of one VM.
#[derive(Debug)]
pub(crate) struct Runner {
    vcpus: Vec<VcpuHandle>,
    event_loop: Option<EventLoop>,
    run_state: Arc<RunState>,
    /// Serialises pause/resume/snapshot; true while paused.
    paused: Mutex<bool>,
    /// Sequence numbers of pause and resume requests.
    seq: AtomicU64,
}

/// Held while the VM is known to be paused: resume waits for it.
pub(crate) struct PausedGuard<'a> {
    runner: &'a Runner,
    _lock: MutexGuard<'a, bool>,
}

impl Runner {
    pub fn new(event_loop: Option<EventLoop>, run_state: Arc<RunState>) -> Self {
        Self {
            vcpus: Vec::new(),
            event_loop,
            run_state,
            paused: Mutex::new(false),
            seq: AtomicU64::new(SPAWN_PAUSE_SEQ + 1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, bool> {
        self.paused.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adopts a started vCPU thread.
    pub fn push_vcpu(&mut self, vcpu: VcpuHandle) {
        self.vcpus.push(vcpu);
    }

    /// After spawning every vCPU parked: waits for them to say so, parks
    /// the event loop, and records the VM as paused.
    pub fn adopt_spawned_paused(&self) -> Result<(), Error> {
        let mut paused = self.lock();
        let deadline = Instant::now() + answer_timeout();
        self.wait_all(VcpuResponse::Paused(SPAWN_PAUSE_SEQ), "pause", deadline)?;
        if let Some(el) = &self.event_loop {
            if !el.pause(deadline) {
                el.resume();
                return Err(Error::EventLoopUnresponsive);
            }
        }
        *paused = true;
        Ok(())
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        *self.lock()
    }

    /// Stops every vCPU at an instruction boundary and parks the event
    /// loop, all or nothing.
    pub fn pause(&self) -> Result<(), Error> {
        let mut paused = self.lock();
        if *paused {
            return Ok(());
        }
        self.check_running()?;
        let deadline = Instant::now() + answer_timeout();
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        for vcpu in &self.vcpus {
            vcpu.send(VcpuRequest::Pause(seq));
        }
        self.run_state.kick_all();
        if let Err(e) = self.wait_all(VcpuResponse::Paused(seq), "pause", deadline) {
            self.roll_back();
            return Err(e);
        }
        if let Some(el) = &self.event_loop {
            if !el.pause(deadline) {
                self.roll_back();
                return Err(Error::EventLoopUnresponsive);
            }
        }
        *paused = true;
        Ok(())
    }

    /// Lets a paused VM run again: the event loop first, so that devices
    /// are live when the guest next touches them.
    pub fn resume(&self) -> Result<(), Error> {
        let mut paused = self.lock();
        if !*paused {
            return Ok(());
        }
        self.check_running()?;
        // Whatever happens below, every part has been told to run: the
        // VM is not paused any more.
        *paused = false;
        if let Some(el) = &self.event_loop {
            el.resume();
        }
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        for vcpu in &self.vcpus {
            vcpu.send(VcpuRequest::Resume(seq));
        }
        let deadline = Instant::now() + answer_timeout();
        self.wait_all(VcpuResponse::Resumed(seq), "resume", deadline)
    }

    /// Puts every part back to running after a failed pause: the event
    /// loop's pending park is cancelled, and each vCPU is sent a resume
    /// that it serves after the pause it may still be working through.
    fn roll_back(&self) {
        if let Some(el) = &self.event_loop {
            el.resume();
        }
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        for vcpu in &self.vcpus {
            vcpu.send(VcpuRequest::Resume(seq));
        }
        let deadline = Instant::now() + answer_timeout();
        if let Err(e) = self.wait_all(VcpuResponse::Resumed(seq), "resume", deadline) {
            // That vCPU resumes once it serves its queue; nothing is left
            // parked for good.
            log::warn!("rolling back a pause: {e}");
        }
    }

    fn check_running(&self) -> Result<(), Error> {
        match self.run_state.exit_reason() {
            Some(reason) => Err(Error::NotRunning(reason)),
            None => Ok(()),
        }
    }

    fn wait_all(&self, want: VcpuResponse, request: &'static str, deadline: Instant) -> Result<(), Error> {
        for (index, vcpu) in self.vcpus.iter().enumerate() {
            match vcpu.recv_answer(want, deadline) {
                Some(r) if r == want => {}
                Some(_) => {
                    return Err(Error::NotRunning(
                        self.run_state.exit_reason().unwrap_or(ExitReason::Stopped),
                    ))
                }
                None => return Err(Error::VcpuUnresponsive { index, request }),
            }
        }
        Ok(())
    }

    /// Holds the pause lock if the VM is paused (and running), so that no
    /// resume can happen while the caller reads its state.
    pub fn paused_guard(&self) -> Result<Option<PausedGuard<'_>>, Error> {
        let lock = self.lock();
        self.check_running()?;
        Ok(lock.then_some(PausedGuard {
            runner: self,
            _lock: lock,
        }))
    }

    /// Wakes every thread so that it sees the VM stopping.
    pub fn stop(&self) {
        for vcpu in &self.vcpus {
            // Wakes a paused vCPU; a running one is kicked by request_exit.
            vcpu.send(VcpuRequest::Finish);
        }
        self.run_state.kick_all();
        if let Some(el) = &self.event_loop {
            el.resume();
        }
    }

    /// Ends and joins every thread (the VM has been stopped).
    pub fn join(&mut self) {
        for vcpu in &self.vcpus {
            vcpu.send(VcpuRequest::Finish);
        }
        self.run_state.kick_all();
        // From here on no thread is kicked, so joining is safe.
        self.run_state.close_kick_list();
        for vcpu in &mut self.vcpus {
            if let Err(e) = vcpu.join() {
                log::error!("{e}");
            }
        }
        self.vcpus.clear();
        if let Some(mut event_loop) = self.event_loop.take() {
            event_loop.stop();
        }
    }
}

impl PausedGuard<'_> {
    /// Runs `make(index)`'s closure on each parked vCPU thread, in order,
    /// and collects the results.
    pub fn on_each_vcpu<T: Send + 'static>(
        &self,
        request: &'static str,
        make: impl Fn(usize) -> Box<dyn FnOnce(&mut VcpuFd) -> T + Send>,
    ) -> Result<Vec<T>, Error> {
        let deadline = Instant::now() + answer_timeout();
        let mut out = Vec::with_capacity(self.runner.vcpus.len());
        for (index, vcpu) in self.runner.vcpus.iter().enumerate() {
            let (tx, rx) = channel();
            let f = make(index);
            vcpu.send(VcpuRequest::With(Box::new(move |fd| {
                let _ = tx.send(f(fd));
            })));
            let left = deadline.saturating_duration_since(Instant::now());
            out.push(
                rx.recv_timeout(left)
                    .map_err(|_| Error::VcpuUnresponsive { index, request })?,
            );
        }
        Ok(out)
    }
}
