//! End-to-end tests of the NFSv3 export with real clients: libnfs-utils (`nfs-cp`,
//! `nfs-ls`, `nfs-cat`) and nfs-rs, against the real `kura` daemon on loopback.

mod common;
use common::*;

fn ok(o: &std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Files from 0 bytes to 2 GiB copied in and out with nfs-cp come back bit-identical,
/// both while staged and after the background ingest has chunked them.
#[test]
fn copy_in_and_out_0_to_2gib() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "127.0.0.1:0", &["127.0.0.1/32"], "");
    let d = Daemon::start(&cfg, &[]);
    let sizes: [u64; 7] = [0, 1, 4095, 65_537, (1 << 20) + 1, 100 << 20, 2 << 30];
    let mut files = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let src = tmp.path().join(format!("in{i}"));
        let h = make_file(&src, size, i as u64);
        ok(
            &libnfs(
                "nfs-cp",
                &[src.to_str().unwrap(), &d.url(&format!("/backup/f{i}"))],
            ),
            "nfs-cp in",
        );
        std::fs::remove_file(&src).unwrap();
        files.push((i, size, h));
    }
    let ls = libnfs("nfs-ls", &[&d.url("/backup")]);
    ok(&ls, "nfs-ls");
    let listing = String::from_utf8_lossy(&ls.stdout);
    for (i, size, _) in &files {
        assert!(
            listing
                .lines()
                .any(|l| l.ends_with(&format!(" f{i}")) && l.contains(&format!(" {size} "))),
            "f{i} with size {size} missing from listing:\n{listing}"
        );
    }
    // Out, twice: right away (mostly staged) and after ingest had time to run.
    for round in 0..2 {
        if round == 1 {
            std::thread::sleep(std::time::Duration::from_secs(3));
        }
        for (i, _, h) in &files {
            let dst = tmp.path().join(format!("out{i}"));
            ok(
                &libnfs(
                    "nfs-cp",
                    &[&d.url(&format!("/backup/f{i}")), dst.to_str().unwrap()],
                ),
                "nfs-cp out",
            );
            assert_eq!(hash_file(&dst), *h, "f{i} differs (round {round})");
            std::fs::remove_file(&dst).unwrap();
        }
    }
    let cat = libnfs("nfs-cat", &[&d.url("/backup/f3")]);
    ok(&cat, "nfs-cat");
    assert_eq!(cat.stdout.len(), 65_537);
}

/// A directory of 10,500 entries is listed completely by nfs-ls and nfs-rs, and removing
/// entries while paging through the listing (what rm -r does) misses none.
#[test]
fn directory_of_10k_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "127.0.0.1:0", &["127.0.0.1/32"], "");
    let d = Daemon::start(&cfg, &[]);
    py(
        d.port,
        "c.mkdir('/big')\n\
         for i in range(10500):\n    c.touch(f'/big/entry-{i:05}')\n",
    );
    let ls = libnfs("nfs-ls", &[&d.url("/backup/big")]);
    ok(&ls, "nfs-ls");
    let names: std::collections::HashSet<String> = String::from_utf8_lossy(&ls.stdout)
        .lines()
        .filter_map(|l| l.rsplit(' ').next().map(str::to_string))
        .filter(|n| n.starts_with("entry-"))
        .collect();
    assert_eq!(names.len(), 10_500, "nfs-ls saw {} entries", names.len());
    let out = py(
        d.port,
        "names = c.listdir('/big')\n\
         assert len(names) == 10500 and len(set(names)) == 10500, len(names)\n\
         removed = 0\n\
         for e in c.scandir('/big'):\n    c.remove(e.path)\n    removed += 1\n\
         print(removed, len(c.listdir('/big')))\n\
         c.rmdir('/big')\n",
    );
    assert_eq!(out.trim(), "10500 0");
}

