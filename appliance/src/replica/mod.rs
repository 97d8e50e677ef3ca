//! DR copies: a snapshot's objects and record sent to a second site (a directory) or to
//! S3 object storage, incrementally, and read back there with the main site gone.
//!
//! - [`layout`]: what a copy holds, the same in a directory and a bucket;
//! - [`backend`]: the directory and S3 backends;
//! - [`send`]: replication (only what the copy lacks; the record last);
//! - [`check`]: verify and prune of a copy;
//! - [`Reader`]: objects read back on demand, for restore, serve and clone.
//!
//! The engine is synchronous (the store is) and runs on a blocking thread; it drives
//! the backend's futures on the runtime it was given.

pub mod backend;
pub mod check;
pub mod layout;
pub mod send;

use anyhow::{anyhow, bail, Context, Result};
use backend::{Backend, S3Toml};
use layout::{Entry, Record, Sealer, TargetConfig};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use storage::ids::ChunkId;

/// `[target.NAME]` in kura.toml: where a DR copy lives and how it is kept.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetToml {
    /// A directory (a second disk, a mounted remote filesystem).
    pub path: Option<PathBuf>,
    /// S3-compatible object storage.
    pub s3: Option<S3Toml>,
    /// Encrypts everything sent (32 bytes, raw or hex). Losing it loses the copy.
    pub key_file: Option<PathBuf>,
    /// Upload limit in MB/s (10^6 bytes); none by default.
    pub bandwidth_mb_s: Option<f64>,
    /// Size of the packs sent (MiB, 1..=1024; default 32): one PUT each, and what an
    /// interrupted copy resends at most.
    pub pack_mib: Option<u32>,
    /// Replicate every volume that names this target on this cron schedule too (in
    /// `schedule.timezone`), besides after each snapshot.
    pub schedule: Option<String>,
    /// Retention at the target; absent keeps every snapshot sent.
    pub keep: Option<KeepToml>,
}

/// A retention policy in its own table: `keep = { daily = 30, weekly = 8 }`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeepToml {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
    /// e.g. "90d".
    pub within: Option<String>,
}

impl KeepToml {
    pub fn policy(&self) -> Result<crate::retention::Policy> {
        Ok(crate::retention::Policy {
            keep_last: self.last,
            keep_hourly: self.hourly,
            keep_daily: self.daily,
            keep_weekly: self.weekly,
            keep_monthly: self.monthly,
            keep_yearly: self.yearly,
            keep_within: match &self.within {
                Some(w) => Some(crate::config::parse_duration(w).context("keep.within")?),
                None => None,
            },
        })
    }
}

impl TargetToml {
    /// A target named on the command line: `s3://BUCKET[/PREFIX]` (endpoint, region and
    /// credentials from the AWS environment variables, path-style addressing) or a
    /// directory.
    pub fn from_arg(arg: &str, key_file: Option<PathBuf>) -> Result<TargetToml> {
        let mut t = TargetToml {
            key_file,
            ..Default::default()
        };
        if let Some(rest) = arg.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            t.s3 = Some(S3Toml {
                endpoint: env("AWS_ENDPOINT_URL").or_else(|| env("AWS_ENDPOINT")),
                region: env("AWS_REGION")
                    .or_else(|| env("AWS_DEFAULT_REGION"))
                    .unwrap_or_else(|| "us-east-1".into()),
                bucket: bucket.into(),
                prefix: prefix.into(),
                ..Default::default()
            });
        } else {
            t.path = Some(PathBuf::from(arg.strip_prefix("file://").unwrap_or(arg)));
        }
        Ok(t)
    }

    pub fn validate(&self) -> Result<()> {
        match (&self.path, &self.s3) {
            (Some(_), Some(_)) => bail!("give path or s3, not both"),
            (None, None) => bail!("give path (a directory) or s3 (a bucket)"),
            _ => {}
        }
        if let Some(b) = self.bandwidth_mb_s {
            if !(b > 0.0 && b.is_finite()) {
                bail!("bandwidth_mb_s must be a positive number");
            }
        }
        if let Some(k) = &self.keep {
            k.policy()?;
        }
        if let Some(p) = self.pack_mib {
            if !(1..=1024).contains(&p) {
                bail!("pack_mib = {p} is outside 1..=1024");
            }
        }
        Ok(())
    }
}

/// An opened DR copy.
pub struct Target {
    pub name: String,
    pub backend: Backend,
    pub sealer: Sealer,
    pub bandwidth: Option<f64>,
    /// Bytes of a pack before it is sent.
    pub pack_bytes: usize,
    pub(crate) rt: tokio::runtime::Handle,
}

