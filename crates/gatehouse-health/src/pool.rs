//! A service's backends and the rules that move them in and out of rotation.
//!
//! Rise/fall as HAProxy counts them: `fall` consecutive failures take an up
//! backend out, `rise` consecutive successes bring a down one back. Active
//! checks count both ways; failures the proxy sees (connect errors, 5xx)
//! count only toward `fall`, because a backend answering real traffic badly is
//! evidence, while a backend answering it well is already up. The first
//! active check after start decides at once, so a backend that is dead when
//! gatehouse starts is out after one check, not `fall` of them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use gatehouse_config::{Health, Service, Target};
use tokio::sync::watch;

use crate::metrics::{BackendStats, Metrics, ServiceStats};

/// What a check, or a request, found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(String),
}

/// Health as status pages show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No check has finished yet; treated as up.
    Unknown,
    Up,
    Down,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Up => "up",
            State::Down => "down",
        }
    }
}

#[derive(Debug, Clone)]
struct Record {
    state: State,
    since: SystemTime,
    successes: u32,
    failures: u32,
    last_failure: Option<String>,
}

/// One backend of one service.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    pub weight: u32,
    /// How people see it: the configured name, else the address.
    pub label: String,
    /// The stickiness cookie's value: the configured name, else a hash of the
    /// address, so the cookie never tells a client the farm's addresses.
    pub cookie: String,
    pub stats: BackendStats,
    up: AtomicBool,
    /// A failure streak is open: only then does a success on traffic need
    /// the lock (to clear it), so the proxy can report every success.
    failing: AtomicBool,
    record: Mutex<Record>,
}

/// A backend's state at one moment, for status pages.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub label: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: State,
    pub since: SystemTime,
    pub last_failure: Option<String>,
    pub connections: i64,
    pub responses: u64,
}

