//! Restore: a snapshot (or a subtree of it) as a tar stream, and the extraction of that
//! stream into a directory.
//!
//! The daemon writes the tar ([`write_tar`], `GET .../tar`): files, directories,
//! symlinks and hard links (a file with several names is stored once and linked), with
//! modes, owners and times. Every chunk is hash-checked as it is read; a file that
//! cannot be read whole is written with zeros where its data could not be read, and
//! named in a last entry, [`REPORT`], that the extraction takes out of the stream.
//! The CLI extracts ([`extract`]) with no entry allowed outside the target directory
//! (absolute paths, `..`, links pointing out), or passes the tar on (`--tar -`).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use storage::{FileId, FileKind, Piece, Store, StreamCache, TreeEntry};

/// Reads and writes of restore data go in pieces of this size.
pub const IO_BUF: usize = 1 << 20;

/// Name of the report entry at the end of every restore tar.
pub const REPORT: &str = ".kura-restore-report.json";

/// What a restore stream held.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes: u64,
    /// Files that could not be read whole (path: why); their unreadable ranges are zeros.
    pub damaged: Vec<String>,
}

/// Walks to `sub` (a relative path, "" for the root) inside snapshot `vol@snap`.
pub fn resolve(store: &Store, vol: &str, snap: &str, sub: &str) -> Result<(TreeEntry, String)> {
    let mut e = store.snapshot_root(vol, snap)?;
    let mut path = String::new();
    for part in sub.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            bail!("path {sub:?}: '..' is not allowed");
        }
        e = store
            .snap_lookup(&e, part.as_bytes())
            .with_context(|| format!("{part:?} in {vol}@{snap}:/{path}"))?;
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(part);
    }
    Ok((e, path))
}

/// What a restore stream is made of: the entry, its name at the top of the archive
/// ("" for a directory, whose children go at the top; a file's own name otherwise),
/// and its logical bytes (for progress bars).
pub struct Source {
    pub entry: TreeEntry,
    pub top: String,
    pub total: u64,
}

/// The [`Source`] of `sub` inside snapshot `vol@snap`.
pub fn source(store: &Store, vol: &str, snap: &str, sub: &str) -> Result<Source> {
    let (entry, path) = resolve(store, vol, snap, sub)?;
    let top = match entry.attr.kind {
        FileKind::Dir => String::new(),
        _ => path.rsplit('/').next().unwrap_or("").to_owned(),
    };
    let total = total_bytes(store, &entry)?;
    Ok(Source { entry, top, total })
}

/// The logical bytes below an entry (files counted once per name), for progress bars.
pub fn total_bytes(store: &Store, e: &TreeEntry) -> Result<u64> {
    Ok(match e.attr.kind {
        FileKind::File => e.attr.size,
        FileKind::Symlink => 0,
        FileKind::Dir => {
            let mut t = 0;
            for c in store.snapshot_children(e)?.iter() {
                t += total_bytes(store, c)?;
            }
            t
        }
    })
}

fn header(e: &TreeEntry, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(e.attr.mode & 0o7777);
    h.set_uid(e.attr.uid as u64);
    h.set_gid(e.attr.gid as u64);
    h.set_mtime(e.attr.mtime.sec.max(0) as u64);
    h.set_size(size);
    h
}

/// Writes the tree at `root` (named `top` in the archive; "" puts its children at the
/// top) as a tar to `out`, ending with the [`REPORT`] entry.
pub fn write_tar(store: &Store, root: &TreeEntry, top: &str, out: impl Write) -> Result<Report> {
    write_tar_sample(store, root, top, out, &|_| true)
}

/// [`write_tar`] of only the regular files `keep` accepts (by path); the rest of the
/// tree (directories, symlinks, links) is written as usual.
pub fn write_tar_sample(
    store: &Store,
    root: &TreeEntry,
    top: &str,
    out: impl Write,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Report> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    let report = walk(store, root, top, keep, &mut TarOut(&mut b))?;
    let json = serde_json::to_vec(&report)?;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(json.len() as u64);
    b.append_data(&mut h, REPORT, &json[..])?;
    b.into_inner()?.flush()?;
    Ok(report)
}

