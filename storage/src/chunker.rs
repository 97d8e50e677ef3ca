//! Content-defined chunking (FastCDC 2020) over a stream, with bounded memory.
//!
//! Boundaries depend only on content: every cut is found by scanning from the previous
//! cut, and the buffer always holds at least `max` bytes past a chunk start unless the
//! stream ends, so a cut never depends on where a read happened to stop.

use crate::format::{CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};
use fastcdc::v2020::FastCDC;
use std::io::{self, Read};

/// Chunk size limits (bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams {
            min: CHUNK_MIN,
            avg: CHUNK_AVG,
            max: CHUNK_MAX,
        }
    }
}

/// Cuts a stream into chunks, handing out batches of whole chunks that borrow one buffer.
pub struct Chunker<R> {
    src: R,
    params: ChunkerParams,
    buf: Vec<u8>,
    /// Bytes of `buf` that hold data.
    filled: usize,
    /// Start of the first byte not yet handed out.
    start: usize,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    /// `buf_size` bounds memory; it is raised to at least 4x the maximum chunk size.
    pub fn new(src: R, params: ChunkerParams, buf_size: usize) -> Self {
        let size = buf_size.max(params.max as usize * 4);
        Chunker {
            src,
            params,
            buf: vec![0; size],
            filled: 0,
            start: 0,
            eof: false,
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        while !self.eof && self.filled < self.buf.len() {
            match self.src.read(&mut self.buf[self.filled..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Cuts the filled buffer: returns where the last whole chunk ends and the lengths.
    ///
    /// Large buffers are cut by two threads: the second half is cut speculatively as if
    /// a chunk started at its first byte, while the first thread cuts from the true
    /// start. Once the true cuts reach a position the speculative run also cut at, both
    /// runs agree from there on (a cut depends only on the bytes after the previous one),
    /// so the speculative cuts are taken. If they never meet, the first thread simply
    /// cuts to the end. Either way the result equals a sequential cut.
    fn cut(&self) -> (usize, Vec<usize>) {
        let data = &self.buf[..self.filled];
        if data.is_empty() {
            return (0, Vec::new());
        }
        let cdc = FastCDC::new(data, self.params.min, self.params.avg, self.params.max);
        let max = self.params.max as usize;
        let eof = self.eof;
        // Cut points (chunk ends) from `start`, stopping at `stop_after` once passed it
        // and `stop` says so, or where the buffer-end rule says to wait for more data.
        let run = |start: usize, stop: &dyn Fn(usize) -> bool| -> Vec<usize> {
            let mut ends = Vec::new();
            let mut pos = start;
            while pos < data.len() {
                let remaining = data.len() - pos;
                // Without at least `max` bytes ahead, a cut could depend on the buffer end.
                if remaining < max && !eof {
                    break;
                }
                let (_, end) = cdc.cut(pos, remaining);
                ends.push(end);
                pos = end;
                if stop(pos) {
                    break;
                }
            }
            ends
        };
        let ends = if data.len() >= 16 * max {
            let mid = data.len() / 2;
            let (mut first, spec) = rayon::join(
                || {
                    // Cut the first half only; the continuation is decided below.
                    run(0, &|p| p >= mid)
                },
                || run(mid, &|_| false),
            );
            let mut pos = first.last().copied().unwrap_or(0);
            loop {
                if pos >= data.len()
                    || (first.last() == Some(&pos) && spec.binary_search(&pos).is_ok())
                {
                    if let Ok(i) = spec.binary_search(&pos) {
                        first.extend_from_slice(&spec[i + 1..]);
                    }
                    break;
                }
                let more = run(pos, &|_| true);
                match more.first() {
                    Some(&e) => {
                        first.push(e);
                        pos = e;
                    }
                    None => break,
                }
            }
            first
        } else {
            run(0, &|_| false)
        };
        let mut lens = Vec::with_capacity(ends.len());
        let mut prev = 0;
        for e in ends {
            lens.push(e - prev);
            prev = e;
        }
        (prev, lens)
    }

    /// Returns the next batch: the buffer and the chunk lengths in it, in order.
    /// An empty batch means the stream is finished.
    pub fn next_batch(&mut self) -> io::Result<(&[u8], Vec<usize>)> {
        self.fill()?;
        let (pos, lens) = self.cut();
        self.start = pos;
        Ok((&self.buf[..pos], lens))
    }

    /// Like [`Chunker::next_batch`] but hands out an owned buffer, so that the caller
    /// can process one batch while the next is read and cut. `spare` is a buffer handed
    /// out earlier and no longer needed (reusing it avoids page faults). None at the end.
    pub fn next_owned(
        &mut self,
        spare: Option<Vec<u8>>,
    ) -> io::Result<Option<(Vec<u8>, Vec<usize>)>> {
        self.fill()?;
        let (pos, lens) = self.cut();
        if pos == 0 {
            return Ok(None);
        }
        let mut next = spare.unwrap_or_default();
        next.resize(self.buf.len(), 0);
        let carry = self.filled - pos;
        next[..carry].copy_from_slice(&self.buf[pos..self.filled]);
        let mut out = std::mem::replace(&mut self.buf, next);
        out.truncate(pos);
        self.filled = carry;
        self.start = 0;
        Ok(Some((out, lens)))
    }
}

/// Chunk lengths of a whole in-memory slice (for tests and small objects).
pub fn chunk_lengths(data: &[u8], params: ChunkerParams) -> Vec<usize> {
    FastCDC::new(data, params.min, params.avg, params.max)
        .map(|c| c.length)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerParams {
        ChunkerParams {
            min: 256,
            avg: 1024,
            max: 4096,
        }
    }

    fn stream_lengths(data: &[u8], params: ChunkerParams, buf: usize) -> Vec<usize> {
        let mut c = Chunker::new(data, params, buf);
        let mut out = Vec::new();
        loop {
            let (b, lens) = c.next_batch().unwrap();
            if b.is_empty() {
                break;
            }
            out.extend(lens);
        }
        out
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    proptest! {
        /// Streaming with any buffer size cuts exactly where whole-slice chunking cuts,
        /// and the chunks concatenate to the input.
        #[test]
        fn stream_matches_slice(len in 0usize..200_000, seed in any::<u64>(), buf in 1usize..70_000) {
            let data = pseudo_random(len, seed);
            let whole = chunk_lengths(&data, small());
            let streamed = stream_lengths(&data, small(), buf);
            prop_assert_eq!(&whole, &streamed);
            prop_assert_eq!(streamed.iter().sum::<usize>(), data.len());
            for l in &streamed[..streamed.len().saturating_sub(1)] {
                prop_assert!(*l >= 256 && *l <= 4096);
            }
        }

        /// Boundaries depend only on content: a prefix inserted before the data shifts
        /// only the first few cuts; later cuts realign.
        #[test]
        fn boundaries_realign_after_insert(seed in any::<u64>(), prefix in 1usize..5000) {
            let data = pseudo_random(300_000, seed);
            let mut shifted = pseudo_random(prefix, seed ^ 0xdead);
            shifted.extend_from_slice(&data);
            let cuts = |lens: Vec<usize>, base: usize| {
                let mut p = 0;
                lens.into_iter().map(|l| { p += l; p as i64 - base as i64 }).collect::<std::collections::BTreeSet<i64>>()
            };
            let a = cuts(chunk_lengths(&data, small()), 0);
            let b = cuts(chunk_lengths(&shifted, small()), prefix);
            let common = a.intersection(&b).count();
            prop_assert!(common * 10 >= a.len() * 8, "only {} of {} cuts realigned", common, a.len());
        }
    }

    /// Golden boundaries with the default parameters: changing them silently would break
    /// dedup against every existing store.
    #[test]
    fn golden_default_boundaries() {
        let data = pseudo_random(1 << 20, 42);
        let lens = chunk_lengths(&data, ChunkerParams::default());
        let first: Vec<usize> = lens.iter().take(6).copied().collect();
        let digest = crate::ids::ChunkId::of(
            &lens
                .iter()
                .flat_map(|l| (*l as u64).to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        assert_eq!(lens.len(), 109);
        assert_eq!(first, vec![8349, 4592, 2466, 4293, 4991, 2187]);
        assert_eq!(
            digest.to_hex(),
            "29c1290a57de7ed6724385d3a0cca7a9e7df129c4438e91c62972e0572174c69"
        );
    }
}
