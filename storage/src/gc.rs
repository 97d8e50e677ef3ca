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
//!
//! Every rewrite also regroups: it bundles the members of each age apart (read by the
//! files that changed in a volume's newest snapshot, by its other files, or by older
//! snapshots only; see `Ages`). A later generation mostly reuses an older one's
//! chunks, and a bundle is decoded whole to read any of them: without regrouping, a
//! restore of night 3 of the dumps corpus decoded 1.37 bytes for every byte it wrote,
//! the bytes nights 2 and 3 changed riding along in night 1's bundles. So a pack whose
//! live bytes lie largely in bundles that mix ages is rewritten too, sparse or not
//! ([`GcPlan::regroup`]), within a budget per run.

use crate::chunk_store::ChunkStore;
use crate::error::{DbContext, Result, StoreError};
use crate::ids::{ChunkId, PackId};
use crate::namespace::FileKind;
use crate::pack::{self, Location};
use crate::store::Store;
use crate::tree::TreeEntry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Packs whose live bytes are below this fraction of the pack are rewritten.
    pub repack_below: f64,
    /// Pack bytes a run rewrites at most for their mixed bundles (see [`REGROUP_AT`]),
    /// the most mixed packs first; the rest waits for the next run. 0: never, and
    /// repacks of sparse packs keep their bundles' members together as they were.
    pub regroup_max_bytes: u64,
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            repack_below: 0.5,
            regroup_max_bytes: 16 << 30,
            dry_run: false,
        }
    }
}

/// A bundle is mixed when no age (see `Ages`) holds this fraction of its live bytes:
/// a restore of the newest generation decodes it whole for part of it. (A bundle
/// 90% of one age is left alone: at most a tenth of its decoding is for nothing, and
/// rewriting it would cost more than that.)
pub const MIXED_BELOW: f64 = 0.9;

/// A pack with at least this fraction of its live bytes in mixed bundles is
/// regrouped (rewritten whole: a pack is the unit GC rewrites).
pub const REGROUP_AT: f64 = 0.25;

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
    /// Packs rewritten for their mixed bundles (not sparse enough for `repack`).
    pub regroup: Vec<PackUsage>,
    /// Live plain bytes in mixed bundles, store-wide, before the run.
    pub mixed_bytes: u64,
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
                .chain(&self.regroup)
                .map(|u| u.file_bytes.saturating_sub(u.live_bytes))
                .sum::<u64>()
    }
}

