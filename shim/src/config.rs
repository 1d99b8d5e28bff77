//! The shim's TOML configuration (docs/CONTAINERD.md): where it is
//! found, its defaults, and the per-container overrides annotations may
//! give.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Where the configuration is when neither the runtime options nor the
/// environment name one.
pub const DEFAULT_CONFIG: &str = "/etc/hearth/shim.toml";
/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "HEARTH_SHIM_CONFIG";
/// Annotation overriding the vCPU count.
pub const VCPUS_ANNOTATION: &str = "io.hearth.vcpus";
/// Annotation overriding the guest memory, MiB.
pub const MEMORY_ANNOTATION: &str = "io.hearth.memory_mib";

/// The guest command line the shim always gives (before `cmdline_extra`):
/// the agent VM's root is the read-only `agent_rootfs` on the first disk.
pub const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda ro rootfstype=ext4 hearth.agent=1";

/// The shim's settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShimConfig {
    /// The guest kernel (ELF vmlinux or bzImage).
    pub kernel: PathBuf,
    /// ext4 image with `hearth-init` as `/sbin/init` (rootfs/build.sh's
    /// `rootfs.ext4`); attached read-only, shared by every task.
    pub agent_rootfs: PathBuf,
    /// vCPUs per task VM.
    pub vcpus: u32,
    /// Guest memory per task VM, MiB.
    pub memory_mib: u64,
    /// Appended to [`BASE_CMDLINE`].
    pub cmdline_extra: String,
    /// Emulate the PIT (a guest booted with `nopv` calibrates its TSC
    /// with it).
    pub pit: bool,
    /// seccomp for the VM's threads: `enforce`, `log` or `off`.
    pub seccomp: String,
    /// A snapshot of a booted agent VM (`containerd-shim-hearth-v2
    /// template`): tasks restore it instead of booting.
    pub template: Option<PathBuf>,
    /// Size of each task's root disk image, MiB (a template fixes it).
    pub disk_size_mib: u64,
    /// Cache of root disk images built from directories, by content.
    pub cache_dir: PathBuf,
    /// Per-task scratch (vsock socket, disk overlay, console log).
    pub state_dir: PathBuf,
    /// How long a boot may take until the agent answers, seconds.
    pub boot_timeout_secs: u64,
    /// Keep the guest console in `<state_dir>/<task>/console.log` (removed
    /// with the task).
    pub console_log: bool,
}

impl Default for ShimConfig {
    fn default() -> Self {
        Self {
            kernel: PathBuf::new(),
            agent_rootfs: PathBuf::new(),
            vcpus: 1,
            memory_mib: 128,
            cmdline_extra: String::new(),
            pit: true,
            seccomp: "enforce".into(),
            template: None,
            disk_size_mib: 256,
            cache_dir: PathBuf::from("/var/lib/hearth-shim/images"),
            state_dir: PathBuf::from("/run/hearth-shim"),
            boot_timeout_secs: 300,
            console_log: false,
        }
    }
}

