//! `kura`: the backup appliance's command line.

mod commands;
mod from;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kura::client::Target;
use kura::config::Config;
use std::path::PathBuf;

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
    /// Serve the NFSv3 exports, the control API and the jobs until SIGINT/SIGTERM.
    Serve {
        /// Serve a DR copy's snapshots read-only (with the main site gone): a
        /// [target.NAME], a directory or an s3:// URL; --cache (or --data) holds the
        /// cache store.
        #[arg(long)]
        from: Option<String>,
        #[arg(long, requires = "from")]
        cache: Option<PathBuf>,
        #[arg(long, requires = "from")]
        key_file: Option<PathBuf>,
        /// With --from: look for snapshots replicated since, this often (seconds).
        #[arg(long, requires = "from", default_value_t = 60)]
        refresh_secs: u64,
        /// Listen address of the first export (overrides the config), e.g. 127.0.0.1:0.
        #[arg(long)]
        listen: Option<String>,
        /// Allowed clients of the first export (CIDR, repeatable; overrides the config).
        #[arg(long)]
        allow: Vec<String>,
        /// Listen address of the control API (overrides api.listen).
        #[arg(long)]
        api: Option<String>,
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
    /// Make a new writable volume from a snapshot (shares data, copies nothing); served
    /// at once.
    Clone {
        volume: String,
        snapshot: String,
        new_volume: String,
        /// Make the clone in this store (--data) from a DR copy's snapshot, bringing
        /// its objects in.
        #[arg(long)]
        from: Option<String>,
        #[arg(long, requires = "from")]
        key_file: Option<PathBuf>,
    },
    /// Copies a volume's snapshots to a DR target (only what it lacks).
    Replicate {
        volume: String,
        /// A [target.NAME] of the config, an absolute directory or an s3:// URL.
        #[arg(long)]
        to: String,
        /// Check every object of every snapshot at the target and resend what it
        /// lacks (after verify --from named damage and it was removed).
        #[arg(long)]
        full: bool,
        #[arg(long)]
        json: bool,
    },
    /// Copy a local tree into a volume without NFS (modes, owners, times, symlinks, hard
    /// links), optionally snapshotting it: how an existing backup share moves onto
    /// kura, one dated directory per generation.
    Import {
        /// The tree to copy (symlinks in it are copied as symlinks, not followed).
        dir: PathBuf,
        /// VOLUME or VOLUME/PATH (the directory is made if missing).
        target: String,
        /// Empty the target directory first, so that it holds exactly DIR.
        #[arg(long)]
        replace: bool,
        /// Snapshot the volume under this name when the import succeeded.
        #[arg(long)]
        snapshot: Option<String>,
        /// The snapshot's label.
        #[arg(long, requires = "snapshot")]
        label: Option<String>,
    },
    /// Restore a snapshot (or PATH inside it) into a directory, or as a tar to stdout.
    /// Every chunk is hash-checked; a damaged file is named, the rest still restored,
    /// and the exit code is 1.
    Restore(RestoreArgs),
    /// Restore the newest snapshot to nowhere, checking every chunk, and record the
    /// rate (`status` shows the restore time it predicts).
    RestoreTest {
        volume: String,
        /// Read this percent of the files (a sample that changes daily).
        #[arg(long)]
        sample: Option<u32>,
    },
    /// Snapshot the disk under the data directory with `platform_snapshot.command`
    /// while every volume is frozen and the store is still and durable on disk.
    PlatformSnapshot,
    /// Ingest everything staged now.
    Ingest,
    /// Delete the snapshots the volumes' retention policies no longer keep.
    Prune {
        /// One volume (default: all).
        volume: Option<String>,
        /// Print the plan (every snapshot, kept or not, and why); delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Collect garbage: unreferenced chunks, sparse packs.
    Gc {
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Re-read and check every chunk; quarantine damage.
    Verify {
        #[arg(long)]
        json: bool,
        /// Verify a DR copy instead of the store.
        #[arg(long)]
        from: Option<String>,
        #[arg(long, requires = "from")]
        key_file: Option<PathBuf>,
    },
    /// The job history, newest first.
    Jobs {
        #[arg(long)]
        volume: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// State of the store and its volumes; exits 1 when a volume misses its RPO or its
    /// last snapshot failed.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Store statistics.
    Stats,
    /// The configuration.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Prints the resolved configuration, or the first error naming the file and key.
    Check,
}

#[derive(Subcommand)]
enum VolumeCmd {
    Create {
        name: String,
        #[arg(long, default_value = "0:0")]
        owner: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
}

/// The arguments of `kura restore`.
#[derive(clap::Args)]
pub struct RestoreArgs {
    pub volume: String,
    /// The snapshot (or use --at).
    pub snapshot: Option<String>,
    /// A file or directory inside the snapshot (default: all of it).
    pub path: Option<String>,
    /// The newest snapshot at or before this time (2026-11-30T10:00, local time
    /// unless it ends in Z or an offset).
    #[arg(long, conflicts_with = "snapshot")]
    pub at: Option<String>,
    /// Target directory (created if missing); nothing is written outside it.
    #[arg(long, required_unless_present = "tar")]
    pub to: Option<PathBuf>,
    /// `-`: write a tar to stdout instead (e.g. `| ssh app tar -x -C /`).
    #[arg(long, conflicts_with = "to")]
    pub tar: Option<String>,
    /// Write the files from this process, with its rights, from a tar the daemon
    /// streams (the default when this user cannot read the API token; otherwise
    /// the daemon writes them itself, faster).
    #[arg(long, conflicts_with = "tar")]
    pub stream: bool,
    /// Restore from a DR copy (a [target.NAME], a directory or an s3:// URL).
    #[arg(long, conflicts_with_all = ["tar", "stream", "at"])]
    pub from: Option<String>,
    #[arg(long, requires = "from")]
    pub key_file: Option<PathBuf>,
    /// Keep the copy's cache store here (else a temporary directory).
    #[arg(long, requires = "from")]
    pub cache: Option<PathBuf>,
}

#[derive(Subcommand)]
enum SnapCmd {
    /// Take a snapshot now (the whole job: pre-flush, hooks, freeze, snapshot, thaw).
    Create {
        volume: String,
        /// Name (default: the time, e.g. 2026-11-30_16-05-12Z).
        name: Option<String>,
        #[arg(long = "name", conflicts_with = "name")]
        name_flag: Option<String>,
        #[arg(long)]
        label: Option<String>,
        #[arg(long)]
        json: bool,
    },
    List {
        volume: Option<String>,
        #[arg(long)]
        json: bool,
        /// List a DR copy's snapshots.
        #[arg(long)]
        from: Option<String>,
        #[arg(long, requires = "from")]
        key_file: Option<PathBuf>,
    },
    Show {
        volume: String,
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete (refused for held or locked snapshots); the data goes at the next GC.
    Delete {
        volume: String,
        name: String,
    },
    /// What changed from snapshot A to snapshot B: added, removed, changed paths.
    Diff {
        volume: String,
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
    },
    /// Keep a snapshot until released: never pruned, never deleted.
    Hold {
        volume: String,
        name: String,
    },
    Release {
        volume: String,
        name: String,
    },
}

fn exit_with(code: i32) -> Result<()> {
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

fn main() {
    kura::bound_malloc();
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
        Cmd::Serve {
            from,
            cache,
            key_file,
            refresh_secs,
            listen,
            allow,
            api,
        } => {
            if let Some(t) = from {
                let f = from::From {
                    target: t,
                    key_file,
                };
                let (name, target) = f.target_toml(&cfg)?;
                cfg.serve_from = Some(kura::config::ServeFrom {
                    name,
                    target,
                    refresh: std::time::Duration::from_secs(refresh_secs.max(1)),
                });
                if let Some(c) = cache {
                    cfg.data_dir = c;
                }
                // The DR site serves what the copy holds, read-only, and runs no jobs.
                cfg.volumes.clear();
                cfg.volume_settings.clear();
                cfg.schedule = Default::default();
                cfg.platform_snapshot = Default::default();
                for e in &mut cfg.exports {
                    e.read_only = true;
                }
            }
            if let Some(l) = listen {
                cfg.exports[0].listen = l;
            }
            if !allow.is_empty() {
                cfg.exports[0].allow = allow;
            }
            if let Some(a) = api {
                cfg.api.listen = a;
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
                    |l| {
                        // Tests and scripts read the bound ports from these lines.
                        for a in &l.exports {
                            println!("listening {a}");
                        }
                        println!("api http://{}", l.api);
                        notify_ready();
                    },
                    shutdown,
                )
                .await
            })
        }
        Cmd::Snapshot {
            cmd:
                SnapCmd::List {
                    volume,
                    json,
                    from: Some(t),
                    key_file,
                },
        } => exit_with(from::snapshot_list(
            &cfg,
            &from::From {
                target: t,
                key_file,
            },
            volume.as_deref(),
            json,
        )?),
        Cmd::Verify {
            json,
            from: Some(t),
            key_file,
        } => exit_with(from::verify(
            &cfg,
            &from::From {
                target: t,
                key_file,
            },
            json,
        )?),
        Cmd::Restore(args) if args.from.is_some() => {
            let f = from::From {
                target: args.from.clone().unwrap(),
                key_file: args.key_file.clone(),
            };
            exit_with(from::restore(&cfg, &f, &args, args.cache.as_deref())?)
        }
        Cmd::Clone {
            volume,
            snapshot,
            new_volume,
            from: Some(t),
            key_file,
        } => exit_with(from::clone(
            &cfg,
            &from::From {
                target: t,
                key_file,
            },
            &volume,
            &snapshot,
            &new_volume,
        )?),
        Cmd::Config {
            cmd: ConfigCmd::Check,
        } => {
            cfg.validate()?;
            print!("{}", toml::to_string(&cfg).context("printing the config")?);
            Ok(())
        }
        cmd => {
            let target = Target::open(&cfg)?;
            let code = commands::run(&target, cmd)?;
            drop(target);
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
    }
}

/// Tells systemd (`Type=notify`) that the daemon is ready, when it runs under it.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(abs) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abs)
            .and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", std::path::Path::new(&path))
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "could not notify systemd");
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
