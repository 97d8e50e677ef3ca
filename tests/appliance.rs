//! The appliance while it serves: snapshot jobs through the control API and the CLI
//! with a client writing through a real NFS client, the freeze holding (not failing)
//! its writes, hooks and limits that abort and thaw, holds and locks, status, the job
//! history, and a clean stop in the middle of a job.

mod common;

use common::*;
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioConnector;
use nfs3_client::Nfs3ConnectionBuilder;
use serde_json::{json, Value};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One record of the writer's log: its sequence number, fixed width.
const REC: usize = 16;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn api(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let req = ureq::request(method, &format!("{}{path}", d.api));
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// One volume's entry in a `/status` reply.
fn volume_of(status: &Value, name: &str) -> Value {
    status["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name} in {status}"))
        .clone()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A client appending fixed-size records to `/log` of the volume, each WRITE (UNSTABLE,
/// as backup clients write) acknowledged before the next; it notes when each was acknowledged. Stops at
/// `stop`, after `max` records, or after 60 s.
struct Writer {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// A write failed (or the connection ended).
    failed: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<i64>>>,
}

impl Writer {
    fn start(port: u16, max: usize) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicBool::new(false));
        let (s, a, e) = (stop.clone(), acks.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let conn = Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", "/backup")
                    .connect_from_privileged_port(false)
                    .mount_port(port)
                    .nfs3_port(port)
                    .credential(opaque_auth::auth_unix(&auth_unix {
                        stamp: 1,
                        machinename: Opaque::borrowed(b"writer"),
                        uid: 0,
                        gid: 0,
                        gids: vec![],
                    }))
                    .mount()
                    .await
                    .expect("mount");
                let root = conn.root_nfs_fh3();
                let mut c = conn.into_nfs3_client();
                let fh = match c
                    .create(&CREATE3args {
                        where_: diropargs3 {
                            dir: root,
                            name: filename3(Opaque::borrowed(b"log")),
                        },
                        how: createhow3::UNCHECKED(sattr3::default()),
                    })
                    .await
                    .unwrap()
                {
                    Nfs3Result::Ok(r) => r.obj.unwrap(),
                    Nfs3Result::Err((e, _)) => panic!("create: {e:?}"),
                };
                let t0 = Instant::now();
                for i in 0..max {
                    if s.load(Ordering::Relaxed) || t0.elapsed() > Duration::from_secs(60) {
                        break;
                    }
                    let rec = format!("{i:015}\n");
                    // Bounded: a client whose server went away may never answer.
                    let r = tokio::time::timeout(
                        Duration::from_secs(20),
                        c.write(&WRITE3args {
                            file: fh.clone(),
                            offset: (i * REC) as u64,
                            count: REC as u32,
                            stable: stable_how::UNSTABLE,
                            data: Opaque::borrowed(rec.as_bytes()),
                        }),
                    )
                    .await;
                    // A daemon that stops ends the writer; tests that keep the
                    // daemon check that every record was acknowledged.
                    match r {
                        Ok(Ok(Nfs3Result::Ok(_))) => a.lock().unwrap().push(now_ms()),
                        _ => {
                            e.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            });
        });
        Writer {
            thread: Some(thread),
            stop,
            failed,
            acks,
        }
    }

    fn count(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    fn finish(mut self) -> Vec<i64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.acks.lock().unwrap().clone()
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks a snapshot of the writer's log against the writer's acknowledgements: the
/// snapshot holds records 0..k exactly, every record acknowledged before the gate
/// closed is among them, and the first one missing was acknowledged after it closed.
fn check_prefix(log: &[u8], acks: &[i64], frozen_at: i64, snap: &str) -> usize {
    assert_eq!(log.len() % REC, 0, "{snap}: a torn record");
    let k = log.len() / REC;
    for (i, rec) in log.chunks(REC).enumerate() {
        assert_eq!(rec, format!("{i:015}\n").as_bytes(), "{snap}: record {i}");
    }
    let before = acks.iter().filter(|&&t| t < frozen_at).count();
    assert!(
        before <= k,
        "{snap}: {before} records acknowledged before the freeze, only {k} in the snapshot"
    );
    if let Some(&t) = acks.get(k) {
        assert!(
            t >= frozen_at,
            "{snap}: record {k} acknowledged at {t}, before the freeze at {frozen_at}, is missing"
        );
    }
    k
}

/// A test config (fixed NFS port, ephemeral API) with `tables` (e.g. `[volume.NAME]`
/// sections) among its top-level tables.
fn config_with_tables(dir: &std::path::Path, tables: &str) -> std::path::PathBuf {
    let c = config_fixed_port(dir, "");
    let t = std::fs::read_to_string(&c).unwrap();
    std::fs::write(&c, t.replace("[api]", &format!("{tables}\n\n[api]"))).unwrap();
    c
}

fn nfs_cat(d: &Daemon, path: &str) -> Vec<u8> {
    let o = libnfs("nfs-cat", &[&d.url(path)]);
    assert!(o.status.success(), "nfs-cat {path}: {}", text(&o));
    o.stdout
}

/// The freeze holds a continuously writing client's calls: each snapshot is exactly
/// what was acknowledged before its freeze, nothing after, and the client never sees an
/// error. Snapshots through the API and the CLI alike; GC and verify run meanwhile.
/// A real freeze lasts about a millisecond, too short to be sure a call arrives in it,
/// so the capture is made to start 200 ms into the freeze here.
#[test]
fn freeze_holds_writes_and_snapshots_are_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_fixed_port(tmp.path(), "");
    let d = Daemon::process(&cfg, &[("KURA_TEST_FREEZE_DELAY_MS", "200")]);
    let w = Writer::start(d.port, 200_000);
    wait_for("the writer to start", || w.count() > 50);
    let mut jobs = Vec::new();
    for i in 0..4 {
        let before = w.count();
        let job = if i % 2 == 0 {
            let (st, v) = api(
                &d,
                "POST",
                "/volumes/backup/snapshots",
                Some(json!({ "name": format!("s{i}"), "label": "test" })),
            );
            assert_eq!(st, 201, "{v}");
            assert_eq!(v["result"]["name"], format!("s{i}"));
            v["job"].clone()
        } else {
            let o = kura_output(
                &cfg,
                &["snapshot", "create", "backup", "--name", &format!("s{i}")],
            );
            assert!(o.status.success(), "{}", text(&o));
            let (_, v) = api(&d, "GET", "/jobs?volume=backup&limit=1", None);
            v[0].clone()
        };
        assert_eq!(job["result"], "ok", "{job}");
        jobs.push(job);
        // Maintenance while the client writes.
        if i == 1 {
            let (st, v) = api(&d, "POST", "/gc", Some(json!({ "dry_run": false })));
            assert_eq!(st, 200, "{v}");
            let (st, v) = api(&d, "POST", "/verify", None);
            assert_eq!(st, 200, "{v}");
            assert_eq!(v["result"]["clean"], true, "{v}");
        }
        wait_for("the writer to go on after the thaw", || {
            w.count() > before + 20
        });
    }
    assert!(!w.failed(), "a write failed during the snapshots");
    let acks = w.finish();
    assert!(acks.len() > 100, "the writer made progress: {}", acks.len());
    let mut held_any = false;
    for (i, job) in jobs.iter().enumerate() {
        let log = nfs_cat(&d, &format!("/backup/.snapshots/s{i}/log"));
        let frozen_at = job["frozen_at_ms"].as_i64().unwrap();
        let k = check_prefix(&log, &acks, frozen_at, &format!("s{i}"));
        assert!(k > 0 && k < acks.len(), "s{i} holds {k} of {}", acks.len());
        held_any |= job["window_ms"].as_u64().unwrap() >= 100;
        assert!(job["freeze_ms"].as_u64().unwrap() >= job["window_ms"].as_u64().unwrap());
    }
    assert!(held_any, "the writer was never held: {jobs:?}");
    // Nothing acknowledged was lost in the live file.
    let live = nfs_cat(&d, "/backup/log");
    assert_eq!(check_prefix(&live, &acks, i64::MAX, "live"), acks.len());
    let (_, st) = api(&d, "GET", "/status", None);
    assert_eq!(st["volumes"][0]["snapshots"], 4, "{st}");
    assert_eq!(st["volumes"][0]["frozen"], false);
    // Prometheus metrics: calls by procedure, jobs by result, freeze windows, RPO age.
    let (st, m) = api(&d, "GET", "/metrics", None);
    assert_eq!(st, 200);
    let m = m.as_str().unwrap().to_owned();
    for want in [
        "kura_nfs_call_seconds_count{procedure=\"write\"}",
        "kura_jobs_total{kind=\"snapshot\",result=\"ok\"} 4",
        "kura_freeze_window_seconds_count 4",
        "kura_rpo_age_seconds{volume=\"backup\"}",
        "kura_staged_files",
    ] {
        assert!(m.contains(want), "{want} not in\n{m}");
    }
}

/// Every step of the job failing in turn: the job records why, the volume is never
/// left frozen, post-thaw hooks still run and are told the result.
#[test]
fn failures_abort_and_thaw() {
    let tmp = tempfile::tempdir().unwrap();
    let marks = tmp.path().join("marks");
    let post = format!(
        "echo \"post $KURA_SNAPSHOT $KURA_RESULT\" >> {}",
        marks.display()
    );
    let cfg_with = |volume: &str| {
        config_with_tables(
            tmp.path(),
            &format!("[volume.backup]\npost_thaw = {post:?}\n{volume}"),
        )
    };
    let run_job_env = |cfg: &std::path::Path, name: &str, env: &[(&str, &str)]| -> Value {
        let d = if env.is_empty() {
            Daemon::start(cfg, &[])
        } else {
            Daemon::process(cfg, env)
        };
        let w = Writer::start(d.port, 100_000);
        wait_for("the writer", || w.count() > 20);
        let (st, v) = api(
            &d,
            "POST",
            "/volumes/backup/snapshots",
            Some(json!({ "name": name })),
        );
        // Whatever happened, the writer goes on: nothing is left frozen.
        let n = w.count();
        wait_for("writes after the job", || w.count() > n + 20);
        let (_, vols) = api(&d, "GET", "/volumes", None);
        assert_eq!(vols[0]["frozen"], false);
        assert!(!w.failed(), "a write failed");
        drop(w);
        let _ = st;
        v
    };
    let run_job = |cfg: &std::path::Path, name: &str| run_job_env(cfg, name, &[]);

    // A failing pre-freeze hook aborts before the freeze.
    let cfg = cfg_with("pre_freeze = \"echo checkpoint failed >&2; exit 7\"");
    let v = run_job(&cfg, "h1");
    assert_eq!(v["job"]["result"], "failed", "{v}");
    assert!(
        v["job"]["error"].as_str().unwrap().contains("status 7"),
        "{v}"
    );
    assert!(v["job"]["output"]
        .as_str()
        .unwrap()
        .contains("checkpoint failed"));
    assert!(v["job"]["freeze_ms"].is_null(), "never frozen: {v}");

    // A hook past its timeout is killed; the job aborts.
    let cfg = cfg_with("pre_freeze = \"sleep 30\"\nhook_timeout_secs = 1");
    let t0 = Instant::now();
    let v = run_job(&cfg, "h2");
    assert!(
        v["job"]["error"].as_str().unwrap().contains("timed out"),
        "{v}"
    );
    assert!(t0.elapsed() < Duration::from_secs(20));

    // A freeze past the volume's limit cancels the snapshot and thaws (the capture is
    // made to start late inside the freeze).
    let cfg = cfg_with("freeze_limit_secs = 0.05");
    let v = run_job_env(&cfg, "h3", &[("KURA_TEST_FREEZE_DELAY_MS", "500")]);
    assert_eq!(v["job"]["result"], "aborted", "{v}");
    assert!(v["result"].is_null());

    // A snapshot that fails inside the freeze (its name is taken) thaws too.
    let cfg = cfg_with("");
    let d = Daemon::start(&cfg, &[]);
    assert_eq!(
        api(
            &d,
            "POST",
            "/volumes/backup/snapshots",
            Some(json!({ "name": "x" }))
        )
        .0,
        201
    );
    let (st, v) = api(
        &d,
        "POST",
        "/volumes/backup/snapshots",
        Some(json!({ "name": "x" })),
    );
    assert_eq!(st, 422, "{v}");
    assert!(
        v["job"]["error"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{v}"
    );
    let (_, vols) = api(&d, "GET", "/volumes", None);
    assert_eq!(vols[0]["frozen"], false);
    // Bad requests are refused with a reason and change nothing.
    let (st, v) = api(&d, "POST", "/volumes/nope/snapshots", None);
    assert_eq!(st, 404, "{v}");
    let (st, v) = api(
        &d,
        "POST",
        "/volumes/backup/snapshots",
        Some(json!({ "name": "../x" })),
    );
    assert!(st == 400 || st == 422, "{st} {v}");
    let (st, _) = api(
        &d,
        "POST",
        "/volumes/backup/snapshots",
        Some(json!({ "bogus": 1 })),
    );
    assert_eq!(st, 422);
    let (st, _) = api(&d, "GET", "/no/such/endpoint", None);
    assert_eq!(st, 404);
    let (_, snaps) = api(&d, "GET", "/volumes/backup/snapshots", None);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    drop(d);

    // Post-thaw hooks ran every time the job got past its start, told the result.
    let m = std::fs::read_to_string(&marks).unwrap();
    for want in [
        "post h1 failed",
        "post h2 failed",
        "post h3 aborted",
        "post x ok",
        "post x failed",
    ] {
        assert!(m.lines().any(|l| l == want), "{want:?} not in {m}");
    }
}

/// Holds, locks, status and the RPO check, the job history and clone, from the CLI
/// while the daemon serves.
#[test]
fn operator_commands_while_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_with_tables(
        tmp.path(),
        "[volume.backup]\nrpo = \"3s\"\n\n[volume.locked]\nlock_days = 7",
    );
    let d = Daemon::start(&cfg, &[]);
    let ok = |args: &[&str]| {
        let o = kura_output(&cfg, args);
        assert!(o.status.success(), "kura {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let fails = |args: &[&str]| {
        let o = kura_output(&cfg, args);
        assert!(
            !o.status.success(),
            "kura {args:?} should fail: {}",
            text(&o)
        );
        text(&o)
    };
    // No snapshot yet and an RPO set: status says so and exits non-zero.
    let s = fails(&["status"]);
    assert!(s.contains("PROBLEM: volume backup: no snapshot yet"), "{s}");
    py(
        d.port,
        "with c.open('/f', 'wb') as f: f.write(b'data' * 1000)\n",
    );
    let out = ok(&["snapshot", "create", "backup", "--label", "before upgrade"]);
    assert!(out.starts_with("snapshot backup@20"), "{out}");
    let list: Value = serde_json::from_str(&ok(&["snapshot", "list", "backup", "--json"])).unwrap();
    let name = list[0]["name"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["label"], "before upgrade");
    assert!(list[0]["created_iso"].as_str().unwrap().ends_with('Z'));
    let human = ok(&["snapshot", "list"]);
    assert!(
        human.contains("KiB") && human.contains("before upgrade"),
        "{human}"
    );
    let s = ok(&["status"]);
    assert!(s.contains("no problems"), "{s}");
    // Held: delete refused with the reason; released: deleted.
    ok(&["snapshot", "hold", "backup", &name]);
    assert!(fails(&["snapshot", "delete", "backup", &name]).contains("held"));
    ok(&["snapshot", "release", "backup", &name]);
    // Clone: served at once, writable, the snapshot intact.
    ok(&["clone", "backup", &name, "restored"]);
    py(
        d.port,
        "r = nfs_rs.Client.connect(URL.replace('/backup', '/restored'), uid=0, gid=0, noresvport=True)\n\
         assert r.open('/f', 'rb').read() == b'data' * 1000\n\
         with r.open('/new', 'wb') as f: f.write(b'x')\n",
    );
    ok(&["snapshot", "delete", "backup", &name]);
    // Locked by the volume's lock_days: nobody deletes it.
    ok(&["snapshot", "create", "locked", "l1"]);
    let e = fails(&["snapshot", "delete", "locked", "l1"]);
    assert!(e.contains("locked for"), "{e}");
    // The RPO is missed: the only snapshot of backup was deleted; then its newest is too old.
    let s = fails(&["status"]);
    assert!(s.contains("PROBLEM: volume backup"), "{s}");
    ok(&["snapshot", "create", "backup", "fresh"]);
    std::thread::sleep(Duration::from_millis(4500));
    let st: Value = serde_json::from_str(&{
        let o = kura_output(&cfg, &["status", "--json"]);
        assert_eq!(o.status.code(), Some(1));
        String::from_utf8_lossy(&o.stdout).into_owned()
    })
    .unwrap();
    let b = &volume_of(&st, "backup");
    assert_eq!(b["rpo_ok"], false, "{b}");
    assert!(b["newest_snapshot_age_secs"].as_i64().unwrap() >= 4);
    // A restore test reads and checks the newest snapshot; status turns it into an RTO.
    let rt = ok(&["restore-test", "backup"]);
    assert!(rt.contains("restore-test") && rt.contains("MB/s"), "{rt}");
    let st: Value =
        serde_json::from_slice(&kura_output(&cfg, &["status", "--json"]).stdout).unwrap();
    let b = &volume_of(&st, "backup");
    assert!(b["restore_mb_s"].as_f64().unwrap() > 0.0, "{b}");
    assert!(b["estimated_rto_secs"].as_u64().is_some(), "{b}");
    let e = kura_output(&cfg, &["restore-test", "nope"]);
    assert!(!e.status.success());
    // A sample: some of the files, not all, and said so.
    py(
        d.port,
        "for i in range(60):\n    with c.open(f'/many{i}', 'wb') as f: f.write(bytes([i]) * 5000)\n",
    );
    ok(&["snapshot", "create", "backup", "many"]);
    let rt = ok(&["restore-test", "backup", "--sample", "30"]);
    assert!(rt.contains("a 30% sample"), "{rt}");
    let files: u64 = rt
        .split_whitespace()
        .zip(rt.split_whitespace().skip(1))
        .find(|(_, w)| *w == "files,")
        .map(|(n, _)| n.parse().unwrap())
        .unwrap();
    assert!(
        (3..=45).contains(&files),
        "{files} of 62 files sampled: {rt}"
    );
    assert!(fails(&["restore-test", "backup", "--sample", "0"]).contains("outside 1..=100"));
    // The history, newest first, readable and as JSON.
    let jobs = ok(&["jobs", "--volume", "backup"]);
    assert!(
        jobs.lines().count() >= 2 && jobs.contains("snapshot"),
        "{jobs}"
    );
    let j: Value = serde_json::from_str(&ok(&["jobs", "--json", "--limit", "1"])).unwrap();
    assert_eq!(j.as_array().unwrap().len(), 1);
    let gc = ok(&["gc", "--dry-run"]);
    assert!(gc.starts_with("[dry run]"), "{gc}");
    assert!(ok(&["verify"]).contains("checked"));
    assert!(ok(&["volume", "list"])
        .lines()
        .any(|l| l.starts_with("restored\t")));
    drop(d);
    // The same commands with no daemon open the store directly.
    assert!(ok(&["snapshot", "list", "locked"]).contains("locked@l1"));
    assert!(ok(&["jobs"]).contains("snapshot"));
}

/// `kura config check` prints the resolved config, or the first error with the key.
#[test]
fn config_check() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_fixed_port(tmp.path(), "");
    let o = kura_output(&cfg, &["config", "check"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("root_squash = false") && out.contains("[api]"),
        "{out}"
    );
    for (bad, key) in [
        (
            "[volume.backup]\nfreeze_limit_secs = 0\n",
            "volume.backup.freeze_limit_secs",
        ),
        ("[volume.backup]\nrpo = \"soon\"\n", "volume.backup.rpo"),
        ("[volume.backup]\npre_freez = \"x\"\n", "pre_freez"),
        ("[hooks]\npost_thaw = \"  \"\n", "hooks.post_thaw"),
        ("[api]\nlisten = \"nowhere\"\n", "api.listen"),
    ] {
        let p = tmp.path().join("bad.toml");
        std::fs::write(&p, bad).unwrap();
        let o = kura_output(&p, &["config", "check"]);
        assert!(!o.status.success());
        let e = text(&o);
        assert!(e.contains(key) && e.contains("bad.toml"), "{bad:?}: {e}");
    }
}

/// SIGTERM in the middle of a snapshot job: the job finishes (its hooks included), the
/// daemon exits 0, nothing acknowledged is lost, and the job is in the history.
#[test]
fn sigterm_during_a_job() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_with_tables(tmp.path(), "[volume.backup]\npre_freeze = \"sleep 1\"");
    let mut d = Daemon::process(&cfg, &[]);
    let w = Writer::start(d.port, 100_000);
    wait_for("the writer", || w.count() > 20);
    let url = format!("{}/volumes/backup/snapshots", d.api);
    let job = std::thread::spawn(move || {
        ureq::post(&url)
            .send_json(json!({ "name": "during-stop" }))
            .map(|r| r.status())
            .map_err(|e| e.to_string())
    });
    std::thread::sleep(Duration::from_millis(300));
    d.stop();
    let acks = w.finish();
    assert_eq!(job.join().unwrap(), Ok(201));
    let o = kura_output(&cfg, &["jobs", "--json"]);
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j[0]["snapshot"], "during-stop");
    assert_eq!(j[0]["result"], "ok");
    let d = Daemon::start(&cfg, &[]);
    let live = nfs_cat(&d, "/backup/log");
    assert!(live.len() / REC >= acks.len(), "acknowledged records lost");
    let snap = nfs_cat(&d, "/backup/.snapshots/during-stop/log");
    check_prefix(
        &snap,
        &acks,
        j[0]["frozen_at_ms"].as_i64().unwrap(),
        "during-stop",
    );
}

