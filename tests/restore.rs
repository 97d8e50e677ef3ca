//! `kura restore`: a snapshot back into a directory (and as a tar) byte for byte with
//! modes, owners, times, symlinks and hard links, while the daemon serves and when it
//! does not; `--at`; a damaged chunk named and the rest restored; hostile tar entries
//! refused.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

const TREE: &str = r#"
c.mkdir('/db', 0o750)
data = bytes((i * 7 + (i >> 12)) % 251 for i in range(3_000_000))
with c.open('/db/dump.sql', 'wb') as f: f.write(data)
c.chmod('/db/dump.sql', 0o640)
c.chown('/db/dump.sql', 123, 456)
c.utime('/db/dump.sql', ns=(1_600_000_000_000_000_000, 1_700_000_000_000_000_000))
c.link('/db/dump.sql', '/db/dump.link')
c.symlink('db/dump.sql', '/latest')
c.touch('/empty')
c.mkdir('/a')
c.mkdir('/a/b')
with c.open('/a/b/deep.txt', 'wb') as f: f.write(b'deep\n')
c.utime('/a/b/deep.txt', ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
c.utime('/db', ns=(1_650_000_000_000_000_000, 1_650_000_000_000_000_000))
"#;

fn check_tree(root: &Path) {
    let dump = root.join("db/dump.sql");
    let data: Vec<u8> = (0..3_000_000u64)
        .map(|i| ((i * 7 + (i >> 12)) % 251) as u8)
        .collect();
    assert_eq!(std::fs::read(&dump).unwrap(), data);
    let m = std::fs::metadata(&dump).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!(m.mtime(), 1_700_000_000);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } == 0 {
        assert_eq!((m.uid(), m.gid()), (123, 456));
    }
    let l = std::fs::metadata(root.join("db/dump.link")).unwrap();
    assert_eq!(
        (l.ino(), l.nlink()),
        (m.ino(), 2),
        "hard link restored as a link"
    );
    assert_eq!(
        std::fs::read_link(root.join("latest")).unwrap(),
        Path::new("db/dump.sql")
    );
    assert_eq!(std::fs::read(root.join("a/b/deep.txt")).unwrap(), b"deep\n");
    assert_eq!(std::fs::metadata(root.join("empty")).unwrap().len(), 0);
    let d = std::fs::metadata(root.join("db")).unwrap();
    assert_eq!(d.mode() & 0o7777, 0o750);
    assert_eq!(
        d.mtime(),
        1_650_000_000,
        "directory times set after their contents"
    );
}

