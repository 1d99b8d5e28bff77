//! Network interface configuration: a TAP device by name, or a backend the
//! library user supplies through the [`NetBackend`] trait.

use std::fmt;
use std::io;
use std::sync::Arc;

use hearth_devices::rate_limiter::RateLimit;
use hearth_devices::virtio::net::{MacAddr, NetBackend, NetOptions, Tap};
use serde::{Deserialize, Serialize};

use crate::device_manager::DeviceError;

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
    /// The TAP interface (for a custom backend, a name used in messages).
    pub tap: String,
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
            backend: None,
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
        if self.backend.is_none() && self.tap.is_empty() {
            return Err("tap must be set".into());
        }
        self.options().map(drop)
    }

    /// Opens the backend.
    pub(crate) fn open(&self) -> Result<Box<dyn NetBackend>, DeviceError> {
        match &self.backend {
            Some(factory) => (factory.0)().map_err(|source| DeviceError::CustomNet {
                name: self.tap.clone(),
                source,
            }),
            None => Ok(Box::new(Tap::open(&self.tap, self.create)?)),
        }
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
    }
}
