//! The admin listener: `/metrics` (Prometheus text), `/status` (JSON, what
//! `gatehouse status` prints) and `POST /reload` (what `gatehouse reload`
//! calls, answering with the same errors `check` prints). Keep it on
//! loopback or a management network: it can reload the farm.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gatehouse_health::Metrics;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{Refusal, ReloadRequest, SharedView};

#[derive(Clone)]
struct Admin {
    view: SharedView,
    metrics: Arc<Metrics>,
    reload: mpsc::Sender<ReloadRequest>,
    rates: Arc<Mutex<Rates>>,
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
        rates: rates.clone(),
    };
    let sampler = tokio::spawn(sample(state.clone()));
    let app = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
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

async fn index() -> &'static str {
    "gatehouse admin\n\n  GET  /metrics  Prometheus metrics\n  GET  /status   services and backends as JSON\n  \
     POST /reload   re-read the config file (422: the file is invalid, 500: applying it failed)\n  \
     GET  /logs     the log server's lines: ?host=web1&since=1h&grep=REGEX&last=N&format=json&follow=1\n  \
     GET  /logs/stats  per host what is kept, per sender what was received and shed\n"
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

fn status_json(admin: &Admin) -> Value {
    let view = admin.view.read().unwrap_or_else(|e| e.into_inner());
    let rates = admin.rates.lock().unwrap_or_else(|e| e.into_inner());
    let now = SystemTime::now();
    let services: Vec<Value> = view
        .services
        .iter()
        .map(|s| {
            let backends: Vec<Value> = s
                .pools
                .iter()
                .flat_map(|pool| pool.backends().iter().map(move |b| (pool, b)))
                .map(|(pool, b)| {
                    let snap = b.snapshot();
                    let key = (pool.service.clone(), snap.label.clone());
                    json!({
                        "name": snap.label,
                        "pool": pool.service,
                        "addr": snap.addr.to_string(),
                        "weight": snap.weight,
                        "state": snap.state.as_str(),
                        "since": unix(snap.since),
                        "for_seconds": now.duration_since(snap.since).map_or(0, |d| d.as_secs()),
                        "last_failure": snap.last_failure,
                        "connections": snap.connections,
                        "requests": snap.responses,
                        "rate": rates.rate(&key),
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
    loop {
        tick.tick().await;
        let now = Instant::now();
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

#[cfg(test)]
mod tests {
    use super::*;

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
