//! The `Store` facade: the one type the NFS layer and the appliance use. Every
//! operation the store offers is a method here; the work of ingest, snapshots, GC and
//! verify is done by functions of those modules, which this facade calls (each table
//! has one module that queries it, see ARCHITECTURE.md).

use crate::chunk_store::{ChunkRef, ChunkStore, StreamCache};
use crate::chunker::ChunkerParams;
use crate::content::ContentList;
use crate::db::Db;
use crate::durable::Latch;
use crate::error::{DbContext, Result, StoreError};
use crate::gc::{GcOptions, GcPlan, GcReport};
use crate::ids::{ChunkId, FileId};
use crate::ids::{SnapshotId, VolumeId};
use crate::ingest::IngestReport;
use crate::iobuf::{IoBuf, ZEROS};
use crate::jobs::JobRecord;
pub use crate::namespace::Volume;
use crate::namespace::{self, Attr, FileKind, Inode, NewAttr, SetAttr, Timespec};
use crate::snapshot::{Capture, SnapshotInfo, SnapshotMeta};
use crate::staging::{Lookup, StagedFile, Staging};
use crate::tree::TreeEntry;
use crate::verify::VerifyReport;
use lru::LruCache;
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Space kept free for metadata: a write of file data that would leave less than this
/// on the store's filesystem is refused with `NoSpace`, so that names, deletes and
/// the database still have room on a full disk.
pub const MIN_FREE_BYTES: u64 = 8 << 20;

/// The headroom kept on a filesystem of `total` bytes: [`MIN_FREE_BYTES`], or 1/64 of a
/// small filesystem.
fn headroom(total: u64) -> u64 {
    MIN_FREE_BYTES.min(total / 64)
}

/// Below this much free space (beyond the headroom) writes allocate their blocks before
/// writing them, so that a full disk refuses a write whole instead of halfway.
const TIGHT_SPACE: u64 = 256 << 20;

/// Tunables of an open store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Bytes of decompressed chunks kept for reads.
    pub cache_bytes: usize,
    /// zstd level for new chunks.
    pub zstd_level: i32,
    pub chunker: ChunkerParams,
    /// Threads that hash and compress during ingest.
    pub ingest_threads: usize,
    /// Size of the ingest read buffer (bounds ingest memory together with the threads).
    pub ingest_buffer: usize,
    /// Space kept in a reserve file (at most 5% of the filesystem) and given back when a
    /// full disk would otherwise stop an operator from deleting files or snapshots.
    pub reserve_bytes: u64,
    /// Chunks per leaf content list; a file with more gets an index of leaves.
    pub content_part_entries: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 64 << 20,
            zstd_level: 2,
            chunker: ChunkerParams::default(),
            ingest_threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            ingest_buffer: 4 << 20,
            reserve_bytes: 64 << 20,
            content_part_entries: 65_536,
        }
    }
}

/// One directory entry of the live tree.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub attr: Attr,
    /// Where a listing continues after this entry.
    pub cookie: u64,
}

/// GC's sweep held off ([`Store::hold_gc`]); released when dropped.
pub struct GcHold<'a> {
    pub(crate) store: &'a Store,
    _g: std::sync::RwLockReadGuard<'a, ()>,
}

/// Staged data of one volume ([`Store::staged_by_volume`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct StagedUsage {
    pub files: u64,
    /// Bytes the ingester still has to store.
    pub bytes: u64,
    /// Staged sizes minus the sizes the namespace records for those files (the
    /// namespace learns a staged file's size when it is ingested).
    pub size_delta: i64,
}

/// Ingest, GC and snapshot commits held by [`Store::quiesce`]; released when dropped.
pub struct QuiesceHold<'a> {
    store: &'a Store,
    gc: std::sync::RwLockWriteGuard<'a, ()>,
    ingest: std::sync::MutexGuard<'a, ()>,
}

impl<'a> QuiesceHold<'a> {
    /// Second step, once the clients' writers are frozen: fsyncs every staged file and
    /// the database's WAL and holds the database's writer, so that nothing changes on
    /// disk until the guard is dropped. Reads go on (they use connections of their
    /// own). The data directory is then a consistent store: a copy of it (a disk
    /// snapshot, `cp -a`) opens as a store that recovers like one after a clean stop.
    pub fn settle(self) -> Result<Quiesced<'a>> {
        let s = self.store;
        for st in s.staging.all() {
            st.sync(&s.latch, &s.staging.dir, &|i, b| s.put_copy(i, b), false)?;
        }
        let db = s.db.lock();
        // Under the writer's lock, so that the WAL cannot grow after its fsync.
        s.db.sync_wal(&s.latch)?;
        Ok(Quiesced {
            _db: db,
            _gc: self.gc,
            _ingest: self.ingest,
        })
    }
}

/// The store held still and durable by [`QuiesceHold::settle`]; released when dropped.
pub struct Quiesced<'a> {
    _db: crate::db::Writer<'a>,
    _gc: std::sync::RwLockWriteGuard<'a, ()>,
    _ingest: std::sync::MutexGuard<'a, ()>,
}

pub struct Store {
    pub(crate) root: PathBuf,
    pub(crate) db: Arc<Db>,
    pub(crate) latch: Arc<Latch>,
    pub(crate) chunks: Arc<ChunkStore>,
    pub(crate) staging: Staging,
    /// Decodes ahead of clients reading a file in order.
    readahead: crate::readahead::ReadAhead,
    pub(crate) opts: StoreOptions,
    content_cache: Mutex<LruCache<ChunkId, Arc<ContentList>>>,
    /// Held while a content list is read and decoded (by the list's first byte): the
    /// readers of one large file, starting together, decode its list once, not each.
    content_loading: [Mutex<()>; 16],
    pub(crate) dir_cache: Mutex<LruCache<ChunkId, Arc<Vec<TreeEntry>>>>,
    /// What snapshot captures not yet finished refer to; GC marks from it.
    pub(crate) capture_roots: Arc<crate::snapshot::CaptureRoots>,
    /// Ingest and snapshot commits take it shared; GC's mark-and-sweep takes it exclusive.
    pub(crate) gc_lock: RwLock<()>,
    /// One ingest at a time (each uses all ingest threads).
    pub(crate) ingest_lock: Mutex<()>,
    pub(crate) pool: rayon::ThreadPool,
    _lock: File,
}

