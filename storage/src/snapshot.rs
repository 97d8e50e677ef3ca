//! Snapshots: immutable, content-addressed trees of a volume, and clones of them.
//!
//! `Store::snapshot` ingests what is staged in the volume, then (in one transaction,
//! under the GC lock shared) re-encodes only the directories whose cached tree id was
//! cleared since the last snapshot, bottom-up, and records the root. Its cost grows with
//! the changed directories, not with the volume. Readers walk directory objects; they
//! never touch the live namespace.
//!
//! This module owns the `snapshots` table.

use crate::chunk_store::ChunkStore;
use crate::error::{DbContext, Result, StoreError};
use crate::format::KIND_DIR;
use crate::ids::{ChunkId, FileId, SnapshotId, VolumeId};
use crate::namespace::{self, FileKind, NewAttr, NewInode, Timespec, Volume};
use crate::pack::{self, Location};
use crate::store::{check_volume_name, Store};
use crate::tree::{self, TreeEntry};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::sync::Arc;

/// A recorded snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotInfo {
    pub id: SnapshotId,
    pub volume: String,
    pub name: String,
    pub created: Timespec,
    pub root: ChunkId,
    /// Sum of file sizes in the snapshot.
    pub logical_bytes: u64,
    /// Directory objects written by this snapshot (the changed directories); 0 when read
    /// back from the table.
    pub dirs_encoded: u64,
    /// The operator's or the schedule's words about it.
    pub label: Option<String>,
    /// A held snapshot is never pruned or deleted until released.
    pub held: bool,
    /// Unix seconds before which nobody can delete it (0: not locked).
    pub lock_until: i64,
    /// Taken past a quiet wait's limit while clients were still writing.
    pub busy: bool,
}

/// What a new snapshot records besides its tree, and how its caller may cancel it.
#[derive(Clone, Debug, Default)]
pub struct SnapshotMeta {
    pub label: Option<String>,
    /// Unix seconds before which the snapshot cannot be deleted (0: no lock).
    pub lock_until: i64,
    pub busy: bool,
    pub cancel: Option<SnapshotCancel>,
}

/// Lets a caller that gives up on a snapshot (a freeze past its limit) know for sure
/// whether it will be recorded: either [`SnapshotCancel::cancel`] wins and the snapshot
/// is rolled back, or the snapshot has started its commit and the caller must wait
/// for it (it holds what was frozen, nothing after).
#[derive(Clone, Debug, Default)]
pub struct SnapshotCancel(Arc<std::sync::atomic::AtomicU8>);

const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;
const COMMITTING: u8 = 2;

impl SnapshotCancel {
    /// `true`: the snapshot will not be recorded. `false`: it is committing already.
    pub fn cancel(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        match self.0.compare_exchange(RUNNING, CANCELLED, SeqCst, SeqCst) {
            Ok(_) => true,
            Err(state) => state == CANCELLED,
        }
    }

    fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst) == CANCELLED
    }

    /// `false` when cancelled: the caller rolls back.
    fn begin_commit(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.0
            .compare_exchange(RUNNING, COMMITTING, SeqCst, SeqCst)
            .is_ok()
    }
}

fn cancelled(vol: &str, name: &str) -> StoreError {
    StoreError::Refused(format!("snapshot {vol}@{name} cancelled"))
}

struct Builder<'a> {
    store: &'a Store,
    conn: &'a Connection,
    locs: Vec<Location>,
    dirs_encoded: u64,
    /// Files sealed at a freeze (size and mtime as sealed): their content is stored
    /// after the thaw, so the directories above them wait too.
    sealed: Option<&'a HashMap<FileId, (u64, Timespec)>>,
}

/// A directory as encoded, or waiting for the content of sealed files below it.
enum Built {
    Known(ChunkId),
    Pending(PendingDir),
}

/// A directory whose object waits for sealed files: its entries, and which of them
/// are sealed files or pending directories (by index).
struct PendingDir {
    entries: Vec<TreeEntry>,
    files: Vec<(usize, FileId)>,
    dirs: Vec<(usize, PendingDir)>,
}

