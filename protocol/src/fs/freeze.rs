//! The freeze gate: a volume's mutating calls pass it; a snapshot job closes it.
//!
//! While a volume is frozen, a mutating call on it (SETATTR, WRITE, CREATE, MKDIR,
//! SYMLINK, MKNOD, REMOVE, RMDIR, RENAME, LINK) waits at the gate: it is held, not
//! failed, and the client sees a slow reply. Reads, COMMIT and every other volume go
//! on. [`FreezeGate::freeze`] closes the gate and waits until the calls already past it
//! have finished (drain), so that the store holds exactly what was acknowledged before
//! the freeze. The returned [`Frozen`] guard opens the gate when it is dropped, so no
//! failure path can leave a volume frozen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storage::VolumeId;
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Default)]
struct VolState {
    frozen: bool,
    /// Mutating calls past the gate and not finished.
    inflight: usize,
    /// When the current freeze first held a call.
    first_held: Option<Instant>,
    held: u64,
    /// When the last mutating call finished.
    last_mutation: Option<Instant>,
}

/// Per-volume gates of one store, shared by all its exports.
#[derive(Default)]
pub struct FreezeGate {
    vols: Mutex<HashMap<VolumeId, VolState>>,
    changed: Notify,
}

/// A mutating call past the gate; the drain waits for it.
pub struct Pass {
    gate: Arc<FreezeGate>,
    vol: VolumeId,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut v = self.gate.vols.lock().unwrap();
        if let Some(s) = v.get_mut(&self.vol) {
            s.inflight -= 1;
            s.last_mutation = Some(Instant::now());
            if s.inflight == 0 && s.frozen {
                self.gate.changed.notify_waiters();
            }
        }
    }
}

/// What a freeze measured, returned when it ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreezeStats {
    /// From closing the gate to opening it.
    pub frozen: Duration,
    /// From the first held call to the thaw (what a client saw); zero if none waited.
    pub window: Duration,
    /// Calls that waited at the gate.
    pub held: u64,
}

/// A frozen volume. Dropping it thaws (also on every error path); [`Frozen::thaw`]
/// thaws and says what the freeze measured.
pub struct Frozen {
    gate: Arc<FreezeGate>,
    vol: VolumeId,
    since: Instant,
    done: bool,
}

impl Frozen {
    pub fn volume(&self) -> VolumeId {
        self.vol
    }

    /// Opens the gate; held calls go on in the order the scheduler wakes them.
    pub fn thaw(mut self) -> FreezeStats {
        self.open()
    }

    fn open(&mut self) -> FreezeStats {
        self.done = true;
        let now = Instant::now();
        let mut v = self.gate.vols.lock().unwrap();
        let s = v.entry(self.vol).or_default();
        let stats = FreezeStats {
            frozen: now - self.since,
            window: s.first_held.map_or(Duration::ZERO, |t| now - t),
            held: s.held,
        };
        s.frozen = false;
        s.first_held = None;
        s.held = 0;
        drop(v);
        self.gate.changed.notify_waiters();
        stats
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.done {
            let s = self.open();
            tracing::warn!(volume = %self.vol, frozen_ms = s.frozen.as_millis() as u64, "thawed on an error path");
        }
    }
}

/// Why a freeze did not take.
#[derive(Debug, PartialEq, Eq)]
pub enum FreezeError {
    /// Another job holds this volume frozen.
    AlreadyFrozen,
    /// Calls in progress did not finish within the limit; the volume was thawed.
    DrainTimeout { inflight: usize },
}

impl std::fmt::Display for FreezeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FreezeError::AlreadyFrozen => write!(f, "the volume is already frozen"),
            FreezeError::DrainTimeout { inflight } => write!(
                f,
                "{inflight} calls in progress did not finish within the freeze limit"
            ),
        }
    }
}

impl std::error::Error for FreezeError {}

