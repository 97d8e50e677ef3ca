//! Directory objects: the immutable, content-addressed nodes of a snapshot's tree.
//!
//! A directory object lists its entries sorted by name with their attributes and a
//! reference: the content list of a file, the directory object of a subdirectory.
//! Unchanged subtrees keep their object id, so generations share them.

use crate::error::{Result, StoreError};
use crate::format::{DIR_MAGIC, DIR_MAGIC_V2};
use crate::ids::{ChunkId, FileId};
use crate::namespace::{Attr, FileKind, Timespec};

/// One entry of a directory object (or the root entry of a snapshot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    pub name: Vec<u8>,
    pub attr: Attr,
    /// Content list (files, None when empty) or directory object (dirs).
    pub target_ref: Option<ChunkId>,
    /// Symlink target.
    pub link: Vec<u8>,
}

fn put_ts(out: &mut Vec<u8>, t: Timespec) {
    out.extend_from_slice(&t.sec.to_le_bytes());
    out.extend_from_slice(&t.nsec.to_le_bytes());
}

struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(StoreError::Format("truncated directory object".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn ts(&mut self) -> Result<Timespec> {
        Ok(Timespec {
            sec: self.u64()? as i64,
            nsec: self.u32()?,
        })
    }
}

/// Encodes one entry (format 1 layout; a `DIR_MAGIC_V2` object appends the link count).
/// Frozen format (see `format.rs`).
pub fn encode_entry(out: &mut Vec<u8>, e: &TreeEntry) {
    out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
    out.extend_from_slice(&e.name);
    out.push(e.attr.kind as u8);
    out.extend_from_slice(&e.attr.mode.to_le_bytes());
    out.extend_from_slice(&e.attr.uid.to_le_bytes());
    out.extend_from_slice(&e.attr.gid.to_le_bytes());
    out.extend_from_slice(&e.attr.size.to_le_bytes());
    out.extend_from_slice(&e.attr.ino.0.to_le_bytes());
    put_ts(out, e.attr.atime);
    put_ts(out, e.attr.mtime);
    put_ts(out, e.attr.ctime);
    match &e.target_ref {
        Some(id) => {
            out.push(1);
            out.extend_from_slice(id.as_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&(e.link.len() as u32).to_le_bytes());
    out.extend_from_slice(&e.link);
}

/// Decodes one entry; `v2` entries carry their link count.
fn decode_entry(r: &mut Rd<'_>, v2: bool) -> Result<TreeEntry> {
    let nl = r.u16()? as usize;
    let name = r.take(nl)?.to_vec();
    let kind = FileKind::from_u8(r.u8()?)
        .ok_or_else(|| StoreError::Format("bad kind in directory object".into()))?;
    let mode = r.u32()?;
    let uid = r.u32()?;
    let gid = r.u32()?;
    let size = r.u64()?;
    let ino = FileId(r.u64()?);
    let atime = r.ts()?;
    let mtime = r.ts()?;
    let ctime = r.ts()?;
    let target_ref = match r.u8()? {
        0 => None,
        _ => Some(ChunkId::from_slice(r.take(32)?).unwrap()),
    };
    let ll = r.u32()? as usize;
    let link = r.take(ll)?.to_vec();
    let nlink = if v2 { r.u32()? } else { 1 };
    Ok(TreeEntry {
        name,
        attr: Attr {
            ino,
            kind,
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            ctime,
            nlink,
        },
        target_ref,
        link,
    })
}

pub fn encode_entry_alone(e: &TreeEntry) -> Vec<u8> {
    let mut v = Vec::new();
    encode_entry(&mut v, e);
    v
}

pub fn decode_entry_alone(b: &[u8]) -> Result<TreeEntry> {
    decode_entry(&mut Rd(b), false)
}

/// Encodes a directory; `entries` must be sorted by name.
pub fn encode_dir(entries: &[TreeEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + entries.len() * 96);
    out.extend_from_slice(DIR_MAGIC_V2);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        encode_entry(&mut out, e);
        out.extend_from_slice(&e.attr.nlink.to_le_bytes());
    }
    out
}

pub fn decode_dir(b: &[u8]) -> Result<Vec<TreeEntry>> {
    let v2 = match b.get(..4) {
        Some(m) if m == DIR_MAGIC_V2 => true,
        Some(m) if m == DIR_MAGIC => false,
        _ => return Err(StoreError::Format("bad directory object magic".into())),
    };
    if b.len() < 8 {
        return Err(StoreError::Format("truncated directory object".into()));
    }
    let n = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
    let mut r = Rd(&b[8..]);
    // Every entry takes more than 64 bytes: a count the object cannot hold allocates
    // nothing.
    let mut out = Vec::with_capacity(n.min(b.len() / 64));
    for _ in 0..n {
        out.push(decode_entry(&mut r, v2)?);
    }
    if !r.0.is_empty() {
        return Err(StoreError::Format(
            "trailing bytes in directory object".into(),
        ));
    }
    Ok(out)
}
