//! Wire-level checks of the NFSv3 export with `nfs3_client`, a typed NFSv3 client from
//! crates.io: the answers the protocol prescribes where the file-level clients (libnfs,
//! nfs-rs) hide them — create modes, MKDIR attributes, REMOVE vs RMDIR, bad names, the
//! SETATTR guard, handles of another generation, READDIR paging, portmap, credentials.

mod common;

use common::*;
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::{Nfs3Client, Nfs3ConnectionBuilder};
use tokio::net::TcpStream;

type Client = Nfs3Client<TokioIo<TcpStream>>;

fn root_cred() -> opaque_auth<'static> {
    opaque_auth::auth_unix(&auth_unix {
        stamp: 1,
        machinename: Opaque::borrowed(b"test"),
        uid: 0,
        gid: 0,
        gids: vec![],
    })
}

async fn connect(port: u16, path: &str) -> (Client, nfs_fh3) {
    let conn = Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", path)
        .connect_from_privileged_port(false)
        .mount_port(port)
        .nfs3_port(port)
        .credential(root_cred())
        .mount()
        .await
        .expect("mount");
    let root = conn.root_nfs_fh3();
    (conn.into_nfs3_client(), root)
}

fn status<T, E>(r: &Nfs3Result<T, E>) -> nfsstat3 {
    match r {
        Nfs3Result::Ok(_) => nfsstat3::NFS3_OK,
        Nfs3Result::Err((s, _)) => *s,
    }
}

fn name(n: &[u8]) -> filename3<'_> {
    filename3(Opaque::borrowed(n))
}

fn dirop<'a>(dir: &nfs_fh3, n: &'a [u8]) -> diropargs3<'a> {
    diropargs3 {
        dir: dir.clone(),
        name: name(n),
    }
}

fn with_mode(mode: u32) -> sattr3 {
    sattr3 {
        mode: set_mode3::Some(mode),
        ..Default::default()
    }
}

async fn create(c: &mut Client, dir: &nfs_fh3, n: &[u8], how: createhow3) -> CREATE3res {
    c.create(&CREATE3args {
        where_: dirop(dir, n),
        how,
    })
    .await
    .unwrap()
}

async fn mkdir(c: &mut Client, dir: &nfs_fh3, n: &[u8], mode: u32) -> MKDIR3res {
    c.mkdir(&MKDIR3args {
        where_: dirop(dir, n),
        attributes: with_mode(mode),
    })
    .await
    .unwrap()
}

async fn write(
    c: &mut Client,
    fh: &nfs_fh3,
    offset: u64,
    data: &[u8],
    stable: stable_how,
) -> WRITE3resok {
    let r = c
        .write(&WRITE3args {
            file: fh.clone(),
            offset,
            count: data.len() as u32,
            stable,
            data: Opaque::borrowed(data),
        })
        .await
        .unwrap();
    match r {
        Nfs3Result::Ok(w) => w,
        Nfs3Result::Err((stat, _)) => panic!("write at {offset}: {stat:?}"),
    }
}