/// Rename (over a file, across directories), remove, rmdir of a non-empty directory,
/// truncate both ways, symlinks, setuid modes, nanosecond times, bad names, MKDIR with
/// its mode, REMOVE of a directory (ISDIR) and RMDIR of a file (NOTDIR), ACCESS from
/// the mode bits, FSSTAT and FSINFO.
#[test]
fn metadata_operations() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "127.0.0.1:0", &["127.0.0.1/32"], "");
    let d = Daemon::start(&cfg, &[]);
    let out = py(
        d.port,
        r#"
def expect_err(f, what):
    try:
        f()
    except nfs_rs.NfsError as e:
        return str(e)
    raise SystemExit(f"{what} should have failed")

c.mkdir('/a'); c.mkdir('/b')
with c.open('/a/one', 'wb') as f: f.write(b'one' * 1000)
with c.open('/b/two', 'wb') as f: f.write(b'two')
c.rename('/a/one', '/b/two')
with c.open('/b/two', 'rb') as f: assert f.read() == b'one' * 1000
assert c.listdir('/a') == []
c.truncate('/b/two', 10)
assert c.stat('/b/two').size == 10
c.truncate('/b/two', 100000)
with c.open('/b/two', 'rb') as f:
    data = f.read()
assert data[:10] == b'oneoneoneo' and data[10:] == bytes(99990), 'grown tail reads zeros'
c.symlink('two', '/b/link')
assert c.readlink('/b/link') == 'two'
c.chmod('/b/two', 0o4755)
assert c.stat('/b/two').mode & 0o7777 == 0o4755
c.chmod('/b', 0o1777)
assert c.stat('/b').mode & 0o7777 == 0o1777
c.utime('/b/two', ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
s = c.stat('/b/two')
assert (s.atime, s.mtime) == (1_600_000_000_123_456_789, 1_700_000_000_987_654_321), (s.atime, s.mtime)
print('notempty:', expect_err(lambda: c.rmdir('/b'), 'rmdir of a non-empty dir'))
print('long:', expect_err(lambda: c.touch('/' + 'x' * 256), '256-byte name'))
c.touch('/' + 'y' * 255)
print('exists:', expect_err(lambda: c.mkdir('/a'), 'mkdir over a dir'))
print('noent:', expect_err(lambda: c.stat('/nope'), 'stat of a missing file'))
c.remove('/b/link'); c.remove('/b/two'); c.rmdir('/b')
c.mkdir('/m', 0o2750)
assert c.stat('/m').mode & 0o7777 == 0o2750, oct(c.stat('/m').mode)
c.touch('/m/f')
print('isdir:', expect_err(lambda: c.remove('/m'), 'REMOVE of a directory'))
print('notdir:', expect_err(lambda: c.rmdir('/m/f'), 'RMDIR of a file'))
assert not c.access('/m/f', os.X_OK) and c.access('/m/f', os.R_OK | os.W_OK)
c.chmod('/m/f', 0o755)
assert c.access('/m/f', os.X_OK)
c.remove('/m/f'); c.rmdir('/m')
fs = c.fs_stat()
assert 0 < fs.available_bytes <= fs.total_bytes, fs
assert c.fs_info().max_file_size >= 1 << 40
assert sorted(c.listdir('/')) == ['a', 'y' * 255], c.listdir('/')
print('done')
"#,
    );
    assert!(
        out.contains("notempty: ") && out.to_lowercase().contains("not empty"),
        "{out}"
    );
    assert!(
        out.to_lowercase().contains("long: ") && out.to_lowercase().contains("too long"),
        "{out}"
    );
    let lower = out.to_lowercase();
    for (what, says) in [
        ("isdir: ", "is a directory"),
        ("notdir: ", "not a directory"),
    ] {
        let line = lower.lines().find(|l| l.starts_with(what)).unwrap_or("");
        assert!(line.contains(says), "{what} should say {says:?}: {out}");
    }
    assert!(out.contains("done"), "{out}");
}

