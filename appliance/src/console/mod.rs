//! The admin console: HTML pages served by the daemon on the control API's address,
//! under `/ui/`. Every page reads through the API and every action is an API call
//! (made in-process, with the API token), so that the console shows the API's data
//! and the API's refusals, word for word. Server-rendered (maud, compiled into the
//! binary), a few lines of plain JavaScript to refresh running jobs, charts as inline
//! SVG: nothing is fetched from anywhere else.
//!
//! Access: actions need a session, made by logging in with the API token (an
//! HttpOnly, SameSite=Strict cookie), and every action form carries the session's
//! CSRF token. On a loopback address the pages can be read without logging in (as
//! the API can), on any other address nothing but the login page. On loopback the
//! Host header must name a loopback address or `localhost` (for the console and the
//! API alike, one layer over the server), so that a web page that rebinds its own
//! name to 127.0.0.1 cannot reach either.

mod chart;
mod pages;

use crate::api::{
    constant_time_eq, JobReply, JobView, ListingView, SnapshotView, VolumeConfigView,
};
use crate::jobs::{Appliance, PruneResult, RunningView};
use crate::status::Status;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::Markup;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// The session cookie's name.
pub const COOKIE: &str = "kura_session";
/// How long a login lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept; the oldest goes when a login would pass it.
const MAX_SESSIONS: usize = 256;
/// Largest action form accepted.
const MAX_FORM: usize = 64 << 10;
/// Snapshots per page of a volume, entries per page of a directory.
pub(crate) const SNAPSHOTS_PER_PAGE: usize = 100;
pub(crate) const ENTRIES_PER_PAGE: usize = 100;

struct Session {
    csrf: String,
    expires: Instant,
    flash: Option<Flash>,
}

/// The outcome of an action, shown once on the next page.
#[derive(Clone, Debug)]
pub(crate) struct Flash {
    pub ok: bool,
    pub text: String,
}

/// Who is asking: a session (with its CSRF token) or nobody.
#[derive(Clone, Debug, Default)]
pub(crate) struct Auth {
    pub session: Option<String>,
    pub csrf: Option<String>,
}

impl Auth {
    pub fn logged_in(&self) -> bool {
        self.session.is_some()
    }
}

pub struct Console {
    api: Router,
    token: Arc<String>,
    /// Not on loopback: every page needs a login.
    need_login: bool,
    sessions: Mutex<HashMap<String, Session>>,
}

/// A failed API call: its status and the API's own words.
#[derive(Debug)]
pub(crate) struct ApiFail {
    pub status: StatusCode,
    pub error: String,
}

impl ApiFail {
    /// A refusal from its status and body: the API's `{"error": ...}`, else the text.
    fn from_reply(status: StatusCode, body: &[u8]) -> ApiFail {
        let error = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        ApiFail { status, error }
    }
}

impl IntoResponse for ApiFail {
    fn into_response(self) -> Response {
        let page = pages::error_page(self.status, &self.error);
        (self.status, html(page)).into_response()
    }
}

type Ui = State<Arc<Console>>;
type Page = Result<Response, ApiFail>;

