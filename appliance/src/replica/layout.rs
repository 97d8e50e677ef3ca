//! The layout of a DR copy, the same in a directory and in a bucket:
//!
//! ```text
//! kura-target.json        what this is: format, and whether it is encrypted
//! packs/<id>              blobs, one after another, each a zstd frame of objects
//!                         (chunks, content lists, directory objects) laid end to end,
//!                         sealed when the copy is encrypted
//! index/<id>              the objects of packs/<id>: id, kind, blob, place in the blob
//!                         (zstd, sealed); written after its pack
//! snapshots/<key>         one snapshot's record (JSON, sealed), written last
//! ```
//!
//! `<id>` is random; `<key>` is a hash of volume and snapshot name (keyed when
//! encrypted). Objects keep the ids they have in the store (BLAKE3 of their bytes):
//! those appear only inside sealed indexes, never in a key, so an encrypted copy shows
//! no plaintext hash. What a reader trusts: an object whose hash is not its id is
//! damage, a blob that does not open is damage, whatever the target says.

use anyhow::{anyhow, bail, Context, Result};
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::XChaCha20Poly1305;
use serde::{Deserialize, Serialize};
use storage::ids::ChunkId;

pub const CONFIG_KEY: &str = "kura-target.json";
pub const FORMAT: &str = "kura-dr-1";
const KEY_CHECK: &[u8] = b"kura DR copy key check";
const INDEX_MAGIC: &[u8; 4] = b"KDI1";
const ENTRY_LEN: usize = 32 + 1 + 8 + 4 + 4 + 4 + 4;
/// Bit of an entry's kind: its blob is stored uncompressed (a record the store kept
/// raw because it did not compress, sent as it is).
pub const RAW_BLOB: u8 = 0x80;
const NONCE_LEN: usize = 24;
/// Largest decoded index accepted.
const MAX_INDEX: u64 = 64 << 20;

/// Encrypts what leaves the appliance (XChaCha20-Poly1305, a random nonce per blob),
/// or passes it through.
#[derive(Clone)]
pub struct Sealer {
    cipher: Option<XChaCha20Poly1305>,
    /// Keys snapshot record names (so that names do not show either).
    name_key: [u8; 32],
}

impl Sealer {
    pub fn plain() -> Sealer {
        Sealer {
            cipher: None,
            name_key: [0; 32],
        }
    }

    /// From a key file: 32 bytes, raw or as 64 hex digits.
    pub fn from_key_file(path: &std::path::Path) -> Result<Sealer> {
        let raw =
            std::fs::read(path).with_context(|| format!("reading key file {}", path.display()))?;
        let text = String::from_utf8_lossy(&raw);
        let key: [u8; 32] = if raw.len() == 32 {
            raw.as_slice().try_into().unwrap()
        } else if let Some(k) = hex32(text.trim()) {
            k
        } else {
            bail!(
                "key file {}: want 32 bytes or 64 hex digits (make one with `head -c32 /dev/urandom > FILE`)",
                path.display()
            );
        };
        Ok(Sealer {
            cipher: Some(XChaCha20Poly1305::new(
                &blake3::derive_key("kura dr copy seal", &key).into(),
            )),
            name_key: blake3::derive_key("kura dr copy names", &key),
        })
    }

    pub fn encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    pub fn seal(&self, plain: Vec<u8>) -> Vec<u8> {
        match &self.cipher {
            None => plain,
            Some(c) => {
                let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
                let ct = c
                    .encrypt(&nonce, plain.as_slice())
                    .expect("in-memory encryption");
                let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&ct);
                out
            }
        }
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        match &self.cipher {
            None => Ok(sealed.to_vec()),
            Some(c) => {
                if sealed.len() < NONCE_LEN + 16 {
                    bail!("sealed blob of {} bytes is too short", sealed.len());
                }
                let (n, ct) = sealed.split_at(NONCE_LEN);
                c.decrypt(n.into(), ct)
                    .map_err(|_| anyhow!("does not authenticate (damaged, or another key)"))
            }
        }
    }

    /// The key of a snapshot's record.
    pub fn snapshot_key(&self, volume: &str, name: &str) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.name_key);
        h.update(volume.as_bytes());
        h.update(&[0]);
        h.update(name.as_bytes());
        format!("snapshots/{}", &h.finalize().to_hex()[..40])
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("odd hex length");
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|e| anyhow!("hex: {e}")))
        .collect()
}

