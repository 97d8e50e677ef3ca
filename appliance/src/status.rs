//! `GET /status` and `kura status`: the state of the store and of each volume, and the
//! problems an operator must act on (a missed RPO, a failed last snapshot). A status
//! with problems makes `kura status` exit non-zero, for monitoring checks.

use crate::api::{iso, JobView};
use crate::jobs::{now_ms, Appliance};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Serialize, Deserialize, Debug)]
pub struct Status {
    pub version: String,
    pub now: String,
    pub uptime_secs: u64,
    pub store: StoreStatus,
    pub volumes: Vec<VolumeStatus>,
    /// Jobs running now: (volume or `*` for the store, kind).
    pub running: Vec<(String, String)>,
    /// What needs an operator; empty when all is well.
    pub problems: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct StoreStatus {
    pub data_dir: String,
    pub chunks: u64,
    /// Plain bytes of every stored chunk (after dedup, before compression).
    pub unique_bytes: u64,
    /// Bytes the chunks take in packs (after compression).
    pub stored_bytes: u64,
    /// Bytes of pack files, garbage not yet collected included.
    pub pack_bytes: u64,
    /// Sum of the live volumes' file sizes.
    pub live_logical_bytes: u64,
    /// Logical bytes of the live volumes and every snapshot, per stored byte.
    pub reduction_ratio: f64,
    pub staged_files: u64,
    /// Decoded chunk records in memory now; at most `read_cache_mib`, and counted in
    /// the daemon's RSS.
    pub read_cache_bytes: u64,
    pub fs_total_bytes: u64,
    pub fs_free_bytes: u64,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct VolumeStatus {
    pub name: String,
    pub logical_bytes: u64,
    pub snapshots: usize,
    /// Logical bytes of all its snapshots together (what a copy of each would take).
    pub snapshot_logical_bytes: u64,
    pub newest_snapshot: Option<String>,
    pub newest_snapshot_at: Option<String>,
    /// Achieved RPO: the age of the newest snapshot.
    pub newest_snapshot_age_secs: Option<i64>,
    pub rpo_secs: Option<u64>,
    pub rpo_ok: bool,
    pub frozen: bool,
    /// The newest job of each kind on this volume.
    pub last_jobs: BTreeMap<String, JobView>,
    pub last_freeze_ms: Option<u64>,
    pub last_window_ms: Option<u64>,
    /// Read-and-check rate of the last restore test (MB/s), and the restore time of
    /// the newest snapshot it predicts (its logical bytes at that rate): the RTO.
    pub restore_mb_s: Option<f64>,
    pub estimated_rto_secs: Option<u64>,
    /// Bytes in packs of what its live files and snapshots reach (each chunk once),
    /// as of `usage_at` (measured after each GC; none before the first measurement).
    pub stored_bytes: Option<u64>,
    /// Of those, what no other volume shares (what deleting it and GC would free).
    pub exclusive_stored_bytes: Option<u64>,
    /// Logical bytes of the live volume and all its snapshots per stored byte: what
    /// dedup and compression save.
    pub reduction_ratio: Option<f64>,
    pub usage_at: Option<String>,
    /// Written and not yet ingested.
    pub staged_files: u64,
    pub staged_bytes: u64,
    /// The DR copies of this volume, one per target it is (or was) replicated to.
    pub dr: Vec<DrStatus>,
}

/// A volume's DR copy at one target, from the job history.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct DrStatus {
    pub target: String,
    /// The newest snapshot the copy holds (as of the last good run) and its age: the
    /// DR site's recovery point.
    pub newest_snapshot: Option<String>,
    pub newest_snapshot_age_secs: Option<i64>,
    /// The last run: `ok` or `failed`, when it ended, its error, bytes it sent.
    pub last_result: String,
    pub last_ended: String,
    pub last_error: Option<String>,
    pub last_bytes_sent: u64,
    pub last_ok: Option<String>,
}

/// Each target's state from the replication jobs of one volume (newest first).
fn dr_status(jobs: &[&storage::JobRecord], configured: &[String], now_s: i64) -> Vec<DrStatus> {
    let mut out: Vec<DrStatus> = Vec::new();
    for t in configured {
        out.push(DrStatus {
            target: t.clone(),
            last_result: "never run".into(),
            ..Default::default()
        });
    }
    let mut seen_last = std::collections::HashSet::new();
    let mut seen_ok = std::collections::HashSet::new();
    for j in jobs {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&j.output) else {
            continue;
        };
        let Some(t) = v["target"].as_str() else {
            continue;
        };
        let i = match out.iter().position(|d| d.target == t) {
            Some(i) => i,
            None => {
                out.push(DrStatus {
                    target: t.into(),
                    ..Default::default()
                });
                out.len() - 1
            }
        };
        let d = &mut out[i];
        if seen_last.insert(t.to_string()) {
            d.last_result = j.result.clone();
            d.last_ended = iso(j.ended_ms);
            d.last_error = j.error.clone();
            d.last_bytes_sent = j.bytes;
        }
        if j.result == "ok" && seen_ok.insert(t.to_string()) {
            d.last_ok = Some(iso(j.ended_ms));
            d.newest_snapshot = j.snapshot.clone();
            d.newest_snapshot_age_secs =
                v["report"]["newest_created_s"].as_i64().map(|c| now_s - c);
        }
    }
    out
}

