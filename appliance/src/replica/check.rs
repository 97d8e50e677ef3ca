//! Verify and prune of a DR copy, run against the copy alone (the main site may be
//! gone).

use super::layout::{self, Record};
use super::{Loc, Reader, Target};
use anyhow::Result;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use storage::format::KIND_DIR;
use storage::ids::ChunkId;

/// What verify found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub target: String,
    pub packs: u64,
    pub objects: u64,
    pub bytes_read: u64,
    pub snapshots: u64,
    /// Each damaged or missing thing, named (`packs/<id>`, the blob, the object).
    pub damage: Vec<String>,
    /// `volume@name` of every snapshot that reaches damage, with the first object.
    pub snapshots_damaged: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty() && self.snapshots_damaged.is_empty()
    }
}

/// Re-reads every pack of the copy and checks every object against its id, then walks
/// every snapshot and checks that all it reaches is there and sound.
pub fn verify(target: Arc<Target>) -> Result<VerifyReport> {
    let reader = Reader::new(target.clone(), 64 << 20)?;
    let cat = &reader.catalog;
    let mut r = VerifyReport {
        target: target.name.clone(),
        ..Default::default()
    };
    r.damage
        .extend(cat.bad_indexes.iter().map(|b| format!("index {b}")));
    r.damage.extend(
        cat.missing_packs
            .iter()
            .map(|p| format!("{p}: missing (its index names it)")),
    );
    let mut by_pack: HashMap<u32, Vec<(&ChunkId, &Loc)>> = HashMap::new();
    for (id, loc) in &cat.objects {
        by_pack.entry(loc.pack).or_default().push((id, loc));
    }
    let mut bad: HashSet<ChunkId> = HashSet::new();
    let packs: Vec<u32> = (0..cat.packs.len() as u32).collect();
    // Two packs in flight while one is checked.
    for group in packs.chunks(2) {
        let got = target.block(futures::future::join_all(group.iter().map(|&p| {
            let key = format!("packs/{}", cat.packs[p as usize].0);
            let backend = target.backend.clone();
            async move { (p, key.clone(), backend.get(&key).await) }
        })));
        for (p, key, got) in got {
            r.packs += 1;
            let members = by_pack.remove(&p).unwrap_or_default();
            let bytes = match got {
                Ok(Some(b)) => b,
                Ok(None) => {
                    r.damage.push(format!("{key}: missing"));
                    bad.extend(members.iter().map(|m| *m.0));
                    continue;
                }
                Err(e) => {
                    r.damage.push(format!("{key}: {e:#}"));
                    bad.extend(members.iter().map(|m| *m.0));
                    continue;
                }
            };
            r.bytes_read += bytes.len() as u64;
            let mut blobs: HashMap<u64, Vec<(&ChunkId, &Loc)>> = HashMap::new();
            for m in members {
                blobs.entry(m.1.blob_off).or_default().push(m);
            }
            let mut offs: Vec<u64> = blobs.keys().copied().collect();
            offs.sort_unstable();
            for off in offs {
                let ms = &blobs[&off];
                let l = ms[0].1;
                let end = off + l.blob_len as u64;
                let opened = bytes
                    .get(off as usize..end as usize)
                    .ok_or_else(|| {
                        anyhow::anyhow!("pack is {} bytes, blob ends at {end}", bytes.len())
                    })
                    .and_then(|s| {
                        layout::open_blob(s, &target.sealer, l.blob_raw as usize, l.kind)
                    });
                let raw = match opened {
                    Ok(raw) => raw,
                    Err(e) => {
                        r.damage.push(format!(
                            "{key}: blob at {off}: {e:#} ({} objects)",
                            ms.len()
                        ));
                        bad.extend(ms.iter().map(|m| *m.0));
                        continue;
                    }
                };
                for (id, loc) in ms {
                    r.objects += 1;
                    let s = loc.inner_off as usize;
                    let ok = raw
                        .get(s..s + loc.raw_len as usize)
                        .is_some_and(|b| ChunkId::of(b) == **id);
                    if !ok {
                        r.damage.push(format!(
                            "{key}: blob at {off}: object {id} does not match its hash"
                        ));
                        bad.insert(**id);
                    }
                }
            }
        }
    }
    for (_, rec) in target.records()? {
        r.snapshots += 1;
        let mut seen = HashSet::new();
        if let Err(first) = walk(&reader, &rec, &mut seen, &bad) {
            r.snapshots_damaged
                .push(format!("{}@{}: {first}", rec.volume, rec.name));
        }
    }
    Ok(r)
}

