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

    // A clean close makes the staging files whole by themselves and drops the copies.
    let v1 = data(5000, 5);
    let file = new_file(&s, b"file", &v1);
    s.sync(file).unwrap();
    assert_eq!(copies(dir), vec![file.0]);
    drop(s);
    assert!(copies(dir).is_empty());
    let s = open(dir);
    assert_eq!(read_all(&s, file), v1);
    assert_eq!(read_all(&s, ingested), data(3000, 4));
    assert_eq!(read_all(&s, grows)[1000..], data(100 << 10, 2)[..]);
}
