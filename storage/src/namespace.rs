//! The live namespace in SQLite. This module owns the `volumes`, `inodes` and `entries`
//! tables: no other module writes SQL on them.
//!
//! An inode row holds a file's attributes and content; an entry row `(parent, name) ->
//! ino` names it. A file or symlink may have several entries (hard links; `nlink` counts
//! them and the inode goes with its last name); a directory has exactly one, and a
//! volume root none. File ids and entry ids come from SQLite's AUTOINCREMENT:
//! persistent, never reused, never 0. A directory is listed in entry-id order and the id
//! of the last entry returned is the cookie for the next page, so a listing stays
//! correct while entries are deleted under it (and two names of one file in one
//! directory have cookies of their own).
//!
//! `tree` caches the directory object id of a directory as of the last snapshot. Any
//! change inside a directory clears it there and in every ancestor ("dirty chain"); a
//! change to a file's attributes or content clears it in every directory naming the
//! file; a snapshot re-encodes only directories whose `tree` is NULL.

use crate::error::{DbContext, Result, StoreError};
use crate::ids::{ChunkId, FileId, VolumeId};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::collections::HashSet;

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
    /// Names of a file or symlink (hard links); 1 for a directory.
    pub nlink: u32,
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

impl SetAttr {
    /// Whether it sets anything besides the size (what `set_attr` writes).
    pub fn sets_attributes(&self) -> bool {
        self.mode.is_some()
            || self.uid.is_some()
            || self.gid.is_some()
            || self.atime.is_some()
            || self.mtime.is_some()
    }
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
    pub content: Option<ChunkId>,
    pub link: Vec<u8>,
    pub tree: Option<ChunkId>,
    pub verf: Option<[u8; 8]>,
}

/// A directory entry and the inode it names.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The entry's id: the READDIR cookie that continues after it.
    pub id: u64,
    pub name: Vec<u8>,
    pub inode: Inode,
}

/// A named export: a tree with a root directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub id: VolumeId,
    pub name: String,
    pub root: FileId,
}

/// What a REMOVE, RMDIR or rename-over took away.
#[derive(Clone, Debug)]
pub struct Removed {
    pub inode: Inode,
    /// The last name went: the inode row is deleted (and its staged data may go).
    pub gone: bool,
}

pub const MAX_NAME: usize = 255;

/// Most names one file may have (PATHCONF's linkmax; ext4's limit).
pub const MAX_LINKS: u32 = 65_000;

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

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

const COLS: &str = "i.ino, i.vol, i.kind, i.mode, i.uid, i.gid, i.size, i.atime_s, i.atime_ns, \
                    i.mtime_s, i.mtime_ns, i.ctime_s, i.ctime_ns, i.content, i.target, i.tree, \
                    i.verf, i.nlink";

fn bad_column(col: usize, why: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Blob, why.into())
}

/// An object id column: NULL is None, anything but 32 bytes is an error (never a
/// silently different id).
fn opt_id(r: &Row<'_>, col: usize) -> rusqlite::Result<Option<ChunkId>> {
    match r.get::<_, Option<Vec<u8>>>(col)? {
        None => Ok(None),
        Some(b) => ChunkId::from_slice(&b)
            .map(Some)
            .ok_or_else(|| bad_column(col, format!("object id of {} bytes", b.len()))),
    }
}

/// Decodes the inode columns ([`COLS`]) starting at column `at`.
fn row_to_inode(r: &Row<'_>, at: usize) -> rusqlite::Result<Inode> {
    let ts = |a: usize| -> rusqlite::Result<Timespec> {
        Ok(Timespec {
            sec: r.get(at + a)?,
            nsec: r.get::<_, i64>(at + a + 1)? as u32,
        })
    };
    let kind: u8 = r.get(at + 2)?;
    Ok(Inode {
        attr: Attr {
            ino: FileId(r.get::<_, i64>(at)? as u64),
            kind: FileKind::from_u8(kind)
                .ok_or_else(|| bad_column(at + 2, format!("file kind {kind}")))?,
            mode: r.get(at + 3)?,
            uid: r.get(at + 4)?,
            gid: r.get(at + 5)?,
            size: r.get::<_, i64>(at + 6)? as u64,
            atime: ts(7)?,
            mtime: ts(9)?,
            ctime: ts(11)?,
            nlink: r.get(at + 17)?,
        },
        vol: VolumeId(r.get::<_, i64>(at + 1)? as u64),
        content: opt_id(r, at + 13)?,
        link: r.get::<_, Option<Vec<u8>>>(at + 14)?.unwrap_or_default(),
        tree: opt_id(r, at + 15)?,
        verf: r
            .get::<_, Option<Vec<u8>>>(at + 16)?
            .and_then(|v| v.try_into().ok()),
    })
}

