//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use storage::{NewAttr, Store, StoreOptions};

pub fn opts() -> StoreOptions {
    StoreOptions {
        cache_bytes: 4 << 20,
        ingest_threads: 2,
        ingest_buffer: 1 << 20,
        // Tiny leaves, so that every test file of more than 16 chunks is stored as an
        // index of leaf lists (the layout of huge files).
        content_part_entries: 16,
        ..Default::default()
    }
}

pub fn owner() -> NewAttr {
    NewAttr {
        mode: 0o755,
        uid: 1000,
        gid: 1000,
    }
}

pub fn file_mode() -> NewAttr {
    NewAttr {
        mode: 0o644,
        uid: 1000,
        gid: 1000,
    }
}

pub fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, opts()).expect("open store")
}

/// Deterministic bytes that compress somewhat and dedup within themselves a little.
pub fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 7 < 3 {
                b'a' + (x % 4) as u8
            } else {
                (x >> 32) as u8
            }
        })
        .collect()
}

pub fn read_all(s: &Store, ino: storage::FileId) -> Vec<u8> {
    let size = s.getattr(ino).unwrap().size;
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let (b, eof) = s.read(ino, out.len() as u64, 1 << 20).unwrap();
        out.extend_from_slice(&b);
        if eof {
            break;
        }
    }
    out
}