impl Builder<'_> {
    fn put(&mut self, raw: &[u8]) -> Result<ChunkId> {
        let id = ChunkId::of(raw);
        if !ChunkStore::has(self.conn, &id)? && !self.locs.iter().any(|l| l.id == id) {
            let comp = pack::compress(raw, self.store.opts.zstd_level);
            self.locs
                .push(self.store.chunks.append(KIND_DIR, raw, comp, id)?);
        }
        Ok(id)
    }

    /// Tree id of directory `ino`, re-encoding it (and dirty subdirectories) if needed.
    fn build(&mut self, ino: FileId) -> Result<Built> {
        let d = namespace::get(self.conn, ino)?;
        if let Some(t) = d.tree {
            return Ok(Built::Known(t));
        }
        let mut children = namespace::children(self.conn, ino)?;
        children.sort_by(|a, b| a.name.cmp(&b.name));
        let mut entries = Vec::with_capacity(children.len());
        let (mut files, mut dirs) = (Vec::new(), Vec::new());
        for c in children {
            let mut i = c.inode;
            let target_ref = match i.attr.kind {
                FileKind::Dir => match self.build(i.attr.ino)? {
                    Built::Known(t) => Some(t),
                    Built::Pending(p) => {
                        dirs.push((entries.len(), p));
                        None
                    }
                },
                FileKind::File => match self.sealed.and_then(|m| m.get(&i.attr.ino)) {
                    Some(&(size, mtime)) => {
                        i.attr.size = size;
                        i.attr.mtime = i.attr.mtime.max(mtime);
                        i.attr.ctime = i.attr.ctime.max(mtime);
                        files.push((entries.len(), i.attr.ino));
                        None
                    }
                    None => i.content,
                },
                FileKind::Symlink => None,
            };
            entries.push(TreeEntry {
                name: c.name,
                attr: i.attr,
                target_ref,
                link: i.link,
            });
        }
        if !files.is_empty() || !dirs.is_empty() {
            return Ok(Built::Pending(PendingDir {
                entries,
                files,
                dirs,
            }));
        }
        let id = self.put(&tree::encode_dir(&entries))?;
        namespace::set_tree(self.conn, ino, &id)?;
        self.dirs_encoded += 1;
        Ok(Built::Known(id))
    }

    /// Encodes a pending directory once its sealed files have content (not cached:
    /// the live directory has moved on).
    fn resolve(
        &mut self,
        mut d: PendingDir,
        contents: &HashMap<FileId, Option<ChunkId>>,
    ) -> Result<ChunkId> {
        for (i, ino) in d.files {
            d.entries[i].target_ref = contents.get(&ino).copied().flatten();
        }
        for (i, sub) in std::mem::take(&mut d.dirs) {
            d.entries[i].target_ref = Some(self.resolve(sub, contents)?);
        }
        self.dirs_encoded += 1;
        self.put(&tree::encode_dir(&d.entries))
    }
}

/// A snapshot row (with its volume id in place of the name, filled in by [`query`])
/// and its encoded root entry.
fn row_to_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<(SnapshotInfo, VolumeId, Vec<u8>)> {
    let info = SnapshotInfo {
        id: SnapshotId(r.get::<_, i64>(0)? as u64),
        volume: String::new(),
        name: r.get(2)?,
        root: {
            let b: Vec<u8> = r.get(3)?;
            ChunkId::from_slice(&b).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    3,
                    rusqlite::types::Type::Blob,
                    format!("snapshot root of {} bytes", b.len()).into(),
                )
            })?
        },
        created: Timespec {
            sec: r.get(4)?,
            nsec: r.get::<_, i64>(5)? as u32,
        },
        logical_bytes: r.get::<_, i64>(6)? as u64,
        dirs_encoded: 0,
        label: r.get(8)?,
        held: r.get::<_, i64>(9)? != 0,
        lock_until: r.get(10)?,
        busy: r.get::<_, i64>(11)? != 0,
    };
    Ok((info, VolumeId(r.get::<_, i64>(1)? as u64), r.get(7)?))
}

