//! Ingest: staged files → content-defined chunks → deduplicated, compressed packs.
//!
//! A file is read sequentially through its merged view (staging over base), cut with
//! FastCDC and hashed with BLAKE3 on the reading thread; chunks are looked up in the
//! index, new ones grouped into 1 MiB bundles and compressed on the ingest pool, and the
//! bundles appended to the current pack. The pack is fsynced, and then one transaction
//! indexes the new chunks and points the inode at its new content list. Only then is the
//! staging file dropped. Writes that raced the ingest stay staged as an overlay of the new
//! content; a truncate that raced it makes the ingest give up (the records it wrote are
//! garbage for GC) and the file is tried again later.
//!
//! Files of more than one part commit each finished leaf list on the way (see
//! `chunk_file`), so memory is bounded: a few read buffers (`ingest_buffer`), at most 16
//! bundles in flight, and one part's chunk list, pins and index rows.
//!
//! This module owns the `ingest_parts` table (leaves an ingest in progress committed).

use crate::chunk_store::ChunkStore;
use crate::chunker::Chunker;
use crate::content::ContentList;
use crate::error::{Result, StoreError};
use crate::format::{BUNDLE_TARGET, KIND_CONTENT};
use crate::ids::{ChunkId, FileId, VolumeId};
use crate::namespace;
use crate::pack::{self, Location};
use crate::staging::{IngestLog, RangeSet, StagedFile};

/// Small files ingested together in one batch (see `Store::ingest_small`): at most
/// 256 x 64 KiB read into memory at once.
const SMALL_BATCH_FILES: usize = 256;
use crate::store::Store;
use rusqlite::Connection;
use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one ingest run did.
#[derive(Clone, Debug, Default)]
pub struct IngestReport {
    pub files: u64,
    /// Logical bytes read from staged files.
    pub bytes: u64,
    /// Bytes not read again: the unchanged start of files whose ingest resumed after
    /// their base's chunks (appends, changes near the end).
    pub resumed_bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    /// Plain bytes of new chunks.
    pub new_bytes: u64,
    /// Bytes the new chunks take in packs (after compression).
    pub stored_bytes: u64,
    /// Files skipped because a truncate raced them (retried later).
    pub raced: u64,
    /// Files whose writes raced the ingest: committed, with the raced ranges still staged.
    pub rebased: u64,
    /// Files that could not be ingested (they stay staged; retried later).
    pub failed: u64,
    pub elapsed: Duration,
    /// Time spent making new records durable (fsync of packs).
    pub sync_time: Duration,
}

impl IngestReport {
    fn add(&mut self, o: &IngestReport) {
        self.files += o.files;
        self.bytes += o.bytes;
        self.resumed_bytes += o.resumed_bytes;
        self.chunks += o.chunks;
        self.new_chunks += o.new_chunks;
        self.new_bytes += o.new_bytes;
        self.stored_bytes += o.stored_bytes;
        self.raced += o.raced;
        self.rebased += o.rebased;
        self.failed += o.failed;
        self.sync_time += o.sync_time;
    }
}

/// Reads the merged view of a staged file in pieces, taking the file lock per piece.
struct MergedReader<'a> {
    store: &'a Store,
    st: &'a StagedFile,
    pos: u64,
    size: u64,
    /// Read the file as its snapshot seal froze it, not as it is now.
    sealed: bool,
}

