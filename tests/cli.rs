//! The `kura` command line against a real store: volumes, snapshots, clone, ingest, GC,
//! verify (clean and damaged), stats, and the errors an operator sees for bad input.

mod common;
use common::*;
use std::process::{Command, Output};

fn run(data: &std::path::Path, args: &[&str]) -> Output {
    kura_data(data, args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "kura failed: {}", stderr(&o));
    stdout(&o)
}

/// The operator's offline workflow, end to end, on data written over NFS.
#[test]
fn operator_workflow() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_fixed_port(tmp.path(), "");
    let data = tmp.path().join("store");
    let mut d = Daemon::start(&cfg, &[]);
    let src = tmp.path().join("dump.sql");
    let h = make_file(&src, 5 << 20, 3);
    let o = libnfs(
        "nfs-cp",
        &[src.to_str().unwrap(), &d.url("/backup/dump.sql")],
    );
    assert!(o.status.success());
    // While the daemon serves, the same commands go through its API.
    let live = ok(run(&data, &["snapshot", "create", "backup", "x"]));
    assert!(
        live.contains("backup@x") && live.contains("window"),
        "{live}"
    );
    ok(run(&data, &["snapshot", "delete", "backup", "x"]));
    d.stop();

    assert!(ok(run(&data, &["volume", "list"]))
        .lines()
        .any(|l| l.split('\t').next() == Some("backup")));
    ok(run(
        &data,
        &["volume", "create", "archive", "--owner", "1000:1000"],
    ));
    assert!(ok(run(&data, &["ingest"])).contains("ingested"));
    assert!(
        ok(run(&data, &["snapshot", "create", "backup", "nightly-1"])).contains("backup@nightly-1")
    );
    assert!(ok(run(&data, &["snapshot", "list", "backup"])).contains("backup@nightly-1"));
    ok(run(&data, &["clone", "backup", "nightly-1", "restored"]));
    assert!(ok(run(&data, &["volume", "list"]))
        .lines()
        .any(|l| l.split('\t').next() == Some("restored")));
    let stats = ok(run(&data, &["stats"]));
    assert!(
        stats.contains("chunks ")
            && stats.contains("staged files 0")
            && stats.contains("filesystem free bytes "),
        "{stats}"
    );
    assert!(ok(run(&data, &["gc", "--dry-run"])).starts_with("[dry run]"));
    assert!(ok(run(&data, &["verify"])).contains("checked"));

    // The clone serves the snapshot's data over NFS.
    let d = Daemon::start(&cfg, &[]);
    let out = tmp.path().join("out.sql");
    let o = libnfs(
        "nfs-cp",
        &[&d.url("/restored/dump.sql"), out.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(hash_file(&out), h);
    drop(d);

    // Bad input: clear errors, nothing changed.
    let e = run(&data, &["snapshot", "create", "backup", "nightly-1"]);
    assert!(
        !e.status.success() && stderr(&e).contains("already exists"),
        "{}",
        stderr(&e)
    );
    let e = run(&data, &["snapshot", "create", "nope", "x"]);
    assert!(
        !e.status.success() && stderr(&e).contains("volume nope"),
        "{}",
        stderr(&e)
    );
    let e = run(&data, &["volume", "create", "../etc"]);
    assert!(
        !e.status.success() && stderr(&e).contains("invalid name"),
        "{}",
        stderr(&e)
    );
    let e = run(&data, &["volume", "create", "x", "--owner", "root"]);
    assert!(
        !e.status.success() && stderr(&e).contains("UID:GID"),
        "{}",
        stderr(&e)
    );
    ok(run(&data, &["snapshot", "delete", "backup", "nightly-1"]));
    let gc = ok(run(&data, &["gc"]));
    assert!(gc.contains("deleted"), "{gc}");
    let plan = ok(run(&data, &["gc", "--dry-run"]));
    assert!(
        plan.contains("to regroup 0 (0 B in mixed bundles)"),
        "{plan}"
    );
    let jobs = ok(run(&data, &["jobs", "--json"]));
    assert!(jobs.contains("to regroup them"), "{jobs}");
    assert!(ok(run(&data, &["verify"])).contains("checked"));
}

/// A damaged pack: `kura verify` exits non-zero and names the damaged chunk and the file.
#[test]
fn verify_reports_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_fixed_port(tmp.path(), "");
    let data = tmp.path().join("store");
    let mut d = Daemon::start(&cfg, &[]);
    let src = tmp.path().join("img");
    make_file(&src, 4 << 20, 8);
    assert!(libnfs(
        "nfs-cp",
        &[src.to_str().unwrap(), &d.url("/backup/disk.img")]
    )
    .status
    .success());
    d.stop();
    ok(run(&data, &["ingest"]));
    damage_largest_pack(&data);
    let v = run(&data, &["verify"]);
    assert!(!v.status.success());
    let out = stdout(&v);
    assert!(out.contains("DAMAGED chunk"), "{out}");
    assert!(out.contains("affected file backup:/disk.img"), "{out}");
    assert!(stderr(&v).contains("damaged chunks"), "{}", stderr(&v));
}

/// A wrong config file is refused at start with the key and the reason.
#[test]
fn bad_config_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("listen_addr = 'x'", "unknown field"),
        ("[[export]]\nlisten = '127.0.0.1'", "ADDRESS:PORT"),
        (
            "[[export]]\nlisten = '127.0.0.1:0'\nallow = ['10.0.0.0/99']",
            "prefix",
        ),
        (
            "[[export]]\nlisten = '127.0.0.1:0'\nallow = []",
            "allow is empty",
        ),
        ("volumes = ['a b']", "volume"),
        ("ingest_idle_secs = 'soon'", "invalid type"),
        ("read_cache_mib = 1", "read_cache_mib = 1 is outside"),
    ];
    for (text, expect) in cases {
        let p = tmp.path().join("kura.toml");
        std::fs::write(&p, text).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_kura"))
            .arg("--config")
            .arg(&p)
            .arg("serve")
            .output()
            .unwrap();
        assert!(!o.status.success(), "{text:?} must be refused");
        let e = stderr(&o);
        assert!(
            e.contains(expect) && e.contains("kura.toml"),
            "{text:?}: {e}"
        );
    }
    let o = Command::new(env!("CARGO_BIN_EXE_kura"))
        .args(["--config", "/nonexistent/kura.toml", "serve"])
        .output()
        .unwrap();
    assert!(!o.status.success() && stderr(&o).contains("reading config /nonexistent/kura.toml"));
}

/// A SIGTERM that comes right after the daemon says it listens (a service manager
/// stopping what it just started) is a clean stop, never the default kill: the
/// handlers are installed before the listening line. Ten starts and stops.
#[test]
fn sigterm_right_after_start_is_a_clean_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "127.0.0.1:0", &["127.0.0.1/32"], "");
    for _ in 0..10 {
        let mut d = Daemon::process(&cfg, &[]);
        d.stop();
    }
}
