//! The control API: JSON over HTTP (axum), what the CLI and the console use while the
//! daemon serves. Documented endpoint by endpoint in `docs/api.md`.
//!
//! On a loopback address every local process may call it (as it may open the store's
//! files); on any other address each request must carry the bearer token kept in
//! `<data_dir>/api-token` (made at first start, mode 0600).

use crate::jobs::{Appliance, Refusal, SnapshotRequest};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use storage::{JobRecord, SnapshotInfo, StoreError};

/// The token file's name in the data directory.
pub const TOKEN_FILE: &str = "api-token";
/// Where the daemon writes its API's URL for the CLI (removed at a clean stop).
pub const ADDR_FILE: &str = "api.url";

/// An error as the API returns it: a status and `{"error": "..."}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        let status = if e.downcast_ref::<Refusal>().is_some() {
            StatusCode::CONFLICT
        } else if let Some(se) = e.downcast_ref::<StoreError>() {
            store_status(se)
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError(status, format!("{e:#}"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError(store_status(&e), e.to_string())
    }
}

fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::Exists(_) | StoreError::Refused(_) => StatusCode::CONFLICT,
        StoreError::Invalid(_)
        | StoreError::InvalidName { .. }
        | StoreError::NameTooLong { .. } => StatusCode::BAD_REQUEST,
        StoreError::NoSpace { .. } => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;
type App = State<Arc<Appliance>>;

/// A snapshot as the API shows it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SnapshotView {
    pub volume: String,
    pub name: String,
    /// Unix seconds, and the same as ISO 8601 (UTC).
    pub created: i64,
    pub created_iso: String,
    pub logical_bytes: u64,
    pub label: Option<String>,
    pub held: bool,
    /// Unix seconds; 0 when not locked.
    pub lock_until: i64,
    pub busy: bool,
}

impl From<&SnapshotInfo> for SnapshotView {
    fn from(s: &SnapshotInfo) -> Self {
        SnapshotView {
            volume: s.volume.clone(),
            name: s.name.clone(),
            created: s.created.sec,
            created_iso: iso(s.created.sec * 1000),
            logical_bytes: s.logical_bytes,
            label: s.label.clone(),
            held: s.held,
            lock_until: s.lock_until,
            busy: s.busy,
        }
    }
}

/// A job record as the API shows it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct JobView {
    pub id: u64,
    pub kind: String,
    pub volume: Option<String>,
    pub started_ms: i64,
    pub started_iso: String,
    pub ended_ms: i64,
    pub result: String,
    pub error: Option<String>,
    pub snapshot: Option<String>,
    pub bytes: u64,
    pub frozen_at_ms: Option<i64>,
    pub freeze_ms: Option<u64>,
    pub window_ms: Option<u64>,
    pub output: String,
}

impl From<&JobRecord> for JobView {
    fn from(j: &JobRecord) -> Self {
        JobView {
            id: j.id,
            kind: j.kind.clone(),
            volume: j.volume.clone(),
            started_ms: j.started_ms,
            started_iso: iso(j.started_ms),
            ended_ms: j.ended_ms,
            result: j.result.clone(),
            error: j.error.clone(),
            snapshot: j.snapshot.clone(),
            bytes: j.bytes,
            frozen_at_ms: j.frozen_at_ms,
            freeze_ms: j.freeze_ms,
            window_ms: j.window_ms,
            output: j.output.clone(),
        }
    }
}

