//! Prometheus metrics for every service and backend, registered once per
//! process so counters survive a reload.
//!
//! Handles are resolved once when a pool is built (a `Family` lookup takes a
//! lock and hashes the labels); the hot path only touches atomics.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub service: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    service: String,
    backend: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    service: String,
    backend: String,
    kind: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets in seconds: half a millisecond to ten seconds, the range
/// between a loopback backend and a request about to time out.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// Every metric gatehouse exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<ClassLabels, Counter>,
    errors: Family<KindLabels, Counter>,
    latency: HistogramFamily<BackendLabels>,
    /// The histogram's sum and count again, readable (prometheus-client
    /// keeps its own to itself): the status page charts the mean latency.
    /// Not registered; /metrics has them as the histogram's _sum and _count.
    latency_sum: Family<BackendLabels, Counter<f64, AtomicU64>>,
    latency_count: Family<BackendLabels, Counter>,
    backend_connections: Family<BackendLabels, Gauge>,
    backend_up: Family<BackendLabels, Gauge>,
    checks: Family<KindLabels, Counter>,
    client_connections: Family<ServiceLabels, Gauge>,
    no_backend: Family<ServiceLabels, Counter>,
    fail_open: Family<ServiceLabels, Gauge>,
    map_generation: Family<ServiceLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("gatehouse");
        let metrics = Metrics {
            registry: Mutex::new(Registry::default()),
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            latency_sum: Family::default(),
            latency_count: Family::default(),
            backend_connections: Family::default(),
            backend_up: Family::default(),
            checks: Family::default(),
            client_connections: Family::default(),
            no_backend: Family::default(),
            fail_open: Family::default(),
            map_generation: Family::default(),
        };
        registry.register(
            "requests",
            "Requests (http) or connections (tcp) answered, by backend and status class",
            metrics.requests.clone(),
        );
        registry.register(
            "backend_errors",
            "Failures talking to a backend, by kind (connect, timeout, response, status_5xx)",
            metrics.errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from forwarding a request to the backend's response head",
            metrics.latency.clone(),
        );
        registry.register(
            "backend_connections",
            "Requests or connections in flight to a backend",
            metrics.backend_connections.clone(),
        );
        registry.register(
            "backend_up",
            "1 when the backend is in rotation, 0 when health checks took it out",
            metrics.backend_up.clone(),
        );
        registry.register(
            "health_checks",
            "Active health checks, by result (ok, failed)",
            metrics.checks.clone(),
        );
        registry.register(
            "client_connections",
            "Client connections open to a service's listener",
            metrics.client_connections.clone(),
        );
        registry.register(
            "no_backend",
            "Requests refused because no backend could be reached",
            metrics.no_backend.clone(),
        );
        registry.register(
            "fail_open",
            "1 while every backend of the service is down and traffic goes to all of them",
            metrics.fail_open.clone(),
        );
        registry.register(
            "kernel_map_generation",
            "How many times the service's nftables map was rewritten since start",
            metrics.map_generation.clone(),
        );
        *metrics.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        metrics
    }

    /// Add metrics another part of gatehouse keeps (the log server's per
    /// sender counters). The registry's prefix does not reach a collector's
    /// names: they carry `gatehouse_` themselves.
    pub fn register_collector(&self, collector: Box<dyn prometheus_client::collector::Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register_collector(collector);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    pub fn service(&self, service: &str) -> ServiceStats {
        let labels = ServiceLabels {
            service: service.to_owned(),
        };
        ServiceStats {
            client_connections: get(&self.client_connections, &labels),
            no_backend: get(&self.no_backend, &labels),
            fail_open: get(&self.fail_open, &labels),
            map_generation: get(&self.map_generation, &labels),
        }
    }

    pub fn backend(&self, service: &str, backend: &str) -> BackendStats {
        let labels = BackendLabels {
            service: service.to_owned(),
            backend: backend.to_owned(),
        };
        let class = |class| ClassLabels {
            service: service.to_owned(),
            backend: backend.to_owned(),
            class,
        };
        let kind = |kind| KindLabels {
            service: service.to_owned(),
            backend: backend.to_owned(),
            kind,
        };
        BackendStats {
            responses: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| get(&self.requests, &class(c))),
            connect_errors: get(&self.errors, &kind("connect")),
            timeouts: get(&self.errors, &kind("timeout")),
            response_errors: get(&self.errors, &kind("response")),
            latency: get(&self.latency, &labels),
            latency_sum: get(&self.latency_sum, &labels),
            latency_count: get(&self.latency_count, &labels),
            connections: get(&self.backend_connections, &labels),
            up: get(&self.backend_up, &labels),
            checks_ok: get(&self.checks, &kind("ok")),
            checks_failed: get(&self.checks, &kind("failed")),
        }
    }
}

/// A handle to one series. The lookup's read guard must be gone before the
/// next lookup in the same family: `get_or_create` upgrades to a write lock
/// for a new series, and a guard kept alive by a struct literal would
/// deadlock it.
fn get<L, M, C>(family: &Family<L, M, C>, labels: &L) -> M
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    let series = family.get_or_create(labels);
    series.clone()
}

/// A service's own metrics.
#[derive(Clone, Debug, Default)]
pub struct ServiceStats {
    pub client_connections: Gauge,
    pub no_backend: Counter,
    pub fail_open: Gauge,
    pub map_generation: Gauge,
}

/// One backend's metrics.
#[derive(Clone, Debug)]
pub struct BackendStats {
    /// Responses by status class, 1xx at index 0; tcp connections count as 2xx.
    pub responses: [Counter; 5],
    pub connect_errors: Counter,
    pub timeouts: Counter,
    pub response_errors: Counter,
    /// Observe through [`BackendStats::observe_latency`], which keeps
    /// `latency_sum` and `latency_count` with it.
    pub latency: Histogram,
    /// Seconds and responses the histogram has seen.
    pub latency_sum: Counter<f64, AtomicU64>,
    pub latency_count: Counter,
    /// In flight now; least-conn and random-two read it.
    pub connections: Gauge,
    pub up: Gauge,
    pub checks_ok: Counter,
    pub checks_failed: Counter,
}

impl BackendStats {
    /// Count a response by its status code.
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].inc();
    }

    /// A backend's time to answer (the response head; for tcp, the connect).
    pub fn observe_latency(&self, seconds: f64) {
        self.latency.observe(seconds);
        self.latency_sum.inc_by(seconds);
        self.latency_count.inc();
    }

    /// Responses of every class.
    pub fn total_responses(&self) -> u64 {
        self.responses.iter().map(Counter::get).sum()
    }
}