/// 32 random bytes as hex.
fn random_hex() -> String {
    let mut raw = [0u8; 32];
    if let Err(e) = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
    {
        // No randomness: no session can be made safely.
        panic!("reading /dev/urandom: {e}");
    }
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn refuse(status: StatusCode, text: &str) -> Response {
    ApiFail {
        status,
        error: text.to_string(),
    }
    .into_response()
}

/// Security headers on every console response.
fn harden(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// Every console request passes here (after the server's Host check on loopback,
/// [`crate::api::loopback_names_only`]): the session from the cookie, the login requirement off loopback, and for each POST the session, the
/// Origin and the CSRF token.
async fn guard(State(ui): Ui, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let path = req.uri().path().to_owned();
    let open_path = path == "/ui/login" || path.starts_with("/ui/static/");
    let mut auth = Auth::default();
    if let Some(id) = cookie(req.headers(), COOKIE) {
        let mut s = ui.sessions.lock().unwrap();
        match s.get(id) {
            Some(sess) if sess.expires > Instant::now() => {
                auth.session = Some(id.to_owned());
                auth.csrf = Some(sess.csrf.clone());
            }
            Some(_) => {
                s.remove(id);
            }
            None => {}
        }
    }
    let is_post = req.method() == Method::POST;
    if ui.need_login && !auth.logged_in() && !open_path {
        return harden(if is_post {
            refuse(StatusCode::UNAUTHORIZED, "log in with the API token first")
        } else {
            Redirect::to("/ui/login").into_response()
        });
    }
    let mut req = req;
    if is_post {
        // A form sent from another site carries that site as its Origin.
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let ok = origin
                .to_str()
                .ok()
                // https: the console behind a TLS proxy that keeps the Host.
                .and_then(|o| {
                    o.strip_prefix("http://")
                        .or_else(|| o.strip_prefix("https://"))
                })
                .is_some_and(|o| o.eq_ignore_ascii_case(&host));
            if !ok {
                return harden(refuse(
                    StatusCode::FORBIDDEN,
                    "the form came from another site (Origin does not match)",
                ));
            }
        }
        if path != "/ui/login" {
            let Some(csrf) = auth.csrf.clone() else {
                return harden(refuse(
                    StatusCode::UNAUTHORIZED,
                    "actions need a login with the API token",
                ));
            };
            let (parts, body) = req.into_parts();
            let bytes = match axum::body::to_bytes(body, MAX_FORM).await {
                Ok(b) => b,
                Err(_) => {
                    return harden(refuse(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the form is larger than 64 KiB",
                    ))
                }
            };
            let form: HashMap<String, String> = serde_urlencoded_form(&bytes).unwrap_or_default();
            let sent = form.get("csrf").map(String::as_str).unwrap_or("");
            if !constant_time_eq(sent.as_bytes(), csrf.as_bytes()) {
                return harden(refuse(
                    StatusCode::FORBIDDEN,
                    "missing or wrong CSRF token: reload the page and try again",
                ));
            }
            req = Request::from_parts(parts, Body::from(bytes));
        }
    }
    req.extensions_mut().insert(auth);
    harden(next.run(req).await)
}

/// A urlencoded form body as name → value (the last of repeated names).
fn serde_urlencoded_form(bytes: &[u8]) -> Option<HashMap<String, String>> {
    serde_urlencoded::from_bytes(bytes).ok()
}

impl Console {
    /// One API call, in-process, with the token.
    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Response {
        let mut b = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let req = match b.body(body) {
            Ok(r) => r,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("bad request: {e}")),
        };
        match self.api.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    /// An API call whose reply is JSON: the value, or the API's status and words.
    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, T), ApiFail> {
        let r = self.call(method, uri, body).await;
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 64 << 20)
            .await
            .map_err(|e| ApiFail {
                status: StatusCode::BAD_GATEWAY,
                error: format!("reading the API's reply: {e}"),
            })?;
        if !status.is_success() && status != StatusCode::UNPROCESSABLE_ENTITY {
            return Err(ApiFail::from_reply(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map(|v| (status, v))
            .map_err(|e| ApiFail {
                status: StatusCode::BAD_GATEWAY,
                error: format!("the API's reply did not parse: {e}"),
            })
    }

    async fn get<T: DeserializeOwned>(&self, uri: &str) -> Result<T, ApiFail> {
        Ok(self.json(Method::GET, uri, None).await?.1)
    }

    fn take_flash(&self, auth: &Auth) -> Option<Flash> {
        let id = auth.session.as_ref()?;
        self.sessions.lock().unwrap().get_mut(id)?.flash.take()
    }

    fn set_flash(&self, auth: &Auth, ok: bool, text: String) {
        let Some(id) = &auth.session else { return };
        if let Some(s) = self.sessions.lock().unwrap().get_mut(id) {
            s.flash = Some(Flash { ok, text });
        }
    }

    /// What a page needs besides its content.
    fn frame(&self, auth: &Auth) -> pages::Frame {
        pages::Frame {
            logged_in: auth.logged_in(),
            csrf: auth.csrf.clone().unwrap_or_default(),
            flash: self.take_flash(auth),
        }
    }

    /// Runs an action (an API call), keeps its outcome for the next page and sends the
    /// browser there.
    async fn act(
        &self,
        auth: &Auth,
        method: Method,
        uri: &str,
        body: Option<Value>,
        back: &str,
        done: impl FnOnce(&Value) -> String,
    ) -> Response {
        match self.json::<Value>(method, uri, body).await {
            Ok((status, v)) if status.is_success() => self.set_flash(auth, true, done(&v)),
            Ok((_, v)) => {
                // Ran and failed (422): the job record says why.
                let job = if v.get("job").is_some() {
                    &v["job"]
                } else {
                    &v
                };
                self.set_flash(
                    auth,
                    false,
                    format!(
                        "{} {}: {}",
                        job["kind"].as_str().unwrap_or("job"),
                        job["result"].as_str().unwrap_or("failed"),
                        job["error"].as_str().unwrap_or("")
                    ),
                )
            }
            Err(f) => self.set_flash(auth, false, format!("Refused ({}): {}", f.status, f.error)),
        }
        Redirect::to(back).into_response()
    }
}

pub(crate) use crate::client::seg;

fn html(m: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

/// The console's routes and the API's, on one address.
pub fn server(app: Arc<Appliance>, token: Arc<String>, need_login: bool) -> Router {
    let api = crate::api::router(app.clone(), need_login.then(|| token.clone()));
    let ui = Arc::new(Console {
        api: api.clone(),
        token,
        need_login,
        sessions: Mutex::new(HashMap::new()),
    });
    let console = Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(dashboard))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/static/kura.css", get(css))
        .route("/ui/static/kura.js", get(js))
        .route("/ui/jobs", get(jobs_page))
        .route("/ui/jobs/running", get(running_fragment))
        .route("/ui/gc", post(act_gc))
        .route("/ui/verify", post(act_verify))
        .route("/ui/prune", post(act_prune_all))
        .route("/ui/volumes/{volume}", get(volume_page))
        .route("/ui/volumes/{volume}/snapshot", post(act_snapshot))
        .route("/ui/volumes/{volume}/prune", post(act_prune))
        .route("/ui/volumes/{volume}/restore-test", post(act_restore_test))
        .route("/ui/volumes/{volume}/snapshots/{name}", get(snapshot_page))
        .route(
            "/ui/volumes/{volume}/snapshots/{name}/file",
            get(download_file),
        )
        .route(
            "/ui/volumes/{volume}/snapshots/{name}/tar",
            get(download_tar),
        )
        .route(
            "/ui/volumes/{volume}/snapshots/{name}/delete",
            get(confirm_delete).post(act_delete),
        )
        .route("/ui/volumes/{volume}/snapshots/{name}/hold", post(act_hold))
        .route(
            "/ui/volumes/{volume}/snapshots/{name}/release",
            post(act_release),
        )
        .route(
            "/ui/volumes/{volume}/snapshots/{name}/clone",
            post(act_clone),
        )
        .route(
            "/ui/volumes/{volume}/snapshots/{name}/restore",
            post(act_restore),
        )
        .route("/ui/{*rest}", get(ui_not_found).post(ui_not_found))
        .layer(middleware::from_fn_with_state(ui.clone(), guard))
        .with_state(ui);
    let server = Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .merge(console)
        .merge(api);
    if need_login {
        server
    } else {
        server.layer(middleware::from_fn(crate::api::loopback_names_only))
    }
}

async fn ui_not_found() -> ApiFail {
    ApiFail {
        status: StatusCode::NOT_FOUND,
        error: "no such page".into(),
    }
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("kura.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("kura.js"),
    )
        .into_response()
}

// ---- login ------------------------------------------------------------------------

async fn login_page(State(ui): Ui, axum::Extension(auth): axum::Extension<Auth>) -> Response {
    html(pages::login(&ui.frame(&auth), None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(ui): Ui,
    axum::Extension(auth): axum::Extension<Auth>,
    Form(f): Form<LoginForm>,
) -> Response {
    if !constant_time_eq(f.token.trim().as_bytes(), ui.token.as_bytes()) {
        // Slows guessing down a little; the token has 256 bits anyway.
        tokio::time::sleep(Duration::from_millis(300)).await;
        return (
            StatusCode::UNAUTHORIZED,
            html(pages::login(
                &ui.frame(&auth),
                Some("That is not the API token (see <data_dir>/api-token)."),
            )),
        )
            .into_response();
    }
    let id = random_hex();
    {
        let mut s = ui.sessions.lock().unwrap();
        let now = Instant::now();
        s.retain(|_, v| v.expires > now);
        if s.len() >= MAX_SESSIONS {
            if let Some(oldest) = s
                .iter()
                .min_by_key(|(_, v)| v.expires)
                .map(|(k, _)| k.clone())
            {
                s.remove(&oldest);
            }
        }
        s.insert(
            id.clone(),
            Session {
                csrf: random_hex(),
                expires: now + SESSION_TTL,
                flash: Some(Flash {
                    ok: true,
                    text: "Logged in.".into(),
                }),
            },
        );
    }
    (
        [(
            header::SET_COOKIE,
            format!(
                "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}",
                SESSION_TTL.as_secs()
            ),
        )],
        Redirect::to("/ui/"),
    )
        .into_response()
}

async fn logout(State(ui): Ui, axum::Extension(auth): axum::Extension<Auth>) -> Response {
    if let Some(id) = &auth.session {
        ui.sessions.lock().unwrap().remove(id);
    }
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to(if ui.need_login { "/ui/login" } else { "/ui/" }),
    )
        .into_response()
}

// ---- pages ------------------------------------------------------------------------

async fn dashboard(State(ui): Ui, axum::Extension(auth): axum::Extension<Auth>) -> Page {
    let t0 = Instant::now();
    let status: Status = ui.get("/status").await?;
    let page = pages::dashboard(&ui.frame(&auth), &status);
    Ok(timed(html(page), t0))
}

/// Adds the server's time for the page (`Server-Timing`, shown by browsers' tools).
fn timed(mut r: Response, t0: Instant) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!(
        "render;dur={:.1}",
        t0.elapsed().as_secs_f64() * 1000.0
    )) {
        r.headers_mut().insert("server-timing", v);
    }
    r
}

#[derive(Deserialize, Default)]
struct PageQuery {
    #[serde(default)]
    page: usize,
}

async fn volume_page(
    State(ui): Ui,
    axum::Extension(auth): axum::Extension<Auth>,
    Path(volume): Path<String>,
    Query(q): Query<PageQuery>,
) -> Page {
    let t0 = Instant::now();
    let v = seg(&volume);
    let cfg: VolumeConfigView = ui.get(&format!("/volumes/{v}/config")).await?;
    let mut snaps: Vec<SnapshotView> = ui.get(&format!("/volumes/{v}/snapshots")).await?;
    snaps.sort_by(|a, b| (b.created, &b.name).cmp(&(a.created, &a.name)));
    let jobs: Vec<JobView> = ui.get(&format!("/jobs?volume={v}&limit=1000")).await?;
    let usage: Vec<JobView> = ui
        .get(&format!("/jobs?volume={v}&kind=usage&limit=1000"))
        .await?;
    let status: Status = ui.get("/status").await?;
    let vs = status.volumes.iter().find(|s| s.name == volume);
    let page = pages::volume(
        &ui.frame(&auth),
        pages::VolumeData {
            name: &volume,
            status: vs,
            config: &cfg,
            snapshots: &snaps,
            jobs: &jobs,
            usage: &usage,
            page: q.page,
            running: status.running.iter().any(|(v, _)| *v == volume),
        },
    );
    Ok(timed(html(page), t0))
}

#[derive(Deserialize, Default)]
struct BrowseQuery {
    #[serde(default)]
    path: String,
    #[serde(default)]
    offset: usize,
    diff: Option<String>,
}

async fn snapshot_page(
    State(ui): Ui,
    axum::Extension(auth): axum::Extension<Auth>,
    Path((volume, name)): Path<(String, String)>,
    Query(bq): Query<BrowseQuery>,
) -> Page {
    let t0 = Instant::now();
    let (v, n) = (seg(&volume), seg(&name));
    let snap: SnapshotView = ui.get(&format!("/volumes/{v}/snapshots/{n}")).await?;
    let listing: Result<ListingView, ApiFail> = ui
        .get(&format!(
            "/volumes/{v}/snapshots/{n}/ls?path={}&offset={}&limit={ENTRIES_PER_PAGE}",
            seg(&bq.path),
            bq.offset
        ))
        .await;
    let mut all: Vec<SnapshotView> = ui.get(&format!("/volumes/{v}/snapshots")).await?;
    all.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    let diff = match &bq.diff {
        Some(other) if !other.is_empty() => {
            // Older first, whichever way round it was asked.
            let older = all
                .iter()
                .position(|s| s.name == *other)
                .zip(all.iter().position(|s| s.name == name))
                .is_some_and(|(o, me)| o < me);
            let (from, to) = if older {
                (other.as_str(), name.as_str())
            } else {
                (name.as_str(), other.as_str())
            };
            Some((
                from.to_owned(),
                to.to_owned(),
                ui.get::<Vec<crate::diff::Change>>(&format!(
                    "/volumes/{v}/diff?from={}&to={}",
                    seg(from),
                    seg(to)
                ))
                .await,
            ))
        }
        _ => None,
    };
    let page = pages::snapshot(
        &ui.frame(&auth),
        pages::SnapshotData {
            snap: &snap,
            listing,
            neighbours: neighbours(&all, &name),
            diff,
        },
    );
    Ok(timed(html(page), t0))
}

/// The snapshots just older and just newer than `name` on its volume.
fn neighbours(all: &[SnapshotView], name: &str) -> (Option<SnapshotView>, Option<SnapshotView>) {
    match all.iter().position(|s| s.name == name) {
        Some(i) => (
            i.checked_sub(1).map(|j| all[j].clone()),
            all.get(i + 1).cloned(),
        ),
        None => (None, None),
    }
}

#[derive(Deserialize, Default)]
struct PathQuery {
    #[serde(default)]
    path: String,
}

/// Passes the API's stream through (a file, a tar), or its refusal as a page.
async fn pass_through(ui: &Console, uri: &str) -> Response {
    let r = ui.call(Method::GET, uri, None).await;
    if r.status().is_success() {
        return r;
    }
    let status = r.status();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    ApiFail::from_reply(status, &bytes).into_response()
}

async fn download_file(
    State(ui): Ui,
    Path((volume, name)): Path<(String, String)>,
    Query(p): Query<PathQuery>,
) -> Response {
    pass_through(
        &ui,
        &format!(
            "/volumes/{}/snapshots/{}/file?path={}",
            seg(&volume),
            seg(&name),
            seg(&p.path)
        ),
    )
    .await
}

async fn download_tar(
    State(ui): Ui,
    Path((volume, name)): Path<(String, String)>,
    Query(p): Query<PathQuery>,
) -> Response {
    let mut r = pass_through(
        &ui,
        &format!(
            "/volumes/{}/snapshots/{}/tar?path={}",
            seg(&volume),
            seg(&name),
            seg(&p.path)
        ),
    )
    .await;
    if r.status().is_success() {
        let file = format!("{volume}@{name}.tar").replace(
            |c: char| !c.is_ascii_graphic() || c == '"' || c == '\\',
            "_",
        );
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
            r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
    }
    r
}

async fn confirm_delete(
    State(ui): Ui,
    axum::Extension(auth): axum::Extension<Auth>,
    Path((volume, name)): Path<(String, String)>,
) -> Page {
    let v = seg(&volume);
    let snap: SnapshotView = ui
        .get(&format!("/volumes/{v}/snapshots/{}", seg(&name)))
        .await?;
    let mut all: Vec<SnapshotView> = ui.get(&format!("/volumes/{v}/snapshots")).await?;
    all.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    Ok(html(pages::confirm_delete(
        &ui.frame(&auth),
        &snap,
        neighbours(&all, &name),
        all.len(),
    )))
}

async fn jobs_page(State(ui): Ui, axum::Extension(auth): axum::Extension<Auth>) -> Page {
    let t0 = Instant::now();
    let jobs: Vec<JobView> = ui.get("/jobs?limit=200").await?;
    let running: Vec<RunningView> = ui.get("/jobs/running").await?;
    Ok(timed(
        html(pages::jobs(&ui.frame(&auth), &running, &jobs)),
        t0,
    ))
}

async fn running_fragment(State(ui): Ui) -> Page {
    let running: Vec<RunningView> = ui.get("/jobs/running").await?;
    Ok(html(pages::running_table(&running)))
}

// ---- actions ----------------------------------------------------------------------

type Fields = Form<HashMap<String, String>>;
type Who = axum::Extension<Auth>;

fn field<'a>(f: &'a HashMap<String, String>, k: &str) -> &'a str {
    f.get(k).map(|s| s.trim()).unwrap_or("")
}