impl Target {
    /// Opens the copy described by `t`; `create` makes a new one where there is none
    /// (an empty directory or prefix). Checks the format and the key.
    pub fn open(
        name: &str,
        t: &TargetToml,
        rt: tokio::runtime::Handle,
        create: bool,
    ) -> Result<Target> {
        t.validate().with_context(|| format!("target {name}"))?;
        let backend = match (&t.path, &t.s3) {
            (Some(p), _) => Backend::dir(p),
            (_, Some(s)) => Backend::s3(s).with_context(|| format!("target {name}"))?,
            _ => unreachable!("validated"),
        };
        let sealer = match &t.key_file {
            Some(k) => Sealer::from_key_file(k)?,
            None => Sealer::plain(),
        };
        let target = Target {
            name: name.into(),
            backend,
            sealer,
            bandwidth: t.bandwidth_mb_s.map(|b| b * 1e6),
            pack_bytes: t.pack_mib.unwrap_or(32) as usize * (1 << 20),
            rt,
        };
        let what = format!("target {name} ({})", target.backend.describe());
        match target.block(target.backend.get(layout::CONFIG_KEY))? {
            Some(b) => {
                let c: TargetConfig = serde_json::from_slice(&b).with_context(|| {
                    format!("{what}: {} is not a kura copy's", layout::CONFIG_KEY)
                })?;
                c.check(&target.sealer, &what)?;
            }
            None if create => {
                let c = TargetConfig::new(&target.sealer);
                target.block(
                    target
                        .backend
                        .put(layout::CONFIG_KEY, serde_json::to_vec_pretty(&c)?.into()),
                )?;
            }
            None => bail!(
                "{what} holds no kura copy ({} is missing)",
                layout::CONFIG_KEY
            ),
        }
        Ok(target)
    }

    /// Runs a backend future to its end from this (blocking) thread.
    pub fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn describe(&self) -> String {
        format!("target {} ({})", self.name, self.backend.describe())
    }

    /// Every snapshot record in the copy, oldest first. A record that cannot be read
    /// is an error naming its key.
    pub fn records(&self) -> Result<Vec<(String, Record)>> {
        let keys = self.block(self.backend.list("snapshots"))?;
        let fetched = self.get_all(&keys);
        let mut recs = Vec::new();
        for (k, b) in fetched {
            let Some(b) = b? else { continue }; // deleted since the listing
            let rec = Record::decode(&b, &self.sealer)
                .with_context(|| format!("{}: snapshot record {k}", self.describe()))?;
            recs.push((k, rec));
        }
        recs.sort_by(|a, b| {
            (a.1.created_s, a.1.created_ns, &a.1.name).cmp(&(
                b.1.created_s,
                b.1.created_ns,
                &b.1.name,
            ))
        });
        Ok(recs)
    }

    /// GETs every listed key, eight at a time: (key, its bytes or `None` if gone since
    /// the listing, or the error).
    fn get_all(&self, keys: &[(String, u64, u64)]) -> Vec<(String, Result<Option<bytes::Bytes>>)> {
        use futures::StreamExt;
        self.block(
            futures::stream::iter(
                keys.iter()
                    .map(|(k, _, _)| async move { (k.clone(), self.backend.get(k).await) }),
            )
            .buffered(8)
            .collect(),
        )
    }

    /// Reads every index: where each object of the copy is.
    pub fn catalog(&self) -> Result<Catalog> {
        let keys = self.block(self.backend.list("index"))?;
        let packs_listed: HashMap<String, u64> = self
            .block(self.backend.list("packs"))?
            .into_iter()
            .map(|(k, size, _)| (k, size))
            .collect();
        let fetched = self.get_all(&keys);
        let mut cat = Catalog::default();
        for (k, b) in fetched {
            let id = k.trim_start_matches("index/").to_string();
            let Some(b) = b? else { continue };
            let entries = match layout::decode_index(&b, &self.sealer) {
                Ok(e) => e,
                Err(e) => {
                    cat.bad_indexes.push(format!("{k}: {e:#}"));
                    continue;
                }
            };
            let pack_key = format!("packs/{id}");
            let Some(&size) = packs_listed.get(&pack_key) else {
                cat.missing_packs.push(pack_key);
                continue;
            };
            cat.add_pack(id, size, &entries);
        }
        Ok(cat)
    }
}

/// Where one object is: its pack (an index into [`Catalog::packs`]) and blob.
#[derive(Clone, Copy, Debug)]
pub struct Loc {
    pub pack: u32,
    pub kind: u8,
    pub blob_off: u64,
    pub blob_len: u32,
    /// Raw length of the whole blob.
    pub blob_raw: u32,
    pub inner_off: u32,
    pub raw_len: u32,
}

/// The copy's objects, from its indexes.
#[derive(Default)]
pub struct Catalog {
    /// Pack ids and sizes, in the order indexes were read.
    pub packs: Vec<(String, u64)>,
    pub objects: HashMap<ChunkId, Loc>,
    /// Indexes that do not open (named), and indexes whose pack is gone.
    pub bad_indexes: Vec<String>,
    pub missing_packs: Vec<String>,
}

