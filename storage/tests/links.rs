//! Hard links: several names for one file, as rsnapshot, `rsync --link-dest`,
//! `cp -al` and tar archives with links make them.

mod common;
use common::*;
use storage::*;

fn gc(s: &Store) -> GcReport {
    s.gc(&GcOptions {
        repack_below: 0.99,
        ..Default::default()
    })
    .unwrap()
}

/// Two names are one file: same id, shared content in both directions, a link count
/// of two; removing one name keeps the file, staged (not yet ingested) data included.
#[test]
fn names_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let a = s.mkdir(v.root, b"a", owner()).unwrap().ino;
    let b = s.mkdir(v.root, b"b", owner()).unwrap().ino;
    let f = s.create(a, b"f", file_mode()).unwrap().ino;
    s.write(f, 0, &data(100_000, 1)).unwrap();
    let l = s.link(f, b, b"g").unwrap();
    assert_eq!((l.ino, l.nlink), (f, 2));
    let g = s.lookup(b, b"g").unwrap();
    assert_eq!(g.ino, f);
    s.write(g.ino, 0, b"through g").unwrap();
    assert_eq!(&read_all(&s, f)[..9], b"through g");
    assert_eq!(s.getattr(f).unwrap().nlink, 2);
    // Staged data survives removing one of two names.
    s.remove(a, b"f").unwrap();
    assert!(matches!(s.lookup(a, b"f"), Err(StoreError::NotFound(_))));
    assert_eq!(s.getattr(f).unwrap().nlink, 1);
    let mut want = data(100_000, 1);
    want[..9].copy_from_slice(b"through g");
    assert_eq!(read_all(&s, f), want);
    s.ingest_all(None).unwrap();
    assert_eq!(read_all(&s, f), want);
    // The last name takes the file with it.
    s.remove(b, b"g").unwrap();
    assert!(matches!(s.getattr(f), Err(StoreError::NotFound(_))));
    assert!(s.verify().unwrap().is_clean());
}

/// What LINK refuses: a directory, a taken name, another volume, a bad name, a
/// missing file; nothing changes on a refusal.
#[test]
fn link_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let w = s.create_volume("other", owner()).unwrap();
    let d = s.mkdir(v.root, b"d", owner()).unwrap().ino;
    let f = s.create(v.root, b"f", file_mode()).unwrap().ino;
    assert!(matches!(
        s.link(d, v.root, b"d2"),
        Err(StoreError::IsDir(_))
    ));
    assert!(matches!(
        s.link(f, v.root, b"d"),
        Err(StoreError::Exists(_))
    ));
    assert!(matches!(
        s.link(f, w.root, b"f"),
        Err(StoreError::CrossVolume(_))
    ));
    assert!(matches!(
        s.link(f, v.root, b"a/b"),
        Err(StoreError::InvalidName { .. })
    ));
    assert!(matches!(
        s.link(f, v.root, b".."),
        Err(StoreError::InvalidName { .. })
    ));
    assert!(matches!(s.link(f, f, b"x"), Err(StoreError::NotDir(_))));
    assert!(matches!(
        s.link(FileId(9999), v.root, b"x"),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.getattr(f).unwrap().nlink, 1);
    assert_eq!(s.readdir(v.root, 0, 100).unwrap().len(), 2);
    // Symlinks may be linked too (POSIX allows it; tar archives carry such links).
    let l = s.symlink(v.root, b"l", b"f", file_mode()).unwrap().ino;
    assert_eq!(s.link(l, d, b"l2").unwrap().nlink, 2);
    assert_eq!(s.readlink(s.lookup(d, b"l2").unwrap().ino).unwrap(), b"f");
}

/// Rename with links: onto another name of the same file changes nothing (POSIX);
/// over a linked file takes one of its names only.
#[test]
fn rename_with_links() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let f = s.create(v.root, b"f", file_mode()).unwrap().ino;
    s.write(f, 0, b"file f").unwrap();
    s.link(f, v.root, b"g").unwrap();
    s.rename(v.root, b"f", v.root, b"g").unwrap();
    assert_eq!(s.lookup(v.root, b"f").unwrap().ino, f);
    assert_eq!(s.lookup(v.root, b"g").unwrap().ino, f);
    assert_eq!(s.getattr(f).unwrap().nlink, 2);
    let x = s.create(v.root, b"x", file_mode()).unwrap().ino;
    s.write(x, 0, b"file x").unwrap();
    s.rename(v.root, b"x", v.root, b"g").unwrap();
    assert_eq!(s.lookup(v.root, b"g").unwrap().ino, x);
    assert_eq!(s.getattr(f).unwrap().nlink, 1);
    assert_eq!(read_all(&s, f), b"file f");
    assert_eq!(read_all(&s, x), b"file x");
}

