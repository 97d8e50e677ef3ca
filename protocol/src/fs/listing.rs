//! READDIR and READDIRPLUS: live directories paged from the store by entry-id
//! cookie, snapshot directories by position in their sorted object, and the
//! synthetic export root and `.snapshots` directories.

use super::*;

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

impl KuraFs {
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
            Node::SnapshotsDir(v) => {
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
                let (entries, _) = self.snap_dir_index(dir).await?;
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
}
