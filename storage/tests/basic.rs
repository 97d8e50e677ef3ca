//! End-to-end behaviour of the store through its facade.

mod common;
use common::*;
use storage::*;

/// Written bytes read back the same before ingest, after ingest, after reopen, and a
/// partial rewrite of an ingested file stages only the rewritten range.
#[test]
fn write_ingest_read_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let payload = data(3 << 20, 1);
    let ino;
    {
        let s = open(dir.path());
        let v = s.create_volume("vol", owner()).unwrap();
        ino = s.create(v.root, b"f.bin", file_mode()).unwrap().ino;
        // Out of order writes.
        s.write(ino, 1 << 20, &payload[1 << 20..]).unwrap();
        s.write(ino, 0, &payload[..1 << 20]).unwrap();
        assert_eq!(read_all(&s, ino), payload);
        let r = s.ingest_all(None).unwrap();
        assert_eq!(r.files, 1);
        assert!(r.new_chunks > 10);
        assert_eq!(s.stats().unwrap().staged_files, 0);
        assert_eq!(read_all(&s, ino), payload);
        // Rewrite a range in the middle of the ingested file.
        s.write(ino, 100_000, b"HELLO").unwrap();
        let mut expect = payload.clone();
        expect[100_000..100_005].copy_from_slice(b"HELLO");
        assert_eq!(read_all(&s, ino), expect);
        s.sync(ino).unwrap();
    }
    let s = open(dir.path());
    let mut expect = payload.clone();
    expect[100_000..100_005].copy_from_slice(b"HELLO");
    assert_eq!(read_all(&s, ino), expect, "staged overlay survives reopen");
    let r = s.ingest_all(None).unwrap();
    assert!(
        r.new_chunks <= 4,
        "only the chunks around the rewrite are new: {r:?}"
    );
    assert_eq!(read_all(&s, ino), expect);
    // Ingesting identical content again stores nothing new.
    let v = s.volume("vol").unwrap();
    let b = s.create(v.root, b"copy.bin", file_mode()).unwrap().ino;
    s.write(b, 0, &expect).unwrap();
    let r = s.ingest_all(None).unwrap();
    assert_eq!(r.new_chunks, 0, "{r:?}");
}

/// Holes read as zeros; shrinking then growing an ingested file exposes zeros, not old data.
#[test]
fn truncate_grow_and_shrink() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let f = s.create(v.root, b"f", file_mode()).unwrap().ino;
    s.write(f, 10_000, b"xyz").unwrap();
    let got = read_all(&s, f);
    assert_eq!(got.len(), 10_003);
    assert!(got[..10_000].iter().all(|b| *b == 0));
    s.ingest_all(None).unwrap();
    s.setattr(
        f,
        SetAttr {
            size: Some(5),
            ..Default::default()
        },
    )
    .unwrap();
    s.setattr(
        f,
        SetAttr {
            size: Some(20_000),
            ..Default::default()
        },
    )
    .unwrap();
    let got = read_all(&s, f);
    assert_eq!(got.len(), 20_000);
    assert!(got.iter().all(|b| *b == 0));
    s.ingest_all(None).unwrap();
    assert_eq!(read_all(&s, f), vec![0; 20_000]);
}

/// A file nothing was ever stored in is resized by its row alone (no staging); a write
/// after that starts its staging from the new size, and one that restages it after a
/// size change sees that change.
#[test]
fn a_size_set_without_staging_is_what_the_next_write_starts_from() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let f = s.create(v.root, b"f", file_mode()).unwrap().ino;
    let size = |n| SetAttr {
        size: Some(n),
        ..Default::default()
    };
    s.setattr(f, size(100)).unwrap();
    assert_eq!(s.getattr(f).unwrap().size, 100);
    s.write(f, 0, b"abc").unwrap();
    let mut want = vec![0u8; 100];
    want[..3].copy_from_slice(b"abc");
    assert_eq!(read_all(&s, f), want);
    s.ingest_all(None).unwrap();
    assert_eq!(read_all(&s, f), want);
    // Ingested to nothing (a hole), resized again by the row, then written.
    let g = s.create(v.root, b"g", file_mode()).unwrap().ino;
    s.setattr(g, size(10)).unwrap();
    s.setattr(g, size(0)).unwrap();
    s.write(g, 4, b"z").unwrap();
    assert_eq!(read_all(&s, g), b"\0\0\0\0z");
    s.ingest_all(None).unwrap();
    assert_eq!(read_all(&s, g), b"\0\0\0\0z");
}

