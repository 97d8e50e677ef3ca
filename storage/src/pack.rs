//! Pack files: append-only containers of compressed chunk records.
//!
//! A pack is written by one [`PackWriter`] at a time and never modified after the writer
//! moves on; GC removes whole packs after copying their live records elsewhere. A record
//! is referenced only after the pack holding it was fsynced.

use crate::durable::Latch;
use crate::error::{Result, StoreError};
use crate::format::*;
use crate::ids::{ChunkId, PackId};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub fn pack_path(dir: &Path, id: PackId) -> PathBuf {
    dir.join(format!("{:016x}.pack", id.0))
}

/// Parses a pack file name back into its id.
pub fn pack_id_of(name: &str) -> Option<PackId> {
    let hex = name.strip_suffix(".pack")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(PackId)
}

/// Header of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: u8,
    pub codec: u8,
    pub raw_len: u32,
    pub stored_len: u32,
    pub id: ChunkId,
}

impl RecordHeader {
    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        h[4] = self.kind;
        h[5] = self.codec;
        h[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        h[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        h[16..48].copy_from_slice(self.id.as_bytes());
        h
    }

    pub fn decode(h: &[u8]) -> Option<RecordHeader> {
        if h.len() < RECORD_HEADER_LEN
            || u32::from_le_bytes(h[0..4].try_into().ok()?) != RECORD_MAGIC
        {
            return None;
        }
        Some(RecordHeader {
            kind: h[4],
            codec: h[5],
            raw_len: u32::from_le_bytes(h[8..12].try_into().ok()?),
            stored_len: u32::from_le_bytes(h[12..16].try_into().ok()?),
            id: ChunkId::from_slice(&h[16..48])?,
        })
    }
}

/// Where an object landed: its record, and for a bundle member its place inside.
#[derive(Clone, Copy, Debug)]
pub struct Location {
    pub id: ChunkId,
    pub pack: PackId,
    pub offset: u64,
    /// Stored length of the whole record.
    pub stored_len: u32,
    /// Plain length of this object.
    pub raw_len: u32,
    pub kind: u8,
    /// Offset inside the raw bundle, or -1 for a record that is this object alone.
    pub inner_off: i64,
}

/// Appends records to the current pack and opens the next one when it is full.
pub struct PackWriter {
    dir: PathBuf,
    next_id: u64,
    cur: Option<OpenPack>,
    /// Packs closed since the last `sync`: writeback started, not yet fsynced.
    sealed: Vec<OpenPack>,
}

struct OpenPack {
    id: PackId,
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
    /// Whether its directory entry has been fsynced.
    dir_synced: bool,
}

impl PackWriter {
    /// `next_id` must be above every pack id in use, so a pack is never appended to
    /// after a restart (its tail may be torn).
    pub fn new(dir: PathBuf, next_id: u64) -> Self {
        PackWriter {
            dir,
            next_id,
            cur: None,
            sealed: Vec::new(),
        }
    }

    pub fn current(&self) -> Option<PackId> {
        self.cur.as_ref().map(|p| p.id)
    }

