//! Taking a snapshot of a paused VM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use kvm_ioctls::Cap;

use super::state::{DevicesState, SnapshotState};
use super::{format, memory, SnapshotError, SnapshotInfo, MEMORY_FILE, STATE_FILE};
use crate::config::SerialOutput;
use crate::error::Error;
use crate::kvm::{vcpu_state, vm_state};
use crate::vm::Vm;

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

impl Vm {
    /// Saves the paused VM into `dir` (created if needed): the state file
    /// and the guest memory. The VM stays paused.
    pub fn snapshot(&self, dir: impl AsRef<Path>) -> Result<SnapshotInfo, Error> {
        let t = Instant::now();
        let dir = dir.as_ref();
        // Holding the pause lock keeps a concurrent resume out.
        let Some(paused) = self.runner.paused_guard()? else {
            return Err(SnapshotError::NotPaused.into());
        };
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;

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
        if matches!(config.serial, SerialOutput::Buffer(_) | SerialOutput::Callback(_)) {
            config.serial = SerialOutput::None;
        }
        let state = SnapshotState {
            memory_bytes: config.memory_mib << 20,
            config,
            vcpus,
            vm,
            devices,
        };

        let state_path = dir.join(STATE_FILE);
        let bytes = format::encode(&state).map_err(|source| SnapshotError::Format {
            path: state_path.clone(),
            source,
        })?;
        let tmp = tmp_name(&state_path);
        let memory_path = dir.join(MEMORY_FILE);
        let tmp_mem = tmp_name(&memory_path);
        let written = (|| {
            std::fs::write(&tmp, &bytes).map_err(write_err(&tmp))?;
            let stats = memory::save(&self.memory, &tmp_mem).map_err(write_err(&tmp_mem))?;
            std::fs::rename(&tmp_mem, &memory_path).map_err(write_err(&memory_path))?;
            std::fs::rename(&tmp, &state_path).map_err(write_err(&state_path))?;
            Ok::<_, SnapshotError>(stats)
        })();
        let stats = match written {
            Ok(stats) => stats,
            Err(e) => {
                // A full disk must not leave half-written files behind. (If
                // only the state's rename failed, the new memory file is
                // already in place.)
                let _ = std::fs::remove_file(&tmp);
                let _ = std::fs::remove_file(&tmp_mem);
                return Err(e.into());
            }
        };
        Ok(SnapshotInfo {
            state_bytes: bytes.len() as u64,
            memory_bytes: stats.size,
            memory_written: stats.written,
            duration: t.elapsed(),
        })
    }
}
