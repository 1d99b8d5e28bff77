//! Per-VM bounds on what a guest can make the VMM hold on the host
//! (docs/LIMITS.md). The guest is hostile: past a bound it gets a
//! protocol-level refusal (an RST, a dropped frame), a counter goes up,
//! and the VMM's memory and file descriptors stay flat.

use serde::{Deserialize, Serialize};

use hearth_devices::virtio::block::MAX_CHUNK;
use hearth_devices::virtio::net::handler::{RX_BACKLOG_BYTES, RX_BACKLOG_FRAMES};
use hearth_devices::virtio::net::MAX_PACKET_LEN;
use hearth_devices::virtio::vsock::{
    VsockLimits, DEFAULT_CONN_BUFFER, DEFAULT_MAX_CONNECTIONS, MAX_CONTROL_PACKETS,
};

use crate::serial_cap::DEFAULT_SERIAL_OUTPUT_LIMIT;

/// Bounds on one VM's host resources. Every field has a safe default;
/// `docs/LIMITS.md` gives the worst case they add up to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ResourceLimits {
    /// Live vsock connections, each one host socket (default 128). A
    /// guest connection past it gets an RST; a host client is closed.
    pub vsock_connections: usize,
    /// Guest data buffered per vsock connection for a host socket that
    /// does not read (default 128 KiB): the credit the guest is given.
    pub vsock_buffer_bytes: u32,
    /// Received frames held per network interface while the guest posts
    /// no buffers (default 64); past it the device stops reading its
    /// backend, whose own queue drops.
    pub net_backlog_frames: usize,
    /// Bytes, likewise (default 1 MiB).
    pub net_backlog_bytes: usize,
    /// Guest serial console output the VMM writes to a file or to its
    /// standard output (default 64 MiB, for the VM's life in this
    /// process); past it the rest is dropped and counted
    /// ([`VmMetrics::serial`](crate::VmMetrics::serial)). 0: none.
    pub serial_output_bytes: u64,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        Self {
            vsock_connections: DEFAULT_MAX_CONNECTIONS,
            vsock_buffer_bytes: DEFAULT_CONN_BUFFER,
            net_backlog_frames: RX_BACKLOG_FRAMES,
            net_backlog_bytes: RX_BACKLOG_BYTES,
            serial_output_bytes: DEFAULT_SERIAL_OUTPUT_LIMIT,
        }
    }
}

/// Host memory one vsock control packet (a queued RST header) takes.
const CONTROL_PACKET_BYTES: u64 = 48;

impl ResourceLimits {
    /// Sets `vsock_connections`.
    pub fn vsock_connections(mut self, n: usize) -> Self {
        self.vsock_connections = n;
        self
    }
    /// Sets `vsock_buffer_bytes`.
    pub fn vsock_buffer_bytes(mut self, n: u32) -> Self {
        self.vsock_buffer_bytes = n;
        self
    }
    /// Sets `net_backlog_frames`.
    pub fn net_backlog_frames(mut self, n: usize) -> Self {
        self.net_backlog_frames = n;
        self
    }
    /// Sets `net_backlog_bytes`.
    pub fn net_backlog_bytes(mut self, n: usize) -> Self {
        self.net_backlog_bytes = n;
        self
    }
    /// Sets `serial_output_bytes`.
    pub fn serial_output_bytes(mut self, n: u64) -> Self {
        self.serial_output_bytes = n;
        self
    }

    /// Checks the bounds are in range; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let check = |name: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be from {lo} to {hi}, got {v}"))
            }
        };
        check("vsock_connections", self.vsock_connections as u64, 1, 1024)?;
        check(
            "vsock_buffer_bytes",
            u64::from(self.vsock_buffer_bytes),
            4096,
            4 << 20,
        )?;
        check("net_backlog_frames", self.net_backlog_frames as u64, 1, 4096)?;
        check(
            "net_backlog_bytes",
            self.net_backlog_bytes as u64,
            64 << 10,
            64 << 20,
        )
    }

    /// The vsock device's share.
    pub(crate) fn vsock(&self) -> VsockLimits {
        VsockLimits {
            max_connections: self.vsock_connections,
            conn_buffer: self.vsock_buffer_bytes,
        }
    }

    /// The most host memory a guest can make a VM with `disks` disks,
    /// `nets` interfaces and (if `vsock`) a vsock device hold beyond its
    /// RAM through these bounds: device buffers, not the VMM's fixed
    /// footprint.
    pub fn worst_case_bytes(&self, disks: usize, nets: usize, vsock: bool) -> u64 {
        let per_disk = MAX_CHUNK as u64;
        // The backlog's byte bound can be passed by one frame; plus the
        // transmit and receive scratch buffers.
        let per_net = self.net_backlog_bytes as u64 + 3 * MAX_PACKET_LEN as u64;
        let vsock_bytes = if vsock {
            self.vsock_connections as u64 * u64::from(self.vsock_buffer_bytes)
                + MAX_CONTROL_PACKETS as u64 * CONTROL_PACKET_BYTES
        } else {
            0
        };
        disks as u64 * per_disk + nets as u64 * per_net + vsock_bytes
    }

    /// The most file descriptors the guest can make the VMM open: one per
    /// vsock connection. (Host clients in their handshake, at most
    /// [`MAX_PENDING_CLIENTS`], are the host's doing.)
    pub fn worst_case_guest_fds(&self) -> usize {
        self.vsock_connections
    }
}

/// Host clients in their vsock handshake at once (host-initiated, so not
/// the guest's to spend; listed for the fd budget).
#[cfg(test)]
const VSOCK_PENDING_CLIENTS: usize = hearth_devices::virtio::vsock::MAX_PENDING_CLIENTS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_keep_a_typical_vm_under_32_mib_and_256_fds() {
        let l = ResourceLimits::default();
        assert_eq!(l.validate(), Ok(()));
        // Four disks, two interfaces and vsock.
        let worst = l.worst_case_bytes(4, 2, true);
        assert!(worst <= 32 << 20, "{worst}");
        assert!(l.worst_case_guest_fds() + VSOCK_PENDING_CLIENTS + 64 <= 256);
    }

    #[test]
    fn out_of_range_bounds_name_the_field() {
        let l = ResourceLimits {
            vsock_connections: 0,
            ..ResourceLimits::default()
        };
        assert!(l.validate().unwrap_err().starts_with("vsock_connections"));
        let l = ResourceLimits {
            net_backlog_bytes: 1,
            ..ResourceLimits::default()
        };
        assert!(l.validate().unwrap_err().starts_with("net_backlog_bytes"));
    }
}