fn row_to_entry(r: &Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        id: r.get::<_, i64>(0)? as u64,
        name: r.get(1)?,
        inode: row_to_inode(r, 2)?,
    })
}

pub fn get(conn: &Connection, ino: FileId) -> Result<Inode> {
    get_opt(conn, ino)?.ok_or_else(|| StoreError::NotFound(format!("file id {ino}")))
}

pub fn get_opt(conn: &Connection, ino: FileId) -> Result<Option<Inode>> {
    conn.prepare_cached(&format!("SELECT {COLS} FROM inodes i WHERE i.ino=?1"))
        .ctx("preparing inode read")?
        .query_row([ino.0 as i64], |r| row_to_inode(r, 0))
        .optional()
        .ctx("reading inode")
}

/// The entry `name` in directory `parent`.
pub fn lookup(conn: &Connection, parent: FileId, name: &[u8]) -> Result<Option<Entry>> {
    conn.prepare_cached(&format!(
        "SELECT e.id, e.name, {COLS} FROM entries e JOIN inodes i ON i.ino = e.ino
         WHERE e.parent=?1 AND e.name=?2"
    ))
    .ctx("preparing lookup")?
    .query_row(params![parent.0 as i64, name], row_to_entry)
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

/// The directory holding the first name of `ino` (a directory's only one); None for a
/// volume root.
pub fn parent(conn: &Connection, ino: FileId) -> Result<Option<(FileId, Vec<u8>)>> {
    conn.prepare_cached("SELECT parent, name FROM entries WHERE ino=?1 ORDER BY id LIMIT 1")
        .ctx("preparing parent lookup")?
        .query_row([ino.0 as i64], |r| {
            Ok((FileId(r.get::<_, i64>(0)? as u64), r.get(1)?))
        })
        .optional()
        .ctx("reading parent")
}

/// Every directory holding a name of `ino`.
fn holders(conn: &Connection, ino: FileId) -> Result<Vec<FileId>> {
    let mut st = conn
        .prepare_cached("SELECT DISTINCT parent FROM entries WHERE ino=?1")
        .ctx("preparing holder lookup")?;
    let rows = st
        .query_map([ino.0 as i64], |r| Ok(FileId(r.get::<_, i64>(0)? as u64)))
        .ctx("reading holders")?;
    rows.collect::<rusqlite::Result<_>>().ctx("reading holders")
}

/// Clears the cached directory object of `dir` and every ancestor.
pub fn invalidate(conn: &Connection, mut dir: FileId) -> Result<()> {
    let mut clear = conn
        .prepare_cached("UPDATE inodes SET tree=NULL WHERE ino=?1 AND tree IS NOT NULL")
        .ctx("preparing invalidate")?;
    while dir.0 != 0 {
        let cleared = clear
            .execute([dir.0 as i64])
            .ctx("invalidating directory tree")?;
        if cleared == 0 {
            // Already dirty: its ancestors are dirty too.
            break;
        }
        dir = parent(conn, dir)?.map_or(FileId(0), |(p, _)| p);
    }
    Ok(())
}

/// Clears the cached objects that hold `ino`'s attributes: every directory naming it
/// (the inode itself for a volume root, whose attributes its snapshot root carries).
pub(crate) fn invalidate_holders(conn: &Connection, ino: FileId) -> Result<()> {
    let hs = holders(conn, ino)?;
    if hs.is_empty() {
        return invalidate(conn, ino);
    }
    for h in hs {
        invalidate(conn, h)?;
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

fn touch_ctime(conn: &Connection, ino: FileId, now: Timespec) -> Result<()> {
    conn.prepare_cached("UPDATE inodes SET ctime_s=?2, ctime_ns=?3 WHERE ino=?1")
        .ctx("preparing ctime update")?
        .execute(params![ino.0 as i64, now.sec, now.nsec])
        .ctx("updating change time")?;
    Ok(())
}

/// An inode row to insert ([`insert_inode`]).
pub struct NewInode<'a> {
    pub vol: VolumeId,
    pub kind: FileKind,
    pub attr: NewAttr,
    pub size: u64,
    /// atime, mtime, ctime.
    pub times: [Timespec; 3],
    pub content: Option<ChunkId>,
    pub link: &'a [u8],
    pub tree: Option<ChunkId>,
    pub verf: Option<[u8; 8]>,
    /// Entries that will name it ([`add_entry`] does not count).
    pub nlink: u32,
}

/// Inserts an inode row; returns its id.
pub fn insert_inode(conn: &Connection, n: &NewInode<'_>) -> Result<FileId> {
    conn.prepare_cached(
        "INSERT INTO inodes(vol, kind, mode, uid, gid, size, atime_s, atime_ns,
           mtime_s, mtime_ns, ctime_s, ctime_ns, content, target, tree, verf, nlink)
         VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17)",
    )
    .ctx("preparing inode insert")?
    .execute(params![
        n.vol.0 as i64,
        n.kind as u8,
        n.attr.mode & 0o7777,
        n.attr.uid,
        n.attr.gid,
        n.size as i64,
        n.times[0].sec,
        n.times[0].nsec,
        n.times[1].sec,
        n.times[1].nsec,
        n.times[2].sec,
        n.times[2].nsec,
        n.content.map(|c| c.0.to_vec()),
        (n.kind == FileKind::Symlink).then_some(n.link),
        n.tree.map(|c| c.0.to_vec()),
        n.verf.map(|v| v.to_vec()),
        n.nlink,
    ])
    .ctx("inserting inode")?;
    Ok(FileId(conn.last_insert_rowid() as u64))
}