/// Snapshots see the tree as it was; later changes do not leak in; clone is writable.
#[test]
fn snapshot_clone_delete_gc() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let d = s.mkdir(v.root, b"dir", owner()).unwrap().ino;
    let f = s.create(d, b"a.txt", file_mode()).unwrap().ino;
    let one = data(200_000, 7);
    s.write(f, 0, &one).unwrap();
    s.symlink(v.root, b"link", b"dir/a.txt", file_mode())
        .unwrap();
    s.snapshot("vol", "s1").unwrap();
    s.write(f, 0, b"CHANGED").unwrap();
    s.remove(v.root, b"link").unwrap();
    s.snapshot("vol", "s2").unwrap();

    let root = s.snapshot_root("vol", "s1").unwrap();
    let names: Vec<_> = s
        .snapshot_children(&root)
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names, vec![b"dir".to_vec(), b"link".to_vec()]);
    let sd = s.snap_lookup(&root, b"dir").unwrap();
    let sf = s.snap_lookup(&sd, b"a.txt").unwrap();
    assert_eq!(s.snap_read(&sf, 0, 1 << 20).unwrap().0, one);
    let link = s.snap_lookup(&root, b"link").unwrap();
    assert_eq!(link.link, b"dir/a.txt");
    let r2 = s.snapshot_root("vol", "s2").unwrap();
    assert!(s.snap_lookup(&r2, b"link").is_err());
    let sf2 = s
        .snap_lookup(&s.snap_lookup(&r2, b"dir").unwrap(), b"a.txt")
        .unwrap();
    assert_eq!(&s.snap_read(&sf2, 0, 7).unwrap().0, b"CHANGED");

    let c = s.clone_snapshot("vol", "s1", "restored").unwrap();
    let cd = s.lookup(c.root, b"dir").unwrap().ino;
    let cf = s.lookup(cd, b"a.txt").unwrap().ino;
    assert_eq!(read_all(&s, cf), one);
    s.write(cf, 0, b"clone!").unwrap();
    assert_eq!(
        &s.snap_read(&sf, 0, 6).unwrap().0,
        &one[..6],
        "clone writes do not touch the snapshot"
    );

    s.delete_snapshot("vol", "s1").unwrap();
    s.remove(cd, b"a.txt").unwrap();
    let before = s.stats().unwrap();
    let rep = s
        .gc(&GcOptions {
            repack_below: 0.9,
            ..Default::default()
        })
        .unwrap();
    assert!(rep.deleted_chunks > 0, "{rep:?}");
    let after = s.stats().unwrap();
    assert!(after.chunks < before.chunks);
    // What is still referenced still reads.
    assert_eq!(&s.snap_read(&sf2, 0, 7).unwrap().0, b"CHANGED");
    assert_eq!(&read_all(&s, f)[..7], b"CHANGED");
    assert!(s.verify().unwrap().is_clean());
}

/// Names NFS must refuse are refused and change nothing.
#[test]
fn bad_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let long = vec![b'x'; 256];
    for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &long] {
        let e = s.create(v.root, bad, file_mode()).unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::InvalidName { .. } | StoreError::NameTooLong { .. }
            ),
            "{e}"
        );
    }
    assert!(s.readdir(v.root, 0, 100).unwrap().is_empty());
    assert!(s.create(v.root, &vec![b'x'; 255], file_mode()).is_ok());
    assert!(matches!(
        s.create_volume("../x", owner()),
        Err(StoreError::InvalidName { .. })
    ));
}

/// The largest pack file of the store at `dir` (the data bundles, not small objects).
fn largest_pack(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
}

