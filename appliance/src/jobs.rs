//! The appliance's jobs, run inside the daemon while it serves: the snapshot job (the
//! KCPS pattern without stopping anyone) and the maintenance jobs (GC, verify), with at
//! most one job per volume at a time and a record of each in the store's job history.
//!
//! The snapshot job: pre-flush (ingest what is staged while clients write on) →
//! pre-freeze hooks → freeze (mutating calls held at the gate, in-flight ones drained)
//! → snapshot (what little was staged since the pre-flush is ingested, changed
//! directories encoded, the root recorded) → thaw → post-thaw hooks (always) → record.
//! Past the volume's freeze limit the snapshot is cancelled and the volume thawed; the
//! [`protocol::Frozen`] guard thaws on every other path.

use crate::config::Config;
use crate::hooks::{self, HookEnv};
use crate::retention::{self, Candidate, Decision};
use anyhow::{anyhow, bail, Context, Result};
use protocol::{FreezeError, Shared};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use storage::{JobRecord, SnapshotCancel, SnapshotInfo, SnapshotMeta, Store};

/// The daemon's state that jobs and the API share.
pub struct Appliance {
    pub cfg: Config,
    pub store: Arc<Store>,
    pub shared: Arc<Shared>,
    /// Volume (or `*` for store-wide jobs, `target NAME` for replication) → the job
    /// running on it.
    running: Mutex<HashMap<String, Arc<RunningJob>>>,
    /// Jobs in progress, for a clean shutdown that waits for them.
    active: tokio::sync::watch::Sender<usize>,
    stopping: std::sync::atomic::AtomicBool,
    pub started: Instant,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What each volume takes in the store, and when that was measured (a walk of the
    /// whole store: made at start and after each GC, not per status call).
    pub usage: Mutex<Option<(i64, Vec<storage::VolumeUsage>)>>,
    /// Set at shutdown: long jobs that can stop midway (replication) do.
    pub stop_flag: Arc<std::sync::atomic::AtomicBool>,
}

/// What a snapshot job is asked to do.
#[derive(Clone, Debug, Default)]
pub struct SnapshotRequest {
    pub name: Option<String>,
    pub label: Option<String>,
    /// Taken past a quiet wait's limit (recorded on the snapshot).
    pub busy: bool,
}

/// What a prune did (or would do) on one volume.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PruneResult {
    pub volume: String,
    pub dry_run: bool,
    /// Newest first, every snapshot with its reasons to stay.
    pub decisions: Vec<Decision>,
    pub deleted: Vec<String>,
    /// Snapshots the plan dropped that could not be deleted (held or locked since).
    pub errors: Vec<String>,
}

/// A job refused before it started.
#[derive(Debug)]
pub enum Refusal {
    /// Another job runs on this volume.
    Busy(String),
    ShuttingDown,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Busy(s) => write!(f, "{s}"),
            Refusal::ShuttingDown => write!(f, "the daemon is shutting down"),
        }
    }
}

impl std::error::Error for Refusal {}

/// A job while it runs: what it is, since when, and where it has got to.
#[derive(Debug)]
pub struct RunningJob {
    pub kind: &'static str,
    pub started_ms: i64,
    phase: Mutex<&'static str>,
    /// Bytes done so far, for jobs that count them (a replication: bytes sent).
    pub done_bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl RunningJob {
    /// The step the job is in now (`pre-flush`, `frozen`, ...).
    pub fn phase(&self) -> &'static str {
        *self.phase.lock().unwrap()
    }

    /// Marks the step the job has reached, for `GET /jobs/running` and the console.
    fn set_phase(&self, p: &'static str) {
        *self.phase.lock().unwrap() = p;
    }
}

/// A running job as the API shows it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RunningView {
    /// The volume, `*` for the store, `target NAME` for a replication.
    pub on: String,
    pub kind: String,
    pub started_ms: i64,
    pub elapsed_ms: i64,
    pub phase: String,
    /// Bytes done so far (sent, for a replication); 0 for jobs that do not count.
    pub done_bytes: u64,
}

/// A claim on a volume for one job; released on drop.
struct Claim<'a> {
    app: &'a Appliance,
    key: String,
    job: Arc<RunningJob>,
}

