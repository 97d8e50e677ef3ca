//! ONC RPC over TCP (RFC 5531): record marking, the call header, replies, and the
//! connection loop with its bounds. What the calls mean is `crate::nfs`'s business.
//!
//! Bounds, so that a client's queue depth never becomes server memory:
//! - a record larger than [`MAX_RECORD`] closes the connection;
//! - each connection has at most [`CALLS_PER_CONN`] calls in progress and
//!   [`BYTES_PER_CONN`] bytes of requests, and all connections together at most
//!   [`BYTES_ALL_CONNS`]; beyond that kura stops reading the socket and TCP pushes back
//!   on the client;
//! - replies wait in a bounded queue for the one writer of the connection, which batches
//!   small replies into one send; a client that takes no replies is closed (sooner when
//!   others wait for the budget), and so is an idle one: see [`crate::limits`].

use nfs3_types::rpc::{
    accept_stat_data, accepted_reply, auth_stat, auth_unix, msg_body, opaque_auth, rejected_reply,
    reply_body, rpc_msg, RPC_VERSION_2,
};
use nfs3_types::xdr_codec::{Pack, Unpack};
use std::future::Future;
use std::io::{self, Cursor};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

use crate::limits::{ConnState, Limits, LogLimiter};
use storage::IoBuf;

/// Largest record accepted: a 1 MiB WRITE (the advertised `wtmax`) with headroom.
pub const MAX_RECORD: usize = 4 << 20;
/// Calls in progress per connection.
pub const CALLS_PER_CONN: usize = 64;
/// Request bytes in progress per connection.
pub const BYTES_PER_CONN: usize = 16 << 20;
/// Request bytes in progress over all connections of the process.
pub const BYTES_ALL_CONNS: usize = 256 << 20;
/// Read and write buffer of a connection (large records bypass them).
const IO_BUFFER: usize = 64 << 10;

/// One decoded call: its header and the record that holds its arguments.
#[derive(Debug)]
pub struct Call {
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    /// The AUTH_UNIX credential; `None` for any other flavor.
    pub cred: Option<auth_unix>,
    msg: IoBuf,
    args_at: usize,
}

/// Why a record is not a call kura serves: an answer to send, or nothing (close).
#[derive(Debug)]
pub struct Refused {
    pub reply: Option<Reply>,
    pub why: String,
}

/// Reads XDR words off a record.
struct Words<'a>(&'a [u8]);

impl<'a> Words<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (w, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*w))
    }

    /// An opaque of at most `max` bytes, with its padding.
    fn opaque(&mut self, max: usize) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > max {
            return None;
        }
        let padded = n.checked_add(3)? & !3;
        let body = self.0.get(..n)?;
        self.0 = self.0.get(padded..)?;
        Some(body)
    }
}

/// Largest credential or verifier body (RFC 5531).
const MAX_AUTH_BYTES: usize = 400;

