//! File handles of the export: stateless encodings of every node kind, sealed with a key
//! of the export.
//!
//! On the wire a handle is `generation u32 LE | node | tag [8]`, at most 61 bytes:
//! - `generation`: the low 32 bits of the store's handle generation (see `crate::nfs`);
//!   another generation is STALE.
//! - `tag`: keyed BLAKE3 of generation and node under the export's [`HandleKey`]. A
//!   handle that another export minted, or that a client made up (file ids are
//!   sequential, so a node alone is guessable), fails the tag and is STALE before
//!   anything looks at the node.
//!
//! The node is one of:
//! ```text
//! 1                               export root (lists volumes)
//! 2 | ino u64                     live file, directory or symlink
//! 3 | volume u64                  /<volume>/.snapshots
//! 4 | snapshot u64                /<volume>/.snapshots/<name>
//! 5 | snapshot u64 | dir [32] | ino u64   entry `ino` of snapshot directory object `dir`
//! ```
//! Snapshot handles name the directory object holding the entry, so resolving one needs
//! no table: the object is immutable.

use nfs3_types::nfs3::nfsstat3;
use storage::{ChunkId, FileId, SnapshotId, VolumeId};

/// Bytes of the tag that seals a handle.
const TAG_LEN: usize = 8;

/// The key one export seals its handles with. Derived from the store's secret and the
/// export's identity (its address and volume list), so it survives restarts and differs
/// between exports.
#[derive(Clone)]
pub struct HandleKey([u8; 32]);

impl HandleKey {
    /// The key of export `identity` of a store whose handle secret is `secret`.
    pub fn derive(secret: &[u8; 32], identity: &str) -> Self {
        let mut material = secret.to_vec();
        material.extend_from_slice(identity.as_bytes());
        HandleKey(blake3::derive_key("kura 2026-11 nfs handle key", &material))
    }

    /// A fixed key (tests and fuzzing, where handles must be reproducible).
    pub fn fixed(bytes: [u8; 32]) -> Self {
        HandleKey(bytes)
    }
}

impl std::fmt::Debug for HandleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandleKey(..)")
    }
}

/// Seals nodes into wire handles and opens them again, for one export and generation.
#[derive(Clone, Debug)]
pub struct HandleCodec {
    key: HandleKey,
    generation: u32,
}

impl HandleCodec {
    pub fn new(key: HandleKey, generation: u64) -> Self {
        HandleCodec {
            key,
            generation: generation as u32,
        }
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG_LEN] {
        let h = blake3::keyed_hash(&self.key.0, body);
        h.as_bytes()[..TAG_LEN].try_into().expect("8 of 32 bytes")
    }

    /// The wire handle of `node`.
    pub fn seal(&self, node: &Node) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + 49 + TAG_LEN);
        v.extend_from_slice(&self.generation.to_le_bytes());
        v.extend_from_slice(KuraHandle::new(node).as_bytes());
        let tag = self.tag(&v);
        v.extend_from_slice(&tag);
        v
    }

    /// The node of a wire handle: BADHANDLE when it cannot be one of ours at all,
    /// STALE when its tag or generation is not this export's. Nothing else is looked
    /// at before the tag holds.
    pub fn open(&self, wire: &[u8]) -> Result<Node, nfsstat3> {
        if wire.len() < 4 + 1 + TAG_LEN || wire.len() > 64 {
            return Err(nfsstat3::NFS3ERR_BADHANDLE);
        }
        let (body, tag) = wire.split_at(wire.len() - TAG_LEN);
        let want = self.tag(body);
        // Constant time, so the tag cannot be found byte by byte.
        let diff = want.iter().zip(tag).fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff != 0 {
            return Err(nfsstat3::NFS3ERR_STALE);
        }
        if body[..4] != self.generation.to_le_bytes() {
            return Err(nfsstat3::NFS3ERR_STALE);
        }
        KuraHandle::from_bytes(&body[4..])
            .and_then(|h| h.node())
            .ok_or(nfsstat3::NFS3ERR_BADHANDLE)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Root,
    Live(FileId),
    SnapshotsDir(VolumeId),
    SnapRoot(SnapshotId),
    SnapEntry {
        snap: SnapshotId,
        dir: ChunkId,
        ino: FileId,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KuraHandle {
    bytes: Vec<u8>,
}

impl KuraHandle {
    pub fn new(node: &Node) -> Self {
        let mut b = Vec::with_capacity(49);
        match node {
            Node::Root => b.push(1),
            Node::Live(i) => {
                b.push(2);
                b.extend_from_slice(&i.0.to_le_bytes());
            }
            Node::SnapshotsDir(v) => {
                b.push(3);
                b.extend_from_slice(&v.0.to_le_bytes());
            }
            Node::SnapRoot(s) => {
                b.push(4);
                b.extend_from_slice(&s.0.to_le_bytes());
            }
            Node::SnapEntry { snap, dir, ino } => {
                b.push(5);
                b.extend_from_slice(&snap.0.to_le_bytes());
                b.extend_from_slice(dir.as_bytes());
                b.extend_from_slice(&ino.0.to_le_bytes());
            }
        }
        KuraHandle { bytes: b }
    }

    pub fn node(&self) -> Option<Node> {
        let b = &self.bytes;
        let u = |r: std::ops::Range<usize>| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(r)?.try_into().ok()?))
        };
        Some(match (b.first()?, b.len()) {
            (1, 1) => Node::Root,
            (2, 9) => Node::Live(FileId(u(1..9)?)),
            (3, 9) => Node::SnapshotsDir(VolumeId(u(1..9)?)),
            (4, 9) => Node::SnapRoot(SnapshotId(u(1..9)?)),
            (5, 49) => Node::SnapEntry {
                snap: SnapshotId(u(1..9)?),
                dir: ChunkId::from_slice(&b[9..41])?,
                ino: FileId(u(41..49)?),
            },
            _ => return None,
        })
    }
}

