//! Changing a running VM's device rate limits.

use std::sync::{Mutex, MutexGuard};

use hearth_devices::rate_limiter::RateLimit;

use crate::config::{ConfigError, VmConfig};
use crate::device_manager::Devices;
use crate::error::Error;
use crate::vm::Vm;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Vm {
    /// Replaces disk `index`'s limits (config order). A request the old
    /// limits held back is retried at once under the new ones.
    pub fn set_disk_rate_limit(&self, index: usize, limit: RateLimit) -> Result<(), Error> {
        limit.validate().map_err(|e| ConfigError::Disk {
            index,
            why: format!("rate_limit: {e}"),
        })?;
        self.devices.virtio.block(index)?.set_rate_limit(limit);
        Ok(())
    }

    /// Replaces network interface `index`'s receive and transmit limits.
    pub fn set_net_rate_limits(&self, index: usize, rx: RateLimit, tx: RateLimit) -> Result<(), Error> {
        for (what, limit) in [("rx_rate_limit", rx), ("tx_rate_limit", tx)] {
            limit.validate().map_err(|e| ConfigError::Net {
                index,
                why: format!("{what}: {e}"),
            })?;
        }
        self.devices.virtio.net(index)?.set_rate_limits(rx, tx);
        Ok(())
    }
}

impl Devices {
    /// Writes the limits in force, and the user-mode interfaces' policies,
    /// into `config` (a snapshot records them).
    pub(crate) fn record_rate_limits(&self, config: &mut VmConfig) {
        for (i, net) in config.nets.iter_mut().enumerate() {
            if let (crate::net::NetBackendKind::User(spec), Some(h)) =
                (&mut net.kind, self.virtio.user_net(i))
            {
                spec.policy = h.policy();
            }
        }
        for (disk, dev) in config.disks.iter_mut().zip(self.virtio.blocks()) {
            disk.rate_limit = lock(dev).rate_limit();
        }
        for (net, dev) in config.nets.iter_mut().zip(self.virtio.nets()) {
            (net.rx_rate_limit, net.tx_rate_limit) = lock(dev).rate_limits();
        }
    }
}