impl Read for MergedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.size - self.pos).min(buf.len() as u64).min(4 << 20) as usize;
        if n == 0 {
            return Ok(0);
        }
        let ino = self.st.ino;
        let what = || format!("file id {ino}");
        let base = |c, o, b: &mut [u8]| self.store.read_content(&c, o, b, &what);
        let end = self.pos + n as u64;
        if self.sealed {
            let plan = match self.st.lock().seal.as_ref() {
                Some(seal) => seal.plan(self.pos, end),
                None => {
                    return Err(std::io::Error::other(StoreError::Raced(ino)));
                }
            };
            plan.read(self.st, self.pos, &mut buf[..n], &base)
                .map_err(std::io::Error::other)?;
        } else {
            let view = self.st.lock().view(self.pos, end);
            self.st
                .read_view(&view, self.pos, &mut buf[..n], &base)
                .map_err(std::io::Error::other)?;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// BLAKE3 of each chunk of a batch, the two halves of the batch on two threads.
fn hash_chunks(buf: &[u8], lens: &[usize]) -> Vec<ChunkId> {
    let mid = lens.len() / 2;
    let split: usize = lens[..mid].iter().sum();
    let hash = |b: &[u8], ls: &[usize]| -> Vec<ChunkId> {
        let mut p = 0;
        ls.iter()
            .map(|l| {
                p += l;
                ChunkId::of(&b[p - l..p])
            })
            .collect()
    };
    let (mut a, b) = rayon::join(
        || hash(&buf[..split], &lens[..mid]),
        || hash(&buf[split..], &lens[mid..]),
    );
    a.extend(b);
    a
}

/// What the appender thread receives: compressed bundles (numbered in the order they
/// were formed) and finished leaf lists (to commit once bundles `< upto` are appended).
enum ToAppender {
    Bundle(u64, Bundle),
    Leaf { upto: u64, leaf: ContentList },
}

/// New chunks collected into one compression unit.
struct Bundle {
    raw: Vec<u8>,
    comp: Option<Vec<u8>>,
    /// (chunk, offset in `raw`, length)
    members: Vec<(ChunkId, u32, u32)>,
}

impl Store {
    /// Looks a hashed batch up (pinning the chunks first) and groups the new chunks into
    /// bundles of about `BUNDLE_TARGET` bytes, not yet compressed.
    #[allow(clippy::type_complexity)]
    fn dedup_batch(
        &self,
        buf: &[u8],
        lens: &[usize],
        ids: Vec<ChunkId>,
        pins: &crate::chunk_store::Pins<'_>,
        seen: &mut HashSet<ChunkId>,
    ) -> Result<(Vec<(u32, ChunkId)>, Vec<Bundle>)> {
        let mut offs = Vec::with_capacity(lens.len());
        let mut p = 0;
        for l in lens {
            offs.push(p);
            p += l;
        }
        let mut bundles: Vec<Bundle> = Vec::new();
        let mut cur: Option<Bundle> = None;
        pins.pin_many(&ids);
        {
            // A pooled read-only connection: dedup lookups never wait on the writer.
            let conn = self.db.reader()?;
            // One read transaction for the whole batch instead of one per lookup.
            let tx = conn
                .unchecked_transaction()
                .map_err(|e| StoreError::db("begin dedup lookups", e))?;
            for ((id, o), l) in ids.iter().zip(&offs).zip(lens) {
                if seen.contains(id) || ChunkStore::has(&tx, id)? {
                    continue;
                }
                seen.insert(*id);
                let b = cur.get_or_insert_with(|| Bundle {
                    raw: Vec::with_capacity(BUNDLE_TARGET + 64 * 1024),
                    comp: None,
                    members: Vec::new(),
                });
                b.members.push((*id, b.raw.len() as u32, *l as u32));
                b.raw.extend_from_slice(&buf[*o..o + l]);
                if b.raw.len() >= BUNDLE_TARGET {
                    bundles.extend(cur.take());
                }
            }
            tx.finish()
                .map_err(|e| StoreError::db("end dedup lookups", e))?;
        }
        bundles.extend(cur);
        Ok((lens.iter().map(|l| *l as u32).zip(ids).collect(), bundles))
    }

    /// Ingests each file in turn. One file's failure (no room for it yet, a damaged
    /// base) never keeps the others staged: every file is tried, each failure is
    /// logged with its file, and the first one is returned once all were tried.
    fn ingest_files(&self, files: Vec<Arc<StagedFile>>) -> Result<IngestReport> {
        let t0 = Instant::now();
        let mut total = IngestReport::default();
        let mut first_err = None;
        // Small files go in batches (see `ingest_small`), the rest one by one.
        let (small, large): (Vec<_>, Vec<_>) = files.into_iter().partition(|st| {
            let g = st.lock();
            g.seal.is_none() && g.is_small()
        });
        for batch in small.chunks(SMALL_BATCH_FILES) {
            match self.ingest_small(batch) {
                Ok(r) => total.add(&r),
                Err(StoreError::Poisoned(p)) => return Err(StoreError::Poisoned(p)),
                Err(e) => {
                    tracing::warn!(files = batch.len(), error = %e, "small files not ingested; they stay staged");
                    total.failed += batch.len() as u64;
                    first_err.get_or_insert(e);
                }
            }
        }
        for st in large {
            match self.ingest_one(&st) {
                Ok(r) => total.add(&r),
                Err(StoreError::Raced(_)) => total.raced += 1,
                Err(StoreError::Poisoned(p)) => return Err(StoreError::Poisoned(p)),
                Err(e) => {
                    tracing::warn!(ino = %st.ino, error = %e, "file not ingested; it stays staged");
                    total.failed += 1;
                    first_err.get_or_insert(e);
                }
            }
        }
        total.elapsed = t0.elapsed();
        if let Some(e) = first_err {
            return Err(e);
        }
        if total.files > 0 {
            tracing::info!(
                files = total.files,
                bytes = total.bytes,
                new_bytes = total.new_bytes,
                stored = total.stored_bytes,
                ms = total.elapsed.as_millis() as u64,
                "ingest done"
            );
        }
        Ok(total)
    }

    /// Ingests small files (full mode, at most `SMALL_COPY_MAX`) together: each is
    /// read whole and cut on its own, their new chunks share bundles, and one pack
    /// fsync and one transaction commit them all (each still gets its own content
    /// list). A file that a write or truncate raced stays staged as it is and is tried
    /// again later; its chunks are garbage for GC.
    fn ingest_small(&self, files: &[Arc<StagedFile>]) -> Result<IngestReport> {
        self.latch.check()?;
        let _one = self.ingest_lock.lock().unwrap();
        let t0 = Instant::now();
        let mut taken: Vec<(&StagedFile, Vec<u8>, crate::namespace::Timespec)> = Vec::new();
        let mut read_err = None;
        for st in files {
            let mut g = st.lock();
            if g.dropped || g.seal.is_some() || g.ingesting.is_some() {
                continue;
            }
            // A file that grew past the limit meanwhile goes the usual way next time.
            match g.small_bytes(&st.path) {
                Some(Ok(bytes)) => {
                    g.ingesting = Some(IngestLog::default());
                    taken.push((st, bytes, g.mtime));
                }
                Some(Err(e)) => {
                    read_err.get_or_insert(e);
                }
                None => {}
            }
        }
        let r = match read_err {
            Some(e) => Err(e),
            None => self.ingest_small_taken(&taken),
        };
        if r.is_err() {
            for (st, _, _) in &taken {
                st.lock().ingesting = None;
            }
        }
        let mut r = r?;
        r.elapsed = t0.elapsed();
        Ok(r)
    }

    fn ingest_small_taken(
        &self,
        taken: &[(&StagedFile, Vec<u8>, crate::namespace::Timespec)],
    ) -> Result<IngestReport> {
        let mut report = IngestReport::default();
        if taken.is_empty() {
            return Ok(report);
        }
        let total: usize = taken.iter().map(|t| t.1.len()).sum();
        self.room_to_ingest(total as u64, || format!("{} small files", taken.len()))?;
        // One buffer of every file's bytes, each file cut on its own.
        let mut all = Vec::with_capacity(total);
        let mut lens = Vec::new();
        let mut per_file = Vec::with_capacity(taken.len());
        for (_, bytes, _) in taken {
            let l = crate::chunker::chunk_lengths(bytes, self.opts.chunker);
            per_file.push(l.len());
            lens.extend(l);
            all.extend_from_slice(bytes);
        }
        let ids = if lens.is_empty() {
            Vec::new()
        } else {
            hash_chunks(&all, &lens)
        };
        let pins = self.chunks.pins();
        let mut seen = HashSet::new();
        let (entries, mut bundles) = self.dedup_batch(&all, &lens, ids, &pins, &mut seen)?;
        let level = self.opts.zstd_level;
        self.pool.install(|| {
            use rayon::prelude::*;
            bundles
                .par_iter_mut()
                .for_each(|b| b.comp = pack::compress(&b.raw, level));
        });
        let mut locs = Vec::new();
        for b in bundles {
            report.new_chunks += b.members.len() as u64;
            report.new_bytes += b.raw.len() as u64;
            report.stored_bytes += b.comp.as_ref().map_or(b.raw.len(), |c| c.len()) as u64;
            locs.extend(self.chunks.append_bundle(&b.raw, b.comp, &b.members)?);
        }
        report.chunks = entries.len() as u64;
        let mut contents = Vec::with_capacity(taken.len());
        let mut at = 0;
        for n in per_file {
            let list = entries[at..at + n].to_vec();
            at += n;
            contents.push(if list.is_empty() {
                None
            } else {
                let (id, loc, stored) =
                    self.content_object(&ContentList::new(list), &pins, &mut seen)?;
                locs.extend(loc);
                report.stored_bytes += stored;
                Some(id)
            });
        }
        // Chunk records first, then the references to them.
        let t_sync = Instant::now();
        let sealed = self.chunks.writer.lock().unwrap().sync(&self.latch)?;
        report.sync_time = t_sync.elapsed();
        let _gc = self.gc_lock.read().unwrap();
        let mut guards: Vec<_> = taken.iter().map(|(st, _, _)| st.lock()).collect();
        let mut commit = Vec::with_capacity(taken.len());
        for g in guards.iter_mut() {
            let log = g.ingesting.take().unwrap_or_default();
            let ok = !(log.truncated || g.dropped || !log.writes.is_empty());
            if !ok && !g.dropped {
                report.raced += 1;
            }
            commit.push(ok);
        }
        let mut conn = self.db.lock();
        let tx = conn
            .transaction()
            .map_err(|e| StoreError::db("begin ingest commit", e))?;
        ChunkStore::index_rows(&tx, &locs, &sealed)?;
        for (i, (st, bytes, mtime)) in taken.iter().enumerate() {
            if !commit[i] {
                continue;
            }
            commit_content(
                &tx,
                st.ino,
                guards[i].copied,
                contents[i],
                bytes.len() as u64,
                *mtime,
            )?;
        }
        tx.commit()
            .map_err(|e| StoreError::db("commit ingest", e))?;
        drop(conn);
        drop(pins);
        for (i, (st, bytes, _)) in taken.iter().enumerate() {
            if !commit[i] {
                continue;
            }
            let g = &mut guards[i];
            g.copied = false;
            g.dropped = true;
            self.staging.drop_file(st.ino)?;
            report.files += 1;
            report.bytes += bytes.len() as u64;
        }
        tracing::debug!(
            files = report.files,
            bytes = report.bytes,
            "small files ingested"
        );
        Ok(report)
    }

    /// Worst case the staged bytes are new and incompressible: refuse up front (with
    /// 4 MiB to spare) rather than fill the disk with a half-written pack that only GC
    /// could reclaim. `what` names the files in the error.
    fn room_to_ingest(&self, need: u64, what: impl Fn() -> String) -> Result<()> {
        let free = self.free_bytes();
        if free < need.saturating_add(4 << 20) {
            return Err(StoreError::NoSpace {
                context: format!(
                    "ingesting {} needs up to {need} bytes, {free} free; ingest waits",
                    what()
                ),
            });
        }
        Ok(())
    }

    fn ingest_one(&self, st: &StagedFile) -> Result<IngestReport> {
        self.latch.check()?;
        let _one = self.ingest_lock.lock().unwrap();
        let t0 = Instant::now();
        let (size, mtime, segments, new_bytes) = {
            let mut g = st.lock();
            // A sealed file waits for its snapshot (which ingests the sealed view).
            if g.dropped || g.seal.is_some() {
                return Ok(IngestReport::default());
            }
            let mut base_data = RangeSet::default();
            if let Some(b) = g.base {
                self.content_data(&b, 0, &mut base_data)?;
            }
            let segments = segments(&g, g.size, &base_data)
                .map_err(|e| StoreError::io("map staged data", &st.path, e))?;
            let new_bytes = new_data_bound(&g, &st.path)?;
            let resume = match g.base {
                Some(b) if segments == [Segment::Data(0, g.size)] => {
                    let first_change = g
                        .ranges
                        .iter()
                        .next()
                        .map_or(g.base_limit, |(s, _)| s.min(g.base_limit));
                    self.resume_plan(&b, first_change)?
                }
                _ => None,
            };
            g.ingesting = Some(IngestLog::default());
            (g.size, g.mtime, (segments, resume), new_bytes)
        };
        // Holes cost nothing: what counts is what the staging file really holds.
        if let Err(e) = self.room_to_ingest(new_bytes, || format!("file {}", st.ino)) {
            st.lock().ingesting = None;
            return Err(e);
        }
        let r = self.ingest_and_commit(st, size, mtime, &segments, t0);
        if r.is_err() {
            st.lock().ingesting = None;
            self.forget_failed_parts(st.ino);
        }
        r
    }

    fn ingest_and_commit(
        &self,
        st: &StagedFile,
        size: u64,
        mtime: crate::namespace::Timespec,
        segments: &(Vec<Segment>, Option<Resume>),
        t0: Instant,
    ) -> Result<IngestReport> {
        let (content, locs, mut report, pins) = self.chunk_file(st, size, segments, false)?;
        // Chunk records first, then the references to them.
        let t_sync = Instant::now();
        let sealed = self.chunks.writer.lock().unwrap().sync(&self.latch)?;
        report.sync_time = t_sync.elapsed();
        let _gc = self.gc_lock.read().unwrap();
        let mut g = st.lock();
        let log = g.ingesting.take().unwrap_or_default();
        if log.truncated || g.dropped {
            return Err(StoreError::Raced(st.ino));
        }
        if !log.writes.is_empty() {
            st.spill_for_rebase(&mut g)?;
        }
        let mut conn = self.db.lock();
        let tx = conn
            .transaction()
            .map_err(|e| StoreError::db("begin ingest commit", e))?;
        ChunkStore::index_rows(&tx, &locs, &sealed)?;
        forget_parts(&tx, st.ino)?;
        let exists = commit_content(&tx, st.ino, g.copied, content, size, mtime)?;
        tx.commit()
            .map_err(|e| StoreError::db("commit ingest", e))?;
        drop(conn);
        drop(pins);
        g.copied = false;
        if log.writes.is_empty() || !exists {
            g.dropped = true;
            self.staging.drop_file(st.ino)?;
        } else {
            // An empty file whose writes raced the ingest keeps its full-mode staging:
            // it held exactly the raced bytes (it was empty when read).
            if let Some(c) = content {
                self.staging
                    .rebase(&self.latch, st, &mut g, c, size, &log.writes)?;
                report.rebased = 1;
            }
        }
        report.files = 1;
        report.elapsed = t0.elapsed();
        tracing::debug!(ino = %st.ino, bytes = size, new = report.new_bytes, "file ingested");
        Ok(report)
    }

    fn chunk_file(
        &self,
        st: &StagedFile,
        size: u64,
        (segments, resume): &(Vec<Segment>, Option<Resume>),
        sealed: bool,
    ) -> Result<Chunked<'_>> {
        // A resumed ingest keeps the base's chunks before its first change and cuts on
        // from there (see `resume_plan`).
        let resumed_segments;
        let (segments, mut list, mut parts) = match resume {
            Some(r) => {
                resumed_segments = [Segment::Data(r.at, size)];
                (&resumed_segments[..], r.prefix.clone(), r.parts.clone())
            }
            // Leaf lists committed so far (only for files of more than one part).
            None => (&segments[..], Vec::new(), Vec::new()),
        };
        let mut report = IngestReport {
            bytes: size - resume.as_ref().map_or(0, |r| r.at),
            resumed_bytes: resume.as_ref().map_or(0, |r| r.at),
            ..Default::default()
        };
        let pins = self.chunks.pins();
        let mut locs = Vec::new();
        let mut seen: HashSet<ChunkId> = HashSet::new();
        let (params, buffer) = (self.opts.chunker, self.opts.ingest_buffer);
        let read_err = |e: std::io::Error| match e.into_inner().map(|b| b.downcast::<StoreError>())
        {
            Some(Ok(se)) => *se,
            Some(Err(other)) => {
                StoreError::Invalid(format!("reading staged file {}: {other}", st.ino))
            }
            None => StoreError::Invalid(format!("reading staged file {}", st.ino)),
        };
        // Stages on their own threads, joined by bounded channels (bounded memory):
        // read+cut → hash, dedup lookup and bundling → compress (pool, one job per
        // bundle, at most `IN_FLIGHT` bundles) → append. Bundles may land in any order:
        // the content list keeps the file order.
        //
        // Files of more than one part (`content_part_entries` chunks) commit each finished
        // leaf list as soon as every bundle holding its new chunks is appended: packs
        // fsynced, index rows and an `ingest_parts` row (which GC marks) in one
        // transaction; then the part's pins and rows are released. Memory stays bounded
        // by one part whatever the file size.
        const IN_FLIGHT: usize = 16;
        let (cut_tx, cut_rx) = std::sync::mpsc::sync_channel::<std::io::Result<Cut>>(2);
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<ToAppender>(IN_FLIGHT);
        let (token_tx, token_rx) = std::sync::mpsc::sync_channel::<()>(IN_FLIGHT);
        for _ in 0..IN_FLIGHT {
            token_tx.send(()).expect("fresh channel");
        }
        // Buffers go back to the reader once processed.
        let (spare_tx, spare_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let pins_ref = &pins;
        let seen_ref = &mut seen;
        let list_ref = &mut list;
        let level = self.opts.zstd_level;
        let part_entries = self.opts.content_part_entries.max(1);
        let appended: Result<u64> = std::thread::scope(|sc| {
            std::thread::Builder::new()
                .name("kura-cut".into())
                .spawn_scoped(sc, move || {
                    for seg in segments {
                        let (start, end) = match *seg {
                            Segment::Hole(len) => {
                                if cut_tx.send(Ok(Cut::Hole(len))).is_err() {
                                    return;
                                }
                                continue;
                            }
                            Segment::Data(start, end) => (start, end),
                        };
                        // Each data segment is chunked on its own: a hole ends a chunk.
                        let reader = MergedReader {
                            store: self,
                            st,
                            pos: start,
                            size: end,
                            sealed,
                        };
                        let mut chunker = Chunker::new(reader, params, buffer);
                        loop {
                            let spare = spare_rx.try_recv().ok();
                            match chunker.next_owned(spare) {
                                Ok(Some((buf, lens))) => {
                                    // Hashing here (on rayon's global pool, in halves)
                                    // keeps the ingest pool free for compression.
                                    let ids = hash_chunks(&buf, &lens);
                                    if cut_tx.send(Ok(Cut::Data(buf, lens, ids))).is_err() {
                                        return;
                                    }
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    let _ = cut_tx.send(Err(e));
                                    return;
                                }
                            }
                        }
                    }
                })
                .map_err(|e| StoreError::Invalid(format!("spawning ingest reader: {e}")))?;
            let leaf_tx = done_tx.clone();
            let processor = std::thread::Builder::new()
                .name("kura-dedup".into())
                .spawn_scoped(sc, move || -> Result<u64> {
                    let mut nchunks = 0u64;
                    let mut bundle_seq = 0u64;
                    for batch in cut_rx {
                        let (chunks, bundles) = match batch.map_err(read_err)? {
                            Cut::Data(buf, lens, ids) => {
                                let r = self.dedup_batch(&buf, &lens, ids, pins_ref, seen_ref)?;
                                let _ = spare_tx.try_send(buf);
                                nchunks += r.0.len() as u64;
                                r
                            }
                            // Hole entries: nothing to look up, pin or store.
                            Cut::Hole(len) => (hole_entries(len), Vec::new()),
                        };
                        list_ref.extend(chunks);
                        for mut b in bundles {
                            if token_rx.recv().is_err() {
                                return Ok(nchunks);
                            }
                            let tx = done_tx.clone();
                            let seq = bundle_seq;
                            bundle_seq += 1;
                            self.pool.spawn(move || {
                                b.comp = pack::compress(&b.raw, level);
                                let _ = tx.send(ToAppender::Bundle(seq, b));
                            });
                        }
                        // Every full part becomes a leaf, committed once the bundles
                        // issued so far (which hold its new chunks) are appended.
                        while list_ref.len() >= part_entries {
                            let rest = list_ref.split_off(part_entries);
                            let leaf = ContentList::new(std::mem::replace(list_ref, rest));
                            for (_, id) in &leaf.entries {
                                seen_ref.remove(id);
                            }
                            if leaf_tx
                                .send(ToAppender::Leaf {
                                    upto: bundle_seq,
                                    leaf,
                                })
                                .is_err()
                            {
                                return Ok(nchunks);
                            }
                        }
                    }
                    Ok(nchunks)
                })
                .map_err(|e| StoreError::Invalid(format!("spawning ingest worker: {e}")))?;
            let mut arrived = std::collections::BTreeSet::new();
            let mut contiguous = 0u64;
            let mut pending: std::collections::VecDeque<(u64, ContentList)> = Default::default();
            let mut leaf_seen = HashSet::new();
            for m in done_rx {
                match m {
                    ToAppender::Bundle(seq, b) => {
                        let _ = token_tx.try_send(());
                        report.new_chunks += b.members.len() as u64;
                        report.new_bytes += b.raw.len() as u64;
                        report.stored_bytes +=
                            b.comp.as_ref().map_or(b.raw.len(), |c| c.len()) as u64;
                        locs.extend(self.chunks.append_bundle(&b.raw, b.comp, &b.members)?);
                        arrived.insert(seq);
                        while arrived.remove(&contiguous) {
                            contiguous += 1;
                        }
                    }
                    ToAppender::Leaf { upto, leaf } => pending.push_back((upto, leaf)),
                }
                while pending.front().is_some_and(|(upto, _)| *upto <= contiguous) {
                    let (_, leaf) = pending.pop_front().unwrap();
                    let id = self.commit_part(
                        st.ino,
                        parts.len(),
                        &leaf,
                        &mut locs,
                        &pins,
                        &mut leaf_seen,
                        &mut report,
                    )?;
                    parts.push((leaf.len(), id));
                }
            }
            processor
                .join()
                .unwrap_or_else(|_| Err(StoreError::Invalid("ingest worker panicked".into())))
        });
        report.chunks = appended?;
        let mut store_list = |l: &ContentList, report: &mut IngestReport| -> Result<ChunkId> {
            let (id, loc, stored) = self.content_object(l, &pins, &mut seen)?;
            locs.extend(loc);
            report.stored_bytes += stored;
            Ok(id)
        };
        let content = if parts.is_empty() {
            if list.is_empty() {
                None
            } else {
                Some(store_list(&ContentList::new(list), &mut report)?)
            }
        } else {
            if !list.is_empty() {
                let leaf = ContentList::new(list);
                let id = store_list(&leaf, &mut report)?;
                parts.push((leaf.len(), id));
            }
            Some(store_list(&ContentList::new_index(parts), &mut report)?)
        };
        Ok((content, locs, report, pins))
    }

    /// Commits one finished leaf of a multi-part ingest: the leaf object, the packs
    /// fsynced, the index rows of everything appended so far and the `ingest_parts` row,
    /// in one transaction; then releases the part's pins.
    #[allow(clippy::too_many_arguments)]
    fn commit_part(
        &self,
        ino: FileId,
        seq: usize,
        leaf: &ContentList,
        locs: &mut Vec<Location>,
        pins: &crate::chunk_store::Pins<'_>,
        leaf_seen: &mut HashSet<ChunkId>,
        report: &mut IngestReport,
    ) -> Result<ChunkId> {
        let (id, loc, stored) = self.content_object(leaf, pins, leaf_seen)?;
        locs.extend(loc);
        report.stored_bytes += stored;
        let sealed = self.chunks.writer.lock().unwrap().sync(&self.latch)?;
        {
            let _gc = self.gc_lock.read().unwrap();
            let mut conn = self.db.lock();
            let tx = conn
                .transaction()
                .map_err(|e| StoreError::db("begin ingest part", e))?;
            ChunkStore::index_rows(&tx, locs, &sealed)?;
            record_part(&tx, ino, seq as u64, &id)?;
            tx.commit()
                .map_err(|e| StoreError::db("commit ingest part", e))?;
        }
        locs.clear();
        // The part is now reachable from `ingest_parts`: its pins can go (the leaf's own
        // pin stays until the file commits).
        let ids: Vec<ChunkId> = leaf.entries.iter().map(|(_, c)| *c).collect();
        pins.unpin_many(&ids);
        Ok(id)
    }

    /// Stores a content list object (deduplicated; pinned until the ingest commits).
    /// Returns its id, the location if it was written, and the bytes it took.
    fn content_object(
        &self,
        list: &ContentList,
        pins: &crate::chunk_store::Pins<'_>,
        seen: &mut HashSet<ChunkId>,
    ) -> Result<(ChunkId, Option<Location>, u64)> {
        let raw = list.encode();
        let id = ChunkId::of(&raw);
        pins.pin(id);
        if ChunkStore::has(&self.db.lock(), &id)? || !seen.insert(id) {
            return Ok((id, None, 0));
        }
        let comp = pack::compress(&raw, self.opts.zstd_level);
        let stored = comp.as_ref().map_or(raw.len(), |c| c.len()) as u64;
        Ok((
            id,
            Some(self.chunks.append(KIND_CONTENT, &raw, comp, id)?),
            stored,
        ))
    }
}

impl Store {
    /// Chunks and stores a sealed file as its snapshot's freeze saw it (the live file
    /// is left alone). Returns its content, the locations to index in the snapshot's
    /// commit, and the pins that keep its chunks until then.
    pub(crate) fn ingest_sealed(&self, st: &StagedFile) -> Result<Chunked<'_>> {
        self.latch.check()?;
        let _one = self.ingest_lock.lock().unwrap();
        let (size, segments, resume_at) = {
            let g = st.lock();
            let seal = g.seal.as_ref().ok_or(StoreError::Raced(st.ino))?;
            let (base, base_limit, ranges, file) = seal.layout();
            let mut base_data = RangeSet::default();
            if let Some(b) = base {
                self.content_data(&b, 0, &mut base_data)?;
            }
            let segs = segments_of(base, base_limit, &ranges, &file, seal.size, &base_data)
                .map_err(|e| StoreError::io("map sealed data", &st.path, e))?;
            // As for a live overlay: a file the pre-flush ingested part of and that
            // grew since is read from the last cut before its first change, not whole.
            let resume_at = match base {
                Some(b) if segs == [Segment::Data(0, seal.size)] => {
                    let first = ranges
                        .iter()
                        .next()
                        .map_or(base_limit, |(s, _)| s.min(base_limit));
                    Some((b, first))
                }
                _ => None,
            };
            (seal.size, segs, resume_at)
        };
        let resume = match resume_at {
            Some((b, first)) => self.resume_plan(&b, first)?,
            None => None,
        };
        let r = self.chunk_file(st, size, &(segments, resume), true);
        if r.is_err() {
            self.forget_failed_parts(st.ino);
        }
        r
    }
}

