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
