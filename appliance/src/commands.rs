//! The operator commands: each one API call (to the daemon, or to the store in this
//! process when no daemon holds it), printed for people or, with `--json`, as the API's
//! JSON for scripts.

use crate::{Cmd, SnapCmd, VolumeCmd};
use anyhow::{bail, Context, Result};
use kura::api::{GcView, JobReply, JobView, SnapshotView, VerifyView, VolumeView};
use kura::client::{seg, Target};
use kura::status::{human_bytes, human_secs, Status};
use serde_json::{json, Value};

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).context("reading the API's reply")
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub(crate) fn snapshot_line(s: &SnapshotView) -> String {
    let mut flags = Vec::new();
    if s.held {
        flags.push("held".to_owned());
    }
    if s.lock_until > 0 {
        flags.push(format!(
            "locked until {}",
            kura::api::iso(s.lock_until * 1000)
        ));
    }
    if s.busy {
        flags.push("busy".to_owned());
    }
    format!(
        "{}@{}\t{}\t{}\t{}{}",
        s.volume,
        s.name,
        s.created_iso,
        human_bytes(s.logical_bytes),
        flags.join(", "),
        s.label
            .as_ref()
            .map(|l| format!("\t{l}"))
            .unwrap_or_default()
    )
}

fn job_line(j: &JobView) -> String {
    let secs = (j.ended_ms - j.started_ms) as f64 / 1000.0;
    let mut s = format!(
        "#{}\t{}\t{}\t{}\t{}\t{secs:.1} s",
        j.id,
        j.started_iso,
        j.kind,
        j.volume.as_deref().unwrap_or("*"),
        j.result
    );
    if let Some(n) = &j.snapshot {
        s.push_str(&format!("\tsnapshot {n}"));
    }
    if let (Some(f), Some(w)) = (j.freeze_ms, j.window_ms) {
        s.push_str(&format!("\tfrozen {f} ms (window {w} ms)"));
    }
    if let Some(e) = &j.error {
        s.push_str(&format!("\t{e}"));
    }
    s
}

