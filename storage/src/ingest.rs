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

use crate::chunk_store::ChunkStore;
use crate::chunker::Chunker;
use crate::content::ContentList;
use crate::error::{Result, StoreError};
use crate::format::{BUNDLE_TARGET, KIND_CONTENT};
use crate::ids::{ChunkId, FileId, VolumeId};
use crate::namespace;
use crate::pack::{self, Location};
use crate::staging::{IngestLog, Staged};
use crate::store::Store;
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
    pub elapsed: Duration,
    /// Time spent making new records durable (fsync of packs).
    pub sync_time: Duration,
}

impl IngestReport {
    fn add(&mut self, o: &IngestReport) {
        self.files += o.files;
        self.bytes += o.bytes;
        self.chunks += o.chunks;
        self.new_chunks += o.new_chunks;
        self.new_bytes += o.new_bytes;
        self.stored_bytes += o.stored_bytes;
        self.raced += o.raced;
        self.rebased += o.rebased;
        self.sync_time += o.sync_time;
    }
}

/// Reads the merged view of a staged file in pieces, taking the file lock per piece.
struct MergedReader<'a> {
    store: &'a Store,
    st: &'a Staged,
    pos: u64,
    size: u64,
}

impl Read for MergedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.size - self.pos).min(buf.len() as u64).min(4 << 20) as usize;
        if n == 0 {
            return Ok(0);
        }
        let g = self.st.lock();
        let ino = self.st.ino;
        let what = || format!("file id {ino}");
        self.st
            .read_into(&g, self.pos, &mut buf[..n], &|c, o, b| {
                self.store.read_content(&c, o, b, &what)
            })
            .map_err(std::io::Error::other)?;
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
        conn: &std::sync::Mutex<rusqlite::Connection>,
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
            let conn = conn.lock().unwrap();
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

    /// Ingests staged files that have had no write for `idle`.
    pub fn ingest_idle(&self, idle: Duration) -> Result<IngestReport> {
        let now = Instant::now();
        let quiet: Vec<_> = self
            .staging
            .all()
            .into_iter()
            .filter(|s| now.duration_since(s.lock().last_write) >= idle)
            .collect();
        self.ingest_files(quiet)
    }

    /// Ingests every staged file (of one volume, or all).
    pub fn ingest_all(&self, vol: Option<VolumeId>) -> Result<IngestReport> {
        let mut files = self.staging.all();
        if let Some(v) = vol {
            let conn = self.db.lock();
            files.retain(|s| {
                namespace::get_opt(&conn, s.ino)
                    .ok()
                    .flatten()
                    .is_some_and(|i| i.vol == v)
            });
        }
        self.ingest_files(files)
    }

    fn ingest_files(&self, files: Vec<Arc<Staged>>) -> Result<IngestReport> {
        let t0 = Instant::now();
        let mut total = IngestReport::default();
        for st in files {
            match self.ingest_one(&st) {
                Ok(r) => total.add(&r),
                Err(StoreError::Raced(_)) => total.raced += 1,
                Err(e) => return Err(e),
            }
        }
        total.elapsed = t0.elapsed();
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

    /// Ingests one file now, if it is staged.
    pub fn ingest_file(&self, ino: FileId) -> Result<IngestReport> {
        match self.staging.get(ino) {
            Some(st) => self.ingest_one(&st),
            None => Ok(IngestReport::default()),
        }
    }

    fn ingest_one(&self, st: &Staged) -> Result<IngestReport> {
        self.latch.check()?;
        let _one = self.ingest_lock.lock().unwrap();
        let t0 = Instant::now();
        let (size, mtime) = {
            let mut g = st.lock();
            if g.dropped {
                return Ok(IngestReport::default());
            }
            g.ingesting = Some(IngestLog::default());
            (g.size, g.mtime)
        };
        // Worst case the file is new and incompressible: refuse up front rather than
        // fill the disk with a half-written pack that only GC could reclaim.
        let free = self.free_bytes();
        let margin = 4 << 20;
        if free < size.saturating_add(margin) {
            st.lock().ingesting = None;
            return Err(StoreError::NoSpace {
                context: format!(
                    "ingesting file {} needs up to {size} bytes, {free} free; ingest waits",
                    st.ino
                ),
            });
        }
        let r = self.ingest_and_commit(st, size, mtime, t0);
        if r.is_err() {
            st.lock().ingesting = None;
            // Parts committed by this attempt are garbage now (GC collects them).
            if let Err(e) = self
                .db
                .lock()
                .execute("DELETE FROM ingest_parts WHERE ino=?1", [st.ino.0 as i64])
            {
                tracing::warn!(ino = %st.ino, error = %e, "could not clear ingest parts");
            }
        }
        r
    }

    fn ingest_and_commit(
        &self,
        st: &Staged,
        size: u64,
        mtime: crate::namespace::Timespec,
        t0: Instant,
    ) -> Result<IngestReport> {
        let (content, locs, mut report, pins) = self.chunk_file(st, size)?;
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
        let mut conn = self.db.lock();
        let tx = conn
            .transaction()
            .map_err(|e| StoreError::db("begin ingest commit", e))?;
        ChunkStore::index_rows(&tx, &locs, &sealed)?;
        tx.execute("DELETE FROM ingest_parts WHERE ino=?1", [st.ino.0 as i64])
            .map_err(|e| StoreError::db("clearing ingest parts", e))?;
        let exists = namespace::get_opt(&tx, st.ino)?.is_some();
        if exists {
            namespace::set_content(&tx, st.ino, content, size, Some(mtime))?;
        }
        tx.commit()
            .map_err(|e| StoreError::db("commit ingest", e))?;
        drop(conn);
        drop(pins);
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

    #[allow(clippy::type_complexity)]
    fn chunk_file(
        &self,
        st: &Staged,
        size: u64,
    ) -> Result<(
        Option<ChunkId>,
        Vec<Location>,
        IngestReport,
        crate::chunk_store::Pins<'_>,
    )> {
        let mut report = IngestReport {
            bytes: size,
            ..Default::default()
        };
        let pins = self.chunks.pins();
        let mut locs = Vec::new();
        let mut list: Vec<(u32, ChunkId)> = Vec::new();
        let mut seen: HashSet<ChunkId> = HashSet::new();
        let reader = MergedReader {
            store: self,
            st,
            pos: 0,
            size,
        };
        let mut chunker = Chunker::new(reader, self.opts.chunker, self.opts.ingest_buffer);
        let read_err = |e: std::io::Error| match e.into_inner().map(|b| b.downcast::<StoreError>())
        {
            Some(Ok(se)) => *se,
            Some(Err(other)) => {
                StoreError::Invalid(format!("reading staged file {}: {other}", st.ino))
            }
            None => StoreError::Invalid(format!("reading staged file {}", st.ino)),
        };
        let reader_conn = &self.ingest_conn;
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
        type Batch = (Vec<u8>, Vec<usize>, Vec<ChunkId>);
        let (cut_tx, cut_rx) = std::sync::mpsc::sync_channel::<std::io::Result<Batch>>(2);
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
        // Leaf lists committed so far (only for files of more than one part).
        let mut parts: Vec<(u64, ChunkId)> = Vec::new();
        let appended: Result<u64> = std::thread::scope(|sc| {
            std::thread::Builder::new()
                .name("kura-cut".into())
                .spawn_scoped(sc, move || loop {
                    let spare = spare_rx.try_recv().ok();
                    match chunker.next_owned(spare) {
                        Ok(Some((buf, lens))) => {
                            // Hashing here (on rayon's global pool, in halves) keeps the
                            // ingest pool free for compression.
                            let ids = hash_chunks(&buf, &lens);
                            if cut_tx.send(Ok((buf, lens, ids))).is_err() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = cut_tx.send(Err(e));
                            break;
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
                        let (buf, lens, ids) = batch.map_err(read_err)?;
                        let (chunks, bundles) =
                            self.dedup_batch(&buf, &lens, ids, reader_conn, pins_ref, seen_ref)?;
                        let _ = spare_tx.try_send(buf);
                        nchunks += chunks.len() as u64;
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
            tx.execute(
                "INSERT OR REPLACE INTO ingest_parts(ino, seq, leaf) VALUES(?1, ?2, ?3)",
                rusqlite::params![ino.0 as i64, seq as i64, &id.0[..]],
            )
            .map_err(|e| StoreError::db("recording ingest part", e))?;
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
