//! Taking a snapshot of a paused VM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use kvm_ioctls::Cap;

use super::state::{DevicesState, DiffInfo, ParentRef, SnapshotState};
use super::{format, memory, SnapshotError, SnapshotInfo, MEMORY_FILE, STATE_FILE};
use crate::config::SerialOutput;
use crate::error::Error;
use crate::kvm::{vcpu_state, vm_state};
use crate::observe::EventKind;
use crate::runner::PausedGuard;
use crate::vm::VmCore;

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Write {
        path: path.into(),
        source,
    }
}

/// Writes to a temporary name, then renames, so a failed snapshot never
/// leaves a half-written file under the real name.
fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// How to write a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotOptions {
    /// Write every page even when a diff is possible.
    pub full: bool,
}

impl SnapshotOptions {
    /// Defaults: a diff when the VM was restored from a snapshot.
    pub fn new() -> Self {
        Self::default()
    }
    /// Always write a full snapshot.
    pub fn full(mut self, full: bool) -> Self {
        self.full = full;
        self
    }
}

/// Where a restored VM's memory came from: what a diff snapshot of it
/// refers to.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    pub parent: ParentRef,
    /// The parent's own diff depth (0 for a full snapshot).
    pub depth: u32,
}

fn random_id() -> u64 {
    hearth_devices::legacy::Generation::fresh().map_or(0, |g| g.generation)
}

impl VmCore {
    /// Saves the paused VM into `dir` (created if needed): the state file
    /// and the guest memory. The VM stays paused. A VM restored from a
    /// snapshot writes a **diff** (only the pages changed since, and a
    /// reference to that snapshot), unless the chain is already
    /// [`MAX_DIFF_DEPTH`](super::MAX_DIFF_DEPTH) deep.
    pub fn snapshot(&self, dir: impl AsRef<Path>) -> Result<SnapshotInfo, Error> {
        self.snapshot_with(dir, &SnapshotOptions::default())
    }

    /// Captures the paused VM's state (everything but memory).
    pub(crate) fn capture(&self, paused: &PausedGuard<'_>) -> Result<SnapshotState, Error> {
        let xsave_size = self.kvm_vm.fd().check_extension_int(Cap::Xsave2).max(0) as usize;
        let msr_indices = Arc::new(self.host.msr_indices.clone());
        let vcpus = paused
            .on_each_vcpu("save state", |index| {
                let indices = msr_indices.clone();
                let cpuid = self.cpuids.get(index).cloned().unwrap_or_default();
                Box::new(move |fd| vcpu_state::save(fd, cpuid, &indices, xsave_size))
            })?
            .into_iter()
            .enumerate()
            .map(|(index, r)| r.map_err(|source| SnapshotError::Vcpu { index, source }))
            .collect::<Result<Vec<_>, _>>()?;
        let vm = vm_state::save(self.kvm_vm.fd(), self.config.pit).map_err(SnapshotError::VmState)?;
        let devices = DevicesState {
            serial: self.devices.serial.save(),
            cmos: self.devices.cmos.save(),
            virtio: self.devices.virtio.save(),
        };
        let mut config = self.config.clone();
        self.devices.record_rate_limits(&mut config);
        // The restore is the same VM (unless given another id), with the
        // TTL it has left.
        let obs = &self.run_state.obs;
        config.id = Some(obs.id.clone());
        config.ttl = obs
            .ttl_remaining()
            .map(|t| t.max(std::time::Duration::from_millis(1)));
        config.idle = obs.life().idle.clone();
        if matches!(config.serial, SerialOutput::Buffer(_) | SerialOutput::Callback(_)) {
            config.serial = SerialOutput::None;
        }
        Ok(SnapshotState {
            id: random_id(),
            diff: None,
            memory_bytes: config.memory_mib << 20,
            config,
            vcpus,
            vm,
            devices,
        })
    }

