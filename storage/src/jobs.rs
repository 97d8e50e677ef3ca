//! The job history: what the appliance ran (snapshot, prune, gc, verify, restore test),
//! when, on which volume, and how it ended. Kept in the store so that it survives
//! restarts and travels with the data.
//!
//! This module owns the `jobs` table.

use crate::error::{DbContext, Result};
use crate::store::Store;
use rusqlite::{params, Connection};

/// One finished job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobRecord {
    /// Assigned when recorded; 0 before.
    pub id: u64,
    /// `snapshot`, `prune`, `gc`, `verify`, `restore-test`, ...
    pub kind: String,
    pub volume: Option<String>,
    /// Unix milliseconds.
    pub started_ms: i64,
    pub ended_ms: i64,
    /// `ok`, `failed` or `aborted`.
    pub result: String,
    pub error: Option<String>,
    pub snapshot: Option<String>,
    /// Bytes the job moved or checked (what that means depends on the kind).
    pub bytes: u64,
    /// Snapshot jobs: when the gate closed (unix milliseconds), how long the volume was
    /// frozen, and the window a client saw (from the first held call to the thaw).
    pub frozen_at_ms: Option<i64>,
    pub freeze_ms: Option<u64>,
    pub window_ms: Option<u64>,
    /// The tail of the hooks' output and the job's own notes.
    pub output: String,
}

/// Most output kept per job; a longer output keeps its end.
pub const OUTPUT_TAIL: usize = 8 << 10;

fn tail(s: &str) -> &str {
    if s.len() <= OUTPUT_TAIL {
        return s;
    }
    let mut at = s.len() - OUTPUT_TAIL;
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

fn insert(conn: &Connection, j: &JobRecord) -> Result<u64> {
    conn.execute(
        "INSERT INTO jobs(kind, volume, started_ms, ended_ms, result, error, snapshot, bytes,
                          frozen_at_ms, freeze_ms, window_ms, output)
         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            j.kind,
            j.volume,
            j.started_ms,
            j.ended_ms,
            j.result,
            j.error,
            j.snapshot,
            j.bytes as i64,
            j.frozen_at_ms,
            j.freeze_ms.map(|v| v as i64),
            j.window_ms.map(|v| v as i64),
            tail(&j.output),
        ],
    )
    .ctx("recording job")?;
    Ok(conn.last_insert_rowid() as u64)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        id: r.get::<_, i64>(0)? as u64,
        kind: r.get(1)?,
        volume: r.get(2)?,
        started_ms: r.get(3)?,
        ended_ms: r.get(4)?,
        result: r.get(5)?,
        error: r.get(6)?,
        snapshot: r.get(7)?,
        bytes: r.get::<_, i64>(8)? as u64,
        frozen_at_ms: r.get(9)?,
        freeze_ms: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
        window_ms: r.get::<_, Option<i64>>(11)?.map(|v| v as u64),
        output: r.get(12)?,
    })
}

/// Records a finished job (durably) and returns its id.
pub(crate) fn record(store: &Store, j: &JobRecord) -> Result<u64> {
    store.latch.check()?;
    let id = insert(&store.db.lock(), j)?;
    store.db.sync_wal(&store.latch)?;
    Ok(id)
}

/// The kind of the records that are measurements, not jobs (a volume's stored bytes,
/// made after each GC): listed only when asked for by kind.
pub const USAGE_KIND: &str = "usage";

/// The newest `limit` records (of one volume, or all), newest first: of `kind`, or
/// every job but the [`USAGE_KIND`] measurements when `kind` is `None`.
pub(crate) fn list(
    store: &Store,
    volume: Option<&str>,
    kind: Option<&str>,
    limit: usize,
) -> Result<Vec<JobRecord>> {
    let conn = store.db.lock();
    let mut st = conn
        .prepare_cached(
            "SELECT id, kind, volume, started_ms, ended_ms, result, error, snapshot, bytes,
                    frozen_at_ms, freeze_ms, window_ms, output
             FROM jobs WHERE (?1 IS NULL OR volume = ?1)
               AND (kind = ?2 OR (?2 IS NULL AND kind != ?3))
             ORDER BY id DESC LIMIT ?4",
        )
        .ctx("listing jobs")?;
    let rows = st
        .query_map(params![volume, kind, USAGE_KIND, limit as i64], row)
        .ctx("listing jobs")?;
    rows.map(|r| r.ctx("listing jobs")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_its_tail_on_char_boundaries() {
        let s = "é".repeat(OUTPUT_TAIL);
        let t = tail(&s);
        assert!(t.len() <= OUTPUT_TAIL && t.len() >= OUTPUT_TAIL - 1);
        assert!(t.chars().all(|c| c == 'é'));
        assert_eq!(tail("short"), "short");
    }
}
