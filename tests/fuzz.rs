//! Fuzzing the export on stable Rust: the recorded client sessions in
//! `protocol/fuzz/seeds/`, mutated structure-aware (see `protocol::fuzzing`), replayed
//! into a fresh store per case. `KURA_FUZZ_CASES` sets how many (default 3,000, about half
//! a minute); a failing case prints its number, and `KURA_FUZZ_FIRST=N KURA_FUZZ_CASES=1`
//! replays it. The same target runs under cargo-fuzz: see `protocol/fuzz/README.md`.
//!
//! `record_fuzz_seeds` (ignored) made the seeds: an in-process export behind a
//! recording proxy, driven by libnfs-utils and `nfs3_client`.

mod common;

use protocol::fuzzing::{mutate, Recording, Rng, Target};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../protocol/fuzz/seeds")
}

#[test]
fn fuzz_recorded_sessions() {
    let rec = Recording::load(&seeds_dir()).expect("seeds: run record_fuzz_seeds");
    assert!(rec.sessions.len() >= 3, "{} sessions", rec.sessions.len());
    let cases: u64 = std::env::var("KURA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let first: u64 = std::env::var("KURA_FUZZ_FIRST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // The unmutated recording replays cleanly, its handles valid: nearly every call
    // succeeds (so mutations start from calls that reach the store).
    let t = Target::new(&rec.secret, &rec.identity);
    let (mut calls, mut ok) = (0, 0);
    for s in &rec.sessions {
        let (c, k) = t.run(s);
        calls += c;
        ok += k;
    }
    t.check();
    // (The rest: portmap answers a port, not a status; LOOKUPs of names not yet
    // created; LINK, NOTSUPP.)
    assert!(
        calls >= 40 && ok * 3 >= calls * 2,
        "{ok} of {calls} recorded calls succeed"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    for case in first..first + cases {
        let mut rng = Rng::new(case);
        let t = Target::new(&rec.secret, &rec.identity);
        let victim = rng.below(rec.sessions.len());
        let other = rec.sessions[rng.below(rec.sessions.len())].clone();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for (i, s) in rec.sessions.iter().enumerate() {
                if i == victim {
                    let m = mutate(s, &other, &mut rng);
                    t.run(&m);
                } else {
                    t.run(s);
                }
            }
            if case % 25 == 0 {
                t.check();
            }
        }));
        if r.is_err() {
            panic!("fuzz case {case} failed; replay with KURA_FUZZ_FIRST={case} KURA_FUZZ_CASES=1");
        }
        if std::time::Instant::now() > deadline {
            eprintln!("fuzz: time bound reached after {} cases", case - first + 1);
            break;
        }
    }
}

/// Raw garbage as connection bytes: the reader and parser must survive anything.
#[test]
fn fuzz_raw_bytes() {
    let t = Target::new(&[1; 32], "raw");
    let mut rng = Rng::new(7);
    for _ in 0..3000 {
        let n = rng.below(300);
        let mut b: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
        if n >= 4 && rng.below(2) == 0 {
            // A plausible record mark, so the parser is reached.
            let len = (n - 4) as u32 | 0x8000_0000;
            b[..4].copy_from_slice(&len.to_be_bytes());
            if n >= 16 {
                b[8..12].copy_from_slice(&[0, 0, 0, 0]);
                b[12..16].copy_from_slice(&[0, 0, 0, 2]);
            }
        }
        t.run(&b);
    }
}

