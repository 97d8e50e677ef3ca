//! The procedures that read any node, live or in a snapshot: LOOKUP, GETATTR, READ,
//! READLINK, FSSTAT, FSINFO.

use super::*;

/// The NFS operations, one per procedure; the RPC layer (`crate::nfs`) adds the
/// protocol's wrapping (wcc data, post-op attributes).
impl KuraFs {
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
                    let p = self
                        .shared
                        .run_quick("lookup ..", move |s| s.parent(dir))
                        .await?;
                    Node::Live(p.ok_or(nfsstat3::NFS3ERR_NOENT)?)
                } else if name.as_slice() == SNAPDIR {
                    match self.volume_of_root(dir).await? {
                        Some(v) => Node::SnapshotsDir(v.id),
                        None => {
                            let a = self
                                .shared
                                .run("lookup", move |s| s.lookup(dir, &name))
                                .await?;
                            Node::Live(a.ino)
                        }
                    }
                } else {
                    let t = self.shared.attr_ticket();
                    let (a, vol) = self
                        .shared
                        .run_quick("lookup", move |s| {
                            let i = s.lookup_inode(dir, &name)?;
                            Ok((i.attr, i.vol))
                        })
                        .await?;
                    self.shared.remember(t, a, vol);
                    Node::Live(a.ino)
                }
            }
            Node::SnapshotsDir(v) => {
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
                let (entries, _) = self.snap_dir_index(dir).await?;
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

    /// READ: the bytes as pieces that share the store's cached chunks (the reply
    /// sends them without copying them together), their length, and EOF.
    pub async fn read(
        &self,
        id: &Checked,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<storage::Piece>, usize, bool), nfsstat3> {
        let node = id.0.clone();
        let count = count.min(MAX_IO as u32);
        match node {
            Node::Live(ino) => {
                self.shared
                    .run("read", move |s| s.read_pieces(ino, offset, count))
                    .await
            }
            Node::SnapRoot(_) | Node::SnapEntry { .. } => {
                let (_, e) = self.snap_entry(&node).await?;
                if e.attr.kind != FileKind::File {
                    return Err(nfsstat3::NFS3ERR_ISDIR);
                }
                self.shared
                    .run("read snapshot", move |s| {
                        s.snap_read_shared(&e, offset, count)
                    })
                    .await
            }
            _ => Err(nfsstat3::NFS3ERR_ISDIR),
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
            maxfilesize: self.shared.max_file_size(),
            time_delta: nfstime3 {
                seconds: 0,
                nseconds: 1,
            },
            properties: FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME,
        })
    }
}