/// Where a restore walk puts each entry of the tree: a tar ([`TarOut`]) or a directory
/// written directly ([`DirOut`]).
trait Out {
    fn dir(&mut self, path: &str, e: &TreeEntry) -> Result<()>;
    fn symlink(&mut self, path: &str, e: &TreeEntry) -> Result<()>;
    fn hardlink(&mut self, path: &str, first: &str, e: &TreeEntry) -> Result<()>;
    /// Writes a regular file; returns why it could not be read whole, if so.
    fn file(
        &mut self,
        path: &str,
        e: &TreeEntry,
        store: &Store,
        stream: &StreamCache,
    ) -> Result<Option<String>>;
}

/// Walks the tree at `root` (named `top`; "" puts its children at the top) in name
/// order, handing each entry to `out`; a file with several names is written once and
/// linked; only regular files `keep` accepts are written.
fn walk(
    store: &Store,
    root: &TreeEntry,
    top: &str,
    keep: &dyn Fn(&str) -> bool,
    out: &mut dyn Out,
) -> Result<Report> {
    let mut report = Report::default();
    let mut linked: HashMap<FileId, String> = HashMap::new();
    let stream = StreamCache::new(stream_cache());
    let mut stack: Vec<(String, TreeEntry)> = vec![(top.to_owned(), root.clone())];
    while let Some((path, e)) = stack.pop() {
        match e.attr.kind {
            FileKind::Dir => {
                if !path.is_empty() {
                    out.dir(&path, &e)?;
                    report.dirs += 1;
                }
                let children = store.snapshot_children(&e)?;
                // Reverse so that the stack pops them in name order.
                for c in children.iter().rev() {
                    let name = String::from_utf8_lossy(&c.name).into_owned();
                    let p = if path.is_empty() {
                        name
                    } else {
                        format!("{path}/{name}")
                    };
                    stack.push((p, c.clone()));
                }
            }
            FileKind::Symlink => {
                out.symlink(&path, &e)?;
                report.symlinks += 1;
            }
            FileKind::File => {
                if !keep(&path) {
                    continue;
                }
                if e.attr.nlink > 1 {
                    if let Some(first) = linked.get(&e.attr.ino) {
                        out.hardlink(&path, first, &e)?;
                        report.hardlinks += 1;
                        continue;
                    }
                    linked.insert(e.attr.ino, path.clone());
                }
                if let Some(why) = out.file(&path, &e, store, &stream)? {
                    report.damaged.push(format!("{path}: {why}"));
                }
                report.files += 1;
                report.bytes += e.attr.size;
            }
        }
    }
    Ok(report)
}

/// Restore entries as tar entries.
struct TarOut<'a, W: Write>(&'a mut tar::Builder<W>);

impl<W: Write> Out for TarOut<'_, W> {
    fn dir(&mut self, path: &str, e: &TreeEntry) -> Result<()> {
        let mut h = header(e, tar::EntryType::Directory, 0);
        self.0
            .append_data(&mut h, format!("{path}/"), std::io::empty())?;
        Ok(())
    }

    fn symlink(&mut self, path: &str, e: &TreeEntry) -> Result<()> {
        let mut h = header(e, tar::EntryType::Symlink, 0);
        let target = String::from_utf8_lossy(&e.link).into_owned();
        self.0.append_link(&mut h, path, target)?;
        Ok(())
    }

    fn hardlink(&mut self, path: &str, first: &str, e: &TreeEntry) -> Result<()> {
        let mut h = header(e, tar::EntryType::Link, 0);
        self.0.append_link(&mut h, path, first)?;
        Ok(())
    }

    fn file(
        &mut self,
        path: &str,
        e: &TreeEntry,
        store: &Store,
        stream: &StreamCache,
    ) -> Result<Option<String>> {
        let mut h = header(e, tar::EntryType::Regular, e.attr.size);
        let size = e.attr.size;
        if size <= WINDOW {
            let (pieces, err) = read_window(store, e, 0, size as usize, stream);
            let mut data = Vec::with_capacity(size as usize);
            for p in &pieces {
                data.extend_from_slice(p.as_ref());
            }
            self.0.append_data(&mut h, path, &data[..])?;
            return Ok(err);
        }
        std::thread::scope(|sc| {
            let mut rxs = Vec::new();
            let n = readers();
            for first in 0..n {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Window>(2);
                rxs.push(rx);
                sc.spawn(move || {
                    for (off, len) in windows(size, first, n) {
                        if tx.send(read_window(store, e, off, len, stream)).is_err() {
                            return;
                        }
                    }
                });
            }
            let mut reader = InOrder {
                rxs,
                k: 0,
                cur: Vec::new(),
                piece: 0,
                pos: 0,
                error: None,
            };
            let r = self.0.append_data(&mut h, path, &mut reader);
            let err = reader.error.take();
            // Dropping the receivers ends the readers (their sends fail).
            drop(reader);
            r?;
            Ok(err)
        })
    }
}

