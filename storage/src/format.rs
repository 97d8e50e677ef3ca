//! On-disk formats of the store, frozen here.
//!
//! DO NOT MODIFY the constants or encodings in this file without bumping
//! [`STORE_FORMAT`] and keeping a reader for the old version: stores written by earlier
//! versions must keep opening (pinned by `tests/format_golden.rs` and its fixture).
//!
//! Layout of a store directory:
//! ```text
//! kura.db            SQLite (WAL): volumes, inodes, chunk index, packs, snapshots, damage
//! packs/<id:016x>.pack   append-only pack files, immutable once another pack is opened
//! staging/<ino>      landing-zone staging file of a file (sparse)
//! staging/<ino>.j    range journal of a staging file that overlays ingested content
//! quarantine/        copies of damaged pack records found by verify
//! LOCK               flock held by the process that has the store open
//! ```
//!
//! Pack file: `PACK_MAGIC` (8 bytes), then records, each:
//! `RECORD_MAGIC u32 LE | kind u8 | codec u8 | reserved u16 | raw_len u32 LE |
//!  stored_len u32 LE | id [32]` (48-byte header) followed by `stored_len` bytes.
//! `id` is BLAKE3 of the raw (uncompressed) bytes.
//!
//! Data chunks are stored in *bundles*: a record of kind `KIND_BUNDLE` whose raw bytes are
//! the concatenation of up to `BUNDLE_TARGET` bytes of consecutive new chunks, compressed
//! as one zstd frame (a larger window than one chunk compresses much better; dedup stays
//! at chunk granularity). The chunk index row of a member names the bundle record and
//! the member's offset inside the raw bundle (`inner_off`; -1 for a record that is one
//! object). Content lists and directory objects are single records.
//!
//! Content list (object kind `KIND_CONTENT`): `CONTENT_MAGIC` then `count u32 LE`, then
//! `count` entries of `len u32 LE | id [32]`. A file's bytes are the concatenation of the
//! listed chunks; its size may be larger (the tail reads as zeros) or smaller. An entry
//! whose id is all zeros (`ChunkId::HOLE`, format 2) is a hole of `len` zero bytes:
//! nothing is stored for it, and reads, GC and verify skip it.
//!
//! Directory object (kind `KIND_DIR`): `DIR_MAGIC_V2` (or `DIR_MAGIC` before format 3),
//! `count u32`, entries sorted by name, each encoded by `tree::encode_entry`. Entries
//! of one object with the same file id are names of one file (hard links). A
//! snapshot's root entry (`snapshots.root_entry`) keeps the format 1 entry encoding.
//!
//! `ingest_parts` table: leaf content lists an ingest in progress has committed (GC
//! marks them); cleared when the file commits, when the ingest fails, and at open.
//!
//! Staging journal: 16-byte records `offset u64 LE | len u64 LE`; `len == u64::MAX` means
//! "truncated to `offset`".

/// Version of the whole store layout, recorded in the `meta` table.
/// 2: content lists may hold hole entries. A format 1 store is format 2 as it is; the
/// number is raised when it is opened, so that older kura refuses it afterwards.
/// 3: names live in an `entries` table apart from inodes (hard links, `nlink`), and
/// directory objects may be `DIR_MAGIC_V2` (each entry ends with its link count). A
/// format 1 or 2 store is migrated when opened (`db::migrate_to_v3`).
/// 4: snapshots carry a label, a hold, a lock date and a busy mark; the store keeps a
/// job history (`jobs`). Columns added in place when a format 3 store is opened.
/// 5: `staged_copies` holds the durable copy of small staged files (the bytes a COMMIT
/// made durable through the WAL instead of an fsync of the staging file); an older kura
/// would not restore them after a power loss, so it must refuse the store. The table
/// is created when a format 4 store is opened.
pub const STORE_FORMAT: u32 = 5;

pub const PACK_MAGIC: &[u8; 8] = b"KURAPK01";
pub const RECORD_MAGIC: u32 = 0x4b43_4b31; // "1KCK" little-endian
pub const RECORD_HEADER_LEN: usize = 48;

pub const KIND_DATA: u8 = 0;
pub const KIND_CONTENT: u8 = 1;
pub const KIND_DIR: u8 = 2;
pub const KIND_BUNDLE: u8 = 4;

/// Raw bytes of new chunks collected into one bundle before it is compressed.
pub const BUNDLE_TARGET: usize = 1024 * 1024;

pub const CODEC_RAW: u8 = 0;
pub const CODEC_ZSTD: u8 = 1;

pub const CONTENT_MAGIC: &[u8; 4] = b"KCL1";
/// Index of leaf content lists (kind `KIND_CONTENT` too): `CONTENT_INDEX_MAGIC`,
/// `count u32 LE`, then `count` entries of `len u64 LE | leaf id [32]`.
pub const CONTENT_INDEX_MAGIC: &[u8; 4] = b"KCL2";
pub const DIR_MAGIC: &[u8; 4] = b"KDR1";
/// Directory object of format 3: as `DIR_MAGIC`, and each entry ends with `nlink u32 LE`
/// (so that a snapshot shows which files are linked). Format 1 entries read as nlink 1.
pub const DIR_MAGIC_V2: &[u8; 4] = b"KDR2";

pub const JOURNAL_TRUNCATE: u64 = u64::MAX;

/// Chunker parameters. Part of the format in effect: changing them does not break
/// reading, but it breaks dedup against existing data.
pub const CHUNK_MIN: u32 = 2 * 1024;
pub const CHUNK_AVG: u32 = 8 * 1024;
pub const CHUNK_MAX: u32 = 64 * 1024;

/// Largest a pack grows before a new one is opened.
pub const PACK_TARGET_SIZE: u64 = 64 * 1024 * 1024;

/// Flag bit in `chunks.flags`: verify found this chunk damaged; reads fail.
pub const CHUNK_DAMAGED: i64 = 1;
