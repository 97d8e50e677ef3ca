//! Retention: which snapshots of a volume a policy keeps, as a pure function of the
//! snapshots, the policy and the time (tested as tables below), and the prune job
//! that deletes the rest.
//!
//! The rules, each keeping a snapshot for a reason (a snapshot kept by any rule stays):
//! - `keep_last = N`: the newest N;
//! - `keep_hourly/daily/weekly/monthly/yearly = N`: walking from the newest, the newest
//!   snapshot of each of the last N hours (days, ISO weeks, months, years) that have one,
//!   in the volume's time zone (GFS rotation);
//! - `keep_within = "35d"`: every snapshot younger than that;
//! - held snapshots are always kept, and so are locked ones until their lock date.
//!
//! A policy with no rule at all keeps everything: pruning never starts by accident.

use chrono::{Datelike, TimeZone, Timelike};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A volume's retention policy (`[volume.NAME]` keys).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Policy {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<Duration>,
}

impl Policy {
    /// Does the policy say anything? (If not, nothing is pruned.)
    pub fn is_set(&self) -> bool {
        *self != Policy::default()
    }

    /// The policy in words: "keep 8 daily, 4 weekly; all younger than 35d".
    pub fn describe(&self) -> String {
        if !self.is_set() {
            return "keep every snapshot (no retention policy)".into();
        }
        let mut counts: Vec<String> = self
            .keep_last
            .map(|n| format!("the last {n}"))
            .into_iter()
            .collect();
        counts.extend(
            [
                (self.keep_hourly, "hourly"),
                (self.keep_daily, "daily"),
                (self.keep_weekly, "weekly"),
                (self.keep_monthly, "monthly"),
                (self.keep_yearly, "yearly"),
            ]
            .iter()
            .filter_map(|(n, what)| n.map(|n| format!("{n} {what}"))),
        );
        let mut out = String::from("keep ");
        out.push_str(&counts.join(", "));
        if let Some(w) = self.keep_within {
            if !counts.is_empty() {
                out.push_str("; ");
            }
            out.push_str(&format!(
                "all younger than {}",
                crate::status::human_secs(w.as_secs() as i64)
            ));
        }
        out.push_str("; held and locked snapshots always stay");
        out
    }
}

/// What the plan needs of a snapshot.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub name: String,
    /// Unix seconds.
    pub created: i64,
    pub held: bool,
    pub lock_until: i64,
}

/// The decision for one snapshot, with every reason it is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub name: String,
    pub created: i64,
    pub keep: bool,
    pub reasons: Vec<String>,
}

