//! Replication: what a volume's snapshots reach and the copy lacks, then the record.
//!
//! Objects are sent children first (a file's chunks, then its content list; a
//! directory's entries, then the directory object), in packs whose indexes are written
//! in order, each after its pack and after every earlier index. So whatever the copy's
//! indexes name, everything it refers to is named too: a directory object found there
//! means its whole subtree is there, and the walk skips it. That is what makes a copy
//! incremental (an unchanged subtree costs one lookup) and an interrupted copy
//! resumable (a rerun finds the packs indexed before the kill and sends the rest). The
//! snapshot record is written last: a half-sent snapshot is never listed at the target.

use super::layout::{self, Entry, Record};
use super::Target;
use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::chunk_store::IndexEntry;
use storage::format::{CODEC_ZSTD, KIND_CONTENT, KIND_DATA, KIND_DIR};
use storage::ids::ChunkId;
use storage::namespace::FileKind;
use storage::Store;

/// Raw bytes collected into one blob (as the store's bundles).
const BLOB_TARGET: usize = storage::format::BUNDLE_TARGET;
/// Packs uploading at once.
const UPLOADS: usize = 3;

/// What one replication did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub target: String,
    pub volume: String,
    /// Snapshots whose records were written this run, oldest first.
    pub snapshots_sent: Vec<String>,
    /// Records rewritten for a changed label, hold or lock.
    pub records_updated: usize,
    /// Snapshots the copy had already.
    pub snapshots_present: usize,
    /// Snapshots the copy lacks that are older than its newest: not sent (pruned there
    /// by its own retention, or older than its first copy).
    pub snapshots_skipped: Vec<String>,
    pub objects_sent: u64,
    /// Bytes of the objects sent, before compression.
    pub raw_bytes: u64,
    /// Bytes written to the target (packs, indexes, records).
    pub bytes_sent: u64,
    pub packs_sent: u64,
    /// The newest snapshot of the volume the copy now holds, and when it was taken.
    pub newest: Option<String>,
    pub newest_created_s: Option<i64>,
    pub seconds: f64,
}