/// Pieces a file is read in; [`readers`] threads read alternate pieces, so that
/// decompression and hash checks use every core.
const WINDOW: u64 = 4 << 20;

/// Reader threads of a large file: three per core (while one waits for the disk or
/// for the file's write lock, the others decode; on two cores four ran 526 MB/s
/// against two's 451, and six took 3-11% less time than four in three A/B runs of
/// eight cold restores of night 3), at most twelve.
fn readers() -> u64 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
    (cores * 3).clamp(3, 12)
}

/// Decoded records a restore keeps (see [`StreamCache`]): a file whose chunks come
/// from several generations' bundles finds each bundle still there when it returns to
/// it, and the readers decode a bundle they both need once. Two windows' worth per
/// reader, and 16 MiB for the newer generations' bundles a file keeps returning to
/// (64 MiB with six readers). Night 3 of the dumps corpus needs 1.33 GB of distinct
/// bundles; with 32 MiB its restore decoded 1.57 GB, with 64 MiB 1.41 GB (user time
/// -7%, median of 10 alternating cold restores), with 128 MiB nothing twice, but
/// the extra fresh pages cost more system time than that saved.
fn stream_cache() -> usize {
    (16 << 20) + 2 * readers() as usize * WINDOW as usize
}

/// The (offset, length) of the windows of a file of `size` bytes that reader `first`
/// of `readers` reads.
fn windows(size: u64, first: u64, readers: u64) -> impl Iterator<Item = (u64, usize)> {
    (first..)
        .step_by(readers as usize)
        .map(|k| k * WINDOW)
        .take_while(move |off| *off < size)
        .map(move |off| (off, WINDOW.min(size - off) as usize))
}

/// A window of a file: slices of decoded records (no copy), and why part of it could
/// not be read, if so.
type Window = (Vec<Piece>, Option<String>);

/// Reads `len` bytes of a snapshot file at `off`; a piece that cannot be read becomes
/// zeros (64 KiB at a time) and is noted, so that one damaged chunk does not end the
/// restore of the rest.
fn read_window(store: &Store, e: &TreeEntry, off: u64, len: usize, stream: &StreamCache) -> Window {
    if let Ok(p) = store.snap_read_pieces(e, off, len, stream) {
        return (p, None);
    }
    let mut pieces = Vec::new();
    let mut err = None;
    let mut at = 0;
    while at < len {
        let n = (64 << 10).min(len - at);
        match store.snap_read_pieces(e, off + at as u64, n, stream) {
            Ok(p) => pieces.extend(p),
            Err(x) => {
                err.get_or_insert_with(|| x.to_string());
                pieces.push(Piece::Zeros(n));
            }
        }
        at += n;
    }
    (pieces, err)
}

/// The windows of a file in order, from the reader threads in turn.
struct InOrder {
    rxs: Vec<std::sync::mpsc::Receiver<Window>>,
    k: usize,
    cur: Vec<Piece>,
    piece: usize,
    pos: usize,
    error: Option<String>,
}

impl Read for InOrder {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(p) = self.cur.get(self.piece) {
                let p = p.as_ref();
                if self.pos < p.len() {
                    let n = buf.len().min(p.len() - self.pos);
                    buf[..n].copy_from_slice(&p[self.pos..self.pos + n]);
                    self.pos += n;
                    return Ok(n);
                }
                self.piece += 1;
                self.pos = 0;
                continue;
            }
            match self.rxs[self.k % self.rxs.len()].recv() {
                Ok((pieces, err)) => {
                    if let Some(e) = err {
                        self.error.get_or_insert(e);
                    }
                    self.cur = pieces;
                    self.piece = 0;
                    self.pos = 0;
                    self.k += 1;
                }
                Err(_) => return Ok(0),
            }
        }
    }
}