impl ShimConfig {
    /// Parses and checks a configuration.
    pub fn parse(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    fn validate(&self) -> Result<()> {
        if self.kernel.as_os_str().is_empty() {
            bail!("`kernel` is required");
        }
        if self.agent_rootfs.as_os_str().is_empty() {
            bail!("`agent_rootfs` is required");
        }
        self.seccomp_mode()?;
        if self.disk_size_mib < 8 {
            bail!("`disk_size_mib` must be at least 8");
        }
        Ok(())
    }

    /// The seccomp mode.
    pub fn seccomp_mode(&self) -> Result<hearth::SeccompMode> {
        Ok(match self.seccomp.as_str() {
            "enforce" => hearth::SeccompMode::Enforce,
            "log" => hearth::SeccompMode::Log,
            "off" => hearth::SeccompMode::Off,
            other => bail!("`seccomp` is enforce, log or off, not {other:?}"),
        })
    }

    /// The full guest command line.
    pub fn cmdline(&self) -> String {
        if self.cmdline_extra.trim().is_empty() {
            BASE_CMDLINE.to_string()
        } else {
            format!("{BASE_CMDLINE} {}", self.cmdline_extra.trim())
        }
    }

    /// This config with the container's annotations applied.
    pub fn with_annotations(&self, annotations: &HashMap<String, String>) -> Result<Self> {
        let mut c = self.clone();
        if let Some(v) = annotations.get(VCPUS_ANNOTATION) {
            c.vcpus = v
                .parse()
                .ok()
                .filter(|n| (1..=32).contains(n))
                .with_context(|| format!("annotation {VCPUS_ANNOTATION}={v:?}: 1 to 32 vCPUs"))?;
        }
        if let Some(v) = annotations.get(MEMORY_ANNOTATION) {
            c.memory_mib = v
                .parse()
                .ok()
                .filter(|n| (hearth::MIN_MEMORY_MIB..=hearth::MAX_MEMORY_MIB).contains(n))
                .with_context(|| {
                    format!(
                        "annotation {MEMORY_ANNOTATION}={v:?}: {} to {} MiB",
                        hearth::MIN_MEMORY_MIB,
                        hearth::MAX_MEMORY_MIB
                    )
                })?;
        }
        Ok(c)
    }
}

/// The configuration file to read: the runtime options' path, else
/// `HEARTH_SHIM_CONFIG`, else [`DEFAULT_CONFIG`].
pub fn locate(options_path: Option<&str>, env: Option<&str>) -> PathBuf {
    match (
        options_path.filter(|p| !p.is_empty()),
        env.filter(|p| !p.is_empty()),
    ) {
        (Some(p), _) | (None, Some(p)) => PathBuf::from(p),
        (None, None) => PathBuf::from(DEFAULT_CONFIG),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_required_keys() {
        let c = ShimConfig::parse("kernel = \"/k\"\nagent_rootfs = \"/r\"\n").unwrap();
        assert_eq!((c.vcpus, c.memory_mib, c.disk_size_mib), (1, 128, 256));
        assert_eq!(c.cmdline(), BASE_CMDLINE);
        assert_eq!(c.seccomp_mode().unwrap(), hearth::SeccompMode::Enforce);
        assert!(ShimConfig::parse("agent_rootfs = \"/r\"").is_err());
        assert!(ShimConfig::parse("kernel = \"/k\"").is_err());
        let e = ShimConfig::parse("kernel = \"/k\"\nagent_rootfs = \"/r\"\nvcpu = 2").unwrap_err();
        assert!(format!("{e:#}").contains("unknown field"), "{e:#}");
        let e = ShimConfig::parse("kernel = \"/k\"\nagent_rootfs = \"/r\"\nseccomp = \"maybe\"").unwrap_err();
        assert!(e.to_string().contains("enforce, log or off"), "{e}");
    }

    #[test]
    fn cmdline_extra_is_appended() {
        let c =
            ShimConfig::parse("kernel = \"/k\"\nagent_rootfs = \"/r\"\ncmdline_extra = \" nopv lpj=4005 \"")
                .unwrap();
        assert_eq!(c.cmdline(), format!("{BASE_CMDLINE} nopv lpj=4005"));
    }

    #[test]
    fn annotations_override_vcpus_and_memory_within_bounds() {
        let c = ShimConfig::parse("kernel = \"/k\"\nagent_rootfs = \"/r\"").unwrap();
        let mut a = HashMap::new();
        a.insert(VCPUS_ANNOTATION.to_string(), "2".to_string());
        a.insert(MEMORY_ANNOTATION.to_string(), "256".to_string());
        let o = c.with_annotations(&a).unwrap();
        assert_eq!((o.vcpus, o.memory_mib), (2, 256));
        a.insert(VCPUS_ANNOTATION.to_string(), "0".to_string());
        assert!(c.with_annotations(&a).is_err());
        a.insert(VCPUS_ANNOTATION.to_string(), "1".to_string());
        a.insert(MEMORY_ANNOTATION.to_string(), "lots".to_string());
        assert!(c.with_annotations(&a).is_err());
        assert_eq!(c.with_annotations(&HashMap::new()).unwrap(), c);
    }

    #[test]
    fn the_file_is_found_in_order() {
        assert_eq!(locate(Some("/a.toml"), Some("/b.toml")), PathBuf::from("/a.toml"));
        assert_eq!(locate(Some(""), Some("/b.toml")), PathBuf::from("/b.toml"));
        assert_eq!(locate(None, None), PathBuf::from(DEFAULT_CONFIG));
    }
}
