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
use storage::{FileId, FileKind, Store, TreeEntry};

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
    let mut report = Report::default();
    let mut linked: HashMap<FileId, String> = HashMap::new();
    let mut stack: Vec<(String, TreeEntry)> = vec![(top.to_owned(), root.clone())];
    while let Some((path, e)) = stack.pop() {
        match e.attr.kind {
            FileKind::Dir => {
                if !path.is_empty() {
                    let mut h = header(&e, tar::EntryType::Directory, 0);
                    b.append_data(&mut h, format!("{path}/"), std::io::empty())?;
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
                let mut h = header(&e, tar::EntryType::Symlink, 0);
                let target = String::from_utf8_lossy(&e.link).into_owned();
                b.append_link(&mut h, &path, target)?;
                report.symlinks += 1;
            }
            FileKind::File => {
                if !keep(&path) {
                    continue;
                }
                if e.attr.nlink > 1 {
                    if let Some(first) = linked.get(&e.attr.ino) {
                        let mut h = header(&e, tar::EntryType::Link, 0);
                        b.append_link(&mut h, &path, first)?;
                        report.hardlinks += 1;
                        continue;
                    }
                    linked.insert(e.attr.ino, path.clone());
                }
                let mut h = header(&e, tar::EntryType::Regular, e.attr.size);
                if let Some(why) = append_file(&mut b, &mut h, &path, store, &e)? {
                    report.damaged.push(format!("{path}: {why}"));
                }
                report.files += 1;
                report.bytes += e.attr.size;
            }
        }
    }
    let json = serde_json::to_vec(&report)?;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(json.len() as u64);
    b.append_data(&mut h, REPORT, &json[..])?;
    b.into_inner()?.flush()?;
    Ok(report)
}

/// Pieces a file is read in for the tar; two threads read alternate pieces ahead, so
/// that decompression and hash checks use both cores.
const WINDOW: u64 = 4 << 20;

/// Appends one file's data to the tar; returns why it could not be read whole, if so.
fn append_file(
    b: &mut tar::Builder<impl Write>,
    h: &mut tar::Header,
    path: &str,
    store: &Store,
    e: &TreeEntry,
) -> Result<Option<String>> {
    let size = e.attr.size;
    if size <= WINDOW {
        let (data, err) = read_window(store, e, 0, size);
        b.append_data(h, path, &data[..])?;
        return Ok(err);
    }
    std::thread::scope(|sc| {
        let mut rxs = Vec::new();
        for first in 0..2u64 {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, Option<String>)>(2);
            rxs.push(rx);
            sc.spawn(move || {
                let mut k = first;
                while k * WINDOW < size {
                    let off = k * WINDOW;
                    if tx
                        .send(read_window(store, e, off, WINDOW.min(size - off)))
                        .is_err()
                    {
                        return;
                    }
                    k += 2;
                }
            });
        }
        let mut reader = Windows {
            rxs,
            k: 0,
            cur: Vec::new(),
            pos: 0,
            error: None,
        };
        let r = b.append_data(h, path, &mut reader);
        let err = reader.error.take();
        // Dropping the receivers ends the readers (their sends fail).
        drop(reader);
        r?;
        Ok(err)
    })
}

/// Reads `[off, off + len)` of a snapshot file; a piece that cannot be read becomes
/// zeros (64 KiB at a time) and is noted, so that one damaged chunk does not end the
/// restore of the rest.
fn read_window(store: &Store, e: &TreeEntry, off: u64, len: u64) -> (Vec<u8>, Option<String>) {
    match store.snap_read(e, off, len as u32) {
        Ok((data, _)) if data.len() as u64 == len => (data, None),
        _ => {
            let mut out = Vec::with_capacity(len as usize);
            let mut err = None;
            let mut pos = off;
            while pos < off + len {
                let n = (64u64 << 10).min(off + len - pos);
                match store.snap_read(e, pos, n as u32) {
                    Ok((d, _)) if d.len() as u64 == n => out.extend_from_slice(&d),
                    Ok(_) => {
                        err.get_or_insert_with(|| "shorter than its size".to_owned());
                        out.resize(out.len() + n as usize, 0);
                    }
                    Err(x) => {
                        err.get_or_insert_with(|| x.to_string());
                        out.resize(out.len() + n as usize, 0);
                    }
                }
                pos += n;
            }
            (out, err)
        }
    }
}

/// The windows of a file in order, from the two reader threads in turn.
struct Windows {
    rxs: Vec<std::sync::mpsc::Receiver<(Vec<u8>, Option<String>)>>,
    k: usize,
    cur: Vec<u8>,
    pos: usize,
    error: Option<String>,
}

impl Read for Windows {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rxs[self.k % 2].recv() {
                Ok((data, err)) => {
                    if let Some(e) = err {
                        self.error.get_or_insert(e);
                    }
                    self.cur = data;
                    self.pos = 0;
                    self.k += 1;
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
