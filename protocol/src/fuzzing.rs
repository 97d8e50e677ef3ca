//! The fuzz target: RPC records as they arrive on a connection, through the record
//! reader, the header parser and every procedure's argument decoding, into a real store.
//!
//! Seeds are real client traffic (`protocol/fuzz/seeds/`, recorded from libnfs and
//! `nfs3_client` sessions by the ignored test `record_fuzz_seeds` in `tests/fuzz.rs`).
//! A recording is replayed against a fresh store set up exactly as when it was recorded
//! (same handle secret, export identity and generation), so its handles are valid and
//! the mutations reach past the handle gate. The same [`Target::run`] serves the stable
//! test (a bounded number of structure-aware mutations, in the README test command)
//! and the cargo-fuzz target in `protocol/fuzz/` for machines with a nightly toolchain.
//!
//! What a case must never do: panic, hang, answer with another xid, or leave a store
//! that verify finds damaged.

use crate::fs::{ExportPolicy, KuraFs, Shared};
use crate::handle::{HandleCodec, HandleKey};
use crate::nfs::NfsService;
use crate::rpc::{Call, Service};
use std::path::Path;
use std::sync::Arc;
use storage::{NewAttr, Store, StoreOptions};

/// A recording: what the export was, and what each client connection sent.
pub struct Recording {
    pub secret: [u8; 32],
    pub identity: String,
    /// Client bytes of each connection, in order, exactly as sent (record marks too).
    pub sessions: Vec<Vec<u8>>,
}

impl Recording {
    /// Reads `dir/meta` (`secret-hex identity`) and `dir/session-*.bin`.
    pub fn load(dir: &Path) -> std::io::Result<Recording> {
        let meta = std::fs::read_to_string(dir.join("meta"))?;
        let (hex, identity) = meta
            .trim()
            .split_once(' ')
            .ok_or_else(|| std::io::Error::other("meta: want 'secret-hex identity'"))?;
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("zz"), 16)
                .map_err(|_| std::io::Error::other("meta: bad secret"))?;
        }
        let mut names: Vec<_> = std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "bin"))
            .collect();
        names.sort();
        let sessions = names
            .iter()
            .map(std::fs::read)
            .collect::<std::io::Result<_>>()?;
        Ok(Recording {
            secret,
            identity: identity.to_string(),
            sessions,
        })
    }
}

/// The store and export a recording was made against, made again.
pub struct Target {
    rt: tokio::runtime::Runtime,
    svc: Arc<NfsService>,
    store: Arc<Store>,
    _dir: tempfile::TempDir,
}

/// The volume recordings are made on, as `kura serve` creates it.
pub const VOLUME: &str = "backup";

/// The store a recording is made against and replayed into: a fresh store at `dir`
/// with [`VOLUME`] and service begun; returns it and its handle generation. Made the
/// same way both times, so that file ids and handles in a recording stay valid.
pub fn recording_store(dir: &Path) -> (Arc<Store>, u64) {
    let opts = StoreOptions {
        ingest_threads: 1,
        reserve_bytes: 0,
        ..StoreOptions::default()
    };
    let store = Arc::new(Store::open(dir, opts).expect("open store"));
    store
        .create_volume(
            VOLUME,
            NewAttr {
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
        )
        .expect("volume");
    let generation = store.begin_service("fuzz").expect("begin service");
    (store, generation)
}

impl Target {
    pub fn new(secret: &[u8; 32], identity: &str) -> Target {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, generation) = recording_store(dir.path());
        let codec = HandleCodec::new(HandleKey::derive(secret, identity), generation);
        let policy = ExportPolicy {
            root_squash: false,
            ..ExportPolicy::default()
        };
        let fs = KuraFs::new(Shared::new(store.clone(), 8), policy);
        let svc = NfsService::new(fs, codec, generation, 2049);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        Target {
            rt,
            svc,
            store,
            _dir: dir,
        }
    }

    /// Feeds one connection's bytes through the record reader and serves every call.
    /// Panics when a reply is not to its call. Returns (calls, calls answered with
    /// success and status 0).
    pub fn run(&self, wire: &[u8]) -> (u64, u64) {
        let svc = self.svc.clone();
        self.rt.block_on(async move {
            let (mut calls, mut ok) = (0, 0);
            let mut r = wire;
            let peer = "127.0.0.1:800".parse().unwrap();
            // Bounded: a record is at least 4 bytes of the input.
            while let Ok(Some(msg)) = crate::rpc::read_record(&mut r).await {
                let Ok(call) = Call::parse(msg) else { continue };
                let xid = call.xid;
                let reply = tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    svc.clone().call(peer, call),
                )
                .await
                .expect("a call must not hang");
                calls += 1;
                if let Some(reply) = reply {
                    let b = reply.to_bytes();
                    assert_eq!(
                        u32::from_be_bytes(b[4..8].try_into().unwrap()),
                        xid,
                        "a reply answers its own call"
                    );
                    ok += u64::from(b.len() >= 32 && b[12..16] == [0; 4] && b[24..32] == [0; 8]);
                }
            }
            (calls, ok)
        })
    }

    /// Whether the store is still sound after what was sent.
    pub fn check(&self) {
        self.store.ingest_all(None).ok();
        let r = self.store.verify().expect("verify runs");
        assert!(r.is_clean(), "store damaged: {:?}", r.damaged);
    }
}

