//! File handles of the export: stateless encodings of every node kind.
//!
//! On the wire a handle is the export's generation (8 bytes, little endian; see
//! `crate::nfs`) followed by one of:
//! ```text
//! 1                               export root (lists volumes)
//! 2 | ino u64                     live file, directory or symlink
//! 3 | volume u64                  /<volume>/.snapshots
//! 4 | snapshot u64                /<volume>/.snapshots/<name>
//! 5 | snapshot u64 | dir [32] | ino u64   entry `ino` of snapshot directory object `dir`
//! ```
//! Snapshot handles name the directory object holding the entry, so resolving one needs
//! no table: the object is immutable.

use storage::{ChunkId, FileId, SnapshotId, VolumeId};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Root,
    Live(FileId),
    SnapDir(VolumeId),
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
            Node::SnapDir(v) => {
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
            (3, 9) => Node::SnapDir(VolumeId(u(1..9)?)),
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
        Node::SnapDir(v) => (0b10 << 62) | (v.0 & ((1 << 40) - 1)),
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
            Node::SnapDir(VolumeId(3)),
            Node::SnapRoot(SnapshotId(9)),
            Node::SnapEntry {
                snap: SnapshotId(9),
                dir: ChunkId([7; 32]),
                ino: FileId(1234),
            },
        ] {
            let h = KuraHandle::new(&n);
            assert!(h.as_bytes().len() + 8 <= 64);
            assert_eq!(
                KuraHandle::from_bytes(h.as_bytes()).unwrap().node(),
                Some(n)
            );
        }
        assert!(KuraHandle::from_bytes(&[2, 1, 2]).is_none());
        assert!(KuraHandle::from_bytes(&[9]).is_none());
        assert!(KuraHandle::from_bytes(&[]).is_none());
    }
}
