//! `kura import DIR VOLUME[/PATH]`: an existing tree (an old backup share, one dated
//! directory per generation) into a volume without going through NFS.
//!
//! The CLI walks DIR (walkdir, symlinks not followed) and streams it as a tar: modes,
//! owners, times to the nanosecond (PAX `mtime`/`atime`), symlinks, and hard links as
//! link entries (a file with several names is sent once). The daemon, or the CLI itself
//! on a store no daemon holds, unpacks that stream straight into the volume's namespace
//! and staging ([`unpack`]), as one `import` job claiming the volume. The files are then
//! ingested like any written over NFS. The stream is untrusted input: names are checked
//! one component at a time and never leave PATH.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};
use storage::{FileId, FileKind, NewAttr, SetAttr, Store, StoreError, Timespec};

/// What an import did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImportReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes: u64,
    /// Entries not imported, with why (device files, fifos, sockets, bad names).
    pub skipped: Vec<String>,
}

/// Bytes handed to the store per write.
const PIECE: usize = 1 << 20;

/// How much of a tree `kura import` will send: (entries, bytes of regular files, each
/// hard-linked file counted once).
pub fn measure(dir: &Path) -> Result<(u64, u64)> {
    let mut seen = std::collections::HashSet::new();
    let (mut n, mut bytes) = (0, 0);
    for e in walkdir::WalkDir::new(dir).follow_links(false) {
        let e = e.with_context(|| format!("walking {}", dir.display()))?;
        let m = e.metadata()?;
        n += 1;
        if m.is_file() && (m.nlink() < 2 || seen.insert((m.dev(), m.ino()))) {
            bytes += m.len();
        }
    }
    Ok((n, bytes))
}

/// Writes the tree at `dir` to `out` as an import stream; `progress` is told the bytes
/// of each file as it is read. Entries that cannot be read are skipped and listed.
pub fn write_tree(
    dir: &Path,
    out: impl Write,
    mut progress: impl FnMut(u64),
) -> Result<Vec<String>> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    b.follow_symlinks(false);
    let mut linked: HashMap<(u64, u64), std::path::PathBuf> = HashMap::new();
    let mut skipped = Vec::new();
    let walk = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name();
    for e in walk {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                skipped.push(format!("{err}"));
                continue;
            }
        };
        let rel = e.path().strip_prefix(dir).unwrap_or(e.path());
        let name = if rel.as_os_str().is_empty() {
            ".".to_owned()
        } else {
            match rel.to_str() {
                Some(s) => s.to_owned(),
                None => {
                    // tar's names are bytes; the crate takes paths, so pass it as one.
                    rel.to_string_lossy().into_owned()
                }
            }
        };
        let m = match e.metadata() {
            Ok(m) => m,
            Err(err) => {
                skipped.push(format!("{name}: {err}"));
                continue;
            }
        };
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
        let times = [
            ("mtime", format!("{}.{:09}", m.mtime(), m.mtime_nsec())),
            ("atime", format!("{}.{:09}", m.atime(), m.atime_nsec())),
        ];
        b.append_pax_extensions(times.iter().map(|(k, v)| (*k, v.as_bytes())))?;
        let ft = m.file_type();
        if ft.is_dir() {
            h.set_size(0);
            b.append_data(&mut h, rel_or_dot(rel), std::io::empty())?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(e.path())?;
            h.set_size(0);
            b.append_link(&mut h, rel, target)?;
        } else if ft.is_file() {
            if m.nlink() > 1 {
                if let Some(first) = linked.get(&(m.dev(), m.ino())) {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, rel, first)?;
                    continue;
                }
                linked.insert((m.dev(), m.ino()), rel.to_path_buf());
            }
            let f = match std::fs::File::open(e.path()) {
                Ok(f) => f,
                Err(err) => {
                    skipped.push(format!("{name}: {err}"));
                    continue;
                }
            };
            // The header's size is the size at the walk: a file that grows while it is
            // sent is cut there, one that shrinks is padded with zeros and listed.
            let len = m.len();
            let mut counted = Counting {
                inner: f.take(len),
                n: 0,
                len,
                zeros: 0,
            };
            b.append_data(&mut h, rel, &mut counted)?;
            if counted.n < len {
                skipped.push(format!(
                    "{name}: shrank while it was read (padded with zeros)"
                ));
            }
            progress(len);
        } else {
            skipped.push(format!("{name}: not a file, directory or symlink"));
        }
    }
    b.into_inner()?.flush()?;
    Ok(skipped)
}