/// Names `ino` as `name` in `parent` (no checks, no counting); returns the entry id.
pub fn add_entry(conn: &Connection, parent: FileId, name: &[u8], ino: FileId) -> Result<u64> {
    conn.prepare_cached("INSERT INTO entries(parent, name, ino) VALUES(?1, ?2, ?3)")
        .ctx("preparing entry insert")?
        .execute(params![parent.0 as i64, name, ino.0 as i64])
        .ctx("inserting directory entry")?;
    Ok(conn.last_insert_rowid() as u64)
}

fn check_free(conn: &Connection, parent: FileId, name: &[u8]) -> Result<Inode> {
    check_name(name)?;
    let p = dir(conn, parent)?;
    if lookup(conn, parent, name)?.is_some() {
        return Err(StoreError::Exists(lossy(name)));
    }
    Ok(p)
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
    let p = check_free(conn, parent, name)?;
    let now = Timespec::now();
    let ino = insert_inode(
        conn,
        &NewInode {
            vol: p.vol,
            kind,
            attr,
            size: if kind == FileKind::Symlink {
                link.len() as u64
            } else {
                0
            },
            times: [now; 3],
            content: None,
            link,
            tree: None,
            verf,
            nlink: 1,
        },
    )?;
    add_entry(conn, parent, name, ino)?;
    touch_dir(conn, parent, now)?;
    get(conn, ino)
}

/// Gives file or symlink `ino` another name, `name` in `dir` (NFS LINK).
pub fn link(conn: &Connection, ino: FileId, dir: FileId, name: &[u8]) -> Result<Inode> {
    let d = check_free(conn, dir, name)?;
    let i = get(conn, ino)?;
    if i.attr.kind == FileKind::Dir {
        return Err(StoreError::IsDir(format!(
            "file id {ino}: directories have one name"
        )));
    }
    if i.vol != d.vol {
        return Err(StoreError::CrossVolume(format!("link of file id {ino}")));
    }
    if i.attr.nlink >= MAX_LINKS {
        return Err(StoreError::TooManyLinks(format!("file id {ino}")));
    }
    let now = Timespec::now();
    add_entry(conn, dir, name, ino)?;
    conn.prepare_cached("UPDATE inodes SET nlink=nlink+1 WHERE ino=?1")
        .ctx("preparing link count")?
        .execute([ino.0 as i64])
        .ctx("counting link")?;
    touch_ctime(conn, ino, now)?;
    // The link count is part of the file's entry in every directory that names it.
    invalidate_holders(conn, ino)?;
    touch_dir(conn, dir, now)?;
    get(conn, ino)
}

