//! The admin console against the real daemon and a real store: driven in headless
//! Chromium by Selenium (tests/browser/console.py) through what an operator does, its
//! results then checked over NFS and on disk; and its access rules checked request
//! by request (no session, no CSRF token, another site's form, a rebound name).

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(60))
        .build()
}

/// Status and body of a request, whatever the status.
fn send(r: Result<ureq::Response, ureq::Error>) -> (u16, String, Option<String>) {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = resp.status();
    let cookie = resp.header("set-cookie").map(str::to_owned);
    (status, resp.into_string().unwrap_or_default(), cookie)
}

fn token(d: &Daemon) -> String {
    std::fs::read_to_string(d.data.join("api-token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Logs in; returns the cookie pair and the CSRF token of the session.
fn login(d: &Daemon) -> (String, String) {
    let (st, _, cookie) = send(
        agent()
            .post(&format!("{}/ui/login", d.api))
            .send_form(&[("token", &token(d))]),
    );
    assert_eq!(st, 303, "login");
    let cookie = cookie.expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attr), "{attr} missing: {cookie}");
    }
    let pair = cookie.split(';').next().unwrap().to_owned();
    let (st, page, _) = send(
        agent()
            .get(&format!("{}/ui/volumes/backup", d.api))
            .set("cookie", &pair)
            .call(),
    );
    assert_eq!(st, 200);
    let needle = "name=\"csrf\" value=\"";
    let at = page.find(needle).expect("a CSRF field") + needle.len();
    let csrf = page[at..at + 64].to_owned();
    (pair, csrf)
}

fn snapshots(d: &Daemon) -> Vec<String> {
    let (_, body, _) = send(
        agent()
            .get(&format!("{}/volumes/backup/snapshots", d.api))
            .call(),
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn actions_without_a_session_or_csrf_token_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "127.0.0.1:0", &["127.0.0.1/32"], "");
    let d = Daemon::start(&cfg, &[]);
    let url = |p: &str| format!("{}{p}", d.api);
    // Read-only pages on loopback without a login; no action.
    let (st, page, _) = send(agent().get(&url("/ui/")).call());
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("Log in to act") && !page.contains("Snapshot now"));
    let (st, page, _) = send(
        agent()
            .post(&url("/ui/volumes/backup/snapshot"))
            .send_form(&[("label", "x")]),
    );
    assert_eq!(st, 401, "no session: {page}");
    // A wrong token logs nobody in.
    let (st, _, cookie) = send(
        agent()
            .post(&url("/ui/login"))
            .send_form(&[("token", "guess")]),
    );
    assert_eq!(st, 401);
    assert!(cookie.is_none());
    let (cookie, csrf) = login(&d);
    let act = |form: &[(&str, &str)], origin: Option<&str>| {
        let mut r = agent()
            .post(&url("/ui/volumes/backup/snapshot"))
            .set("cookie", &cookie);
        if let Some(o) = origin {
            r = r.set("origin", o);
        }
        send(r.send_form(form))
    };
    let (st, page, _) = act(&[("label", "x")], None);
    assert_eq!(st, 403, "no CSRF token: {page}");
    assert!(page.contains("CSRF"), "{page}");
    let (st, _, _) = act(&[("label", "x"), ("csrf", &"0".repeat(64))], None);
    assert_eq!(st, 403, "wrong CSRF token");
    let (st, page, _) = act(
        &[("label", "x"), ("csrf", &csrf)],
        Some("http://evil.example"),
    );
    assert_eq!(st, 403, "another site's form: {page}");
    let (st, _, _) = act(
        &[("label", "x"), ("csrf", &csrf)],
        Some("https://evil.example"),
    );
    assert_eq!(st, 403, "another site's form over https");
    assert!(snapshots(&d).is_empty(), "a refused action did something");
    let host = d.api.strip_prefix("http://").unwrap().to_owned();
    let (st, _, _) = act(
        &[("label", "x"), ("csrf", &csrf)],
        Some(&format!("http://{host}")),
    );
    assert_eq!(st, 303, "a good action");
    assert_eq!(snapshots(&d).len(), 1);
    // A session cookie from elsewhere is no session.
    let (st, _, _) = send(
        agent()
            .post(&url("/ui/volumes/backup/snapshot"))
            .set("cookie", &format!("kura_session={}", "ab".repeat(32)))
            .send_form(&[("csrf", &csrf)]),
    );
    assert_eq!(st, 401);
    // A name rebound to 127.0.0.1 by another site gets nothing.
    let (st, _, _) = send(agent().get(&url("/ui/")).set("host", "evil.example").call());
    assert_eq!(st, 421);
    // The API too: a rebound name could otherwise delete snapshots from a browser.
    let (st, _, _) = send(
        agent()
            .delete(&url("/volumes/backup/snapshots/x"))
            .set("host", "evil.example:80")
            .call(),
    );
    assert_eq!(st, 421);
    // After logout the cookie is worth nothing.
    let (st, _, _) = send(
        agent()
            .post(&url("/ui/logout"))
            .set("cookie", &cookie)
            .send_form(&[("csrf", &csrf)]),
    );
    assert_eq!(st, 303);
    let (st, _, _) = act(&[("csrf", &csrf)], None);
    assert_eq!(st, 401);
    // Pages and names that do not exist are a page saying so, not a crash.
    for (p, want) in [
        ("/ui/volumes/nope", 404),
        ("/ui/volumes/backup/snapshots/nope", 404),
        ("/ui/volumes/backup/snapshots/x/file?path=..%2F..", 404),
        ("/ui/nothing", 404),
    ] {
        let (st, page, _) = send(agent().get(&url(p)).call());
        assert_eq!(st, want, "{p}: {page}");
        assert!(page.contains("id=\"error\""), "{p}: {page}");
    }
}