/// ISO 8601 in UTC with the zone, to the second.
pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Runs a store call off the async threads.
async fn blocking<T: Send + 'static>(
    app: &Arc<Appliance>,
    f: impl FnOnce(&storage::Store) -> storage::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("store call panicked: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Deserialize)]
struct VolumeQuery {
    volume: Option<String>,
}

async fn list_snapshots(
    State(app): App,
    Query(q): Query<VolumeQuery>,
) -> ApiResult<Vec<SnapshotView>> {
    if let Some(v) = q.volume.clone() {
        blocking(&app, move |s| s.volume(&v)).await?;
    }
    let list = blocking(&app, move |s| s.snapshots(q.volume.as_deref())).await?;
    Ok(Json(list.iter().map(SnapshotView::from).collect()))
}

async fn volume_snapshots(
    State(app): App,
    Path(volume): Path<String>,
) -> ApiResult<Vec<SnapshotView>> {
    let v = volume.clone();
    blocking(&app, move |s| s.volume(&v)).await?;
    let list = blocking(&app, move |s| s.snapshots(Some(&volume))).await?;
    Ok(Json(list.iter().map(SnapshotView::from).collect()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateSnapshot {
    name: Option<String>,
    label: Option<String>,
}

/// What a job returns: its record, and what it made.
#[derive(Serialize, Deserialize, Debug)]
pub struct JobReply<T> {
    pub job: JobView,
    pub result: Option<T>,
}

async fn create_snapshot(
    State(app): App,
    Path(volume): Path<String>,
    body: Option<Json<CreateSnapshot>>,
) -> Result<Response, ApiError> {
    let req = body.map(|b| b.0).unwrap_or_default();
    // A job runs in a task of its own: a client that goes away does not cancel it
    // halfway, and a clean shutdown waits for it.
    let job_app = app.clone();
    let (job, info) = tokio::spawn(async move {
        job_app
            .snapshot_job(
                &volume,
                SnapshotRequest {
                    name: req.name,
                    label: req.label,
                    busy: false,
                },
            )
            .await
    })
    .await
    .map_err(|e| anyhow::anyhow!("snapshot job panicked: {e}"))??;
    let status = job_status(&job, StatusCode::CREATED);
    let reply = JobReply {
        job: JobView::from(&job),
        result: info.as_ref().map(SnapshotView::from),
    };
    Ok((status, Json(reply)).into_response())
}

async fn show_snapshot(
    State(app): App,
    Path((volume, name)): Path<(String, String)>,
) -> ApiResult<SnapshotView> {
    let s = blocking(&app, move |s| s.snapshot_info(&volume, &name)).await?;
    Ok(Json(SnapshotView::from(&s)))
}

async fn delete_snapshot(
    State(app): App,
    Path((volume, name)): Path<(String, String)>,
) -> ApiResult<Value> {
    let (v, n) = (volume.clone(), name.clone());
    blocking(&app, move |s| s.delete_snapshot(&v, &n)).await?;
    Ok(Json(json!({ "deleted": format!("{volume}@{name}") })))
}

async fn hold(
    State(app): App,
    Path((volume, name)): Path<(String, String)>,
) -> ApiResult<SnapshotView> {
    let s = blocking(&app, move |s| s.hold_snapshot(&volume, &name, true)).await?;
    Ok(Json(SnapshotView::from(&s)))
}

async fn release(
    State(app): App,
    Path((volume, name)): Path<(String, String)>,
) -> ApiResult<SnapshotView> {
    let s = blocking(&app, move |s| s.hold_snapshot(&volume, &name, false)).await?;
    Ok(Json(SnapshotView::from(&s)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloneReq {
    new_volume: String,
}

async fn clone_snapshot(
    State(app): App,
    Path((volume, name)): Path<(String, String)>,
    Json(req): Json<CloneReq>,
) -> Result<Response, ApiError> {
    let nv = req.new_volume.clone();
    blocking(&app, move |s| s.clone_snapshot(&volume, &name, &nv)).await?;
    // The exports list volumes from the store on every call: the clone is served now.
    app.shared.invalidate_all();
    Ok((
        StatusCode::CREATED,
        Json(json!({ "volume": req.new_volume })),
    )
        .into_response())
}

#[derive(Serialize, Deserialize, Debug)]
pub struct VolumeView {
    pub name: String,
    pub logical_bytes: u64,
    pub snapshots: usize,
    pub frozen: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateVolume {
    name: String,
    #[serde(default)]
    owner_uid: u32,
    #[serde(default)]
    owner_gid: u32,
}

async fn create_volume(
    State(app): App,
    Json(req): Json<CreateVolume>,
) -> Result<Response, ApiError> {
    let name = req.name.clone();
    blocking(&app, move |s| {
        s.create_volume(
            &req.name,
            storage::NewAttr {
                mode: 0o755,
                uid: req.owner_uid,
                gid: req.owner_gid,
            },
        )
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!({ "volume": name }))).into_response())
}

async fn list_volumes(State(app): App) -> ApiResult<Vec<VolumeView>> {
    let gate = app.shared.gate.clone();
    let out = blocking(&app, move |s| {
        let snaps = s.snapshots(None)?;
        s.volumes()?
            .into_iter()
            .map(|v| {
                Ok(VolumeView {
                    logical_bytes: s.volume_logical_bytes(&v.name)?,
                    snapshots: snaps.iter().filter(|x| x.volume == v.name).count(),
                    frozen: gate.is_frozen(v.id),
                    name: v.name,
                })
            })
            .collect::<storage::Result<Vec<_>>>()
    })
    .await?;
    Ok(Json(out))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GcReq {
    #[serde(default)]
    dry_run: bool,
}

/// GC's numbers as the API shows them.
#[derive(Serialize, Deserialize, Debug)]
pub struct GcView {
    pub dry_run: bool,
    pub unreachable_chunks: usize,
    pub unreachable_bytes: u64,
    pub packs_to_repack: usize,
    /// Packs rewritten (or to be) to give the newest generation bundles of its own.
    #[serde(default)]
    pub packs_to_regroup: usize,
    /// Plain bytes in bundles that mix generations, before the run.
    #[serde(default)]
    pub mixed_bytes: u64,
    pub orphan_packs: usize,
    pub deleted_chunks: u64,
    /// Reclaimed, or what would be on a dry run.
    pub reclaim_bytes: u64,
}

async fn gc(State(app): App, body: Option<Json<GcReq>>) -> ApiResult<JobReply<GcView>> {
    let dry_run = body.map(|b| b.0.dry_run).unwrap_or(false);
    let job_app = app.clone();
    let (job, r) = tokio::spawn(async move { job_app.gc_job(dry_run).await })
        .await
        .map_err(|e| anyhow::anyhow!("gc job panicked: {e}"))??;
    Ok(Json(JobReply {
        job: JobView::from(&job),
        result: Some(GcView {
            dry_run,
            unreachable_chunks: r.plan.unreachable.len(),
            unreachable_bytes: r.plan.unreachable_bytes,
            packs_to_repack: r.plan.repack.len(),
            packs_to_regroup: r.plan.regroup.len(),
            mixed_bytes: r.plan.mixed_bytes,
            orphan_packs: r.plan.remove_packs.len(),
            deleted_chunks: r.deleted_chunks,
            reclaim_bytes: if dry_run {
                r.plan.reclaim_bytes()
            } else {
                r.reclaimed_bytes
            },
        }),
    }))
}

/// Verify's findings as the API shows them.
#[derive(Serialize, Deserialize, Debug)]
pub struct VerifyView {
    pub clean: bool,
    pub chunks: u64,
    pub packs: u64,
    pub damaged: Vec<String>,
    pub affected_files: Vec<String>,
    pub affected_snapshots: Vec<String>,
    pub staged_problems: Vec<String>,
}

async fn verify(State(app): App) -> ApiResult<JobReply<VerifyView>> {
    let job_app = app.clone();
    let (job, r) = tokio::spawn(async move { job_app.verify_job().await })
        .await
        .map_err(|e| anyhow::anyhow!("verify job panicked: {e}"))??;
    let mut damaged: Vec<String> = r
        .damaged
        .iter()
        .map(|d| {
            format!(
                "chunk {} in pack {} at {}: {}",
                d.chunk, d.pack, d.offset, d.detail
            )
        })
        .collect();
    damaged.extend(r.records.iter().map(|rec| {
        format!(
            "record in pack {} at {}: {} chunks unreadable",
            rec.pack, rec.offset, rec.chunks
        )
    }));
    Ok(Json(JobReply {
        job: JobView::from(&job),
        result: Some(VerifyView {
            clean: r.is_clean(),
            chunks: r.chunks,
            packs: r.packs,
            damaged,
            affected_files: r.affected_files.clone(),
            affected_snapshots: r.affected_snapshots.clone(),
            staged_problems: r.staged_problems.iter().map(|p| p.to_string()).collect(),
        }),
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PruneReq {
    volume: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

async fn prune(
    State(app): App,
    body: Option<Json<PruneReq>>,
) -> ApiResult<Vec<crate::jobs::PruneResult>> {
    let req = body.map(|b| b.0).unwrap_or_default();
    let volumes = match req.volume {
        Some(v) => {
            let n = v.clone();
            blocking(&app, move |s| s.volume(&n)).await?;
            vec![v]
        }
        None => blocking(&app, |s| s.volumes())
            .await?
            .into_iter()
            .map(|v| v.name)
            .collect(),
    };
    let job_app = app.clone();
    let out = tokio::spawn(async move { job_app.prune_job(volumes, req.dry_run).await })
        .await
        .map_err(|e| anyhow::anyhow!("prune job panicked: {e}"))??;
    Ok(Json(out))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RestoreTestReq {
    /// Percent of the files to read (default: the volume's setting, 100).
    sample_percent: Option<u32>,
}

async fn restore_test(
    State(app): App,
    Path(volume): Path<String>,
    body: Option<Json<RestoreTestReq>>,
) -> Result<Response, ApiError> {
    let v = volume.clone();
    blocking(&app, move |s| s.volume(&v)).await?;
    let sample = body.and_then(|b| b.0.sample_percent);
    if let Some(p) = sample {
        if !(1..=100).contains(&p) {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("sample_percent = {p} is outside 1..=100"),
            ));
        }
    }
    let job_app = app.clone();
    let job = tokio::spawn(async move { job_app.restore_test_job(&volume, sample).await })
        .await
        .map_err(|e| anyhow::anyhow!("restore test panicked: {e}"))??;
    Ok(job_response(&job))
}

#[derive(Deserialize)]
struct ReplicateQuery {
    /// A `[target.NAME]`, an absolute directory or an `s3://` URL.
    to: String,
    /// Walk whole trees and resend what the copy lacks (repair after damage).
    #[serde(default)]
    full: bool,
}

/// `POST /volumes/{volume}/replicate?to=TARGET`: the job record and the report. A
/// target that is not in the config (a directory or a URL the caller names) needs the
/// API token even on loopback: the daemon would write a volume's data where the caller
/// says, with its own rights.
async fn replicate(
    State(app): App,
    Path(volume): Path<String>,
    Query(q): Query<ReplicateQuery>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let v = volume.clone();
    blocking(&app, move |s| s.volume(&v)).await?;
    app.target_toml(&q.to)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
    if !app.cfg.targets.contains_key(&q.to) {
        require_token(&app, &headers, "replication to a target not in the config").await?;
    }
    let job_app = app.clone();
    let (job, report) =
        tokio::spawn(async move { job_app.replicate_job(&volume, &q.to, q.full).await })
            .await
            .map_err(|e| anyhow::anyhow!("replication panicked: {e}"))??;
    Ok((
        job_status(&job, StatusCode::OK),
        Json(serde_json::json!({ "job": JobView::from(&job), "report": report })),
    )
        .into_response())
}

/// A job's record: 200 when it succeeded, 422 when it ran and failed.
fn job_response(job: &storage::JobRecord) -> Response {
    (job_status(job, StatusCode::OK), Json(JobView::from(job))).into_response()
}

/// `ok` when the job succeeded, 422 when it ran and failed.
fn job_status(job: &storage::JobRecord, ok: StatusCode) -> StatusCode {
    if job.result == "ok" {
        ok
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    /// The directory inside the volume (made if missing).
    #[serde(default)]
    path: String,
    /// Remove what the directory held first.
    #[serde(default)]
    replace: bool,
}

/// A request body as a blocking reader, for the store's threads.
struct BodyReader {
    rx: tokio::sync::mpsc::Receiver<Result<axum::body::Bytes, String>>,
    cur: axum::body::Bytes,
}

impl std::io::Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

async fn import(
    State(app): App,
    Path(volume): Path<String>,
    Query(q): Query<ImportQuery>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    use tokio_stream::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut stream = body.into_data_stream();
    tokio::spawn(async move {
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| format!("reading the import stream: {e}"));
            let end = piece.is_err();
            if tx.send(piece).await.is_err() || end {
                break;
            }
        }
    });
    let reader = BodyReader {
        rx,
        cur: Default::default(),
    };
    let (job, report) = app.import_job(&volume, q.path, q.replace, reader).await?;
    Ok((
        job_status(&job, StatusCode::OK),
        Json(JobReply {
            job: JobView::from(&job),
            result: report,
        }),
    )
        .into_response())
}

async fn platform_snapshot(State(app): App) -> Result<Response, ApiError> {
    if app.cfg.platform_snapshot.command.is_none() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "no platform_snapshot.command in the config: nothing would take the snapshot".into(),
        ));
    }
    let job_app = app.clone();
    let job = tokio::spawn(async move { job_app.platform_snapshot_job().await })
        .await
        .map_err(|e| anyhow::anyhow!("platform snapshot panicked: {e}"))??;
    Ok(job_response(&job))
}

#[derive(Deserialize)]
struct JobsQuery {
    volume: Option<String>,
    limit: Option<usize>,
    /// Only records of this kind; `usage` lists the measurements of what each volume
    /// takes (not listed otherwise).
    kind: Option<String>,
}

async fn jobs(State(app): App, Query(q): Query<JobsQuery>) -> ApiResult<Vec<JobView>> {
    let limit = q.limit.unwrap_or(50).clamp(1, 10_000);
    let list = blocking(&app, move |s| match &q.kind {
        Some(k) => s.jobs_of_kind(q.volume.as_deref(), k, limit),
        None => s.jobs(q.volume.as_deref(), limit),
    })
    .await?;
    Ok(Json(list.iter().map(JobView::from).collect()))
}

async fn ingest(State(app): App) -> ApiResult<Value> {
    let r = blocking(&app, |s| s.ingest_all(None)).await?;
    Ok(Json(json!({
        "files": r.files, "bytes": r.bytes, "new_bytes": r.new_bytes, "stored_bytes": r.stored_bytes
    })))
}

async fn status(State(app): App) -> ApiResult<crate::status::Status> {
    Ok(Json(crate::status::gather(&app).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffQuery {
    from: String,
    to: String,
}

/// What changed from snapshot `from` to `to` (cost grows with the change).
async fn diff(
    State(app): App,
    Path(volume): Path<String>,
    Query(q): Query<DiffQuery>,
) -> ApiResult<Vec<crate::diff::Change>> {
    let out = blocking(&app, move |s| crate::diff::diff(s, &volume, &q.from, &q.to)).await?;
    Ok(Json(out))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TarQuery {
    path: Option<String>,
}

/// A `Write` that hands the tar to the HTTP body in 256 KiB pieces; a client that goes
/// away ends the restore (the send fails).
struct ChanWriter {
    tx: tokio::sync::mpsc::Sender<Result<axum::body::Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChanWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let b = axum::body::Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(b))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl std::io::Write for ChanWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 << 10 {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// The job record of a restore: failed when it ended early or a file was damaged.
fn restore_record(
    volume: &str,
    snapshot: &str,
    started_ms: i64,
    r: std::result::Result<&crate::restore::Report, &anyhow::Error>,
) -> JobRecord {
    let mut job = JobRecord {
        kind: "restore".into(),
        volume: Some(volume.to_owned()),
        snapshot: Some(snapshot.to_owned()),
        started_ms,
        ended_ms: crate::jobs::now_ms(),
        result: "ok".into(),
        ..Default::default()
    };
    match r {
        Ok(rep) => {
            job.bytes = rep.bytes;
            if !rep.damaged.is_empty() {
                job.result = "failed".into();
                job.error = Some(format!("{} damaged files", rep.damaged.len()));
                job.output = rep.damaged.join("\n");
            }
        }
        Err(e) => {
            job.result = "failed".into();
            job.error = Some(format!("{e:#}"));
        }
    }
    job
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    /// Absolute directory on the daemon's machine.
    to: String,
    #[serde(default)]
    path: String,
}

/// Restores a snapshot (or `path` inside it) into the directory `to`, written by the
/// daemon itself with the readers writing straight into the files (see
/// `restore::restore_to_dir`): the fast way for a CLI on the same machine. The daemon
/// writes with its own rights, so this call needs the API token even on loopback
/// (whoever can read `<data_dir>/api-token` can act as the daemon anyway); a CLI that
/// cannot read it uses the tar stream and writes with its own rights. The reply is
/// JSON lines: `{"total": N}`, `{"bytes": N}` as files are written, then `{"report": ..., "refused":
/// [...]}` or `{"error": "..."}`. A client that goes away stops the restore.
async fn restore_into(
    State(app): App,
    Path((volume, name)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    Json(body): Json<RestoreBody>,
) -> Result<Response, ApiError> {
    require_token(&app, &headers, "a restore written by the daemon").await?;
    let to = std::path::PathBuf::from(&body.to);
    if !to.is_absolute() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("to: {:?} is not an absolute path", body.to),
        ));
    }
    let (v, n, p) = (volume.clone(), name.clone(), body.path.clone());
    let store = app.store.clone();
    let src = tokio::task::spawn_blocking(move || crate::restore::source(&store, &v, &n, &p))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))??;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<axum::body::Bytes>>(16);
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        let started = crate::jobs::now_ms();
        let line = |v: Value| axum::body::Bytes::from(format!("{v}\n"));
        let _ = tx.blocking_send(Ok(line(json!({ "total": src.total }))));
        let stop = std::sync::atomic::AtomicBool::new(false);
        let done = std::sync::atomic::AtomicU64::new(0);
        let last = std::sync::Mutex::new(std::time::Instant::now());
        let progress = |n: u64| {
            use std::sync::atomic::Ordering::Relaxed;
            let total = done.fetch_add(n, Relaxed) + n;
            let mut last = last.lock().unwrap();
            if last.elapsed() >= std::time::Duration::from_millis(200) {
                *last = std::time::Instant::now();
                if tx
                    .blocking_send(Ok(line(json!({ "bytes": total }))))
                    .is_err()
                {
                    stop.store(true, Relaxed);
                }
            }
        };
        let r = crate::restore::restore_to_dir(&store, &src, &to, &progress, &stop);
        app.record(&restore_record(
            &volume,
            &name,
            started,
            r.as_ref().map(|ex| &ex.report),
        ));
        let last = match r {
            Ok(ex) => json!({ "report": ex.report, "refused": ex.refused }),
            Err(e) => json!({ "error": format!("{e:#}") }),
        };
        let _ = tx.blocking_send(Ok(line(last)));
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// The header that carries the logical bytes of a restore stream (for progress bars).
pub const TOTAL_HEADER: &str = "x-kura-total-bytes";

/// A snapshot (or `?path=` inside it) as a tar stream; see `restore.rs`.
async fn snapshot_tar(
    State(app): App,
    Path((volume, name)): Path<(String, String)>,
    Query(q): Query<TarQuery>,
) -> Result<Response, ApiError> {
    let sub = q.path.unwrap_or_default();
    let (v, n, p) = (volume.clone(), name.clone(), sub.clone());
    let store = app.store.clone();
    let src = tokio::task::spawn_blocking(move || crate::restore::source(&store, &v, &n, &p))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))??;
    let total = src.total;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let store = app.store.clone();
    let job_app = app.clone();
    tokio::task::spawn_blocking(move || {
        let started = crate::jobs::now_ms();
        let err_tx = tx.clone();
        let w = ChanWriter {
            tx,
            buf: Vec::with_capacity(256 << 10),
        };
        let r = crate::restore::write_tar(&store, &src.entry, &src.top, w);
        if let Err(e) = &r {
            let _ = err_tx.blocking_send(Err(std::io::Error::other(format!("{e:#}"))));
        }
        job_app.record(&restore_record(&volume, &name, started, r.as_ref()));
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (
                header::HeaderName::from_static(TOTAL_HEADER),
                total.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

/// An entry of a snapshot's directory as `GET .../ls` shows it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct EntryView {
    /// The name (bytes that are not UTF-8 shown as U+FFFD).
    pub name: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Unix seconds.
    pub mtime: i64,
    /// A symlink's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// A directory of a snapshot, a page of it at a time.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ListingView {
    /// The directory's path inside the snapshot (`""` for its root).
    pub path: String,
    /// Entries in the directory in all.
    pub total: usize,
    pub offset: usize,
    pub entries: Vec<EntryView>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LsQuery {
    #[serde(default)]
    path: String,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// `GET /volumes/{v}/snapshots/{s}/ls?path=&offset=&limit=`: one directory of a
/// snapshot, names sorted, at most `limit` (default 1,000, at most 10,000) entries.
async fn snapshot_ls(
    State(app): App,
    Path((volume, name)): Path<(String, String)>,
    Query(q): Query<LsQuery>,
) -> ApiResult<ListingView> {
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let store = app.store.clone();
    let out = tokio::task::spawn_blocking(move || -> anyhow::Result<ListingView> {
        let (dir, path) = crate::restore::resolve(&store, &volume, &name, &q.path)?;
        if dir.attr.kind != storage::FileKind::Dir {
            return Err(StoreError::Invalid(format!("{path:?} is not a directory")).into());
        }
        let children = store.snapshot_children(&dir)?;
        let entries = children
            .iter()
            .skip(q.offset)
            .take(limit)
            .map(|e| EntryView {
                name: String::from_utf8_lossy(&e.name).into_owned(),
                kind: match e.attr.kind {
                    storage::FileKind::File => "file",
                    storage::FileKind::Dir => "dir",
                    storage::FileKind::Symlink => "symlink",
                }
                .into(),
                size: e.attr.size,
                mode: e.attr.mode,
                uid: e.attr.uid,
                gid: e.attr.gid,
                mtime: e.attr.mtime.sec,
                link: (e.attr.kind == storage::FileKind::Symlink)
                    .then(|| String::from_utf8_lossy(&e.link).into_owned()),
            })
            .collect();
        Ok(ListingView {
            path,
            total: children.len(),
            offset: q.offset,
            entries,
        })
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))??;
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuery {
    path: String,
}

/// `GET /volumes/{v}/snapshots/{s}/file?path=`: one file of a snapshot, as it is.
async fn snapshot_file(
    State(app): App,
    Path((volume, name)): Path<(String, String)>,
    Query(q): Query<FileQuery>,
) -> Result<Response, ApiError> {
    let store = app.store.clone();
    let (f, path) = tokio::task::spawn_blocking(move || {
        crate::restore::resolve(&store, &volume, &name, &q.path)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))??;
    if f.attr.kind != storage::FileKind::File {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("{path:?} is not a file"),
        ));
    }
    let size = f.attr.size;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<axum::body::Bytes>>(4);
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut off = 0u64;
        while off < size {
            let want = (size - off).min(1 << 20) as u32;
            let piece = match store.snap_read(&f, off, want) {
                Ok((data, _)) if !data.is_empty() => data,
                Ok(_) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other("file ended early")));
                    return;
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            };
            off += piece.len() as u64;
            if tx.blocking_send(Ok(piece.into())).is_err() {
                return; // the client went away
            }
        }
    });
    let file_name = path
        .rsplit('/')
        .next()
        .unwrap_or("file")
        .replace(['"', '\\'], "_");
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", file_name.escape_default()),
            ),
        ],
        body,
    )
        .into_response())
}

/// A volume's settings as the config gives them, and in words.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct VolumeConfigView {
    pub volume: String,
    pub settings: crate::config::VolumeToml,
    /// Each schedule in words with its time zone and quiet wait: "every day at 01:00
    /// Asia/Tokyo, after 10 min quiet (at most 2h)".
    pub schedules: Vec<String>,
    /// The retention policy in words.
    pub retention: String,
    pub prune_schedule: Option<String>,
    pub restore_test_schedule: Option<String>,
}

/// `GET /volumes/{volume}/config`: the volume's settings, and in words.
async fn volume_config(State(app): App, Path(volume): Path<String>) -> ApiResult<VolumeConfigView> {
    let v = volume.clone();
    blocking(&app, move |s| s.volume(&v)).await?;
    let st = app.cfg.volume(&volume);
    let tz = &st.timezone;
    let quiet = st.quiet_secs.map(|q| {
        let q = match q {
            q if q % 3600 == 0 && q > 0 => format!("{} h", q / 3600),
            q if q % 60 == 0 && q > 0 => format!("{} min", q / 60),
            q => format!("{q} s"),
        };
        format!(
            ", after {q} quiet (at most {})",
            st.max_wait.as_deref().unwrap_or("2h")
        )
    });
    let words = |e: &String| format!("{} {tz}", crate::schedule::describe_cron(e));
    Ok(Json(VolumeConfigView {
        schedules: st
            .schedule
            .iter()
            .map(|e| format!("{}{}", words(e), quiet.as_deref().unwrap_or("")))
            .collect(),
        retention: st.policy().describe(),
        prune_schedule: st.prune_schedule.as_ref().map(words),
        restore_test_schedule: st.restore_test_schedule.as_ref().map(words),
        settings: st,
        volume,
    }))
}

async fn running_jobs(State(app): App) -> Json<Vec<crate::jobs::RunningView>> {
    Json(app.running_jobs())
}

async fn metrics(State(app): App) -> Result<Response, ApiError> {
    let status = crate::status::gather(&app).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(&status),
    )
        .into_response())
}

async fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such endpoint (see docs/api.md)".into(),
    )
}

