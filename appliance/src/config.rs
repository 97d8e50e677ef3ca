//! `kura.toml`: what an operator configures. Every field has a default, so kura runs
//! with no file at all (a local data directory, one export on 127.0.0.1).

use anyhow::{bail, Context, Result};
use protocol::{Cidr, ExportConfig, ExportPolicy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// The control API (what the CLI and the console talk to).
    #[serde(default)]
    pub api: ApiToml,
    /// Store-wide hooks, run for every volume's snapshot job (before the volume's own
    /// pre-freeze hook, after its own post-thaw hook).
    #[serde(default)]
    pub hooks: HooksToml,
    /// Store-wide job schedules.
    #[serde(default)]
    pub schedule: StoreSchedule,
    /// The platform snapshot of the store's own disk, `[platform_snapshot]`.
    #[serde(default)]
    pub platform_snapshot: PlatformToml,
    /// What a GC run may rewrite, `[gc]`.
    #[serde(default)]
    pub gc: GcToml,
    /// Per-volume settings, `[volume.NAME]`; a volume named here is created at start.
    #[serde(default, rename = "volume")]
    pub volume_settings: BTreeMap<String, VolumeToml>,
    #[serde(default = "default_exports", rename = "export")]
    pub exports: Vec<ExportToml>,
    /// DR copies, `[target.NAME]`: a directory or an S3 bucket (`replica/mod.rs`).
    #[serde(default, rename = "target")]
    pub targets: BTreeMap<String, crate::replica::TargetToml>,
    /// Set by `kura serve --from`: the daemon serves this copy's snapshots read-only
    /// from a cache store in `data_dir`. Not a config key.
    #[serde(skip)]
    pub serve_from: Option<ServeFrom>,
}

