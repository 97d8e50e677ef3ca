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
