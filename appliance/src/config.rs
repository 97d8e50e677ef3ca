//! `kura.toml`: what an operator configures. Every field has a default, so kura runs
//! with no file at all (a local data directory, one export on 127.0.0.1).

use anyhow::{bail, Context, Result};
use protocol::{Cidr, ExportConfig, ExportPolicy};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the store lives.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Volumes created at start if missing.
    #[serde(default = "default_volumes")]
    pub volumes: Vec<String>,
    /// A staged file is ingested once it has had no write for this long.
    #[serde(default = "default_idle")]
    pub ingest_idle_secs: u64,
    /// Store calls in flight at once (bounds memory under deep client queues).
    #[serde(default = "default_inflight")]
    pub max_inflight: usize,
    /// Memory for decoded, checked chunk records (MiB). Reads of what it holds cost
    /// no disk read and no hash; a working set larger than it is read and checked
    /// again. Counts fully toward the daemon's memory. Default: an eighth of the
    /// machine's memory, at least 64 MiB and at most 8 GiB (see [`Config::read_cache`]).
    pub read_cache_mib: Option<u64>,
    #[serde(default = "default_exports", rename = "export")]
    pub exports: Vec<ExportToml>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportToml {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_allow")]
    pub allow: Vec<String>,
    /// Volumes shown; all when absent.
    pub volumes: Option<Vec<String>>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default = "yes")]
    pub root_squash: bool,
    #[serde(default = "nobody")]
    pub anon_uid: u32,
    #[serde(default = "nobody")]
    pub anon_gid: u32,
    #[serde(default)]
    pub owner_uid: u32,
    #[serde(default)]
    pub owner_gid: u32,
    #[serde(default)]
    pub refuse_uids: Vec<u32>,
    /// Connections served at a time, shared fairly between client addresses.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection with nothing in progress that sent nothing for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("kura-data")
}
fn default_volumes() -> Vec<String> {
    vec!["backup".into()]
}
fn default_idle() -> u64 {
    5
}
fn default_inflight() -> usize {
    64
}
fn default_listen() -> String {
    "127.0.0.1:2049".into()
}
fn default_allow() -> Vec<String> {
    vec!["127.0.0.1/32".into(), "::1/128".into()]
}
fn yes() -> bool {
    true
}
fn nobody() -> u32 {
    65534
}
fn default_max_connections() -> usize {
    protocol::server::MAX_CONNECTIONS
}
fn default_idle_timeout() -> u64 {
    360
}
fn default_exports() -> Vec<ExportToml> {
    vec![toml::from_str("").expect("defaults parse")]
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

impl Config {
    /// Bytes of the read cache: `read_cache_mib`, or an eighth of physical memory
    /// clamped to 64 MiB..8 GiB (as a file server's page cache would use free memory,
    /// bounded so that the daemon's size stays predictable).
    pub fn read_cache(&self) -> u64 {
        if let Some(m) = self.read_cache_mib {
            return m << 20;
        }
        // SAFETY: sysconf has no memory-safety preconditions.
        let (pages, page) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let ram = (pages.max(0) as u64).saturating_mul(page.max(0) as u64);
        (ram / 8).clamp(64 << 20, 8 << 30)
    }

    pub fn load(path: &std::path::Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let c: Config =
            toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
        c.validate()
            .with_context(|| format!("checking config {}", path.display()))?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        for v in &self.volumes {
            storage::store::check_volume_name(v).with_context(|| format!("volume {v:?}"))?;
        }
        if self.exports.is_empty() {
            bail!("no [[export]]: nothing would be served");
        }
        if let Some(m) = self.read_cache_mib {
            if !(32..=1 << 20).contains(&m) {
                bail!("read_cache_mib = {m} is outside 32..=1048576");
            }
        }
        for (i, e) in self.exports.iter().enumerate() {
            e.to_config()
                .with_context(|| format!("export #{}", i + 1))?;
        }
        Ok(())
    }
}

impl ExportToml {
    pub fn to_config(&self) -> Result<ExportConfig> {
        let listen: SocketAddr = self
            .listen
            .parse()
            .with_context(|| format!("listen = {:?} is not ADDRESS:PORT", self.listen))?;
        let allow = self
            .allow
            .iter()
            .map(|a| a.parse::<Cidr>().map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>>>()?;
        if allow.is_empty() {
            bail!("allow is empty: no client could connect (use [\"0.0.0.0/0\"] to allow all)");
        }
        if self.max_connections == 0 {
            bail!("max_connections = 0: no client could connect");
        }
        if self.idle_timeout_secs == 0 {
            bail!("idle_timeout_secs = 0 would close every connection at once");
        }
        Ok(ExportConfig {
            listen,
            allow,
            policy: ExportPolicy {
                volumes: self.volumes.clone(),
                read_only: self.read_only,
                root_squash: self.root_squash,
                anon_uid: self.anon_uid,
                anon_gid: self.anon_gid,
                owner_uid: self.owner_uid,
                owner_gid: self.owner_gid,
                refuse_uids: self.refuse_uids.clone(),
            },
            max_connections: self.max_connections,
            limits: protocol::limits::Limits {
                idle: std::time::Duration::from_secs(self.idle_timeout_secs),
                ..Default::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = Config::default();
        assert_eq!(c.exports.len(), 1);
        assert_eq!(c.exports[0].listen, "127.0.0.1:2049");
        c.validate().unwrap();
        let bad = |t: &str| {
            toml::from_str::<Config>(t)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map_err(|e| format!("{e:#}")))
        };
        assert!(bad("data_dirr = 'x'")
            .unwrap_err()
            .contains("unknown field"));
        assert!(bad("[[export]]\nlisten = 'nope'")
            .unwrap_err()
            .contains("ADDRESS:PORT"));
        assert!(bad("[[export]]\nallow = ['10.0.0.0/40']")
            .unwrap_err()
            .contains("prefix"));
        assert!(bad("[[export]]\nallow = []")
            .unwrap_err()
            .contains("allow is empty"));
        assert!(bad("volumes = ['../etc']").unwrap_err().contains("volume"));
        assert!(bad("[[export]]\nmax_connections = 0")
            .unwrap_err()
            .contains("max_connections"));
        assert!(bad("[[export]]\nidle_timeout_secs = 0")
            .unwrap_err()
            .contains("idle_timeout_secs"));
        let c: Config =
            toml::from_str("[[export]]\nmax_connections = 8\nidle_timeout_secs = 30").unwrap();
        let e = c.exports[0].to_config().unwrap();
        assert_eq!(e.max_connections, 8);
        assert_eq!(e.limits.idle, std::time::Duration::from_secs(30));
    }
}
