//! Property tests: the store against in-memory models.

mod common;
use common::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
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

/// A tree as compared: path → Some(content) for files, None for directories.
type Tree = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Paths that name one file, for each file with more than one name.
type Links = BTreeSet<Vec<Vec<u8>>>;

/// The namespace model: path → None for a directory or Some(file), and each file's
/// content. A file with several paths is hard-linked.
#[derive(Clone, Debug, Default)]
struct Model {
    paths: BTreeMap<Vec<u8>, Option<u32>>,
    files: BTreeMap<u32, Vec<u8>>,
    next: u32,
}

impl Model {
    fn tree(&self) -> Tree {
        self.paths
            .iter()
            .map(|(p, f)| (p.clone(), f.map(|f| self.files[&f].clone())))
            .collect()
    }

    /// The paths of each file with more than one name, as sorted groups.
    fn links(&self) -> Links {
        let mut by: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
        for (p, f) in &self.paths {
            if let Some(f) = f {
                by.entry(*f).or_default().push(p.clone());
            }
        }
        by.into_values().filter(|v| v.len() > 1).collect()
    }

    fn below(&self, p: &[u8]) -> bool {
        self.paths.keys().any(|k| is_below(k, p))
    }

    fn drop_path(&mut self, p: &[u8]) {
        if let Some(Some(f)) = self.paths.remove(p) {
            if !self.paths.values().any(|x| *x == Some(f)) {
                self.files.remove(&f);
            }
        }
    }
}

fn is_below(k: &[u8], p: &[u8]) -> bool {
    k.len() > p.len() && k.starts_with(p) && k[p.len()] == b'/'
}

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
    Link {
        pick: u8,
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
    Reopen,
}

fn top() -> impl Strategy<Value = TOp> {
    prop_oneof![
        4 => (any::<u8>(), 0u8..12, any::<u8>(), 0u16..30_000).prop_map(|(dir, name, seed, len)| TOp::Create { dir, name, seed, len }),
        2 => (any::<u8>(), 0u8..12).prop_map(|(dir, name)| TOp::Mkdir { dir, name }),
        3 => (any::<u8>(), any::<u8>(), 0u8..12).prop_map(|(pick, dir, name)| TOp::Link { pick, dir, name }),
        2 => any::<u8>().prop_map(|pick| TOp::Remove { pick }),
        2 => (any::<u8>(), any::<u8>(), 0u8..12).prop_map(|(pick, dir, name)| TOp::Rename { pick, dir, name }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(pick, seed)| TOp::Overwrite { pick, seed }),
        1 => Just(TOp::Snapshot),
        1 => Just(TOp::Reopen),
    ]
}