/// A flipped byte in a pack: reads fail with `Corrupt` naming the file (never wrong
/// bytes), verify names the live file and the snapshot, quarantines the record, and
/// writing the same content again heals the store.
#[test]
fn corruption_is_detected_quarantined_and_healed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let d = s.mkdir(v.root, b"db", owner()).unwrap().ino;
    let f = s.create(d, b"dump.sql", file_mode()).unwrap().ino;
    let payload = data(1 << 20, 11);
    s.write(f, 0, &payload).unwrap();
    s.snapshot("vol", "nightly").unwrap();
    drop(s);
    // Damage the middle of the largest pack (the data bundle, not the small objects).
    let victim = largest_pack(dir.path());
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&victim, &bytes).unwrap();

    let s = open(dir.path());
    let err = s.read(f, 0, 1 << 20).unwrap_err();
    match &err {
        StoreError::Corrupt { what, .. } => assert_eq!(what, "/vol/db/dump.sql"),
        e => panic!("expected Corrupt, got {e}"),
    }
    let rep = s.verify().unwrap();
    assert!(!rep.is_clean());
    assert_eq!(rep.affected_files, vec!["vol:/db/dump.sql".to_string()]);
    assert_eq!(
        rep.affected_snapshots,
        vec!["vol@nightly:/db/dump.sql".to_string()]
    );
    assert!(
        std::fs::read_dir(dir.path().join("quarantine"))
            .unwrap()
            .count()
            >= 1
    );
    // Still an error, not wrong bytes, after the quarantine.
    assert!(matches!(
        s.read(f, 0, 4096),
        Err(StoreError::Corrupt { .. })
    ));
    // The same content arriving again (next night's backup) replaces the damaged copies.
    let g = s.create(v.root, b"again.sql", file_mode()).unwrap().ino;
    s.write(g, 0, &payload).unwrap();
    s.ingest_all(None).unwrap();
    assert_eq!(read_all(&s, f), payload);
    let root = s.snapshot_root("vol", "nightly").unwrap();
    let sf = s
        .snap_lookup(&s.snap_lookup(&root, b"db").unwrap(), b"dump.sql")
        .unwrap();
    assert_eq!(s.snap_read(&sf, 0, 2 << 20).unwrap().0, payload);
    assert!(s.verify().unwrap().is_clean());
}

/// A flipped byte in a bundle stored without compression decodes fine, so only the
/// chunk's hash can catch it: a long read (whose chunks are checked together) fails
/// with `Corrupt` naming the file, live and in the snapshot, never returning the wrong
/// bytes, while the chunks before the damage still read.
#[test]
fn a_damaged_chunk_in_a_long_read_is_caught_by_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let f = s.create(v.root, b"random.bin", file_mode()).unwrap().ino;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let payload: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    s.write(f, 0, &payload).unwrap();
    s.snapshot("vol", "nightly").unwrap();
    drop(s);
    let victim = largest_pack(dir.path());
    let mut bytes = std::fs::read(&victim).unwrap();
    // The payload is stored as it is: find a piece of its second half in the pack.
    let probe = &payload[700_000..700_064];
    let at = bytes
        .windows(64)
        .position(|w| w == probe)
        .expect("stored raw");
    bytes[at + 10] ^= 0x01;
    std::fs::write(&victim, &bytes).unwrap();

    let s = open(dir.path());
    match s.read(f, 0, 1 << 20) {
        Err(StoreError::Corrupt { what, .. }) => assert_eq!(what, "/vol/random.bin"),
        Ok(_) => panic!("read damaged bytes without an error"),
        Err(e) => panic!("expected Corrupt, got {e}"),
    }
    assert_eq!(s.read(f, 0, 4096).unwrap().0, &payload[..4096]);
    let root = s.snapshot_root("vol", "nightly").unwrap();
    let sf = s.snap_lookup(&root, b"random.bin").unwrap();
    assert!(matches!(
        s.snap_read(&sf, 0, 1 << 20),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(s.snap_read(&sf, 0, 4096).unwrap().0, &payload[..4096]);
}

/// Listing a directory of many entries in pages while deleting entries already listed
/// (what `rm -r` does) returns every surviving entry exactly once.
#[test]
fn readdir_paging_survives_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let d = s.mkdir(v.root, b"big", owner()).unwrap().ino;
    for i in 0..3000 {
        s.create(d, format!("file-{i:05}").as_bytes(), file_mode())
            .unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let mut cookie = 0;
    loop {
        let page = s.readdir(d, cookie, 128).unwrap();
        if page.is_empty() {
            break;
        }
        for e in &page {
            assert!(
                seen.insert(e.name.clone()),
                "duplicate {:?}",
                String::from_utf8_lossy(&e.name)
            );
            s.remove(d, &e.name).unwrap();
        }
        cookie = page.last().unwrap().cookie;
    }
    assert_eq!(seen.len(), 3000);
    assert!(s.readdir(d, 0, 10).unwrap().is_empty());
    s.rmdir(v.root, b"big").unwrap();
}

/// Rename and remove follow POSIX: over an existing file, across directories, a dir
/// over an empty dir; not a dir over a file, not over a non-empty dir, not below itself.
#[test]
fn rename_and_remove_rules() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let r = v.root;
    let a = s.mkdir(r, b"a", owner()).unwrap().ino;
    let b = s.mkdir(r, b"b", owner()).unwrap().ino;
    let f = s.create(a, b"f", file_mode()).unwrap().ino;
    s.write(f, 0, b"one").unwrap();
    let g = s.create(b, b"g", file_mode()).unwrap().ino;
    s.write(g, 0, b"two").unwrap();
    s.rename(a, b"f", b, b"g").unwrap();
    assert_eq!(s.lookup(b, b"g").unwrap().ino, f);
    assert_eq!(read_all(&s, f), b"one");
    assert!(matches!(s.getattr(g), Err(StoreError::NotFound(_))));
    assert!(matches!(
        s.rename(r, b"a", b, b"g"),
        Err(StoreError::NotDir(_))
    ));
    assert!(matches!(
        s.rename(b, b"g", r, b"a"),
        Err(StoreError::IsDir(_))
    ));
    assert!(
        matches!(s.rename(r, b"b", r, b"a"), Ok(())),
        "dir over empty dir"
    );
    let c = s.mkdir(b, b"c", owner()).unwrap().ino;
    assert!(
        matches!(s.rename(r, b"a", c, b"x"), Err(StoreError::Invalid(_))),
        "below itself"
    );
    s.mkdir(r, b"d", owner()).unwrap();
    assert!(matches!(
        s.rename(r, b"d", r, b"a"),
        Err(StoreError::NotEmpty(_))
    ));
    assert!(matches!(s.rmdir(r, b"a"), Err(StoreError::NotEmpty(_))));
    assert!(matches!(s.remove(r, b"a"), Err(StoreError::IsDir(_))));
    // `b` now lives at /a and holds the file g.
    assert_eq!(s.lookup(r, b"a").unwrap().ino, b);
    assert!(matches!(s.rmdir(b, b"g"), Err(StoreError::NotDir(_))));
    assert!(matches!(s.rmdir(b, b"nope"), Err(StoreError::NotFound(_))));
    assert!(matches!(s.lookup(f, b"x"), Err(StoreError::NotDir(_))));
    // Exclusive create: a retry with the same verifier succeeds, another fails.
    let x = s
        .create_exclusive(r, b"x", file_mode(), *b"verifier")
        .unwrap();
    assert_eq!(
        s.create_exclusive(r, b"x", file_mode(), *b"verifier")
            .unwrap()
            .ino,
        x.ino
    );
    assert!(matches!(
        s.create_exclusive(r, b"x", file_mode(), *b"other!!!"),
        Err(StoreError::Exists(_))
    ));
    // setattr: setuid bits, owner, times with nanoseconds.
    let t = Timespec {
        sec: 1_700_000_000,
        nsec: 123_456_789,
    };
    let at = s
        .setattr(
            x.ino,
            SetAttr {
                mode: Some(0o6755),
                uid: Some(0),
                gid: Some(42),
                mtime: Some(t),
                atime: Some(t),
                size: None,
            },
        )
        .unwrap();
    assert_eq!(
        (at.mode, at.uid, at.gid, at.mtime, at.atime),
        (0o6755, 0, 42, t, t)
    );
}

