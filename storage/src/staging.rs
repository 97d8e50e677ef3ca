//! The landing zone: one sparse staging file per written file.
//!
//! Two modes, fixed when a file's staging starts:
//! - *full*: the file had no ingested content; the staging file is the whole file and
//!   its length is the file size (holes read as zeros).
//! - *overlay*: the file has ingested content (its *base*); the staging file holds only
//!   the ranges written since, which a journal (`<ino>.j`) records so that a restart
//!   knows which bytes of the sparse file are real. A truncate is a journal record too:
//!   base bytes at or past the smallest truncate point read as zeros.
//!
//! Durability: `write` puts bytes into the OS page cache (they survive a killed daemon);
//! `sync` fsyncs the staging file, its journal and, once, the directory, or for a small
//! file in full mode saves a copy of it in the database instead (see `SMALL_COPY_MAX`:
//! the caller's WAL fsync then covers data and metadata with one flush).
//!
//! A new file starts *in memory*: its staging file is a memfd, and every write also
//! replaces its copy in the database (a WAL append, which survives a killed daemon as
//! a staging file would), so that a small file never makes a file on disk. Creating
//! and deleting a staging file per small file was the largest cost of a small file
//! (see `MEMORY_BYTES`). It moves to a staging file on disk (*spills*) when it grows
//! past `SMALL_COPY_MAX` or when too many files are in memory already (and before an
//! ingest would make it an overlay: overlays are on disk). Concurrent
//! `sync` calls on one file share fsyncs: a caller returns as soon as an fsync that
//! started after its write has completed.
//!
//! Lock order (as in the crate docs): `StagedFile::inner` → `Staging::files` → (db, chunk
//! store); see `lib.rs` for the whole order.

use crate::durable::Latch;
use crate::error::{DbContext, Result, StoreError};
use crate::format::JOURNAL_TRUNCATE;
use crate::ids::{ChunkId, FileId};
use crate::namespace::Timespec;
use rusqlite::Connection;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Disjoint, coalesced byte ranges: start → end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet(BTreeMap<u64, u64>);

impl RangeSet {
    pub fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // Merge with a range that starts before and reaches `start`.
        if let Some((&s, &e)) = self.0.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.0.remove(&s);
            }
        }
        let overlapping: Vec<(u64, u64)> =
            self.0.range(start..=end).map(|(s, e)| (*s, *e)).collect();
        for (s, e) in overlapping {
            end = end.max(e);
            self.0.remove(&s);
        }
        self.0.insert(start, end);
    }

    /// Removes `[start, end)`.
    pub fn clip_out(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let hit: Vec<(u64, u64)> = self.overlaps(start, end);
        let mut restore = Vec::new();
        for (s, _) in &hit {
            // The stored range that holds `s`: the one starting at or before it.
            if let Some((&rs, &re)) = self.0.range(..=*s).next_back() {
                self.0.remove(&rs);
                if rs < start {
                    restore.push((rs, start));
                }
                if re > end {
                    restore.push((end, re));
                }
            }
        }
        for (a, b) in restore {
            self.insert(a, b);
        }
    }

    /// Drops everything at or past `at`.
    pub fn clip(&mut self, at: u64) {
        let tail: Vec<u64> = self.0.range(at..).map(|(s, _)| *s).collect();
        for s in tail {
            self.0.remove(&s);
        }
        if let Some((&s, e)) = self.0.range_mut(..at).next_back() {
            if *e > at {
                *e = at;
            }
            let _ = s;
        }
    }

    /// Ranges intersecting `[start, end)`, clipped to it.
    pub fn overlaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if let Some((_, &e)) = self.0.range(..start).next_back() {
            if e > start {
                out.push((start, e.min(end)));
            }
        }
        for (&s, &e) in self.0.range(start..end) {
            out.push((s, e.min(end)));
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(s, e)| (*s, *e))
    }
}

/// Fills a range from a base content list: (content, offset, buffer).
pub(crate) type BaseRead<'a> = &'a dyn Fn(ChunkId, u64, &mut [u8]) -> Result<()>;

/// What recovery needs of an inode: (content, size, mtime), or None if it is gone.
pub(crate) type InodeInfo<'a> =
    &'a dyn Fn(FileId) -> Result<Option<(Option<ChunkId>, u64, Timespec)>>;

/// What an ingest running on a file must know about writes that raced it.
#[derive(Default, Debug)]
pub(crate) struct IngestLog {
    pub writes: RangeSet,
    pub truncated: bool,
}

pub(crate) struct StagedState {
    pub file: Arc<File>,
    pub journal: Option<File>,
    /// Overlay mode: ingested content under the staged ranges, and its length limit.
    pub base: Option<ChunkId>,
    pub base_limit: u64,
    pub ranges: RangeSet,
    pub size: u64,
    pub mtime: Timespec,
    pub last_write: Instant,
    pub ingesting: Option<IngestLog>,
    pub dir_synced: bool,
    /// A durable copy of the whole file may be in `staged_copies` (see [`put_copy`]).
    pub copied: bool,
    /// Bytes written since writeback of this file was last started.
    pub unflushed: u64,
    /// Set under the lock when this staging was ingested away or removed: a writer
    /// that still holds the `Arc` must look the file up again.
    pub dropped: bool,
    /// The file as a snapshot's freeze saw it, until that snapshot has ingested it.
    pub seal: Option<Seal>,
    /// Set while `file` is a memfd (the file is staged in memory; its copy in the
    /// database is always current). Counts towards [`MEMORY_BYTES`] until dropped.
    pub mem: Option<MemSlot>,
}

/// What a file staged in memory holds of [`MEMORY_BYTES`]: its size in whole pages, at
/// least one. Given back when dropped (the file spilled to disk, or its staging ended).
pub(crate) struct MemSlot {
    total: Arc<AtomicU64>,
    charged: u64,
}

impl MemSlot {
    /// Takes `bytes` (in pages) of the budget `total`, or None when it has no room.
    fn take(total: &Arc<AtomicU64>, bytes: u64) -> Option<MemSlot> {
        let mut slot = MemSlot {
            total: total.clone(),
            charged: 0,
        };
        slot.resize(bytes).then_some(slot)
    }

