//! The admin endpoint: HTTP/1.1 on a loopback address by default
//! (`admin` in the config, `--admin`), for monitoring and for the `legsync
//! status | reload | reopen | legs` commands ([`client`]); and, if
//! configured (`metrics`), a monitoring listener that serves only the
//! first three routes.
//!
//! | route | answer | credential |
//! |---|---|---|
//! | `GET /metrics` | Prometheus text format (see [`crate::metrics`]) | none |
//! | `GET /healthz` | 200 when the supervisor's loop answers within 10 s | none |
//! | `GET /readyz` | 200 when active and in sync, else 503 naming the state | none |
//! | `GET /status` | JSON: link, role, epoch, counts, plugins, last resync and reload | token |
//! | `GET /legs?nap=X&after=ID&limit=N` | JSON: a page of held legs, by id | token |
//! | `GET /mixers?after=ID&limit=N` | JSON: a page of held mixers and their legs, by id | token |
//! | `POST /reload` | reloads the plugin set now; JSON report with its blast radius (409 if held back by the guard, 422 if rejected) | token |
//! | `POST /reload?accept=HASH` | applies the set on disk over the guard, if its hash is HASH | token |
//! | `GET /shadow` | JSON: the shadow set's verdicts against the live ones since the start | token |
//! | `GET /enforce` | JSON: the working set's hash and blast radius on the calls held | token |
//! | `POST /enforce?confirm=HASH` | refuses, ends and drops the held calls the working set refuses, if its hash is HASH | token |
//! | `POST /reopen` | reopens the ledger and event log after a rotation | token |
//!
//! The token is [`token::AdminToken`]: `Authorization: Bearer <token>`.
//!
//! Nothing here takes a lock the call path takes: status comes from the
//! supervisor's watch channel, legs from a question the supervisor answers
//! between two batches.

pub mod client;
pub mod token;

use crate::events::{
    Events, HostEvent, LinkState, ReloadOutcome, ReloadReport, ResyncSummary, Role,
};
use crate::policy::PolicyHandle;
use crate::reload::Reloader;
use crate::supervisor::HostStatus;
use crate::supervisor::queries::{AdminQuery, MAX_PAGE};
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use token::AdminToken;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use crate::config::DEFAULT_ADMIN_ADDR as DEFAULT_ADDR;

/// How long the supervisor may take to answer a question (a resync of
/// several million legs holds it for seconds).
const SUPERVISOR_WAIT: Duration = Duration::from_secs(10);

/// What the endpoint serves from.
pub struct Admin {
    pub name: String,
    pub status: watch::Receiver<HostStatus>,
    pub queries: mpsc::Sender<AdminQuery>,
    pub policy: PolicyHandle,
    pub reloader: Option<Arc<Reloader>>,
    /// What `POST /reopen` reopens after a rotation.
    pub files: Option<(crate::cdr::CdrWriter, Events)>,
    /// Shipping to the fleet stream, with `[ship]`.
    ship: std::sync::OnceLock<watch::Receiver<crate::ship::shipper::ShipStatus>>,
    latest: Mutex<Latest>,
    started_ms: u64,
}

/// The last resync and reload, as the event stream told them.
#[derive(Debug, Default, Clone, Serialize)]
struct Latest {
    resync: Option<Stamped<ResyncSummary>>,
    reload: Option<Stamped<ReloadReport>>,
}

#[derive(Debug, Clone, Serialize)]
struct Stamped<T> {
    time_ms: u64,
    #[serde(flatten)]
    value: T,
}

impl Admin {
    pub fn new(
        name: String,
        status: watch::Receiver<HostStatus>,
        queries: mpsc::Sender<AdminQuery>,
        policy: PolicyHandle,
        reloader: Option<Arc<Reloader>>,
        files: Option<(crate::cdr::CdrWriter, Events)>,
    ) -> Arc<Admin> {
        crate::metrics::install();
        Arc::new(Admin {
            name,
            status,
            queries,
            policy,
            reloader,
            files,
            ship: Default::default(),
            latest: Mutex::new(Latest::default()),
            started_ms: crate::model::now_ms(),
        })
    }