/// A small deterministic generator (xorshift64*), so that a failing case can be
/// replayed from its number.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// The records of a connection's bytes: (offset of the record mark, record length).
fn records(wire: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= wire.len() {
        let mark = u32::from_be_bytes(wire[at..at + 4].try_into().unwrap());
        let len = (mark & 0x7fff_ffff) as usize;
        if at + 4 + len > wire.len() {
            break;
        }
        out.push((at, len));
        at += 4 + len;
    }
    out
}

/// Mutates one connection's bytes the way XDR goes wrong: words set to edge values
/// (lengths, counts, offsets, enum tags), bits flipped, records cut short, split into
/// fragments, duplicated or dropped, bytes of another record spliced in. Record marks
/// are kept consistent unless the mutation is of the mark itself.
pub fn mutate(wire: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let recs = records(wire);
    if recs.is_empty() {
        return wire.to_vec();
    }
    let (at, len) = recs[rng.below(recs.len())];
    let mut body = wire[at + 4..at + 4 + len].to_vec();
    let edge = [
        0u32,
        1,
        2,
        3,
        4,
        0x7f,
        0xff,
        0x100,
        0x3ff,
        0x400,
        0xffff,
        0x10000,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_fffe,
        0xffff_ffff,
    ];
    let mut mark_override = None;
    let mut fragments = false;
    for _ in 0..1 + rng.below(3) {
        let words = body.len() / 4;
        match rng.below(8) {
            0 | 1 if words > 0 => {
                // An edge value in a word after the call header (arguments), or anywhere.
                let w = if words > 10 && rng.below(4) != 0 {
                    10 + rng.below(words - 10)
                } else {
                    rng.below(words)
                };
                let v = edge[rng.below(edge.len())];
                body[4 * w..4 * w + 4].copy_from_slice(&v.to_be_bytes());
            }
            2 if !body.is_empty() => {
                let i = rng.below(body.len());
                body[i] ^= 1 << rng.below(8);
            }
            3 if !body.is_empty() => body.truncate(rng.below(body.len())),
            4 => {
                // Splice bytes of another record (another handle, another name…).
                if !other.is_empty() && !body.is_empty() {
                    let n = 1 + rng.below(64.min(other.len()));
                    let from = rng.below(other.len() - n + 1);
                    let to = rng.below(body.len());
                    let end = (to + n).min(body.len());
                    body[to..end].copy_from_slice(&other[from..from + (end - to)]);
                }
            }
            5 => body.extend((0..rng.below(64)).map(|_| rng.next_u64() as u8)),
            6 => fragments = true,
            _ => mark_override = Some(edge[rng.below(edge.len())]),
        }
    }
    let mut out = wire[..at].to_vec();
    match mark_override {
        Some(m) => {
            out.extend_from_slice(&m.to_be_bytes());
            out.extend_from_slice(&body);
        }
        None if fragments && body.len() > 8 => {
            let cut = 1 + rng.below(body.len() - 1);
            out.extend_from_slice(&(cut as u32).to_be_bytes());
            out.extend_from_slice(&body[..cut]);
            out.extend_from_slice(&((body.len() - cut) as u32 | 0x8000_0000).to_be_bytes());
            out.extend_from_slice(&body[cut..]);
        }
        None => {
            out.extend_from_slice(&(body.len() as u32 | 0x8000_0000).to_be_bytes());
            out.extend_from_slice(&body);
        }
    }
    // Sometimes the record twice (retransmission), sometimes dropped.
    match rng.below(6) {
        0 => out.extend_from_slice(&wire[at..at + 4 + len]),
        1 => out.truncate(at),
        _ => {}
    }
    out.extend_from_slice(&wire[at + 4 + len..]);
    out
}

/// One case for a coverage-guided fuzzer: the input picks a session and drives the
/// mutator (first 8 bytes), or, with a leading 0xff, is sent as raw connection bytes.
pub fn one_input(rec: &Recording, target: &Target, data: &[u8]) {
    if data.first() == Some(&0xff) {
        target.run(&data[1..]);
        return;
    }
    let seed = data
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
    let mut rng = Rng::new(seed);
    let n = rec.sessions.len();
    if n == 0 {
        return;
    }
    let victim = rng.below(n);
    let other = &rec.sessions[rng.below(n)];
    for (i, s) in rec.sessions.iter().enumerate() {
        if i == victim {
            target.run(&mutate(s, other, &mut rng));
        } else {
            target.run(s);
        }
    }
}
