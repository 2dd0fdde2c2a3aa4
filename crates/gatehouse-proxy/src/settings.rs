//! A service's settings as the data plane uses them, fixed for one config
//! generation. A reload builds a new `Settings`; requests already running keep
//! the one they started with, so nothing in flight sees half of each.
//!
//! A service has one or more targets (groups of backends with a pool each):
//! its own backends and one per `[[service.route]]`. The [`Router`] picks
//! the target of a request from its Host and path.

use std::sync::Arc;

use gatehouse_config::{BackendProtocol, Balance, Mode, Service, Timeouts, UpstreamOptions};
use gatehouse_health::{Metrics, Pool, ServiceStats};
use hyper::header::HeaderValue;
use ipnet::IpNet;

use crate::access_log::LogSink;
use crate::balance::Balancer;
use crate::router::Router;
use crate::upstream::Upstream;

#[derive(Debug)]
pub(crate) struct Settings {
    /// Which config generation this is; connections compare it per request.
    pub(crate) generation: u64,
    pub(crate) service: String,
    pub(crate) mode: Mode,
    /// Client connection gauge of the service as a whole.
    pub(crate) stats: ServiceStats,
    /// The service's own backends first (when it has any), then its routes'.
    pub(crate) targets: Vec<Target>,
    pub(crate) router: Router,
    pub(crate) tls: Option<Tls>,
    /// `Strict-Transport-Security` for every response over TLS.
    pub(crate) hsts: Option<HeaderValue>,
    /// Peers whose connections start with a PROXY header.
    pub(crate) accept_proxy: Vec<IpNet>,
    /// Some target sends PROXY headers to its backends: connections need
    /// their local address (the header's destination).
    pub(crate) sends_proxy: bool,
    pub(crate) timeouts: Timeouts,
    pub(crate) max_header: usize,
    pub(crate) max_body: Option<u64>,
    pub(crate) max_connections: usize,
    pub(crate) log: Option<LogSink>,
}

/// The listener's TLS: certificates by SNI, and what 421 answers need.
#[derive(Debug, Clone)]
pub(crate) struct Tls {
    pub(crate) config: Arc<gatehouse_tls::rustls::ServerConfig>,
    pub(crate) certs: Vec<Arc<gatehouse_tls::Certificate>>,
}

/// One group of backends with its own pool, balancing and connections.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) pool: Arc<Pool>,
    pub(crate) balancer: Balancer,
    /// Connections per backend, in the pool's backend order.
    pub(crate) upstreams: Vec<Arc<Upstream>>,
    /// `gh_<service ident>` when balancing by cookie.
    pub(crate) cookie: Option<String>,
    pub(crate) options: UpstreamOptions,
}

impl Target {
    /// Backend `i` failed a request or connection: count it toward taking
    /// the backend out of rotation, and say why (rate-limited).
    pub(crate) fn backend_failed(&self, i: usize, why: String) {
        let backend = &self.pool.backends()[i];
        let upstream = &self.upstreams[i];
        match upstream.may_log_failure() {
            Some(0) => tracing::warn!(service = %self.pool.service, backend = %backend.label, "{why}"),
            Some(n) => tracing::warn!(
                service = %self.pool.service, backend = %backend.label,
                "{why} (and {n} more failures in the last seconds)"
            ),
            None => {}
        }
        self.pool.report_failure(backend, why);
    }

    /// Whether backend connections may serve requests of several clients:
    /// not when each starts with a PROXY header naming one client.
    pub(crate) fn shares_connections(&self) -> bool {
        self.options.send_proxy.is_none()
    }

    pub(crate) fn h2(&self) -> bool {
        self.options.protocol == BackendProtocol::H2
    }
}

impl Settings {
    /// `pools` are the service's, one per target (`Pool::for_service`).
    /// Idle backend connections carry over from `previous` for backends that
    /// stay (same address and the same way of reaching them), so a reload
    /// does not cold-start the farm.
    pub(crate) fn new(
        service: &Service,
        pools: Vec<Arc<Pool>>,
        metrics: &Metrics,
        generation: u64,
        previous: Option<&Settings>,
        log: Option<LogSink>,
    ) -> Settings {
        let cookie = format!("gh_{}", service.ident());
        let targets = service
            .targets()
            .iter()
            .zip(pools)
            .map(|(target, pool)| {
                let upstreams = pool
                    .backends()
                    .iter()
                    .map(|backend| {
                        previous
                            .into_iter()
                            .flat_map(|p| &p.targets)
                            .flat_map(|t| &t.upstreams)
                            .find(|u| u.addr == backend.addr && u.same_options(target.upstream))
                            .cloned()
                            .unwrap_or_else(|| Arc::new(Upstream::new(backend.addr, target.upstream)))
                    })
                    .collect();
                Target {
                    balancer: Balancer::new(target.balance, pool.backends()),
                    pool,
                    upstreams,
                    cookie: (target.balance == Balance::Cookie).then(|| cookie.clone()),
                    options: target.upstream.clone(),
                }
            })
            .collect();
        let options = &service.proxy;
        let tls = service.tls.as_ref().map(|tls| {
            let alpn: &[&[u8]] = match service.mode {
                Mode::Http => &[b"h2", b"http/1.1"],
                _ => &[],
            };
            // Validation built this same config from these certificates, so
            // it cannot be refused here (ALPN is not something rustls checks).
            let config = gatehouse_tls::server_config(&tls.certs, alpn)
                .unwrap_or_else(|e| panic!("TLS config of a validated service: {e}"));
            Tls {
                config,
                certs: tls.certs.clone(),
            }
        });
        Settings {
            generation,
            service: service.name.value.clone(),
            mode: service.mode,
            stats: metrics.service(&service.name.value),
            router: Router::new(service),
            targets,
            tls,
            hsts: service
                .hsts
                .and_then(|max_age| HeaderValue::try_from(format!("max-age={}", max_age.as_secs())).ok()),
            accept_proxy: service.accept_proxy.iter().map(|n| n.value).collect(),
            sends_proxy: service.targets().iter().any(|t| t.upstream.send_proxy.is_some()),
            timeouts: options.timeouts,
            max_header: options.max_header,
            max_body: options.max_body,
            max_connections: usize::try_from(options.max_connections)
                .unwrap_or(usize::MAX)
                .max(1),
            log,
        }
    }

    /// Whether this peer must start with a PROXY header.
    pub(crate) fn expects_proxy_header(&self, peer: std::net::IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.accept_proxy.iter().any(|net| net.contains(&peer))
    }

    /// Close backend connections idle too long.
    pub(crate) fn reap(&self) {
        for target in &self.targets {
            for upstream in &target.upstreams {
                upstream.reap();
            }
        }
    }
}