    /// `/status` shows shipping from now on.
    pub fn show_shipping(&self, status: watch::Receiver<crate::ship::shipper::ShipStatus>) {
        let _ = self.ship.set(status);
    }

    fn latest(&self) -> std::sync::MutexGuard<'_, Latest> {
        self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the last resync summary and reload report (from `events`)
    /// until `shutdown`.
    async fn keep_latest(
        self: Arc<Self>,
        mut summaries: tokio::sync::broadcast::Receiver<HostEvent>,
        shutdown: CancellationToken,
    ) {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = summaries.recv() => event,
            };
            let time_ms = crate::model::now_ms();
            match event {
                Ok(HostEvent::ResyncDone(summary)) => {
                    self.latest().resync = Some(Stamped {
                        time_ms,
                        value: *summary,
                    });
                }
                Ok(HostEvent::Reload(report)) => {
                    self.latest().reload = Some(Stamped {
                        time_ms,
                        value: *report,
                    });
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Connections served at once: more wait in the kernel's backlog, so that
/// clients of the admin port can never take the file descriptors the
/// engine link and the ledger need.
const MAX_CONNECTIONS: usize = 64;
/// A client that has not sent its request headers within this is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest one connection is served (requests and idle keep-alive).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request body read (`POST` bodies are not used).
const MAX_BODY: usize = 64 * 1024;
/// Backoff after a failed accept (out of file descriptors, say): from the
/// first to the second, doubling; failures are logged once per interval.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// What a listener serves.
#[derive(Debug, Clone)]
pub enum Surface {
    /// Every route; the control routes need the token.
    Admin(AdminToken),
    /// `/metrics`, `/healthz` and `/readyz` only (the `metrics` listener).
    Monitoring,
}

impl Surface {
    fn name(&self) -> &'static str {
        match self {
            Surface::Admin(_) => "admin",
            Surface::Monitoring => "metrics",
        }
    }
}

/// Starts the work every listener shares (the last resync and reload kept
/// for `/status`, the metrics' upkeep), until `shutdown`.
pub fn follow(
    admin: &Arc<Admin>,
    events: &Events,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let latest = admin
        .clone()
        .keep_latest(events.subscribe_summaries(), shutdown.clone());
    let upkeep = async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => crate::metrics::install().run_upkeep(),
            }
        }
    };
    tokio::spawn(async move {
        tokio::join!(latest, upkeep);
    })
}

/// Binds `addr` and serves `surface` until `shutdown`. Binding happens
/// before this returns, so a taken port is a start-up error, not a silent
/// absence.
pub async fn serve(
    addr: SocketAddr,
    surface: Surface,
    admin: Arc<Admin>,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let key = surface.name();
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on the {key} address {addr} (set `{key}` in the config)")
    })?;
    let bound = listener.local_addr()?;
    let served = Arc::new(surface.clone());
    let task = tokio::spawn(async move {
        // Every connection is owned here, ends at the stop, and is waited
        // for before this task ends.
        let connections = tokio_util::task::TaskTracker::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut backoff = ACCEPT_BACKOFF.0;
        let mut failures = crate::repeated::Repeated::default();
        loop {
            let slot = tokio::select! {
                _ = shutdown.cancelled() => break,
                slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            };
            let stream = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        backoff = ACCEPT_BACKOFF.0;
                        stream
                    }
                    Err(e) => {
                        // Out of file descriptors, most likely: waiting lets
                        // the rest of the host (the engine link) go on,
                        // where retrying at once would spin and log forever.
                        if let Some((since, _)) = failures.count() {
                            tracing::error!(error = %e, failures = since, listener = key, "admin endpoint: accept failed; backing off");
                        }
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                        continue;
                    }
                },
            };
            let admin = admin.clone();
            let served = served.clone();
            let stop = shutdown.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let admin = admin.clone();
                    let served = served.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(route(&admin, &served, request).await)
                    }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection) => {}
                    _ = stop.cancelled() => {}
                }
                drop(slot);
            });
        }
        connections.close();
        connections.wait().await;
    });
    match surface {
        Surface::Admin(_) => {
            tracing::info!(%bound, "admin endpoint listening");
            if !bound.ip().is_loopback() {
                tracing::warn!(%bound, "the admin endpoint listens beyond this machine: its control routes need the token, but it travels in clear HTTP; keep `admin` on loopback and give scrapers the `metrics` listener");
            }
        }
        Surface::Monitoring => tracing::info!(%bound, "metrics endpoint listening"),
    }
    Ok((bound, task))
}

