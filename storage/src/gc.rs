//! Garbage collection: mark-and-sweep of the chunk index, then repacking.
//!
//! Plan, then apply. `gc_plan` marks every object reachable from the live volumes
//! (content lists, cached directory trees) and from every snapshot, and lists the index
//! rows nothing reaches and the packs worth rewriting. `gc` applies it:
//! 1. under the GC lock held exclusive (ingest and snapshot commits wait), it deletes the
//!    unreachable index rows, skipping any chunk an ingest has pinned meanwhile;
//! 2. without that lock, each pack whose live fraction is below the threshold has its
//!    live records copied to a new pack, fsynced, re-indexed, and only then is the old
//!    pack file removed. Pack files with no indexed record (left by a crash) are removed.
//!    The pack currently being appended to is never touched.

use crate::chunk_store::ChunkStore;
use crate::error::{DbContext, Result, StoreError};
use crate::ids::{ChunkId, PackId};
use crate::pack::{self, Location};
use crate::store::Store;
use crate::tree::TreeEntry;
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Packs whose live bytes are below this fraction of the pack are rewritten.
    pub repack_below: f64,
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            repack_below: 0.5,
            dry_run: false,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct PackUsage {
    pub pack: PackId,
    pub file_bytes: u64,
    pub live_bytes: u64,
}

/// What a GC would do (or did).
#[derive(Clone, Debug, Default)]
pub struct GcPlan {
    pub reachable: u64,
    pub unreachable: Vec<ChunkId>,
    pub unreachable_bytes: u64,
    pub repack: Vec<PackUsage>,
    /// Pack files nothing is indexed in (left by a crash): removed whole.
    pub remove_packs: Vec<PackId>,
    /// Their bytes on disk.
    pub remove_bytes: u64,
}

impl GcPlan {
    /// Bytes of pack files the run gives back to the filesystem: orphan packs whole,
    /// and what rewriting each sparse pack frees (all of it when nothing in it lives).
    /// A run reports the same number as `reclaimed_bytes` when nothing changed between.
    pub fn reclaim_bytes(&self) -> u64 {
        self.remove_bytes
            + self
                .repack
                .iter()
                .map(|u| u.file_bytes.saturating_sub(u.live_bytes))
                .sum::<u64>()
    }
}

#[derive(Clone, Debug, Default)]
pub struct GcReport {
    pub plan: GcPlan,
    pub deleted_chunks: u64,
    pub repacked_packs: u64,
    pub removed_packs: u64,
    pub reclaimed_bytes: u64,
}

/// What one volume takes in the store ([`Store::usage`]).
#[derive(Clone, Debug, Default)]
pub struct VolumeUsage {
    pub volume: String,
    /// Objects (data chunks, content lists, directories) its files and snapshots reach.
    pub chunks: u64,
    /// Their plain bytes (after dedup within the volume, before compression).
    pub raw_bytes: u64,
    /// Their bytes in packs (after compression).
    pub stored_bytes: u64,
    /// Of those, the bytes no other volume reaches.
    pub exclusive_stored_bytes: u64,
}

impl Store {
    /// Every object reachable from live volumes and snapshots.
    fn mark(&self) -> Result<HashSet<ChunkId>> {
        let mut marked = HashSet::new();
        let (contents, trees, roots) = {
            let conn = self.db.lock();
            let (mut contents, trees) = crate::namespace::referenced_objects(&conn)?;
            // Leaves already committed by an ingest still in progress.
            contents.extend(crate::ingest::committed_leaves(&conn)?);
            let mut roots = crate::snapshot::roots(&conn)?;
            // What snapshot captures still to be finished refer to.
            let (held_trees, held_contents) = self.capture_roots.all();
            roots.extend(held_trees);
            contents.extend(held_contents);
            (contents, trees, roots)
        };
        for c in contents {
            self.mark_content(&c, &mut marked)?;
        }
        self.mark_trees(trees.into_iter().chain(roots).collect(), &mut marked)?;
        Ok(marked)
    }

