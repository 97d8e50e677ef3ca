//! Crash tests: a real child process works on a store and is killed with SIGKILL at a
//! random moment (mid-ingest, mid-snapshot, mid-GC); the store is then reopened and its
//! invariants checked. The child is this test binary re-executed with `crash_child`.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use storage::*;

fn content(i: u64) -> Vec<u8> {
    // Sizes from 64 KiB to ~3 MiB; every third file repeats an earlier one (dedup).
    let size = 65_536 + ((i * 7_919_993) % (3 << 20)) as usize;
    data(size, if i.is_multiple_of(3) { i / 3 } else { i + 1000 })
}

/// The child's workload. Prints `ACK i` once file `i` is written and synced, and
/// `SNAP name` once a snapshot is recorded. Runs until killed (bounded anyway).
#[test]
#[ignore = "run by the crash tests as a child process"]
fn crash_child() {
    let Some(dir) = std::env::var_os("KURA_CRASH_DIR") else {
        return;
    };
    let mode = std::env::var("KURA_CRASH_MODE").unwrap();
    let start: u64 = std::env::var("KURA_CRASH_START").unwrap().parse().unwrap();
    let s = open(std::path::Path::new(&dir));
    let v = match s.volume("vol") {
        Ok(v) => v,
        Err(_) => s.create_volume("vol", owner()).unwrap(),
    };
    let t0 = Instant::now();
    for i in start..start + 400 {
        if t0.elapsed() > Duration::from_secs(30) {
            break;
        }
        let name = format!("f{i}");
        let f = match s.create(v.root, name.as_bytes(), file_mode()) {
            Ok(a) => a.ino,
            Err(StoreError::Exists(_)) => s.lookup(v.root, name.as_bytes()).unwrap().ino,
            Err(e) => panic!("{e}"),
        };
        let c = content(i);
        for (k, piece) in c.chunks(256 * 1024).enumerate() {
            s.write(f, (k * 256 * 1024) as u64, piece).unwrap();
        }
        s.sync(f).unwrap();
        println!("ACK {i}");
        match mode.as_str() {
            "ingest" => {
                s.ingest_all(None).unwrap();
            }
            "snapshot" => {
                if i % 2 == 0 {
                    let n = format!("s{i}");
                    s.snapshot("vol", &n).unwrap();
                    println!("SNAP {n}");
                }
            }
            "gc" => {
                s.ingest_all(None).unwrap();
                if i % 2 == 1 {
                    // Remove an older file whose content others share, then collect.
                    // Announce before removing: a kill between the two must not
                    // make the parent expect a file that is already gone.
                    println!("DEL {}", i - 1);
                    let _ = s.remove(v.root, format!("f{}", i - 1).as_bytes());
                    s.gc(&GcOptions {
                        repack_below: 0.9,
                        ..Default::default()
                    })
                    .unwrap();
                }
            }
            m => panic!("unknown mode {m}"),
        }
    }
}

struct Outcome {
    acked: Vec<u64>,
    deleted: Vec<u64>,
    snaps: Vec<String>,
}

/// Runs the child until it has acknowledged `kill_after` files, waits `delay`, kills it.
fn run_and_kill(
    dir: &std::path::Path,
    mode: &str,
    start: u64,
    kill_after: usize,
    delay: Duration,
) -> Outcome {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KURA_CRASH_DIR", dir)
        .env("KURA_CRASH_MODE", mode)
        .env("KURA_CRASH_START", start.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = Outcome {
        acked: vec![],
        deleted: vec![],
        snaps: vec![],
    };
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = stdout.lines();
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(n) = line.strip_prefix("ACK ") {
            out.acked.push(n.parse().unwrap());
            if out.acked.len() >= kill_after {
                break;
            }
        } else if let Some(n) = line.strip_prefix("SNAP ") {
            out.snaps.push(n.to_string());
        } else if let Some(n) = line.strip_prefix("DEL ") {
            out.deleted.push(n.parse().unwrap());
        }
    }
    std::thread::sleep(delay);
    // SIGKILL: no destructor, no flush, no clean close of SQLite.
    child.kill().unwrap();
    child.wait().unwrap();
    // Lines printed before the kill but not yet read.
    for line in lines.map_while(|l| l.ok()) {
        if let Some(n) = line.strip_prefix("ACK ") {
            out.acked.push(n.parse().unwrap());
        } else if let Some(n) = line.strip_prefix("SNAP ") {
            out.snaps.push(n.to_string());
        } else if let Some(n) = line.strip_prefix("DEL ") {
            out.deleted.push(n.parse().unwrap());
        }
    }
    out
}

/// After a kill: every acknowledged file reads back exactly, every recorded snapshot
/// reads, verify finds every indexed chunk intact (nothing dangling), and a GC leaves no
/// pack file that nothing references.
fn check(dir: &std::path::Path, acked: &[u64], deleted: &[u64], snaps: &[String]) {
    let s = open(dir);
    let v = s.volume("vol").unwrap();
    for &i in acked {
        if deleted.contains(&i) {
            continue;
        }
        let f = s
            .lookup(v.root, format!("f{i}").as_bytes())
            .unwrap_or_else(|e| panic!("acknowledged file f{i} lost: {e}"))
            .ino;
        assert!(
            read_all(&s, f) == content(i),
            "acknowledged file f{i} differs after kill -9"
        );
    }
    let existing: Vec<String> = s
        .snapshots(Some("vol"))
        .unwrap()
        .into_iter()
        .map(|x| x.name)
        .collect();
    for n in snaps {
        assert!(existing.contains(n), "recorded snapshot {n} lost");
    }
    for n in &existing {
        let root = s.snapshot_root("vol", n).unwrap();
        for e in s.snapshot_children(&root).unwrap().iter() {
            let i: u64 = std::str::from_utf8(&e.name[1..]).unwrap().parse().unwrap();
            let (d, _) = s.snap_read(e, 0, u32::MAX).unwrap();
            assert!(d == content(i), "snapshot {n} file f{i} differs");
        }
    }
    let rep = s.verify().unwrap();
    assert!(rep.is_clean(), "verify after crash: {:?}", rep.damaged);
    s.ingest_all(None).unwrap();
    s.gc(&GcOptions {
        repack_below: 0.0,
        ..Default::default()
    })
    .unwrap();
    let counts = storage::gc::pack_counts(&s).unwrap();
    for e in std::fs::read_dir(dir.join("packs")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        let id = storage::pack::pack_id_of(&name).unwrap();
        assert!(counts.contains_key(&id), "garbage pack {name} survived GC");
    }
    assert!(s.verify().unwrap().is_clean());
}

fn crash_loop(mode: &str, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = seed;
    let mut next = 0u64;
    let mut acked = Vec::new();
    let mut deleted = Vec::new();
    let mut snaps = Vec::new();
    for _round in 0..5 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let kill_after = 2 + (rng >> 33) as usize % 5;
        let delay = Duration::from_millis((rng >> 40) % 120);
        let o = run_and_kill(dir.path(), mode, next, kill_after, delay);
        assert!(!o.acked.is_empty(), "child made no progress");
        next = o.acked.iter().max().unwrap() + 1;
        acked.extend(o.acked);
        deleted.extend(o.deleted);
        snaps.extend(o.snaps);
        check(dir.path(), &acked, &deleted, &snaps);
    }
}

#[test]
fn kill_during_ingest() {
    crash_loop("ingest", 1);
}

#[test]
fn kill_during_snapshot() {
    crash_loop("snapshot", 2);
}

#[test]
fn kill_during_gc() {
    crash_loop("gc", 3);
}