    /// Freezes every overlay disk's state into `dir/<prefix><i>.layer` and
    /// points `config`'s disk at it (base, that one layer, no overlay: see
    /// [`DiskConfig::layers`](crate::DiskConfig)). Returns the bytes copied.
    pub(crate) fn freeze_disks(
        &self,
        config: &mut crate::VmConfig,
        dir: &Path,
        prefix: &str,
    ) -> Result<u64, SnapshotError> {
        let mut copied = 0;
        for (i, (disk, block)) in config
            .disks
            .iter_mut()
            .zip(self.devices.virtio.blocks())
            .enumerate()
        {
            if disk.overlay.is_none() && disk.layers.is_empty() {
                continue;
            }
            let dest = dir.join(format!("{prefix}{i}.layer"));
            let mut block = block.lock().unwrap_or_else(|p| p.into_inner());
            match block.freeze_overlay(&dest) {
                Ok(Some(n)) => copied += n,
                Ok(None) => continue,
                Err(e) => {
                    let _ = std::fs::remove_file(&dest);
                    return Err(SnapshotError::Disk { index: i, source: e });
                }
            }
            disk.layers = vec![dest];
            disk.overlay = None;
        }
        Ok(copied)
    }

    /// [`snapshot`](Self::snapshot) with options.
    pub fn snapshot_with(
        &self,
        dir: impl AsRef<Path>,
        options: &SnapshotOptions,
    ) -> Result<SnapshotInfo, Error> {
        let t = Instant::now();
        let dir = dir.as_ref();
        // Holding the pause lock keeps a concurrent resume out.
        let Some(paused) = self.runner.paused_guard()? else {
            return Err(SnapshotError::NotPaused.into());
        };
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
        let mut state = self.capture(&paused)?;
        let canonical = std::fs::canonicalize(dir).map_err(write_err(dir))?;
        self.freeze_disks(&mut state.config, &canonical, "disk")?;
        let diff_of = self
            .origin
            .as_ref()
            .filter(|o| !options.full && o.depth < super::MAX_DIFF_DEPTH && o.parent.dir != canonical);

        let state_path = dir.join(STATE_FILE);
        let tmp = tmp_name(&state_path);
        let memory_path = dir.join(MEMORY_FILE);
        let tmp_mem = tmp_name(&memory_path);
        let written = (|| {
            let stats = match diff_of {
                Some(origin) => {
                    let (stats, extents) =
                        memory::save_diff(&self.memory, &tmp_mem).map_err(write_err(&tmp_mem))?;
                    state.diff = Some(DiffInfo {
                        parent: origin.parent.clone(),
                        depth: origin.depth + 1,
                        extents,
                    });
                    stats
                }
                None => memory::save(&self.memory, &tmp_mem).map_err(write_err(&tmp_mem))?,
            };
            let bytes = format::encode(&state).map_err(|source| SnapshotError::Format {
                path: state_path.clone(),
                source,
            })?;
            std::fs::write(&tmp, &bytes).map_err(write_err(&tmp))?;
            std::fs::rename(&tmp_mem, &memory_path).map_err(write_err(&memory_path))?;
            std::fs::rename(&tmp, &state_path).map_err(write_err(&state_path))?;
            Ok::<_, SnapshotError>((stats, bytes.len()))
        })();
        let (stats, state_bytes) = match written {
            Ok(w) => w,
            Err(e) => {
                // A full disk must not leave half-written files behind. (If
                // only the state's rename failed, the new memory file is
                // already in place.)
                let _ = std::fs::remove_file(&tmp);
                let _ = std::fs::remove_file(&tmp_mem);
                return Err(e.into());
            }
        };
        drop(paused);
        let info = SnapshotInfo {
            state_bytes: state_bytes as u64,
            memory_bytes: stats.size,
            memory_written: stats.written,
            parent: diff_of.map(|o| o.parent.dir.clone()),
            duration: t.elapsed(),
        };
        self.run_state.obs.emit(EventKind::Snapshotted {
            dir: canonical,
            state_bytes: info.state_bytes,
            memory_written: info.memory_written,
            parent: info.parent.clone(),
            ms: info.duration.as_secs_f64() * 1e3,
        });
        Ok(info)
    }
}
