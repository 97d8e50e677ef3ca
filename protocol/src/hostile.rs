//! A hostile client against two exports of one store, in process: export A shows
//! volume `a`, export B shows volume `b`. The client knows every node of `b` (B minted
//! its handles, and it can also seal them with A's key, as if A's key had leaked) and
//! sends each of them to A through every procedure. Nothing of `b` may change, and no
//! reply of A may carry anything of `b`.

use crate::fs::{ExportPolicy, KuraFs, Shared};
use crate::handle::{HandleCodec, HandleKey, Node};
use crate::nfs::tests::call_bytes;
use crate::nfs::NfsService;
use crate::rpc::{Call, Reply, Service};
use nfs3_types::nfs3::*;
use nfs3_types::xdr_codec::{Opaque, Pack};
use std::net::SocketAddr;
use std::sync::Arc;
use storage::{FileKind, NewAttr, Store, StoreOptions};

const SECRET: &[u8] = b"b-secret-payload";

fn owner(mode: u32) -> NewAttr {
    NewAttr {
        mode,
        uid: 0,
        gid: 0,
    }
}

/// The NFS status of an accepted reply.
fn status(reply: &Reply) -> u32 {
    let b = reply.to_bytes();
    assert_eq!(&b[12..16], &[0, 0, 0, 0], "MSG_ACCEPTED");
    assert_eq!(&b[24..28], &[0, 0, 0, 0], "SUCCESS");
    u32::from_be_bytes(b[28..32].try_into().unwrap())
}

