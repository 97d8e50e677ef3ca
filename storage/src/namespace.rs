//! The live namespace in SQLite: inodes with their attributes and directory entries.
//!
//! Every inode has exactly one parent (hard links are not offered), so the directory
//! entry lives in the inode row: `(parent, name)` is unique. File ids come from SQLite's
//! AUTOINCREMENT: persistent, never reused, never 0. A directory is listed in file-id
//! order and the id of the last entry returned is the cookie for the next page, so a
//! listing stays correct while entries are deleted under it.
//!
//! `tree` caches the directory object id of a directory as of the last snapshot. Any
//! change inside a directory clears it there and in every ancestor ("dirty chain"); a
//! snapshot re-encodes only directories whose `tree` is NULL.

use crate::error::{DbContext, Result, StoreError};
use crate::ids::{ChunkId, FileId, VolumeId};
use rusqlite::{params, Connection, OptionalExtension, Row};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FileKind {
    File = 1,
    Dir = 2,
    Symlink = 3,
}

impl FileKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(FileKind::File),
            2 => Some(FileKind::Dir),
            3 => Some(FileKind::Symlink),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

impl Timespec {
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timespec {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }
}

/// Attributes of a file, directory or symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: FileId,
    pub kind: FileKind,
    /// Permission bits including setuid (0o4000), setgid (0o2000) and sticky (0o1000).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
}

/// Changes requested by SETATTR; `size` is applied by the store (it touches data).
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timespec>,
    pub mtime: Option<Timespec>,
}