impl Catalog {
    pub fn add_pack(&mut self, id: String, size: u64, entries: &[Entry]) {
        let p = self.packs.len() as u32;
        self.packs.push((id, size));
        for e in entries {
            self.objects.entry(e.id).or_insert(Loc {
                pack: p,
                kind: e.kind,
                blob_off: e.blob_off,
                blob_len: e.blob_len,
                blob_raw: e.blob_raw,
                inner_off: e.inner_off,
                raw_len: e.raw_len,
            });
        }
    }

    pub fn has(&self, id: &ChunkId) -> bool {
        self.objects.contains_key(id)
    }

    /// Stored bytes of the copy's packs.
    pub fn pack_bytes(&self) -> u64 {
        self.packs.iter().map(|p| p.1).sum()
    }
}

/// Reads objects of a copy on demand, keeping recently opened blobs in memory (at most
/// `cache_bytes`). What [`storage::remote::RemoteObjects`] a cache store uses.
pub struct Reader {
    pub target: Arc<Target>,
    pub catalog: Catalog,
    /// Each pack's blobs in order (offset, stored length, raw length, kind): a miss
    /// reads the blobs after it in the same request.
    blobs: HashMap<u32, Vec<(u64, u32, u32, u8)>>,
    cache: Mutex<BlobCache>,
}

/// Bytes one read of a copy asks for at most: the blob wanted and the ones after it
/// (a restore reads a pack's blobs in order; one request per blob was latency-bound).
const READ_SPAN: u64 = 8 << 20;

struct BlobCache {
    lru: lru::LruCache<(u32, u64), Arc<Vec<u8>>>,
    bytes: usize,
    limit: usize,
}

impl Reader {
    pub fn new(target: Arc<Target>, cache_bytes: usize) -> Result<Reader> {
        let catalog = target.catalog()?;
        let mut blobs: HashMap<u32, Vec<(u64, u32, u32, u8)>> = HashMap::new();
        for l in catalog.objects.values() {
            blobs
                .entry(l.pack)
                .or_default()
                .push((l.blob_off, l.blob_len, l.blob_raw, l.kind));
        }
        for v in blobs.values_mut() {
            v.sort_unstable_by_key(|b| b.0);
            v.dedup_by_key(|b| b.0);
        }
        Ok(Reader {
            target,
            catalog,
            blobs,
            cache: Mutex::new(BlobCache {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
                limit: cache_bytes.max(4 << 20),
            }),
        })
    }

    fn blob(&self, loc: &Loc) -> Result<Arc<Vec<u8>>> {
        let key = (loc.pack, loc.blob_off);
        if let Some(b) = self.cache.lock().unwrap().lru.get(&key) {
            return Ok(b.clone());
        }
        let pack = format!("packs/{}", self.catalog.packs[loc.pack as usize].0);
        // The blob and those after it, up to READ_SPAN, in one request.
        let all = self
            .blobs
            .get(&loc.pack)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let first = all.partition_point(|b| b.0 < loc.blob_off);
        let mut span = vec![(loc.blob_off, loc.blob_len, loc.blob_raw, loc.kind)];
        for b in all.iter().skip(first + 1) {
            let end = span.last().map_or(0, |l| l.0 + l.1 as u64);
            if b.0 != end || b.0 + b.1 as u64 - loc.blob_off > READ_SPAN {
                break;
            }
            span.push(*b);
        }
        let end = span.last().map_or(0, |l| l.0 + l.1 as u64);
        let bytes = self
            .target
            .block(self.target.backend.get_range(&pack, loc.blob_off..end))?;
        let mut wanted = None;
        for (off, len, raw_len, kind) in span {
            let at = (off - loc.blob_off) as usize;
            let sealed = &bytes[at..at + len as usize];
            let opened = layout::open_blob(sealed, &self.target.sealer, raw_len as usize, kind)
                .with_context(|| format!("{}: blob at {off} of {pack}", self.target.describe()));
            let raw = match opened {
                Ok(r) => Arc::new(r),
                // Only the blob asked for must open; a damaged neighbour fails its own read.
                Err(e) if off == loc.blob_off => return Err(e),
                Err(_) => continue,
            };
            if off == loc.blob_off {
                wanted = Some(raw.clone());
            }
            let mut c = self.cache.lock().unwrap();
            c.bytes += raw.len();
            if let Some(old) = c.lru.put((loc.pack, off), raw) {
                c.bytes -= old.len();
            }
            while c.bytes > c.limit {
                match c.lru.pop_lru() {
                    Some((_, b)) => c.bytes -= b.len(),
                    None => break,
                }
            }
        }
        Ok(wanted.expect("the blob asked for is in its span"))
    }

