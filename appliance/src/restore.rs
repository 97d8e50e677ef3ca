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
                let mut reader = SnapReader {
                    store,
                    entry: &e,
                    pos: 0,
                    error: None,
                };
                b.append_data(&mut h, &path, &mut reader)?;
                if let Some(why) = reader.error {
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

/// Reads a snapshot file for the tar; an unreadable piece becomes zeros and is noted,
/// so that one damaged file does not end the restore of the others.
struct SnapReader<'a> {
    store: &'a Store,
    entry: &'a TreeEntry,
    pos: u64,
    error: Option<String>,
}

impl Read for SnapReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self.entry.attr.size;
        if self.pos >= size {
            return Ok(0);
        }
        let want = buf.len().min(1 << 20).min((size - self.pos) as usize);
        match self.store.snap_read(self.entry, self.pos, want as u32) {
            Ok((data, _)) if !data.is_empty() => {
                buf[..data.len()].copy_from_slice(&data);
                self.pos += data.len() as u64;
                Ok(data.len())
            }
            Ok(_) => {
                // Shorter than its size says: zeros, noted.
                self.error
                    .get_or_insert_with(|| "shorter than its size".into());
                buf[..want].fill(0);
                self.pos += want as u64;
                Ok(want)
            }
            Err(e) => {
                // A damaged chunk: skip to the next 64 KiB and go on.
                self.error.get_or_insert_with(|| e.to_string());
                let n = want.min(64 << 10);
                buf[..n].fill(0);
                self.pos += n as u64;
                Ok(n)
            }
        }
    }
}

/// Is `p` a plain relative path (no root, no `..`)?
fn contained(p: &Path) -> bool {
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
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
