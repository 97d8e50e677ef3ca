//! The console's pages: plain functions from the API's data to HTML (maud escapes
//! every value). No page holds more than a bounded number of rows: snapshots and
//! directory entries come a page at a time, charts are thinned.

use super::chart::{self, Series};
use super::{seg, Flash, ENTRIES_PER_PAGE, SNAPSHOTS_PER_PAGE};
use crate::api::{JobView, ListingView, SnapshotView, VolumeConfigView};
use crate::jobs::{PruneResult, RunningView};
use crate::status::{human_bytes, human_secs, Status, VolumeStatus};
use axum::http::StatusCode;
use maud::{html, Markup, DOCTYPE};

/// What every page needs besides its content.
pub struct Frame {
    pub logged_in: bool,
    pub csrf: String,
    pub flash: Option<Flash>,
}

/// Unix milliseconds as `2026-12-01 06:00:12Z`.
pub fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn duration_ms(ms: i64) -> String {
    if ms < 10_000 {
        format!("{ms} ms")
    } else {
        human_secs(ms / 1000)
    }
}

fn layout(f: &Frame, title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · kura" }
                link rel="stylesheet" href="/ui/static/kura.css";
                script src="/ui/static/kura.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="main" {
                        a.brand href="/ui/" { "kura" }
                        a href="/ui/" { "Dashboard" }
                        a href="/ui/jobs" { "Jobs" }
                        span.grow {}
                        @if f.logged_in {
                            form.inline method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(f.csrf);
                                button.link type="submit" { "Log out" }
                            }
                        } @else {
                            a href="/ui/login" { "Log in to act" }
                        }
                    }
                }
                main id="main" {
                    @if let Some(fl) = &f.flash {
                        p id="flash" class=(if fl.ok { "flash ok" } else { "flash bad" }) role="status" { (fl.text) }
                    }
                    (content)
                }
            }
        }
    }
}

/// A one-button action form carrying the CSRF token (and `fields`, hidden).
fn action(f: &Frame, to: &str, label: &str, class: &str, fields: &[(&str, &str)]) -> Markup {
    html! {
        form.inline method="post" action=(to) {
            input type="hidden" name="csrf" value=(f.csrf);
            @for (k, v) in fields {
                input type="hidden" name=(k) value=(v);
            }
            button type="submit" class=(class) { (label) }
        }
    }
}

pub fn error_page(status: StatusCode, error: &str) -> Markup {
    let f = Frame {
        logged_in: false,
        csrf: String::new(),
        flash: None,
    };
    layout(
        &f,
        status.canonical_reason().unwrap_or("Error"),
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p id="error" class="flash bad" { (error) }
            p { a href="/ui/" { "Back to the dashboard" } }
        },
    )
}

pub fn login(f: &Frame, error: Option<&str>) -> Markup {
    layout(
        f,
        "Log in",
        html! {
            h1 { "Log in" }
            @if let Some(e) = error { p id="error" class="flash bad" { (e) } }
            p { "Actions need the API token: the contents of " code { "<data_dir>/api-token" } " on the appliance." }
            form.stack method="post" action="/ui/login" {
                label for="token" { "API token" }
                input id="token" type="password" name="token" autocomplete="current-password" required autofocus;
                button.primary type="submit" { "Log in" }
            }
        },
    )
}

fn state_badges(v: &VolumeStatus, running: Option<&str>) -> Markup {
    html! {
        @if !v.rpo_ok { span.badge.bad { "RPO missed" } " " }
        @if v.last_jobs.get("snapshot").is_some_and(|j| j.result != "ok") { span.badge.bad { "last snapshot failed" } " " }
        @if v.dr.iter().any(|d| d.last_result == "failed") { span.badge.bad { "DR copy failed" } " " }
        @if v.frozen { span.badge.warn { "frozen" } " " }
        @if let Some(k) = running { span.badge.run { (k) " running" } " " }
        @if v.rpo_ok && v.rpo_secs.is_some() { span.badge.ok { "RPO met" } }
        @else if v.rpo_ok { span.badge { "no RPO set" } }
    }
}

fn failing(v: &VolumeStatus) -> bool {
    !v.rpo_ok
        || v.last_jobs
            .get("snapshot")
            .is_some_and(|j| j.result != "ok")
        || v.dr.iter().any(|d| d.last_result == "failed")
}

