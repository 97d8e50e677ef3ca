//! A snapshot taken in two parts: `snapshot_capture` at the freeze seals staged files
//! without reading them; `snapshot_finish` stores them after the thaw while the live
//! files go on changing. The snapshot must hold exactly the state at the capture.

mod common;
use common::*;
use storage::*;

fn read_snap(s: &Store, vol: &str, snap: &str, name: &[u8]) -> Vec<u8> {
    let root = s.snapshot_root(vol, snap).unwrap();
    let e = s.snap_lookup(&root, name).unwrap();
    let (b, eof) = s.snap_read(&e, 0, (e.attr.size as u32).max(1)).unwrap();
    assert!(eof);
    b
}

fn set_size(s: &Store, f: FileId, n: u64) {
    s.setattr(
        f,
        SetAttr {
            size: Some(n),
            ..Default::default()
        },
    )
    .unwrap();
}

#[test]
fn the_snapshot_is_the_capture_whatever_follows() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("v", owner()).unwrap();
    let sub = s.mkdir(v.root, b"sub", owner()).unwrap().ino;
    let mk = |d, n: &[u8]| s.create(d, n, file_mode()).unwrap().ino;
    let (a, b, c, d) = (
        mk(v.root, b"a"),
        mk(v.root, b"b"),
        mk(sub, b"c"),
        mk(v.root, b"d"),
    );
    // b and c have ingested bases; a and d are staged only.
    s.write(b, 0, &data(3 << 20, 2)).unwrap();
    s.write(c, 0, &data(2 << 20, 3)).unwrap();
    s.ingest_all(None).unwrap();
    let a0 = data(5 << 20, 1);
    s.write(a, 0, &a0).unwrap();
    let mut b0 = data(3 << 20, 2);
    s.write(b, 1 << 20, b"OVERLAY").unwrap();
    b0[1 << 20..(1 << 20) + 7].copy_from_slice(b"OVERLAY");
    let mut c0 = data(2 << 20, 3);
    let tail = data(700_000, 4);
    s.write(c, 2 << 20, &tail).unwrap();
    c0.extend_from_slice(&tail);
    s.write(d, 0, b"doomed").unwrap();
    s.link(a, sub, b"a-link").unwrap();

    let cap = s
        .snapshot_capture("v", "s1", &SnapshotMeta::default())
        .unwrap();
    assert_eq!(cap.sealed_files(), 4);
    // After the thaw: overwrite inside the sealed range, append, truncate and rewrite,
    // remove, create; and the background ingester runs.
    s.write(a, 100, b"AFTER").unwrap();
    s.write(a, 5 << 20, b"appended").unwrap();
    set_size(&s, b, 0);
    s.write(b, 0, b"new b").unwrap();
    s.write(c, 10, &data(1 << 20, 9)).unwrap();
    set_size(&s, c, 1000);
    s.remove(v.root, b"d").unwrap();
    let e = mk(v.root, b"e");
    s.write(e, 0, b"not in s1").unwrap();
    s.ingest_all(None).unwrap();
    let info = s.snapshot_finish(cap).unwrap();
    assert_eq!(info.name, "s1");

    assert_eq!(read_snap(&s, "v", "s1", b"a"), a0);
    assert_eq!(read_snap(&s, "v", "s1", b"b"), b0);
    assert_eq!(read_snap(&s, "v", "s1", b"d"), b"doomed");
    let root = s.snapshot_root("v", "s1").unwrap();
    let subd = s.snap_lookup(&root, b"sub").unwrap();
    let ce = s.snap_lookup(&subd, b"c").unwrap();
    assert_eq!(s.snap_read(&ce, 0, 4 << 20).unwrap().0, c0);
    let al = s.snap_lookup(&subd, b"a-link").unwrap();
    assert_eq!((al.attr.ino, al.attr.nlink, al.attr.size), (a, 2, 5 << 20));
    assert!(
        s.snap_lookup(&root, b"e").is_err(),
        "created after the capture"
    );
    assert_eq!(
        info.logical_bytes,
        (5 << 20) + (3 << 20) + (2 << 20) + 700_000 + 6
    );
    // The live files have everything written since.
    let mut a1 = a0.clone();
    a1[100..105].copy_from_slice(b"AFTER");
    a1.extend_from_slice(b"appended");
    assert_eq!(read_all(&s, a), a1);
    assert_eq!(read_all(&s, b), b"new b");
    assert_eq!(read_all(&s, c).len(), 1000);
    // Seal files are gone; the store is clean, also after a reopen.
    s.ingest_all(None).unwrap();
    let staging: Vec<_> = std::fs::read_dir(dir.path().join("staging"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!staging.iter().any(|n| n.ends_with(".seal")), "{staging:?}");
    assert!(s.verify().unwrap().is_clean());
    drop(s);
    let s = open(dir.path());
    assert_eq!(read_snap(&s, "v", "s1", b"a"), a0);
    assert_eq!(read_all(&s, a), a1);
    // A second snapshot sees the new state.
    s.snapshot("v", "s2").unwrap();
    assert_eq!(read_snap(&s, "v", "s2", b"a"), a1);
    assert_eq!(read_snap(&s, "v", "s2", b"e"), b"not in s1");
}