    /// Charges the file at `bytes` now; false (and nothing changed) past the budget.
    fn resize(&mut self, bytes: u64) -> bool {
        let want = bytes.max(1).div_ceil(4096) * 4096;
        if want > self.charged {
            let more = want - self.charged;
            let before = self.total.fetch_add(more, Ordering::AcqRel);
            if before + more > MEMORY_BYTES {
                self.total.fetch_sub(more, Ordering::AcqRel);
                return false;
            }
        } else {
            self.total.fetch_sub(self.charged - want, Ordering::AcqRel);
        }
        self.charged = want;
        true
    }
}

impl Drop for MemSlot {
    fn drop(&mut self) {
        self.total.fetch_sub(self.charged, Ordering::AcqRel);
    }
}

/// Files staged in memory hold at most this much at once (counted in pages); more go
/// to staging files on disk. 4 KiB files: 16,384 of them, a few seconds of a fast
/// small-file writer (a file is ingested once it has been quiet for
/// `ingest_idle_secs`).
pub const MEMORY_BYTES: u64 = 64 << 20;

/// A memfd for a file staged in memory: pages of the daemon's own, gone with it (which
/// is why such a file's bytes are also in the database).
fn memfd() -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: a valid C string; the returned descriptor is owned by the File.
    let fd = unsafe { libc::memfd_create(c"kura-staged".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A staged file frozen for a snapshot: its layout at the freeze and, in a side file at
/// the same offsets, the bytes that later writes and truncates changed. Appends past
/// the sealed size cost nothing; an overwrite below it first copies the bytes it
/// replaces (once per byte). The live file goes on being written all the while.
pub(crate) struct Seal {
    pub view: ReadView,
    pub size: u64,
    /// Ranges of `[0, size)` whose sealed bytes are in `side`.
    saved: RangeSet,
    /// Made at the first byte saved, at `side_path`.
    side: Option<Arc<File>>,
    side_path: PathBuf,
}

impl Seal {
    /// Ranges of `[s, e)` whose sealed bytes live in the staging file (not the base).
    fn file_ranges(&self, s: u64, e: u64) -> Vec<(u64, u64)> {
        match self.view.base {
            None => vec![(s, e)],
            Some(_) => self
                .view
                .ranges
                .iter()
                .filter_map(|&(a, b)| {
                    let (a, b) = (a.max(s), b.min(e));
                    (a < b).then_some((a, b))
                })
                .collect(),
        }
    }

    /// Copies the sealed bytes of `[s, e)` that still live in the staging file to the
    /// side file, before a write or truncate changes them.
    fn preserve(&mut self, s: u64, e: u64) -> Result<()> {
        let e = e.min(self.size);
        if s >= e {
            return Ok(());
        }
        for (a, b) in self.file_ranges(s, e) {
            let mut todo = RangeSet::default();
            todo.insert(a, b);
            for (x, y) in self.saved.overlaps(a, b) {
                todo.clip_out(x, y);
            }
            for (x, y) in todo.iter() {
                if self.side.is_none() {
                    let f = create_rw(&self.side_path, "create seal file")?;
                    self.side = Some(Arc::new(f));
                }
                let (side, path) = (self.side.as_ref().unwrap(), &self.side_path);
                let mut off = x;
                let mut buf = vec![0u8; ((y - x) as usize).min(1 << 20)];
                while off < y {
                    let n = ((y - off) as usize).min(buf.len());
                    read_exact_or_zero(&self.view.file, &mut buf[..n], off)
                        .map_err(|e| StoreError::io("read sealed bytes", path, e))?;
                    side.write_all_at(&buf[..n], off)
                        .map_err(|e| StoreError::io("save sealed bytes", path, e))?;
                    off += n as u64;
                }
                self.saved.insert(x, y);
            }
        }
        Ok(())
    }

    /// What a read of `[off, end)` of the sealed file needs, taken under the file's
    /// lock; [`SealedRead::read`] then runs without it.
    pub fn plan(&self, off: u64, end: u64) -> SealedRead {
        SealedRead {
            view: ReadView {
                file: self.view.file.clone(),
                base: self.view.base,
                base_limit: self.view.base_limit,
                ranges: self
                    .view
                    .ranges
                    .iter()
                    .filter(|&&(s, e)| s < end && e > off)
                    .copied()
                    .collect(),
            },
            saved: self.saved.overlaps(off, end),
            side: self.side.clone(),
        }
    }

    /// The ingested content under the sealed file (overlay mode).
    pub fn base(&self) -> Option<ChunkId> {
        self.view.base
    }

    /// The sealed layout: (base, base limit, staged ranges, staging file).
    pub fn layout(&self) -> (Option<ChunkId>, u64, RangeSet, Arc<File>) {
        let mut r = RangeSet::default();
        for &(s, e) in &self.view.ranges {
            r.insert(s, e);
        }
        (
            self.view.base,
            self.view.base_limit,
            r,
            self.view.file.clone(),
        )
    }
}

/// A planned read of a sealed file (see [`Seal::plan`]).
pub(crate) struct SealedRead {
    view: ReadView,
    saved: Vec<(u64, u64)>,
    side: Option<Arc<File>>,
}

impl SealedRead {
    pub fn read(
        &self,
        st: &StagedFile,
        off: u64,
        buf: &mut [u8],
        base_read: BaseRead<'_>,
    ) -> Result<()> {
        st.read_view(&self.view, off, buf, base_read)?;
        if let Some(side) = &self.side {
            for &(s, e) in &self.saved {
                let dst = &mut buf[(s - off) as usize..(e - off) as usize];
                read_exact_or_zero(side, dst, s)
                    .map_err(|e| StoreError::io("read seal file", &st.path, e))?;
            }
        }
        Ok(())
    }
}

impl Drop for Seal {
    fn drop(&mut self) {
        if self.side.take().is_some() {
            let _ = std::fs::remove_file(&self.side_path);
        }
    }
}

impl StagedState {
    /// Small (at most [`SMALL_COPY_MAX`]) and in full mode (no base, no journal): made
    /// durable by a copy, ingested in batches.
    pub(crate) fn is_small(&self) -> bool {
        self.journal.is_none() && self.base.is_none() && self.size <= SMALL_COPY_MAX
    }

    /// The whole file, when it is small (at most [`SMALL_COPY_MAX`]) and in full mode
    /// (no base, no journal): what a durable copy holds and what a batched ingest reads.
    pub(crate) fn small_bytes(&self, path: &Path) -> Option<Result<Vec<u8>>> {
        if !self.is_small() {
            return None;
        }
        let mut buf = vec![0u8; self.size as usize];
        Some(
            read_exact_or_zero(&self.file, &mut buf, 0)
                .map(|_| buf)
                .map_err(|e| StoreError::io("read staging file", path, e)),
        )
    }
}

pub(crate) struct StagedFile {
    pub ino: FileId,
    pub path: PathBuf,
    pub inner: Mutex<StagedState>,
    /// Group commit: (writes covered by the last completed fsync, fsync in progress).
    sync_state: Mutex<(u64, bool)>,
    sync_cv: Condvar,
    seq: std::sync::atomic::AtomicU64,
}

pub(crate) struct Staging {
    pub dir: PathBuf,
    pub files: Mutex<HashMap<FileId, Arc<StagedFile>>>,
    /// Largest file the staging filesystem holds (probed at open).
    pub max_file_size: u64,
    /// Bytes staged in memory now (at most [`MEMORY_BYTES`]).
    mem_bytes: Arc<AtomicU64>,
    /// Drops so far, counted per slot of file ids (see [`Staging::lookup`]); changed
    /// under `files`' lock.
    drops: Box<[AtomicU64; DROP_SLOTS]>,
}

/// Slots of [`Staging::drops`]: a drop of another file in the same slot only costs a
/// write that starts staging one more look at its inode.
const DROP_SLOTS: usize = 256;

/// What [`Staging::lookup`] found: the file's staging, or the drop count a
/// [`Staging::start`] of it must still see.
pub(crate) enum Lookup {
    Staged(Arc<StagedFile>),
    Unstaged(u64),
}

/// Finds the largest size a file on the filesystem of `dir` may have (ext4 with 4 KiB
/// blocks: 16 TiB; tmpfs and xfs: far more), by growing a sparse probe file, to 1 MiB.
/// Capped at 2^62 (the store's offsets). Allocates nothing.
fn probe_max_file_size(dir: &Path) -> u64 {
    const CAP: u64 = 1 << 62;
    let path = dir.join(".size-probe");
    let Ok(f) = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
    else {
        return CAP;
    };
    let fits = |n: u64| f.set_len(n).is_ok();
    let r = if fits(CAP) {
        CAP
    } else {
        let (mut lo, mut hi) = (1u64 << 20, CAP);
        if !fits(lo) {
            lo = 0;
        }
        while hi - lo > 1 << 20 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    };
    drop(f);
    let _ = std::fs::remove_file(&path);
    r
}

/// Bytes a staged file takes in before kura asks the kernel to start writing it back.
/// Without it the kernel waits for gigabytes of dirty pages, so a backup stream's data
/// all reaches the disk inside the client's COMMIT (network, then disk); started early,
/// the disk works while the data still arrives and COMMIT finds little left.
const EARLY_WRITEBACK: u64 = 8 << 20;

/// Allocates `[off, off+len)` of `file` without changing its size or contents
/// (fallocate with KEEP_SIZE). Filesystems without fallocate are let through.
fn allocate(file: &File, off: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor; KEEP_SIZE leaves size and bytes as they are.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
        _ => Err(e),
    }
}

/// Starts writeback of a file's dirty pages without waiting for it. Changes nothing
/// about durability (only fsync does); a failure here resurfaces at that fsync.
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; offset 0 and length 0 mean the whole file.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "sync_file_range");
    }
}

