//! The one door to the store ([`Shared::run`]) and the caches in front of it: live
//! attributes (invalidated by every mutation through any export), the volume list,
//! and the index of snapshot directory objects.

use super::*;

/// State shared by all exports of one store.
pub struct Shared {
    /// Only this module touches the store: everything else goes through `run`.
    store: Arc<Store>,
    permits: Semaphore,
    attrs: Mutex<AttrCache>,
    pub(super) dir_index: Mutex<LruCache<ChunkId, Arc<HashMap<FileId, usize>>>>,
    pub(super) started: Timespec,
    /// Mutating calls pass it; snapshot jobs close it per volume.
    pub gate: Arc<FreezeGate>,
    /// Told of every NFS call served (for metrics), once set.
    observer: std::sync::OnceLock<CallObserver>,
    /// Worker threads now running a store call in place ([`Shared::run_inline`]).
    inline: AtomicUsize,
}

/// A worker thread's turn at a store call in place; given back when dropped.
struct InlineTurn<'a>(&'a AtomicUsize);

impl Drop for InlineTurn<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Live attributes by file id. Every invalidation moves `epoch` on, and a value read
/// from the store is kept only if the epoch is still the one taken before the read
/// began ([`Shared::attr_ticket`]): a read that overlapped a change must not put back
/// what the change's invalidation removed.
struct AttrCache {
    lru: LruCache<FileId, (Attr, VolumeId)>,
    epoch: u64,
}

/// The attribute cache's epoch when a store read or change began.
#[derive(Clone, Copy, Debug)]
pub(super) struct AttrTicket(u64);

