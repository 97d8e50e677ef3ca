//! `kura`: the backup appliance's command line.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use kura::config::Config;
use std::path::PathBuf;
use storage::{GcOptions, NewAttr};

#[derive(Parser)]
#[command(name = "kura", version, about = "kura backup appliance")]
struct Cli {
    /// Configuration file (defaults apply when absent).
    #[arg(long, short, global = true, env = "KURA_CONFIG")]
    config: Option<PathBuf>,
    /// Store directory (overrides the config's data_dir).
    #[arg(long, global = true, env = "KURA_DATA")]
    data: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the NFSv3 exports until SIGINT/SIGTERM.
    Serve {
        /// Listen address of the first export (overrides the config), e.g. 127.0.0.1:0.
        #[arg(long)]
        listen: Option<String>,
        /// Allowed clients of the first export (CIDR, repeatable; overrides the config).
        #[arg(long)]
        allow: Vec<String>,
    },
    /// Volumes (exports' top-level directories).
    Volume {
        #[command(subcommand)]
        cmd: VolumeCmd,
    },
    /// Snapshots of a volume.
    Snapshot {
        #[command(subcommand)]
        cmd: SnapCmd,
    },
    /// Make a new writable volume from a snapshot (shares data, copies nothing).
    Clone {
        volume: String,
        snapshot: String,
        new_volume: String,
    },
    /// Ingest everything staged now.
    Ingest,
    /// Collect garbage: unreferenced chunks, sparse packs.
    Gc {
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-read and check every chunk; quarantine damage.
    Verify,
    /// Store statistics.
    Stats,
}

#[derive(Subcommand)]
enum VolumeCmd {
    Create {
        name: String,
        #[arg(long, default_value = "0:0")]
        owner: String,
    },
    List,
}

#[derive(Subcommand)]
enum SnapCmd {
    Create { volume: String, name: String },
    List { volume: Option<String> },
    Delete { volume: String, name: String },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KURA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = real_main() {
        eprintln!("kura: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let mut cfg = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = cli.data {
        cfg.data_dir = d;
    }
    match cli.cmd {
        Cmd::Serve { listen, allow } => {
            if let Some(l) = listen {
                cfg.exports[0].listen = l;
            }
            if !allow.is_empty() {
                cfg.exports[0].allow = allow;
            }
            cfg.validate()?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                // The handlers are in place before the daemon says it listens: a SIGTERM
                // that comes right after is a clean stop, not the default kill.
                let shutdown = shutdown_signal()?;
                kura::run(
                    cfg,
                    |addrs| {
                        for a in addrs {
                            // Tests and scripts read the bound port from this line.
                            println!("listening {a}");
                        }
                    },
                    shutdown,
                )
                .await
            })
        }
        cmd => {
            let store = kura::open_store(&cfg)?;
            offline(&store, cmd)
        }
    }
}

/// Resolves on SIGTERM or SIGINT; the handlers are installed when this is called.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

fn offline(store: &storage::Store, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Volume {
            cmd: VolumeCmd::Create { name, owner },
        } => {
            let (u, g) = owner.split_once(':').context("--owner is UID:GID")?;
            store.create_volume(
                &name,
                NewAttr {
                    mode: 0o755,
                    uid: u.parse()?,
                    gid: g.parse()?,
                },
            )?;
            println!("created volume {name}");
        }
        Cmd::Volume {
            cmd: VolumeCmd::List,
        } => {
            for v in store.volumes()? {
                println!("{}", v.name);
            }
        }
        Cmd::Snapshot {
            cmd: SnapCmd::Create { volume, name },
        } => {
            let s = store.snapshot(&volume, &name)?;
            println!(
                "snapshot {}@{} ({} bytes)",
                s.volume, s.name, s.logical_bytes
            );
        }
        Cmd::Snapshot {
            cmd: SnapCmd::List { volume },
        } => {
            for s in store.snapshots(volume.as_deref())? {
                println!(
                    "{}@{}\t{}\t{}",
                    s.volume, s.name, s.created.sec, s.logical_bytes
                );
            }
        }
        Cmd::Snapshot {
            cmd: SnapCmd::Delete { volume, name },
        } => {
            store.delete_snapshot(&volume, &name)?;
            println!("deleted {volume}@{name}");
        }
        Cmd::Clone {
            volume,
            snapshot,
            new_volume,
        } => {
            store.clone_snapshot(&volume, &snapshot, &new_volume)?;
            println!("cloned {volume}@{snapshot} to volume {new_volume}");
        }
        Cmd::Ingest => {
            let r = store.ingest_all(None)?;
            println!(
                "ingested {} files, {} bytes, {} new bytes stored as {}",
                r.files, r.bytes, r.new_bytes, r.stored_bytes
            );
        }
        Cmd::Gc { dry_run } => {
            let r = store.gc(&GcOptions {
                dry_run,
                ..Default::default()
            })?;
            println!(
                "{}unreachable chunks {} ({} bytes), packs to repack {}, orphan packs {}, deleted {} chunks, {} {} bytes",
                if dry_run { "[dry run] " } else { "" },
                r.plan.unreachable.len(),
                r.plan.unreachable_bytes,
                r.plan.repack.len(),
                r.plan.remove_packs.len(),
                r.deleted_chunks,
                if dry_run { "would reclaim" } else { "reclaimed" },
                if dry_run {
                    r.plan.reclaim_bytes()
                } else {
                    r.reclaimed_bytes
                }
            );
        }
        Cmd::Verify => {
            let r = store.verify()?;
            println!(
                "checked {} chunks in {} packs; {} staged files ({} bytes) in the landing zone",
                r.chunks, r.packs, r.staged_files, r.staged_bytes
            );
            for d in &r.damaged {
                println!(
                    "DAMAGED chunk {} in pack {} at {}: {}",
                    d.chunk, d.pack, d.offset, d.detail
                );
            }
            for rec in &r.records {
                let kept = match &rec.quarantine {
                    Ok(p) => format!("copy kept at {}", p.display()),
                    Err(why) => why.clone(),
                };
                println!(
                    "DAMAGED record in pack {} at {}: {} chunks unreadable; {kept}",
                    rec.pack, rec.offset, rec.chunks
                );
            }
            for p in &r.staged_problems {
                println!("STAGED {p}");
            }
            for f in &r.affected_files {
                println!("affected file {f}");
            }
            for f in &r.affected_snapshots {
                println!("affected snapshot file {f}");
            }
            if !r.is_clean() {
                bail!(
                    "{} damaged chunks, {} staged files with problems",
                    r.damaged.len(),
                    r.staged_problems.len()
                );
            }
        }
        Cmd::Stats => {
            let s = store.stats()?;
            println!(
                "chunks {}\nplain bytes {}\nstored bytes {}\npack bytes {}\nlive logical bytes {}\nstaged files {}\nfilesystem bytes {}\nfilesystem free bytes {}",
                s.chunks,
                s.chunk_raw_bytes,
                s.chunk_stored_bytes,
                s.pack_bytes,
                s.live_logical_bytes,
                s.staged_files,
                s.fs_total_bytes,
                s.fs_free_bytes
            );
        }
        Cmd::Serve { .. } => unreachable!(),
    }
    Ok(())
}
