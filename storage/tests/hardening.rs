//! Regressions of the hardening review: sparse files that stopped every ingest and
//! snapshot, sizes past what the store holds, the landing zone in verify, and a GC
//! dry run that did not count orphan packs.

mod common;
use common::*;
use storage::*;

/// A 4-byte write at 100 GiB and a file set to 1 TiB by size alone are ingested at once
/// (their holes cost neither space nor reading), the other staged files with them, a
/// snapshot can be taken, and every byte reads back.
#[test]
fn sparse_files_ingest_and_snapshot_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let far = s.create(v.root, b"far", file_mode()).unwrap().ino;
    s.write(far, 100 << 30, b"tail").unwrap();
    let big = s.create(v.root, b"big", file_mode()).unwrap().ino;
    s.setattr(
        big,
        SetAttr {
            size: Some(1 << 40),
            ..Default::default()
        },
    )
    .unwrap();
    let plain = s.create(v.root, b"plain", file_mode()).unwrap().ino;
    let d = data(300_000, 1);
    s.write(plain, 0, &d).unwrap();
    // Data with a 64 MiB hole in the middle.
    let mixed = s.create(v.root, b"mixed", file_mode()).unwrap().ino;
    s.write(mixed, 0, &d).unwrap();
    s.write(mixed, 64 << 20, &d).unwrap();

    let t0 = std::time::Instant::now();
    let r = s.ingest_all(None).unwrap();
    // `big` was never written: its size alone describes it, nothing is staged.
    assert_eq!(r.files, 3, "{r:?}");
    assert!(
        r.new_bytes < 2 << 20,
        "holes are not stored: {} new bytes",
        r.new_bytes
    );
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(60),
        "holes are not read"
    );
    let snap = s.snapshot("vol", "one").unwrap();
    assert_eq!(
        snap.logical_bytes,
        (100 << 30) + 4 + (1 << 40) + 300_000 + (64 << 20) + 300_000
    );
    assert_eq!(s.read(far, (100 << 30) - 2, 6).unwrap().0, b"\0\0tail");
    assert_eq!(s.read(far, 50 << 30, 8).unwrap().0, vec![0u8; 8]);
    let (end, eof) = s.read(big, (1 << 40) - 3, 10).unwrap();
    assert_eq!((end, eof), (vec![0u8; 3], true));
    assert_eq!(read_all(&s, plain), d);
    assert_eq!(s.read(mixed, 0, 300_000).unwrap().0, d);
    assert_eq!(s.read(mixed, 32 << 20, 4096).unwrap().0, vec![0u8; 4096]);
    assert_eq!(s.read(mixed, 64 << 20, 300_000).unwrap().0, d);
    // A write into the hole of an ingested sparse file stays beside the holes.
    s.write(far, 1 << 30, b"middle").unwrap();
    s.ingest_all(None).unwrap();
    assert_eq!(s.read(far, 1 << 30, 6).unwrap().0, b"middle");
    assert_eq!(s.read(far, 100 << 30, 4).unwrap().0, b"tail");
    assert!(s.verify().unwrap().is_clean());
    s.gc(&GcOptions::default()).unwrap();
    assert!(s.verify().unwrap().is_clean());
    let root = s.snapshot_root("vol", "one").unwrap();
    let e = s.snap_lookup(&root, b"far").unwrap();
    assert_eq!(s.snap_read(&e, 100 << 30, 4).unwrap().0, b"tail");
}

/// Sizes past the largest file the staging filesystem holds are refused up front
/// (FBIG), never acknowledged and lost.
#[test]
fn sizes_past_the_maximum_are_too_big() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let f = s.create(v.root, b"f", file_mode()).unwrap().ino;
    s.write(f, 0, b"staged").unwrap();
    let max = s.max_file_size();
    assert!(max >= 1 << 40, "max file size {max}");
    let e = s
        .setattr(
            f,
            SetAttr {
                size: Some(u64::MAX),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(e, StoreError::TooBig(_)), "{e}");
    let e = s.write(f, max, b"x").unwrap_err();
    assert!(matches!(e, StoreError::TooBig(_)), "{e}");
    let e = s.write(f, u64::MAX - 1, b"xy").unwrap_err();
    assert!(matches!(e, StoreError::TooBig(_)), "{e}");
    assert_eq!(s.getattr(f).unwrap().size, 6, "nothing was acknowledged");
    drop(s);
    let s = open(dir.path());
    assert_eq!(read_all(&s, f), b"staged");
}

/// Verify looks at the landing zone: staged files and bytes are reported, and a
/// staging file that went missing makes verify fail naming the file.
#[test]
fn verify_checks_the_landing_zone() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    // Past the size of files staged in memory: a staging file on disk.
    let f = s.create(v.root, b"staged", file_mode()).unwrap().ino;
    s.write(f, 0, &data(100_000, 3)).unwrap();
    // A small file, staged in memory: its copy in the database is checked.
    let small = s.create(v.root, b"small", file_mode()).unwrap().ino;
    s.write(small, 0, &data(10_000, 4)).unwrap();
    let r = s.verify().unwrap();
    assert!(r.is_clean(), "{:?}", r.staged_problems);
    assert_eq!((r.staged_files, r.staged_bytes), (2, 110_000));
    assert!(!dir
        .path()
        .join("staging")
        .join(small.0.to_string())
        .exists());
    std::fs::remove_file(dir.path().join("staging").join(f.0.to_string())).unwrap();
    let r = s.verify().unwrap();
    assert!(!r.is_clean());
    assert!(
        r.staged_problems.iter().any(|p| p.contains("/vol/staged")),
        "{:?}",
        r.staged_problems
    );
}