/// Is `p` a plain relative path (no root, no `..`)?
fn contained(p: &Path) -> bool {
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Writes a regular file entry (the caller checked the path) in large pieces, then
/// its mode, owner (as root) and modification time.
fn write_file(
    entry: &mut tar::Entry<'_, impl Read>,
    dir: &Path,
    rel: &Path,
    buf: &mut [u8],
    owners: bool,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    remove_inside(dir, rel);
    let mut f = std::fs::File::create(&p)?;
    loop {
        let n = entry.read(buf)?;
        if n == 0 {
            break;
        }
        f.write_all(&buf[..n])?;
    }
    let h = entry.header();
    if owners {
        std::os::unix::fs::fchown(
            &f,
            h.uid().ok().map(|u| u as u32),
            h.gid().ok().map(|g| g as u32),
        )?;
    }
    f.set_permissions(std::fs::Permissions::from_mode(h.mode()? & 0o7777))?;
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(h.mtime()?);
    f.set_times(std::fs::FileTimes::new().set_modified(mtime))?;
    Ok(())
}

/// Does `dir/rel` lead through a symlink (a directory component that is one)? Writing
/// there could land outside `dir`.
fn through_symlink(dir: &Path, rel: &Path) -> bool {
    let mut p = dir.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for c in parts.iter().take(parts.len().saturating_sub(1)) {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// Removes the non-directory at `dir/rel` if every directory on the way is a real
/// directory inside `dir` (never through a symlink, so never outside `dir`).
fn remove_inside(dir: &Path, rel: &Path) {
    let mut p = dir.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (i, c) in parts.iter().enumerate() {
        p.push(c);
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            return;
        };
        if i + 1 < parts.len() {
            if !m.is_dir() {
                return;
            }
        } else if !m.is_dir() {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// What an extraction did.
#[derive(Debug, Default)]
pub struct Extracted {
    pub report: Report,
    /// Entries refused because they would land outside the target directory.
    pub refused: Vec<String>,
}

/// Extracts a restore tar into `dir` (created if missing). Nothing is written outside
/// `dir`: absolute names, `..` and hard links pointing out are refused (and listed),
/// and a symlink in the tree is never followed by a later entry (the tar crate checks
/// each entry's parent). Owners are restored when running as root. `progress` is told
/// the bytes of each file written.
pub fn extract(input: impl Read, dir: &Path, mut progress: impl FnMut(u64)) -> Result<Extracted> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let mut ar = tar::Archive::new(input);
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    // SAFETY: geteuid has no preconditions.
    ar.set_preserve_ownerships(unsafe { libc::geteuid() } == 0);
    ar.set_overwrite(true);
    let mut out = Extracted::default();
    let mut report = None;
    let mut buf = vec![0u8; IO_BUF];
    // SAFETY: geteuid has no preconditions.
    let owners = unsafe { libc::geteuid() } == 0;
    // Directory times are set last: writing into a directory changes its mtime.
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    for entry in ar.entries().context("reading the restore stream")? {
        let mut entry = entry.context("reading the restore stream")?;
        let path = entry.path().context("an entry's name")?.into_owned();
        if path == Path::new(REPORT) {
            let mut s = String::new();
            entry.read_to_string(&mut s)?;
            report = Some(serde_json::from_str::<Report>(&s).context("the restore report")?);
            continue;
        }
        let name = path.display().to_string();
        let link_ok = match entry.header().entry_type() {
            tar::EntryType::Link => entry
                .link_name()
                .ok()
                .flatten()
                .is_some_and(|l| contained(&l)),
            _ => true,
        };
        if !contained(&path) || !link_ok || through_symlink(&dir, &path) {
            out.refused.push(name);
            continue;
        }
        let size = entry.header().size().unwrap_or(0);
        let is_dir = entry.header().entry_type().is_dir();
        if entry.header().entry_type() == tar::EntryType::Regular {
            write_file(&mut entry, &dir, &path, &mut buf, owners)
                .with_context(|| format!("writing {name}"))?;
            progress(size);
            continue;
        }
        if matches!(
            entry.header().entry_type(),
            tar::EntryType::Link | tar::EntryType::Symlink
        ) {
            // Restoring over an earlier restore: a link cannot replace a file in place.
            remove_inside(&dir, &path);
        }
        let mtime = entry.header().mtime().unwrap_or(0);
        match entry.unpack_in(&dir) {
            Ok(true) => {}
            Ok(false) => {
                out.refused.push(name);
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("writing {name}")),
        }
        if is_dir {
            dir_times.push((dir.join(&path), mtime));
        } else {
            progress(size);
        }
    }
    for (p, t) in dir_times.iter().rev() {
        let ft = std::fs::FileTimes::new()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(*t));
        if let Ok(f) = std::fs::File::open(p) {
            let _ = f.set_times(ft);
        }
    }
    out.report = report.context("the restore stream ended early (no report entry)")?;
    Ok(out)
}

/// Restores the tree of `src` straight into `dir` (created if missing), with the same
/// rules as [`extract`] and no tar between: the reader threads write each file's
/// windows at their offsets, slices of the decoded records handed to the kernel as
/// they are. For the CLI when it holds the store, and for the daemon's
/// `POST .../restore`. `progress` is told the bytes written, window by window; setting
/// `stop` ends the restore early with an error.
pub fn restore_to_dir(
    store: &Store,
    src: &Source,
    dir: &Path,
    progress: &(dyn Fn(u64) + Sync),
    stop: &AtomicBool,
) -> Result<Extracted> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let mut out = DirOut {
        dir,
        // SAFETY: geteuid has no preconditions.
        owners: unsafe { libc::geteuid() } == 0,
        dirs: Vec::new(),
        refused: Vec::new(),
        progress,
        stop,
    };
    let report = walk(store, &src.entry, &src.top, &|_| true, &mut out)?;
    // Directory modes and times last, deepest first: writing into a directory changes
    // its time, and a read-only mode would have stopped the writes.
    for (p, mode, atime, mtime) in out.dirs.iter().rev() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(*mode))
            .with_context(|| format!("setting the mode of {}", p.display()))?;
        if let Ok(f) = std::fs::File::open(p) {
            let _ = f.set_times(file_times(*atime, *mtime));
        }
    }
    Ok(Extracted {
        report,
        refused: out.refused,
    })
}

