//! The programs one export port serves: NFSv3 (RFC 1813), MOUNT v3 and, so that a
//! client that asks a portmapper on this port learns where to go, PMAP GETPORT.
//!
//! Each NFS procedure decodes its arguments, calls [`KuraFs`] and wraps the answer in
//! the protocol's attributes (weak cache consistency data before and after).
//!
//! Handles on the wire are `generation (8 bytes LE) | KuraHandle`. The generation is
//! also the WRITE/COMMIT verifier; `Store::begin_service` decides when it changes (see
//! ARCHITECTURE.md). A handle of another generation is STALE, a malformed one BADHANDLE.
//!
//! Non-idempotent calls (CREATE, MKDIR, SYMLINK, REMOVE, RMDIR, RENAME, LINK, SETATTR) go
//! through a duplicate request cache keyed by client address, xid and a hash of the
//! arguments: a retransmission while the call runs is dropped, one after it finished
//! gets the first reply again (so a retried REMOVE does not answer NOENT).

use crate::fs::{Checked, DirEntryPlus, KuraFs};
use crate::handle::{HandleCodec, Node};
use crate::rpc::{Call, Reply, Service};
use lru::LruCache;
use nfs3_types::mount::{
    dirpath, exports, fhandle3, mountres3, mountres3_ok, mountstat3, MOUNT_PROGRAM,
};
use nfs3_types::nfs3::*;
use nfs3_types::portmap::{self, mapping};
use nfs3_types::rpc::{accept_stat_data, auth_stat};
use nfs3_types::xdr_codec::{List, Opaque, Pack, Unpack, Void};
use std::hash::{Hash, Hasher};
use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

/// Sizes of the fixed parts of replies, for READDIR(PLUS) paging.
const FATTR_SIZE: usize = 84;
const POST_OP_ATTR_SIZE: usize = 4 + FATTR_SIZE;

/// Largest READDIR or READDIRPLUS reply, whatever the client's maxcount: 20,000
/// entries come back in pages, not as one 3 MB reply.
pub const DIR_REPLY_MAX: usize = 128 << 10;

static AUTH_LOG: crate::limits::LogLimiter =
    crate::limits::LogLimiter::new(std::time::Duration::from_secs(10));

/// File counts FSSTAT reports: the store has no inode table to run out of.
const FILES: u64 = 1 << 40;

/// The NFS, MOUNT and portmap service of one export.
pub struct NfsService {
    fs: KuraFs,
    codec: HandleCodec,
    /// The WRITE/COMMIT verifier (the store's handle generation).
    generation: u64,
    /// The port this service listens on (answered to portmap GETPORT).
    port: u16,
    drc: Mutex<LruCache<DrcKey, Option<Arc<Vec<u8>>>>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct DrcKey {
    client: IpAddr,
    xid: u32,
    args: u64,
}

macro_rules! args {
    ($call:expr, $t:ty) => {
        match $call.decode::<$t>() {
            Some(a) => a,
            None => return Reply::error($call.xid, accept_stat_data::GARBAGE_ARGS),
        }
    };
}

/// Unwraps a `Result<_, nfsstat3>` or answers the error with the given failure body.
macro_rules! tryn {
    ($xid:expr, $e:expr, $fail:expr) => {
        match $e {
            Ok(v) => v,
            Err(stat) => return Reply::success($xid, &Nfs3Result::<Void, _>::Err((stat, $fail))),
        }
    };
}

fn wcc_of(a: &fattr3) -> wcc_attr {
    wcc_attr {
        size: a.size,
        mtime: a.mtime,
        ctime: a.ctime,
    }
}

impl NfsService {
    pub fn new(fs: KuraFs, codec: HandleCodec, generation: u64, port: u16) -> Arc<Self> {
        Arc::new(NfsService {
            fs,
            codec,
            generation,
            port,
            drc: Mutex::new(LruCache::new(NonZeroUsize::new(4096).unwrap())),
        })
    }

    fn fh(&self, node: &Node) -> nfs_fh3 {
        nfs_fh3 {
            data: Opaque::owned(self.codec.seal(node)),
        }
    }

    /// Opens a handle and passes it through the export's gate: the only way a
    /// procedure gets a node to work on.
    async fn handle(&self, fh: &nfs_fh3) -> Result<Checked, nfsstat3> {
        let node = self.codec.open(fh.data.as_ref())?;
        self.fs.resolve(node).await
    }

    fn verf(&self) -> writeverf3 {
        writeverf3(self.generation.to_le_bytes())
    }

    /// Attributes of a node just found or made (it passes the gate like any handle).
    async fn post_node(&self, node: &Node) -> post_op_attr {
        match self.fs.resolve(node.clone()).await {
            Ok(h) => self.post(&h).await,
            Err(_) => post_op_attr::None,
        }
    }

