//! Objects kept somewhere else: a store opened as the local cache of a DR copy (`kura
//! serve --from`, `kura restore --from`) holds snapshot records and no packs of its
//! own, and reads each object it lacks from the copy through this trait.
//!
//! The store checks what it is given: an object whose BLAKE3 hash is not its id is
//! `Corrupt`, as a damaged local record would be.

use crate::ids::ChunkId;
use std::sync::Arc;

pub trait RemoteObjects: Send + Sync {
    /// The raw (decoded) bytes of object `id`, or `None` when the copy does not have it.
    /// An error says why the copy could not be read (down, refused, damaged).
    fn fetch(&self, id: &ChunkId) -> std::result::Result<Option<Arc<Vec<u8>>>, String>;
}