#[test]
fn with_require_token_every_page_needs_a_login() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "127.0.0.1:0", &["127.0.0.1/32"], "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[api]\n", "[api]\nrequire_token = true\n");
    std::fs::write(&cfg, text).unwrap();
    let d = Daemon::start(&cfg, &[]);
    let url = |p: &str| format!("{}{p}", d.api);
    for p in ["/ui/", "/ui/volumes/backup", "/ui/jobs"] {
        let r = agent().get(&url(p)).call().unwrap();
        assert_eq!(r.status(), 303, "{p}");
        assert_eq!(r.header("location"), Some("/ui/login"), "{p}");
    }
    let (st, _, _) = send(agent().get(&url("/status")).call());
    assert_eq!(st, 401, "the API asks for the token too");
    let (st, _, _) = send(agent().get(&url("/ui/login")).call());
    assert_eq!(st, 200);
    let (cookie, _) = login(&d);
    let (st, page, _) = send(agent().get(&url("/ui/")).set("cookie", &cookie).call());
    assert_eq!(st, 200);
    assert!(page.contains("Snapshot now"), "logged in, actions shown");
}

#[test]
fn console_in_a_real_browser() {
    if Command::new("chromedriver")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("chromedriver not found: run scripts/test.sh, which installs chromium and chromium-driver");
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("127.0.0.1:{}", free_port()),
        &["127.0.0.1/32"],
        "\n[volume.backup]\nschedule = [\"0 1 * * *\"]\ntimezone = \"Asia/Tokyo\"\nquiet_secs = 600\nkeep_last = 5\nkeep_daily = 8\nkeep_weekly = 4\nrpo = \"1d\"\n",
    );
    let d = Daemon::process(&cfg, &[]);
    // What a backup client writes over NFS.
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello.txt"), b"hello from the console test\n").unwrap();
    std::fs::write(src.join("readme.md"), b"# docs\n").unwrap();
    let o = libnfs(
        "nfs-cp",
        &[
            src.join("hello.txt").to_str().unwrap(),
            &d.url("/backup/hello.txt"),
        ],
    );
    assert!(o.status.success(), "{o:?}");
    // A directory: made through the API's import (a tar), the way restores come back.
    let mut tar = tar::Builder::new(Vec::new());
    tar.append_path_with_name(src.join("readme.md"), "readme.md")
        .unwrap();
    // A name that needs escaping in a URL and in HTML.
    tar.append_path_with_name(src.join("readme.md"), "a b&c#d?<e>.txt")
        .unwrap();
    let body = tar.into_inner().unwrap();
    let r = ureq::post(&format!("{}/volumes/backup/import?path=docs", d.api))
        .send_bytes(&body)
        .unwrap();
    assert_eq!(r.status(), 200);
    let restore_dir = dir.path().join("restored");
    std::fs::create_dir_all(&restore_dir).unwrap();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    let o = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser/console.py"))
        .args([
            &d.api,
            &token(&d),
            shots.to_str().unwrap(),
            restore_dir.to_str().unwrap(),
            &d.url("/backup/new.txt"),
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // What the browser did, seen from outside it: the clone over NFS, the restore on
    // disk, the snapshots under /.snapshots.
    let cat = libnfs("nfs-cat", &[&d.url("/fromui/hello.txt")]);
    assert_eq!(cat.stdout, b"hello from the console test\n", "{cat:?}");
    assert_eq!(
        std::fs::read(restore_dir.join("hello.txt")).unwrap(),
        b"hello from the console test\n"
    );
    assert_eq!(
        std::fs::read(restore_dir.join("docs/readme.md")).unwrap(),
        b"# docs\n"
    );
    let (first, second) = {
        let l = out.trim().rsplit(' ').collect::<Vec<_>>();
        (
            l[1].strip_prefix("first=").unwrap().to_owned(),
            l[0].strip_prefix("second=").unwrap().to_owned(),
        )
    };
    let ls = libnfs("nfs-ls", &[&d.url("/backup/.snapshots")]);
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.contains(&second), "{ls}");
    assert!(!ls.contains(&first), "deleted in the browser: {ls}");
    // The console's downloads: one file as it is, a directory as a tar.
    let r = agent()
        .get(&format!(
            "{}/ui/volumes/backup/snapshots/{second}/file?path=hello.txt",
            d.api
        ))
        .call()
        .unwrap();
    assert!(r
        .header("content-disposition")
        .unwrap()
        .contains("hello.txt"));
    assert_eq!(r.into_string().unwrap(), "hello from the console test\n");
    let r = agent()
        .get(&format!(
            "{}/ui/volumes/backup/snapshots/{second}/tar?path=docs",
            d.api
        ))
        .call()
        .unwrap();
    assert_eq!(r.header("content-type"), Some("application/x-tar"));
    let mut names = Vec::new();
    for e in tar::Archive::new(r.into_reader()).entries().unwrap() {
        names.push(e.unwrap().path().unwrap().display().to_string());
    }
    assert!(names.iter().any(|n| n.ends_with("readme.md")), "{names:?}");
    // The link the page gives for an awkward name leads to that file.
    let (_, page, _) = send(
        agent()
            .get(&format!(
                "{}/ui/volumes/backup/snapshots/{second}?path=docs",
                d.api
            ))
            .call(),
    );
    assert!(page.contains("a b&amp;c#d?&lt;e&gt;.txt"), "{page}");
    let href = page
        .split("href=\"")
        .filter_map(|h| h.split('"').next())
        .find(|h| h.contains("/file?path=docs%2Fa"))
        .expect("a link to the file")
        .replace("&amp;", "&");
    let r = agent().get(&format!("{}{href}", d.api)).call().unwrap();
    assert_eq!(r.into_string().unwrap(), "# docs\n", "{href}");
    for page in ["dashboard", "volume", "snapshot", "jobs", "delete", "login"] {
        assert!(shots.join(format!("{page}.png")).exists(), "{page}.png");
    }
}

