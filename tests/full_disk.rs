//! A full disk under a running daemon, filled through NFS: clients get NOSPC and no
//! part of a refused write stays; the daemon restarts after kill -9 and after SIGTERM
//! on the full disk; every read-only command works there; what was acknowledged reads
//! back. Needs root (mounts a tmpfs); KURA_SKIP_MOUNT_TESTS=1 skips it.

mod common;
use common::*;
use std::process::Command;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_disk_through_nfs_keeps_the_store_usable() {
    if std::env::var_os("KURA_SKIP_MOUNT_TESTS").is_some() {
        eprintln!("skipped: KURA_SKIP_MOUNT_TESTS is set");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fs = tmp.path().join("fs");
    std::fs::create_dir(&fs).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(&fs)
        .status()
        .unwrap();
    assert!(st.success(), "mount a tmpfs (needs root)");
    let _m = Mount(fs.clone());
    let cfg = config_fixed_port(&fs, "");
    let mut d = Daemon::process(&cfg, &[("KURA_BOOT_ID", "b")]);
    // Incompressible 3 MiB files until the disk refuses; print what was acknowledged.
    let out = py(
        d.port,
        r#"
import hashlib
done = []
for i in range(100):
    data = os.urandom(3 << 20)
    try:
        with c.open(f'/f{i}', 'wb') as f:
            f.write(data)
        done.append((i, hashlib.sha256(data).hexdigest()))
    except nfs_rs.NfsError as e:
        print('FULL', i, type(e).__name__, str(e)[:80])
        try:
            print('PARTIAL', c.stat(f'/f{i}').size)
        except nfs_rs.NfsError:
            print('PARTIAL', 0)
        break
for i, h in done:
    print('OK', i, h)
"#,
    );
    let full = out
        .lines()
        .find(|l| l.starts_with("FULL"))
        .unwrap_or_else(|| panic!("the disk never filled:\n{out}"));
    // (nfs-rs wraps the NOSPC of a WRITE in its own error type.)
    assert!(full.contains("Error"), "{full}");
    let partial: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("PARTIAL "))
        .unwrap()
        .parse()
        .unwrap();
    // nfs-rs sends a file in 1 MiB WRITEs; whatever was refused left nothing behind,
    // so the size is a whole number of acknowledged WRITEs.
    assert_eq!(
        partial % (1 << 20),
        0,
        "a refused WRITE left {partial} bytes"
    );
    let acked: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("OK "))
        .map(|l| {
            let (i, h) = l.split_once(' ').unwrap();
            (format!("/f{i}"), h.to_string())
        })
        .collect();
    assert!(acked.len() >= 5, "{out}");

    // Now take the last byte too, from outside kura (another process on the same
    // filesystem): SQLite, the journal and the clean-shutdown mark have no room left.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(fs.join("filler")).unwrap();
        let block = vec![0xa5u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    // Killed on the full disk: it starts again.
    d.kill9();
    d = Daemon::process(&cfg, &[("KURA_BOOT_ID", "b")]);
    // Stopped cleanly on the full disk: it stops with 0 and starts again.
    d.stop();
    // Every read-only command works on the full disk.
    for args in [
        &["stats"][..],
        &["verify"],
        &["gc", "--dry-run"],
        &["snapshot", "list"],
        &["volume", "list"],
    ] {
        kura(&cfg, args);
    }
    let mut d = Daemon::process(&cfg, &[("KURA_BOOT_ID", "b")]);
    let check: String = acked
        .iter()
        .map(|(p, h)| {
            format!(
                "assert hashlib.sha256(c.open('{p}', 'rb').read()).hexdigest() == '{h}', '{p}'\n"
            )
        })
        .collect();
    py(d.port, &format!("import hashlib\n{check}print('same')"));
    // Deleting frees space and writing works again.
    py(
        d.port,
        "for i in range(3): c.remove(f'/f{i}')\nwith c.open('/after', 'wb') as f: f.write(b'works again')\n",
    );
    d.stop();
}