async fn commit(c: &mut Client, fh: &nfs_fh3) -> COMMIT3resok {
    let r = c
        .commit(&COMMIT3args {
            file: fh.clone(),
            offset: 0,
            count: 0,
        })
        .await
        .unwrap();
    match r {
        Nfs3Result::Ok(cm) => cm,
        Nfs3Result::Err((stat, _)) => panic!("commit: {stat:?}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// CREATE in its three modes, MKDIR with its mode, REMOVE vs RMDIR, LINK, MKNOD, and
/// every kind of bad name.
#[test]
fn create_modes_mkdir_remove_rmdir_and_bad_names() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &config(tmp.path(), "127.0.0.1:0", &["127.0.0.1/32"], ""),
        &[],
    );
    runtime().block_on(async {
        let (mut c, root) = connect(d.port, "/backup").await;

        // GUARDED: a second create of the name is EXIST; UNCHECKED reuses the file.
        let r = create(&mut c, &root, b"g", createhow3::GUARDED(with_mode(0o600))).await;
        let Nfs3Result::Ok(ok) = r else {
            panic!("guarded create: {:?}", status(&r))
        };
        assert_eq!(ok.obj_attributes.unwrap().mode & 0o7777, 0o600);
        let r = create(&mut c, &root, b"g", createhow3::GUARDED(sattr3::default())).await;
        assert_eq!(status(&r), nfsstat3::NFS3ERR_EXIST);
        let r = create(
            &mut c,
            &root,
            b"g",
            createhow3::UNCHECKED(sattr3::default()),
        )
        .await;
        assert_eq!(
            status(&r),
            nfsstat3::NFS3_OK,
            "unchecked create of an existing file"
        );

        // EXCLUSIVE: a retry with the same verifier succeeds (same file), another is EXIST.
        let v = createverf3(*b"verifier");
        let first = create(&mut c, &root, b"x", createhow3::EXCLUSIVE(v)).await;
        let retry = create(&mut c, &root, b"x", createhow3::EXCLUSIVE(v)).await;
        let (Nfs3Result::Ok(a), Nfs3Result::Ok(b)) = (first, retry) else {
            panic!("exclusive create and its retry must both succeed")
        };
        assert_eq!(
            a.obj.unwrap(),
            b.obj.unwrap(),
            "the retry names the same file"
        );
        let other = create(
            &mut c,
            &root,
            b"x",
            createhow3::EXCLUSIVE(createverf3(*b"another!")),
        )
        .await;
        assert_eq!(status(&other), nfsstat3::NFS3ERR_EXIST);

        // MKDIR keeps the requested mode, setgid and sticky bits included.
        for (n, mode) in [
            (&b"d700"[..], 0o700),
            (b"d2775", 0o2775),
            (b"d1777", 0o1777),
        ] {
            let r = mkdir(&mut c, &root, n, mode).await;
            let Nfs3Result::Ok(ok) = r else {
                panic!("mkdir: {:?}", status(&r))
            };
            assert_eq!(ok.obj_attributes.unwrap().mode & 0o7777, mode);
        }
        let r = mkdir(&mut c, &root, b"d700", 0o755).await;
        assert_eq!(status(&r), nfsstat3::NFS3ERR_EXIST);

        // REMOVE of a directory is ISDIR, RMDIR of a file NOTDIR, of a full one NOTEMPTY.
        let Nfs3Result::Ok(d700) = c
            .lookup(&LOOKUP3args {
                what: dirop(&root, b"d700"),
            })
            .await
            .unwrap()
        else {
            panic!("lookup d700")
        };
        create(
            &mut c,
            &d700.object,
            b"f",
            createhow3::UNCHECKED(sattr3::default()),
        )
        .await;
        for (rmdir, n, want) in [
            (false, &b"d2775"[..], nfsstat3::NFS3ERR_ISDIR),
            (true, b"g", nfsstat3::NFS3ERR_NOTDIR),
            (true, b"d700", nfsstat3::NFS3ERR_NOTEMPTY),
            (true, b"nope", nfsstat3::NFS3ERR_NOENT),
            (true, b"d2775", nfsstat3::NFS3_OK),
            (false, b"g", nfsstat3::NFS3_OK),
        ] {
            let object = dirop(&root, n);
            let got = if rmdir {
                status(&c.rmdir(&RMDIR3args { object }).await.unwrap())
            } else {
                status(&c.remove(&REMOVE3args { object }).await.unwrap())
            };
            let what = if rmdir { "RMDIR" } else { "REMOVE" };
            assert_eq!(got, want, "{what} {}", String::from_utf8_lossy(n));
        }

        // LINK: a second name for a file, with the file's new attributes and the
        // directory's wcc data; a directory, a taken name, a bad name or the snapshot
        // directory refused with the protocol's codes.
        let Nfs3Result::Ok(f) = c
            .lookup(&LOOKUP3args {
                what: dirop(&d700.object, b"f"),
            })
            .await
            .unwrap()
        else {
            panic!("lookup d700/f")
        };
        let r = c
            .link(&LINK3args {
                file: f.object.clone(),
                link: dirop(&root, b"f-link"),
            })
            .await
            .unwrap();
        let Nfs3Result::Ok(ok) = r else {
            panic!("link: {:?}", status(&r))
        };
        let fa = ok.file_attributes.unwrap();
        assert_eq!(fa.nlink, 2);
        assert!(matches!(ok.linkdir_wcc.after, post_op_attr::Some(_)));
        let Nfs3Result::Ok(by_link) = c
            .lookup(&LOOKUP3args {
                what: dirop(&root, b"f-link"),
            })
            .await
            .unwrap()
        else {
            panic!("lookup f-link")
        };
        assert_eq!(by_link.object, f.object, "one file, one handle");
        let Nfs3Result::Ok(snapdir) = c
            .lookup(&LOOKUP3args {
                what: dirop(&root, b".snapshots"),
            })
            .await
            .unwrap()
        else {
            panic!("lookup .snapshots")
        };
        for (file, dir, n, want) in [
            (
                &d700.object,
                &root,
                &b"dir-link"[..],
                nfsstat3::NFS3ERR_ISDIR,
            ),
            (&f.object, &root, b"f-link", nfsstat3::NFS3ERR_EXIST),
            (&f.object, &root, b"a/b", nfsstat3::NFS3ERR_INVAL),
            (&f.object, &root, b".snapshots", nfsstat3::NFS3ERR_EXIST),
            (&f.object, &snapdir.object, b"x", nfsstat3::NFS3ERR_ROFS),
            (&f.object, &f.object, b"x", nfsstat3::NFS3ERR_NOTDIR),
        ] {
            let r = c
                .link(&LINK3args {
                    file: file.clone(),
                    link: dirop(dir, n),
                })
                .await
                .unwrap();
            assert_eq!(status(&r), want, "link as {:?}", String::from_utf8_lossy(n));
        }
        // Device files are not stored.
        let r = c
            .mknod(&MKNOD3args {
                where_: dirop(&root, b"dev"),
                what: mknoddata3::NF3FIFO(sattr3::default()),
            })
            .await
            .unwrap();
        assert_eq!(status(&r), nfsstat3::NFS3ERR_NOTSUPP);

        // Bad names touch nothing.
        let long = vec![b'n'; 256];
        for (n, want) in [
            (&b""[..], nfsstat3::NFS3ERR_INVAL),
            (b".", nfsstat3::NFS3ERR_INVAL),
            (b"..", nfsstat3::NFS3ERR_INVAL),
            (b"a/b", nfsstat3::NFS3ERR_INVAL),
            (b"a\0b", nfsstat3::NFS3ERR_INVAL),
            (&long, nfsstat3::NFS3ERR_NAMETOOLONG),
        ] {
            let r = create(&mut c, &root, n, createhow3::UNCHECKED(sattr3::default())).await;
            assert_eq!(status(&r), want, "create {:?}", String::from_utf8_lossy(n));
            let r = mkdir(&mut c, &root, n, 0o755).await;
            assert_eq!(status(&r), want, "mkdir {:?}", String::from_utf8_lossy(n));
        }
        // LOOKUP of a name no file can have: NAMETOOLONG, not NOENT.
        for len in [256, 10_000] {
            let n = vec![b'q'; len];
            let r = c
                .lookup(&LOOKUP3args {
                    what: dirop(&root, &n),
                })
                .await
                .unwrap();
            assert_eq!(
                status(&r),
                nfsstat3::NFS3ERR_NAMETOOLONG,
                "lookup of {len} bytes"
            );
        }
        let r = c
            .readdir(&READDIR3args {
                dir: root.clone(),
                cookie: 0,
                cookieverf: cookieverf3::default(),
                count: 8192,
            })
            .await
            .unwrap();
        let Nfs3Result::Ok(list) = r else {
            panic!("readdir")
        };
        let mut names: Vec<String> = list
            .reply
            .entries
            .0
            .iter()
            .map(|e| String::from_utf8_lossy(e.name.0.as_ref()).into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["d1777", "d700", "f-link", "x"]);
    });
}

/// The SETATTR guard, handles of another generation or malformed, PATHCONF, FSSTAT,
/// UNSTABLE writes and COMMIT's verifier, READDIR paging with a small reply size.
#[test]
fn guards_handles_limits_commit_and_paging() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &config(tmp.path(), "127.0.0.1:0", &["127.0.0.1/32"], ""),
        &[],
    );
    runtime().block_on(async {
        let (mut c, root) = connect(d.port, "/backup").await;
        let Nfs3Result::Ok(f) = create(
            &mut c,
            &root,
            b"f",
            createhow3::UNCHECKED(sattr3::default()),
        )
        .await
        else {
            panic!("create")
        };
        let fh = f.obj.unwrap();
        let ctime = f.obj_attributes.unwrap().ctime;

        // A guard that does not match the ctime is NOT_SYNC and changes nothing.
        let stale_guard = nfstime3 {
            seconds: ctime.seconds.wrapping_sub(10),
            nseconds: 0,
        };
        let r = c
            .setattr(&SETATTR3args {
                object: fh.clone(),
                new_attributes: with_mode(0o600),
                guard: sattrguard3::Some(stale_guard),
            })
            .await
            .unwrap();
        assert_eq!(status(&r), nfsstat3::NFS3ERR_NOT_SYNC);
        let r = c
            .setattr(&SETATTR3args {
                object: fh.clone(),
                new_attributes: with_mode(0o4711),
                guard: sattrguard3::Some(ctime),
            })
            .await
            .unwrap();
        assert_eq!(status(&r), nfsstat3::NFS3_OK);
        let Nfs3Result::Ok(a) = c
            .getattr(&GETATTR3args { object: fh.clone() })
            .await
            .unwrap()
        else {
            panic!("getattr")
        };
        assert_eq!(a.obj_attributes.mode & 0o7777, 0o4711);

        // A handle of another generation is STALE; garbage is BADHANDLE.
        let mut other = fh.data.to_vec();
        other[0] ^= 0xff;
        let r = c
            .getattr(&GETATTR3args {
                object: nfs_fh3 {
                    data: Opaque::owned(other),
                },
            })
            .await
            .unwrap();
        assert_eq!(status(&r), nfsstat3::NFS3ERR_STALE);
        let mut garbage = fh.data.to_vec();
        garbage.truncate(10);
        let r = c
            .getattr(&GETATTR3args {
                object: nfs_fh3 {
                    data: Opaque::owned(garbage),
                },
            })
            .await
            .unwrap();
        assert_eq!(status(&r), nfsstat3::NFS3ERR_BADHANDLE);

        let Nfs3Result::Ok(pc) = c
            .pathconf(&PATHCONF3args {
                object: root.clone(),
            })
            .await
            .unwrap()
        else {
            panic!("pathconf")
        };
        assert_eq!(pc.name_max, 255);
        assert!(pc.no_trunc && pc.case_preserving && !pc.case_insensitive);
        let Nfs3Result::Ok(st) = c
            .fsstat(&FSSTAT3args {
                fsroot: root.clone(),
            })
            .await
            .unwrap()
        else {
            panic!("fsstat")
        };
        assert!(st.tbytes > 0 && st.abytes <= st.tbytes && st.tbytes != 1 << 40);

        // UNSTABLE answers UNSTABLE; COMMIT answers the same verifier; FILE_SYNC is stable.
        let data = vec![7u8; 100_000];
        let w = write(&mut c, &fh, 0, &data, stable_how::UNSTABLE).await;
        assert_eq!(w.count, 100_000);
        assert!(matches!(w.committed, stable_how::UNSTABLE));
        let cm = commit(&mut c, &fh).await;
        assert_eq!(cm.verf, w.verf);
        let w2 = write(&mut c, &fh, 100_000, b"end", stable_how::FILE_SYNC).await;
        assert!(matches!(w2.committed, stable_how::FILE_SYNC));
        let Nfs3Result::Ok(rd) = c
            .read(&READ3args {
                file: fh.clone(),
                offset: 99_998,
                count: 100,
            })
            .await
            .unwrap()
        else {
            panic!("read")
        };
        assert_eq!(rd.data.as_ref(), b"\x07\x07end");
        assert!(rd.eof);

        // READDIR and READDIRPLUS page through 300 entries with small replies.
        let Nfs3Result::Ok(dd) = mkdir(&mut c, &root, b"many", 0o755).await else {
            panic!("mkdir")
        };
        let dir = dd.obj.unwrap();
        for i in 0..300 {
            let n = format!("entry-{i:04}-{}", "p".repeat(i % 40));
            create(
                &mut c,
                &dir,
                n.as_bytes(),
                createhow3::UNCHECKED(sattr3::default()),
            )
            .await;
        }
        let (mut cookie, mut seen, mut pages) = (0, Vec::new(), 0);
        loop {
            let r = c
                .readdir(&READDIR3args {
                    dir: dir.clone(),
                    cookie,
                    cookieverf: cookieverf3::default(),
                    count: 1024,
                })
                .await
                .unwrap();
            let Nfs3Result::Ok(ok) = r else {
                panic!("readdir page: {:?}", status(&r))
            };
            pages += 1;
            for e in &ok.reply.entries.0 {
                seen.push(String::from_utf8_lossy(e.name.0.as_ref()).into_owned());
                cookie = e.cookie;
            }
            if ok.reply.eof {
                break;
            }
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 300);
        assert!(pages > 5, "small replies must page ({pages} pages)");
        let (mut cookie, mut plus) = (0, 0);
        loop {
            let r = c
                .readdirplus(&READDIRPLUS3args {
                    dir: dir.clone(),
                    cookie,
                    cookieverf: cookieverf3::default(),
                    dircount: 512,
                    maxcount: 4096,
                })
                .await
                .unwrap();
            let Nfs3Result::Ok(ok) = r else {
                panic!("readdirplus page")
            };
            for e in &ok.reply.entries.0 {
                assert!(e.name_attributes.is_some() && e.name_handle.is_some());
                plus += 1;
                cookie = e.cookie;
            }
            if ok.reply.eof {
                break;
            }
        }
        assert_eq!(plus, 300);
        let r = c
            .readdir(&READDIR3args {
                dir: dir.clone(),
                cookie: 0,
                cookieverf: cookieverf3::default(),
                count: 64,
            })
            .await
            .unwrap();
        assert_eq!(status(&r), nfsstat3::NFS3ERR_TOOSMALL);
    });
}