/// Deletes entry `entry` (naming `victim`): the inode goes with its last name.
fn unlink(conn: &Connection, entry: u64, victim: Inode, now: Timespec) -> Result<Removed> {
    conn.prepare_cached("DELETE FROM entries WHERE id=?1")
        .ctx("preparing entry delete")?
        .execute([entry as i64])
        .ctx("deleting directory entry")?;
    let ino = victim.attr.ino;
    let gone = victim.attr.nlink <= 1;
    if gone {
        conn.prepare_cached("DELETE FROM inodes WHERE ino=?1")
            .ctx("preparing inode delete")?
            .execute([ino.0 as i64])
            .ctx("deleting inode")?;
    } else {
        conn.prepare_cached("UPDATE inodes SET nlink=nlink-1 WHERE ino=?1")
            .ctx("preparing link count")?
            .execute([ino.0 as i64])
            .ctx("counting unlink")?;
        touch_ctime(conn, ino, now)?;
        invalidate_holders(conn, ino)?;
    }
    Ok(Removed {
        inode: victim,
        gone,
    })
}

/// Removes `name` from `parent`. `want_dir` says whether the caller expects a directory
/// (RMDIR) or not (REMOVE).
pub fn remove(conn: &Connection, parent: FileId, name: &[u8], want_dir: bool) -> Result<Removed> {
    check_name(name)?;
    dir(conn, parent)?;
    let n = lossy(name);
    let victim = lookup(conn, parent, name)?.ok_or_else(|| StoreError::NotFound(n.clone()))?;
    let is_dir = victim.inode.attr.kind == FileKind::Dir;
    if want_dir && !is_dir {
        return Err(StoreError::NotDir(n));
    }
    if !want_dir && is_dir {
        return Err(StoreError::IsDir(n));
    }
    if is_dir && has_children(conn, victim.inode.attr.ino)? {
        return Err(StoreError::NotEmpty(n));
    }
    let now = Timespec::now();
    let r = unlink(conn, victim.id, victim.inode, now)?;
    touch_dir(conn, parent, now)?;
    Ok(r)
}

pub fn has_children(conn: &Connection, dir: FileId) -> Result<bool> {
    conn.prepare_cached("SELECT 1 FROM entries WHERE parent=?1 LIMIT 1")
        .ctx("preparing child check")?
        .exists([dir.0 as i64])
        .ctx("checking for children")
}

/// Renames; an existing target is replaced when the kinds allow it. Returns what the
/// replaced name took away, if anything. Two names of one file: nothing happens (POSIX).
pub fn rename(
    conn: &Connection,
    from: FileId,
    from_name: &[u8],
    to: FileId,
    to_name: &[u8],
) -> Result<Option<Removed>> {
    check_name(from_name)?;
    check_name(to_name)?;
    let fp = dir(conn, from)?;
    let tp = dir(conn, to)?;
    if fp.vol != tp.vol {
        return Err(StoreError::CrossVolume(format!(
            "rename of {}",
            lossy(from_name)
        )));
    }
    let n = lossy(from_name);
    let src = lookup(conn, from, from_name)?.ok_or_else(|| StoreError::NotFound(n.clone()))?;
    let src_ino = src.inode.attr.ino;
    if src.inode.attr.kind == FileKind::Dir {
        // Refuse moving a directory into itself or below itself.
        let mut a = to;
        while a.0 != 0 {
            if a == src_ino {
                return Err(StoreError::Invalid(format!(
                    "cannot move directory {n} below itself"
                )));
            }
            a = parent(conn, a)?.map_or(FileId(0), |(p, _)| p);
        }
    }
    let now = Timespec::now();
    let mut replaced = None;
    if let Some(dst) = lookup(conn, to, to_name)? {
        if dst.inode.attr.ino == src_ino {
            return Ok(None);
        }
        let tn = lossy(to_name);
        match (
            src.inode.attr.kind == FileKind::Dir,
            dst.inode.attr.kind == FileKind::Dir,
        ) {
            (true, false) => return Err(StoreError::NotDir(tn)),
            (false, true) => return Err(StoreError::IsDir(tn)),
            (true, true) if has_children(conn, dst.inode.attr.ino)? => {
                return Err(StoreError::NotEmpty(tn))
            }
            _ => {}
        }
        replaced = Some(unlink(conn, dst.id, dst.inode, now)?);
    }
    conn.prepare_cached("UPDATE entries SET parent=?2, name=?3 WHERE id=?1")
        .ctx("preparing rename")?
        .execute(params![src.id as i64, to.0 as i64, to_name])
        .ctx("renaming entry")?;
    touch_ctime(conn, src_ino, now)?;
    // The new ctime is in the source's entry in its other directories too.
    if src.inode.attr.nlink > 1 {
        invalidate_holders(conn, src_ino)?;
    }
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
    invalidate_holders(conn, ino)?;
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
    invalidate_holders(conn, ino)
}

