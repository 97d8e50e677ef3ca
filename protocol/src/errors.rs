//! The one place where store errors become NFS status codes.

use nfs3_types::nfs3::nfsstat3;
use storage::StoreError;

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
        StoreError::InvalidName { .. } => NFS3ERR_INVAL,
        StoreError::Invalid(_) => NFS3ERR_INVAL,
        StoreError::ReadOnly(_) => NFS3ERR_ROFS,
        StoreError::NoSpace { .. } => NFS3ERR_NOSPC,
        StoreError::Corrupt { .. } => NFS3ERR_IO,
        StoreError::Poisoned(_) => NFS3ERR_IO,
        StoreError::Io { .. } | StoreError::Db { .. } | StoreError::Format(_) => NFS3ERR_IO,
        StoreError::Raced(_) => NFS3ERR_JUKEBOX,
    };
    match code {
        NFS3ERR_IO | NFS3ERR_NOSPC => tracing::error!(op, error = %e, "nfs call failed"),
        _ => tracing::debug!(op, error = %e, "nfs call refused"),
    }
    code
}
