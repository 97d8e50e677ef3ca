//! Listeners: one per export, the client address allow-list, and the handle generation.
//!
//! kura accepts its own connections, so the allow-list is checked on the peer address
//! at accept, before a byte is read: a refused client's connection is closed at once
//! (and logged, at most once per 10 s with a count). It costs nothing per call. A cap on
//! connections per export, shared fairly between addresses, keeps a flood of idle
//! connections from becoming memory or locking others out.

use crate::fs::{ExportPolicy, KuraFs, Shared};
use crate::handle::{HandleCodec, HandleKey};
use crate::limits::{ConnTable, Limits, LogLimiter};
use crate::nfs::NfsService;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Connections one export serves at a time by default (see [`crate::limits`] for how
/// they are shared when all are taken).
pub const MAX_CONNECTIONS: usize = 256;

static REFUSED_LOG: LogLimiter = LogLimiter::new(std::time::Duration::from_secs(10));
static FULL_LOG: LogLimiter = LogLimiter::new(std::time::Duration::from_secs(10));

/// An address block, `10.0.0.0/8` or `::1/128` (a bare address means one host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix must be 0-{max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ExportConfig {
    pub listen: SocketAddr,
    /// Clients allowed to connect; empty refuses everyone.
    pub allow: Vec<Cidr>,
    pub policy: ExportPolicy,
    /// Connections served at a time (shared fairly between client addresses).
    pub max_connections: usize,
    pub limits: Limits,
}

/// A running export; stops when dropped.
pub struct Export {
    pub addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Export {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The kernel's boot id: differs after every reboot. `KURA_BOOT_ID` overrides it so that
/// tests can simulate a reboot.
pub fn boot_id() -> String {
    if let Ok(id) = std::env::var("KURA_BOOT_ID") {
        return id;
    }
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// What tells exports apart for their handle keys: the configured address and the
/// volumes shown. Changing either makes the export's old handles STALE (clients mount
/// again), which is what a changed volume list must do.
pub fn export_identity(cfg: &ExportConfig) -> String {
    let mut vols = cfg.policy.volumes.clone();
    if let Some(v) = vols.as_mut() {
        v.sort();
    }
    format!("{}|{:?}", cfg.listen, vols)
}

/// Starts one export. `generation` comes from `Store::begin_service`; `secret` from
/// `Store::handle_secret`.
pub async fn start(
    shared: Arc<Shared>,
    cfg: ExportConfig,
    generation: u64,
    secret: &[u8; 32],
) -> io::Result<Export> {
    let listener = TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let key = HandleKey::derive(secret, &export_identity(&cfg));
    let svc = NfsService::new(
        KuraFs::new(shared, cfg.policy.clone()),
        HandleCodec::new(key, generation),
        generation,
        addr.port(),
    );
    let allow_names: Vec<String> = cfg.allow.iter().map(|c| c.to_string()).collect();
    tracing::info!(%addr, allow = ?allow_names, "export listening");
    let allow = cfg.allow.clone();
    let table = ConnTable::new(cfg.max_connections);
    let limits = cfg.limits;
    let task = tokio::spawn(async move {
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(v) => v,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            if !allow.iter().any(|c| c.contains(peer.ip())) {
                if let Some(n) = REFUSED_LOG.check() {
                    tracing::warn!(%peer, held_back = n, "connection refused: address not in the export's allow-list");
                }
                continue;
            }
            let Some(slot) = table.admit(peer.ip()) else {
                if let Some(n) = FULL_LOG.check() {
                    tracing::warn!(%peer, held_back = n, "connection refused: every slot is taken and this address holds its share");
                }
                continue;
            };
            tracing::debug!(%peer, "connection accepted");
            let svc = svc.clone();
            tokio::spawn(async move {
                let conn = slot.state.clone();
                crate::rpc::serve_connection(sock, peer, svc, conn, limits).await;
                drop(slot);
            });
        }
    });
    Ok(Export {
        addr,
        tasks: vec![task],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_matching() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(
            c.contains("::ffff:10.1.0.9".parse().unwrap()),
            "v4-mapped peers match v4 blocks"
        );
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!("0.0.0.0/0"
            .parse::<Cidr>()
            .unwrap()
            .contains("203.0.113.9".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "1.2.3.4/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