#[derive(Clone, Debug, Default)]
pub struct GcReport {
    pub plan: GcPlan,
    pub deleted_chunks: u64,
    pub repacked_packs: u64,
    /// Of `repacked_packs`, those rewritten for their mixed bundles only.
    pub regrouped_packs: u64,
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
            let entries: Arc<Vec<TreeEntry>> = self.dir_object(&t)?;
            for e in entries.iter() {
                match (e.attr.kind, e.target_ref) {
                    (FileKind::Dir, Some(r)) => stack.push(r),
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

    /// What the newest snapshot of each volume reaches, and of that what its files
    /// that changed since the snapshot before it read: the layout regrouping aims at
    /// (see [`Ages`]). Nothing (one age for all) when `opts` allows no regrouping.
    fn ages(&self, opts: &GcOptions) -> Result<Ages> {
        if opts.regroup_max_bytes == 0 {
            return Ok(Ages::default());
        }
        let mut by_volume: HashMap<String, Vec<crate::snapshot::SnapshotInfo>> = HashMap::new();
        for s in self.snapshots(None)? {
            by_volume.entry(s.volume.clone()).or_default().push(s);
        }
        let mut ages = Ages::default();
        for snaps in by_volume.values_mut() {
            snaps.sort_by_key(|s| (s.created, s.id.0));
            let Some(newest) = snaps.pop() else {
                continue;
            };
            self.mark_trees(vec![newest.root], &mut ages.newest)?;
            self.mark_changed(newest.root, snaps.last().map(|s| s.root), &mut ages.changed)?;
        }
        Ok(ages)
    }

    /// Marks what the files of directory object `new` and below read that differ from
    /// the same paths under `old` (all of them without `old`). Subtrees with the same
    /// object are skipped: the walk costs what changed.
    fn mark_changed(
        &self,
        new: ChunkId,
        old: Option<ChunkId>,
        marked: &mut HashSet<ChunkId>,
    ) -> Result<()> {
        if Some(new) == old {
            return Ok(());
        }
        let before: Option<Arc<Vec<TreeEntry>>> = old.map(|o| self.dir_object(&o)).transpose()?;
        let before: HashMap<&[u8], &TreeEntry> = before
            .iter()
            .flat_map(|d| d.iter())
            .map(|e| (e.name.as_slice(), e))
            .collect();
        for e in self.dir_object(&new)?.iter() {
            let Some(r) = e.target_ref else {
                continue;
            };
            let was = before
                .get(e.name.as_slice())
                .filter(|b| b.attr.kind == e.attr.kind);
            match e.attr.kind {
                FileKind::Dir => self.mark_changed(r, was.and_then(|b| b.target_ref), marked)?,
                _ if was.and_then(|b| b.target_ref) == Some(r) => {}
                _ => self.mark_content(&r, marked)?,
            }
        }
        Ok(())
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
        ages: &Ages,
        opts: &GcOptions,
    ) -> Result<GcPlan> {
        let mut plan = GcPlan::default();
        // Per pack: (plain bytes still reachable, plain bytes indexed).
        let mut live: BTreeMap<PackId, (u64, u64)> = BTreeMap::new();
        // Per bundle: its live plain bytes of each age.
        let mut bundles: HashMap<(PackId, u64), [u64; AGES]> = HashMap::new();
        {
            let rows = ChunkStore::all_rows(&self.db.lock())?;
            for (id, e) in rows {
                let bytes = e.raw_len as u64;
                let l = live.entry(e.pack).or_default();
                l.1 += bytes;
                if marked.contains(&id) || pinned.contains(&id) {
                    plan.reachable += 1;
                    l.0 += bytes;
                    if e.inner_off >= 0 {
                        bundles.entry((e.pack, e.offset)).or_default()[ages.of(&id)] += bytes;
                    }
                } else {
                    plan.unreachable.push(id);
                    plan.unreachable_bytes += bytes;
                }
            }
        }
        // Per pack: live plain bytes in mixed bundles.
        let mut mixed: HashMap<PackId, u64> = HashMap::new();
        for ((pack, _), by_age) in bundles {
            let l: u64 = by_age.iter().sum();
            let most = by_age.iter().copied().max().unwrap_or(0);
            if (most as f64) < MIXED_BELOW * l as f64 {
                *mixed.entry(pack).or_default() += l;
                plan.mixed_bytes += l;
            }
        }
        let current = self.chunks.writer.lock().unwrap().current();
        // Packs worth regrouping, with their mixed bytes.
        let mut regroup: Vec<(PackUsage, u64)> = Vec::new();
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
                Some(&(l, total)) => {
                    let usage = PackUsage {
                        pack: id,
                        file_bytes,
                        live_bytes: (file_bytes as f64 * l as f64 / total.max(1) as f64) as u64,
                    };
                    let m = mixed.get(&id).copied().unwrap_or(0);
                    if (l as f64) < opts.repack_below * total as f64 {
                        plan.repack.push(usage);
                    } else if m > 0 && m as f64 >= REGROUP_AT * l as f64 {
                        regroup.push((usage, m));
                    }
                }
            }
        }
        regroup.sort_by_key(|(u, m)| (std::cmp::Reverse(*m), u.pack));
        let mut budget = opts.regroup_max_bytes;
        for (u, _) in regroup {
            if u.file_bytes <= budget {
                budget -= u.file_bytes;
                plan.regroup.push(u);
            }
        }
        Ok(plan)
    }