/// Visits every object `rec` reaches (each once across calls sharing `seen`); the
/// first missing or damaged one ends the walk, named.
fn walk(
    reader: &Reader,
    rec: &Record,
    seen: &mut HashSet<ChunkId>,
    bad: &HashSet<ChunkId>,
) -> std::result::Result<(), String> {
    let root = rec.root_id().map_err(|e| format!("root: {e}"))?;
    let mut stack = vec![(root, KIND_DIR)];
    while let Some((id, kind)) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        if bad.contains(&id) {
            return Err(format!("object {id} is damaged"));
        }
        if !reader.catalog.has(&id) {
            return Err(format!("object {id} is missing"));
        }
        if kind == storage::format::KIND_DATA {
            continue;
        }
        let raw = reader
            .object(&id)
            .map_err(|e| format!("{e:#}"))?
            .ok_or_else(|| format!("object {id} is missing"))?;
        stack.extend(super::children(kind, &raw).map_err(|e| format!("{id}: {e:#}"))?);
    }
    Ok(())
}

/// What prune decided and did at a copy.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    pub target: String,
    pub dry_run: bool,
    pub plan: Vec<crate::retention::Decision>,
    /// `volume@name` of the records removed.
    pub removed: Vec<String>,
    pub packs_deleted: u64,
    pub bytes_freed: u64,
    /// Packs no index names, left by an interrupted run more than a day ago.
    pub orphans_deleted: u64,
}

/// Applies `policy` to `volume`'s snapshots at the copy (held and locked ones are
/// kept), then deletes the packs no remaining snapshot of any volume reaches. A pack
/// with a live object stays whole. Never run two of these, or one beside a
/// replication to the same copy (the appliance keeps one job per target).
pub fn prune(
    target: Arc<Target>,
    volume: &str,
    policy: &crate::retention::Policy,
    tz: chrono_tz::Tz,
    now: i64,
    dry_run: bool,
) -> Result<PruneReport> {
    let mut r = PruneReport {
        target: target.name.clone(),
        dry_run,
        ..Default::default()
    };
    let records = target.records()?;
    let cands: Vec<crate::retention::Candidate> = records
        .iter()
        .filter(|(_, rec)| rec.volume == volume)
        .map(|(_, rec)| crate::retention::Candidate {
            name: rec.name.clone(),
            created: rec.created_s,
            held: rec.held,
            lock_until: rec.lock_until,
        })
        .collect();
    if policy.is_set() {
        r.plan = crate::retention::plan(&cands, policy, now, tz);
    }
    let drop: HashSet<&str> = r
        .plan
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.name.as_str())
        .collect();
    let mut live = Vec::new();
    for (key, rec) in &records {
        let doomed = rec.volume == volume
            && drop.contains(rec.name.as_str())
            && !rec.held
            && rec.lock_until <= now;
        if doomed {
            r.removed.push(format!("{}@{}", rec.volume, rec.name));
            if !dry_run {
                target.block(target.backend.delete(key))?;
            }
        } else {
            live.push(rec);
        }
    }
    if dry_run {
        return Ok(r);
    }
    // Mark from what is left, then delete packs with nothing marked: index first, so
    // that no reader is ever sent to a pack that is gone.
    let reader = Reader::new(target.clone(), 64 << 20)?;
    if !reader.catalog.bad_indexes.is_empty() {
        anyhow::bail!(
            "{}: {} index(es) do not read ({}); nothing deleted: run verify",
            target.describe(),
            reader.catalog.bad_indexes.len(),
            reader.catalog.bad_indexes[0]
        );
    }
    let mut seen = HashSet::new();
    for rec in live {
        walk(&reader, rec, &mut seen, &HashSet::new()).map_err(|e| {
            anyhow::anyhow!(
                "{}: snapshot {}@{} is damaged ({e}); nothing deleted: run verify",
                target.describe(),
                rec.volume,
                rec.name
            )
        })?;
    }
    let mut live_packs = HashSet::new();
    for id in &seen {
        if let Some(l) = reader.catalog.objects.get(id) {
            live_packs.insert(l.pack);
        }
    }
    let indexed: HashSet<&str> = reader.catalog.packs.iter().map(|p| p.0.as_str()).collect();
    for (i, (id, size)) in reader.catalog.packs.iter().enumerate() {
        if !live_packs.contains(&(i as u32)) {
            target.block(target.backend.delete(&format!("index/{id}")))?;
            target.block(target.backend.delete(&format!("packs/{id}")))?;
            r.packs_deleted += 1;
            r.bytes_freed += size;
        }
    }
    for (key, size, age) in target.block(target.backend.list("packs"))? {
        let id = key.trim_start_matches("packs/");
        if !indexed.contains(id) && age > 86_400 {
            target.block(target.backend.delete(&key))?;
            r.orphans_deleted += 1;
            r.bytes_freed += size;
        }
    }
    Ok(r)
}
