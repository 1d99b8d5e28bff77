//! Network interface configuration: a TAP device by name, the user-mode
//! backend with its egress policy (docs/NETWORK.md), or a backend the
//! library user supplies through the [`NetBackend`] trait; and changing a
//! running VM's policy.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hearth_devices::rate_limiter::RateLimit;
use hearth_devices::virtio::net::user::{
    FlowRecord, FlowRecorder, NetPolicy, UserNet, UserNetConfig, UserNetCounters, UserNetHandle,
    UserNetLimits,
};
use hearth_devices::virtio::net::{MacAddr, NetBackend, NetOptions, Tap};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::device_manager::DeviceError;
use crate::error::Error;
use crate::exit::RunState;
use crate::observe::EventKind;
use crate::vm::Vm;

/// Where a VM's flow records go: its event sink (a `flow` event each,
/// docs/OBSERVABILITY.md), or the debug log when it has none (a guest
/// can open and refuse flows at will: it must not flood the log).
pub(crate) fn flow_recorder(device_id: &str, run_state: &Arc<RunState>) -> FlowRecorder {
    let id = device_id.to_owned();
    let rs = run_state.clone();
    Arc::new(move |r: &FlowRecord| {
        if rs.obs.sink.is_some() {
            rs.obs.emit(EventKind::Flow {
                device: id.clone(),
                flow: r.clone(),
            });
        } else {
            log::debug!(target: "hearth::net", "{id}: {r}");
        }
    })
}

/// Which backend an interface has.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum NetBackendKind {
    /// The TAP interface named by `tap` (the default; needs a TAP the
    /// process may open).
    #[default]
    Tap,
    /// The user-mode backend: no TAP, no root, deny-by-default egress.
    User(UserNetSpec),
}

impl NetBackendKind {
    fn is_tap(&self) -> bool {
        matches!(self, NetBackendKind::Tap)
    }
}

/// The user-mode backend's settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct UserNetSpec {
    /// The egress policy (deny everything by default).
    #[serde(default)]
    pub policy: NetPolicy,
    /// Bounds on flows, buffers, DNS pins and queues.
    #[serde(default, skip_serializing_if = "is_default_limits")]
    pub limits: UserNetLimits,
    /// The resolver allowed names are asked (default: the host's first
    /// `nameserver`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_upstream: Option<SocketAddr>,
}

fn is_default_limits(l: &UserNetLimits) -> bool {
    *l == UserNetLimits::default()
}

impl UserNetSpec {
    /// The user-mode backend with `policy`.
    pub fn new(policy: NetPolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }
}

/// Creates a backend for one VM (called once per VM started or restored).
#[derive(Clone)]
pub struct NetFactory(Arc<NetFactoryFn>);

type NetFactoryFn = dyn Fn() -> io::Result<Box<dyn NetBackend>> + Send + Sync;

impl NetFactory {
    /// Wraps `f`.
    pub fn new(f: impl Fn() -> io::Result<Box<dyn NetBackend>> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl fmt::Debug for NetFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NetFactory")
    }
}

impl PartialEq for NetFactory {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// One virtio-net interface.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NetConfig {
    /// The TAP interface (for the user-mode or a custom backend, a name
    /// used in messages).
    #[serde(default)]
    pub tap: String,
    /// The backend: a TAP (default) or the user-mode backend.
    #[serde(default, skip_serializing_if = "NetBackendKind::is_tap")]
    pub kind: NetBackendKind,
    /// The guest's MAC (`52:54:00:12:34:56`); none lets the guest pick one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The MTU offered to the guest (default 1500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Create the TAP if it does not exist (needs CAP_NET_ADMIN); by
    /// default a missing TAP is an error.
    #[serde(default)]
    pub create: bool,
    /// Limits on what the guest receives; none by default.
    #[serde(default, skip_serializing_if = "RateLimit::is_unlimited")]
    pub rx_rate_limit: RateLimit,
    /// Limits on what the guest sends; none by default.
    #[serde(default, skip_serializing_if = "RateLimit::is_unlimited")]
    pub tx_rate_limit: RateLimit,
    /// A custom backend instead of the TAP (library only).
    #[serde(skip)]
    pub backend: Option<NetFactory>,
}

impl NetConfig {
    /// The TAP interface `name`.
    pub fn tap(name: impl Into<String>) -> Self {
        Self {
            tap: name.into(),
            mac: None,
            mtu: None,
            create: false,
            rx_rate_limit: RateLimit::default(),
            tx_rate_limit: RateLimit::default(),
            kind: NetBackendKind::Tap,
            backend: None,
        }
    }

    /// The user-mode backend with `spec` (no TAP, no root).
    pub fn user(spec: UserNetSpec) -> Self {
        Self {
            kind: NetBackendKind::User(spec),
            ..Self::tap("user")
        }
    }

    /// Frames from `factory`; `name` appears in messages.
    pub fn custom(name: impl Into<String>, factory: NetFactory) -> Self {
        Self {
            backend: Some(factory),
            ..Self::tap(name)
        }
    }

    /// The guest's MAC address.
    pub fn mac(mut self, mac: impl Into<String>) -> Self {
        self.mac = Some(mac.into());
        self
    }

    /// The MTU.
    pub fn mtu(mut self, mtu: u16) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Create the TAP if missing.
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Limits what the guest receives and sends.
    pub fn rate_limits(mut self, rx: RateLimit, tx: RateLimit) -> Self {
        self.rx_rate_limit = rx;
        self.tx_rate_limit = tx;
        self
    }