/// Refuses a call that acts with the daemon's rights (writes where the caller says)
/// unless it carries the token, even on loopback: whoever can read
/// `<data_dir>/api-token` can act as the daemon anyway.
async fn require_token(
    app: &Arc<Appliance>,
    headers: &axum::http::HeaderMap,
    what: &str,
) -> Result<(), ApiError> {
    let data_dir = app.cfg.data_dir.clone();
    let token = tokio::task::spawn_blocking(move || load_or_make_token(&data_dir))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))??;
    if !bearer_is(headers, &token) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            format!("{what} needs the bearer token (see <data_dir>/api-token)"),
        ));
    }
    Ok(())
}

/// Whether a Host header names a loopback address or `localhost` (any port).
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// On a loopback address without a token, refuses a request whose Host is not a
/// loopback name: a web page whose own name its DNS rebinds to 127.0.0.1 would
/// otherwise reach the API and the console from the operator's browser. A request
/// with no Host at all is not a browser's. Layered over the whole server (the API and
/// the console) by [`crate::console::server`].
pub async fn loopback_names_only(req: Request, next: Next) -> Response {
    if let Some(host) = req.headers().get(header::HOST) {
        if !host.to_str().is_ok_and(loopback_host) {
            return ApiError(
                StatusCode::MISDIRECTED_REQUEST,
                "on a loopback address kura answers only to a loopback or localhost name".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Refuses a request without the token, when one is required.
async fn check_token(
    State(token): State<Option<Arc<String>>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(token) = token {
        if !bearer_is(req.headers(), &token) && req.uri().path() != "/healthz" {
            return ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (see <data_dir>/api-token)".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Whether the request carries `token` as its bearer token.
fn bearer_is(headers: &axum::http::HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()))
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The API's routes. `token`: required on every call but `/healthz` when `Some`.
pub fn router(app: Arc<Appliance>, token: Option<Arc<String>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/volumes", get(list_volumes).post(create_volume))
        .route("/snapshots", get(list_snapshots))
        .route(
            "/volumes/{volume}/snapshots",
            get(volume_snapshots).post(create_snapshot),
        )
        .route(
            "/volumes/{volume}/snapshots/{name}",
            get(show_snapshot).delete(delete_snapshot),
        )
        .route("/volumes/{volume}/snapshots/{name}/hold", post(hold))
        .route("/volumes/{volume}/snapshots/{name}/release", post(release))
        .route(
            "/volumes/{volume}/snapshots/{name}/clone",
            post(clone_snapshot),
        )
        .route("/volumes/{volume}/snapshots/{name}/tar", get(snapshot_tar))
        .route("/volumes/{volume}/snapshots/{name}/ls", get(snapshot_ls))
        .route(
            "/volumes/{volume}/snapshots/{name}/file",
            get(snapshot_file),
        )
        .route(
            "/volumes/{volume}/snapshots/{name}/restore",
            post(restore_into),
        )
        .route("/volumes/{volume}/diff", get(diff))
        .route("/volumes/{volume}/config", get(volume_config))
        .route("/volumes/{volume}/restore-test", post(restore_test))
        .route("/volumes/{volume}/replicate", post(replicate))
        .route(
            "/volumes/{volume}/import",
            post(import).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/platform-snapshot", post(platform_snapshot))
        .route("/gc", post(gc))
        .route("/prune", post(prune))
        .route("/verify", post(verify))
        .route("/ingest", post(ingest))
        .route("/jobs", get(jobs))
        .route("/jobs/running", get(running_jobs))
        .fallback(not_found)
        .with_state(app)
        .layer(middleware::from_fn_with_state(token, check_token))
}

/// Reads the API token of a data directory, making one (mode 0600) if there is none.
pub fn load_or_make_token(data_dir: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let p = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&p) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    }
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
        .context("reading /dev/urandom")?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&p)
        .with_context(|| format!("creating {}", p.display()))?;
    writeln!(f, "{token}")
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", p.display()))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_must_match() {
        let with = |v: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert!(bearer_is(&with("Bearer abc123"), "abc123"));
        assert!(
            bearer_is(&with("Bearer abc123\t"), "abc123"),
            "trailing space"
        );
        assert!(!bearer_is(&with("Bearer abc124"), "abc123"));
        assert!(!bearer_is(&with("Bearer abc12"), "abc123"), "a prefix");
        assert!(!bearer_is(&with("Basic abc123"), "abc123"));
        assert!(!bearer_is(&axum::http::HeaderMap::new(), "abc123"));
    }

    #[test]
    fn loopback_names() {
        for h in [
            "127.0.0.1:8080",
            "localhost:1",
            "LOCALHOST",
            "[::1]:80",
            "127.1.2.3",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "evil.example:8080",
            "10.0.0.1:80",
            "",
            "localhost.evil.example",
            "[::2]:80",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }
}
