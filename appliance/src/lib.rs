//! # kura appliance
//!
//! The `kura` binary's library: configuration ([`config`]) and the daemon ([`run`]).
//! The server is a library function so that tests start exactly what the binary runs.

pub mod api;
pub mod client;
pub mod config;
pub mod console;
pub mod diff;
pub mod hooks;
pub mod import;
pub mod jobs;
pub mod metrics;
pub mod replica;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod status;

use anyhow::{Context, Result};
use config::Config;
use protocol::Shared;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use storage::{NewAttr, Store, StoreOptions};

/// Opens (creating if needed) the store of `cfg` and its configured volumes.
pub fn open_store(cfg: &Config) -> Result<Store> {
    let opts = StoreOptions {
        cache_bytes: cfg.read_cache() as usize,
        ..StoreOptions::default()
    };
    let store = Store::open(&cfg.data_dir, opts)
        .with_context(|| format!("opening store {}", cfg.data_dir.display()))?;
    for v in &cfg.all_volumes() {
        if store.volume(v).is_err() {
            let owner = cfg
                .exports
                .first()
                .map(|e| (e.owner_uid, e.owner_gid))
                .unwrap_or((0, 0));
            store
                .create_volume(
                    v,
                    NewAttr {
                        mode: 0o755,
                        uid: owner.0,
                        gid: owner.1,
                    },
                )
                .with_context(|| format!("creating volume {v}"))?;
        }
    }
    Ok(store)
}

/// Where the daemon listens, once it does.
#[derive(Clone, Debug)]
pub struct Listening {
    /// Every export, in config order.
    pub exports: Vec<SocketAddr>,
    /// The control API.
    pub api: SocketAddr,
}

/// Runs the daemon until `shutdown` resolves: the exports, the control API, the jobs
/// and the background ingester. `ready` learns the bound addresses once all listen.
/// At `shutdown`: the exports and the API stop accepting, running jobs finish (a
/// freeze past its limit aborts and thaws as always), everything is flushed.
pub async fn run(
    cfg: Config,
    ready: impl FnOnce(&Listening),
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    cfg.validate()?;
    let api_addr = cfg.api_addr()?;
    let store = Arc::new(tokio::task::block_in_place(|| open_store(&cfg))?);
    if let Some(from) = cfg.serve_from.clone() {
        // A DR site: the copy's snapshots, read through this cache store, looked for
        // again every `refresh` (a new catalog each time: what was replicated since).
        let (store, rt, cache) = (
            store.clone(),
            tokio::runtime::Handle::current(),
            cfg.read_cache(),
        );
        tokio::task::spawn_blocking(move || -> Result<()> {
            let target = Arc::new(replica::Target::open(&from.name, &from.target, rt, false)?);
            let view = || -> Result<usize> {
                let reader = Arc::new(replica::Reader::new(target.clone(), cache as usize)?);
                store.set_remote(reader);
                replica::adopt_all(&target, &store)
            };
            let n = view()?;
            tracing::info!(target = %target.describe(), snapshots = n, "serving a DR copy's snapshots");
            let store = Arc::downgrade(&store);
            std::thread::Builder::new()
                .name("kura-dr-refresh".into())
                .spawn(move || loop {
                    std::thread::sleep(from.refresh);
                    let Some(store) = store.upgrade() else { return };
                    let r = replica::Reader::new(target.clone(), cache as usize).and_then(|reader| {
                        store.set_remote(Arc::new(reader));
                        replica::adopt_all(&target, &store)
                    });
                    match r {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(new = n, "new snapshots in the DR copy"),
                        Err(e) => tracing::warn!(error = %e, "refreshing the DR copy's view failed; will retry"),
                    }
                })?;
            Ok(())
        })
        .await??;
    }
    let generation = store
        .begin_service(&protocol::boot_id())
        .context("starting service")?;
    let secret = store.handle_secret().context("reading the handle secret")?;
    let shared = Shared::new(store.clone(), cfg.max_inflight);
    let mut exports = Vec::new();
    for e in &cfg.exports {
        let ec = e.to_config()?;
        let listen = ec.listen;
        exports.push(
            protocol::server::start(shared.clone(), ec, generation, &secret)
                .await
                .with_context(|| format!("listening on {listen}"))?,
        );
    }
    let addrs: Vec<SocketAddr> = exports.iter().map(|e| e.addr).collect();
    let token = tokio::task::block_in_place(|| api::load_or_make_token(&cfg.data_dir))?;
    let api_listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("api.listen: binding {api_addr}"))?;
    let api_bound = api_listener.local_addr()?;
    let need_token = !api_bound.ip().is_loopback() || cfg.api.require_token;
    let app = jobs::Appliance::new(cfg.clone(), store.clone(), shared.clone());
    {
        let m = app.metrics.clone();
        shared.set_observer(Box::new(move |p, took, i, o| m.nfs_call(p, took, i, o)));
    }
    let (api_stop, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api_task = tokio::spawn(
        axum::serve(
            api_listener,
            console::server(app.clone(), Arc::new(token), need_token),
        )
        .with_graceful_shutdown(async {
            let _ = api_stopped.await;
        })
        .into_future(),
    );
    let (sched_stop, sched_stopped) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(schedule::run(app.clone(), sched_stopped));
    let url_file = cfg.data_dir.join(api::ADDR_FILE);
    std::fs::write(&url_file, format!("http://{api_bound}\n"))
        .with_context(|| format!("writing {}", url_file.display()))?;
    tracing::info!(exports = ?addrs, api = %api_bound, generation, data = %cfg.data_dir.display(), "kura serving");
    ready(&Listening {
        exports: addrs,
        api: api_bound,
    });

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ingester = {
        let (store, stop) = (store.clone(), stop.clone());
        let idle = Duration::from_secs(cfg.ingest_idle_secs);
        std::thread::Builder::new()
            .name("kura-ingester".into())
            .spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Err(e) = store.ingest_idle(idle) {
                        tracing::error!(error = %e, "background ingest failed; will retry");
                    }
                    // Takes the emergency reserve again once a full disk has room.
                    store.ensure_reserve();
                    std::thread::sleep(Duration::from_millis(500));
                }
            })?
    };
    shutdown.await;
    tracing::info!("shutting down");
    drop(exports);
    let _ = api_stop.send(());
    let _ = sched_stop.send(true);
    let _ = scheduler.await;
    app.drain_jobs().await;
    match tokio::time::timeout(Duration::from_secs(30), api_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "control API ended with an error"),
        Err(_) => tracing::warn!("control API requests still open after 30 s; closing"),
        _ => {}
    }
    let _ = std::fs::remove_file(&url_file);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = ingester.join();
    tokio::task::block_in_place(|| store.end_service()).context("clean shutdown")?;
    Ok(())
}

/// Keeps the daemon's memory at what it uses. glibc raises its mmap threshold each time
/// a large block is freed (up to 32 MiB), after which buffers of a few MiB (ingest
/// reads, restore windows, NFS writes) come from arenas that keep them when freed:
/// measured with 3 volumes snapshotted every minute under writers, RSS grew in steps
/// to 270-410 MiB; with the threshold fixed at 1 MiB it stayed at 50-65 MiB
/// (`scripts/bench-rss.sh`). Blocks of 1 MiB and more are then mapped and returned to
/// the system when freed, at the cost of a few page faults per buffer.
pub fn bound_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