impl Backend {
    /// Whether the balancer may pick it (unknown counts as up).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Snapshot {
        let record = self.lock();
        Snapshot {
            label: self.label.clone(),
            addr: self.addr,
            weight: self.weight,
            state: record.state,
            since: record.since,
            last_failure: record.last_failure.clone(),
            connections: self.stats.connections.get(),
            responses: self.stats.total_responses(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count an outcome; returns the new state when it changed.
    /// The count is the streak that decided it.
    fn record(&self, outcome: &Outcome, rules: &Health, active: bool) -> Option<(State, u32)> {
        let mut record = self.lock();
        let next = match outcome {
            Outcome::Success if !active => {
                record.failures = 0;
                self.failing.store(false, Ordering::Relaxed);
                return None;
            }
            Outcome::Success => {
                record.failures = 0;
                record.successes = record.successes.saturating_add(1);
                match record.state {
                    State::Unknown => State::Up,
                    State::Down if record.successes >= rules.rise => State::Up,
                    state => state,
                }
            }
            Outcome::Failure(why) => {
                record.successes = 0;
                record.failures = record.failures.saturating_add(1);
                record.last_failure = Some(why.clone());
                match record.state {
                    State::Unknown if active => State::Down,
                    State::Up | State::Unknown if record.failures >= rules.fall => State::Down,
                    state => state,
                }
            }
        };
        self.failing.store(record.failures > 0, Ordering::Relaxed);
        if next == record.state {
            return None;
        }
        let was_in_rotation = record.state != State::Down;
        record.state = next;
        if (next != State::Down) == was_in_rotation {
            // Unknown to Up: no change in rotation.
            return None;
        }
        record.since = SystemTime::now();
        let streak = record.successes.max(record.failures);
        record.successes = 0;
        record.failures = 0;
        self.failing.store(false, Ordering::Relaxed);
        self.up.store(next != State::Down, Ordering::Relaxed);
        self.stats.up.set(i64::from(next != State::Down));
        Some((next, streak))
    }
}

/// A service's backends.
#[derive(Debug)]
pub struct Pool {
    pub service: String,
    pub health: Health,
    pub stats: ServiceStats,
    backends: Vec<Arc<Backend>>,
    changes: watch::Sender<u64>,
}

impl Pool {
    /// One pool per group of backends of the service (`Service::targets`, in
    /// that order); each carries health over from the previous pool of the
    /// same name.
    pub fn for_service(service: &Service, metrics: &Metrics, previous: &[Arc<Pool>]) -> Vec<Arc<Pool>> {
        service
            .targets()
            .iter()
            .map(|target| {
                let old = previous.iter().find(|p| p.service == target.name);
                Pool::for_target(target, metrics, old.map(|p| &**p))
            })
            .collect()
    }

    /// The pool of one group of backends (a service's own, or a route's).
    /// Backends that were in `previous` (same address) keep their state and
    /// since-when, so a reload does not reset health.
    pub fn for_target(target: &Target, metrics: &Metrics, previous: Option<&Pool>) -> Arc<Pool> {
        let name = target.name;
        let backends = target
            .backends
            .iter()
            .map(|b| {
                let label = b.label();
                let cookie = match &b.name {
                    Some(name) => name.value.clone(),
                    None => cookie_hash(&b.addr.value),
                };
                let carried = previous
                    .and_then(|p| p.backends.iter().find(|old| old.addr == b.addr.value))
                    .map(|old| old.lock().clone());
                let record = carried.unwrap_or(Record {
                    state: State::Unknown,
                    since: SystemTime::now(),
                    successes: 0,
                    failures: 0,
                    last_failure: None,
                });
                let stats = metrics.backend(name, &label);
                stats.up.set(i64::from(record.state != State::Down));
                Arc::new(Backend {
                    addr: b.addr.value,
                    weight: b.weight,
                    label,
                    cookie,
                    up: AtomicBool::new(record.state != State::Down),
                    failing: AtomicBool::new(record.failures > 0),
                    record: Mutex::new(record),
                    stats,
                })
            })
            .collect();
        let pool = Pool {
            service: name.to_owned(),
            health: target.health.clone(),
            stats: metrics.service(name),
            backends,
            changes: watch::Sender::new(0),
        };
        pool.stats.fail_open.set(i64::from(pool.fail_open()));
        Arc::new(pool)
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// Which backends are in rotation, in config order.
    pub fn up(&self) -> Vec<bool> {
        self.backends.iter().map(|b| b.is_up()).collect()
    }

    /// Every backend is down: balancers then use all of them, because sending
    /// traffic to servers that may have recovered beats refusing all of it.
    pub fn fail_open(&self) -> bool {
        !self.backends.iter().any(|b| b.is_up())
    }

    /// Whether a balancer may pick this backend now (fail-open included).
    pub fn usable(&self, backend: &Backend) -> bool {
        backend.is_up() || self.fail_open()
    }

    /// Wakes when a backend enters or leaves rotation; the value counts changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A failure seen on real traffic (connect refused, 5xx).
    pub fn report_failure(&self, backend: &Backend, why: impl Into<String>) {
        self.record(backend, Outcome::Failure(why.into()), false);
    }

    /// A success seen on real traffic: it clears the failure streak. Cheap
    /// (one atomic load) unless a streak is open, so call it on every answer.
    pub fn report_success(&self, backend: &Backend) {
        if backend.is_up() && backend.failing.load(Ordering::Relaxed) {
            self.record(backend, Outcome::Success, false);
        }
    }

    fn record(&self, backend: &Backend, outcome: Outcome, active: bool) {
        let was_fail_open = self.fail_open();
        let Some((state, streak)) = backend.record(&outcome, &self.health, active) else {
            return;
        };
        let plural = if streak == 1 { "" } else { "s" };
        match (&outcome, state) {
            (Outcome::Failure(why), State::Down) => tracing::warn!(
                service = %self.service, backend = %backend.label, addr = %backend.addr,
                "backend DOWN after {streak} failure{plural} ({}): {why}",
                if active { "health check" } else { "seen on traffic" }
            ),
            _ => tracing::info!(
                service = %self.service, backend = %backend.label, addr = %backend.addr,
                "backend UP after {streak} good health check{plural}"
            ),
        }
        let fail_open = self.fail_open();
        if fail_open != was_fail_open {
            self.stats.fail_open.set(i64::from(fail_open));
            if fail_open {
                tracing::error!(
                    service = %self.service,
                    "EVERY BACKEND IS DOWN: failing open, traffic goes to all {} backends until one passes its checks",
                    self.backends.len()
                );
            } else {
                tracing::warn!(service = %self.service, "a backend is up again: fail-open ended");
            }
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Run the active checks until the task is aborted (on reload or stop).
    /// Each backend is checked on its own timer, staggered across the
    /// interval so a large pool does not probe everything at once.
    pub async fn run_checks(self: Arc<Pool>) {
        let mut tasks = tokio::task::JoinSet::new();
        let n = self.backends.len().max(1) as u32;
        for (i, backend) in self.backends.iter().enumerate() {
            let pool = self.clone();
            let backend = backend.clone();
            let offset = self.health.interval / n * i as u32;
            tasks.spawn(async move {
                // The first round goes out at once (staggered by a few ms) so
                // start-up learns the truth quickly.
                tokio::time::sleep(offset.min(Duration::from_millis(5 * i as u64))).await;
                let mut ticks = tokio::time::interval(pool.health.interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let outcome = crate::check::probe(backend.addr, &pool.health).await;
                    match outcome {
                        Outcome::Success => backend.stats.checks_ok.inc(),
                        Outcome::Failure(_) => backend.stats.checks_failed.inc(),
                    };
                    pool.record(&backend, outcome, true);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// FNV-1a of the address, as 8 hex digits: stable across restarts and
/// machines (std's hasher is seeded per process), and opaque to clients.
fn cookie_hash(addr: &SocketAddr) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in addr.to_string().bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("{hash:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_config::Farm;

    fn pool(health: &str) -> Arc<Pool> {
        let text = format!(
            "[[service]]\nname = \"app\"\nlisten = \"8080\"\nmode = \"http\"\n\
             backends = [\"127.0.0.1:1\", {{ addr = \"127.0.0.1:2\", name = \"web2\" }}]\nhealth = {health}\n"
        );
        let farm = Farm::parse("test.toml", &text).expect("valid config");
        Pool::for_target(&farm.services[0].targets()[0], &Metrics::new(), None)
    }

    fn fail(pool: &Pool, i: usize, active: bool) {
        pool.record(&pool.backends[i], Outcome::Failure("refused".into()), active);
    }

    fn succeed(pool: &Pool, i: usize) {
        pool.record(&pool.backends[i], Outcome::Success, true);
    }

    #[test]
    fn first_check_decides_then_rise_and_fall_count() {
        let pool = pool("{ rise = 2, fall = 3 }");
        assert_eq!(pool.up(), [true, true], "unknown counts as up");
        succeed(&pool, 0);
        fail(&pool, 1, true);
        assert_eq!(pool.up(), [true, false], "the first active check decides at once");
        fail(&pool, 0, true);
        fail(&pool, 0, true);
        assert!(pool.backends[0].is_up(), "two failures are fewer than fall = 3");
        fail(&pool, 0, true);
        assert!(!pool.backends[0].is_up());
        succeed(&pool, 1);
        assert!(!pool.backends[1].is_up(), "one success is fewer than rise = 2");
        succeed(&pool, 1);
        assert!(pool.backends[1].is_up());
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let pool = pool("{ fall = 2 }");
        succeed(&pool, 0);
        fail(&pool, 0, true);
        succeed(&pool, 0);
        fail(&pool, 0, true);
        assert!(pool.backends[0].is_up());
    }

    #[test]
    fn traffic_failures_take_a_backend_down_but_traffic_cannot_bring_it_up() {
        let pool = pool("{ fall = 2, rise = 1 }");
        succeed(&pool, 0);
        fail(&pool, 0, false);
        fail(&pool, 0, false);
        assert!(!pool.backends[0].is_up());
        pool.report_success(&pool.backends[0]);
        assert!(
            !pool.backends[0].is_up(),
            "only active checks bring a backend back"
        );
        succeed(&pool, 0);
        assert!(pool.backends[0].is_up());
    }

    #[test]
    fn a_success_on_traffic_clears_a_streak_of_traffic_failures() {
        let pool = pool("{ fall = 2 }");
        succeed(&pool, 0);
        fail(&pool, 0, false);
        pool.report_success(&pool.backends[0]);
        fail(&pool, 0, false);
        assert!(
            pool.backends[0].is_up(),
            "the success in between broke the streak"
        );
        fail(&pool, 0, false);
        assert!(!pool.backends[0].is_up());
    }

    #[test]
    fn all_down_fails_open_and_changes_are_signalled() {
        let pool = pool("{ fall = 1 }");
        let changes = pool.changes();
        fail(&pool, 0, true);
        assert!(!pool.fail_open());
        fail(&pool, 1, true);
        assert!(pool.fail_open());
        assert!(pool.usable(&pool.backends[0]), "fail-open uses every backend");
        assert_eq!(pool.stats.fail_open.get(), 1);
        assert_eq!(*changes.borrow(), 2);
        succeed(&pool, 1);
        assert!(pool.fail_open(), "rise = 2 successes bring it back, not one");
        succeed(&pool, 1);
        assert!(!pool.fail_open());
        assert!(!pool.usable(&pool.backends[0]));
    }

    #[test]
    fn reload_keeps_state_of_backends_that_stay() {
        let first = pool("{ fall = 1 }");
        fail(&first, 1, true);
        let text = "[[service]]\nname = \"app\"\nlisten = \"8080\"\nmode = \"http\"\n\
                    backends = [\"127.0.0.1:2\", \"127.0.0.1:3\"]\n";
        let farm = Farm::parse("test.toml", text).expect("valid config");
        let second = Pool::for_target(&farm.services[0].targets()[0], &Metrics::new(), Some(&first));
        assert_eq!(second.up(), [false, true]);
        assert_eq!(second.backends[0].snapshot().state, State::Down);
        assert_eq!(second.backends[1].snapshot().state, State::Unknown);
    }

    #[test]
    fn cookies_name_the_backend_never_its_address() {
        let pool = pool("{}");
        assert_eq!(pool.backends[1].cookie, "web2");
        let hashed = &pool.backends[0].cookie;
        assert_eq!(hashed.len(), 8);
        assert!(!hashed.contains("127"));
        assert_eq!(hashed, &cookie_hash(&"127.0.0.1:1".parse().expect("addr")));
    }
}