fn system_time(t: storage::Timespec) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::new(t.sec.max(0) as u64, t.nsec.min(999_999_999))
}

fn file_times(atime: storage::Timespec, mtime: storage::Timespec) -> std::fs::FileTimes {
    std::fs::FileTimes::new()
        .set_accessed(system_time(atime))
        .set_modified(system_time(mtime))
}

/// Restore entries written into a directory.
struct DirOut<'a> {
    dir: PathBuf,
    owners: bool,
    /// Directories made, with the mode and times they get at the end.
    dirs: Vec<(PathBuf, u32, storage::Timespec, storage::Timespec)>,
    refused: Vec<String>,
    progress: &'a (dyn Fn(u64) + Sync),
    stop: &'a AtomicBool,
}

impl DirOut<'_> {
    /// Where `path` goes, with its parent directory made; None (and the path noted as
    /// refused) when writing there could land outside the target directory.
    fn target(&mut self, path: &str) -> Result<Option<PathBuf>> {
        if self.stop.load(Ordering::Relaxed) {
            bail!("restore stopped before {path}");
        }
        let rel = Path::new(path);
        if !contained(rel) || through_symlink(&self.dir, rel) {
            self.refused.push(path.to_owned());
            return Ok(None);
        }
        let p = self.dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        Ok(Some(p))
    }
}

