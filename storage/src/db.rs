//! The SQLite metadata database: schema, its migrations, opening, and the WAL fsync
//! used by group commit.
//!
//! One writer connection behind a mutex, and a pool of read-only connections
//! ([`Db::reader`]) for reads outside a transaction (file data, attributes, lookups,
//! listings), which WAL lets read while the writer writes.
//! WAL mode with `synchronous=NORMAL`: a committed transaction survives a killed
//! process at once, and survives power loss once the WAL is fsynced, which
//! [`Db::sync_wal`] does for every durable (`sync`) request. The mutex is always taken
//! last (after staging and pack locks) and never held across I/O on chunk data.

use crate::durable::Latch;
use crate::error::{DbContext, Result, StoreError};
use crate::format::STORE_FORMAT;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS volumes(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT UNIQUE NOT NULL,
  root INTEGER NOT NULL,
  created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS inodes(
  ino INTEGER PRIMARY KEY AUTOINCREMENT,
  vol INTEGER NOT NULL,
  kind INTEGER NOT NULL,
  mode INTEGER NOT NULL,
  uid INTEGER NOT NULL,
  gid INTEGER NOT NULL,
  size INTEGER NOT NULL DEFAULT 0,
  atime_s INTEGER NOT NULL, atime_ns INTEGER NOT NULL,
  mtime_s INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
  ctime_s INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
  content BLOB,
  target BLOB,
  tree BLOB,
  verf BLOB,
  nlink INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS entries(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  parent INTEGER NOT NULL,
  name BLOB NOT NULL,
  ino INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS entries_name ON entries(parent, name);
-- Listing pages by entry-id cookie (the index holds (parent, id)).
CREATE INDEX IF NOT EXISTS entries_listing ON entries(parent);
-- The names of one inode (link counts, cache invalidation, parents).
CREATE INDEX IF NOT EXISTS entries_ino ON entries(ino);
CREATE TABLE IF NOT EXISTS chunks(
  id BLOB PRIMARY KEY,
  pack INTEGER NOT NULL,
  offset INTEGER NOT NULL,
  stored_len INTEGER NOT NULL,
  raw_len INTEGER NOT NULL,
  kind INTEGER NOT NULL,
  flags INTEGER NOT NULL DEFAULT 0,
  inner_off INTEGER NOT NULL DEFAULT -1) WITHOUT ROWID;
-- Chunks by where they are: a pack's rows (GC, verify) and a record's members (a
-- sequential read finds the next chunks of a file in the record it is reading without
-- a lookup each). Replaces chunks_pack(pack), which a store of an earlier build has
-- and which that build makes again: dropping it keeps one index to maintain.
CREATE INDEX IF NOT EXISTS chunks_place ON chunks(pack, offset, inner_off, raw_len, flags);
DROP INDEX IF EXISTS chunks_pack;
CREATE TABLE IF NOT EXISTS packs(id INTEGER PRIMARY KEY, sealed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS snapshots(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  vol INTEGER NOT NULL,
  name TEXT NOT NULL,
  root BLOB NOT NULL,
  root_entry BLOB NOT NULL,
  created_s INTEGER NOT NULL,
  created_ns INTEGER NOT NULL,
  logical_bytes INTEGER NOT NULL DEFAULT 0,
  label TEXT,
  held INTEGER NOT NULL DEFAULT 0,
  lock_until INTEGER NOT NULL DEFAULT 0,
  busy INTEGER NOT NULL DEFAULT 0,
  UNIQUE(vol, name));
CREATE TABLE IF NOT EXISTS jobs(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  kind TEXT NOT NULL,
  volume TEXT,
  started_ms INTEGER NOT NULL,
  ended_ms INTEGER NOT NULL,
  result TEXT NOT NULL,
  error TEXT,
  snapshot TEXT,
  bytes INTEGER NOT NULL DEFAULT 0,
  frozen_at_ms INTEGER,
  freeze_ms INTEGER,
  window_ms INTEGER,
  output TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS jobs_volume ON jobs(volume, id);
CREATE TABLE IF NOT EXISTS ingest_parts(
  ino INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  leaf BLOB NOT NULL,
  PRIMARY KEY(ino, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS staged_copies(
  ino INTEGER PRIMARY KEY,
  data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS damaged(
  id BLOB PRIMARY KEY,
  pack INTEGER NOT NULL,
  offset INTEGER NOT NULL,
  found INTEGER NOT NULL,
  detail TEXT NOT NULL) WITHOUT ROWID;
"#;

/// Format 1 and 2 kept a file's one name in its inode row (`parent`, `name`); format 3
/// moves names to `entries` (hard links) and counts them in `nlink`. One transaction:
/// a store interrupted halfway is still the old format and migrates at the next open.
/// Entry ids are the old file ids, so READDIR cookies handed out before stay valid,
/// and both id sequences continue from the old one (ids are never reused).
fn migrate_to_v3(conn: &mut Connection, from: u32) -> Result<()> {
    let t0 = std::time::Instant::now();
    let tx = conn.transaction().ctx("begin format 3 migration")?;
    let has_parent: bool = tx
        .query_row(
            "SELECT count(*) FROM pragma_table_info('inodes') WHERE name='parent'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .ctx("reading the inode table layout")?
        > 0;
    if !has_parent {
        return Err(StoreError::Format(format!(
            "store says format {from} but its inode table has no names"
        )));
    }
    let seq: i64 = tx
        .query_row(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name='inodes'), \
               (SELECT max(ino) FROM inodes), 0)",
            [],
            |r| r.get(0),
        )
        .ctx("reading the file id sequence")?;
    tx.execute_batch(
        "ALTER TABLE inodes RENAME TO inodes_v2;
         DROP INDEX IF EXISTS inodes_dirent;
         DROP INDEX IF EXISTS inodes_listing;",
    )
    .ctx("migrating to format 3")?;
    tx.execute_batch(SCHEMA).ctx("migrating to format 3")?;
    let files = tx
        .execute(
            "INSERT INTO inodes(ino, vol, kind, mode, uid, gid, size, atime_s, atime_ns,
               mtime_s, mtime_ns, ctime_s, ctime_ns, content, target, tree, verf, nlink)
             SELECT ino, vol, kind, mode, uid, gid, size, atime_s, atime_ns,
               mtime_s, mtime_ns, ctime_s, ctime_ns, content, target, tree, verf, 1
             FROM inodes_v2 ORDER BY ino",
            [],
        )
        .ctx("migrating inodes")?;
    tx.execute(
        "INSERT INTO entries(id, parent, name, ino)
         SELECT ino, parent, name, ino FROM inodes_v2 WHERE parent != 0 ORDER BY ino",
        [],
    )
    .ctx("migrating names")?;
    tx.execute_batch("DROP TABLE inodes_v2;")
        .ctx("migrating to format 3")?;
    for t in ["inodes", "entries"] {
        tx.execute("DELETE FROM sqlite_sequence WHERE name=?1", [t])
            .ctx("migrating id sequences")?;
        tx.execute(
            "INSERT INTO sqlite_sequence(name, seq) VALUES(?1, ?2)",
            params![t, seq],
        )
        .ctx("migrating id sequences")?;
    }
    tx.execute("UPDATE meta SET value=3 WHERE key='format'", [])
        .ctx("recording format 3")?;
    tx.commit().ctx("commit format 3 migration")?;
    tracing::info!(
        from,
        files,
        ms = t0.elapsed().as_millis() as u64,
        "store migrated to format 3 (hard links)"
    );
    Ok(())
}

/// Format 4 gives snapshots a label, a hold, a lock date and a busy mark, and adds
/// the job history (`jobs`, created by the schema). Adding columns is cheap whatever
/// the store's size; an older kura refuses the store afterwards.
fn migrate_to_v4(conn: &Connection) -> Result<()> {
    let mut cols = Vec::new();
    {
        let mut st = conn
            .prepare("PRAGMA table_info(snapshots)")
            .ctx("reading the snapshots table")?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(1))
            .ctx("reading the snapshots table")?;
        for r in rows {
            cols.push(r.ctx("reading the snapshots table")?);
        }
    }
    for (col, def) in [
        ("label", "label TEXT"),
        ("held", "held INTEGER NOT NULL DEFAULT 0"),
        ("lock_until", "lock_until INTEGER NOT NULL DEFAULT 0"),
        ("busy", "busy INTEGER NOT NULL DEFAULT 0"),
    ] {
        if !cols.iter().any(|c| c == col) {
            conn.execute_batch(&format!("ALTER TABLE snapshots ADD COLUMN {def}"))
                .ctx("migrating to format 4")?;
        }
    }
    Ok(())
}

/// Whether the schema has index `name`.
fn has_index(conn: &Connection, name: &str) -> Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type='index' AND name=?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .ctx("reading the schema")
}

/// The writer connection, held (see [`Db::lock`]).
pub struct Writer<'a> {
    conn: MutexGuard<'a, Connection>,
    released: &'a AtomicU64,
}

impl std::ops::Deref for Writer<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        self.released.fetch_add(1, Ordering::AcqRel);
    }
}

/// SQLite's `unix-excl` VFS: the first connection takes one exclusive lock on the
/// database file for the process, and every later lock between this process's
/// connections is kept in memory, as is the WAL index (no `-shm` file). Only the
/// process holding the store lock opens `kura.db`, so nobody else needs those locks;
/// the default VFS made ~25 `fcntl` calls per small file created over NFS (a read
/// transaction takes and drops two or more).
const VFS: &str = "unix-excl";

pub struct Db {
    conn: Mutex<Connection>,
    /// Read-only connections for the read path (WAL lets them read while the writer
    /// connection writes), so that reads never wait on one another or on metadata
    /// changes for the one connection's mutex.
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
    /// Group commit of WAL fsyncs: (requests served up to, sync in progress, the count
    /// of writer releases the last completed fsync covered).
    wal_sync: Mutex<(u64, bool, Option<u64>)>,
    /// How often the writer connection was let go (see [`Db::lock`]).
    released: AtomicU64,
    wal_cv: Condvar,
    wal_seq: std::sync::atomic::AtomicU64,
    /// Moving average of the WAL's fsyncs, in ns (see [`Db::sync_is_quick`]).
    sync_avg_ns: AtomicU64,
}

/// An fsync of the WAL this quick on average counts as quick: a flash device's.
pub const QUICK_SYNC: std::time::Duration = std::time::Duration::from_millis(2);

impl Db {
    pub fn open(path: &Path) -> Result<Db> {
        let mut conn = Connection::open_with_flags_and_vfs(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            VFS,
        )
        .ctx("opening kura.db")?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF;
             PRAGMA cache_size=-16384; PRAGMA busy_timeout=5000;",
        )
        .ctx("setting pragmas")?;
        // A write transaction takes the write lock when it begins, where SQLite waits
        // for a busy lock (busy_timeout). A deferred one that reads first and then
        // writes gets SQLITE_BUSY at once if the lock is busy at that moment, and a
        // reader takes it for an instant when it catches the WAL index header
        // mid-update: a CREATE failed with "database is locked" that way under four
        // clients creating small files.
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;",
        )
        .ctx("creating schema")?;
        let fmt: Option<u32> = conn
            .query_row("SELECT value FROM meta WHERE key='format'", [], |r| {
                r.get(0)
            })
            .optional()
            .ctx("reading store format")?;
        match fmt {
            Some(v) if v > STORE_FORMAT => {
                return Err(StoreError::Format(format!(
                    "store format {v} is newer than this kura understands ({STORE_FORMAT})"
                )))
            }
            Some(v) if v < 3 => migrate_to_v3(&mut conn, v)?,
            _ => {}
        }
        if fmt.is_some_and(|v| v < 4) {
            migrate_to_v4(&conn)?;
        }
        if fmt.is_some() && !has_index(&conn, "chunks_place")? {
            tracing::info!("building the index of chunks by place (once, on this store's first open by this build)");
        }
        conn.execute_batch(SCHEMA).ctx("creating schema")?;
        match fmt {
            None => {
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES('format', ?1)",
                    params![STORE_FORMAT],
                )
                .ctx("recording store format")?;
            }
            Some(v) if v < STORE_FORMAT => {
                conn.execute(
                    "UPDATE meta SET value=?1 WHERE key='format'",
                    params![STORE_FORMAT],
                )
                .ctx("recording the store format upgrade")?;
            }
            Some(_) => {}
        }
        Ok(Db {
            conn: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            path: path.to_owned(),
            wal_sync: Mutex::new((0, false, None)),
            released: AtomicU64::new(0),
            wal_cv: Condvar::new(),
            wal_seq: Default::default(),
            // Unknown until measured: not quick.
            sync_avg_ns: AtomicU64::new(QUICK_SYNC.as_nanos() as u64 * 8),
        })
    }

    /// A new read-only connection (the pool's, see [`Db::reader`]). Opened read-write
    /// with `query_only` set: `unix-excl` takes its locks in memory only for
    /// connections that may write (a read-only one makes a system call per lock).
    fn open_reader(&self) -> Result<Connection> {
        let c = Connection::open_with_flags_and_vfs(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            VFS,
        )
        .ctx("opening reader connection")?;
        c.execute_batch(
            "PRAGMA query_only=ON; PRAGMA busy_timeout=5000; PRAGMA cache_size=-16384;",
        )
        .ctx("setting reader pragmas")?;
        Ok(c)
    }

    /// A read-only connection from the pool (opened when none is free), given back when
    /// dropped. Sees every transaction committed before the statement runs.
    pub fn reader(&self) -> Result<Reader<'_>> {
        let pooled = self.readers.lock().unwrap().pop();
        let conn = match pooled {
            Some(c) => c,
            None => self.open_reader()?,
        };
        Ok(Reader {
            db: self,
            conn: Some(conn),
        })
    }

    /// The writer connection. Letting it go counts as a possible change of the WAL,
    /// which is how [`Db::sync_wal`] knows when it has nothing to make durable.
    pub fn lock(&self) -> Writer<'_> {
        self.writer(self.conn.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The writer connection if nobody holds it now (see [`Db::lock`]).
    pub fn try_lock(&self) -> Option<Writer<'_>> {
        match self.conn.try_lock() {
            Ok(c) => Some(self.writer(c)),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(self.writer(e.into_inner())),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    fn writer<'a>(&'a self, conn: MutexGuard<'a, Connection>) -> Writer<'a> {
        Writer {
            conn,
            released: &self.released,
        }
    }

    /// Whether the WAL's recent fsyncs were quick (an average under
    /// [`QUICK_SYNC`]), so that a caller may wait for the next one in place.
    pub fn sync_is_quick(&self) -> bool {
        self.sync_avg_ns.load(Ordering::Relaxed) < QUICK_SYNC.as_nanos() as u64
    }

    /// Makes every transaction committed before this call durable against power loss.
    /// Concurrent callers share one fsync (group commit).
    pub fn sync_wal(&self, latch: &Latch) -> Result<()> {
        use std::sync::atomic::Ordering;
        let my = self.wal_seq.fetch_add(1, Ordering::AcqRel) + 1;
        let mut g = self.wal_sync.lock().unwrap();
        loop {
            if g.0 >= my {
                return Ok(());
            }
            if !g.1 {
                g.1 = true;
                let target = self.wal_seq.load(Ordering::Acquire);
                // Every commit before this call let the writer go before it: when no
                // writer was let go since the last fsync began, the WAL holds nothing
                // that fsync did not cover (a COMMIT after a small file's copy made
                // durable, a second COMMIT of the same file).
                let released = self.released.load(Ordering::Acquire);
                let skip = g.2 == Some(released);
                drop(g);
                let r = if skip {
                    Ok(())
                } else {
                    let t0 = std::time::Instant::now();
                    let r = self.fsync_wal(latch);
                    // A moving average over ~8 fsyncs.
                    let took = t0.elapsed().as_nanos().min(u64::MAX as u128) as u64;
                    let avg = self.sync_avg_ns.load(Ordering::Relaxed);
                    self.sync_avg_ns
                        .store(avg - avg / 8 + took / 8, Ordering::Relaxed);
                    r
                };
                g = self.wal_sync.lock().unwrap();
                g.1 = false;
                if r.is_ok() {
                    g.0 = g.0.max(target);
                    g.2 = Some(released);
                }
                self.wal_cv.notify_all();
                r?;
            } else {
                g = self.wal_cv.wait(g).unwrap();
            }
        }
    }

    fn fsync_wal(&self, latch: &Latch) -> Result<()> {
        let wal = self.path.with_extension("db-wal");
        match std::fs::File::open(&wal) {
            Ok(f) => latch.sync_file(&f, &wal, true),
            // No WAL file: everything is checkpointed into the main file, which SQLite
            // fsyncs during checkpoints.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("open WAL", &wal, e)),
        }
    }

    /// Readers kept open for reuse; more may be open at a busy moment.
    const POOLED_READERS: usize = 8;

    /// Whether bytes only in the page cache may have been lost since the last run: it
    /// did not stop cleanly *and* the machine booted since (`boot_id` differs). Decides
    /// the write verifier and which of a small file's copy and staging file is newer.
    pub fn went_down(conn: &Connection, boot_id: &str) -> Result<bool> {
        let clean = Self::meta_get::<i64>(conn, "clean_shutdown")?.unwrap_or(1) == 1;
        let last_boot: Option<String> = Self::meta_get(conn, "boot_id")?;
        Ok(!clean && last_boot.as_deref() != Some(boot_id))
    }

    /// A value of the `meta` table (this module owns it).
    pub fn meta_get<T: rusqlite::types::FromSql>(
        conn: &Connection,
        key: &str,
    ) -> Result<Option<T>> {
        conn.query_row("SELECT value FROM meta WHERE key=?1", [key], |r| r.get(0))
            .optional()
            .ctx("reading meta")
    }

    pub fn meta_set<T: rusqlite::ToSql>(conn: &Connection, key: &str, v: T) -> Result<()> {
        conn.execute(
            "INSERT INTO meta(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value=?2",
            params![key, v],
        )
        .ctx("writing meta")?;
        Ok(())
    }
}

/// A pooled read-only connection (see [`Db::reader`]).
pub struct Reader<'a> {
    db: &'a Db,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("present until drop")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let mut pool = self.db.readers.lock().unwrap();
            if pool.len() < Db::POOLED_READERS {
                pool.push(c);
            }
        }
    }
}