async fn act_snapshot(
    State(ui): Ui,
    who: Who,
    Path(volume): Path<String>,
    Form(f): Fields,
) -> Response {
    let label = field(&f, "label");
    let body = if label.is_empty() {
        json!({})
    } else {
        json!({ "label": label })
    };
    let back = format!("/ui/volumes/{}", seg(&volume));
    ui.act(
        &who.0,
        Method::POST,
        &format!("/volumes/{}/snapshots", seg(&volume)),
        Some(body),
        &back,
        |v| {
            format!(
                "Snapshot {}@{} taken; the volume was frozen {} ms.",
                v["result"]["volume"].as_str().unwrap_or(""),
                v["result"]["name"].as_str().unwrap_or(""),
                v["job"]["freeze_ms"].as_u64().unwrap_or(0)
            )
        },
    )
    .await
}

fn snap_back(volume: &str, name: &str) -> String {
    format!("/ui/volumes/{}/snapshots/{}", seg(volume), seg(name))
}

/// Hold (`hold`) or release a snapshot.
async fn hold_or_release(
    ui: &Console,
    auth: &Auth,
    volume: &str,
    name: &str,
    hold: bool,
) -> Response {
    let verb = if hold { "hold" } else { "release" };
    let uri = format!("/volumes/{}/snapshots/{}/{verb}", seg(volume), seg(name));
    ui.act(
        auth,
        Method::POST,
        &uri,
        None,
        &snap_back(volume, name),
        |_| {
            if hold {
                format!(
                    "{volume}@{name} is held: retention and delete leave it alone until released."
                )
            } else {
                format!("{volume}@{name} is released.")
            }
        },
    )
    .await
}