/// Ownership and mode for a new inode.
#[derive(Clone, Copy, Debug)]
pub struct NewAttr {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A full inode row.
#[derive(Clone, Debug)]
pub struct Inode {
    pub attr: Attr,
    pub vol: VolumeId,
    pub parent: FileId,
    pub name: Vec<u8>,
    pub content: Option<ChunkId>,
    pub link: Vec<u8>,
    pub tree: Option<ChunkId>,
    pub verf: Option<[u8; 8]>,
}

pub const MAX_NAME: usize = 255;

/// Rejects names NFS clients must not be able to create.
pub fn check_name(name: &[u8]) -> Result<()> {
    let why = if name.is_empty() {
        "empty"
    } else if name == b"." || name == b".." {
        "reserved"
    } else if name.contains(&b'/') {
        "contains '/'"
    } else if name.contains(&0) {
        "contains NUL"
    } else if name.len() > MAX_NAME {
        return Err(StoreError::NameTooLong {
            name: String::from_utf8_lossy(&name[..64]).into_owned(),
            max: MAX_NAME,
        });
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidName {
        name: String::from_utf8_lossy(&name[..name.len().min(64)]).into_owned(),
        why,
    })
}

const COLS: &str = "ino, vol, parent, name, kind, mode, uid, gid, size, atime_s, atime_ns, \
                    mtime_s, mtime_ns, ctime_s, ctime_ns, content, target, tree, verf";

fn opt_id(v: Option<Vec<u8>>) -> Option<ChunkId> {
    v.and_then(|b| ChunkId::from_slice(&b))
}

fn row_to_inode(r: &Row<'_>) -> rusqlite::Result<Inode> {
    let ts = |a: usize| -> rusqlite::Result<Timespec> {
        Ok(Timespec {
            sec: r.get(a)?,
            nsec: r.get::<_, i64>(a + 1)? as u32,
        })
    };
    Ok(Inode {
        attr: Attr {
            ino: FileId(r.get::<_, i64>(0)? as u64),
            kind: FileKind::from_u8(r.get(4)?).unwrap_or(FileKind::File),
            mode: r.get(5)?,
            uid: r.get(6)?,
            gid: r.get(7)?,
            size: r.get::<_, i64>(8)? as u64,
            atime: ts(9)?,
            mtime: ts(11)?,
            ctime: ts(13)?,
        },
        vol: VolumeId(r.get::<_, i64>(1)? as u64),
        parent: FileId(r.get::<_, i64>(2)? as u64),
        name: r.get(3)?,
        content: opt_id(r.get(15)?),
        link: r.get::<_, Option<Vec<u8>>>(16)?.unwrap_or_default(),
        tree: opt_id(r.get(17)?),
        verf: r
            .get::<_, Option<Vec<u8>>>(18)?
            .and_then(|v| v.try_into().ok()),
    })
}

pub fn get(conn: &Connection, ino: FileId) -> Result<Inode> {
    get_opt(conn, ino)?.ok_or_else(|| StoreError::NotFound(format!("file id {ino}")))
}

pub fn get_opt(conn: &Connection, ino: FileId) -> Result<Option<Inode>> {
    conn.prepare_cached(&format!("SELECT {COLS} FROM inodes WHERE ino=?1"))
        .ctx("preparing inode read")?
        .query_row([ino.0 as i64], row_to_inode)
        .optional()
        .ctx("reading inode")
}

pub fn lookup(conn: &Connection, parent: FileId, name: &[u8]) -> Result<Option<Inode>> {
    conn.prepare_cached(&format!(
        "SELECT {COLS} FROM inodes WHERE parent=?1 AND name=?2"
    ))
    .ctx("preparing lookup")?
    .query_row(params![parent.0 as i64, name], row_to_inode)
    .optional()
    .ctx("looking up name")
}

pub fn dir(conn: &Connection, ino: FileId) -> Result<Inode> {
    let d = get(conn, ino)?;
    if d.attr.kind != FileKind::Dir {
        return Err(StoreError::NotDir(format!("file id {ino}")));
    }
    Ok(d)
}

/// Clears the cached directory object of `dir` and every ancestor.
pub fn invalidate(conn: &Connection, mut dir: FileId) -> Result<()> {
    let mut clear = conn
        .prepare_cached(
            "UPDATE inodes SET tree=NULL WHERE ino=?1 AND tree IS NOT NULL RETURNING parent",
        )
        .ctx("preparing invalidate")?;
    while dir.0 != 0 {
        let parent: Option<i64> = clear
            .query_row([dir.0 as i64], |r| r.get(0))
            .optional()
            .ctx("invalidating directory tree")?;
        match parent {
            Some(p) => dir = FileId(p as u64),
            // Already dirty: its ancestors are dirty too.
            None => break,
        }
    }
    Ok(())
}

fn touch_dir(conn: &Connection, dir: FileId, now: Timespec) -> Result<()> {
    conn.prepare_cached(
        "UPDATE inodes SET mtime_s=?2, mtime_ns=?3, ctime_s=?2, ctime_ns=?3 WHERE ino=?1",
    )
    .ctx("preparing touch")?
    .execute(params![dir.0 as i64, now.sec, now.nsec])
    .ctx("updating directory times")?;
    invalidate(conn, dir)
}

/// Inserts an inode row; returns its id.
#[allow(clippy::too_many_arguments)]
pub fn insert(
    conn: &Connection,
    vol: VolumeId,
    parent: FileId,
    name: &[u8],
    kind: FileKind,
    attr: NewAttr,
    size: u64,
    times: [Timespec; 3],
    content: Option<ChunkId>,
    link: &[u8],
    tree: Option<ChunkId>,
    verf: Option<[u8; 8]>,
) -> Result<FileId> {
    conn.prepare_cached(
        "INSERT INTO inodes(vol, parent, name, kind, mode, uid, gid, size, atime_s, atime_ns,
           mtime_s, mtime_ns, ctime_s, ctime_ns, content, target, tree, verf)
         VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18)",
    )
    .ctx("preparing inode insert")?
    .execute(params![
        vol.0 as i64,
        parent.0 as i64,
        name,
        kind as u8,
        attr.mode & 0o7777,
        attr.uid,
        attr.gid,
        size as i64,
        times[0].sec,
        times[0].nsec,
        times[1].sec,
        times[1].nsec,
        times[2].sec,
        times[2].nsec,
        content.map(|c| c.0.to_vec()),
        (kind == FileKind::Symlink).then_some(link),
        tree.map(|c| c.0.to_vec()),
        verf.map(|v| v.to_vec()),
    ])
    .ctx("inserting inode")?;
    Ok(FileId(conn.last_insert_rowid() as u64))
}