/// Runs one command; returns the process exit code.
pub fn run(t: &Target, cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Volume {
            cmd: VolumeCmd::Create { name, owner },
        } => {
            let (u, g) = owner.split_once(':').context("--owner is UID:GID")?;
            let (u, g): (u32, u32) = (
                u.parse().context("--owner is UID:GID")?,
                g.parse().context("--owner is UID:GID")?,
            );
            t.call(
                "POST",
                "/volumes",
                Some(json!({ "name": name, "owner_uid": u, "owner_gid": g })),
            )?
            .into_result()?;
            println!("created volume {name}");
        }
        Cmd::Volume {
            cmd: VolumeCmd::List { json },
        } => {
            let v = t.call("GET", "/volumes", None)?.into_result()?;
            if json {
                print_json(&v)?;
            } else {
                for vol in parse::<Vec<VolumeView>>(v)? {
                    // The name alone first: scripts read the first column.
                    println!(
                        "{}\t{}\t{} snapshots{}",
                        vol.name,
                        human_bytes(vol.logical_bytes),
                        vol.snapshots,
                        if vol.frozen { "\tFROZEN" } else { "" }
                    );
                }
            }
        }
        Cmd::Snapshot {
            cmd:
                SnapCmd::Create {
                    volume,
                    name,
                    name_flag,
                    label,
                    json,
                },
        } => {
            let r = t.call(
                "POST",
                &format!("/volumes/{}/snapshots", seg(&volume)),
                Some(json!({ "name": name.or(name_flag), "label": label })),
            )?;
            // A job that ran and failed still has a record worth printing.
            if r.status == 422 {
                let reply: JobReply<SnapshotView> = parse(r.body.clone())?;
                if json {
                    print_json(&r.body)?;
                }
                if !reply.job.output.is_empty() {
                    eprint!("{}", reply.job.output);
                }
                bail!(
                    "snapshot job {}: {}",
                    reply.job.result,
                    reply.job.error.unwrap_or_default()
                );
            }
            let body = r.into_result()?;
            if json {
                print_json(&body)?;
            } else {
                let reply: JobReply<SnapshotView> = parse(body)?;
                let s = reply.result.context("the job returned no snapshot")?;
                println!(
                    "snapshot {}@{} ({}, frozen {} ms, window {} ms)",
                    s.volume,
                    s.name,
                    human_bytes(s.logical_bytes),
                    reply.job.freeze_ms.unwrap_or(0),
                    reply.job.window_ms.unwrap_or(0)
                );
            }
        }
        Cmd::Snapshot {
            cmd: SnapCmd::List { volume, json, .. },
        } => {
            let path = match &volume {
                Some(v) => format!("/volumes/{}/snapshots", seg(v)),
                None => "/snapshots".into(),
            };
            let v = t.call("GET", &path, None)?.into_result()?;
            if json {
                print_json(&v)?;
            } else {
                for s in parse::<Vec<SnapshotView>>(v)? {
                    println!("{}", snapshot_line(&s));
                }
            }
        }
        Cmd::Snapshot {
            cmd: SnapCmd::Show { volume, name, json },
        } => {
            let v = t
                .call(
                    "GET",
                    &format!("/volumes/{}/snapshots/{}", seg(&volume), seg(&name)),
                    None,
                )?
                .into_result()?;
            if json {
                print_json(&v)?;
            } else {
                println!("{}", snapshot_line(&parse(v)?));
            }
        }
        Cmd::Snapshot {
            cmd: SnapCmd::Delete { volume, name },
        } => {
            t.call(
                "DELETE",
                &format!("/volumes/{}/snapshots/{}", seg(&volume), seg(&name)),
                None,
            )?
            .into_result()?;
            println!("deleted {volume}@{name}");
        }
        Cmd::Snapshot {
            cmd: SnapCmd::Diff { volume, a, b, json },
        } => {
            let v = t
                .call(
                    "GET",
                    &format!(
                        "/volumes/{}/diff?from={}&to={}",
                        seg(&volume),
                        seg(&a),
                        seg(&b)
                    ),
                    None,
                )?
                .into_result()?;
            if json {
                print_json(&v)?;
            } else {
                for c in parse::<Vec<kura::diff::Change>>(v)? {
                    let sizes = match (c.size_before, c.size_after) {
                        (Some(x), Some(y)) => format!("{} -> {}", human_bytes(x), human_bytes(y)),
                        (Some(x), None) | (None, Some(x)) => human_bytes(x),
                        (None, None) => String::new(),
                    };
                    let mark = match c.change.as_str() {
                        "added" => "+",
                        "removed" => "-",
                        _ => "M",
                    };
                    println!("{mark} {}\t{}\t{sizes}", c.path, c.kind);
                }
            }
        }
        Cmd::Snapshot {
            cmd: SnapCmd::Hold { volume, name },
        } => {
            t.call(
                "POST",
                &format!("/volumes/{}/snapshots/{}/hold", seg(&volume), seg(&name)),
                None,
            )?
            .into_result()?;
            println!("held {volume}@{name}");
        }
        Cmd::Snapshot {
            cmd: SnapCmd::Release { volume, name },
        } => {
            t.call(
                "POST",
                &format!("/volumes/{}/snapshots/{}/release", seg(&volume), seg(&name)),
                None,
            )?
            .into_result()?;
            println!("released {volume}@{name}");
        }
        Cmd::Clone {
            volume,
            snapshot,
            new_volume,
            ..
        } => {
            t.call(
                "POST",
                &format!(
                    "/volumes/{}/snapshots/{}/clone",
                    seg(&volume),
                    seg(&snapshot)
                ),
                Some(json!({ "new_volume": new_volume })),
            )?
            .into_result()?;
            println!("cloned {volume}@{snapshot} to volume {new_volume}");
        }
        Cmd::Import {
            dir,
            target,
            replace,
            snapshot,
            label,
        } => return import(t, &dir, &target, replace, snapshot, label),
        Cmd::Restore(args) => return restore(t, args),
        Cmd::RestoreTest { volume, sample } => {
            return job_command(
                t,
                &format!("/volumes/{}/restore-test", seg(&volume)),
                sample.map(|p| json!({ "sample_percent": p })),
            );
        }
        Cmd::PlatformSnapshot => return job_command(t, "/platform-snapshot", None),
        Cmd::Replicate {
            volume,
            to,
            full,
            json,
        } => {
            let r = t.call(
                "POST",
                &format!(
                    "/volumes/{}/replicate?to={}&full={full}",
                    seg(&volume),
                    seg(&to)
                ),
                None,
            )?;
            let ok = r.ok();
            let v = if ok || r.body.get("job").is_some() {
                r.body
            } else {
                r.into_result()?
            };
            if json {
                print_json(&v)?;
            } else if let Some(rep) = v.get("report").filter(|r| !r.is_null()) {
                println!(
                    "replicated {volume} to {to}: {} snapshots sent ({} already there), {} objects, {} bytes ({} raw) in {:.1} s; newest {}",
                    rep["snapshots_sent"].as_array().map_or(0, |a| a.len()),
                    rep["snapshots_present"],
                    rep["objects_sent"],
                    rep["bytes_sent"],
                    rep["raw_bytes"],
                    rep["seconds"].as_f64().unwrap_or(0.0),
                    rep["newest"].as_str().unwrap_or("-"),
                );
            }
            if !ok {
                bail!(
                    "replication of {volume} to {to} failed: {}",
                    v["job"]["error"].as_str().unwrap_or("see `kura jobs`")
                );
            }
        }
        Cmd::Ingest => {
            let v = t.call("POST", "/ingest", None)?.into_result()?;
            println!(
                "ingested {} files, {} bytes, {} new bytes stored as {}",
                v["files"], v["bytes"], v["new_bytes"], v["stored_bytes"]
            );
        }
        Cmd::Prune {
            volume,
            dry_run,
            json,
        } => {
            let v = t
                .call(
                    "POST",
                    "/prune",
                    Some(json!({ "volume": volume, "dry_run": dry_run })),
                )?
                .into_result()?;
            if json {
                print_json(&v)?;
            }
            let results: Vec<kura::jobs::PruneResult> = parse(v)?;
            let mut failed = false;
            for r in &results {
                if !json {
                    for d in &r.decisions {
                        println!(
                            "{}{}@{}	{}	{}",
                            if dry_run { "[dry run] " } else { "" },
                            r.volume,
                            d.name,
                            kura::api::iso(d.created * 1000),
                            if d.keep {
                                format!("keep ({})", d.reasons.join(", "))
                            } else if dry_run {
                                "would prune".into()
                            } else if r.deleted.contains(&d.name) {
                                "pruned".into()
                            } else {
                                "NOT pruned".into()
                            }
                        );
                    }
                }
                for e in &r.errors {
                    eprintln!("kura: {}: {e}", r.volume);
                    failed = true;
                }
            }
            if failed {
                return Ok(1);
            }
        }
        Cmd::Gc { dry_run, json } => {
            let v = t
                .call("POST", "/gc", Some(json!({ "dry_run": dry_run })))?
                .into_result()?;
            if json {
                print_json(&v)?;
            } else {
                let r: JobReply<GcView> = parse(v)?;
                let g = r.result.context("gc returned nothing")?;
                println!(
                    "{}unreachable chunks {} ({}), packs to repack {}, to regroup {} ({} in mixed bundles), orphan packs {}, deleted {} chunks, {} {}",
                    if dry_run { "[dry run] " } else { "" },
                    g.unreachable_chunks,
                    human_bytes(g.unreachable_bytes),
                    g.packs_to_repack,
                    g.packs_to_regroup,
                    human_bytes(g.mixed_bytes),
                    g.orphan_packs,
                    g.deleted_chunks,
                    if dry_run { "would reclaim" } else { "reclaimed" },
                    human_bytes(g.reclaim_bytes)
                );
            }
        }
        Cmd::Verify { json, .. } => {
            let v = t.call("POST", "/verify", None)?.into_result()?;
            let r: JobReply<VerifyView> = parse(v.clone())?;
            let f = r.result.context("verify returned nothing")?;
            if json {
                print_json(&v)?;
            } else {
                println!("checked {} chunks in {} packs", f.chunks, f.packs);
                for d in &f.damaged {
                    println!("DAMAGED {d}");
                }
                for p in &f.staged_problems {
                    println!("STAGED {p}");
                }
                for a in &f.affected_files {
                    println!("affected file {a}");
                }
                for a in &f.affected_snapshots {
                    println!("affected snapshot file {a}");
                }
            }
            if !f.clean {
                bail!("{}", r.job.error.unwrap_or_else(|| "damage found".into()));
            }
        }
        Cmd::Jobs {
            volume,
            limit,
            json,
        } => {
            let mut path = format!("/jobs?limit={limit}");
            if let Some(v) = &volume {
                path.push_str(&format!("&volume={}", seg(v)));
            }
            let v = t.call("GET", &path, None)?.into_result()?;
            if json {
                print_json(&v)?;
            } else {
                for j in parse::<Vec<JobView>>(v)? {
                    println!("{}", job_line(&j));
                }
            }
        }
        Cmd::Status { json } => {
            let v = t.call("GET", "/status", None)?.into_result()?;
            let s: Status = parse(v.clone())?;
            if json {
                print_json(&v)?;
            } else {
                print_status(&s, t.is_daemon());
            }
            return Ok(if s.problems.is_empty() { 0 } else { 1 });
        }
        Cmd::Stats => {
            let s: Status = parse(t.call("GET", "/status", None)?.into_result()?)?;
            let st = &s.store;
            println!(
                "chunks {}\nplain bytes {}\nstored bytes {}\npack bytes {}\nlive logical bytes {}\nstaged files {}\nfilesystem bytes {}\nfilesystem free bytes {}",
                st.chunks,
                st.unique_bytes,
                st.stored_bytes,
                st.pack_bytes,
                st.live_logical_bytes,
                st.staged_files,
                st.fs_total_bytes,
                st.fs_free_bytes
            );
        }
        Cmd::Serve { .. } | Cmd::Config { .. } => unreachable!("handled in main"),
    }
    Ok(0)
}

