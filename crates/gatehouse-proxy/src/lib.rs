//! The userspace data plane: services with `mode = "http"` or `mode = "tcp"`.
//!
//! One [`Server`] per service: a listener, its client connections, and the
//! connections to the service's backends. The path of a request, top to
//! bottom:
//!
//! ```text
//! listener   bind, accept (max_connections), register for drain/cut
//!  ├─ http     hyper HTTP/1.1 server on the client socket (client_io: header/idle deadlines)
//!  │   └─ forward   per request: headers, balance, upstream (pooled backend connections), retries, errors
//!  │        └─ body      streaming both ways; on the end: reuse, gauges, access_log
//!  │        └─ tunnel    after a 101 (WebSocket)
//!  └─ tcp      balance, connect with retries, tunnel
//! ```
//!
//! Health is not ours: the caller runs the pool's active checks; we read
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
mod route;
mod tcp;
mod tunnel;
mod upstream;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_config::{Mode, Service};
use gatehouse_health::Pool;
use tokio::task::JoinHandle;

use crate::access_log::LogSink;
use crate::listener::Shared;
use crate::route::Route;

/// One service's listener and its connections.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    local: SocketAddr,
    accept: JoinHandle<()>,
    reaper: JoinHandle<()>,
}

impl Server {
    /// Bind the service's listener (`service.bind_addr()`: for a port-only
    /// listen that is `[::]:PORT`, dual-stack; if IPv6 is unavailable it
    /// falls back to `0.0.0.0:PORT`) with SO_REUSEADDR, and start accepting
    /// on the current tokio runtime. Errors name the address ("cannot listen
    /// on 127.0.0.1:8080: Address already in use"). A nat service is refused.
    pub async fn start(service: &Service, pool: Arc<Pool>) -> io::Result<Server> {
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
        let route = Route::new(service, pool, 1, None, log.clone());
        let backlog = route.max_connections.clamp(1024, 65_535);
        let listener = listener::bind(service.bind_addr(), backlog)?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared::new(route, log));
        let accept = tokio::spawn(listener::accept_loop(listener, shared.clone()));
        let reaper = tokio::spawn(reap(Arc::downgrade(&shared)));
        Ok(Server {
            shared,
            local,
            accept,
            reaper,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A reloaded config for the same listen address: new connections, and
    /// the next request on existing keep-alive connections, use the new
    /// service settings and pool. Nothing in flight or idle is dropped. The
    /// access log is reopened (so SIGHUP also serves logrotate).
    pub fn update(&self, service: &Service, pool: Arc<Pool>) {
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
        let previous = self.shared.route();
        let route = Route::new(
            service,
            pool,
            previous.generation + 1,
            Some(&previous),
            log.clone(),
        );
        self.shared.set_route(route);
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
        shared.route().reap();
    }
}