/// Creates a file, directory or symlink in `parent`.
pub fn create(
    conn: &Connection,
    parent: FileId,
    name: &[u8],
    kind: FileKind,
    attr: NewAttr,
    link: &[u8],
    verf: Option<[u8; 8]>,
) -> Result<Inode> {
    check_name(name)?;
    let p = dir(conn, parent)?;
    if lookup(conn, parent, name)?.is_some() {
        return Err(StoreError::Exists(
            String::from_utf8_lossy(name).into_owned(),
        ));
    }
    let now = Timespec::now();
    let ino = insert(
        conn,
        p.vol,
        parent,
        name,
        kind,
        attr,
        if kind == FileKind::Symlink {
            link.len() as u64
        } else {
            0
        },
        [now; 3],
        None,
        link,
        None,
        verf,
    )?;
    touch_dir(conn, parent, now)?;
    get(conn, ino)
}

/// Removes `name` from `parent`. `dir` says whether the caller expects a directory
/// (RMDIR) or not (REMOVE). Returns the removed inode.
pub fn remove(conn: &Connection, parent: FileId, name: &[u8], want_dir: bool) -> Result<Inode> {
    check_name(name)?;
    dir(conn, parent)?;
    let n = String::from_utf8_lossy(name).into_owned();
    let victim = lookup(conn, parent, name)?.ok_or_else(|| StoreError::NotFound(n.clone()))?;
    let is_dir = victim.attr.kind == FileKind::Dir;
    if want_dir && !is_dir {
        return Err(StoreError::NotDir(n));
    }
    if !want_dir && is_dir {
        return Err(StoreError::IsDir(n));
    }
    if is_dir && has_children(conn, victim.attr.ino)? {
        return Err(StoreError::NotEmpty(n));
    }
    conn.execute(
        "DELETE FROM inodes WHERE ino=?1",
        [victim.attr.ino.0 as i64],
    )
    .ctx("deleting inode")?;
    touch_dir(conn, parent, Timespec::now())?;
    Ok(victim)
}

pub fn has_children(conn: &Connection, dir: FileId) -> Result<bool> {
    conn.prepare_cached("SELECT 1 FROM inodes WHERE parent=?1 LIMIT 1")
        .ctx("preparing child check")?
        .exists([dir.0 as i64])
        .ctx("checking for children")
}

/// Renames; an existing target is replaced when the kinds allow it. Returns the
/// replaced inode, if any.
pub fn rename(
    conn: &Connection,
    from: FileId,
    from_name: &[u8],
    to: FileId,
    to_name: &[u8],
) -> Result<Option<Inode>> {
    check_name(from_name)?;
    check_name(to_name)?;
    let fp = dir(conn, from)?;
    let tp = dir(conn, to)?;
    if fp.vol != tp.vol {
        return Err(StoreError::Invalid("rename across volumes".into()));
    }
    let n = String::from_utf8_lossy(from_name).into_owned();
    let src = lookup(conn, from, from_name)?.ok_or_else(|| StoreError::NotFound(n.clone()))?;
    if src.attr.kind == FileKind::Dir {
        // Refuse moving a directory into itself or below itself.
        let mut a = to;
        while a.0 != 0 {
            if a == src.attr.ino {
                return Err(StoreError::Invalid(format!(
                    "cannot move directory {n} below itself"
                )));
            }
            a = get(conn, a)?.parent;
        }
    }
    let mut replaced = None;
    if let Some(dst) = lookup(conn, to, to_name)? {
        if dst.attr.ino == src.attr.ino {
            return Ok(None);
        }
        let tn = String::from_utf8_lossy(to_name).into_owned();
        match (
            src.attr.kind == FileKind::Dir,
            dst.attr.kind == FileKind::Dir,
        ) {
            (true, false) => return Err(StoreError::NotDir(tn)),
            (false, true) => return Err(StoreError::IsDir(tn)),
            (true, true) if has_children(conn, dst.attr.ino)? => {
                return Err(StoreError::NotEmpty(tn))
            }
            _ => {}
        }
        conn.execute("DELETE FROM inodes WHERE ino=?1", [dst.attr.ino.0 as i64])
            .ctx("deleting rename target")?;
        replaced = Some(dst);
    }
    let now = Timespec::now();
    conn.execute(
        "UPDATE inodes SET parent=?2, name=?3, ctime_s=?4, ctime_ns=?5 WHERE ino=?1",
        params![
            src.attr.ino.0 as i64,
            to.0 as i64,
            to_name,
            now.sec,
            now.nsec
        ],
    )
    .ctx("renaming inode")?;
    touch_dir(conn, from, now)?;
    if to != from {
        touch_dir(conn, to, now)?;
    }
    Ok(replaced)
}