/// Snapshots appear read-only under /.snapshots: readable by both clients, every
/// mutation refused, and the live volume unaffected.
#[test]
fn snapshots_are_browsable_and_read_only() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_fixed_port(tmp.path(), "");
    let mut d = Daemon::start(&cfg, &[]);
    py(
        d.port,
        "c.mkdir('/db')\nwith c.open('/db/dump.sql', 'wb') as f: f.write(b'night one\\n' * 5000)\n",
    );
    d.stop();
    kura(&cfg, &["snapshot", "create", "backup", "night1"]);
    let d = Daemon::start(&cfg, &[]);
    py(
        d.port,
        "with c.open('/db/dump.sql', 'wb') as f: f.write(b'night two\\n')\n",
    );
    let cat = libnfs(
        "nfs-cat",
        &[&d.url("/backup/.snapshots/night1/db/dump.sql")],
    );
    ok(&cat, "nfs-cat of a snapshot file");
    assert_eq!(cat.stdout, b"night one\n".repeat(5000));
    let ls = libnfs("nfs-ls", &[&d.url("/backup/.snapshots")]);
    ok(&ls, "nfs-ls .snapshots");
    assert!(String::from_utf8_lossy(&ls.stdout).contains("night1"));
    // `..` inside a snapshot climbs to the right directory (MNT resolves the path by
    // LOOKUPs, `..` included).
    let up = libnfs("nfs-ls", &[&d.url("/backup/.snapshots/night1/db/..")]);
    ok(&up, "nfs-ls of a snapshot subdirectory's parent");
    assert!(String::from_utf8_lossy(&up.stdout)
        .lines()
        .any(|l| l.ends_with(" db")));
    let up2 = libnfs("nfs-ls", &[&d.url("/backup/.snapshots/night1/..")]);
    ok(&up2, "nfs-ls of a snapshot root's parent");
    assert!(String::from_utf8_lossy(&up2.stdout)
        .lines()
        .any(|l| l.ends_with(" night1")));
    let src = tmp.path().join("x");
    std::fs::write(&src, b"should not land").unwrap();
    let cp = libnfs(
        "nfs-cp",
        &[
            src.to_str().unwrap(),
            &d.url("/backup/.snapshots/night1/db/new"),
        ],
    );
    assert!(!cp.status.success(), "nfs-cp into a snapshot must fail");
    let out = py(
        d.port,
        r#"
errs = []
for what, f in [
    ('write', lambda: c.open('/.snapshots/night1/db/dump.sql', 'r+b').write(b'X')),
    ('create', lambda: c.touch('/.snapshots/night1/new')),
    ('mkdir', lambda: c.mkdir('/.snapshots/night1/d')),
    ('remove', lambda: c.remove('/.snapshots/night1/db/dump.sql')),
    ('rename', lambda: c.rename('/.snapshots/night1/db/dump.sql', '/.snapshots/night1/x')),
    ('chmod', lambda: c.chmod('/.snapshots/night1/db/dump.sql', 0o777)),
    ('truncate', lambda: c.truncate('/.snapshots/night1/db/dump.sql', 0)),
    ('mkdir in .snapshots', lambda: c.mkdir('/.snapshots/new')),
    ('remove .snapshots', lambda: c.rmdir('/.snapshots')),
]:
    try:
        f()
        errs.append(what + ' succeeded')
    except nfs_rs.NfsError as e:
        pass
with c.open('/.snapshots/night1/db/dump.sql', 'rb') as f:
    assert f.read() == b'night one\n' * 5000
with c.open('/db/dump.sql', 'rb') as f:
    assert f.read() == b'night two\n'
assert '.snapshots' not in c.listdir('/'), 'hidden from listings'
print('errors:', errs)
"#,
    );
    assert_eq!(out.trim(), "errors: []");
}

/// A client outside the export's allow-list is refused before any NFS call; inside, it works.
#[test]
fn allow_list_refuses_other_addresses() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "127.0.0.1:0", &["127.0.0.2/32"], "");
    let d = Daemon::start(&cfg, &[]);
    // The server closes a refused connection at accept, before reading a byte.
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], d.port).into();
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    match std::io::Read::read(&mut c, &mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a refused connection must be closed at once, got {other:?}"),
    }
    let o = std::process::Command::new(python())
        .arg("-c")
        .arg(format!(
            "import nfs_rs\ntry:\n    nfs_rs.Client.connect('nfs://127.0.0.1/backup?version=3&nfsport={p}&mountport={p}', noresvport=True, connect_timeout=3)\n    print('CONNECTED')\nexcept nfs_rs.NfsError as e:\n    print('REFUSED')\n",
            p = d.port
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "REFUSED");
    drop(d);
    let tmp2 = tempfile::tempdir().unwrap();
    let cfg = config(tmp2.path(), "127.0.0.1:0", &["127.0.0.0/30"], "");
    let d = Daemon::start(&cfg, &[]);
    ok(
        &libnfs("nfs-ls", &[&d.url("/backup")]),
        "nfs-ls from an allowed address",
    );
}