/// Snapshots matching `filter` (on the `snapshots` columns), oldest first, with their
/// root entries; volume names come from the namespace.
fn query<P: rusqlite::Params>(
    conn: &Connection,
    filter: &str,
    p: P,
) -> Result<Vec<(SnapshotInfo, Vec<u8>)>> {
    let vols = namespace::volumes(conn)?;
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT id, vol, name, root, created_s, created_ns, logical_bytes, root_entry,
                    label, held, lock_until, busy
             FROM snapshots WHERE {filter} ORDER BY created_s, created_ns, id"
        ))
        .ctx("listing snapshots")?;
    let rows = st.query_map(p, row_to_info).ctx("listing snapshots")?;
    rows.map(|r| {
        let (mut info, vol, entry) = r.ctx("listing snapshots")?;
        info.volume = vols
            .iter()
            .find(|v| v.id == vol)
            .map_or_else(|| format!("volume {vol}"), |v| v.name.clone());
        Ok((info, entry))
    })
    .collect()
}

/// The root directory objects of every snapshot (GC marks from them).
pub(crate) fn roots(conn: &Connection) -> Result<Vec<ChunkId>> {
    let mut st = conn
        .prepare("SELECT root FROM snapshots")
        .ctx("listing snapshot roots")?;
    let rows = st
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .ctx("listing snapshot roots")?;
    rows.map(|r| ChunkId::from_row(&r.ctx("listing snapshot roots")?, "snapshots.root"))
        .collect()
}

impl Store {
    pub(crate) fn snapshot_row(&self, vol: &str, name: &str) -> Result<(SnapshotInfo, TreeEntry)> {
        let conn = self.db.lock();
        let missing = || StoreError::NotFound(format!("snapshot {vol}@{name}"));
        let v = namespace::volumes(&conn)?
            .into_iter()
            .find(|v| v.name == vol)
            .ok_or_else(missing)?;
        let (info, entry) = query(&conn, "vol=?1 AND name=?2", params![v.id.0 as i64, name])?
            .pop()
            .ok_or_else(missing)?;
        Ok((info, tree::decode_entry_alone(&entry)?))
    }

    pub(crate) fn dir_object(&self, id: &ChunkId) -> Result<Arc<Vec<TreeEntry>>> {
        if let Some(d) = self.dir_cache.lock().unwrap().get(id) {
            return Ok(d.clone());
        }
        let raw = self.chunks.get(id, &|| format!("directory object {id}"))?;
        let d = Arc::new(tree::decode_dir(&raw)?);
        self.dir_cache.lock().unwrap().put(*id, d.clone());
        Ok(d)
    }
}

/// Takes a snapshot of volume `vol` named `name`. For a consistent snapshot the
/// caller holds mutating calls (the appliance's freeze); this ingests what is staged.
pub(crate) fn snapshot(
    store: &Store,
    vol: &str,
    name: &str,
    meta: &SnapshotMeta,
) -> Result<SnapshotInfo> {
    store.latch.check()?;
    check_new(name, meta)?;
    let v = store.volume(vol)?;
    let t0 = std::time::Instant::now();
    let mut tries = 0;
    let is_cancelled = || meta.cancel.as_ref().is_some_and(|c| c.is_cancelled());
    loop {
        if is_cancelled() {
            return Err(cancelled(vol, name));
        }
        store.ingest_all(Some(v.id))?;
        let still = {
            let conn = store.db.lock();
            store
                .staging
                .all()
                .iter()
                .filter(|s| {
                    namespace::get_opt(&conn, s.ino)
                        .ok()
                        .flatten()
                        .is_some_and(|i| i.vol == v.id)
                })
                .count()
        };
        if still == 0 {
            break;
        }
        tries += 1;
        if tries >= 5 {
            return Err(StoreError::Invalid(format!(
                "volume {vol}: {still} files kept changing during the snapshot; freeze writers first"
            )));
        }
    }
    let cap = capture(store, vol, name, meta, None)?;
    let info = finish(store, cap)?;
    tracing::info!(
        volume = vol,
        snapshot = name,
        dirs_encoded = info.dirs_encoded,
        ms = t0.elapsed().as_millis() as u64,
        "snapshot created"
    );
    Ok(info)
}