/// `kura serve --from`: the copy, and how often its new snapshots are looked for.
#[derive(Debug, Clone)]
pub struct ServeFrom {
    pub name: String,
    pub target: crate::replica::TargetToml,
    pub refresh: std::time::Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToml {
    /// `ADDRESS:PORT`. A non-loopback address requires the bearer token kept in
    /// `<data_dir>/api-token` (made at first start, mode 0600).
    #[serde(default = "default_api_listen")]
    pub listen: String,
    /// Ask for the token on loopback too (a machine whose other users must not act
    /// on the store): every API call but `/healthz`, and every console page but the
    /// login.
    #[serde(default)]
    pub require_token: bool,
}

impl Default for ApiToml {
    fn default() -> Self {
        ApiToml {
            listen: default_api_listen(),
            require_token: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSchedule {
    /// GC (cron, in `timezone`).
    pub gc: Option<String>,
    /// Verify (cron, in `timezone`).
    pub verify: Option<String>,
    #[serde(default = "default_timezone")]
    pub timezone: String,
}

impl Default for StoreSchedule {
    fn default() -> Self {
        StoreSchedule {
            gc: None,
            verify: None,
            timezone: default_timezone(),
        }
    }
}

/// `[gc]`: how much a GC run rewrites for faster restores.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GcToml {
    /// Pack bytes (GiB) a run rewrites at most to give the newest generation bundles
    /// of its own (`storage::gc`, "regrouping"); 0: never.
    #[serde(default = "default_regroup_max_gib")]
    pub regroup_max_gib: u64,
}

impl Default for GcToml {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

impl GcToml {
    pub fn options(&self, dry_run: bool) -> storage::GcOptions {
        storage::GcOptions {
            regroup_max_bytes: self.regroup_max_gib.saturating_mul(1 << 30),
            dry_run,
            ..Default::default()
        }
    }
}

fn default_regroup_max_gib() -> u64 {
    16
}

/// A store-wide snapshot of the disk under the data directory, taken by the platform
/// (`lvcreate -s`, `zfs snapshot`, a cloud CLI) while every volume is frozen and the
/// store is still and durable on disk.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformToml {
    /// Run with `sh -c` (`KURA_DATA_DIR` names the data directory); a non-zero exit
    /// fails the job. Without it the job cannot run.
    pub command: Option<String>,
    /// Also `fsfreeze -f` the data directory's filesystem around the command (refused
    /// for the root filesystem, which kura and the command themselves write to).
    #[serde(default)]
    pub fsfreeze: bool,
    /// The command is killed, and everything thawed, after this long; it bounds how
    /// long clients are held.
    #[serde(default = "default_platform_timeout")]
    pub timeout_secs: u64,
    /// When to run it (cron, in `schedule.timezone`).
    pub schedule: Option<String>,
}

impl Default for PlatformToml {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HooksToml {
    /// Run with `sh -c` before the freeze; a failure aborts the job.
    pub pre_freeze: Option<String>,
    /// Run with `sh -c` after the thaw, whatever happened (KURA_RESULT says what).
    pub post_thaw: Option<String>,
    /// A hook still running after this long is killed (and counts as failed).
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeToml {
    /// Longest freeze: a snapshot that would hold writers longer is aborted and the
    /// volume thawed (VSS's limit is 10 s).
    #[serde(default = "default_freeze_limit")]
    pub freeze_limit_secs: f64,
    pub pre_freeze: Option<String>,
    pub post_thaw: Option<String>,
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout_secs: u64,
    /// New snapshots cannot be deleted (by anyone, through any command) for this many
    /// days.
    #[serde(default)]
    pub lock_days: u32,
    /// Recovery point objective: `status` flags the volume when its newest good
    /// snapshot is older (e.g. "1h", "30m", "1d").
    pub rpo: Option<String>,
    /// Time zone of the volume's schedules and of retention's days, weeks, months.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Retention (see `retention.rs`); no keep_* key at all keeps every snapshot.
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// Every snapshot younger than this (e.g. "35d") is kept.
    pub keep_within: Option<String>,
    /// Snapshot schedules: 5-field cron expressions in `timezone`.
    #[serde(default)]
    pub schedule: Vec<String>,
    /// At a scheduled time, wait until the volume has seen no write for this long (the
    /// nightly dumps have finished) before the snapshot...
    pub quiet_secs: Option<u64>,
    /// ...but no longer than this; then snapshot anyway, marked busy. Default "2h".
    pub max_wait: Option<String>,
    /// When to apply the retention policy besides after each snapshot (cron).
    pub prune_schedule: Option<String>,
    /// When to test-restore the newest snapshot (read and check everything, write
    /// nothing) and record the rate that `status` turns into an expected restore time.
    pub restore_test_schedule: Option<String>,
    /// Percent of the files a restore test reads (a sample that changes daily); the
    /// rate it measures predicts the whole snapshot's restore time.
    #[serde(default = "default_sample")]
    pub restore_test_sample_percent: u32,
    /// DR targets (`[target.NAME]`) this volume is copied to after each snapshot.
    #[serde(default)]
    pub replicate_to: Vec<String>,
}

impl VolumeToml {
    /// The retention policy (checked by `Config::validate`).
    pub fn policy(&self) -> crate::retention::Policy {
        crate::retention::Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self
                .keep_within
                .as_deref()
                .and_then(|w| parse_duration(w).ok()),
        }
    }

    /// The time zone (checked by `Config::validate`; UTC if it does not parse).
    pub fn tz(&self) -> chrono_tz::Tz {
        self.timezone.parse().unwrap_or(chrono_tz::Tz::UTC)
    }
}

impl Default for VolumeToml {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Off by default: backup clients (tar -p, rsync -a as root) must keep the
    /// ownership they write, as on a Data Domain export.
    #[serde(default)]
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
fn default_api_listen() -> String {
    "127.0.0.1:7411".into()
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_freeze_limit() -> f64 {
    10.0
}
fn default_hook_timeout() -> u64 {
    60
}
fn default_sample() -> u32 {
    100
}
fn default_platform_timeout() -> u64 {
    60
}
fn default_listen() -> String {
    "127.0.0.1:2049".into()
}
fn default_allow() -> Vec<String> {
    vec!["127.0.0.1/32".into(), "::1/128".into()]
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

    /// Every volume the config names (`volumes` and `[volume.NAME]`), once each.
    pub fn all_volumes(&self) -> Vec<String> {
        let mut all = self.volumes.clone();
        for v in self.volume_settings.keys() {
            if !all.contains(v) {
                all.push(v.clone());
            }
        }
        all
    }

    /// The settings of volume `name` (defaults when it has no table).
    pub fn volume(&self, name: &str) -> VolumeToml {
        self.volume_settings.get(name).cloned().unwrap_or_default()
    }

    pub fn api_addr(&self) -> Result<SocketAddr> {
        self.api
            .listen
            .parse()
            .with_context(|| format!("api.listen = {:?} is not ADDRESS:PORT", self.api.listen))
    }

    pub fn validate(&self) -> Result<()> {
        for v in &self.volumes {
            storage::store::check_volume_name(v).with_context(|| format!("volumes: {v:?}"))?;
        }
        self.api_addr()?;
        for (k, c) in [("gc", &self.schedule.gc), ("verify", &self.schedule.verify)] {
            if let Some(c) = c {
                crate::schedule::parse_cron(c).with_context(|| format!("schedule.{k}"))?;
            }
        }
        self.schedule
            .timezone
            .parse::<chrono_tz::Tz>()
            .map_err(|e| {
                anyhow::anyhow!("schedule.timezone = {:?}: {e}", self.schedule.timezone)
            })?;
        check_hook("platform_snapshot.command", &self.platform_snapshot.command)?;
        if let Some(c) = &self.platform_snapshot.schedule {
            if self.platform_snapshot.command.is_none() {
                bail!("platform_snapshot.schedule is set but platform_snapshot.command is not");
            }
            crate::schedule::parse_cron(c).context("platform_snapshot.schedule")?;
        }
        if !(1..=3600).contains(&self.platform_snapshot.timeout_secs) {
            bail!(
                "platform_snapshot.timeout_secs = {} is outside 1..=3600",
                self.platform_snapshot.timeout_secs
            );
        }
        check_hook("hooks.pre_freeze", &self.hooks.pre_freeze)?;
        check_hook("hooks.post_thaw", &self.hooks.post_thaw)?;
        if self.hooks.timeout_secs == Some(0) {
            bail!("hooks.timeout_secs = 0: every hook would time out");
        }
        for (name, t) in &self.targets {
            storage::store::check_volume_name(name).with_context(|| format!("[target.{name}]"))?;
            t.validate().with_context(|| format!("[target.{name}]"))?;
            if let Some(c) = &t.schedule {
                crate::schedule::parse_cron(c)
                    .with_context(|| format!("target.{name}.schedule"))?;
            }
            if let Some(k) = &t.key_file {
                if !k.is_file() {
                    bail!("target.{name}.key_file = {}: no such file", k.display());
                }
            }
        }
        for (name, v) in &self.volume_settings {
            let key = |k: &str| format!("volume.{name}.{k}");
            for t in &v.replicate_to {
                if !self.targets.contains_key(t) {
                    bail!(
                        "{} names {t:?}, which has no [target.{t}]",
                        key("replicate_to")
                    );
                }
            }
            storage::store::check_volume_name(name).with_context(|| format!("[volume.{name}]"))?;
            if !(v.freeze_limit_secs > 0.0 && v.freeze_limit_secs <= 600.0) {
                bail!(
                    "{} = {} is outside (0, 600]",
                    key("freeze_limit_secs"),
                    v.freeze_limit_secs
                );
            }
            if v.hook_timeout_secs == 0 {
                bail!(
                    "{} = 0: every hook would time out",
                    key("hook_timeout_secs")
                );
            }
            check_hook(&key("pre_freeze"), &v.pre_freeze)?;
            check_hook(&key("post_thaw"), &v.post_thaw)?;
            if let Some(r) = &v.rpo {
                parse_duration(r).with_context(|| format!("{} = {r:?}", key("rpo")))?;
            }
            if let Some(w) = &v.keep_within {
                parse_duration(w).with_context(|| format!("{} = {w:?}", key("keep_within")))?;
            }
            v.timezone
                .parse::<chrono_tz::Tz>()
                .map_err(|e| anyhow::anyhow!("{} = {:?}: {e}", key("timezone"), v.timezone))?;
            for (i, c) in v.schedule.iter().enumerate() {
                crate::schedule::parse_cron(c)
                    .with_context(|| format!("{}[{i}]", key("schedule")))?;
            }
            if let Some(c) = &v.prune_schedule {
                crate::schedule::parse_cron(c).with_context(|| key("prune_schedule"))?;
            }
            if let Some(c) = &v.restore_test_schedule {
                crate::schedule::parse_cron(c).with_context(|| key("restore_test_schedule"))?;
            }
            if !(1..=100).contains(&v.restore_test_sample_percent) {
                bail!(
                    "{} = {} is outside 1..=100",
                    key("restore_test_sample_percent"),
                    v.restore_test_sample_percent
                );
            }
            if let Some(w) = &v.max_wait {
                parse_duration(w).with_context(|| format!("{} = {w:?}", key("max_wait")))?;
            }
            for (k, n) in [
                ("keep_last", v.keep_last),
                ("keep_hourly", v.keep_hourly),
                ("keep_daily", v.keep_daily),
                ("keep_weekly", v.keep_weekly),
                ("keep_monthly", v.keep_monthly),
                ("keep_yearly", v.keep_yearly),
            ] {
                if n == Some(0) {
                    bail!("{} = 0 keeps nothing by that rule: leave it out", key(k));
                }
            }
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

fn check_hook(key: &str, h: &Option<String>) -> Result<()> {
    if let Some(cmd) = h {
        if cmd.trim().is_empty() {
            bail!("{key} is empty: leave it out to run no hook");
        }
    }
    Ok(())
}

/// Parses a duration such as `90s`, `30m`, `2h`, `35d`, `1w` (one number, one unit).
pub fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .context("a number and a unit (s, m, h, d, w), e.g. \"1h\"")?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .context("a number and a unit (s, m, h, d, w), e.g. \"1h\"")?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => bail!("unit {unit:?}: use s, m, h, d or w"),
    };
    Ok(std::time::Duration::from_secs(
        n.checked_mul(mult).context("too long")?,
    ))
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
        assert!(bad("[gc]\nregroup = false")
            .unwrap_err()
            .contains("unknown field"));
        assert!(bad("[gc]\nregroup_max_gib = -1").is_err());
        assert_eq!(c.gc.options(true).regroup_max_bytes, 16 << 30);
        assert!(c.gc.options(true).dry_run);
        let c: Config = toml::from_str("[gc]\nregroup_max_gib = 0").unwrap();
        assert_eq!(c.gc.options(false).regroup_max_bytes, 0);
        let c: Config =
            toml::from_str("[[export]]\nmax_connections = 8\nidle_timeout_secs = 30").unwrap();
        let e = c.exports[0].to_config().unwrap();
        assert_eq!(e.max_connections, 8);
        assert_eq!(e.limits.idle, std::time::Duration::from_secs(30));
    }
}