/// A read-only export refuses writes; by default root keeps its ownership (tar -p and
/// rsync -a as root restore owners); with root_squash owner 0 maps to the anonymous ids.
#[test]
fn read_only_export_and_root_squash() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(
        tmp.path(),
        &format!("127.0.0.1:{port}"),
        &["127.0.0.1/32"],
        "",
    );
    let mut d = Daemon::start(&cfg, &[]);
    let out = py(
        d.port,
        "c.touch('/r')\nc.chown('/r', 0, 0)\ns = c.stat('/r')\nprint(s.uid, s.gid)\n",
    );
    assert_eq!(out.trim(), "0 0", "no squashing by default");
    d.stop();
    let cfg = config(
        tmp.path(),
        &format!("127.0.0.1:{port}"),
        &["127.0.0.1/32"],
        "root_squash = true\nanon_uid = 4242\nanon_gid = 4343\n",
    );
    let mut d = Daemon::start(&cfg, &[]);
    let out = py(
        d.port,
        "c.touch('/f')\nc.chown('/f', 0, 0)\ns = c.stat('/f')\nprint(s.uid, s.gid)\n",
    );
    assert_eq!(out.trim(), "4242 4343");
    d.stop();
    let cfg = config(
        tmp.path(),
        &format!("127.0.0.1:{port}"),
        &["127.0.0.1/32"],
        "read_only = true\n",
    );
    let d = Daemon::start(&cfg, &[]);
    let src = tmp.path().join("x");
    std::fs::write(&src, b"nope").unwrap();
    assert!(
        !libnfs("nfs-cp", &[src.to_str().unwrap(), &d.url("/backup/g")])
            .status
            .success()
    );
    ok(
        &libnfs("nfs-ls", &[&d.url("/backup")]),
        "reading a read-only export",
    );
}

/// An export limited to some volumes shows and mounts only those; another export of the
/// same store on another port shows the rest.
#[test]
fn exports_limited_to_volumes() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("kura.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nvolumes = [\"backup\", \"other\"]\n\n\
             [[export]]\nlisten = \"127.0.0.1:0\"\nallow = [\"127.0.0.1/32\"]\nvolumes = [\"backup\"]\n\n\
             [[export]]\nlisten = \"127.0.0.1:0\"\nallow = [\"127.0.0.1/32\"]\nvolumes = [\"other\"]\n",
            tmp.path().join("store")
        ),
    )
    .unwrap();
    let d = Daemon::start(&cfg, &[]);
    ok(
        &libnfs("nfs-ls", &[&d.url("/backup")]),
        "nfs-ls of the exported volume",
    );
    let other = libnfs("nfs-ls", &[&d.url("/other")]);
    assert!(
        !other.status.success(),
        "a volume of another export must not mount here"
    );
    let root = libnfs(
        "nfs-ls",
        &[&format!(
            "nfs://127.0.0.1/?nfsport={p}&mountport={p}&version=3",
            p = d.port
        )],
    );
    ok(&root, "nfs-ls of the export root");
    let listing = String::from_utf8_lossy(&root.stdout);
    assert!(
        listing.contains("backup") && !listing.contains("other"),
        "{listing}"
    );
}

/// IPv6 listeners enforce the same allow-list: an allowed client copies a file in and
/// out; another address is cut off at accept.
#[test]
fn ipv6_export_serves_allowed_clients_only() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), "[::1]:0", &["::1/128"], "");
    let d = Daemon::start(&cfg, &[]);
    let url = |p: &str| {
        format!(
            "nfs://::1{p}?nfsport={port}&mountport={port}&version=3",
            port = d.port
        )
    };
    let src = tmp.path().join("in");
    let h = make_file(&src, 3 << 20, 9);
    ok(
        &libnfs("nfs-cp", &[src.to_str().unwrap(), &url("/backup/v6")]),
        "nfs-cp in over IPv6",
    );
    let dst = tmp.path().join("out");
    ok(
        &libnfs("nfs-cp", &[&url("/backup/v6"), dst.to_str().unwrap()]),
        "nfs-cp out over IPv6",
    );
    assert_eq!(hash_file(&dst), h);
    drop(d);
    let tmp2 = tempfile::tempdir().unwrap();
    let cfg = config(tmp2.path(), "[::1]:0", &["::2/128"], "");
    let d = Daemon::start(&cfg, &[]);
    let ls = libnfs(
        "nfs-ls",
        &[&format!(
            "nfs://::1/backup?nfsport={p}&mountport={p}&version=3",
            p = d.port
        )],
    );
    assert!(
        !ls.status.success(),
        "a client outside the IPv6 allow-list must be refused"
    );
}

