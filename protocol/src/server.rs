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
    use crate::fs::ExportPolicy;
    use nfs3_types::nfs3::{cookieverf3, nfs_fh3, READ3args, READDIRPLUS3args};
    use nfs3_types::rpc::{auth_unix, call_body, msg_body, opaque_auth, rpc_msg};
    use nfs3_types::xdr_codec::{Opaque, Pack};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    /// An export of a fresh store with one volume `v` holding a 1 MiB file `f` and a
    /// directory `d` of 3,000 entries; returns the address and the handles.
    async fn export(
        max_connections: usize,
        limits: Limits,
    ) -> (Export, tempfile::TempDir, Vec<u8>, Vec<u8>) {
        use storage::{NewAttr, Store, StoreOptions};
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(tmp.path(), StoreOptions::default()).unwrap());
        let na = |mode| NewAttr {
            mode,
            uid: 0,
            gid: 0,
        };
        let v = store.create_volume("v", na(0o755)).unwrap();
        let f = store.create(v.root, b"f", na(0o644)).unwrap().ino;
        store.write(f, 0, &vec![7u8; 1 << 20]).unwrap();
        let d = store.mkdir(v.root, b"d", na(0o755)).unwrap().ino;
        for i in 0..3000 {
            store
                .create(
                    d,
                    format!("entry-with-a-longish-name-{i:05}").as_bytes(),
                    na(0o644),
                )
                .unwrap();
        }
        let secret = store.handle_secret().unwrap();
        let gen = store.begin_service("test").unwrap();
        let cfg = ExportConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            policy: ExportPolicy::default(),
            max_connections,
            limits,
        };
        let key = HandleKey::derive(&secret, &export_identity(&cfg));
        let codec = HandleCodec::new(key, gen);
        let fh_f = codec.seal(&crate::handle::Node::Live(f));
        let fh_d = codec.seal(&crate::handle::Node::Live(d));
        let e = start(Shared::new(store, 64), cfg, gen, &secret)
            .await
            .unwrap();
        (e, tmp, fh_f, fh_d)
    }

    fn record<T: Pack>(xid: u32, proc_: u32, args: &T) -> Vec<u8> {
        let msg = rpc_msg {
            xid,
            body: msg_body::CALL(call_body {
                rpcvers: 2,
                prog: nfs3_types::nfs3::PROGRAM,
                vers: 3,
                proc: proc_,
                cred: opaque_auth::auth_unix(&auth_unix::default()),
                verf: opaque_auth::default(),
            }),
        };
        let mut v = vec![0; 4];
        msg.pack(&mut v).unwrap();
        args.pack(&mut v).unwrap();
        let mark = (v.len() as u32 - 4) | 0x8000_0000;
        v[..4].copy_from_slice(&mark.to_be_bytes());
        v
    }

    async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
        let s = TcpSocket::new_v4().unwrap();
        s.bind(format!("{src}:0").parse().unwrap()).unwrap();
        s.connect(to).await.unwrap()
    }

    /// Sends a NULL call and waits for its reply: whether this client is served.
    async fn served(src: &str, to: SocketAddr) -> bool {
        let mut c = connect_from(src, to).await;
        if c.write_all(&record(1, 0, &nfs3_types::xdr_codec::Void))
            .await
            .is_err()
        {
            return false;
        }
        let mut mark = [0u8; 4];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut mark)).await,
            Ok(Ok(_))
        )
    }

    /// Idle connections holding every slot from one address do not lock others out,
    /// and idle connections are closed after the idle limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_neither_lock_out_nor_stay() {
        let limits = Limits {
            idle: Duration::from_secs(2),
            tick: Duration::from_millis(100),
            ..Limits::default()
        };
        let (e, _tmp, _, _) = export(32, limits).await;
        let mut hogs = Vec::new();
        for _ in 0..32 {
            hogs.push(connect_from("127.0.0.2", e.addr).await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            served("127.0.0.1", e.addr).await,
            "another address gets a slot"
        );
        assert!(served("127.0.0.3", e.addr).await, "and the next one too");
        // The hogs never sent a byte: all of them are closed after the idle limit.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for mut h in hogs {
            let mut b = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_secs(5), h.read(&mut b)).await;
            assert!(
                matches!(r, Ok(Ok(0)) | Ok(Err(_))),
                "idle connection closed: {r:?}"
            );
        }
    }

    /// Clients that pipeline READs and never read the replies take the shared budget;
    /// a client that waits for it makes them lose their connections within the
    /// contended stall limit, and it is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_that_take_no_replies_lose_their_connections_when_others_wait() {
        let limits = Limits {
            stall_contended: Duration::from_secs(1),
            tick: Duration::from_millis(100),
            ..Limits::default()
        };
        let (e, _tmp, fh_f, _) = export(256, limits).await;
        let read = |xid| {
            record(
                xid,
                6,
                &READ3args {
                    file: nfs_fh3 {
                        data: Opaque::owned(fh_f.clone()),
                    },
                    offset: 0,
                    count: 1 << 20,
                },
            )
        };
        // 20 connections x 64 pipelined 1 MiB READs: far more than the 256 MiB budget.
        let mut hogs = Vec::new();
        for c in 0..20u32 {
            let mut s = connect_from("127.0.0.2", e.addr).await;
            let mut burst = Vec::new();
            for i in 0..64 {
                burst.extend(read(c * 100 + i));
            }
            let _ = s.write_all(&burst).await;
            hogs.push(s);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t0 = std::time::Instant::now();
        let mut c = connect_from("127.0.0.1", e.addr).await;
        for i in 0..8 {
            c.write_all(&read(9000 + i)).await.unwrap();
            let mut mark = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(20), c.read_exact(&mut mark))
                .await
                .expect("the waiting client is served")
                .unwrap();
            let len = (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize;
            let mut body = vec![0u8; len];
            c.read_exact(&mut body).await.unwrap();
        }
        assert!(t0.elapsed() < Duration::from_secs(20));
        // Stalled hogs were closed while the client waited (the rest keep their
        // connections until someone waits again or the plain stall limit): reading what
        // they were sent ends in EOF or a reset. Drained side by side, 3 s at most.
        let drains: Vec<_> = hogs
            .into_iter()
            .map(|mut h| {
                tokio::spawn(async move {
                    let mut sink = vec![0u8; 1 << 20];
                    tokio::time::timeout(Duration::from_secs(3), async {
                        loop {
                            match h.read(&mut sink).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                        }
                    })
                    .await
                    .is_ok()
                })
            })
            .collect();
        let mut closed = 0;
        for d in drains {
            closed += u32::from(d.await.unwrap());
        }
        assert!(closed >= 1, "no stalled client was closed");
    }

    /// READDIRPLUS asking for 4 GiB gets one reply of at most `DIR_REPLY_MAX`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readdirplus_replies_are_capped() {
        let (e, _tmp, _, fh_d) = export(8, Limits::default()).await;
        let mut c = connect_from("127.0.0.1", e.addr).await;
        let args = READDIRPLUS3args {
            dir: nfs_fh3 {
                data: Opaque::owned(fh_d),
            },
            cookie: 0,
            cookieverf: cookieverf3::default(),
            dircount: u32::MAX,
            maxcount: u32::MAX,
        };
        c.write_all(&record(5, 17, &args)).await.unwrap();
        let mut mark = [0u8; 4];
        c.read_exact(&mut mark).await.unwrap();
        let len = (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize;
        assert!(len <= crate::nfs::DIR_REPLY_MAX, "reply of {len} bytes");
        let mut body = vec![0u8; len];
        c.read_exact(&mut body).await.unwrap();
        assert_eq!(&body[20..24], &[0, 0, 0, 0], "NFS3_OK");
        assert!(len > 64 << 10, "a full page, not a token reply: {len}");
    }

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