/// Sends every snapshot of `volume` the copy lacks, oldest first. `stop` ends it early
/// (what was sent stays, and the next run goes on from there).
///
/// `full` walks every snapshot's whole tree and sends each object the copy's indexes
/// do not name, trusting no directory there to be complete: the repair after damage
/// (a pack or index lost or removed after verify named it). A copy whose indexes show
/// damage (one unreadable, a pack missing) is walked so without being asked. `sent`
/// counts the bytes uploaded as they go (for the running job's progress).
pub fn replicate(
    store: &Store,
    target: &Target,
    volume: &str,
    full: bool,
    stop: &AtomicBool,
    sent: Arc<AtomicU64>,
) -> Result<Report> {
    let t0 = Instant::now();
    store.volume(volume)?;
    let catalog = target.catalog()?;
    // An index whose pack is gone names objects the copy lacks: drop it, and what it
    // named is sent again below (verify names the loss until then).
    for p in &catalog.missing_packs {
        let id = p.trim_start_matches("packs/");
        tracing::warn!(target = %target.describe(), pack = %p, "pack missing: its index is dropped and its objects sent again");
        target.block(target.backend.delete(&format!("index/{id}")))?;
    }
    let at_target: HashMap<(String, String), (String, Record)> = target
        .records()?
        .into_iter()
        .map(|(k, r)| ((r.volume.clone(), r.name.clone()), (k, r)))
        .collect();
    let full = full || !catalog.missing_packs.is_empty() || !catalog.bad_indexes.is_empty();
    let mut s = Sender {
        store,
        target,
        full,
        visited: HashSet::new(),
        records: HashMap::new(),
        known: catalog.objects.keys().copied().collect(),
        data: Blob::default(),
        meta: Blob::default(),
        pack: Vec::new(),
        entries: Vec::new(),
        last: None,
        slots: Arc::new(tokio::sync::Semaphore::new(UPLOADS)),
        limiter: Arc::new(Limiter::new(target.bandwidth)),
        sent,
        report: Report {
            target: target.name.clone(),
            volume: volume.into(),
            ..Default::default()
        },
    };
    drop(catalog);
    // The copy follows the main site forward: a snapshot older than the newest one
    // there is not sent (the target's retention dropped it, or it predates the copy's
    // first run); resending it only for retention to drop it again would be churn.
    let newest_there = at_target
        .values()
        .filter(|(_, r)| r.volume == volume)
        .map(|(_, r)| (r.created_s, r.created_ns))
        .max();
    for snap in store.snapshots(Some(volume))? {
        if stop.load(Ordering::Relaxed) {
            return Err(anyhow!("stopped; the next run goes on from here"));
        }
        let root = store.snapshot_root(volume, &snap.name)?;
        let rec = Record::from_store(&snap, &root);
        let key = target.sealer.snapshot_key(volume, &snap.name);
        match at_target.get(&(volume.to_string(), snap.name.clone())) {
            Some((_, there)) if there.root == rec.root => {
                s.report.snapshots_present += 1;
                if full {
                    s.dir(&snap.root, stop)
                        .with_context(|| format!("checking snapshot {volume}@{}", snap.name))?;
                    s.finish()?;
                }
                if *there != rec {
                    s.put_small(&key, rec.encode(&target.sealer))?;
                    s.report.records_updated += 1;
                }
            }
            None if newest_there.is_some_and(|n| (snap.created.sec, snap.created.nsec) < n) => {
                s.report.snapshots_skipped.push(snap.name.clone());
                continue;
            }
            _ => {
                s.dir(&snap.root, stop)
                    .with_context(|| format!("sending snapshot {volume}@{}", snap.name))?;
                s.finish()?;
                s.put_small(&key, rec.encode(&target.sealer))?;
                s.report.snapshots_sent.push(snap.name.clone());
            }
        }
        s.report.newest = Some(snap.name.clone());
        s.report.newest_created_s = Some(snap.created.sec);
    }
    s.report.bytes_sent = s.sent.load(Ordering::Relaxed);
    s.report.seconds = t0.elapsed().as_secs_f64();
    Ok(s.report)
}

/// The members of one bundle record: (chunk, offset in the record, length).
type Members = Vec<(ChunkId, u32, u32)>;

#[derive(Default)]
struct Blob {
    raw: Vec<u8>,
    members: Vec<(ChunkId, u8, u32, u32)>,
}

struct Sender<'a> {
    store: &'a Store,
    target: &'a Target,
    /// Walk whole trees (see [`replicate`]); `visited` keeps shared subtrees to once.
    full: bool,
    visited: HashSet<ChunkId>,
    /// Members of each bundle record not sent yet, by pack and record offset (a pack's
    /// rows are read once, when its first record is sent).
    records: HashMap<storage::ids::PackId, HashMap<u64, Members>>,
    /// Objects the copy has (indexed) or that this run has queued.
    known: HashSet<ChunkId>,
    /// Chunks, and the small objects above them, go to separate blobs: restore and
    /// verify walk trees without opening data blobs.
    data: Blob,
    meta: Blob,
    pack: Vec<u8>,
    entries: Vec<Entry>,
    /// The upload of the newest pack; it waits for every earlier one.
    last: Option<tokio::task::JoinHandle<Result<()>>>,
    slots: Arc<tokio::sync::Semaphore>,
    limiter: Arc<Limiter>,
    sent: Arc<AtomicU64>,
    report: Report,
}