fn rel_or_dot(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }
}

/// A file's bytes, `len` of them whatever happens to the file meanwhile: `n` counts
/// what the file gave, zeros make up the rest.
struct Counting<R> {
    inner: R,
    n: u64,
    len: u64,
    zeros: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let got = self.inner.read(buf)?;
        self.n += got as u64;
        if got > 0 {
            return Ok(got);
        }
        let left = self.len - (self.n + self.zeros).min(self.len);
        let k = (buf.len() as u64).min(left) as usize;
        buf[..k].fill(0);
        self.zeros += k as u64;
        Ok(k)
    }
}

/// Where an import lands: the volume and the directory inside it (`VOLUME[/PATH]`).
pub fn split_target(t: &str) -> (String, String) {
    match t.split_once('/') {
        Some((v, p)) => (v.to_owned(), p.trim_matches('/').to_owned()),
        None => (t.to_owned(), String::new()),
    }
}

/// The components of a stream entry's name, or why it is refused: absolute names and
/// `..` never leave the import's directory.
fn components(p: &Path) -> Result<Vec<Vec<u8>>, String> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n.as_bytes().to_vec()),
            Component::CurDir => {}
            Component::ParentDir => return Err("`..` in the name".into()),
            Component::RootDir | Component::Prefix(_) => return Err("an absolute name".into()),
        }
    }
    Ok(out)
}

fn pax_time(entry: &mut tar::Entry<impl Read>, key: &str) -> Option<Timespec> {
    let exts = entry.pax_extensions().ok()??;
    for e in exts.flatten() {
        if e.key().ok()? == key {
            let v = e.value().ok()?;
            let (s, f) = v.split_once('.').unwrap_or((v, "0"));
            let sec: i64 = s.parse().ok()?;
            let mut digits: String = f.chars().take(9).collect();
            while digits.len() < 9 {
                digits.push('0');
            }
            return Some(Timespec {
                sec,
                nsec: digits.parse().ok()?,
            });
        }
    }
    None
}

