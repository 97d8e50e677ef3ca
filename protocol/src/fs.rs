//! `KuraFs`: the NFSv3 file system of one export, on top of `storage::Store`.
//!
//! Every store call goes through one door, [`Shared::run`]: a semaphore bounds the calls
//! in flight (backpressure however deep a client's queue) and `spawn_blocking` keeps
//! the sync store off the async threads. Attributes of live files are cached in memory
//! and invalidated by every mutation made through any export (all mutations of a live
//! volume go through here), so GETATTR rarely touches the store.

use crate::errors::to_nfs;
use crate::handle::{fileid, Node};
use lru::LruCache;
use nfs3_types::nfs3::{
    createverf3, fattr3, filename3, ftype3, nfspath3, nfsstat3, nfstime3, sattr3, set_atime,
    set_gid3, set_mode3, set_mtime, set_size3, set_uid3, specdata3, stable_how, FSINFO3resok,
};
use nfs3_types::rpc::auth_unix;
use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use storage::{
    Attr, ChunkId, FileId, FileKind, NewAttr, SetAttr, SnapshotId, Store, StoreError, Timespec,
    TreeEntry, VolumeId,
};
use tokio::sync::Semaphore;

/// Name of the read-only snapshot directory in every volume root. Hidden from listings
/// (like ZFS's `.zfs` with snapdir=hidden) so that copying a volume does not copy its
/// snapshots; reachable by name.
pub const SNAPDIR: &[u8] = b".snapshots";

/// Largest READ or WRITE (FSINFO's rtmax and wtmax); longer READs return this much.
pub const MAX_IO: usize = 1 << 20;

/// A node that passed the export's gate ([`KuraFs::resolve`]): it exists and belongs to
/// a volume this export shows. Every procedure takes its handles as `Checked`, and only
/// `resolve` makes one, so no procedure can reach a node the export does not show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked(Node);

impl Checked {
    pub fn node(&self) -> &Node {
        &self.0
    }
}

/// Per-export rules.
#[derive(Clone, Debug)]
pub struct ExportPolicy {
    /// Volumes this export shows; None = all.
    pub volumes: Option<Vec<String>>,
    pub read_only: bool,
    /// Owner 0 in attributes sent by clients becomes the anonymous ids.
    pub root_squash: bool,
    pub anon_uid: u32,
    pub anon_gid: u32,
    /// Owner of new files when the client sends none.
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// AUTH_UNIX uids refused outright.
    pub refuse_uids: Vec<u32>,
}

impl Default for ExportPolicy {
    fn default() -> Self {
        ExportPolicy {
            volumes: None,
            read_only: false,
            root_squash: true,
            anon_uid: 65534,
            anon_gid: 65534,
            owner_uid: 0,
            owner_gid: 0,
            refuse_uids: Vec::new(),
        }
    }
}

/// State shared by all exports of one store.
pub struct Shared {
    pub store: Arc<Store>,
    permits: Semaphore,
    attrs: Mutex<LruCache<FileId, (Attr, VolumeId)>>,
    dir_index: Mutex<LruCache<ChunkId, Arc<HashMap<FileId, usize>>>>,
    started: Timespec,
}

impl Shared {
    /// `max_inflight` bounds store calls in progress (and so the memory they hold).
    pub fn new(store: Arc<Store>, max_inflight: usize) -> Arc<Self> {
        Arc::new(Shared {
            store,
            permits: Semaphore::new(max_inflight.max(1)),
            attrs: Mutex::new(LruCache::new(NonZeroUsize::new(65_536).unwrap())),
            dir_index: Mutex::new(LruCache::new(NonZeroUsize::new(256).unwrap())),
            started: Timespec::now(),
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
            Err(e) => {
                tracing::error!(op, error = %e, "store call panicked");
                Err(nfsstat3::NFS3ERR_SERVERFAULT)
            }
        }
    }

    /// Like [`Shared::run`] for a call that borrows the request's buffer: runs on this
    /// worker thread (`block_in_place`) so that a 1 MiB WRITE payload is not copied.
    pub async fn run_here<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Store) -> storage::Result<T>,
    ) -> Result<T, nfsstat3> {
        let _permit = self.permit().await?;
        tokio::task::block_in_place(|| f(&self.store)).map_err(|e| to_nfs(op, &e))
    }

    /// Forgets cached attributes (after any mutation of these files).
    pub fn invalidate(&self, inos: &[FileId]) {
        let mut c = self.attrs.lock().unwrap();
        for i in inos {
            c.pop(i);
        }
    }

    pub fn invalidate_all(&self) {
        self.attrs.lock().unwrap().clear();
    }
}

#[derive(Clone)]
pub struct KuraFs {
    shared: Arc<Shared>,
    policy: Arc<ExportPolicy>,
    fsid: u64,
    /// For exports limited to some volumes: which volume ids (and snapshot ids) are
    /// visible here. Ids are never reused, so answers never go stale; caching them keeps
    /// a store query off every GETATTR and READ.
    visible: Arc<Mutex<HashMap<VolumeId, bool>>>,
}