/// The objects that captures waiting for their finish refer to: directory objects
/// encoded at the freeze, contents of unchanged files in pending directories, and the
/// bases of sealed files. The live volume may stop referring to them after the thaw;
/// GC marks from here so that they stay until the snapshot refers to them.
#[derive(Default)]
pub(crate) struct CaptureRoots {
    next: std::sync::atomic::AtomicU64,
    held: std::sync::Mutex<HashMap<u64, Held>>,
}

/// One capture's (directory objects, contents).
type Held = (Vec<ChunkId>, Vec<ChunkId>);

impl CaptureRoots {
    fn hold(&self, trees: Vec<ChunkId>, contents: Vec<ChunkId>) -> u64 {
        let k = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.held.lock().unwrap().insert(k, (trees, contents));
        k
    }

    /// (directory objects, contents) held now.
    pub(crate) fn all(&self) -> (Vec<ChunkId>, Vec<ChunkId>) {
        let (mut t, mut c) = (Vec::new(), Vec::new());
        for (a, b) in self.held.lock().unwrap().values() {
            t.extend_from_slice(a);
            c.extend_from_slice(b);
        }
        (t, c)
    }
}

fn pending_refs(d: &PendingDir, trees: &mut Vec<ChunkId>, contents: &mut Vec<ChunkId>) {
    for e in &d.entries {
        match (e.attr.kind, e.target_ref) {
            (FileKind::Dir, Some(t)) => trees.push(t),
            (FileKind::File, Some(c)) => contents.push(c),
            _ => {}
        }
    }
    for (_, sub) in &d.dirs {
        pending_refs(sub, trees, contents);
    }
}

/// What a snapshot's freeze saw, to be finished after the thaw ([`finish`]): the tree
/// (directories above sealed files still pending), the sealed files, the root's
/// attributes and the logical size. Dropping it unseals the files.
pub struct Capture {
    vol: Volume,
    name: String,
    meta: SnapshotMeta,
    root: Option<Built>,
    root_attr: crate::namespace::Attr,
    sealed: Vec<Arc<crate::staging::StagedFile>>,
    logical: u64,
    created: Timespec,
    dirs_encoded: u64,
    /// Its entry in the store's capture roots, released on drop.
    roots: Option<(Arc<CaptureRoots>, u64)>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        for st in &self.sealed {
            st.lock().seal = None;
        }
        if let Some((r, k)) = self.roots.take() {
            r.held.lock().unwrap().remove(&k);
        }
    }
}

impl Capture {
    /// Files sealed at the freeze (to be stored by [`finish`]).
    pub fn sealed_files(&self) -> usize {
        self.sealed.len()
    }
}

fn exists(conn: &Connection, vol: VolumeId, name: &str) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM snapshots WHERE vol=?1 AND name=?2",
            params![vol.0 as i64, name],
            |_| Ok(()),
        )
        .optional()
        .ctx("checking snapshot name")?
        .is_some())
}

