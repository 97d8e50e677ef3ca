//! The one way persistent bytes reach disk, and the latch that stops writes after a
//! failed fsync (a failed fsync may have dropped dirty pages: retrying it would report
//! success for data that is gone, so the store refuses writes until reopened).

use crate::error::{Result, StoreError};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Set once any fsync fails; checked by every mutating entry point.
#[derive(Default)]
pub struct Latch {
    failed: AtomicBool,
    why: Mutex<String>,
}

impl Latch {
    pub fn check(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned(self.why.lock().unwrap().clone()));
        }
        Ok(())
    }

    fn trip(&self, why: String) {
        tracing::error!(%why, "fsync failed; store now refuses writes");
        *self.why.lock().unwrap() = why;
        self.failed.store(true, Ordering::Release);
    }

    /// fsyncs `file`; a failure trips the latch.
    pub fn sync_file(&self, file: &File, path: &Path, data_only: bool) -> Result<()> {
        let r = if data_only {
            file.sync_data()
        } else {
            file.sync_all()
        };
        r.map_err(|e| {
            if e.raw_os_error() != Some(libc::ENOSPC) {
                self.trip(format!("fsync {}: {e}", path.display()));
            }
            StoreError::io("fsync", path, e)
        })
    }

    /// fsyncs a directory so that entries created or renamed in it are durable.
    pub fn sync_dir(&self, dir: &Path) -> Result<()> {
        let f = File::open(dir).map_err(|e| StoreError::io("open directory", dir, e))?;
        self.sync_file(&f, dir, false)
    }

    /// Writes `bytes` to `path` atomically: tmp file, fsync, rename, fsync dir.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| StoreError::io("write", &tmp, e))?;
        self.sync_file(&f, &tmp, false)?;
        std::fs::rename(&tmp, path).map_err(|e| StoreError::io("rename", path, e))?;
        self.sync_dir(path.parent().unwrap_or(Path::new(".")))
    }
}

/// The kernel's boot id: differs after every reboot. `KURA_BOOT_ID` overrides it so that
/// tests can simulate a reboot.
pub fn boot_id() -> String {
    if let Ok(id) = std::env::var("KURA_BOOT_ID") {
        return id;
    }
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed fsync latches: every later check fails with `Poisoned`, even if a later
    /// fsync would succeed (the dropped pages are gone; only a reopen and verify may clear it).
    #[test]
    fn failed_fsync_latches() {
        let latch = Latch::default();
        latch.check().unwrap();
        // fsync on a pipe fails with EINVAL: a real failed fsync.
        let mut fds = [0; 2];
        // SAFETY: pipe fills two fds, which the Files below own.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (r, w) = unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        };
        assert!(latch.sync_file(&w, Path::new("pipe"), true).is_err());
        match latch.check() {
            Err(StoreError::Poisoned(why)) => assert!(why.contains("pipe"), "{why}"),
            other => panic!("expected Poisoned, got {other:?}"),
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = File::create(dir.path().join("x")).unwrap();
        latch.sync_file(&ok, Path::new("x"), true).unwrap();
        assert!(
            latch.check().is_err(),
            "a later successful fsync does not clear the latch"
        );
        drop((r, w));
    }
}