async fn act_hold(
    State(ui): Ui,
    who: Who,
    Path((volume, name)): Path<(String, String)>,
) -> Response {
    hold_or_release(&ui, &who.0, &volume, &name, true).await
}

async fn act_release(
    State(ui): Ui,
    who: Who,
    Path((volume, name)): Path<(String, String)>,
) -> Response {
    hold_or_release(&ui, &who.0, &volume, &name, false).await
}

async fn act_delete(
    State(ui): Ui,
    who: Who,
    Path((volume, name)): Path<(String, String)>,
) -> Response {
    let uri = format!("/volumes/{}/snapshots/{}", seg(&volume), seg(&name));
    // Back to the snapshot when refused (its page says why it stays), to the volume
    // when deleted.
    let r = ui.json::<Value>(Method::DELETE, &uri, None).await;
    match r {
        Ok(_) => {
            ui.set_flash(
                &who.0,
                true,
                format!("Deleted {volume}@{name}; what only it held is freed at the next GC."),
            );
            Redirect::to(&format!("/ui/volumes/{}", seg(&volume))).into_response()
        }
        Err(f) => {
            ui.set_flash(
                &who.0,
                false,
                format!("Refused ({}): {}", f.status, f.error),
            );
            Redirect::to(&snap_back(&volume, &name)).into_response()
        }
    }
}

