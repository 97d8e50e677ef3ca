//! How the CLI reaches the API: the running daemon's over HTTP when a daemon holds the
//! store, or the same router in this process on the store opened directly when none
//! does. Either way a command is one API call, so the CLI and the API cannot drift.

use crate::api::{self, ADDR_FILE, TOKEN_FILE};
use crate::config::Config;
use anyhow::{anyhow, bail, Context, Result};
use axum::body::Body;
use axum::http::{Method, Request};
use serde_json::Value;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use tower::ServiceExt;

pub enum Target {
    Daemon {
        url: String,
        token: Option<String>,
        agent: ureq::Agent,
    },
    Local {
        rt: tokio::runtime::Runtime,
        router: axum::Router,
        app: Arc<crate::jobs::Appliance>,
    },
}

/// A reply: the HTTP status and the JSON body.
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body of a success, or the API's error message.
    pub fn into_result(self) -> Result<Value> {
        if self.ok() {
            return Ok(self.body);
        }
        match self.body.get("error").and_then(|e| e.as_str()) {
            Some(e) => bail!("{e}"),
            None => bail!("HTTP {}: {}", self.status, self.body),
        }
    }
}

/// Does a running process hold the store's lock? (The store's own open takes it.)
pub fn daemon_holds(data_dir: &Path) -> bool {
    let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .open(data_dir.join("LOCK"))
    else {
        return false;
    };
    // SAFETY: flock on a valid fd owned by `f`; released when `f` closes.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

impl Target {
    /// The daemon's API when a daemon holds the store, else the store itself.
    pub fn open(cfg: &Config) -> Result<Target> {
        if daemon_holds(&cfg.data_dir) {
            let url_file = cfg.data_dir.join(ADDR_FILE);
            let url = std::fs::read_to_string(&url_file).with_context(|| {
                format!(
                    "the store {} is open by another process without a control API ({} is missing)",
                    cfg.data_dir.display(),
                    url_file.display()
                )
            })?;
            let token = std::fs::read_to_string(cfg.data_dir.join(TOKEN_FILE))
                .ok()
                .map(|t| t.trim().to_owned());
            return Ok(Target::Daemon {
                url: url.trim().to_owned(),
                token,
                agent: ureq::AgentBuilder::new()
                    .timeout_connect(std::time::Duration::from_secs(5))
                    .build(),
            });
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let app = rt.block_on(async {
            let store = Arc::new(tokio::task::block_in_place(|| crate::open_store(cfg))?);
            let shared = protocol::Shared::new(store.clone(), cfg.max_inflight);
            Ok::<_, anyhow::Error>(crate::jobs::Appliance::new(cfg.clone(), store, shared))
        })?;
        let router = api::router(app.clone(), None);
        Ok(Target::Local { rt, router, app })
    }

    pub fn is_daemon(&self) -> bool {
        matches!(self, Target::Daemon { .. })
    }

    /// One API call.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Reply> {
        match self {
            Target::Daemon { url, token, agent } => {
                let mut req = agent.request(method, &format!("{url}{path}"));
                if let Some(t) = token {
                    req = req.set("Authorization", &format!("Bearer {t}"));
                }
                let res = match body {
                    Some(b) => req.send_json(b),
                    None => req.call(),
                };
                daemon_reply(res, url)
            }
            Target::Local { rt, router, app } => {
                // This process opened the store's files itself: it acts as the daemon
                // would, token included (calls that need it even on loopback).
                let token = api::load_or_make_token(&app.cfg.data_dir)?;
                let req = Request::builder()
                    .method(Method::from_bytes(method.as_bytes())?)
                    .uri(path)
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {token}"))
                    .body(match body {
                        Some(b) => Body::from(serde_json::to_vec(&b)?),
                        None => Body::empty(),
                    })?;
                local_reply(rt, router, req)
            }
        }
    }
}

impl Target {
    /// One API call whose body is a stream (an import), sent as it is read.
    pub fn upload(&self, path: &str, body: impl std::io::Read + Send + 'static) -> Result<Reply> {
        match self {
            Target::Daemon { url, token, agent } => {
                let mut req = agent
                    .post(&format!("{url}{path}"))
                    .set("Content-Type", "application/x-tar");
                if let Some(t) = token {
                    req = req.set("Authorization", &format!("Bearer {t}"));
                }
                daemon_reply(req.send(body), url)
            }
            Target::Local { rt, router, .. } => {
                // The stream is read by a thread of its own and handed over in pieces.
                let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
                std::thread::spawn(move || {
                    let mut body = body;
                    loop {
                        let mut buf = vec![0u8; 1 << 20];
                        match body.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                buf.truncate(n);
                                if tx.blocking_send(Ok(buf)).is_err() {
                                    break;
                                }
                            }
                            Err(e) => {
                                let _ = tx.blocking_send(Err(e));
                                break;
                            }
                        }
                    }
                });
                let req = Request::builder()
                    .method(Method::POST)
                    .uri(path)
                    .header("content-type", "application/x-tar")
                    .body(Body::from_stream(
                        tokio_stream::wrappers::ReceiverStream::new(rx),
                    ))?;
                local_reply(rt, router, req)
            }
        }
    }
}

