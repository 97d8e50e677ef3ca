//! A full disk: a store on a small tmpfs. Needs root (mount); set
//! KURA_SKIP_MOUNT_TESTS=1 to skip where mounting is impossible.

mod common;
use common::*;
use std::process::Command;
use storage::*;

/// A mounted tmpfs; the temp dir it sits on lives as long as the mount.
struct Mount(std::path::PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn small_fs(mib: u32) -> Option<Mount> {
    if std::env::var_os("KURA_SKIP_MOUNT_TESTS").is_some() {
        eprintln!("skipped: KURA_SKIP_MOUNT_TESTS is set");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(dir.path())
        .status()
        .expect("run mount");
    assert!(
        st.success(),
        "mounting a tmpfs failed (needs root); set KURA_SKIP_MOUNT_TESTS=1 to skip"
    );
    Some(Mount(dir.path().to_path_buf(), dir))
}

/// Filling the disk gives `NoSpace`, never a panic or corruption; everything written
/// before still reads back, ingest that cannot store fails cleanly with the data still
/// staged, and after space is freed the store works again.
#[test]
fn full_disk_is_a_clear_error_and_loses_nothing() {
    let Some(m) = small_fs(48) else { return };
    let root = m.0.join("store");
    let s = open(&root);
    let v = s.create_volume("vol", owner()).unwrap();
    let mut written: Vec<(FileId, Vec<u8>)> = Vec::new();
    let mut hit = None;
    for i in 0..200u64 {
        let f = match s.create(v.root, format!("f{i}").as_bytes(), file_mode()) {
            Ok(a) => a.ino,
            Err(e) => {
                hit = Some(e);
                break;
            }
        };
        // Incompressible, unique: every file takes real space in staging and packs.
        let d: Vec<u8> = (0..1_000_000u64)
            .map(|k| (k.wrapping_mul(2654435761).wrapping_add(i * 977) >> 13) as u8 ^ (i as u8))
            .collect();
        let d = blake3_stream(&d, i);
        match s.write(f, 0, &d) {
            Ok(()) => {}
            Err(e) => {
                // A refused write leaves none of its bytes.
                assert_eq!(s.getattr(f).unwrap().size, 0, "a refused write left bytes");
                hit = Some(e);
                break;
            }
        }
        if let Err(e) = s.sync(f) {
            hit = Some(e);
            break;
        }
        written.push((f, d));
        if i % 4 == 3 {
            if let Err(e) = s.ingest_all(None) {
                hit = Some(e);
                break;
            }
        }
    }
    let e = hit.expect("a 48 MiB filesystem must fill up");
    let ingested = s.stats().unwrap().chunks;
    assert!(
        ingested > 0,
        "some files were ingested before the disk filled"
    );
    assert!(
        matches!(e, StoreError::NoSpace { .. }),
        "expected NoSpace, got {e}"
    );
    assert!(e.to_string().contains("no space left"), "{e}");
    assert!(written.len() >= 4, "only {} files fit", written.len());
    for (f, d) in &written {
        assert!(
            &read_all(&s, *f) == d,
            "data written before the disk filled is intact"
        );
    }
    // Free space: remove half the files, collect garbage, and carry on.
    for (i, _) in written.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        s.remove(v.root, format!("f{i}").as_bytes()).unwrap();
    }
    s.gc(&GcOptions::default()).unwrap();
    // Ingest needs room for packs beside the staged copies: it may still be short of
    // space, but then it says so and the staged data stays readable.
    match s.ingest_all(None) {
        Ok(_) | Err(StoreError::NoSpace { .. }) => {}
        Err(e) => panic!("ingest on a nearly full disk: {e}"),
    }
    let f = s.create(v.root, b"after", file_mode()).unwrap().ino;
    s.write(f, 0, b"works again").unwrap();
    s.sync(f).unwrap();
    drop(s);
    let s = open(&root);
    for (i, (f, d)) in written.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
        assert!(&read_all(&s, *f) == d, "file {i} intact after reopen");
    }
    assert_eq!(read_all(&s, f), b"works again");
    assert!(s.verify().unwrap().is_clean());
}

/// Incompressible bytes derived from `seed`.
fn blake3_stream(src: &[u8], seed: u64) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&src[..64]);
    let mut out = vec![0u8; src.len()];
    h.finalize_xof().fill(&mut out);
    out
}