/// A pack file nothing is indexed in (left by a crash during ingest) is counted by
/// the dry run exactly as the run then reclaims it.
#[test]
fn gc_dry_run_counts_orphan_packs() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let f = s.create(v.root, b"f", file_mode()).unwrap().ino;
    s.write(f, 0, &data(2_000_000, 4)).unwrap();
    s.ingest_all(None).unwrap();
    drop(s);
    // An orphan: a copy of the pack under an id nothing names.
    let packs = dir.path().join("packs");
    let first = std::fs::read_dir(&packs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let orphan = packs.join(format!("{:016x}.pack", 0xfff0u64));
    std::fs::copy(&first, &orphan).unwrap();
    let len = std::fs::metadata(&orphan).unwrap().len();
    let s = open(dir.path());
    let dry = s
        .gc(&GcOptions {
            dry_run: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(dry.plan.remove_packs.len(), 1);
    assert_eq!(dry.plan.reclaim_bytes(), len);
    assert!(orphan.exists(), "a dry run removes nothing");
    let run = s.gc(&GcOptions::default()).unwrap();
    assert_eq!(run.reclaimed_bytes, dry.plan.reclaim_bytes());
    assert!(!orphan.exists());
    assert_eq!(read_all(&s, f), data(2_000_000, 4));
}

/// A damaged id in the database stops GC instead of being skipped: a skipped snapshot
/// root would have everything only it references swept.
#[test]
fn gc_stops_at_a_damaged_root_row() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let f = s
        .create(v.root, b"only-in-snapshot", file_mode())
        .unwrap()
        .ino;
    let d = data(200_000, 9);
    s.write(f, 0, &d).unwrap();
    s.snapshot("vol", "keep").unwrap();
    s.remove(v.root, b"only-in-snapshot").unwrap();
    drop(s);
    let db = rusqlite::Connection::open(dir.path().join("kura.db")).unwrap();
    let root: Vec<u8> = db
        .query_row("SELECT root FROM snapshots", [], |r| r.get(0))
        .unwrap();
    db.execute("UPDATE snapshots SET root = x'0102'", [])
        .unwrap();
    drop(db);
    let s = open(dir.path());
    let e = s.gc(&GcOptions::default()).unwrap_err();
    assert!(e.to_string().contains("snapshots.root"), "{e}");
    drop(s);
    let db = rusqlite::Connection::open(dir.path().join("kura.db")).unwrap();
    db.execute("UPDATE snapshots SET root = ?1", [&root])
        .unwrap();
    drop(db);
    let s = open(dir.path());
    let e = s
        .snap_lookup(
            &s.snapshot_root("vol", "keep").unwrap(),
            b"only-in-snapshot",
        )
        .unwrap();
    assert_eq!(
        s.snap_read(&e, 0, 200_000).unwrap().0,
        d,
        "nothing was swept"
    );
}

/// Damage is reported per record: how many chunks a damaged bundle takes with it, and
/// whether a copy could be kept (a flipped byte: yes; a truncated pack: no, and why).
#[test]
fn verify_says_what_each_damaged_record_loses() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let f = s.create(v.root, b"f", file_mode()).unwrap().ino;
    s.write(f, 0, &data(3_000_000, 5)).unwrap();
    s.ingest_all(None).unwrap();
    drop(s);
    let pack = std::fs::read_dir(dir.path().join("packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let len = std::fs::metadata(&pack).unwrap().len();
    // A flipped byte inside the first bundle: its chunks are lost, a copy is kept.
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&pack)
            .unwrap();
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, 200).unwrap();
        file.write_all_at(&[b[0] ^ 0x40], 200).unwrap();
    }
    let s = open(dir.path());
    let r = s.verify().unwrap();
    assert!(!r.is_clean());
    let rec = &r.records[0];
    assert!(
        rec.chunks > 10,
        "a 1 MiB bundle holds many chunks: {}",
        rec.chunks
    );
    assert_eq!(
        rec.chunks as usize,
        r.damaged.iter().filter(|d| d.offset == rec.offset).count()
    );
    assert!(
        rec.quarantine.as_ref().is_ok_and(|p| p.exists()),
        "{:?}",
        rec.quarantine
    );
    assert!(
        r.affected_files.iter().any(|f| f == "vol:/f"),
        "{:?}",
        r.affected_files
    );
    drop(s);
    // The pack cut short: the records past the cut cannot even be read.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let s = open(dir.path());
    let r = s.verify().unwrap();
    let lost: Vec<_> = r
        .records
        .iter()
        .filter(|rec| {
            rec.quarantine
                .as_ref()
                .is_err_and(|why| why.contains("no copy kept"))
        })
        .collect();
    assert!(!lost.is_empty(), "{:?}", r.records);
    assert!(lost.iter().all(|rec| rec.chunks >= 1));
}
