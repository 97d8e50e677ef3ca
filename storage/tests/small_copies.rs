//! Small staged files made durable by a copy in the database (`staged_copies`) instead
//! of fsyncs of their staging files: when the copy is made and when it goes. Which of
//! copy and staging file a restart believes after SIGKILL and after a power loss is
//! tested with the real daemon (`tests/nfs_crash.rs`).

mod common;
use common::*;
use std::path::Path;
use storage::{FileId, Store};

fn copies(dir: &Path) -> Vec<u64> {
    let c = rusqlite::Connection::open(dir.join("kura.db")).unwrap();
    let mut st = c
        .prepare("SELECT ino FROM staged_copies ORDER BY ino")
        .unwrap();
    let rows = st.query_map([], |r| r.get::<_, i64>(0)).unwrap();
    rows.map(|r| r.unwrap() as u64).collect()
}

fn new_file(s: &Store, name: &[u8], bytes: &[u8]) -> FileId {
    let root = s.volume("vol").unwrap().root;
    let ino = s.create(root, name, file_mode()).unwrap().ino;
    s.write(ino, 0, bytes).unwrap();
    ino
}

#[test]
fn small_file_copies_come_and_go() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = open(dir);
    s.create_volume("vol", owner()).unwrap();
    s.begin_service("boot-a").unwrap();
    let root = s.volume("vol").unwrap().root;

    // A small file's sync makes a copy; once it grows past the limit, its sync fsyncs
    // the staging file and the copy goes.
    let grows = new_file(&s, b"grows", &data(1000, 1));
    s.sync(grows).unwrap();
    assert_eq!(copies(dir), vec![grows.0]);
    s.write(grows, 1000, &data(100 << 10, 2)).unwrap();
    s.sync(grows).unwrap();
    assert!(copies(dir).is_empty());

    // Removal takes the copy with the file.
    let removed = new_file(&s, b"removed", &data(2000, 3));
    s.sync(removed).unwrap();
    assert_eq!(copies(dir), vec![removed.0]);
    s.remove(root, b"removed").unwrap();
    assert!(copies(dir).is_empty());

    // Ingest takes it in the commit that stores the content.
    let ingested = new_file(&s, b"ingested", &data(3000, 4));
    s.sync(ingested).unwrap();
    assert_eq!(copies(dir), vec![ingested.0]);
    s.ingest_all(None).unwrap();
    assert!(copies(dir).is_empty());
    assert_eq!(read_all(&s, ingested), data(3000, 4));

    // A small file staged in memory has its copy from its first write on, and keeps
    // it through a clean close (it has no staging file on disk: the copy is the file).
    let v1 = data(5000, 5);
    let file = new_file(&s, b"file", &v1);
    assert_eq!(copies(dir), vec![file.0]);
    assert!(!dir.join("staging").join(file.0.to_string()).exists());
    s.sync(file).unwrap();
    drop(s);
    assert_eq!(copies(dir), vec![file.0]);
    let s = open(dir);
    assert_eq!(read_all(&s, file), v1);
    // The restart made it a staging file on disk; a clean close makes that whole by
    // itself and drops the copy.
    assert!(dir.join("staging").join(file.0.to_string()).exists());
    drop(s);
    assert!(copies(dir).is_empty());
    let s = open(dir);
    assert_eq!(read_all(&s, file), v1);
    assert_eq!(read_all(&s, ingested), data(3000, 4));
    assert_eq!(read_all(&s, grows)[1000..], data(100 << 10, 2)[..]);
}

/// Many small files are ingested together: their new chunks share bundle records (not a
/// record each), duplicates are stored once, and every file reads back the same.
#[test]
fn small_files_ingest_in_shared_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = open(dir);
    s.create_volume("vol", owner()).unwrap();
    let mut files = Vec::new();
    for k in 0..600u64 {
        // Every fourth file repeats an earlier one; sizes from empty to 40 KiB.
        let body = data(
            (k as usize * 677) % (40 << 10),
            if k % 4 == 0 { k / 4 } else { k + 1000 },
        );
        let ino = new_file(&s, format!("f{k}").as_bytes(), &body);
        files.push((ino, body));
    }
    s.sync(files[1].0).unwrap();
    let r = s.ingest_all(None).unwrap();
    assert_eq!(r.files, 600);
    assert!(copies(dir).is_empty());
    let c = rusqlite::Connection::open(dir.join("kura.db")).unwrap();
    let (records, chunks): (i64, i64) = c
        .query_row(
            "SELECT count(DISTINCT pack || ':' || offset), count(*) FROM chunks WHERE kind = 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    // About 10 MiB of new data in 1 MiB bundles.
    assert!(records <= 16, "{records} data records for {chunks} chunks");
    assert!(chunks > 600, "{chunks}");
    drop(c);
    for (ino, body) in &files {
        assert_eq!(&read_all(&s, *ino), body);
    }
    drop(s);
    let s = open(dir);
    for (ino, body) in &files {
        assert_eq!(&read_all(&s, *ino), body);
    }
    assert!(s.verify().unwrap().is_clean());
}

/// COMMITs of small files racing ingests: a copy is only ever left for a file that is
/// still staged in full mode (never ingested), whose inode has no content. A stale copy
/// of an ingested file would win over its newer state after a power loss.
#[test]
fn copies_racing_ingest_never_outlive_the_staging() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = open(dir);
    s.create_volume("vol", owner()).unwrap();
    let files: Vec<FileId> = (0..8)
        .map(|k| new_file(&s, format!("f{k}").as_bytes(), b"start"))
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    // What each file must read: a write at 0 of its bytes over what was there.
    let mut model: Vec<Vec<u8>> = vec![b"start".to_vec(); 8];
    std::thread::scope(|sc| {
        sc.spawn(|| {
            for round in 0..20_000u64 {
                if std::time::Instant::now() > deadline {
                    break;
                }
                let k = (round % 8) as usize;
                let ino = files[k];
                let bytes = data(1000 + (round % 7) as usize * 500, round);
                s.write(ino, 0, &bytes).unwrap();
                let m = &mut model[k];
                if m.len() < bytes.len() {
                    m.resize(bytes.len(), 0);
                }
                m[..bytes.len()].copy_from_slice(&bytes);
                s.sync(ino).unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Release);
        });
        sc.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                s.ingest_all(None).unwrap();
            }
        });
    });
    let c = rusqlite::Connection::open(dir.join("kura.db")).unwrap();
    let stale: i64 = c
        .query_row(
            "SELECT count(*) FROM staged_copies c JOIN inodes i ON i.ino = c.ino \
             WHERE i.content IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stale, 0, "copies of ingested files");
    drop(c);
    // Writes that raced an ingest stayed staged (in memory or spilled to disk) and
    // read back; and again after a restart.
    for (k, ino) in files.iter().enumerate() {
        assert_eq!(read_all(&s, *ino), model[k], "file {k}");
    }
    drop(s);
    let s = open(dir);
    for (k, ino) in files.iter().enumerate() {
        assert_eq!(read_all(&s, *ino), model[k], "file {k} after a restart");
    }
    assert!(s.verify().unwrap().is_clean());
}