/// Schedules in the daemon: a slot missed while it was down runs once at start, a quiet
/// wait snapshots once the volume is quiet (or marks the snapshot busy past max_wait),
/// and retention prunes after each snapshot; `kura prune --dry-run` shows the plan.
#[test]
fn schedules_quiet_wait_and_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_with_tables(
        tmp.path(),
        "[volume.backup]\nschedule = [\"0 3 * * *\"]\ntimezone = \"Europe/Berlin\"\nquiet_secs = 1\nkeep_last = 2\n\n\
         [volume.busy]\nschedule = [\"0 3 * * *\"]\nquiet_secs = 600\nmax_wait = \"2s\"",
    );
    let d = Daemon::start(&cfg, &[]);
    // A writer keeps `busy` from ever being quiet.
    let busy_writer = {
        let port = d.port;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            let t0 = Instant::now();
            while !s.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(30) {
                let o = libnfs(
                    "nfs-ls",
                    &[&format!(
                        "nfs://127.0.0.1/busy?nfsport={port}&mountport={port}&version=3"
                    )],
                );
                assert!(o.status.success());
                let src = std::env::temp_dir().join(format!("kura-busy-{port}"));
                std::fs::write(&src, b"x").unwrap();
                let _ = libnfs(
                    "nfs-cp",
                    &[
                        src.to_str().unwrap(),
                        &format!(
                            "nfs://127.0.0.1/busy/f{}?nfsport={port}&mountport={port}&version=3",
                            t0.elapsed().as_micros()
                        ),
                    ],
                );
            }
        });
        (stop, h)
    };
    // Never ran: the missed 03:00 slots run once each, after their quiet waits.
    wait_for("the scheduled snapshots", || {
        let (_, v) = api(&d, "GET", "/snapshots", None);
        v.as_array().unwrap().len() >= 2
    });
    busy_writer.0.store(true, Ordering::Relaxed);
    busy_writer.1.join().unwrap();
    let (_, v) = api(&d, "GET", "/snapshots", None);
    let snaps = v.as_array().unwrap();
    let backup: Vec<&Value> = snaps.iter().filter(|s| s["volume"] == "backup").collect();
    let busy: Vec<&Value> = snaps.iter().filter(|s| s["volume"] == "busy").collect();
    assert_eq!((backup.len(), busy.len()), (1, 1), "{v}");
    assert_eq!(backup[0]["busy"], false);
    assert!(backup[0]["label"]
        .as_str()
        .unwrap()
        .starts_with("scheduled"));
    assert_eq!(busy[0]["busy"], true, "past max_wait while written: busy");
    // Retention: keep_last = 2 prunes after each new snapshot.
    for n in ["m1", "m2", "m3"] {
        let (st, _) = api(
            &d,
            "POST",
            "/volumes/backup/snapshots",
            Some(json!({ "name": n })),
        );
        assert_eq!(st, 201);
    }
    let (_, v) = api(&d, "GET", "/volumes/backup/snapshots", None);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["m2", "m3"]);
    // Held: kept by any plan. The dry run says why each stays.
    assert_eq!(
        api(&d, "POST", "/volumes/backup/snapshots/m2/hold", None).0,
        200
    );
    assert_eq!(
        api(
            &d,
            "POST",
            "/volumes/backup/snapshots",
            Some(json!({ "name": "m4" }))
        )
        .0,
        201
    );
    let out = kura_output(&cfg, &["prune", "backup", "--dry-run"]);
    let out = text(&out);
    assert!(
        out.contains("backup@m2") && out.contains("keep (held)"),
        "{out}"
    );
    assert!(
        out.contains("backup@m4") && out.contains("keep (last)"),
        "{out}"
    );
    let (_, j) = api(&d, "GET", "/jobs?volume=backup", None);
    assert!(
        j.as_array()
            .unwrap()
            .iter()
            .any(|j| j["kind"] == "prune" && j["output"].as_str().unwrap().contains("deleted")),
        "{j}"
    );
}

