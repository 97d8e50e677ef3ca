//! Resumed ingest: a file changed near its end (an append, a rewrite of its tail) is
//! ingested from the last cut before the change, not from its start, and the result is
//! exactly what ingesting the whole file again would give.

mod common;
use common::*;
use storage::*;

/// Ingests `steps` (offset, bytes, truncate-to) applied in turn into one store, ingesting
/// after each, and the final bytes once into a fresh store; both contents must be
/// the same object, and the file must read back as the model.
fn check(steps: &[(u64, Vec<u8>, Option<u64>)]) -> (u64, u64) {
    check_with(steps, true)
}

/// `same_object`: compare with a fresh full ingest (only when the final bytes hold no
/// hole, which a fresh write of the model would fill).
fn check_with(steps: &[(u64, Vec<u8>, Option<u64>)], same_object: bool) -> (u64, u64) {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s = open(a.path());
    let v = s.create_volume("v", owner()).unwrap();
    let f = s.create(v.root, b"f", file_mode()).unwrap().ino;
    let mut model: Vec<u8> = Vec::new();
    let (mut read, mut resumed) = (0, 0);
    for (off, bytes, trunc) in steps {
        if let Some(t) = trunc {
            s.setattr(
                f,
                SetAttr {
                    size: Some(*t),
                    ..Default::default()
                },
            )
            .unwrap();
            model.resize(*t as usize, 0);
        }
        s.write(f, *off, bytes).unwrap();
        let end = *off as usize + bytes.len();
        if model.len() < end {
            model.resize(end, 0);
        }
        model[*off as usize..end].copy_from_slice(bytes);
        let r = s.ingest_all(None).unwrap();
        read += r.bytes;
        resumed += r.resumed_bytes;
        assert_eq!(read_all(&s, f), model);
    }
    if !same_object {
        return (read, resumed);
    }
    let fresh = open(b.path());
    let v2 = fresh.create_volume("v", owner()).unwrap();
    let g = fresh.create(v2.root, b"f", file_mode()).unwrap().ino;
    fresh.write(g, 0, &model).unwrap();
    fresh.ingest_all(None).unwrap();
    assert_eq!(
        s.inode(f).unwrap().content,
        fresh.inode(g).unwrap().content,
        "a resumed ingest must give the content a full one gives"
    );
    drop(s);
    let s = open(a.path());
    assert_eq!(read_all(&s, f), model);
    assert!(s.verify().unwrap().is_clean());
    (read, resumed)
}

#[test]
fn appends_resume_after_the_unchanged_start() {
    let big = data(6 << 20, 1);
    let (read, resumed) = check(&[
        (0, big.clone(), None),
        (6 << 20, data(300_000, 2), None),
        ((6 << 20) + 300_000, data(2 << 20, 3), None),
    ]);
    // The second and third ingests read little more than what was appended.
    assert!(resumed > 10 << 20, "resumed {resumed}");
    assert!(read < (6 << 20) + 3 * (1 << 20) + 2_300_000, "read {read}");
}

#[test]
fn tail_rewrites_truncates_and_early_changes() {
    check(&[
        (0, data(3 << 20, 4), None),
        // A rewrite near the end.
        ((3 << 20) - 10_000, data(50_000, 5), None),
        // A change at the very start: nothing to reuse.
        (0, b"HEADER".to_vec(), None),
        // A truncate into the middle, then an append.
        (1 << 20, data(500_000, 6), Some(1 << 20)),
        // A tiny file grows.
        (1_500_000, data(10, 7), None),
    ]);
    check(&[
        (0, b"small".to_vec(), None),
        (5, b" and more".to_vec(), None),
    ]);
}

#[test]
fn files_with_holes_are_read_whole() {
    // A hole of more than 1 MiB: the base has hole entries, no resume.
    let (_, resumed) = check_with(
        &[
            (4 << 20, data(1 << 20, 8), None),
            (5 << 20, data(100_000, 9), None),
        ],
        false,
    );
    assert_eq!(resumed, 0);
}
