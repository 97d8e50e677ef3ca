//! The one place where store errors become NFS status codes.

use nfs3_types::nfs3::nfsstat3;
use storage::StoreError;

static NOSPC_LOG: crate::limits::LogLimiter =
    crate::limits::LogLimiter::new(std::time::Duration::from_secs(10));

/// Maps a store error to the NFS status the protocol prescribes, logging it once with
/// its context (clients only see the code).
pub fn to_nfs(op: &str, e: &StoreError) -> nfsstat3 {
    use nfsstat3::*;
    let code = match e {
        StoreError::NotFound(_) => NFS3ERR_NOENT,
        StoreError::Exists(_) => NFS3ERR_EXIST,
        StoreError::NotDir(_) => NFS3ERR_NOTDIR,
        StoreError::IsDir(_) => NFS3ERR_ISDIR,
        StoreError::NotEmpty(_) => NFS3ERR_NOTEMPTY,
        StoreError::NameTooLong { .. } => NFS3ERR_NAMETOOLONG,
        StoreError::TooBig(_) => NFS3ERR_FBIG,
        StoreError::TooManyLinks(_) => NFS3ERR_MLINK,
        StoreError::CrossVolume(_) => NFS3ERR_XDEV,
        StoreError::InvalidName { .. } => NFS3ERR_INVAL,
        StoreError::Invalid(_) => NFS3ERR_INVAL,
        StoreError::ReadOnly(_) => NFS3ERR_ROFS,
        StoreError::Refused(_) => NFS3ERR_ACCES,
        StoreError::NoSpace { .. } => NFS3ERR_NOSPC,
        StoreError::Corrupt { .. } => NFS3ERR_IO,
        StoreError::Poisoned(_) => NFS3ERR_IO,
        StoreError::Remote(_) => NFS3ERR_IO,
        StoreError::Io { .. } | StoreError::Db { .. } | StoreError::Format(_) => NFS3ERR_IO,
        StoreError::Raced(_) => NFS3ERR_JUKEBOX,
    };
    match code {
        // A full disk refuses every write of every client: one line per 10 s says so.
        NFS3ERR_NOSPC => {
            if let Some(n) = NOSPC_LOG.check() {
                tracing::error!(op, error = %e, held_back = n, "nfs call failed");
            }
        }
        NFS3ERR_IO => tracing::error!(op, error = %e, "nfs call failed"),
        _ => tracing::debug!(op, error = %e, "nfs call refused"),
    }
    code
}