/// Applies mode, owner and times (not size); returns the new attributes.
pub fn set_attr(conn: &Connection, ino: FileId, s: &SetAttr) -> Result<Inode> {
    let cur = get(conn, ino)?;
    let a = cur.attr;
    let now = Timespec::now();
    let atime = s.atime.unwrap_or(a.atime);
    let mtime = s.mtime.unwrap_or(a.mtime);
    conn.execute(
        "UPDATE inodes SET mode=?2, uid=?3, gid=?4, atime_s=?5, atime_ns=?6, mtime_s=?7, mtime_ns=?8,
           ctime_s=?9, ctime_ns=?10 WHERE ino=?1",
        params![
            ino.0 as i64,
            s.mode.map(|m| m & 0o7777).unwrap_or(a.mode),
            s.uid.unwrap_or(a.uid),
            s.gid.unwrap_or(a.gid),
            atime.sec,
            atime.nsec,
            mtime.sec,
            mtime.nsec,
            now.sec,
            now.nsec
        ],
    )
    .ctx("updating attributes")?;
    invalidate(conn, if cur.parent.0 == 0 { ino } else { cur.parent })?;
    get(conn, ino)
}

/// Records new content and size of a file after ingest (or a truncate), with the time
/// of the data change (`mtime`; None keeps the current one).
pub fn set_content(
    conn: &Connection,
    ino: FileId,
    content: Option<ChunkId>,
    size: u64,
    mtime: Option<Timespec>,
) -> Result<()> {
    let cur = get(conn, ino)?;
    let m = mtime.unwrap_or(cur.attr.mtime);
    // The change time is that of the data change, not of its ingest: clients saw the
    // staged ctime already, and a moved ctime would fail their SETATTR guards.
    let c = cur.attr.ctime.max(m);
    conn.prepare_cached(
        "UPDATE inodes SET content=?2, size=?3, mtime_s=?4, mtime_ns=?5, ctime_s=?6, ctime_ns=?7 WHERE ino=?1",
    )
    .ctx("preparing content update")?
    .execute(params![
        ino.0 as i64,
        content.map(|c| c.0.to_vec()),
        size as i64,
        m.sec,
        m.nsec,
        c.sec,
        c.nsec
    ])
    .ctx("updating file content")?;
    invalidate(conn, cur.parent)
}

/// One page of a directory: entries with file id above `cookie`, in file-id order.
pub fn readdir(
    conn: &Connection,
    dir_ino: FileId,
    cookie: u64,
    limit: usize,
) -> Result<Vec<Inode>> {
    dir(conn, dir_ino)?;
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {COLS} FROM inodes WHERE parent=?1 AND ino>?2 ORDER BY ino LIMIT ?3"
        ))
        .ctx("preparing readdir")?;
    let rows = st
        .query_map(
            params![dir_ino.0 as i64, cookie as i64, limit as i64],
            row_to_inode,
        )
        .ctx("listing directory")?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .ctx("listing directory")
}

/// All children of a directory (for snapshots and clones).
pub fn children(conn: &Connection, dir_ino: FileId) -> Result<Vec<Inode>> {
    readdir(conn, dir_ino, 0, usize::MAX >> 1)
}
