//! # kura storage
//!
//! Everything kura keeps on disk, as a synchronous library. Callers use [`Store`].
//!
//! ## Data path
//! 1. **Landing zone** ([`staging`]): writes go to a sparse per-file staging file. `write`
//!    survives a killed daemon (bytes are in the OS); `sync` fsyncs (group commit).
//! 2. **Ingest** ([`ingest`]): quiet files (or all, for a snapshot) are read through their
//!    merged view, cut with FastCDC ([`chunker`]), hashed with BLAKE3, deduplicated
//!    against the chunk index, zstd-compressed (raw when that does not shrink them) and
//!    appended to packs ([`pack`], [`chunk_store`]). The file's content becomes a content
//!    list object ([`content`]) and its staging file is dropped.
//! 3. **Namespace** ([`namespace`]): inodes, names and attributes in SQLite ([`db`]).
//! 4. **Snapshots** ([`snapshot`], [`tree`]): content-addressed directory objects, shared
//!    between generations when unchanged.
//! 5. **GC** ([`gc`]) and **verify** ([`verify`]).
//!
//! On-disk formats are described and frozen in [`format`].
//!
//! ## Invariants
//! - A chunk record is fsynced before the index row naming it is committed, and that row
//!   is committed in the same transaction as (or before) any inode or snapshot referring
//!   to it. GC deletes index rows first and pack files last.
//! - GC never deletes a chunk reachable from a live inode, a cached directory tree, a
//!   snapshot, a snapshot capture not yet finished (`snapshot::CaptureRoots`), a leaf
//!   already committed by an ingest in progress (`ingest_parts`), or
//!   pinned by an ingest or snapshot in progress (pins are taken before the index lookup
//!   that decides dedup, and released part by part once the part's leaf is committed,
//!   so an ingest's memory is bounded by one part whatever the file size).
//! - Every read checks the BLAKE3 hash; a mismatch is `StoreError::Corrupt` naming the file.
//! - After a failed fsync the store refuses writes until reopened ([`durable::Latch`]).
//! - A staging file is deleted only after the ingest that replaced it is committed; a
//!   restart rebuilds staging state from the staging files and their journals.
//! - A sealed staged file (a snapshot's capture) keeps its frozen bytes: a write or
//!   truncate below the sealed size copies the bytes it replaces to the side file
//!   first, and the ingester leaves the file to its snapshot until the seal is gone.
//!
//! ## Lock order
//! `gc_lock` → `StagedFile::inner` → `Staging::files` → `db` → pack `writer`; `pins`, caches
//! and the open-pack table are leaves. No lock is held across an fsync except the pack
//! writer's own and, during a snapshot, the db lock.

pub mod chunk_store;
pub mod chunker;
pub mod content;
pub mod db;
pub mod durable;
pub mod error;
pub mod format;
pub mod gc;
pub mod hash_many;
pub mod ids;
pub mod ingest;
pub mod iobuf;
pub mod jobs;
pub mod namespace;
pub mod pack;
pub(crate) mod readahead;
pub mod remote;
pub mod snapshot;
pub mod staging;
pub mod store;
pub mod tree;
pub mod verify;

pub use chunk_store::StreamCache;
pub use chunker::ChunkerParams;
pub use error::{Result, StoreError};
pub use gc::{GcOptions, GcPlan, GcReport, VolumeUsage};
pub use ids::{ChunkId, FileId, PackId, SnapshotId, VolumeId};
pub use ingest::IngestReport;
pub use iobuf::IoBuf;
pub use jobs::{JobRecord, USAGE_KIND};
pub use namespace::{Attr, FileKind, NewAttr, SetAttr, Timespec, Volume};
pub use snapshot::{Capture as SnapshotCapture, SnapshotCancel, SnapshotInfo, SnapshotMeta};
pub use store::{
    DirEntry, Piece, QuiesceHold, Quiesced, StagedUsage, Store, StoreOptions, StoreStats,
};
pub use tree::TreeEntry;
pub use verify::{Damage, RecordDamage, VerifyReport};
