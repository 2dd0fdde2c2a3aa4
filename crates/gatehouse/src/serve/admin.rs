//! The admin listener: the status page at `/` (for browsers; the list of
//! endpoints for everyone else), `/metrics` (Prometheus text), `/status`
//! (JSON, what `gatehouse status` prints), `/status/history` (the page's
//! charts as JSON), `/backups` (repositories, size and last write) and
//! `POST /reload` (what `gatehouse reload` calls, answering with the same
//! errors `check` prints). Keep it on loopback or a management network: it
//! can reload the farm.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gatehouse_health::Metrics;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::page::{self, BackendRow, LogTail, Overview, ServiceCard};
use super::{Refusal, ReloadRequest, SharedView};
use crate::logs_cmd::{Request, render};

#[derive(Clone)]
struct Admin {
    view: SharedView,
    metrics: Arc<Metrics>,
    reload: mpsc::Sender<ReloadRequest>,
    rates: Arc<Mutex<Rates>>,
    history: Arc<Mutex<History>>,
    repos: Arc<RepoCache>,
}

/// Bind the listener and serve it until the task is aborted.
pub async fn start(
    addr: SocketAddr,
    view: SharedView,
    metrics: Arc<Metrics>,
    reload: mpsc::Sender<ReloadRequest>,
) -> anyhow::Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("admin: cannot listen on {addr}"))?;
    let rates = Arc::new(Mutex::new(Rates::default()));
    let state = Admin {
        view,
        metrics,
        reload,
        rates,
        history: Arc::default(),
        repos: Arc::default(),
    };
    let sampler = tokio::spawn(sample(state.clone()));
    let app = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
        .route("/status/history", get(history))
        .route("/backups", get(backups))
        .route("/reload", post(reload_now))
        .route("/logs", get(super::log_api::logs))
        .route("/logs/stats", get(super::log_api::stats))
        .with_state(state);
    Ok(tokio::spawn(async move {
        // Aborting this task (a reload that moves or removes the admin
        // listener) drops the guard, which stops the sampler with it.
        let _sampler = AbortOnDrop(sampler);
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("admin listener failed: {e}");
        }
    }))
}

impl axum::extract::FromRef<Admin> for SharedView {
    fn from_ref(admin: &Admin) -> SharedView {
        admin.view.clone()
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const INDEX: &str = "gatehouse admin\n\n  GET  /         the status page (in a browser: Accept: text/html)\n  \
     GET  /metrics  Prometheus metrics\n  GET  /status   services and backends as JSON\n  \
     GET  /status/history  requests per second and mean latency per service, the last ten minutes\n  \
     GET  /backups  the backup server's repositories: size and last write\n  \
     POST /reload   re-read the config file (422: the file is invalid, 500: applying it failed)\n  \
     GET  /logs     the log server's lines: ?host=web1&since=1h&grep=REGEX&last=N&format=json&follow=1\n  \
     GET  /logs/stats  per host what is kept, per sender what was received and shed\n";

/// The page for browsers, the list of endpoints for curl and scripts.
async fn index(State(admin): State<Admin>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if !wants_html {
        return ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], INDEX).into_response();
    }
    let (mut grep, mut host) = (String::new(), String::new());
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "grep" => grep = value.into_owned(),
            "host" => host = value.into_owned(),
            _ => {}
        }
    }
    let overview = overview(&admin, grep, host).await;
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page::render(&overview),
    )
        .into_response()
}

/// What the page shows, read from the running farm, the log store and the
/// backup directory.
async fn overview(admin: &Admin, grep: String, host: String) -> Overview {
    let now = SystemTime::now();
    let (config, uptime, reloads, services, log_dir, backup_dir) = {
        let view = admin.view.read().unwrap_or_else(|e| e.into_inner());
        let rates = admin.rates.lock().unwrap_or_else(|e| e.into_inner());
        let history = admin.history.lock().unwrap_or_else(|e| e.into_inner());
        let services = view
            .services
            .iter()
            .map(|s| {
                let name = s.service.name.value.clone();
                let backends = backend_rows(s, &rates);
                let (rps, latency_ms) = history.series(&name);
                ServiceCard {
                    mode: s.service.mode.as_str().to_string(),
                    listen: s.service.listen.value.to_string(),
                    balance: s.service.balance.as_str().to_string(),
                    name,
                    backends,
                    rps,
                    latency_ms,
                }
            })
            .collect();
        (
            view.config.display().to_string(),
            now.duration_since(view.started).unwrap_or_default(),
            view.reloads,
            services,
            view.logs.clone(),
            view.backups.clone(),
        )
    };
    let logs = match log_dir {
        Some(dir) => Some(log_tail(dir, grep, host).await),
        None => None,
    };
    let backups = match backup_dir {
        Some(dir) => Some(admin.repos.get(dir, backup_changes(admin)).await),
        None => None,
    };
    Overview {
        version: env!("CARGO_PKG_VERSION"),
        config,
        uptime,
        reloads,
        now,
        services,
        step: HISTORY_STEP,
        logs,
        backups,
    }
}

