//! A service's settings as the data plane uses them, fixed for one config
//! generation. A reload builds a new `Route`; requests already running keep
//! the one they started with, so nothing in flight sees half of each.

use std::sync::Arc;

use gatehouse_config::{Balance, Mode, Service, Timeouts};
use gatehouse_health::Pool;

use crate::access_log::LogSink;
use crate::balance::Balancer;
use crate::upstream::Upstream;

#[derive(Debug)]
pub(crate) struct Route {
    /// Which config generation this is; connections compare it per request.
    pub(crate) generation: u64,
    pub(crate) mode: Mode,
    pub(crate) pool: Arc<Pool>,
    pub(crate) balancer: Balancer,
    /// Connections per backend, in the pool's backend order.
    pub(crate) upstreams: Vec<Arc<Upstream>>,
    pub(crate) timeouts: Timeouts,
    pub(crate) max_header: usize,
    pub(crate) max_body: Option<u64>,
    pub(crate) max_connections: usize,
    /// `gh_<service ident>` when balancing by cookie.
    pub(crate) cookie: Option<String>,
    pub(crate) log: Option<LogSink>,
}

impl Route {
    /// Idle backend connections carry over from `previous` for backends that
    /// stay (same address), so a reload does not cold-start the farm.
    pub(crate) fn new(
        service: &Service,
        pool: Arc<Pool>,
        generation: u64,
        previous: Option<&Route>,
        log: Option<LogSink>,
    ) -> Route {
        let upstreams = pool
            .backends()
            .iter()
            .map(|backend| {
                previous
                    .and_then(|p| p.upstreams.iter().find(|u| u.addr == backend.addr))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Upstream::new(backend.addr)))
            })
            .collect();
        let options = &service.proxy;
        Route {
            generation,
            mode: service.mode,
            balancer: Balancer::new(service.balance, pool.backends()),
            pool,
            upstreams,
            timeouts: options.timeouts,
            max_header: options.max_header,
            max_body: options.max_body,
            max_connections: usize::try_from(options.max_connections)
                .unwrap_or(usize::MAX)
                .max(1),
            cookie: (service.balance == Balance::Cookie).then(|| format!("gh_{}", service.ident())),
            log,
        }
    }

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

    /// Close backend connections idle too long.
    pub(crate) fn reap(&self) {
        for upstream in &self.upstreams {
            upstream.reap();
        }
    }
}