/// What chunking a file gives: its content, the locations to index when it commits, its
/// report, and the pins that keep its chunks until then.
type Chunked<'a> = (
    Option<ChunkId>,
    Vec<Location>,
    IngestReport,
    crate::chunk_store::Pins<'a>,
);

impl Store {
    /// After a failed ingest: the parts it committed are garbage now (GC collects them).
    fn forget_failed_parts(&self, ino: FileId) {
        if let Err(e) = forget_parts(&self.db.lock(), ino) {
            tracing::warn!(%ino, error = %e, "could not clear ingest parts");
        }
    }
}

/// Where an ingest may resume instead of reading a file from its start: the base's
/// leaves and chunks before the first change, kept as they are, and the offset the
/// chunker starts from.
#[derive(Clone, Debug)]
pub(crate) struct Resume {
    parts: Vec<(u64, ChunkId)>,
    prefix: Vec<(u32, ChunkId)>,
    at: u64,
}

impl Store {
    /// The resume point of an overlay whose first changed byte is `first_change`, when
    /// there is one. A cut depends only on the bytes since the previous cut, so a full
    /// re-read of the new view would cut exactly where the base was cut up to the last
    /// cut at or before the change; the chunks up to there are reused, whole leaves of
    /// a multi-part base included. Not for a base with holes (its segmentation may
    /// differ) nor deeper than one index level, and never reusing the base's last chunk
    /// (it ended at the old end of file, not at a content cut). The caller makes sure
    /// the new view is one data segment.
    fn resume_plan(&self, base: &ChunkId, first_change: u64) -> Result<Option<Resume>> {
        let top = self.content(base)?;
        let leaves: Vec<(u64, ChunkId)> = if top.index {
            top.entries.clone()
        } else {
            vec![(top.len(), *base)]
        };
        let mut parts = Vec::new();
        let mut pos = 0u64;
        for (i, (len, id)) in leaves.iter().enumerate() {
            let leaf = if top.index {
                self.content(id)?
            } else {
                top.clone()
            };
            if leaf.index || leaf.entries.iter().any(|(_, c)| c.is_hole()) {
                return Ok(None);
            }
            let last_leaf = i + 1 == leaves.len();
            if pos + len <= first_change && !last_leaf {
                parts.push((*len, *id));
                pos += len;
                continue;
            }
            let n = leaf.entries.len();
            let mut prefix = Vec::new();
            for (k, (l, c)) in leaf.entries.iter().enumerate() {
                if (last_leaf && k + 1 == n) || pos + l > first_change {
                    break;
                }
                prefix.push((*l as u32, *c));
                pos += l;
            }
            if pos == 0 {
                return Ok(None);
            }
            return Ok(Some(Resume {
                parts,
                prefix,
                at: pos,
            }));
        }
        Ok(None)
    }
}