type Reply = Response<Full<Bytes>>;

/// The routes that act on the host or show callers' numbers.
const CONTROL_ROUTES: [&str; 7] = [
    "/reload", "/reopen", "/legs", "/mixers", "/status", "/enforce", "/shadow",
];

/// A control request must carry the token; the monitoring listener serves
/// no control route at all.
fn refuse_unauthorized(
    request: &Request<Incoming>,
    path: &str,
    surface: &Surface,
) -> Option<Reply> {
    if !CONTROL_ROUTES.contains(&path) {
        return None;
    }
    let token = match surface {
        Surface::Monitoring => {
            return Some(error(
                StatusCode::NOT_FOUND,
                "this listener serves /metrics /healthz /readyz; the other routes are on the admin endpoint",
            ));
        }
        Surface::Admin(token) => token,
    };
    let given = request.headers().get(hyper::header::AUTHORIZATION);
    if given.is_some_and(|value| token.admits(value.as_bytes())) {
        return None;
    }
    let mut reply = error(
        StatusCode::UNAUTHORIZED,
        "this route needs the admin token (`Authorization: Bearer <token>`, the token in the host's `admin_token` file); `legsync status | legs | reload | reopen --config <the host's config>` send it",
    );
    reply.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Bearer"),
    );
    Some(reply)
}

/// A web page must not drive the host: a request to a control route that
/// carries an `Origin` (a browser's cross-site request) or names a `Host`
/// that is not an address (a DNS-rebinding page: its own name pointed at
/// this machine) is refused. `legsync`'s own commands, curl and Prometheus
/// send neither.
fn refuse_browsers(request: &Request<Incoming>, path: &str) -> Option<Reply> {
    if !CONTROL_ROUTES.contains(&path) {
        return None;
    }
    if request.headers().contains_key(hyper::header::ORIGIN) {
        return Some(error(
            StatusCode::FORBIDDEN,
            "a request with an Origin (from a web page) is refused",
        ));
    }
    let host = request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !host.is_empty() && !is_address(host) {
        return Some(error(
            StatusCode::FORBIDDEN,
            "the Host header must be this endpoint's address (an IP, or localhost)",
        ));
    }
    None
}

