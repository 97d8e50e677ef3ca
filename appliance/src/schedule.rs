//! Schedules: 5-field cron expressions in a time zone, for each volume's snapshot and
//! prune jobs and the store's GC and verify. The plan is a pure function of the clock
//! ([`Plan::due`]), so tests drive it with any time (across a DST change, after a
//! restart); [`run`] is the daemon's loop around it.
//!
//! - A slot missed while the daemon was down runs once at start: a schedule whose
//!   previous slot is later than the last job of its kind (from the job history) is
//!   due at once.
//! - Two jobs never overlap on one volume: a due job whose volume is busy is skipped
//!   and logged (the next slot comes).
//! - DST: slots are local times in the schedule's zone. A local time that does not
//!   exist (spring forward) runs at the first instant after the gap; a local time that
//!   happens twice (fall back) runs once, at the first.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use std::str::FromStr;

/// What a schedule starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Snapshot,
    Prune,
    Gc,
    Verify,
    RestoreTest,
    PlatformSnapshot,
    /// Replication of the entry's volume to this target.
    Replicate(String),
}

impl Kind {
    /// The job history's name of the kind.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Snapshot => "snapshot",
            Kind::Prune => "prune",
            Kind::Gc => "gc",
            Kind::Verify => "verify",
            Kind::RestoreTest => "restore-test",
            Kind::PlatformSnapshot => "platform-snapshot",
            Kind::Replicate(_) => "replicate",
        }
    }
}

/// One schedule: a cron expression for a kind of job on a volume (or the store).
#[derive(Clone, Debug)]
pub struct Entry {
    pub kind: Kind,
    /// `None` for store-wide jobs.
    pub volume: Option<String>,
    pub expr: String,
    cron: cron::Schedule,
    pub tz: Tz,
    /// The slot this entry last fired for (or the one it was caught up to).
    last: DateTime<Utc>,
}

/// Parses a 5-field cron expression (minute hour day-of-month month day-of-week).
pub fn parse_cron(expr: &str) -> anyhow::Result<cron::Schedule> {
    let fields = expr.split_whitespace().count();
    if fields != 5 {
        anyhow::bail!(
            "{expr:?} has {fields} fields; a schedule has 5: minute hour day-of-month month day-of-week"
        );
    }
    cron::Schedule::from_str(&format!("0 {expr}"))
        .map_err(|e| anyhow::anyhow!("{expr:?} is not a cron expression: {e}"))
}

impl Entry {
    pub fn new(kind: Kind, volume: Option<String>, expr: &str, tz: Tz) -> anyhow::Result<Entry> {
        Ok(Entry {
            kind,
            volume,
            expr: expr.to_owned(),
            cron: parse_cron(expr)?,
            tz,
            last: DateTime::<Utc>::MIN_UTC,
        })
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .after(&t.with_timezone(&self.tz))
            .next()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The latest slot at or before `t` (searching back up to ~400 days).
    pub fn prev_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Look back an hour, a day, ... until a window holds a slot.
        let from = [1, 24, 24 * 7, 24 * 40, 24 * 400]
            .into_iter()
            .map(|h| t - chrono::Duration::hours(h))
            .find(|f| self.next_after(*f).is_some_and(|n| n <= t))
            .unwrap_or(t - chrono::Duration::hours(24 * 400));
        self.cron
            .after(&from.with_timezone(&self.tz))
            .map(|s| s.with_timezone(&Utc))
            .take_while(|s| *s <= t)
            .last()
    }
}

/// The schedules of a daemon and where each stands.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub entries: Vec<Entry>,
}

impl Plan {
    /// Catches each entry up to `now`: `last_run(kind, volume)` is when a job of that
    /// kind last started (from the history). An entry whose previous slot is later than
    /// that run missed it and is due at the first [`Plan::due`].
    pub fn start(
        &mut self,
        now: DateTime<Utc>,
        last_run: impl Fn(&Entry) -> Option<DateTime<Utc>>,
    ) {
        for e in &mut self.entries {
            let prev = e.prev_at_or_before(now);
            e.last = match (prev, last_run(e)) {
                // Missed: pretend the slot before `prev` was the last, so `prev` is due.
                (Some(p), Some(r)) if r < p => p - chrono::Duration::seconds(1),
                (Some(p), None) => p - chrono::Duration::seconds(1),
                _ => now,
            };
        }
    }

    /// The entries due at `now` (each once, however many of its slots passed), marked
    /// as fired.
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<Entry> {
        let mut out = Vec::new();
        for e in &mut self.entries {
            if let Some(next) = e.next_after(e.last) {
                if next <= now {
                    // Every slot up to now is covered by this one run.
                    e.last = e.prev_at_or_before(now).unwrap_or(now);
                    out.push(e.clone());
                }
            }
        }
        out
    }