/// What the cut thread sends on: a batch of cut and hashed chunks, or a hole.
enum Cut {
    Data(Vec<u8>, Vec<usize>, Vec<ChunkId>),
    Hole(u64),
}

/// A stretch of a staged file: bytes to chunk, or a hole that reads as zeros and is
/// stored as hole entries (nothing read, hashed or stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    Data(u64, u64),
    Hole(u64),
}

/// Holes shorter than this are chunked as zeros, so that small gaps do not break
/// content-defined chunking into many pieces.
const MIN_HOLE: u64 = 1 << 20;
/// Largest hole one content list entry describes.
const HOLE_ENTRY_MAX: u64 = 1 << 30;

/// Content list entries for a hole of `len` bytes.
fn hole_entries(len: u64) -> Vec<(u32, ChunkId)> {
    let mut out = Vec::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(HOLE_ENTRY_MAX);
        out.push((n as u32, ChunkId::HOLE));
        left -= n;
    }
    out
}

/// The data and hole stretches of a staged file's merged view, `[0, size)`.
/// Full mode asks the filesystem (SEEK_DATA / SEEK_HOLE on the staging file); overlay
/// mode knows its data: the base below its limit and the staged ranges.
pub(crate) fn segments(
    g: &crate::staging::StagedState,
    size: u64,
    base_data: &RangeSet,
) -> std::io::Result<Vec<Segment>> {
    segments_of(g.base, g.base_limit, &g.ranges, &g.file, size, base_data)
}