async fn act_clone(
    State(ui): Ui,
    who: Who,
    Path((volume, name)): Path<(String, String)>,
    Form(f): Fields,
) -> Response {
    let nv = field(&f, "new_volume").to_owned();
    let uri = format!("/volumes/{}/snapshots/{}/clone", seg(&volume), seg(&name));
    ui.act(
        &who.0,
        Method::POST,
        &uri,
        Some(json!({ "new_volume": nv })),
        &snap_back(&volume, &name),
        |_| format!("Cloned {volume}@{name} to the new volume {nv}, exported now."),
    )
    .await
}

async fn act_restore(
    State(ui): Ui,
    who: Who,
    Path((volume, name)): Path<(String, String)>,
    Form(f): Fields,
) -> Response {
    let (path, to) = (field(&f, "path").to_owned(), field(&f, "to").to_owned());
    let uri = format!("/volumes/{}/snapshots/{}/restore", seg(&volume), seg(&name));
    let back = snap_back(&volume, &name);
    // The API answers with JSON lines (progress, then the report or an error).
    let r = ui
        .call(Method::POST, &uri, Some(json!({ "to": to, "path": path })))
        .await;
    let status = r.status();
    let bytes = axum::body::to_bytes(r.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let last: Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    let (ok, msg) = if !status.is_success() {
        (
            false,
            format!(
                "Refused ({status}): {}",
                last["error"].as_str().unwrap_or(&text)
            ),
        )
    } else if let Some(e) = last["error"].as_str() {
        (false, format!("Restore failed: {e}"))
    } else {
        let rep = &last["report"];
        let damaged = rep["damaged"].as_array().map_or(0, |d| d.len());
        (
            damaged == 0,
            format!(
                "Restored {volume}@{name}:/{path} to {to}: {} files, {} bytes{}.",
                rep["files"].as_u64().unwrap_or(0),
                rep["bytes"].as_u64().unwrap_or(0),
                if damaged > 0 {
                    format!(", {damaged} damaged files")
                } else {
                    String::new()
                }
            ),
        )
    };
    ui.set_flash(&who.0, ok, msg);
    Redirect::to(&back).into_response()
}

async fn act_restore_test(State(ui): Ui, who: Who, Path(volume): Path<String>) -> Response {
    let back = format!("/ui/volumes/{}", seg(&volume));
    ui.act(
        &who.0,
        Method::POST,
        &format!("/volumes/{}/restore-test", seg(&volume)),
        None,
        &back,
        |v| {
            format!(
                "Restore test of {volume} passed: {} bytes read and checked.",
                v["bytes"].as_u64().unwrap_or(0)
            )
        },
    )
    .await
}

/// Prune: without `confirm`, the dry-run plan with a button to apply it.
async fn prune(ui: &Console, auth: &Auth, volume: Option<String>, confirm: bool) -> Response {
    let back = match &volume {
        Some(v) => format!("/ui/volumes/{}", seg(v)),
        None => "/ui/jobs".to_owned(),
    };
    let body = json!({ "volume": volume, "dry_run": !confirm });
    if confirm {
        return ui
            .act(auth, Method::POST, "/prune", Some(body), &back, |v| {
                let r: Vec<PruneResult> = serde_json::from_value(v.clone()).unwrap_or_default();
                let deleted: Vec<String> = r.iter().flat_map(|p| p.deleted.clone()).collect();
                let errors: Vec<String> = r.iter().flat_map(|p| p.errors.clone()).collect();
                format!(
                    "Pruned: {} snapshots deleted{}{}",
                    deleted.len(),
                    if deleted.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", deleted.join(", "))
                    },
                    if errors.is_empty() {
                        String::new()
                    } else {
                        format!("; not deleted: {}", errors.join("; "))
                    }
                )
            })
            .await;
    }
    match ui
        .json::<Vec<PruneResult>>(Method::POST, "/prune", Some(body))
        .await
    {
        Ok((_, plan)) => html(pages::prune_plan(&ui.frame(auth), volume.as_deref(), &plan)),
        Err(f) => {
            ui.set_flash(auth, false, format!("Refused ({}): {}", f.status, f.error));
            Redirect::to(&back).into_response()
        }
    }
}