/// Records the directory object a snapshot encoded for `dir` (see the module docs).
pub fn set_tree(conn: &Connection, dir: FileId, tree: &ChunkId) -> Result<()> {
    conn.prepare_cached("UPDATE inodes SET tree=?2 WHERE ino=?1")
        .ctx("preparing tree cache")?
        .execute(params![dir.0 as i64, &tree.0[..]])
        .ctx("caching directory tree id")?;
    Ok(())
}

/// One page of a directory: entries with an id above `cookie`, in id order.
pub fn readdir(
    conn: &Connection,
    dir_ino: FileId,
    cookie: u64,
    limit: usize,
) -> Result<Vec<Entry>> {
    dir(conn, dir_ino)?;
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT e.id, e.name, {COLS} FROM entries e JOIN inodes i ON i.ino = e.ino
             WHERE e.parent=?1 AND e.id>?2 ORDER BY e.id LIMIT ?3"
        ))
        .ctx("preparing readdir")?;
    let rows = st
        .query_map(
            params![
                dir_ino.0 as i64,
                cookie.min(i64::MAX as u64) as i64,
                limit.min(i64::MAX as usize) as i64
            ],
            row_to_entry,
        )
        .ctx("listing directory")?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .ctx("listing directory")
}

/// All entries of a directory (for snapshots).
pub fn children(conn: &Connection, dir_ino: FileId) -> Result<Vec<Entry>> {
    readdir(conn, dir_ino, 0, usize::MAX >> 1)
}

/// The path of `ino` inside its volume (by first names), for messages; None when a
/// name on the way is gone.
pub fn path(conn: &Connection, ino: FileId) -> Result<Option<(VolumeId, String)>> {
    let vol = match get_opt(conn, ino)? {
        Some(i) => i.vol,
        None => return Ok(None),
    };
    let mut parts = Vec::new();
    let mut cur = ino;
    let mut seen = HashSet::new();
    while let Some((p, name)) = parent(conn, cur)? {
        if !seen.insert(cur) {
            return Ok(None);
        }
        parts.push(lossy(&name));
        cur = p;
    }
    parts.reverse();
    Ok(Some((vol, format!("/{}", parts.join("/")))))
}

/// Sum of file sizes (each file once, however many names), of one volume or all.
pub fn logical_bytes(conn: &Connection, vol: Option<VolumeId>) -> Result<u64> {
    conn.query_row(
        "SELECT coalesce(sum(size),0) FROM inodes WHERE kind=1 AND (?1 IS NULL OR vol=?1)",
        [vol.map(|v| v.0 as i64)],
        |r| r.get::<_, i64>(0),
    )
    .ctx("summing file sizes")
    .map(|n| n as u64)
}

