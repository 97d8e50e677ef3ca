//! Fairness between clients: connection slots shared per client address, idle and
//! stalled connections closed, and warnings that a flood cannot turn into a flood of
//! log lines.
//!
//! The rules, all about not letting some clients lock the others out:
//! - **Slots.** An export serves at most `max_connections` at a time. When all are taken
//!   and a client connects, the address holding the most connections gives up its
//!   least recently active one (if it holds more than the newcomer's address); only
//!   when the newcomer's address already holds as many as any other is it refused.
//! - **Idle.** A connection with no call in progress that sent nothing for
//!   [`Limits::idle`] is closed (clients reconnect on their next call).
//! - **Stalled.** A client that takes no replies for [`Limits::stall`] is closed; when
//!   other connections wait for the shared memory budget, [`Limits::stall_contended`]
//!   suffices. Budget is granted first come, first served, so once the stalled holders
//!   are gone the waiting clients are served in order.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Time limits of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Replies not taken for this long close the connection.
    pub stall: Duration,
    /// The same while other connections wait for the memory budget.
    pub stall_contended: Duration,
    /// No call in progress and nothing received for this long closes the connection.
    pub idle: Duration,
    /// How often the limits are checked.
    pub tick: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            stall: Duration::from_secs(120),
            stall_contended: Duration::from_secs(5),
            idle: Duration::from_secs(360),
            tick: Duration::from_millis(500),
        }
    }
}

/// Readers waiting for the shared memory budget, over all exports.
static BUDGET_WAITERS: AtomicUsize = AtomicUsize::new(0);

/// Marks a reader as waiting for the shared budget while it is alive.
pub struct Waiting;

impl Waiting {
    pub fn start() -> Waiting {
        BUDGET_WAITERS.fetch_add(1, Ordering::AcqRel);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        BUDGET_WAITERS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether some connection waits for the shared budget now.
pub fn budget_contended() -> bool {
    BUDGET_WAITERS.load(Ordering::Acquire) > 0
}

/// The limits' clock: tokio's, so that tests run the real limits (120 s of stall, 360 s
/// of idle) on a paused clock that the runtime advances when it has nothing else to
/// do, instead of waiting in real time. Outside a paused runtime it is the system's
/// monotonic clock.
fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// Milliseconds since the first use of the clock.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(|| now().into_std());
    now()
        .into_std()
        .saturating_duration_since(start)
        .as_millis() as u64
}

/// What the table, the connection's tasks and its watchdog share about one
/// connection. Plain atomics: the per-call paths only store timestamps, and the
/// watchdog (one timer per connection) decides when to close.
pub struct ConnState {
    pub peer: IpAddr,
    last_active: AtomicU64,
    /// When the writer started the send in progress (ms since start + 1), 0 when idle.
    sending_since: AtomicU64,
    closing: AtomicBool,
}

impl ConnState {
    fn new(peer: IpAddr) -> Arc<ConnState> {
        Arc::new(ConnState {
            peer,
            last_active: AtomicU64::new(now_ms()),
            sending_since: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        })
    }

    /// A connection that belongs to no table (tests, tools).
    pub fn detached(peer: IpAddr) -> Arc<ConnState> {
        Self::new(peer)
    }

    /// Something was received or sent.
    pub fn touch(&self) {
        self.last_active.store(now_ms(), Ordering::Relaxed);
    }

    /// Time since the last activity.
    pub fn quiet_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last_active.load(Ordering::Relaxed)))
    }

    /// Asks the connection to stop (its watchdog closes it at its next tick).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// The writer starts sending replies.
    pub fn sending(&self) {
        self.sending_since.store(now_ms() + 1, Ordering::Relaxed);
    }

    /// The writer's send completed: the client is taking replies.
    pub fn sent(&self) {
        let now = now_ms();
        self.sending_since.store(0, Ordering::Relaxed);
        self.last_active.store(now, Ordering::Relaxed);
    }

    /// How long the send in progress has been waiting for the client.
    pub fn stalled_for(&self) -> Duration {
        match self.sending_since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            t => Duration::from_millis((now_ms() + 1).saturating_sub(t)),
        }
    }
}

/// The connections of one export, by client address.
pub struct ConnTable {
    max: usize,
    inner: Mutex<HashMap<u64, Arc<ConnState>>>,
    next: AtomicU64,
}

