//! Property tests: the store against in-memory models.

mod common;
use common::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use storage::*;

#[derive(Clone, Debug)]
enum Op {
    Write { off: u32, len: u16, seed: u8 },
    Truncate(u32),
    Ingest,
    Sync,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..300_000, 1u16..20_000, any::<u8>()).prop_map(|(off, len, seed)| Op::Write { off, len, seed }),
        1 => (0u32..320_000).prop_map(Op::Truncate),
        2 => Just(Op::Ingest),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random writes (overlapping, out of order, past the end), truncates that shrink
    /// and grow, ingests and reopens: the file always reads exactly like a byte vector
    /// that had the same operations applied.
    #[test]
    fn file_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let v = s.create_volume("vol", owner()).unwrap();
        let ino = s.create(v.root, b"f", file_mode()).unwrap().ino;
        let mut model: Vec<u8> = Vec::new();
        for op in ops {
            match op {
                Op::Write { off, len, seed } => {
                    let d = data(len as usize, seed as u64);
                    s.write(ino, off as u64, &d).unwrap();
                    let end = off as usize + d.len();
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[off as usize..end].copy_from_slice(&d);
                }
                Op::Truncate(n) => {
                    s.setattr(ino, SetAttr { size: Some(n as u64), ..Default::default() }).unwrap();
                    model.resize(n as usize, 0);
                }
                Op::Ingest => { s.ingest_all(None).unwrap(); }
                Op::Sync => s.sync(ino).unwrap(),
                Op::Reopen => {
                    drop(s);
                    s = open(dir.path());
                }
            }
            prop_assert_eq!(s.getattr(ino).unwrap().size, model.len() as u64);
            let got = read_all(&s, ino);
            prop_assert!(got == model, "content differs after op (len {} vs {})", got.len(), model.len());
        }
        s.ingest_all(None).unwrap();
        prop_assert_eq!(read_all(&s, ino), model);
        prop_assert!(s.verify().unwrap().is_clean());
    }
}

/// A tree model: path → Some(content) for files, None for directories.
type Tree = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

#[derive(Clone, Debug)]
enum TOp {
    Create {
        dir: u8,
        name: u8,
        seed: u8,
        len: u16,
    },
    Mkdir {
        dir: u8,
        name: u8,
    },
    Remove {
        pick: u8,
    },
    Rename {
        pick: u8,
        dir: u8,
        name: u8,
    },
    Overwrite {
        pick: u8,
        seed: u8,
    },
    Snapshot,
}

fn top() -> impl Strategy<Value = TOp> {
    prop_oneof![
        4 => (any::<u8>(), 0u8..12, any::<u8>(), 0u16..30_000).prop_map(|(dir, name, seed, len)| TOp::Create { dir, name, seed, len }),
        2 => (any::<u8>(), 0u8..12).prop_map(|(dir, name)| TOp::Mkdir { dir, name }),
        2 => any::<u8>().prop_map(|pick| TOp::Remove { pick }),
        2 => (any::<u8>(), any::<u8>(), 0u8..12).prop_map(|(pick, dir, name)| TOp::Rename { pick, dir, name }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(pick, seed)| TOp::Overwrite { pick, seed }),
        1 => Just(TOp::Snapshot),
    ]
}

fn dirs(t: &Tree) -> Vec<Vec<u8>> {
    let mut d = vec![Vec::new()];
    d.extend(
        t.iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.clone()),
    );
    d
}

fn join(dir: &[u8], name: u8) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(format!("n{name}").as_bytes());
    p
}

