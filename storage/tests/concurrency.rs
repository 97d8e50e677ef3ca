//! Concurrent writers, syncs and ingest on one store.

mod common;
use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::*;

/// Writers keep rewriting a file while ingest runs over and over: no write is lost, and
/// a write that raced an ingest stays staged over the new content (the rebase path).
#[test]
fn writes_racing_ingest_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path()));
    let v = s.create_volume("vol", owner()).unwrap();
    let ino = s.create(v.root, b"f", file_mode()).unwrap().ino;
    let base = data(2 << 20, 3);
    s.write(ino, 0, &base).unwrap();
    // The writer stops once the ingester has run several times and at least one run was
    // raced (or after 20 s / 50,000 writes): a count of writes alone finishes before the
    // second ingest on a fast machine.
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let raced = Arc::new(AtomicU64::new(0));
    let ingester = {
        let (s, stop, runs, raced) = (s.clone(), stop.clone(), runs.clone(), raced.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) && runs.load(Ordering::Relaxed) < 500 {
                let rebased = s.ingest_all(None).unwrap().rebased;
                raced.fetch_add(rebased, Ordering::Relaxed);
                runs.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut model = base.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0u64;
    while Instant::now() < deadline && i < 50_000 {
        if i >= 500 && runs.load(Ordering::Relaxed) >= 5 && raced.load(Ordering::Relaxed) > 0 {
            break;
        }
        let off = (i * 7919 * 4099) % (model.len() as u64 - 5000);
        let patch = data(4096, i);
        s.write(ino, off, &patch).unwrap();
        model[off as usize..off as usize + 4096].copy_from_slice(&patch);
        if i.is_multiple_of(50) {
            assert_eq!(read_all(&s, ino), model, "after {i} writes");
        }
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    ingester.join().unwrap();
    let (ingests, rebased) = (runs.load(Ordering::Relaxed), raced.load(Ordering::Relaxed));
    assert!(ingests > 1, "ingest ran {ingests} times in {i} writes");
    assert!(
        rebased > 0,
        "no ingest was raced by a write in {ingests} ingests and {i} writes"
    );
    assert_eq!(read_all(&s, ino), model);
    s.ingest_all(None).unwrap();
    assert_eq!(read_all(&s, ino), model);
    drop(s);
    let s = open(dir.path());
    assert_eq!(read_all(&s, ino), model, "after reopen");
}

/// Many threads writing and syncing different files, and several syncing the same file,
/// all complete and read back; concurrent syncs share fsyncs (group commit) rather than
/// deadlocking or losing wake-ups.
#[test]
fn concurrent_sync_writers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path()));
    let v = s.create_volume("vol", owner()).unwrap();
    let shared = s.create(v.root, b"shared", file_mode()).unwrap().ino;
    let mut handles = Vec::new();
    for t in 0..8u64 {
        let s = s.clone();
        handles.push(std::thread::spawn(move || {
            let own = s
                .create(v.root, format!("f{t}").as_bytes(), file_mode())
                .unwrap()
                .ino;
            for i in 0..50u64 {
                let d = data(8192, t * 1000 + i);
                s.write(own, i * 8192, &d).unwrap();
                s.sync(own).unwrap();
                s.write(shared, (t * 50 + i) * 4096, &d[..4096]).unwrap();
                s.sync(shared).unwrap();
            }
            own
        }));
    }
    let owns: Vec<FileId> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    drop(s);
    let s = open(dir.path());
    for (t, own) in owns.into_iter().enumerate() {
        let got = read_all(&s, own);
        for i in 0..50u64 {
            assert_eq!(
                &got[(i * 8192) as usize..((i + 1) * 8192) as usize],
                &data(8192, t as u64 * 1000 + i)[..]
            );
        }
    }
    let got = read_all(&s, shared);
    assert_eq!(got.len(), 400 * 4096);
    for t in 0..8u64 {
        for i in 0..50u64 {
            let at = ((t * 50 + i) * 4096) as usize;
            assert_eq!(&got[at..at + 4096], &data(8192, t * 1000 + i)[..4096]);
        }
    }
}

/// GC running while files are ingested never removes a chunk that ends up referenced.
#[test]
fn gc_during_ingest_keeps_references() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path()));
    let v = s.create_volume("vol", owner()).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 500 {
                s.gc(&GcOptions {
                    repack_below: 0.9,
                    ..Default::default()
                })
                .unwrap();
                n += 1;
            }
        })
    };
    let mut files = Vec::new();
    for round in 0..30u64 {
        // The same content keeps appearing and disappearing: the worst case for a GC
        // that races dedup against a chunk it is about to delete.
        let name = format!("r{round}");
        let f = s.create(v.root, name.as_bytes(), file_mode()).unwrap().ino;
        let d = data(300_000, round % 3);
        s.write(f, 0, &d).unwrap();
        s.ingest_all(None).unwrap();
        if round % 2 == 0 {
            s.remove(v.root, name.as_bytes()).unwrap();
        } else {
            files.push((f, d));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    gc.join().unwrap();
    s.gc(&GcOptions::default()).unwrap();
    for (f, d) in &files {
        assert_eq!(&read_all(&s, *f), d);
    }
    assert!(s.verify().unwrap().is_clean());
}
