//! `GET /metrics` in the Prometheus text format: NFS calls by procedure with latency
//! histograms, bytes in and out, the ingest backlog, the freeze window histogram, job
//! results, and each volume's RPO age. Counters are updated as things happen; gauges
//! of the store are read when scraped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcLabel {
    pub procedure: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabel {
    pub volume: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub volume: String,
    pub target: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub nfs_seconds: Family<ProcLabel, Histogram>,
    pub nfs_bytes_in: Counter,
    pub nfs_bytes_out: Counter,
    pub freeze_window: Histogram,
    pub jobs: Family<JobLabel, Counter>,
    pub rpo_age: Family<VolumeLabel, Gauge>,
    pub volume_bytes: Family<VolumeLabel, Gauge>,
    pub volume_stored: Family<VolumeLabel, Gauge>,
    pub volume_staged: Family<VolumeLabel, Gauge>,
    pub staged_files: Gauge,
    pub read_cache_bytes: Gauge,
    pub stored_bytes: Gauge,
    pub fs_free_bytes: Gauge<i64, AtomicI64>,
    pub ingested_bytes: Counter<u64, AtomicU64>,
    pub dr_age: Family<TargetLabel, Gauge>,
    pub dr_ok: Family<TargetLabel, Gauge>,
    pub dr_sent: Family<TargetLabel, Counter>,
}

use std::sync::atomic::AtomicI64;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("kura")),
            nfs_seconds: Family::new_with_constructor(|| {
                // 50 µs .. ~13 s
                Histogram::new(exponential_buckets(0.000_05, 4.0, 10))
            }),
            nfs_bytes_in: Counter::default(),
            nfs_bytes_out: Counter::default(),
            // 1 ms .. ~16 s
            freeze_window: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            jobs: Family::default(),
            rpo_age: Family::default(),
            volume_bytes: Family::default(),
            volume_stored: Family::default(),
            volume_staged: Family::default(),
            staged_files: Gauge::default(),
            read_cache_bytes: Gauge::default(),
            stored_bytes: Gauge::default(),
            fs_free_bytes: Gauge::default(),
            ingested_bytes: Counter::default(),
            dr_age: Family::default(),
            dr_ok: Family::default(),
            dr_sent: Family::default(),
        };
        {
            let mut r = m.registry.lock().unwrap();
            r.register(
                "nfs_call_seconds",
                "NFS calls served, by procedure, and how long each took",
                m.nfs_seconds.clone(),
            );
            r.register(
                "nfs_received_bytes",
                "Bytes of NFS call arguments",
                m.nfs_bytes_in.clone(),
            );
            r.register(
                "nfs_sent_bytes",
                "Bytes of NFS replies",
                m.nfs_bytes_out.clone(),
            );
            r.register(
                "freeze_window_seconds",
                "Snapshot freeze windows: first held client call to the thaw",
                m.freeze_window.clone(),
            );
            r.register("jobs", "Jobs ended, by kind and result", m.jobs.clone());
            r.register(
                "rpo_age_seconds",
                "Age of each volume's newest snapshot",
                m.rpo_age.clone(),
            );
            r.register(
                "volume_logical_bytes",
                "Sum of each volume's file sizes",
                m.volume_bytes.clone(),
            );
            r.register(
                "volume_stored_bytes",
                "Bytes in packs of what each volume's files and snapshots reach (measured after GC)",
                m.volume_stored.clone(),
            );
            r.register(
                "volume_staged_bytes",
                "Bytes each volume has written and not yet ingested",
                m.volume_staged.clone(),
            );
            r.register(
                "staged_files",
                "Files written and not yet ingested (ingest backlog)",
                m.staged_files.clone(),
            );
            r.register(
                "read_cache_bytes",
                "Decoded chunk records held in memory (bounded by read_cache_mib)",
                m.read_cache_bytes.clone(),
            );
            r.register(
                "stored_bytes",
                "Bytes the stored chunks take after dedup and compression",
                m.stored_bytes.clone(),
            );
            r.register(
                "fs_free_bytes",
                "Free bytes of the filesystem holding the store",
                m.fs_free_bytes.clone(),
            );
            r.register(
                "snapshot_preflush_bytes",
                "Bytes ingested by snapshot jobs' pre-flush",
                m.ingested_bytes.clone(),
            );
            r.register(
                "dr_copy_age_seconds",
                "Age of the newest snapshot each DR target holds of each volume (the DR RPO)",
                m.dr_age.clone(),
            );
            r.register(
                "dr_last_ok",
                "1 when the last replication of the volume to the target succeeded",
                m.dr_ok.clone(),
            );
            r.register(
                "dr_sent_bytes",
                "Bytes replication sent to each target, by volume",
                m.dr_sent.clone(),
            );
        }
        m
    }

    /// Records an NFS call (the protocol's observer).
    pub fn nfs_call(
        &self,
        procedure: &'static str,
        took: std::time::Duration,
        bytes_in: usize,
        bytes_out: usize,
    ) {
        self.nfs_seconds
            .get_or_create(&ProcLabel { procedure })
            .observe(took.as_secs_f64());
        self.nfs_bytes_in.inc_by(bytes_in as u64);
        self.nfs_bytes_out.inc_by(bytes_out as u64);
    }

    /// Records a finished job.
    pub fn job(&self, j: &storage::JobRecord) {
        self.jobs
            .get_or_create(&JobLabel {
                kind: j.kind.clone(),
                result: j.result.clone(),
            })
            .inc();
        if let Some(w) = j.window_ms {
            self.freeze_window.observe(w as f64 / 1000.0);
        }
        if j.kind == "snapshot" {
            self.ingested_bytes.inc_by(j.bytes);
        }
    }

    /// Records a replication job's bytes (the job itself goes through [`Metrics::job`]).
    pub fn replicated(&self, volume: &str, target: &str, j: &storage::JobRecord) {
        self.dr_sent
            .get_or_create(&TargetLabel {
                volume: volume.into(),
                target: target.into(),
            })
            .inc_by(j.bytes);
    }

    /// The text exposition, after the store's gauges are set from `status`.
    pub fn encode(&self, status: &crate::status::Status) -> String {
        self.staged_files.set(status.store.staged_files as i64);
        self.read_cache_bytes
            .set(status.store.read_cache_bytes as i64);
        self.stored_bytes.set(status.store.stored_bytes as i64);
        self.fs_free_bytes.set(status.store.fs_free_bytes as i64);
        for v in &status.volumes {
            let l = VolumeLabel {
                volume: v.name.clone(),
            };
            self.volume_bytes
                .get_or_create(&l)
                .set(v.logical_bytes as i64);
            if let Some(a) = v.newest_snapshot_age_secs {
                self.rpo_age.get_or_create(&l).set(a);
            }
            if let Some(b) = v.stored_bytes {
                self.volume_stored.get_or_create(&l).set(b as i64);
            }
            self.volume_staged
                .get_or_create(&l)
                .set(v.staged_bytes as i64);
            for d in &v.dr {
                let tl = TargetLabel {
                    volume: v.name.clone(),
                    target: d.target.clone(),
                };
                if let Some(a) = d.newest_snapshot_age_secs {
                    self.dr_age.get_or_create(&tl).set(a);
                }
                self.dr_ok
                    .get_or_create(&tl)
                    .set((d.last_result == "ok") as i64);
            }
        }
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::text::encode(&mut out, &self.registry.lock().unwrap())
        {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}
