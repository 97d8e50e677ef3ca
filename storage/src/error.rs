//! Typed errors of the store. Every variant says what failed and on which object.

use crate::ids::{ChunkId, FileId};
use std::path::PathBuf;

/// Errors returned by the store. The NFS layer maps these onto `nfsstat3` in one place.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such file or directory: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Exists(String),
    #[error("not a directory: {0}")]
    NotDir(String),
    #[error("is a directory: {0}")]
    IsDir(String),
    #[error("directory not empty: {0}")]
    NotEmpty(String),
    #[error("invalid name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("name longer than {max} bytes: {name:?}…")]
    NameTooLong { name: String, max: usize },
    #[error("file too large: {0}")]
    TooBig(String),
    #[error("too many links: {0}")]
    TooManyLinks(String),
    #[error("names cannot cross volumes: {0}")]
    CrossVolume(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("refused: {0}")]
    Refused(String),
    /// The remote copy a cache store reads from could not be read (down, refused).
    #[error("remote copy unavailable: {0}")]
    Remote(String),
    #[error("read-only: {0}")]
    ReadOnly(String),
    #[error("no space left on device while {context}")]
    NoSpace { context: String },
    #[error("corrupt data in {what}: chunk {chunk} ({detail})")]
    Corrupt {
        what: String,
        chunk: ChunkId,
        detail: String,
    },
    #[error(
        "store refuses writes: an earlier fsync failed ({0}); reopen the store and run verify"
    )]
    Poisoned(String),
    #[error("I/O error while {context} at {path}: {source}")]
    Io {
        context: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata database error while {context}: {source}")]
    Db {
        context: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store format: {0}")]
    Format(String),
    #[error("file {0} changed during ingest; will retry")]
    Raced(FileId),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// Wraps an I/O error with context; ENOSPC becomes `NoSpace`.
    pub fn io(
        context: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        let context = context.into();
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.raw_os_error() == Some(libc::EDQUOT)
        {
            let path: PathBuf = path.into();
            return StoreError::NoSpace {
                context: format!("{context} at {}", path.display()),
            };
        }
        if source.raw_os_error() == Some(libc::EFBIG) {
            let path: PathBuf = path.into();
            return StoreError::TooBig(format!("{context} at {}", path.display()));
        }
        StoreError::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// Wraps a SQLite error; SQLITE_FULL becomes `NoSpace`.
    pub fn db(context: impl Into<String>, source: rusqlite::Error) -> Self {
        let context = context.into();
        if let rusqlite::Error::SqliteFailure(e, _) = &source {
            if e.code == rusqlite::ErrorCode::DiskFull {
                return StoreError::NoSpace { context };
            }
        }
        StoreError::Db { context, source }
    }
}

/// Adds context to rusqlite results.
pub(crate) trait DbContext<T> {
    fn ctx(self, context: &str) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, rusqlite::Error> {
    fn ctx(self, context: &str) -> Result<T> {
        self.map_err(|e| StoreError::db(context, e))
    }
}