impl Call {
    /// Parses the call header of a record (RFC 5531), word by word, so that every
    /// malformed or unsupported header gets the answer the protocol gives it: not
    /// version 2 → RPC_MISMATCH, a credential that is too long, malformed, or of a
    /// flavor kura does not serve (RPCSEC_GSS, …) → AUTH_ERROR (BADCRED), a record too
    /// short to say → the connection is closed.
    pub fn parse(msg: impl Into<IoBuf>) -> Result<Call, Refused> {
        let msg: IoBuf = msg.into();
        let mut w = Words(&msg);
        let close = |why: &str| Refused {
            reply: None,
            why: why.to_string(),
        };
        // xid, message type (0: CALL), RPC version.
        let (Some(xid), Some(mtype), Some(rpcvers)) = (w.u32(), w.u32(), w.u32()) else {
            return Err(close("record shorter than an RPC header"));
        };
        if mtype != 0 {
            return Err(close(
                "a REPLY or unknown message where a CALL was expected",
            ));
        }
        if rpcvers != RPC_VERSION_2 {
            return Err(Refused {
                reply: Some(Reply::rpc_mismatch(xid)),
                why: format!("RPC version {rpcvers}"),
            });
        }
        let (Some(prog), Some(vers), Some(proc_)) = (w.u32(), w.u32(), w.u32()) else {
            return Err(Refused {
                reply: Some(Reply::error(xid, accept_stat_data::GARBAGE_ARGS)),
                why: "call header cut short".into(),
            });
        };
        let bad_cred = |why: &str| Refused {
            reply: Some(Reply::auth_error(xid, auth_stat::AUTH_BADCRED)),
            why: why.to_string(),
        };
        let Some(flavor) = w.u32() else {
            return Err(bad_cred("credential cut short"));
        };
        let Some(body) = w.opaque(MAX_AUTH_BYTES) else {
            return Err(bad_cred("credential malformed or longer than 400 bytes"));
        };
        let cred = match flavor {
            0 => None,
            1 => match auth_unix::unpack(&mut Cursor::new(body)) {
                Ok((a, _)) => Some(a),
                Err(_) => return Err(bad_cred("malformed AUTH_UNIX credential")),
            },
            f => return Err(bad_cred(&format!("credential flavor {f} is not served"))),
        };
        let (Some(_verf_flavor), Some(_)) = (w.u32(), w.opaque(MAX_AUTH_BYTES)) else {
            return Err(Refused {
                reply: Some(Reply::auth_error(xid, auth_stat::AUTH_BADVERF)),
                why: "verifier malformed or longer than 400 bytes".into(),
            });
        };
        let args_at = msg.len() - w.0.len();
        Ok(Call {
            xid,
            prog,
            vers,
            proc_,
            cred,
            msg,
            args_at,
        })
    }

    /// The encoded arguments.
    pub fn args(&self) -> &[u8] {
        &self.msg[self.args_at..]
    }

    /// Decodes the arguments as `T`.
    pub fn decode<T: Unpack>(&self) -> Option<T> {
        T::unpack(&mut Cursor::new(self.args()))
            .ok()
            .map(|(v, _)| v)
    }
}

/// Bytes of a bulk reply that are shared, not owned (READ data in cached records).
pub type Shared = Box<dyn AsRef<[u8]> + Send + Sync>;

/// An encoded reply. `head` starts with four bytes reserved for the record mark;
/// `bulk` (READ data) is sent after it without being copied into it, then padding:
/// one buffer, or pieces written with one vectored write.
pub struct Reply {
    head: Vec<u8>,
    bulk: Vec<Shared>,
    bulk_len: usize,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("head", &self.head.len())
            .field("bulk", &self.bulk_len)
            .finish()
    }
}

impl Reply {
    fn start(xid: u32, body: reply_body<'_>, size: usize) -> Vec<u8> {
        let mut head = Vec::with_capacity(4 + 24 + size);
        head.extend_from_slice(&[0; 4]);
        let rpc = rpc_msg {
            xid,
            body: msg_body::REPLY(body),
        };
        rpc.pack(&mut head).expect("packing into a Vec cannot fail");
        head
    }

    fn accepted(xid: u32, stat: accept_stat_data, size: usize) -> Vec<u8> {
        Self::start(
            xid,
            reply_body::MSG_ACCEPTED(accepted_reply {
                verf: opaque_auth::default(),
                reply_data: stat,
            }),
            size,
        )
    }

    /// SUCCESS with the procedure's result.
    pub fn success<T: Pack>(xid: u32, res: &T) -> Reply {
        let mut head = Self::accepted(xid, accept_stat_data::SUCCESS, res.packed_size());
        res.pack(&mut head).expect("packing into a Vec cannot fail");
        Reply::bare(head)
    }

    fn bare(head: Vec<u8>) -> Reply {
        Reply {
            head,
            bulk: Vec::new(),
            bulk_len: 0,
        }
    }

    /// SUCCESS with a result whose last field is variable-length opaque `bulk`:
    /// `prefix` is everything before that field's length.
    pub fn success_bulk<T: Pack>(xid: u32, prefix: &T, bulk: Vec<u8>) -> Reply {
        Self::success_pieces(xid, prefix, vec![Box::new(bulk)])
    }