/// Objects the live namespace refers to: file contents and cached directory objects.
pub fn referenced_objects(conn: &Connection) -> Result<(Vec<ChunkId>, Vec<ChunkId>)> {
    let mut st = conn
        .prepare("SELECT content, tree FROM inodes WHERE content IS NOT NULL OR tree IS NOT NULL")
        .ctx("reading referenced objects")?;
    let mut contents = Vec::new();
    let mut trees = Vec::new();
    let rows = st
        .query_map([], |r| Ok((opt_id(r, 0)?, opt_id(r, 1)?)))
        .ctx("reading referenced objects")?;
    for r in rows {
        let (c, t) = r.ctx("reading referenced objects")?;
        contents.extend(c);
        trees.extend(t);
    }
    Ok((contents, trees))
}

/// Every file with ingested content: (file, its volume, content).
pub fn files_with_content(conn: &Connection) -> Result<Vec<(FileId, VolumeId, ChunkId)>> {
    let mut st = conn
        .prepare("SELECT ino, vol, content FROM inodes WHERE kind = 1 AND content IS NOT NULL")
        .ctx("listing files")?;
    let rows = st
        .query_map([], |r| {
            Ok((
                FileId(r.get::<_, i64>(0)? as u64),
                VolumeId(r.get::<_, i64>(1)? as u64),
                opt_id(r, 2)?.ok_or_else(|| bad_column(2, "no content".into()))?,
            ))
        })
        .ctx("listing files")?;
    rows.collect::<rusqlite::Result<_>>().ctx("listing files")
}

// ---------------------------------------------------------------------- volumes

/// Creates volume `name` with an empty root directory (`root` is its owner and mode)
/// or, for a clone, the given root inode maker. Fails with `Exists` for a taken name.
pub fn create_volume(
    conn: &Connection,
    name: &str,
    make_root: impl FnOnce(VolumeId) -> Result<FileId>,
) -> Result<Volume> {
    if conn
        .query_row("SELECT 1 FROM volumes WHERE name=?1", [name], |_| Ok(()))
        .optional()
        .ctx("checking volume")?
        .is_some()
    {
        return Err(StoreError::Exists(format!("volume {name}")));
    }
    let now = Timespec::now();
    conn.execute(
        "INSERT INTO volumes(name, root, created) VALUES(?1, 0, ?2)",
        params![name, now.sec],
    )
    .ctx("inserting volume")?;
    let id = VolumeId(conn.last_insert_rowid() as u64);
    let root = make_root(id)?;
    conn.execute(
        "UPDATE volumes SET root=?2 WHERE id=?1",
        params![id.0 as i64, root.0 as i64],
    )
    .ctx("setting volume root")?;
    Ok(Volume {
        id,
        name: name.to_owned(),
        root,
    })
}

/// An empty root directory for a new volume.
pub fn new_root(conn: &Connection, vol: VolumeId, attr: NewAttr) -> Result<FileId> {
    let now = Timespec::now();
    insert_inode(
        conn,
        &NewInode {
            vol,
            kind: FileKind::Dir,
            attr,
            size: 0,
            times: [now; 3],
            content: None,
            link: b"",
            tree: None,
            verf: None,
            nlink: 1,
        },
    )
}