/// Clients that ask a portmapper on the export's port learn that port; MOUNT lists the
/// volumes; a call without an AUTH_UNIX credential is refused; a refused uid is refused.
#[test]
fn portmap_and_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &config(
            tmp.path(),
            "127.0.0.1:0",
            &["127.0.0.1/32"],
            "refuse_uids = [666]",
        ),
        &[],
    );
    runtime().block_on(async {
        let conn = Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", "/backup")
            .connect_from_privileged_port(false)
            .portmapper_port(d.port)
            .credential(root_cred())
            .mount()
            .await
            .expect("mount through the export port's portmapper");
        let root = conn.root_nfs_fh3();
        let mut c = conn.into_nfs3_client();
        let r = c.getattr(&GETATTR3args { object: root }).await.unwrap();
        assert_eq!(status(&r), nfsstat3::NFS3_OK);

        // MOUNT's EXPORT list (showmount -e): the root and each volume.
        let io = TokioIo::new(TcpStream::connect(("127.0.0.1", d.port)).await.unwrap());
        let mut m =
            nfs3_client::MountClient::new_with_auth(io, root_cred(), opaque_auth::default());
        let dirs: Vec<String> = m
            .export()
            .await
            .unwrap()
            .0
            .iter()
            .map(|e| String::from_utf8_lossy(e.ex_dir.0.as_ref()).into_owned())
            .collect();
        assert_eq!(dirs, ["/", "/backup"]);

        let anon = Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", "/backup")
            .connect_from_privileged_port(false)
            .mount_port(d.port)
            .nfs3_port(d.port)
            .mount()
            .await;
        assert!(anon.is_err(), "AUTH_NULL must be refused");

        let refused = Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", "/backup")
            .connect_from_privileged_port(false)
            .mount_port(d.port)
            .nfs3_port(d.port)
            .credential(opaque_auth::auth_unix(&auth_unix {
                uid: 666,
                ..Default::default()
            }))
            .mount()
            .await;
        assert!(refused.is_err(), "a refused uid must be refused");

        let missing = Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", "/nope")
            .connect_from_privileged_port(false)
            .mount_port(d.port)
            .nfs3_port(d.port)
            .credential(root_cred())
            .mount()
            .await;
        assert!(missing.is_err(), "mount of a missing volume must fail");

        // An RPCSEC_GSS credential (flavor 6; GSS init is a NULL call) is refused with
        // MSG_DENIED / AUTH_ERROR / AUTH_BADCRED, not GARBAGE_ARGS.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(("127.0.0.1", d.port)).await.unwrap();
        let words: Vec<u32> = vec![77, 0, 2, 100_003, 3, 0, 6, 12, 1, 0, 0, 0, 0];
        let mut rec: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        let mark = (rec.len() as u32) | 0x8000_0000;
        rec.splice(0..0, mark.to_be_bytes());
        s.write_all(&rec).await.unwrap();
        let mut reply = [0u8; 24];
        s.read_exact(&mut reply).await.unwrap();
        let w = |i: usize| u32::from_be_bytes(reply[4 + 4 * i..8 + 4 * i].try_into().unwrap());
        assert_eq!((w(0), w(1), w(2), w(3), w(4)), (77, 1, 1, 1, 1));
    });
}

