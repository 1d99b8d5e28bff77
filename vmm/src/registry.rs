//! The VM's virtio devices in one registry: each device's kind, id,
//! transport and handle. Snapshots save each device's state under its id,
//! and restore pairs saved state with devices by id, refusing a mismatch
//! with an error that names the device.

use std::sync::{Arc, Mutex, MutexGuard};

use hearth_devices::virtio::block::{Block, BlockCounters};
use hearth_devices::virtio::net::{Net, NetCounters};
use hearth_devices::virtio::persist::TransportSnapshot;
use hearth_devices::virtio::vsock::Vsock;
use hearth_devices::virtio::MmioTransport;

use crate::device_manager::DeviceError;
use crate::error::Error;

/// A device's model, by kind.
#[derive(Debug)]
pub(crate) enum Handle {
    Block(Arc<Mutex<Block>>),
    Net(Arc<Mutex<Net>>),
    Vsock(Arc<Mutex<Vsock>>),
}

/// One virtio device.
#[derive(Debug)]
pub(crate) struct Entry {
    /// `disk<N>`, `net<N>` or `vsock`: stable across snapshot and restore.
    pub id: String,
    pub transport: Arc<MmioTransport>,
    pub handle: Handle,
    /// Block and net counters live outside the device's lock.
    pub block_metrics: Option<Arc<hearth_devices::virtio::block::BlockMetrics>>,
    pub net_metrics: Option<Arc<hearth_devices::virtio::net::NetMetrics>>,
    /// A user-mode network backend's handle (policy, counters).
    pub user_net: Option<hearth_devices::virtio::net::user::UserNetHandle>,
}

/// Every virtio device, in MMIO slot order.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    entries: Vec<Entry>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    pub fn push(&mut self, entry: Entry) {
        self.entries.push(entry);
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The disks, in config order.
    pub fn blocks(&self) -> impl Iterator<Item = &Arc<Mutex<Block>>> {
        self.entries.iter().filter_map(|e| match &e.handle {
            Handle::Block(b) => Some(b),
            _ => None,
        })
    }

    /// The network interfaces, in config order.
    pub fn nets(&self) -> impl Iterator<Item = &Arc<Mutex<Net>>> {
        self.entries.iter().filter_map(|e| match &e.handle {
            Handle::Net(n) => Some(n),
            _ => None,
        })
    }

    /// Network interface `index`'s user-mode backend, if it has one.
    pub fn user_net(&self, index: usize) -> Option<hearth_devices::virtio::net::user::UserNetHandle> {
        self.entries
            .iter()
            .filter(|e| matches!(e.handle, Handle::Net(_)))
            .nth(index)
            .and_then(|e| e.user_net.clone())
    }

    /// The vsock device, if any.
    pub fn vsock(&self) -> Option<&Arc<Mutex<Vsock>>> {
        self.entries.iter().find_map(|e| match &e.handle {
            Handle::Vsock(v) => Some(v),
            _ => None,
        })
    }

    /// Disk `index`, locked.
    pub fn block(&self, index: usize) -> Result<MutexGuard<'_, Block>, Error> {
        let count = self.blocks().count();
        self.blocks()
            .nth(index)
            .map(|b| lock(b))
            .ok_or(Error::NoSuchDevice {
                kind: "disk",
                index,
                count,
            })
    }

    /// Network interface `index`, locked.
    pub fn net(&self, index: usize) -> Result<MutexGuard<'_, Net>, Error> {
        let count = self.nets().count();
        self.nets()
            .nth(index)
            .map(|n| lock(n))
            .ok_or(Error::NoSuchDevice {
                kind: "net",
                index,
                count,
            })
    }

    pub fn disk_counters(&self) -> Vec<BlockCounters> {
        self.entries
            .iter()
            .filter_map(|e| e.block_metrics.as_ref().map(|m| m.snapshot()))
            .collect()
    }

    pub fn net_counters(&self) -> Vec<NetCounters> {
        self.entries
            .iter()
            .filter_map(|e| e.net_metrics.as_ref().map(|m| m.snapshot()))
            .collect()
    }

    /// Every device's transport and own state, under its id.
    pub fn save(&self) -> Vec<TransportSnapshot> {
        self.entries
            .iter()
            .map(|e| TransportSnapshot {
                id: Some(e.id.clone()),
                ..e.transport.save()
            })
            .collect()
    }

    /// Restores saved state into the devices, paired by id (snapshots
    /// from format 1.1 have no ids: they pair by position, which was
    /// their order).
    pub fn restore(&self, saved: &[TransportSnapshot]) -> Result<(), DeviceError> {
        let has_ids = saved.iter().all(|s| s.id.is_some());
        if has_ids {
            for s in saved {
                let id = s.id.as_deref().unwrap_or_default();
                if !self.entries.iter().any(|e| e.id == id) {
                    return Err(DeviceError::NotInConfig(id.to_string()));
                }
            }
        } else if saved.len() != self.entries.len() {
            return Err(DeviceError::Restore(format!(
                "the snapshot has {} virtio devices, the configuration {}",
                saved.len(),
                self.entries.len()
            )));
        }
        for (i, e) in self.entries.iter().enumerate() {
            let snap = if has_ids {
                saved.iter().find(|s| s.id.as_deref() == Some(e.id.as_str()))
            } else {
                saved.get(i)
            };
            let snap = snap.ok_or_else(|| DeviceError::NotInSnapshot(e.id.clone()))?;
            e.transport
                .restore(snap)
                .map_err(|source| DeviceError::RestoreDevice {
                    id: e.id.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}