/// The last lines of the store (matching the search, when there is one).
async fn log_tail(dir: PathBuf, grep: String, host: String) -> LogTail {
    let request = Request {
        hosts: if host.is_empty() {
            Vec::new()
        } else {
            vec![host.clone()]
        },
        grep: (!grep.is_empty()).then(|| grep.clone()),
        last: Some(page::LOG_LINES),
        ..Request::default()
    };
    let found = tokio::task::spawn_blocking(move || {
        let query = request
            .query(SystemTime::now())
            .map_err(|e| e.replacen("--grep ", "", 1))?;
        let hosts = gatehouse_logd::query::host_names(&dir).unwrap_or_default();
        let mut lines = Vec::new();
        let mut text = String::new();
        let searched = gatehouse_logd::query::search(&dir, &query, |line| {
            text.clear();
            render(line, false, &mut text);
            let rest = text
                .strip_prefix(&*line.host)
                .and_then(|t| t.strip_prefix(" | "))
                .unwrap_or(&text);
            lines.push((line.host.to_string(), rest.trim_end().to_string()));
            ControlFlow::Continue(())
        });
        match searched {
            Ok(_) => Ok((hosts, lines)),
            // Nothing received yet: no store directory.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((hosts, Vec::new())),
            Err(e) => Err(format!("reading the log store {}: {e}", dir.display())),
        }
    })
    .await
    .unwrap_or_else(|e| Err(format!("log query failed: {e}")));
    let (hosts, lines) = match found {
        Ok((hosts, lines)) => (hosts, Ok(lines)),
        Err(e) => (Vec::new(), Err(e)),
    };
    LogTail {
        grep,
        host,
        hosts,
        lines,
    }
}

/// The backup directory's repositories, walked again only when something
/// may have changed: objects written or deleted through the server, or a
/// directory made or changed in the top two levels (a repository created,
/// its config written), or a minute gone by (changes made by hand). A walk
/// of a big repository is not free, and the page asks every two seconds.
#[derive(Default)]
struct RepoCache {
    last: Mutex<Option<Measured>>,
}

type RepoList = Arc<Result<Vec<gatehouse_backupd::RepoInfo>, String>>;

struct Measured {
    at: Instant,
    dir: PathBuf,
    fingerprint: (u64, Vec<Option<SystemTime>>),
    repos: RepoList,
}

const REPO_CACHE: Duration = Duration::from_secs(60);

impl RepoCache {
    async fn get(self: &Arc<Self>, dir: PathBuf, changes: u64) -> RepoList {
        let cache = self.clone();
        tokio::task::spawn_blocking(move || {
            let fingerprint = (changes, top_mtimes(&dir));
            {
                let last = cache.last.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(m) = &*last
                    && m.dir == dir
                    && m.fingerprint == fingerprint
                    && m.at.elapsed() < REPO_CACHE
                {
                    return m.repos.clone();
                }
            }
            let repos = Arc::new(match gatehouse_backupd::repositories(&dir) {
                Ok(repos) => Ok(repos),
                // Nothing backed up yet.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(format!("reading {}: {e}", dir.display())),
            });
            *cache.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Measured {
                at: Instant::now(),
                dir,
                fingerprint,
                repos: repos.clone(),
            });
            repos
        })
        .await
        .unwrap_or_else(|e| Arc::new(Err(format!("measuring repositories failed: {e}"))))
    }
}