/// Everything a volume holds, as (path, kind, mode, size, content).
fn tree_of(store: &Store, vol: &str) -> Vec<(String, FileKind, u32, u64, Vec<u8>)> {
    let v = store.volume(vol).unwrap();
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), v.root)];
    while let Some((path, dir)) = stack.pop() {
        for e in store.readdir(dir, 0, 10_000).unwrap() {
            let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
            let data = match e.attr.kind {
                FileKind::File => store.read(e.attr.ino, 0, 1 << 20).unwrap().0,
                FileKind::Symlink => store.readlink(e.attr.ino).unwrap(),
                FileKind::Dir => {
                    stack.push((p.clone(), e.attr.ino));
                    Vec::new()
                }
            };
            out.push((p, e.attr.kind, e.attr.mode, e.attr.size, data));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every procedure that takes a handle, with `fh` in each handle position and a legit
/// handle `ok` of export A's volume where a second one is needed.
fn hostile_calls(fh: &nfs_fh3, ok: &nfs_fh3) -> Vec<(&'static str, Vec<u8>)> {
    use NFS_PROGRAM::*;
    let name = |n: &'static [u8]| filename3(Opaque::borrowed(n));
    let dirop = |d: &nfs_fh3, n: &'static [u8]| diropargs3 {
        dir: d.clone(),
        name: name(n),
    };
    let attrs = sattr3 {
        mode: set_mode3::Some(0o777),
        size: set_size3::Some(0),
        ..Default::default()
    };
    let mut v: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut add = |what: &'static str, bytes: Vec<u8>| v.push((what, bytes));
    let c = |p: NFS_PROGRAM, a: &dyn Fn(&mut Vec<u8>)| {
        let mut args = Vec::new();
        a(&mut args);
        let mut head = call_bytes(1, p, &nfs3_types::xdr_codec::Void);
        head.extend_from_slice(&args);
        head
    };
    add(
        "GETATTR",
        c(NFSPROC3_GETATTR, &|b| {
            GETATTR3args { object: fh.clone() }.pack(b).unwrap();
        }),
    );
    add(
        "SETATTR",
        c(NFSPROC3_SETATTR, &|b| {
            SETATTR3args {
                object: fh.clone(),
                new_attributes: attrs.clone(),
                guard: sattrguard3::None,
            }
            .pack(b)
            .unwrap();
        }),
    );
    for n in [&b"b-dir"[..], b"b-file", b"..", b".", b".snapshots"] {
        add(
            "LOOKUP",
            c(NFSPROC3_LOOKUP, &|b| {
                LOOKUP3args {
                    what: diropargs3 {
                        dir: fh.clone(),
                        name: filename3(Opaque::borrowed(n)),
                    },
                }
                .pack(b)
                .unwrap();
            }),
        );
    }
    add(
        "ACCESS",
        c(NFSPROC3_ACCESS, &|b| {
            ACCESS3args {
                object: fh.clone(),
                access: 0x3f,
            }
            .pack(b)
            .unwrap();
        }),
    );
    add(
        "READLINK",
        c(NFSPROC3_READLINK, &|b| {
            READLINK3args {
                symlink: fh.clone(),
            }
            .pack(b)
            .unwrap();
        }),
    );
    add(
        "READ",
        c(NFSPROC3_READ, &|b| {
            READ3args {
                file: fh.clone(),
                offset: 0,
                count: 4096,
            }
            .pack(b)
            .unwrap();
        }),
    );
    add(
        "WRITE",
        c(NFSPROC3_WRITE, &|b| {
            WRITE3args {
                file: fh.clone(),
                offset: 0,
                count: 5,
                stable: stable_how::FILE_SYNC,
                data: Opaque::borrowed(b"owned"),
            }
            .pack(b)
            .unwrap();
        }),
    );
    add(
        "CREATE",
        c(NFSPROC3_CREATE, &|b| {
            CREATE3args {
                where_: dirop(fh, b"planted"),
                how: createhow3::UNCHECKED(attrs.clone()),
            }
            .pack(b)
            .unwrap();
        }),
    );
    add(
        "CREATE over",
        c(NFSPROC3_CREATE, &|b| {
            CREATE3args {
                where_: dirop(fh, b"b-file"),
                how: createhow3::UNCHECKED(attrs.clone()),
            }
            .pack(b)
            .unwrap();
        }),
    );
    add(
        "MKDIR",
        c(NFSPROC3_MKDIR, &|b| {
            MKDIR3args {
                where_: dirop(fh, b"planted-dir"),
                attributes: sattr3::default(),
            }
            .pack(b)
            .unwrap();
        }),
    );
    add(
        "SYMLINK",
        c(NFSPROC3_SYMLINK, &|b| {
            SYMLINK3args {
                where_: dirop(fh, b"planted-link"),
                symlink: symlinkdata3 {
                    symlink_attributes: sattr3::default(),
                    symlink_data: nfspath3(Opaque::borrowed(b"/etc/passwd")),
                },
            }
            .pack(b)
            .unwrap();
        }),
    );
    for (what, p, n) in [
        ("REMOVE", NFSPROC3_REMOVE, &b"b-file"[..]),
        ("REMOVE link", NFSPROC3_REMOVE, b"b-link"),
        ("RMDIR", NFSPROC3_RMDIR, b"b-empty"),
    ] {
        add(
            what,
            c(p, &|b| {
                REMOVE3args {
                    object: diropargs3 {
                        dir: fh.clone(),
                        name: filename3(Opaque::borrowed(n)),
                    },
                }
                .pack(b)
                .unwrap();
            }),
        );
    }
    add(
        "RENAME out of b",
        c(NFSPROC3_RENAME, &|b| {
            RENAME3args {
                from: dirop(fh, b"b-file"),
                to: dirop(ok, b"stolen"),
            }
            .pack(b)
            .unwrap();
        }),
    );
    add(
        "RENAME into b",
        c(NFSPROC3_RENAME, &|b| {
            RENAME3args {
                from: dirop(ok, b"a-file"),
                to: dirop(fh, b"b-file"),
            }
            .pack(b)
            .unwrap();
        }),
    );
    add(
        "LINK",
        c(NFSPROC3_LINK, &|b| {
            LINK3args {
                file: fh.clone(),
                link: dirop(ok, b"linked"),
            }
            .pack(b)
            .unwrap();
        }),
    );
    add(
        "LINK into b",
        c(NFSPROC3_LINK, &|b| {
            LINK3args {
                file: ok.clone(),
                link: dirop(fh, b"linked"),
            }
            .pack(b)
            .unwrap();
        }),
    );
    add(
        "READDIR",
        c(NFSPROC3_READDIR, &|b| {
            READDIR3args {
                dir: fh.clone(),
                cookie: 0,
                cookieverf: cookieverf3::default(),
                count: 65536,
            }
            .pack(b)
            .unwrap();
        }),
    );
    add(
        "READDIRPLUS",
        c(NFSPROC3_READDIRPLUS, &|b| {
            READDIRPLUS3args {
                dir: fh.clone(),
                cookie: 0,
                cookieverf: cookieverf3::default(),
                dircount: 65536,
                maxcount: 65536,
            }
            .pack(b)
            .unwrap();
        }),
    );
    for p in [NFSPROC3_FSSTAT, NFSPROC3_FSINFO, NFSPROC3_PATHCONF] {
        add(
            "FS*",
            c(p, &|b| {
                fh.pack(b).unwrap();
            }),
        );
    }
    add(
        "COMMIT",
        c(NFSPROC3_COMMIT, &|b| {
            COMMIT3args {
                file: fh.clone(),
                offset: 0,
                count: 0,
            }
            .pack(b)
            .unwrap();
        }),
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_handles_never_reach_another_exports_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(tmp.path(), StoreOptions::default()).unwrap());
    let a = store.create_volume("a", owner(0o777)).unwrap();
    let b = store.create_volume("b", owner(0o755)).unwrap();
    store.create(a.root, b"a-file", owner(0o644)).unwrap();
    let bdir = store.mkdir(b.root, b"b-dir", owner(0o700)).unwrap();
    let bfile = store.create(bdir.ino, b"b-file", owner(0o600)).unwrap();
    store.write(bfile.ino, 0, SECRET).unwrap();
    store.ingest_all(None).unwrap();
    let blink = store
        .symlink(bdir.ino, b"b-link", b"b-target", owner(0o777))
        .unwrap();
    store.mkdir(bdir.ino, b"b-empty", owner(0o755)).unwrap();
    let snap = store.snapshot("b", "s1").unwrap();
    // Nodes of b: live, and every kind of snapshot node.
    let (_, root_entry) = store.snapshot_by_id(snap.id).unwrap();
    let top = store.dir_entries(&root_entry.target_ref.unwrap()).unwrap();
    let sdir = top.iter().find(|e| e.name == b"b-dir").unwrap().clone();
    let inner = store.dir_entries(&sdir.target_ref.unwrap()).unwrap();
    let sfile = inner.iter().find(|e| e.name == b"b-file").unwrap().clone();
    let mut b_nodes = vec![
        Node::Live(b.root),
        Node::Live(bdir.ino),
        Node::Live(bfile.ino),
        Node::Live(blink.ino),
        Node::SnapshotsDir(b.id),
        Node::SnapRoot(snap.id),
        Node::SnapEntry {
            snap: snap.id,
            dir: root_entry.target_ref.unwrap(),
            ino: sdir.attr.ino,
        },
        Node::SnapEntry {
            snap: snap.id,
            dir: sdir.target_ref.unwrap(),
            ino: sfile.attr.ino,
        },
    ];
    // Guessed neighbours and ids that do not exist at all.
    for i in 1..40 {
        b_nodes.push(Node::Live(storage::FileId(i)));
    }
    b_nodes.push(Node::SnapRoot(storage::SnapshotId(99)));
    b_nodes.push(Node::SnapEntry {
        snap: storage::SnapshotId(1),
        dir: storage::ChunkId([0x5a; 32]),
        ino: storage::FileId(3),
    });

    let shared = Shared::new(store.clone(), 8);
    let policy = |v: &str| ExportPolicy {
        volumes: Some(vec![v.to_string()]),
        root_squash: false,
        ..Default::default()
    };
    let key_a = HandleKey::derive(&[7; 32], "A");
    let codec_a = HandleCodec::new(key_a.clone(), 5);
    let codec_b = HandleCodec::new(HandleKey::derive(&[7; 32], "B"), 5);
    let svc_a = NfsService::new(
        KuraFs::new(shared.clone(), policy("a")),
        codec_a.clone(),
        5,
        2049,
    );
    let fh = |c: &HandleCodec, n: &Node| nfs_fh3 {
        data: Opaque::owned(c.seal(n)),
    };
    let ok = fh(&codec_a, &Node::Live(a.root));
    let peer: SocketAddr = "127.0.0.1:700".parse().unwrap();

    let a_before = tree_of(&store, "a");
    let b_before = tree_of(&store, "b");
    let snaps_before = store.snapshots(None).unwrap().len();
    let mut xid = 1000;
    let mut tried = 0;
    for node in &b_nodes {
        // Minted by B, and sealed with A's own key: both must fail at A's gate.
        for (how, handle) in [("B's", fh(&codec_b, node)), ("A's", fh(&codec_a, node))] {
            for (what, mut bytes) in hostile_calls(&handle, &ok) {
                xid += 1;
                bytes[..4].copy_from_slice(&u32::to_be_bytes(xid));
                let call = Call::parse(bytes).unwrap();
                let reply = svc_a.clone().call(peer, call).await.expect("a reply");
                let st = status(&reply);
                let allowed_node =
                    matches!(node, Node::Live(i) if store.inode(*i).is_ok_and(|x| x.vol == a.id));
                if !allowed_node {
                    assert_ne!(st, 0, "{what} with {how} handle of {node:?} succeeded at A");
                    assert!(
                        st == nfsstat3::NFS3ERR_STALE as u32,
                        "{what} with {how} handle of {node:?}: status {st}, want STALE"
                    );
                }
                let raw = reply.to_bytes();
                assert!(
                    !raw.windows(SECRET.len()).any(|w| w == SECRET),
                    "{what} revealed b's data"
                );
                if !allowed_node {
                    for secret_name in [&b"b-dir"[..], b"b-file", b"b-link", b"b-target"] {
                        assert!(
                            !raw.windows(secret_name.len()).any(|w| w == secret_name),
                            "{what} with {how} handle of {node:?} revealed a name of b"
                        );
                    }
                }
                tried += 1;
            }
        }
    }
    assert!(tried > 1000, "{tried} hostile calls");
    assert_eq!(tree_of(&store, "b"), b_before, "volume b is untouched");
    assert_eq!(store.snapshots(None).unwrap().len(), snaps_before);
    // A's own nodes (some guessed ids are A's) may change A's volume, but nothing of
    // b's arrived there.
    let a_after = tree_of(&store, "a");
    assert!(
        a_after.iter().all(|e| e.4 != SECRET),
        "b's file moved into a"
    );
    assert!(a_before.len() <= a_after.len());

    // Random handles of every length and node type: STALE or BADHANDLE, never an I/O
    // error (which would log a false corruption alarm).
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..2000 {
        let len = (rnd() % 70) as usize;
        let mut h: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        if len > 4 {
            h[4] = (i % 6) as u8;
        }
        let bytes = call_bytes(
            i,
            NFS_PROGRAM::NFSPROC3_GETATTR,
            &GETATTR3args {
                object: nfs_fh3 {
                    data: Opaque::owned(h),
                },
            },
        );
        let reply = svc_a
            .clone()
            .call(peer, Call::parse(bytes).unwrap())
            .await
            .unwrap();
        let st = status(&reply);
        assert!(
            st == nfsstat3::NFS3ERR_STALE as u32 || st == nfsstat3::NFS3ERR_BADHANDLE as u32,
            "random handle: status {st}"
        );
    }
}