fn ts(t: Timespec) -> nfstime3 {
    nfstime3 {
        seconds: t.sec.clamp(0, u32::MAX as i64) as u32,
        nseconds: t.nsec,
    }
}

fn from_nfstime(t: nfstime3) -> Timespec {
    Timespec {
        sec: t.seconds as i64,
        nsec: t.nseconds.min(999_999_999),
    }
}

impl KuraFs {
    pub fn new(shared: Arc<Shared>, policy: ExportPolicy) -> Self {
        KuraFs {
            shared,
            policy: Arc::new(policy),
            fsid: 0x6b757261,
            visible: Arc::default(),
        }
    }

    /// Whether volume `vol` is exported here (always, without a volume list).
    async fn volume_visible(&self, vol: VolumeId) -> Result<bool, nfsstat3> {
        if self.policy.volumes.is_none() {
            return Ok(true);
        }
        if let Some(v) = self.visible.lock().unwrap().get(&vol) {
            return Ok(*v);
        }
        let v = self.volumes().await?.iter().any(|v| v.id == vol);
        self.visible.lock().unwrap().insert(vol, v);
        Ok(v)
    }

    fn fattr(&self, node: &Node, a: &Attr) -> fattr3 {
        fattr3 {
            type_: match a.kind {
                FileKind::File => ftype3::NF3REG,
                FileKind::Dir => ftype3::NF3DIR,
                FileKind::Symlink => ftype3::NF3LNK,
            },
            mode: a.mode,
            nlink: if a.kind == FileKind::Dir { 2 } else { a.nlink },
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            used: a.size,
            rdev: specdata3::default(),
            fsid: self.fsid,
            fileid: fileid(node),
            atime: ts(a.atime),
            mtime: ts(a.mtime),
            ctime: ts(a.ctime),
        }
    }

    fn synthetic_dir(&self, node: &Node, mode: u32, t: Timespec) -> fattr3 {
        let a = Attr {
            ino: FileId(0),
            kind: FileKind::Dir,
            mode,
            uid: 0,
            gid: 0,
            size: 4096,
            atime: t,
            mtime: t,
            ctime: t,
            nlink: 2,
        };
        self.fattr(node, &a)
    }

    fn volume_allowed(&self, name: &str) -> bool {
        self.policy
            .volumes
            .as_ref()
            .is_none_or(|v| v.iter().any(|n| n == name))
    }

    fn writable(&self) -> Result<(), nfsstat3> {
        if self.policy.read_only {
            Err(nfsstat3::NFS3ERR_ROFS)
        } else {
            Ok(())
        }
    }

    fn squash_uid(&self, u: u32) -> u32 {
        if self.policy.root_squash && u == 0 {
            self.policy.anon_uid
        } else {
            u
        }
    }

    fn squash_gid(&self, g: u32) -> u32 {
        if self.policy.root_squash && g == 0 {
            self.policy.anon_gid
        } else {
            g
        }
    }

    /// Names of the volumes this export shows (MOUNT's EXPORT list).
    pub async fn volume_names(&self) -> Result<Vec<String>, nfsstat3> {
        Ok(self.volumes().await?.into_iter().map(|v| v.name).collect())
    }

    /// Volumes visible here: (id, name, root).
    async fn volumes(&self) -> Result<Vec<storage::Volume>, nfsstat3> {
        let all = self.shared.run("list volumes", |s| s.volumes()).await?;
        Ok(all
            .into_iter()
            .filter(|v| self.volume_allowed(&v.name))
            .collect())
    }

    async fn volume_by_id(&self, id: VolumeId) -> Result<storage::Volume, nfsstat3> {
        self.volumes()
            .await?
            .into_iter()
            .find(|v| v.id == id)
            .ok_or(nfsstat3::NFS3ERR_STALE)
    }

