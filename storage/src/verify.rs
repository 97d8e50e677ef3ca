//! Verify: re-read every indexed record, check every hash, quarantine what is damaged,
//! and say which files and snapshots it affects.
//!
//! A damaged chunk is never deleted: its stored bytes are copied to `quarantine/`, its
//! index row is flagged (reads then fail with `Corrupt` naming the file), and a row in
//! `damaged` records what was found. If the same content is ingested again, the new copy
//! replaces the flagged row and the damage heals.

use crate::chunk_store::{ChunkStore, IndexEntry};
use crate::error::{Result, StoreError};
use crate::format::CHUNK_DAMAGED;
use crate::ids::{ChunkId, FileId, PackId};
use crate::namespace::FileKind;
use crate::pack;
use crate::store::Store;
use std::collections::{BTreeMap, HashSet};

#[derive(Clone, Debug)]
pub struct Damage {
    pub chunk: ChunkId,
    pub pack: PackId,
    pub offset: u64,
    pub detail: String,
}

#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub packs: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub damaged: Vec<Damage>,
    /// Live files affected, as "volume:/path".
    pub affected_files: Vec<String>,
    /// Snapshot files affected, as "volume@snapshot:/path".
    pub affected_snapshots: Vec<String>,
    /// Damaged records (a bundle holds many chunks): what each one loses.
    pub records: Vec<RecordDamage>,
    /// Files in the landing zone, and their bytes (not yet in packs).
    pub staged_files: u64,
    pub staged_bytes: u64,
    /// Staged files whose staging file is missing or shorter than recorded.
    pub staged_problems: Vec<String>,
}

/// One damaged pack record and what it takes with it.
#[derive(Clone, Debug)]
pub struct RecordDamage {
    pub pack: PackId,
    pub offset: u64,
    /// Chunks indexed in the record: all of them are unreadable now.
    pub chunks: u64,
    /// Where the damaged bytes were copied, or why no copy could be kept.
    pub quarantine: Result<std::path::PathBuf, String>,
    pub detail: String,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.staged_problems.is_empty()
    }
}

impl Store {
    fn quarantine(
        &self,
        id: &ChunkId,
        p: PackId,
        off: u64,
        detail: &str,
        stored: Option<&[u8]>,
    ) -> Result<Option<std::path::PathBuf>> {
        let mut kept = None;
        if let Some(bytes) = stored {
            let q =
                self.root
                    .join("quarantine")
                    .join(format!("{}-{:016x}-{off}", id.to_hex(), p.0));
            self.latch.write_atomic(&q, bytes)?;
            kept = Some(q);
        }
        ChunkStore::mark_damaged(&self.db.lock(), id, p, off, detail)?;
        self.chunks.uncache(p, off);
        Ok(kept)
    }

    /// Checks the landing zone: every staged file's staging file is there and holds
    /// what is recorded (full mode: the whole size; overlay: its journal and every
    /// journaled range).
    fn verify_staging(&self, report: &mut VerifyReport) {
        for st in self.staging.all() {
            let g = st.lock();
            if g.dropped {
                continue;
            }
            report.staged_files += 1;
            report.staged_bytes += g.size;
            let what = || format!("staged file id {} ({})", st.ino, self.describe(st.ino));
            if g.mem.is_some() {
                // Staged in memory: what a restart would find is the copy.
                if let Some(p) = self.check_copy(st.ino, g.copied, g.size) {
                    report.staged_problems.push(format!("{}: {p}", what()));
                }
                continue;
            }
            let len = match std::fs::metadata(&st.path) {
                Ok(m) => m.len(),
                Err(e) => {
                    report.staged_problems.push(format!(
                        "{}: staging file {}: {e}",
                        what(),
                        st.path.display()
                    ));
                    continue;
                }
            };
            let need = match g.base {
                None => g.size,
                Some(_) => {
                    let jp = st.path.with_extension("j");
                    if !jp.exists() {
                        report.staged_problems.push(format!(
                            "{}: journal {} is missing",
                            what(),
                            jp.display()
                        ));
                    }
                    g.ranges.iter().map(|(_, e)| e).max().unwrap_or(0)
                }
            };
            if len < need {
                report.staged_problems.push(format!(
                    "{}: staging file holds {len} bytes, {need} recorded",
                    what()
                ));
            }
        }
    }

    /// A file staged in memory: its durable copy must hold its `size` bytes once it
    /// has one (a file only sized, never written, has none and needs none).
    fn check_copy(&self, ino: FileId, copied: bool, size: u64) -> Option<String> {
        if !copied {
            return None;
        }
        let len = self
            .db
            .reader()
            .and_then(|conn| crate::staging::copy_len(&conn, ino));
        match len {
            Ok(Some(n)) if n == size => None,
            Ok(Some(n)) => Some(format!(
                "its copy in the database holds {n} bytes, {size} recorded"
            )),
            Ok(None) => Some("staged in memory, but its copy in the database is missing".into()),
            Err(e) => Some(format!("reading its copy: {e}")),
        }
    }

