//! # kura protocol
//!
//! The NFSv3 export of a `storage::Store`, served by `nfs3_server`. One listener per
//! export serves MOUNT and NFS on one TCP port (no portmapper needed). The export's root
//! lists its volumes, so `host:/vol` mounts a volume; `/<vol>/.snapshots/<name>/` shows
//! each snapshot read-only.
//!
//! - [`handle`]: stateless file handles for live and snapshot nodes.
//! - [`fs`]: the file system, its one door to the store (bounded, blocking pool), the
//!   attribute cache.
//! - [`errors`]: the one mapping from store errors to `nfsstat3`.
//! - [`server`]: listeners, the client address allow-list, the handle generation.
//!
//! What `nfs3_server` decides for us (documented limits): REMOVE and RMDIR reach one
//! `remove` call, so a REMOVE of an empty directory removes it; MKDIR does not pass the
//! requested mode (new directories get 0755); ACCESS grants what the mode bits are not
//! checked against; FSSTAT reports a fixed 1 TiB (real capacity is in `/status`);
//! LINK and MKNOD are not offered (hard links are not supported).

pub mod errors;
pub mod fs;
pub mod handle;
pub mod server;

pub use fs::{ExportPolicy, KuraFs, Shared};
pub use server::{boot_id, Cidr, Export, ExportConfig};