    /// Attributes of a live inode, from the cache when possible; checks the inode's
    /// volume is exported here.
    async fn live_attr(&self, ino: FileId) -> Result<Attr, nfsstat3> {
        let cached = self.shared.attrs.lock().unwrap().get(&ino).copied();
        let (a, vol) = match cached {
            Some(v) => v,
            None => {
                let i = self
                    .shared
                    .run("getattr", move |s| s.inode(ino))
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
        Ok(a)
    }

    /// The index of a snapshot directory object by file id.
    async fn snap_dir(
        &self,
        dir: ChunkId,
    ) -> Result<(Arc<Vec<TreeEntry>>, Arc<HashMap<FileId, usize>>), nfsstat3> {
        let entries = self
            .shared
            .run("read snapshot dir", move |s| s.dir_entries(&dir))
            .await?;
        let cached = self.shared.dir_index.lock().unwrap().get(&dir).cloned();
        let index = match cached {
            Some(i) => i,
            None => {
                let i: Arc<HashMap<FileId, usize>> = Arc::new(
                    entries
                        .iter()
                        .enumerate()
                        .map(|(k, e)| (e.attr.ino, k))
                        .collect(),
                );
                self.shared.dir_index.lock().unwrap().put(dir, i.clone());
                i
            }
        };
        Ok((entries, index))
    }

    /// The tree entry of a snapshot node (root or entry).
    async fn snap_entry(&self, node: &Node) -> Result<(SnapshotId, TreeEntry), nfsstat3> {
        match node {
            Node::SnapRoot(id) => {
                let id = *id;
                // Its volume was checked at the gate.
                let (_, root) = self
                    .shared
                    .run("open snapshot", move |s| s.snapshot_by_id(id))
                    .await
                    .map_err(stale)?;
                Ok((id, root))
            }
            Node::SnapEntry { snap, dir, ino } => {
                let (entries, index) = self.snap_dir(*dir).await.map_err(stale)?;
                let k = index.get(ino).ok_or(nfsstat3::NFS3ERR_STALE)?;
                Ok((*snap, entries[*k].clone()))
            }
            _ => Err(nfsstat3::NFS3ERR_BADHANDLE),
        }
    }

    async fn node_attr(&self, node: &Node) -> Result<fattr3, nfsstat3> {
        match node {
            Node::Root => Ok(self.synthetic_dir(node, 0o755, self.shared.started)),
            Node::Live(ino) => {
                let a = self.live_attr(*ino).await?;
                Ok(self.fattr(node, &a))
            }
            Node::SnapDir(v) => {
                let vol = self.volume_by_id(*v).await?;
                let root = self.live_attr(vol.root).await?;
                Ok(self.synthetic_dir(node, 0o555, root.ctime))
            }
            Node::SnapRoot(_) | Node::SnapEntry { .. } => {
                let (_, e) = self.snap_entry(node).await?;
                Ok(self.fattr(node, &e.attr))
            }
        }
    }

    /// The parent of a snapshot directory. Handles name the directory object holding an
    /// entry but not that object's own place, so it is found by walking the snapshot
    /// from its root (only `..` lookups pay this).
    async fn snap_parent(&self, snap: SnapshotId, node: &Node) -> Result<Node, nfsstat3> {
        let Node::SnapEntry { dir: holder, .. } = node else {
            // The parent of a snapshot root is the volume's .snapshots directory.
            let (info, _) = self
                .shared
                .run("open snapshot", move |s| s.snapshot_by_id(snap))
                .await?;
            let vol = self
                .volumes()
                .await?
                .into_iter()
                .find(|v| v.name == info.volume)
                .ok_or(nfsstat3::NFS3ERR_STALE)?;
            return Ok(Node::SnapDir(vol.id));
        };
        let holder = *holder;
        let found = self
            .shared
            .run("lookup .. in snapshot", move |s| {
                let (_, root) = s.snapshot_by_id(snap)?;
                let mut stack = vec![root.target_ref];
                if root.target_ref == Some(holder) {
                    return Ok(None);
                }
                while let Some(Some(d)) = stack.pop() {
                    for e in s.dir_entries(&d)?.iter() {
                        if e.attr.kind == FileKind::Dir {
                            if e.target_ref == Some(holder) {
                                return Ok(Some((d, e.attr.ino)));
                            }
                            stack.push(e.target_ref);
                        }
                    }
                }
                Err(StoreError::NotFound("parent directory in snapshot".into()))
            })
            .await?;
        Ok(match found {
            None => Node::SnapRoot(snap),
            Some((dir, ino)) => Node::SnapEntry { snap, dir, ino },
        })
    }

    /// Is `ino` the root of a volume exported here?
    async fn volume_of_root(&self, ino: FileId) -> Result<Option<storage::Volume>, nfsstat3> {
        Ok(self.volumes().await?.into_iter().find(|v| v.root == ino))
    }

    fn new_attr(&self, s: &sattr3, default_mode: u32) -> NewAttr {
        NewAttr {
            mode: match s.mode {
                set_mode3::Some(m) => m,
                set_mode3::None => default_mode,
            },
            uid: self.squash_uid(match s.uid {
                set_uid3::Some(u) => u,
                set_uid3::None => self.policy.owner_uid,
            }),
            gid: self.squash_gid(match s.gid {
                set_gid3::Some(g) => g,
                set_gid3::None => self.policy.owner_gid,
            }),
        }
    }

    fn set_attr(&self, s: &sattr3) -> SetAttr {
        let now = Timespec::now();
        SetAttr {
            mode: match s.mode {
                set_mode3::Some(m) => Some(m),
                set_mode3::None => None,
            },
            uid: match s.uid {
                set_uid3::Some(u) => Some(self.squash_uid(u)),
                set_uid3::None => None,
            },
            gid: match s.gid {
                set_gid3::Some(g) => Some(self.squash_gid(g)),
                set_gid3::None => None,
            },
            size: match s.size {
                set_size3::Some(n) => Some(n),
                set_size3::None => None,
            },
            atime: match s.atime {
                set_atime::DONT_CHANGE => None,
                set_atime::SET_TO_SERVER_TIME => Some(now),
                set_atime::SET_TO_CLIENT_TIME(t) => Some(from_nfstime(t)),
            },
            mtime: match s.mtime {
                set_mtime::DONT_CHANGE => None,
                set_mtime::SET_TO_SERVER_TIME => Some(now),
                set_mtime::SET_TO_CLIENT_TIME(t) => Some(from_nfstime(t)),
            },
        }
    }

    /// The live directory a mutation targets; snapshot nodes are read-only.
    fn live_dir(&self, node: &Node) -> Result<FileId, nfsstat3> {
        self.writable()?;
        match node {
            Node::Live(i) => Ok(*i),
            Node::Root => Err(nfsstat3::NFS3ERR_ACCES),
            _ => Err(nfsstat3::NFS3ERR_ROFS),
        }
    }

    /// Refuses names that would shadow the snapshot directory in a volume root.
    async fn check_new_name(&self, dir: FileId, name: &[u8]) -> Result<(), nfsstat3> {
        if name == SNAPDIR && self.volume_of_root(dir).await?.is_some() {
            return Err(nfsstat3::NFS3ERR_EXIST);
        }
        Ok(())
    }

    /// The gate every handle passes once, before any procedure sees its node: the node
    /// must exist (else STALE) and belong to a volume this export shows (else STALE, as
    /// if it did not exist: a handle must not reveal what other exports hold).
    pub async fn resolve(&self, node: Node) -> Result<Checked, nfsstat3> {
        match &node {
            Node::Root => {}
            Node::Live(ino) => {
                self.live_attr(*ino).await?;
            }
            Node::SnapDir(v) => {
                self.volume_by_id(*v).await?;
            }
            Node::SnapRoot(snap) | Node::SnapEntry { snap, .. } => {
                let snap = *snap;
                let (info, _) = self
                    .shared
                    .run("open snapshot", move |s| s.snapshot_by_id(snap))
                    .await
                    .map_err(stale)?;
                if !self.volume_allowed(&info.volume) {
                    return Err(nfsstat3::NFS3ERR_STALE);
                }
            }
        }
        Ok(Checked(node))
    }
}

fn stale(e: nfsstat3) -> nfsstat3 {
    if e == nfsstat3::NFS3ERR_NOENT {
        nfsstat3::NFS3ERR_STALE
    } else {
        e
    }
}

/// Directory listings: live directories are paged from the store by entry-id cookie;
/// snapshot directories are walked by position in their sorted object.
pub enum KuraIter {
    Live {
        fs: KuraFs,
        dir: FileId,
        cookie: u64,
        buf: VecDeque<DirEntryPlus>,
        fetch: usize,
        done: bool,
    },
    Fixed(VecDeque<DirEntryPlus>),
    Snap {
        fs: KuraFs,
        snap: SnapshotId,
        dir: ChunkId,
        entries: Arc<Vec<TreeEntry>>,
        pos: usize,
    },
}

/// One directory entry with its attributes and handle (READDIRPLUS shape).
pub struct DirEntryPlus {
    pub fileid: u64,
    pub name: Vec<u8>,
    pub cookie: u64,
    pub name_attributes: fattr3,
    pub name_handle: Node,
}

impl KuraIter {
    /// The next entry; `None` at the end of the directory.
    pub async fn next(&mut self) -> Result<Option<DirEntryPlus>, nfsstat3> {
        match self {
            KuraIter::Fixed(v) => Ok(v.pop_front()),
            KuraIter::Snap {
                fs,
                snap,
                dir,
                entries,
                pos,
            } => {
                let Some(e) = entries.get(*pos) else {
                    return Ok(None);
                };
                *pos += 1;
                let node = Node::SnapEntry {
                    snap: *snap,
                    dir: *dir,
                    ino: e.attr.ino,
                };
                Ok(Some(DirEntryPlus {
                    fileid: fileid(&node),
                    name: e.name.clone(),
                    cookie: *pos as u64,
                    name_attributes: fs.fattr(&node, &e.attr),
                    name_handle: node,
                }))
            }
            KuraIter::Live {
                fs,
                dir,
                cookie,
                buf,
                fetch,
                done,
            } => {
                if buf.is_empty() && !*done {
                    // A READDIR reply holds ~100-400 entries: fetch a small first batch,
                    // then larger ones if the client's buffer takes more.
                    let (d, c, n) = (*dir, *cookie, *fetch);
                    *fetch = (n * 4).min(2048);
                    match fs.shared.run("readdir", move |s| s.readdir(d, c, n)).await {
                        Ok(page) => {
                            if page.len() < n {
                                *done = true;
                            }
                            for e in page {
                                *cookie = e.cookie;
                                let node = Node::Live(e.attr.ino);
                                buf.push_back(DirEntryPlus {
                                    fileid: e.attr.ino.0,
                                    name: e.name,
                                    cookie: e.cookie,
                                    name_attributes: fs.fattr(&node, &e.attr),
                                    name_handle: node,
                                });
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(buf.pop_front())
            }
        }
    }
}

/// The NFS operations, one per procedure; the RPC layer (`crate::nfs`) adds the
/// protocol's wrapping (wcc data, post-op attributes).
impl KuraFs {
    /// The export root (what MNT of `/` answers).
    pub fn root_dir(&self) -> Checked {
        Checked(Node::Root)
    }

    /// Whether to serve a call with this credential (`None`: not AUTH_UNIX).
    pub fn authorize(&self, auth: Option<&auth_unix>) -> bool {
        match auth {
            None => false,
            Some(a) => !self.policy.refuse_uids.contains(&a.uid),
        }
    }

    pub async fn lookup(
        &self,
        dirid: &Checked,
        filename: &filename3<'_>,
    ) -> Result<Node, nfsstat3> {
        let name = filename.as_ref().to_vec();
        let node = dirid.0.clone();
        if name.len() > storage::namespace::MAX_NAME {
            return Err(nfsstat3::NFS3ERR_NAMETOOLONG);
        }
        if name.as_slice() == b"." {
            return Ok(node);
        }
        let found = match node {
            Node::Root => {
                let n = String::from_utf8_lossy(&name).into_owned();
                let v = self
                    .volumes()
                    .await?
                    .into_iter()
                    .find(|v| v.name == n)
                    .ok_or(nfsstat3::NFS3ERR_NOENT)?;
                Node::Live(v.root)
            }
            Node::Live(dir) => {
                if name.as_slice() == b".." {
                    if self.volume_of_root(dir).await?.is_some() {
                        return Ok(Node::Root);
                    }
                    let p = self.shared.run("lookup ..", move |s| s.parent(dir)).await?;
                    Node::Live(p.ok_or(nfsstat3::NFS3ERR_NOENT)?)
                } else if name.as_slice() == SNAPDIR {
                    match self.volume_of_root(dir).await? {
                        Some(v) => Node::SnapDir(v.id),
                        None => {
                            let a = self
                                .shared
                                .run("lookup", move |s| s.lookup(dir, &name))
                                .await?;
                            Node::Live(a.ino)
                        }
                    }
                } else {
                    let (a, vol) = self
                        .shared
                        .run("lookup", move |s| {
                            let i = s.lookup_inode(dir, &name)?;
                            Ok((i.attr, i.vol))
                        })
                        .await?;
                    self.shared.attrs.lock().unwrap().put(a.ino, (a, vol));
                    Node::Live(a.ino)
                }
            }
            Node::SnapDir(v) => {
                if name.as_slice() == b".." {
                    let vol = self.volume_by_id(v).await?;
                    Node::Live(vol.root)
                } else {
                    let vol = self.volume_by_id(v).await?;
                    let n = String::from_utf8_lossy(&name).into_owned();
                    let snaps = self
                        .shared
                        .run("list snapshots", move |s| s.snapshots(Some(&vol.name)))
                        .await?;
                    let s = snaps
                        .into_iter()
                        .find(|s| s.name == n)
                        .ok_or(nfsstat3::NFS3ERR_NOENT)?;
                    Node::SnapRoot(s.id)
                }
            }
            Node::SnapRoot(_) | Node::SnapEntry { .. } => {
                let (snap, e) = self.snap_entry(&node).await?;
                if e.attr.kind != FileKind::Dir {
                    return Err(nfsstat3::NFS3ERR_NOTDIR);
                }
                let dir = e.target_ref.ok_or(nfsstat3::NFS3ERR_IO)?;
                if name.as_slice() == b".." {
                    return self.snap_parent(snap, &node).await;
                }
                let (entries, _) = self.snap_dir(dir).await?;
                let k = entries
                    .binary_search_by(|x| x.name.as_slice().cmp(&name))
                    .map_err(|_| nfsstat3::NFS3ERR_NOENT)?;
                Node::SnapEntry {
                    snap,
                    dir,
                    ino: entries[k].attr.ino,
                }
            }
        };
        Ok(found)
    }

    pub async fn getattr(&self, id: &Checked) -> Result<fattr3, nfsstat3> {
        let node = id.0.clone();
        self.node_attr(&node).await
    }

    pub async fn read(
        &self,
        id: &Checked,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool), nfsstat3> {
        let node = id.0.clone();
        let count = count.min(MAX_IO as u32);
        match node {
            Node::Live(ino) => {
                self.shared
                    .run("read", move |s| s.read(ino, offset, count))
                    .await
            }
            Node::SnapRoot(_) | Node::SnapEntry { .. } => {
                let (_, e) = self.snap_entry(&node).await?;
                if e.attr.kind != FileKind::File {
                    return Err(nfsstat3::NFS3ERR_ISDIR);
                }
                self.shared
                    .run("read snapshot", move |s| s.snap_read(&e, offset, count))
                    .await
            }
            _ => Err(nfsstat3::NFS3ERR_ISDIR),
        }
    }

    pub async fn readdirplus(&self, dirid: &Checked, cookie: u64) -> Result<KuraIter, nfsstat3> {
        let node = dirid.0.clone();
        match node {
            Node::Root => {
                let mut out = VecDeque::new();
                // Cookie = volume id, so a volume created between pages shifts nothing.
                let mut vols = self.volumes().await?;
                vols.sort_by_key(|v| v.id);
                for v in vols.into_iter().filter(|v| v.id.0 > cookie) {
                    let n = Node::Live(v.root);
                    let a = self.live_attr(v.root).await?;
                    out.push_back(DirEntryPlus {
                        fileid: v.root.0,
                        name: v.name.into_bytes(),
                        cookie: v.id.0,
                        name_attributes: self.fattr(&n, &a),
                        name_handle: n,
                    });
                }
                Ok(KuraIter::Fixed(out))
            }
            Node::Live(dir) => {
                let a = self.live_attr(dir).await?;
                if a.kind != FileKind::Dir {
                    return Err(nfsstat3::NFS3ERR_NOTDIR);
                }
                Ok(KuraIter::Live {
                    fs: self.clone(),
                    dir,
                    cookie,
                    buf: VecDeque::new(),
                    fetch: 128,
                    done: false,
                })
            }
            Node::SnapDir(v) => {
                let vol = self.volume_by_id(v).await?;
                let snaps = self
                    .shared
                    .run("list snapshots", move |s| s.snapshots(Some(&vol.name)))
                    .await?;
                let mut out = VecDeque::new();
                for s in snaps.into_iter().filter(|s| s.id.0 > cookie) {
                    let n = Node::SnapRoot(s.id);
                    let (_, e) = self.snap_entry(&n).await?;
                    out.push_back(DirEntryPlus {
                        fileid: fileid(&n),
                        name: s.name.into_bytes(),
                        cookie: s.id.0,
                        name_attributes: self.fattr(&n, &e.attr),
                        name_handle: n,
                    });
                }
                Ok(KuraIter::Fixed(out))
            }
            Node::SnapRoot(_) | Node::SnapEntry { .. } => {
                let (snap, e) = self.snap_entry(&node).await?;
                if e.attr.kind != FileKind::Dir {
                    return Err(nfsstat3::NFS3ERR_NOTDIR);
                }
                let dir = e.target_ref.ok_or(nfsstat3::NFS3ERR_IO)?;
                let (entries, _) = self.snap_dir(dir).await?;
                Ok(KuraIter::Snap {
                    fs: self.clone(),
                    snap,
                    dir,
                    entries,
                    pos: cookie as usize,
                })
            }
        }
    }

    pub async fn readlink(&self, id: &Checked) -> Result<nfspath3<'_>, nfsstat3> {
        let node = id.0.clone();
        let target = match node {
            Node::Live(ino) => {
                self.shared
                    .run("readlink", move |s| s.readlink(ino))
                    .await?
            }
            Node::SnapRoot(_) | Node::SnapEntry { .. } => {
                let (_, e) = self.snap_entry(&node).await?;
                if e.attr.kind != FileKind::Symlink {
                    return Err(nfsstat3::NFS3ERR_INVAL);
                }
                e.link
            }
            _ => return Err(nfsstat3::NFS3ERR_INVAL),
        };
        Ok(target.into())
    }

    /// ACCESS: the rights the caller has on a node, from its mode bits, owner and group
    /// against the caller's AUTH_UNIX ids (uid 0 has every right but executing a file
    /// without any x bit). Nothing is writable in snapshots or on a read-only export.
    /// The server does not repeat this check on each call (credentials are the
    /// client's word in AUTH_UNIX); it tells clients how to behave.
    pub async fn access(
        &self,
        id: &Checked,
        want: u32,
        cred: Option<&auth_unix>,
    ) -> Result<(fattr3, u32), nfsstat3> {
        use nfs3_types::nfs3::{
            ACCESS3_DELETE, ACCESS3_EXECUTE, ACCESS3_EXTEND, ACCESS3_LOOKUP, ACCESS3_MODIFY,
            ACCESS3_READ,
        };
        let node = id.0.clone();
        let a = self.node_attr(&node).await?;
        let dir = matches!(a.type_, ftype3::NF3DIR);
        let bits = match cred {
            Some(c) if c.uid == 0 => 0o7,
            Some(c) if c.uid == a.uid => (a.mode >> 6) & 7,
            Some(c) if c.gid == a.gid || c.gids.contains(&a.gid) => (a.mode >> 3) & 7,
            _ => a.mode & 7,
        };
        let mut granted = 0;
        if bits & 4 != 0 {
            granted |= ACCESS3_READ;
        }
        if bits & 2 != 0 {
            granted |= ACCESS3_MODIFY | ACCESS3_EXTEND;
            if dir {
                granted |= ACCESS3_DELETE;
            }
        }
        if dir {
            if bits & 1 != 0 {
                granted |= ACCESS3_LOOKUP;
            }
        } else if bits & 1 != 0 && a.mode & 0o111 != 0 {
            granted |= ACCESS3_EXECUTE;
        }
        if self.policy.read_only || !matches!(node, Node::Live(_)) {
            granted &= !(ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE);
        }
        Ok((a, granted & want))
    }

    /// FSSTAT: the capacity of the filesystem holding the store. Deduplication means a
    /// client can store more than `fbytes`; this is the honest lower bound. The store
    /// has no inode table, so file counts are unbounded (reported as 2^40).
    pub async fn fsstat(&self) -> Result<(u64, u64), nfsstat3> {
        self.shared.run("fsstat", |s| Ok(s.fs_space())).await
    }

    pub async fn fsinfo(&self, root: &Checked) -> Result<FSINFO3resok, nfsstat3> {
        use nfs3_types::nfs3::{post_op_attr, FSF3_CANSETTIME, FSF3_HOMOGENEOUS, FSF3_SYMLINK};
        let attr = self
            .getattr(root)
            .await
            .map_or(post_op_attr::None, post_op_attr::Some);
        const MIB: u32 = MAX_IO as u32;
        Ok(FSINFO3resok {
            obj_attributes: attr,
            rtmax: MIB,
            rtpref: MIB,
            rtmult: 4096,
            wtmax: MIB,
            wtpref: MIB,
            wtmult: 4096,
            dtpref: 64 * 1024,
            // What the staging filesystem holds (ext4: 16 TiB); past it WRITE and
            // SETATTR answer FBIG.
            maxfilesize: self.shared.store.max_file_size(),
            time_delta: nfstime3 {
                seconds: 0,
                nseconds: 1,
            },
            properties: FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME,
        })
    }
}

impl KuraFs {
    pub async fn setattr(&self, id: &Checked, setattr: sattr3) -> Result<fattr3, nfsstat3> {
        let node = id.0.clone();
        let ino = self.live_dir(&node)?;
        let s = self.set_attr(&setattr);
        self.shared.invalidate(&[ino]);
        let a = self
            .shared
            .run("setattr", move |st| st.setattr(ino, s))
            .await?;
        self.shared.invalidate(&[ino]);
        Ok(self.fattr(&node, &a))
    }

    pub async fn write(
        &self,
        id: &Checked,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> Result<(fattr3, stable_how), nfsstat3> {
        let node = id.0.clone();
        let ino = self.live_dir(&node)?;
        let a = self.live_attr(ino).await?;
        if a.kind != FileKind::File {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        let sync = !matches!(stable, stable_how::UNSTABLE);
        let a = self
            .shared
            .run_here("write", |s| {
                s.write(ino, offset, data)?;
                if sync {
                    s.sync(ino)?;
                }
                s.getattr(ino)
            })
            .await?;
        self.shared.invalidate(&[ino]);
        Ok((
            self.fattr(&node, &a),
            if sync {
                stable_how::FILE_SYNC
            } else {
                stable_how::UNSTABLE
            },
        ))
    }

    /// CREATE, UNCHECKED (`guarded == false`: an existing regular file is reused and
    /// truncated if the attributes carry a size) or GUARDED (an existing name is EXIST).
    pub async fn create(
        &self,
        dirid: &Checked,
        filename: &filename3<'_>,
        attr: sattr3,
        guarded: bool,
    ) -> Result<(Node, fattr3), nfsstat3> {
        let dir = self.live_dir(&dirid.0)?;
        let name = filename.as_ref().to_vec();
        self.check_new_name(dir, &name).await?;
        let na = self.new_attr(&attr, 0o644);
        let size = match attr.size {
            set_size3::Some(n) => Some(n),
            set_size3::None => None,
        };
        let a = self
            .shared
            .run("create", move |s| {
                let a = match s.create(dir, &name, na) {
                    Ok(a) => a,
                    Err(StoreError::Exists(_)) if !guarded => {
                        let a = s.lookup(dir, &name)?;
                        if a.kind != FileKind::File {
                            return Err(StoreError::Exists(
                                String::from_utf8_lossy(&name).into_owned(),
                            ));
                        }
                        a
                    }
                    Err(e) => return Err(e),
                };
                match size {
                    Some(n) if n != a.size => s.setattr(
                        a.ino,
                        SetAttr {
                            size: Some(n),
                            ..Default::default()
                        },
                    ),
                    _ => Ok(a),
                }
            })
            .await?;
        self.shared.invalidate(&[dir, a.ino]);
        let node = Node::Live(a.ino);
        Ok((node.clone(), self.fattr(&node, &a)))
    }

    pub async fn create_exclusive(
        &self,
        dirid: &Checked,
        filename: &filename3<'_>,
        createverf: createverf3,
    ) -> Result<Node, nfsstat3> {
        let dir = self.live_dir(&dirid.0)?;
        let name = filename.as_ref().to_vec();
        self.check_new_name(dir, &name).await?;
        let na = self.new_attr(&sattr3::default(), 0o644);
        let verf = createverf.0;
        let a = self
            .shared
            .run("create exclusive", move |s| {
                s.create_exclusive(dir, &name, na, verf)
            })
            .await?;
        self.shared.invalidate(&[dir]);
        Ok(Node::Live(a.ino))
    }

    /// MKDIR with the client's attributes (mode incl. setgid/sticky, owner, times).
    pub async fn mkdir(
        &self,
        dirid: &Checked,
        dirname: &filename3<'_>,
        attr: &sattr3,
    ) -> Result<(Node, fattr3), nfsstat3> {
        let dir = self.live_dir(&dirid.0)?;
        let name = dirname.as_ref().to_vec();
        self.check_new_name(dir, &name).await?;
        let na = self.new_attr(attr, 0o755);
        let mut times = self.set_attr(attr);
        times.mode = None;
        times.uid = None;
        times.gid = None;
        times.size = None;
        let a = self
            .shared
            .run("mkdir", move |s| {
                let a = s.mkdir(dir, &name, na)?;
                if times.atime.is_some() || times.mtime.is_some() {
                    return s.setattr(a.ino, times);
                }
                Ok(a)
            })
            .await?;
        self.shared.invalidate(&[dir]);
        let node = Node::Live(a.ino);
        Ok((node.clone(), self.fattr(&node, &a)))
    }

    /// REMOVE (`want_dir == false`: a directory is ISDIR) or RMDIR (`true`: anything
    /// else is NOTDIR, a non-empty directory NOTEMPTY).
    pub async fn remove(
        &self,
        dirid: &Checked,
        filename: &filename3<'_>,
        want_dir: bool,
    ) -> Result<(), nfsstat3> {
        let dir = self.live_dir(&dirid.0)?;
        let name = filename.as_ref().to_vec();
        if name.as_slice() == SNAPDIR && self.volume_of_root(dir).await?.is_some() {
            return Err(nfsstat3::NFS3ERR_ROFS);
        }
        let victim = self
            .shared
            .run(if want_dir { "rmdir" } else { "remove" }, move |s| {
                let a = s.lookup(dir, &name)?;
                if want_dir {
                    s.rmdir(dir, &name)?;
                } else {
                    s.remove(dir, &name)?;
                }
                Ok(a.ino)
            })
            .await?;
        self.shared.invalidate(&[dir, victim]);
        Ok(())
    }

    pub async fn rename<'a>(
        &self,
        from_dirid: &Checked,
        from_filename: &filename3<'a>,
        to_dirid: &Checked,
        to_filename: &filename3<'a>,
    ) -> Result<(), nfsstat3> {
        let from = self.live_dir(&from_dirid.0)?;
        let to = self.live_dir(&to_dirid.0)?;
        let (fname, tname) = (
            from_filename.as_ref().to_vec(),
            to_filename.as_ref().to_vec(),
        );
        for (d, n) in [(from, &fname), (to, &tname)] {
            if n.as_slice() == SNAPDIR && self.volume_of_root(d).await?.is_some() {
                return Err(nfsstat3::NFS3ERR_ROFS);
            }
        }
        let moved = self
            .shared
            .run("rename", move |s| {
                let src = s.lookup(from, &fname)?.ino;
                let dst = s.lookup(to, &tname).ok().map(|a| a.ino);
                s.rename(from, &fname, to, &tname)?;
                Ok((src, dst))
            })
            .await?;
        let mut inv = vec![from, to, moved.0];
        inv.extend(moved.1);
        self.shared.invalidate(&inv);
        Ok(())
    }

    /// Gives file `file` the name `name` in `dirid` (a hard link); returns the file's
    /// new attributes.
    pub async fn link(
        &self,
        file: &Checked,
        dirid: &Checked,
        name: &filename3<'_>,
    ) -> Result<fattr3, nfsstat3> {
        let dir = self.live_dir(&dirid.0)?;
        let ino = match file.0 {
            Node::Live(i) => i,
            Node::Root => return Err(nfsstat3::NFS3ERR_ACCES),
            _ => return Err(nfsstat3::NFS3ERR_ROFS),
        };
        let name = name.as_ref().to_vec();
        self.check_new_name(dir, &name).await?;
        let a = self
            .shared
            .run("link", move |s| s.link(ino, dir, &name))
            .await?;
        self.shared.invalidate(&[dir, ino]);
        Ok(self.fattr(&file.0, &a))
    }

    pub async fn symlink<'a>(
        &self,
        dirid: &Checked,
        linkname: &filename3<'a>,
        symlink: &nfspath3<'a>,
        attr: &sattr3,
    ) -> Result<(Node, fattr3), nfsstat3> {
        let dir = self.live_dir(&dirid.0)?;
        let name = linkname.as_ref().to_vec();
        self.check_new_name(dir, &name).await?;
        let target = symlink.0.to_vec();
        let na = self.new_attr(attr, 0o777);
        let a = self
            .shared
            .run("symlink", move |s| s.symlink(dir, &name, &target, na))
            .await?;
        self.shared.invalidate(&[dir]);
        let node = Node::Live(a.ino);
        Ok((node.clone(), self.fattr(&node, &a)))
    }

    pub async fn commit(&self, id: &Checked, _offset: u64, _count: u32) -> Result<(), nfsstat3> {
        match id.0.clone() {
            Node::Live(ino) => self.shared.run("commit", move |s| s.sync(ino)).await,
            _ => Ok(()),
        }
    }
}