    fn find_affected(&self, bad: &HashSet<ChunkId>, report: &mut VerifyReport) -> Result<()> {
        let uses = |c: Option<ChunkId>| -> bool {
            match c {
                None => false,
                Some(c) if bad.contains(&c) => true,
                Some(c) => {
                    let mut hit = false;
                    self.visit_content(&c, &mut |id| hit |= bad.contains(id))
                        .is_err()
                        || hit
                }
            }
        };
        let (live, vols) = {
            let conn = self.db.lock();
            (
                crate::namespace::files_with_content(&conn)?,
                crate::namespace::volumes(&conn)?,
            )
        };
        for (ino, vol, c) in live {
            let vol = vols
                .iter()
                .find(|v| v.id == vol)
                .map_or_else(|| format!("volume {vol}"), |v| v.name.clone());
            if uses(Some(c)) {
                let path = crate::namespace::path(&self.db.lock(), ino)?.map(|(_, p)| p);
                report
                    .affected_files
                    .push(format!("{vol}:{}", path.as_deref().unwrap_or("/")));
            }
        }
        for s in self.snapshots(None)? {
            let root = self.snapshot_root(&s.volume, &s.name)?;
            let mut stack = vec![(String::new(), root)];
            while let Some((path, e)) = stack.pop() {
                match e.attr.kind {
                    FileKind::Dir => {
                        if e.target_ref.is_some_and(|t| bad.contains(&t)) {
                            report
                                .affected_snapshots
                                .push(format!("{}@{}:{path}/", s.volume, s.name));
                            continue;
                        }
                        match self.snapshot_children(&e) {
                            Ok(entries) => {
                                for c in entries.iter() {
                                    stack.push((
                                        format!("{path}/{}", String::from_utf8_lossy(&c.name)),
                                        c.clone(),
                                    ));
                                }
                            }
                            Err(StoreError::Corrupt { .. }) => report
                                .affected_snapshots
                                .push(format!("{}@{}:{path}/", s.volume, s.name)),
                            Err(e) => return Err(e),
                        }
                    }
                    FileKind::File if uses(e.target_ref) => {
                        report
                            .affected_snapshots
                            .push(format!("{}@{}:{path}", s.volume, s.name));
                    }
                    _ => {}
                }
            }
        }
        report.affected_files.sort();
        report.affected_snapshots.sort();
        Ok(())
    }
}

/// Verifies every chunk. Damaged chunks are quarantined (flagged, copied aside).
pub(crate) fn verify(store: &Store) -> Result<VerifyReport> {
    let t0 = std::time::Instant::now();
    let mut report = VerifyReport::default();
    // Group the index rows by the record they live in.
    let mut by_record: BTreeMap<(PackId, u64), Vec<(ChunkId, IndexEntry)>> = BTreeMap::new();
    for (id, e) in ChunkStore::all_rows(&store.db.lock())? {
        by_record
            .entry((e.pack, e.offset))
            .or_default()
            .push((id, e));
    }
    let mut damaged_ids = HashSet::new();
    let mut last_pack = None;
    let mut file: Option<std::io::Result<std::fs::File>> = None;
    for ((p, off), members) in by_record {
        let path = pack::pack_path(&store.chunks.dir, p);
        if last_pack != Some(p) {
            report.packs += 1;
            file = Some(std::fs::File::open(&path));
            last_pack = Some(p);
        }
        let stored_len = members[0].1.stored_len;
        report.bytes += stored_len as u64;
        // Read from disk, never from the cache: the point is to see what is stored.
        let mut stored_copy = None;
        let decoded: std::result::Result<Vec<u8>, String> = match file.as_ref().unwrap() {
            Err(e) => Err(format!("pack {} unreadable: {e}", path.display())),
            Ok(f) => match pack::read_record(f, &path, off, stored_len) {
                Err(e) => Err(e.to_string()),
                Ok((hdr, stored)) => {
                    let r = pack::decode_payload(&hdr, &stored);
                    stored_copy = Some(stored);
                    r
                }
            },
        };
        let mut quarantined = false;
        let mut record: Option<RecordDamage> = None;
        for (id, e) in members {
            let (flags, raw_len, inner) = (e.flags, e.raw_len, e.inner_off);
            report.chunks += 1;
            let problem = match &decoded {
                Err(d) => Some(d.clone()),
                Ok(raw) => {
                    let data = if inner < 0 {
                        Some(&raw[..])
                    } else {
                        raw.get(inner as usize..inner as usize + raw_len as usize)
                    };
                    match data {
                        None => Some("member outside its bundle".to_string()),
                        Some(d) if ChunkId::of(d) != id => Some("BLAKE3 mismatch".to_string()),
                        Some(_) if flags & CHUNK_DAMAGED != 0 => {
                            Some("flagged by an earlier verify".to_string())
                        }
                        Some(_) => None,
                    }
                }
            };
            if let Some(detail) = problem {
                let r = record.get_or_insert_with(|| RecordDamage {
                    pack: p,
                    offset: off,
                    chunks: 0,
                    quarantine: Err("flagged by an earlier verify".into()),
                    detail: detail.clone(),
                });
                r.chunks += 1;
                if flags & CHUNK_DAMAGED == 0 {
                    let copy = if quarantined {
                        None
                    } else {
                        stored_copy.as_deref()
                    };
                    let q = store.quarantine(&id, p, off, &detail, copy)?;
                    if !quarantined {
                        r.quarantine = q.ok_or_else(|| {
                            format!("no copy kept: the record could not be read ({detail})")
                        });
                    }
                    quarantined = true;
                }
                tracing::error!(chunk = %id, pack = %p, offset = off, %detail, "damaged chunk");
                damaged_ids.insert(id);
                report.damaged.push(Damage {
                    chunk: id,
                    pack: p,
                    offset: off,
                    detail,
                });
            }
        }
        report.records.extend(record);
    }
    store.verify_staging(&mut report);
    if !damaged_ids.is_empty() {
        store.find_affected(&damaged_ids, &mut report)?;
    }
    tracing::info!(
        packs = report.packs,
        chunks = report.chunks,
        damaged = report.damaged.len(),
        ms = t0.elapsed().as_millis() as u64,
        "verify done"
    );
    Ok(report)
}
