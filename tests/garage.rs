//! DR copies on a real S3 engine: a 3-node Garage cluster on 127.0.0.1 with replication
//! factor 3 (`scripts/garage.sh`). Replicate; stop one node; restore and `serve --from`
//! still work and the next replication still succeeds; a replication killed mid-copy
//! is rerun; bytes flipped in an object are named by verify.
//!
//! Garage is built once into `~/.cache/kura` by `scripts/garage.sh bin` (the README
//! test command does it). Without it this test says so and passes, unless
//! `KURA_REQUIRE_GARAGE=1` (set by the test command), where a missing Garage fails.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

struct Cluster {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Cluster {
    fn start() -> Option<Cluster> {
        let cache = std::env::var("KURA_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kura"));
        if !cache.join("garage-2.5.0/bin/garage").exists() {
            assert!(
                std::env::var("KURA_REQUIRE_GARAGE").is_err(),
                "Garage is required: run scripts/garage.sh bin"
            );
            eprintln!("SKIPPED: no Garage binary (scripts/garage.sh bin builds it)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let o = Command::new(scripts().join("garage.sh"))
            .arg("start")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "garage start: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let env = std::fs::read_to_string(dir.path().join("env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        Some(Cluster { dir, env })
    }

    fn var(&self, k: &str) -> &str {
        &self.env.iter().find(|(n, _)| n == k).unwrap().1
    }

    fn stop_node(&self, i: u32) {
        let pid = std::fs::read_to_string(self.dir.path().join(format!("node{i}.pid"))).unwrap();
        Command::new("kill").arg(pid.trim()).status().unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }

    /// `[target.NAME]` on this cluster's bucket.
    fn target(&self, name: &str, prefix: &str, extra: &str) -> String {
        format!(
            "[target.{name}]\npack_mib = 1\n{extra}\n[target.{name}.s3]\nendpoint = {:?}\nregion = \"garage\"\nbucket = \"kura\"\nprefix = {prefix:?}\naccess_key_id = {:?}\nsecret_access_key = {:?}\n",
            self.var("AWS_ENDPOINT_URL"),
            self.var("AWS_ACCESS_KEY_ID"),
            self.var("AWS_SECRET_ACCESS_KEY"),
        )
    }

    fn backend(&self, prefix: &str) -> kura::replica::backend::Backend {
        kura::replica::backend::Backend::s3(&kura::replica::backend::S3Toml {
            endpoint: Some(self.var("AWS_ENDPOINT_URL").into()),
            region: "garage".into(),
            bucket: "kura".into(),
            prefix: prefix.into(),
            access_key_id: Some(self.var("AWS_ACCESS_KEY_ID").into()),
            secret_access_key: Some(self.var("AWS_SECRET_ACCESS_KEY").into()),
            virtual_hosted: false,
        })
        .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(scripts().join("garage.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

fn json(cfg: &Path, args: &[&str]) -> Value {
    let o = kura(cfg, args);
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn garage_cluster_survives_a_node_down_a_killed_copy_and_a_flipped_byte() {
    let Some(g) = Cluster::start() else { return };
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("kura.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nvolumes = [\"backup\"]\n[api]\nlisten = \"127.0.0.1:0\"\n{}{}",
            t.path().join("store"),
            g.target("g", "site-a", ""),
            g.target("gslow", "site-a", "bandwidth_mb_s = 3"),
        ),
    )
    .unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("db")).unwrap();
    std::fs::write(src.join("db/dump.bin"), noise(6 << 20, 1)).unwrap();
    std::fs::write(src.join("notes.txt"), "first night\n").unwrap();
    import_snapshot(&cfg, &src, "s1", false);
    let r = json(&cfg, &["replicate", "backup", "--to", "g", "--json"]);
    assert_eq!(
        r["report"]["snapshots_sent"],
        serde_json::json!(["s1"]),
        "{r}"
    );

    // One node of three goes down: reads and writes still reach a quorum.
    g.stop_node(3);
    std::fs::write(src.join("notes.txt"), "second night\n").unwrap();
    let mut big = std::fs::read(src.join("db/dump.bin")).unwrap();
    big[1 << 20..(1 << 20) + 65536].copy_from_slice(&noise(65536, 2));
    std::fs::write(src.join("db/dump.bin"), &big).unwrap();
    import_snapshot(&cfg, &src, "s2", true);
    let r = json(&cfg, &["replicate", "backup", "--to", "g", "--json"]);
    assert_eq!(
        r["report"]["snapshots_sent"],
        serde_json::json!(["s2"]),
        "{r}"
    );
    assert!(
        r["report"]["bytes_sent"].as_u64().unwrap() < 4 * 65536,
        "{r}"
    );

    // The main site is gone; the DR site restores and serves from the bucket.
    std::fs::remove_dir_all(t.path().join("store")).unwrap();
    let out = t.path().join("out");
    restore_from(&cfg, "g", "s2", &out);
    same_tree(&src, &out);
    let mut serve = Command::new(env!("CARGO_BIN_EXE_kura"))
        .arg("--config")
        .arg(&cfg)
        .args([
            "serve",
            "--from",
            "g",
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
        ])
        .arg("--cache")
        .arg(t.path().join("cache"))
        .env("KURA_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    // Keep reading what it prints, so that it never writes to a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let port: u16 = line.rsplit(':').next().unwrap().parse().unwrap();
    let url = |p: &str| format!("nfs://127.0.0.1{p}?nfsport={port}&mountport={port}&version=3");
    let got = libnfs("nfs-cat", &[&url("/backup/.snapshots/s2/notes.txt")]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "second night\n");
    let copy = t.path().join("dump.bin");
    let o = libnfs(
        "nfs-cp",
        &[
            &url("/backup/.snapshots/s1/db/dump.bin"),
            copy.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&copy).unwrap(), noise(6 << 20, 1));
    // Read-only: a write is refused.
    let w = libnfs("nfs-cp", &[copy.to_str().unwrap(), &url("/backup/new.bin")]);
    assert!(!w.status.success(), "the DR export is read-only");
    serve.kill().unwrap();
    serve.wait().unwrap();

    // A new main store replicates a large snapshot; the copy is killed midway, rerun.
    std::fs::write(src.join("db/dump.bin"), noise(20 << 20, 3)).unwrap();
    import_snapshot(&cfg, &src, "s3", false);
    let be = g.backend("site-a");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let indexes = || rt.block_on(be.list("index")).unwrap().len();
    let before = indexes();
    let mut child = kura_spawn(&cfg, &["replicate", "backup", "--to", "gslow"]);
    let t0 = Instant::now();
    while indexes() < before + 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no progress in 60 s"
        );
        assert!(child.try_wait().unwrap().is_none(), "ended before the kill");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let names: Vec<String> = json(&cfg, &["snapshot", "list", "--from", "g", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["s1", "s2"],
        "the killed copy's snapshot is not listed"
    );
    let r = json(&cfg, &["replicate", "backup", "--to", "g", "--json"]);
    assert_eq!(
        r["report"]["snapshots_sent"],
        serde_json::json!(["s3"]),
        "{r}"
    );
    assert!(
        r["report"]["bytes_sent"].as_u64().unwrap() < 19 << 20,
        "resumed: {r}"
    );
    let v = json(&cfg, &["verify", "--from", "g", "--json"]);
    assert_eq!(v["damage"], serde_json::json!([]), "{v}");
    assert_eq!(v["snapshots"], 3);

    // Flip a byte in one object of the bucket: verify names it and what it breaks.
    let packs = rt.block_on(be.list("packs")).unwrap();
    let (key, _, _) = packs.iter().max_by_key(|p| p.1).unwrap().clone();
    let mut b = rt.block_on(be.get(&key)).unwrap().unwrap().to_vec();
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    rt.block_on(be.put(&key, b.into())).unwrap();
    let o = kura_output(&cfg, &["verify", "--from", "g"]);
    assert!(!o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains(&format!("DAMAGED {key}")), "{text}");
    assert!(text.contains("affected snapshot backup@s3"), "{text}");
}