/// The daemon's API token, from its data directory.
fn token(data: &Path) -> String {
    std::fs::read_to_string(data.join("api-token"))
        .unwrap()
        .trim()
        .to_owned()
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

#[test]
fn round_trip_live_offline_subtree_tar_and_at() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_fixed_port(tmp.path(), "");
    let mut d = Daemon::start(&cfg, &[]);
    py(
        d.port,
        &format!("c = nfs_rs.Client.connect(URL, uid=0, gid=0, noresvport=True)\n{TREE}"),
    );
    ok(kura_output(&cfg, &["snapshot", "create", "backup", "s1"]));
    // While the daemon serves.
    let out = tmp.path().join("r1");
    let o = ok(kura_output(
        &cfg,
        &["restore", "backup", "s1", "--to", out.to_str().unwrap()],
    ));
    let summary = String::from_utf8_lossy(&o.stderr);
    assert!(
        summary.contains("restored backup@s1") && summary.contains("1 hard links"),
        "{summary}"
    );
    check_tree(&out);
    let j = ok(kura_output(&cfg, &["jobs", "--json"]));
    assert!(
        String::from_utf8_lossy(&j.stdout).contains("\"restore\""),
        "the daemon's restore is a job"
    );
    // The daemon writes the files itself only for a caller with its token.
    let unauth = ureq::post(&format!("{}/volumes/backup/snapshots/s1/restore", d.api))
        .send_json(serde_json::json!({ "to": tmp.path().join("evil").to_str().unwrap() }));
    match unauth {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("restore without the token: {other:?}"),
    }
    assert!(!tmp.path().join("evil").exists());
    let rel = ureq::post(&format!("{}/volumes/backup/snapshots/s1/restore", d.api))
        .set("Authorization", &format!("Bearer {}", token(&d.data)))
        .send_json(serde_json::json!({ "to": "relative/dir" }));
    match rel {
        Err(ureq::Error::Status(400, r)) => {
            assert!(r.into_string().unwrap().contains("absolute"))
        }
        other => panic!("restore to a relative path: {other:?}"),
    }
    // --stream: the CLI writes the files from the daemon's tar, with its own rights.
    let streamed = tmp.path().join("r-stream");
    ok(kura_output(
        &cfg,
        &[
            "restore",
            "backup",
            "s1",
            "--stream",
            "--to",
            streamed.to_str().unwrap(),
        ],
    ));
    check_tree(&streamed);
    // Restoring again over it is fine (files are replaced).
    ok(kura_output(
        &cfg,
        &["restore", "backup", "s1", "--to", out.to_str().unwrap()],
    ));
    check_tree(&out);
    // As a tar on stdout: tar(1) reads it, without kura's report entry.
    let o = ok(kura_output(
        &cfg,
        &["restore", "backup", "s1", "--tar", "-"],
    ));
    let tarfile = tmp.path().join("s1.tar");
    std::fs::write(&tarfile, &o.stdout).unwrap();
    let list = Command::new("tar")
        .arg("-tvf")
        .arg(&tarfile)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("db/dump.sql") && list.contains("latest -> db/dump.sql"),
        "{list}"
    );
    assert!(!list.contains(".kura-restore-report"), "{list}");
    let x = tmp.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let st = Command::new("tar")
        .arg("-xpf")
        .arg(&tarfile)
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    check_tree(&x);
    // --at picks the newest snapshot at or before the time.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    py(
        d.port,
        "with c.open('/later', 'wb') as f: f.write(b'later')\n",
    );
    ok(kura_output(&cfg, &["snapshot", "create", "backup", "s2"]));
    let s1_time: serde_json::Value = serde_json::from_slice(
        &ok(kura_output(
            &cfg,
            &["snapshot", "show", "backup", "s1", "--json"],
        ))
        .stdout,
    )
    .unwrap();
    let at = s1_time["created_iso"].as_str().unwrap();
    let out_at = tmp.path().join("r-at");
    ok(kura_output(
        &cfg,
        &[
            "restore",
            "backup",
            "--at",
            at,
            "--to",
            out_at.to_str().unwrap(),
        ],
    ));
    assert!(!out_at.join("later").exists(), "--at {at} restored s2");
    check_tree(&out_at);
    let e = kura_output(
        &cfg,
        &[
            "restore",
            "backup",
            "--at",
            "2000-01-01T00:00:00Z",
            "--to",
            "/tmp/nope",
        ],
    );
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("no snapshot at or before"));
    // Not found: clear errors.
    let e = kura_output(
        &cfg,
        &[
            "restore",
            "backup",
            "s1",
            "no/such",
            "--to",
            out_at.to_str().unwrap(),
        ],
    );
    assert!(
        !e.status.success() && String::from_utf8_lossy(&e.stderr).contains("no/such")
            || String::from_utf8_lossy(&e.stderr).contains("no such")
    );
    d.stop();
    // With no daemon the CLI holds the store and writes the files itself (no tar
    // between): the same tree, again over it, and times to the nanosecond.
    let direct = tmp.path().join("r-direct");
    for _ in 0..2 {
        let o = ok(kura_output(
            &cfg,
            &["restore", "backup", "s1", "--to", direct.to_str().unwrap()],
        ));
        let summary = String::from_utf8_lossy(&o.stderr);
        assert!(summary.contains("1 hard links"), "{summary}");
        check_tree(&direct);
    }
    let deep = std::fs::metadata(direct.join("a/b/deep.txt")).unwrap();
    assert_eq!(
        (deep.mtime(), deep.mtime_nsec()),
        (1_600_000_000, 123_456_789)
    );
    // A subtree, and a single file.
    let sub = tmp.path().join("r2");
    ok(kura_output(
        &cfg,
        &[
            "restore",
            "backup",
            "s2",
            "a",
            "--to",
            sub.to_str().unwrap(),
        ],
    ));
    assert_eq!(std::fs::read(sub.join("b/deep.txt")).unwrap(), b"deep\n");
    let one = tmp.path().join("r3");
    ok(kura_output(
        &cfg,
        &[
            "restore",
            "backup",
            "s2",
            "later",
            "--to",
            one.to_str().unwrap(),
        ],
    ));
    assert_eq!(std::fs::read(one.join("later")).unwrap(), b"later");
    let j = ok(kura_output(&cfg, &["jobs", "--json"]));
    let j: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert!(j
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["kind"] == "restore" && j["result"] == "ok"));
}

