//! The chunk store: content-addressed, compressed records in packs, and their index.
//!
//! Invariants:
//! - a record is fsynced (in its pack) before its index row is committed, and an index
//!   row is committed before any content list or directory object referring to it;
//! - every read checks the BLAKE3 hash of the plain bytes; a mismatch is `Corrupt`;
//! - chunks that an ingest or snapshot has looked up or written but not yet committed a
//!   reference to are *pinned*; GC never deletes a pinned or referenced chunk.
//!
//! This module owns the `chunks`, `packs` and `damaged` tables: GC, verify and the
//! facade's statistics go through the functions below, never SQL of their own.
//!
//! Lock order: `db` → `writer` (a snapshot syncs the pack inside its transaction); `pins`,
//! `cache`, `locations` and `files` are leaves.

use crate::db::Db;
use crate::durable::Latch;
use crate::error::{DbContext, Result, StoreError};
use crate::format::*;
use crate::ids::{ChunkId, PackId};
use crate::pack::{self, Location, PackWriter, RecordHeader};
use lru::LruCache;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Index row of a chunk.
#[derive(Clone, Copy, Debug)]
pub struct IndexEntry {
    pub pack: PackId,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub kind: u8,
    pub flags: i64,
    pub inner_off: i64,
}

/// The record a read's previous chunk came from: (pack, offset, decoded record).
pub(crate) type LastRecord = Option<(PackId, u64, Arc<Record>)>;

/// Members of a record: chunk id -> (offset, length) in its decoded bytes. Looked up
/// once per chunk read, so hashed with foldhash (randomly keyed, several times
/// faster than the standard SipHash on 32-byte keys).
pub type Members = HashMap<ChunkId, (u32, u32), foldhash::fast::RandomState>;

/// A decoded record payload and the members of it whose hash a read has checked.
pub(crate) struct Record {
    raw: Arc<Decoded>,
    /// Chunk id -> (offset, length) of members found to hash to their id.
    verified: Mutex<Members>,
    /// Chunk id -> (offset, length) of every member, as the index places them (not
    /// checked), once a sequential read has asked ([`ChunkStore::get_many`]).
    members: std::sync::OnceLock<Members>,
}

impl Record {
    fn new(raw: Decoded) -> Arc<Record> {
        Arc::new(Record {
            raw: Arc::new(raw),
            verified: Mutex::new(Members::default()),
            members: std::sync::OnceLock::new(),
        })
    }
}

/// Chunks [`ChunkStore::get_many`] checks together: enough to fill the SIMD lanes,
/// few enough (~600 KiB) to be hashed while the CPU's cache still holds their bytes.
const CHECK_BATCH: usize = 64;

/// A chunk [`ChunkStore::get_many`] took without checking it yet: `out[at]`, from
/// `rec` at (pack, offset).
struct Unchecked {
    at: usize,
    rec: Arc<Record>,
    pack: PackId,
    offset: u64,
}

/// A record a read took chunks from lately, and the index row that led the read
/// there (its members' rows differ from it only in their place and length).
struct Near {
    row: IndexEntry,
    rec: Arc<Record>,
}

/// Records a sequential read looks in before it looks a chunk up: the one it is in,
/// and the few it came from (a file's unchanged chunks sit in an older generation's
/// bundles, each change in a newer one; after a change the read returns to where it
/// was).
const NEAR: usize = 4;

/// Buffers a [`StreamCache`] or the read cache lends to the records it decodes, and
/// gets back.
type Spares = Mutex<Vec<Vec<u8>>>;

/// Spare buffers a cache keeps: enough for the records its readers (a restore's
/// windows, READ replies being sent) still hold while the next ones are decoded.
const SPARES: usize = 16;

/// The plain bytes of a decoded record. Bytes a cache lent go back to it when the
/// last holder lets go (often a window of a restore being written, or a READ reply
/// being sent, after the cache itself let the record go): a long read so decodes
/// into memory it has touched before, not into fresh pages the kernel must fault in
/// and clear.
pub(crate) struct Decoded {
    bytes: Vec<u8>,
    home: Option<std::sync::Weak<Spares>>,
}

impl Decoded {
    fn own(bytes: Vec<u8>) -> Decoded {
        Decoded { bytes, home: None }
    }

    /// Bytes to decode a record into, in a buffer `spares` lends (a new one when it
    /// has none), which goes back there when the last holder drops them.
    fn lent(spares: &Arc<Spares>) -> Decoded {
        Decoded {
            bytes: spares.lock().unwrap().pop().unwrap_or_default(),
            home: Some(Arc::downgrade(spares)),
        }
    }
}

impl std::ops::Deref for Decoded {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.bytes
    }
}

impl Drop for Decoded {
    fn drop(&mut self) {
        if let Some(home) = self.home.take().and_then(|w| w.upgrade()) {
            let mut spares = home.lock().unwrap();
            if spares.len() < SPARES {
                spares.push(std::mem::take(&mut self.bytes));
            }
        }
    }
}

/// Decoded records by location, each decoded once at a time: a reader that wants a
/// record another reader is decoding waits for it (a read-ahead and the read it runs
/// ahead of; two readers of a restore). The shared read cache's shards and a restore's
/// [`StreamCache`] are each one of these behind a mutex. Keys name where a record is
/// (pack ids are never reused, so a key never names other bytes).
struct RecordLru {
    lru: LruCache<(PackId, u64), Arc<Record>>,
    /// Records a reader is decoding now.
    busy: HashSet<(PackId, u64)>,
    bytes: usize,
    limit: usize,
}

impl RecordLru {
    fn new(limit: usize) -> RecordLru {
        RecordLru {
            lru: LruCache::unbounded(),
            busy: HashSet::new(),
            bytes: 0,
            limit,
        }
    }

