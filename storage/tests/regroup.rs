//! GC's regrouping: bundles that mix the newest generation's chunks with others are
//! rewritten so that each age has bundles of its own, within a per-run budget, and
//! every generation still reads back as it was.

mod common;
use common::*;
use storage::*;

const SIZE: usize = 4 << 20;

/// `base` with 64 bytes changed every 32 KiB (where, by `seed`): a quarter of its
/// chunks or so, spread through the file, as a night of updates leaves a dump.
fn night(base: &[u8], seed: u8) -> Vec<u8> {
    let mut d = base.to_vec();
    for at in (seed as usize * 997..d.len()).step_by(32 << 10) {
        d[at..at + 64].fill(seed);
    }
    d
}

fn write_file(s: &Store, dir: FileId, name: &[u8], data: &[u8]) {
    let f = s.create(dir, name, file_mode()).unwrap().ino;
    for (k, part) in data.chunks(1 << 20).enumerate() {
        s.write(f, (k << 20) as u64, part).unwrap();
    }
}

fn snap_file(s: &Store, snap: &str, name: &[u8]) -> Vec<u8> {
    let root = s.snapshot_root("vol", snap).unwrap();
    let f = s.snap_lookup(&root, name).unwrap();
    let mut out = Vec::new();
    while out.len() < f.attr.size as usize {
        let (b, _) = s.snap_read(&f, out.len() as u64, 1 << 20).unwrap();
        assert!(!b.is_empty());
        out.extend_from_slice(&b);
    }
    out
}

/// A night's dump as a new file beside the older ones, a snapshot, and a reopen (so
/// that the pack it went to is sealed and GC may rewrite it).
fn add_night(dir: &std::path::Path, name: &str, data: &[u8]) -> Store {
    let s = open(dir);
    let root = s.volume("vol").unwrap().root;
    write_file(&s, root, name.as_bytes(), data);
    s.ingest_all(None).unwrap();
    s.snapshot("vol", name).unwrap();
    drop(s);
    open(dir)
}

/// A volume with two nights (files `n1` and `n2`, snapshots of the same names): the
/// first night's data from `seed`, the second night's changed from it by `seed + 1`.
fn two_nights(dir: &std::path::Path, seed: u8) -> (Vec<u8>, Vec<u8>, Store) {
    open(dir).create_volume("vol", owner()).unwrap();
    let n1 = data(SIZE, seed.into());
    let n2 = night(&n1, seed + 1);
    add_night(dir, "n1", &n1);
    let s = add_night(dir, "n2", &n2);
    (n1, n2, s)
}

#[test]
fn gc_gives_each_generation_bundles_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2, s) = two_nights(dir.path(), 1);
    let n3 = night(&n2, 3);

    // Night 2 reads night 1's bundles only in part: they are mixed, and so is the pack.
    let plan = s.gc_plan(&GcOptions::default()).unwrap();
    assert!(plan.mixed_bytes > 0, "{plan:?}");
    assert!(
        !plan.regroup.is_empty() && plan.repack.is_empty(),
        "{plan:?}"
    );
    // No budget, no rewrite.
    let none = GcOptions {
        regroup_max_bytes: 0,
        ..Default::default()
    };
    assert!(s.gc_plan(&none).unwrap().regroup.is_empty());
    assert_eq!(s.gc(&none).unwrap().repacked_packs, 0);

    let before = s.stats().unwrap();
    let rep = s.gc(&GcOptions::default()).unwrap();
    assert_eq!(rep.regrouped_packs, plan.regroup.len() as u64, "{rep:?}");
    assert_eq!(rep.deleted_chunks, 0);
    let after = s.gc_plan(&GcOptions::default()).unwrap();
    assert_eq!(after.mixed_bytes, 0, "{after:?}");
    assert!(after.regroup.is_empty(), "{after:?}");
    // Nothing lost, nothing stored twice.
    assert_eq!(s.stats().unwrap().chunks, before.chunks);
    assert_eq!(snap_file(&s, "n1", b"n1"), n1);
    assert_eq!(snap_file(&s, "n2", b"n1"), n1);
    assert_eq!(snap_file(&s, "n2", b"n2"), n2);
    assert!(s.verify().unwrap().is_clean());
    // A second run finds nothing to do.
    assert_eq!(s.gc(&GcOptions::default()).unwrap().repacked_packs, 0);
    drop(s);

    // The next night mixes night 2's bundles in turn; GC regroups them again.
    let s = add_night(dir.path(), "n3", &n3);
    assert!(s.gc_plan(&GcOptions::default()).unwrap().mixed_bytes > 0);
    assert!(s.gc(&GcOptions::default()).unwrap().regrouped_packs > 0);
    assert_eq!(s.gc_plan(&GcOptions::default()).unwrap().mixed_bytes, 0);
    for (snap, name, want) in [("n1", "n1", &n1), ("n3", "n2", &n2), ("n3", "n3", &n3)] {
        assert_eq!(&snap_file(&s, snap, name.as_bytes()), want, "{snap}/{name}");
    }
    assert!(s.verify().unwrap().is_clean());
}

/// Reads of every generation go on while GC regroups the packs under them, and each
/// returns the bytes the snapshot holds.
#[test]
fn reads_during_a_regroup_return_what_the_snapshot_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2, s) = two_nights(dir.path(), 5);
    let s = std::sync::Arc::new(s);
    assert!(!s.gc_plan(&GcOptions::default()).unwrap().regroup.is_empty());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = [("n1", "n1", n1.clone()), ("n2", "n2", n2.clone())]
        .into_iter()
        .map(|(snap, name, want)| {
            let (s, done) = (s.clone(), done.clone());
            std::thread::spawn(move || {
                let t0 = std::time::Instant::now();
                let mut rounds = 0;
                // At least two whole reads, and on until GC is done (bounded).
                while rounds < 2
                    || (!done.load(std::sync::atomic::Ordering::Relaxed)
                        && rounds < 200
                        && t0.elapsed() < std::time::Duration::from_secs(30))
                {
                    assert!(
                        snap_file(&s, snap, name.as_bytes()) == want,
                        "{snap}/{name}"
                    );
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    let rep = s.gc(&GcOptions::default()).unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() >= 2);
    }
    assert!(rep.regrouped_packs > 0, "{rep:?}");
    assert_eq!(s.gc_plan(&GcOptions::default()).unwrap().mixed_bytes, 0);
    assert!(s.verify().unwrap().is_clean());
}