/// A snapshot costs what changed: after one file deep in a tree of 200 directories
/// changes, the next snapshot re-encodes only the directories on its path.
#[test]
fn snapshot_cost_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let mut deep = v.root;
    for depth in 0..4 {
        deep = s
            .mkdir(deep, format!("level{depth}").as_bytes(), owner())
            .unwrap()
            .ino;
    }
    for i in 0..200 {
        let d = s
            .mkdir(v.root, format!("d{i}").as_bytes(), owner())
            .unwrap()
            .ino;
        s.create(d, b"f", file_mode()).unwrap();
    }
    let f = s.create(deep, b"leaf", file_mode()).unwrap().ino;
    let first = s.snapshot("vol", "one").unwrap();
    assert_eq!(first.dirs_encoded, 1 + 4 + 200);
    let same = s.snapshot("vol", "two").unwrap();
    assert_eq!(same.dirs_encoded, 0, "nothing changed, nothing encoded");
    assert_eq!(same.root, first.root);
    s.write(f, 0, b"changed").unwrap();
    let third = s.snapshot("vol", "three").unwrap();
    assert_eq!(
        third.dirs_encoded, 5,
        "root and the four directories on the path"
    );
}

/// Volumes of one store share chunks: the same bytes written to a second volume store
/// nothing new.
#[test]
fn volumes_share_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let a = s.create_volume("a", owner()).unwrap();
    let b = s.create_volume("b", owner()).unwrap();
    let payload = data(2 << 20, 5);
    let fa = s.create(a.root, b"x", file_mode()).unwrap().ino;
    s.write(fa, 0, &payload).unwrap();
    s.ingest_all(None).unwrap();
    let fb = s.create(b.root, b"y", file_mode()).unwrap().ino;
    s.write(fb, 0, &payload).unwrap();
    let r = s.ingest_all(None).unwrap();
    assert_eq!(r.new_chunks, 0, "{r:?}");
    assert_eq!(read_all(&s, fb), payload);
    assert!(
        s.lookup(b.root, b"x").is_err(),
        "volumes keep separate namespaces"
    );
}