/// `kura-target.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TargetConfig {
    pub format: String,
    pub encrypted: bool,
    /// A known text sealed with the key: opening it tells a wrong key at once.
    #[serde(default)]
    pub key_check: Option<String>,
}

impl TargetConfig {
    pub fn new(sealer: &Sealer) -> TargetConfig {
        TargetConfig {
            format: FORMAT.into(),
            encrypted: sealer.encrypted(),
            key_check: sealer
                .encrypted()
                .then(|| hex(&sealer.seal(KEY_CHECK.to_vec()))),
        }
    }

    /// Checks that `sealer` is what this copy needs.
    pub fn check(&self, sealer: &Sealer, what: &str) -> Result<()> {
        if self.format != FORMAT {
            bail!(
                "{what}: format {:?}, this kura reads {FORMAT:?}",
                self.format
            );
        }
        match (self.encrypted, sealer.encrypted()) {
            (true, false) => bail!("{what} is encrypted: name its key file (key_file)"),
            (false, true) => bail!("{what} is not encrypted, but a key file was given"),
            (true, true) => {
                let sealed = unhex(self.key_check.as_deref().unwrap_or(""))?;
                if sealer.open(&sealed).ok().as_deref() != Some(KEY_CHECK) {
                    bail!("{what}: the key file does not open this copy (another key?)");
                }
            }
            (false, false) => {}
        }
        Ok(())
    }
}

/// Where one object is in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: ChunkId,
    pub kind: u8,
    pub blob_off: u64,
    pub blob_len: u32,
    pub inner_off: u32,
    pub raw_len: u32,
    /// Raw length of the whole blob.
    pub blob_raw: u32,
}

pub fn encode_index(entries: &[Entry], sealer: &Sealer) -> Vec<u8> {
    let mut raw = Vec::with_capacity(8 + entries.len() * ENTRY_LEN);
    raw.extend_from_slice(INDEX_MAGIC);
    raw.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        raw.extend_from_slice(e.id.as_bytes());
        raw.push(e.kind);
        raw.extend_from_slice(&e.blob_off.to_le_bytes());
        raw.extend_from_slice(&e.blob_len.to_le_bytes());
        raw.extend_from_slice(&e.inner_off.to_le_bytes());
        raw.extend_from_slice(&e.raw_len.to_le_bytes());
        raw.extend_from_slice(&e.blob_raw.to_le_bytes());
    }
    sealer.seal(zstd::bulk::compress(&raw, 3).expect("in-memory zstd"))
}

pub fn decode_index(sealed: &[u8], sealer: &Sealer) -> Result<Vec<Entry>> {
    let comp = sealer.open(sealed)?;
    // Bounded: an index names at most a pack's objects (1 GiB of 2 KiB chunks is 29 MiB
    // of entries), so a hostile one cannot make the reader take all memory.
    let mut raw = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(
            zstd::stream::Decoder::new(comp.as_slice()).context("index does not decompress")?,
            MAX_INDEX + 1,
        ),
        &mut raw,
    )
    .context("index does not decompress")?;
    if raw.len() as u64 > MAX_INDEX {
        bail!("index larger than {MAX_INDEX} bytes");
    }
    if raw.len() < 8 || &raw[..4] != INDEX_MAGIC {
        bail!("not an index");
    }
    let n = u32::from_le_bytes(raw[4..8].try_into().unwrap()) as usize;
    if raw.len() != 8 + n * ENTRY_LEN {
        bail!("index of {} bytes for {n} entries", raw.len());
    }
    Ok(raw[8..]
        .chunks_exact(ENTRY_LEN)
        .map(|b| Entry {
            id: ChunkId::from_slice(&b[..32]).expect("32 bytes"),
            kind: b[32],
            blob_off: u64::from_le_bytes(b[33..41].try_into().unwrap()),
            blob_len: u32::from_le_bytes(b[41..45].try_into().unwrap()),
            inner_off: u32::from_le_bytes(b[45..49].try_into().unwrap()),
            raw_len: u32::from_le_bytes(b[49..53].try_into().unwrap()),
            blob_raw: u32::from_le_bytes(b[53..57].try_into().unwrap()),
        })
        .collect())
}

/// Compresses (and seals) the raw bytes of a blob.
pub fn seal_blob(raw: &[u8], sealer: &Sealer) -> Vec<u8> {
    sealer.seal(zstd::bulk::compress(raw, 3).expect("in-memory zstd"))
}