#[test]
fn a_refused_action_shows_the_apis_reason_and_the_running_job_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "127.0.0.1:0", &["127.0.0.1/32"], "");
    // Each snapshot holds the volume frozen for 3 s.
    let d = Daemon::process(&cfg, &[("KURA_TEST_FREEZE_DELAY_MS", "3000")]);
    let (cookie, csrf) = login(&d);
    let api = d.api.clone();
    let slow = std::thread::spawn(move || {
        ureq::post(&format!("{api}/volumes/backup/snapshots"))
            .send_json(serde_json::json!({ "name": "slow" }))
            .unwrap()
            .status()
    });
    // The jobs page shows it, frozen.
    let t0 = std::time::Instant::now();
    loop {
        let (_, page, _) = send(agent().get(&format!("{}/ui/jobs/running", d.api)).call());
        if page.contains("<td>frozen</td>") {
            assert!(page.contains("<td>snapshot</td>"), "{page}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "never frozen: {page}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Snapshot now from the console meanwhile: refused, and the page says why.
    let (st, _, _) = send(
        agent()
            .post(&format!("{}/ui/volumes/backup/snapshot", d.api))
            .set("cookie", &cookie)
            .send_form(&[("csrf", &csrf)]),
    );
    assert_eq!(st, 303);
    let (_, page, _) = send(
        agent()
            .get(&format!("{}/ui/volumes/backup", d.api))
            .set("cookie", &cookie)
            .call(),
    );
    assert!(
        page.contains("Refused (409 Conflict): a snapshot job is already running on backup"),
        "{page}"
    );
    assert_eq!(slow.join().unwrap(), 201);
    assert_eq!(snapshots(&d), vec!["slow".to_string()]);
}
