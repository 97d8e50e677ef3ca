//! The SQLite metadata database: schema, opening, and the WAL fsync used by group commit.
//!
//! One writer connection behind a mutex, and a pool of read-only connections
//! ([`Db::reader`]) for the read path, which WAL lets read while the writer writes.
//! WAL mode with `synchronous=NORMAL`: a committed transaction survives a killed
//! process at once, and survives power loss once the WAL is fsynced, which
//! [`Db::sync_wal`] does for every durable (`sync`) request. The mutex is always taken
//! last (after staging and pack locks) and never held across I/O on chunk data.

use crate::durable::Latch;
use crate::error::{DbContext, Result, StoreError};
use crate::format::STORE_FORMAT;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
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
  parent INTEGER NOT NULL,
  name BLOB NOT NULL,
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
  verf BLOB);
CREATE UNIQUE INDEX IF NOT EXISTS inodes_dirent ON inodes(parent, name);
-- Listing pages by file-id cookie: without it each page scanned the whole directory.
CREATE INDEX IF NOT EXISTS inodes_listing ON inodes(parent, ino);
CREATE TABLE IF NOT EXISTS chunks(
  id BLOB PRIMARY KEY,
  pack INTEGER NOT NULL,
  offset INTEGER NOT NULL,
  stored_len INTEGER NOT NULL,
  raw_len INTEGER NOT NULL,
  kind INTEGER NOT NULL,
  flags INTEGER NOT NULL DEFAULT 0,
  inner_off INTEGER NOT NULL DEFAULT -1) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_pack ON chunks(pack);
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
  UNIQUE(vol, name));
CREATE TABLE IF NOT EXISTS ingest_parts(
  ino INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  leaf BLOB NOT NULL,
  PRIMARY KEY(ino, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS damaged(
  id BLOB PRIMARY KEY,
  pack INTEGER NOT NULL,
  offset INTEGER NOT NULL,
  found INTEGER NOT NULL,
  detail TEXT NOT NULL) WITHOUT ROWID;
"#;

pub struct Db {
    conn: Mutex<Connection>,
    /// Read-only connections for the read path (WAL lets them read while the writer
    /// connection writes), so that reads never wait on one another or on metadata
    /// changes for the one connection's mutex.
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
    /// Group commit of WAL fsyncs: (requests served up to, sync in progress).
    wal_sync: Mutex<(u64, bool)>,
    wal_cv: Condvar,
    wal_seq: std::sync::atomic::AtomicU64,
}

impl Db {
    pub fn open(path: &Path) -> Result<Db> {
        let conn = Connection::open(path).ctx("opening kura.db")?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF;
             PRAGMA cache_size=-16384; PRAGMA busy_timeout=5000;",
        )
        .ctx("setting pragmas")?;
        conn.execute_batch(SCHEMA).ctx("creating schema")?;
        let fmt: Option<u32> = conn
            .query_row("SELECT value FROM meta WHERE key='format'", [], |r| {
                r.get(0)
            })
            .optional()
            .ctx("reading store format")?;
        match fmt {
            None => {
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES('format', ?1)",
                    params![STORE_FORMAT],
                )
                .ctx("recording store format")?;
            }
            Some(v) if v < STORE_FORMAT => {
                // Every older layout is valid as it is; record that newer data may follow.
                if let Err(e) = conn.execute(
                    "UPDATE meta SET value=?1 WHERE key='format'",
                    params![STORE_FORMAT],
                ) {
                    tracing::warn!(error = %e, from = v, "could not record the store format upgrade");
                }
            }
            Some(v) if v > STORE_FORMAT => {
                return Err(StoreError::Format(format!(
                    "store format {v} is newer than this kura understands ({STORE_FORMAT})"
                )))
            }
            Some(_) => {}
        }
        Ok(Db {
            conn: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            path: path.to_owned(),
            wal_sync: Mutex::new((0, false)),
            wal_cv: Condvar::new(),
            wal_seq: Default::default(),
        })
    }

    /// A new read-only connection (the pool's, see [`Db::reader`]).
    fn open_reader(&self) -> Result<Connection> {
        let c = Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ctx("opening reader connection")?;
        c.execute_batch("PRAGMA busy_timeout=5000; PRAGMA cache_size=-16384;")
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

    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
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
                drop(g);
                let r = self.fsync_wal(latch);
                g = self.wal_sync.lock().unwrap();
                g.1 = false;
                if r.is_ok() {
                    g.0 = g.0.max(target);
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

    pub fn meta_get(conn: &Connection, key: &str) -> Result<Option<i64>> {
        conn.query_row("SELECT value FROM meta WHERE key=?1", [key], |r| r.get(0))
            .optional()
            .ctx("reading meta")
    }

    pub fn meta_set(conn: &Connection, key: &str, v: i64) -> Result<()> {
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
