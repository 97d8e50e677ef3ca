//! `KuraFs`: the NFSv3 file system of one export, on top of `storage::Store`.
//!
//! Every store call goes through one door, [`Shared::run`]: a semaphore bounds the calls
//! in flight (backpressure however deep a client's queue) and `spawn_blocking` keeps
//! the sync store off the async threads. Namespace point reads that never wait on the
//! writer take the same permit but run on the worker thread ([`Shared::run_quick`]),
//! a WRITE borrows its request buffer under `block_in_place`
//! ([`Shared::run_here`]), and a small file's CREATE (when the writer is free) and
//! COMMIT (when fsyncs are quick) run in place while one worker stays free of such
//! calls ([`Shared::run_inline`]). Attributes of live files are cached in memory
//! and invalidated by every mutation made through any export (all mutations of a live
//! volume go through here), so GETATTR rarely touches the store.
//!
//! The module is split by job: [`door`] (the one door to the store and the caches in
//! front of it), [`policy`] (what an export allows: visibility, squashing, access,
//! read-only), [`read`] (the procedures that read any node, live or snapshot),
//! [`live`] (the procedures that change the live tree), [`snapshots`] (the read-only
//! `.snapshots` view) and [`listing`] (READDIR and READDIRPLUS). Every handle passes
//! the one gate, [`KuraFs::resolve`], before a procedure sees it.

mod door;
mod freeze;
mod listing;
mod live;
mod policy;
mod read;
mod snapshots;

use door::AttrTicket;
pub use door::{CallObserver, Shared};
pub use freeze::{FreezeError, FreezeGate, FreezeStats, Frozen, Pass};
pub use listing::{DirEntryPlus, KuraIter};
pub use policy::ExportPolicy;

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
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// The state this export shares with the others of its store.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn new(shared: Arc<Shared>, policy: ExportPolicy) -> Self {
        KuraFs {
            shared,
            policy: Arc::new(policy),
            fsid: 0x6b757261,
            visible: Arc::default(),
        }
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

    async fn node_attr(&self, node: &Node) -> Result<fattr3, nfsstat3> {
        match node {
            Node::Root => Ok(self.synthetic_dir(node, 0o755, self.shared.started)),
            Node::Live(ino) => {
                let a = self.live_attr(*ino).await?;
                Ok(self.fattr(node, &a))
            }
            Node::SnapshotsDir(v) => {
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

    /// The gate every handle passes once, before any procedure sees its node: the node
    /// must exist (else STALE) and belong to a volume this export shows (else STALE, as
    /// if it did not exist: a handle must not reveal what other exports hold).
    pub async fn resolve(&self, node: Node) -> Result<Checked, nfsstat3> {
        match &node {
            Node::Root => {}
            Node::Live(ino) => {
                self.live_attr(*ino).await?;
            }
            Node::SnapshotsDir(v) => {
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

    /// The export root (what MNT of `/` answers).
    pub fn root_dir(&self) -> Checked {
        Checked(Node::Root)
    }
}

fn stale(e: nfsstat3) -> nfsstat3 {
    if e == nfsstat3::NFS3ERR_NOENT {
        nfsstat3::NFS3ERR_STALE
    } else {
        e
    }
}