fn resolve(s: &Store, root: FileId, path: &[u8]) -> FileId {
    let mut cur = root;
    if path.is_empty() {
        return cur;
    }
    for part in path.split(|b| *b == b'/') {
        cur = s.lookup(cur, part).unwrap().ino;
    }
    cur
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Reads a whole snapshot into the model's form.
fn snapshot_tree(s: &Store, vol: &str, name: &str) -> Tree {
    let mut out = Tree::new();
    let root = s.snapshot_root(vol, name).unwrap();
    let mut stack = vec![(Vec::new(), root)];
    while let Some((path, e)) = stack.pop() {
        for c in s.snap_dir(&e).unwrap().iter() {
            let mut p = path.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&c.name);
            match c.attr.kind {
                FileKind::Dir => {
                    out.insert(p.clone(), None);
                    stack.push((p, c.clone()));
                }
                _ => {
                    let (d, _) = s.snap_read(c, 0, u32::MAX).unwrap();
                    out.insert(p, Some(d));
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Every snapshot reads back exactly as the tree was when it was taken, however the
    /// live tree changed afterwards; a clone of the last snapshot equals it too; GC after
    /// deleting the older snapshots keeps everything still referenced readable.
    #[test]
    fn snapshots_match_model(ops in proptest::collection::vec(top(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let v = s.create_volume("vol", owner()).unwrap();
        let mut model = Tree::new();
        let mut snaps: Vec<(String, Tree)> = Vec::new();
        for op in ops {
            match op {
                TOp::Create { dir, name, seed, len } => {
                    let ds = dirs(&model);
                    let d = &ds[dir as usize % ds.len()];
                    let p = join(d, name);
                    if model.contains_key(&p) { continue; }
                    let f = s.create(resolve(&s, v.root, d), &p[p.len() - split(&p).1.len()..], file_mode()).unwrap().ino;
                    let content = data(len as usize, seed as u64);
                    s.write(f, 0, &content).unwrap();
                    model.insert(p, Some(content));
                }
                TOp::Mkdir { dir, name } => {
                    let ds = dirs(&model);
                    let d = &ds[dir as usize % ds.len()];
                    let p = join(d, name);
                    if model.contains_key(&p) { continue; }
                    s.mkdir(resolve(&s, v.root, d), split(&p).1, owner()).unwrap();
                    model.insert(p, None);
                }
                TOp::Remove { pick } => {
                    if model.is_empty() { continue; }
                    let p = model.keys().nth(pick as usize % model.len()).unwrap().clone();
                    let (d, n) = split(&p);
                    let parent = resolve(&s, v.root, d);
                    let is_dir = model[&p].is_none();
                    let has_children = model.keys().any(|k| k.len() > p.len() && k.starts_with(&p) && k[p.len()] == b'/');
                    let r = if is_dir { s.rmdir(parent, n) } else { s.remove(parent, n) };
                    if is_dir && has_children {
                        prop_assert!(matches!(r, Err(StoreError::NotEmpty(_))));
                    } else {
                        r.unwrap();
                        model.remove(&p);
                    }
                }
                TOp::Rename { pick, dir, name } => {
                    if model.is_empty() { continue; }
                    let p = model.keys().nth(pick as usize % model.len()).unwrap().clone();
                    let ds = dirs(&model);
                    let d = ds[dir as usize % ds.len()].clone();
                    let target = join(&d, name);
                    let is_dir = model[&p].is_none();
                    let below_itself = d == p || (d.len() > p.len() && d.starts_with(&p) && d[p.len()] == b'/');
                    let (sd, sn) = split(&p);
                    let r = s.rename(resolve(&s, v.root, sd), sn, resolve(&s, v.root, &d), split(&target).1);
                    let target_kind = model.get(&target).cloned();
                    let target_nonempty = model.keys().any(|k| k.len() > target.len() && k.starts_with(&target) && k[target.len()] == b'/');
                    let ok_expected = target == p || (!below_itself && match target_kind {
                        None => true,
                        Some(None) => is_dir && !target_nonempty,
                        Some(Some(_)) => !is_dir,
                    });
                    prop_assert_eq!(r.is_ok(), ok_expected, "rename {:?} -> {:?}: {:?}", String::from_utf8_lossy(&p), String::from_utf8_lossy(&target), r);
                    if r.is_ok() && target != p {
                        let moved: Vec<(Vec<u8>, Option<Vec<u8>>)> = model
                            .iter()
                            .filter(|(k, _)| *k == &p || (k.len() > p.len() && k.starts_with(&p) && k[p.len()] == b'/'))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        model.remove(&target);
                        for (k, val) in moved {
                            model.remove(&k);
                            let mut nk = target.clone();
                            nk.extend_from_slice(&k[p.len()..]);
                            model.insert(nk, val);
                        }
                    }
                }
                TOp::Overwrite { pick, seed } => {
                    let files: Vec<Vec<u8>> = model.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| k.clone()).collect();
                    if files.is_empty() { continue; }
                    let p = &files[pick as usize % files.len()];
                    let f = resolve(&s, v.root, p);
                    let patch = data(100, seed as u64);
                    s.write(f, 50, &patch).unwrap();
                    let c = model.get_mut(p).unwrap().as_mut().unwrap();
                    if c.len() < 150 { c.resize(150, 0); }
                    c[50..150].copy_from_slice(&patch);
                }
                TOp::Snapshot => {
                    let name = format!("s{}", snaps.len());
                    s.snapshot("vol", &name).unwrap();
                    snaps.push((name, model.clone()));
                }
            }
        }
        for (name, tree) in &snaps {
            prop_assert!(&snapshot_tree(&s, "vol", name) == tree, "snapshot {} differs from the model", name);
        }
        if let Some((name, tree)) = snaps.last() {
            s.clone_snapshot("vol", name, "clone").unwrap();
            s.snapshot("clone", "c0").unwrap();
            prop_assert!(&snapshot_tree(&s, "clone", "c0") == tree);
            for (old, _) in &snaps[..snaps.len() - 1] {
                s.delete_snapshot("vol", old).unwrap();
            }
            s.gc(&GcOptions { repack_below: 0.99, dry_run: false }).unwrap();
            prop_assert!(&snapshot_tree(&s, "vol", name) == tree);
            prop_assert!(s.verify().unwrap().is_clean());
        }
    }
}