/// `kura snapshot diff`: added, removed and changed paths with sizes, unchanged
/// subtrees skipped.
#[test]
fn snapshot_diff() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_fixed_port(tmp.path(), "");
    let d = Daemon::start(&cfg, &[]);
    py(
        d.port,
        "c.mkdir('/same')\nwith c.open('/same/x', 'wb') as f: f.write(b'x' * 100)\n\
         c.mkdir('/d')\nwith c.open('/d/keep', 'wb') as f: f.write(b'k')\n\
         with c.open('/d/grow', 'wb') as f: f.write(b'g' * 10)\n\
         with c.open('/gone', 'wb') as f: f.write(b'bye')\n",
    );
    assert!(kura_output(&cfg, &["snapshot", "create", "backup", "a"])
        .status
        .success());
    py(
        d.port,
        "with c.open('/d/grow', 'ab') as f: f.write(b'more')\n\
         c.remove('/gone')\nc.mkdir('/new')\nwith c.open('/new/f', 'wb') as f: f.write(b'12345')\n",
    );
    assert!(kura_output(&cfg, &["snapshot", "create", "backup", "b"])
        .status
        .success());
    let o = kura_output(&cfg, &["snapshot", "diff", "backup", "a", "b", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let got: Vec<(String, String, Option<u64>, Option<u64>)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap().to_owned(),
                c["path"].as_str().unwrap().to_owned(),
                c["size_before"].as_u64(),
                c["size_after"].as_u64(),
            )
        })
        .collect();
    let want = vec![
        ("changed".into(), "/d/grow".into(), Some(10), Some(14)),
        ("removed".into(), "/gone".into(), Some(3), None),
        ("added".into(), "/new".into(), None, None),
        ("added".into(), "/new/f".into(), None, Some(5)),
    ];
    assert_eq!(got, want);
    let human = text(&kura_output(
        &cfg,
        &["snapshot", "diff", "backup", "a", "b"],
    ));
    assert!(
        human.contains("M /d/grow") && human.contains("- /gone"),
        "{human}"
    );
    let e = kura_output(&cfg, &["snapshot", "diff", "backup", "a", "nope"]);
    assert!(!e.status.success() && text(&e).contains("nope"));
}

