//! Listeners: one per export, the client address allow-list, and the handle generation.
//!
//! `nfs3_server` accepts connections itself and never shows the file system a peer
//! address, so the allow-list is enforced below it:
//! - IPv4 listeners: a classic BPF socket filter on the listening socket drops every
//!   packet (the SYN first) whose source address is outside the allowed blocks, so a
//!   refused client never completes a connection and no byte reaches the NFS server.
//!   It costs nothing per call. (Refused clients see a connect timeout, as behind a
//!   firewall that drops.)
//! - IPv6 listeners: kura accepts on the public address, checks the peer and relays
//!   allowed connections to the NFS server on an ephemeral loopback port; refused peers
//!   are closed before a byte is read. The relay costs throughput (measured in the
//!   closing note of the NFS issue), which is why IPv4 uses the filter.
//!
//! An export that allows every address needs neither.

use crate::fs::{ExportPolicy, KuraFs, Shared};
use nfs3_server::tcp::{NFSTcp, NFSTcpListener};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

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

    pub fn is_everything(&self) -> bool {
        self.prefix == 0
    }
}

#[derive(Clone, Debug)]
pub struct ExportConfig {
    pub listen: SocketAddr,
    /// Clients allowed to connect; empty refuses everyone.
    pub allow: Vec<Cidr>,
    pub policy: ExportPolicy,
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

async fn nfs_listener(
    fs: KuraFs,
    addr: &str,
    generation: u64,
) -> io::Result<(NFSTcpListener<KuraFs>, u16)> {
    let mut l = NFSTcpListener::bind_with_generation(addr, fs, generation).await?;
    l.with_export_name("/");
    let port = l.get_listen_port();
    Ok((l, port))
}

fn spawn_server(l: NFSTcpListener<KuraFs>) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = l.handle_forever().await {
            tracing::error!(error = %e, "export listener stopped");
        }
    })
}

/// Starts one export. `generation` comes from `Store::begin_service`.
pub async fn start(shared: Arc<Shared>, cfg: ExportConfig, generation: u64) -> io::Result<Export> {
    let fs = KuraFs::new(shared, cfg.policy.clone());
    let open = cfg.allow.iter().any(|c| c.is_everything());
    let allow_names: Vec<String> = cfg.allow.iter().map(|c| c.to_string()).collect();
    if open || cfg.listen.is_ipv4() {
        let (l, port) = nfs_listener(fs, &cfg.listen.to_string(), generation).await?;
        if !open {
            attach_allow_filter(port, &cfg.allow)?;
        }
        let addr = SocketAddr::new(cfg.listen.ip(), port);
        tracing::info!(%addr, allow = ?allow_names, "export listening");
        return Ok(Export {
            addr,
            tasks: vec![spawn_server(l)],
        });
    }
    let (l, inner_port) = nfs_listener(fs, "127.0.0.1:0", generation).await?;
    let front = TcpListener::bind(cfg.listen).await?;
    let addr = front.local_addr()?;
    let inner: SocketAddr = ([127, 0, 0, 1], inner_port).into();
    let allow = cfg.allow.clone();
    tracing::info!(%addr, allow = ?allow_names, "export listening (relay)");
    let server = spawn_server(l);
    let gate = tokio::spawn(async move {
        loop {
            let (sock, peer) = match front.accept().await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            if !allow.iter().any(|c| c.contains(peer.ip())) {
                tracing::warn!(%peer, "connection refused: address not in the export's allow-list");
                drop(sock);
                continue;
            }
            tokio::spawn(async move {
                let _ = sock.set_nodelay(true);
                match TcpStream::connect(inner).await {
                    Ok(mut up) => {
                        let _ = up.set_nodelay(true);
                        let mut sock = sock;
                        let _ = tokio::io::copy_bidirectional_with_sizes(
                            &mut sock,
                            &mut up,
                            1 << 20,
                            1 << 20,
                        )
                        .await;
                    }
                    Err(e) => tracing::error!(error = %e, "cannot reach the NFS server"),
                }
            });
        }
    });
    Ok(Export {
        addr,
        tasks: vec![server, gate],
    })
}

/// The classic BPF program: accept a packet whose IPv4 source is in one of `allow`'s
/// IPv4 blocks, drop everything else.
fn allow_program(allow: &[Cidr]) -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const ALU_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let src = (libc::SKF_NET_OFF + 12) as u32;
    let v4: Vec<(u32, u32)> = allow
        .iter()
        .filter_map(|c| match c.addr {
            IpAddr::V4(a) => {
                let mask = if c.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - c.prefix)
                };
                Some((u32::from(a) & mask, mask))
            }
            IpAddr::V6(_) => None,
        })
        .collect();
    let mut prog = Vec::new();
    for (k, (net, mask)) in v4.iter().enumerate() {
        let remaining = (v4.len() - k - 1) as u8;
        prog.push(ins(LD_W_ABS, 0, 0, src));
        prog.push(ins(ALU_AND_K, 0, 0, *mask));
        // Match: jump over the rest of the checks and the drop to the accept.
        prog.push(ins(JEQ_K, remaining * 3 + 1, 0, *net));
    }
    prog.push(ins(RET_K, 0, 0, 0));
    prog.push(ins(RET_K, 0, 0, u32::MAX));
    prog
}

/// Finds this process's listening TCP socket on `port` and attaches the allow filter.
fn attach_allow_filter(port: u16, allow: &[Cidr]) -> io::Result<()> {
    let prog = allow_program(allow);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    let mut attached = 0;
    for e in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = e?.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: getsockname/getsockopt on an fd we own; failures (not a socket) are skipped.
        let listening_on_port = unsafe {
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let mut acc: libc::c_int = 0;
            let mut alen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            libc::getsockname(fd, &mut sa as *mut _ as *mut libc::sockaddr, &mut len) == 0
                && sa.sin_family as i32 == libc::AF_INET
                && u16::from_be(sa.sin_port) == port
                && libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_ACCEPTCONN,
                    &mut acc as *mut _ as *mut libc::c_void,
                    &mut alen,
                ) == 0
                && acc == 1
        };
        if listening_on_port {
            // SAFETY: fprog points at `prog`, alive for the call; the kernel copies it.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_ATTACH_FILTER,
                    &fprog as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            attached += 1;
        }
    }
    if attached == 0 {
        return Err(io::Error::other(format!(
            "no listening socket on port {port} to filter"
        )));
    }
    Ok(())
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
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().is_everything());
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "1.2.3.4/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