impl Claim<'_> {
    fn phase(&self, p: &'static str) {
        self.job.set_phase(p);
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.app.running.lock().unwrap().remove(&self.key);
        self.app.active.send_modify(|n| *n -= 1);
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A snapshot name from the time: `2026-11-30_16-05-12Z` (UTC, sorts by time).
pub fn auto_name(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%d_%H-%M-%SZ")
        .to_string()
}

impl Appliance {
    pub fn new(cfg: Config, store: Arc<Store>, shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Appliance {
            cfg,
            store,
            shared,
            running: Mutex::new(HashMap::new()),
            active: tokio::sync::watch::channel(0).0,
            stopping: Default::default(),
            started: Instant::now(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            usage: Mutex::new(None),
            stop_flag: Default::default(),
        })
    }

    fn claim(&self, key: &str, kind: &'static str) -> Result<Claim<'_>, Refusal> {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Refusal::ShuttingDown);
        }
        let mut r = self.running.lock().unwrap();
        if let Some(j) = r.get(key) {
            return Err(Refusal::Busy(format!(
                "a {} job is already running on {}",
                j.kind,
                if key == "*" { "the store" } else { key }
            )));
        }
        let job = Arc::new(RunningJob {
            kind,
            started_ms: now_ms(),
            phase: Mutex::new("running"),
            done_bytes: Default::default(),
        });
        r.insert(key.to_owned(), job.clone());
        self.active.send_modify(|n| *n += 1);
        Ok(Claim {
            app: self,
            key: key.to_owned(),
            job,
        })
    }

    /// The jobs running now: (volume or `*`, kind).
    pub fn running(&self) -> Vec<(String, &'static str)> {
        let mut v: Vec<_> = self
            .running
            .lock()
            .unwrap()
            .iter()
            .map(|(k, j)| (k.clone(), j.kind))
            .collect();
        v.sort();
        v
    }

    /// The jobs running now with their step and time so far, oldest first.
    pub fn running_jobs(&self) -> Vec<RunningView> {
        let now = now_ms();
        let mut v: Vec<RunningView> = self
            .running
            .lock()
            .unwrap()
            .iter()
            .map(|(k, j)| RunningView {
                on: k.clone(),
                kind: j.kind.to_owned(),
                started_ms: j.started_ms,
                elapsed_ms: now - j.started_ms,
                phase: j.phase().to_owned(),
                done_bytes: j.done_bytes.load(std::sync::atomic::Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| (a.started_ms, &a.on).cmp(&(b.started_ms, &b.on)));
        v
    }

    /// Waits until volume `name` has seen no mutating call for `quiet` (true), or
    /// `max` has passed (false: the caller snapshots anyway, marked busy). A daemon
    /// shutting down ends the wait with a refusal.
    pub async fn wait_quiet(&self, name: &str, quiet: Duration, max: Duration) -> Result<bool> {
        let n = name.to_owned();
        let vol = self.blocking(move |s| s.volume(&n)).await?;
        let t0 = Instant::now();
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Refusal::ShuttingDown.into());
            }
            // Never written since the daemon started: quiet since then.
            let q = self
                .shared
                .gate
                .quiet_for(vol.id)
                .unwrap_or_else(|| self.started.elapsed());
            if q >= quiet {
                return Ok(true);
            }
            let waited = t0.elapsed();
            if waited >= max {
                return Ok(false);
            }
            let step = (quiet - q).min(max - waited).min(Duration::from_secs(1));
            tokio::time::sleep(step.max(Duration::from_millis(20))).await;
        }
    }

    /// Refuses new jobs and waits until the running ones have ended.
    pub async fn drain_jobs(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.stop_flag
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut rx = self.active.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    pub(crate) fn record(&self, job: &JobRecord) {
        self.metrics.job(job);
        match self.store.record_job(job) {
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, kind = job.kind, "could not record the job"),
        }
    }

    /// Runs a store call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> storage::Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| anyhow!("store call panicked: {e}"))??)
    }

    /// The snapshot job on one volume; returns the job record (also stored). A refusal
    /// (another job on the volume, shutting down) is an error before anything ran.
    pub async fn snapshot_job(
        self: &Arc<Self>,
        volume: &str,
        req: SnapshotRequest,
    ) -> Result<(JobRecord, Option<SnapshotInfo>)> {
        let vol = {
            let v = volume.to_owned();
            self.blocking(move |s| s.volume(&v)).await?
        };
        let claim = self.claim(volume, "snapshot")?;
        let settings = self.cfg.volume(volume);
        let started = now_ms();
        let name = match req.name.clone() {
            Some(n) => n,
            None => self.free_name(volume, started).await?,
        };
        storage::store::check_volume_name(&name)
            .with_context(|| format!("snapshot name {name:?}"))?;
        let mut job = JobRecord {
            kind: "snapshot".into(),
            volume: Some(volume.to_owned()),
            started_ms: started,
            snapshot: Some(name.clone()),
            ..Default::default()
        };
        let env = HookEnv {
            volume: volume.to_owned(),
            snapshot: name.clone(),
            phase: "pre-freeze",
            result: String::new(),
            data_dir: self.store.path().display().to_string(),
        };
        let hook_timeout =
            |own: u64| Duration::from_secs(self.cfg.hooks.timeout_secs.unwrap_or(own));
        let limit = Duration::from_secs_f64(settings.freeze_limit_secs);
        let lock_until = if settings.lock_days > 0 {
            started / 1000 + i64::from(settings.lock_days) * 86_400
        } else {
            0
        };
        let outcome: Result<Option<SnapshotInfo>> = async {
            // Pre-flush: ingest what is staged while clients go on writing, so that the
            // snapshot has less to store after the thaw. The freeze itself reads no
            // staged data, so one round is enough.
            let id = vol.id;
            let t_flush = Instant::now();
            claim.phase("pre-flush");
            job.bytes = self.blocking(move |s| s.ingest_all(Some(id))).await?.bytes;
            let preflush = t_flush.elapsed();
            for (key, cmd, timeout) in [
                (
                    "hooks.pre_freeze",
                    &self.cfg.hooks.pre_freeze,
                    hook_timeout(60),
                ),
                (
                    "pre_freeze",
                    &settings.pre_freeze,
                    Duration::from_secs(settings.hook_timeout_secs),
                ),
            ] {
                if let Some(cmd) = cmd {
                    claim.phase("pre-freeze hooks");
                    let r = hooks::run(cmd, &env, timeout).await;
                    append_output(&mut job.output, key, &r.output);
                    if let Some(f) = r.failure {
                        bail!("pre-freeze hook ({key}) {f}");
                    }
                }
            }
            // The capture's thread holds GC off from before the freeze, so that the
            // capture never waits inside the freeze for a GC sweep to end.
            let cancel = SnapshotCancel::default();
            let meta = SnapshotMeta {
                label: req.label.clone(),
                lock_until,
                busy: req.busy,
                cancel: Some(cancel.clone()),
            };
            let (v, n) = (volume.to_owned(), name.clone());
            let store = self.store.clone();
            let delay = test_freeze_delay();
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let mut task = tokio::task::spawn_blocking(move || {
                let held = store.hold_gc();
                let _ = ready_tx.send(());
                if go_rx.recv().is_err() {
                    return Err(storage::StoreError::Refused(
                        "the volume was not frozen".into(),
                    ));
                }
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
                // Inside the freeze only the capture: staged files are sealed (no
                // byte read) and changed directories encoded; their data is stored
                // after the thaw.
                store.snapshot_capture_held(&held, &v, &n, &meta)
            });
            let t_gc = Instant::now();
            claim.phase("freezing");
            let _ = ready_rx.await;
            if t_gc.elapsed() > Duration::from_millis(100) {
                job.output.push_str(&format!(
                    "waited {} ms for a GC sweep to end before the freeze\n",
                    t_gc.elapsed().as_millis()
                ));
            }
            let frozen = match self.shared.gate.freeze(vol.id, limit).await {
                Ok(f) => f,
                Err(e @ FreezeError::DrainTimeout { .. }) => {
                    job.result = "aborted".into();
                    bail!("freeze aborted: {e}");
                }
                Err(e) => bail!("freeze: {e}"),
            };
            let t_frozen = Instant::now();
            claim.phase("frozen");
            job.frozen_at_ms = Some(now_ms());
            let _ = go_tx.send(());
            let left = limit.saturating_sub(t_frozen.elapsed());
            let res = match tokio::time::timeout(left, &mut task).await {
                Ok(r) => r,
                Err(_) if cancel.cancel() => {
                    // Thaw now; the snapshot rolls back wherever it is.
                    let stats = frozen.thaw();
                    job.freeze_ms = Some(stats.frozen.as_millis() as u64);
                    job.window_ms = Some(stats.window.as_millis() as u64);
                    job.result = "aborted".into();
                    let _ = task.await;
                    bail!(
                        "freeze limit of {} s reached; snapshot cancelled and volume thawed",
                        settings.freeze_limit_secs
                    );
                }
                // It was committing already: it holds what was frozen; wait for it.
                Err(_) => task.await,
            };
            let stats = frozen.thaw();
            job.freeze_ms = Some(stats.frozen.as_millis() as u64);
            job.window_ms = Some(stats.window.as_millis() as u64);
            let cap = res.map_err(|e| anyhow!("snapshot task panicked: {e}"))??;
            let sealed = cap.sealed_files();
            let t_finish = Instant::now();
            claim.phase("storing after the thaw");
            let info = self.blocking(move |s| s.snapshot_finish(cap)).await?;
            // From the end of the pre-flush to the recorded snapshot: what the
            // snapshot itself costs.
            job.output.push_str(&format!(
                "pre-flush {} ms; freeze to recorded snapshot {} ms ({sealed} staged files sealed, stored after the thaw in {} ms)\n",
                preflush.as_millis(),
                t_frozen.elapsed().as_millis(),
                t_finish.elapsed().as_millis()
            ));
            Ok(Some(info))
        }
        .await;
        let info = match outcome {
            Ok(info) => {
                job.result = "ok".into();
                info
            }
            Err(e) => {
                if job.result.is_empty() {
                    job.result = "failed".into();
                }
                job.error = Some(format!("{e:#}"));
                None
            }
        };
        // Post-thaw hooks run whatever happened.
        let env = HookEnv {
            phase: "post-thaw",
            result: job.result.clone(),
            ..env
        };
        for (key, cmd, timeout) in [
            (
                "post_thaw",
                &settings.post_thaw,
                Duration::from_secs(settings.hook_timeout_secs),
            ),
            (
                "hooks.post_thaw",
                &self.cfg.hooks.post_thaw,
                hook_timeout(60),
            ),
        ] {
            if let Some(cmd) = cmd {
                claim.phase("post-thaw hooks");
                let r = hooks::run(cmd, &env, timeout).await;
                append_output(&mut job.output, key, &r.output);
                if let Some(f) = r.failure {
                    // The snapshot stands; the failure is recorded and logged.
                    job.output.push_str(&format!("[{key} {f}]\n"));
                    tracing::warn!(volume, hook = key, failure = f, "post-thaw hook failed");
                }
            }
        }
        job.ended_ms = now_ms();
        self.record(&job);
        // DR copies after a new snapshot, each a job of its own in the background.
        if info.is_some() {
            for t in &settings.replicate_to {
                let (app, vol, t) = (self.clone(), volume.to_string(), t.clone());
                tokio::spawn(async move {
                    if let Err(e) = app.replicate_job(&vol, &t, false).await {
                        tracing::warn!(volume = vol, target = t, error = %e, "replication after the snapshot not run");
                    }
                });
            }
        }
        // Retention after a new snapshot, when the volume has a policy.
        if info.is_some() && settings.policy().is_set() {
            if let Err(e) = self.prune_volume(volume, false).await {
                tracing::warn!(volume, error = %e, "retention after the snapshot failed");
            }
        }
        match &job.error {
            None => tracing::info!(
                volume,
                snapshot = name,
                freeze_ms = job.freeze_ms,
                window_ms = job.window_ms,
                ms = job.ended_ms - job.started_ms,
                "snapshot job done"
            ),
            Some(e) => {
                tracing::warn!(volume, snapshot = name, result = job.result, error = %e, "snapshot job did not complete")
            }
        }
        Ok((job, info))
    }

    /// A time-based name not yet taken on this volume.
    async fn free_name(&self, volume: &str, ms: i64) -> Result<String> {
        let v = volume.to_owned();
        let taken: Vec<String> = self
            .blocking(move |s| s.snapshots(Some(&v)))
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect();
        let base = auto_name(ms);
        let mut name = base.clone();
        let mut n = 1;
        while taken.contains(&name) {
            n += 1;
            name = format!("{base}.{n}");
        }
        Ok(name)
    }

    /// Applies (or with `dry_run` only plans) the retention policy of each volume in
    /// `volumes`, each as a job of its own.
    pub async fn prune_job(
        self: &Arc<Self>,
        volumes: Vec<String>,
        dry_run: bool,
    ) -> Result<Vec<PruneResult>> {
        let mut out = Vec::new();
        for v in volumes {
            let _claim = self.claim(&v, "prune")?;
            out.push(self.prune_volume(&v, dry_run).await?);
        }
        Ok(out)
    }

    /// One volume's prune; the caller holds the volume's claim.
    async fn prune_volume(&self, volume: &str, dry_run: bool) -> Result<PruneResult> {
        let settings = self.cfg.volume(volume);
        let v = volume.to_owned();
        let snaps = self.blocking(move |s| s.snapshots(Some(&v))).await?;
        let cands: Vec<Candidate> = snaps
            .iter()
            .map(|s| Candidate {
                name: s.name.clone(),
                created: s.created.sec,
                held: s.held,
                lock_until: s.lock_until,
            })
            .collect();
        let started = now_ms();
        let decisions = retention::plan(&cands, &settings.policy(), started / 1000, settings.tz());
        let mut result = PruneResult {
            volume: volume.to_owned(),
            dry_run,
            decisions,
            deleted: Vec::new(),
            errors: Vec::new(),
        };
        if dry_run {
            return Ok(result);
        }
        let mut bytes = 0;
        for d in result.decisions.iter().filter(|d| !d.keep) {
            let (v, n) = (volume.to_owned(), d.name.clone());
            match self.blocking(move |s| s.delete_snapshot(&v, &n)).await {
                Ok(()) => {
                    bytes += snaps
                        .iter()
                        .find(|s| s.name == d.name)
                        .map_or(0, |s| s.logical_bytes);
                    result.deleted.push(d.name.clone());
                }
                // Held or locked since the plan: it stays, and the job says why.
                Err(e) => result.errors.push(format!("{}: {e:#}", d.name)),
            }
        }
        let job = JobRecord {
            kind: "prune".into(),
            volume: Some(volume.to_owned()),
            started_ms: started,
            ended_ms: now_ms(),
            result: if result.errors.is_empty() {
                "ok"
            } else {
                "failed"
            }
            .into(),
            error: (!result.errors.is_empty()).then(|| result.errors.join("; ")),
            bytes,
            output: if result.deleted.is_empty() {
                "nothing to prune".into()
            } else {
                format!("deleted {}", result.deleted.join(", "))
            },
            ..Default::default()
        };
        self.record(&job);
        Ok(result)
    }

    /// Restores the newest snapshot of `volume` to nowhere, reading and hash-checking
    /// every chunk, and records the rate: what `status` turns into an expected restore
    /// time (RTO).
    pub async fn restore_test_job(
        self: &Arc<Self>,
        volume: &str,
        sample_percent: Option<u32>,
    ) -> Result<JobRecord> {
        let percent = sample_percent
            .unwrap_or(self.cfg.volume(volume).restore_test_sample_percent)
            .clamp(1, 100);
        let v = volume.to_owned();
        let snaps = self.blocking(move |s| s.snapshots(Some(&v))).await?;
        let newest = snaps
            .iter()
            .max_by_key(|s| (s.created.sec, s.created.nsec))
            .map(|s| s.name.clone())
            .ok_or_else(|| anyhow!("volume {volume} has no snapshot to test"))?;
        let _claim = self.claim(volume, "restore-test")?;
        let mut job = JobRecord {
            kind: "restore-test".into(),
            volume: Some(volume.to_owned()),
            snapshot: Some(newest.clone()),
            started_ms: now_ms(),
            ..Default::default()
        };
        let (v, n) = (volume.to_owned(), newest);
        let store = self.store.clone();
        // A sample that changes every day: files whose path hashes (with the day)
        // below the percentage.
        let day = (job.started_ms / 86_400_000).to_le_bytes();
        let r = tokio::task::spawn_blocking(move || {
            let (root, _) = crate::restore::resolve(&store, &v, &n, "")?;
            let keep = |path: &str| {
                percent >= 100 || {
                    let h = blake3::Hasher::new()
                        .update(&day)
                        .update(path.as_bytes())
                        .finalize();
                    u32::from(h.as_bytes()[0]) * 100 < percent * 256
                }
            };
            crate::restore::write_tar_sample(&store, &root, "", std::io::sink(), &keep)
        })
        .await
        .map_err(|e| anyhow!("restore test panicked: {e}"))?;
        job.ended_ms = now_ms();
        match r {
            Ok(rep) => {
                job.bytes = rep.bytes;
                let secs = ((job.ended_ms - job.started_ms) as f64 / 1000.0).max(0.001);
                job.output = format!(
                    "{} files, {} bytes read and checked in {secs:.1} s ({:.0} MB/s){}",
                    rep.files,
                    rep.bytes,
                    rep.bytes as f64 / secs / 1e6,
                    if percent < 100 {
                        format!("; a {percent}% sample of the files")
                    } else {
                        String::new()
                    }
                );
                if rep.damaged.is_empty() {
                    job.result = "ok".into();
                } else {
                    job.result = "failed".into();
                    job.error = Some(format!("damaged: {}", rep.damaged.join("; ")));
                }
            }
            Err(e) => {
                job.result = "failed".into();
                job.error = Some(format!("{e:#}"));
            }
        }
        self.record(&job);
        Ok(job)
    }

    /// `kura import`: unpacks an import stream ([`crate::import`]) into `volume` under
    /// `path`, as a job claiming the volume (no snapshot of it runs meanwhile). What
    /// was imported before a failure (a full disk, a broken stream) stays.
    pub async fn import_job(
        self: &Arc<Self>,
        volume: &str,
        path: String,
        replace: bool,
        input: impl std::io::Read + Send + 'static,
    ) -> Result<(JobRecord, Option<crate::import::ImportReport>)> {
        let v = volume.to_owned();
        self.blocking(move |s| s.volume(&v)).await?;
        let _claim = self.claim(volume, "import")?;
        let mut job = JobRecord {
            kind: "import".into(),
            volume: Some(volume.to_owned()),
            started_ms: now_ms(),
            ..Default::default()
        };
        let (store, v) = (self.store.clone(), volume.to_owned());
        let shown = path.clone();
        let r = tokio::task::spawn_blocking(move || {
            crate::import::unpack(&store, &v, &path, replace, input, |_| {})
        })
        .await
        .map_err(|e| anyhow!("import panicked: {e}"))?;
        job.ended_ms = now_ms();
        let report = match r {
            Ok(rep) => {
                job.bytes = rep.bytes;
                job.output = format!(
                    "into /{shown}: {} files, {} directories, {} symlinks, {} hard links, {} bytes{}",
                    rep.files,
                    rep.dirs,
                    rep.symlinks,
                    rep.hardlinks,
                    rep.bytes,
                    if replace { " (replacing what was there)" } else { "" }
                );
                if rep.skipped.is_empty() {
                    job.result = "ok".into();
                } else {
                    job.result = "failed".into();
                    job.error = Some(format!(
                        "{} entries not imported: {}",
                        rep.skipped.len(),
                        rep.skipped
                            .iter()
                            .take(20)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("; ")
                    ));
                }
                Some(rep)
            }
            Err(e) => {
                job.result = "failed".into();
                job.error = Some(format!("{e:#}"));
                None
            }
        };
        self.record(&job);
        Ok((job, report))
    }

    /// The platform snapshot (the KCPS pattern in its literal form): with every volume
    /// frozen and the store still and durable on disk, runs `platform_snapshot.command`
    /// (optionally inside `fsfreeze -f/-u` of the data directory's filesystem), then
    /// lets everything go. The command's timeout bounds how long clients are held.
    pub async fn platform_snapshot_job(self: &Arc<Self>) -> Result<JobRecord> {
        let p = self.cfg.platform_snapshot.clone();
        let cmd = p.command.clone().ok_or_else(|| {
            anyhow!("no platform_snapshot.command in the config: nothing would take the snapshot")
        })?;
        let vols = self.blocking(|s| s.volumes()).await?;
        // The store and every volume: no other job may run meanwhile.
        let mut claims = vec![self.claim("*", "platform-snapshot")?];
        for v in &vols {
            claims.push(self.claim(&v.name, "platform-snapshot")?);
        }
        let data_dir = self.store.path().to_path_buf();
        let mut job = JobRecord {
            kind: "platform-snapshot".into(),
            started_ms: now_ms(),
            ..Default::default()
        };
        let timeout = Duration::from_secs(p.timeout_secs);
        let mountpoint = match p.fsfreeze {
            true => Some(fs_mountpoint(&data_dir).await?),
            false => None,
        };
        // The store's hold lives on a thread of its own (its guards stay where they
        // were taken): hold commits → (clients frozen here) → settle → (command) → release.
        let (step_tx, step_rx) = std::sync::mpsc::channel::<()>();
        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<storage::Result<()>>();
        let store = self.store.clone();
        let holder = std::thread::spawn(move || {
            let hold = match store.quiesce() {
                Ok(h) => h,
                Err(e) => return drop(ack_tx.send(Err(e))),
            };
            let _ = ack_tx.send(Ok(()));
            if step_rx.recv().is_err() {
                return;
            }
            let still = match hold.settle() {
                Ok(q) => q,
                Err(e) => return drop(ack_tx.send(Err(e))),
            };
            let _ = ack_tx.send(Ok(()));
            let _ = step_rx.recv();
            drop(still);
        });
        let mut acked = async || -> Result<()> {
            ack_rx
                .recv()
                .await
                .ok_or_else(|| anyhow!("the store hold ended early"))?
                .context("holding the store still")
        };
        let mut frozen = Vec::new();
        let outcome: Result<()> = async {
            acked().await?;
            for v in &vols {
                let f = self
                    .shared
                    .gate
                    .freeze(v.id, timeout)
                    .await
                    .map_err(|e| anyhow!("freeze of volume {}: {e}", v.name))?;
                frozen.push(f);
            }
            job.frozen_at_ms = Some(now_ms());
            let _ = step_tx.send(());
            acked().await?;
            let env = HookEnv {
                volume: String::new(),
                snapshot: String::new(),
                phase: "platform-snapshot",
                result: String::new(),
                data_dir: data_dir.display().to_string(),
            };
            if let Some(m) = &mountpoint {
                let r = hooks::run(&format!("fsfreeze -f '{m}'"), &env, timeout).await;
                if let Some(f) = r.failure {
                    bail!("fsfreeze -f {m} {f}: {}", r.output.trim());
                }
            }
            let r = hooks::run(&cmd, &env, timeout).await;
            if let Some(m) = &mountpoint {
                let u = hooks::run(&format!("fsfreeze -u '{m}'"), &env, timeout).await;
                if let Some(f) = u.failure {
                    tracing::error!(mountpoint = %m, failure = f, "fsfreeze -u failed: the filesystem may still be frozen");
                    append_output(&mut job.output, "fsfreeze -u", &format!("failed: {f}\n{}", u.output));
                }
            }
            append_output(&mut job.output, "platform_snapshot.command", &r.output);
            if let Some(f) = r.failure {
                bail!("platform snapshot command {f}");
            }
            Ok(())
        }
        .await;
        // Let the store go, then the clients.
        drop(step_tx);
        let _ = tokio::task::spawn_blocking(move || holder.join()).await;
        let mut window = Duration::ZERO;
        let mut held = Duration::ZERO;
        for f in frozen {
            let st = f.thaw();
            window = window.max(st.window);
            held = held.max(st.frozen);
        }
        if job.frozen_at_ms.is_some() {
            job.freeze_ms = Some(held.as_millis() as u64);
            job.window_ms = Some(window.as_millis() as u64);
        }
        drop(claims);
        job.ended_ms = now_ms();
        match outcome {
            Ok(()) => job.result = "ok".into(),
            Err(e) => {
                job.result = "failed".into();
                job.error = Some(format!("{e:#}"));
                tracing::warn!(error = %e, "platform snapshot failed");
            }
        }
        self.record(&job);
        Ok(job)
    }

    /// A store-wide job: claims the store, runs `f` off the async threads, lets `done`
    /// fill in the record from a success, records the job either way.
    async fn store_job<T: Send + 'static>(
        self: &Arc<Self>,
        kind: &'static str,
        f: impl FnOnce(&Store) -> storage::Result<T> + Send + 'static,
        done: impl FnOnce(&T, &mut JobRecord),
    ) -> Result<(JobRecord, T)> {
        let _claim = self.claim("*", kind)?;
        let mut job = JobRecord {
            kind: kind.into(),
            started_ms: now_ms(),
            result: "ok".into(),
            ..Default::default()
        };
        let r = self.blocking(f).await;
        job.ended_ms = now_ms();
        match &r {
            Ok(v) => done(v, &mut job),
            Err(e) => {
                job.result = "failed".into();
                job.error = Some(format!("{e:#}"));
            }
        }
        self.record(&job);
        Ok((job, r?))
    }

    /// Measures what each volume takes in the store (for `status`); a failure is
    /// logged and the previous measurement kept.
    /// Each measurement is also recorded, one `usage` record per volume (its stored
    /// bytes), for the history that the console charts.
    pub async fn refresh_usage(&self) {
        let at = now_ms();
        match self.blocking(|s| s.usage()).await {
            Ok(u) => {
                let ended = now_ms();
                for v in &u {
                    self.record(&JobRecord {
                        kind: storage::USAGE_KIND.into(),
                        volume: Some(v.volume.clone()),
                        started_ms: at,
                        ended_ms: ended,
                        result: "ok".into(),
                        bytes: v.stored_bytes,
                        output: serde_json::json!({
                            "stored_bytes": v.stored_bytes,
                            "exclusive_stored_bytes": v.exclusive_stored_bytes,
                            "raw_bytes": v.raw_bytes,
                        })
                        .to_string(),
                        ..Default::default()
                    });
                }
                *self.usage.lock().unwrap() = Some((at, u))
            }
            Err(e) => tracing::warn!(error = %e, "measuring the volumes' usage failed"),
        }
    }

    /// GC as a job (store-wide); clients keep writing meanwhile.
    pub async fn gc_job(self: &Arc<Self>, dry_run: bool) -> Result<(JobRecord, storage::GcReport)> {
        let opts = self.cfg.gc.options(dry_run);
        let r = self
            .store_job(
                "gc",
                move |s| s.gc(&opts),
                |r, job| {
                    job.bytes = if dry_run {
                        r.plan.reclaim_bytes()
                    } else {
                        r.reclaimed_bytes
                    };
                    job.output = if dry_run {
                        "dry run".into()
                    } else {
                        format!(
                            "deleted {} chunks; rewrote {} packs ({} to regroup them), removed {}",
                            r.deleted_chunks, r.repacked_packs, r.regrouped_packs, r.removed_packs
                        )
                    };
                },
            )
            .await;
        if !dry_run && r.is_ok() {
            // What GC freed changes what each volume takes.
            let app = self.clone();
            tokio::spawn(async move { app.refresh_usage().await });
        }
        r
    }

    /// The DR target `to` names: a `[target.NAME]`, else a directory or `s3://` URL.
    pub fn target_toml(&self, to: &str) -> Result<(String, crate::replica::TargetToml)> {
        match self.cfg.targets.get(to) {
            Some(t) => Ok((to.to_string(), t.clone())),
            None if to.starts_with('/') || to.starts_with("s3://") || to.starts_with("file://") => {
                Ok((to.to_string(), crate::replica::TargetToml::from_arg(to, None)?))
            }
            None => bail!("no target {to:?}: name a [target.NAME] of the config, an absolute directory or an s3:// URL"),
        }
    }

    /// Replication of `volume` to target `to` as a job: one job per target at a time
    /// (it never claims the volume: snapshots and clients go on), then the target's
    /// retention when it has one. The record's output is the report as JSON.
    pub async fn replicate_job(
        self: &Arc<Self>,
        volume: &str,
        to: &str,
        full: bool,
    ) -> Result<(JobRecord, Option<crate::replica::send::Report>)> {
        let (name, t) = self.target_toml(to)?;
        let claim = self.claim(&format!("target {name}"), "replicate")?;
        claim.phase("sending");
        let running = claim.job.clone();
        let mut job = JobRecord {
            kind: "replicate".into(),
            volume: Some(volume.into()),
            started_ms: now_ms(),
            ..Default::default()
        };
        let (store, vol, rt) = (
            self.store.clone(),
            volume.to_string(),
            tokio::runtime::Handle::current(),
        );
        let tz = self.cfg.volume(volume).tz();
        let stop = self.stop_flag.clone();
        let r = tokio::task::spawn_blocking(move || -> Result<_> {
            let target = Arc::new(crate::replica::Target::open(&name, &t, rt, true)?);
            let report = crate::replica::send::replicate(
                &store,
                &target,
                &vol,
                full,
                &stop,
                running.done_bytes.clone(),
            )?;
            running.set_phase("pruning the copy");
            let pruned = match &t.keep {
                Some(k) => Some(crate::replica::check::prune(
                    target,
                    &vol,
                    &k.policy()?,
                    tz,
                    now_ms() / 1000,
                    false,
                )?),
                None => None,
            };
            Ok((report, pruned))
        })
        .await
        .map_err(|e| anyhow!("replication panicked: {e}"))?;
        job.ended_ms = now_ms();
        let mut out = serde_json::json!({ "target": to });
        match &r {
            Ok((rep, pruned)) => {
                job.result = "ok".into();
                job.bytes = rep.bytes_sent;
                job.snapshot = rep.newest.clone();
                out = serde_json::json!({ "target": to, "report": rep, "pruned": pruned });
            }
            Err(e) => {
                job.result = "failed".into();
                job.error = Some(format!("{e:#}"));
                tracing::warn!(volume, target = to, error = %e, "replication failed");
            }
        }
        job.output = out.to_string();
        self.record(&job);
        self.metrics.replicated(volume, to, &job);
        Ok((job, r.ok().map(|(rep, _)| rep)))
    }

    /// Verify as a job (store-wide); reads go on meanwhile.
    pub async fn verify_job(self: &Arc<Self>) -> Result<(JobRecord, storage::VerifyReport)> {
        self.store_job(
            "verify",
            |s| s.verify(),
            |r, job| {
                if !r.is_clean() {
                    job.result = "failed".into();
                    job.error = Some(format!(
                        "{} damaged chunks, {} damaged records, {} staged files with problems",
                        r.damaged.len(),
                        r.records.len(),
                        r.staged_problems.len()
                    ));
                }
                job.output = format!("checked {} chunks in {} packs", r.chunks, r.packs);
            },
        )
        .await
    }
}