/// Snapshots keep links (one file id, the link count in every entry, also in a
/// directory whose object was cached before the link was made), clones make them
/// links again, and GC keeps a file while any name or snapshot holds it.
#[test]
fn snapshots_and_clones_keep_links() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let a = s.mkdir(v.root, b"a", owner()).unwrap().ino;
    let b = s.mkdir(v.root, b"b", owner()).unwrap().ino;
    let f = s.create(a, b"f", file_mode()).unwrap().ino;
    let body = data(300_000, 7);
    s.write(f, 0, &body).unwrap();
    s.snapshot("vol", "before").unwrap();
    // `a` is unchanged by the link except for f's link count: its object must be
    // encoded again.
    s.link(f, b, b"g").unwrap();
    let snap = s.snapshot("vol", "linked").unwrap();
    assert!(snap.dirs_encoded >= 3, "{snap:?}");
    let root = s.snapshot_root("vol", "linked").unwrap();
    let sf = s
        .snap_lookup(&s.snap_lookup(&root, b"a").unwrap(), b"f")
        .unwrap();
    let sg = s
        .snap_lookup(&s.snap_lookup(&root, b"b").unwrap(), b"g")
        .unwrap();
    assert_eq!(sf.attr.ino, sg.attr.ino);
    assert_eq!((sf.attr.nlink, sg.attr.nlink), (2, 2));
    assert_eq!(s.snap_read(&sg, 0, u32::MAX).unwrap().0, body);
    let old = s.snapshot_root("vol", "before").unwrap();
    let of = s
        .snap_lookup(&s.snap_lookup(&old, b"a").unwrap(), b"f")
        .unwrap();
    assert_eq!(of.attr.nlink, 1);

    // A clone: one file with two names again, stored once.
    let c = s.clone_snapshot("vol", "linked", "restored").unwrap();
    let ca = s.lookup(c.root, b"a").unwrap().ino;
    let cb = s.lookup(c.root, b"b").unwrap().ino;
    let cf = s.lookup(ca, b"f").unwrap();
    let cg = s.lookup(cb, b"g").unwrap();
    assert_eq!(cf.ino, cg.ino);
    assert_ne!(cf.ino, f);
    assert_eq!(cf.nlink, 2);
    s.write(cg.ino, 0, b"clone").unwrap();
    assert_eq!(&read_all(&s, cf.ino)[..5], b"clone");
    assert_eq!(&read_all(&s, f)[..5], &body[..5]);

    // GC: the file's data stays while a name or a snapshot holds it.
    s.remove(a, b"f").unwrap();
    s.delete_snapshot("vol", "before").unwrap();
    gc(&s);
    assert_eq!(read_all(&s, f), body);
    s.remove(b, b"g").unwrap();
    s.delete_snapshot("vol", "linked").unwrap();
    s.remove(ca, b"f").unwrap();
    s.remove(cb, b"g").unwrap();
    s.ingest_all(None).unwrap();
    let before = s.stats().unwrap().chunks;
    let r = gc(&s);
    assert!(
        r.deleted_chunks > 0 && s.stats().unwrap().chunks < before,
        "{r:?}"
    );
    assert!(s.verify().unwrap().is_clean());
}

/// Two names of one file in one directory are two entries with cookies of their own,
/// and a listing paged while names are removed returns each survivor once.
#[test]
fn listing_names_of_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let v = s.create_volume("vol", owner()).unwrap();
    let f = s.create(v.root, b"f", file_mode()).unwrap().ino;
    for i in 0..300 {
        s.link(f, v.root, format!("l{i:03}").as_bytes()).unwrap();
    }
    assert_eq!(s.getattr(f).unwrap().nlink, 301);
    let mut seen = std::collections::HashSet::new();
    let mut cookie = 0;
    loop {
        let page = s.readdir(v.root, cookie, 50).unwrap();
        let Some(last) = page.last() else { break };
        cookie = last.cookie;
        for e in &page {
            assert!(seen.insert(e.name.clone()));
            assert_eq!(e.attr.ino, f);
            if e.name != b"f" {
                s.remove(v.root, &e.name).unwrap();
            }
        }
    }
    assert_eq!(seen.len(), 301);
    assert_eq!(s.getattr(f).unwrap().nlink, 1);
}