/// The part of a snapshot that must see the frozen volume, and only that: seals the
/// volume's staged files as they are (no data is read), encodes the directories that
/// changed and hold no staged file, and notes the rest. Its cost grows with the changed
/// directories and the number of staged files, not with their bytes. The caller holds
/// the volume's writers ([`SnapshotMeta::cancel`] may give up on it meanwhile).
pub(crate) fn capture(
    store: &Store,
    vol: &str,
    name: &str,
    meta: &SnapshotMeta,
    gc_held: Option<&crate::store::GcHold<'_>>,
) -> Result<Capture> {
    store.latch.check()?;
    check_new(name, meta)?;
    let v = store.volume(vol)?;
    let (mine, root_attr) = {
        let conn = store.db.lock();
        if exists(&conn, v.id, name)? {
            return Err(StoreError::Exists(format!("snapshot {vol}@{name}")));
        }
        let mut out = Vec::new();
        for st in store.staging.all() {
            if namespace::get_opt(&conn, st.ino)?.is_some_and(|i| i.vol == v.id) {
                out.push(st);
            }
        }
        (out, namespace::get(&conn, v.root)?.attr)
    };
    let mut cap = Capture {
        vol: v.clone(),
        name: name.to_owned(),
        meta: meta.clone(),
        root: None,
        root_attr,
        sealed: Vec::new(),
        logical: 0,
        created: Timespec::now(),
        dirs_encoded: 0,
        roots: None,
    };
    let mut sizes: HashMap<FileId, (u64, Timespec)> = HashMap::new();
    for st in mine {
        let mut g = st.lock();
        if g.dropped {
            continue;
        }
        if g.seal.is_some() {
            return Err(StoreError::Refused(format!(
                "file id {} is sealed by another snapshot in progress",
                st.ino
            )));
        }
        g.seal(st.path.with_extension("seal"));
        sizes.insert(st.ino, (g.size, g.mtime));
        drop(g);
        cap.sealed.push(st);
    }
    // Held by the caller since before the freeze, or taken here.
    let _gc = match gc_held {
        Some(h) => {
            assert!(std::ptr::eq(h.store, store), "a GC hold of another store");
            None
        }
        None => Some(store.gc_lock.read().unwrap()),
    };
    let mut conn = store.db.lock();
    let tx = conn.transaction().ctx("begin snapshot")?;
    // A staged write leaves the namespace as it was: the directories naming a sealed
    // file are encoded again, with the sealed size and content.
    let mut logical = namespace::logical_bytes(&tx, Some(v.id))?;
    for (ino, (size, _)) in &sizes {
        namespace::invalidate_holders(&tx, *ino)?;
        let row = namespace::get(&tx, *ino)?.attr.size;
        logical = (logical + size).saturating_sub(row);
    }
    let mut b = Builder {
        store,
        conn: &tx,
        locs: Vec::new(),
        dirs_encoded: 0,
        sealed: Some(&sizes),
    };
    let root = b.build(v.root)?;
    let (locs, dirs_encoded) = (b.locs, b.dirs_encoded);
    // Held for GC before the GC lock is released (GC cannot run while it is held).
    let (mut trees, mut contents) = (Vec::new(), Vec::new());
    match &root {
        Built::Known(t) => trees.push(*t),
        Built::Pending(p) => pending_refs(p, &mut trees, &mut contents),
    }
    for st in &cap.sealed {
        if let Some(b) = st.lock().seal.as_ref().and_then(|s| s.base()) {
            contents.push(b);
        }
    }
    cap.roots = Some((
        store.capture_roots.clone(),
        store.capture_roots.hold(trees, contents),
    ));
    let packs = store.chunks.writer.lock().unwrap().sync(&store.latch)?;
    ChunkStore::index_rows(&tx, &locs, &packs)?;
    cap.root_attr = namespace::get(&tx, v.root)?.attr;
    if meta.cancel.as_ref().is_some_and(|c| !c.begin_commit()) {
        return Err(cancelled(vol, name));
    }
    tx.commit().ctx("commit snapshot capture")?;
    cap.root = Some(root);
    cap.logical = logical;
    cap.dirs_encoded = dirs_encoded;
    cap.created = Timespec::now();
    Ok(cap)
}