/// Whether a `Host` header names an address: an IP (v4, or v6 in
/// brackets) or `localhost`, with or without a port.
fn is_address(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !host.ends_with(']') && port.parse::<u16>().is_ok() => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

async fn route(admin: &Arc<Admin>, surface: &Surface, request: Request<Incoming>) -> Reply {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    if let Some(refusal) =
        refuse_browsers(&request, &path).or_else(|| refuse_unauthorized(&request, &path, surface))
    {
        return refusal;
    }
    match (request.method(), path.as_str()) {
        (&Method::GET, "/metrics") => metrics(admin),
        (&Method::GET, "/healthz") => healthz(admin).await,
        (&Method::GET, "/readyz") => readyz(admin),
        (&Method::GET, "/status") => json(StatusCode::OK, &status(admin)),
        (&Method::GET, "/legs") => legs(admin, &query).await,
        (&Method::GET, "/mixers") => mixers(admin, &query).await,
        (&Method::GET, "/enforce") => enforce(admin, None).await,
        (&Method::GET, "/shadow") => match admin.policy.shadow() {
            Some(shadow) => json(StatusCode::OK, &shadow.report()),
            None => error(
                StatusCode::NOT_FOUND,
                "no shadow plugin set: set policy.shadow_dir",
            ),
        },
        (&Method::POST, "/enforce") => match query_param(&query, "confirm") {
            Some(hash) => enforce(admin, Some(hash)).await,
            None => error(
                StatusCode::BAD_REQUEST,
                "POST /enforce needs ?confirm=HASH (the hash GET /enforce shows)",
            ),
        },
        (&Method::POST, "/reload" | "/reopen") => {
            // The body is not used; read it (bounded) so the connection
            // stays usable.
            let body = http_body_util::Limited::new(request.into_body(), MAX_BODY)
                .collect()
                .await;
            if body.is_err() {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the body of a POST is not used: send none",
                );
            }
            if path == "/reload" {
                reload(admin, query_param(&query, "accept")).await
            } else {
                reopen(admin).await
            }
        }
        (
            _,
            "/metrics" | "/healthz" | "/readyz" | "/status" | "/legs" | "/mixers" | "/reload"
            | "/reopen" | "/enforce" | "/shadow",
        ) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET /metrics /healthz /readyz /status /legs /mixers; POST /reload /reopen",
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "no such route; try /metrics /healthz /readyz /status /legs, or POST /reload",
        ),
    }
}

fn metrics(admin: &Admin) -> Reply {
    // The gauges are the host's status, read at each scrape: the
    // supervisor publishes it anyway, and keeps no second copy up to date.
    let status = admin.status.borrow().clone();
    metrics::gauge!(crate::metrics::LEGS).set(status.legs as f64);
    metrics::gauge!(crate::metrics::LINKS).set(status.links as f64);
    metrics::gauge!(crate::metrics::MIXERS).set(status.mixers as f64);
    metrics::gauge!(crate::metrics::JOINS).set(status.joins as f64);
    metrics::gauge!(crate::metrics::RECOVERED).set(status.recovered as f64);
    if let Some(epoch) = status.epoch {
        metrics::gauge!(crate::metrics::EPOCH).set(epoch as f64);
    }
    let state = status.link.map_or("connecting", LinkState::as_str);
    crate::metrics::one_hot(crate::metrics::LINK_STATE, "state", state, &LinkState::ALL);
    crate::metrics::one_hot(
        crate::metrics::ROLE,
        "role",
        status.role.as_str(),
        &Role::ALL,
    );
    let body = crate::metrics::install().render();
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    reply.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    reply
}

async fn healthz(admin: &Admin) -> Reply {
    if let Some((_, events)) = &admin.files {
        let (lost, last_ms) = events.audit_errors();
        let window = crate::events::AUDIT_LOG_EVERY.as_millis() as u64;
        if last_ms > 0 && crate::model::now_ms().saturating_sub(last_ms) < window {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({
                    "status": "audit-failing",
                    "detail": format!("the event log cannot be written ({lost} failed writes so far)"),
                }),
            );
        }
    }
    let (tx, rx) = oneshot::channel();
    let answered = admin.queries.send(AdminQuery::Ping(tx)).await.is_ok()
        && tokio::time::timeout(SUPERVISOR_WAIT, rx)
            .await
            .is_ok_and(|r| r.is_ok());
    if answered {
        json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({
                "status": "stuck",
                "detail": format!("the supervisor did not answer within {} s", SUPERVISOR_WAIT.as_secs()),
            }),
        )
    }
}

/// The readiness state: `active` (ready), or why not.
pub fn readiness(status: &HostStatus) -> &'static str {
    match (status.role, status.link) {
        (Role::Active, Some(LinkState::Connected)) => "active",
        (Role::Standby, _) => "standby",
        (_, Some(LinkState::Resyncing)) => "resyncing",
        (_, Some(LinkState::Purged)) => "purged",
        (_, Some(LinkState::Disconnected)) if status.legs > 0 || status.recovered > 0 => "in-grace",
        _ => "connecting",
    }
}

