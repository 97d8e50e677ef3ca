//! Harness for end-to-end tests: the real `kura` daemon on an ephemeral loopback port,
//! driven by real NFS clients (Debian's libnfs-utils, PyPI's nfs-rs).
//!
//! [`Daemon::start`] runs the daemon in this process: `kura::run`, the function the
//! binary's `serve` runs, on a runtime of its own, stopped through its shutdown future
//! (as mini-redis tests its server). [`Daemon::process`] starts the binary instead,
//! for what needs a process of its own: SIGKILL, and environment such as the boot id.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    child: Option<Child>,
    in_process: Option<InProcess>,
    pub port: u16,
    /// The control API's base URL (`http://127.0.0.1:PORT`).
    pub api: String,
    pub data: PathBuf,
    pub config: PathBuf,
}

/// Writes a config for a test daemon. `extra` is appended to the first export.
pub fn config(dir: &Path, listen: &str, allow: &[&str], extra: &str) -> PathBuf {
    let allow: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    let text = format!(
        "data_dir = {:?}\nvolumes = [\"backup\"]\ningest_idle_secs = 1\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n[[export]]\nlisten = {listen:?}\nallow = [{}]\n{extra}\n",
        dir.join("store"),
        allow.join(", ")
    );
    let p = dir.join("kura.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A config for a daemon on a fixed free port (so that it can restart on the same one),
/// allowing 127.0.0.1.
pub fn config_fixed_port(dir: &Path, extra: &str) -> PathBuf {
    config(
        dir,
        &format!("127.0.0.1:{}", free_port()),
        &["127.0.0.1/32"],
        extra,
    )
}

/// [`config_fixed_port`] with ingest held off (`ingest_idle_secs = 3600`): what clients
/// write stays staged, for tests of the landing zone itself.
pub fn config_fixed_port_staged(dir: &Path) -> PathBuf {
    let cfg = config_fixed_port(dir, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("ingest_idle_secs = 1", "ingest_idle_secs = 3600");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// A daemon running in this process: its thread, and the sender that stops it.
struct InProcess {
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Daemon {
    /// Starts the daemon of this config in this process and waits until it listens.
    /// `env` must be empty (the environment is the whole process's): a daemon that
    /// needs its own uses [`Daemon::process`].
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Daemon {
        assert!(
            env.is_empty(),
            "a daemon with its own environment: Daemon::process"
        );
        let cfg = kura::config::Config::load(config).expect("config");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("kura-daemon".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                let r = rt.block_on(kura::run(
                    cfg,
                    |l| {
                        let _ = tx.send((l.exports[0].port(), l.api));
                    },
                    async {
                        let _ = stopped.await;
                    },
                ));
                // Dropping the runtime waits for store calls still running, so that the
                // store is closed (and its lock released) when the thread ends.
                drop(rt);
                r
            })
            .unwrap();
        let (port, api) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(p) => p,
            Err(_) => match thread.join() {
                Ok(Err(e)) => panic!("kura did not start: {e:#}"),
                _ => panic!("kura did not start listening in 30 s"),
            },
        };
        Daemon {
            child: None,
            in_process: Some(InProcess { thread, stop }),
            port,
            api: format!("http://{api}"),
            data: config.parent().unwrap().join("store"),
            config: config.to_path_buf(),
        }
    }

    /// Starts the `kura serve` binary with this config and waits until it listens.
    pub fn process(config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kura"));
        cmd.arg("--config")
            .arg(config)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd.env("KURA_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start kura");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("kura did not start listening in 30 s");
        let port = line
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .expect("listening line");
        let api = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("kura did not print its API address")
            .strip_prefix("api ")
            .expect("api line")
            .to_owned();
        let data = config.parent().unwrap().join("store");
        Daemon {
            child: Some(child),
            in_process: None,
            port,
            api,
            data,
            config: config.to_path_buf(),
        }
    }

    /// libnfs URL of `path` inside the export (e.g. "/backup/file").
    pub fn url(&self, path: &str) -> String {
        format!(
            "nfs://127.0.0.1{path}?nfsport={p}&mountport={p}&version=3",
            p = self.port
        )
    }

    /// SIGKILL: no clean shutdown, nothing flushed by kura.
    pub fn kill9(&mut self) {
        assert!(self.in_process.is_none(), "kill9 needs Daemon::process");
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM (or the shutdown future, in process) and wait for the clean shutdown.
    pub fn stop(&mut self) {
        if let Some(d) = self.in_process.take() {
            let _ = d.stop.send(());
            match d.thread.join() {
                Ok(r) => r.expect("kura stopped with an error"),
                Err(_) => panic!("kura panicked"),
            }
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our child's pid.
            unsafe { libc_kill(c.id() as i32, 15) };
            let t0 = Instant::now();
            loop {
                if let Some(st) = c.try_wait().unwrap() {
                    assert!(st.success(), "kura exited with {st}");
                    return;
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    c.kill().unwrap();
                    panic!("kura did not stop on SIGTERM within 30 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(d) = self.in_process.take() {
            let _ = d.stop.send(());
            let _ = d.thread.join();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Flips one byte in the middle of the largest pack of the store at `data`: a damaged
/// chunk record for verify and restore to find.
pub fn damage_largest_pack(data: &Path) {
    let pack = std::fs::read_dir(data.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut b = std::fs::read(&pack).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    std::fs::write(&pack, b).unwrap();
}

/// Runs the `kura` CLI with `flag` (`--config` or `--data`) set to `path`; returns its
/// output, whatever the exit code.
fn kura_with(flag: &str, path: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kura"))
        .arg(flag)
        .arg(path)
        .args(args)
        .env("KURA_LOG", "warn")
        .output()
        .unwrap()
}

/// Runs the `kura` CLI with a config and returns its output, whatever the exit code.
pub fn kura_output(config: &Path, args: &[&str]) -> Output {
    kura_with("--config", config, args)
}

/// Runs the `kura` CLI on a data directory (no config); output whatever the exit code.
pub fn kura_data(data: &Path, args: &[&str]) -> Output {
    kura_with("--data", data, args)
}

/// Runs the `kura` CLI with a config; it must succeed.
pub fn kura(config: &Path, args: &[&str]) -> Output {
    let o = kura_output(config, args);
    assert!(
        o.status.success(),
        "kura {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Runs a libnfs-utils tool; returns its output (not asserting success).
pub fn libnfs(tool: &str, args: &[&str]) -> Output {
    Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("{tool} not found ({e}); run scripts/test.sh, which installs libnfs-utils")
    })
}

pub fn python() -> String {
    std::env::var("KURA_PYTHON").unwrap_or_else(|_| {
        panic!("KURA_PYTHON is not set: run scripts/test.sh, which installs nfs-rs")
    })
}

/// Prelude for nfs-rs scripts: `c` is a client connected to the volume `backup`.
pub fn py_prelude(port: u16) -> String {
    format!(
        "import nfs_rs, sys, os\n\
         URL = 'nfs://127.0.0.1/backup?version=3&nfsport={port}&mountport={port}'\n\
         def connect():\n    return nfs_rs.Client.connect(URL, uid=1000, gid=1000, noresvport=True, operation_timeout=60)\n\
         c = connect()\n"
    )
}

/// Runs an nfs-rs script and returns its stdout; the script must exit 0.
pub fn py(port: u16, script: &str) -> String {
    let o = Command::new(python())
        .arg("-c")
        .arg(format!("{}{}", py_prelude(port), script))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "nfs-rs script failed:\n{}\n--- stderr ---\n{}",
        script,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A running nfs-rs script that talks to the test line by line.
pub struct PyProc {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl PyProc {
    pub fn start(port: u16, script: &str) -> PyProc {
        let mut child = Command::new(python())
            .arg("-u")
            .arg("-c")
            .arg(format!("{}{}", py_prelude(port), script))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        PyProc { child, out }
    }

    pub fn expect_line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        assert!(!l.is_empty(), "nfs-rs script ended early");
        l.trim().to_string()
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    pub fn finish(mut self) {
        let st = self.child.wait().unwrap();
        assert!(st.success(), "nfs-rs script failed");
    }
}

impl Drop for PyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// A free loopback port (for restarting a daemon on the same port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `size` bytes whose every 4 KiB block names its own offset (so a misplaced
/// block is caught), with a seed so that files differ.
pub fn make_file(path: &Path, size: u64, seed: u64) -> blake3::Hash {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut h = blake3::Hasher::new();
    let mut block = vec![0u8; 4096];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(4096) as usize;
        for (i, b) in block.iter_mut().enumerate() {
            *b = ((off / 4096)
                .wrapping_mul(31)
                .wrapping_add(i as u64 * 7)
                .wrapping_add(seed)
                % 251) as u8;
        }
        block[..8].copy_from_slice(&off.to_le_bytes());
        f.write_all(&block[..n]).unwrap();
        h.update(&block[..n]);
        off += n as u64;
    }
    f.flush().unwrap();
    h.finalize()
}

pub fn hash_file(path: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).unwrap()).unwrap();
    h.finalize()
}

/// Incompressible bytes from a seed (xorshift), as real compressed dumps are.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `kura import SRC backup [--replace] --snapshot SNAP` with this config.
pub fn import_snapshot(config: &Path, src: &Path, snap: &str, replace: bool) {
    let mut args = vec!["import", src.to_str().unwrap(), "backup"];
    if replace {
        args.push("--replace");
    }
    args.extend(["--snapshot", snap]);
    kura(config, &args);
}

/// `kura restore backup SNAP --from TARGET --to OUT` with this config.
pub fn restore_from(config: &Path, target: &str, snap: &str, out: &Path) {
    kura(
        config,
        &[
            "restore",
            "backup",
            snap,
            "--from",
            target,
            "--to",
            out.to_str().unwrap(),
        ],
    );
}

/// Same names, bytes and symlink targets under `a` and `b` (`diff -r`).
pub fn same_tree(a: &Path, b: &Path) {
    let o = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "trees differ: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// Starts `kura --config CONFIG ARGS...` in the background, output discarded (a run a
/// test kills midway).
pub fn kura_spawn(config: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kura"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("KURA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}