/// Hard links through real clients, the way rsnapshot and `cp -al` make them: nfs-rs
/// links, nfs-ls and nfs-cat read both names, a write through one name shows through
/// the other, removing one name keeps the file; a snapshot and a clone of it keep the
/// two names one file (one file id, link count 2 in `.snapshots`, one inode in the
/// clone).
#[test]
fn hard_links_through_real_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_fixed_port(tmp.path(), "");
    let mut d = Daemon::start(&cfg, &[]);
    let out = py(
        d.port,
        r#"
c.mkdir('/daily.0'); c.mkdir('/daily.1')
with c.open('/daily.0/db.dump', 'wb') as f: f.write(b'dump ' * 200000)
c.link('/daily.0/db.dump', '/daily.1/db.dump')
c.link('/daily.0/db.dump', '/daily.0/same-dir')
a, b = c.stat('/daily.0/db.dump'), c.stat('/daily.1/db.dump')
assert a.fileid == b.fileid and a.nlink == 3 and b.nlink == 3, (a, b)
with c.open('/daily.1/db.dump', 'r+b') as f: f.write(b'DUMP!')
with c.open('/daily.0/db.dump', 'rb') as f: assert f.read(5) == b'DUMP!'
try:
    c.link('/daily.0', '/daily.1/dir-link')
    raise SystemExit('linking a directory must fail')
except nfs_rs.NfsError:
    pass
try:
    c.link('/daily.0/db.dump', '/daily.1/db.dump')
    raise SystemExit('linking onto an existing name must fail')
except nfs_rs.NfsError:
    pass
c.remove('/daily.0/same-dir')
print(c.stat('/daily.1/db.dump').nlink)
"#,
    );
    assert_eq!(out.trim(), "2");
    let ls = libnfs("nfs-ls", &[&d.url("/backup/daily.1")]);
    ok(&ls, "nfs-ls");
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.ends_with(" db.dump") && l.contains(" 1000000 ")),
        "{listing}"
    );
    for name in ["/backup/daily.0/db.dump", "/backup/daily.1/db.dump"] {
        let cat = libnfs("nfs-cat", &[&d.url(name)]);
        ok(&cat, "nfs-cat");
        assert_eq!(cat.stdout.len(), 1_000_000);
        assert_eq!(&cat.stdout[..10], b"DUMP!dump ");
    }
    d.stop();
    for args in [
        &["snapshot", "create", "backup", "s1"][..],
        &["clone", "backup", "s1", "restored"],
    ] {
        kura(&cfg, args);
    }
    let d = Daemon::start(&cfg, &[]);
    let out = py(
        d.port,
        r#"
s0, s1 = c.stat('/.snapshots/s1/daily.0/db.dump'), c.stat('/.snapshots/s1/daily.1/db.dump')
assert s0.fileid == s1.fileid and s0.nlink == 2, (s0, s1)
with c.open('/.snapshots/s1/daily.1/db.dump', 'rb') as f: assert f.read(5) == b'DUMP!'
c.remove('/daily.0/db.dump')
with c.open('/daily.1/db.dump', 'rb') as f: assert f.read(5) == b'DUMP!'
assert c.stat('/daily.1/db.dump').nlink == 1
r = nfs_rs.Client.connect(URL.replace('/backup', '/restored'), uid=1000, gid=1000, noresvport=True)
r0, r1 = r.stat('/daily.0/db.dump'), r.stat('/daily.1/db.dump')
assert r0.fileid == r1.fileid and r0.nlink == 2, (r0, r1)
with r.open('/daily.0/db.dump', 'r+b') as f: f.write(b'clone')
with r.open('/daily.1/db.dump', 'rb') as f: assert f.read(5) == b'clone'
with c.open('/.snapshots/s1/daily.1/db.dump', 'rb') as f: assert f.read(5) == b'DUMP!'
print('ok')
"#,
    );
    assert_eq!(out.trim(), "ok");
}
