//! Read-ahead for clients that read a stored file in order (a client copying a file
//! back over NFS). Such a client asks for a piece at a time, so every bundle it reaches
//! would be decoded and checked while it waits, on one core. When a file's reads run in
//! order, workers (one per core) decode the bundles of the next megabytes into the
//! read cache meanwhile; the read finds them there, or waits for the one being decoded (the cache
//! never decodes a record twice at once).

use crate::chunk_store::ChunkStore;
use crate::ids::ChunkId;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};

/// How far ahead of a reader the worker decodes; it starts the next stretch when the
/// reader is within half of it of the end of the last.
pub const WINDOW: u64 = 8 << 20;

/// Readers followed at once (one per file being read in order).
const STREAMS: usize = 64;

/// Where one file's reader is.
#[derive(Clone, Copy, Default)]
struct Stream {
    /// The end of the furthest read.
    next: u64,
    /// Up to where the worker was asked to decode.
    ahead: u64,
}

pub(crate) struct ReadAhead {
    streams: Mutex<LruCache<ChunkId, Stream>>,
    tx: Option<SyncSender<Vec<ChunkId>>>,
    /// Pieces a stretch is cut into (one per worker, so that they decode it together).
    pieces: usize,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl ReadAhead {
    /// A read-ahead decoding into `chunks`' read cache on a thread per core.
    pub fn new(chunks: Arc<ChunkStore>) -> ReadAhead {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
        // A stretch is handed out in one piece per worker; a few queued at most: workers
        // behind their readers drop requests rather than decode what was read already.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<ChunkId>>(2 * n);
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..n)
            .filter_map(|i| {
                let (chunks, rx) = (chunks.clone(), rx.clone());
                std::thread::Builder::new()
                    .name(format!("kura-readahead-{i}"))
                    .spawn(move || loop {
                        let Ok(ids) = rx.lock().unwrap().recv() else {
                            return;
                        };
                        // A failure is the reader's to report when it gets there.
                        let _ = chunks.get_many(&ids, &|| "read-ahead".into(), None);
                    })
                    .ok()
            })
            .collect::<Vec<_>>();
        ReadAhead {
            streams: Mutex::new(LruCache::new(NonZeroUsize::new(STREAMS).unwrap())),
            tx: (!workers.is_empty()).then_some(tx),
            pieces: workers.len().max(1),
            workers,
        }
    }

    /// Notes a read of `n` bytes at `off` of content `c` (`size` bytes long). Returns
    /// the stretch (offset, length) to decode ahead when the reads run in order (give
    /// or take a client's parallel reads) and the reader is near the end of what was
    /// decoded ahead already.
    pub fn after_read(&self, c: &ChunkId, off: u64, n: u64, size: u64) -> Option<(u64, u64)> {
        let end = off + n;
        let mut m = self.streams.lock().unwrap();
        let st = m.get_or_insert_mut(*c, Stream::default);
        if off.abs_diff(st.next) > WINDOW / 4 {
            // A jump: follow from here, nothing decoded ahead.
            *st = Stream {
                next: end,
                ahead: end,
            };
            return None;
        }
        st.next = st.next.max(end);
        st.ahead = st.ahead.max(st.next);
        if st.ahead >= size || st.ahead - st.next > WINDOW / 2 {
            return None;
        }
        let from = st.ahead;
        st.ahead = (from + WINDOW).min(size);
        Some((from, st.ahead - from))
    }

    /// Hands the workers the chunks of a stretch; dropped when they are busy.
    pub fn submit(&self, ids: Vec<ChunkId>) {
        if let Some(tx) = &self.tx {
            for piece in ids.chunks(ids.len().div_ceil(self.pieces).max(1)) {
                let _ = tx.try_send(piece.to_vec());
            }
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // The worker ends when its queue closes; wait for it, so that nothing reads
        // the store after it is closed.
        self.tx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow(offsets: &[(u64, u64)], size: u64) -> Vec<Option<(u64, u64)>> {
        let ra = ReadAhead {
            streams: Mutex::new(LruCache::new(NonZeroUsize::new(STREAMS).unwrap())),
            tx: None,
            pieces: 1,
            workers: Vec::new(),
        };
        let c = ChunkId([7; 32]);
        offsets
            .iter()
            .map(|&(off, n)| ra.after_read(&c, off, n, size))
            .collect()
    }

    #[test]
    fn in_order_reads_run_ahead_once_per_stretch() {
        const M: u64 = 1 << 20;
        // 4M before 3M: a client's parallel reads arrive a little out of order.
        let reads = [
            (0, M),
            (M, M),
            (2 * M, M),
            (4 * M, M),
            (3 * M, M),
            (5 * M, M),
        ];
        let got = follow(&reads, 100 * M);
        assert_eq!(
            got,
            [
                Some((M, WINDOW)),
                None,
                None,
                Some((M + WINDOW, WINDOW)),
                None,
                None
            ],
            "the first read starts it; the next stretch when the reader is half-way into the last"
        );
    }

    #[test]
    fn jumps_and_file_ends_stop_it() {
        const M: u64 = 1 << 20;
        let got = follow(&[(50 * M, M), (0, M)], 100 * M);
        assert_eq!(got[0], None, "a first read far into the file is a jump");
        assert_eq!(got[1], None, "so is going back");
        let got = follow(&[(0, M)], M);
        assert_eq!(got[0], None, "nothing past the end of a file");
        let got = follow(&[(0, M)], 3 * M);
        assert_eq!(got[0], Some((M, 2 * M)), "up to the end");
    }
}