    /// Marks directory objects from `stack` down, with every content list and chunk
    /// they reach.
    fn mark_trees(&self, mut stack: Vec<ChunkId>, marked: &mut HashSet<ChunkId>) -> Result<()> {
        while let Some(t) = stack.pop() {
            if !marked.insert(t) {
                continue;
            }
            let entries: std::sync::Arc<Vec<TreeEntry>> = self.dir_object(&t)?;
            for e in entries.iter() {
                match (e.attr.kind, e.target_ref) {
                    (crate::namespace::FileKind::Dir, Some(r)) => stack.push(r),
                    (_, Some(r)) => self.mark_content(&r, marked)?,
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// What each volume takes in the store: the objects its live files and its
    /// snapshots reach, each counted once per volume, and of those the ones no other
    /// volume reaches (what deleting the volume and GC would free). A walk of the whole
    /// store, like GC's mark: run it with GC, not per status call. Staged data is not
    /// counted (see [`Store::staged_by_volume`]).
    pub(crate) fn usage_walk(&self) -> Result<Vec<VolumeUsage>> {
        let vols = self.volumes()?;
        // Each volume's file contents, grouped once.
        let mut files: HashMap<crate::ids::VolumeId, Vec<ChunkId>> = HashMap::new();
        for (_, vol, c) in crate::namespace::files_with_content(&*self.db.reader()?)? {
            files.entry(vol).or_default().push(c);
        }
        let snaps = self.snapshots(None)?;
        // A bundle record holds several chunks compressed together: each member's
        // share of the record's stored bytes (header included, as in the store's
        // totals) is in proportion to its plain bytes.
        let rows: HashMap<ChunkId, crate::chunk_store::IndexEntry> =
            ChunkStore::all_rows(&*self.db.reader()?)?
                .into_iter()
                .collect();
        let mut record_raw: HashMap<(PackId, u64), u64> = HashMap::new();
        for e in rows.values() {
            *record_raw.entry((e.pack, e.offset)).or_default() += u64::from(e.raw_len);
        }
        let share = |e: &crate::chunk_store::IndexEntry| -> f64 {
            let total = record_raw[&(e.pack, e.offset)].max(1) as f64;
            let record = f64::from(e.stored_len) + crate::format::RECORD_HEADER_LEN as f64;
            record * f64::from(e.raw_len) / total
        };
        // Chunk → the one volume reaching it, or SHARED.
        const SHARED: usize = usize::MAX;
        let mut owner: HashMap<ChunkId, usize> = HashMap::new();
        let mut out = Vec::new();
        let mut stored = Vec::new();
        for (i, v) in vols.iter().enumerate() {
            let mut reached = HashSet::new();
            for c in files.get(&v.id).into_iter().flatten() {
                self.mark_content(c, &mut reached)?;
            }
            let mut roots = Vec::new();
            for s in snaps.iter().filter(|s| s.volume == v.name) {
                match self.snapshot_root(&v.name, &s.name) {
                    Ok(r) => roots.extend(r.target_ref),
                    // Deleted since the listing.
                    Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            self.mark_trees(roots, &mut reached)?;
            let mut u = VolumeUsage {
                volume: v.name.clone(),
                ..Default::default()
            };
            let mut st = 0.0;
            for id in reached {
                // Objects written by a capture not yet finished have no row yet.
                let Some(e) = rows.get(&id) else {
                    continue;
                };
                u.chunks += 1;
                u.raw_bytes += u64::from(e.raw_len);
                st += share(e);
                owner.entry(id).and_modify(|o| *o = SHARED).or_insert(i);
            }
            stored.push(st);
            out.push(u);
        }
        let mut own = vec![0.0; out.len()];
        for (id, o) in owner {
            if o != SHARED {
                own[o] += share(&rows[&id]);
            }
        }
        for (i, u) in out.iter_mut().enumerate() {
            u.stored_bytes = stored[i].round() as u64;
            u.exclusive_stored_bytes = own[i].round() as u64;
        }
        Ok(out)
    }

    fn mark_content(&self, c: &ChunkId, marked: &mut HashSet<ChunkId>) -> Result<()> {
        if !marked.insert(*c) {
            return Ok(());
        }
        self.visit_content(c, &mut |id| {
            marked.insert(*id);
        })
    }

    fn plan_from(
        &self,
        marked: &HashSet<ChunkId>,
        pinned: &HashSet<ChunkId>,
        opts: &GcOptions,
    ) -> Result<GcPlan> {
        let mut plan = GcPlan::default();
        // Per pack: (plain bytes still reachable, plain bytes indexed).
        let mut live: BTreeMap<PackId, (u64, u64)> = BTreeMap::new();
        {
            let rows = ChunkStore::all_rows(&self.db.lock())?;
            for (id, e) in rows {
                let bytes = e.raw_len as u64;
                let l = live.entry(e.pack).or_default();
                l.1 += bytes;
                if marked.contains(&id) || pinned.contains(&id) {
                    plan.reachable += 1;
                    l.0 += bytes;
                } else {
                    plan.unreachable.push(id);
                    plan.unreachable_bytes += bytes;
                }
            }
        }
        let current = self.chunks.writer.lock().unwrap().current();
        for id in self.pack_ids()? {
            if Some(id) == current {
                continue;
            }
            let path = pack::pack_path(&self.chunks.dir, id);
            let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            match live.get(&id) {
                None => {
                    plan.remove_packs.push(id);
                    plan.remove_bytes += file_bytes;
                }
                Some(&(l, total)) if (l as f64) < opts.repack_below * total as f64 => {
                    plan.repack.push(PackUsage {
                        pack: id,
                        file_bytes,
                        live_bytes: (file_bytes as f64 * l as f64 / total.max(1) as f64) as u64,
                    })
                }
                _ => {}
            }
        }
        Ok(plan)
    }

    fn gc_once(&self, opts: &GcOptions) -> Result<GcReport> {
        self.latch.check()?;
        let t0 = std::time::Instant::now();
        let mut report = GcReport::default();
        {
            let _excl = self.gc_lock.write().unwrap();
            let marked = self.mark()?;
            let pinned = self.chunks.pinned_snapshot();
            report.plan = self.plan_from(&marked, &pinned, opts)?;
            if opts.dry_run {
                return Ok(report);
            }
            let mut conn = self.db.lock();
            let tx = conn.transaction().ctx("begin gc sweep")?;
            report.deleted_chunks = self.chunks.with_pins_locked(|pins| {
                ChunkStore::delete_rows(
                    &tx,
                    report
                        .plan
                        .unreachable
                        .iter()
                        .filter(|id| !pins.contains_key(id)),
                )
            })?;
            tx.commit().ctx("commit gc sweep")?;
        }
        // Packs emptied by the sweep are removed; sparse ones are rewritten.
        let counts = pack_counts(self)?;
        let current = self.chunks.writer.lock().unwrap().current();
        for p in self.pack_ids()? {
            if !counts.contains_key(&p) && Some(p) != current {
                self.remove_pack(p, &mut report)?;
            }
        }
        for u in report.plan.repack.clone() {
            if pack::pack_path(&self.chunks.dir, u.pack).exists() {
                self.repack(u.pack, &mut report)?;
            }
        }
        self.db.sync_wal(&self.latch)?;
        tracing::info!(
            deleted_chunks = report.deleted_chunks,
            repacked = report.repacked_packs,
            removed_packs = report.removed_packs,
            reclaimed = report.reclaimed_bytes,
            ms = t0.elapsed().as_millis() as u64,
            "gc done"
        );
        Ok(report)
    }

    /// Pack files on disk.
    pub(crate) fn pack_ids(&self) -> Result<Vec<PackId>> {
        let dir = &self.chunks.dir;
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)
            .map_err(|e| crate::error::StoreError::io("list packs", dir, e))?
            .flatten()
        {
            if let Some(id) = e.file_name().to_str().and_then(pack::pack_id_of) {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    fn remove_pack(&self, p: PackId, report: &mut GcReport) -> Result<()> {
        let path = pack::pack_path(&self.chunks.dir, p);
        // Re-check under the db lock that nothing got indexed into it meanwhile.
        let conn = self.db.lock();
        let n = ChunkStore::rows_in_pack(&conn, p)?;
        if n > 0 || Some(p) == self.chunks.writer.lock().unwrap().current() {
            return Ok(());
        }
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            // Already gone (emptied by the sweep and removed before its repack turn).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(crate::error::StoreError::io("remove pack", &path, e)),
        }
        ChunkStore::delete_pack_row(&conn, p)?;
        drop(conn);
        self.chunks.forget_pack(p);
        report.removed_packs += 1;
        report.reclaimed_bytes += len;
        Ok(())
    }

    /// Copies the live objects of pack `p` into new records (bundle members are
    /// re-bundled), fsyncs them, re-points the index, then removes the pack.
    fn repack(&self, p: PackId, report: &mut GcReport) -> Result<()> {
        let rows = ChunkStore::healthy_rows_of(&self.db.lock(), p)?;
        let level = self.opts.zstd_level;
        let mut locs: Vec<Location> = Vec::new();
        let mut bundle: Vec<u8> = Vec::new();
        let mut members: Vec<(ChunkId, u32, u32)> = Vec::new();
        let flush = |bundle: &mut Vec<u8>,
                     members: &mut Vec<(ChunkId, u32, u32)>,
                     locs: &mut Vec<Location>|
         -> Result<()> {
            if !members.is_empty() {
                locs.extend(self.chunks.append_bundle(
                    bundle,
                    pack::compress(bundle, level),
                    members,
                )?);
                bundle.clear();
                members.clear();
            }
            Ok(())
        };
        for (id, e) in rows {
            let (off, stored_len, raw_len, kind, inner) =
                (e.offset, e.stored_len, e.raw_len, e.kind, e.inner_off);
            let payload = match self.chunks.record_payload(p, off, stored_len) {
                Ok(b) => b,
                Err(e) => {
                    // Damaged: leave the pack in place for verify to quarantine.
                    tracing::warn!(chunk = %id, pack = %p, error = %e, "damaged record, pack not repacked");
                    return Ok(());
                }
            };
            if inner < 0 {
                locs.push(self.chunks.append(
                    kind,
                    &payload,
                    pack::compress(&payload, level),
                    id,
                )?);
                continue;
            }
            let Some(data) = payload.get(inner as usize..inner as usize + raw_len as usize) else {
                tracing::warn!(chunk = %id, pack = %p, "bundle member out of range, pack not repacked");
                return Ok(());
            };
            if ChunkId::of(data) != id {
                tracing::warn!(chunk = %id, pack = %p, "bundle member hash mismatch, pack not repacked");
                return Ok(());
            }
            members.push((id, bundle.len() as u32, raw_len));
            bundle.extend_from_slice(data);
            if bundle.len() >= crate::format::BUNDLE_TARGET {
                flush(&mut bundle, &mut members, &mut locs)?;
            }
        }
        flush(&mut bundle, &mut members, &mut locs)?;
        // Seal so the copies are durable and never share a pack with a later ingest.
        let sealed = self.chunks.writer.lock().unwrap().finish(&self.latch)?;
        let path = pack::pack_path(&self.chunks.dir, p);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        {
            let mut conn = self.db.lock();
            let tx = conn.transaction().ctx("begin repack")?;
            ChunkStore::relocate(&tx, &locs, p, &sealed)?;
            tx.commit().ctx("commit repack")?;
        }
        report.repacked_packs += 1;
        let before = report.reclaimed_bytes;
        self.remove_pack(p, report)?;
        report.removed_packs -= u64::from(report.reclaimed_bytes != before);
        let mut copied: HashMap<(PackId, u64), u64> = HashMap::new();
        for l in &locs {
            copied.insert(
                (l.pack, l.offset),
                l.stored_len as u64 + crate::format::RECORD_HEADER_LEN as u64,
            );
        }
        report.reclaimed_bytes = before + len.saturating_sub(copied.values().sum());
        Ok(())
    }
}

/// Counts of index rows per pack, for tests and status.
pub fn pack_counts(store: &Store) -> Result<HashMap<PackId, u64>> {
    ChunkStore::rows_per_pack(&store.db.lock())
}

/// Computes what GC would do, without changing anything.
pub(crate) fn gc_plan(store: &Store, opts: &GcOptions) -> Result<GcPlan> {
    let marked = store.mark()?;
    let pinned = store.chunks.pinned_snapshot();
    store.plan_from(&marked, &pinned, opts)
}

/// Runs garbage collection. On a full disk the emergency reserve is given up so
/// that GC can run; it is taken again once GC has freed space.
pub(crate) fn gc(store: &Store, opts: &GcOptions) -> Result<GcReport> {
    let r = store.freeing(|| store.gc_once(opts));
    if r.is_ok() {
        store.ensure_reserve();
    }
    r
}