/// A connection's place in its table; gives it back when dropped.
pub struct Slot {
    table: Arc<ConnTable>,
    id: u64,
    pub state: Arc<ConnState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.inner.lock().unwrap().remove(&self.id);
    }
}

impl ConnTable {
    pub fn new(max: usize) -> Arc<ConnTable> {
        Arc::new(ConnTable {
            max: max.max(1),
            inner: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        })
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A slot for a new connection from `peer`, making room by the rules above;
    /// `None` when `peer`'s address already holds its share.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let mut conns = self.inner.lock().unwrap();
        if conns.len() >= self.max {
            let mut per_addr: HashMap<IpAddr, usize> = HashMap::new();
            for c in conns.values() {
                *per_addr.entry(c.peer).or_default() += 1;
            }
            let mine = per_addr.get(&peer).copied().unwrap_or(0);
            let (&top, &most) = per_addr.iter().max_by_key(|(_, n)| **n)?;
            // Only an address with at least two more than the newcomer's gives one up
            // (after that it still holds at least as many).
            if top == peer || most <= mine + 1 {
                return None;
            }
            // The top address's least recently active connection goes.
            let victim = conns
                .iter()
                .filter(|(_, c)| c.peer == top)
                .max_by_key(|(_, c)| c.quiet_for())
                .map(|(id, _)| *id)?;
            if let Some(c) = conns.remove(&victim) {
                tracing::info!(victim = %c.peer, newcomer = %peer, "all connection slots taken: closing the busiest address's least active connection");
                c.close();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let state = ConnState::new(peer);
        conns.insert(id, state.clone());
        Some(Slot {
            table: self.clone(),
            id,
            state,
        })
    }
}

/// Lets a warning through at most once per interval and says how many it held back.
pub struct LogLimiter {
    interval_ms: u64,
    last: AtomicU64,
    held: AtomicU64,
}

impl LogLimiter {
    pub const fn new(interval: Duration) -> Self {
        LogLimiter {
            interval_ms: interval.as_millis() as u64,
            last: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: log now, `n` earlier ones were held back. `None`: hold this one.
    pub fn check(&self) -> Option<u64> {
        // `last` is the time of the last line plus one; 0 means never.
        let now = now_ms() + 1;
        let last = self.last.load(Ordering::Relaxed);
        if (last == 0 || now >= last + self.interval_ms)
            && self
                .last
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::AcqRel));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// At most `max` characters of a client-supplied string, for logs.
pub fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let cut: String = s.chars().take(max).collect();
    format!("{cut}… ({} bytes)", s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// One address holding every slot gives one up to each other address that comes;
    /// an address never evicts its own, and equal shares are not disturbed.
    #[test]
    fn full_table_makes_room_for_other_addresses() {
        let t = ConnTable::new(4);
        let hog: Vec<Slot> = (0..4).map(|_| t.admit(ip("10.0.0.1")).unwrap()).collect();
        assert!(t.admit(ip("10.0.0.1")).is_none(), "the hog cannot grow");
        let a = t.admit(ip("10.0.0.2")).expect("a newcomer gets a slot");
        assert_eq!(
            hog.iter().filter(|s| s.state.is_closing()).count(),
            1,
            "exactly one of the hog's connections is asked to close"
        );
        let b = t.admit(ip("10.0.0.3")).expect("and the next newcomer too");
        assert_eq!(t.len(), 4);
        // Now 10.0.0.1 holds 2, the others 1 each: a second for 10.0.0.2 would only
        // move the unfairness, so it waits for a free slot.
        assert!(t.admit(ip("10.0.0.2")).is_none());
        drop(a);
        assert!(
            t.admit(ip("10.0.0.2")).is_some(),
            "a free slot is taken at once"
        );
        drop(b);
    }

    #[test]
    fn log_limiter_holds_back_a_flood() {
        let l = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(l.check(), Some(0));
        for _ in 0..1000 {
            assert_eq!(l.check(), None);
        }
    }

    #[test]
    fn shorten_cuts_long_client_strings() {
        assert_eq!(shorten("abc", 10), "abc");
        let long = "x".repeat(100_000);
        let s = shorten(&long, 64);
        assert!(s.len() < 100 && s.ends_with("(100000 bytes)"), "{s}");
    }
}
