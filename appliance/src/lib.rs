//! # kura appliance
//!
//! The `kura` binary's library: configuration ([`config`]) and the daemon ([`run`]).
//! The server is a library function so that tests start exactly what the binary runs.

pub mod config;

use anyhow::{Context, Result};
use config::Config;
use protocol::Shared;
use std::future::Future;
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
    for v in &cfg.volumes {
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

/// Runs the daemon until `shutdown` resolves: the exports, and the background ingester.
/// `ready` receives the bound address of every export once they listen.
pub async fn run(
    cfg: Config,
    ready: impl FnOnce(&[SocketAddr]),
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    cfg.validate()?;
    let store = Arc::new(tokio::task::block_in_place(|| open_store(&cfg))?);
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
    tracing::info!(exports = ?addrs, generation, data = %cfg.data_dir.display(), "kura serving");
    ready(&addrs);

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
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = ingester.join();
    tokio::task::block_in_place(|| store.end_service()).context("clean shutdown")?;
    Ok(())
}