/// Stores the sealed files as the freeze saw them, encodes the directories above them
/// and records the snapshot; then unseals. Runs while clients write on.
pub(crate) fn finish(store: &Store, mut cap: Capture) -> Result<SnapshotInfo> {
    let mut contents: HashMap<FileId, Option<ChunkId>> = HashMap::new();
    let mut locs = Vec::new();
    let mut pins = Vec::new();
    for st in &cap.sealed {
        let (content, l, _, p) = store.ingest_sealed(st)?;
        contents.insert(st.ino, content);
        locs.extend(l);
        pins.push(p);
    }
    let _gc = store.gc_lock.read().unwrap();
    let mut conn = store.db.lock();
    let tx = conn.transaction().ctx("begin snapshot")?;
    let (vol, name) = (cap.vol.name.clone(), cap.name.clone());
    if exists(&tx, cap.vol.id, &name)? {
        return Err(StoreError::Exists(format!("snapshot {vol}@{name}")));
    }
    let mut b = Builder {
        store,
        conn: &tx,
        locs,
        dirs_encoded: cap.dirs_encoded,
        sealed: None,
    };
    let root_tree = match cap.root.take().expect("captured") {
        Built::Known(id) => id,
        Built::Pending(p) => b.resolve(p, &contents)?,
    };
    let (locs, dirs_encoded) = (b.locs, b.dirs_encoded);
    let root_entry = TreeEntry {
        name: Vec::new(),
        attr: cap.root_attr,
        target_ref: Some(root_tree),
        link: Vec::new(),
    };
    let packs = store.chunks.writer.lock().unwrap().sync(&store.latch)?;
    ChunkStore::index_rows(&tx, &locs, &packs)?;
    for st in &cap.sealed {
        crate::ingest::forget_parts(&tx, st.ino)?;
    }
    let (now, meta, logical) = (cap.created, &cap.meta, cap.logical as i64);
    tx.execute(
        "INSERT INTO snapshots(vol, name, root, root_entry, created_s, created_ns,
                               logical_bytes, label, lock_until, busy)
         VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            cap.vol.id.0 as i64,
            name,
            &root_tree.0[..],
            tree::encode_entry_alone(&root_entry),
            now.sec,
            now.nsec,
            logical,
            meta.label,
            meta.lock_until,
            meta.busy as i64,
        ],
    )
    .ctx("recording snapshot")?;
    let id = SnapshotId(tx.last_insert_rowid() as u64);
    tx.commit().ctx("commit snapshot")?;
    drop(conn);
    drop(pins);
    store.db.sync_wal(&store.latch)?;
    Ok(SnapshotInfo {
        id,
        volume: vol,
        name,
        created: now,
        root: root_tree,
        logical_bytes: logical as u64,
        dirs_encoded,
        label: meta.label.clone(),
        held: false,
        lock_until: meta.lock_until,
        busy: meta.busy,
    })
}

/// [`Store::adopt_snapshot`].
pub(crate) fn adopt(store: &Store, info: &SnapshotInfo, root: &TreeEntry) -> Result<bool> {
    check_volume_name(&info.name)?;
    if let Some(l) = &info.label {
        check_label(l)?;
    }
    if root.target_ref != Some(info.root) || root.attr.kind != FileKind::Dir {
        return Err(StoreError::Format(format!(
            "snapshot {}@{}: root entry does not name its root",
            info.volume, info.name
        )));
    }
    let vol = match store.volume(&info.volume) {
        Ok(v) => v,
        Err(StoreError::NotFound(_)) => store.create_volume(
            &info.volume,
            NewAttr {
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
        )?,
        Err(e) => return Err(e),
    };
    let mut conn = store.db.lock();
    let tx = conn.transaction().ctx("begin adopting a snapshot")?;
    let new = !exists(&tx, vol.id, &info.name)?;
    if new {
        tx.execute(
            "INSERT INTO snapshots(vol, name, root, root_entry, created_s, created_ns,
                                   logical_bytes, label, lock_until, busy, held)
             VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                vol.id.0 as i64,
                info.name,
                &info.root.0[..],
                tree::encode_entry_alone(root),
                info.created.sec,
                info.created.nsec,
                info.logical_bytes as i64,
                info.label,
                info.lock_until,
                info.busy as i64,
                info.held as i64,
            ],
        )
        .ctx("adopting a snapshot")?;
    } else {
        tx.execute(
            "UPDATE snapshots SET label=?3, lock_until=?4, busy=?5, held=?6
             WHERE vol=?1 AND name=?2",
            params![
                vol.id.0 as i64,
                info.name,
                info.label,
                info.lock_until,
                info.busy as i64,
                info.held as i64,
            ],
        )
        .ctx("updating an adopted snapshot")?;
    }
    tx.commit().ctx("commit adopted snapshot")?;
    drop(conn);
    store.db.sync_wal(&store.latch)?;
    Ok(new)
}