/// Creates `path` empty for reading and writing (a staging file, a seal's side file);
/// `what` names it in the error.
fn create_rw(path: &Path, what: &'static str) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io(what, path, e))
}

fn journal_path(p: &Path) -> PathBuf {
    p.with_extension("j")
}

/// Appends one journal record (`len == JOURNAL_TRUNCATE`: truncated to `off`).
fn journal_append(j: &mut File, staging: &Path, off: u64, len: u64) -> Result<()> {
    let mut rec = [0u8; 16];
    rec[..8].copy_from_slice(&off.to_le_bytes());
    rec[8..].copy_from_slice(&len.to_le_bytes());
    j.write_all(&rec)
        .map_err(|e| StoreError::io("append staging journal", journal_path(staging), e))
}

/// What a read of `[off, end)` of a staged file needs, taken under its lock so that
/// the reads themselves run without it: a write that comes later is not seen, as if it
/// had come after the read.
pub struct ReadView {
    file: Arc<File>,
    base: Option<ChunkId>,
    base_limit: u64,
    /// Staged ranges overlapping the read.
    ranges: Vec<(u64, u64)>,
}

impl StagedState {
    /// The state a read of `[off, end)` needs (see [`ReadView`]).
    pub fn view(&self, off: u64, end: u64) -> ReadView {
        ReadView {
            file: self.file.clone(),
            base: self.base,
            base_limit: self.base_limit,
            ranges: if self.base.is_some() {
                self.ranges.overlaps(off, end)
            } else {
                Vec::new()
            },
        }
    }

    /// A staging state over `file` for unit tests of what reads it.
    #[cfg(test)]
    pub(crate) fn for_test(
        file: File,
        base: Option<ChunkId>,
        base_limit: u64,
        ranges: RangeSet,
    ) -> StagedState {
        StagedState {
            file: Arc::new(file),
            journal: None,
            base,
            base_limit,
            ranges,
            size: 0,
            mtime: Timespec::default(),
            last_write: Instant::now(),
            ingesting: None,
            dir_synced: true,
            copied: false,
            unflushed: 0,
            dropped: false,
            seal: None,
            mem: None,
        }
    }

    /// Seals the file as it is now (the snapshot's freeze); `side` is where bytes that
    /// later change are kept.
    pub(crate) fn seal(&mut self, side: PathBuf) {
        let mut view = self.view(0, self.size);
        if view.base.is_some() {
            view.ranges = self.ranges.iter().collect();
        }
        self.seal = Some(Seal {
            view,
            size: self.size,
            saved: RangeSet::default(),
            side: None,
            side_path: side,
        });
    }