    /// [`Reply::success_bulk`] with the opaque field in pieces, sent as they are.
    pub fn success_pieces<T: Pack>(xid: u32, prefix: &T, bulk: Vec<Shared>) -> Reply {
        let bulk_len = bulk.iter().map(|b| (**b).as_ref().len()).sum::<usize>();
        let mut head = Self::accepted(xid, accept_stat_data::SUCCESS, prefix.packed_size() + 4);
        prefix
            .pack(&mut head)
            .expect("packing into a Vec cannot fail");
        (bulk_len as u32)
            .pack(&mut head)
            .expect("packing into a Vec cannot fail");
        Reply {
            head,
            bulk,
            bulk_len,
        }
    }

    /// The call was accepted but could not be served (`GARBAGE_ARGS`, `PROC_UNAVAIL`…).
    pub fn error(xid: u32, stat: accept_stat_data) -> Reply {
        Reply::bare(Self::accepted(xid, stat, 0))
    }

    /// The credential was refused.
    pub fn auth_error(xid: u32, stat: auth_stat) -> Reply {
        Reply::bare(Self::start(
            xid,
            reply_body::MSG_DENIED(rejected_reply::auth_error(stat)),
            0,
        ))
    }

    /// Not RPC version 2.
    pub fn rpc_mismatch(xid: u32) -> Reply {
        Reply::bare(Self::start(
            xid,
            reply_body::MSG_DENIED(rejected_reply::rpc_mismatch(RPC_VERSION_2, RPC_VERSION_2)),
            0,
        ))
    }

    /// Bytes of the reply on the wire (record mark and padding aside).
    pub fn wire_len(&self) -> usize {
        self.head.len() + self.bulk_len
    }

    /// The whole reply as one buffer (for the duplicate request cache).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = self.head.clone();
        for b in &self.bulk {
            v.extend_from_slice((**b).as_ref());
        }
        v.resize(v.len() + pad(self.bulk_len), 0);
        v
    }

    /// A reply from [`Reply::to_bytes`].
    pub fn from_bytes(head: Vec<u8>) -> Reply {
        Reply::bare(head)
    }

    async fn write_to<W: tokio::io::AsyncWrite + Unpin>(
        mut self,
        w: &mut BufWriter<W>,
    ) -> io::Result<()> {
        let pad = pad(self.bulk_len);
        let len = self.head.len() - 4 + self.bulk_len + pad;
        if len >= 1 << 31 {
            return Err(io::Error::other("reply larger than one record"));
        }
        let mark = (len as u32) | 0x8000_0000;
        self.head[..4].copy_from_slice(&mark.to_be_bytes());
        w.write_all(&self.head).await?;
        match self.bulk.len() {
            0 => {}
            1 => w.write_all((*self.bulk[0]).as_ref()).await?,
            _ => {
                // Many pieces (chunk slices): past the buffer, in vectored writes.
                w.flush().await?;
                write_all_vectored(w.get_mut(), &self.bulk).await?;
            }
        }
        if self.bulk_len > 0 {
            w.write_all(&[0u8; 4][..pad]).await?;
        }
        Ok(())
    }
}

/// Writes every piece, in order, with as few `writev` calls as the socket allows.
async fn write_all_vectored<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    pieces: &[Shared],
) -> io::Result<()> {
    // (piece, offset inside it) of the first byte not yet written.
    let (mut i, mut at) = (0usize, 0usize);
    while i < pieces.len() {
        let slices: Vec<io::IoSlice<'_>> = std::iter::once(&(*pieces[i]).as_ref()[at..])
            .chain(pieces[i + 1..].iter().map(|p| (**p).as_ref()))
            .take(256)
            .map(io::IoSlice::new)
            .collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while i < pieces.len() && n > 0 {
            let left = (*pieces[i]).as_ref().len() - at;
            if n >= left {
                n -= left;
                i += 1;
                at = 0;
            } else {
                at += n;
                n = 0;
            }
        }
        // Skip empty pieces so that an empty first slice never ends the loop early.
        while i < pieces.len() && (*pieces[i]).as_ref().len() == at {
            i += 1;
            at = 0;
        }
    }
    Ok(())
}