/// UNSTABLE writes to small files that no COMMIT covered survive SIGKILL. Such files
/// are staged in memory (no staging file on disk: their bytes are in the database's
/// WAL), and the daemon restarted on the same boot answers the same write verifier,
/// so a client would not resend them: they must be there, overwrites, truncates and a
/// file that outgrew memory included.
#[test]
fn uncommitted_small_writes_survive_kill9() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_fixed_port_staged(tmp.path());
    let body = |k: u32, len: usize| -> Vec<u8> {
        (0..len).map(|i| (i as u32 * 7 + k * 13) as u8).collect()
    };
    let mut d = Daemon::process(&cfg, &[("KURA_BOOT_ID", "boot-a")]);
    let port = d.port;
    let (files, verf) = runtime().block_on(async {
        let (mut c, root) = connect(port, "/backup").await;
        let mut files = Vec::new();
        let mut verf = None;
        for k in 0..40u32 {
            let n = format!("f{k}");
            let Nfs3Result::Ok(f) = create(
                &mut c,
                &root,
                n.as_bytes(),
                createhow3::UNCHECKED(sattr3::default()),
            )
            .await
            else {
                panic!("create {n}")
            };
            let fh = f.obj.unwrap();
            let mut want = body(k, 1000 + k as usize * 300);
            let w = write(&mut c, &fh, 0, &want, stable_how::UNSTABLE).await;
            verf = Some(w.verf);
            // An overwrite that extends the file.
            let patch = body(k + 100, 500);
            let at = want.len() - 100;
            write(&mut c, &fh, at as u64, &patch, stable_how::UNSTABLE).await;
            want.truncate(at);
            want.extend_from_slice(&patch);
            if k % 5 == 0 {
                // A truncate (SETATTR of the size).
                let r = c
                    .setattr(&SETATTR3args {
                        object: fh.clone(),
                        new_attributes: sattr3 {
                            size: set_size3::Some(700),
                            ..Default::default()
                        },
                        guard: sattrguard3::None,
                    })
                    .await
                    .unwrap();
                assert_eq!(status(&r), nfsstat3::NFS3_OK);
                want.truncate(700);
            }
            if k == 7 {
                // Outgrows memory: goes on in a staging file on disk.
                let big = body(k + 200, 100_000);
                write(&mut c, &fh, want.len() as u64, &big, stable_how::UNSTABLE).await;
                want.extend_from_slice(&big);
            }
            files.push((fh, want));
        }
        (files, verf.unwrap())
    });
    // Only the file that outgrew memory has a staging file.
    let staged: Vec<_> = std::fs::read_dir(tmp.path().join("store/staging"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<u64>().is_ok())
        .collect();
    assert_eq!(staged.len(), 1, "{staged:?}");
    d.kill9();
    let _d = Daemon::process(&cfg, &[("KURA_BOOT_ID", "boot-a")]);
    runtime().block_on(async {
        let (mut c, _) = connect(port, "/backup").await;
        for (i, (fh, want)) in files.iter().enumerate() {
            let Nfs3Result::Ok(r) = c
                .read(&READ3args {
                    file: fh.clone(),
                    offset: 0,
                    count: 1 << 20,
                })
                .await
                .unwrap()
            else {
                panic!("read f{i}")
            };
            assert_eq!(r.data.as_ref(), &want[..], "f{i}");
        }
        let cm = commit(&mut c, &files[0].0).await;
        assert_eq!(cm.verf, verf, "same boot: the verifier stays");
    });
}