    /// When the next entry is due.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.entries
            .iter()
            .filter_map(|e| e.next_after(e.last))
            .min()
    }
}

/// The schedules a config sets.
pub fn plan_of(cfg: &crate::config::Config) -> anyhow::Result<Plan> {
    let mut entries = Vec::new();
    let store_tz = cfg.schedule.timezone.parse::<Tz>().unwrap_or(Tz::UTC);
    for (kind, expr) in [
        (Kind::Gc, &cfg.schedule.gc),
        (Kind::Verify, &cfg.schedule.verify),
        (Kind::PlatformSnapshot, &cfg.platform_snapshot.schedule),
    ] {
        if let Some(x) = expr {
            entries.push(Entry::new(kind, None, x, store_tz)?);
        }
    }
    for (name, v) in &cfg.volume_settings {
        for x in &v.schedule {
            entries.push(Entry::new(Kind::Snapshot, Some(name.clone()), x, v.tz())?);
        }
        if let Some(x) = &v.prune_schedule {
            entries.push(Entry::new(Kind::Prune, Some(name.clone()), x, v.tz())?);
        }
        if let Some(x) = &v.restore_test_schedule {
            entries.push(Entry::new(
                Kind::RestoreTest,
                Some(name.clone()),
                x,
                v.tz(),
            )?);
        }
    }
    // A target's own schedule replicates every volume that names it.
    for (target, t) in &cfg.targets {
        let Some(x) = &t.schedule else { continue };
        for (name, v) in &cfg.volume_settings {
            if v.replicate_to.contains(target) {
                entries.push(Entry::new(
                    Kind::Replicate(target.clone()),
                    Some(name.clone()),
                    x,
                    store_tz,
                )?);
            }
        }
    }
    Ok(Plan { entries })
}