fn dr_cell(v: &VolumeStatus) -> Markup {
    html! {
        @if v.dr.is_empty() { span.muted { "none" } }
        @for d in &v.dr {
            div {
                (d.target) ": "
                @match d.last_result.as_str() {
                    "ok" => span.ok { "ok" },
                    "failed" => span.bad { "failed" },
                    other => span.muted { (other) },
                }
                @if let Some(a) = d.newest_snapshot_age_secs { " (copy " (human_secs(a)) " old)" }
            }
        }
    }
}

pub fn dashboard(f: &Frame, s: &Status) -> Markup {
    let mut vols: Vec<&VolumeStatus> = s.volumes.iter().collect();
    vols.sort_by_key(|v| (!failing(v), v.name.clone()));
    let st = &s.store;
    let used = st.fs_total_bytes.saturating_sub(st.fs_free_bytes);
    layout(
        f,
        "Dashboard",
        html! {
            h1 { "Dashboard" }
            @if s.problems.is_empty() {
                p #problems.flash.ok { "All is well: every RPO is met and no last job failed." }
            } @else {
                section #problems.flash.bad aria-labelledby="problems-h" {
                    h2 #problems-h { "Needs attention (" (s.problems.len()) ")" }
                    ul { @for p in &s.problems { li { (p) } } }
                }
            }
            section aria-labelledby="store-h" {
                h2 #store-h { "Store" }
                div.cards {
                    div.card {
                        div.label { "Disk" }
                        div.value { (human_bytes(st.fs_free_bytes)) " free" }
                        (chart::meter("disk used", used, st.fs_total_bytes))
                        div.small { (human_bytes(used)) " of " (human_bytes(st.fs_total_bytes)) " used" }
                    }
                    div.card {
                        div.label { "Stored" }
                        div.value { (human_bytes(st.stored_bytes)) }
                        div.small { (human_bytes(st.unique_bytes)) " unique, " (human_bytes(st.pack_bytes)) " in packs" }
                    }
                    div.card {
                        div.label { "Reduction" }
                        div.value { (format!("{:.1}x", st.reduction_ratio)) }
                        div.small { "logical of volumes and snapshots per stored byte" }
                    }
                    div.card {
                        div.label { "Jobs running" }
                        div.value { a href="/ui/jobs" { (s.running.len()) } }
                        div.small { (st.staged_files) " files staged; up " (human_secs(s.uptime_secs as i64)) }
                    }
                }
            }
            section aria-labelledby="vols-h" {
                h2 #vols-h { "Volumes (" (vols.len()) ")" }
                div.scroll {
                    table #volumes {
                        thead { tr {
                            th scope="col" { "Volume" } th scope="col" { "State" } th scope="col" { "Last snapshot" }
                            th scope="col" { "Age" } th.num scope="col" { "Logical" } th.num scope="col" { "Stored" }
                            th.num scope="col" { "Dedup" } th.num scope="col" { "Staged" } th scope="col" { "DR copy" }
                            @if f.logged_in { th scope="col" { span.sr { "Actions" } } }
                        } }
                        tbody {
                            @for v in &vols {
                                @let run = s.running.iter().find(|(on, _)| *on == v.name).map(|(_, k)| k.as_str());
                                tr class=(if failing(v) { "failing" } else { "" }) {
                                    th scope="row" { a href=(format!("/ui/volumes/{}", seg(&v.name))) { (v.name) } }
                                    td { (state_badges(v, run)) }
                                    td { @match &v.newest_snapshot {
                                        Some(n) => a href=(format!("/ui/volumes/{}/snapshots/{}", seg(&v.name), seg(n))) { (n) },
                                        None => span.muted { "none" },
                                    } }
                                    td { @if let Some(a) = v.newest_snapshot_age_secs { (human_secs(a)) } }
                                    td.num { (human_bytes(v.logical_bytes)) }
                                    td.num { @match v.stored_bytes { Some(b) => (human_bytes(b)), None => span.muted { "not measured" } } }
                                    td.num { @match v.reduction_ratio { Some(r) => (format!("{r:.1}x")), None => "" } }
                                    td.num { (human_bytes(v.staged_bytes)) }
                                    td { (dr_cell(v)) }
                                    @if f.logged_in {
                                        td { (action(f, &format!("/ui/volumes/{}/snapshot", seg(&v.name)), "Snapshot now", "", &[])) }
                                    }
                                }
                            }
                        }
                    }
                }
                @if vols.is_empty() { p.muted { "No volumes yet: create one with " code { "kura volume create NAME" } "." } }
            }
            p.small.muted { "kura " (s.version) " · " (s.now) " · stored bytes per volume as of the last measurement (after each GC)" }
        },
    )
}

