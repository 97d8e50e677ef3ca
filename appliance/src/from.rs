//! The commands that read a DR copy directly (`--from TARGET`): they work with the main
//! store gone, on the DR site's own machine, without a daemon.

use anyhow::{bail, Context, Result};
use kura::config::Config;
use kura::replica::{self, Reader, Target, TargetToml};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `--from TARGET [--key-file F]` as given.
pub struct From {
    pub target: String,
    pub key_file: Option<PathBuf>,
}

impl From {
    /// The target: a `[target.NAME]` of the config, else a directory or `s3://` URL.
    pub fn target_toml(&self, cfg: &Config) -> Result<(String, TargetToml)> {
        let mut t = match cfg.targets.get(&self.target) {
            Some(t) => t.clone(),
            None => TargetToml::from_arg(&self.target, None)?,
        };
        if let Some(k) = &self.key_file {
            t.key_file = Some(k.clone());
        }
        Ok((self.target.clone(), t))
    }

    fn open(&self, cfg: &Config, rt: &tokio::runtime::Runtime) -> Result<Arc<Target>> {
        let (name, t) = self.target_toml(cfg)?;
        Ok(Arc::new(Target::open(
            &name,
            &t,
            rt.handle().clone(),
            false,
        )?))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub fn snapshot_list(cfg: &Config, from: &From, volume: Option<&str>, json: bool) -> Result<i32> {
    let rt = runtime()?;
    let target = from.open(cfg, &rt)?;
    let recs: Vec<replica::layout::Record> = target
        .records()?
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| volume.is_none_or(|v| r.volume == v))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&recs)?);
        return Ok(0);
    }
    for r in recs {
        let (info, _) = r.to_store()?;
        println!(
            "{}",
            crate::commands::snapshot_line(&kura::api::SnapshotView::from(&info))
        );
    }
    Ok(0)
}

pub fn verify(cfg: &Config, from: &From, json: bool) -> Result<i32> {
    let rt = runtime()?;
    let target = from.open(cfg, &rt)?;
    let r = replica::check::verify(target)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "checked {} objects in {} packs ({} bytes), {} snapshots",
            r.objects, r.packs, r.bytes_read, r.snapshots
        );
        for d in &r.damage {
            println!("DAMAGED {d}");
        }
        for s in &r.snapshots_damaged {
            println!("affected snapshot {s}");
        }
    }
    if !r.is_clean() {
        bail!(
            "{}: {} damaged, {} snapshots affected",
            r.target,
            r.damage.len(),
            r.snapshots_damaged.len()
        );
    }
    Ok(0)
}

/// A cache store for the copy: `cache` when given (kept for the next command), else a
/// temporary directory.
fn cache_store(
    target: Arc<Target>,
    cache: Option<&Path>,
    cfg: &Config,
) -> Result<(storage::Store, Option<tempfile::TempDir>)> {
    let reader = Arc::new(Reader::new(target, cfg.read_cache() as usize)?);
    let (dir, tmp) = match cache {
        Some(c) => (c.to_path_buf(), None),
        None => {
            let t = tempfile::tempdir().context("making a temporary cache store")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let opts = storage::StoreOptions {
        cache_bytes: 64 << 20,
        ..Default::default()
    };
    Ok((replica::open_cache_store(reader, &dir, opts)?, tmp))
}

pub fn restore(
    cfg: &Config,
    from: &From,
    args: &crate::RestoreArgs,
    cache: Option<&Path>,
) -> Result<i32> {
    let Some(snap) = &args.snapshot else {
        bail!("with --from, name the snapshot (list them with `kura snapshot list --from`)");
    };
    let Some(dir) = &args.to else {
        bail!("with --from, restore into a directory (--to DIR)");
    };
    let rt = runtime()?;
    let target = from.open(cfg, &rt)?;
    let t0 = std::time::Instant::now();
    let (store, _tmp) = cache_store(target, cache, cfg)?;
    let path = args.path.clone().unwrap_or_default();
    let src = kura::restore::source(&store, &args.volume, snap, &path)?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let ex = kura::restore::restore_to_dir(&store, &src, dir, &|_| {}, &stop)?;
    crate::commands::finish_restore(&args.volume, snap, &ex.report, t0, &ex.refused)
}

/// `kura clone --from`: a new store (the config's data directory) holding the snapshot
/// on its own, and a writable volume made from it.
pub fn clone(cfg: &Config, from: &From, volume: &str, snap: &str, new_volume: &str) -> Result<i32> {
    let rt = runtime()?;
    let target = from.open(cfg, &rt)?;
    let rec = target
        .records()?
        .into_iter()
        .map(|(_, r)| r)
        .find(|r| r.volume == volume && r.name == snap)
        .with_context(|| format!("{} has no snapshot {volume}@{snap}", target.describe()))?;
    let reader = Reader::new(target, 256 << 20)?;
    let store = storage::Store::open(&cfg.data_dir, storage::StoreOptions::default())
        .with_context(|| format!("opening store {}", cfg.data_dir.display()))?;
    let t0 = std::time::Instant::now();
    let bytes = replica::hydrate(&reader, &store, &rec)?;
    store.clone_snapshot(volume, snap, new_volume)?;
    eprintln!(
        "cloned {volume}@{snap} from {} into volume {new_volume} of {}: {bytes} bytes brought in ({:.1} s)",
        reader.target.describe(),
        cfg.data_dir.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(0)
}