    fn gc_once(&self, opts: &GcOptions) -> Result<GcReport> {
        self.latch.check()?;
        let t0 = std::time::Instant::now();
        let mut report = GcReport::default();
        let ages;
        {
            let _excl = self.gc_lock.write().unwrap();
            let marked = self.mark()?;
            let pinned = self.chunks.pinned_snapshot();
            ages = self.ages(opts)?;
            report.plan = self.plan_from(&marked, &pinned, &ages, opts)?;
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
                self.repack(u.pack, &ages, &mut report)?;
            }
        }
        for u in report.plan.regroup.clone() {
            if pack::pack_path(&self.chunks.dir, u.pack).exists() {
                self.repack(u.pack, &ages, &mut report)?;
                report.regrouped_packs += 1;
            }
        }
        self.db.sync_wal(&self.latch)?;
        tracing::info!(
            deleted_chunks = report.deleted_chunks,
            repacked = report.repacked_packs,
            regrouped = report.regrouped_packs,
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

    /// Copies the live objects of pack `p` into new records, fsyncs them, re-points the
    /// index, then removes the pack. Bundle members are re-bundled in their order, each
    /// age of `ages` apart from the others.
    fn repack(&self, p: PackId, ages: &Ages, report: &mut GcReport) -> Result<()> {
        let rows = ChunkStore::healthy_rows_of(&self.db.lock(), p)?;
        let level = self.opts.zstd_level;
        let mut locs: Vec<Location> = Vec::new();
        let mut groups: [Regroup; AGES] = Default::default();
        let flush = |g: &mut Regroup, locs: &mut Vec<Location>| -> Result<()> {
            if !g.members.is_empty() {
                locs.extend(self.chunks.append_bundle(
                    &g.bundle,
                    pack::compress(&g.bundle, level),
                    &g.members,
                )?);
                g.bundle.clear();
                g.members.clear();
            }
            Ok(())
        };
        // The record the previous row was in: a bundle's members are rows in a row,
        // and its payload is read, decoded and checked once for all of them.
        let mut last: Option<(u64, Arc<crate::chunk_store::Decoded>)> = None;
        for (id, e) in rows {
            let (off, stored_len, raw_len, kind, inner) =
                (e.offset, e.stored_len, e.raw_len, e.kind, e.inner_off);
            let payload = match &last {
                Some((o, b)) if *o == off => b.clone(),
                _ => match self.chunks.record_payload(p, off, stored_len) {
                    Ok(b) => {
                        last = Some((off, b.clone()));
                        b
                    }
                    Err(e) => {
                        // Damaged: leave the pack in place for verify to quarantine.
                        tracing::warn!(chunk = %id, pack = %p, error = %e, "damaged record, pack not repacked");
                        return Ok(());
                    }
                },
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
            let g = &mut groups[ages.of(&id)];
            g.members.push((id, g.bundle.len() as u32, raw_len));
            g.bundle.extend_from_slice(data);
            if g.bundle.len() >= crate::format::BUNDLE_TARGET {
                flush(g, &mut locs)?;
            }
        }
        for g in &mut groups {
            flush(g, &mut locs)?;
        }
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

/// How recently the objects a repack copies were read, in [`AGES`] classes that it
/// bundles apart: 0, read by the files that changed in the newest snapshot of their
/// volume (last night's dump: what gets restored); 1, read by the newest snapshot's
/// other files; 2, by older snapshots only. A restore of the newest file, or of the
/// whole newest snapshot, then decodes bundles it reads all of.
#[derive(Default)]
struct Ages {
    changed: HashSet<ChunkId>,
    newest: HashSet<ChunkId>,
}

const AGES: usize = 3;

impl Ages {
    fn of(&self, id: &ChunkId) -> usize {
        if self.changed.contains(id) {
            0
        } else if self.newest.contains(id) {
            1
        } else {
            2
        }
    }
}

/// A bundle being filled by a repack: its plain bytes and its members.
#[derive(Default)]
struct Regroup {
    bundle: Vec<u8>,
    members: Vec<(ChunkId, u32, u32)>,
}

/// Counts of index rows per pack, for tests and status.
pub fn pack_counts(store: &Store) -> Result<HashMap<PackId, u64>> {
    ChunkStore::rows_per_pack(&store.db.lock())
}

/// Computes what GC would do, without changing anything.
pub(crate) fn gc_plan(store: &Store, opts: &GcOptions) -> Result<GcPlan> {
    let marked = store.mark()?;
    let pinned = store.chunks.pinned_snapshot();
    let ages = store.ages(opts)?;
    store.plan_from(&marked, &pinned, &ages, opts)
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