pub async fn gather(app: &Arc<Appliance>) -> anyhow::Result<Status> {
    let store = app.store.clone();
    let gate = app.shared.gate.clone();
    let cfg = app.cfg.clone();
    let now = now_ms();
    let (stats, vols, snaps, jobs, staged) = tokio::task::spawn_blocking(move || {
        let vols: Vec<(storage::Volume, u64)> = store
            .volumes()?
            .into_iter()
            .map(|v| Ok((store.volume_logical_bytes(&v.name)?, v)))
            .collect::<storage::Result<Vec<_>>>()?
            .into_iter()
            .map(|(b, v)| (v, b))
            .collect();
        Ok::<_, storage::StoreError>((
            store.stats()?,
            vols,
            store.snapshots(None)?,
            store.jobs(None, 1000)?,
            store.staged_by_volume()?,
        ))
    })
    .await??;
    // The first status after start measures usage; GC measures it again.
    if app.usage.lock().unwrap().is_none() {
        app.refresh_usage().await;
    }
    let usage = app.usage.lock().unwrap().clone();
    let mut problems = Vec::new();
    let mut volumes = Vec::new();
    let mut all_logical = stats.live_logical_bytes;
    for (v, logical) in vols {
        let mine: Vec<_> = snaps.iter().filter(|s| s.volume == v.name).collect();
        let snap_logical: u64 = mine.iter().map(|s| s.logical_bytes).sum();
        all_logical += snap_logical;
        let newest = mine.iter().max_by_key(|s| (s.created.sec, s.created.nsec));
        let age = newest.map(|s| now / 1000 - s.created.sec);
        let rpo = cfg
            .volume(&v.name)
            .rpo
            .as_deref()
            .and_then(|r| crate::config::parse_duration(r).ok())
            .map(|d| d.as_secs());
        let rpo_ok = match (rpo, age) {
            (None, _) => true,
            (Some(r), Some(a)) => a <= r as i64,
            (Some(_), None) => false,
        };
        if !rpo_ok {
            problems.push(match age {
                Some(a) => format!(
                    "volume {}: newest snapshot is {} old, RPO is {}",
                    v.name,
                    human_secs(a),
                    human_secs(rpo.unwrap_or(0) as i64)
                ),
                None => format!("volume {}: no snapshot yet, RPO is set", v.name),
            });
        }
        let mut last_jobs: BTreeMap<String, JobView> = BTreeMap::new();
        for j in jobs.iter().filter(|j| j.volume.as_deref() == Some(&v.name)) {
            last_jobs
                .entry(j.kind.clone())
                .or_insert_with(|| JobView::from(j));
        }
        let last_snap = last_jobs.get("snapshot");
        let restore_mb_s = last_jobs
            .get("restore-test")
            .filter(|j| j.result == "ok")
            .map(|j| j.bytes as f64 / ((j.ended_ms - j.started_ms).max(1) as f64 / 1000.0) / 1e6);
        if let Some(j) = last_snap {
            if j.result != "ok" {
                problems.push(format!(
                    "volume {}: last snapshot job {} at {}: {}",
                    v.name,
                    j.result,
                    j.started_iso,
                    j.error.as_deref().unwrap_or("")
                ));
            }
        }
        let used = usage
            .as_ref()
            .and_then(|(_, u)| u.iter().find(|u| u.volume == v.name));
        let st = staged.get(&v.id).copied().unwrap_or_default();
        let repl: Vec<&storage::JobRecord> = jobs
            .iter()
            .filter(|j| j.kind == "replicate" && j.volume.as_deref() == Some(&v.name))
            .collect();
        let dr = dr_status(&repl, &cfg.volume(&v.name).replicate_to, now / 1000);
        for d in &dr {
            if d.last_result == "failed" {
                problems.push(format!(
                    "volume {}: last replication to {} failed at {}: {}",
                    v.name,
                    d.target,
                    d.last_ended,
                    d.last_error.as_deref().unwrap_or("")
                ));
            }
        }
        let logical = logical.saturating_add_signed(st.size_delta);
        volumes.push(VolumeStatus {
            stored_bytes: used.map(|u| u.stored_bytes),
            exclusive_stored_bytes: used.map(|u| u.exclusive_stored_bytes),
            reduction_ratio: used
                .filter(|u| u.stored_bytes > 0)
                .map(|u| (logical + snap_logical) as f64 / u.stored_bytes as f64),
            usage_at: usage.as_ref().map(|(at, _)| iso(*at)),
            staged_files: st.files,
            staged_bytes: st.bytes,
            logical_bytes: logical,
            snapshots: mine.len(),
            snapshot_logical_bytes: snap_logical,
            newest_snapshot: newest.map(|s| s.name.clone()),
            newest_snapshot_at: newest.map(|s| iso(s.created.sec * 1000)),
            newest_snapshot_age_secs: age,
            rpo_secs: rpo,
            rpo_ok,
            frozen: gate.is_frozen(v.id),
            last_freeze_ms: last_snap.and_then(|j| j.freeze_ms),
            last_window_ms: last_snap.and_then(|j| j.window_ms),
            restore_mb_s,
            estimated_rto_secs: restore_mb_s
                .and_then(|r| newest.map(|s| (s.logical_bytes as f64 / (r * 1e6)).ceil() as u64)),
            last_jobs,
            dr,
            name: v.name,
        });
    }
    for kind in ["gc", "verify"] {
        if let Some(j) = jobs.iter().find(|j| j.kind == kind && j.volume.is_none()) {
            if j.result != "ok" {
                problems.push(format!(
                    "last {kind} {} at {}: {}",
                    j.result,
                    iso(j.started_ms),
                    j.error.as_deref().unwrap_or("")
                ));
            }
        }
    }
    Ok(Status {
        version: env!("CARGO_PKG_VERSION").into(),
        now: iso(now),
        uptime_secs: app.started.elapsed().as_secs(),
        store: StoreStatus {
            data_dir: cfg.data_dir.display().to_string(),
            chunks: stats.chunks,
            unique_bytes: stats.chunk_raw_bytes,
            stored_bytes: stats.chunk_stored_bytes,
            pack_bytes: stats.pack_bytes,
            live_logical_bytes: stats.live_logical_bytes,
            reduction_ratio: if stats.chunk_stored_bytes == 0 {
                0.0
            } else {
                all_logical as f64 / stats.chunk_stored_bytes as f64
            },
            staged_files: stats.staged_files,
            read_cache_bytes: stats.read_cache_bytes,
            fs_total_bytes: stats.fs_total_bytes,
            fs_free_bytes: stats.fs_free_bytes,
        },
        volumes,
        running: app
            .running()
            .into_iter()
            .map(|(v, k)| (v, k.to_owned()))
            .collect(),
        problems,
    })
}

/// Bytes for people: binary units, two decimals (`1.21 KiB`).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// `3d 4h`, `2h 5m`, `40s`: an age for people.
pub fn human_secs(s: i64) -> String {
    let s = s.max(0);
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {}s", s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1_234), "1.21 KiB");
        assert_eq!(human_bytes(12_345_678), "11.77 MiB");
        assert_eq!(human_bytes(3 << 40), "3.00 TiB");
    }
}