/// Which snapshots `policy` keeps at `now` (unix seconds), newest first, bucketed in
/// time zone `tz`.
pub fn plan(snaps: &[Candidate], policy: &Policy, now: i64, tz: chrono_tz::Tz) -> Vec<Decision> {
    let mut order: Vec<&Candidate> = snaps.iter().collect();
    // Newest first; equal times by name, so that the plan does not depend on input order.
    order.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.name.cmp(&a.name)));
    let mut out: Vec<Decision> = order
        .iter()
        .map(|s| Decision {
            name: s.name.clone(),
            created: s.created,
            keep: false,
            reasons: Vec::new(),
        })
        .collect();
    if !policy.is_set() {
        for d in &mut out {
            d.keep = true;
            d.reasons.push("no retention policy".into());
        }
        return out;
    }
    let mut give = |i: usize, why: String| {
        out[i].keep = true;
        out[i].reasons.push(why);
    };
    if let Some(n) = policy.keep_last {
        for i in 0..order.len().min(n as usize) {
            give(i, "last".into());
        }
    }
    type Bucket = fn(&chrono::DateTime<chrono_tz::Tz>) -> (i32, u32, u32, u32);
    let rules: [(&str, Option<u32>, Bucket); 5] = [
        ("hourly", policy.keep_hourly, |t| {
            (t.year(), t.ordinal(), t.hour(), 0)
        }),
        ("daily", policy.keep_daily, |t| {
            (t.year(), t.ordinal(), 0, 0)
        }),
        ("weekly", policy.keep_weekly, |t| {
            let w = t.iso_week();
            (w.year(), w.week(), 0, 0)
        }),
        ("monthly", policy.keep_monthly, |t| {
            (t.year(), t.month(), 0, 0)
        }),
        ("yearly", policy.keep_yearly, |t| (t.year(), 0, 0, 0)),
    ];
    for (label, n, bucket) in rules {
        let Some(n) = n else { continue };
        let mut last = None;
        let mut kept = 0;
        for (i, s) in order.iter().enumerate() {
            if kept >= n {
                break;
            }
            let t = tz
                .timestamp_opt(s.created, 0)
                .single()
                .unwrap_or_else(|| tz.timestamp_opt(0, 0).unwrap());
            let b = bucket(&t);
            if last != Some(b) {
                last = Some(b);
                kept += 1;
                give(i, label.into());
            }
        }
    }
    if let Some(w) = policy.keep_within {
        for (i, s) in order.iter().enumerate() {
            if now - s.created <= w.as_secs() as i64 {
                give(
                    i,
                    format!("within {}", crate::status::human_secs(w.as_secs() as i64)),
                );
            }
        }
    }
    for (i, s) in order.iter().enumerate() {
        if s.held {
            give(i, "held".into());
        }
        if s.lock_until > now {
            give(i, "locked".into());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Tz;

    const H: i64 = 3600;
    const D: i64 = 86_400;
    /// 2026-11-30T12:00:00Z
    const NOW: i64 = 1_796_040_000;

    fn snaps(ages: &[i64]) -> Vec<Candidate> {
        ages.iter()
            .enumerate()
            .map(|(i, a)| Candidate {
                name: format!("s{i}"),
                created: NOW - a,
                held: false,
                lock_until: 0,
            })
            .collect()
    }

    fn kept(d: &[Decision]) -> Vec<&str> {
        let mut v: Vec<&str> = d
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.name.as_str())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn table() {
        // (ages, policy, kept names)
        let hourly_ages: Vec<i64> = (0..48).map(|h| h * H + 60).collect();
        let cases: Vec<(Vec<i64>, Policy, Vec<&str>)> = vec![
            // No rule: everything stays.
            (vec![0, D, 2 * D], Policy::default(), vec!["s0", "s1", "s2"]),
            // keep_last: the newest N whatever their age.
            (
                vec![5 * D, H, 3 * D, 0],
                Policy {
                    keep_last: Some(2),
                    ..Default::default()
                },
                vec!["s1", "s3"],
            ),
            // keep_daily: the newest of each of the last N days that have one.
            (
                vec![H, 2 * H, D + H, D + 2 * H, 3 * D],
                Policy {
                    keep_daily: Some(2),
                    ..Default::default()
                },
                vec!["s0", "s2"],
            ),
            // A day without snapshots does not use up a slot.
            (
                vec![H, 3 * D, 5 * D],
                Policy {
                    keep_daily: Some(3),
                    ..Default::default()
                },
                vec!["s0", "s1", "s2"],
            ),
            // keep_hourly over two days of hourly snapshots keeps the newest 24.
            (
                hourly_ages,
                Policy {
                    keep_hourly: Some(24),
                    ..Default::default()
                },
                (0..24)
                    .map(|i| &*Box::leak(format!("s{i}").into_boxed_str()))
                    .collect(),
            ),
            // keep_within: everything younger than the window.
            (
                vec![D, 34 * D, 36 * D],
                Policy {
                    keep_within: Some(Duration::from_secs(35 * D as u64)),
                    ..Default::default()
                },
                vec!["s0", "s1"],
            ),
            // Rules add up: last 1 + monthly 2.
            (
                vec![0, 10 * D, 40 * D, 41 * D, 80 * D],
                Policy {
                    keep_last: Some(1),
                    keep_monthly: Some(2),
                    ..Default::default()
                },
                vec!["s0", "s2"],
            ),
            // yearly keeps the newest of each year.
            (
                vec![0, 400 * D, 410 * D, 800 * D],
                Policy {
                    keep_yearly: Some(5),
                    ..Default::default()
                },
                vec!["s0", "s1", "s3"],
            ),
        ];
        for (i, (ages, policy, mut want)) in cases.into_iter().enumerate() {
            want.sort();
            let d = plan(&snaps(&ages), &policy, NOW, Tz::UTC);
            assert_eq!(kept(&d), want, "case {i}: {d:?}");
        }
    }

    #[test]
    fn held_and_locked_are_never_pruned() {
        let mut s = snaps(&[0, D, 2 * D, 3 * D]);
        s[2].held = true;
        s[3].lock_until = NOW + 1;
        let p = Policy {
            keep_last: Some(1),
            ..Default::default()
        };
        let d = plan(&s, &p, NOW, Tz::UTC);
        assert_eq!(kept(&d), vec!["s0", "s2", "s3"]);
        let s2 = d.iter().find(|x| x.name == "s2").unwrap();
        assert_eq!(s2.reasons, vec!["held"]);
        // A lock that has expired no longer keeps it.
        s[3].lock_until = NOW - 1;
        assert_eq!(kept(&plan(&s, &p, NOW, Tz::UTC)), vec!["s0", "s2"]);
    }

    #[test]
    fn days_are_the_volume_zone_days() {
        // 23:30 and 00:30 UTC are one day in New York (18:30 and 19:30 the day before).
        let t = 1_796_083_200; // 2026-12-01T00:00:00Z
        let s = vec![
            Candidate {
                name: "late".into(),
                created: t - 1800,
                held: false,
                lock_until: 0,
            },
            Candidate {
                name: "early".into(),
                created: t + 1800,
                held: false,
                lock_until: 0,
            },
        ];
        let p = Policy {
            keep_daily: Some(7),
            ..Default::default()
        };
        assert_eq!(kept(&plan(&s, &p, t + H, Tz::UTC)), vec!["early", "late"]);
        let ny: Tz = "America/New_York".parse().unwrap();
        assert_eq!(kept(&plan(&s, &p, t + H, ny)), vec!["early"]);
    }

    #[test]
    fn the_plan_does_not_depend_on_input_order() {
        let a = snaps(&[0, 5 * H, D, 9 * D, 40 * D]);
        let mut b = a.clone();
        b.reverse();
        let p = Policy {
            keep_daily: Some(3),
            keep_weekly: Some(2),
            ..Default::default()
        };
        assert_eq!(plan(&a, &p, NOW, Tz::UTC), plan(&b, &p, NOW, Tz::UTC));
    }
}