fn pad(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// What serves calls: one per export.
pub trait Service: Send + Sync + 'static {
    /// Serves one call from `peer`; `None` sends no reply (a retransmission of a call
    /// still in progress).
    fn call(
        self: Arc<Self>,
        peer: SocketAddr,
        call: Call,
    ) -> impl Future<Output = Option<Reply>> + Send;

    /// Bytes the reply to `call` may hold beyond its fixed part (READ data), so that
    /// replies count against the same memory budget as requests.
    fn reply_size_hint(&self, call: &Call) -> usize {
        let _ = call;
        0
    }
}

/// The budget a call holds from the moment its request is read until its reply has
/// been written to the socket.
type Permits = (
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::OwnedSemaphorePermit,
);

/// Reads one record (all its fragments). `Ok(None)` at a clean end of stream.
pub async fn read_record<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<IoBuf>> {
    let mut msg = IoBuf::new();
    loop {
        let mut mark = [0u8; 4];
        match r.read_exact(&mut mark).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && msg.is_empty() => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
        let mark = u32::from_be_bytes(mark);
        let len = (mark & 0x7fff_ffff) as usize;
        if msg.len() + len > MAX_RECORD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("record larger than {MAX_RECORD} bytes"),
            ));
        }
        let at = msg.len();
        // A recycled buffer: read_exact fills every byte of it or fails.
        msg.resize(at + len);
        r.read_exact(&mut msg[at..]).await?;
        if mark & 0x8000_0000 != 0 {
            return Ok(Some(msg));
        }
    }
}

/// The budget of request bytes shared by all connections, in KiB.
fn all_conns_budget() -> Arc<Semaphore> {
    static BUDGET: OnceLock<Arc<Semaphore>> = OnceLock::new();
    BUDGET
        .get_or_init(|| Arc::new(Semaphore::new(BYTES_ALL_CONNS >> 10)))
        .clone()
}

/// Serves one connection until the client closes it, breaks the protocol, stays idle,
/// or takes no replies (see [`crate::limits`] for when).
pub async fn serve_connection<S: Service>(
    sock: TcpStream,
    peer: SocketAddr,
    svc: Arc<S>,
    conn: Arc<ConnState>,
    limits: Limits,
) {
    let _ = sock.set_nodelay(true);
    let (rd, wr) = sock.into_split();
    let (tx, rx) = mpsc::channel::<(Reply, Option<Permits>)>(CALLS_PER_CONN);
    let calls = Arc::new(Semaphore::new(CALLS_PER_CONN));
    let reader = tokio::spawn(read_calls(rd, peer, svc, tx, calls.clone(), conn.clone()));
    let mut writer = tokio::spawn(write_replies(wr, rx, conn.clone()));
    // The watchdog: one timer per connection, so that the per-call paths carry none.
    // It ends the connection when the writer is done (client gone, or every reply
    // sent after the client stopped sending), when it is closed from outside, stalls,
    // or sits idle.
    let mut tick = tokio::time::interval(limits.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut writer => break,
            _ = tick.tick() => {
                if conn.is_closing() {
                    tracing::debug!(%peer, "connection closed to make room");
                    break;
                }
                let stalled = conn.stalled_for();
                let contended = crate::limits::budget_contended();
                let limit = if contended { limits.stall_contended } else { limits.stall };
                if stalled >= limit {
                    if let Some(n) = STALL_LOG.check() {
                        tracing::warn!(%peer, secs = stalled.as_secs_f32(), contended, held_back = n, "client took no replies; closing connection");
                    }
                    break;
                }
                if stalled.is_zero()
                    && calls.available_permits() == CALLS_PER_CONN
                    && conn.quiet_for() >= limits.idle
                {
                    tracing::debug!(%peer, "idle connection closed");
                    break;
                }
            }
        }
    }
    // Dropping the tasks drops the socket halves and every permit they hold; calls
    // still running give theirs back when their reply finds no writer.
    reader.abort();
    writer.abort();
}