/// Modification times of `dir` and the directories one and two levels
/// below it (users and their repositories), in a fixed order.
fn top_mtimes(dir: &std::path::Path) -> Vec<Option<SystemTime>> {
    let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let subdirs = |p: &std::path::Path| -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        dirs
    };
    let mut times = vec![mtime(dir)];
    for child in subdirs(dir) {
        times.push(mtime(&child));
        times.extend(subdirs(&child).iter().map(|g| mtime(g)));
    }
    times
}

/// What changes the backup server made that a walk would see.
fn backup_changes(admin: &Admin) -> u64 {
    let view = admin.view.read().unwrap_or_else(|e| e.into_inner());
    view.backup_metrics
        .snapshot()
        .iter()
        .map(|r| r.objects_written + r.objects_deleted)
        .sum()
}

async fn backups(State(admin): State<Admin>) -> Response {
    let dir = admin
        .view
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .backups
        .clone();
    let Some(dir) = dir else {
        return (
            StatusCode::NOT_FOUND,
            "this gatehouse has no [backup_server]; add one to the config and reload\n",
        )
            .into_response();
    };
    match &*admin.repos.get(dir, backup_changes(&admin)).await {
        Ok(repos) => {
            let list: Vec<Value> = repos
                .iter()
                .map(|r| {
                    json!({
                        "repo": r.repo,
                        "bytes": r.bytes,
                        "last_write": r.last_write.map(unix),
                    })
                })
                .collect();
            (
                [(header::CONTENT_TYPE, "application/json")],
                json!({ "repositories": list }).to_string(),
            )
                .into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn history(State(admin): State<Admin>) -> Response {
    let names: Vec<String> = {
        let view = admin.view.read().unwrap_or_else(|e| e.into_inner());
        view.services
            .iter()
            .map(|s| s.service.name.value.clone())
            .collect()
    };
    let history = admin.history.lock().unwrap_or_else(|e| e.into_inner());
    let services: Vec<Value> = names
        .iter()
        .map(|name| {
            let (rps, latency_ms) = history.series(name);
            json!({ "name": name, "requests_per_second": rps, "mean_latency_ms": latency_ms })
        })
        .collect();
    let body = json!({
        "step_seconds": HISTORY_STEP.as_secs(),
        "points": HISTORY_POINTS,
        "services": services,
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn metrics_text(State(admin): State<Admin>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        admin.metrics.render(),
    )
        .into_response()
}

async fn reload_now(State(admin): State<Admin>) -> Response {
    let (reply, answer) = oneshot::channel();
    if admin.reload.send(reply).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "gatehouse is stopping\n").into_response();
    }
    match answer.await {
        Ok(Ok(text)) => (StatusCode::OK, text).into_response(),
        Ok(Err(Refusal::Invalid(text))) => (StatusCode::UNPROCESSABLE_ENTITY, text).into_response(),
        Ok(Err(Refusal::Failed(text))) => (StatusCode::INTERNAL_SERVER_ERROR, text).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "gatehouse is stopping\n").into_response(),
    }
}

async fn status(State(admin): State<Admin>) -> Response {
    let body = status_json(&admin);
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Every backend of a service (its own pool, then each route's) as it is
/// now: what `/status` and the page both show.
fn backend_rows(s: &super::ServiceView, rates: &Rates) -> Vec<BackendRow> {
    s.pools
        .iter()
        .flat_map(|pool| pool.backends().iter().map(move |b| (pool, b)))
        .map(|(pool, b)| {
            let snap = b.snapshot();
            let rate = rates.rate(&(pool.service.clone(), snap.label.clone()));
            BackendRow {
                name: snap.label,
                pool: pool.service.clone(),
                addr: snap.addr.to_string(),
                weight: snap.weight,
                state: snap.state.as_str(),
                since: snap.since,
                last_failure: snap.last_failure,
                connections: snap.connections,
                requests: snap.responses,
                rate,
            }
        })
        .collect()
}

fn status_json(admin: &Admin) -> Value {
    let view = admin.view.read().unwrap_or_else(|e| e.into_inner());
    let rates = admin.rates.lock().unwrap_or_else(|e| e.into_inner());
    let now = SystemTime::now();
    let services: Vec<Value> = view
        .services
        .iter()
        .map(|s| {
            let backends: Vec<Value> = backend_rows(s, &rates)
                .into_iter()
                .map(|b| {
                    json!({
                        "name": b.name,
                        "pool": b.pool,
                        "addr": b.addr,
                        "weight": b.weight,
                        "state": b.state,
                        "since": unix(b.since),
                        "for_seconds": now.duration_since(b.since).map_or(0, |d| d.as_secs()),
                        "last_failure": b.last_failure,
                        "connections": b.connections,
                        "requests": b.requests,
                        "rate": b.rate,
                    })
                })
                .collect();
            json!({
                "name": s.service.name.value,
                "mode": s.service.mode.as_str(),
                "listen": s.service.listen.value.to_string(),
                "balance": s.service.balance.as_str(),
                "fail_open": s.pools.iter().any(|p| p.fail_open()),
                "tls": s.service.tls.is_some(),
                "certificates": s.service.tls.iter().flat_map(|t| &t.certs).map(|c| json!({
                    "names": c.names,
                    "cert": c.cert_path.display().to_string(),
                    "not_after": unix(c.not_after),
                    "expires_in_seconds": c.not_after.duration_since(now).map_or(0, |d| d.as_secs()),
                })).collect::<Vec<_>>(),
                "routes": s.service.routes.iter().map(|r| json!({
                    "pool": r.pool_name,
                    "hosts": r.hosts.iter().map(|h| h.value.clone()).collect::<Vec<_>>(),
                    "path": r.path.as_ref().map(|p| p.value.clone()),
                })).collect::<Vec<_>>(),
                "connections": s.server.as_ref().map(|server| server.upgrade().map_or(0, |s| s.connections())),
                "map_generation": (s.service.mode == gatehouse_config::Mode::Nat)
                    .then(|| s.pools.first().map_or(0, |p| p.stats.map_generation.get())),
                "backends": backends,
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config": view.config.display().to_string(),
        "started": unix(view.started),
        "uptime_seconds": now.duration_since(view.started).map_or(0, |d| d.as_secs()),
        "reloads": view.reloads,
        "services": services,
    })
}

/// Requests per second per backend over the last ten seconds, from a
/// once-a-second sample of the response counters.
#[derive(Default)]
struct Rates {
    samples: std::collections::HashMap<(String, String), std::collections::VecDeque<(Instant, u64)>>,
}

const RATE_WINDOW: usize = 11;

impl Rates {
    fn record(&mut self, key: (String, String), now: Instant, total: u64) {
        let series = self.samples.entry(key).or_default();
        series.push_back((now, total));
        while series.len() > RATE_WINDOW {
            series.pop_front();
        }
    }

    fn rate(&self, key: &(String, String)) -> f64 {
        let Some(series) = self.samples.get(key) else {
            return 0.0;
        };
        match (series.front(), series.back()) {
            (Some(&(t0, n0)), Some(&(t1, n1))) if t1 > t0 => {
                n1.saturating_sub(n0) as f64 / (t1 - t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

async fn sample(admin: Admin) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        let now = Instant::now();
        if ticks.is_multiple_of(HISTORY_STEP.as_secs()) {
            record_history(&admin, now);
        }
        ticks += 1;
        let totals: Vec<((String, String), u64)> = {
            let view = admin.view.read().unwrap_or_else(|e| e.into_inner());
            view.services
                .iter()
                .flat_map(|s| &s.pools)
                .flat_map(|pool| {
                    pool.backends()
                        .iter()
                        .map(|b| ((pool.service.clone(), b.label.clone()), b.stats.total_responses()))
                })
                .collect()
        };
        let mut rates = admin.rates.lock().unwrap_or_else(|e| e.into_inner());
        let live: std::collections::HashSet<&(String, String)> = totals.iter().map(|(k, _)| k).collect();
        rates.samples.retain(|k, _| live.contains(k));
        for (key, total) in totals {
            rates.record(key, now, total);
        }
    }
}

/// Time between two points of the page's charts, and how many there are:
/// ten minutes.
const HISTORY_STEP: Duration = Duration::from_secs(5);
const HISTORY_POINTS: usize = 120;

/// Per service, its counters every `HISTORY_STEP`: requests answered and
/// the latency histogram's sum and count (the mean of a step is the
/// difference of two samples).
#[derive(Default)]
struct History {
    services: HashMap<String, VecDeque<Totals>>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    at: Option<Instant>,
    requests: u64,
    latency_sum: f64,
    latency_count: u64,
}

impl History {
    fn record(&mut self, service: &str, totals: Totals) {
        let series = self.services.entry(service.to_string()).or_default();
        series.push_back(totals);
        while series.len() > HISTORY_POINTS + 1 {
            series.pop_front();
        }
    }

    /// Requests per second and mean latency in milliseconds per step,
    /// oldest first, always `HISTORY_POINTS` long: None before the first
    /// samples (and no latency for a step that answered nothing).
    fn series(&self, service: &str) -> (Vec<Option<f64>>, Vec<Option<f64>>) {
        let mut rps = vec![None; HISTORY_POINTS];
        let mut latency = vec![None; HISTORY_POINTS];
        let Some(samples) = self.services.get(service) else {
            return (rps, latency);
        };
        let steps: Vec<(f64, Option<f64>)> = samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|(a, b)| {
                let secs = match (a.at, b.at) {
                    (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
                    _ => HISTORY_STEP.as_secs_f64(),
                };
                let requests = b.requests.saturating_sub(a.requests) as f64 / secs;
                let count = b.latency_count.saturating_sub(a.latency_count);
                let mean =
                    (count > 0).then(|| (b.latency_sum - a.latency_sum).max(0.0) / count as f64 * 1000.0);
                (requests, mean)
            })
            .collect();
        let offset = HISTORY_POINTS - steps.len().min(HISTORY_POINTS);
        for (i, (r, l)) in steps.into_iter().rev().take(HISTORY_POINTS).rev().enumerate() {
            rps[offset + i] = Some(r);
            latency[offset + i] = l;
        }
        (rps, latency)
    }
}

fn record_history(admin: &Admin, now: Instant) {
    let totals: Vec<(String, Totals)> = {
        let view = admin.view.read().unwrap_or_else(|e| e.into_inner());
        view.services
            .iter()
            .map(|s| {
                let mut t = Totals {
                    at: Some(now),
                    ..Totals::default()
                };
                for b in s.pools.iter().flat_map(|p| p.backends()) {
                    t.requests += b.stats.total_responses();
                    t.latency_sum += b.stats.latency_sum.get();
                    t.latency_count += b.stats.latency_count.get();
                }
                (s.service.name.value.clone(), t)
            })
            .collect()
    };
    let mut history = admin.history.lock().unwrap_or_else(|e| e.into_inner());
    history
        .services
        .retain(|name, _| totals.iter().any(|(n, _)| n == name));
    for (name, t) in totals {
        history.record(&name, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_ten_minutes_of_steps_newest_last() {
        let mut h = History::default();
        let t0 = Instant::now();
        assert_eq!(h.series("web").0, vec![None; HISTORY_POINTS]);
        for i in 0..3u64 {
            h.record(
                "web",
                Totals {
                    at: Some(t0 + HISTORY_STEP * i as u32),
                    requests: i * 50,
                    latency_sum: i as f64 * 0.1,
                    latency_count: i * 50,
                },
            );
        }
        let (rps, latency) = h.series("web");
        assert_eq!(rps.len(), HISTORY_POINTS);
        assert_eq!(rps[HISTORY_POINTS - 1], Some(10.0));
        assert_eq!(rps[HISTORY_POINTS - 2], Some(10.0));
        assert_eq!(rps[HISTORY_POINTS - 3], None);
        let mean = latency[HISTORY_POINTS - 1].unwrap_or_default();
        assert!(
            (mean - 2.0).abs() < 1e-9,
            "0.1 s over 50 requests is 2 ms, not {mean}"
        );
        for i in 3..500u64 {
            h.record(
                "web",
                Totals {
                    at: Some(t0 + HISTORY_STEP * i as u32),
                    requests: i * 50,
                    ..Totals::default()
                },
            );
        }
        let (rps, latency) = h.series("web");
        assert!(rps.iter().all(|r| *r == Some(10.0)));
        assert!(
            latency.iter().all(Option::is_none),
            "no latency where nothing was measured"
        );
    }

    #[test]
    fn rate_is_the_slope_over_the_window() {
        let mut rates = Rates::default();
        let key = ("web".to_owned(), "web1".to_owned());
        let t0 = Instant::now();
        assert_eq!(rates.rate(&key), 0.0);
        for i in 0..20u64 {
            rates.record(key.clone(), t0 + Duration::from_secs(i), i * 50);
        }
        assert!((rates.rate(&key) - 50.0).abs() < 1e-9);
        assert_eq!(rates.samples[&key].len(), RATE_WINDOW);
    }
}