    pub(crate) fn options(&self) -> Result<NetOptions, String> {
        let mac = match &self.mac {
            Some(m) => Some(m.parse::<MacAddr>().map_err(|e| format!("mac {m:?}: {e}"))?),
            None => None,
        };
        self.rx_rate_limit
            .validate()
            .map_err(|e| format!("rx_rate_limit: {e}"))?;
        self.tx_rate_limit
            .validate()
            .map_err(|e| format!("tx_rate_limit: {e}"))?;
        let options = NetOptions {
            mac,
            mtu: self.mtu.unwrap_or(1500),
            rx_rate_limit: self.rx_rate_limit,
            tx_rate_limit: self.tx_rate_limit,
            ..NetOptions::default()
        };
        if options.mac.is_some_and(|m| m.is_multicast()) {
            return Err(format!(
                "mac {} is a multicast address",
                self.mac.as_deref().unwrap_or("")
            ));
        }
        if options.mtu < 68 {
            return Err(format!("mtu must be at least 68, got {}", options.mtu));
        }
        Ok(options)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        match &self.kind {
            NetBackendKind::Tap if self.backend.is_none() && self.tap.is_empty() => {
                return Err("tap must be set".into());
            }
            NetBackendKind::User(spec) => {
                spec.policy.validate().map_err(|e| format!("policy: {e}"))?;
                spec.limits.validate().map_err(|e| format!("limits: {e}"))?;
            }
            NetBackendKind::Tap => {}
        }
        self.options().map(drop)
    }

    /// Opens the backend; the user-mode backend comes with its handle.
    /// `id` names the device in flow records.
    pub(crate) fn open(
        &self,
        id: &str,
        run_state: &Arc<RunState>,
    ) -> Result<(Box<dyn NetBackend>, Option<UserNetHandle>), DeviceError> {
        if let Some(factory) = &self.backend {
            let b = (factory.0)().map_err(|source| DeviceError::CustomNet {
                name: self.tap.clone(),
                source,
            })?;
            return Ok((b, None));
        }
        match &self.kind {
            NetBackendKind::Tap => Ok((Box::new(Tap::open(&self.tap, self.create)?), None)),
            NetBackendKind::User(spec) => {
                let mut c = UserNetConfig::new(spec.policy.clone());
                c.limits = spec.limits;
                c.dns_upstream = spec.dns_upstream;
                c.mtu = self.mtu.unwrap_or(1500);
                c.recorder = flow_recorder(id, run_state);
                let (net, handle) = UserNet::new(c).map_err(|source| DeviceError::UserNet {
                    name: self.tap.clone(),
                    source,
                })?;
                Ok((Box::new(net), Some(handle)))
            }
        }
    }
}

impl Vm {
    /// Replaces network interface `index`'s egress policy (user-mode
    /// backend only). Flows the new policy does not allow are closed, each
    /// with a record; a snapshot taken afterwards carries the new policy.
    pub fn set_net_policy(&self, index: usize, policy: NetPolicy) -> Result<(), Error> {
        self.user_net(index)?
            .set_policy(policy)
            .map_err(|e| ConfigError::Net {
                index,
                why: format!("policy: {e}"),
            })?;
        Ok(())
    }

    /// Network interface `index`'s policy in force.
    pub fn net_policy(&self, index: usize) -> Result<NetPolicy, Error> {
        Ok(self.user_net(index)?.policy())
    }

    /// Network interface `index`'s user-mode backend counters (flows
    /// opened, refused, DNS answers).
    pub fn user_net_counters(&self, index: usize) -> Result<UserNetCounters, Error> {
        Ok(self.user_net(index)?.counters())
    }

    fn user_net(&self, index: usize) -> Result<UserNetHandle, Error> {
        let count = self.devices.virtio.nets().count();
        if index >= count {
            return Err(Error::NoSuchDevice {
                kind: "net",
                index,
                count,
            });
        }
        self.devices
            .virtio
            .user_net(index)
            .ok_or(Error::NotUserNet(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(NetConfig::tap("tap0").mac("52:54:00:12:34:56").validate().is_ok());
        assert!(NetConfig::tap("").validate().is_err());
        assert!(NetConfig::tap("tap0").mac("zz").validate().is_err());
        assert!(NetConfig::tap("tap0")
            .mac("01:00:5e:00:00:01")
            .validate()
            .is_err());
        assert!(NetConfig::tap("tap0").mtu(10).validate().is_err());
        assert!(NetConfig::user(UserNetSpec::default()).validate().is_ok());
    }

    #[test]
    fn json_keeps_tap_configs_and_reads_user_ones() {
        // A TAP config written before the backend kind existed.
        let tap: NetConfig = serde_json::from_str(r#"{"tap":"tap0","create":true}"#).unwrap();
        assert_eq!(tap.kind, NetBackendKind::Tap);
        assert!(!serde_json::to_string(&tap).unwrap().contains("kind"));
        let json = r#"{"kind":{"type":"user","policy":{"allow":["127.0.0.1:8080","*.example.com:443"],"hosts":{"svc.test":"127.0.0.1"}}}}"#;
        let user: NetConfig = serde_json::from_str(json).unwrap();
        user.validate().unwrap();
        let NetBackendKind::User(spec) = &user.kind else {
            panic!("not user: {user:?}");
        };
        assert_eq!(spec.policy.allow.len(), 2);
        let again: NetConfig = serde_json::from_str(&serde_json::to_string(&user).unwrap()).unwrap();
        assert_eq!(again, user);
        assert!(
            serde_json::from_str::<NetConfig>(r#"{"kind":{"type":"user","policy":{"allow":["x y"]}}}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<NetConfig>(r#"{"kind":{"type":"user","bogus":1}}"#).is_err());
    }
}