/// A sparse file (a hole between two writes) comes back sparse from the direct
/// restores (the CLI holding the store, and the daemon writing), byte for byte.
#[test]
fn sparse_files_restore_sparse() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_fixed_port(tmp.path(), "");
    let mut d = Daemon::start(&cfg, &[]);
    py(
        d.port,
        "with c.open('/sparse', 'wb') as f:\n    f.write(b'head' * 1024)\n    f.seek(64 << 20)\n    f.write(b'tail' * 1024)\n",
    );
    ok(kura_output(&cfg, &["snapshot", "create", "backup", "s"]));
    let check = |dir: &Path| {
        let p = dir.join("sparse");
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), (64 << 20) + 4096);
        assert!(
            m.blocks() * 512 < 8 << 20,
            "{} bytes allocated for a file of two 4 KiB writes",
            m.blocks() * 512
        );
        let data = std::fs::read(&p).unwrap();
        assert_eq!(&data[..4096], "head".repeat(1024).as_bytes());
        assert!(data[4096..64 << 20].iter().all(|b| *b == 0));
        assert_eq!(&data[64 << 20..], "tail".repeat(1024).as_bytes());
    };
    let by_daemon = tmp.path().join("rd");
    ok(kura_output(
        &cfg,
        &[
            "restore",
            "backup",
            "s",
            "--to",
            by_daemon.to_str().unwrap(),
        ],
    ));
    check(&by_daemon);
    d.stop();
    let offline = tmp.path().join("ro");
    ok(kura_output(
        &cfg,
        &["restore", "backup", "s", "--to", offline.to_str().unwrap()],
    ));
    check(&offline);
}