impl Sender<'_> {
    /// Whether the walk goes below `id` (a directory or content list).
    fn enter(&mut self, id: &ChunkId) -> bool {
        match self.full {
            true => self.visited.insert(*id),
            false => !self.known.contains(id),
        }
    }

    fn dir(&mut self, id: &ChunkId, stop: &AtomicBool) -> Result<()> {
        if !self.enter(id) {
            return Ok(());
        }
        if stop.load(Ordering::Relaxed) {
            return Err(anyhow!("stopped; the next run goes on from here"));
        }
        let entries = self.store.dir_entries(id)?;
        for e in entries.iter() {
            match (e.attr.kind, &e.target_ref) {
                (FileKind::Dir, Some(t)) => self.dir(t, stop)?,
                (FileKind::File, Some(c)) => self.content(c)?,
                _ => {}
            }
        }
        if self.known.contains(id) {
            return Ok(());
        }
        let raw = self.store.object(id)?;
        self.emit(*id, KIND_DIR, &raw)
    }

    fn content(&mut self, id: &ChunkId) -> Result<()> {
        if !self.enter(id) {
            return Ok(());
        }
        let list = self.store.content_list(id)?;
        for (_, c) in &list.entries {
            if c.is_hole() {
                continue;
            }
            if list.index {
                self.content(c)?;
            } else if !self.known.contains(c) {
                self.data_chunk(c)?;
            }
        }
        if self.known.contains(id) {
            return Ok(());
        }
        let raw = self.store.object(id)?;
        self.emit(*id, KIND_CONTENT, &raw)
    }

    /// A chunk the copy lacks: its whole bundle record goes as the store keeps it
    /// (compressed once, at ingest; no decode, no re-encode), with an index entry for
    /// each member. A chunk kept alone is sent decoded.
    fn data_chunk(&mut self, c: &ChunkId) -> Result<()> {
        if let Some(e) = self.store.object_location(c)? {
            if e.inner_off >= 0 {
                self.send_record(&e)?;
            }
        }
        if !self.known.contains(c) {
            let raw = self.store.object(c)?;
            self.emit(*c, KIND_DATA, &raw)?;
        }
        Ok(())
    }

    fn send_record(&mut self, e: &IndexEntry) -> Result<()> {
        if !self.records.contains_key(&e.pack) {
            let mut by_record: HashMap<u64, Members> = HashMap::new();
            for (id, row) in self.store.pack_rows(e.pack)? {
                if row.inner_off >= 0 {
                    by_record.entry(row.offset).or_default().push((
                        id,
                        row.inner_off as u32,
                        row.raw_len,
                    ));
                }
            }
            self.records.insert(e.pack, by_record);
        }
        let Some(members) = self
            .records
            .get_mut(&e.pack)
            .and_then(|r| r.remove(&e.offset))
        else {
            return Ok(()); // sent already (a stale location): the caller sends the chunk
        };
        let (h, stored) = self.store.stored_record(e)?;
        let raw_flag = if h.codec == CODEC_ZSTD {
            0
        } else {
            layout::RAW_BLOB
        };
        let sealed = self.target.sealer.seal(stored);
        let off = self.pack.len() as u64;
        for (id, inner, len) in members {
            if self.known.insert(id) {
                self.report.objects_sent += 1;
                self.report.raw_bytes += len as u64;
                self.entries.push(Entry {
                    id,
                    kind: KIND_DATA | raw_flag,
                    blob_off: off,
                    blob_len: sealed.len() as u32,
                    inner_off: inner,
                    raw_len: len,
                    blob_raw: h.raw_len,
                });
            }
        }
        self.pack.extend_from_slice(&sealed);
        if self.pack.len() >= self.target.pack_bytes {
            self.ship()?;
        }
        Ok(())
    }

    fn emit(&mut self, id: ChunkId, kind: u8, raw: &[u8]) -> Result<()> {
        self.known.insert(id);
        self.report.objects_sent += 1;
        self.report.raw_bytes += raw.len() as u64;
        let meta = kind != KIND_DATA;
        let b = if meta { &mut self.meta } else { &mut self.data };
        if !b.raw.is_empty() && b.raw.len() + raw.len() > BLOB_TARGET {
            self.close_blob(meta)?;
        }
        let b = if meta { &mut self.meta } else { &mut self.data };
        b.members
            .push((id, kind, b.raw.len() as u32, raw.len() as u32));
        b.raw.extend_from_slice(raw);
        if b.raw.len() >= BLOB_TARGET {
            self.close_blob(meta)?;
        }
        Ok(())
    }

    fn close_blob(&mut self, meta: bool) -> Result<()> {
        let b = std::mem::take(if meta { &mut self.meta } else { &mut self.data });
        if b.members.is_empty() {
            return Ok(());
        }
        let sealed = layout::seal_blob(&b.raw, &self.target.sealer);
        let off = self.pack.len() as u64;
        for (id, kind, inner, len) in b.members {
            self.entries.push(Entry {
                id,
                kind,
                blob_off: off,
                blob_len: sealed.len() as u32,
                inner_off: inner,
                raw_len: len,
                blob_raw: b.raw.len() as u32,
            });
        }
        self.pack.extend_from_slice(&sealed);
        if self.pack.len() >= self.target.pack_bytes {
            self.ship()?;
        }
        Ok(())
    }

    /// Starts the upload of the pack built so far (and its index after it).
    fn ship(&mut self) -> Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let id = layout::new_pack_id();
        let pack = bytes::Bytes::from(std::mem::take(&mut self.pack));
        let index = bytes::Bytes::from(layout::encode_index(
            &std::mem::take(&mut self.entries),
            &self.target.sealer,
        ));
        self.report.packs_sent += 1;
        let permit = self
            .target
            .block(self.slots.clone().acquire_owned())
            .expect("semaphore open");
        let prev = self.last.take();
        let backend = self.target.backend.clone();
        let (limiter, sent) = (self.limiter.clone(), self.sent.clone());
        self.last = Some(self.target.rt.spawn(async move {
            let _permit = permit;
            limiter.wait(pack.len()).await;
            let n = pack.len() as u64;
            backend.put(&format!("packs/{id}"), pack).await?;
            sent.fetch_add(n, Ordering::Relaxed);
            if let Some(prev) = prev {
                prev.await.map_err(|e| anyhow!("upload task: {e}"))??;
            }
            limiter.wait(index.len()).await;
            let n = index.len() as u64;
            backend.put(&format!("index/{id}"), index).await?;
            sent.fetch_add(n, Ordering::Relaxed);
            Ok(())
        }));
        Ok(())
    }

    /// Closes open blobs and the pack, and waits until everything queued is indexed.
    fn finish(&mut self) -> Result<()> {
        self.close_blob(false)?;
        self.close_blob(true)?;
        self.ship()?;
        if let Some(last) = self.last.take() {
            self.target
                .block(last)
                .map_err(|e| anyhow!("upload task: {e}"))??;
        }
        Ok(())
    }

    fn put_small(&mut self, key: &str, b: Vec<u8>) -> Result<()> {
        let n = b.len() as u64;
        let (backend, limiter) = (&self.target.backend, &self.limiter);
        self.target.block(async {
            limiter.wait(b.len()).await;
            backend.put(key, b.into()).await
        })?;
        self.sent.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}

/// Keeps uploads under a rate (bytes per second): each upload waits until the bytes
/// sent before it fit the rate.
struct Limiter {
    rate: Option<f64>,
    start: Instant,
    booked: std::sync::Mutex<f64>,
}

impl Limiter {
    fn new(rate: Option<f64>) -> Limiter {
        Limiter {
            rate,
            start: Instant::now(),
            booked: std::sync::Mutex::new(0.0),
        }
    }

    async fn wait(&self, bytes: usize) {
        let Some(rate) = self.rate else { return };
        let at = {
            let mut b = self.booked.lock().unwrap();
            let at = *b / rate;
            *b += bytes as f64;
            at
        };
        let due = self.start + Duration::from_secs_f64(at);
        tokio::time::sleep_until(due.into()).await;
    }
}