/// Ingest is invisible in the attributes: size, mtime and ctime read the same before and
/// after (a moved ctime would break clients' SETATTR guards and caches); an mtime set by
/// SETATTR after writing (what rsync does) survives the ingest.
#[test]
fn ingest_keeps_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let f = s.create(v.root, b"f", file_mode()).unwrap().ino;
    s.write(f, 0, &data(100_000, 1)).unwrap();
    let before = s.getattr(f).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    s.ingest_all(None).unwrap();
    let after = s.getattr(f).unwrap();
    assert_eq!(
        (before.size, before.mtime, before.ctime),
        (after.size, after.mtime, after.ctime)
    );
    let old = Timespec {
        sec: 1_500_000_000,
        nsec: 7,
    };
    s.write(f, 0, b"rsync").unwrap();
    s.setattr(
        f,
        SetAttr {
            mtime: Some(old),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.getattr(f).unwrap().mtime, old);
    s.ingest_all(None).unwrap();
    assert_eq!(s.getattr(f).unwrap().mtime, old);
}

/// The background ingest takes a file only once it has been quiet for the idle time,
/// and a write makes it wait again (on the caller's clock: no waiting in the test).
#[test]
fn idle_ingest_waits_for_quiet_files() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let f = s.create(v.root, b"f", file_mode()).unwrap().ino;
    let idle = Duration::from_secs(60);
    s.write(f, 0, &data(100_000, 1)).unwrap();
    let t0 = Instant::now();
    assert_eq!(s.ingest_idle_at(idle, t0).unwrap().files, 0);
    assert_eq!(
        s.ingest_idle_at(idle, t0 + Duration::from_secs(59))
            .unwrap()
            .files,
        0
    );
    s.write(f, 100_000, b"more").unwrap();
    let t1 = Instant::now();
    assert_eq!(
        s.ingest_idle_at(idle, t1 + Duration::from_secs(30))
            .unwrap()
            .files,
        0
    );
    assert_eq!(s.stats().unwrap().staged_files, 1);
    assert_eq!(
        s.ingest_idle_at(idle, t1 + Duration::from_secs(61))
            .unwrap()
            .files,
        1
    );
    assert_eq!(s.stats().unwrap().staged_files, 0);
    let mut want = data(100_000, 1);
    want.extend_from_slice(b"more");
    assert_eq!(read_all(&s, f), want);
}

/// READs of staged files take recycled 1 MiB buffers that still hold the bytes of the
/// last READ: every byte handed back must be the file's own (holes and the part of a
/// rewritten ingested file past its old end read as zeros), never an earlier file's.
#[test]
fn recycled_read_buffers_show_only_the_files_own_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("v", owner()).unwrap();
    let pieces_bytes = |ino, off, len| {
        let (p, n, _) = s.read_pieces(ino, off, len).unwrap();
        let b: Vec<u8> = p.iter().flat_map(|p| p.as_ref().to_vec()).collect();
        assert_eq!(b.len(), n);
        b
    };
    // An ingested file shortened, grown past its old end, and written in the middle.
    let based = s.create(v.root, b"based", file_mode()).unwrap().ino;
    s.write(based, 0, &vec![0x11; 600 << 10]).unwrap();
    s.ingest_all(None).unwrap();
    let trunc = |size| SetAttr {
        size: Some(size),
        ..Default::default()
    };
    s.setattr(based, trunc(200 << 10)).unwrap();
    s.setattr(based, trunc(900 << 10)).unwrap();
    s.write(based, 300 << 10, b"mid").unwrap();
    // Staged files: one full of 0xAA, one with a hole before its only bytes.
    let noise = s.create(v.root, b"noise", file_mode()).unwrap().ino;
    s.write(noise, 0, &vec![0xAA; 1 << 20]).unwrap();
    let sparse = s.create(v.root, b"sparse", file_mode()).unwrap().ino;
    s.write(sparse, 700 << 10, b"tail").unwrap();
    let mut want_based = vec![0x11; 200 << 10];
    want_based.resize(900 << 10, 0);
    want_based[300 << 10..(300 << 10) + 3].copy_from_slice(b"mid");
    for _ in 0..40 {
        assert_eq!(pieces_bytes(noise, 0, 1 << 20), vec![0xAA; 1 << 20]);
        let got = pieces_bytes(sparse, 0, 1 << 20);
        assert_eq!(got.len(), (700 << 10) + 4);
        assert!(
            got[..700 << 10].iter().all(|b| *b == 0),
            "hole reads as zeros"
        );
        assert_eq!(&got[700 << 10..], b"tail");
        assert_eq!(pieces_bytes(based, 0, 1 << 20), want_based);
    }
}