/// Unpacks an import stream into `vol` under `path` (created if missing). With
/// `replace`, what `path` held before is removed first, so that the directory is the
/// imported tree exactly (one generation per import). Existing names are replaced by
/// the stream's entries; directories are merged. `progress` is told file bytes as
/// they are stored.
pub fn unpack(
    store: &Store,
    vol: &str,
    path: &str,
    replace: bool,
    input: impl Read,
    mut progress: impl FnMut(u64),
) -> Result<ImportReport> {
    let volume = store.volume(vol)?;
    let root_attr = NewAttr {
        mode: 0o755,
        uid: 0,
        gid: 0,
    };
    // The import's directory: made as needed, a component at a time.
    let mut top = volume.root;
    for c in components(Path::new(path)).map_err(|e| anyhow!("import path {path:?}: {e}"))? {
        top = match store.lookup(top, &c) {
            Ok(a) if a.kind == FileKind::Dir => a.ino,
            Ok(_) => bail!(
                "import path {path:?}: {} is not a directory",
                String::from_utf8_lossy(&c)
            ),
            Err(StoreError::NotFound(_)) => store.mkdir(top, &c, root_attr)?.ino,
            Err(e) => return Err(e.into()),
        };
    }
    if replace {
        remove_children(store, top)?;
    }
    let mut report = ImportReport::default();
    // Directories made or met, by their components (the import's own is []).
    let mut dirs: HashMap<Vec<Vec<u8>>, FileId> = HashMap::new();
    dirs.insert(Vec::new(), top);
    // Files by name, for hard links that follow them.
    let mut files: HashMap<Vec<Vec<u8>>, FileId> = HashMap::new();
    // Directory times are set last: adding entries changes a directory's mtime.
    let mut dir_times: Vec<(FileId, SetAttr)> = Vec::new();
    let mut buf = vec![0u8; PIECE];
    let mut ar = tar::Archive::new(input);
    for entry in ar.entries().context("reading the import stream")? {
        let mut entry = entry.context("reading the import stream")?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let comps = match entry
            .path()
            .map_err(|e| e.to_string())
            .and_then(|p| components(&p))
        {
            Ok(c) => c,
            Err(why) => {
                report.skipped.push(format!("{shown}: {why}"));
                continue;
            }
        };
        let h = entry.header().clone();
        let kind = h.entry_type();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let attr = NewAttr {
            mode,
            uid: h.uid().unwrap_or(0) as u32,
            gid: h.gid().unwrap_or(0) as u32,
        };
        let mtime = pax_time(&mut entry, "mtime").unwrap_or(Timespec {
            sec: h.mtime().unwrap_or(0) as i64,
            nsec: 0,
        });
        let atime = pax_time(&mut entry, "atime").unwrap_or(mtime);
        let times = SetAttr {
            mtime: Some(mtime),
            atime: Some(atime),
            ..Default::default()
        };
        // Mode and owners, set again on a directory that already existed.
        let owner = SetAttr {
            mode: Some(mode),
            uid: Some(attr.uid),
            gid: Some(attr.gid),
            ..Default::default()
        };
        if comps.is_empty() {
            // The tree's own root: its attributes go to the import's directory.
            if kind.is_dir() {
                store.setattr(top, owner)?;
                dir_times.push((top, times));
            }
            continue;
        }
        let (name, parent_path) = comps.split_last().expect("not empty");
        let parent = match ensure_dir(store, &mut dirs, parent_path) {
            Ok(p) => p,
            Err(e) => {
                report.skipped.push(format!("{shown}: {e:#}"));
                continue;
            }
        };
        let r: Result<()> = (|| {
            match kind {
                tar::EntryType::Directory => {
                    let ino = match store.lookup(parent, name) {
                        Ok(a) if a.kind == FileKind::Dir => a.ino,
                        Ok(_) => {
                            store.remove(parent, name)?;
                            store.mkdir(parent, name, attr)?.ino
                        }
                        Err(StoreError::NotFound(_)) => store.mkdir(parent, name, attr)?.ino,
                        Err(e) => return Err(e.into()),
                    };
                    store.setattr(ino, owner)?;
                    dirs.insert(comps.clone(), ino);
                    dir_times.push((ino, times));
                    report.dirs += 1;
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    clear_name(store, parent, name)?;
                    let ino = store.create(parent, name, attr)?.ino;
                    let mut off = 0u64;
                    loop {
                        let n = read_full(&mut entry, &mut buf)?;
                        if n == 0 {
                            break;
                        }
                        store.write(ino, off, &buf[..n])?;
                        off += n as u64;
                        progress(n as u64);
                    }
                    store.setattr(ino, times)?;
                    files.insert(comps.clone(), ino);
                    report.files += 1;
                    report.bytes += off;
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| anyhow!("a symlink without a target"))?
                        .into_owned();
                    clear_name(store, parent, name)?;
                    let ino = store.symlink(parent, name, &target, attr)?.ino;
                    store.setattr(ino, times)?;
                    report.symlinks += 1;
                }
                tar::EntryType::Link => {
                    let target = entry
                        .link_name()
                        .ok()
                        .flatten()
                        .ok_or_else(|| anyhow!("a hard link without a target"))?;
                    let tc = components(&target).map_err(|e| anyhow!("link target: {e}"))?;
                    let ino = match files.get(&tc) {
                        Some(&i) => i,
                        None => bail!(
                            "link target {} is not a file of this import",
                            target.display()
                        ),
                    };
                    clear_name(store, parent, name)?;
                    store.link(ino, parent, name)?;
                    report.hardlinks += 1;
                }
                other => bail!("{other:?} entries are not stored (only files, directories, symlinks and hard links)"),
            }
            Ok(())
        })();
        if let Err(e) = r {
            // The store refusing a write (a full disk, a failed fsync) ends the import;
            // an entry kura cannot hold is skipped and listed.
            if let Some(se) = e.downcast_ref::<StoreError>() {
                if !matches!(
                    se,
                    StoreError::InvalidName { .. } | StoreError::NameTooLong { .. }
                ) {
                    return Err(e.context(format!("importing {shown}")));
                }
            }
            report.skipped.push(format!("{shown}: {e:#}"));
        }
    }
    for (ino, t) in dir_times.into_iter().rev() {
        store.setattr(ino, t)?;
    }
    store.sync_all()?;
    Ok(report)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The directory at `comps` under the import's own, made (mode 0755) when the stream