/// A new snapshot's name and label, checked before anything is done.
fn check_new(name: &str, meta: &SnapshotMeta) -> Result<()> {
    check_volume_name(name)?;
    if let Some(l) = &meta.label {
        check_label(l)?;
    }
    Ok(())
}

/// A label is free text for people: printable, one line, at most 200 bytes.
fn check_label(l: &str) -> Result<()> {
    if l.len() > 200 || l.chars().any(|c| c.is_control()) {
        return Err(StoreError::Invalid(format!(
            "label {l:?}: at most 200 bytes of printable text"
        )));
    }
    Ok(())
}

/// Holds (`true`) or releases a snapshot: a held snapshot is never pruned or deleted.
pub(crate) fn set_hold(store: &Store, vol: &str, name: &str, held: bool) -> Result<SnapshotInfo> {
    store.latch.check()?;
    let (mut info, _) = store.snapshot_row(vol, name)?;
    store
        .db
        .lock()
        .execute(
            "UPDATE snapshots SET held=?1 WHERE id=?2",
            params![held as i64, info.id.0 as i64],
        )
        .ctx("holding snapshot")?;
    store.db.sync_wal(&store.latch)?;
    info.held = held;
    tracing::info!(volume = vol, snapshot = name, held, "snapshot hold changed");
    Ok(info)
}

/// Snapshots of one volume (or all), oldest first.
pub(crate) fn snapshots(store: &Store, vol: Option<&str>) -> Result<Vec<SnapshotInfo>> {
    let conn = store.db.lock();
    let rows = match vol {
        None => query(&conn, "1", [])?,
        Some(name) => match namespace::volumes(&conn)?
            .into_iter()
            .find(|v| v.name == name)
        {
            Some(v) => query(&conn, "vol=?1", [v.id.0 as i64])?,
            None => Vec::new(),
        },
    };
    Ok(rows.into_iter().map(|(i, _)| i).collect())
}

/// A snapshot and its root entry by id (for stateless NFS handles).
pub(crate) fn snapshot_by_id(store: &Store, id: SnapshotId) -> Result<(SnapshotInfo, TreeEntry)> {
    let (info, entry) = query(&store.db.lock(), "id=?1", [id.0 as i64])?
        .pop()
        .ok_or_else(|| StoreError::NotFound(format!("snapshot id {id}")))?;
    Ok((info, tree::decode_entry_alone(&entry)?))
}

/// Entries of a directory object by id, sorted by name.
pub(crate) fn dir_entries(store: &Store, id: &ChunkId) -> Result<Arc<Vec<TreeEntry>>> {
    store.dir_object(id)
}

/// Deletes a snapshot record; its data goes at the next GC. A held snapshot, or one
/// locked until a later time (`now`, unix seconds), is refused with the reason.
pub(crate) fn delete_snapshot(store: &Store, vol: &str, name: &str, now: i64) -> Result<()> {
    store.latch.check()?;
    let (info, _) = store.snapshot_row(vol, name)?;
    if info.held {
        return Err(StoreError::Refused(format!(
            "snapshot {vol}@{name} is held; release it first"
        )));
    }
    if info.lock_until > now {
        return Err(StoreError::Refused(format!(
            "snapshot {vol}@{name} is locked for {} more seconds (until unix time {})",
            info.lock_until - now,
            info.lock_until
        )));
    }
    let _gc = store.gc_lock.read().unwrap();
    store.freeing(|| {
        store
            .db
            .lock()
            .execute("DELETE FROM snapshots WHERE id=?1", [info.id.0 as i64])
            .ctx("deleting snapshot")
    })?;
    store.db.sync_wal(&store.latch)?;
    tracing::info!(volume = vol, snapshot = name, "snapshot deleted");
    Ok(())
}

/// The root directory entry of a snapshot.
pub(crate) fn snapshot_root(store: &Store, vol: &str, name: &str) -> Result<TreeEntry> {
    Ok(store.snapshot_row(vol, name)?.1)
}