#[test]
fn a_dropped_capture_unseals_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("v", owner()).unwrap();
    let f = s.create(v.root, b"f", file_mode()).unwrap().ino;
    s.write(f, 0, &data(1 << 20, 5)).unwrap();
    let cap = s
        .snapshot_capture("v", "x", &SnapshotMeta::default())
        .unwrap();
    s.write(f, 0, b"changed").unwrap();
    // Sealed files wait for their snapshot: the ingester leaves them staged.
    assert_eq!(s.ingest_all(None).unwrap().files, 0);
    drop(cap);
    let mut want = data(1 << 20, 5);
    want[..7].copy_from_slice(b"changed");
    assert_eq!(read_all(&s, f), want);
    assert_eq!(s.ingest_all(None).unwrap().files, 1);
    assert_eq!(read_all(&s, f), want);
    assert!(s.snapshots(Some("v")).unwrap().is_empty());
    // Taken name: refused at the capture, before anything is sealed.
    s.snapshot("v", "x").unwrap();
    s.write(f, 0, b"again").unwrap();
    assert!(matches!(
        s.snapshot_capture("v", "x", &SnapshotMeta::default()),
        Err(StoreError::Exists(_))
    ));
    assert_eq!(s.ingest_all(None).unwrap().files, 1, "not left sealed");
}

