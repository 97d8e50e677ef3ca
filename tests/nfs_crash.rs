//! Durability and restart: kill -9 of the daemon after a COMMIT reply, and the write
//! verifier across restarts with and without a (simulated) reboot.

mod common;
use common::*;

/// nfs-rs writes with UNSTABLE WRITEs and a COMMIT; once `write()` returned, kura is
/// killed with SIGKILL and restarted on the same port: the data is there, and the
/// client's old file handle (it never looks the file up again) still reads it.
#[test]
fn committed_data_and_handles_survive_kill9() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_fixed_port(tmp.path(), "");
    let mut d = Daemon::process(&cfg, &[("KURA_BOOT_ID", "boot-a")]);
    let mut p = PyProc::start(
        d.port,
        r#"
data = bytes((i * 7 + 3) % 251 for i in range(8 << 20))
f = c.open('/precious.bin', 'w+b')
f.write(data)
print('WRITTEN', flush=True)
sys.stdin.readline()
f.seek(0)
back = f.read()
print('SAME' if back == data else f'DIFFERENT {len(back)}', flush=True)
"#,
    );
    assert_eq!(p.expect_line(), "WRITTEN");
    d.kill9();
    let _d = Daemon::process(&cfg, &[("KURA_BOOT_ID", "boot-a")]);
    p.send("go");
    assert_eq!(p.expect_line(), "SAME");
    p.finish();
}

/// After an unclean stop *and* a reboot (a new boot id) the write verifier and handle
/// generation change, so clients resend what they had not committed; after an unclean
/// stop without a reboot, or a clean stop, handles stay valid.
#[test]
fn verifier_changes_only_after_unclean_reboot() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_fixed_port(tmp.path(), "");
    let mut d = Daemon::process(&cfg, &[("KURA_BOOT_ID", "boot-1")]);
    let mut p = PyProc::start(
        d.port,
        r#"
with c.open('/f', 'wb') as f: f.write(b'x' * 1000)
f = c.open('/f', 'rb')
for step in ['clean', 'kill', 'reboot']:
    print('READY', flush=True)
    sys.stdin.readline()
    try:
        f.seek(0)
        print('OK' if f.read() == b'x' * 1000 else 'WRONG', flush=True)
    except nfs_rs.NfsError as e:
        print('ERR ' + type(e).__name__, flush=True)
"#,
    );
    // Clean stop, same boot: handle valid.
    assert_eq!(p.expect_line(), "READY");
    d.stop();
    d = Daemon::process(&cfg, &[("KURA_BOOT_ID", "boot-1")]);
    p.send("go");
    assert_eq!(p.expect_line(), "OK");
    // kill -9, same boot (page cache intact): handle valid.
    assert_eq!(p.expect_line(), "READY");
    d.kill9();
    d = Daemon::process(&cfg, &[("KURA_BOOT_ID", "boot-1")]);
    p.send("go");
    assert_eq!(p.expect_line(), "OK");
    // kill -9 and a reboot: the generation moves on, the old handle is stale.
    assert_eq!(p.expect_line(), "READY");
    d.kill9();
    let _d = Daemon::process(&cfg, &[("KURA_BOOT_ID", "boot-2")]);
    p.send("go");
    let l = p.expect_line();
    assert!(
        l.starts_with("ERR"),
        "old handle must be stale after an unclean reboot, got {l}"
    );
    p.finish();
}

/// Small files are made durable by a copy of their bytes in the database's WAL (one
/// flush for data and names) instead of fsyncs of their staging files. A client creates
/// small files one after another (open, write, close: nfs-rs commits in `write`) while
/// the daemon is killed with SIGKILL. After a restart on the same boot, and again after
/// a simulated power loss (the staging files lose what was never fsynced: all of their
/// bytes; the boot id changes), every file whose write returned is whole, and every
/// name that is visible is a readable file that is either empty (created, not yet
/// written) or whole: nothing half-created.
#[test]
fn small_files_survive_kill9_and_power_loss() {
    let tmp = tempfile::tempdir().unwrap();
    // Files stay staged (not ingested) so that the power loss below reaches them.
    let cfg = config_fixed_port_staged(tmp.path());
    let mut d = Daemon::process(&cfg, &[("KURA_BOOT_ID", "boot-a")]);
    let mut p = PyProc::start(
        d.port,
        r#"
def body(k):
    return bytes((k * 31 + i) % 251 for i in range(100 + (k * 997) % 20000))
c.mkdir('/small')
print('READY', flush=True)
try:
    for k in range(5000):
        f = c.open(f'/small/f{k:05}', 'wb')
        f.write(body(k))
        f.close()
        print(f'DONE {k}', flush=True)
except Exception as e:
    print('STOPPED', flush=True)
"#,
    );
    assert_eq!(p.expect_line(), "READY");
    let mut done = None;
    for _ in 0..150 {
        let l = p.expect_line();
        done = Some(l.strip_prefix("DONE ").unwrap().parse::<u32>().unwrap());
    }
    d.kill9();
    // The client may have finished one more file before it saw the daemon gone.
    let mut last = done.unwrap();
    loop {
        let l = p.expect_line();
        match l.strip_prefix("DONE ") {
            Some(k) => last = k.parse().unwrap(),
            None => break,
        }
    }
    drop(p);
    let check = format!(
        r#"
def body(k):
    return bytes((k * 31 + i) % 251 for i in range(100 + (k * 997) % 20000))
names = sorted(c.listdir('/small'))
seen = set()
for n in names:
    k = int(n[1:])
    with c.open(f'/small/{{n}}', 'rb') as f:
        got = f.read()
    assert got == b'' or got == body(k), (n, len(got))
    if got == body(k):
        seen.add(k)
missing = [k for k in range({last} + 1) if k not in seen]
assert not missing, missing[:10]
print('OK', len(seen), flush=True)
"#
    );
    // kill -9, same boot: the staging files in the page cache are whole.
    let d = Daemon::process(&cfg, &[("KURA_BOOT_ID", "boot-a")]);
    let out = py(d.port, &check);
    assert!(out.starts_with("OK"), "{out}");
    let mut d = d;
    d.kill9();
    // Power loss: nothing of the staging files was fsynced, so all of their bytes are
    // gone; the copies in the (fsynced) WAL bring them back.
    let staging = tmp.path().join("store/staging");
    let mut emptied = 0;
    for e in std::fs::read_dir(&staging).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().parse::<u64>().is_ok() {
            std::fs::OpenOptions::new()
                .write(true)
                .open(e.path())
                .unwrap()
                .set_len(0)
                .unwrap();
            emptied += 1;
        }
    }
    assert!(emptied > 100, "only {emptied} staged files");
    let d = Daemon::process(&cfg, &[("KURA_BOOT_ID", "boot-b")]);
    let out = py(d.port, &check);
    assert!(out.starts_with("OK"), "{out}");
}
