//! The read-only `.snapshots` view: snapshot roots and entries are found through
//! their directory objects, never through the live namespace.

use super::*;

impl KuraFs {
    /// The index of a snapshot directory object by file id.
    pub(super) async fn snap_dir_index(
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
    pub(super) async fn snap_entry(
        &self,
        node: &Node,
    ) -> Result<(SnapshotId, TreeEntry), nfsstat3> {
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
                let (entries, index) = self.snap_dir_index(*dir).await.map_err(stale)?;
                let k = index.get(ino).ok_or(nfsstat3::NFS3ERR_STALE)?;
                Ok((*snap, entries[*k].clone()))
            }
            _ => Err(nfsstat3::NFS3ERR_BADHANDLE),
        }
    }

    /// The parent of a snapshot directory. Handles name the directory object holding an
    /// entry but not that object's own place, so it is found by walking the snapshot
    /// from its root (only `..` lookups pay this).
    pub(super) async fn snap_parent(
        &self,
        snap: SnapshotId,
        node: &Node,
    ) -> Result<Node, nfsstat3> {
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
            return Ok(Node::SnapshotsDir(vol.id));
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
}