fn readyz(admin: &Admin) -> Reply {
    let status = admin.status.borrow().clone();
    let state = readiness(&status);
    let ready = state == "active";
    json(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &serde_json::json!({ "ready": ready, "state": state, "role": status.role.as_str() }),
    )
}

/// `/status`, also what `legsync status` prints.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StatusReport {
    pub name: String,
    pub version: String,
    pub started_ms: u64,
    pub state: String,
    pub role: String,
    pub link: String,
    pub epoch: Option<u64>,
    /// A string: a random 64-bit number, which jq and JavaScript would
    /// round as a JSON number.
    pub boot_id: Option<String>,
    pub legs: usize,
    pub links: usize,
    /// Conference mixers held and the legs joined to them.
    #[serde(default)]
    pub mixers: usize,
    #[serde(default)]
    pub joins: usize,
    pub resyncs: u64,
    pub recovered: usize,
    pub unknown_leg_events: u64,
    pub plugins: Vec<serde_json::Value>,
    /// The datasets the deciding set reads, with their versions.
    #[serde(default)]
    pub datasets: Vec<crate::policy::datasets::DatasetInfo>,
    pub last_resync: Option<serde_json::Value>,
    pub last_reload: Option<serde_json::Value>,
    /// Shipping to the fleet stream (with `[ship]`).
    #[serde(default)]
    pub ship: Option<crate::ship::shipper::ShipStatus>,
}

fn status(admin: &Admin) -> StatusReport {
    let status = admin.status.borrow().clone();
    let latest = admin.latest().clone();
    let plugins = admin
        .policy
        .current()
        .plugins_info()
        .into_iter()
        .filter_map(|p| serde_json::to_value(p).ok())
        .collect();
    let datasets = admin.policy.current().datasets();
    StatusReport {
        name: admin.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_ms: admin.started_ms,
        state: readiness(&status).to_string(),
        role: status.role.as_str().to_string(),
        link: status
            .link
            .map_or("connecting", LinkState::as_str)
            .to_string(),
        epoch: status.epoch,
        boot_id: status.boot_id.map(|id| id.to_string()),
        legs: status.legs,
        datasets,
        links: status.links,
        mixers: status.mixers,
        joins: status.joins,
        resyncs: status.resyncs,
        recovered: status.recovered,
        unknown_leg_events: status.unknown_leg_events,
        plugins,
        last_resync: latest.resync.and_then(|r| serde_json::to_value(r).ok()),
        last_reload: latest.reload.and_then(|r| serde_json::to_value(r).ok()),
        ship: admin.ship.get().map(|s| s.borrow().clone()),
    }
}

