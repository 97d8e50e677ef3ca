//! Ingest benchmark over the deterministic corpus (shared/bench/make-corpus.sh).
//!
//! `cargo bench -p kura-storage --bench ingest [-- dumps tree vmimage]`
//!
//! Each part goes into a fresh store, its versions in order, as separate files of one
//! volume (a backup target receiving night after night). Per file it prints: write MB/s
//! into the landing zone, ingest MB/s, new bytes stored, the cumulative ratio
//! (logical bytes so far / bytes the packs take) and peak RSS of this process.
//! Env: KURA_CORPUS (default $TMPDIR/kura-corpus), KURA_BENCH_DIR (store location,
//! default $TMPDIR), KURA_BENCH_REPEAT (runs per part; the median ingest MB/s is shown),
//! KURA_BENCH_MIN/AVG/MAX (chunk sizes), KURA_BENCH_LEVEL (zstd level), KURA_BENCH_THREADS
//! (ingest pool threads), KURA_BENCH_SETTLE (fsync staged data before ingest).

use std::io::Read;
use std::time::Instant;
use storage::{ChunkerParams, NewAttr, Store, StoreOptions};

fn env_u32(k: &str, d: u32) -> u32 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// User + system CPU seconds of this process so far.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Row {
    file: String,
    bytes: u64,
    write_mbs: f64,
    ingest_mbs: Vec<f64>,
    new_bytes: u64,
    stored: u64,
    ratio: f64,
    rss: f64,
}

fn main() {
    let tmp = std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into());
    let corpus = std::env::var("KURA_CORPUS").unwrap_or_else(|_| format!("{tmp}/kura-corpus"));
    let base = std::env::var("KURA_BENCH_DIR").unwrap_or(tmp);
    let repeat = env_u32("KURA_BENCH_REPEAT", 1).max(1) as usize;
    let d = ChunkerParams::default();
    let params = ChunkerParams {
        min: env_u32("KURA_BENCH_MIN", d.min),
        avg: env_u32("KURA_BENCH_AVG", d.avg),
        max: env_u32("KURA_BENCH_MAX", d.max),
    };
    let level = env_u32(
        "KURA_BENCH_LEVEL",
        StoreOptions::default().zstd_level as u32,
    ) as i32;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let parts: Vec<(&str, Vec<&str>)> = vec![
        ("dumps", vec!["night1.sql", "night2.sql", "night3.sql"]),
        ("tree", vec!["v1.tar", "v2.tar"]),
        ("vmimage", vec!["v1.img", "v2.img"]),
    ];
    println!(
        "chunks min/avg/max {}/{}/{} KiB, zstd level {level}, {} ingest threads, {repeat} run(s)",
        params.min / 1024,
        params.avg / 1024,
        params.max / 1024,
        StoreOptions::default().ingest_threads
    );
    println!(
        "{:<22} {:>9} {:>10} {:>11} {:>12} {:>12} {:>8} {:>9}",
        "file", "MiB", "write MB/s", "ingest MB/s", "new MiB", "stored MiB", "ratio", "RSS MiB"
    );
    let (mut all_logical, mut all_stored) = (0u64, 0u64);
    for (part, files) in parts {
        if !args.is_empty() && !args.iter().any(|a| a == part) {
            continue;
        }
        let mut rows: Vec<Row> = Vec::new();
        for run in 0..repeat {
            let dir = tempfile::Builder::new()
                .prefix("kura-bench-")
                .tempdir_in(&base)
                .unwrap();
            let d = StoreOptions::default();
            let opts = StoreOptions {
                chunker: params,
                zstd_level: level,
                ingest_threads: env_u32("KURA_BENCH_THREADS", d.ingest_threads as u32) as usize,
                ..d
            };
            let s = Store::open(dir.path(), opts).unwrap();
            let v = s
                .create_volume(
                    part,
                    NewAttr {
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                    },
                )
                .unwrap();
            let mut logical = 0u64;
            for (i, f) in files.iter().enumerate() {
                let path = format!("{corpus}/{part}/{f}");
                let mut src = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("{path}: {e} (run make-corpus.sh)"));
                let ino = s
                    .create(
                        v.root,
                        f.as_bytes(),
                        NewAttr {
                            mode: 0o644,
                            uid: 0,
                            gid: 0,
                        },
                    )
                    .unwrap()
                    .ino;
                let mut buf = vec![0u8; 1 << 20];
                let mut off = 0u64;
                let t0 = Instant::now();
                loop {
                    let n = src.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    s.write(ino, off, &buf[..n]).unwrap();
                    off += n as u64;
                }
                let write_s = t0.elapsed().as_secs_f64();
                if std::env::var_os("KURA_BENCH_SETTLE").is_some() {
                    // Ingest normally runs on files that have been quiet for a while, by
                    // which time the kernel has written the staged bytes back.
                    s.sync(ino).unwrap();
                }
                let t1 = Instant::now();
                let c1 = cpu_secs();
                let r = s.ingest_all(None).unwrap();
                let ingest_s = t1.elapsed().as_secs_f64();
                let cpu = (cpu_secs() - c1) / ingest_s;
                if std::env::var_os("KURA_BENCH_VERBOSE").is_some() {
                    eprintln!(
                        "{part}/{f}: ingest {ingest_s:.2}s ({:.2}s fsync), {:.0}% CPU",
                        r.sync_time.as_secs_f64(),
                        cpu * 100.0
                    );
                }
                logical += off;
                let stats = s.stats().unwrap();
                let mbs = off as f64 / 1e6 / ingest_s;
                if run == 0 {
                    rows.push(Row {
                        file: format!("{part}/{f}"),
                        bytes: off,
                        write_mbs: off as f64 / 1e6 / write_s,
                        ingest_mbs: vec![mbs],
                        new_bytes: r.new_bytes,
                        stored: r.stored_bytes,
                        ratio: logical as f64 / stats.pack_bytes as f64,
                        rss: peak_rss_mib(),
                    });
                } else {
                    rows[i].ingest_mbs.push(mbs);
                    rows[i].rss = rows[i].rss.max(peak_rss_mib());
                }
                if i + 1 == files.len() && run == 0 {
                    all_logical += logical;
                    all_stored += stats.pack_bytes;
                }
            }
        }
        for r in rows.iter_mut() {
            println!(
                "{:<22} {:>9.0} {:>10.0} {:>11.0} {:>12.1} {:>12.1} {:>7.2}x {:>9.0}",
                r.file,
                r.bytes as f64 / 1048576.0,
                r.write_mbs,
                median(&mut r.ingest_mbs),
                r.new_bytes as f64 / 1048576.0,
                r.stored as f64 / 1048576.0,
                r.ratio,
                r.rss
            );
        }
    }
    if all_stored > 0 {
        println!(
            "all parts: {:.0} MiB logical, {:.0} MiB stored, {:.2}x",
            all_logical as f64 / 1048576.0,
            all_stored as f64 / 1048576.0,
            all_logical as f64 / all_stored as f64
        );
    }
}