fn print_status(s: &Status, daemon: bool) {
    let st = &s.store;
    println!(
        "kura {} at {}  ({}, {})",
        s.version,
        s.now,
        st.data_dir,
        if daemon {
            format!("daemon up {}", human_secs(s.uptime_secs as i64))
        } else {
            "no daemon running".into()
        }
    );
    println!(
        "store: {} stored ({} unique), reduction {:.2}x, {} of {} free, {} files staged",
        human_bytes(st.stored_bytes),
        human_bytes(st.unique_bytes),
        st.reduction_ratio,
        human_bytes(st.fs_free_bytes),
        human_bytes(st.fs_total_bytes),
        st.staged_files
    );
    println!();
    println!(
        "{:<16} {:>11} {:>6} {:<22} {:>9} {:>6}  last snapshot job",
        "VOLUME", "SIZE", "SNAPS", "NEWEST", "AGE", "RPO"
    );
    for v in &s.volumes {
        let last = v.last_jobs.get("snapshot").map_or("-".to_owned(), |j| {
            let mut x = format!("{} {}", j.result, j.started_iso);
            if let Some(w) = j.window_ms {
                x.push_str(&format!(", window {w} ms"));
            }
            x
        });
        println!(
            "{:<16} {:>11} {:>6} {:<22} {:>9} {:>6}  {}{}",
            v.name,
            human_bytes(v.logical_bytes),
            v.snapshots,
            v.newest_snapshot_at.as_deref().unwrap_or("-"),
            v.newest_snapshot_age_secs.map_or("-".into(), human_secs),
            match v.rpo_secs {
                None => "-".to_owned(),
                Some(r) if v.rpo_ok => human_secs(r as i64),
                Some(r) => format!("{}!", human_secs(r as i64)),
            },
            last,
            if v.frozen { "  FROZEN" } else { "" }
        );
    }
    println!();
    println!(
        "{:<16} {:>11} {:>11} {:>9} {:>11} {:>7}",
        "VOLUME", "STORED", "OWN", "REDUCTION", "STAGED", "FILES"
    );
    for v in &s.volumes {
        println!(
            "{:<16} {:>11} {:>11} {:>9} {:>11} {:>7}",
            v.name,
            v.stored_bytes.map_or("-".into(), human_bytes),
            v.exclusive_stored_bytes.map_or("-".into(), human_bytes),
            v.reduction_ratio.map_or("-".into(), |r| format!("{r:.1}x")),
            human_bytes(v.staged_bytes),
            v.staged_files
        );
    }
    if s.volumes.iter().any(|v| !v.dr.is_empty()) {
        println!();
        println!(
            "{:<16} {:<16} {:<22} {:>9}  last replication",
            "VOLUME", "DR TARGET", "NEWEST THERE", "DR AGE"
        );
        for v in &s.volumes {
            for d in &v.dr {
                println!(
                    "{:<16} {:<16} {:<22} {:>9}  {} {} ({}){}",
                    v.name,
                    d.target,
                    d.newest_snapshot.as_deref().unwrap_or("-"),
                    d.newest_snapshot_age_secs.map_or("-".into(), human_secs),
                    d.last_result,
                    d.last_ended,
                    human_bytes(d.last_bytes_sent),
                    d.last_error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    if let Some(at) = s.volumes.iter().find_map(|v| v.usage_at.as_deref()) {
        println!("(stored bytes as of {at}; measured again after each GC)");
    }
    for v in &s.volumes {
        if let (Some(r), Some(rto)) = (v.restore_mb_s, v.estimated_rto_secs) {
            println!(
                "{}: restore test {r:.0} MB/s, newest snapshot restores in about {}",
                v.name,
                human_secs(rto as i64)
            );
        }
    }
    for (v, k) in &s.running {
        println!("running: {k} on {v}");
    }
    if s.problems.is_empty() {
        println!("\nno problems");
    } else {
        println!();
        for p in &s.problems {
            println!("PROBLEM: {p}");
        }
    }
}

/// The newest snapshot of `volume` at or before `at` (ISO 8601; local time unless it
/// carries a zone).
fn snapshot_at(t: &Target, volume: &str, at: &str) -> Result<String> {
    let when = parse_time(at)?;
    let v = t
        .call("GET", &format!("/volumes/{}/snapshots", seg(volume)), None)?
        .into_result()?;
    parse::<Vec<SnapshotView>>(v)?
        .into_iter()
        .filter(|s| s.created <= when)
        .max_by_key(|s| s.created)
        .map(|s| s.name)
        .with_context(|| format!("volume {volume} has no snapshot at or before {at}"))
}

/// Unix seconds of `2026-11-30T10:00[:SS][Z|+01:00]` (local time without a zone).
fn parse_time(s: &str) -> Result<i64> {
    use chrono::TimeZone;
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp());
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d",
    ] {
        let parsed = chrono::NaiveDateTime::parse_from_str(s, f).or_else(|_| {
            chrono::NaiveDate::parse_from_str(s, f).map(|d| d.and_hms_opt(23, 59, 59).unwrap())
        });
        if let Ok(n) = parsed {
            let local = chrono::Local
                .from_local_datetime(&n)
                .earliest()
                .with_context(|| format!("{s} does not exist in the local time zone"))?;
            return Ok(local.timestamp());
        }
    }
    bail!("--at {s:?}: use 2026-11-30T10:00 (local), 2026-11-30T10:00:00Z or an offset")
}

fn restore(t: &Target, args: crate::RestoreArgs) -> Result<i32> {
    let crate::RestoreArgs {
        volume,
        snapshot,
        path,
        at,
        to,
        tar: tar_out,
        stream: stream_only,
        ..
    } = args;
    let volume = volume.as_str();
    let snap = match (snapshot, at) {
        (Some(s), _) => s,
        (None, Some(at)) => snapshot_at(t, volume, &at)?,
        (None, None) => bail!("name a snapshot or give --at TIME"),
    };
    let path = path.unwrap_or_default();
    if let (Target::Local { app, .. }, Some(dir), None) = (t, &to, &tar_out) {
        // The store is ours: files are written straight from the readers, no tar between.
        let t0 = std::time::Instant::now();
        let src = kura::restore::source(&app.store, volume, &snap, &path)?;
        let bar = progress_bar(src.total);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let ex = kura::restore::restore_to_dir(
            &app.store,
            &src,
            dir,
            &|n| {
                if let Some(b) = &bar {
                    b.inc(n);
                }
            },
            &stop,
        )?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        return finish_restore(volume, &snap, &ex.report, t0, &ex.refused);
    }
    if let (Target::Daemon { .. }, Some(dir), None, false) = (t, &to, &tar_out, stream_only) {
        // The daemon writes the files itself when this user can show its token.
        let t0 = std::time::Instant::now();
        let dir = std::path::absolute(dir).with_context(|| format!("--to {}", dir.display()))?;
        let bar = std::cell::RefCell::new(None::<indicatif::ProgressBar>);
        let done = t.restore_by_daemon(volume, &snap, &path, &dir, &|total, n| {
            let mut b = bar.borrow_mut();
            if b.is_none() {
                *b = Some(progress_bar(total).unwrap_or_else(indicatif::ProgressBar::hidden));
            }
            if let Some(b) = b.as_ref() {
                b.set_position(n);
            }
        })?;
        if let Some(b) = bar.into_inner() {
            b.finish_and_clear();
        }
        if let Some((report, refused)) = done {
            return finish_restore(volume, &snap, &report, t0, &refused);
        }
    }
    let (stream, total) = t.restore_stream(volume, &snap, &path)?;
    let t0 = std::time::Instant::now();
    if let Some(out) = tar_out {
        if out != "-" {
            bail!("--tar takes '-' (stdout); use --to DIR for a directory");
        }
        let report = kura::restore::pass_through(stream, std::io::stdout().lock())?;
        return finish_restore(volume, &snap, &report, t0, &[]);
    }
    let dir = to.context("--to DIR")?;
    let bar = progress_bar(total);
    let ex = kura::restore::extract(stream, &dir, |n| {
        if let Some(b) = &bar {
            b.inc(n);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    finish_restore(volume, &snap, &ex.report, t0, &ex.refused)
}

/// A progress bar (bytes, rate, ETA) on a terminal; none otherwise.
fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(total);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(b)
}

/// `kura import`: the tree is walked and streamed here, unpacked by the daemon (or by
/// this process on a store no daemon holds).
fn import(
    t: &Target,
    dir: &std::path::Path,
    target: &str,
    replace: bool,
    snapshot: Option<String>,
    label: Option<String>,
) -> Result<i32> {
    let (volume, path) = kura::import::split_target(target);
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let (_, total) = kura::import::measure(dir)?;
    let bar = progress_bar(total);
    let t0 = std::time::Instant::now();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
    let (src, b) = (dir.to_path_buf(), bar.clone());
    let sender = std::thread::spawn(move || {
        let out = std::io::BufWriter::with_capacity(1 << 20, kura::restore::ChanWriter(tx));
        kura::import::write_tree(&src, out, |n| {
            if let Some(b) = &b {
                b.inc(n);
            }
        })
    });
    let mut q = format!("/volumes/{}/import?path={}", seg(&volume), seg(&path));
    if replace {
        q.push_str("&replace=true");
    }
    let reply = t.upload(&q, kura::restore::ChanReader::new(rx));
    let unread = match sender.join() {
        Ok(Ok(skipped)) => skipped,
        Ok(Err(e)) => vec![format!("walking {}: {e:#}", dir.display())],
        Err(_) => vec!["the walk panicked".into()],
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let reply = reply?;
    let r: JobReply<kura::import::ImportReport> = match reply.status {
        200 | 422 => parse(reply.body)?,
        _ => {
            reply.into_result()?;
            bail!("unexpected reply to the import");
        }
    };
    let secs = t0.elapsed().as_secs_f64().max(1e-3);
    if let Some(rep) = &r.result {
        eprintln!(
            "imported {} into {volume}:/{path}: {}",
            dir.display(),
            tree_counts(
                [rep.files, rep.dirs, rep.symlinks, rep.hardlinks],
                rep.bytes,
                secs
            )
        );
        for s in &rep.skipped {
            eprintln!("SKIPPED {s}");
        }
    }
    for s in &unread {
        eprintln!("UNREAD {s}");
    }
    if let Some(e) = &r.job.error {
        eprintln!("kura: import failed: {e}");
    }
    if r.job.result != "ok" || !unread.is_empty() {
        if snapshot.is_some() {
            eprintln!("kura: no snapshot taken: the import was not complete");
        }
        return Ok(1);
    }
    if let Some(name) = snapshot {
        let v = t
            .call(
                "POST",
                &format!("/volumes/{}/snapshots", seg(&volume)),
                Some(json!({ "name": name, "label": label })),
            )?
            .into_result()?;
        let j: JobReply<SnapshotView> = parse(v)?;
        println!("{}", job_line(&j.job));
        if j.job.result != "ok" {
            return Ok(1);
        }
    }
    Ok(0)
}

/// `3 files, 2 directories, 1 symlinks, 1 hard links, 2.9 MiB in 0.1 s (29 MiB/s)`.
fn tree_counts([files, dirs, symlinks, hardlinks]: [u64; 4], bytes: u64, secs: f64) -> String {
    format!(
        "{files} files, {dirs} directories, {symlinks} symlinks, {hardlinks} hard links, {} in {secs:.1} s ({}/s)",
        human_bytes(bytes),
        human_bytes((bytes as f64 / secs) as u64)
    )
}

pub(crate) fn finish_restore(
    volume: &str,
    snap: &str,
    r: &kura::restore::Report,
    t0: std::time::Instant,
    refused: &[String],
) -> Result<i32> {
    let secs = t0.elapsed().as_secs_f64().max(1e-3);
    eprintln!(
        "restored {volume}@{snap}: {}",
        tree_counts([r.files, r.dirs, r.symlinks, r.hardlinks], r.bytes, secs)
    );
    for d in &r.damaged {
        eprintln!("DAMAGED {d}");
    }
    for p in refused {
        eprintln!("REFUSED {p}: outside the target directory");
    }
    Ok(if r.damaged.is_empty() && refused.is_empty() {
        0
    } else {
        1
    })
}

/// A command that runs one job and prints its record; exit 1 when the job failed.
fn job_command(t: &Target, path: &str, body: Option<serde_json::Value>) -> Result<i32> {
    let r = t.call("POST", path, body)?;
    let ok = r.status == 200;
    let j: JobView = match r.status {
        200 | 422 => parse(r.body)?,
        _ => {
            r.into_result()?;
            bail!("unexpected reply from {path}");
        }
    };
    println!("{}", job_line(&j));
    if !j.output.is_empty() {
        println!("{}", j.output.trim_end());
    }
    Ok(if ok { 0 } else { 1 })
}