/// did not name it before its contents.
fn ensure_dir(
    store: &Store,
    dirs: &mut HashMap<Vec<Vec<u8>>, FileId>,
    comps: &[Vec<u8>],
) -> Result<FileId> {
    if let Some(&d) = dirs.get(comps) {
        return Ok(d);
    }
    let (name, up) = comps
        .split_last()
        .expect("the import's own is always known");
    let parent = ensure_dir(store, dirs, up)?;
    let ino = match store.lookup(parent, name) {
        Ok(a) if a.kind == FileKind::Dir => a.ino,
        Ok(_) => bail!("{} is not a directory", String::from_utf8_lossy(name)),
        Err(StoreError::NotFound(_)) => {
            store
                .mkdir(
                    parent,
                    name,
                    NewAttr {
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                    },
                )?
                .ino
        }
        Err(e) => return Err(e.into()),
    };
    dirs.insert(comps.to_vec(), ino);
    Ok(ino)
}

/// Makes `name` in `dir` free for a new entry: a file or symlink is unlinked, a
/// directory removed with everything in it.
fn clear_name(store: &Store, dir: FileId, name: &[u8]) -> Result<()> {
    match store.lookup(dir, name) {
        Ok(a) if a.kind == FileKind::Dir => {
            remove_children(store, a.ino)?;
            store.rmdir(dir, name)?;
        }
        Ok(_) => store.remove(dir, name)?,
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Removes everything inside directory `dir`.
fn remove_children(store: &Store, dir: FileId) -> Result<()> {
    loop {
        let page = store.readdir(dir, 0, 1024)?;
        let names: Vec<_> = page
            .into_iter()
            .filter(|e| e.name != b"." && e.name != b"..")
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        for e in names {
            clear_name(store, dir, &e.name)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_leave_the_import() {
        assert_eq!(
            components(Path::new("./a/b")).unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert!(components(Path::new("a/../../etc")).is_err());
        assert!(components(Path::new("/etc/passwd")).is_err());
        assert!(components(Path::new(".")).unwrap().is_empty());
    }

    #[test]
    fn a_file_that_shrinks_while_read_is_padded_to_its_size() {
        let mut c = Counting {
            inner: &b"abc"[..],
            n: 0,
            len: 5,
            zeros: 0,
        };
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc\0\0");
        assert_eq!(c.n, 3);
    }

    #[test]
    fn targets_split_into_volume_and_path() {
        assert_eq!(split_target("backup"), ("backup".into(), "".into()));
        assert_eq!(
            split_target("backup/2026/11/"),
            ("backup".into(), "2026/11".into())
        );
    }
}