/// Told of each NFS call: procedure name, time to serve, bytes in and out.
pub type CallObserver = Box<dyn Fn(&'static str, std::time::Duration, usize, usize) + Send + Sync>;

impl Shared {
    /// `max_inflight` bounds store calls in progress (and so the memory they hold).
    pub fn new(store: Arc<Store>, max_inflight: usize) -> Arc<Self> {
        Arc::new(Shared {
            store,
            permits: Semaphore::new(max_inflight.max(1)),
            attrs: Mutex::new(AttrCache {
                lru: LruCache::new(NonZeroUsize::new(65_536).unwrap()),
                epoch: 0,
            }),
            dir_index: Mutex::new(LruCache::new(NonZeroUsize::new(256).unwrap())),
            started: Timespec::now(),
            gate: FreezeGate::new(),
            observer: std::sync::OnceLock::new(),
            inline: AtomicUsize::new(0),
        })
    }

    /// A slot among the bounded store calls in flight; waits when all are taken.
    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, nfsstat3> {
        self.permits
            .acquire()
            .await
            .map_err(|_| nfsstat3::NFS3ERR_SERVERFAULT)
    }

    /// The one door to the store.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        op: &'static str,
        f: impl FnOnce(&Store) -> storage::Result<T> + Send + 'static,
    ) -> Result<T, nfsstat3> {
        let _permit = self.permit().await?;
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(to_nfs(op, &e)),
            // The runtime is shutting down: the call was cancelled, nothing went wrong.
            Err(e) if e.is_cancelled() => {
                tracing::debug!(op, "store call cancelled at shutdown");
                Err(nfsstat3::NFS3ERR_SERVERFAULT)
            }
            Err(e) => {
                tracing::error!(op, error = %e, "store call panicked");
                Err(nfsstat3::NFS3ERR_SERVERFAULT)
            }
        }
    }

    /// Like [`Shared::run`] for a point read of the namespace (LOOKUP, attributes not
    /// in the cache), run on this worker thread: such a read takes a pooled SQLite
    /// reader (WAL: it never waits for the writer) and at most a staged file's
    /// bookkeeping lock, and costs less than the two thread hops to the blocking pool
    /// and back (which were most of a LOOKUP's time). Nothing that may wait on the
    /// writer, do I/O beyond the database pages, or run long goes through here.
    pub async fn run_quick<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Store) -> storage::Result<T>,
    ) -> Result<T, nfsstat3> {
        let _permit = self.permit().await?;
        f(&self.store).map_err(|e| to_nfs(op, &e))
    }

    /// Like [`Shared::run`] for a call that borrows the request's buffer: runs on this
    /// worker thread (`block_in_place`) so that a 1 MiB WRITE payload is not copied.
    pub async fn run_here<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Store) -> storage::Result<T>,
    ) -> Result<T, nfsstat3> {
        self.run_quick(op, |s| tokio::task::block_in_place(|| f(s)))
            .await
    }

    /// Like [`Shared::run`] for a short store call that may block for an fsync or a
    /// transaction (a small file's CREATE and COMMIT), but run on this worker thread
    /// while all but one of the runtime's workers are free of such calls, so that one
    /// always serves the rest; otherwise (and on a one-worker runtime) through the
    /// blocking pool as `run`. The two thread hops to the pool and back were ~15% of
    /// the daemon's CPU per small file created. Callers make sure the call is short
    /// (a writer taken only if free, an fsync only when fsyncs are quick).
    pub async fn run_inline<T: Send + 'static>(
        self: &Arc<Self>,
        op: &'static str,
        f: impl FnOnce(&Store) -> storage::Result<T> + Send + 'static,
    ) -> Result<T, nfsstat3> {
        match self.inline_turn() {
            Some(_turn) => self.run_quick(op, f).await,
            None => self.run(op, f).await,
        }
    }

    fn inline_turn(&self) -> Option<InlineTurn<'_>> {
        let workers = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers())
            .unwrap_or(1);
        let most = workers.saturating_sub(1);
        self.inline
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < most).then_some(n + 1)
            })
            .ok()
            .map(|_| InlineTurn(&self.inline))
    }

    /// Whether a COMMIT of `ino` would be one quick fsync (see `Store::sync_is_quick`).
    pub(super) fn sync_is_quick(&self, ino: FileId) -> bool {
        self.store.sync_is_quick(ino)
    }

    /// Sets the observer of NFS calls (once; later calls are ignored).
    pub fn set_observer(&self, f: CallObserver) {
        let _ = self.observer.set(f);
    }

    pub(crate) fn observe(
        &self,
        proc_: &'static str,
        took: std::time::Duration,
        bytes_in: usize,
        bytes_out: usize,
    ) {
        if let Some(f) = self.observer.get() {
            f(proc_, took, bytes_in, bytes_out);
        }
    }

    /// Forgets cached attributes (after any mutation of these files).
    pub fn invalidate(&self, inos: &[FileId]) {
        let mut c = self.attrs.lock().unwrap();
        for i in inos {
            c.lru.pop(i);
        }
        c.epoch += 1;
    }

    /// Taken before a store call whose result may be cached.
    pub(super) fn attr_ticket(&self) -> AttrTicket {
        AttrTicket(self.attrs.lock().unwrap().epoch)
    }

    pub(super) fn cached_attr(&self, ino: FileId) -> Option<(Attr, VolumeId)> {
        self.attrs.lock().unwrap().lru.get(&ino).copied()
    }

    /// Caches attributes read from the store, unless something was invalidated since
    /// `t` was taken (the read may then hold what that change replaced).
    pub(super) fn remember(&self, t: AttrTicket, a: Attr, vol: VolumeId) {
        let mut c = self.attrs.lock().unwrap();
        if c.epoch == t.0 {
            c.lru.put(a.ino, (a, vol));
        }
    }

    /// After a change made by a store call that read `fresh` (of files in `vol`) after
    /// making it, and that also changed `also`: keeps `fresh` when nothing was
    /// invalidated since `t` (no other change can have come between), forgets it
    /// otherwise, and forgets `also`. Like every invalidation it moves the epoch on, so
    /// that reads begun before the change put nothing back.
    pub(super) fn changed(&self, t: AttrTicket, fresh: &[Attr], vol: VolumeId, also: &[FileId]) {
        let mut c = self.attrs.lock().unwrap();
        let keep = c.epoch == t.0;
        for a in fresh {
            if keep {
                c.lru.put(a.ino, (*a, vol));
            } else {
                c.lru.pop(&a.ino);
            }
        }
        for i in also {
            c.lru.pop(i);
        }
        c.epoch += 1;
    }

    /// FSINFO's maxfilesize (a fixed property of the open store).
    pub(super) fn max_file_size(&self) -> u64 {
        self.store.max_file_size()
    }

    pub fn invalidate_all(&self) {
        let mut c = self.attrs.lock().unwrap();
        c.lru.clear();
        c.epoch += 1;
    }
}

