//! The userspace data plane: services with `mode = "http"` or `mode = "tcp"`.
//!
//! One [`Server`] per service: a listener, its client connections, and the
//! connections to the service's backends. The path of a request, top to
//! bottom:
//!
//! ```text
//! listener   bind, accept (max_connections), register for drain/cut;
//!            proxy_protocol from trusted upstreams, then the TLS handshake (settings: certificates by SNI)
//!  ├─ http     hyper HTTP/1.1, or HTTP/2 by ALPN, on the client stream (stream: plain or TLS;
//!  │           client_io: header/idle deadlines)
//!  │   └─ forward   per request: router (Host, path: which target), headers, balance,
//!  │        │       upstream (pooled HTTP/1.1 or shared HTTP/2 backend connections, TLS, PROXY out),
//!  │        │       retries, errors (404, 421, 502, 503, 504)
//!  │        └─ body      streaming both ways; on the end: reuse, gauges, access_log
//!  │        └─ tunnel    after a 101 (WebSocket)
//!  └─ tcp      balance, connect with retries, tunnel
//! redirect   the plain listener of redirect_http: 308 to https
//! ```
//!
//! A service has one target (backends with a [`Pool`] each) of its own and
//! one per route; `Server::start` takes their pools in `Service::targets`
//! order (`Pool::for_service`).
//!
//! Health is not ours: the caller runs the pools' active checks; we read
//! `Backend::is_up` when balancing and report what traffic shows (connect
//! failures, timeouts, 5xx) back to the [`Pool`].

mod access_log;
mod balance;
mod body;
mod client_io;
mod deadline;
mod forward;
mod headers;
mod http;
mod listener;
mod proxy_protocol;
mod redirect;
mod router;
mod settings;
mod stream;
mod tcp;
mod tunnel;
mod upstream;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_config::{Mode, Service};
use gatehouse_health::{Metrics, Pool};
use tokio::task::JoinHandle;

pub use crate::access_log::LogSink;
pub use crate::access_log::apache_time_text as apache_time;
pub use crate::redirect::Redirect;

use crate::listener::Shared;
use crate::settings::Settings;

/// One service's listener and its connections.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    local: SocketAddr,
    accept: JoinHandle<()>,
    reaper: JoinHandle<()>,
    redirect: Mutex<Option<redirect::Running>>,
}

impl Server {
    /// Bind the service's listener (`service.bind_addr()`: for a port-only
    /// listen that is `[::]:PORT`, dual-stack; if IPv6 is unavailable it
    /// falls back to `0.0.0.0:PORT`) with SO_REUSEADDR, and its
    /// `redirect_http` listener if any, and start accepting on the current
    /// tokio runtime. `pools` are the service's (`Pool::for_service`). Errors
    /// name the address ("cannot listen on 127.0.0.1:8080: Address already
    /// in use"). A nat service is refused.
    pub async fn start(service: &Service, pools: Vec<Arc<Pool>>, metrics: &Metrics) -> io::Result<Server> {
        if service.mode == Mode::Nat {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "service {} is mode nat: the kernel serves it, not the proxy",
                    service.name.value
                ),
            ));
        }
        let log = match &service.proxy.access_log {
            Some(target) => Some(LogSink::start(target, &service.name)?),
            None => None,
        };
        let settings = Settings::new(service, pools, metrics, 1, None, log.clone());
        let backlog = settings.max_connections.clamp(1024, 65_535);
        let listener = listener::bind(service.bind_addr(), backlog)?;
        let redirect = Redirect::bind(service)?;
        let local = listener.local_addr()?;
        let redirect = match redirect {
            Some(r) => Some(redirect::Running::start(r, local.port())?),
            None => None,
        };
        let shared = Arc::new(Shared::new(settings, log));
        let accept = tokio::spawn(listener::accept_loop(listener, shared.clone()));
        let reaper = tokio::spawn(reap(Arc::downgrade(&shared)));
        Ok(Server {
            shared,
            local,
            accept,
            reaper,
            redirect: Mutex::new(redirect),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Where the `redirect_http` listener listens, if there is one.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|r| r.local)
    }

    /// Whether `update` with this service needs a newly bound redirect
    /// listener (`Redirect::bind`): it has one at another address.
    pub fn needs_redirect(&self, service: &Service) -> bool {
        let running = self.redirect.lock().unwrap_or_else(|e| e.into_inner());
        match (&service.redirect_http, running.as_ref()) {
            (Some(wanted), Some(running)) => wanted.value != running.listen,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// A reloaded config for the same listen address: new connections, and
    /// the next request on existing keep-alive connections, use the new
    /// service settings (certificates included) and pools. Nothing in flight
    /// or idle is dropped; TLS connections keep the certificate they got.
    /// The access log is reopened (so SIGHUP also serves logrotate).
    /// `redirect`: the newly bound redirect listener when `needs_redirect`
    /// said so; without it the running one is kept, or stopped when the
    /// service no longer redirects.
    pub fn update(
        &self,
        service: &Service,
        pools: Vec<Arc<Pool>>,
        metrics: &Metrics,
        redirect: Option<Redirect>,
    ) {
        let mut log = self.shared.log.lock().unwrap_or_else(|e| e.into_inner());
        match (&service.proxy.access_log, log.as_ref()) {
            (Some(target), Some(sink)) => sink.reopen(target),
            (Some(target), None) => match LogSink::start(target, &service.name) {
                Ok(sink) => *log = Some(sink),
                Err(e) => {
                    tracing::warn!(service = %service.name.value, "access log: cannot start its writer: {e}")
                }
            },
            // Running requests keep their clones; the writer ends with them.
            (None, _) => *log = None,
        }
        let previous = self.shared.settings();
        let settings = Settings::new(
            service,
            pools,
            metrics,
            previous.generation + 1,
            Some(&previous),
            log.clone(),
        );
        self.shared.set_settings(settings);
        let mut running = self.redirect.lock().unwrap_or_else(|e| e.into_inner());
        if service.redirect_http.is_none() {
            *running = None;
        } else if let Some(bound) = redirect {
            match redirect::Running::start(bound, self.local.port()) {
                Ok(started) => *running = Some(started),
                Err(e) => tracing::warn!(service = %service.name.value, "redirect_http: {e}"),
            }
        } else if let Some(current) = running.as_ref() {
            current.set_https_port(self.local.port());
        }
    }

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        self.shared.tracker.open()
    }

    /// Stop accepting; let requests in flight finish, close idle keep-alive
    /// connections at once, and wait until every connection has closed or
    /// `drain` has passed (then cut the rest). Returns how many connections
    /// were cut.
    pub async fn shutdown(mut self, drain: Duration) -> usize {
        self.accept.abort();
        self.redirect.lock().unwrap_or_else(|e| e.into_inner()).take();
        // The listener is closed once the aborted task has been dropped.
        let _ = (&mut self.accept).await;
        self.shared.tracker.shutdown(drain).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
        self.reaper.abort();
    }
}

async fn reap(shared: std::sync::Weak<Shared>) {
    let mut ticks = tokio::time::interval(upstream::REAP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.settings().reap();
    }
}