/// The platform snapshot (the KCPS pattern in its literal form): with a client writing,
/// the store-wide command (here `cp -a` of the data directory) runs while every volume is
/// frozen and the store is durable on disk. The copy opens as a store, verifies clean,
/// and holds exactly what was acknowledged before the freeze. A failing or hanging
/// command fails the job and thaws everything.
#[test]
fn platform_snapshot_copies_a_consistent_store() {
    let tmp = tempfile::tempdir().unwrap();
    let copy_dir = tmp.path().join("copy");
    std::fs::create_dir(&copy_dir).unwrap();
    let copy_cfg = config_fixed_port(&copy_dir, "");
    let ctl = tmp.path().join("ctl");
    let cfg = config_with_tables(
        tmp.path(),
        &format!(
            "[platform_snapshot]\ntimeout_secs = 2\ncommand = '''\ncase \"$(cat {ctl:?} 2>/dev/null)\" in\n  fail) echo refusing; exit 3 ;;\n  hang) sleep 30 ;;\nesac\necho \"phase=$KURA_PHASE\"\ncp -a \"$KURA_DATA_DIR\" {:?}\n'''",
            copy_dir.join("store")
        ),
    );
    let d = Daemon::start(&cfg, &[]);
    let w = Writer::start(d.port, 200_000);
    wait_for("the writer to start", || w.count() > 50);

    // A failing and a hanging command: the job fails with the reason, nothing stays
    // frozen, the writer goes on.
    for (mode, why) in [("fail", "status 3"), ("hang", "timed out")] {
        std::fs::write(&ctl, mode).unwrap();
        let before = w.count();
        let (st, v) = api(&d, "POST", "/platform-snapshot", None);
        assert_eq!(st, 422, "{v}");
        assert_eq!(v["result"], "failed", "{v}");
        let err = v["error"].as_str().unwrap();
        assert!(err.contains(why), "{mode}: {err}");
        let (_, s) = api(&d, "GET", "/status", None);
        assert_eq!(s["volumes"][0]["frozen"], false, "{s}");
        wait_for("the writer to go on after the thaw", || {
            w.count() > before + 20
        });
    }
    assert!(!copy_dir.join("store").exists());

    std::fs::write(&ctl, "copy").unwrap();
    let o = kura(&cfg, &["platform-snapshot"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("phase=platform-snapshot"), "{out}");
    let (_, jobs) = api(&d, "GET", "/jobs?limit=1", None);
    let job = jobs[0].clone();
    assert_eq!(job["kind"], "platform-snapshot", "{job}");
    assert_eq!(job["result"], "ok", "{job}");
    let frozen_at = job["frozen_at_ms"].as_i64().unwrap();
    let before = w.count();
    wait_for("the writer to go on after the thaw", || {
        w.count() > before + 20
    });
    assert!(!w.failed(), "a write failed during the platform snapshot");
    let acks = w.finish();

    // The copy is a store of its own: verify is clean, and its live file holds exactly
    // what was acknowledged before the freeze.
    let o = kura(&copy_cfg, &["verify"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("checked"),
        "{}",
        text(&o)
    );
    let c = Daemon::start(&copy_cfg, &[]);
    let log = nfs_cat(&c, "/backup/log");
    let k = check_prefix(&log, &acks, frozen_at, "copy");
    assert!(
        k > 50 && k < acks.len(),
        "the copy holds {k} of {}",
        acks.len()
    );
    // The original goes on untouched.
    let live = nfs_cat(&d, "/backup/log");
    assert_eq!(check_prefix(&live, &acks, i64::MAX, "live"), acks.len());
}

/// `status` per volume: staged files and bytes before ingest; after GC, the stored
/// bytes each volume reaches, what it alone holds, and its reduction ratio (a file
/// shared by two volumes is stored once and owned by neither).
#[test]
fn status_shows_stored_staged_and_owned_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_fixed_port_staged(tmp.path());
    let t = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        t.replace(
            "volumes = [\"backup\"]",
            "volumes = [\"backup\", \"other\"]",
        ),
    )
    .unwrap();
    let d = Daemon::start(&cfg, &[]);
    let shared = tmp.path().join("shared.bin");
    let own = tmp.path().join("own.bin");
    // Incompressible data, so that stored bytes are plain bytes.
    for (f, len, seed) in [(&shared, 3usize << 20, 1u8), (&own, 2 << 20, 2)] {
        let mut data = vec![0u8; len];
        blake3::Hasher::new()
            .update(&[seed])
            .finalize_xof()
            .fill(&mut data);
        std::fs::write(f, data).unwrap();
    }
    for (f, vol) in [(&shared, "backup"), (&shared, "other"), (&own, "backup")] {
        let name = f.file_name().unwrap().to_str().unwrap();
        let o = libnfs(
            "nfs-cp",
            &[f.to_str().unwrap(), &d.url(&format!("/{vol}/{name}"))],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    let vol = volume_of;
    let (_, s) = api(&d, "GET", "/status", None);
    assert_eq!(vol(&s, "backup")["staged_files"], 2, "{s}");
    assert_eq!(vol(&s, "backup")["staged_bytes"], 5 << 20, "{s}");
    assert_eq!(vol(&s, "other")["staged_bytes"], 3 << 20, "{s}");
    let first_usage = vol(&s, "backup")["usage_at"].clone();
    assert!(first_usage.is_string(), "measured at the first status: {s}");
    kura(&cfg, &["snapshot", "create", "backup", "--name", "s1"]);
    kura(&cfg, &["snapshot", "create", "other", "--name", "s1"]);
    let (_, s) = api(&d, "GET", "/status", None);
    assert_eq!(vol(&s, "backup")["staged_bytes"], 0, "{s}");
    std::thread::sleep(Duration::from_millis(1100));
    kura(&cfg, &["gc"]);
    let mut s = Value::Null;
    wait_for("usage measured after GC", || {
        s = api(&d, "GET", "/status", None).1;
        vol(&s, "backup")["usage_at"] != first_usage
    });
    let (b, o) = (vol(&s, "backup"), vol(&s, "other"));
    let mib = |v: &Value, k: &str| v[k].as_u64().unwrap() as f64 / (1 << 20) as f64;
    // Random data does not compress: stored ≈ plain, each chunk once per volume.
    assert!((5.0..5.2).contains(&mib(&b, "stored_bytes")), "{b}");
    assert!((3.0..3.2).contains(&mib(&o, "stored_bytes")), "{o}");
    // The shared file belongs to neither; only `own.bin` (and directories) to backup.
    assert!(
        (2.0..2.2).contains(&mib(&b, "exclusive_stored_bytes")),
        "{b}"
    );
    assert!(mib(&o, "exclusive_stored_bytes") < 0.1, "{o}");
    // Live file and its snapshot: twice the logical bytes per stored byte.
    let r = b["reduction_ratio"].as_f64().unwrap();
    assert!((1.9..2.01).contains(&r), "{b}");
    let out = kura(&cfg, &["status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("STORED") && table.contains("2.0x"),
        "{table}"
    );
    let (_, m) = api(&d, "GET", "/metrics", None);
    let m = m.as_str().unwrap().to_owned();
    for want in [
        "kura_volume_stored_bytes{volume=\"backup\"}",
        "kura_volume_staged_bytes{volume=\"other\"} 0",
        "kura_read_cache_bytes ",
    ] {
        assert!(m.contains(want), "{want} not in\n{m}");
    }
}