impl FreezeGate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Waits while `vol` is frozen, then lets a mutating call through.
    pub async fn enter(self: &Arc<Self>, vol: VolumeId) -> Pass {
        let mut counted = false;
        loop {
            // Registered before the check, so a thaw between the two is not missed.
            let notified = self.changed.notified();
            {
                let mut v = self.vols.lock().unwrap();
                let s = v.entry(vol).or_default();
                if !s.frozen {
                    s.inflight += 1;
                    return Pass {
                        gate: self.clone(),
                        vol,
                    };
                }
                if !counted {
                    counted = true;
                    s.held += 1;
                    s.first_held.get_or_insert_with(Instant::now);
                }
            }
            notified.await;
        }
    }

    /// How long `vol` has seen no mutating call (`None`: none since the gate was made,
    /// i.e. since the daemon started). A call in progress counts as a mutation now.
    pub fn quiet_for(&self, vol: VolumeId) -> Option<Duration> {
        let v = self.vols.lock().unwrap();
        let s = v.get(&vol)?;
        if s.inflight > 0 {
            return Some(Duration::ZERO);
        }
        s.last_mutation.map(|t| t.elapsed())
    }

    /// Is `vol` frozen now?
    pub fn is_frozen(&self, vol: VolumeId) -> bool {
        self.vols
            .lock()
            .unwrap()
            .get(&vol)
            .is_some_and(|s| s.frozen)
    }

    /// Closes the gate of `vol` and waits up to `drain` for the calls past it to finish.
    pub async fn freeze(
        self: &Arc<Self>,
        vol: VolumeId,
        drain: Duration,
    ) -> Result<Frozen, FreezeError> {
        let since = Instant::now();
        {
            let mut v = self.vols.lock().unwrap();
            let s = v.entry(vol).or_default();
            if s.frozen {
                return Err(FreezeError::AlreadyFrozen);
            }
            s.frozen = true;
        }
        let frozen = Frozen {
            gate: self.clone(),
            vol,
            since,
            done: false,
        };
        let deadline = since + drain;
        loop {
            let notified = self.changed.notified();
            let inflight = self.vols.lock().unwrap()[&vol].inflight;
            if inflight == 0 {
                return Ok(frozen);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let inflight = self.vols.lock().unwrap()[&vol].inflight;
                if inflight == 0 {
                    return Ok(frozen);
                }
                // `frozen` drops here and thaws.
                return Err(FreezeError::DrainTimeout { inflight });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_drains_and_thaws() {
        let g = FreezeGate::new();
        let (a, b) = (VolumeId(1), VolumeId(2));
        let in_flight = g.enter(a).await;
        // The drain waits for the call in flight.
        let g2 = g.clone();
        let freezing = tokio::spawn(async move { g2.freeze(a, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!freezing.is_finished());
        assert!(g.is_frozen(a));
        drop(in_flight);
        let frozen = freezing.await.unwrap().unwrap();
        // A new call on the frozen volume is held; another volume is not.
        let g3 = g.clone();
        let held = tokio::spawn(async move {
            let _p = g3.enter(a).await;
            Instant::now()
        });
        drop(g.enter(b).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!held.is_finished());
        assert_eq!(
            g.freeze(a, Duration::ZERO).await.err(),
            Some(FreezeError::AlreadyFrozen)
        );
        let stats = frozen.thaw();
        assert_eq!(stats.held, 1);
        assert!(stats.window >= Duration::from_millis(300), "{stats:?}");
        assert!(stats.frozen >= stats.window);
        held.await.unwrap();
        assert!(!g.is_frozen(a));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_timeout_and_drop_thaw() {
        let g = FreezeGate::new();
        let v = VolumeId(7);
        let stuck = g.enter(v).await;
        let e = g.freeze(v, Duration::from_secs(1)).await.err().unwrap();
        assert_eq!(e, FreezeError::DrainTimeout { inflight: 1 });
        assert!(!g.is_frozen(v), "a failed drain thaws");
        drop(stuck);
        {
            let _f = g.freeze(v, Duration::from_secs(1)).await.unwrap();
            assert!(g.is_frozen(v));
        }
        assert!(!g.is_frozen(v), "dropping the guard thaws");
        drop(g.enter(v).await);
    }
}