/// A damaged pack: the files whose chunks are in it are named, the others restored,
/// exit code 1.
#[test]
fn damage_is_named_and_the_rest_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_fixed_port(tmp.path(), "");
    let mut d = Daemon::start(&cfg, &[]);
    py(
        d.port,
        "with c.open('/small', 'wb') as f: f.write(b'fine\\n')\n",
    );
    ok(kura_output(&cfg, &["ingest"]));
    let src = tmp.path().join("big");
    make_file(&src, 9 << 20, 5);
    assert!(
        libnfs("nfs-cp", &[src.to_str().unwrap(), &d.url("/backup/big")])
            .status
            .success()
    );
    ok(kura_output(&cfg, &["snapshot", "create", "backup", "s"]));
    d.stop();
    damage_largest_pack(&tmp.path().join("store"));
    let out = tmp.path().join("r");
    let o = kura_output(
        &cfg,
        &["restore", "backup", "s", "--to", out.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("DAMAGED big"), "{err}");
    assert_eq!(std::fs::read(out.join("small")).unwrap(), b"fine\n");
    assert_eq!(std::fs::metadata(out.join("big")).unwrap().len(), 9 << 20);
    // The same through the daemon, which writes the files itself, and through its tar.
    let mut d = Daemon::start(&cfg, &[]);
    for (dir, extra) in [("rd", None), ("rs", Some("--stream"))] {
        let out = tmp.path().join(dir);
        let mut args = vec!["restore", "backup", "s", "--to", out.to_str().unwrap()];
        args.extend(extra);
        let o = kura_output(&cfg, &args);
        assert_eq!(o.status.code(), Some(1), "{dir}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("DAMAGED big"), "{dir}: {err}");
        assert_eq!(std::fs::read(out.join("small")).unwrap(), b"fine\n");
        assert_eq!(std::fs::metadata(out.join("big")).unwrap().len(), 9 << 20);
    }
    d.stop();
}

/// A tar stream with entries that point outside the target: refused and listed,
/// nothing written outside.
#[test]
fn hostile_entries_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        // Raw names: the builder's own checks would refuse these.
        let raw = h.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            raw.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add("../evil", tar::EntryType::Regular, None, b"x");
    add("/tmp/kura-abs-evil", tar::EntryType::Regular, None, b"x");
    add("ok.txt", tar::EntryType::Regular, None, b"fine");
    add("hl", tar::EntryType::Link, Some("../../etc/passwd"), b"");
    add("sym", tar::EntryType::Symlink, Some("/"), b"");
    add("sym/through", tar::EntryType::Regular, None, b"x");
    let report = br#"{"files":1,"dirs":0,"symlinks":0,"hardlinks":0,"bytes":4,"damaged":[]}"#;
    add(kura::restore::REPORT, tar::EntryType::Regular, None, report);
    let bytes = b.into_inner().unwrap();
    let dir = tmp.path().join("t");
    let ex = kura::restore::extract(&bytes[..], &dir, |_| {}).unwrap();
    assert_eq!(std::fs::read(dir.join("ok.txt")).unwrap(), b"fine");
    assert!(!tmp.path().join("evil").exists());
    assert!(!Path::new("/tmp/kura-abs-evil").exists());
    assert!(!Path::new("/through").exists());
    for bad in ["../evil", "/tmp/kura-abs-evil", "hl", "sym/through"] {
        assert!(
            ex.refused.iter().any(|r| r == bad),
            "{bad} not refused: {:?}",
            ex.refused
        );
    }
}

/// The tree of `TREE`, made on the local disk (for `kura import`).
fn make_local_tree(root: &Path) {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    let t = |s: u64, ns: u32| std::time::UNIX_EPOCH + std::time::Duration::new(s, ns);
    fs::create_dir_all(root.join("db")).unwrap();
    fs::create_dir_all(root.join("a/b")).unwrap();
    let data: Vec<u8> = (0..3_000_000u64)
        .map(|i| ((i * 7 + (i >> 12)) % 251) as u8)
        .collect();
    let dump = root.join("db/dump.sql");
    fs::write(&dump, &data).unwrap();
    fs::set_permissions(&dump, fs::Permissions::from_mode(0o640)).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } == 0 {
        std::os::unix::fs::chown(&dump, Some(123), Some(456)).unwrap();
    }
    fs::File::options()
        .write(true)
        .open(&dump)
        .unwrap()
        .set_times(
            fs::FileTimes::new()
                .set_accessed(t(1_600_000_000, 0))
                .set_modified(t(1_700_000_000, 123_456_789)),
        )
        .unwrap();
    fs::hard_link(&dump, root.join("db/dump.link")).unwrap();
    std::os::unix::fs::symlink("db/dump.sql", root.join("latest")).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("a/b/deep.txt"), b"deep\n").unwrap();
    fs::set_permissions(root.join("db"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::File::open(root.join("db"))
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(t(1_650_000_000, 0)))
        .unwrap();
}