async fn legs(admin: &Admin, query: &str) -> Reply {
    let paging = match Paging::parse(query, "leg", true) {
        Ok(paging) => paging,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    let (reply, answer) = oneshot::channel();
    let asked = AdminQuery::Legs {
        nap: paging.nap,
        after: paging.after,
        limit: paging.limit,
        reply,
    };
    ask_supervisor(admin, asked, answer).await
}

async fn mixers(admin: &Admin, query: &str) -> Reply {
    let paging = match Paging::parse(query, "mixer", false) {
        Ok(paging) => paging,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    let (reply, answer) = oneshot::channel();
    let asked = AdminQuery::Mixers {
        after: paging.after,
        limit: paging.limit,
        reply,
    };
    ask_supervisor(admin, asked, answer).await
}

/// The parameters of a paged route (`/legs`, `/mixers`).
struct Paging {
    after: u64,
    limit: usize,
    /// `/legs` only.
    nap: Option<String>,
}

impl Paging {
    /// `after` (an `item` id), `limit` and, with `nap`, the NAP filter; or
    /// what is wrong with a bad or unknown parameter.
    fn parse(query: &str, item: &str, nap: bool) -> Result<Paging, String> {
        let mut paging = Paging {
            after: 0,
            limit: 100,
            nap: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match key {
                "nap" if nap => paging.nap = Some(value),
                "after" => match value.parse() {
                    Ok(v) => paging.after = v,
                    Err(_) => return Err(format!("`after` must be a {item} id")),
                },
                "limit" => match value.parse::<usize>() {
                    Ok(v) if (1..=MAX_PAGE).contains(&v) => paging.limit = v,
                    _ => return Err(format!("`limit` must be 1 to {MAX_PAGE}")),
                },
                other => {
                    let known = if nap {
                        "nap, after, limit"
                    } else {
                        "after, limit"
                    };
                    return Err(format!("unknown parameter `{other}` ({known})"));
                }
            }
        }
        Ok(paging)
    }
}

/// Sends the supervisor `asked` and replies with its answer as JSON, or
/// says why there is none.
async fn ask_supervisor<T: serde::Serialize>(
    admin: &Admin,
    asked: AdminQuery,
    answer: oneshot::Receiver<T>,
) -> Reply {
    if admin.queries.send(asked).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the host is stopping");
    }
    match tokio::time::timeout(SUPERVISOR_WAIT, answer).await {
        Ok(Ok(page)) => json(StatusCode::OK, &page),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the host is busy (a resync holds the table); try again",
        ),
    }
}

async fn reopen(admin: &Admin) -> Reply {
    let Some((cdr, events)) = &admin.files else {
        return error(StatusCode::CONFLICT, "this host has no files to reopen");
    };
    match reopen_files(cdr, events).await {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({ "reopened": true })),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
    }
}

/// Reopens the ledger (checkpoint first) and the event log after a
/// rotation: `POST /reopen`, `legsync reopen`, SIGUSR1.
pub async fn reopen_files(cdr: &crate::cdr::CdrWriter, events: &Events) -> anyhow::Result<()> {
    cdr.reopen().durable().await?;
    events.reopen().await?;
    tracing::info!("files reopened after a rotation");
    Ok(())
}