impl KuraHandle {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Parses the part after the generation; `None` for anything malformed.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let h = KuraHandle {
            bytes: bytes.to_vec(),
        };
        h.node().map(|_| h)
    }
}

/// The NFS file id of a node: live ids as they are; synthetic nodes in ranges live ids
/// never reach (SQLite ids stay far below 2^40 in practice).
pub fn fileid(node: &Node) -> u64 {
    match node {
        Node::Root => u64::MAX,
        Node::Live(i) => i.0,
        Node::SnapshotsDir(v) => (0b10 << 62) | (v.0 & ((1 << 40) - 1)),
        Node::SnapRoot(s) => (0b10 << 62) | (1 << 61) | (s.0 & ((1 << 40) - 1)),
        Node::SnapEntry { snap, ino, .. } => {
            (0b11 << 62) | ((snap.0 & ((1 << 22) - 1)) << 40) | (ino.0 & ((1 << 40) - 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_reject_garbage() {
        for n in [
            Node::Root,
            Node::Live(FileId(42)),
            Node::SnapshotsDir(VolumeId(3)),
            Node::SnapRoot(SnapshotId(9)),
            Node::SnapEntry {
                snap: SnapshotId(9),
                dir: ChunkId([7; 32]),
                ino: FileId(1234),
            },
        ] {
            let h = KuraHandle::new(&n);
            assert!(4 + h.as_bytes().len() + TAG_LEN <= 64);
            assert_eq!(
                KuraHandle::from_bytes(h.as_bytes()).unwrap().node(),
                Some(n)
            );
        }
        assert!(KuraHandle::from_bytes(&[2, 1, 2]).is_none());
        assert!(KuraHandle::from_bytes(&[9]).is_none());
        assert!(KuraHandle::from_bytes(&[]).is_none());
    }

    #[test]
    fn sealed_handles_open_only_with_their_key_and_generation() {
        let a = HandleCodec::new(HandleKey::derive(&[1; 32], "127.0.0.1:2049|a"), 7);
        let b = HandleCodec::new(HandleKey::derive(&[1; 32], "127.0.0.1:2049|b"), 7);
        let next_gen = HandleCodec::new(HandleKey::derive(&[1; 32], "127.0.0.1:2049|a"), 8);
        let node = Node::SnapEntry {
            snap: SnapshotId(3),
            dir: ChunkId([9; 32]),
            ino: FileId(77),
        };
        let wire = a.seal(&node);
        assert!(wire.len() <= 64, "NFSv3 handles are at most 64 bytes");
        assert_eq!(a.open(&wire), Ok(node));
        assert_eq!(
            b.open(&wire),
            Err(nfsstat3::NFS3ERR_STALE),
            "another export"
        );
        assert_eq!(next_gen.open(&wire), Err(nfsstat3::NFS3ERR_STALE));
        // A guessed neighbour (the next file id) does not carry a valid tag.
        let mut forged = a.seal(&Node::Live(FileId(5)));
        forged[5] ^= 1;
        assert_eq!(a.open(&forged), Err(nfsstat3::NFS3ERR_STALE));
        for short in [&[][..], &[1, 2, 3], &wire[..12]] {
            assert_eq!(a.open(short), Err(nfsstat3::NFS3ERR_BADHANDLE));
        }
        assert_eq!(a.open(&[0; 65]), Err(nfsstat3::NFS3ERR_BADHANDLE));
    }
}