    /// The raw bytes of object `id`, checked against its id.
    pub fn object(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        let Some(loc) = self.catalog.objects.get(id) else {
            return Ok(None);
        };
        let blob = self.blob(loc)?;
        let (s, l) = (loc.inner_off as usize, loc.raw_len as usize);
        let raw = blob
            .get(s..s + l)
            .ok_or_else(|| anyhow!("object {id} lies outside its blob"))?;
        if ChunkId::of(raw) != *id {
            bail!(
                "{}: object {id} does not match its hash",
                self.target.describe()
            );
        }
        Ok(Some(raw.to_vec()))
    }
}

impl storage::remote::RemoteObjects for Reader {
    fn fetch(&self, id: &ChunkId) -> std::result::Result<Option<Arc<Vec<u8>>>, String> {
        self.object(id)
            .map(|o| o.map(Arc::new))
            .map_err(|e| format!("{e:#}"))
    }
}

/// Opens the cache store of a copy at `cache` (made if missing): the copy's snapshot
/// records adopted into it, every object it lacks read from the copy.
pub fn open_cache_store(
    reader: Arc<Reader>,
    cache: &std::path::Path,
    opts: storage::StoreOptions,
) -> Result<storage::Store> {
    let store = storage::Store::open(cache, opts)
        .with_context(|| format!("opening cache store {}", cache.display()))?;
    store.set_remote(reader.clone());
    adopt_all(&reader.target, &store)?;
    Ok(store)
}

/// Records every snapshot of the copy in `store` (new ones added, holds and locks
/// brought up to date). Returns how many were new.
pub fn adopt_all(target: &Target, store: &storage::Store) -> Result<usize> {
    let mut new = 0;
    for (_, rec) in target.records()? {
        let (info, root) = rec.to_store()?;
        if store
            .adopt_snapshot(&info, &root)
            .with_context(|| format!("recording snapshot {}@{}", rec.volume, rec.name))?
        {
            new += 1;
        }
    }
    Ok(new)
}

/// What a directory object or content list (of `kind`) refers to, each with its kind:
/// the steps of every walk over a copy's trees (verify, prune, hydrate). Chunks have
/// none.
pub fn children(kind: u8, raw: &[u8]) -> Result<Vec<(ChunkId, u8)>> {
    use storage::format::{KIND_CONTENT, KIND_DATA, KIND_DIR};
    use storage::namespace::FileKind;
    let mut out = Vec::new();
    if kind == KIND_DIR {
        for e in storage::tree::decode_dir(raw)? {
            match (e.attr.kind, e.target_ref) {
                (FileKind::Dir, Some(t)) => out.push((t, KIND_DIR)),
                (FileKind::File, Some(c)) => out.push((c, KIND_CONTENT)),
                _ => {}
            }
        }
    } else if kind == KIND_CONTENT {
        let list = storage::content::ContentList::decode(raw)?;
        let k = if list.index { KIND_CONTENT } else { KIND_DATA };
        out.extend(
            list.entries
                .iter()
                .filter(|(_, c)| !c.is_hole())
                .map(|(_, c)| (*c, k)),
        );
    }
    Ok(out)
}

/// Copies every object snapshot `rec` reaches from the copy into `store` (skipping
/// what it has), then records the snapshot there: a store of its own, which no
/// longer needs the copy. Returns the bytes brought in.
pub fn hydrate(reader: &Reader, store: &storage::Store, rec: &Record) -> Result<u64> {
    use storage::format::KIND_DIR;
    let mut stack = vec![(rec.root_id()?, KIND_DIR)];
    let mut seen = std::collections::HashSet::new();
    let mut batch: Vec<(u8, ChunkId, Vec<u8>)> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut total = 0u64;
    let flush = |batch: &mut Vec<(u8, ChunkId, Vec<u8>)>| -> Result<()> {
        let refs: Vec<(u8, ChunkId, &[u8])> = batch
            .iter()
            .map(|(k, i, b)| (*k, *i, b.as_slice()))
            .collect();
        store.put_objects(&refs)?;
        batch.clear();
        Ok(())
    };
    while let Some((id, kind)) = stack.pop() {
        if !seen.insert(id) || store.has_object(&id)? {
            continue;
        }
        let raw = reader
            .object(&id)?
            .ok_or_else(|| anyhow!("{}: object {id} is missing", reader.target.describe()))?;
        stack.extend(children(kind, &raw)?);
        total += raw.len() as u64;
        batch_bytes += raw.len();
        batch.push((kind, id, raw));
        if batch_bytes >= 32 << 20 {
            flush(&mut batch)?;
            batch_bytes = 0;
        }
    }
    flush(&mut batch)?;
    let (info, root) = rec.to_store()?;
    store.adopt_snapshot(&info, &root)?;
    Ok(total)
}