impl Target {
    /// A restore stream of `vol@snap` (or `path` inside it) and its logical bytes: the
    /// daemon's `GET .../tar`, or the same tar written by a thread of this process.
    pub fn restore_stream(
        &self,
        vol: &str,
        snap: &str,
        path: &str,
    ) -> Result<(Box<dyn std::io::Read + Send>, u64)> {
        match self {
            Target::Daemon { url, token, agent } => {
                let mut req = agent.get(&format!(
                    "{url}/volumes/{}/snapshots/{}/tar",
                    seg(vol),
                    seg(snap)
                ));
                if !path.is_empty() {
                    req = req.query("path", path);
                }
                if let Some(t) = token {
                    req = req.set("Authorization", &format!("Bearer {t}"));
                }
                let resp = match req.call() {
                    Ok(r) => r,
                    Err(ureq::Error::Status(_, r)) => {
                        let body: Value = r.into_json().unwrap_or(Value::Null);
                        bail!("{}", body["error"].as_str().unwrap_or("restore refused"))
                    }
                    Err(e) => return Err(anyhow!("calling the daemon at {url}: {e}")),
                };
                let total = resp
                    .header(api::TOTAL_HEADER)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Ok((
                    Box::new(std::io::BufReader::with_capacity(
                        crate::restore::IO_BUF,
                        resp.into_reader(),
                    )),
                    total,
                ))
            }
            Target::Local { app, .. } => {
                let store = app.store.clone();
                let src = crate::restore::source(&store, vol, snap, path)?;
                let total = src.total;
                // Pieces handed over in memory: no pipe, no syscall per piece.
                let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
                std::thread::Builder::new()
                    .name("kura-restore".into())
                    .spawn(move || {
                        let w = std::io::BufWriter::with_capacity(
                            crate::restore::IO_BUF,
                            crate::restore::ChanWriter(tx),
                        );
                        if let Err(e) = crate::restore::write_tar(&store, &src.entry, &src.top, w) {
                            tracing::error!(error = %e, "restore stream failed");
                        }
                    })?;
                Ok((Box::new(crate::restore::ChanReader::new(rx)), total))
            }
        }
    }
}

impl Target {
    /// Asks the daemon to write a restore into `to` itself (`POST .../restore`), telling
    /// `progress` (total bytes, bytes written) as it goes. None when it will not: no
    /// daemon, no token readable here, or the token refused; the caller then streams a
    /// tar and writes the files itself.
    pub fn restore_by_daemon(
        &self,
        vol: &str,
        snap: &str,
        path: &str,
        to: &std::path::Path,
        progress: &dyn Fn(u64, u64),
    ) -> Result<Option<(crate::restore::Report, Vec<String>)>> {
        use std::io::BufRead;
        let Target::Daemon {
            url,
            token: Some(token),
            agent,
        } = self
        else {
            return Ok(None);
        };
        let res = agent
            .post(&format!(
                "{url}/volumes/{}/snapshots/{}/restore",
                seg(vol),
                seg(snap)
            ))
            .set("Authorization", &format!("Bearer {token}"))
            .send_json(serde_json::json!({ "to": to, "path": path }));
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(401, _)) => return Ok(None),
            Err(ureq::Error::Status(_, r)) => {
                let body: Value = r.into_json().unwrap_or(Value::Null);
                bail!("{}", body["error"].as_str().unwrap_or("restore refused"))
            }
            Err(e) => return Err(anyhow!("calling the daemon at {url}: {e}")),
        };
        let mut total = 0;
        for line in std::io::BufReader::new(resp.into_reader()).lines() {
            let line = line.context("reading the daemon's restore progress")?;
            let v: Value = serde_json::from_str(&line)
                .with_context(|| format!("the daemon's restore progress: {line:?}"))?;
            if let Some(n) = v["total"].as_u64() {
                total = n;
            } else if let Some(n) = v["bytes"].as_u64() {
                progress(total, n);
            } else if let Some(e) = v["error"].as_str() {
                bail!("{e}");
            } else if !v["report"].is_null() {
                let report = serde_json::from_value(v["report"].clone())?;
                let refused = serde_json::from_value(v["refused"].clone())?;
                return Ok(Some((report, refused)));
            }
        }
        bail!("the daemon's restore ended without a report")
    }
}

/// The daemon's answer to a call: its status and JSON body (or the text it sent).
fn daemon_reply(res: Result<ureq::Response, ureq::Error>, url: &str) -> Result<Reply> {
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(anyhow!("calling the daemon at {url}: {e}")),
    };
    let status = resp.status();
    let text = resp.into_string().context("reading the daemon's reply")?;
    Ok(Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    })
}

/// The in-process router's answer to a request.
fn local_reply(
    rt: &tokio::runtime::Runtime,
    router: &axum::Router,
    req: Request<Body>,
) -> Result<Reply> {
    rt.block_on(async {
        let resp = router.clone().oneshot(req).await?;
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20).await?;
        Ok(Reply {
            status,
            body: serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
        })
    })
}

/// Percent-encodes a path segment (volume and snapshot names are restricted, but the
/// CLI passes what the operator typed and lets the API refuse it).
pub fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