async fn reload(admin: &Admin, accept: Option<String>) -> Reply {
    let Some(reloader) = admin.reloader.clone() else {
        return error(
            StatusCode::CONFLICT,
            "this host has no reloadable plugin set",
        );
    };
    let attempt = move || match accept {
        Some(hash) => reloader.accept(&hash),
        None => reloader.reload("api", false),
    };
    match tokio::task::spawn_blocking(attempt).await {
        Ok(report) => {
            let code = match report.outcome {
                ReloadOutcome::Applied => StatusCode::OK,
                ReloadOutcome::HeldBack => StatusCode::CONFLICT,
                ReloadOutcome::Rejected | ReloadOutcome::RejectedWillRetry => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
            };
            json(code, &report)
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the reload task failed"),
    }
}

/// What `/enforce` answers: the working set, its blast radius on the calls
/// held, and (once confirmed) what was done.
#[derive(Debug, Serialize)]
struct EnforceReport {
    set_hash: String,
    plugins: Vec<String>,
    blast_radius: crate::policy::blast::BlastRadius,
    #[serde(skip_serializing_if = "Option::is_none")]
    enforced: Option<crate::events::Enforced>,
}

/// How long a confirmed enforcement waits for the supervisor to end the
/// calls (it does between two batches of live work).
const ENFORCE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `GET /enforce` (the blast radius of the working set on the calls held)
/// and `POST /enforce?confirm=HASH` (the same, then those calls refused).
async fn enforce(admin: &Admin, confirm: Option<String>) -> Reply {
    let decider = admin.policy.current();
    let plugins = decider.describe();
    let crate::policy::Decider::Chain(chain) = decider else {
        return error(
            StatusCode::CONFLICT,
            "this host decides with native rules: nothing to enforce",
        );
    };
    let queries = admin.queries.clone();
    // On a throwaway copy of the working set, off the async threads: the
    // live set's state and its decisions are not touched.
    let preview = tokio::task::spawn_blocking(move || {
        let set_hash = crate::reload::set_hash(&chain);
        let fork = chain.fork().map_err(|e| format!("{e}"))?;
        let held = crate::policy::held::HeldLegs::snapshot(
            &crate::supervisor::queries::HeldFromTable::new(queries),
        )
        .map_err(|e| e.to_string())?;
        Ok::<_, String>((set_hash, crate::policy::blast::blast_radius(&fork, &held)))
    })
    .await;
    let (set_hash, radius) = match preview {
        Ok(Ok(preview)) => preview,
        Ok(Err(why)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("cannot compute the blast radius: {why}"),
            );
        }
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the blast radius task failed",
            );
        }
    };
    let mut report = EnforceReport {
        set_hash,
        plugins,
        blast_radius: radius,
        enforced: None,
    };
    let Some(confirmed) = confirm else {
        return json(StatusCode::OK, &report);
    };
    if confirmed != report.set_hash {
        return error(
            StatusCode::CONFLICT,
            &format!(
                "the working set is {}, not the set {confirmed} that was confirmed: nothing was enforced",
                report.set_hash
            ),
        );
    }
    let (reply, done) = tokio::sync::oneshot::channel();
    let query = AdminQuery::Enforce {
        set: (report.set_hash.clone(), report.plugins.clone()),
        legs: report.blast_radius.refused.clone(),
        reply,
    };
    if admin.queries.send(query).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the host is stopping");
    }
    match tokio::time::timeout(ENFORCE_WAIT, done).await {
        Ok(Ok(Ok(enforced))) => {
            report.enforced = Some(enforced);
            json(StatusCode::OK, &report)
        }
        Ok(Ok(Err(refused))) => error(StatusCode::CONFLICT, &refused.to_string()),
        Ok(Err(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "the host is stopping"),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the host did not take the enforcement within 60 s (it may still apply it); see the event log",
        ),
    }
}

fn json(code: StatusCode, body: &impl Serialize) -> Reply {
    let mut text = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    text.push(b'\n');
    let mut reply = Response::new(Full::new(Bytes::from(text)));
    *reply.status_mut() = code;
    reply.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    reply
}

fn error(code: StatusCode, message: &str) -> Reply {
    json(code, &serde_json::json!({ "error": message }))
}

/// `%XX` and `+` in a query value.
/// The first value of `key` in a query string, decoded.
fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == key).then(|| percent_decode(value))
    })
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let digit = |b: u8| (b as char).to_digit(16);
                match (digit(bytes[i + 1]), digit(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_header_must_be_an_address() {
        for good in [
            "127.0.0.1:9464",
            "localhost:9464",
            "[::1]:9464",
            "10.0.0.5",
            "[::1]",
        ] {
            assert!(is_address(good), "{good}");
        }
        for bad in ["evil.example:9464", "evil.example", "127.0.0.1.nip.io:9464"] {
            assert!(!is_address(bad), "{bad}");
        }
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(percent_decode("SIP_%C5%81%C3%93D%C5%B9"), "SIP_ŁÓDŹ");
        assert_eq!(percent_decode("a+b%20c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn readiness_names_the_state() {
        let mut status = HostStatus::default();
        assert_eq!(readiness(&status), "connecting");
        status.role = Role::Standby;
        assert_eq!(readiness(&status), "standby");
        status.role = Role::Active;
        status.link = Some(LinkState::Resyncing);
        assert_eq!(readiness(&status), "resyncing");
        status.link = Some(LinkState::Connected);
        assert_eq!(readiness(&status), "active");
        status.role = Role::Connecting;
        status.link = Some(LinkState::Disconnected);
        status.legs = 3;
        assert_eq!(readiness(&status), "in-grace");
        status.link = Some(LinkState::Purged);
        assert_eq!(readiness(&status), "purged");
    }
}
