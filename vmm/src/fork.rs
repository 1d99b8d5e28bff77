//! Fork: one running VM becomes `count` new ones that start from its
//! state at that moment, sharing its memory copy-on-write, while it goes
//! on. Its state is captured once, in memory: vCPU and device state as a
//! snapshot state, guest memory in a memfd the children map privately.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{NetConfig, SerialOutput};
use crate::error::Error;
use crate::observe::observer::fresh_id;
use crate::snapshot::{memory, MemorySource, RestoreOptions, Snapshot, SnapshotError};
use crate::vm::Vm;

/// Per-child changes to the restore options a fork uses.
pub type ChildOptions = Arc<dyn Fn(usize, RestoreOptions) -> RestoreOptions + Send + Sync>;

/// How to fork.
#[derive(Clone)]
#[non_exhaustive]
pub struct ForkOptions {
    /// Where the children's files go: vsock sockets
    /// (`child-<i>.vsock`) and disk layers.
    pub dir: PathBuf,
    /// Ask the guest agent to sync its file systems first, so that the
    /// children's disks hold what the parent wrote (default: no; a guest
    /// without the agent would cost the 2 s a vsock connect takes to be
    /// refused).
    pub sync_agent: bool,
    /// Leave the children paused.
    pub paused: bool,
    /// Changes to each child's restore options (serial output, TAPs...);
    /// applied after Hearth's own (socket path, MAC).
    pub customize: Option<ChildOptions>,
}

impl std::fmt::Debug for ForkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkOptions")
            .field("dir", &self.dir)
            .field("sync_agent", &self.sync_agent)
            .field("paused", &self.paused)
            .finish()
    }
}

impl ForkOptions {
    /// Children's files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            sync_agent: false,
            paused: false,
            customize: None,
        }
    }
    /// Whether to ask the agent to sync first.
    pub fn sync_agent(mut self, sync: bool) -> Self {
        self.sync_agent = sync;
        self
    }
    /// Leave the children paused.
    pub fn paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }
    /// Per-child restore options.
    pub fn customize(
        mut self,
        f: impl Fn(usize, RestoreOptions) -> RestoreOptions + Send + Sync + 'static,
    ) -> Self {
        self.customize = Some(Arc::new(f));
        self
    }
}

/// Why a VM cannot be forked as asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForkError {
    /// A writable raw disk cannot be shared by children.
    #[error(
        "disk {0} is a writable raw image, which children cannot share: give it an overlay \
         (DiskConfig::overlay) or each child its own disk (ForkOptions::customize)"
    )]
    SharedDisk(usize),
}

/// A locally administered unicast MAC, random.
fn random_mac() -> String {
    let g = hearth_devices::legacy::Generation::fresh().map_or([0u8; 32], |g| g.seed);
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        (g[0] & 0xfe) | 0x02,
        g[1],
        g[2],
        g[3],
        g[4],
        g[5]
    )
}

impl Vm {
    /// Starts `count` children from this VM's state now. They share its
    /// memory copy-on-write (through a memfd, no disk round trip), each
    /// with its own vsock socket (`<dir>/child-<i>.vsock`), MAC address,
    /// VM generation (so its agent reseeds its RNG and sets its clock) and
    /// disk state (see [`ForkOptions`]). This VM goes on running (or stays
    /// paused if it was).
    pub fn fork(&self, count: usize, options: &ForkOptions) -> Result<Vec<Vm>, Error> {
        std::fs::create_dir_all(&options.dir).map_err(|source| SnapshotError::Write {
            path: options.dir.clone(),
            source,
        })?;
        if options.sync_agent && self.config.vsock.is_some() {
            match self
                .agent()
                .and_then(|a| a.timeout(Some(Duration::from_secs(10))).sync())
            {
                Ok(()) => {}
                Err(e) => log::debug!("fork: no agent sync ({e})"),
            }
        }
        if options.customize.is_none() {
            if let Some(i) = self
                .config
                .disks
                .iter()
                .position(|d| !d.read_only && d.overlay.is_none() && d.layers.is_empty())
            {
                return Err(ForkError::SharedDisk(i).into());
            }
        }
        let was_paused = self.is_paused();
        self.pause_by("fork")?;
        let captured = self.capture_for_fork(&options.dir);
        if !was_paused {
            self.resume()?;
        }
        let snapshot = captured?;
        let child_options = |i: usize| {
            let mut o = RestoreOptions::new()
                .paused(options.paused)
                .serial(SerialOutput::None)
                .id(fresh_id());
            o.fork_of = Some((self.id().to_string(), i));
            if self.config.vsock.is_some() {
                o = o.vsock_uds_path(options.dir.join(format!("child-{i}.vsock")));
            }
            for (d, disk) in snapshot.config().disks.iter().enumerate() {
                if !disk.layers.is_empty() {
                    o = o.disk_overlay(d, options.dir.join(format!("child-{i}-disk{d}.overlay")));
                }
            }
            for (n, net) in self.config.nets.iter().enumerate() {
                let mut net: NetConfig = net.clone();
                net.mac = Some(random_mac());
                o = o.net(n, net);
            }
            match &options.customize {
                Some(f) => f(i, o),
                None => o,
            }
        };
        // Children start on a few threads at once (each start is mostly
        // KVM calls); results keep their order.
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 4)
            .min(count.max(1));
        let mut slots: Vec<Option<Result<Vm, Error>>> = (0..count).map(|_| None).collect();
        std::thread::scope(|s| {
            let chunks: Vec<_> = slots.chunks_mut(count.div_ceil(workers).max(1)).collect();
            let mut first = 0;
            for chunk in chunks {
                let base = first;
                first += chunk.len();
                let (snapshot, child_options) = (&snapshot, &child_options);
                s.spawn(move || {
                    for (k, slot) in chunk.iter_mut().enumerate() {
                        *slot = Some(snapshot.restore(&child_options(base + k)));
                    }
                });
            }
        });
        let mut children = Vec::with_capacity(count);
        for slot in slots {
            children.push(slot.unwrap_or(Err(Error::Setup {
                what: "a fork child",
                source: std::io::Error::other("its start did not run"),
            }))?);
        }
        Ok(children)
    }

    /// The paused VM's state, with its memory copied into a memfd and its
    /// overlay disks frozen into layers in `dir`.
    fn capture_for_fork(&self, dir: &std::path::Path) -> Result<Snapshot, Error> {
        let Some(paused) = self.runner.paused_guard()? else {
            return Err(SnapshotError::NotPaused.into());
        };
        let mut state = self.capture(&paused)?;
        let dir = std::fs::canonicalize(dir).map_err(|source| SnapshotError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        self.freeze_disks(&mut state.config, &dir, "frozen-disk")?;
        let file = crate::memory::memfd(state.memory_bytes).map_err(SnapshotError::Memory)?;
        memory::save_to(&self.memory, &file).map_err(SnapshotError::Memory)?;
        Ok(Snapshot::in_memory(state, MemorySource::Memfd(Arc::new(file))))
    }
}