/// The shortcuts of the NFS metadata path answer as the general calls do: a SETATTR
/// that changes nothing is recognised from a reader (and only then), a LOOKUP tells a
/// missing name from a file that is no directory, a create returns the directory as
/// `getattr` sees it, and a write returns the file's attributes after it.
#[test]
fn metadata_shortcuts_agree_with_the_general_calls() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let (f, d) = s.create_in(v.root, b"f", file_mode()).unwrap();
    assert_eq!(d.mtime, s.getattr(v.root).unwrap().mtime);
    assert_eq!(d.ctime, s.getattr(v.root).unwrap().ctime);
    assert_eq!(f.size, 0);
    let only_size = |n| SetAttr {
        size: Some(n),
        ..Default::default()
    };
    let same = s.setattr_unchanged(f.ino, &only_size(0)).unwrap().unwrap();
    assert_eq!(same.ino, f.ino);
    assert_eq!(same.mtime, f.mtime);
    assert!(s.setattr_unchanged(f.ino, &only_size(5)).unwrap().is_none());
    let chmod = SetAttr {
        size: Some(0),
        mode: Some(0o600),
        ..Default::default()
    };
    assert!(s.setattr_unchanged(f.ino, &chmod).unwrap().is_none());
    assert!(s
        .setattr_unchanged(v.root, &only_size(0))
        .unwrap()
        .is_none());

    let a = s.write_attr(f.ino, 0, b"hello").unwrap();
    assert_eq!(a.size, 5);
    let g = s.getattr(f.ino).unwrap();
    assert_eq!(
        (a.size, a.mtime, a.ctime, a.mode),
        (g.size, g.mtime, g.ctime, g.mode)
    );
    let a = s.write_attr(f.ino, 5, b" world").unwrap();
    assert_eq!(a.size, 11);
    // Staged: the general path decides.
    assert!(s
        .setattr_unchanged(f.ino, &only_size(11))
        .unwrap()
        .is_none());

    assert!(matches!(
        s.lookup(v.root, b"missing"),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(s.lookup(f.ino, b"x"), Err(StoreError::NotDir(_))));
    assert_eq!(s.lookup(v.root, b"f").unwrap().ino, f.ino);
}

/// The in-place paths of the NFS export: a create that must not wait for the writer
/// makes the same file as `create_in` (and refuses a taken name the same way), and a
/// file whose COMMIT would flush a staging file on disk never counts as a quick sync.
#[test]
fn in_place_create_and_quick_sync() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let (f, d) = s
        .try_create_in(v.root, b"small", file_mode())
        .unwrap()
        .expect("nobody holds the writer");
    assert_eq!(s.lookup(v.root, b"small").unwrap().ino, f.ino);
    assert_eq!(d.mtime, s.getattr(v.root).unwrap().mtime);
    assert!(matches!(
        s.try_create_in(v.root, b"small", file_mode()),
        Err(StoreError::Exists(_))
    ));
    let big = s.create(v.root, b"big", file_mode()).unwrap().ino;
    s.write(big, 0, &data(256 << 10, 3)).unwrap();
    for k in 0..40u8 {
        s.write(f.ino, 0, &[k; 4096]).unwrap();
        s.sync(f.ino).unwrap();
    }
    assert!(!s.sync_is_quick(big), "a staging file on disk is flushed");
    // A small file in memory syncs with the WAL alone: quick when the WAL's fsyncs are
    // (as for a file not staged at all).
    assert_eq!(s.sync_is_quick(f.ino), s.sync_is_quick(v.root));
    s.sync(big).unwrap();
    assert_eq!(read_all(&s, f.ino), vec![39u8; 4096]);
}