/// [`segments`] of a layout: the base and its limit, the staged ranges (overlay) or the
/// staging file's own extents (full mode).
fn segments_of(
    base: Option<ChunkId>,
    base_limit: u64,
    ranges: &RangeSet,
    file: &std::fs::File,
    size: u64,
    base_data: &RangeSet,
) -> std::io::Result<Vec<Segment>> {
    let mut data = RangeSet::default();
    match base {
        Some(_) => {
            let limit = base_limit.min(size);
            for (s, e) in base_data.iter() {
                data.insert(s.min(limit), e.min(limit));
            }
            for (s, e) in ranges.iter() {
                data.insert(s.min(size), e.min(size));
            }
        }
        None => {
            for (s, e) in crate::staging::data_extents(file, size)? {
                data.insert(s, e);
            }
        }
    }
    // Gaps shorter than MIN_HOLE join the data around them.
    let mut out = Vec::new();
    let mut pos = 0u64;
    let mut open: Option<u64> = None;
    for (s, e) in data.iter() {
        if s - pos >= MIN_HOLE {
            if let Some(d) = open.take() {
                out.push(Segment::Data(d, pos));
            }
            out.push(Segment::Hole(s - pos));
            open = Some(s);
        } else if open.is_none() {
            open = Some(pos);
        }
        pos = e;
    }
    if size.saturating_sub(pos) >= MIN_HOLE {
        if let Some(d) = open.take() {
            out.push(Segment::Data(d, pos));
        }
        out.push(Segment::Hole(size - pos));
    } else {
        let d = open.unwrap_or(pos);
        if size > d {
            out.push(Segment::Data(d, size));
        }
    }
    Ok(out)
}