impl KuraFs {
    /// Names of the volumes this export shows (MOUNT's EXPORT list).
    pub async fn volume_names(&self) -> Result<Vec<String>, nfsstat3> {
        Ok(self.volumes().await?.into_iter().map(|v| v.name).collect())
    }

    /// Volumes visible here: (id, name, root).
    pub(super) async fn volumes(&self) -> Result<Vec<storage::Volume>, nfsstat3> {
        let all = self.shared.run("list volumes", |s| s.volumes()).await?;
        Ok(all
            .into_iter()
            .filter(|v| self.volume_allowed(&v.name))
            .collect())
    }

    pub(super) async fn volume_by_id(&self, id: VolumeId) -> Result<storage::Volume, nfsstat3> {
        self.volumes()
            .await?
            .into_iter()
            .find(|v| v.id == id)
            .ok_or(nfsstat3::NFS3ERR_STALE)
    }

    /// Is `ino` the root of a volume exported here?
    pub(super) async fn volume_of_root(
        &self,
        ino: FileId,
    ) -> Result<Option<storage::Volume>, nfsstat3> {
        Ok(self.volumes().await?.into_iter().find(|v| v.root == ino))
    }

    /// Attributes of a live inode, from the cache when possible; checks the inode's
    /// volume is exported here.
    pub(super) async fn live_attr(&self, ino: FileId) -> Result<Attr, nfsstat3> {
        Ok(self.live_attr_vol(ino).await?.0)
    }

    /// Lets a mutating call on live inode `ino` through its volume's freeze gate
    /// (waiting while the volume is frozen); the drain of a freeze waits for the pass.
    pub(super) async fn pass(&self, ino: FileId) -> Result<Pass, nfsstat3> {
        Ok(self.pass_vol(ino).await?.0)
    }

    /// [`KuraFs::pass`], also telling the volume the inode belongs to.
    pub(super) async fn pass_vol(&self, ino: FileId) -> Result<(Pass, VolumeId), nfsstat3> {
        let (_, vol) = self.live_attr_vol(ino).await?;
        Ok((self.shared.gate.enter(vol).await, vol))
    }