/// Fault injection for tests of the freeze limit: `KURA_TEST_FREEZE_DELAY_MS` makes the
/// capture start that much later inside the freeze. Never set in production.
fn test_freeze_delay() -> Option<Duration> {
    std::env::var("KURA_TEST_FREEZE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

/// The mount point of the filesystem holding `dir` (for `fsfreeze`); the root
/// filesystem is refused: freezing it would stop kura's own logging and the command.
async fn fs_mountpoint(dir: &std::path::Path) -> Result<String> {
    let out = tokio::process::Command::new("findmnt")
        .args(["-n", "-o", "TARGET", "--target"])
        .arg(dir)
        .output()
        .await
        .context("running findmnt to find the data directory's filesystem")?;
    let m = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || m.is_empty() {
        bail!("findmnt found no filesystem for {}", dir.display());
    }
    if m == "/" {
        bail!(
            "platform_snapshot.fsfreeze: {} is on the root filesystem, which cannot be frozen safely; put the data directory on a filesystem of its own or set fsfreeze = false",
            dir.display()
        );
    }
    if m.contains('\'') {
        bail!("mount point {m:?} contains a quote");
    }
    Ok(m)
}

fn append_output(out: &mut String, key: &str, text: &str) {
    if text.is_empty() {
        return;
    }
    out.push_str(&format!("[{key}]\n{text}"));
    if !text.ends_with('\n') {
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_names_sort_by_time_and_are_valid() {
        let a = auto_name(1_764_518_712_000);
        assert_eq!(a, "2025-11-30_16-05-12Z");
        storage::store::check_volume_name(&a).unwrap();
        assert!(auto_name(1_764_518_713_000) > a);
    }
}