/// All volumes, by name.
pub fn volumes(conn: &Connection) -> Result<Vec<Volume>> {
    let mut st = conn
        .prepare_cached("SELECT id, name, root FROM volumes ORDER BY name")
        .ctx("listing volumes")?;
    let rows = st
        .query_map([], |r| {
            Ok(Volume {
                id: VolumeId(r.get::<_, i64>(0)? as u64),
                name: r.get(1)?,
                root: FileId(r.get::<_, i64>(2)? as u64),
            })
        })
        .ctx("listing volumes")?;
    rows.collect::<rusqlite::Result<_>>().ctx("listing volumes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("kura.db")).unwrap();
        (dir, db)
    }

    fn attr() -> NewAttr {
        NewAttr {
            mode: 0o755,
            uid: 1,
            gid: 1,
        }
    }

    fn vol(conn: &Connection) -> Volume {
        create_volume(conn, "v", |id| new_root(conn, id, attr())).unwrap()
    }

    fn mkdir(conn: &Connection, parent: FileId, name: &[u8]) -> FileId {
        create(conn, parent, name, FileKind::Dir, attr(), b"", None)
            .unwrap()
            .attr
            .ino
    }

    fn mkfile(conn: &Connection, parent: FileId, name: &[u8]) -> FileId {
        create(conn, parent, name, FileKind::File, attr(), b"", None)
            .unwrap()
            .attr
            .ino
    }

    fn cached(conn: &Connection, ino: FileId) -> bool {
        get(conn, ino).unwrap().tree.is_some()
    }

    /// The dirty chain: a change clears the cached object of its directory and every
    /// ancestor, stops at the first one already clear, and leaves siblings alone.
    #[test]
    fn invalidation_clears_the_chain_up_to_the_root_only() {
        let (_d, db) = db();
        let conn = db.lock();
        let v = vol(&conn);
        let a = mkdir(&conn, v.root, b"a");
        let b = mkdir(&conn, a, b"b");
        let s = mkdir(&conn, v.root, b"sibling");
        for d in [v.root, a, b, s] {
            set_tree(&conn, d, &ChunkId([9; 32])).unwrap();
        }
        mkfile(&conn, b, b"f");
        assert!(!cached(&conn, b) && !cached(&conn, a) && !cached(&conn, v.root));
        assert!(cached(&conn, s), "a sibling keeps its object");
    }

    /// A file's change reaches every directory naming it (hard links), and its last
    /// name takes the inode with it; earlier names only count down.
    #[test]
    fn links_count_and_clear_every_holder() {
        let (_d, db) = db();
        let conn = db.lock();
        let v = vol(&conn);
        let a = mkdir(&conn, v.root, b"a");
        let b = mkdir(&conn, v.root, b"b");
        let f = mkfile(&conn, a, b"f");
        assert_eq!(link(&conn, f, b, b"g").unwrap().attr.nlink, 2);
        for d in [v.root, a, b] {
            set_tree(&conn, d, &ChunkId([9; 32])).unwrap();
        }
        set_content(&conn, f, None, 10, None).unwrap();
        assert!(!cached(&conn, a) && !cached(&conn, b));
        let r = remove(&conn, a, b"f", false).unwrap();
        assert!(!r.gone);
        assert_eq!(get(&conn, f).unwrap().attr.nlink, 1);
        assert_eq!(parent(&conn, f).unwrap().unwrap().0, b);
        let r = remove(&conn, b, b"g", false).unwrap();
        assert!(r.gone);
        assert!(get_opt(&conn, f).unwrap().is_none());
    }

    /// READDIR pages continue after the cookie of the last entry returned, in entry
    /// order, however many names one file has, and a renamed entry keeps its cookie.
    #[test]
    fn cookies_are_entry_ids() {
        let (_d, db) = db();
        let conn = db.lock();
        let v = vol(&conn);
        let f = mkfile(&conn, v.root, b"f");
        link(&conn, f, v.root, b"g").unwrap();
        link(&conn, f, v.root, b"h").unwrap();
        let page = readdir(&conn, v.root, 0, 2).unwrap();
        assert_eq!(page.len(), 2);
        assert!(page[0].id < page[1].id);
        let rest = readdir(&conn, v.root, page[1].id, 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].name, b"h");
        rename(&conn, v.root, b"h", v.root, b"z").unwrap();
        assert_eq!(lookup(&conn, v.root, b"z").unwrap().unwrap().id, rest[0].id);
        assert_eq!(path(&conn, f).unwrap().unwrap().1, "/f");
    }

    /// A row the store did not write (a kind it does not know, an object id of the
    /// wrong length) is an error, never a silently different value.
    #[test]
    fn malformed_rows_are_errors() {
        let (_d, db) = db();
        let conn = db.lock();
        let v = vol(&conn);
        let f = mkfile(&conn, v.root, b"f");
        conn.execute(
            "UPDATE inodes SET content=x'0102' WHERE ino=?1",
            [f.0 as i64],
        )
        .unwrap();
        assert!(get(&conn, f).is_err());
        assert!(referenced_objects(&conn).is_err());
        conn.execute(
            "UPDATE inodes SET content=NULL, kind=7 WHERE ino=?1",
            [f.0 as i64],
        )
        .unwrap();
        assert!(get(&conn, f).is_err());
    }
}
