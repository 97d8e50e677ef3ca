//! The one door to the store ([`Shared::run`]) and the caches in front of it: live
//! attributes (invalidated by every mutation through any export), the volume list,
//! and the index of snapshot directory objects.

use super::*;

/// State shared by all exports of one store.
pub struct Shared {
    /// Only this module touches the store: everything else goes through `run`.
    store: Arc<Store>,
    permits: Semaphore,
    pub(super) attrs: Mutex<LruCache<FileId, (Attr, VolumeId)>>,
    pub(super) dir_index: Mutex<LruCache<ChunkId, Arc<HashMap<FileId, usize>>>>,
    pub(super) started: Timespec,
    /// Mutating calls pass it; snapshot jobs close it per volume.
    pub gate: Arc<FreezeGate>,
    /// Told of every NFS call served (for metrics), once set.
    observer: std::sync::OnceLock<CallObserver>,
}

/// Told of each NFS call: procedure name, time to serve, bytes in and out.
pub type CallObserver = Box<dyn Fn(&'static str, std::time::Duration, usize, usize) + Send + Sync>;

impl Shared {
    /// `max_inflight` bounds store calls in progress (and so the memory they hold).
    pub fn new(store: Arc<Store>, max_inflight: usize) -> Arc<Self> {
        Arc::new(Shared {
            store,
            permits: Semaphore::new(max_inflight.max(1)),
            attrs: Mutex::new(LruCache::new(NonZeroUsize::new(65_536).unwrap())),
            dir_index: Mutex::new(LruCache::new(NonZeroUsize::new(256).unwrap())),
            started: Timespec::now(),
            gate: FreezeGate::new(),
            observer: std::sync::OnceLock::new(),
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
            c.pop(i);
        }
    }

    /// FSINFO's maxfilesize (a fixed property of the open store).
    pub(super) fn max_file_size(&self) -> u64 {
        self.store.max_file_size()
    }

    pub fn invalidate_all(&self) {
        self.attrs.lock().unwrap().clear();
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
        let (_, vol) = self.live_attr_vol(ino).await?;
        Ok(self.shared.gate.enter(vol).await)
    }

    async fn live_attr_vol(&self, ino: FileId) -> Result<(Attr, VolumeId), nfsstat3> {
        let cached = self.shared.attrs.lock().unwrap().get(&ino).copied();
        let (a, vol) = match cached {
            Some(v) => v,
            None => {
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
                self.shared.attrs.lock().unwrap().put(ino, (i.attr, i.vol));
                (i.attr, i.vol)
            }
        };
        if !self.volume_visible(vol).await? {
            return Err(nfsstat3::NFS3ERR_STALE);
        }
        Ok((a, vol))
    }
}