impl Store {
    /// Adds where content `c`, placed at `at`, holds data (everything but its hole
    /// entries) to `out`.
    fn content_data(&self, c: &ChunkId, at: u64, out: &mut RangeSet) -> Result<()> {
        let list = self.content(c)?;
        let mut pos = at;
        for (len, id) in &list.entries {
            if list.index {
                self.content_data(id, pos, out)?;
            } else if !id.is_hole() {
                out.insert(pos, pos + len);
            }
            pos += len;
        }
        Ok(())
    }
}

/// An upper bound of the new bytes an ingest of this file may store: what the staging
/// file really holds (allocated blocks), not its apparent size.
fn new_data_bound(g: &crate::staging::StagedState, path: &std::path::Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let m = g
        .file
        .metadata()
        .map_err(|e| StoreError::io("stat staging file", path, e))?;
    let allocated = m.blocks() * 512;
    Ok(match g.base {
        None => allocated.min(g.size),
        // Edits re-chunk up to one chunk on each side of every staged range.
        Some(_) => {
            let ranges = g.ranges.iter().count() as u64;
            allocated + ranges * 2 * crate::format::CHUNK_MAX as u64
        }
    })
}

/// Records leaf `seq` of the ingest of `ino` as committed (GC marks it).
/// A file's part of an ingest commit: its content and size, and its durable copy gone
/// (`copied`) in the same transaction that makes the content durable. Returns whether
/// the file still exists (a removed one only loses its copy).
fn commit_content(
    tx: &Connection,
    ino: FileId,
    copied: bool,
    content: Option<ChunkId>,
    size: u64,
    mtime: crate::namespace::Timespec,
) -> Result<bool> {
    if copied {
        crate::staging::put_copy(tx, ino, None)?;
    }
    let exists = namespace::get_opt(tx, ino)?.is_some();
    if exists {
        namespace::set_content(tx, ino, content, size, Some(mtime))?;
    }
    Ok(exists)
}