/// GC between the capture and the finish: what the capture refers to (directory
/// objects encoded at the freeze, contents of unchanged files, sealed files' bases)
/// stays even when the live volume moved on, and the snapshot reads whole.
#[test]
fn gc_between_capture_and_finish_keeps_what_the_capture_needs() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("v", owner()).unwrap();
    let sub = s.mkdir(v.root, b"sub", owner()).unwrap().ino;
    let old = s.create(sub, b"old", file_mode()).unwrap().ino;
    let top = s.create(v.root, b"top", file_mode()).unwrap().ino;
    let grow = s.create(v.root, b"grow", file_mode()).unwrap().ino;
    let (d_old, d_top, d_grow) = (data(2 << 20, 11), data(1 << 20, 12), data(3 << 20, 13));
    s.write(old, 0, &d_old).unwrap();
    s.write(top, 0, &d_top).unwrap();
    s.write(grow, 0, &d_grow).unwrap();
    s.ingest_all(None).unwrap();
    s.snapshot("v", "before").unwrap();
    // `grow` gets a staged overlay on its base; the rest is clean.
    s.write(grow, 1 << 20, b"PATCH").unwrap();
    let mut g_want = d_grow.clone();
    g_want[1 << 20..(1 << 20) + 5].copy_from_slice(b"PATCH");
    let cap = s
        .snapshot_capture("v", "s", &SnapshotMeta::default())
        .unwrap();
    // After the thaw: every file is rewritten and ingested, the older snapshot goes.
    for (f, seed) in [(old, 21), (top, 22)] {
        s.setattr(
            f,
            SetAttr {
                size: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
        s.write(f, 0, &data(1 << 20, seed)).unwrap();
    }
    s.delete_snapshot("v", "before").unwrap();
    s.ingest_all(None).unwrap();
    s.gc(&GcOptions {
        repack_below: 0.99,
        ..Default::default()
    })
    .unwrap();
    s.snapshot_finish(cap).unwrap();
    assert_eq!(read_snap(&s, "v", "s", b"top"), d_top);
    assert_eq!(read_snap(&s, "v", "s", b"grow"), g_want);
    let root = s.snapshot_root("v", "s").unwrap();
    let subd = s.snap_lookup(&root, b"sub").unwrap();
    let o = s.snap_lookup(&subd, b"old").unwrap();
    assert_eq!(s.snap_read(&o, 0, 4 << 20).unwrap().0, d_old);
    // After the finish the snapshot itself holds them.
    s.gc(&GcOptions {
        repack_below: 0.99,
        ..Default::default()
    })
    .unwrap();
    assert!(s.verify().unwrap().is_clean());
    assert_eq!(read_snap(&s, "v", "s", b"top"), d_top);
}

/// A GC hold taken before the freeze: a GC started meanwhile waits for it, the capture
/// under it takes no lock GC holds (no wait, no deadlock), and GC runs once the hold
/// is dropped.
#[test]
fn a_gc_hold_keeps_the_sweep_out_of_the_capture() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(open(dir.path()));
    let v = s.create_volume("v", owner()).unwrap();
    let f = s.create(v.root, b"f", file_mode()).unwrap().ino;
    s.write(f, 0, &data(1 << 20, 7)).unwrap();
    let held = s.hold_gc();
    let (tx, rx) = std::sync::mpsc::channel();
    let gc = {
        let s = s.clone();
        std::thread::spawn(move || {
            let r = s.gc(&GcOptions::default());
            tx.send(()).unwrap();
            r
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(rx.try_recv().is_err(), "GC ran while the hold lived");
    let cap = s
        .snapshot_capture_held(&held, "v", "s", &SnapshotMeta::default())
        .unwrap();
    drop(held);
    gc.join().unwrap().unwrap();
    let info = s.snapshot_finish(cap).unwrap();
    assert_eq!(info.name, "s");
    assert_eq!(read_snap(&s, "v", "s", b"f"), data(1 << 20, 7));
}

/// Small files staged in memory (no staging file on disk) sealed by a capture: after
/// the thaw one is overwritten, one truncated, one grows past what memory holds and
/// moves to a staging file on disk; the snapshot holds each as the capture saw it,
/// the live files hold what came after, also after a reopen.
#[test]
fn small_files_in_memory_are_sealed_like_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("v", owner()).unwrap();
    let mk = |n: &[u8], body: &[u8]| {
        let f = s.create(v.root, n, file_mode()).unwrap().ino;
        s.write(f, 0, body).unwrap();
        f
    };
    let (b1, b2, b3) = (data(3000, 1), data(20_000, 2), data(40_000, 3));
    let (f1, f2, f3) = (mk(b"f1", &b1), mk(b"f2", &b2), mk(b"f3", &b3));
    for f in [f1, f2, f3] {
        assert!(!dir.path().join("staging").join(f.0.to_string()).exists());
    }
    let cap = s
        .snapshot_capture("v", "s1", &SnapshotMeta::default())
        .unwrap();
    assert_eq!(cap.sealed_files(), 3);
    s.write(f1, 10, b"AFTER").unwrap();
    set_size(&s, f2, 100);
    let more = data(100_000, 4);
    s.write(f3, 40_000, &more).unwrap();
    assert!(dir.path().join("staging").join(f3.0.to_string()).exists());
    s.snapshot_finish(cap).unwrap();
    assert_eq!(read_snap(&s, "v", "s1", b"f1"), b1);
    assert_eq!(read_snap(&s, "v", "s1", b"f2"), b2);
    assert_eq!(read_snap(&s, "v", "s1", b"f3"), b3);
    let mut l1 = b1.clone();
    l1[10..15].copy_from_slice(b"AFTER");
    let l2 = b2[..100].to_vec();
    let mut l3 = b3.clone();
    l3.extend_from_slice(&more);
    let live = |s: &Store| {
        assert_eq!(read_all(s, f1), l1);
        assert_eq!(read_all(s, f2), l2);
        assert_eq!(read_all(s, f3), l3);
    };
    live(&s);
    assert!(s.verify().unwrap().is_clean());
    drop(s);
    let s = open(dir.path());
    live(&s);
    assert_eq!(read_snap(&s, "v", "s1", b"f2"), b2);
    s.ingest_all(None).unwrap();
    live(&s);
    assert!(s.verify().unwrap().is_clean());
}