fn dirs(m: &Model) -> Vec<Vec<u8>> {
    let mut d = vec![Vec::new()];
    d.extend(
        m.paths
            .iter()
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

/// Reads a whole snapshot into the model's form, with its link groups (entries of one
/// file id); checks that every file's link count is the size of its group.
fn snapshot_tree(s: &Store, vol: &str, name: &str) -> (Tree, Links) {
    let mut out = Tree::new();
    let mut by: BTreeMap<FileId, (Vec<u32>, Vec<Vec<u8>>)> = BTreeMap::new();
    let root = s.snapshot_root(vol, name).unwrap();
    let mut stack = vec![(Vec::new(), root)];
    while let Some((path, e)) = stack.pop() {
        for c in s.snapshot_children(&e).unwrap().iter() {
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
                    let g = by.entry(c.attr.ino).or_default();
                    g.0.push(c.attr.nlink);
                    g.1.push(p.clone());
                    out.insert(p, Some(d));
                }
            }
        }
    }
    for (nlinks, paths) in by.values() {
        for n in nlinks {
            assert_eq!(*n as usize, paths.len(), "link count of {paths:?}");
        }
    }
    let links = by
        .into_values()
        .map(|(_, mut v)| {
            v.sort();
            v
        })
        .filter(|v| v.len() > 1)
        .collect();
    (out, links)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// The namespace with hard links against a model. Every snapshot reads back exactly
    /// as the tree was when it was taken (contents, and which paths are one file),
    /// however the live tree changed afterwards; a write through one name shows through
    /// all; removing a name keeps the others; rename onto another name of the same file
    /// changes nothing; a clone of the last snapshot keeps its links; GC after deleting
    /// the older snapshots keeps everything still referenced readable.
    #[test]
    fn snapshots_match_model(ops in proptest::collection::vec(top(), 1..48)) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let v = s.create_volume("vol", owner()).unwrap();
        let mut m = Model::default();
        let mut snaps: Vec<(String, Tree, Links)> = Vec::new();
        for op in ops {
            match op {
                TOp::Create { dir, name, seed, len } => {
                    let ds = dirs(&m);
                    let d = &ds[dir as usize % ds.len()];
                    let p = join(d, name);
                    if m.paths.contains_key(&p) { continue; }
                    let f = s.create(resolve(&s, v.root, d), split(&p).1, file_mode()).unwrap().ino;
                    let content = data(len as usize, seed as u64);
                    s.write(f, 0, &content).unwrap();
                    m.next += 1;
                    m.files.insert(m.next, content);
                    m.paths.insert(p, Some(m.next));
                }
                TOp::Mkdir { dir, name } => {
                    let ds = dirs(&m);
                    let d = &ds[dir as usize % ds.len()];
                    let p = join(d, name);
                    if m.paths.contains_key(&p) { continue; }
                    s.mkdir(resolve(&s, v.root, d), split(&p).1, owner()).unwrap();
                    m.paths.insert(p, None);
                }
                TOp::Link { pick, dir, name } => {
                    if m.paths.is_empty() { continue; }
                    let p = m.paths.keys().nth(pick as usize % m.paths.len()).unwrap().clone();
                    let ds = dirs(&m);
                    let d = ds[dir as usize % ds.len()].clone();
                    let target = join(&d, name);
                    let src = resolve(&s, v.root, &p);
                    let r = s.link(src, resolve(&s, v.root, &d), split(&target).1);
                    match (m.paths[&p], m.paths.contains_key(&target)) {
                        (_, true) => prop_assert!(matches!(r, Err(StoreError::Exists(_))), "{:?}", r),
                        (None, false) => prop_assert!(matches!(r, Err(StoreError::IsDir(_))), "{:?}", r),
                        (Some(f), false) => {
                            let a = r.unwrap();
                            m.paths.insert(target, Some(f));
                            let n = m.paths.values().filter(|x| **x == Some(f)).count();
                            prop_assert_eq!(a.nlink as usize, n);
                        }
                    }
                }
                TOp::Remove { pick } => {
                    if m.paths.is_empty() { continue; }
                    let p = m.paths.keys().nth(pick as usize % m.paths.len()).unwrap().clone();
                    let (d, n) = split(&p);
                    let parent = resolve(&s, v.root, d);
                    let is_dir = m.paths[&p].is_none();
                    let r = if is_dir { s.rmdir(parent, n) } else { s.remove(parent, n) };
                    if is_dir && m.below(&p) {
                        prop_assert!(matches!(r, Err(StoreError::NotEmpty(_))));
                    } else {
                        r.unwrap();
                        m.drop_path(&p);
                    }
                }
                TOp::Rename { pick, dir, name } => {
                    if m.paths.is_empty() { continue; }
                    let p = m.paths.keys().nth(pick as usize % m.paths.len()).unwrap().clone();
                    let ds = dirs(&m);
                    let d = ds[dir as usize % ds.len()].clone();
                    let target = join(&d, name);
                    let src = m.paths[&p];
                    let is_dir = src.is_none();
                    let below_itself = d == p || is_below(&d, &p);
                    let (sd, sn) = split(&p);
                    let r = s.rename(resolve(&s, v.root, sd), sn, resolve(&s, v.root, &d), split(&target).1);
                    let target_kind = m.paths.get(&target).cloned();
                    let same_file = !is_dir && target_kind == Some(src);
                    let ok_expected = target == p || same_file || (!below_itself && match target_kind {
                        None => true,
                        Some(None) => is_dir && !m.below(&target),
                        Some(Some(_)) => !is_dir,
                    });
                    prop_assert_eq!(r.is_ok(), ok_expected, "rename {:?} -> {:?}: {:?}", String::from_utf8_lossy(&p), String::from_utf8_lossy(&target), r);
                    if r.is_ok() && target != p && !same_file {
                        let moved: Vec<(Vec<u8>, Option<u32>)> = m
                            .paths
                            .iter()
                            .filter(|(k, _)| *k == &p || is_below(k, &p))
                            .map(|(k, v)| (k.clone(), *v))
                            .collect();
                        m.drop_path(&target);
                        for (k, val) in moved {
                            m.paths.remove(&k);
                            let mut nk = target.clone();
                            nk.extend_from_slice(&k[p.len()..]);
                            m.paths.insert(nk, val);
                        }
                    }
                }
                TOp::Overwrite { pick, seed } => {
                    let files: Vec<(Vec<u8>, u32)> = m.paths.iter().filter_map(|(k, v)| v.map(|f| (k.clone(), f))).collect();
                    if files.is_empty() { continue; }
                    let (p, id) = &files[pick as usize % files.len()];
                    let f = resolve(&s, v.root, p);
                    let patch = data(100, seed as u64);
                    s.write(f, 50, &patch).unwrap();
                    let c = m.files.get_mut(id).unwrap();
                    if c.len() < 150 { c.resize(150, 0); }
                    c[50..150].copy_from_slice(&patch);
                }
                TOp::Snapshot => {
                    let name = format!("s{}", snaps.len());
                    s.snapshot("vol", &name).unwrap();
                    snaps.push((name, m.tree(), m.links()));
                }
                TOp::Reopen => {
                    drop(s);
                    s = open(dir.path());
                }
            }
        }
        // The live tree: every path reads its file's content, with its link count.
        for (p, f) in &m.paths {
            if let Some(f) = f {
                let ino = resolve(&s, v.root, p);
                prop_assert!(read_all(&s, ino) == m.files[f], "{:?} reads wrong", String::from_utf8_lossy(p));
                let n = m.paths.values().filter(|x| **x == Some(*f)).count();
                prop_assert_eq!(s.getattr(ino).unwrap().nlink as usize, n);
            }
        }
        for (name, tree, links) in &snaps {
            let (t, l) = snapshot_tree(&s, "vol", name);
            prop_assert!(&t == tree, "snapshot {} differs from the model", name);
            prop_assert!(&l == links, "snapshot {} links {:?} vs model {:?}", name, l, links);
        }
        if let Some((name, tree, links)) = snaps.last() {
            s.clone_snapshot("vol", name, "clone").unwrap();
            s.snapshot("clone", "c0").unwrap();
            let (t, l) = snapshot_tree(&s, "clone", "c0");
            prop_assert!(&t == tree);
            prop_assert!(&l == links);
            for (old, _, _) in &snaps[..snaps.len() - 1] {
                s.delete_snapshot("vol", old).unwrap();
            }
            s.gc(&GcOptions { repack_below: 0.99, ..Default::default() }).unwrap();
            prop_assert!(&snapshot_tree(&s, "vol", name).0 == tree);
            prop_assert!(s.verify().unwrap().is_clean());
        }
    }
}