    fn open_next(&mut self) -> Result<&mut OpenPack> {
        let id = PackId(self.next_id);
        self.next_id += 1;
        let path = pack_path(&self.dir, id);
        let f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io("create pack", &path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        out.write_all(PACK_MAGIC)
            .map_err(|e| StoreError::io("write pack header", &path, e))?;
        self.cur = Some(OpenPack {
            id,
            path,
            out,
            len: PACK_MAGIC.len() as u64,
            dir_synced: false,
        });
        Ok(self.cur.as_mut().unwrap())
    }

    /// Appends a record. On any error the current pack is abandoned (its tail may be
    /// partial), so later appends start a fresh pack.
    pub fn append(&mut self, latch: &Latch, hdr: RecordHeader, data: &[u8]) -> Result<Location> {
        if self
            .cur
            .as_ref()
            .is_some_and(|p| p.len + (RECORD_HEADER_LEN + data.len()) as u64 > PACK_TARGET_SIZE)
        {
            self.seal(latch)?;
        }
        if self.cur.is_none() {
            self.open_next()?;
        }
        let p = self.cur.as_mut().unwrap();
        let offset = p.len;
        let r = p
            .out
            .write_all(&hdr.encode())
            .and_then(|_| p.out.write_all(data));
        if let Err(e) = r {
            let path = p.path.clone();
            self.cur = None;
            return Err(StoreError::io("append to pack", path, e));
        }
        p.len += (RECORD_HEADER_LEN + data.len()) as u64;
        Ok(Location {
            id: hdr.id,
            pack: p.id,
            offset,
            stored_len: hdr.stored_len,
            raw_len: hdr.raw_len,
            kind: hdr.kind,
            inner_off: -1,
        })
    }

    /// Closes the current pack. Its fsync is left to the next `sync` so that the
    /// appending thread does not wait for the disk; writeback is started now.
    fn seal(&mut self, _latch: &Latch) -> Result<()> {
        if let Some(mut p) = self.cur.take() {
            if let Err(e) = p.out.flush() {
                return Err(StoreError::io("flush pack", &p.path, e));
            }
            use std::os::unix::io::AsRawFd;
            // SAFETY: valid fd; SYNC_FILE_RANGE_WRITE only starts writeback (a hint).
            unsafe {
                libc::sync_file_range(
                    p.out.get_ref().as_raw_fd(),
                    0,
                    0,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            self.sealed.push(p);
        }
        Ok(())
    }

    fn sync_open(latch: &Latch, dir: &Path, mut p: OpenPack) -> Result<OpenPack> {
        if let Err(e) = p.out.flush() {
            return Err(StoreError::io("flush pack", &p.path, e));
        }
        latch.sync_file(p.out.get_ref(), &p.path, true)?;
        if !p.dir_synced {
            latch.sync_dir(dir)?;
            p.dir_synced = true;
        }
        Ok(p)
    }

    /// Makes every appended record durable. Returns the packs sealed since the last call.
    pub fn sync(&mut self, latch: &Latch) -> Result<Vec<PackId>> {
        let mut ids = Vec::new();
        for p in std::mem::take(&mut self.sealed) {
            ids.push(p.id);
            Self::sync_open(latch, &self.dir, p)?;
        }
        if let Some(p) = self.cur.take() {
            match Self::sync_open(latch, &self.dir, p) {
                Ok(p) => self.cur = Some(p),
                Err(e) => return Err(e),
            }
        }
        Ok(ids)
    }

    /// Closes the current pack so that nothing appends to it again (used by GC so that
    /// repacked chunks never share a pack with a half-written ingest).
    pub fn finish(&mut self, latch: &Latch) -> Result<Vec<PackId>> {
        self.seal(latch)?;
        self.sync(latch)
    }
}

/// Reads one record at `offset`; checks the header against `id` when given.
pub fn read_record(
    file: &File,
    path: &Path,
    offset: u64,
    stored_len: u32,
) -> Result<(RecordHeader, Vec<u8>)> {
    let mut buf = Vec::new();
    let hdr = read_record_into(file, path, offset, stored_len, &mut buf)?;
    Ok((hdr, buf))
}

/// [`read_record`] into `buf` (replacing what it held, reusing its memory); returns the
/// header.
pub fn read_record_into(
    file: &File,
    path: &Path,
    offset: u64,
    stored_len: u32,
    buf: &mut Vec<u8>,
) -> Result<RecordHeader> {
    // Header and payload in two reads, so that the payload lands where it stays (no
    // move of up to a megabyte to drop the header).
    let mut h = [0u8; RECORD_HEADER_LEN];
    file.read_exact_at(&mut h, offset)
        .map_err(|e| StoreError::io("read pack record", path, e))?;
    let hdr = RecordHeader::decode(&h).ok_or_else(|| {
        StoreError::Format(format!("bad record header at {}:{offset}", path.display()))
    })?;
    pread_into(
        file,
        stored_len as usize,
        offset + RECORD_HEADER_LEN as u64,
        buf,
    )
    .map_err(|e| StoreError::io("read pack record", path, e))?;
    Ok(hdr)
}

/// Reads exactly `len` bytes at `offset` into `buf` (replacing what it held), without
/// zeroing it first (a megabyte of memset per record read was a tenth of a READ's time).
fn pread_into(file: &File, len: usize, offset: u64, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    buf.clear();
    buf.reserve(len);
    let mut got = 0usize;
    while got < len {
        // SAFETY: the kernel writes at most `len - got` bytes into the vector's spare
        // capacity at `got`; no Rust reference to uninitialized bytes is made, and the
        // length is raised only over bytes the kernel wrote.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(got).cast(),
                len - got,
                (offset + got as u64) as libc::off_t,
            )
        };
        match n {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n if n > 0 => {
                got += n as usize;
                // SAFETY: bytes 0..got were written by pread.
                unsafe { buf.set_len(got) };
            }
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Decodes a record's payload to plain bytes and checks its hash.
pub fn decode_payload(hdr: &RecordHeader, stored: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    decode_into(hdr, stored, &mut out, true)?;
    Ok(out)
}

/// Decodes a record's payload into `out` (replacing what it held, reusing its memory:
/// a restore decodes a gigabyte through a few buffers instead of fresh pages). `check`
/// compares the plain bytes with the header's hash; the read path skips it because it
/// checks every chunk it returns instead (hashing a bundle and then its members would
/// hash every byte twice).
pub fn decode_into(
    hdr: &RecordHeader,
    stored: &[u8],
    out: &mut Vec<u8>,
    check: bool,
) -> std::result::Result<(), String> {
    out.clear();
    check_stored(hdr, stored)?;
    match hdr.codec {
        CODEC_RAW => {
            room_for(out, stored.len());
            out.extend_from_slice(stored);
        }
        CODEC_ZSTD => {
            room_for(out, hdr.raw_len as usize);
            DECOMPRESSOR.with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
                }
                let d = d.as_mut().expect("made above");
                d.decompress_to_buffer(stored, out)
                    .map_err(|e| format!("zstd: {e}"))
            })?;
        }
        c => return Err(format!("unknown codec {c}")),
    }
    check_decoded(hdr, out, check)
}

/// Makes the empty `out` able to hold `need` bytes: a fresh buffer when it is too
/// small, not a grown one (growing copies what it held). A bundle's buffer gets a full
/// bundle's size (bundles differ in length by up to a chunk, and a buffer lent again
/// should fit the next one); a smaller record's (a directory, a content list) just
/// its own, since a cache counts records by their length.
fn room_for(out: &mut Vec<u8>, need: usize) {
    if out.capacity() < need {
        let bundle = BUNDLE_TARGET + CHUNK_MAX as usize;
        *out = Vec::with_capacity(if need >= BUNDLE_TARGET {
            need.max(bundle)
        } else {
            need
        });
    }
}

fn check_stored(hdr: &RecordHeader, stored: &[u8]) -> std::result::Result<(), String> {
    if stored.len() != hdr.stored_len as usize {
        return Err(format!(
            "stored length {} != header {}",
            stored.len(),
            hdr.stored_len
        ));
    }
    Ok(())
}

/// The plain bytes' length, and their hash when `check`, against the header.
fn check_decoded(hdr: &RecordHeader, raw: &[u8], check: bool) -> std::result::Result<(), String> {
    if raw.len() != hdr.raw_len as usize {
        return Err(format!(
            "raw length {} != header {}",
            raw.len(),
            hdr.raw_len
        ));
    }
    if check && ChunkId::of(raw) != hdr.id {
        return Err("BLAKE3 mismatch".into());
    }
    Ok(())
}

thread_local! {
    /// One reusable zstd decompression context per thread (creating one per record was
    /// a visible part of a restore's time).
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

thread_local! {
    /// One reusable zstd context per thread: creating one per chunk costs more than
    /// compressing a small chunk.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses `raw` with zstd at `level`; returns None when that does not shrink it.
pub fn compress(raw: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, comp) = c.as_mut()?;
        let out = comp.compress(raw).ok()?;
        (out.len() < raw.len()).then_some(out)
    })
}

/// Iterates the records of a whole pack file (for verify and repack), tolerating a torn
/// tail: it stops at the first header that does not parse or runs past the end.
pub fn scan(path: &Path) -> Result<Vec<(u64, RecordHeader)>> {
    let f = File::open(path).map_err(|e| StoreError::io("open pack", path, e))?;
    let len = f
        .metadata()
        .map_err(|e| StoreError::io("stat pack", path, e))?
        .len();
    let mut out = Vec::new();
    let mut magic = [0u8; 8];
    if f.read_exact_at(&mut magic, 0).is_err() || &magic != PACK_MAGIC {
        return Ok(out);
    }
    let mut off = PACK_MAGIC.len() as u64;
    let mut h = [0u8; RECORD_HEADER_LEN];
    while off + RECORD_HEADER_LEN as u64 <= len {
        if f.read_exact_at(&mut h, off).is_err() {
            break;
        }
        let Some(hdr) = RecordHeader::decode(&h) else {
            break;
        };
        let next = off + (RECORD_HEADER_LEN as u64) + hdr.stored_len as u64;
        if next > len {
            break;
        }
        out.push((off, hdr));
        off = next;
    }
    Ok(out)
}
