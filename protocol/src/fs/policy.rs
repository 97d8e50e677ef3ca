//! Export policy: which volumes an export shows, root squashing, the owner of new
//! files, refused uids, read-only exports, and ACCESS from the mode bits. Applied
//! at one point: [`KuraFs::resolve`] uses `volume_visible` for every handle.

use super::*;

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

impl KuraFs {
    /// Whether volume `vol` is exported here (always, without a volume list).
    pub(super) async fn volume_visible(&self, vol: VolumeId) -> Result<bool, nfsstat3> {
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

    pub(super) fn volume_allowed(&self, name: &str) -> bool {
        self.policy
            .volumes
            .as_ref()
            .is_none_or(|v| v.iter().any(|n| n == name))
    }

    pub(super) fn writable(&self) -> Result<(), nfsstat3> {
        if self.policy.read_only {
            Err(nfsstat3::NFS3ERR_ROFS)
        } else {
            Ok(())
        }
    }

    pub(super) fn squash_uid(&self, u: u32) -> u32 {
        if self.policy.root_squash && u == 0 {
            self.policy.anon_uid
        } else {
            u
        }
    }

    pub(super) fn squash_gid(&self, g: u32) -> u32 {
        if self.policy.root_squash && g == 0 {
            self.policy.anon_gid
        } else {
            g
        }
    }

    pub(super) fn new_attr(&self, s: &sattr3, default_mode: u32) -> NewAttr {
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

    pub(super) fn set_attr(&self, s: &sattr3) -> SetAttr {
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

    /// The live node (file or directory) a mutation targets: snapshot nodes are
    /// read-only (ROFS), the export root takes no files (ACCES), a read-only export
    /// nothing (ROFS).
    pub(super) fn writable_node(&self, node: &Node) -> Result<FileId, nfsstat3> {
        self.writable()?;
        match node {
            Node::Live(i) => Ok(*i),
            Node::Root => Err(nfsstat3::NFS3ERR_ACCES),
            _ => Err(nfsstat3::NFS3ERR_ROFS),
        }
    }

    /// Refuses names that would shadow the snapshot directory in a volume root.
    pub(super) async fn check_new_name(&self, dir: FileId, name: &[u8]) -> Result<(), nfsstat3> {
        if name == SNAPDIR && self.volume_of_root(dir).await?.is_some() {
            return Err(nfsstat3::NFS3ERR_EXIST);
        }
        Ok(())
    }

    /// Whether to serve a call with this credential (`None`: not AUTH_UNIX).
    pub fn authorize(&self, auth: Option<&auth_unix>) -> bool {
        match auth {
            None => false,
            Some(a) => !self.policy.refuse_uids.contains(&a.uid),
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use nfs3_types::nfs3::{ACCESS3_EXECUTE, ACCESS3_MODIFY, ACCESS3_READ};
    use nfs3_types::xdr_codec::Opaque;

    fn cred(uid: u32, gid: u32) -> auth_unix {
        auth_unix {
            stamp: 0,
            machinename: Opaque::borrowed(b"t"),
            uid,
            gid,
            gids: vec![],
        }
    }

    /// A store with volume `v` and file `f` (owner 1000:100, mode 0640), and the
    /// export over it with `policy`.
    fn export(policy: ExportPolicy) -> (tempfile::TempDir, KuraFs, FileId) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), storage::StoreOptions::default()).unwrap();
        let owner = NewAttr {
            mode: 0o755,
            uid: 1000,
            gid: 100,
        };
        let v = store.create_volume("v", owner).unwrap();
        let f = store
            .create(
                v.root,
                b"f",
                NewAttr {
                    mode: 0o640,
                    ..owner
                },
            )
            .unwrap()
            .ino;
        let fs = KuraFs::new(Shared::new(Arc::new(store), 4), policy);
        (dir, fs, f)
    }

    /// ACCESS answers from the mode bits for owner, group and others; root gets every
    /// right but executing a file without an x bit; a read-only export grants no
    /// changes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn access_follows_the_mode_bits_and_the_export() {
        let all = ACCESS3_READ | ACCESS3_MODIFY | ACCESS3_EXECUTE;
        let (_d, fs, f) = export(ExportPolicy::default());
        let h = fs.resolve(Node::Live(f)).await.unwrap();
        for (c, want) in [
            (cred(1000, 1), ACCESS3_READ | ACCESS3_MODIFY),
            (cred(2000, 100), ACCESS3_READ),
            (cred(2000, 2000), 0),
            (cred(0, 0), ACCESS3_READ | ACCESS3_MODIFY),
        ] {
            let (_, got) = fs.access(&h, all, Some(&c)).await.unwrap();
            assert_eq!(got & all, want, "uid {} gid {}", c.uid, c.gid);
        }
        let (_d, ro, f) = export(ExportPolicy {
            read_only: true,
            ..ExportPolicy::default()
        });
        let h = ro.resolve(Node::Live(f)).await.unwrap();
        let (_, got) = ro.access(&h, all, Some(&cred(1000, 1))).await.unwrap();
        assert_eq!(got & all, ACCESS3_READ);
        assert_eq!(ro.writable_node(h.node()), Err(nfsstat3::NFS3ERR_ROFS));
    }

    /// Root squashing maps owner 0 of new files to the anonymous ids, and only when
    /// asked; a client that sends no owner gets the export's; refused uids are refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn squashing_owners_and_refused_uids() {
        let set = |uid, gid| sattr3 {
            uid: set_uid3::Some(uid),
            gid: set_gid3::Some(gid),
            ..Default::default()
        };
        let (_d, fs, _) = export(ExportPolicy {
            owner_uid: 7,
            owner_gid: 8,
            refuse_uids: vec![666],
            ..ExportPolicy::default()
        });
        let a = fs.new_attr(&set(0, 0), 0o644);
        assert_eq!((a.uid, a.gid), (65534, 65534));
        let a = fs.new_attr(&set(1000, 100), 0o644);
        assert_eq!((a.uid, a.gid, a.mode), (1000, 100, 0o644));
        let a = fs.new_attr(&sattr3::default(), 0o600);
        assert_eq!((a.uid, a.gid, a.mode), (7, 8, 0o600));
        assert!(fs.authorize(Some(&cred(1000, 1))));
        assert!(!fs.authorize(Some(&cred(666, 1))));
        assert!(!fs.authorize(None));
        let (_d, plain, _) = export(ExportPolicy {
            root_squash: false,
            ..ExportPolicy::default()
        });
        let a = plain.new_attr(&set(0, 0), 0o644);
        assert_eq!((a.uid, a.gid), (0, 0));
        // The export root takes no files, snapshot nodes are read-only.
        assert_eq!(
            plain.writable_node(&Node::Root),
            Err(nfsstat3::NFS3ERR_ACCES)
        );
        assert_eq!(
            plain.writable_node(&Node::SnapshotsDir(VolumeId(1))),
            Err(nfsstat3::NFS3ERR_ROFS)
        );
    }
}