impl Out for DirOut<'_> {
    fn dir(&mut self, path: &str, e: &TreeEntry) -> Result<()> {
        let Some(p) = self.target(path)? else {
            return Ok(());
        };
        if std::fs::symlink_metadata(&p).is_ok_and(|m| !m.is_dir()) {
            remove_inside(&self.dir, Path::new(path));
        }
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        if self.owners {
            std::os::unix::fs::chown(&p, Some(e.attr.uid), Some(e.attr.gid))
                .with_context(|| format!("setting the owner of {}", p.display()))?;
        }
        self.dirs
            .push((p, e.attr.mode & 0o7777, e.attr.atime, e.attr.mtime));
        Ok(())
    }

    fn symlink(&mut self, path: &str, e: &TreeEntry) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let Some(p) = self.target(path)? else {
            return Ok(());
        };
        remove_inside(&self.dir, Path::new(path));
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&e.link), &p)
            .with_context(|| format!("writing {path}"))?;
        if self.owners {
            std::os::unix::fs::lchown(&p, Some(e.attr.uid), Some(e.attr.gid))
                .with_context(|| format!("setting the owner of {path}"))?;
        }
        Ok(())
    }

    fn hardlink(&mut self, path: &str, first: &str, _e: &TreeEntry) -> Result<()> {
        let Some(p) = self.target(path)? else {
            return Ok(());
        };
        let first = self.dir.join(first);
        if std::fs::symlink_metadata(&first).map_or(true, |m| !m.is_file()) {
            // Its first name was refused: nothing to link to.
            self.refused.push(path.to_owned());
            return Ok(());
        }
        remove_inside(&self.dir, Path::new(path));
        std::fs::hard_link(&first, &p).with_context(|| format!("writing {path}"))?;
        Ok(())
    }

    fn file(
        &mut self,
        path: &str,
        e: &TreeEntry,
        store: &Store,
        stream: &StreamCache,
    ) -> Result<Option<String>> {
        use std::os::unix::fs::PermissionsExt;
        let Some(p) = self.target(path)? else {
            return Ok(None);
        };
        remove_inside(&self.dir, Path::new(path));
        let f = std::fs::File::create(&p).with_context(|| format!("writing {path}"))?;
        let size = e.attr.size;
        f.set_len(size).with_context(|| format!("writing {path}"))?;
        let reserved = size > WINDOW && reserve(&f, size);
        let (progress, stop) = (self.progress, self.stop);
        let (f, failed) = (&f, &AtomicBool::new(false));
        // One reader writes at a time; the others wait asleep (the kernel's lock on the
        // file would have them spin on a core while the writer copies).
        let writing = &std::sync::Mutex::new(());
        let n = if size <= WINDOW { 1 } else { readers() };
        let read_and_write = |first: u64| -> std::io::Result<Option<String>> {
            let mut damage = None;
            for (off, len) in windows(size, first, n) {
                if stop.load(Ordering::Relaxed) {
                    return Err(std::io::Error::other("restore stopped"));
                }
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let (pieces, err) = read_window(store, e, off, len, stream);
                damage = damage.or(err);
                let written = {
                    let _turn = writing.lock().unwrap_or_else(|e| e.into_inner());
                    write_data_at(f, &pieces, off, reserved)
                };
                if let Err(x) = written {
                    failed.store(true, Ordering::Relaxed);
                    return Err(x);
                }
                progress(len as u64);
            }
            Ok(damage)
        };
        let results: Vec<std::io::Result<Option<String>>> = if size <= WINDOW {
            vec![read_and_write(0)]
        } else {
            std::thread::scope(|sc| {
                let hs: Vec<_> = (0..n)
                    .map(|first| sc.spawn(move || read_and_write(first)))
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("a restore reader panicked"))
                    .collect()
            })
        };
        let mut damage = None;
        for r in results {
            damage = damage.or(r.with_context(|| format!("writing {path}"))?);
        }
        if self.owners {
            std::os::unix::fs::fchown(f, Some(e.attr.uid), Some(e.attr.gid))
                .with_context(|| format!("setting the owner of {path}"))?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(e.attr.mode & 0o7777))
            .with_context(|| format!("setting the mode of {path}"))?;
        f.set_times(file_times(e.attr.atime, e.attr.mtime))
            .with_context(|| format!("setting the times of {path}"))?;
        Ok(damage)
    }
}

/// Writes `pieces` one after another at `off` in `f`, leaving runs of zeros of their
/// own (holes, and what could not be read) unwritten: the file was sized first, so they
/// read as zeros, and a sparse file comes back sparse. In a file whose blocks were
/// reserved first (`reserved`, see [`reserve`]) the whole blocks of such a run are
/// given back.
fn write_data_at(
    f: &std::fs::File,
    pieces: &[Piece],
    off: u64,
    reserved: bool,
) -> std::io::Result<()> {
    let (mut run, mut run_off, mut at) = (0, off, off);
    let mut zeros_from = None;
    for (k, p) in pieces.iter().enumerate() {
        let len = p.as_ref().len() as u64;
        if matches!(p, Piece::Zeros(_)) {
            write_pieces_at(f, &pieces[run..k], run_off)?;
            (run, run_off) = (k + 1, at + len);
            zeros_from.get_or_insert(at);
        } else if let Some(from) = zeros_from.take() {
            if reserved {
                give_back(f, from, at);
            }
        }
        at += len;
    }
    if let (Some(from), true) = (zeros_from, reserved) {
        give_back(f, from, at);
    }
    write_pieces_at(f, &pieces[run..], run_off)
}