pub struct VolumeData<'a> {
    pub name: &'a str,
    pub status: Option<&'a VolumeStatus>,
    pub config: &'a VolumeConfigView,
    /// Newest first.
    pub snapshots: &'a [SnapshotView],
    /// Newest first.
    pub jobs: &'a [JobView],
    pub usage: &'a [JobView],
    pub page: usize,
    pub running: bool,
}

fn snapshot_flags(s: &SnapshotView, now_s: i64) -> Markup {
    html! {
        @if s.held { span.badge.warn { "held" } " " }
        @if s.lock_until > now_s { span.badge.warn { "locked until " (when(s.lock_until * 1000)) } " " }
        @if s.busy { span.badge { "busy" } }
    }
}

pub fn volume(f: &Frame, d: VolumeData) -> Markup {
    let now_s = crate::jobs::now_ms() / 1000;
    let v = d.name;
    let pages = d.snapshots.len().div_ceil(SNAPSHOTS_PER_PAGE).max(1);
    let page = d.page.min(pages - 1);
    let shown = d
        .snapshots
        .iter()
        .skip(page * SNAPSHOTS_PER_PAGE)
        .take(SNAPSHOTS_PER_PAGE);
    // Charts: oldest first.
    let mut logical: Vec<(i64, f64)> = d
        .snapshots
        .iter()
        .map(|s| (s.created, s.logical_bytes as f64))
        .collect();
    logical.reverse();
    let mut stored: Vec<(i64, f64)> = d
        .usage
        .iter()
        .map(|u| (u.started_ms / 1000, u.bytes as f64))
        .collect();
    stored.reverse();
    let mut freeze: Vec<(i64, f64)> = d
        .jobs
        .iter()
        .filter(|j| j.kind == "snapshot")
        .filter_map(|j| j.window_ms.map(|w| (j.started_ms / 1000, w as f64)))
        .collect();
    freeze.reverse();
    let fmt = |b: f64| human_bytes(b as u64);
    let st = &d.config.settings;
    layout(
        f,
        &format!("Volume {v}"),
        html! {
            h1 { "Volume " (v) }
            @if let Some(s) = d.status {
                p { (state_badges(s, d.running.then_some("a job"))) }
                dl.facts {
                    dt { "Logical" } dd { (human_bytes(s.logical_bytes)) " live, " (human_bytes(s.snapshot_logical_bytes)) " in " (s.snapshots) " snapshots" }
                    dt { "Stored" } dd { @match s.stored_bytes {
                        Some(b) => { (human_bytes(b)) ", " (human_bytes(s.exclusive_stored_bytes.unwrap_or(0))) " of it its own" @if let Some(r) = s.reduction_ratio { " (" (format!("{r:.1}x")) " reduction)" } },
                        None => span.muted { "not measured yet (measured after each GC)" },
                    } }
                    dt { "Staged" } dd { (s.staged_files) " files, " (human_bytes(s.staged_bytes)) }
                    dt { "Recovery point" } dd {
                        @match s.newest_snapshot_age_secs { Some(a) => { "newest snapshot " (human_secs(a)) " old" }, None => "no snapshot yet" }
                        @if let Some(r) = s.rpo_secs { "; RPO " (human_secs(r as i64)) }
                    }
                    @if let Some(rto) = s.estimated_rto_secs { dt { "Expected restore" } dd { (human_secs(rto as i64)) " (from the last restore test)" } }
                    @if let (Some(fz), Some(w)) = (s.last_freeze_ms, s.last_window_ms) { dt { "Last freeze" } dd { (fz) " ms frozen, clients held " (w) " ms" } }
                    dt { "DR copies" } dd { (dr_cell(s)) }
                }
            }
            section aria-labelledby="plan-h" {
                h2 #plan-h { "Schedule and retention" }
                ul #plan {
                    @if d.config.schedules.is_empty() { li { "No schedule: snapshots only when asked for." } }
                    @for s in &d.config.schedules { li { "Snapshot " (s) } }
                    li { "Retention: " (d.config.retention) }
                    @if let Some(p) = &d.config.prune_schedule { li { "Prune also " (p) } }
                    @if let Some(p) = &d.config.restore_test_schedule { li { "Restore test " (p) " (" (st.restore_test_sample_percent) "% of the files)" } }
                    @if st.lock_days > 0 { li { "New snapshots are locked for " (st.lock_days) " days" } }
                    li { "Freeze limit " (st.freeze_limit_secs) " s" @if st.pre_freeze.is_some() || st.post_thaw.is_some() { "; hooks around the freeze" } }
                    @if !st.replicate_to.is_empty() { li { "Copied after each snapshot to " (st.replicate_to.join(", ")) } }
                }
            }
            @if f.logged_in {
                section aria-labelledby="act-h" {
                    h2 #act-h { "Actions" }
                    form.inline method="post" action=(format!("/ui/volumes/{}/snapshot", seg(v))) {
                        input type="hidden" name="csrf" value=(f.csrf);
                        label for="label" { "Label " }
                        input id="label" name="label" maxlength="200" placeholder="optional";
                        " "
                        button.primary type="submit" { "Snapshot now" }
                    }
                    " "
                    (action(f, &format!("/ui/volumes/{}/prune", seg(v)), "Prune (show the plan first)", "", &[]))
                    " "
                    (action(f, &format!("/ui/volumes/{}/restore-test", seg(v)), "Restore test", "", &[]))
                }
            }
            section aria-labelledby="charts-h" {
                h2 #charts-h { "Over time" }
                div.charts {
                    (chart::time_chart("Logical and stored bytes", &[
                        Series { name: "logical (each snapshot)", class: "s1", points: logical.clone() },
                        Series { name: "stored (measured after GC)", class: "s2", points: stored },
                    ], fmt))
                    (chart::bar_chart("Snapshot sizes (logical)", &logical, fmt))
                    (chart::bar_chart("Clients held at each snapshot (ms)", &freeze, |v| format!("{v:.0} ms")))
                }
            }
            section aria-labelledby="snaps-h" {
                h2 #snaps-h { "Snapshots (" (d.snapshots.len()) ")" }
                // One form for the table's buttons: one CSRF field, not one per row.
                form method="post" action=(format!("/ui/volumes/{}", seg(v))) {
                    @if f.logged_in { input type="hidden" name="csrf" value=(f.csrf); }
                    div.scroll {
                        table #snapshots {
                            thead { tr {
                                th scope="col" { "Name" } th scope="col" { "Created" } th scope="col" { "Label" }
                                th.num scope="col" { "Logical" } th scope="col" { "Marks" }
                                @if f.logged_in { th scope="col" { span.sr { "Actions" } } }
                            } }
                            tbody {
                                @for s in shown {
                                    @let at = format!("/ui/volumes/{}/snapshots/{}", seg(v), seg(&s.name));
                                    tr {
                                        th scope="row" { a href=(at) { (s.name) } }
                                        td { (when(s.created * 1000)) }
                                        td { (s.label.as_deref().unwrap_or("")) }
                                        td.num { (human_bytes(s.logical_bytes)) }
                                        td { (snapshot_flags(s, now_s)) }
                                        @if f.logged_in {
                                            td { @if s.held {
                                                button type="submit" formaction=(format!("{at}/release")) { "Release" }
                                            } @else {
                                                button type="submit" formaction=(format!("{at}/hold")) { "Hold" }
                                            } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if pages > 1 {
                    nav.pager aria-label="snapshot pages" {
                        @if page > 0 { a href=(format!("?page={}", page - 1)) { "← newer" } " " }
                        "page " (page + 1) " of " (pages)
                        @if page + 1 < pages { " " a href=(format!("?page={}", page + 1)) { "older →" } }
                    }
                }
            }
            section aria-labelledby="jobs-h" {
                h2 #jobs-h { "Job history" }
                (job_table(&d.jobs[..d.jobs.len().min(30)], false))
            }
        },
    )
}

fn job_table(jobs: &[JobView], with_volume: bool) -> Markup {
    html! {
        @if jobs.is_empty() { p.muted { "No jobs yet." } } @else {
        div.scroll {
            table.jobs {
                thead { tr {
                    th scope="col" { "Started" } th scope="col" { "Job" }
                    @if with_volume { th scope="col" { "On" } }
                    th scope="col" { "Result" } th.num scope="col" { "Took" } th.num scope="col" { "Freeze / window" }
                    th.num scope="col" { "Bytes" } th scope="col" { "Snapshot / error" }
                } }
                tbody {
                    @for j in jobs {
                        tr {
                            td { (when(j.started_ms)) }
                            td { (j.kind) }
                            @if with_volume { td { (j.volume.as_deref().unwrap_or("store")) } }
                            td { span class=(if j.result == "ok" { "ok" } else { "bad" }) { (j.result) } }
                            td.num { (duration_ms(j.ended_ms - j.started_ms)) }
                            td.num { @if let (Some(fz), Some(w)) = (j.freeze_ms, j.window_ms) { (fz) " / " (w) " ms" } }
                            td.num { (human_bytes(j.bytes)) }
                            td { (j.snapshot.as_deref().unwrap_or("")) @if let Some(e) = &j.error { " " span.bad { (e) } } }
                        }
                    }
                }
            }
        }
        }
    }
}

pub struct SnapshotData<'a> {
    pub snap: &'a SnapshotView,
    pub listing: Result<ListingView, super::ApiFail>,
    /// The snapshots just older and just newer.
    pub neighbours: (Option<SnapshotView>, Option<SnapshotView>),
    /// From, to, and the changes (or the API's refusal).
    pub diff: Option<(
        String,
        String,
        Result<Vec<crate::diff::Change>, super::ApiFail>,
    )>,
}

fn mode_string(kind: &str, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        "dir" => 'd',
        "symlink" => 'l',
        _ => '-',
    });
    for shift in [6, 3, 0] {
        let b = (mode >> shift) & 7;
        s.push(if b & 4 != 0 { 'r' } else { '-' });
        s.push(if b & 2 != 0 { 'w' } else { '-' });
        s.push(if b & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// Most changes a diff shows on the page.
const DIFF_SHOWN: usize = 200;

pub fn snapshot(f: &Frame, d: SnapshotData) -> Markup {
    let s = d.snap;
    let (v, n) = (s.volume.as_str(), s.name.as_str());
    let base = format!("/ui/volumes/{}/snapshots/{}", seg(v), seg(n));
    let now_s = crate::jobs::now_ms() / 1000;
    layout(
        f,
        &format!("{v}@{n}"),
        html! {
            p.crumbs { a href=(format!("/ui/volumes/{}", seg(v))) { (v) } " / snapshot" }
            h1 { (v) "@" (n) }
            dl.facts {
                dt { "Created" } dd { (when(s.created * 1000)) }
                dt { "Label" } dd { (s.label.as_deref().unwrap_or("none")) }
                dt { "Logical" } dd { (human_bytes(s.logical_bytes)) }
                dt { "Marks" } dd #marks { (snapshot_flags(s, now_s)) @if !s.held && s.lock_until <= now_s && !s.busy { "none" } }
            }
            @if f.logged_in {
                section aria-labelledby="act-h" {
                    h2 #act-h { "Actions" }
                    div.actions {
                        @if s.held {
                            (action(f, &format!("{base}/release"), "Release", "", &[]))
                        } @else {
                            (action(f, &format!("{base}/hold"), "Hold", "", &[]))
                        }
                        " "
                        a.button.danger href=(format!("{base}/delete")) { "Delete…" }
                        " "
                        a.button href=(format!("{base}/tar")) download { "Download all as tar" }
                    }
                    form.stack method="post" action=(format!("{base}/clone")) {
                        input type="hidden" name="csrf" value=(f.csrf);
                        label for="new_volume" { "Clone to a new volume (exported at once, writable)" }
                        div.row {
                            input id="new_volume" name="new_volume" required maxlength="255" placeholder="new volume name";
                            button type="submit" { "Clone" }
                        }
                    }
                    form.stack method="post" action=(format!("{base}/restore")) {
                        input type="hidden" name="csrf" value=(f.csrf);
                        label for="restore_path" { "Restore a path of this snapshot (empty: all of it)…" }
                        input id="restore_path" name="path" placeholder="e.g. etc/nginx";
                        label for="restore_to" { "…into a directory on the appliance (absolute; files there with the same names are replaced)" }
                        div.row {
                            input id="restore_to" name="to" required placeholder="/srv/restore";
                            button type="submit" { "Restore" }
                        }
                    }
                }
            }
            section aria-labelledby="browse-h" {
                h2 #browse-h { "Files" }
                @match &d.listing {
                    Err(e) => p.flash.bad { (e.error) },
                    Ok(l) => {
                        p.crumbs #path {
                            a href=(base) { "/" }
                            @let parts: Vec<&str> = l.path.split('/').filter(|p| !p.is_empty()).collect();
                            @for (i, part) in parts.iter().enumerate() {
                                a href=(format!("{base}?path={}", seg(&parts[..=i].join("/")))) { (part) } "/"
                            }
                            " · "
                            a href=(format!("{base}/tar?path={}", seg(&l.path))) download { "download this directory as tar" }
                        }
                        div.scroll {
                            table #files {
                                thead { tr { th scope="col" { "Name" } th.num scope="col" { "Size" } th scope="col" { "Modified" } th scope="col" { "Mode" } th scope="col" { "Owner" } } }
                                tbody {
                                    @for e in &l.entries {
                                        @let p = if l.path.is_empty() { e.name.clone() } else { format!("{}/{}", l.path, e.name) };
                                        tr {
                                            th scope="row" {
                                                @match e.kind.as_str() {
                                                    "dir" => a href=(format!("{base}?path={}", seg(&p))) { (e.name) "/" },
                                                    "file" => a href=(format!("{base}/file?path={}", seg(&p))) download=(e.name) { (e.name) },
                                                    _ => { (e.name) " → " (e.link.as_deref().unwrap_or("")) },
                                                }
                                            }
                                            td.num { @if e.kind == "file" { (human_bytes(e.size)) } }
                                            td { (when(e.mtime * 1000)) }
                                            td { code { (mode_string(&e.kind, e.mode)) } }
                                            td { (e.uid) ":" (e.gid) }
                                        }
                                    }
                                }
                            }
                        }
                        @if l.entries.is_empty() { p.muted { "Empty directory." } }
                        @if l.total > ENTRIES_PER_PAGE {
                            nav.pager aria-label="directory pages" {
                                @if l.offset > 0 { a href=(format!("{base}?path={}&offset={}", seg(&l.path), l.offset.saturating_sub(ENTRIES_PER_PAGE))) { "← previous" } " " }
                                "entries " (l.offset + 1) "–" (l.offset + l.entries.len()) " of " (l.total)
                                @if l.offset + l.entries.len() < l.total { " " a href=(format!("{base}?path={}&offset={}", seg(&l.path), l.offset + ENTRIES_PER_PAGE)) { "next →" } }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="diff-h" {
                h2 #diff-h { "Compare" }
                p {
                    @if let Some(o) = &d.neighbours.0 { a href=(format!("{base}?diff={}", seg(&o.name))) { "with the previous snapshot (" (o.name) ")" } }
                    @if d.neighbours.0.is_some() && d.neighbours.1.is_some() { " · " }
                    @if let Some(o) = &d.neighbours.1 { a href=(format!("{base}?diff={}", seg(&o.name))) { "with the next snapshot (" (o.name) ")" } }
                }
                form.inline method="get" action=(base) {
                    label for="diff" { "with snapshot " }
                    input id="diff" name="diff" required placeholder="snapshot name";
                    " "
                    button type="submit" { "Compare" }
                }
                @if let Some((from, to, r)) = &d.diff {
                    @match r {
                        Err(e) => p.flash.bad { (e.error) },
                        Ok(changes) => {
                            h3 { "From " (from) " to " (to) ": " (changes.len()) " changes" }
                            @if changes.len() > DIFF_SHOWN { p.muted { "The first " (DIFF_SHOWN) " are shown; " code { "kura diff" } " lists all." } }
                            div.scroll {
                                table #diff {
                                    thead { tr { th scope="col" { "Change" } th scope="col" { "Path" } th.num scope="col" { "Before" } th.num scope="col" { "After" } } }
                                    tbody {
                                        @for c in changes.iter().take(DIFF_SHOWN) {
                                            tr {
                                                td { span class=(format!("chg {}", c.change)) { (c.change) } }
                                                td { (c.path) }
                                                td.num { @if let Some(b) = c.size_before { (human_bytes(b)) } }
                                                td.num { @if let Some(b) = c.size_after { (human_bytes(b)) } }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub fn confirm_delete(
    f: &Frame,
    s: &SnapshotView,
    near: (Option<SnapshotView>, Option<SnapshotView>),
    count: usize,
) -> Markup {
    let (v, n) = (s.volume.as_str(), s.name.as_str());
    let base = format!("/ui/volumes/{}/snapshots/{}", seg(v), seg(n));
    let now_s = crate::jobs::now_ms() / 1000;
    layout(
        f,
        &format!("Delete {v}@{n}?"),
        html! {
            h1 { "Delete " (v) "@" (n) "?" }
            section #lost.flash.bad {
                p { strong { "This cannot be undone." } " What is lost:" }
                ul {
                    li { "the point in time " strong { (when(s.created * 1000)) } " of volume " (v)
                        @if let Some(l) = &s.label { ", labelled “" (l) "”" } }
                    li { (human_bytes(s.logical_bytes)) " of files as they were then; what no other snapshot or live file holds is freed at the next GC" }
                    li { "after it, " (v) " keeps " (count.saturating_sub(1)) " snapshots"
                        @match (&near.0, &near.1) {
                            (Some(a), Some(b)) => { "; the nearest left are " (a.name) " (older) and " (b.name) " (newer)" },
                            (Some(a), None) => { "; the newest left is " (a.name) },
                            (None, Some(b)) => { "; the oldest left is " (b.name) },
                            (None, None) => { "; none is left" },
                        }
                    }
                }
                @if s.held { p { "It is " strong { "held" } ": the appliance will refuse until it is released." } }
                @if s.lock_until > now_s { p { "It is " strong { "locked" } " until " (when(s.lock_until * 1000)) ": nobody can delete it before then." } }
            }
            @if f.logged_in {
                (action(f, &format!("{base}/delete"), &format!("Delete {v}@{n}"), "danger", &[]))
                " "
            }
            a.button href=(base) { "Keep it" }
        },
    )
}

pub fn running_table(running: &[RunningView]) -> Markup {
    html! {
        @if running.is_empty() { p.muted #running-none { "No job is running." } } @else {
            table #running-jobs {
                thead { tr { th scope="col" { "On" } th scope="col" { "Job" } th scope="col" { "Step" } th scope="col" { "Started" } th.num scope="col" { "Running for" } th.num scope="col" { "Done" } } }
                tbody {
                    @for r in running {
                        tr {
                            td { (if r.on == "*" { "store" } else { r.on.as_str() }) }
                            td { (r.kind) }
                            td { (r.phase) }
                            td { (when(r.started_ms)) }
                            td.num { (duration_ms(r.elapsed_ms)) }
                            td.num { @if r.done_bytes > 0 { (human_bytes(r.done_bytes)) } }
                        }
                    }
                }
            }
        }
    }
}

/// The last lines of a job's output.
fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn jobs(f: &Frame, running: &[RunningView], jobs: &[JobView]) -> Markup {
    let failed: Vec<&JobView> = jobs.iter().filter(|j| j.result != "ok").take(20).collect();
    layout(
        f,
        "Jobs",
        html! {
            h1 { "Jobs" }
            section aria-labelledby="run-h" {
                h2 #run-h { "Running now" }
                div #running data-refresh="/ui/jobs/running" aria-live="polite" { (running_table(running)) }
            }
            @if f.logged_in {
                section aria-labelledby="store-act-h" {
                    h2 #store-act-h { "Store actions" }
                    (action(f, "/ui/verify", "Verify the store", "", &[]))
                    " "
                    (action(f, "/ui/gc", "Collect garbage (show the plan first)", "", &[]))
                    " "
                    (action(f, "/ui/prune", "Prune every volume (show the plan first)", "", &[]))
                }
            }
            section aria-labelledby="fail-h" {
                h2 #fail-h { "Failures" }
                @if failed.is_empty() { p.muted { "No failed job among the last " (jobs.len()) "." } }
                @for j in &failed {
                    article.failure {
                        h3 { (j.kind) " " (j.volume.as_deref().unwrap_or("store")) " · " span.bad { (j.result) } " · " (when(j.started_ms)) }
                        @if let Some(e) = &j.error { p.bad { (e) } }
                        @if !j.output.trim().is_empty() { pre { (tail(&j.output, 20)) } }
                    }
                }
            }
            section aria-labelledby="hist-h" {
                h2 #hist-h { "History" }
                (job_table(jobs, true))
            }
        },
    )
}

pub fn prune_plan(f: &Frame, volume: Option<&str>, plan: &[PruneResult]) -> Markup {
    let drops: usize = plan
        .iter()
        .map(|p| p.decisions.iter().filter(|d| !d.keep).count())
        .sum();
    let to = match volume {
        Some(v) => format!("/ui/volumes/{}/prune", seg(v)),
        None => "/ui/prune".into(),
    };
    layout(
        f,
        "Prune plan",
        html! {
            h1 { "Prune plan" @if let Some(v) = volume { " for " (v) } }
            p #plan-summary { "Retention would delete " strong { (drops) } " snapshots. Nothing has been deleted yet." }
            @for p in plan {
                h2 { (p.volume) }
                @if p.decisions.is_empty() { p.muted { "No snapshots." } } @else {
                    div.scroll {
                        table.plan {
                            thead { tr { th scope="col" { "Snapshot" } th scope="col" { "Created" } th scope="col" { "Plan" } th scope="col" { "Why" } } }
                            tbody {
                                @for d in &p.decisions {
                                    tr class=(if d.keep { "" } else { "drop" }) {
                                        td { (d.name) }
                                        td { (when(d.created * 1000)) }
                                        td { @if d.keep { span.ok { "keep" } } @else { span.bad { "delete" } } }
                                        td { (d.reasons.join(", ")) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if drops > 0 {
                (action(f, &to, &format!("Delete these {drops} snapshots"), "danger", &[("confirm", "1")]))
                " "
            }
            a.button href=(match volume { Some(v) => format!("/ui/volumes/{}", seg(v)), None => "/ui/jobs".into() }) { "Cancel" }
        },
    )
}

pub fn gc_plan(f: &Frame, gc: Option<&crate::api::GcView>) -> Markup {
    layout(
        f,
        "GC plan",
        html! {
            h1 { "Garbage collection plan" }
            @if let Some(g) = gc {
                dl.facts #gc-plan {
                    dt { "Unreachable chunks" } dd { (g.unreachable_chunks) " (" (human_bytes(g.unreachable_bytes)) ")" }
                    dt { "Packs to rewrite" } dd { (g.packs_to_repack) }
                    dt { "Packs to regroup" } dd { (g.packs_to_regroup) " (" (human_bytes(g.mixed_bytes)) " in bundles that mix generations)" }
                    dt { "Packs to remove" } dd { (g.orphan_packs) }
                    dt { "Would reclaim" } dd { strong { (human_bytes(g.reclaim_bytes)) } }
                }
            }
            p { "GC deletes only what no live file and no snapshot reaches; clients keep writing meanwhile." }
            (action(f, "/ui/gc", "Run GC now", "primary", &[("confirm", "1")]))
            " "
            a.button href="/ui/jobs" { "Cancel" }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_for_people() {
        assert_eq!(mode_string("dir", 0o755), "drwxr-xr-x");
        assert_eq!(mode_string("file", 0o640), "-rw-r-----");
    }

    #[test]
    fn names_are_escaped_in_pages() {
        let f = Frame {
            logged_in: true,
            csrf: "t".into(),
            flash: Some(Flash {
                ok: false,
                text: "<script>x</script>".into(),
            }),
        };
        let page = login(&f, Some("<img src=x>")).into_string();
        assert!(
            !page.contains("<script>x") && !page.contains("<img src=x>"),
            "{page}"
        );
        assert!(page.contains("&lt;script&gt;"));
    }
}