/// The daemon's scheduler: fires due jobs until `stop` changes.
pub async fn run(
    app: std::sync::Arc<crate::jobs::Appliance>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut plan = match plan_of(&app.cfg) {
        Ok(p) if !p.entries.is_empty() => p,
        Ok(_) => return,
        Err(e) => {
            tracing::error!(error = %e, "schedules not started");
            return;
        }
    };
    let store = app.store.clone();
    let history = tokio::task::spawn_blocking(move || store.jobs(None, 100_000))
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    plan.start(Utc::now(), |e| {
        history
            .iter()
            .find(|j| j.kind == e.kind.name() && j.volume == e.volume)
            .and_then(|j| DateTime::<Utc>::from_timestamp_millis(j.started_ms))
    });
    tracing::info!(schedules = plan.entries.len(), "scheduler started");
    loop {
        for e in plan.due(Utc::now()) {
            tokio::spawn(fire(app.clone(), e));
        }
        // Wake for the next slot, and at least every minute (a clock that jumps).
        let wait = plan
            .next_wake()
            .and_then(|t| (t - Utc::now()).to_std().ok())
            .unwrap_or_default()
            .clamp(
                std::time::Duration::from_millis(200),
                std::time::Duration::from_secs(60),
            );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Runs one due entry; a busy volume skips the slot.
async fn fire(app: std::sync::Arc<crate::jobs::Appliance>, e: Entry) {
    let vol = e.volume.clone().unwrap_or_default();
    let r: anyhow::Result<()> = async {
        match &e.kind {
            Kind::Snapshot => {
                let settings = app.cfg.volume(&vol);
                let busy = match settings.quiet_secs {
                    Some(q) => {
                        let max = settings
                            .max_wait
                            .as_deref()
                            .and_then(|m| crate::config::parse_duration(m).ok())
                            .unwrap_or(std::time::Duration::from_secs(7200));
                        !app.wait_quiet(&vol, std::time::Duration::from_secs(q), max)
                            .await?
                    }
                    None => false,
                };
                let req = crate::jobs::SnapshotRequest {
                    name: None,
                    label: Some(format!("scheduled ({})", e.expr)),
                    busy,
                };
                app.snapshot_job(&vol, req).await.map(|_| ())
            }
            Kind::Prune => app.prune_job(vec![vol.clone()], false).await.map(|_| ()),
            Kind::Gc => app.gc_job(false).await.map(|_| ()),
            Kind::Verify => app.verify_job().await.map(|_| ()),
            Kind::RestoreTest => app.restore_test_job(&vol, None).await.map(|_| ()),
            Kind::PlatformSnapshot => app.platform_snapshot_job().await.map(|_| ()),
            Kind::Replicate(t) => app.replicate_job(&vol, t, false).await.map(|_| ()),
        }
    }
    .await;
    match r {
        Ok(()) => {}
        Err(err) if err.downcast_ref::<crate::jobs::Refusal>().is_some() => {
            tracing::info!(kind = e.kind.name(), volume = vol, reason = %err, "scheduled job skipped")
        }
        Err(err) => {
            tracing::warn!(kind = e.kind.name(), volume = vol, error = %err, "scheduled job failed")
        }
    }
}

/// A 5-field cron expression in words for people: `0 1 * * *` is "every day at
/// 01:00", `*/15 * * * *` "every 15 minutes", `30 2 * * 0` "every Sunday at 02:30";
/// what has no short wording is shown as the expression itself.
pub fn describe_cron(expr: &str) -> String {
    const DAYS: [&str; 8] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let f: Vec<&str> = expr.split_whitespace().collect();
    let fallback = || format!("at cron \"{}\"", f.join(" "));
    let [min, hour, dom, mon, dow] = f[..] else {
        return fallback();
    };
    let num = |s: &str, max: u32| s.parse::<u32>().ok().filter(|n| *n <= max);
    let when = match (num(min, 59), num(hour, 23)) {
        (Some(m), Some(h)) => format!("at {h:02}:{m:02}"),
        (Some(m), None) if hour == "*" => format!("every hour at :{m:02}"),
        (None, None) if hour == "*" => match min.strip_prefix("*/").and_then(|n| num(n, 59)) {
            Some(n) => format!("every {n} minutes"),
            None if min == "*" => "every minute".into(),
            None => return fallback(),
        },
        (Some(m), None) => match hour.strip_prefix("*/").and_then(|n| num(n, 23)) {
            Some(n) => format!("every {n} hours at :{m:02}"),
            None => return fallback(),
        },
        _ => return fallback(),
    };
    let day = match (dom, mon, dow) {
        ("*", "*", "*") => None,
        ("*", "*", "1-5") => Some("on weekdays".to_string()),
        ("*", "*", d) => match num(d, 7) {
            Some(d) => Some(format!("every {}", DAYS[d as usize])),
            None => return fallback(),
        },
        (d, "*", "*") => match num(d, 31).filter(|d| *d >= 1) {
            Some(d) => Some(format!("on day {d} of every month")),
            None => return fallback(),
        },
        _ => return fallback(),
    };
    match day {
        None if when.starts_with("at ") => format!("every day {when}"),
        None => when,
        Some(d) if when.starts_with("at ") => format!("{d} {when}"),
        Some(d) => format!("{when}, {d}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn entry(expr: &str, tz: &str) -> Entry {
        Entry::new(Kind::Snapshot, Some("v".into()), expr, tz.parse().unwrap()).unwrap()
    }

    /// Fires of `plan` from `from` to `to`, stepping a minute at a time.
    fn fires(plan: &mut Plan, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = from;
        while t <= to {
            for _ in plan.due(t) {
                out.push(t);
            }
            t += chrono::Duration::minutes(1);
        }
        out
    }

    #[test]
    fn a_targets_schedule_replicates_the_volumes_that_name_it() {
        let cfg: crate::config::Config = toml::from_str(
            "[target.dr]\npath = \"/dr\"\nschedule = \"30 2 * * *\"\n[target.other]\npath = \"/o\"\n\
             [volume.db]\nreplicate_to = [\"dr\"]\n[volume.files]\nreplicate_to = [\"other\"]\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        let plan = plan_of(&cfg).unwrap();
        let repl: Vec<_> = plan
            .entries
            .iter()
            .filter(|e| e.kind.name() == "replicate")
            .map(|e| (e.kind.clone(), e.volume.clone()))
            .collect();
        assert_eq!(repl, [(Kind::Replicate("dr".into()), Some("db".into()))]);
    }

    #[test]
    fn cron_in_words() {
        assert_eq!(describe_cron("0 1 * * *"), "every day at 01:00");
        assert_eq!(describe_cron("30 2 * * 0"), "every Sunday at 02:30");
        assert_eq!(describe_cron("0 22 * * 1-5"), "on weekdays at 22:00");
        assert_eq!(describe_cron("*/15 * * * *"), "every 15 minutes");
        assert_eq!(describe_cron("5 * * * *"), "every hour at :05");
        assert_eq!(describe_cron("0 */6 * * *"), "every 6 hours at :00");
        assert_eq!(
            describe_cron("0 3 1 * *"),
            "on day 1 of every month at 03:00"
        );
        assert_eq!(describe_cron("0 3 1 1 *"), "at cron \"0 3 1 1 *\"");
        assert_eq!(describe_cron("61 3 * * *"), "at cron \"61 3 * * *\"");
        assert_eq!(describe_cron("bogus"), "at cron \"bogus\"");
    }

    #[test]
    fn bad_expressions_are_refused() {
        assert!(parse_cron("0 * * *").unwrap_err().to_string().contains("5"));
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("0 0 * * * *").is_err(), "six fields");
        parse_cron("*/15 2-4 * * 1-5").unwrap();
    }

    #[test]
    fn hourly_runs_once_per_slot_and_not_at_start() {
        let mut p = Plan {
            entries: vec![entry("0 * * * *", "UTC")],
        };
        let t0 = utc("2026-11-30T10:30:00Z");
        // It ran at 10:00 (history): nothing is due until 11:00.
        p.start(t0, |_| Some(utc("2026-11-30T10:00:05Z")));
        assert!(p.due(t0).is_empty());
        assert_eq!(p.next_wake(), Some(utc("2026-11-30T11:00:00Z")));
        let f = fires(&mut p, t0, utc("2026-11-30T13:30:00Z"));
        assert_eq!(
            f,
            vec![
                utc("2026-11-30T11:00:00Z"),
                utc("2026-11-30T12:00:00Z"),
                utc("2026-11-30T13:00:00Z")
            ]
        );
    }

    #[test]
    fn a_missed_slot_runs_once_at_start() {
        let mut p = Plan {
            entries: vec![entry("0 2 * * *", "UTC")],
        };
        // Down from before yesterday's 02:00 until today 09:00: two slots missed, one run.
        let now = utc("2026-11-30T09:00:00Z");
        p.start(now, |_| Some(utc("2026-11-28T02:00:01Z")));
        assert_eq!(p.due(now).len(), 1);
        assert!(p.due(now + chrono::Duration::minutes(1)).is_empty());
        assert_eq!(p.next_wake(), Some(utc("2026-12-01T02:00:00Z")));
        // Never ran at all: due at start too.
        let mut p = Plan {
            entries: vec![entry("0 2 * * *", "UTC")],
        };
        p.start(now, |_| None);
        assert_eq!(p.due(now).len(), 1);
    }

    #[test]
    fn local_times_across_dst_changes() {
        // Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST; 2026-10-25 03:00 CEST -> 02:00 CET.
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let mut p = Plan {
            entries: vec![entry("30 2 * * *", "Europe/Berlin")],
        };
        let from = utc("2026-03-27T12:00:00Z");
        p.start(from, |_| Some(from));
        let f = fires(&mut p, from, utc("2026-03-31T12:00:00Z"));
        let local: Vec<String> = f
            .iter()
            .map(|t| t.with_timezone(&tz).format("%m-%d %H:%M %Z").to_string())
            .collect();
        // 02:30 does not exist on 03-29: that day runs once, after the gap or not at all,
        // never twice; the other days at 02:30 local.
        assert!(local.contains(&"03-28 02:30 CET".to_string()), "{local:?}");
        assert!(local.contains(&"03-30 02:30 CEST".to_string()), "{local:?}");
        assert!(
            local.iter().filter(|l| l.starts_with("03-29")).count() <= 1,
            "{local:?}"
        );
        // Fall back: 02:30 happens twice on 10-25; the schedule runs once that day.
        let mut p = Plan {
            entries: vec![entry("30 2 * * *", "Europe/Berlin")],
        };
        let from = utc("2026-10-23T12:00:00Z");
        p.start(from, |_| Some(from));
        let f = fires(&mut p, from, utc("2026-10-27T12:00:00Z"));
        let days: Vec<String> = f
            .iter()
            .map(|t| t.with_timezone(&tz).format("%m-%d").to_string())
            .collect();
        assert_eq!(days, vec!["10-24", "10-25", "10-26", "10-27"], "{f:?}");
        assert_eq!(f[1], utc("2026-10-25T00:30:00Z"), "the first 02:30 (CEST)");
        // Hourly in New York across the fall-back hour: every UTC hour has its run.
        let mut p = Plan {
            entries: vec![entry("0 * * * *", "America/New_York")],
        };
        let from = utc("2026-11-01T03:30:00Z");
        p.start(from, |_| Some(from));
        let f = fires(&mut p, from, utc("2026-11-01T08:30:00Z"));
        assert!(f.len() >= 4 && f.len() <= 5, "{f:?}");
        let _ = Utc.timestamp_opt(0, 0);
    }
}