/// Reads records, answers what cannot be a call, and starts a task per call once its
/// budget is granted. Ends at the end of the stream or a broken record; the writer
/// then sends what is still coming and ends too.
async fn read_calls<S: Service>(
    rd: tokio::net::tcp::OwnedReadHalf,
    peer: SocketAddr,
    svc: Arc<S>,
    tx: mpsc::Sender<(Reply, Option<Permits>)>,
    calls: Arc<Semaphore>,
    conn: Arc<ConnState>,
) {
    let mut rd = BufReader::with_capacity(IO_BUFFER, rd);
    let bytes = Arc::new(Semaphore::new(BYTES_PER_CONN >> 10));
    let all = all_conns_budget();
    loop {
        let msg = match read_record(&mut rd).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                if e.kind() != io::ErrorKind::UnexpectedEof
                    && e.kind() != io::ErrorKind::ConnectionReset
                {
                    if let Some(n) = PROTOCOL_LOG.check() {
                        tracing::warn!(%peer, error = %e, held_back = n, "closing connection");
                    }
                }
                break;
            }
        };
        conn.touch();
        let call = match Call::parse(msg) {
            Ok(c) => c,
            Err(Refused { reply, why }) => {
                if let Some(n) = PROTOCOL_LOG.check() {
                    tracing::warn!(%peer, why, held_back = n, "unusable call");
                }
                match reply {
                    Some(reply) => {
                        if tx.send((reply, None)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    None => break,
                }
            }
        };
        // Request and reply bytes, in KiB. Always acquired in this order (call,
        // connection bytes, shared bytes) and only ever waited for here, so no two
        // readers wait on each other; released once the reply is written. The shared
        // budget is granted in arrival order; a reader waiting for it makes stalled
        // connections close sooner (see `crate::limits`).
        let size = call.msg.len().max(svc.reply_size_hint(&call));
        let units = ((size >> 10) + 1).min(BYTES_PER_CONN >> 10) as u32;
        let (Ok(a), Ok(b)) = (
            calls.clone().acquire_owned().await,
            bytes.clone().acquire_many_owned(units).await,
        ) else {
            break;
        };
        let c = match all.clone().try_acquire_many_owned(units) {
            Ok(c) => c,
            Err(_) => {
                let _waiting = crate::limits::Waiting::start();
                match all.clone().acquire_many_owned(units).await {
                    Ok(c) => c,
                    Err(_) => break,
                }
            }
        };
        let (svc, tx) = (svc.clone(), tx.clone());
        tokio::spawn(async move {
            if let Some(r) = svc.call(peer, call).await {
                let _ = tx.send((r, Some((a, b, c)))).await;
            }
        });
    }
}