    async fn live_attr_vol(&self, ino: FileId) -> Result<(Attr, VolumeId), nfsstat3> {
        let cached = self.shared.cached_attr(ino);
        let (a, vol) = match cached {
            Some(v) => v,
            None => {
                let t = self.shared.attr_ticket();
                let i = self
                    .shared
                    .run_quick("getattr", move |s| s.inode(ino))
                    .await
                    .map_err(|e| {
                        if e == nfsstat3::NFS3ERR_NOENT {
                            nfsstat3::NFS3ERR_STALE
                        } else {
                            e
                        }
                    })?;
                self.shared.remember(t, i.attr, i.vol);
                (i.attr, i.vol)
            }
        };
        if !self.volume_visible(vol).await? {
            return Err(nfsstat3::NFS3ERR_STALE);
        }
        Ok((a, vol))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nfs3_types::xdr_codec::Opaque;

    fn store() -> (tempfile::TempDir, Arc<Store>, storage::Volume) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), storage::StoreOptions::default()).unwrap();
        let owner = NewAttr {
            mode: 0o755,
            uid: 0,
            gid: 0,
        };
        let v = store.create_volume("v", owner).unwrap();
        (dir, Arc::new(store), v)
    }

    /// A read that began before an invalidation caches nothing; a change keeps what
    /// it read back only when no other invalidation came between.
    #[test]
    fn the_epoch_keeps_overlapping_reads_and_changes_out_of_the_cache() {
        let (_d, store, v) = store();
        let shared = Shared::new(store.clone(), 4);
        let a = store.getattr(v.root).unwrap();
        let stale = Attr { size: 1, ..a };

        let t = shared.attr_ticket();
        shared.invalidate(&[v.root]);
        shared.remember(t, stale, v.id);
        assert!(
            shared.cached_attr(v.root).is_none(),
            "a read overlapping a change"
        );

        let t = shared.attr_ticket();
        shared.remember(t, a, v.id);
        assert_eq!(shared.cached_attr(v.root).unwrap().0.size, a.size);

        let t = shared.attr_ticket();
        shared.changed(t, &[stale], v.id, &[]);
        assert_eq!(
            shared.cached_attr(v.root).unwrap().0.size,
            1,
            "its own change"
        );

        // Two changes in flight: the later-finishing one read before the other's
        // invalidation, so it must not be cached.
        let (t1, t2) = (shared.attr_ticket(), shared.attr_ticket());
        shared.changed(t2, &[a], v.id, &[]);
        shared.changed(t1, &[stale], v.id, &[]);
        assert!(shared.cached_attr(v.root).is_none());
        // and reads begun before a change put nothing back.
        shared.remember(t1, a, v.id);
        assert!(shared.cached_attr(v.root).is_none());

        let t = shared.attr_ticket();
        shared.remember(t, a, v.id);
        shared.invalidate_all();
        assert!(shared.cached_attr(v.root).is_none());
    }

    /// What the export answers after CREATE, SETATTR and WRITE (partly from the
    /// attributes those calls cached) is what an export with an empty cache answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cached_attributes_after_changes_match_the_store() {
        let (_d, store, v) = store();
        let fs = KuraFs::new(Shared::new(store.clone(), 4), ExportPolicy::default());
        let uncached =
            || async { KuraFs::new(Shared::new(store.clone(), 4), ExportPolicy::default()) };
        let key = |n: &fattr3| {
            (
                n.size,
                n.mode,
                n.nlink,
                n.uid,
                n.gid,
                (n.mtime.seconds, n.mtime.nseconds),
                (n.ctime.seconds, n.ctime.nseconds),
            )
        };
        let same = |n: fattr3, node: Node| async move {
            let fresh = uncached().await;
            let h = fresh.resolve(node).await.unwrap();
            assert_eq!(key(&n), key(&fresh.getattr(&h).await.unwrap()));
        };
        let root = fs.resolve(Node::Live(v.root)).await.unwrap();
        fs.getattr(&root).await.unwrap(); // cached before the change
        let name = filename3(Opaque::borrowed(b"f"));
        let (f, fa) = fs
            .create(&root, &name, sattr3::default(), false)
            .await
            .unwrap();
        same(fa, f.clone()).await;
        same(fs.getattr(&root).await.unwrap(), root.0.clone()).await;

        let h = fs.resolve(f.clone()).await.unwrap();
        let trunc = sattr3 {
            size: set_size3::Some(0),
            ..sattr3::default()
        };
        same(fs.setattr(&h, trunc).await.unwrap(), f.clone()).await;
        let (wa, _) = fs
            .write(&h, 0, &[7u8; 4096], stable_how::UNSTABLE)
            .await
            .unwrap();
        assert_eq!(wa.size, 4096);
        same(wa, f.clone()).await;
        same(fs.getattr(&h).await.unwrap(), f.clone()).await;
        let (wa, _) = fs
            .write(&h, 4096, &[8u8; 100], stable_how::FILE_SYNC)
            .await
            .unwrap();
        assert_eq!(wa.size, 4196);
        same(fs.getattr(&h).await.unwrap(), f.clone()).await;
        let chmod = sattr3 {
            mode: set_mode3::Some(0o600),
            ..sattr3::default()
        };
        fs.setattr(&h, chmod).await.unwrap();
        let a = fs.getattr(&h).await.unwrap();
        assert_eq!(a.mode & 0o7777, 0o600);
        same(a, f).await;
    }
}