/// Opens a blob of `raw_len` bytes (uncompressed when its entries' kind has
/// [`RAW_BLOB`]).
pub fn open_blob(sealed: &[u8], sealer: &Sealer, raw_len: usize, kind: u8) -> Result<Vec<u8>> {
    if raw_len > 1 << 30 {
        bail!("blob of {raw_len} bytes: larger than any object kura writes");
    }
    let plain = sealer.open(sealed)?;
    if kind & RAW_BLOB != 0 {
        return Ok(plain);
    }
    zstd::bulk::decompress(&plain, raw_len).context("blob does not decompress")
}

/// A snapshot as the copy records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub volume: String,
    pub name: String,
    pub created_s: i64,
    pub created_ns: u32,
    /// Root directory object (hex).
    pub root: String,
    /// The root entry as the store encodes it (hex).
    pub root_entry: String,
    pub logical_bytes: u64,
    pub label: Option<String>,
    pub held: bool,
    pub lock_until: i64,
    pub busy: bool,
}

impl Record {
    pub fn encode(&self, sealer: &Sealer) -> Vec<u8> {
        sealer.seal(serde_json::to_vec_pretty(self).expect("json"))
    }

    pub fn decode(b: &[u8], sealer: &Sealer) -> Result<Record> {
        let plain = sealer.open(b)?;
        serde_json::from_slice(&plain).context("not a snapshot record")
    }

    pub fn root_id(&self) -> Result<ChunkId> {
        ChunkId::from_slice(&unhex(&self.root)?).ok_or_else(|| anyhow!("root is not 32 bytes"))
    }

    /// The store's view of it (for a cache store, a restore, a clone).
    pub fn to_store(&self) -> Result<(storage::snapshot::SnapshotInfo, storage::tree::TreeEntry)> {
        let entry = storage::tree::decode_entry_alone(&unhex(&self.root_entry)?)?;
        let info = storage::snapshot::SnapshotInfo {
            id: storage::ids::SnapshotId(0),
            volume: self.volume.clone(),
            name: self.name.clone(),
            created: storage::namespace::Timespec {
                sec: self.created_s,
                nsec: self.created_ns,
            },
            root: self.root_id()?,
            logical_bytes: self.logical_bytes,
            dirs_encoded: 0,
            label: self.label.clone(),
            held: self.held,
            lock_until: self.lock_until,
            busy: self.busy,
        };
        Ok((info, entry))
    }

    pub fn from_store(
        s: &storage::snapshot::SnapshotInfo,
        root: &storage::tree::TreeEntry,
    ) -> Record {
        Record {
            volume: s.volume.clone(),
            name: s.name.clone(),
            created_s: s.created.sec,
            created_ns: s.created.nsec,
            root: hex(s.root.as_bytes()),
            root_entry: hex(&storage::tree::encode_entry_alone(root)),
            logical_bytes: s.logical_bytes,
            label: s.label.clone(),
            held: s.held,
            lock_until: s.lock_until,
            busy: s.busy,
        }
    }
}

/// A new pack id: random, so that two runs never pick the same key.
pub fn new_pack_id() -> String {
    let mut b = [0u8; 16];
    use chacha20poly1305::aead::rand_core::RngCore;
    OsRng.fill_bytes(&mut b);
    hex(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips_plain_and_sealed() {
        let e = Entry {
            id: ChunkId::of(b"x"),
            kind: 1,
            blob_off: 7,
            blob_len: 9,
            inner_off: 3,
            raw_len: 1,
            blob_raw: 4,
        };
        let dir = tempfile::tempdir().unwrap();
        let kf = dir.path().join("k");
        std::fs::write(&kf, [7u8; 32]).unwrap();
        for s in [Sealer::plain(), Sealer::from_key_file(&kf).unwrap()] {
            let b = encode_index(&[e, e], &s);
            assert_eq!(decode_index(&b, &s).unwrap(), vec![e, e]);
        }
        let sealed = Sealer::from_key_file(&kf).unwrap();
        let b = encode_index(&[e], &sealed);
        assert!(
            !b.windows(32).any(|w| w == e.id.as_bytes()),
            "no plaintext id"
        );
        std::fs::write(&kf, [8u8; 32]).unwrap();
        let other = Sealer::from_key_file(&kf).unwrap();
        assert!(decode_index(&b, &other).is_err());
        assert!(TargetConfig::new(&sealed).check(&other, "t").is_err());
        assert!(TargetConfig::new(&sealed)
            .check(&Sealer::plain(), "t")
            .is_err());
        assert!(TargetConfig::new(&sealed).check(&sealed, "t").is_ok());
    }
}
