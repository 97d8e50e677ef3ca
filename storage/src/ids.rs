//! Identity newtypes passed between modules.

use std::fmt;

/// BLAKE3 hash of a stored object's plain bytes: a data chunk, a content list or a
/// directory object. All three share one address space in the chunk store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id content lists use for a hole: that many zero bytes, never stored. No
    /// BLAKE3 output is all zeros in practice.
    pub const HOLE: ChunkId = ChunkId([0; 32]);

    pub fn is_hole(&self) -> bool {
        *self == Self::HOLE
    }

    /// An id read from the database; anything but 32 bytes is a damaged row, which
    /// GC and verify must stop at rather than skip (a skipped root is swept).
    pub fn from_row(b: &[u8], what: &str) -> crate::error::Result<ChunkId> {
        ChunkId::from_slice(b).ok_or_else(|| {
            crate::error::StoreError::Format(format!(
                "malformed object id ({} bytes) in {what}",
                b.len()
            ))
        })
    }

    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(ChunkId(b.try_into().ok()?))
    }
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex()[..16])
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.to_hex())
    }
}

macro_rules! int_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
        pub struct $name(pub u64);
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

int_id!(
    /// A live inode. Persistent, never reused, never 0; doubles as READDIR cookie.
    FileId
);
int_id!(
    /// A volume (a named export).
    VolumeId
);
int_id!(
    /// A snapshot row.
    SnapshotId
);
int_id!(
    /// A pack file.
    PackId
);