fn record_part(conn: &Connection, ino: FileId, seq: u64, leaf: &ChunkId) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO ingest_parts(ino, seq, leaf) VALUES(?1, ?2, ?3)",
        rusqlite::params![ino.0 as i64, seq as i64, &leaf.0[..]],
    )
    .map_err(|e| StoreError::db("recording ingest part", e))?;
    Ok(())
}

/// Forgets the parts of the ingest of `ino` (it committed, or failed).
pub(crate) fn forget_parts(conn: &Connection, ino: FileId) -> Result<()> {
    conn.execute("DELETE FROM ingest_parts WHERE ino=?1", [ino.0 as i64])
        .map_err(|e| StoreError::db("clearing ingest parts", e))?;
    Ok(())
}

/// Leaves committed by ingests in progress (GC marks them).
pub(crate) fn committed_leaves(conn: &Connection) -> Result<Vec<ChunkId>> {
    let mut st = conn
        .prepare("SELECT leaf FROM ingest_parts")
        .map_err(|e| StoreError::db("listing ingest parts", e))?;
    let rows = st
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .map_err(|e| StoreError::db("listing ingest parts", e))?;
    rows.map(|r| {
        let b = r.map_err(|e| StoreError::db("listing ingest parts", e))?;
        ChunkId::from_row(&b, "ingest_parts.leaf")
    })
    .collect()
}