    async fn post(&self, h: &Checked) -> post_op_attr {
        self.fs
            .getattr(h)
            .await
            .map_or(post_op_attr::None, post_op_attr::Some)
    }

    async fn pre(&self, h: &Checked) -> pre_op_attr {
        self.fs
            .getattr(h)
            .await
            .map_or(pre_op_attr::None, |a| pre_op_attr::Some(wcc_of(&a)))
    }

    async fn wcc(&self, before: pre_op_attr, h: &Checked) -> wcc_data {
        wcc_data {
            before,
            after: self.post(h).await,
        }
    }

    /// Serves an NFSv3 call.
    async fn nfs(&self, call: &Call) -> Reply {
        let xid = call.xid;
        if call.vers != VERSION {
            return Reply::error(
                xid,
                accept_stat_data::PROG_MISMATCH {
                    low: VERSION,
                    high: VERSION,
                },
            );
        }
        let Ok(proc_) = NFS_PROGRAM::try_from(call.proc_) else {
            return Reply::error(xid, accept_stat_data::PROC_UNAVAIL);
        };
        let t0 = std::time::Instant::now();
        let reply = self.nfs_proc(proc_, call).await;
        self.fs.shared().observe(
            proc_name(call.proc_),
            t0.elapsed(),
            call.args().len(),
            reply.wire_len(),
        );
        reply
    }

    async fn nfs_proc(&self, proc_: NFS_PROGRAM, call: &Call) -> Reply {
        use NFS_PROGRAM::*;
        let xid = call.xid;
        match proc_ {
            NFSPROC3_NULL => Reply::success(xid, &Void),
            NFSPROC3_GETATTR => self.getattr(call).await,
            NFSPROC3_SETATTR => self.setattr(call).await,
            NFSPROC3_LOOKUP => self.lookup(call).await,
            NFSPROC3_ACCESS => self.access(call).await,
            NFSPROC3_READLINK => self.readlink(call).await,
            NFSPROC3_READ => self.read(call).await,
            NFSPROC3_WRITE => self.write(call).await,
            NFSPROC3_CREATE => self.create(call).await,
            NFSPROC3_MKDIR => self.mkdir(call).await,
            NFSPROC3_SYMLINK => self.symlink(call).await,
            NFSPROC3_REMOVE => self.remove(call, false).await,
            NFSPROC3_RMDIR => self.remove(call, true).await,
            NFSPROC3_RENAME => self.rename(call).await,
            NFSPROC3_LINK => self.link(call).await,
            NFSPROC3_MKNOD => self.mknod(call).await,
            NFSPROC3_READDIR => self.readdir(call, false).await,
            NFSPROC3_READDIRPLUS => self.readdir(call, true).await,
            NFSPROC3_FSSTAT => self.fsstat(call).await,
            NFSPROC3_FSINFO => self.fsinfo(call).await,
            NFSPROC3_PATHCONF => self.pathconf(call).await,
            NFSPROC3_COMMIT => self.commit(call).await,
        }
    }

    async fn getattr(&self, call: &Call) -> Reply {
        let xid = call.xid;
        let a = args!(call, GETATTR3args);
        let h = tryn!(xid, self.handle(&a.object).await, Void);
        let attr = tryn!(xid, self.fs.getattr(&h).await, Void);
        Reply::success(
            xid,
            &GETATTR3res::Ok(GETATTR3resok {
                obj_attributes: attr,
            }),
        )
    }