async fn act_prune(
    State(ui): Ui,
    who: Who,
    Path(volume): Path<String>,
    Form(f): Fields,
) -> Response {
    prune(&ui, &who.0, Some(volume), field(&f, "confirm") == "1").await
}

async fn act_prune_all(State(ui): Ui, who: Who, Form(f): Fields) -> Response {
    prune(&ui, &who.0, None, field(&f, "confirm") == "1").await
}

/// GC: without `confirm`, the dry-run numbers with a button to run it.
async fn act_gc(State(ui): Ui, who: Who, Form(f): Fields) -> Response {
    let confirm = field(&f, "confirm") == "1";
    if confirm {
        return ui
            .act(
                &who.0,
                Method::POST,
                "/gc",
                Some(json!({ "dry_run": false })),
                "/ui/jobs",
                |v| {
                    format!(
                        "GC done: {} bytes reclaimed, {} chunks deleted.",
                        v["result"]["reclaim_bytes"].as_u64().unwrap_or(0),
                        v["result"]["deleted_chunks"].as_u64().unwrap_or(0)
                    )
                },
            )
            .await;
    }
    match ui
        .json::<JobReply<crate::api::GcView>>(Method::POST, "/gc", Some(json!({ "dry_run": true })))
        .await
    {
        Ok((_, r)) => html(pages::gc_plan(&ui.frame(&who.0), r.result.as_ref())),
        Err(f) => {
            ui.set_flash(
                &who.0,
                false,
                format!("Refused ({}): {}", f.status, f.error),
            );
            Redirect::to("/ui/jobs").into_response()
        }
    }
}

async fn act_verify(State(ui): Ui, who: Who) -> Response {
    ui.act(&who.0, Method::POST, "/verify", None, "/ui/jobs", |v| {
        let r = &v["result"];
        if r["clean"].as_bool() == Some(true) {
            format!(
                "Verify clean: {} chunks in {} packs read and checked.",
                r["chunks"].as_u64().unwrap_or(0),
                r["packs"].as_u64().unwrap_or(0)
            )
        } else {
            format!("Verify found damage: {}", r["damaged"])
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; kura_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "kura"), None);
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(seg("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(seg("2026-12-01_06-00-00Z"), "2026-12-01_06-00-00Z");
    }

    #[test]
    fn forms_parse() {
        let f = serde_urlencoded_form(b"csrf=x%20y&path=a%2Fb").unwrap();
        assert_eq!(f["csrf"], "x y");
        assert_eq!(f["path"], "a/b");
    }
}
