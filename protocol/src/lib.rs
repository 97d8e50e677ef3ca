//! # kura protocol
//!
//! The NFSv3 export of a `storage::Store`. One listener per export serves MOUNT and NFS
//! on one TCP port (no portmapper needed). The export's root lists its volumes, so
//! `host:/vol` mounts a volume; `/<vol>/.snapshots/<name>/` shows each snapshot
//! read-only.
//!
//! - [`rpc`]: ONC RPC over TCP: records, call headers, replies, per-connection bounds.
//! - [`nfs`]: the NFS, MOUNT and portmap procedures, handles on the wire, the
//!   duplicate request cache.
//! - [`handle`]: stateless file handles for live and snapshot nodes, sealed per export.
//! - [`limits`]: fairness between clients: slots per address, idle and stalled
//!   connections, rate-limited warnings.
//! - [`fs`]: the file system, its one door to the store (bounded, blocking pool), the
//!   attribute cache.
//! - [`errors`]: the one mapping from store errors to `nfsstat3`.
//! - [`server`]: listeners and the client address allow-list.
//!
//! The XDR types come from `nfs3_types`. LINK and MKNOD answer NOTSUPP (hard links and
//! device files are not stored).

pub mod errors;
pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
pub mod handle;
pub mod limits;
pub mod nfs;
pub mod rpc;
pub mod server;

#[cfg(test)]
mod hostile;

pub use fs::{
    CallObserver, ExportPolicy, FreezeError, FreezeGate, FreezeStats, Frozen, KuraFs, Shared,
};
pub use server::{Cidr, Export, ExportConfig};
pub use storage::durable::boot_id;