/// Allocates a large file's blocks before its data is written, as one extent where the
/// file system can: ext4 then writes into blocks it has, instead of reserving delayed
/// allocations page by page (1 GiB written in 4 MiB calls by one or six threads:
/// 0.15-0.38 s of system time, against 0.25-0.41 s into a file only sized; restic
/// restores do the same). `false`, and the file left sparse, where it cannot: no
/// support, or no room for the whole apparent size (a sparse file may still fit).
fn reserve(f: &std::fs::File, size: u64) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a plain system call on an open descriptor.
    if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size as libc::off_t) } == 0 {
        return true;
    }
    // A failed allocation may have kept part of what it took.
    give_back(f, 0, size);
    false
}

/// Frees the whole blocks between `from` and `to` of a file whose blocks were reserved
/// (where it has no data); they read as zeros either way, so a failure only costs space.
fn give_back(f: &std::fs::File, from: u64, to: u64) {
    use std::os::unix::io::AsRawFd;
    const BLOCK: u64 = 4096;
    let (a, b) = (from.next_multiple_of(BLOCK), to / BLOCK * BLOCK);
    if b > a {
        // SAFETY: as in `reserve`; the size stays as it is.
        unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                a as libc::off_t,
                (b - a) as libc::off_t,
            )
        };
    }
}

/// Bytes handed to the kernel per write call, at most. The page cache sizes its folios
/// by the write (ext4 with large folios, Linux 6.18 here), and writes of 2 MiB or more
/// were 3-10x dearer in system time than the same bytes in 512 KiB calls on this
/// machine, erratically: 1 GiB written by six threads in 4 MiB calls took 0.5-3.3 s of
/// system time, in 2 MiB calls 0.9-1.7 s, in 1 MiB calls 0.3-0.5 s, in 512 KiB calls
/// 0.30-0.34 s (and 4 MiB calls from one thread 0.8-2.4 s). A restore of night 3 in
/// 4 MiB calls spent 1.3-2.3 s of system time where one in 512 KiB calls spent 0.5-0.7.
const WRITE_MAX: u64 = 512 << 10;