/// The one writer of a connection: batches whatever replies are ready into one send.
/// Ends when every sender is gone or the client cannot be written to.
async fn write_replies(
    wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<(Reply, Option<Permits>)>,
    conn: Arc<ConnState>,
) {
    let mut w = BufWriter::with_capacity(IO_BUFFER, wr);
    let mut batch = Vec::with_capacity(CALLS_PER_CONN);
    let mut held = Vec::with_capacity(CALLS_PER_CONN);
    while let Some((r, p)) = rx.recv().await {
        batch.push(r);
        held.push(p);
        while batch.len() < CALLS_PER_CONN {
            match rx.try_recv() {
                Ok((r, p)) => {
                    batch.push(r);
                    held.push(p);
                }
                Err(_) => break,
            }
        }
        conn.sending();
        for r in batch.drain(..) {
            if r.write_to(&mut w).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
        conn.sent();
        // The replies are out: their budget goes back.
        held.clear();
    }
}

static STALL_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));
static PROTOCOL_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_of_several_fragments_and_limits() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&3u32.to_be_bytes());
        wire.extend_from_slice(b"abc");
        wire.extend_from_slice(&(0x8000_0000u32 | 2).to_be_bytes());
        wire.extend_from_slice(b"de");
        let mut r = wire.as_slice();
        assert_eq!(&read_record(&mut r).await.unwrap().unwrap()[..], b"abcde");
        assert!(read_record(&mut r).await.unwrap().is_none(), "clean end");

        let huge = (0x8000_0000u32 | (MAX_RECORD as u32 + 1)).to_be_bytes();
        let mut r = &huge[..];
        assert_eq!(
            read_record(&mut r).await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let cut = [0x80u8, 0, 0, 9, 1, 2];
        let mut r = &cut[..];
        assert!(read_record(&mut r).await.is_err(), "truncated record");
    }

    #[tokio::test]
    async fn replies_carry_record_mark_and_padding() {
        let r = Reply::success_bulk(7, &0u32, vec![1, 2, 3, 4, 5]);
        let mut w = BufWriter::new(Vec::new());
        r.write_to(&mut w).await.unwrap();
        w.flush().await.unwrap();
        let out = w.into_inner();
        let mark = u32::from_be_bytes(out[..4].try_into().unwrap());
        assert_eq!(mark & 0x8000_0000, 0x8000_0000, "last fragment");
        assert_eq!((mark & 0x7fff_ffff) as usize, out.len() - 4);
        assert_eq!(out.len() % 4, 0);
        assert_eq!(&out[4..8], &7u32.to_be_bytes(), "xid first");
        assert_eq!(&out[out.len() - 3..], &[0, 0, 0], "bulk padded with zeros");
    }

    /// A writer that takes at most 7 bytes a call (a socket with a full buffer).
    struct Trickle(Vec<u8>);

    impl tokio::io::AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            b: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let n = b.len().min(7);
            self.0.extend_from_slice(&b[..n]);
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// A reply in pieces (READ data as slices of cached chunks, empty ones among them)
    /// is sent whole and in order however little the socket takes at a time, and
    /// equals its one-buffer form.
    #[tokio::test]
    async fn reply_pieces_survive_short_writes() {
        let parts: Vec<Vec<u8>> = vec![
            (0..10).collect(),
            vec![],
            (10..13).collect(),
            (13..300).map(|x| x as u8).collect(),
            vec![],
            vec![255],
        ];
        let flat: Vec<u8> = parts.concat();
        let pieces: Vec<Shared> = parts.into_iter().map(|p| Box::new(p) as Shared).collect();
        let r = Reply::success_pieces(9, &0u32, pieces);
        let one = Reply::success_bulk(9, &0u32, flat.clone());
        assert_eq!(r.to_bytes(), one.to_bytes());
        let mut w = BufWriter::with_capacity(16, Trickle(Vec::new()));
        r.write_to(&mut w).await.unwrap();
        w.flush().await.unwrap();
        let mut want = one.to_bytes();
        let len = (want.len() - 4) as u32 | 0x8000_0000;
        want[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(w.into_inner().0, want);
    }

    /// Answers every call with 1 MiB.
    struct Big;

    impl Service for Big {
        async fn call(self: Arc<Self>, _peer: SocketAddr, call: Call) -> Option<Reply> {
            Some(Reply::success_bulk(call.xid, &0u32, vec![7; 1 << 20]))
        }
        fn reply_size_hint(&self, _call: &Call) -> usize {
            1 << 20
        }
    }

    fn record(xid: u32) -> Vec<u8> {
        use nfs3_types::rpc::call_body;
        let msg = rpc_msg {
            xid,
            body: msg_body::CALL(call_body {
                rpcvers: 2,
                prog: 1,
                vers: 1,
                proc: 1,
                cred: opaque_auth::default(),
                verf: opaque_auth::default(),
            }),
        };
        let mut v = vec![0; 4];
        msg.pack(&mut v).unwrap();
        let mark = (v.len() as u32 - 4) | 0x8000_0000;
        v[..4].copy_from_slice(&mark.to_be_bytes());
        v
    }

    /// A client that sends calls but never reads the replies holds the budget only
    /// until the stall limit: then its connection is closed and everything is freed.
    /// The real limits (120 s) on tokio's paused clock, which the runtime advances
    /// while everything waits: the test takes no real time for them.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_no_replies_is_closed_and_frees_its_budget() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (sock, peer) = listener.accept().await.unwrap();
            let conn = ConnState::detached(peer.ip());
            serve_connection(sock, peer, Arc::new(Big), conn, Limits::default()).await;
            tokio::time::Instant::now()
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        let t0 = tokio::time::Instant::now();
        for xid in 0..64 {
            client.write_all(&record(xid)).await.unwrap();
        }
        // The replies fill the socket buffers; the server must give up on its own, at
        // the stall limit and not before.
        let closed = tokio::time::timeout(Duration::from_secs(600), server)
            .await
            .expect("the connection must be closed at the stall limit")
            .unwrap();
        let took = closed - t0;
        let limits = Limits::default();
        assert!(
            took >= limits.stall && took <= limits.stall + Duration::from_secs(5),
            "closed after {took:?}, the limit is {:?}",
            limits.stall
        );
        // Calls still running when it closed give theirs back as they finish.
        let full = BYTES_ALL_CONNS >> 10;
        let t0 = std::time::Instant::now();
        while all_conns_budget().available_permits() != full && t0.elapsed().as_secs() < 10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            all_conns_budget().available_permits(),
            full,
            "every reply's budget is back"
        );
        // What the client gets is some whole replies, then the end of the stream.
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        assert!(got.len() < 64 << 20, "not every reply was sent");
    }

    /// Every malformed header gets the protocol's answer with its xid, or a close when
    /// there is not even a call to answer.
    #[test]
    fn garbage_headers_get_the_protocols_answer() {
        let words = |w: &[u32]| -> Vec<u8> { w.iter().flat_map(|x| x.to_be_bytes()).collect() };
        let status = |r: &Reply| {
            let b = r.to_bytes();
            (
                u32::from_be_bytes(b[4..8].try_into().unwrap()),
                u32::from_be_bytes(b[12..16].try_into().unwrap()),
                u32::from_be_bytes(b[16..20].try_into().unwrap()),
            )
        };
        // Too short to be a call, or not a call: closed.
        for m in [vec![], vec![0, 0, 0, 9, 0, 0], words(&[9, 1])] {
            assert!(Call::parse(m).unwrap_err().reply.is_none());
        }
        // RPC version 3: MSG_DENIED, RPC_MISMATCH.
        let r = Call::parse(words(&[9, 0, 3, 100003, 3, 0])).unwrap_err();
        assert_eq!(status(&r.reply.unwrap()), (9, 1, 0));
        // RPCSEC_GSS (flavor 6): MSG_DENIED, AUTH_ERROR, AUTH_BADCRED (1).
        let gss = words(&[9, 0, 2, 100003, 3, 1, 6, 8, 1, 0, 0, 0]);
        let r = Call::parse(gss).unwrap_err();
        let b = r.reply.unwrap().to_bytes();
        assert_eq!(status_words(&b), [9, 1, 1, 1, 1], "{}", r.why);
        // A credential longer than 400 bytes: AUTH_BADCRED, nothing read past it.
        let r = Call::parse(words(&[9, 0, 2, 100003, 3, 1, 1, 100_000])).unwrap_err();
        assert_eq!(status_words(&r.reply.unwrap().to_bytes()), [9, 1, 1, 1, 1]);
        // AUTH_NULL with an empty verifier parses.
        let ok = Call::parse(words(&[9, 0, 2, 100003, 3, 0, 0, 0, 0, 0])).unwrap();
        assert!(ok.cred.is_none() && ok.args().is_empty());
    }

    /// xid, message type, reply status, reject status, auth status of a denial.
    fn status_words(b: &[u8]) -> [u32; 5] {
        let w = |i: usize| u32::from_be_bytes(b[4 + 4 * i..8 + 4 * i].try_into().unwrap());
        [w(0), w(1), w(2), w(3), w(4)]
    }
}