impl Store {
    /// Opens (creating if needed) the store at `root`. Only one process may have it open.
    pub fn open(root: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        std::fs::create_dir_all(&root).map_err(|e| StoreError::io("create store dir", &root, e))?;
        let lock_path = root.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::io("open lock file", &lock_path, e))?;
        // SAFETY: flock on a valid fd owned by `lock`.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(StoreError::Invalid(format!(
                "store {} is already open by another process",
                root.display()
            )));
        }
        let q = root.join("quarantine");
        std::fs::create_dir_all(&q).map_err(|e| StoreError::io("create quarantine dir", &q, e))?;
        let latch = Arc::new(Latch::default());
        let db = Arc::new(Db::open(&root.join("kura.db"))?);
        let chunks = Arc::new(ChunkStore::open(
            root.join("packs"),
            db.clone(),
            latch.clone(),
            opts.cache_bytes,
            opts.zstd_level,
        )?);
        let readahead = crate::readahead::ReadAhead::new(chunks.clone());
        let staging = Staging::open(root.join("staging"))?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.ingest_threads.max(1))
            .thread_name(|i| format!("kura-ingest-{i}"))
            .build()
            .map_err(|e| StoreError::Invalid(format!("ingest thread pool: {e}")))?;
        let store = Store {
            root,
            db,
            latch,
            chunks,
            staging,
            readahead,
            opts,
            content_cache: Mutex::new(LruCache::new(NonZeroUsize::new(256).unwrap())),
            content_loading: Default::default(),
            dir_cache: Mutex::new(LruCache::new(NonZeroUsize::new(1024).unwrap())),
            capture_roots: Default::default(),
            gc_lock: RwLock::new(()),
            ingest_lock: Mutex::new(()),
            pool,
            _lock: lock,
        };
        // A store must open on a full disk (read-only commands, and the daemon that
        // lets clients delete). When the disk is full, give the reserve back first; it is
        // taken again once space returns (`ensure_reserve`).
        let (total, free) = store.fs_space();
        if total > 0 && free < headroom(total) {
            store.release_reserve();
        }
        // Parts of ingests a crash interrupted: their chunks become ordinary garbage.
        // Written only when there are any, so that opening writes nothing otherwise.
        if crate::ingest::has_interrupted(&store.db.lock())? {
            store.freeing(|| crate::ingest::clear_interrupted(&store.db.lock()))?;
        }
        let (copies, copies_win) = {
            let conn = store.db.lock();
            let copies = crate::staging::load_copies(&conn)?;
            // Staging files may have lost bytes only if the machine went down since the
            // last clean stop: then the durable copies of small files are the truth.
            (copies, Db::went_down(&conn, &crate::durable::boot_id())?)
        };
        let (recovered, stale) = store.staging.recover(
            &|ino| {
                let conn = store.db.lock();
                Ok(namespace::get_opt(&conn, ino)?
                    .filter(|i| i.attr.kind == FileKind::File)
                    .map(|i| (i.content, i.attr.size, i.attr.mtime)))
            },
            copies,
            copies_win,
        )?;
        if !stale.is_empty() {
            store.freeing(|| {
                let conn = store.db.lock();
                stale
                    .iter()
                    .try_for_each(|ino| crate::staging::put_copy(&conn, *ino, None))
            })?;
        }
        if recovered > 0 {
            tracing::info!(store = %store.root.display(), files = recovered, "recovered staged files");
        }
        store.ensure_reserve();
        Ok(store)
    }

    fn reserve_path(&self) -> PathBuf {
        self.root.join("RESERVE")
    }

    /// Creates the emergency reserve file if it is missing and the space is back (twice
    /// the reserve free besides the headroom). Cheap when there is nothing to do: the
    /// daemon calls it periodically.
    pub fn ensure_reserve(&self) {
        let path = self.reserve_path();
        if self.opts.reserve_bytes == 0 || path.exists() {
            return;
        }
        let (fs_bytes, free) = statvfs(&self.root).unwrap_or((0, 0));
        let size = self.opts.reserve_bytes.min(fs_bytes / 20);
        if size == 0 || free < 2 * size + headroom(fs_bytes) {
            return;
        }
        let r = std::fs::File::create(&path).and_then(|f| {
            // SAFETY: valid fd; posix_fallocate allocates real blocks.
            let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, size as libc::off_t) };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::from_raw_os_error(rc))
            }
        });
        match r {
            Ok(()) => tracing::info!(bytes = size, "emergency space reserve in place"),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                tracing::warn!(error = %e, "could not create the emergency space reserve");
            }
        }
    }

    /// The largest file this store holds: what the staging filesystem allows (FSINFO's
    /// maxfilesize). Writes and sizes past it are `TooBig`.
    pub fn max_file_size(&self) -> u64 {
        self.staging.max_file_size
    }

    /// Bytes available to the store's filesystem (u64::MAX when unknown).
    pub fn free_bytes(&self) -> u64 {
        statvfs(&self.root).map_or(u64::MAX, |(_, avail)| avail)
    }

    /// (total, available) bytes of the store's filesystem; (0, 0) when unknown.
    pub fn fs_space(&self) -> (u64, u64) {
        statvfs(&self.root).unwrap_or((0, 0))
    }

    /// Gives the reserve back to the filesystem; true if there was one.
    fn release_reserve(&self) -> bool {
        let released = std::fs::remove_file(self.reserve_path()).is_ok();
        if released {
            tracing::warn!(store = %self.root.display(), "disk full: released the emergency reserve so that space can be freed");
        }
        released
    }

    /// Runs an operation that frees space; on a full disk, releases the reserve and
    /// tries once more, so that deleting is always possible.
    pub(crate) fn freeing<T>(&self, f: impl Fn() -> Result<T>) -> Result<T> {
        match f() {
            Err(StoreError::NoSpace { .. }) if self.release_reserve() => f(),
            r => r,
        }
    }

    /// The store's secret for sealing NFS handles (32 random bytes made when first
    /// asked for, kept in the database so that handles survive restarts).
    pub fn handle_secret(&self) -> Result<[u8; 32]> {
        let conn = self.db.lock();
        let have: Option<Vec<u8>> = Db::meta_get(&conn, "handle_secret")?;
        if let Some(k) = have.and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok()) {
            return Ok(k);
        }
        let mut k = [0u8; 32];
        use std::io::Read;
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut k))
            .map_err(|e| StoreError::io("reading random bytes", "/dev/urandom", e))?;
        self.freeing(|| Db::meta_set(&conn, "handle_secret", &k[..]))?;
        Ok(k)
    }

    /// Starts serving: returns the NFS handle generation (also the WRITE verifier).
    /// It changes exactly when staged data that was not yet committed may have been
    /// lost: the previous run did not close cleanly *and* the machine rebooted since
    /// (a different kernel boot id). A daemon that was killed on a running machine
    /// loses nothing (the bytes are in the page cache), so handles stay valid.
    pub fn begin_service(&self, boot_id: &str) -> Result<u64> {
        self.latch.check()?;
        // On a full disk the reserve makes room for these few rows.
        self.freeing(|| self.begin_service_once(boot_id))
    }

    fn begin_service_once(&self, boot_id: &str) -> Result<u64> {
        let mut conn = self.db.lock();
        let tx = conn.transaction().ctx("begin service")?;
        let gen: i64 = Db::meta_get(&tx, "nfs_generation")?.unwrap_or(1);
        let went_down = Db::went_down(&tx, boot_id)?;
        let gen = if went_down { gen + 1 } else { gen };
        if went_down {
            tracing::warn!(generation = gen, "unclean shutdown and reboot: NFS write verifier changed, clients resend uncommitted writes");
        }
        Db::meta_set(&tx, "nfs_generation", gen)?;
        Db::meta_set(&tx, "clean_shutdown", 0)?;
        Db::meta_set(&tx, "boot_id", boot_id)?;
        tx.commit().ctx("begin service")?;
        drop(conn);
        self.db.sync_wal(&self.latch)?;
        Ok(gen as u64)
    }

    /// Clean stop: everything durable, then the clean mark. On a full disk the mark may
    /// not fit even after the reserve is given back: then the stop is still clean for
    /// the data (all of it is durable) and only the mark is missing, which at worst
    /// changes the write verifier after a reboot (clients resend what they had not
    /// committed).
    pub fn end_service(&self) -> Result<()> {
        self.sync_all()?;
        let mark = self.freeing(|| {
            Db::meta_set(&self.db.lock(), "clean_shutdown", 1)?;
            self.db.sync_wal(&self.latch)
        });
        match mark {
            Err(StoreError::NoSpace { context }) => {
                tracing::warn!(%context, "disk full: stopped without the clean-shutdown mark");
                Ok(())
            }
            r => r,
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    // ------------------------------------------------------------------ volumes

    /// Creates a volume (an export) with an empty root directory owned as given.
    pub fn create_volume(&self, name: &str, root: NewAttr) -> Result<Volume> {
        self.latch.check()?;
        check_volume_name(name)?;
        let v = self.mutate("create volume", |tx| {
            namespace::create_volume(tx, name, |vol| namespace::new_root(tx, vol, root))
        })?;
        self.db.sync_wal(&self.latch)?;
        tracing::info!(volume = name, "volume created");
        Ok(v)
    }

    pub fn volumes(&self) -> Result<Vec<Volume>> {
        namespace::volumes(&*self.db.reader()?)
    }

    /// Sum of the file sizes of volume `name` (as last ingested).
    pub fn volume_logical_bytes(&self, name: &str) -> Result<u64> {
        let v = self.volume(name)?;
        namespace::logical_bytes(&self.db.lock(), Some(v.id))
    }

    pub fn volume(&self, name: &str) -> Result<Volume> {
        self.volumes()?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| StoreError::NotFound(format!("volume {name}")))
    }

    // ------------------------------------------------------------------ metadata

    /// Attributes; a staged file reports its staged size and mtime.
    pub fn getattr(&self, ino: FileId) -> Result<Attr> {
        let i = namespace::get(&*self.db.reader()?, ino)?;
        Ok(self.overlay_attr(i.attr))
    }

    fn overlay_attr(&self, mut a: Attr) -> Attr {
        if a.kind == FileKind::File {
            if let Some(s) = self.staging.get(a.ino) {
                let g = s.lock();
                if !g.dropped {
                    a.size = g.size;
                    a.mtime = a.mtime.max(g.mtime);
                    a.ctime = a.ctime.max(g.mtime);
                }
            }
        }
        a
    }

    /// A file's inode row (its volume, content, link target), attributes as `getattr`.
    pub fn inode(&self, ino: FileId) -> Result<Inode> {
        let mut i = namespace::get(&*self.db.reader()?, ino)?;
        i.attr = self.overlay_attr(i.attr);
        Ok(i)
    }

    /// The directory holding `dir` (None for a volume root).
    pub fn parent(&self, dir: FileId) -> Result<Option<FileId>> {
        Ok(namespace::parent(&*self.db.reader()?, dir)?.map(|(p, _)| p))
    }

    pub fn lookup(&self, dir: FileId, name: &[u8]) -> Result<Attr> {
        Ok(self.lookup_inode(dir, name)?.attr)
    }

    /// LOOKUP with the inode row (its volume, for the export's gate).
    pub fn lookup_inode(&self, dir: FileId, name: &[u8]) -> Result<Inode> {
        let conn = self.db.reader()?;
        // Only a directory holds names: a name found needs no second read to know
        // that `dir` is one. A name not found does (NotDir, or `dir` itself gone).
        let Some(e) = namespace::lookup(&conn, dir, name)? else {
            namespace::dir(&conn, dir)?;
            return Err(StoreError::NotFound(
                String::from_utf8_lossy(name).into_owned(),
            ));
        };
        drop(conn);
        let mut i = e.inode;
        i.attr = self.overlay_attr(i.attr);
        Ok(i)
    }

    fn mutate<T>(
        &self,
        what: &str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        self.latch.check()?;
        Self::in_tx(&mut self.db.lock(), what, f)
    }

    /// [`Store::mutate`] if the writer connection is free now; `None` (nothing done)
    /// if somebody holds it.
    fn mutate_now<T>(
        &self,
        what: &str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        self.latch.check()?;
        match self.db.try_lock() {
            Some(mut conn) => Self::in_tx(&mut conn, what, f).map(Some),
            None => Ok(None),
        }
    }

    fn in_tx<T>(
        conn: &mut rusqlite::Connection,
        what: &str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let tx = conn.transaction().ctx(what)?;
        let r = f(&tx)?;
        tx.commit().ctx(what)?;
        Ok(r)
    }

    pub fn create(&self, dir: FileId, name: &[u8], attr: NewAttr) -> Result<Attr> {
        Ok(self.create_in(dir, name, attr)?.0)
    }

    /// [`Store::create`], also returning the directory's attributes as the create left
    /// them (read in the same transaction, so that the caller need not ask again).
    pub fn create_in(&self, dir: FileId, name: &[u8], attr: NewAttr) -> Result<(Attr, Attr)> {
        self.mutate("create file", |tx| Self::create_tx(tx, dir, name, attr))
    }

    /// [`Store::create_in`] if the writer connection is free now; `None` (nothing
    /// done) if somebody holds it. For callers that must not wait for it.
    pub fn try_create_in(
        &self,
        dir: FileId,
        name: &[u8],
        attr: NewAttr,
    ) -> Result<Option<(Attr, Attr)>> {
        self.mutate_now("create file", |tx| Self::create_tx(tx, dir, name, attr))
    }

    fn create_tx(
        tx: &rusqlite::Transaction<'_>,
        dir: FileId,
        name: &[u8],
        attr: NewAttr,
    ) -> Result<(Attr, Attr)> {
        let f = namespace::create(tx, dir, name, FileKind::File, attr, b"", None)?.attr;
        Ok((f, namespace::get(tx, dir)?.attr))
    }

    /// Whether [`Store::sync`] of `ino` would now be one quick fsync: the file has no
    /// staging file on disk to flush, and the database's recent fsyncs were quick
    /// (see `Db::sync_is_quick`).
    pub fn sync_is_quick(&self, ino: FileId) -> bool {
        self.db.sync_is_quick()
            && self
                .staging
                .get(ino)
                .is_none_or(|st| st.syncs_with_the_wal())
    }

    /// Exclusive create (NFS EXCLUSIVE): a retry with the same verifier succeeds.
    pub fn create_exclusive(
        &self,
        dir: FileId,
        name: &[u8],
        attr: NewAttr,
        verf: [u8; 8],
    ) -> Result<Attr> {
        self.mutate("exclusive create", |tx| {
            if let Some(e) = namespace::lookup(tx, dir, name)? {
                if e.inode.verf == Some(verf) {
                    return Ok(e.inode.attr);
                }
                return Err(StoreError::Exists(
                    String::from_utf8_lossy(name).into_owned(),
                ));
            }
            Ok(namespace::create(tx, dir, name, FileKind::File, attr, b"", Some(verf))?.attr)
        })
    }

    pub fn mkdir(&self, dir: FileId, name: &[u8], attr: NewAttr) -> Result<Attr> {
        self.mutate("mkdir", |tx| {
            Ok(namespace::create(tx, dir, name, FileKind::Dir, attr, b"", None)?.attr)
        })
    }

    pub fn symlink(&self, dir: FileId, name: &[u8], target: &[u8], attr: NewAttr) -> Result<Attr> {
        if target.is_empty() || target.len() > 4096 || target.contains(&0) {
            return Err(StoreError::Invalid(
                "symlink target must be 1-4096 bytes without NUL".into(),
            ));
        }
        self.mutate("symlink", |tx| {
            Ok(namespace::create(tx, dir, name, FileKind::Symlink, attr, target, None)?.attr)
        })
    }

    pub fn readlink(&self, ino: FileId) -> Result<Vec<u8>> {
        let i = namespace::get(&*self.db.reader()?, ino)?;
        if i.attr.kind != FileKind::Symlink {
            return Err(StoreError::Invalid(format!(
                "file id {ino} is not a symlink"
            )));
        }
        Ok(i.link)
    }

    pub fn remove(&self, dir: FileId, name: &[u8]) -> Result<()> {
        let r =
            self.freeing(|| self.mutate("remove", |tx| namespace::remove(tx, dir, name, false)))?;
        self.forget(&r)
    }

    /// Gives file or symlink `ino` another name (a hard link); returns its attributes.
    pub fn link(&self, ino: FileId, dir: FileId, name: &[u8]) -> Result<Attr> {
        let i = self.mutate("link", |tx| namespace::link(tx, ino, dir, name))?;
        Ok(self.overlay_attr(i.attr))
    }

    pub fn rmdir(&self, dir: FileId, name: &[u8]) -> Result<()> {
        self.freeing(|| self.mutate("rmdir", |tx| namespace::remove(tx, dir, name, true)))
            .map(|_| ())
    }

    pub fn rename(&self, from: FileId, from_name: &[u8], to: FileId, to_name: &[u8]) -> Result<()> {
        let replaced = self.freeing(|| {
            self.mutate("rename", |tx| {
                namespace::rename(tx, from, from_name, to, to_name)
            })
        })?;
        match replaced {
            Some(r) => self.forget(&r),
            None => Ok(()),
        }
    }

    /// Drops the staged data of a file whose last name went.
    fn forget(&self, r: &namespace::Removed) -> Result<()> {
        let ino = r.inode.attr.ino;
        if !r.gone {
            return Ok(());
        }
        if let Some(s) = self.staging.get(ino) {
            let mut g = s.lock();
            g.dropped = true;
            if g.copied {
                crate::staging::put_copy(&self.db.lock(), ino, None)?;
            }
            self.staging.drop_file(ino)?;
        }
        Ok(())
    }

    pub fn setattr(&self, ino: FileId, s: SetAttr) -> Result<Attr> {
        self.latch.check()?;
        if let Some(size) = s.size {
            self.truncate(ino, size)?;
        }
        if s.sets_attributes() {
            self.mutate("setattr", |tx| namespace::set_attr(tx, ino, &s))?;
            if let (Some(m), Some(st)) = (s.mtime, self.staging.get(ino)) {
                st.lock().mtime = m;
            }
        }
        self.getattr(ino)
    }

    /// The attributes of `ino` when `s` would change nothing, from a pooled reader
    /// alone (never the writer): a SETATTR that sets only the size a file already has
    /// (`open(O_TRUNC)` of a file just created, which every file copy does). `None`:
    /// `setattr` has work to do.
    pub fn setattr_unchanged(&self, ino: FileId, s: &SetAttr) -> Result<Option<Attr>> {
        self.latch.check()?;
        let (false, Some(size)) = (s.sets_attributes(), s.size) else {
            return Ok(None);
        };
        if self.staging.get(ino).is_some() {
            return Ok(None);
        }
        let i = namespace::get(&*self.db.reader()?, ino)?;
        let unchanged = i.attr.kind == FileKind::File && truncates_nothing(&i, size);
        Ok(unchanged.then(|| self.overlay_attr(i.attr)))
    }

    /// `TooBig` when a file would end past [`Store::max_file_size`].
    fn check_size(&self, ino: FileId, end: u64) -> Result<()> {
        if end > self.max_file_size() {
            return Err(StoreError::TooBig(format!(
                "file id {ino}: {end} bytes is past the largest file this store holds ({} bytes)",
                self.max_file_size()
            )));
        }
        Ok(())
    }

    fn truncate(&self, ino: FileId, size: u64) -> Result<()> {
        self.check_size(ino, size)?;
        loop {
            let st = match self.staging.lookup(ino) {
                Lookup::Staged(st) => st,
                Lookup::Unstaged(drops) => {
                    let i = namespace::get(&*self.db.reader()?, ino)?;
                    if i.attr.kind != FileKind::File {
                        return Err(StoreError::IsDir(format!("file id {ino}")));
                    }
                    if truncates_nothing(&i, size) {
                        return Ok(());
                    }
                    if i.content.is_none() {
                        // Nothing ingested: the size alone describes the file, unless
                        // an ingest stored content since the row was read.
                        let set = self.mutate("truncate", |tx| {
                            if namespace::get(tx, ino)?.content.is_some() {
                                return Ok(false);
                            }
                            namespace::set_content(tx, ino, None, size, Some(Timespec::now()))?;
                            Ok(true)
                        })?;
                        // A write that read the row before this commit reads it again;
                        // one that started staging the file from it meanwhile gets the
                        // new size in its staging too (the loop, once more).
                        if self.staging.changed(ino) || !set {
                            continue;
                        }
                        return Ok(());
                    }
                    match self.start_staging(&i, drops) {
                        Err(StoreError::Raced(_)) => continue,
                        r => r?,
                    }
                }
            };
            match st.truncate(size, &|i, b| self.put_copy(i, b)) {
                Err(StoreError::Raced(_)) => continue,
                r => return r,
            }
        }
    }

    /// Starts staging the file of inode row `i`, read after [`Staging::lookup`] said
    /// `drops` (`Raced`: look the file up again).
    fn start_staging(&self, i: &Inode, drops: u64) -> Result<Arc<StagedFile>> {
        let base = match i.content {
            Some(c) => Some((c, self.content(&c)?.len())),
            None => None,
        };
        self.staging
            .start(i.attr.ino, base, i.attr.size, i.attr.mtime, drops)
    }

    pub fn readdir(&self, dir: FileId, cookie: u64, limit: usize) -> Result<Vec<DirEntry>> {
        let rows = namespace::readdir(&*self.db.reader()?, dir, cookie, limit)?;
        Ok(rows
            .into_iter()
            .map(|e| DirEntry {
                name: e.name,
                attr: self.overlay_attr(e.inode.attr),
                cookie: e.id,
            })
            .collect())
    }

    // ------------------------------------------------------------------ data

    /// Writes into the landing zone. Survives a killed daemon once this returns; call
    /// [`Store::sync`] for durability against power loss.
    pub fn write(&self, ino: FileId, off: u64, data: &[u8]) -> Result<()> {
        self.write_inner(ino, off, data).map(|_| ())
    }

    /// [`Store::write`], then the file's attributes as `getattr` gives them: from the
    /// inode row the write read to start staging the file, when it did, so that the
    /// first write of a new file reads that row once.
    pub fn write_attr(&self, ino: FileId, off: u64, data: &[u8]) -> Result<Attr> {
        match self.write_inner(ino, off, data)? {
            Some(a) => Ok(self.overlay_attr(a)),
            None => self.getattr(ino),
        }
    }

    /// Writes; returns the inode row's attributes when it read them.
    fn write_inner(&self, ino: FileId, off: u64, data: &[u8]) -> Result<Option<Attr>> {
        self.latch.check()?;
        let len = data.len() as u64;
        self.check_size(ino, off.saturating_add(len))?;
        // Keep room for metadata: refuse data that would eat into it, and when space is
        // short, allocate before writing so that a full disk refuses the whole write.
        let (total, free) = self.fs_space();
        let headroom = headroom(total);
        if total > 0 && free < headroom.saturating_add(len) {
            return Err(StoreError::NoSpace {
                context: format!(
                    "writing {len} bytes to file id {ino}: {free} bytes free, {headroom} kept for metadata"
                ),
            });
        }
        let reserve = total == 0 || free < headroom.saturating_add(len).saturating_add(TIGHT_SPACE);
        loop {
            let (st, row) = match self.staging.lookup(ino) {
                Lookup::Staged(st) => (st, None),
                Lookup::Unstaged(drops) => {
                    let i = namespace::get(&*self.db.reader()?, ino)?;
                    if i.attr.kind != FileKind::File {
                        return Err(if i.attr.kind == FileKind::Dir {
                            StoreError::IsDir(format!("file id {ino}"))
                        } else {
                            StoreError::Invalid(format!("file id {ino} is not a regular file"))
                        });
                    }
                    match self.start_staging(&i, drops) {
                        Err(StoreError::Raced(_)) => continue,
                        r => (r?, Some(i.attr)),
                    }
                }
            };
            match st.write(off, data, reserve, &|i, b| self.put_copy(i, b)) {
                Err(StoreError::Raced(_)) => continue,
                r => return r.map(|()| row),
            }
        }
    }

    /// Makes a file's acknowledged writes, and all metadata changes, durable.
    pub fn sync(&self, ino: FileId) -> Result<()> {
        self.latch.check()?;
        if let Some(st) = self.staging.get(ino) {
            st.sync(
                &self.latch,
                &self.staging.dir,
                &|i, b| self.put_copy(i, b),
                true,
            )?;
        }
        self.db.sync_wal(&self.latch)
    }

    /// Makes everything durable, each staging file whole by itself (used at shutdown and by snapshots).
    pub fn sync_all(&self) -> Result<()> {
        for st in self.staging.all() {
            st.sync(
                &self.latch,
                &self.staging.dir,
                &|i, b| self.put_copy(i, b),
                false,
            )?;
        }
        self.db.sync_wal(&self.latch)
    }

    /// A small staged file's durable copy (see `staging::SMALL_COPY_MAX`); on a full
    /// disk the reserve makes room for it.
    fn put_copy(&self, ino: FileId, bytes: Option<&[u8]>) -> Result<()> {
        self.freeing(|| crate::staging::put_copy(&self.db.lock(), ino, bytes))
    }

    /// First step of holding the store still and durable on disk (for a platform
    /// snapshot of the disk under it): waits for a running ingest to end, then keeps
    /// ingest, GC and snapshot commits from starting. Clients may still write (to
    /// staging). Freeze them, then [`QuiesceHold::settle`].
    pub fn quiesce(&self) -> Result<QuiesceHold<'_>> {
        self.latch.check()?;
        let ingest = self.ingest_lock.lock().unwrap();
        let gc = self.gc_lock.write().unwrap();
        Ok(QuiesceHold {
            store: self,
            gc,
            ingest,
        })
    }

    /// Reads up to `len` bytes at `off`. Returns the bytes and whether EOF was reached.
    pub fn read(&self, ino: FileId, off: u64, len: u32) -> Result<(Vec<u8>, bool)> {
        let mut buf = Vec::new();
        let (_, eof) = self.read_to(ino, off, len, &mut buf)?;
        Ok((buf, eof))
    }

    /// [`Store::read`] as pieces that share the cached chunks (READ replies send them
    /// without copying them into one buffer). Returns the pieces, their total length
    /// and whether EOF was reached.
    pub fn read_pieces(
        &self,
        ino: FileId,
        off: u64,
        len: u32,
    ) -> Result<(Vec<Piece>, usize, bool)> {
        let mut pieces = Pieces(Vec::new());
        let (n, eof) = self.read_to(ino, off, len, &mut pieces)?;
        Ok((pieces.0, n, eof))
    }

    /// Sends up to `len` bytes at `off` to `sink`; returns how many and whether EOF
    /// was reached. A staged file is read through its merged view, an ingested one
    /// from its content, each byte written once.
    fn read_to(
        &self,
        ino: FileId,
        off: u64,
        len: u32,
        sink: &mut dyn Sink,
    ) -> Result<(usize, bool)> {
        loop {
            if let Some(st) = self.staging.get(ino) {
                let (size, view) = {
                    let g = st.lock();
                    if g.dropped {
                        continue;
                    }
                    let n = g.size.saturating_sub(off).min(len as u64);
                    (g.size, g.view(off, off + n))
                };
                let n = size.saturating_sub(off).min(len as u64) as usize;
                let mut buf = IoBuf::with_len(n);
                let what = || format!("file id {ino}");
                st.read_view(&view, off, &mut buf, &|c, o, b| {
                    self.read_content(&c, o, b, &what)
                })?;
                sink.owned(buf);
                return Ok((n, off + n as u64 >= size));
            }
            let i = namespace::get(&*self.db.reader()?, ino)?;
            if i.attr.kind != FileKind::File {
                return Err(StoreError::IsDir(format!("file id {ino}")));
            }
            let size = i.attr.size;
            let n = size.saturating_sub(off).min(len as u64) as usize;
            sink.reserve(n);
            match i.content {
                Some(c) => {
                    let what = || self.describe(ino);
                    self.content_to(&c, off, n, sink, &what, None)?;
                    self.read_ahead(&c, off, n, size);
                }
                None => sink.zeros(n),
            }
            return Ok((n, off + n as u64 >= size));
        }
    }

    /// Human-readable path of a live file for error messages: `/volume/path`.
    pub fn describe(&self, ino: FileId) -> String {
        let conn = self.db.lock();
        let found = namespace::path(&conn, ino).and_then(|p| {
            let vols = namespace::volumes(&conn)?;
            Ok(p.and_then(|(vol, path)| {
                let v = vols.into_iter().find(|v| v.id == vol)?;
                Some(format!(
                    "/{}{}",
                    v.name,
                    if path == "/" { "" } else { &path }
                ))
            }))
        });
        match found {
            Ok(Some(p)) => p,
            _ => format!("file id {ino}"),
        }
    }

    /// Fills `buf` from content `c` starting at `off`; bytes past the content are zeros.
    /// Every byte of `buf` is written once (no zeroing first).
    pub(crate) fn read_content(
        &self,
        c: &ChunkId,
        off: u64,
        buf: &mut [u8],
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        let len = buf.len();
        self.content_to(c, off, len, &mut SliceSink { buf, pos: 0 }, what, None)
    }

    /// Sends `len` bytes of content `c` from `off` to `sink`, in order: chunk bytes
    /// straight from the cached records, zeros for holes and past the content.
    fn content_to(
        &self,
        c: &ChunkId,
        off: u64,
        len: usize,
        sink: &mut dyn Sink,
        what: &dyn Fn() -> String,
        stream: Option<&StreamCache>,
    ) -> Result<()> {
        let list = self.content(c)?;
        let pieces = list.pieces(off, len as u64);
        let chunks = if list.index {
            Vec::new()
        } else {
            let ids: Vec<ChunkId> = pieces
                .iter()
                .map(|&(idx, _, _)| list.entries[idx].1)
                .filter(|id| !id.is_hole())
                .collect();
            self.chunks.get_many(&ids, what, stream)?
        };
        let mut chunks = chunks.into_iter();
        let mut done = 0usize;
        for (idx, eoff, elen) in pieces {
            let (_, id) = list.entries[idx];
            if id.is_hole() {
                sink.zeros(elen as usize);
            } else if list.index {
                self.content_to(&id, eoff, elen as usize, sink, what, stream)?;
            } else {
                let data = chunks
                    .next()
                    .expect("one chunk per piece that is not a hole");
                match data.get(eoff as usize..(eoff + elen) as usize) {
                    Some(_) => sink.chunk(&data, eoff as usize, elen as usize),
                    None => {
                        return Err(StoreError::Corrupt {
                            what: what(),
                            chunk: id,
                            detail: format!(
                                "chunk of {} bytes listed as longer ({})",
                                data.len(),
                                eoff + elen
                            ),
                        })
                    }
                }
            }
            done += elen as usize;
        }
        sink.zeros(len - done);
        Ok(())
    }

    /// After a read of `n` bytes at `off` of content `c` (`size` bytes long): when the
    /// file is being read in order, has the read-ahead decode the next stretch.
    pub(crate) fn read_ahead(&self, c: &ChunkId, off: u64, n: usize, size: u64) {
        if let Some((from, len)) = self.readahead.after_read(c, off, n as u64, size) {
            let mut ids = Vec::new();
            if self.chunks_in(c, from, len, &mut ids).is_ok() && !ids.is_empty() {
                self.readahead.submit(ids);
            }
        }
    }

    /// The chunks holding `len` bytes of content `c` from `off`, in order.
    fn chunks_in(&self, c: &ChunkId, off: u64, len: u64, out: &mut Vec<ChunkId>) -> Result<()> {
        let list = self.content(c)?;
        for (idx, eoff, elen) in list.pieces(off, len) {
            let (_, id) = list.entries[idx];
            if id.is_hole() {
                continue;
            }
            if list.index {
                self.chunks_in(&id, eoff, elen, out)?;
            } else {
                out.push(id);
            }
        }
        Ok(())
    }

    /// Visits every object content `c` reaches: leaf lists of an index, and chunks.
    pub(crate) fn visit_content(&self, c: &ChunkId, f: &mut dyn FnMut(&ChunkId)) -> Result<()> {
        let list = self.content(c)?;
        for (_, id) in &list.entries {
            if id.is_hole() {
                continue;
            }
            f(id);
            if list.index {
                self.visit_content(id, f)?;
            }
        }
        Ok(())
    }

    /// A content list, cached.
    pub(crate) fn content(&self, c: &ChunkId) -> Result<Arc<ContentList>> {
        if let Some(l) = self.content_cache.lock().unwrap().get(c) {
            return Ok(l.clone());
        }
        let _loading = self.content_loading[c.0[0] as usize % 16].lock().unwrap();
        if let Some(l) = self.content_cache.lock().unwrap().get(c) {
            return Ok(l.clone());
        }
        let raw = self.chunks.get(c, &|| format!("content list {c}"))?;
        let l = Arc::new(ContentList::decode(&raw)?);
        self.content_cache.lock().unwrap().put(*c, l.clone());
        Ok(l)
    }

    // ------------------------------------------------------------------ ingest (`ingest.rs`)

    /// Ingests staged files that have had no write for `idle`.
    pub fn ingest_idle(&self, idle: Duration) -> Result<IngestReport> {
        crate::ingest::ingest_idle(self, idle)
    }

    /// [`Store::ingest_idle`] as of `now` (the clock is the caller's: tests move it
    /// instead of waiting).
    pub fn ingest_idle_at(&self, idle: Duration, now: Instant) -> Result<IngestReport> {
        crate::ingest::ingest_idle_at(self, idle, now)
    }

    /// Ingests every staged file (of one volume, or all).
    pub fn ingest_all(&self, vol: Option<VolumeId>) -> Result<IngestReport> {
        crate::ingest::ingest_all(self, vol)
    }

    /// Ingests one file now, if it is staged.
    pub fn ingest_file(&self, ino: FileId) -> Result<IngestReport> {
        crate::ingest::ingest_file(self, ino)
    }

    // ------------------------------------------------------------------ snapshots (`snapshot.rs`)

    /// Takes a snapshot of volume `vol` named `name`. For a consistent snapshot the
    /// caller holds mutating calls (the appliance's freeze); this ingests what is staged.
    pub fn snapshot(&self, vol: &str, name: &str) -> Result<SnapshotInfo> {
        crate::snapshot::snapshot(self, vol, name, &SnapshotMeta::default())
    }

    /// [`Store::snapshot`] with a label, a lock date or the busy mark.
    pub fn snapshot_with(
        &self,
        vol: &str,
        name: &str,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotInfo> {
        crate::snapshot::snapshot(self, vol, name, meta)
    }

    /// The part of a snapshot that must see the frozen volume: seals its staged files
    /// (reading none of their bytes) and encodes the changed directories. Cost: the
    /// changed directories and the number of staged files, not their size.
    pub fn snapshot_capture(&self, vol: &str, name: &str, meta: &SnapshotMeta) -> Result<Capture> {
        crate::snapshot::capture(self, vol, name, meta, None)
    }

    /// Waits until no GC sweep runs and keeps the next one from starting while the hold
    /// lives. A snapshot job takes it before it freezes the volume, so that the capture
    /// inside the freeze never waits for GC's mark and sweep (seconds on a large store).
    pub fn hold_gc(&self) -> GcHold<'_> {
        GcHold {
            store: self,
            _g: self.gc_lock.read().unwrap(),
        }
    }

    /// [`Store::snapshot_capture`] under a [`GcHold`] taken before the freeze.
    pub fn snapshot_capture_held(
        &self,
        held: &GcHold<'_>,
        vol: &str,
        name: &str,
        meta: &SnapshotMeta,
    ) -> Result<Capture> {
        crate::snapshot::capture(self, vol, name, meta, Some(held))
    }

    /// Stores what [`Store::snapshot_capture`] sealed and records the snapshot; runs
    /// while clients write on.
    pub fn snapshot_finish(&self, cap: Capture) -> Result<SnapshotInfo> {
        crate::snapshot::finish(self, cap)
    }

    /// Holds (`true`) or releases a snapshot; a held snapshot is never deleted.
    pub fn hold_snapshot(&self, vol: &str, name: &str, held: bool) -> Result<SnapshotInfo> {
        crate::snapshot::set_hold(self, vol, name, held)
    }

    /// One snapshot's record.
    pub fn snapshot_info(&self, vol: &str, name: &str) -> Result<SnapshotInfo> {
        Ok(self.snapshot_row(vol, name)?.0)
    }

    /// Snapshots of one volume (or all), oldest first.
    pub fn snapshots(&self, vol: Option<&str>) -> Result<Vec<SnapshotInfo>> {
        crate::snapshot::snapshots(self, vol)
    }

    /// A snapshot and its root entry by id (for stateless NFS handles).
    pub fn snapshot_by_id(&self, id: SnapshotId) -> Result<(SnapshotInfo, TreeEntry)> {
        crate::snapshot::snapshot_by_id(self, id)
    }

    /// Entries of a directory object by id, sorted by name.
    pub fn dir_entries(&self, id: &ChunkId) -> Result<Arc<Vec<TreeEntry>>> {
        crate::snapshot::dir_entries(self, id)
    }

    /// The raw bytes of any object (chunk, content list, directory object), checked.
    /// Replication reads what it sends through this.
    pub fn object(&self, id: &ChunkId) -> Result<crate::chunk_store::ChunkRef> {
        self.chunks.get(id, &|| format!("object {id}"))
    }

    /// Where object `id` is stored, when this store has it (replication sends whole
    /// bundle records through [`Store::stored_record`]).
    pub fn object_location(&self, id: &ChunkId) -> Result<Option<crate::chunk_store::IndexEntry>> {
        self.chunks.location(id)
    }

    /// The healthy index rows of one pack, in record order: the members of its records.
    pub fn pack_rows(
        &self,
        pack: crate::ids::PackId,
    ) -> Result<Vec<(ChunkId, crate::chunk_store::IndexEntry)>> {
        ChunkStore::healthy_rows_of(&*self.db.reader()?, pack)
    }

    /// A record as stored (header and stored bytes, unchecked).
    pub fn stored_record(
        &self,
        e: &crate::chunk_store::IndexEntry,
    ) -> Result<(crate::pack::RecordHeader, Vec<u8>)> {
        self.chunks.stored_record(e.pack, e.offset, e.stored_len)
    }

    /// Whether the local index has object `id` (a cache store may read it remotely).
    pub fn has_object(&self, id: &ChunkId) -> Result<bool> {
        ChunkStore::has(&*self.db.reader()?, id)
    }

    /// A content list by id (leaf or index), cached.
    pub fn content_list(&self, id: &ChunkId) -> Result<Arc<ContentList>> {
        self.content(id)
    }

    /// Stores objects brought from elsewhere (a DR copy hydrating a new store), each of
    /// kind `KIND_DATA`, `KIND_CONTENT` or `KIND_DIR`, checked against its id: durable
    /// and indexed when this returns. Objects already present are skipped.
    pub fn put_objects(&self, objects: &[(u8, ChunkId, &[u8])]) -> Result<()> {
        self.latch.check()?;
        let mut locs = Vec::new();
        {
            let conn = self.db.reader()?;
            for (kind, id, raw) in objects {
                if ChunkId::of(raw) != *id {
                    return Err(StoreError::Corrupt {
                        what: "an object brought in".into(),
                        chunk: *id,
                        detail: "BLAKE3 mismatch".into(),
                    });
                }
                if ChunkStore::has(&conn, id)?
                    || locs.iter().any(|l: &crate::pack::Location| l.id == *id)
                {
                    continue;
                }
                let comp = crate::pack::compress(raw, self.opts.zstd_level);
                locs.push(self.chunks.append(*kind, raw, comp, *id)?);
            }
        }
        let _gc = self.gc_lock.read().unwrap();
        self.chunks.sync_and_index(&locs)
    }

    /// Records a snapshot made elsewhere (a DR copy's), its objects possibly not here
    /// (a cache store reads them through [`ChunkStore::set_remote`]). Creates the
    /// volume if missing. An existing snapshot of that name keeps its tree and takes
    /// the label, hold, lock and busy mark given. Returns true when it was new.
    pub fn adopt_snapshot(&self, info: &SnapshotInfo, root: &TreeEntry) -> Result<bool> {
        crate::snapshot::adopt(self, info, root)
    }

    /// Reads objects missing from this store from `remote` (a cache store's DR copy),
    /// replacing the one set before.
    pub fn set_remote(&self, remote: Arc<dyn crate::remote::RemoteObjects>) {
        self.chunks.set_remote(remote)
    }

    /// Deletes a snapshot record; its data goes at the next GC. Held snapshots, and
    /// locked ones until their lock date, are refused ([`StoreError::Refused`]).
    pub fn delete_snapshot(&self, vol: &str, name: &str) -> Result<()> {
        crate::snapshot::delete_snapshot(self, vol, name, Timespec::now().sec)
    }

    // Job history (`jobs.rs`)

    /// Records a finished job durably; returns its id.
    pub fn record_job(&self, job: &JobRecord) -> Result<u64> {
        crate::jobs::record(self, job)
    }

    /// The newest `limit` jobs of one volume (or all), newest first.
    pub fn jobs(&self, volume: Option<&str>, limit: usize) -> Result<Vec<JobRecord>> {
        crate::jobs::list(self, volume, None, limit)
    }

    /// The newest `limit` records of one kind (`usage` included), newest first.
    pub fn jobs_of_kind(
        &self,
        volume: Option<&str>,
        kind: &str,
        limit: usize,
    ) -> Result<Vec<JobRecord>> {
        crate::jobs::list(self, volume, Some(kind), limit)
    }

    /// The root directory entry of a snapshot.
    pub fn snapshot_root(&self, vol: &str, name: &str) -> Result<TreeEntry> {
        crate::snapshot::snapshot_root(self, vol, name)
    }

    /// Entries of a snapshot directory, sorted by name.
    pub fn snapshot_children(&self, dir: &TreeEntry) -> Result<Arc<Vec<TreeEntry>>> {
        crate::snapshot::snapshot_children(self, dir)
    }

    pub fn snap_lookup(&self, dir: &TreeEntry, name: &[u8]) -> Result<TreeEntry> {
        crate::snapshot::snap_lookup(self, dir, name)
    }

    /// Reads a file of a snapshot: up to `len` bytes from `off`, and whether EOF was
    /// reached.
    pub fn snap_read(&self, f: &TreeEntry, off: u64, len: u32) -> Result<(Vec<u8>, bool)> {
        let mut buf = Vec::new();
        let (_, eof) = self.snap_read_to(f, off, len, &mut buf)?;
        Ok((buf, eof))
    }

    /// [`Store::snap_read`] as pieces that share the cached chunks (an NFS READ of a
    /// snapshot file sends them without copying them into one buffer, as a READ of a
    /// live file does); returns the pieces, their length and whether EOF was reached.
    pub fn snap_read_shared(
        &self,
        f: &TreeEntry,
        off: u64,
        len: u32,
    ) -> Result<(Vec<Piece>, usize, bool)> {
        let mut pieces = Pieces(Vec::new());
        let (n, eof) = self.snap_read_to(f, off, len, &mut pieces)?;
        Ok((pieces.0, n, eof))
    }

    /// Sends up to `len` bytes of snapshot file `f` from `off` to `sink` (nothing past
    /// its end), through the shared read cache, and has the read-ahead follow; returns
    /// how many and whether EOF was reached.
    fn snap_read_to(
        &self,
        f: &TreeEntry,
        off: u64,
        len: u32,
        sink: &mut dyn Sink,
    ) -> Result<(usize, bool)> {
        if f.attr.kind != FileKind::File {
            return Err(StoreError::IsDir(
                String::from_utf8_lossy(&f.name).into_owned(),
            ));
        }
        let size = f.attr.size;
        let n = size.saturating_sub(off).min(len as u64) as usize;
        sink.reserve(n);
        match f.target_ref {
            Some(c) => {
                let name = String::from_utf8_lossy(&f.name).into_owned();
                let what = || format!("snapshot file {name}");
                self.content_to(&c, off, n, sink, &what, None)?;
                self.read_ahead(&c, off, n, size);
            }
            None => sink.zeros(n),
        }
        Ok((n, off + n as u64 >= size))
    }

    /// `len` bytes of a snapshot file from `off` (zeros past its end) as pieces that
    /// share the decoded records, for a long sequential read (restore): records are
    /// decoded into `stream`, not into the shared read cache.
    pub fn snap_read_pieces(
        &self,
        f: &TreeEntry,
        off: u64,
        len: usize,
        stream: &StreamCache,
    ) -> Result<Vec<Piece>> {
        if f.attr.kind != FileKind::File {
            return Err(StoreError::IsDir(
                String::from_utf8_lossy(&f.name).into_owned(),
            ));
        }
        let mut pieces = Pieces(Vec::new());
        match f.target_ref {
            Some(c) => {
                let name = String::from_utf8_lossy(&f.name).into_owned();
                let what = || format!("snapshot file {name}");
                self.content_to(&c, off, len, &mut pieces, &what, Some(stream))?;
            }
            None => pieces.zeros(len),
        }
        Ok(pieces.0)
    }

    /// Makes a new writable volume from a snapshot. Data is shared, not copied; only
    /// inode rows are written.
    pub fn clone_snapshot(&self, vol: &str, snap: &str, new_vol: &str) -> Result<Volume> {
        crate::snapshot::clone_snapshot(self, vol, snap, new_vol)
    }

    // ------------------------------------------------------------------ gc (`gc.rs`)

    /// Computes what GC would do, without changing anything.
    pub fn gc_plan(&self, opts: &GcOptions) -> Result<GcPlan> {
        crate::gc::gc_plan(self, opts)
    }

    /// Runs garbage collection. On a full disk the emergency reserve is given up so
    /// that GC can run; it is taken again once GC has freed space.
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport> {
        crate::gc::gc(self, opts)
    }

    // ------------------------------------------------------------------ verify (`verify.rs`)

    /// Verifies every chunk. Damaged chunks are quarantined (flagged, copied aside).
    /// What each volume takes in the store (a walk of the whole store; see
    /// [`crate::gc::VolumeUsage`]).
    pub fn usage(&self) -> Result<Vec<crate::gc::VolumeUsage>> {
        self.usage_walk()
    }

    /// Staged (written, not yet ingested) data per volume: cheap, from the staging
    /// table in memory.
    pub fn staged_by_volume(&self) -> Result<std::collections::HashMap<VolumeId, StagedUsage>> {
        let mut out: std::collections::HashMap<VolumeId, StagedUsage> = Default::default();
        for st in self.staging.all() {
            let (bytes, size) = {
                let g = st.lock();
                let staged = match g.base {
                    // A new or rewritten file: all of it is staged.
                    None => g.size,
                    // An overlay on ingested content: the ranges written since.
                    Some(_) => g.ranges.iter().map(|(a, b)| b - a).sum(),
                };
                (staged, g.size)
            };
            let inode = match self.inode(st.ino) {
                Ok(i) => i,
                // Removed since the listing.
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let e = out.entry(inode.vol).or_default();
            e.files += 1;
            e.bytes += bytes;
            e.size_delta += size as i64 - inode.attr.size as i64;
        }
        Ok(out)
    }

    pub fn verify(&self) -> Result<VerifyReport> {
        crate::verify::verify(self)
    }

    /// Store-wide numbers for status pages and benchmarks.
    pub fn stats(&self) -> Result<StoreStats> {
        let conn = self.db.lock();
        let (chunks, raw, stored) = ChunkStore::totals(&conn)?;
        let logical = namespace::logical_bytes(&conn, None)?;
        drop(conn);
        let mut pack_bytes = 0;
        if let Ok(rd) = std::fs::read_dir(self.root.join("packs")) {
            for e in rd.flatten() {
                pack_bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        let (fs_total, fs_free) = self.fs_space();
        Ok(StoreStats {
            fs_total_bytes: fs_total,
            fs_free_bytes: fs_free,
            chunks,
            chunk_raw_bytes: raw,
            chunk_stored_bytes: stored,
            pack_bytes,
            live_logical_bytes: logical,
            staged_files: self.staging.all().len() as u64,
            read_cache_bytes: self.chunks.cache_bytes(),
            chunk_lookups: self.chunks.lookups(),
        })
    }
}

impl Drop for Store {
    /// A clean close: staged data fsynced and the WAL folded into the database file.
    fn drop(&mut self) {
        if self.latch.check().is_ok() {
            if let Err(e) = self.sync_all() {
                tracing::warn!(error = %e, "sync at close failed");
            }
            let _ = self
                .db
                .lock()
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
        }
    }
}

/// Where content bytes go, in order ([`Store::content_to`]).
trait Sink {
    fn data(&mut self, b: &[u8]);
    fn zeros(&mut self, n: usize);
    /// Bytes `at..at + len` of a cached chunk (copied, unless the sink keeps slices).
    fn chunk(&mut self, c: &ChunkRef, at: usize, len: usize) {
        self.data(&c[at..at + len]);
    }
    /// Bytes of their own (a staged read), handed over whole.
    fn owned(&mut self, v: IoBuf) {
        self.data(&v);
    }
    /// `n` more bytes will follow.
    fn reserve(&mut self, _n: usize) {}
}

/// Bytes of a READ: slices of cached chunks, or bytes of their own (staged data,
/// zeros). Sent to the client as they are, without being copied into one buffer.
pub enum Piece {
    Shared(ChunkRef),
    Owned(Vec<u8>),
    /// A recycled buffer (a staged read).
    Buf(IoBuf),
    /// This many zeros (at most 1 MiB), from one static page run: a hole.
    Zeros(usize),
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        match self {
            Piece::Shared(c) => c,
            Piece::Owned(v) => v,
            Piece::Buf(b) => b,
            Piece::Zeros(n) => &ZEROS[..*n],
        }
    }
}

/// A sink that keeps chunk slices instead of copying them.
struct Pieces(Vec<Piece>);

impl Sink for Pieces {
    fn data(&mut self, b: &[u8]) {
        self.0.push(Piece::Owned(b.to_vec()));
    }
    fn zeros(&mut self, mut n: usize) {
        while n > 0 {
            let k = n.min(ZEROS.len());
            self.0.push(Piece::Zeros(k));
            n -= k;
        }
    }
    fn chunk(&mut self, c: &ChunkRef, at: usize, len: usize) {
        self.0.push(Piece::Shared(c.slice(at, len)));
    }
    fn owned(&mut self, v: IoBuf) {
        self.0.push(Piece::Buf(v));
    }
}

impl Sink for Vec<u8> {
    fn data(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
    fn reserve(&mut self, n: usize) {
        Vec::reserve(self, n);
    }
    fn zeros(&mut self, n: usize) {
        self.resize(self.len() + n, 0);
    }
}

/// A sink that fills a slice from its start.
struct SliceSink<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Sink for SliceSink<'_> {
    fn data(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    fn zeros(&mut self, n: usize) {
        self.buf[self.pos..self.pos + n].fill(0);
        self.pos += n;
    }
}

#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    pub chunks: u64,
    /// Plain bytes of all indexed chunks (data and metadata objects).
    pub chunk_raw_bytes: u64,
    /// Bytes the indexed chunks take in packs, headers included.
    pub chunk_stored_bytes: u64,
    /// Bytes of all pack files on disk (includes garbage not yet collected).
    pub pack_bytes: u64,
    /// Sum of live file sizes (as last ingested) across volumes.
    pub live_logical_bytes: u64,
    pub staged_files: u64,
    /// Decoded, checked chunk records held in memory now (at most `cache_bytes`).
    pub read_cache_bytes: u64,
    /// Chunk index rows looked up by id since the store was opened (reads find most
    /// chunks of a file without one: see `ChunkStore::get_many`).
    pub chunk_lookups: u64,
    /// Capacity of the filesystem holding the store (FSSTAT reports the same).
    pub fs_total_bytes: u64,
    pub fs_free_bytes: u64,
}

/// Whether truncating the unstaged file `i` to `size` changes nothing: a file that is
/// nothing but its size (no content ingested), already that size (`open(O_TRUNC)` of
/// a file just created). Such a truncate writes nothing, as ftruncate(2) changes no
/// times when the size stays.
fn truncates_nothing(i: &Inode, size: u64) -> bool {
    i.content.is_none() && i.attr.size == size
}

/// (total, available) bytes of the filesystem holding `path`.
fn statvfs(path: &Path) -> Option<(u64, u64)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct; `c` is a valid C string.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut st) == 0).then(|| {
            let f = st.f_frsize as u64;
            (st.f_blocks as u64 * f, st.f_bavail as u64 * f)
        })
    }
}

/// Volume and snapshot names: 1-64 bytes of `[A-Za-z0-9._-]`, not starting with '.'.
pub fn check_volume_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            name: name.chars().take(64).collect(),
            why: "must be 1-64 characters of A-Z a-z 0-9 . _ - and not start with '.'",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metadata headroom is 8 MiB, or 1/64 of a small filesystem, so that a small
    /// filesystem is not all headroom and a large one keeps room for names and deletes.
    #[test]
    fn headroom_is_bounded_by_the_filesystem() {
        assert_eq!(headroom(1 << 40), MIN_FREE_BYTES);
        assert_eq!(headroom(64 << 20), 1 << 20);
        assert_eq!(headroom(0), 0);
    }

    /// Volume and snapshot names become NFS paths and CLI arguments: nothing that
    /// could be a path, hidden, empty or long.
    #[test]
    fn volume_names_are_plain() {
        for ok in ["backup", "db-01", "a.b_c", &"x".repeat(64)] {
            assert!(check_volume_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", "ü", &"x".repeat(65)] {
            assert!(check_volume_name(bad).is_err(), "{bad:?}");
        }
    }
}