/// Writes `pieces` one after another at `off` in `f`, handing the kernel up to 1,024
/// of them and up to [`WRITE_MAX`] bytes per call (no copy into one buffer first).
fn write_pieces_at(f: &std::fs::File, pieces: &[Piece], mut off: u64) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let slices: Vec<&[u8]> = pieces
        .iter()
        .map(|p| p.as_ref())
        .filter(|s| !s.is_empty())
        .collect();
    // The first slice not yet written whole, and how much of it is.
    let (mut i, mut skip) = (0usize, 0usize);
    while i < slices.len() {
        // Up to WRITE_MAX bytes, ending where the file offset is a multiple of it (so
        // that each call fills whole folios).
        let mut room = (WRITE_MAX - off % WRITE_MAX) as usize;
        let mut iov: Vec<libc::iovec> = Vec::new();
        for (k, s) in slices[i..].iter().take(1024).enumerate() {
            let s = if k == 0 { &s[skip..] } else { s };
            let s = &s[..s.len().min(room)];
            iov.push(libc::iovec {
                iov_base: s.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            });
            room -= s.len();
            if room == 0 {
                break;
            }
        }
        // SAFETY: every iovec points into a slice of `pieces`, alive for the call; the
        // kernel only reads them; the count is the vector's length (at most 1,024).
        let n = unsafe {
            libc::pwritev(
                f.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                off as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut n = n as usize;
        off += n as u64;
        while n > 0 {
            let rest = slices[i].len() - skip;
            if n >= rest {
                n -= rest;
                i += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// Copies a restore tar to `out` without its report entry; returns the report.
pub fn pass_through(input: impl Read, out: impl Write) -> Result<Report> {
    let mut ar = tar::Archive::new(input);
    let mut b = tar::Builder::new(out);
    let mut report = None;
    for entry in ar.entries().context("reading the restore stream")? {
        let mut entry = entry.context("reading the restore stream")?;
        let path = entry.path()?.into_owned();
        if path == Path::new(REPORT) {
            let mut s = String::new();
            entry.read_to_string(&mut s)?;
            report = Some(serde_json::from_str::<Report>(&s)?);
            continue;
        }
        let mut h = entry.header().clone();
        match h.entry_type() {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()?
                    .context("a link without a target")?
                    .into_owned();
                b.append_link(&mut h, &path, &target)?;
            }
            _ => b.append_data(&mut h, &path, &mut entry)?,
        }
    }
    b.into_inner()?.flush()?;
    report.context("the restore stream ended early (no report entry)")
}

/// The writing half of an in-memory stream: each write is one piece.
pub struct ChanWriter(pub std::sync::mpsc::SyncSender<Vec<u8>>);

impl Write for ChanWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(data.to_vec())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "reader went away"))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The reading half: pieces as they come; the end when the writer is gone.
pub struct ChanReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl ChanReader {
    pub fn new(rx: std::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        ChanReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(v) => {
                    self.cur = v;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces of many lengths, crossing the per-call limit and its alignment, with
    /// runs of zeros left unwritten, land byte for byte at an unaligned offset.
    #[test]
    fn pieces_are_written_whole_across_call_limits() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("f")).unwrap();
        let off = 4097u64;
        let mut pieces = Vec::new();
        let mut want = Vec::new();
        let mut x = 1u32;
        for k in 0..3000usize {
            if k % 700 == 699 {
                pieces.push(Piece::Zeros(70_000));
                want.resize(want.len() + 70_000, 0);
                continue;
            }
            // Lengths from 1 byte to ~9 KiB, some over a whole WRITE_MAX.
            let len = if k % 997 == 5 {
                WRITE_MAX as usize + 333
            } else {
                1 + (k * 37) % 9000
            };
            let b: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (x >> 24) as u8
                })
                .collect();
            want.extend_from_slice(&b);
            pieces.push(Piece::Owned(b));
        }
        assert!(want.len() as u64 > 8 * WRITE_MAX);
        f.set_len(off + want.len() as u64).unwrap();
        write_data_at(&f, &pieces, off, false).unwrap();
        let got = std::fs::read(dir.path().join("f")).unwrap();
        assert!(got[..off as usize].iter().all(|b| *b == 0));
        assert!(got[off as usize..] == want[..], "restored bytes differ");
    }

    /// A reserved file gives back the blocks of its runs of zeros (a hole inside one
    /// window, and one across two) and keeps its data.
    #[test]
    fn a_reserved_file_gives_back_its_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = std::fs::File::create(&p).unwrap();
        let size = 24u64 << 20;
        f.set_len(size).unwrap();
        if !reserve(&f, size) {
            eprintln!("no fallocate here; skipped");
            return;
        }
        assert!(std::fs::metadata(&p).unwrap().blocks() * 512 >= size);
        let data = |n: usize| vec![Piece::Owned(vec![7u8; n])];
        // Zeros come in pieces of at most 1 MiB.
        let zeros = |mut n: usize| {
            let mut v = Vec::new();
            while n > 0 {
                v.push(Piece::Zeros(n.min(1 << 20)));
                n -= n.min(1 << 20);
            }
            v
        };
        // Window 1 (0..8 MiB): 5000 bytes, 6 MiB of zeros, the rest data.
        let w1 = [data(5000), zeros(6 << 20), data((2 << 20) - 5000)]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
        write_data_at(&f, &w1, 0, true).unwrap();
        // Windows 2 and 3: zeros from 12 MiB to 20 MiB, across their boundary.
        let w2 = [data(4 << 20), zeros(4 << 20)]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
        let w3 = [zeros(4 << 20), data(4 << 20)]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
        write_data_at(&f, &w2, 8 << 20, true).unwrap();
        write_data_at(&f, &w3, 16 << 20, true).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), size);
        let used = m.blocks() * 512;
        assert!(
            used <= (10 << 20) + (64 << 10),
            "{used} bytes still allocated"
        );
        let got = std::fs::read(&p).unwrap();
        let want: Vec<u8> = [w1, w2, w3]
            .iter()
            .flatten()
            .flat_map(|p| p.as_ref().iter().copied())
            .collect();
        assert!(got == want, "bytes differ");
    }
}
