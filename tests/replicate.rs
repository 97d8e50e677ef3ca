//! DR copies (`kura replicate`, `--from`): to a directory, incremental and resumable,
//! standing alone once the main store is gone (list, restore, verify, clone, serve),
//! encrypted, pruned by the target's own retention, failing clearly when the target is
//! down; and after each snapshot from the daemon, with status and metrics. The Garage
//! tests (a real 3-node S3 cluster) are in `tests/garage.rs`.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A tree to back up: a large incompressible file, text, small files, a symlink and a
/// hard link.
fn make_tree(dir: &Path, big: usize) {
    std::fs::create_dir_all(dir.join("db")).unwrap();
    std::fs::create_dir_all(dir.join("etc/conf.d")).unwrap();
    std::fs::write(dir.join("db/dump.bin"), noise(big, 1)).unwrap();
    let text: String = (0..50_000)
        .map(|i| format!("row {i} value {}\n", i * 7))
        .collect();
    std::fs::write(dir.join("db/rows.txt"), text).unwrap();
    for i in 0..20 {
        std::fs::write(
            dir.join(format!("etc/conf.d/{i}.conf")),
            format!("key{i} = {i}\n"),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("db/dump.bin", dir.join("latest")).unwrap();
    std::fs::hard_link(dir.join("db/rows.txt"), dir.join("db/rows.link")).unwrap();
}

fn run(config: &Path, args: &[&str]) -> std::process::Output {
    kura(config, args)
}

fn json(config: &Path, args: &[&str]) -> Value {
    let o = run(config, args);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "kura {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

fn fails(config: &Path, args: &[&str]) -> String {
    let o = kura_output(config, args);
    assert!(!o.status.success(), "kura {args:?} should fail");
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn setup(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("kura.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nvolumes = [\"backup\"]\n[api]\nlisten = \"127.0.0.1:0\"\n{extra}\n",
            t.path().join("store")
        ),
    )
    .unwrap();
    (t, cfg)
}

/// Adds `text` (targets, volume settings) to the config.
fn append(cfg: &Path, text: &str) {
    let old = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(cfg, old + text).unwrap();
}

fn snapshots_from(cfg: &Path, target: &str) -> Vec<String> {
    json(cfg, &["snapshot", "list", "--from", target, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn dir_copy_is_incremental_and_stands_alone_with_the_main_store_gone() {
    let (t, cfg) = setup("");
    let dr = t.path().join("dr");
    let src = t.path().join("src");
    make_tree(&src, 8 << 20);
    let drs = dr.to_str().unwrap();
    import_snapshot(&cfg, &src, "s1", false);

    let first = json(&cfg, &["replicate", "backup", "--to", drs, "--json"]);
    let r1 = &first["report"];
    assert_eq!(r1["snapshots_sent"], serde_json::json!(["s1"]));
    let sent1 = r1["bytes_sent"].as_u64().unwrap();
    assert!(sent1 > 8 << 20, "the first copy sends the data: {first}");

    // 1% of the large file changes (80 KiB in one place); a snapshot; a copy.
    let mut big = std::fs::read(src.join("db/dump.bin")).unwrap();
    let changed = 80 << 10;
    big[4 << 20..(4 << 20) + changed].copy_from_slice(&noise(changed, 2));
    std::fs::write(src.join("db/dump.bin"), &big).unwrap();
    import_snapshot(&cfg, &src, "s2", true);
    let second = json(&cfg, &["replicate", "backup", "--to", drs, "--json"]);
    let r2 = &second["report"];
    assert_eq!(r2["snapshots_sent"], serde_json::json!(["s2"]));
    let sent2 = r2["bytes_sent"].as_u64().unwrap();
    // The changed chunks (a cut or two either side of the change), the file's content
    // list (36 bytes a chunk) and the directories above it: not the file again.
    assert!(
        sent2 < 3 * changed as u64 && sent2 > changed as u64,
        "an incremental copy sends about what changed: {sent2} bytes for {changed} changed"
    );
    // Nothing new: nothing sent.
    let third = json(&cfg, &["replicate", "backup", "--to", drs, "--json"]);
    assert_eq!(third["report"]["bytes_sent"], 0, "{third}");
    assert_eq!(third["report"]["snapshots_present"], 2);

    // The main site is gone.
    std::fs::remove_dir_all(t.path().join("store")).unwrap();
    assert_eq!(snapshots_from(&cfg, drs), ["s1", "s2"]);
    let out = t.path().join("out");
    restore_from(&cfg, drs, "s2", &out);
    same_tree(&src, &out);
    let v = json(&cfg, &["verify", "--from", drs, "--json"]);
    assert_eq!(v["damage"], serde_json::json!([]), "{v}");
    assert_eq!(v["snapshots"], 2);

    // A new writable store at the DR site from s1, on its own.
    let site2 = t.path().join("site2");
    let c = |args: &[&str]| {
        let o = kura_data(&site2, args);
        assert!(
            o.status.success(),
            "kura {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    };
    c(&["clone", "backup", "s1", "restored", "--from", drs]);
    std::fs::remove_dir_all(&dr).unwrap();
    c(&["verify"]);
    let out1 = t.path().join("out1");
    c(&["restore", "backup", "s1", "--to", out1.to_str().unwrap()]);
    let mut old = std::fs::read(src.join("db/dump.bin")).unwrap();
    old[4 << 20..(4 << 20) + changed]
        .copy_from_slice(&noise(8 << 20, 1)[4 << 20..(4 << 20) + changed]);
    assert_eq!(
        std::fs::read(out1.join("db/dump.bin")).unwrap(),
        old,
        "s1 as it was"
    );
    let vols = String::from_utf8(c(&["volume", "list"]).stdout).unwrap();
    assert!(vols.contains("restored"), "{vols}");
}

#[test]
fn a_killed_copy_resumes_and_never_shows_half_a_snapshot() {
    let (t, cfg) = setup("");
    let dr = t.path().join("dr");
    let extra = format!(
        "[target.slow]\npath = {dr:?}\npack_mib = 1\nbandwidth_mb_s = 3\n[target.fast]\npath = {dr:?}\npack_mib = 1\n"
    );
    let text = std::fs::read_to_string(&cfg).unwrap() + &extra;
    std::fs::write(&cfg, text).unwrap();
    let src = t.path().join("src");
    make_tree(&src, 24 << 20);
    import_snapshot(&cfg, &src, "s1", false);

    let mut child = kura_spawn(&cfg, &["replicate", "backup", "--to", "slow"]);
    // Kill it once a few packs are indexed, well before the end (~8 s at 3 MB/s).
    let t0 = Instant::now();
    let indexed = || std::fs::read_dir(dr.join("index")).map_or(0, |d| d.count());
    while indexed() < 4 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no pack indexed in 30 s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the copy ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = indexed();
    assert!(
        snapshots_from(&cfg, dr.to_str().unwrap()).is_empty(),
        "a half-sent snapshot is not listed"
    );
    let r = json(&cfg, &["replicate", "backup", "--to", "fast", "--json"]);
    let rep = &r["report"];
    assert_eq!(rep["snapshots_sent"], serde_json::json!(["s1"]));
    assert!(
        rep["bytes_sent"].as_u64().unwrap() < (24 << 20) - (partial as u64 - 1) * (1 << 20),
        "the rerun sends only what the killed run had not indexed ({partial} packs): {rep}"
    );
    let v = json(&cfg, &["verify", "--from", "fast", "--json"]);
    assert_eq!(v["damage"], serde_json::json!([]), "{v}");
    let out = t.path().join("out");
    restore_from(&cfg, "fast", "s1", &out);
    same_tree(&src, &out);
}

#[test]
fn verify_names_damaged_and_missing_objects_and_bad_indexes() {
    let (t, cfg) = setup("");
    let dr = t.path().join("dr");
    append(&cfg, &format!("[target.dr]\npath = {dr:?}\npack_mib = 1\n"));
    let src = t.path().join("src");
    make_tree(&src, 6 << 20);
    import_snapshot(&cfg, &src, "s1", false);
    run(&cfg, &["replicate", "backup", "--to", "dr"]);
    let mut packs: Vec<PathBuf> = std::fs::read_dir(dr.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    assert!(packs.len() >= 4, "{packs:?}");
    let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    // One byte flipped in a pack, one pack gone, one index that is garbage.
    let flipped = packs.pop().unwrap();
    let mut b = std::fs::read(&flipped).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x55;
    std::fs::write(&flipped, b).unwrap();
    let gone = packs.pop().unwrap();
    std::fs::remove_file(&gone).unwrap();
    let garbled = packs.pop().unwrap();
    std::fs::write(
        dr.join("index").join(name(&garbled)),
        b"not an index at all",
    )
    .unwrap();

    let out = fails(&cfg, &["verify", "--from", "dr"]);
    assert!(out.contains(&format!("packs/{}", name(&flipped))), "{out}");
    assert!(
        out.contains(&format!("packs/{}: missing", name(&gone))),
        "{out}"
    );
    assert!(out.contains(&format!("index/{}", name(&garbled))), "{out}");
    assert!(out.contains("affected snapshot backup@s1"), "{out}");

    // Repair: the pack verify named damaged is removed with its index, and a full
    // replication sends again whatever the copy lacks.
    std::fs::remove_file(&flipped).unwrap();
    std::fs::remove_file(dr.join("index").join(name(&flipped))).unwrap();
    let r = json(
        &cfg,
        &["replicate", "backup", "--to", "dr", "--full", "--json"],
    );
    assert!(r["report"]["objects_sent"].as_u64().unwrap() > 0, "{r}");
    let o = kura_output(&cfg, &["verify", "--from", "dr", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["snapshots_damaged"].as_array().unwrap().is_empty(), "{v}");
    // Only the garbled index is left to name (an operator removes it).
    let damage = v["damage"].as_array().unwrap();
    assert_eq!(damage.len(), 1, "{v}");
    assert!(damage[0]
        .as_str()
        .unwrap()
        .contains(&format!("index/{}", name(&garbled))));
    let out = t.path().join("out");
    std::fs::remove_dir_all(t.path().join("store")).unwrap();
    restore_from(&cfg, "dr", "s1", &out);
    same_tree(&src, &out);
}

#[test]
fn an_encrypted_copy_shows_no_ids_and_needs_its_key() {
    let (t, cfg) = setup("");
    let (plain, sealed) = (t.path().join("plain"), t.path().join("sealed"));
    let key = t.path().join("dr.key");
    std::fs::write(&key, noise(32, 9)).unwrap();
    let wrong = t.path().join("wrong.key");
    std::fs::write(&wrong, noise(32, 10)).unwrap();
    append(&cfg, &format!("[target.plain]\npath = {plain:?}\n[target.sealed]\npath = {sealed:?}\nkey_file = {key:?}\n"));
    let src = t.path().join("src");
    make_tree(&src, 2 << 20);
    import_snapshot(&cfg, &src, "s1", false);
    run(&cfg, &["replicate", "backup", "--to", "plain"]);
    run(&cfg, &["replicate", "backup", "--to", "sealed"]);
    // The plain copy's record names the root directory object; the sealed copy must
    // show neither that id nor any plaintext text of the files.
    let rec = std::fs::read_dir(plain.join("snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let rec: Value = serde_json::from_slice(&std::fs::read(rec).unwrap()).unwrap();
    let root_hex = rec["root"].as_str().unwrap().to_string();
    let root: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&root_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    for e in walkdir::WalkDir::new(&sealed) {
        let e = e.unwrap();
        if !e.file_type().is_file() {
            continue;
        }
        let b = std::fs::read(e.path()).unwrap();
        assert!(
            !b.windows(32).any(|w| w == root.as_slice()),
            "{} holds a plaintext id",
            e.path().display()
        );
        assert!(!b.windows(root_hex.len()).any(|w| w == root_hex.as_bytes()));
        assert!(
            !b.windows(7).any(|w| w == b"row 123"),
            "{} holds plaintext",
            e.path().display()
        );
        let text = String::from_utf8_lossy(&b);
        assert!(
            !text.contains("backup") || e.path().ends_with("kura-target.json"),
            "{}",
            e.path().display()
        );
    }
    let s = sealed.to_str().unwrap();
    let out = fails(&cfg, &["snapshot", "list", "--from", s]);
    assert!(out.contains("encrypted") && out.contains("key"), "{out}");
    let out = fails(
        &cfg,
        &[
            "snapshot",
            "list",
            "--from",
            s,
            "--key-file",
            wrong.to_str().unwrap(),
        ],
    );
    assert!(out.contains("does not open"), "{out}");
    assert_eq!(snapshots_from(&cfg, "sealed"), ["s1"]);
    std::fs::remove_dir_all(t.path().join("store")).unwrap();
    let out = t.path().join("out");
    restore_from(&cfg, "sealed", "s1", &out);
    same_tree(&src, &out);
    let v = json(&cfg, &["verify", "--from", "sealed", "--json"]);
    assert_eq!(v["damage"], serde_json::json!([]), "{v}");
}

#[test]
fn the_target_keeps_its_own_retention_and_replicated_holds() {
    let (t, cfg) = setup("");
    let dr = t.path().join("dr");
    append(
        &cfg,
        &format!("[target.dr]\npath = {dr:?}\npack_mib = 1\nkeep = {{ last = 1 }}\n"),
    );
    let src = t.path().join("src");
    make_tree(&src, 3 << 20);
    import_snapshot(&cfg, &src, "s1", false);
    run(&cfg, &["snapshot", "hold", "backup", "s1"]);
    std::fs::write(src.join("db/dump.bin"), noise(3 << 20, 5)).unwrap();
    import_snapshot(&cfg, &src, "s2", true);
    std::fs::write(src.join("db/dump.bin"), noise(3 << 20, 6)).unwrap();
    import_snapshot(&cfg, &src, "s3", true);
    let r = json(&cfg, &["replicate", "backup", "--to", "dr", "--json"]);
    assert_eq!(
        r["report"]["snapshots_sent"],
        serde_json::json!(["s1", "s2", "s3"])
    );
    // keep last 1: s3; s1 is held (the hold travelled with it); s2 goes.
    assert_eq!(snapshots_from(&cfg, "dr"), ["s1", "s3"]);
    let list = json(&cfg, &["snapshot", "list", "--from", "dr", "--json"]);
    assert_eq!(list[0]["held"], true, "{list}");
    // Released at the main site: the next run updates the record and prunes it.
    run(&cfg, &["snapshot", "release", "backup", "s1"]);
    let r = json(&cfg, &["replicate", "backup", "--to", "dr", "--json"]);
    assert_eq!(r["report"]["records_updated"], 1, "{r}");
    // The target's GC freed what only s1 and s2 reached.
    let out: Value = serde_json::from_str(r["job"]["output"].as_str().unwrap()).unwrap();
    assert_eq!(
        out["pruned"]["removed"],
        serde_json::json!(["backup@s1"]),
        "{out}"
    );
    assert_eq!(
        r["report"]["snapshots_skipped"],
        serde_json::json!(["s2"]),
        "{r}"
    );
    assert!(r["report"]["bytes_sent"].as_u64().unwrap() < 4096, "{r}");
    assert!(
        out["pruned"]["packs_deleted"].as_u64().unwrap() > 0,
        "{out}"
    );
    assert!(
        out["pruned"]["bytes_freed"].as_u64().unwrap() > 2 << 20,
        "{out}"
    );
    assert_eq!(snapshots_from(&cfg, "dr"), ["s3"]);
    // What s3 reaches is all there; the main site keeps all three.
    let v = json(&cfg, &["verify", "--from", "dr", "--json"]);
    assert_eq!(v["damage"], serde_json::json!([]), "{v}");
    assert!(v["objects"].as_u64().unwrap() > 0);
    std::fs::remove_dir_all(t.path().join("store")).unwrap();
    let out = t.path().join("out");
    restore_from(&cfg, "dr", "s3", &out);
    same_tree(&src, &out);
}

#[test]
fn a_target_that_is_down_fails_clearly_and_the_next_run_catches_up() {
    let (t, cfg) = setup("");
    let blocked = t.path().join("mnt");
    std::fs::write(&blocked, b"a file where the mount point should be").unwrap();
    let dr = blocked.join("dr");
    let port = free_port();
    append(&cfg, &format!(
            "[target.dr]\npath = {dr:?}\n[target.s3down]\ns3 = {{ endpoint = \"http://127.0.0.1:{port}\", bucket = \"b\", access_key_id = \"k\", secret_access_key = \"s\" }}\n"
        ));
    let src = t.path().join("src");
    make_tree(&src, 1 << 20);
    import_snapshot(&cfg, &src, "s1", false);
    let out = fails(&cfg, &["replicate", "backup", "--to", "dr"]);
    assert!(out.contains("mnt/dr") && out.contains("failed"), "{out}");
    let t0 = Instant::now();
    let out = fails(&cfg, &["replicate", "backup", "--to", "s3down"]);
    assert!(
        out.contains(&format!("127.0.0.1:{port}")),
        "the endpoint is named: {out}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(90),
        "gave up in {:?}",
        t0.elapsed()
    );
    let st: Value =
        serde_json::from_slice(&kura_output(&cfg, &["status", "--json"]).stdout).unwrap();
    let dr_state = &st["volumes"][0]["dr"];
    assert!(
        dr_state
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["last_result"] == "failed"),
        "{dr_state}"
    );
    assert!(
        st["problems"]
            .to_string()
            .contains("replication to dr failed"),
        "{st}"
    );
    // The mount comes back: the next run sends everything.
    std::fs::remove_file(&blocked).unwrap();
    let r = json(&cfg, &["replicate", "backup", "--to", "dr", "--json"]);
    assert_eq!(r["report"]["snapshots_sent"], serde_json::json!(["s1"]));
    let st: Value =
        serde_json::from_slice(&kura_output(&cfg, &["status", "--json"]).stdout).unwrap();
    let d = st["volumes"][0]["dr"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["target"] == "dr")
        .cloned()
        .unwrap();
    assert_eq!(d["last_result"], "ok", "{d}");
    assert_eq!(d["newest_snapshot"], "s1", "{d}");
}

#[test]
fn bad_target_settings_are_refused_with_their_key() {
    let (t, cfg) = setup("");
    for (extra, want) in [
        ("[target.x]\n", "give path"),
        (
            "[target.x]\npath = \"/a\"\ns3 = { bucket = \"b\" }\n",
            "not both",
        ),
        (
            "[target.x]\npath = \"/a\"\nbandwidth_mb_s = 0\n",
            "bandwidth_mb_s",
        ),
        ("[target.x]\npath = \"/a\"\npack_mib = 0\n", "pack_mib"),
        (
            "[target.x]\npath = \"/a\"\nkey_file = \"/nonexistent/key\"\n",
            "key_file",
        ),
        (
            "[target.x]\npath = \"/a\"\nkeep = { within = \"soon\" }\n",
            "keep.within",
        ),
        (
            "[volume.backup]\nreplicate_to = [\"nowhere\"]\n",
            "replicate_to",
        ),
    ] {
        let c = t.path().join("bad.toml");
        std::fs::write(&c, std::fs::read_to_string(&cfg).unwrap() + extra).unwrap();
        let out = fails(&c, &["config", "check"]);
        assert!(out.contains(want), "{extra}: {out}");
    }
    // A key file that is not a key; a target that is not a copy.
    let k = t.path().join("k");
    std::fs::write(&k, b"short").unwrap();
    let notcopy = t.path().join("notcopy");
    std::fs::create_dir_all(&notcopy).unwrap();
    std::fs::write(notcopy.join("kura-target.json"), b"{ nonsense").unwrap();
    let out = fails(
        &cfg,
        &["snapshot", "list", "--from", notcopy.to_str().unwrap()],
    );
    assert!(out.contains("not a kura copy"), "{out}");
    let out = fails(
        &cfg,
        &["snapshot", "list", "--from", t.path().to_str().unwrap()],
    );
    assert!(out.contains("holds no kura copy"), "{out}");
    let out = fails(
        &cfg,
        &[
            "snapshot",
            "list",
            "--from",
            notcopy.to_str().unwrap(),
            "--key-file",
            k.to_str().unwrap(),
        ],
    );
    assert!(out.contains("32 bytes"), "{out}");
    let out = fails(&cfg, &["replicate", "backup", "--to", "relative/dir"]);
    assert!(out.contains("no target"), "{out}");
}

#[test]
fn the_daemon_replicates_after_each_snapshot_and_reports_the_dr_rpo() {
    let t = tempfile::tempdir().unwrap();
    let dr = t.path().join("dr");
    let cfg = config(
        t.path(),
        "127.0.0.1:0",
        &["127.0.0.1/32"],
        &format!("\n[target.dr]\npath = {dr:?}\n\n[volume.backup]\nreplicate_to = [\"dr\"]\n"),
    );
    let d = Daemon::start(&cfg, &[]);
    let src = t.path().join("src");
    make_tree(&src, 2 << 20);
    run(&cfg, &["import", src.to_str().unwrap(), "backup"]);
    run(&cfg, &["snapshot", "create", "backup", "s1"]);
    let t0 = Instant::now();
    let dr_state = loop {
        let st: Value = ureq_get(&d.url_api("/status"));
        let dr = st["volumes"][0]["dr"][0].clone();
        if dr["newest_snapshot"] == "s1" {
            break dr;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no replication after the snapshot: {st}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(dr_state["target"], "dr");
    assert_eq!(dr_state["last_result"], "ok");
    assert!(dr_state["newest_snapshot_age_secs"].as_i64().unwrap() < 120);
    let m = ureq_text(&d.url_api("/metrics"));
    assert!(
        m.contains("kura_dr_copy_age_seconds{volume=\"backup\",target=\"dr\"}"),
        "{m}"
    );
    assert!(
        m.contains("kura_dr_last_ok{volume=\"backup\",target=\"dr\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("kura_dr_sent_bytes_total{volume=\"backup\",target=\"dr\"}"),
        "{m}"
    );
    // Through the API, and its refusals.
    let r = ureq::post(&d.url_api("/volumes/backup/replicate?to=dr"))
        .call()
        .unwrap();
    let v: Value = r.into_json().unwrap();
    assert_eq!(v["report"]["snapshots_present"], 1, "{v}");
    match ureq::post(&d.url_api("/volumes/backup/replicate?to=nowhere")).call() {
        Err(ureq::Error::Status(400, r)) => assert!(r.into_string().unwrap().contains("no target")),
        other => panic!("unknown target: {other:?}"),
    }
    // A directory the caller names (not in the config) needs the token, even here.
    let other = t.path().join("other");
    let url = d.url_api(&format!("/volumes/backup/replicate?to={}", other.display()));
    match ureq::post(&url).call() {
        Err(ureq::Error::Status(401, r)) => assert!(r.into_string().unwrap().contains("token")),
        other => panic!("a target outside the config without the token: {other:?}"),
    }
    assert!(!other.exists(), "nothing written without the token");
    let token = std::fs::read_to_string(t.path().join("store/api-token")).unwrap();
    let r = ureq::post(&url)
        .set("Authorization", &format!("Bearer {}", token.trim()))
        .call()
        .unwrap();
    let v: Value = r.into_json().unwrap();
    assert_eq!(
        v["report"]["snapshots_sent"],
        serde_json::json!(["s1"]),
        "{v}"
    );
    match ureq::post(&d.url_api("/volumes/nope/replicate?to=dr")).call() {
        Err(ureq::Error::Status(404, _)) => {}
        other => panic!("unknown volume: {other:?}"),
    }
    drop(d);
    assert_eq!(snapshots_from(&cfg, dr.to_str().unwrap()), ["s1"]);
}

fn ureq_get(url: &str) -> Value {
    ureq::get(url).call().unwrap().into_json().unwrap()
}

fn ureq_text(url: &str) -> String {
    ureq::get(url).call().unwrap().into_string().unwrap()
}

trait ApiUrl {
    fn url_api(&self, path: &str) -> String;
}

impl ApiUrl for Daemon {
    fn url_api(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }
}

#[test]
fn clients_write_and_snapshots_go_on_while_a_slow_replication_runs() {
    let t = tempfile::tempdir().unwrap();
    let dr = t.path().join("dr");
    let cfg = config(
        t.path(),
        "127.0.0.1:0",
        &["127.0.0.1/32"],
        &format!("\n[target.slow]\npath = {dr:?}\npack_mib = 1\nbandwidth_mb_s = 2\n"),
    );
    let d = Daemon::start(&cfg, &[]);
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.bin"), noise(16 << 20, 7)).unwrap();
    import_snapshot(&cfg, &src, "s1", false);
    // ~8 s at 2 MB/s.
    let url = d.url_api("/volumes/backup/replicate?to=slow");
    let job = std::thread::spawn(move || {
        let r = ureq::post(&url).call().expect("replication call");
        r.into_json::<Value>().unwrap()
    });
    let running = || {
        let st: Value = ureq_get(&d.url_api("/status"));
        st["running"].to_string().contains("target slow")
    };
    let t0 = Instant::now();
    while !running() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the replication did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A client writes over NFS and a snapshot is taken while the copy runs.
    let local = t.path().join("new.bin");
    std::fs::write(&local, noise(1 << 20, 8)).unwrap();
    let o = libnfs(
        "nfs-cp",
        &[local.to_str().unwrap(), &d.url("/backup/new.bin")],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    run(&cfg, &["snapshot", "create", "backup", "s2"]);
    assert!(
        running(),
        "the write and the snapshot finished while the copy still ran"
    );
    // The running job shows its step and the bytes sent so far, growing.
    let sent_now = || {
        let r: Value = ureq_get(&d.url_api("/jobs/running"));
        let j = r
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["on"] == "target slow")
            .cloned();
        j.map(|j| {
            assert_eq!(j["kind"], "replicate", "{j}");
            assert_eq!(j["phase"], "sending", "{j}");
            j["done_bytes"].as_u64().unwrap()
        })
    };
    let a = sent_now().expect("still running");
    std::thread::sleep(Duration::from_millis(1500));
    if let Some(b) = sent_now() {
        assert!(b > a, "progress: {a} then {b} bytes sent");
    }
    let v = job.join().unwrap();
    assert_eq!(
        v["report"]["snapshots_sent"],
        serde_json::json!(["s1"]),
        "{v}"
    );
    let secs = v["report"]["seconds"].as_f64().unwrap();
    let sent = v["report"]["bytes_sent"].as_f64().unwrap();
    assert!(
        sent / secs < 2.5e6,
        "the bandwidth limit holds: {sent} bytes in {secs} s"
    );
}

#[test]
fn serve_from_a_copy_shows_what_is_replicated_since() {
    let (t, cfg) = setup("");
    let dr = t.path().join("dr");
    append(&cfg, &format!("[target.dr]\npath = {dr:?}\n"));
    let src = t.path().join("src");
    make_tree(&src, 1 << 20);
    import_snapshot(&cfg, &src, "s1", false);
    run(&cfg, &["replicate", "backup", "--to", "dr"]);
    let mut serve = Command::new(env!("CARGO_BIN_EXE_kura"))
        .arg("--config")
        .arg(&cfg)
        .args(["serve", "--from", "dr", "--refresh-secs", "1"])
        .args(["--listen", "127.0.0.1:0", "--api", "127.0.0.1:0", "--cache"])
        .arg(t.path().join("cache"))
        .env("KURA_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(serve.stdout.take().unwrap()));
    let port: u16 = lines
        .next()
        .unwrap()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    std::thread::spawn(move || lines.for_each(drop));
    let cat = |p: &str| {
        let url = format!("nfs://127.0.0.1{p}?nfsport={port}&mountport={port}&version=3");
        libnfs("nfs-cat", &[&url])
    };
    let got = cat("/backup/.snapshots/s1/etc/conf.d/1.conf");
    assert_eq!(String::from_utf8_lossy(&got.stdout), "key1 = 1\n");
    // A new snapshot is replicated while the DR site serves: it appears there.
    std::fs::write(src.join("etc/conf.d/1.conf"), "changed\n").unwrap();
    import_snapshot(&cfg, &src, "s2", true);
    run(&cfg, &["replicate", "backup", "--to", "dr"]);
    let t0 = Instant::now();
    loop {
        let got = cat("/backup/.snapshots/s2/etc/conf.d/1.conf");
        if got.status.success() {
            assert_eq!(String::from_utf8_lossy(&got.stdout), "changed\n");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "s2 never appeared at the DR site"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    serve.kill().unwrap();
    serve.wait().unwrap();
}