/// Whether a crash interrupted ingests (their parts are still recorded).
pub(crate) fn has_interrupted(conn: &Connection) -> Result<bool> {
    conn.prepare("SELECT 1 FROM ingest_parts LIMIT 1")
        .and_then(|mut st| st.exists([]))
        .map_err(|e| StoreError::db("reading interrupted ingests", e))
}

/// Forgets every recorded part (at open: their chunks become ordinary garbage).
pub(crate) fn clear_interrupted(conn: &Connection) -> Result<()> {
    conn.execute("DELETE FROM ingest_parts", [])
        .map_err(|e| StoreError::db("clearing interrupted ingests", e))?;
    Ok(())
}

/// Ingests staged files that have had no write for `idle`.
pub(crate) fn ingest_idle(store: &Store, idle: Duration) -> Result<IngestReport> {
    store.ingest_idle_at(idle, Instant::now())
}

/// [`Store::ingest_idle`] as of `now` (the clock is the caller's: tests move it
/// instead of waiting).
pub(crate) fn ingest_idle_at(store: &Store, idle: Duration, now: Instant) -> Result<IngestReport> {
    let quiet: Vec<_> = store
        .staging
        .all()
        .into_iter()
        .filter(|s| now.saturating_duration_since(s.lock().last_write) >= idle)
        .collect();
    store.ingest_files(quiet)
}

/// Ingests every staged file (of one volume, or all).
pub(crate) fn ingest_all(store: &Store, vol: Option<VolumeId>) -> Result<IngestReport> {
    let mut files = store.staging.all();
    if let Some(v) = vol {
        let conn = store.db.lock();
        files.retain(|s| {
            namespace::get_opt(&conn, s.ino)
                .ok()
                .flatten()
                .is_some_and(|i| i.vol == v)
        });
    }
    store.ingest_files(files)
}

/// Ingests one file now, if it is staged.
pub(crate) fn ingest_file(store: &Store, ino: FileId) -> Result<IngestReport> {
    match store.staging.get(ino) {
        Some(st) => store.ingest_one(&st),
        None => Ok(IngestReport::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hole_entries_cover_what_they_say() {
        // 3 GiB + 5 bytes of hole: three full entries and a short one.
        let list = hole_entries(3 * HOLE_ENTRY_MAX + 5);
        assert_eq!(list.len(), 4);
        assert_eq!(ContentList::new(list).len(), 3 * HOLE_ENTRY_MAX + 5);
    }

    /// Overlay mode: base below its limit and staged ranges are data, the rest holes
    /// (short gaps join the data).
    #[test]
    fn segments_of_an_overlay() {
        let tmp = tempfile::tempfile().unwrap();
        let mut ranges = crate::staging::RangeSet::default();
        ranges.insert(10 << 20, (10 << 20) + 100);
        ranges.insert((10 << 20) + 200, (10 << 20) + 300);
        let g = crate::staging::StagedState::for_test(tmp, Some(ChunkId([1; 32])), 4096, ranges);
        let mut base = crate::staging::RangeSet::default();
        base.insert(0, 1 << 20);
        let segs = segments(&g, 100 << 20, &base).unwrap();
        assert_eq!(
            segs,
            vec![
                Segment::Data(0, 4096),
                Segment::Hole((10 << 20) - 4096),
                Segment::Data(10 << 20, (10 << 20) + 300),
                Segment::Hole((90 << 20) - 300),
            ]
        );
        let total: u64 = segs
            .iter()
            .map(|s| match s {
                Segment::Data(a, b) => b - a,
                Segment::Hole(n) => *n,
            })
            .sum();
        assert_eq!(total, 100 << 20);
    }

    /// Full mode asks the filesystem where data is: a 4-byte write at 3 GiB of an
    /// otherwise empty file is one hole and one short data stretch.
    #[test]
    fn segments_of_a_sparse_staging_file() {
        use std::os::unix::fs::FileExt;
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(b"tail", 3 << 30).unwrap();
        let size = (3 << 30) + 4;
        let g = crate::staging::StagedState::for_test(f, None, 0, Default::default());
        let segs = segments(&g, size, &Default::default()).unwrap();
        assert_eq!(segs.len(), 2, "{segs:?}");
        assert!(matches!(segs[0], Segment::Hole(n) if n >= (3 << 30) - (1 << 20)));
        assert!(matches!(segs[1], Segment::Data(_, e) if e == size));
    }
}