    async fn lookup(&self, call: &Call) -> Reply {
        let xid = call.xid;
        let a = args!(call, LOOKUP3args<'static>);
        let dir = tryn!(
            xid,
            self.handle(&a.what.dir).await,
            LOOKUP3resfail::default()
        );
        match self.fs.lookup(&dir, &a.what.name).await {
            Ok(h) => {
                let obj_attributes = self.post_node(&h).await;
                Reply::success(
                    xid,
                    &LOOKUP3res::Ok(LOOKUP3resok {
                        object: self.fh(&h),
                        obj_attributes,
                        dir_attributes: self.post(&dir).await,
                    }),
                )
            }
            Err(stat) => Reply::success(
                xid,
                &LOOKUP3res::Err((
                    stat,
                    LOOKUP3resfail {
                        dir_attributes: self.post(&dir).await,
                    },
                )),
            ),
        }
    }

    async fn access(&self, call: &Call) -> Reply {
        let xid = call.xid;
        let a = args!(call, ACCESS3args);
        let h = tryn!(xid, self.handle(&a.object).await, ACCESS3resfail::default());
        let (attr, access) = tryn!(
            xid,
            self.fs.access(&h, a.access, call.cred.as_ref()).await,
            ACCESS3resfail::default()
        );
        Reply::success(
            xid,
            &ACCESS3res::Ok(ACCESS3resok {
                obj_attributes: post_op_attr::Some(attr),
                access,
            }),
        )
    }

    async fn readlink(&self, call: &Call) -> Reply {
        let xid = call.xid;
        let a = args!(call, READLINK3args);
        let h = tryn!(
            xid,
            self.handle(&a.symlink).await,
            READLINK3resfail::default()
        );
        let target = tryn!(
            xid,
            self.fs.readlink(&h).await,
            READLINK3resfail {
                symlink_attributes: self.post(&h).await
            }
        );
        Reply::success(
            xid,
            &READLINK3res::Ok(READLINK3resok {
                symlink_attributes: self.post(&h).await,
                data: target,
            }),
        )
    }

    async fn read(&self, call: &Call) -> Reply {
        let xid = call.xid;
        let a = args!(call, READ3args);
        let h = tryn!(xid, self.handle(&a.file).await, READ3resfail::default());
        let (pieces, len, eof) = tryn!(
            xid,
            self.fs.read(&h, a.offset, a.count).await,
            READ3resfail {
                file_attributes: self.post(&h).await
            }
        );
        // status, attributes, count, eof; then the data without a copy: the pieces
        // are slices of the store's cached chunks.
        let prefix = (nfsstat3::NFS3_OK, self.post(&h).await, len as u32, eof);
        let pieces = pieces
            .into_iter()
            .map(|p| Box::new(p) as crate::rpc::Shared)
            .collect();
        Reply::success_pieces(xid, &Tuple4(prefix), pieces)
    }

    async fn mkdir(&self, call: &Call) -> Reply {
        let xid = call.xid;
        let a = args!(call, MKDIR3args<'static>);
        let dir = tryn!(
            xid,
            self.handle(&a.where_.dir).await,
            MKDIR3resfail::default()
        );
        let before = self.pre(&dir).await;
        let r = self.fs.mkdir(&dir, &a.where_.name, &a.attributes).await;
        let dir_wcc = self.wcc(before, &dir).await;
        let (h, attr) = tryn!(xid, r, MKDIR3resfail { dir_wcc });
        Reply::success(
            xid,
            &MKDIR3res::Ok(MKDIR3resok {
                obj: post_op_fh3::Some(self.fh(&h)),
                obj_attributes: post_op_attr::Some(attr),
                dir_wcc,
            }),
        )
    }

    async fn symlink(&self, call: &Call) -> Reply {
        let xid = call.xid;
        let a = args!(call, SYMLINK3args<'static>);
        let dir = tryn!(
            xid,
            self.handle(&a.where_.dir).await,
            SYMLINK3resfail::default()
        );
        let before = self.pre(&dir).await;
        let r = self
            .fs
            .symlink(
                &dir,
                &a.where_.name,
                &a.symlink.symlink_data,
                &a.symlink.symlink_attributes,
            )
            .await;
        let dir_wcc = self.wcc(before, &dir).await;
        let (h, attr) = tryn!(xid, r, SYMLINK3resfail { dir_wcc });
        Reply::success(
            xid,
            &SYMLINK3res::Ok(SYMLINK3resok {
                obj: post_op_fh3::Some(self.fh(&h)),
                obj_attributes: post_op_attr::Some(attr),
                dir_wcc,
            }),
        )
    }

    /// REMOVE and RMDIR (the same arguments on the wire).
    async fn remove(&self, call: &Call, rmdir: bool) -> Reply {
        let xid = call.xid;
        // REMOVE3args and RMDIR3args are the same on the wire.
        let a = args!(call, REMOVE3args<'static>);
        let dir = tryn!(
            xid,
            self.handle(&a.object.dir).await,
            REMOVE3resfail::default()
        );
        let before = self.pre(&dir).await;
        let r = self.fs.remove(&dir, &a.object.name, rmdir).await;
        let dir_wcc = self.wcc(before, &dir).await;
        tryn!(xid, r, REMOVE3resfail { dir_wcc });
        Reply::success(xid, &REMOVE3res::Ok(REMOVE3resok { dir_wcc }))
    }

    async fn rename(&self, call: &Call) -> Reply {
        let xid = call.xid;
        let a = args!(call, RENAME3args<'static, 'static>);
        let fail = RENAME3resfail::default;
        let from = tryn!(xid, self.handle(&a.from.dir).await, fail());
        let to = tryn!(xid, self.handle(&a.to.dir).await, fail());
        let (fb, tb) = (self.pre(&from).await, self.pre(&to).await);
        let r = self.fs.rename(&from, &a.from.name, &to, &a.to.name).await;
        let fromdir_wcc = self.wcc(fb, &from).await;
        let todir_wcc = self.wcc(tb, &to).await;
        tryn!(
            xid,
            r,
            RENAME3resfail {
                fromdir_wcc,
                todir_wcc
            }
        );
        Reply::success(
            xid,
            &RENAME3res::Ok(RENAME3resok {
                fromdir_wcc,
                todir_wcc,
            }),
        )
    }

    async fn link(&self, call: &Call) -> Reply {
        let xid = call.xid;
        let a = args!(call, LINK3args<'static>);
        let fail = || LINK3resfail {
            file_attributes: post_op_attr::None,
            linkdir_wcc: wcc_data::default(),
        };
        let file = tryn!(xid, self.handle(&a.file).await, fail());
        let dir = tryn!(xid, self.handle(&a.link.dir).await, fail());
        let before = self.pre(&dir).await;
        let r = self.fs.link(&file, &dir, &a.link.name).await;
        let linkdir_wcc = self.wcc(before, &dir).await;
        match r {
            Ok(attr) => Reply::success(
                xid,
                &LINK3res::Ok(LINK3resok {
                    file_attributes: post_op_attr::Some(attr),
                    linkdir_wcc,
                }),
            ),
            Err(stat) => Reply::success(
                xid,
                &LINK3res::Err((
                    stat,
                    LINK3resfail {
                        file_attributes: self.post(&file).await,
                        linkdir_wcc,
                    },
                )),
            ),
        }
    }

    /// Device files, FIFOs and sockets are not stored.
    async fn mknod(&self, call: &Call) -> Reply {
        let xid = call.xid;
        Reply::success(
            xid,
            &MKNOD3res::Err((
                nfsstat3::NFS3ERR_NOTSUPP,
                MKNOD3resfail {
                    dir_wcc: wcc_data::default(),
                },
            )),
        )
    }

    async fn fsstat(&self, call: &Call) -> Reply {
        let xid = call.xid;
        let a = args!(call, FSSTAT3args);
        let h = tryn!(xid, self.handle(&a.fsroot).await, FSSTAT3resfail::default());
        let attr = self.post(&h).await;
        let (total, avail) = tryn!(
            xid,
            self.fs.fsstat().await,
            FSSTAT3resfail {
                obj_attributes: attr
            }
        );
        Reply::success(
            xid,
            &FSSTAT3res::Ok(FSSTAT3resok {
                obj_attributes: attr,
                tbytes: total,
                fbytes: avail,
                abytes: avail,
                tfiles: FILES,
                ffiles: FILES,
                afiles: FILES,
                invarsec: 0,
            }),
        )
    }

    async fn fsinfo(&self, call: &Call) -> Reply {
        let xid = call.xid;
        let a = args!(call, FSINFO3args);
        let h = tryn!(xid, self.handle(&a.fsroot).await, FSINFO3resfail::default());
        let info = tryn!(xid, self.fs.fsinfo(&h).await, FSINFO3resfail::default());
        Reply::success(xid, &FSINFO3res::Ok(info))
    }

    async fn pathconf(&self, call: &Call) -> Reply {
        let xid = call.xid;
        let a = args!(call, PATHCONF3args);
        let h = tryn!(
            xid,
            self.handle(&a.object).await,
            PATHCONF3resfail::default()
        );
        let attr = tryn!(xid, self.fs.getattr(&h).await, PATHCONF3resfail::default());
        Reply::success(
            xid,
            &PATHCONF3res::Ok(PATHCONF3resok {
                obj_attributes: post_op_attr::Some(attr),
                linkmax: storage::namespace::MAX_LINKS,
                name_max: storage::namespace::MAX_NAME as u32,
                no_trunc: true,
                chown_restricted: true,
                case_insensitive: false,
                case_preserving: true,
            }),
        )
    }

    async fn commit(&self, call: &Call) -> Reply {
        let xid = call.xid;
        let a = args!(call, COMMIT3args);
        let h = tryn!(
            xid,
            self.handle(&a.file).await,
            COMMIT3resfail {
                file_wcc: wcc_data::default()
            }
        );
        let before = self.pre(&h).await;
        let r = self.fs.commit(&h, a.offset, a.count).await;
        let file_wcc = self.wcc(before, &h).await;
        tryn!(xid, r, COMMIT3resfail { file_wcc });
        Reply::success(
            xid,
            &COMMIT3res::Ok(COMMIT3resok {
                file_wcc,
                verf: self.verf(),
            }),
        )
    }

    async fn setattr(&self, call: &Call) -> Reply {
        let xid = call.xid;
        let a = args!(call, SETATTR3args);
        let h = tryn!(
            xid,
            self.handle(&a.object).await,
            SETATTR3resfail::default()
        );
        let now = tryn!(xid, self.fs.getattr(&h).await, SETATTR3resfail::default());
        let before = pre_op_attr::Some(wcc_of(&now));
        if let sattrguard3::Some(guard) = a.guard {
            if guard != now.ctime {
                let obj_wcc = wcc_data {
                    before,
                    after: post_op_attr::Some(now),
                };
                return Reply::success(
                    xid,
                    &SETATTR3res::Err((nfsstat3::NFS3ERR_NOT_SYNC, SETATTR3resfail { obj_wcc })),
                );
            }
        }
        let r = self.fs.setattr(&h, a.new_attributes).await;
        let obj_wcc = self.wcc(before, &h).await;
        tryn!(xid, r, SETATTR3resfail { obj_wcc });
        Reply::success(xid, &SETATTR3res::Ok(SETATTR3resok { obj_wcc }))
    }

    /// WRITE: the arguments are read in place, so the data is never copied before it
    /// reaches the store.
    async fn write(&self, call: &Call) -> Reply {
        let xid = call.xid;
        let args = call.args();
        let mut cur = Cursor::new(args);
        let parsed = (|| {
            let (fh, _) = nfs_fh3::unpack(&mut cur).ok()?;
            let (offset, _) = u64::unpack(&mut cur).ok()?;
            let (count, _) = u32::unpack(&mut cur).ok()?;
            let (stable, _) = stable_how::unpack(&mut cur).ok()?;
            let (len, _) = u32::unpack(&mut cur).ok()?;
            let at = cur.position() as usize;
            let data = args.get(at..at.checked_add(len as usize)?)?;
            Some((fh, offset, count, stable, data))
        })();
        let Some((fh, offset, count, stable, data)) = parsed else {
            return Reply::error(xid, accept_stat_data::GARBAGE_ARGS);
        };
        let data = &data[..data.len().min(count as usize)];
        let h = tryn!(xid, self.handle(&fh).await, WRITE3resfail::default());
        let before = self.pre(&h).await;
        match self.fs.write(&h, offset, data, stable).await {
            Ok((attr, committed)) => Reply::success(
                xid,
                &WRITE3res::Ok(WRITE3resok {
                    file_wcc: wcc_data {
                        before,
                        after: post_op_attr::Some(attr),
                    },
                    count: data.len() as u32,
                    committed,
                    verf: self.verf(),
                }),
            ),
            Err(stat) => {
                let file_wcc = self.wcc(before, &h).await;
                Reply::success(xid, &WRITE3res::Err((stat, WRITE3resfail { file_wcc })))
            }
        }
    }

    async fn create(&self, call: &Call) -> Reply {
        let xid = call.xid;
        let a = args!(call, CREATE3args<'static>);
        let dir = tryn!(
            xid,
            self.handle(&a.where_.dir).await,
            CREATE3resfail::default()
        );
        let before = self.pre(&dir).await;
        let name = &a.where_.name;
        let r = match a.how {
            createhow3::UNCHECKED(attr) => self.fs.create(&dir, name, attr, false).await,
            createhow3::GUARDED(attr) => self.fs.create(&dir, name, attr, true).await,
            createhow3::EXCLUSIVE(verf) => {
                async {
                    let n = self.fs.create_exclusive(&dir, name, verf).await?;
                    let a = self.fs.getattr(&self.fs.resolve(n.clone()).await?).await?;
                    Ok((n, a))
                }
                .await
            }
        };
        let dir_wcc = self.wcc(before, &dir).await;
        let (h, attr) = tryn!(xid, r, CREATE3resfail { dir_wcc });
        Reply::success(
            xid,
            &CREATE3res::Ok(CREATE3resok {
                obj: post_op_fh3::Some(self.fh(&h)),
                obj_attributes: post_op_attr::Some(attr),
                dir_wcc,
            }),
        )
    }

    /// READDIR and READDIRPLUS. Cookies are stable (file ids, or positions in an
    /// immutable snapshot directory), so the cookie verifier is always zero and a
    /// listing stays correct while the directory changes between pages.
    async fn readdir(&self, call: &Call, plus: bool) -> Reply {
        let xid = call.xid;
        let (fh, cookie, dircount, maxcount) = if plus {
            let a = args!(call, READDIRPLUS3args);
            (a.dir, a.cookie, a.dircount as usize, a.maxcount as usize)
        } else {
            let a = args!(call, READDIR3args);
            (a.dir, a.cookie, usize::MAX, a.count as usize)
        };
        // However much a client asks for, one reply stays within what the memory budget
        // counted for it (`reply_size_hint`); the client pages for the rest.
        let maxcount = maxcount.min(DIR_REPLY_MAX);
        let h = tryn!(xid, self.handle(&fh).await, READDIR3resfail::default());
        let dir_attributes = self.post(&h).await;
        let fail = || READDIR3resfail {
            dir_attributes: dir_attributes.clone(),
        };
        let mut it = tryn!(xid, self.fs.readdirplus(&h, cookie).await, fail());
        // status, dir attributes, verifier, list end, eof; and the RPC header.
        let fixed = 4 + POST_OP_ATTR_SIZE + 8 + 4 + 4 + 32;
        let mut used = fixed;
        let mut dir_used = 0usize;
        let mut entries: Vec<(DirEntryPlus, Option<nfs_fh3>)> = Vec::new();
        let eof = loop {
            let e = match it.next().await {
                Ok(Some(e)) => e,
                Ok(None) => break true,
                Err(stat) => {
                    return Reply::success(xid, &READDIR3res::Err((stat, fail())));
                }
            };
            let name = 4 + e.name.len().div_ceil(4) * 4;
            let basic = 4 + 8 + name + 8;
            let fh = plus.then(|| self.fh(&e.name_handle));
            let size = match &fh {
                Some(fh) => {
                    basic + POST_OP_ATTR_SIZE + 4 + 4 + fh.data.as_ref().len().div_ceil(4) * 4
                }
                None => basic,
            };
            if used + size > maxcount || dir_used + basic > dircount {
                break false;
            }
            used += size;
            dir_used += basic;
            entries.push((e, fh));
        };
        if entries.is_empty() && !eof {
            return Reply::success(xid, &READDIR3res::Err((nfsstat3::NFS3ERR_TOOSMALL, fail())));
        }
        let cookieverf = cookieverf3::default();
        if plus {
            let list = entries
                .into_iter()
                .map(|(e, fh)| entryplus3 {
                    fileid: e.fileid,
                    name: filename3(Opaque::owned(e.name)),
                    cookie: e.cookie,
                    name_attributes: post_op_attr::Some(e.name_attributes),
                    name_handle: fh.map_or(post_op_fh3::None, post_op_fh3::Some),
                })
                .collect();
            Reply::success(
                xid,
                &READDIRPLUS3res::Ok(READDIRPLUS3resok {
                    dir_attributes,
                    cookieverf,
                    reply: dirlistplus3 {
                        entries: List(list),
                        eof,
                    },
                }),
            )
        } else {
            let list = entries
                .into_iter()
                .map(|(e, _)| entry3 {
                    fileid: e.fileid,
                    name: filename3(Opaque::owned(e.name)),
                    cookie: e.cookie,
                })
                .collect();
            Reply::success(
                xid,
                &READDIR3res::Ok(READDIR3resok {
                    dir_attributes,
                    cookieverf,
                    reply: dirlist3 {
                        entries: List(list),
                        eof,
                    },
                }),
            )
        }
    }

    /// MOUNT v3: MNT of `/`, `/<volume>` or a directory below one; EXPORT lists `/`
    /// and each volume shown here.
    async fn mount(&self, peer: SocketAddr, call: &Call) -> Reply {
        use MOUNT_PROGRAM::*;
        let xid = call.xid;
        if call.vers != nfs3_types::mount::VERSION {
            let v = nfs3_types::mount::VERSION;
            return Reply::error(xid, accept_stat_data::PROG_MISMATCH { low: v, high: v });
        }
        let Ok(proc_) = MOUNT_PROGRAM::try_from(call.proc_) else {
            return Reply::error(xid, accept_stat_data::PROC_UNAVAIL);
        };
        match proc_ {
            MOUNTPROC3_NULL | MOUNTPROC3_UMNT | MOUNTPROC3_UMNTALL => Reply::success(xid, &Void),
            MOUNTPROC3_MNT => {
                let path = args!(call, dirpath<'static>);
                let path = String::from_utf8_lossy(path.0.as_ref()).into_owned();
                let mut h = self.fs.root_dir();
                for part in path.split('/').filter(|p| !p.is_empty()) {
                    let name = filename3(Opaque::borrowed(part.as_bytes()));
                    let next = match self.fs.lookup(&h, &name).await {
                        Ok(n) => self.fs.resolve(n).await,
                        Err(stat) => Err(stat),
                    };
                    match next {
                        Ok(next) => h = next,
                        Err(stat) => {
                            let path = crate::limits::shorten(&path, 256);
                            tracing::info!(%peer, path, ?stat, "mount refused");
                            return Reply::success(xid, &mountres3::Err(mount_stat(stat)));
                        }
                    }
                }
                tracing::info!(%peer, path = crate::limits::shorten(&path, 256), "mounted");
                let fh = self.fh(h.node());
                Reply::success(
                    xid,
                    &mountres3::Ok(mountres3_ok {
                        fhandle: fhandle3(fh.data),
                        auth_flavors: vec![nfs3_types::rpc::auth_flavor::AUTH_UNIX as u32],
                    }),
                )
            }
            MOUNTPROC3_DUMP => Reply::success(xid, &List::<Void>(Vec::new())),
            MOUNTPROC3_EXPORT => {
                let mut dirs = vec![b"/".to_vec()];
                if let Ok(names) = self.fs.volume_names().await {
                    dirs.extend(names.into_iter().map(|n| format!("/{n}").into_bytes()));
                }
                let list: exports = List(
                    dirs.into_iter()
                        .map(|d| nfs3_types::mount::export_node {
                            ex_dir: dirpath(Opaque::owned(d)),
                            ex_groups: List(Vec::new()),
                        })
                        .collect(),
                );
                Reply::success(xid, &list)
            }
        }
    }

    /// Portmap on the export port: GETPORT answers this port for NFS and MOUNT over
    /// TCP, so clients that ask need no portmapper.
    fn portmap(&self, call: &Call) -> Reply {
        let xid = call.xid;
        match call.proc_ {
            0 => Reply::success(xid, &Void),
            3 => {
                let m = args!(call, mapping);
                let ours = (m.prog == PROGRAM || m.prog == nfs3_types::mount::PROGRAM)
                    && m.prot == portmap::IPPROTO_TCP;
                let port = if ours { self.port as u32 } else { 0 };
                Reply::success(xid, &port)
            }
            _ => Reply::error(xid, accept_stat_data::PROC_UNAVAIL),
        }
    }

    async fn dispatch(&self, peer: SocketAddr, call: &Call) -> Reply {
        match call.prog {
            PROGRAM => self.nfs(call).await,
            nfs3_types::mount::PROGRAM => self.mount(peer, call).await,
            portmap::PROGRAM => self.portmap(call),
            _ => Reply::error(call.xid, accept_stat_data::PROG_UNAVAIL),
        }
    }
}

/// The NFSv3 procedure names (RFC 1813), by number, for metrics.
fn proc_name(p: u32) -> &'static str {
    const NAMES: [&str; 22] = [
        "null",
        "getattr",
        "setattr",
        "lookup",
        "access",
        "readlink",
        "read",
        "write",
        "create",
        "mkdir",
        "symlink",
        "mknod",
        "remove",
        "rmdir",
        "rename",
        "link",
        "readdir",
        "readdirplus",
        "fsstat",
        "fsinfo",
        "pathconf",
        "commit",
    ];
    NAMES.get(p as usize).copied().unwrap_or("other")
}

fn mount_stat(s: nfsstat3) -> mountstat3 {
    match s {
        nfsstat3::NFS3ERR_NOENT => mountstat3::MNT3ERR_NOENT,
        nfsstat3::NFS3ERR_NOTDIR => mountstat3::MNT3ERR_NOTDIR,
        nfsstat3::NFS3ERR_ACCES => mountstat3::MNT3ERR_ACCES,
        nfsstat3::NFS3ERR_NAMETOOLONG => mountstat3::MNT3ERR_NAMETOOLONG,
        nfsstat3::NFS3ERR_INVAL => mountstat3::MNT3ERR_INVAL,
        _ => mountstat3::MNT3ERR_IO,
    }
}

/// Four values packed one after the other (the READ reply before its data).
struct Tuple4<A, B, C, D>((A, B, C, D));

impl<A: Pack, B: Pack, C: Pack, D: Pack> Pack for Tuple4<A, B, C, D> {
    fn packed_size(&self) -> usize {
        let t = &self.0;
        t.0.packed_size() + t.1.packed_size() + t.2.packed_size() + t.3.packed_size()
    }
    fn pack(&self, out: &mut impl std::io::Write) -> nfs3_types::xdr_codec::Result<usize> {
        let t = &self.0;
        Ok(t.0.pack(out)? + t.1.pack(out)? + t.2.pack(out)? + t.3.pack(out)?)
    }
}

/// Whether a procedure changes state in a way a replay would not repeat cleanly.
fn non_idempotent(call: &Call) -> bool {
    use NFS_PROGRAM::*;
    call.prog == PROGRAM
        && matches!(
            NFS_PROGRAM::try_from(call.proc_),
            Ok(NFSPROC3_SETATTR
                | NFSPROC3_CREATE
                | NFSPROC3_MKDIR
                | NFSPROC3_SYMLINK
                | NFSPROC3_REMOVE
                | NFSPROC3_RMDIR
                | NFSPROC3_RENAME
                | NFSPROC3_LINK)
        )
}

impl Service for NfsService {
    fn reply_size_hint(&self, call: &Call) -> usize {
        use NFS_PROGRAM::*;
        if call.prog != PROGRAM {
            return 0;
        }
        match NFS_PROGRAM::try_from(call.proc_) {
            Ok(NFSPROC3_READ) => call
                .decode::<READ3args>()
                .map_or(0, |a| (a.count as usize).min(crate::fs::MAX_IO)),
            // The encoded reply, and the entries it is built from while it is made.
            Ok(NFSPROC3_READDIR | NFSPROC3_READDIRPLUS) => 2 * DIR_REPLY_MAX,
            _ => 0,
        }
    }

    async fn call(self: Arc<Self>, peer: SocketAddr, call: Call) -> Option<Reply> {
        let xid = call.xid;
        // The portmapper and NULL pings answer anyone who reached the port; everything
        // else needs an AUTH_UNIX credential the export accepts.
        let open = call.prog == portmap::PROGRAM || call.proc_ == 0;
        if !open && !self.fs.authorize(call.cred.as_ref()) {
            let uid = call.cred.as_ref().map(|c| c.uid);
            if let Some(n) = AUTH_LOG.check() {
                tracing::warn!(%peer, ?uid, held_back = n, "call refused: credential not accepted");
            }
            return Some(Reply::auth_error(xid, auth_stat::AUTH_TOOWEAK));
        }
        if !non_idempotent(&call) {
            return Some(self.dispatch(peer, &call).await);
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (call.prog, call.proc_, call.args()).hash(&mut hasher);
        let key = DrcKey {
            client: peer.ip(),
            xid,
            args: hasher.finish(),
        };
        {
            let mut drc = self.drc.lock().unwrap();
            match drc.get(&key) {
                Some(None) => return None,
                Some(Some(done)) => {
                    tracing::debug!(%peer, xid, "retransmission answered from the cache");
                    return Some(Reply::from_bytes(done.to_vec()));
                }
                None => {
                    drc.put(key, None);
                }
            }
        }
        let reply = self.dispatch(peer, &call).await;
        self.drc
            .lock()
            .unwrap()
            .put(key, Some(Arc::new(reply.to_bytes())));
        Some(reply)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fs::{ExportPolicy, Shared};
    use nfs3_types::rpc::{auth_unix, call_body, msg_body, opaque_auth, rpc_msg};
    use storage::{NewAttr, Store, StoreOptions};

    /// An encoded NFS call with an AUTH_UNIX credential for root.
    pub(crate) fn call_bytes<T: Pack>(xid: u32, proc_: NFS_PROGRAM, args: &T) -> Vec<u8> {
        let cred = opaque_auth::auth_unix(&auth_unix::default());
        let msg = rpc_msg {
            xid,
            body: msg_body::CALL(call_body {
                rpcvers: 2,
                prog: PROGRAM,
                vers: VERSION,
                proc: proc_ as u32,
                cred,
                verf: opaque_auth::default(),
            }),
        };
        let mut v = Vec::new();
        msg.pack(&mut v).unwrap();
        args.pack(&mut v).unwrap();
        v
    }

    /// The NFS status of an encoded SUCCESS reply (record mark, xid, type, reply_stat,
    /// verifier flavor and length, accept_stat, then the result).
    fn nfs_status(reply: &Reply) -> u32 {
        let b = reply.to_bytes();
        u32::from_be_bytes(b[28..32].try_into().unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retransmitted_remove_gets_the_first_reply() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(tmp.path(), StoreOptions::default()).unwrap());
        let vol = store
            .create_volume(
                "v",
                NewAttr {
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                },
            )
            .unwrap();
        store
            .create(
                vol.root,
                b"victim",
                NewAttr {
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                },
            )
            .unwrap();
        let fs = KuraFs::new(Shared::new(store, 8), ExportPolicy::default());
        let codec = HandleCodec::new(crate::handle::HandleKey::fixed([3; 32]), 42);
        let svc = NfsService::new(fs, codec, 42, 2049);
        let dir = svc.fh(&Node::Live(vol.root));
        let args = REMOVE3args {
            object: diropargs3 {
                dir,
                name: filename3(Opaque::borrowed(b"victim")),
            },
        };
        let bytes = call_bytes(77, NFS_PROGRAM::NFSPROC3_REMOVE, &args);
        let peer: SocketAddr = "127.0.0.1:900".parse().unwrap();
        let call = || Call::parse(bytes.clone()).ok().unwrap();

        let first = svc.clone().call(peer, call()).await.unwrap();
        assert_eq!(nfs_status(&first), 0, "first REMOVE succeeds");
        // The client did not see the reply and sends the call again (same xid, maybe
        // over a new connection from another port): it gets the same answer.
        let again: SocketAddr = "127.0.0.1:901".parse().unwrap();
        let second = svc.clone().call(again, call()).await.unwrap();
        assert_eq!(second.to_bytes(), first.to_bytes());
        // Another client with the same xid is another call.
        let other: SocketAddr = "127.0.0.2:900".parse().unwrap();
        let third = svc.clone().call(other, call()).await.unwrap();
        assert_eq!(
            nfs_status(&third),
            nfsstat3::NFS3ERR_NOENT as u32,
            "the file is gone for a new call"
        );
    }
}