/// `kura import`: a local tree into a volume with its modes, owners, times, symlinks
/// and hard links, snapshotted as a generation; a second generation with `--replace`
/// drops what the tree no longer has; with no daemon too; a fifo is skipped and named
/// (no snapshot then); a hostile stream sent to the API never writes outside its path.
#[test]
fn import_trees_as_generations() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_fixed_port(tmp.path(), "");
    let mut d = Daemon::start(&cfg, &[]);
    let restore_to = |snap: &str, path: &str, to: &Path| {
        ok(kura_output(
            &cfg,
            &[
                "restore",
                "backup",
                snap,
                path,
                "--to",
                to.to_str().unwrap(),
            ],
        ));
    };
    let src = tmp.path().join("share/2026-11-01");
    make_local_tree(&src);
    let o = ok(kura_output(
        &cfg,
        &[
            "import",
            src.to_str().unwrap(),
            "backup/imported",
            "--snapshot",
            "g1",
            "--label",
            "from the old share",
        ],
    ));
    let summary = String::from_utf8_lossy(&o.stderr);
    assert!(
        summary.contains("3 files") && summary.contains("1 hard links"),
        "{summary}"
    );
    let out = tmp.path().join("r1");
    restore_to("g1", "imported", &out);
    check_tree(&out);
    // Nanoseconds of times are kept (the restore tar has seconds; NFS shows them).
    py(
        d.port,
        "s = c.stat('/imported/db/dump.sql')\n\
         assert (s.atime, s.mtime) == (1_600_000_000_000_000_000, 1_700_000_000_123_456_789), (s.atime, s.mtime)\n",
    );
    // The next generation: a file gone, one changed; --replace makes the directory
    // exactly the new tree, the first generation keeps the old one.
    std::fs::remove_file(src.join("a/b/deep.txt")).unwrap();
    std::fs::write(src.join("empty"), b"not empty now").unwrap();
    ok(kura_output(
        &cfg,
        &[
            "import",
            src.to_str().unwrap(),
            "backup/imported",
            "--replace",
            "--snapshot",
            "g2",
        ],
    ));
    let out2 = tmp.path().join("r2");
    restore_to("g2", "imported", &out2);
    assert!(!out2.join("a/b/deep.txt").exists());
    assert_eq!(std::fs::read(out2.join("empty")).unwrap(), b"not empty now");
    let out1 = tmp.path().join("r1b");
    restore_to("g1", "imported", &out1);
    check_tree(&out1);
    // A hostile stream straight to the API: absolute names and `..` are skipped and
    // named, the rest lands inside the path only.
    let mut b = tar::Builder::new(Vec::new());
    for name in ["../escape", "/abs", "fine"] {
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`; write the raw name as a hostile client would.
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, &b"hi"[..]).unwrap();
    }
    let body = b.into_inner().unwrap();
    let resp =
        ureq::post(&format!("{}/volumes/backup/import?path=hostile", d.api)).send_bytes(&body);
    let (status, v): (u16, serde_json::Value) = match resp {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_json().unwrap()),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(status, 422, "{v}");
    let skipped = v["result"]["skipped"].to_string();
    assert!(
        skipped.contains("../escape") && skipped.contains("/abs"),
        "{v}"
    );
    assert_eq!(v["result"]["files"], 1, "{v}");
    let root = String::from_utf8_lossy(&libnfs("nfs-ls", &[&d.url("/backup")]).stdout).into_owned();
    assert!(!root.contains("escape") && !root.contains("abs"), "{root}");
    assert_eq!(
        String::from_utf8_lossy(&libnfs("nfs-cat", &[&d.url("/backup/hostile/fine")]).stdout),
        "hi"
    );
    d.stop();
    // With no daemon, the store opened directly. A fifo is skipped and named, and no
    // snapshot is taken of an incomplete import.
    let fifo_dir = tmp.path().join("withfifo");
    std::fs::create_dir(&fifo_dir).unwrap();
    std::fs::write(fifo_dir.join("f"), b"data").unwrap();
    let st = Command::new("mkfifo")
        .arg(fifo_dir.join("pipe"))
        .status()
        .unwrap();
    assert!(st.success());
    let o = kura_output(
        &cfg,
        &[
            "import",
            fifo_dir.to_str().unwrap(),
            "backup/offline",
            "--snapshot",
            "g3",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("pipe") && err.contains("no snapshot taken"),
        "{err}"
    );
    let list = ok(kura_output(&cfg, &["snapshot", "list", "backup"]));
    assert!(!String::from_utf8_lossy(&list.stdout).contains("g3"));
    ok(kura_output(
        &cfg,
        &["import", src.to_str().unwrap(), "backup/offline2"],
    ));
    ok(kura_output(&cfg, &["snapshot", "create", "backup", "g4"]));
    let out4 = tmp.path().join("r4");
    restore_to("g4", "offline2", &out4);
    assert_eq!(std::fs::read(out4.join("empty")).unwrap(), b"not empty now");
}
