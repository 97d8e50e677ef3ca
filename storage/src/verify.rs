//! Verify: re-read every indexed record, check every hash, quarantine what is damaged,
//! and say which files and snapshots it affects.
//!
//! A damaged chunk is never deleted: its stored bytes are copied to `quarantine/`, its
//! index row is flagged (reads then fail with `Corrupt` naming the file), and a row in
//! `damaged` records what was found. If the same content is ingested again, the new copy
//! replaces the flagged row and the damage heals.

use crate::error::{DbContext, Result, StoreError};
use crate::format::CHUNK_DAMAGED;
use crate::ids::{ChunkId, PackId};
use crate::namespace::FileKind;
use crate::pack;
use crate::store::Store;
use rusqlite::params;
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
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty()
    }
}

impl Store {
    /// Verifies every chunk. Damaged chunks are quarantined (flagged, copied aside).
    pub fn verify(&self) -> Result<VerifyReport> {
        let t0 = std::time::Instant::now();
        let mut report = VerifyReport::default();
        let rows: Vec<(ChunkId, PackId, u64, u32, i64)> = {
            let conn = self.db.lock();
            let mut st = conn
                .prepare("SELECT id, pack, offset, stored_len, flags FROM chunks ORDER BY pack, offset")
                .ctx("verify list")?;
            let r = st
                .query_map([], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, u32>(3)?, r.get::<_, i64>(4)?))
                })
                .ctx("verify list")?
                .filter_map(|r| r.ok())
                .filter_map(|(id, p, o, l, f)| Some((ChunkId::from_slice(&id)?, PackId(p as u64), o as u64, l, f)))
                .collect();
            r
        };
        let mut by_pack: BTreeMap<PackId, Vec<(ChunkId, u64, u32, i64)>> = BTreeMap::new();
        for (id, p, o, l, f) in rows {
            by_pack.entry(p).or_default().push((id, o, l, f));
        }
        let mut damaged_ids = HashSet::new();
        for (p, recs) in by_pack {
            report.packs += 1;
            let path = pack::pack_path(&self.chunks.dir, p);
            let file = std::fs::File::open(&path);
            for (id, off, len, flags) in recs {
                report.chunks += 1;
                report.bytes += len as u64;
                let problem = match &file {
                    Err(e) => Some((format!("pack {} unreadable: {e}", path.display()), None)),
                    Ok(f) => match pack::read_record(f, &path, off, len) {
                        Err(e) => Some((e.to_string(), None)),
                        Ok((hdr, stored)) if hdr.id != id => Some((format!("record holds {} instead", hdr.id), Some(stored))),
                        Ok((hdr, stored)) => pack::decode_payload(&hdr, &stored).err().map(|d| (d, Some(stored))),
                    },
                };
                let problem = problem.or_else(|| (flags & CHUNK_DAMAGED != 0).then(|| ("flagged by an earlier verify".to_string(), None)));
                if let Some((detail, stored)) = problem {
                    if flags & CHUNK_DAMAGED == 0 {
                        self.quarantine(&id, p, off, &detail, stored.as_deref())?;
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
        }
        if !damaged_ids.is_empty() {
            self.find_affected(&damaged_ids, &mut report)?;
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

    fn quarantine(&self, id: &ChunkId, p: PackId, off: u64, detail: &str, stored: Option<&[u8]>) -> Result<()> {
        if let Some(bytes) = stored {
            let q = self.root.join("quarantine").join(format!("{}-{:016x}-{off}", id.to_hex(), p.0));
            self.latch.write_atomic(&q, bytes)?;
        }
        let conn = self.db.lock();
        conn.execute("UPDATE chunks SET flags = flags | ?2 WHERE id=?1", params![&id.0[..], CHUNK_DAMAGED])
            .ctx("flagging damaged chunk")?;
        conn.execute(
            "INSERT OR REPLACE INTO damaged(id, pack, offset, found, detail) VALUES(?1, ?2, ?3, ?4, ?5)",
            params![&id.0[..], p.0 as i64, off as i64, crate::namespace::Timespec::now().sec, detail],
        )
        .ctx("recording damage")?;
        drop(conn);
        self.chunks.uncache(id);
        Ok(())
    }

    fn find_affected(&self, bad: &HashSet<ChunkId>, report: &mut VerifyReport) -> Result<()> {
        let uses = |c: Option<ChunkId>| -> bool {
            match c {
                None => false,
                Some(c) if bad.contains(&c) => true,
                Some(c) => match self.content(&c) {
                    Ok(l) => l.chunks.iter().any(|(_, id)| bad.contains(id)),
                    Err(_) => true,
                },
            }
        };
        let live: Vec<(crate::ids::FileId, String, Option<ChunkId>)> = {
            let conn = self.db.lock();
            let mut st = conn
                .prepare("SELECT i.ino, v.name, i.content FROM inodes i JOIN volumes v ON v.id = i.vol WHERE i.kind = 1 AND i.content IS NOT NULL")
                .ctx("verify affected")?;
            let r = st
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, Vec<u8>>(2)?)))
                .ctx("verify affected")?
                .filter_map(|r| r.ok())
                .map(|(i, v, c)| (crate::ids::FileId(i as u64), v, ChunkId::from_slice(&c)))
                .collect();
            r
        };
        for (ino, vol, c) in live {
            if uses(c) {
                let path = self.describe(ino);
                let rel = path.splitn(3, '/').nth(2).unwrap_or("");
                report.affected_files.push(format!("{vol}:/{rel}"));
            }
        }
        for s in self.snapshots(None)? {
            let root = self.snapshot_root(&s.volume, &s.name)?;
            let mut stack = vec![(String::new(), root)];
            while let Some((path, e)) = stack.pop() {
                match e.attr.kind {
                    FileKind::Dir => {
                        if e.target_ref.is_some_and(|t| bad.contains(&t)) {
                            report.affected_snapshots.push(format!("{}@{}:{path}/", s.volume, s.name));
                            continue;
                        }
                        match self.snap_dir(&e) {
                            Ok(entries) => {
                                for c in entries.iter() {
                                    stack.push((format!("{path}/{}", String::from_utf8_lossy(&c.name)), c.clone()));
                                }
                            }
                            Err(StoreError::Corrupt { .. }) => {
                                report.affected_snapshots.push(format!("{}@{}:{path}/", s.volume, s.name))
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    FileKind::File if uses(e.target_ref) => {
                        report.affected_snapshots.push(format!("{}@{}:{path}", s.volume, s.name));
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
