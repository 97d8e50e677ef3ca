//! Content lists: a file's bytes as an ordered list of chunks.

use crate::error::{Result, StoreError};
use crate::format::CONTENT_MAGIC;
use crate::ids::ChunkId;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContentList {
    /// (length, chunk) in file order.
    pub chunks: Vec<(u32, ChunkId)>,
    /// Start offset of each chunk; `starts.len() == chunks.len() + 1`, last = total.
    starts: Vec<u64>,
}

impl ContentList {
    pub fn new(chunks: Vec<(u32, ChunkId)>) -> Self {
        let mut starts = Vec::with_capacity(chunks.len() + 1);
        let mut p = 0u64;
        starts.push(0);
        for (l, _) in &chunks {
            p += *l as u64;
            starts.push(p);
        }
        ContentList { chunks, starts }
    }

    pub fn len(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.chunks.len() * 36);
        out.extend_from_slice(CONTENT_MAGIC);
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for (l, id) in &self.chunks {
            out.extend_from_slice(&l.to_le_bytes());
            out.extend_from_slice(id.as_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        let bad = || StoreError::Format("malformed content list".into());
        if b.len() < 8 || &b[..4] != CONTENT_MAGIC {
            return Err(bad());
        }
        let n = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
        if b.len() != 8 + n * 36 {
            return Err(bad());
        }
        let chunks = b[8..]
            .chunks_exact(36)
            .map(|e| {
                (
                    u32::from_le_bytes(e[..4].try_into().unwrap()),
                    ChunkId::from_slice(&e[4..]).unwrap(),
                )
            })
            .collect();
        Ok(ContentList::new(chunks))
    }

    /// Pieces covering `[off, off+len)`: (chunk index, offset within chunk, length).
    pub fn pieces(&self, off: u64, len: u64) -> Vec<(usize, usize, usize)> {
        let end = (off + len).min(self.len());
        let mut out = Vec::new();
        if off >= end {
            return out;
        }
        let mut i = self.starts.partition_point(|s| *s <= off) - 1;
        let mut pos = off;
        while pos < end && i < self.chunks.len() {
            let cs = self.starts[i];
            let ce = self.starts[i + 1];
            let take = ce.min(end) - pos;
            out.push((i, (pos - cs) as usize, take as usize));
            pos += take;
            i += 1;
        }
        out
    }

    /// The list cut to its first `len` bytes; the last chunk may be only partly used,
    /// so it is reported for the caller to re-chunk.
    pub fn prefix(&self, len: u64) -> (ContentList, Option<(ChunkId, u32)>) {
        if len >= self.len() {
            return (self.clone(), None);
        }
        let i = self.starts.partition_point(|s| *s <= len) - 1;
        let whole = self.chunks[..i].to_vec();
        let partial =
            (len > self.starts[i]).then(|| (self.chunks[i].1, (len - self.starts[i]) as u32));
        (ContentList::new(whole), partial)
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
        let (p, part) = c.prefix(25);
        assert_eq!(p.len(), 20);
        assert_eq!(part, Some((ChunkId([2; 32]), 5)));
    }
}