    /// The record at `key` when it is kept (waiting while another reader decodes it);
    /// otherwise marks it busy and gives the lock back: the caller decodes it and ends
    /// with [`RecordLru::finish`]. `of` finds the records in what the mutex guards.
    fn get_or_claim<'a, T>(
        mut g: MutexGuard<'a, T>,
        ready: &Condvar,
        key: (PackId, u64),
        of: impl Fn(&mut T) -> &mut RecordLru,
    ) -> std::result::Result<Arc<Record>, MutexGuard<'a, T>> {
        loop {
            let r = of(&mut g);
            if let Some(rec) = r.lru.get(&key) {
                return Ok(rec.clone());
            }
            if !r.busy.contains(&key) {
                r.busy.insert(key);
                return Err(g);
            }
            g = ready.wait(g).unwrap();
        }
    }

    /// Ends a claim (the caller then wakes the waiters): keeps `rec` when the decoding
    /// succeeded, and returns the least recent records let go to stay within the limit
    /// (`keep` of them kept whatever their size).
    fn finish(
        &mut self,
        key: (PackId, u64),
        rec: Option<&Arc<Record>>,
        keep: usize,
    ) -> Vec<Arc<Record>> {
        self.busy.remove(&key);
        let mut gone = Vec::new();
        if let Some(rec) = rec {
            self.bytes += rec.raw.len();
            if let Some((_, old)) = self.lru.push(key, rec.clone()) {
                self.bytes -= old.raw.len();
                gone.push(old);
            }
        }
        while self.bytes > self.limit && self.lru.len() > keep {
            match self.lru.pop_lru() {
                Some((_, old)) => {
                    self.bytes -= old.raw.len();
                    gone.push(old);
                }
                None => break,
            }
        }
        gone
    }

    fn remove(&mut self, key: (PackId, u64)) -> Option<Arc<Record>> {
        let old = self.lru.pop(&key)?;
        self.bytes -= old.raw.len();
        Some(old)
    }
}

/// Decoded records of one long sequential read (a restore, a restore test), kept
/// apart from the shared read cache: such a read would otherwise fill that cache with
/// records nobody reads again, and pay fresh pages for every one. Records it lets go
/// lend their memory to the next. The readers of one restore share one: a bundle that
/// two neighbouring windows need is decoded once, the second reader waiting for it.
pub struct StreamCache {
    inner: Mutex<StreamInner>,
    ready: Condvar,
    /// Buffers of decoded records nothing holds any more, for the next ones (a leaf
    /// lock: a [`Decoded`] dropped anywhere, `inner` held or not, takes it).
    spare: Arc<Spares>,
}

struct StreamInner {
    records: RecordLru,
    /// Buffers for stored (compressed) bytes, reused.
    spare_stored: Vec<Vec<u8>>,
}

impl StreamCache {
    /// A cache of about `limit` bytes of decoded records (at least one is kept).
    pub fn new(limit: usize) -> Self {
        StreamCache {
            inner: Mutex::new(StreamInner {
                records: RecordLru::new(limit),
                spare_stored: Vec::new(),
            }),
            ready: Condvar::new(),
            spare: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn forget(&self, pack: PackId, offset: u64) {
        // Taken out under the lock, let go after it (its buffer goes to `spare`).
        let old = self.inner.lock().unwrap().records.remove((pack, offset));
        drop(old);
    }
}

/// Shards of the record and location caches: parallel readers rarely meet on a lock,
/// and no lock is held while a record is read, decoded or hashed.
const SHARDS: usize = 16;

/// Index rows kept in memory per shard (~80 bytes each): 256 Ki rows locate 2 GiB of
/// 8 KiB chunks without a database lookup.
const LOCATIONS_PER_SHARD: usize = 16 << 10;

/// A chunk's bytes: a slice of a cached record, shared, not copied.
#[derive(Clone)]
pub struct ChunkRef {
    raw: Arc<Decoded>,
    start: usize,
    len: usize,
}

impl std::ops::Deref for ChunkRef {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl AsRef<[u8]> for ChunkRef {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl ChunkRef {
    /// Bytes `at..at + len` of this chunk, sharing the record (no copy).
    pub fn slice(&self, at: usize, len: usize) -> ChunkRef {
        assert!(at + len <= self.len, "slice inside the chunk");
        ChunkRef {
            raw: self.raw.clone(),
            start: self.start + at,
            len,
        }
    }
}

pub struct ChunkStore {
    pub(crate) dir: PathBuf,
    pub(crate) db: Arc<Db>,
    pub(crate) latch: Arc<Latch>,
    pub(crate) writer: Mutex<PackWriter>,
    files: Mutex<HashMap<PackId, Arc<File>>>,
    cache: Vec<Mutex<RecordLru>>,
    /// Per shard: woken when a record leaves its `busy` set.
    decoded: Vec<Condvar>,
    /// Index rows of chunks read lately. Rows change only under GC (repack, delete)
    /// and verify (damage); both clear it, and a read that fails at a remembered
    /// location looks the row up again before it reports anything.
    locations: Vec<Mutex<LruCache<ChunkId, IndexEntry>>>,
    pins: Mutex<HashMap<ChunkId, u32>>,
    pub(crate) zstd_level: i32,
    /// Where objects missing from the index are read (a DR copy's cache store only).
    remote: std::sync::RwLock<Option<Arc<dyn crate::remote::RemoteObjects>>>,
    /// Index rows looked up by chunk id in the database (not from `locations`).
    lookups: std::sync::atomic::AtomicU64,
    /// Buffers of records the read cache let go and nothing holds any more, for the
    /// next records it decodes (see [`Decoded`]): a read larger than the cache decodes
    /// into memory it touched before instead of fresh pages.
    spare: Arc<Spares>,
}

/// Chunks pinned by one ingest or snapshot; what is still pinned is unpinned on drop.
pub struct Pins<'a> {
    store: &'a ChunkStore,
    /// This holder's own pins (a multiset), so that it can release parts early.
    own: Mutex<HashMap<ChunkId, u32>>,
}

impl Pins<'_> {
    /// Pins `id`. Pin before looking a chunk up, so that GC cannot sweep it between
    /// the lookup and the commit of a reference.
    pub fn pin(&self, id: ChunkId) {
        self.pin_many(&[id]);
    }

    /// Pins several chunks under one lock acquisition.
    pub fn pin_many(&self, ids: &[ChunkId]) {
        let mut p = self.store.pins.lock().unwrap();
        let mut own = self.own.lock().unwrap();
        for id in ids {
            *p.entry(*id).or_insert(0) += 1;
            *own.entry(*id).or_insert(0) += 1;
        }
    }

    /// Releases pins taken earlier (once a reference to the chunks is committed).
    pub fn unpin_many(&self, ids: &[ChunkId]) {
        let mut p = self.store.pins.lock().unwrap();
        let mut own = self.own.lock().unwrap();
        for id in ids {
            if let Some(n) = own.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    own.remove(id);
                }
                if let Some(g) = p.get_mut(id) {
                    *g -= 1;
                    if *g == 0 {
                        p.remove(id);
                    }
                }
            }
        }
    }
}