/// What each proxied connection's client sent, by connection number.
type Recorded = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// Records the seeds: run with `cargo test --release -p kura --test fuzz --
/// --ignored record_fuzz_seeds` (needs libnfs-utils), then commit the files.
#[test]
#[ignore = "writes the committed fuzz seeds"]
fn record_fuzz_seeds() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let secret = [0x42u8; 32];
    let sessions: Recorded = Arc::default();
    let (proxy_port, identity) = rt.block_on(async {
        let (store, gen) = protocol::fuzzing::recording_store(&tmp.path().join("store"));
        let cfg = protocol::ExportConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            allow: vec!["127.0.0.1/32".parse().unwrap()],
            policy: protocol::ExportPolicy {
                root_squash: false,
                ..Default::default()
            },
            max_connections: 64,
            limits: Default::default(),
        };
        let identity = protocol::server::export_identity(&cfg);
        let export = protocol::server::start(protocol::Shared::new(store, 8), cfg, gen, &secret)
            .await
            .unwrap();
        let upstream = export.addr;
        std::mem::forget(export);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sessions = sessions.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                let (client, _) = listener.accept().await.unwrap();
                let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let id = n;
                n += 1;
                let sessions = sessions.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let back = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    });
                    let mut seen = Vec::new();
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => {
                                seen.extend_from_slice(&buf[..k]);
                                if sw.write_all(&buf[..k]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = sw.shutdown().await;
                    let _ = back.await;
                    sessions.lock().unwrap().push((id, seen));
                });
            }
        });
        (port, identity)
    });
    let url = |path: &str| {
        format!(
            "nfs://127.0.0.1/backup{path}?nfsport={proxy_port}&mountport={proxy_port}&version=3"
        )
    };
    let local = tmp.path().join("local.bin");
    std::fs::write(
        &local,
        (0..200_000u32)
            .map(|i| (i * 7 / 3) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let run = |tool: &str, args: &[&str]| {
        let o = common::libnfs(tool, args);
        assert!(
            o.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run("nfs-cp", &[local.to_str().unwrap(), &url("/seed.bin")]);
    run("nfs-ls", &[&url("/")]);
    run("nfs-cat", &[&url("/seed.bin")]);
    let back = tmp.path().join("back.bin");
    run("nfs-cp", &[&url("/seed.bin"), back.to_str().unwrap()]);
    // Everything else through a typed client: each procedure at least once.
    rt.block_on(async {
        use nfs3_client::nfs3_types::nfs3::*;
        use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
        use nfs3_client::nfs3_types::xdr_codec::Opaque;
        use nfs3_client::tokio::TokioConnector;
        let conn = nfs3_client::Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", "/backup")
            .connect_from_privileged_port(false)
            .mount_port(proxy_port)
            .nfs3_port(proxy_port)
            .credential(opaque_auth::auth_unix(&auth_unix {
                stamp: 1,
                machinename: Opaque::borrowed(b"seed"),
                uid: 0,
                gid: 0,
                gids: vec![],
            }))
            .mount()
            .await
            .unwrap();
        let root = conn.root_nfs_fh3();
        let mut c = conn.into_nfs3_client();
        let name = |n: &'static [u8]| filename3(Opaque::borrowed(n));
        let dirop = |d: &nfs_fh3, n: &'static [u8]| diropargs3 {
            dir: d.clone(),
            name: name(n),
        };
        let ok = |r: bool, what: &str| assert!(r, "{what}");
        let Nfs3Result::Ok(d) = c
            .mkdir(&MKDIR3args {
                where_: dirop(&root, b"dir"),
                attributes: sattr3 {
                    mode: set_mode3::Some(0o2750),
                    ..Default::default()
                },
            })
            .await
            .unwrap()
        else {
            panic!("mkdir")
        };
        let dir = d.obj.unwrap();
        let Nfs3Result::Ok(f) = c
            .create(&CREATE3args {
                where_: dirop(&dir, b"file"),
                how: createhow3::GUARDED(sattr3 {
                    mode: set_mode3::Some(0o640),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
        else {
            panic!("create")
        };
        let file = f.obj.unwrap();
        let w = c
            .write(&WRITE3args {
                file: file.clone(),
                offset: 10,
                count: 11,
                stable: stable_how::UNSTABLE,
                data: Opaque::borrowed(b"hello world"),
            })
            .await
            .unwrap();
        ok(matches!(w, Nfs3Result::Ok(_)), "write");
        c.commit(&COMMIT3args {
            file: file.clone(),
            offset: 0,
            count: 0,
        })
        .await
        .unwrap();
        c.create(&CREATE3args {
            where_: dirop(&dir, b"excl"),
            how: createhow3::EXCLUSIVE(createverf3([9; 8])),
        })
        .await
        .unwrap();
        c.setattr(&SETATTR3args {
            object: file.clone(),
            new_attributes: sattr3 {
                size: set_size3::Some(5),
                mtime: set_mtime::SET_TO_SERVER_TIME,
                ..Default::default()
            },
            guard: sattrguard3::None,
        })
        .await
        .unwrap();
        c.read(&READ3args {
            file: file.clone(),
            offset: 0,
            count: 100,
        })
        .await
        .unwrap();
        c.symlink(&SYMLINK3args {
            where_: dirop(&dir, b"link"),
            symlink: symlinkdata3 {
                symlink_attributes: sattr3::default(),
                symlink_data: nfspath3(Opaque::borrowed(b"file")),
            },
        })
        .await
        .unwrap();
        let Nfs3Result::Ok(l) = c
            .lookup(&LOOKUP3args {
                what: dirop(&dir, b"link"),
            })
            .await
            .unwrap()
        else {
            panic!("lookup")
        };
        c.readlink(&READLINK3args { symlink: l.object })
            .await
            .unwrap();
        c.access(&ACCESS3args {
            object: file.clone(),
            access: 0x3f,
        })
        .await
        .unwrap();
        c.rename(&RENAME3args {
            from: dirop(&dir, b"file"),
            to: dirop(&root, b"moved"),
        })
        .await
        .unwrap();
        c.readdir(&READDIR3args {
            dir: dir.clone(),
            cookie: 0,
            cookieverf: cookieverf3::default(),
            count: 4096,
        })
        .await
        .unwrap();
        c.readdirplus(&READDIRPLUS3args {
            dir: root.clone(),
            cookie: 0,
            cookieverf: cookieverf3::default(),
            dircount: 4096,
            maxcount: 16384,
        })
        .await
        .unwrap();
        c.link(&LINK3args {
            file: file.clone(),
            link: dirop(&dir, b"hard"),
        })
        .await
        .unwrap();
        c.fsstat(&FSSTAT3args {
            fsroot: root.clone(),
        })
        .await
        .unwrap();
        c.fsinfo(&FSINFO3args {
            fsroot: root.clone(),
        })
        .await
        .unwrap();
        c.pathconf(&PATHCONF3args {
            object: root.clone(),
        })
        .await
        .unwrap();
        c.remove(&REMOVE3args {
            object: dirop(&dir, b"link"),
        })
        .await
        .unwrap();
        c.remove(&REMOVE3args {
            object: dirop(&dir, b"excl"),
        })
        .await
        .unwrap();
        c.rmdir(&RMDIR3args {
            object: dirop(&root, b"dir"),
        })
        .await
        .unwrap();
        c.getattr(&GETATTR3args { object: root }).await.unwrap();
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut got = sessions.lock().unwrap().clone();
    got.sort_by_key(|s| s.0);
    let dir = seeds_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(dir.join("meta"), format!("{hex} {identity}\n")).unwrap();
    let mut kept = 0;
    for (id, bytes) in got {
        if bytes.is_empty() {
            continue;
        }
        // A 200 KB WRITE adds nothing a fuzzer needs beyond its first records.
        std::fs::write(dir.join(format!("session-{id:03}.bin")), &bytes).unwrap();
        kept += 1;
    }
    assert!(kept >= 3, "{kept} sessions recorded");
}