/// Entries of a snapshot directory, sorted by name.
pub(crate) fn snapshot_children(store: &Store, dir: &TreeEntry) -> Result<Arc<Vec<TreeEntry>>> {
    if dir.attr.kind != FileKind::Dir {
        return Err(StoreError::NotDir(
            String::from_utf8_lossy(&dir.name).into_owned(),
        ));
    }
    let id = dir
        .target_ref
        .ok_or_else(|| StoreError::Format("directory entry without tree".into()))?;
    store.dir_object(&id)
}

pub(crate) fn snap_lookup(store: &Store, dir: &TreeEntry, name: &[u8]) -> Result<TreeEntry> {
    let entries = store.snapshot_children(dir)?;
    entries
        .binary_search_by(|e| e.name.as_slice().cmp(name))
        .map(|i| entries[i].clone())
        .map_err(|_| StoreError::NotFound(String::from_utf8_lossy(name).into_owned()))
}

/// Makes a new writable volume from a snapshot. Data is shared, not copied; only
/// inode rows are written.
pub(crate) fn clone_snapshot(
    store: &Store,
    vol: &str,
    snap: &str,
    new_vol: &str,
) -> Result<Volume> {
    store.latch.check()?;
    check_volume_name(new_vol)?;
    let (_, root) = store.snapshot_row(vol, snap)?;
    // Read the whole tree first (chunk reads take the db lock).
    let mut plan: Vec<(usize, TreeEntry)> = Vec::new();
    let mut stack = vec![(usize::MAX, root.clone())];
    while let Some((parent_idx, e)) = stack.pop() {
        let idx = plan.len();
        plan.push((parent_idx, e.clone()));
        if e.attr.kind == FileKind::Dir {
            for c in store.snapshot_children(&e)?.iter() {
                stack.push((idx, c.clone()));
            }
        }
    }
    // Names of one file (same file id in the snapshot) stay names of one file.
    let mut names: HashMap<FileId, u32> = HashMap::new();
    for (_, e) in &plan[1..] {
        if e.attr.kind != FileKind::Dir {
            *names.entry(e.attr.ino).or_default() += 1;
        }
    }
    let _gc = store.gc_lock.read().unwrap();
    let mut conn = store.db.lock();
    let tx = conn.transaction().ctx("begin clone")?;
    let new_inode = |vid: VolumeId, e: &TreeEntry, nlink: u32| {
        let a = e.attr;
        let (content, tree) = match a.kind {
            FileKind::Dir => (None, e.target_ref),
            _ => (e.target_ref, None),
        };
        namespace::insert_inode(
            &tx,
            &NewInode {
                vol: vid,
                kind: a.kind,
                attr: NewAttr {
                    mode: a.mode,
                    uid: a.uid,
                    gid: a.gid,
                },
                size: a.size,
                times: [a.atime, a.mtime, a.ctime],
                content,
                link: &e.link,
                tree,
                verf: None,
                nlink,
            },
        )
    };
    let volume = namespace::create_volume(&tx, new_vol, |vid| new_inode(vid, &plan[0].1, 1))?;
    let mut new_ids: Vec<FileId> = Vec::with_capacity(plan.len());
    let mut linked: HashMap<FileId, FileId> = HashMap::new();
    new_ids.push(volume.root);
    for (parent_idx, e) in &plan[1..] {
        let parent = new_ids[*parent_idx];
        let ino = match linked.get(&e.attr.ino) {
            Some(&ino) => ino,
            None => {
                let n = names.get(&e.attr.ino).copied().unwrap_or(1);
                let ino = new_inode(volume.id, e, n)?;
                if e.attr.kind != FileKind::Dir {
                    linked.insert(e.attr.ino, ino);
                }
                ino
            }
        };
        namespace::add_entry(&tx, parent, &e.name, ino)?;
        new_ids.push(ino);
    }
    tx.commit().ctx("commit clone")?;
    drop(conn);
    store.db.sync_wal(&store.latch)?;
    tracing::info!(
        volume = vol,
        snapshot = snap,
        clone = new_vol,
        inodes = plan.len(),
        "snapshot cloned"
    );
    Ok(volume)
}