impl Drop for Pins<'_> {
    fn drop(&mut self) {
        let mut p = self.store.pins.lock().unwrap();
        for (id, n) in self.own.get_mut().unwrap().drain() {
            if let Some(g) = p.get_mut(&id) {
                *g = g.saturating_sub(n);
                if *g == 0 {
                    p.remove(&id);
                }
            }
        }
    }
}

impl ChunkStore {
    /// Index rows looked up by chunk id in the database since the store was opened.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes of decoded records the read cache holds now.
    pub fn cache_bytes(&self) -> u64 {
        self.cache
            .iter()
            .map(|c| c.lock().unwrap().bytes as u64)
            .sum()
    }

    pub fn open(
        dir: PathBuf,
        db: Arc<Db>,
        latch: Arc<Latch>,
        cache_bytes: usize,
        zstd_level: i32,
    ) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io("create packs dir", &dir, e))?;
        let mut max_id = 0u64;
        for e in std::fs::read_dir(&dir).map_err(|e| StoreError::io("list packs", &dir, e))? {
            let e = e.map_err(|e| StoreError::io("list packs", &dir, e))?;
            if let Some(id) = e.file_name().to_str().and_then(pack::pack_id_of) {
                max_id = max_id.max(id.0);
            }
        }
        let db_max: Option<i64> = db
            .lock()
            .query_row("SELECT max(id) FROM packs", [], |r| r.get(0))
            .ctx("reading pack ids")?;
        let next = max_id.max(db_max.unwrap_or(0) as u64) + 1;
        Ok(ChunkStore {
            writer: Mutex::new(PackWriter::new(dir.clone(), next)),
            dir,
            db,
            latch,
            files: Mutex::new(HashMap::new()),
            decoded: (0..SHARDS).map(|_| Condvar::new()).collect(),
            cache: (0..SHARDS)
                .map(|_| Mutex::new(RecordLru::new(cache_bytes / SHARDS)))
                .collect(),
            locations: (0..SHARDS)
                .map(|_| {
                    Mutex::new(LruCache::new(
                        std::num::NonZeroUsize::new(LOCATIONS_PER_SHARD).unwrap(),
                    ))
                })
                .collect(),
            pins: Mutex::new(HashMap::new()),
            zstd_level,
            remote: std::sync::RwLock::new(None),
            lookups: Default::default(),
            spare: Arc::new(Mutex::new(Vec::new())),
        })
    }

    pub fn pins(&self) -> Pins<'_> {
        Pins {
            store: self,
            own: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn pinned_snapshot(&self) -> HashSet<ChunkId> {
        self.pins.lock().unwrap().keys().copied().collect()
    }

    pub(crate) fn with_pins_locked<T>(&self, f: impl FnOnce(&HashMap<ChunkId, u32>) -> T) -> T {
        f(&self.pins.lock().unwrap())
    }

    /// Every index row, in record order (pack, offset, member offset).
    pub fn all_rows(conn: &Connection) -> Result<Vec<(ChunkId, IndexEntry)>> {
        Self::rows(conn, "1", [])
    }

    /// The healthy index rows of one pack, in record order (what a repack copies).
    pub fn healthy_rows_of(conn: &Connection, pack: PackId) -> Result<Vec<(ChunkId, IndexEntry)>> {
        Self::rows(conn, "pack=?1 AND flags=0", [pack.0 as i64])
    }

    fn rows<P: rusqlite::Params>(
        conn: &Connection,
        filter: &str,
        p: P,
    ) -> Result<Vec<(ChunkId, IndexEntry)>> {
        let mut st = conn
            .prepare(&format!(
                "SELECT id, pack, offset, stored_len, raw_len, kind, flags, inner_off FROM chunks
                 WHERE {filter} ORDER BY pack, offset, inner_off"
            ))
            .ctx("listing chunk index rows")?;
        let rows = st
            .query_map(p, |r| Ok((r.get::<_, Vec<u8>>(0)?, Self::row_entry(r, 1)?)))
            .ctx("listing chunk index rows")?;
        rows.map(|r| {
            let (id, e) = r.ctx("listing chunk index rows")?;
            Ok((ChunkId::from_row(&id, "chunks.id")?, e))
        })
        .collect()
    }

    fn row_entry(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<IndexEntry> {
        Ok(IndexEntry {
            pack: PackId(r.get::<_, i64>(at)? as u64),
            offset: r.get::<_, i64>(at + 1)? as u64,
            stored_len: r.get(at + 2)?,
            raw_len: r.get(at + 3)?,
            kind: r.get(at + 4)?,
            flags: r.get(at + 5)?,
            inner_off: r.get(at + 6)?,
        })
    }

    /// Index rows per pack.
    pub fn rows_per_pack(conn: &Connection) -> Result<HashMap<PackId, u64>> {
        let mut st = conn
            .prepare("SELECT pack, count(*) FROM chunks GROUP BY pack")
            .ctx("counting chunks per pack")?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    PackId(r.get::<_, i64>(0)? as u64),
                    r.get::<_, i64>(1)? as u64,
                ))
            })
            .ctx("counting chunks per pack")?;
        rows.collect::<rusqlite::Result<_>>()
            .ctx("counting chunks per pack")
    }

    /// Index rows naming pack `pack`.
    pub fn rows_in_pack(conn: &Connection, pack: PackId) -> Result<u64> {
        conn.query_row(
            "SELECT count(*) FROM chunks WHERE pack=?1",
            [pack.0 as i64],
            |r| r.get::<_, i64>(0),
        )
        .ctx("counting chunks of a pack")
        .map(|n| n as u64)
    }

    /// The healthy members of the bundle record at (pack, offset), as the index places
    /// them: id -> (offset in the record, length). One range of the `chunks_place`
    /// index (which holds every column asked for: no lookup per row). A member verify
    /// quarantined is left out, so that a read of it fails as by its row.
    pub fn members_of(conn: &Connection, pack: PackId, offset: u64) -> Result<Members> {
        let mut st = conn
            .prepare_cached(
                "SELECT id, inner_off, raw_len FROM chunks
                 WHERE pack=?1 AND offset=?2 AND inner_off>=0 AND flags=0",
            )
            .ctx("listing a record's members")?;
        let rows = st
            .query_map([pack.0 as i64, offset as i64], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .ctx("listing a record's members")?;
        let mut out = Members::default();
        for r in rows {
            let (id, at, len) = r.ctx("listing a record's members")?;
            if let (Some(id), Ok(at), Ok(len)) = (
                ChunkId::from_slice(&id),
                u32::try_from(at),
                u32::try_from(len),
            ) {
                out.insert(id, (at, len));
            }
        }
        Ok(out)
    }

    /// Deletes the index rows of `ids` (GC's sweep); returns how many there were.
    pub fn delete_rows<'a>(
        conn: &Connection,
        ids: impl IntoIterator<Item = &'a ChunkId>,
    ) -> Result<u64> {
        let mut del = conn
            .prepare_cached("DELETE FROM chunks WHERE id=?1")
            .ctx("preparing chunk delete")?;
        let mut n = 0;
        for id in ids {
            n += del.execute([&id.0[..]]).ctx("deleting chunk index row")? as u64;
        }
        Ok(n)
    }

    /// Forgets a pack file that is gone.
    pub fn delete_pack_row(conn: &Connection, pack: PackId) -> Result<()> {
        conn.execute("DELETE FROM packs WHERE id=?1", [pack.0 as i64])
            .ctx("deleting pack row")?;
        Ok(())
    }

    /// Points the rows of chunks copied out of pack `from` at their copies (`locs`,
    /// already durable), and records the packs the copies are in as sealed.
    pub fn relocate(
        conn: &Connection,
        locs: &[Location],
        from: PackId,
        sealed: &[PackId],
    ) -> Result<()> {
        let mut up = conn
            .prepare_cached("UPDATE chunks SET pack=?2, offset=?3, stored_len=?4, inner_off=?5 WHERE id=?1 AND pack=?6")
            .ctx("preparing relocation")?;
        for l in locs {
            up.execute(params![
                &l.id.0[..],
                l.pack.0 as i64,
                l.offset as i64,
                l.stored_len,
                l.inner_off,
                from.0 as i64
            ])
            .ctx("relocating chunk")?;
        }
        Self::index_rows(conn, &[], sealed)?;
        let mut p = conn
            .prepare_cached("INSERT OR IGNORE INTO packs(id, sealed) VALUES(?1, 1)")
            .ctx("preparing pack insert")?;
        for l in locs {
            p.execute([l.pack.0 as i64]).ctx("recording pack")?;
        }
        Ok(())
    }

    /// Flags a chunk damaged (reads fail until a healthy copy is indexed) and records
    /// what verify found.
    pub fn mark_damaged(
        conn: &Connection,
        id: &ChunkId,
        pack: PackId,
        offset: u64,
        detail: &str,
    ) -> Result<()> {
        conn.execute(
            "UPDATE chunks SET flags = flags | ?2 WHERE id=?1",
            params![&id.0[..], CHUNK_DAMAGED],
        )
        .ctx("flagging damaged chunk")?;
        conn.execute(
            "INSERT OR REPLACE INTO damaged(id, pack, offset, found, detail) VALUES(?1, ?2, ?3, ?4, ?5)",
            params![&id.0[..], pack.0 as i64, offset as i64, crate::namespace::Timespec::now().sec, detail],
        )
        .ctx("recording damage")?;
        Ok(())
    }

    /// (chunks, their plain bytes, the bytes their records take in packs).
    pub fn totals(conn: &Connection) -> Result<(u64, u64, u64)> {
        conn.query_row(
            "SELECT count(*), coalesce(sum(raw_len),0),
               (SELECT coalesce(sum(stored_len + ?1),0) FROM (SELECT DISTINCT pack, offset, stored_len FROM chunks))
             FROM chunks",
            [RECORD_HEADER_LEN as i64],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64)),
        )
        .ctx("computing chunk totals")
    }

    pub fn lookup(conn: &Connection, id: &ChunkId) -> Result<Option<IndexEntry>> {
        conn.prepare_cached(
            "SELECT pack, offset, stored_len, raw_len, kind, flags, inner_off FROM chunks WHERE id=?1",
        )
        .ctx("preparing chunk lookup")?
        .query_row([&id.0[..]], |r| Self::row_entry(r, 0))
        .optional()
        .ctx("looking up chunk")
    }

    /// Whether a healthy copy of `id` is indexed.
    pub fn has(conn: &Connection, id: &ChunkId) -> Result<bool> {
        Ok(Self::lookup(conn, id)?.is_some_and(|e| e.flags & CHUNK_DAMAGED == 0))
    }

    /// Appends a record (compressing when that helps) and returns its location; not
    /// durable and not indexed until `sync` and `index`.
    pub fn append(
        &self,
        kind: u8,
        raw: &[u8],
        compressed: Option<Vec<u8>>,
        id: ChunkId,
    ) -> Result<Location> {
        self.latch.check()?;
        let (codec, data): (u8, std::borrow::Cow<[u8]>) = match compressed {
            Some(c) => (CODEC_ZSTD, c.into()),
            None => (CODEC_RAW, raw.into()),
        };
        let hdr = RecordHeader {
            kind,
            codec,
            raw_len: raw.len() as u32,
            stored_len: data.len() as u32,
            id,
        };
        self.writer.lock().unwrap().append(&self.latch, hdr, &data)
    }

    /// Appends a bundle: `raw` is the concatenation of `members` (id, offset, length),
    /// `comp` its compressed form if smaller. Returns one location per member.
    pub fn append_bundle(
        &self,
        raw: &[u8],
        comp: Option<Vec<u8>>,
        members: &[(ChunkId, u32, u32)],
    ) -> Result<Vec<Location>> {
        let rec = self.append(KIND_BUNDLE, raw, comp, ChunkId::of(raw))?;
        Ok(members
            .iter()
            .map(|(id, off, len)| Location {
                id: *id,
                raw_len: *len,
                kind: KIND_DATA,
                inner_off: *off as i64,
                ..rec
            })
            .collect())
    }

    /// Stores one small object (content list or directory), deduplicated, durable and
    /// indexed when this returns. The caller must hold a pin on `id` until it has
    /// committed a reference to it.
    pub fn put_object(&self, kind: u8, raw: &[u8], pins: &Pins<'_>) -> Result<ChunkId> {
        let id = ChunkId::of(raw);
        pins.pin(id);
        if Self::has(&self.db.lock(), &id)? {
            return Ok(id);
        }
        let loc = self.append(kind, raw, pack::compress(raw, self.zstd_level), id)?;
        self.sync_and_index(&[loc])?;
        Ok(id)
    }

    /// fsyncs the packs and then commits index rows for `locs`.
    pub fn sync_and_index(&self, locs: &[Location]) -> Result<()> {
        let sealed = self.writer.lock().unwrap().sync(&self.latch)?;
        let mut conn = self.db.lock();
        let tx = conn.transaction().ctx("begin index commit")?;
        Self::index_rows(&tx, locs, &sealed)?;
        tx.commit().ctx("commit chunk index")
    }

    /// Inserts index rows inside the caller's transaction. A healthy row already present
    /// is kept; a damaged one is replaced by the new copy (that is how verify damage heals).
    pub fn index_rows(conn: &Connection, locs: &[Location], sealed: &[PackId]) -> Result<()> {
        let mut ins = conn
            .prepare_cached(
                "INSERT INTO chunks(id, pack, offset, stored_len, raw_len, kind, flags, inner_off)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?6, 0, ?7)
                 ON CONFLICT(id) DO UPDATE SET pack=?2, offset=?3, stored_len=?4, raw_len=?5, flags=0, inner_off=?7
                 WHERE flags != 0",
            )
            .ctx("preparing index insert")?;
        let mut packs = HashSet::new();
        for l in locs {
            ins.execute(params![
                &l.id.0[..],
                l.pack.0 as i64,
                l.offset as i64,
                l.stored_len,
                l.raw_len,
                l.kind,
                l.inner_off
            ])
            .ctx("inserting chunk index row")?;
            packs.insert(l.pack);
        }
        let mut p = conn
            .prepare_cached("INSERT OR IGNORE INTO packs(id, sealed) VALUES(?1, 0)")
            .ctx("preparing pack insert")?;
        for id in packs {
            p.execute([id.0 as i64]).ctx("recording pack")?;
        }
        for id in sealed {
            conn.execute(
                "INSERT INTO packs(id, sealed) VALUES(?1, 1) ON CONFLICT(id) DO UPDATE SET sealed=1",
                [id.0 as i64],
            )
            .ctx("sealing pack")?;
        }
        Ok(())
    }

    pub(crate) fn pack_file(&self, id: PackId) -> Result<Arc<File>> {
        if let Some(f) = self.files.lock().unwrap().get(&id) {
            return Ok(f.clone());
        }
        let path = pack::pack_path(&self.dir, id);
        let f = Arc::new(File::open(&path).map_err(|e| StoreError::io("open pack", &path, e))?);
        let mut files = self.files.lock().unwrap();
        if files.len() > 256 {
            files.clear();
        }
        files.insert(id, f.clone());
        Ok(f)
    }

    pub(crate) fn forget_pack(&self, id: PackId) {
        self.files.lock().unwrap().remove(&id);
        self.forget_locations();
    }

    /// Drops every remembered index row (after GC or verify changed rows).
    pub(crate) fn forget_locations(&self) {
        for l in &self.locations {
            l.lock().unwrap().clear();
        }
    }

    fn location_shard(&self, id: &ChunkId) -> &Mutex<LruCache<ChunkId, IndexEntry>> {
        &self.locations[id.0[0] as usize % SHARDS]
    }

    fn cache_shard(&self, pack: PackId, offset: u64) -> &Mutex<RecordLru> {
        &self.cache[Self::shard_of(pack, offset)]
    }

    fn shard_of(pack: PackId, offset: u64) -> usize {
        let h = pack.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (offset >> 10);
        (h as usize ^ (h >> 32) as usize) % SHARDS
    }

    /// The index row of `id`: remembered, or from a pooled reader connection.
    fn locate(&self, id: &ChunkId, fresh: bool) -> Result<Option<IndexEntry>> {
        self.locate_in(id, fresh, &mut None)
    }

    /// The pooled connection `reader` holds, taken from the pool at the first call.
    fn reader_in<'a, 'r>(
        &'a self,
        reader: &'r mut Option<crate::db::Reader<'a>>,
    ) -> Result<&'r Connection> {
        Ok(match reader {
            Some(r) => r,
            None => reader.insert(self.db.reader()?),
        })
    }

    /// [`ChunkStore::locate`] for one of many lookups: `reader` is the pooled
    /// connection they share, taken at the first lookup the cache cannot answer.
    fn locate_in<'a>(
        &'a self,
        id: &ChunkId,
        fresh: bool,
        reader: &mut Option<crate::db::Reader<'a>>,
    ) -> Result<Option<IndexEntry>> {
        if !fresh {
            if let Some(e) = self.location_shard(id).lock().unwrap().get(id) {
                return Ok(Some(*e));
            }
        }
        let e = Self::lookup(self.reader_in(reader)?, id)?;
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut l = self.location_shard(id).lock().unwrap();
        match e {
            Some(e) if e.flags & CHUNK_DAMAGED == 0 => {
                l.put(*id, e);
            }
            _ => {
                l.pop(id);
            }
        }
        Ok(e)
    }

    /// Reads and verifies a chunk. `what` names the file (or object) for error messages.
    pub fn get(&self, id: &ChunkId, what: &dyn Fn() -> String) -> Result<ChunkRef> {
        Ok(self.get_at(id, None, &mut None, what, None, true)?.0)
    }

    /// The chunks `ids`, read and checked in order, for one read of a file. Consecutive
    /// chunks of a file mostly come from one record, or from one of the few it read
    /// just before: each is first looked for there, as a member checked before
    /// ([`ChunkStore::in_last_record`]) or as a member the index places there (the
    /// record's members, listed once by one range of the index when the read first
    /// looks a chunk up into it). Only a chunk in none of them is looked up by its id,
    /// on one pooled connection for the whole read. A sequential read so looks up
    /// about one row per record, not one per chunk (a restore of a 1 GB dump looked
    /// up 125,000 rows by id, a tenth of its CPU).
    ///
    /// The chunks not checked before are hashed together, [`CHECK_BATCH`] at a time
    /// ([`crate::hash_many`]: every SIMD lane busy); one that does not match is read
    /// again as [`ChunkStore::get`] would (its row looked up afresh).
    pub(crate) fn get_many(
        &self,
        ids: &[ChunkId],
        what: &dyn Fn() -> String,
        stream: Option<&StreamCache>,
    ) -> Result<Vec<ChunkRef>> {
        let mut out = Vec::with_capacity(ids.len());
        let mut unchecked: Vec<Unchecked> = Vec::new();
        let mut last = None;
        let mut near: Vec<Near> = Vec::with_capacity(NEAR);
        let mut reader = None;
        for (k, id) in ids.iter().enumerate() {
            if unchecked.len() >= CHECK_BATCH {
                self.check_many(ids, &mut out, &mut unchecked, what, stream)?;
            }
            if let Some(c) = Self::in_last_record(&last, id) {
                out.push(c);
                continue;
            }
            let placed = near
                .iter()
                .position(|n| n.rec.members.get().is_some_and(|m| m.contains_key(id)));
            if let Some(i) = placed {
                let n = near.remove(i);
                let (inner, len) = n.rec.members.get().expect("has the id")[id];
                let row = IndexEntry {
                    raw_len: len,
                    flags: 0,
                    inner_off: i64::from(inner),
                    ..n.row
                };
                last = Some((row.pack, row.offset, n.rec.clone()));
                near.insert(0, n);
                // The hash check decides: bytes that hash to the id are the chunk. A
                // mismatch makes `get_at` look the row up again and read from there.
                let got = self.get_at(id, Some(row), &mut last, what, stream, false)?;
                Self::take(&mut out, got, &last, &mut unchecked);
                continue;
            }
            // Not in the local index: `get_at` asks again, then the remote copy.
            let row = self.locate_in(id, false, &mut reader)?;
            let got = self.get_at(id, row, &mut last, what, stream, false)?;
            Self::take(&mut out, got, &last, &mut unchecked);
            let (Some(e), Some((p, o, rec))) = (row, &last) else {
                continue;
            };
            if e.inner_off < 0 || (e.pack, e.offset) != (*p, *o) || k + 1 == ids.len() {
                continue;
            }
            if rec.members.get().is_none() {
                // Without the list the read looks its chunks up one by one: slower,
                // not wrong.
                let m = Self::members_of(self.reader_in(&mut reader)?, e.pack, e.offset)
                    .unwrap_or_default();
                let _ = rec.members.set(m);
            }
            near.retain(|n| (n.row.pack, n.row.offset) != (e.pack, e.offset));
            near.truncate(NEAR - 1);
            near.insert(
                0,
                Near {
                    row: e,
                    rec: rec.clone(),
                },
            );
        }
        self.check_many(ids, &mut out, &mut unchecked, what, stream)?;
        Ok(out)
    }

    /// Adds a chunk `get_at` returned to `out`; one it did not check (from the record
    /// `last` names) waits in `unchecked`.
    fn take(
        out: &mut Vec<ChunkRef>,
        (c, checked): (ChunkRef, bool),
        last: &LastRecord,
        unchecked: &mut Vec<Unchecked>,
    ) {
        if let (false, Some((pack, offset, rec))) = (checked, last) {
            unchecked.push(Unchecked {
                at: out.len(),
                rec: rec.clone(),
                pack: *pack,
                offset: *offset,
            });
        }
        out.push(c);
    }

    /// Checks the chunks `get_many` took unchecked, all in one pass; marks each that
    /// hashes to its id checked in its record, and reads any other again, checked.
    fn check_many(
        &self,
        ids: &[ChunkId],
        out: &mut [ChunkRef],
        unchecked: &mut Vec<Unchecked>,
        what: &dyn Fn() -> String,
        stream: Option<&StreamCache>,
    ) -> Result<()> {
        if unchecked.is_empty() {
            return Ok(());
        }
        let unchecked = std::mem::take(unchecked);
        let msgs: Vec<&[u8]> = unchecked.iter().map(|u| &*out[u.at]).collect();
        let sums = crate::hash_many::hash_many(&msgs);
        drop(msgs);
        for (u, sum) in unchecked.iter().zip(sums) {
            let (id, c) = (&ids[u.at], &out[u.at]);
            // Before calling it damaged, once more the plain way.
            if sum == id.0 || ChunkId::of(c) == *id {
                let span = (c.start as u32, c.len as u32);
                u.rec.verified.lock().unwrap().insert(*id, span);
                continue;
            }
            tracing::debug!(chunk = %id, "chunk read failed its check, retrying after re-lookup");
            self.forget_record(u.pack, u.offset, stream);
            out[u.at] = self.get_at(id, None, &mut None, what, stream, true)?.0;
        }
        Ok(())
    }

    /// Chunk `id` from the record the read's previous chunk came from, when that
    /// record holds it and it was checked there before: no index row, no cache lookup.
    /// (A record's bytes never change; if GC has moved the chunk since, these are still
    /// its bytes, checked against its id.)
    fn in_last_record(last: &LastRecord, id: &ChunkId) -> Option<ChunkRef> {
        let (_, _, rec) = last.as_ref()?;
        let (start, len) = *rec.verified.lock().unwrap().get(id)?;
        Some(ChunkRef {
            raw: rec.raw.clone(),
            start: start as usize,
            len: len as usize,
        })
    }

    /// [`ChunkStore::get`] for one chunk of a longer read: `row` is its index row when
    /// the caller looked it up already (`None` looks it up here), `last` the record
    /// the read's previous chunk came from (consecutive chunks mostly share one, and
    /// then it is not looked up again), and `stream` where records are decoded instead
    /// of the shared read cache (when given). Without `check`, a member not checked
    /// before is returned unchecked (`false` beside it; the caller checks it, see
    /// [`ChunkStore::get_many`]); `last` then names its record.
    fn get_at(
        &self,
        id: &ChunkId,
        row: Option<IndexEntry>,
        last: &mut LastRecord,
        what: &dyn Fn() -> String,
        stream: Option<&StreamCache>,
        check: bool,
    ) -> Result<(ChunkRef, bool)> {
        let corrupt = |detail: String| StoreError::Corrupt {
            what: what(),
            chunk: *id,
            detail,
        };
        // A remembered row may be stale (GC moved the chunk since), and a repack may
        // move it between the lookup and the read: retry once from the database.
        let mut fresh = false;
        let mut row = row;
        loop {
            let e = match row.take() {
                Some(e) => e,
                None => match self.locate(id, fresh)? {
                    Some(e) => e,
                    None => return Ok((self.get_remote(id, &corrupt)?, true)),
                },
            };
            if e.flags & CHUNK_DAMAGED != 0 {
                return Err(corrupt("chunk quarantined by verify".into()));
            }
            let rec = match last {
                Some((p, o, rec)) if (*p, *o) == (e.pack, e.offset) => Ok(rec.clone()),
                _ => match stream {
                    Some(st) => self.stream_record(st, e.pack, e.offset, e.stored_len),
                    None => self.record(e.pack, e.offset, e.stored_len, false),
                },
            };
            let r = rec.and_then(|rec| {
                let (start, len) = if e.inner_off < 0 {
                    (0, rec.raw.len())
                } else {
                    (e.inner_off as usize, e.raw_len as usize)
                };
                if rec.raw.len() < start + len {
                    return Err(corrupt(format!("member {start}+{len} outside its record")));
                }
                let span = (start as u32, len as u32);
                let known = rec.verified.lock().unwrap().get(id) == Some(&span);
                if !known && check {
                    if ChunkId::of(&rec.raw[start..start + len]) != *id {
                        return Err(corrupt(format!(
                            "BLAKE3 mismatch in pack {} at {}",
                            e.pack, e.offset
                        )));
                    }
                    rec.verified.lock().unwrap().insert(*id, span);
                }
                let c = ChunkRef {
                    raw: rec.raw.clone(),
                    start,
                    len,
                };
                *last = Some((e.pack, e.offset, rec));
                Ok((c, known || check))
            });
            match r {
                Ok(c) => return Ok(c),
                Err(err) if !fresh => {
                    tracing::debug!(%err, chunk = %id, "chunk read failed, retrying after re-lookup");
                    *last = None;
                    self.forget_record(e.pack, e.offset, stream);
                    fresh = true;
                }
                Err(StoreError::Corrupt { detail, .. }) => return Err(corrupt(detail)),
                Err(err) => return Err(err),
            }
        }
    }

    /// An object the local index lacks: from the remote copy when the store has one
    /// (checked against its id), else `Corrupt` ("missing from index").
    fn get_remote(&self, id: &ChunkId, corrupt: &dyn Fn(String) -> StoreError) -> Result<ChunkRef> {
        let Some(remote) = self.remote.read().unwrap().clone() else {
            return Err(corrupt("chunk missing from index".into()));
        };
        match remote.fetch(id) {
            Ok(Some(raw)) => {
                if ChunkId::of(&raw) != *id {
                    return Err(corrupt("BLAKE3 mismatch in the remote copy".into()));
                }
                let len = raw.len();
                // The copy's cache may hold these bytes too: a chunk's worth of copy.
                let raw = Arc::try_unwrap(raw).unwrap_or_else(|shared| (*shared).clone());
                Ok(ChunkRef {
                    raw: Arc::new(Decoded::own(raw)),
                    start: 0,
                    len,
                })
            }
            Ok(None) => Err(corrupt(
                "missing from the local index and the remote copy".into(),
            )),
            Err(e) => Err(StoreError::Remote(format!("reading object {id}: {e}"))),
        }
    }

    /// The record at (pack, offset) as stored (compressed or not), with its header,
    /// unchecked: replication sends it as it is, and the copy checks each member.
    pub fn stored_record(
        &self,
        pack_id: PackId,
        offset: u64,
        stored_len: u32,
    ) -> Result<(RecordHeader, Vec<u8>)> {
        let f = self.pack_file(pack_id)?;
        let path = pack::pack_path(&self.dir, pack_id);
        let mut stored = Vec::new();
        let h = self.read_checked(&f, &path, offset, stored_len, &mut stored)?;
        Ok((h, stored))
    }

    /// Where object `id` is stored (a healthy row), if the index has it.
    pub fn location(&self, id: &ChunkId) -> Result<Option<IndexEntry>> {
        self.locate(id, false)
    }

    /// Reads objects this store lacks from `remote` from now on (replacing the one
    /// before: a DR site refreshing its view of the copy).
    pub fn set_remote(&self, remote: Arc<dyn crate::remote::RemoteObjects>) {
        *self.remote.write().unwrap() = Some(remote);
    }

    fn forget_pack_file(&self, id: PackId) {
        self.files.lock().unwrap().remove(&id);
    }

    /// The decoded payload of the record at (pack, offset), checked against the hash in
    /// its header, through the cache.
    pub(crate) fn record_payload(
        &self,
        pack_id: PackId,
        offset: u64,
        stored_len: u32,
    ) -> Result<Arc<Decoded>> {
        Ok(self.record(pack_id, offset, stored_len, true)?.raw.clone())
    }

    /// A record's header, its stored bytes into `stored`; a truncated pack or a bad header is
    /// `Corrupt`, naming the pack.
    fn read_checked(
        &self,
        f: &File,
        path: &std::path::Path,
        offset: u64,
        stored_len: u32,
        stored: &mut Vec<u8>,
    ) -> Result<RecordHeader> {
        let pack_corrupt = |detail: String| StoreError::Corrupt {
            what: format!("pack {}", path.display()),
            chunk: ChunkId([0; 32]),
            detail,
        };
        match pack::read_record_into(f, path, offset, stored_len, stored) {
            Ok(h) => Ok(h),
            Err(StoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                Err(pack_corrupt(format!(
                    "pack {} is truncated",
                    path.display()
                )))
            }
            Err(StoreError::Format(detail)) => Err(pack_corrupt(detail)),
            Err(e) => Err(e),
        }
    }

    /// A decoded record: through the cache for the read path (which checks the members
    /// it returns), or read and checked whole against its header's hash (`check`).
    fn record(
        &self,
        pack_id: PackId,
        offset: u64,
        stored_len: u32,
        check: bool,
    ) -> Result<Arc<Record>> {
        let i = Self::shard_of(pack_id, offset);
        let (shard, ready) = (&self.cache[i], &self.decoded[i]);
        let key = (pack_id, offset);
        // A checked read (GC's repack) reads from the pack and leaves the cache alone:
        // cached records have had only the members reads asked for checked.
        if check {
            return self.decode_record(pack_id, offset, stored_len, true);
        }
        if let Ok(rec) = RecordLru::get_or_claim(shard.lock().unwrap(), ready, key, |c| c) {
            return Ok(rec);
        }
        let rec = self.decode_record(pack_id, offset, stored_len, false);
        shard.lock().unwrap().finish(key, rec.as_ref().ok(), 0);
        ready.notify_all();
        rec
    }

    /// Reads and decodes the record at (pack, offset); `check` hashes it whole.
    fn decode_record(
        &self,
        pack_id: PackId,
        offset: u64,
        stored_len: u32,
        check: bool,
    ) -> Result<Arc<Record>> {
        let mut stored = Vec::new();
        let mut raw = Decoded::lent(&self.spare);
        self.decode_into(
            pack_id,
            offset,
            stored_len,
            &mut stored,
            &mut raw.bytes,
            check,
        )?;
        Ok(Record::new(raw))
    }

    /// A decoded record for a long sequential read: from the shared cache when it is
    /// there, else from `st` (waiting while another reader of `st` decodes it), else
    /// read and decoded into `st` and kept there, not in the shared cache.
    fn stream_record(
        &self,
        st: &StreamCache,
        pack_id: PackId,
        offset: u64,
        stored_len: u32,
    ) -> Result<Arc<Record>> {
        let key = (pack_id, offset);
        if let Some(b) = self
            .cache_shard(pack_id, offset)
            .lock()
            .unwrap()
            .lru
            .peek(&key)
        {
            return Ok(b.clone());
        }
        let mut stored =
            match RecordLru::get_or_claim(st.inner.lock().unwrap(), &st.ready, key, |g| {
                &mut g.records
            }) {
                Ok(rec) => return Ok(rec),
                Err(mut g) => g.spare_stored.pop().unwrap_or_default(),
            };
        let mut raw = Decoded::lent(&st.spare);
        let decoded = self.decode_into(
            pack_id,
            offset,
            stored_len,
            &mut stored,
            &mut raw.bytes,
            false,
        );
        let rec = decoded.map(|()| Record::new(raw));
        let mut g = st.inner.lock().unwrap();
        if g.spare_stored.len() < 8 {
            g.spare_stored.push(stored);
        }
        let gone = g.records.finish(key, rec.as_ref().ok(), 1);
        drop(g);
        st.ready.notify_all();
        // Their buffers go back to `st.spare` now, or when the last window holding
        // them has been written.
        drop(gone);
        rec
    }

    /// Reads the record at (pack, offset) into `stored` and decodes it into `raw`
    /// (both buffers reused); `check` hashes it whole.
    fn decode_into(
        &self,
        pack_id: PackId,
        offset: u64,
        stored_len: u32,
        stored: &mut Vec<u8>,
        raw: &mut Vec<u8>,
        check: bool,
    ) -> Result<()> {
        let path = pack::pack_path(&self.dir, pack_id);
        let f = self.pack_file(pack_id)?;
        let hdr = self.read_checked(&f, &path, offset, stored_len, stored)?;
        pack::decode_into(&hdr, stored, raw, check).map_err(|detail| StoreError::Corrupt {
            what: format!("pack {}", path.display()),
            chunk: hdr.id,
            detail: format!("{detail} at {}:{offset}", path.display()),
        })
    }

    /// Forgets all a read kept of the record at (pack, offset) after it failed: the
    /// open pack file, the decoded record (shared cache and `stream`), remembered rows.
    fn forget_record(&self, pack_id: PackId, offset: u64, stream: Option<&StreamCache>) {
        self.forget_pack_file(pack_id);
        self.uncache(pack_id, offset);
        if let Some(st) = stream {
            st.forget(pack_id, offset);
        }
    }

    pub(crate) fn uncache(&self, pack_id: PackId, offset: u64) {
        self.cache_shard(pack_id, offset)
            .lock()
            .unwrap()
            .remove((pack_id, offset));
        self.forget_locations();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_cache_gets_its_buffers_back_from_the_last_holder() {
        let st = StreamCache::new(1 << 20);
        let mut buf = Decoded::lent(&st.spare);
        buf.bytes.extend_from_slice(&[7u8; 4096]);
        let ptr = buf.as_ptr();
        let rec = Record::new(buf);
        let chunk = ChunkRef {
            raw: rec.raw.clone(),
            start: 100,
            len: 10,
        };
        drop(rec);
        // A window still holds a slice: the buffer is not free yet.
        assert!(st.spare.lock().unwrap().is_empty());
        assert_eq!(&chunk[..], &[7u8; 10]);
        drop(chunk);
        // The last holder gave it back; the next record decodes into the same memory.
        let again = Decoded::lent(&st.spare);
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.capacity() >= 4096);
        // A buffer outliving its cache is simply freed.
        let orphan = Decoded::lent(&st.spare);
        drop(st);
        drop(orphan);
        // At most SPARES buffers are kept.
        let st = StreamCache::new(1 << 20);
        let held: Vec<Decoded> = (0..SPARES + 4)
            .map(|_| Decoded {
                bytes: vec![1; 16],
                home: Some(Arc::downgrade(&st.spare)),
            })
            .collect();
        drop(held);
        assert_eq!(st.spare.lock().unwrap().len(), SPARES);
    }
}
