//! Ingest: staged files → content-defined chunks → deduplicated, compressed packs.
//!
//! A file is read sequentially through its merged view (staging over base), cut with
//! FastCDC, and each batch of chunks is hashed and (if new) compressed on the ingest
//! threads. New records are appended to the current pack, the pack is fsynced, and then
//! one transaction indexes the new chunks and points the inode at its new content list.
//! Only then is the staging file dropped. Writes that raced the ingest stay staged as an
//! overlay of the new content; a truncate that raced it makes the ingest give up (the
//! records it wrote are garbage for GC) and the file is tried again later.
//!
//! Memory: one read buffer (`ingest_buffer`) plus its compressed copies at a time.

use crate::chunk_store::ChunkStore;
use crate::chunker::Chunker;
use crate::content::ContentList;
use crate::error::{Result, StoreError};
use crate::format::{KIND_CONTENT, KIND_DATA};
use crate::ids::{ChunkId, FileId, VolumeId};
use crate::namespace;
use crate::pack::{self, Location};
use crate::staging::{IngestLog, Staged};
use crate::store::Store;
use rayon::prelude::*;
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
    pub elapsed: Duration,
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
            .read_into(&g, self.pos, &mut buf[..n], &|c, o, b| self.store.read_content(&c, o, b, &what))
            .map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Store {
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
            files.retain(|s| namespace::get_opt(&conn, s.ino).ok().flatten().is_some_and(|i| i.vol == v));
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
        let r = self.chunk_file(st, size);
        let (content, locs, mut report, pins) = match r {
            Ok(v) => v,
            Err(e) => {
                st.lock().ingesting = None;
                return Err(e);
            }
        };
        // Chunk records first, then the references to them.
        let sealed = self.chunks.writer.lock().unwrap().sync(&self.latch)?;
        let _gc = self.gc_lock.read().unwrap();
        let mut g = st.lock();
        let log = g.ingesting.take().unwrap_or_default();
        if log.truncated || g.dropped {
            return Err(StoreError::Raced(st.ino));
        }
        let mut conn = self.db.lock();
        let tx = conn.transaction().map_err(|e| StoreError::db("begin ingest commit", e))?;
        ChunkStore::index_rows(&tx, &locs, &sealed)?;
        let exists = namespace::get_opt(&tx, st.ino)?.is_some();
        if exists {
            namespace::set_content(&tx, st.ino, content, size, Some(mtime))?;
        }
        tx.commit().map_err(|e| StoreError::db("commit ingest", e))?;
        drop(conn);
        drop(pins);
        if log.writes.is_empty() || !exists {
            g.dropped = true;
            self.staging.drop_file(st.ino)?;
        } else {
            match content {
                Some(c) => self.staging.rebase(&self.latch, st, &mut g, c, size, &log.writes)?,
                // An empty file whose writes raced the ingest: the staging file already
                // holds exactly the raced bytes (it was empty when read), full mode fits.
                None => {}
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
    ) -> Result<(Option<ChunkId>, Vec<Location>, IngestReport, crate::chunk_store::Pins<'_>)> {
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
        let level = self.opts.zstd_level;
        loop {
            let (buf, lens) = chunker
                .next_batch()
                .map_err(|e| match e.into_inner().map(|b| b.downcast::<StoreError>()) {
                    Some(Ok(se)) => *se,
                    Some(Err(other)) => StoreError::Invalid(format!("reading staged file {}: {other}", st.ino)),
                    None => StoreError::Invalid(format!("reading staged file {}", st.ino)),
                })?;
            if buf.is_empty() {
                break;
            }
            let mut slices = Vec::with_capacity(lens.len());
            let mut p = 0;
            for l in &lens {
                slices.push(&buf[p..p + l]);
                p += l;
            }
            // Hash, check the index and compress new chunks, in parallel.
            let db = &self.db;
            let pins_ref = &pins;
            let results: Vec<Result<(ChunkId, Option<Option<Vec<u8>>>)>> = self.pool.install(|| {
                slices
                    .par_iter()
                    .map(|s| {
                        let id = ChunkId::of(s);
                        pins_ref.pin(id);
                        let known = ChunkStore::has(&db.lock(), &id)?;
                        Ok((id, (!known).then(|| pack::compress(s, level))))
                    })
                    .collect()
            });
            for (s, r) in slices.iter().zip(results) {
                let (id, new) = r?;
                report.chunks += 1;
                list.push((s.len() as u32, id));
                if let Some(comp) = new {
                    if seen.insert(id) {
                        let stored = comp.as_ref().map_or(s.len(), |c| c.len());
                        locs.push(self.chunks.append(KIND_DATA, s, comp, id)?);
                        report.new_chunks += 1;
                        report.new_bytes += s.len() as u64;
                        report.stored_bytes += stored as u64;
                    }
                }
            }
        }
        let content = if list.is_empty() {
            None
        } else {
            let raw = ContentList::new(list).encode();
            let id = ChunkId::of(&raw);
            pins.pin(id);
            if !ChunkStore::has(&self.db.lock(), &id)? && seen.insert(id) {
                let comp = pack::compress(&raw, level);
                report.stored_bytes += comp.as_ref().map_or(raw.len(), |c| c.len()) as u64;
                locs.push(self.chunks.append(KIND_CONTENT, &raw, comp, id)?);
            }
            Some(id)
        };
        Ok((content, locs, report, pins))
    }
}