    /// Before `[s, e)` of the live file changes: keeps the sealed bytes there.
    /// (Every write comes here: without a seal it is one check.)
    fn preserve(&mut self, s: u64, e: u64) -> Result<()> {
        match self.seal.as_mut() {
            Some(seal) if Arc::ptr_eq(&seal.view.file, &self.file) => seal.preserve(s, e),
            _ => Ok(()),
        }
    }
}

impl StagedFile {
    fn new(ino: FileId, path: PathBuf, inner: StagedState) -> Arc<StagedFile> {
        Arc::new(StagedFile {
            ino,
            path,
            inner: Mutex::new(inner),
            sync_state: Mutex::new((0, false)),
            sync_cv: Condvar::new(),
            seq: Default::default(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, StagedState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails with `Raced` when the staging was dropped meanwhile (look up again).
    /// `reserve`: space is short, so allocate the blocks first; then a full disk fails
    /// the write before any byte of it lands. A write that fails midway is cut back
    /// off the end of the file, so no part of a refused write stays. A file staged in
    /// memory hands its new bytes to `copy` too (or spills to disk when it outgrows it).
    pub fn write(&self, off: u64, data: &[u8], reserve: bool, copy: CopySink<'_>) -> Result<()> {
        let mut g = self.lock();
        if g.dropped {
            return Err(StoreError::Raced(self.ino));
        }
        let end = off
            .checked_add(data.len() as u64)
            .ok_or_else(|| StoreError::TooBig("write past the largest file offset".into()))?;
        g.preserve(off, end)?;
        let new_size = end.max(g.size);
        if let Some(slot) = g.mem.as_mut() {
            if new_size > SMALL_COPY_MAX || !slot.resize(new_size) {
                self.spill(&mut g)?;
            }
        }
        if g.mem.is_some() {
            let old_size = g.size;
            self.in_memory(
                &mut g,
                end.max(old_size),
                copy,
                |bytes| bytes[off as usize..end as usize].copy_from_slice(data),
                |f| f.write_all_at(data, off),
            )?;
        } else {
            if reserve {
                allocate(&g.file, off, data.len() as u64)
                    .map_err(|e| StoreError::io("allocate staging file", &self.path, e))?;
            }
            if let Err(e) = g.file.write_all_at(data, off) {
                // Full mode: the staging file is the file, so what the failed write
                // appended is cut off again. Overlay mode: bytes outside the journaled
                // ranges are never read, so a failed write is invisible there as it is.
                if g.base.is_none() && end > g.size {
                    let _ = g.file.set_len(g.size);
                }
                return Err(StoreError::io("write staging file", &self.path, e));
            }
            if let Some(j) = g.journal.as_mut() {
                journal_append(j, &self.path, off, data.len() as u64)?;
                g.ranges.insert(off, end);
            }
            g.unflushed += data.len() as u64;
            if g.unflushed >= EARLY_WRITEBACK {
                g.unflushed = 0;
                start_writeback(&g.file);
            }
        }
        g.size = g.size.max(end);
        g.mtime = Timespec::now();
        g.last_write = Instant::now();
        if let Some(l) = g.ingesting.as_mut() {
            l.writes.insert(off, end);
        }
        self.seq.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Changes a file staged in memory to `size` bytes, edited by `edit`: the new bytes
    /// go to the database first (`copy`), so that a refused copy (a full disk) leaves
    /// the file as it was; then `apply` makes the same change to the memfd, in place
    /// (reads of the memfd run without the file's lock and must never see it half
    /// rewritten). Should the memfd refuse it, file and copy go back as they were.
    fn in_memory(
        &self,
        g: &mut StagedState,
        size: u64,
        copy: CopySink<'_>,
        edit: impl FnOnce(&mut [u8]),
        apply: impl FnOnce(&File) -> std::io::Result<()>,
    ) -> Result<()> {
        let keep = g.size.min(size) as usize;
        let mut old = vec![0u8; g.size as usize];
        read_exact_or_zero(&g.file, &mut old, 0)
            .map_err(|e| StoreError::io("read staged file", &self.path, e))?;
        let mut bytes = vec![0u8; size as usize];
        bytes[..keep].copy_from_slice(&old[..keep]);
        edit(&mut bytes);
        copy(self.ino, Some(&bytes))?;
        g.copied = true;
        if let Err(e) = apply(&g.file) {
            let _ = g
                .file
                .write_all_at(&old, 0)
                .and_then(|_| g.file.set_len(old.len() as u64));
            let _ = copy(self.ino, Some(&old));
            return Err(StoreError::io("write staged file in memory", &self.path, e));
        }
        Ok(())
    }

    /// Moves a file staged in memory to its staging file on disk (same offsets, same
    /// size). Its copy in the database stays as an older durable state until the
    /// staging file is fsynced (see [`StagedFile::sync`]).
    fn spill(&self, g: &mut StagedState) -> Result<()> {
        let file = create_rw(&self.path, "create staging file")?;
        let mut bytes = vec![0u8; g.size as usize];
        read_exact_or_zero(&g.file, &mut bytes, 0)
            .map_err(|e| StoreError::io("read staged file", &self.path, e))?;
        file.write_all_at(&bytes, 0)
            .and_then(|_| file.set_len(g.size))
            .map_err(|e| StoreError::io("write staging file", &self.path, e))?;
        g.file = Arc::new(file);
        g.dir_synced = false;
        g.mem = None;
        Ok(())
    }

    /// Before an ingest commits a file that writes raced: a file staged in memory
    /// spills, so that the bytes that stay staged are in a staging file when the
    /// ingest's commit removes the copy. (Small files are ingested in batches, which
    /// leave a raced file staged as it is; this keeps the rule for any other way.)
    pub(crate) fn spill_for_rebase(&self, g: &mut StagedState) -> Result<()> {
        if g.mem.is_some() {
            self.spill(g)?;
        }
        Ok(())
    }

    pub fn truncate(&self, size: u64, copy: CopySink<'_>) -> Result<()> {
        let mut g = self.lock();
        if g.dropped {
            return Err(StoreError::Raced(self.ino));
        }
        g.preserve(size, u64::MAX)?;
        if let Some(slot) = g.mem.as_mut() {
            if size > SMALL_COPY_MAX || !slot.resize(size) {
                self.spill(&mut g)?;
            }
        }
        if g.mem.is_some() {
            self.in_memory(&mut g, size, copy, |_| {}, |f| f.set_len(size))?;
        } else {
            if let Some(j) = g.journal.as_mut() {
                journal_append(j, &self.path, size, JOURNAL_TRUNCATE)?;
                g.ranges.clip(size);
                g.base_limit = g.base_limit.min(size);
            }
            g.file
                .set_len(size)
                .map_err(|e| StoreError::io("truncate staging file", &self.path, e))?;
        }
        g.size = size;
        g.mtime = Timespec::now();
        g.last_write = Instant::now();
        if let Some(l) = g.ingesting.as_mut() {
            l.truncated = true;
        }
        self.seq.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Reads `[off, off+buf.len())` of the merged view into `buf` (already clipped to
    /// the size by the caller), as of `view` (taken under the file's lock, which is not
    /// held for the I/O). `base_read` fills a range from the base content.
    pub fn read_view(
        &self,
        view: &ReadView,
        off: u64,
        buf: &mut [u8],
        base_read: BaseRead<'_>,
    ) -> Result<()> {
        let end = off + buf.len() as u64;
        let pread = |s: u64, e: u64, buf: &mut [u8]| -> Result<()> {
            let dst = &mut buf[(s - off) as usize..(e - off) as usize];
            read_exact_or_zero(&view.file, dst, s)
                .map_err(|e| StoreError::io("read staging file", &self.path, e))
        };
        match view.base {
            None => pread(off, end, buf),
            Some(base) => {
                let bend = end.min(view.base_limit).max(off);
                base_read(base, off, &mut buf[..(bend - off) as usize])?;
                buf[(bend - off) as usize..].fill(0);
                for &(s, e) in &view.ranges {
                    pread(s.max(off), e.min(end), buf)?;
                }
                Ok(())
            }
        }
    }

    /// Makes every write and truncate acknowledged before this call durable, either by
    /// fsyncs of the staging file (and journal, and once the directory) or, for a small
    /// file in full mode, by handing its bytes to `copy` (which writes them to
    /// `staged_copies`; the caller's WAL fsync then makes them durable): one device flush
    /// for a small file's data and its metadata together. `allow_copy` false forces the
    /// fsyncs (a clean stop, a platform snapshot: the staging files on disk must be
    /// whole by themselves) and drops the copy.
    pub fn sync(
        &self,
        latch: &Latch,
        dir: &Path,
        copy: CopySink<'_>,
        allow_copy: bool,
    ) -> Result<()> {
        let my = self.seq.load(Ordering::Acquire);
        let mut st = self.sync_state.lock().unwrap();
        loop {
            // A forced sync is never covered by one that may have made only a copy
            // (except in memory, where the copy is the only durable state there is).
            if st.0 >= my
                && (allow_copy || {
                    let g = self.lock();
                    !g.copied || g.mem.is_some()
                })
            {
                return Ok(());
            }
            if !st.1 {
                st.1 = true;
                let target = self.seq.load(Ordering::Acquire);
                drop(st);
                let r = self.make_durable(latch, dir, copy, allow_copy);
                st = self.sync_state.lock().unwrap();
                st.1 = false;
                if r.is_ok() {
                    st.0 = st.0.max(target);
                }
                self.sync_cv.notify_all();
                r?;
            } else {
                st = self.sync_cv.wait(st).unwrap();
            }
        }
    }

    /// Whether a [`StagedFile::sync`] now would be the caller's WAL fsync alone: the
    /// file is in memory (or gone).
    pub fn syncs_with_the_wal(&self) -> bool {
        let g = self.lock();
        g.dropped || g.mem.is_some()
    }

    fn make_durable(
        &self,
        latch: &Latch,
        dir: &Path,
        copy: CopySink<'_>,
        allow_copy: bool,
    ) -> Result<()> {
        // The copy is written under the file's lock (lock order: file, then database),
        // so that an ingest committing the file meanwhile either sees `copied` and
        // removes the copy in its commit, or has dropped the file before: then no copy
        // is made, and the ingest's commit (made durable by the caller's WAL fsync)
        // holds the bytes.
        {
            let mut g = self.lock();
            // In memory, every write already replaced the copy: the caller's WAL
            // fsync is all it takes, also for a forced sync (a restart finds no
            // staging file and takes the copy).
            if g.dropped || g.mem.is_some() {
                return Ok(());
            }
            if allow_copy {
                if let Some(bytes) = g.small_bytes(&self.path).transpose()? {
                    copy(self.ino, Some(&bytes))?;
                    g.copied = true;
                    return Ok(());
                }
            }
        }
        self.fsync_all(latch, dir)?;
        // The fsynced file is now the newer durable state: an older copy must not win
        // at a recovery. Its removal is durable with the caller's WAL fsync.
        let mut g = self.lock();
        if g.copied {
            copy(self.ino, None)?;
            g.copied = false;
        }
        Ok(())
    }

    fn fsync_all(&self, latch: &Latch, dir: &Path) -> Result<()> {
        let (file, journal, dir_synced) = {
            let g = self.lock();
            let j = match &g.journal {
                Some(j) => Some(
                    j.try_clone()
                        .map_err(|e| StoreError::io("dup journal", &self.path, e))?,
                ),
                None => None,
            };
            (g.file.clone(), j, g.dir_synced)
        };
        latch.sync_file(&file, &self.path, false)?;
        if let Some(j) = journal {
            latch.sync_file(&j, &journal_path(&self.path), true)?;
        }
        if !dir_synced {
            latch.sync_dir(dir)?;
            self.lock().dir_synced = true;
        }
        Ok(())
    }
}

/// The stretches of `[0, size)` of a file that hold data, as the filesystem reports them
/// (SEEK_DATA / SEEK_HOLE). A filesystem that cannot tell reports one stretch: all data.
pub(crate) fn data_extents(f: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on a valid descriptor; kura reads and writes staging files only
        // with positional calls, so moving the file offset disturbs nothing.
        let d = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if d < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(out),
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(vec![(0, size)]),
                _ => Err(e),
            };
        }
        let d = d as u64;
        if d >= size {
            break;
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, d as libc::off_t, libc::SEEK_HOLE) };
        if h < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let h = (h as u64).min(size);
        out.push((d, h));
        pos = h.max(d + 1);
    }
    Ok(out)
}

/// `read_exact_at` that reads zeros past the end of the file.
fn read_exact_or_zero(f: &File, mut buf: &mut [u8], mut off: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match f.read_at(buf, off) {
            Ok(0) => {
                buf.fill(0);
                return Ok(());
            }
            Ok(n) => {
                buf = &mut buf[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Files up to this size in full mode are made durable by a copy of their bytes in the
/// database (one WAL fsync for data and metadata) instead of fsyncs of the staging file
/// and its directory. Larger ones would make the WAL carry their bytes twice.
pub const SMALL_COPY_MAX: u64 = 64 << 10;

/// Where [`StagedFile::sync`] sends a small file's bytes (`Some`) or the news that its
/// staging file is durable on its own and the copy must go (`None`).
pub(crate) type CopySink<'a> = &'a dyn Fn(FileId, Option<&[u8]>) -> Result<()>;

// This module owns the `staged_copies` table: the durable copies of small staged files.
// A copy is the whole file as of its last durable point. Recovery after a power loss
// (the previous run did not stop cleanly and the machine rebooted) rewrites the staging
// file from it, because the staging file itself was never fsynced; after a killed
// daemon on the same boot the staging file in the page cache is newer and wins. A copy
// is removed when the file's staging file is fsynced instead, when the file is ingested
// (in the ingest's commit) and when the file is removed.

/// Saves (`Some`) or removes (`None`) the durable copy of a staged file.
pub(crate) fn put_copy(conn: &Connection, ino: FileId, bytes: Option<&[u8]>) -> Result<()> {
    let r = match bytes {
        Some(b) => conn
            .prepare_cached("INSERT OR REPLACE INTO staged_copies(ino, data) VALUES(?1, ?2)")
            .and_then(|mut st| st.execute(rusqlite::params![ino.0 as i64, b])),
        None => conn
            .prepare_cached("DELETE FROM staged_copies WHERE ino=?1")
            .and_then(|mut st| st.execute([ino.0 as i64])),
    };
    r.map(|_| ()).ctx("saving a staged file's copy")
}

/// The length of a staged file's durable copy, or None when it has none.
pub(crate) fn copy_len(conn: &Connection, ino: FileId) -> Result<Option<u64>> {
    let r = conn
        .prepare_cached("SELECT length(data) FROM staged_copies WHERE ino=?1")
        .and_then(|mut st| st.query_row([ino.0 as i64], |r| r.get::<_, Option<i64>>(0)));
    match r {
        Ok(n) => Ok(Some(n.unwrap_or(0) as u64)),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(e) => Err(e).ctx("reading a staged file's copy"),
    }
}

/// Every durable copy, by file.
pub(crate) fn load_copies(conn: &Connection) -> Result<HashMap<FileId, Vec<u8>>> {
    let mut st = conn
        .prepare("SELECT ino, data FROM staged_copies")
        .ctx("reading staged copies")?;
    let rows = st
        .query_map([], |r| Ok((FileId(r.get::<_, i64>(0)? as u64), r.get(1)?)))
        .ctx("reading staged copies")?;
    let mut out = HashMap::new();
    for r in rows {
        let (ino, data) = r.ctx("reading staged copies")?;
        out.insert(ino, data);
    }
    Ok(out)
}

impl Staging {
    pub fn open(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io("create staging dir", &dir, e))?;
        let max_file_size = probe_max_file_size(&dir);
        Ok(Staging {
            dir,
            files: Mutex::new(HashMap::new()),
            max_file_size,
            mem_bytes: Arc::default(),
            drops: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
        })
    }

    fn drop_slot(&self, ino: FileId) -> &AtomicU64 {
        &self.drops[(ino.0 % DROP_SLOTS as u64) as usize]
    }

    /// Counts a change of an unstaged file's inode row that a staging starts from (a
    /// size set without staging) as a drop, so that a [`Staging::start`] on a row read
    /// before it is refused. Returns whether the file is staged now (a start came
    /// first: the caller makes its change in the staging too).
    pub fn changed(&self, ino: FileId) -> bool {
        let files = self.files.lock().unwrap();
        self.drop_slot(ino).fetch_add(1, Ordering::AcqRel);
        files.contains_key(&ino)
    }

    /// The file's staging, or (when it has none) how many drops its slot has seen: a
    /// caller that reads the inode to start staging it passes that to
    /// [`Staging::start`], which refuses (`Raced`) when a staging of the file was
    /// dropped since. The inode it read may then be older than the ingest that
    /// dropped it; a staging started on that base would lose what the ingest stored.
    pub fn lookup(&self, ino: FileId) -> Lookup {
        let files = self.files.lock().unwrap();
        match files.get(&ino) {
            Some(s) => Lookup::Staged(s.clone()),
            None => Lookup::Unstaged(self.drop_slot(ino).load(Ordering::Acquire)),
        }
    }

    pub fn get(&self, ino: FileId) -> Option<Arc<StagedFile>> {
        self.files.lock().unwrap().get(&ino).cloned()
    }

    pub fn all(&self) -> Vec<Arc<StagedFile>> {
        self.files.lock().unwrap().values().cloned().collect()
    }

    fn path(&self, ino: FileId) -> PathBuf {
        self.dir.join(ino.0.to_string())
    }

    /// Starts staging a file: full mode when `base` is None, overlay otherwise.
    /// `drops` is what [`Staging::lookup`] said before the caller read the inode that
    /// `base`, `size` and `mtime` come from; `Raced` if the file was dropped since
    /// (read the inode again).
    pub fn start(
        &self,
        ino: FileId,
        base: Option<(ChunkId, u64)>,
        size: u64,
        mtime: Timespec,
        drops: u64,
    ) -> Result<Arc<StagedFile>> {
        let mut files = self.files.lock().unwrap();
        if let Some(s) = files.get(&ino) {
            return Ok(s.clone());
        }
        if self.drop_slot(ino).load(Ordering::Acquire) != drops {
            return Err(StoreError::Raced(ino));
        }
        let path = self.path(ino);
        let journal = match base {
            Some(_) => {
                let jp = journal_path(&path);
                Some(
                    OpenOptions::new()
                        .create(true)
                        .truncate(true)
                        .write(true)
                        .open(&jp)
                        .map_err(|e| StoreError::io("create staging journal", &jp, e))?,
                )
            }
            None => None,
        };
        // A new small file starts in memory, while there is room.
        let mem = (base.is_none() && size <= SMALL_COPY_MAX)
            .then(|| MemSlot::take(&self.mem_bytes, size))
            .flatten();
        let file = match &mem {
            Some(_) => memfd().map_err(|e| StoreError::io("create memfd", &path, e))?,
            None => create_rw(&path, "create staging file")?,
        };
        let mut journal = journal;
        if base.is_none() {
            file.set_len(size)
                .map_err(|e| StoreError::io("size staging file", &path, e))?;
        } else if let Some(j) = journal.as_mut() {
            // Record the starting size so a restart replays from it.
            journal_append(j, &path, size, JOURNAL_TRUNCATE)?;
        }
        let s = StagedFile::new(
            ino,
            path,
            StagedState {
                file: Arc::new(file),
                journal,
                base: base.map(|b| b.0),
                base_limit: base.map(|b| b.1.min(size)).unwrap_or(0),
                ranges: RangeSet::default(),
                size,
                mtime,
                last_write: Instant::now(),
                ingesting: None,
                dir_synced: false,
                copied: false,
                unflushed: 0,
                dropped: false,
                seal: None,
                mem,
            },
        );
        files.insert(ino, s.clone());
        Ok(s)
    }

    /// Forgets a file's staging and deletes its files (after ingest or removal).
    /// The files go while the map is still locked: a write that finds the file gone
    /// and starts staging it again ([`Staging::start`], under the same lock) makes its
    /// files only after these are unlinked, never before (the unlink would take the new
    /// ones, and with them every write since, at the next crash).
    pub fn drop_file(&self, ino: FileId) -> Result<()> {
        let mut files = self.files.lock().unwrap();
        files.remove(&ino);
        self.drop_slot(ino).fetch_add(1, Ordering::AcqRel);
        let p = self.path(ino);
        for p in [journal_path(&p), p] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("remove staging file", &p, e)),
            }
        }
        Ok(())
    }

    /// After ingest committed `new_base` while writes raced it: the staging file stays,
    /// now as an overlay of only the raced ranges. The journal is rewritten atomically.
    pub fn rebase(
        &self,
        latch: &Latch,
        st: &StagedFile,
        g: &mut StagedState,
        new_base: ChunkId,
        base_len: u64,
        raced: &RangeSet,
    ) -> Result<()> {
        let jp = journal_path(&st.path);
        let mut bytes = Vec::new();
        let mut push = |a: u64, b: u64| {
            bytes.extend_from_slice(&a.to_le_bytes());
            bytes.extend_from_slice(&b.to_le_bytes());
        };
        push(base_len, JOURNAL_TRUNCATE);
        for (s, e) in raced.iter() {
            push(s, e - s);
        }
        let tmp = jp.with_extension("j.tmp");
        std::fs::write(&tmp, &bytes)
            .map_err(|e| StoreError::io("write staging journal", &tmp, e))?;
        std::fs::rename(&tmp, &jp)
            .map_err(|e| StoreError::io("replace staging journal", &jp, e))?;
        let _ = latch;
        g.journal = Some(
            OpenOptions::new()
                .append(true)
                .open(&jp)
                .map_err(|e| StoreError::io("open staging journal", &jp, e))?,
        );
        g.base = Some(new_base);
        g.base_limit = base_len;
        g.ranges = raced.clone();
        // Writes after the ingest read may have extended the file; keep the size.
        g.size = g.size.max(base_len);
        g.dir_synced = false;
        Ok(())
    }

    /// Finds staging files left by an earlier run. `inode` answers, for a file id, its
    /// current (content, size), or None when the file no longer exists. `copies` are the
    /// durable copies of small files; when `copies_win` (the machine went down since
    /// the last clean stop, so staging files may have lost bytes they had) each one
    /// replaces its staging file, which is made anew where the crash lost it. Returns
    /// the number of files recovered and the copies of files that no longer exist.
    pub fn recover(
        &self,
        inode: InodeInfo<'_>,
        mut copies: HashMap<FileId, Vec<u8>>,
        copies_win: bool,
    ) -> Result<(usize, Vec<FileId>)> {
        let mut n = 0;
        let mut stale = Vec::new();
        let listed = std::fs::read_dir(&self.dir)
            .map_err(|e| StoreError::io("list staging", &self.dir, e))?;
        let mut names = Vec::new();
        for e in listed {
            let e = e.map_err(|e| StoreError::io("list staging", &self.dir, e))?;
            names.push((e.file_name().to_string_lossy().into_owned(), e.path(), true));
        }
        // A copy whose staging file is gone (its directory entry was never fsynced)
        // brings its file back.
        for ino in copies.keys() {
            let name = ino.0.to_string();
            if !names.iter().any(|(n, _, _)| *n == name) {
                names.push((name.clone(), self.dir.join(name), false));
            }
        }
        for (name, path, existed) in names {
            let name = name.as_str();
            let Ok(id) = name.parse::<u64>() else {
                // Journals are handled with their staging file; stray tmp files go.
                // Seal files belong to a snapshot job that a restart ended.
                if name.ends_with(".tmp")
                    || name.ends_with(".seal")
                    || (name.ends_with(".j")
                        && !self.dir.join(name.trim_end_matches(".j")).exists())
                {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            };
            let ino = FileId(id);
            let copy = copies.remove(&ino);
            let copied = copy.is_some();
            let Some((content, db_size, mtime)) = inode(ino)? else {
                self.drop_file(ino)?;
                if copied {
                    stale.push(ino);
                }
                continue;
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(copied)
                .open(&path)
                .map_err(|e| StoreError::io("open staging file", &path, e))?;
            if let Some(bytes) = copy.filter(|_| copies_win || !existed) {
                // The copy is the file as of its last durable point, in full mode.
                let jp = journal_path(&path);
                match std::fs::remove_file(&jp) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("remove staging journal", &jp, e)),
                }
                file.set_len(0)
                    .and_then(|_| file.write_all_at(&bytes, 0))
                    .and_then(|_| file.set_len(bytes.len() as u64))
                    .map_err(|e| StoreError::io("restore staging file", &path, e))?;
                tracing::info!(ino = %ino, bytes = bytes.len(), "staged file restored from its durable copy");
            }
            let flen = file
                .metadata()
                .map_err(|e| StoreError::io("stat staging", &path, e))?
                .len();
            let jp = journal_path(&path);
            let (journal, base, base_limit, ranges, size) = match std::fs::read(&jp) {
                Ok(bytes) => {
                    let mut ranges = RangeSet::default();
                    let mut size = db_size;
                    let mut limit = u64::MAX;
                    for rec in bytes.chunks_exact(16) {
                        let off = u64::from_le_bytes(rec[..8].try_into().unwrap());
                        let len = u64::from_le_bytes(rec[8..].try_into().unwrap());
                        if len == JOURNAL_TRUNCATE {
                            ranges.clip(off);
                            limit = limit.min(off);
                            size = off;
                        } else {
                            let end = off.saturating_add(len).min(flen.max(off));
                            ranges.insert(off, end);
                            size = size.max(off + len);
                        }
                    }
                    let j = OpenOptions::new()
                        .append(true)
                        .open(&jp)
                        .map_err(|e| StoreError::io("open staging journal", &jp, e))?;
                    // A torn final record is cut so that appends stay aligned.
                    if bytes.len() % 16 != 0 {
                        j.set_len((bytes.len() / 16 * 16) as u64)
                            .map_err(|e| StoreError::io("repair staging journal", &jp, e))?;
                    }
                    match content {
                        Some(c) => (Some(j), Some(c), limit.min(size), ranges, size),
                        // Base gone (truncated to 0 and committed): staging is complete
                        // only where ranges say; treat the rest as zeros.
                        None => (Some(j), None, 0, ranges, size),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    (None, None, 0, RangeSet::default(), flen)
                }
                Err(e) => return Err(StoreError::io("read staging journal", &jp, e)),
            };
            let s = StagedFile::new(
                ino,
                path,
                StagedState {
                    file: Arc::new(file),
                    journal,
                    base,
                    base_limit,
                    ranges,
                    size,
                    mtime,
                    last_write: Instant::now(),
                    ingesting: None,
                    dir_synced: !copied,
                    copied,
                    unflushed: 0,
                    dropped: false,
                    seal: None,
                    mem: None,
                },
            );
            self.files.lock().unwrap().insert(ino, s);
            n += 1;
        }
        Ok((n, stale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rangeset_merges_and_clips() {
        let mut r = RangeSet::default();
        r.insert(10, 20);
        r.insert(30, 40);
        r.insert(15, 35);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(10, 40)]);
        r.insert(40, 50);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(10, 50)]);
        r.insert(0, 5);
        r.clip(20);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(0, 5), (10, 20)]);
        assert_eq!(r.overlaps(3, 12), vec![(3, 5), (10, 12)]);
        r.insert(30, 40);
        r.clip_out(4, 12);
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            vec![(0, 4), (12, 20), (30, 40)]
        );
        r.clip_out(15, 35);
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            vec![(0, 4), (12, 15), (35, 40)]
        );
        r.clip_out(0, 100);
        assert!(r.is_empty());
    }

    /// A file's staging dropped (its ingest committed) while a write starts staging it
    /// anew: the new staging's files must survive the drop. They were once unlinked by
    /// it when the write came between the drop's forgetting the file and its unlinking
    /// the paths: the live file went on in unlinked files and a crash (or a copy of the
    /// data directory) lost every write since.
    #[test]
    fn a_drop_never_unlinks_the_next_staging_of_its_file() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = Arc::new(Staging::open(tmp.path().join("staging")).unwrap());
        let ino = FileId(7);
        let base = Some((ChunkId([1; 32]), 4096));
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        let mut rounds = 0;
        while rounds < 3000 && Instant::now() < deadline {
            rounds += 1;
            start(&staging, ino, base).unwrap();
            let s = staging.clone();
            let restarter = std::thread::spawn(move || loop {
                // As a write that finds the file gone from staging: start it again.
                if let Lookup::Unstaged(_) = s.lookup(ino) {
                    return start(&s, ino, base).unwrap();
                }
                std::hint::spin_loop();
            });
            staging.drop_file(ino).unwrap();
            let st = restarter.join().unwrap();
            assert!(
                st.path.exists() && journal_path(&st.path).exists(),
                "round {rounds}: the new staging's files were unlinked by the drop before it"
            );
            staging.drop_file(ino).unwrap();
        }
    }

    fn start(s: &Staging, ino: FileId, base: Option<(ChunkId, u64)>) -> Result<Arc<StagedFile>> {
        match s.lookup(ino) {
            Lookup::Staged(st) => Ok(st),
            Lookup::Unstaged(drops) => s.start(ino, base, 4096, Timespec::now(), drops),
        }
    }

    /// A write that read a file's inode while the file was unstaged may not start
    /// staging it on that row once a staging of the file was dropped meanwhile (an
    /// ingest committed newer content): `Raced`, so it reads the inode again. Drops of
    /// other files, and stagings still there, let it through.
    #[test]
    fn a_start_on_an_inode_read_before_a_drop_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = Staging::open(tmp.path().join("staging")).unwrap();
        let (ino, other) = (FileId(7), FileId(8));
        let base = Some((ChunkId([1; 32]), 4096));
        let Lookup::Unstaged(seen) = staging.lookup(ino) else {
            panic!("not staged yet")
        };
        // Meanwhile another write staged it and an ingest committed and dropped it.
        start(&staging, ino, base).unwrap();
        staging.drop_file(ino).unwrap();
        start(&staging, other, base).unwrap();
        staging.drop_file(other).unwrap();
        assert!(matches!(
            staging.start(ino, base, 4096, Timespec::now(), seen),
            Err(StoreError::Raced(i)) if i == ino
        ));
        // Looked up again, it starts; and a staging present is returned as it is.
        let Lookup::Unstaged(now) = staging.lookup(ino) else {
            panic!("dropped")
        };
        start(&staging, other, base).unwrap();
        staging.drop_file(other).unwrap();
        let st = staging
            .start(ino, base, 4096, Timespec::now(), now)
            .unwrap();
        let again = staging
            .start(ino, base, 4096, Timespec::now(), seen)
            .unwrap();
        assert!(Arc::ptr_eq(&st, &again));
    }
}
