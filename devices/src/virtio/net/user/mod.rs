//! The user-mode network backend: a guest's Ethernet frames end on the
//! host side, in smoltcp, and only flows the [`NetPolicy`] allows become
//! ordinary host sockets. No TAP, no root, no host firewall; deny by
//! default; every decision recorded (docs/NETWORK.md).
//!
//! Pure parts (unit-tested and fuzzed):
//! - [`policy`]: rules, the host map, closed ranges, decisions;
//! - [`dns`], [`dhcp`], [`sniff`] (TLS SNI, HTTP Host), [`frame`];
//! - [`pins`]: addresses pinned to names from DNS answers.
//!
//! Glue around fds and smoltcp:
//! - `poller`: the one fd the device polls (epoll over an eventfd, a
//!   timer, and the host sockets); `host`: the host's own addresses;
//! - `phy`: smoltcp's device; `tcp`, `udp`, `resolver`: one flow, one
//!   UDP flow, the upstream DNS socket;
//! - `backend` ([`UserNet`]), `tcp_flows`, `services`: the backend, its
//!   TCP table, and what it answers itself (DHCP, DNS, ICMP echo, UDP);
//! - [`handle`]: the owner's handle (replace the policy, read counters);
//! - `sim` (tests, feature `test-utils`): a simulated guest on smoltcp.

mod backend;
pub mod config;
pub mod dhcp;
pub mod dns;
pub mod frame;
pub mod handle;
mod host;
mod phy;
pub mod pins;
pub mod policy;
mod poller;
mod resolver;
mod services;
#[cfg(any(test, feature = "test-utils"))]
pub mod sim;
pub mod sniff;
mod tcp;
mod tcp_flows;
#[cfg(test)]
mod tests;
mod udp;

pub use backend::{UserNet, UserNetError, UserNetState};
pub use config::{
    FlowEvent, FlowProtocol, FlowRecord, FlowRecorder, UserNetConfig, UserNetLimits, GATEWAY, GATEWAY_MAC,
    GUEST,
};
pub use handle::{UserNetCounters, UserNetHandle};
pub use policy::{NetPolicy, PolicyError, Rule};
