//! Content lists: a file's bytes as an ordered list of chunks.
//!
//! A *leaf* list (`KCL1`) names chunks; an *index* list (`KCL2`) names leaf lists, so
//! that a file of many TiB is a few thousand bounded objects rather than one huge one.
//! Ingest writes a leaf per `content_part_entries` chunks (65,536 by default, ~2.3 MiB
//! encoded, ~512 MiB of file) and an index over them when a file needs more than one.

use crate::error::{Result, StoreError};
use crate::format::{CONTENT_INDEX_MAGIC, CONTENT_MAGIC};
use crate::ids::ChunkId;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContentList {
    /// (length, object) in file order: chunks in a leaf, leaf lists in an index.
    pub entries: Vec<(u64, ChunkId)>,
    /// True for an index of leaf lists.
    pub index: bool,
    /// Start offset of each entry; `starts.len() == entries.len() + 1`, last = total.
    starts: Vec<u64>,
}

impl ContentList {
    /// A leaf list of chunks.
    pub fn new(chunks: Vec<(u32, ChunkId)>) -> Self {
        Self::build(
            chunks.into_iter().map(|(l, id)| (l as u64, id)).collect(),
            false,
        )
    }

    /// An index over leaf lists: (bytes the leaf covers, leaf id).
    pub fn new_index(parts: Vec<(u64, ChunkId)>) -> Self {
        Self::build(parts, true)
    }

    fn build(entries: Vec<(u64, ChunkId)>, index: bool) -> Self {
        let mut starts = Vec::with_capacity(entries.len() + 1);
        let mut p = 0u64;
        starts.push(0);
        for (l, _) in &entries {
            p += *l;
            starts.push(p);
        }
        ContentList {
            entries,
            index,
            starts,
        }
    }

    pub fn len(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn encode(&self) -> Vec<u8> {
        let width = if self.index { 8 } else { 4 };
        let mut out = Vec::with_capacity(8 + self.entries.len() * (32 + width));
        out.extend_from_slice(if self.index {
            CONTENT_INDEX_MAGIC
        } else {
            CONTENT_MAGIC
        });
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (l, id) in &self.entries {
            if self.index {
                out.extend_from_slice(&l.to_le_bytes());
            } else {
                out.extend_from_slice(&(*l as u32).to_le_bytes());
            }
            out.extend_from_slice(id.as_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        let bad = || StoreError::Format("malformed content list".into());
        if b.len() < 8 {
            return Err(bad());
        }
        let index = match &b[..4] {
            m if m == CONTENT_MAGIC => false,
            m if m == CONTENT_INDEX_MAGIC => true,
            _ => return Err(bad()),
        };
        let width = if index { 8 } else { 4 };
        let n = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
        if b.len() != 8 + n * (32 + width) {
            return Err(bad());
        }
        let entries = b[8..]
            .chunks_exact(32 + width)
            .map(|e| {
                let l = if index {
                    u64::from_le_bytes(e[..8].try_into().unwrap())
                } else {
                    u32::from_le_bytes(e[..4].try_into().unwrap()) as u64
                };
                (l, ChunkId::from_slice(&e[width..]).unwrap())
            })
            .collect();
        Ok(Self::build(entries, index))
    }

    /// Pieces covering `[off, off+len)`: (entry index, offset within entry, length).
    pub fn pieces(&self, off: u64, len: u64) -> Vec<(usize, u64, u64)> {
        let end = (off + len).min(self.len());
        let mut out = Vec::new();
        if off >= end {
            return out;
        }
        let mut i = self.starts.partition_point(|s| *s <= off) - 1;
        let mut pos = off;
        while pos < end && i < self.entries.len() {
            let cs = self.starts[i];
            let ce = self.starts[i + 1];
            let take = ce.min(end) - pos;
            out.push((i, pos - cs, take));
            pos += take;
            i += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_range() {
        let ids: Vec<(u32, ChunkId)> = (0..5u8).map(|i| (10, ChunkId([i; 32]))).collect();
        let c = ContentList::new(ids);
        assert_eq!(c.len(), 50);
        assert_eq!(c.pieces(5, 20), vec![(0, 5, 5), (1, 0, 10), (2, 0, 5)]);
        assert_eq!(c.pieces(45, 100), vec![(4, 5, 5)]);
        assert!(c.pieces(50, 10).is_empty());
        assert_eq!(ContentList::decode(&c.encode()).unwrap(), c);
        let idx = ContentList::new_index(vec![(5 << 30, ChunkId([1; 32])), (7, ChunkId([2; 32]))]);
        assert_eq!(idx.len(), (5 << 30) + 7);
        assert_eq!(ContentList::decode(&idx.encode()).unwrap(), idx);
        assert_eq!(
            idx.pieces((5 << 30) - 1, 3),
            vec![(0, (5 << 30) - 1, 1), (1, 0, 2)]
        );
    }
}
