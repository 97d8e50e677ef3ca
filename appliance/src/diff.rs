//! `snapshot diff`: what changed between two snapshots of a volume. Directory objects
//! are content-addressed, so a subtree whose object id is the same in both is the same
//! and is skipped: the cost grows with what changed, not with the volume.

use serde::{Deserialize, Serialize};
use storage::{FileKind, Store, TreeEntry};

/// One changed path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// `added`, `removed` or `changed` (content, size, mode, owner, times or link).
    pub change: String,
    pub path: String,
    /// Size in the older snapshot (removed, changed) and in the newer (added, changed).
    pub size_before: Option<u64>,
    pub size_after: Option<u64>,
    pub kind: String,
}

fn kind(e: &TreeEntry) -> &'static str {
    match e.attr.kind {
        FileKind::File => "file",
        FileKind::Dir => "dir",
        FileKind::Symlink => "symlink",
    }
}

fn same(a: &TreeEntry, b: &TreeEntry) -> bool {
    a.attr.kind == b.attr.kind
        && a.target_ref == b.target_ref
        && a.link == b.link
        && a.attr.size == b.attr.size
        && a.attr.mode == b.attr.mode
        && a.attr.uid == b.attr.uid
        && a.attr.gid == b.attr.gid
        && a.attr.mtime == b.attr.mtime
}

/// Every path below `e` (itself included), as added or removed.
fn whole(
    store: &Store,
    e: &TreeEntry,
    path: &str,
    added: bool,
    out: &mut Vec<Change>,
) -> storage::Result<()> {
    out.push(Change {
        change: if added { "added" } else { "removed" }.into(),
        path: path.to_owned(),
        size_before: (!added && e.attr.kind == FileKind::File).then_some(e.attr.size),
        size_after: (added && e.attr.kind == FileKind::File).then_some(e.attr.size),
        kind: kind(e).into(),
    });
    if e.attr.kind == FileKind::Dir {
        for c in store.snapshot_children(e)?.iter() {
            let p = format!("{path}/{}", String::from_utf8_lossy(&c.name));
            whole(store, c, &p, added, out)?;
        }
    }
    Ok(())
}

fn walk(
    store: &Store,
    a: &TreeEntry,
    b: &TreeEntry,
    path: &str,
    out: &mut Vec<Change>,
) -> storage::Result<()> {
    // Same directory object: nothing below differs.
    if a.target_ref == b.target_ref {
        return Ok(());
    }
    let (ca, cb) = (store.snapshot_children(a)?, store.snapshot_children(b)?);
    let (mut i, mut j) = (0, 0);
    while i < ca.len() || j < cb.len() {
        let ord = match (ca.get(i), cb.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                let x = &ca[i];
                whole(
                    store,
                    x,
                    &format!("{path}/{}", String::from_utf8_lossy(&x.name)),
                    false,
                    out,
                )?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let y = &cb[j];
                whole(
                    store,
                    y,
                    &format!("{path}/{}", String::from_utf8_lossy(&y.name)),
                    true,
                    out,
                )?;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (&ca[i], &cb[j]);
                let p = format!("{path}/{}", String::from_utf8_lossy(&x.name));
                if x.attr.kind != y.attr.kind {
                    whole(store, x, &p, false, out)?;
                    whole(store, y, &p, true, out)?;
                } else if x.attr.kind == FileKind::Dir {
                    if !same(x, y)
                        && (x.attr.mode != y.attr.mode
                            || x.attr.uid != y.attr.uid
                            || x.attr.gid != y.attr.gid)
                    {
                        out.push(Change {
                            change: "changed".into(),
                            path: p.clone(),
                            size_before: None,
                            size_after: None,
                            kind: "dir".into(),
                        });
                    }
                    walk(store, x, y, &p, out)?;
                } else if !same(x, y) {
                    out.push(Change {
                        change: "changed".into(),
                        path: p,
                        size_before: (x.attr.kind == FileKind::File).then_some(x.attr.size),
                        size_after: (y.attr.kind == FileKind::File).then_some(y.attr.size),
                        kind: kind(y).into(),
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

/// The changes from snapshot `from` to snapshot `to` of `volume`, in path order.
pub fn diff(store: &Store, volume: &str, from: &str, to: &str) -> storage::Result<Vec<Change>> {
    let a = store.snapshot_root(volume, from)?;
    let b = store.snapshot_root(volume, to)?;
    let mut out = Vec::new();
    walk(store, &a, &b, "", &mut out)?;
    Ok(out)
}
