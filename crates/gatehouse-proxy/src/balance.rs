//! Choosing a backend for a request (http) or a connection (tcp).
//!
//! Pure: a [`Balancer`] reads the backends' health and in-flight gauges and
//! keeps only its own small state (a counter, smooth weights), so it can be
//! tested without sockets. Every method chooses among *candidates*: backends
//! in rotation (or all of them while the pool fails open, see
//! `Pool::fail_open`) that this request has not tried yet.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use gatehouse_config::Balance;
use gatehouse_health::Backend;

/// Attempts per request or connection: the first and two retries, as
/// HAProxy's default `retries 3` counts them.
pub(crate) const MAX_ATTEMPTS: usize = 3;

/// Backends a request has already tried (at most [`MAX_ATTEMPTS`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tried {
    ids: [usize; MAX_ATTEMPTS],
    len: usize,
}

impl Tried {
    pub(crate) fn push(&mut self, index: usize) {
        if self.len < MAX_ATTEMPTS {
            self.ids[self.len] = index;
            self.len += 1;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn last(&self) -> Option<usize> {
        self.len.checked_sub(1).map(|i| self.ids[i])
    }

    fn contains(&self, index: usize) -> bool {
        self.ids[..self.len].contains(&index)
    }
}

/// What a pick may depend on besides the backends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pick<'a> {
    /// The client's address (source-hash).
    pub client: IpAddr,
    /// The value of the request's stickiness cookie, if it has one (cookie).
    pub cookie: Option<&'a str>,
    pub tried: &'a Tried,
}

/// One service's balancing state; rebuilt with the pool on reload.
#[derive(Debug)]
pub(crate) struct Balancer {
    method: Balance,
    /// Round-robin position, and the rotating start of least-conn's scan.
    next: AtomicUsize,
    /// nginx's smooth weighted round-robin keeps a current weight per backend;
    /// the algorithm updates all of them on each pick, hence a lock (held for a
    /// few additions, only by `weighted` and `cookie`).
    smooth: Mutex<Vec<i64>>,
    /// Per-backend hash of its address, for source-hash: stable across
    /// restarts and machines, so two gateways send a client to the same backend.
    seeds: Vec<u64>,
    /// Whether every backend has the same weight (source-hash then skips the
    /// logarithms of weighted rendezvous hashing).
    equal_weights: bool,
}

impl Balancer {
    pub(crate) fn new(method: Balance, backends: &[Arc<Backend>]) -> Balancer {
        Balancer {
            method,
            next: AtomicUsize::new(0),
            smooth: Mutex::new(vec![0; backends.len()]),
            seeds: backends
                .iter()
                .map(|b| fnv1a(b.addr.to_string().as_bytes()))
                .collect(),
            equal_weights: backends.windows(2).all(|w| w[0].weight == w[1].weight),
        }
    }

    /// The index of the backend to use, or none when every candidate was tried.
    pub(crate) fn pick(&self, backends: &[Arc<Backend>], pick: &Pick<'_>) -> Option<usize> {
        let fail_open = !backends.iter().any(|b| b.is_up());
        let candidate = |i: usize| (fail_open || backends[i].is_up()) && !pick.tried.contains(i);
        match self.method {
            Balance::RoundRobin => match pick.tried.last() {
                // A retry goes to the next candidate after the one that failed,
                // without taking a turn from the rotation: otherwise, with a
                // dead backend not yet out, every request would try it first.
                Some(last) => (1..=backends.len())
                    .map(|j| (last + j) % backends.len())
                    .find(|&i| candidate(i)),
                None => {
                    let count = (0..backends.len()).filter(|&i| candidate(i)).count();
                    if count == 0 {
                        return None;
                    }
                    let k = self.next.fetch_add(1, Ordering::Relaxed) % count;
                    (0..backends.len()).filter(|&i| candidate(i)).nth(k)
                }
            },
            Balance::Random => {
                let count = (0..backends.len()).filter(|&i| candidate(i)).count();
                if count == 0 {
                    return None;
                }
                (0..backends.len())
                    .filter(|&i| candidate(i))
                    .nth(random_below(count))
            }
            Balance::Weighted => self.smooth_weighted(backends, candidate),
            Balance::Cookie => {
                let sticky = pick.cookie.and_then(|value| {
                    (0..backends.len()).find(|&i| candidate(i) && backends[i].cookie == value)
                });
                sticky.or_else(|| self.smooth_weighted(backends, candidate))
            }
            Balance::LeastConn => self.least_conn(backends, candidate),
            Balance::RandomTwo => random_two(backends, candidate),
            // Maglev is refused for proxy services by validation; the proxy's
            // rendezvous hashing has the property Maglev is chosen for.
            Balance::SourceHash | Balance::Maglev => self.source_hash(backends, candidate, pick.client),
        }
    }

    /// nginx's smooth weighted round-robin: weights 3:1 give a a b a, not a a a b.
    fn smooth_weighted(&self, backends: &[Arc<Backend>], candidate: impl Fn(usize) -> bool) -> Option<usize> {
        let mut current = self.smooth.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, backend) in backends.iter().enumerate() {
            if !candidate(i) {
                continue;
            }
            let weight = i64::from(backend.weight);
            current[i] += weight;
            total += weight;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        current[best] -= total;
        Some(best)
    }

    /// Fewest requests in flight per unit of weight; the scan starts at a
    /// rotating position so ties (an idle farm) are broken round-robin.
    fn least_conn(&self, backends: &[Arc<Backend>], candidate: impl Fn(usize) -> bool) -> Option<usize> {
        let n = backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, i64, i64)> = None;
        for j in 0..n {
            let i = (start + j) % n;
            if !candidate(i) {
                continue;
            }
            let load = backends[i].stats.connections.get().max(0);
            let weight = i64::from(backends[i].weight);
            // load / weight < best_load / best_weight, without division.
            if best.is_none_or(|(_, l, w)| load * w < l * weight) {
                best = Some((i, load, weight));
            }
        }
        best.map(|(i, _, _)| i)
    }

    /// Weighted rendezvous (highest random weight) hashing of the client
    /// address: each backend scores the client, the highest score wins. Taking
    /// a backend out changes no other backend's scores, so only its own
    /// clients move.
    fn source_hash(
        &self,
        backends: &[Arc<Backend>],
        candidate: impl Fn(usize) -> bool,
        client: IpAddr,
    ) -> Option<usize> {
        let key = ip_hash(client);
        let mut best: Option<(usize, f64)> = None;
        for (i, backend) in backends.iter().enumerate() {
            if !candidate(i) {
                continue;
            }
            let hash = mix64(key ^ self.seeds[i]);
            let score = if self.equal_weights {
                hash as f64
            } else {
                // A uniform draw in (0, 1), then weight / -ln(u): the
                // probability of winning is proportional to the weight.
                let unit = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                f64::from(backend.weight) / -unit.ln()
            };
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// The power of two choices: two distinct random candidates, the one with
/// fewer requests in flight wins.
fn random_two(backends: &[Arc<Backend>], candidate: impl Fn(usize) -> bool) -> Option<usize> {
    let count = (0..backends.len()).filter(|&i| candidate(i)).count();
    let nth = |k: usize| (0..backends.len()).filter(|&i| candidate(i)).nth(k);
    match count {
        0 => None,
        1 => nth(0),
        _ => {
            let first = random_below(count);
            let mut second = random_below(count - 1);
            if second >= first {
                second += 1;
            }
            let (a, b) = (nth(first)?, nth(second)?);
            let load = |i: usize| backends[i].stats.connections.get();
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

fn ip_hash(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => fnv1a(&v4.octets()),
        IpAddr::V6(v6) => fnv1a(&v6.octets()),
    }
}

/// FNV-1a, 64 bits: stable across processes (std's hasher is seeded per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The splitmix64 finaliser: spreads FNV's weak low bits over the whole word.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A uniform integer in `0..n` from a per-thread wyrand generator: random
/// balancing needs speed and spread, not secrecy.
fn random_below(n: usize) -> usize {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one(std::thread::current().id())
        });
    }
    let r = STATE.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    });
    // Lemire's multiply-shift: unbiased enough for n far below 2^64.
    ((u128::from(r) * n as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_config::Farm;
    use gatehouse_health::{Metrics, Pool};
    use std::net::Ipv4Addr;

    /// A pool of backends 127.0.0.1:1.. named b0, b1, .. with the given
    /// weights; one traffic failure takes a backend down (fall = 1).
    fn pool(balance: Balance, weights: &[u32]) -> Arc<Pool> {
        let backends: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let weight = if balance.honours_weights() {
                    format!(", weight = {w}")
                } else {
                    String::new()
                };
                format!("{{ addr = \"127.0.0.1:{}\", name = \"b{i}\"{weight} }}", i + 1)
            })
            .collect();
        let text = format!(
            "[[service]]\nname = \"app\"\nlisten = \"8080\"\nmode = \"http\"\nbalance = \"{}\"\n\
             backends = [{}]\nhealth = {{ fall = 1 }}\n",
            balance.as_str(),
            backends.join(", ")
        );
        let farm = Farm::parse("test.toml", &text).unwrap_or_else(|e| panic!("{e}"));
        Pool::for_target(&farm.services[0].targets()[0], &Metrics::new(), None)
    }

    fn down(pool: &Pool, i: usize) {
        pool.report_failure(&pool.backends()[i], "test");
        assert!(!pool.backends()[i].is_up());
    }

    fn pick_from(balancer: &Balancer, pool: &Pool, client: IpAddr, cookie: Option<&str>) -> usize {
        let tried = Tried::default();
        let pick = Pick {
            client,
            cookie,
            tried: &tried,
        };
        balancer.pick(pool.backends(), &pick).expect("a backend")
    }

    fn picks(balancer: &Balancer, pool: &Pool, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| pick_from(balancer, pool, Ipv4Addr::LOCALHOST.into(), None))
            .collect()
    }

    fn counts(picks: &[usize], n: usize) -> Vec<usize> {
        (0..n)
            .map(|i| picks.iter().filter(|&&p| p == i).count())
            .collect()
    }

    #[test]
    fn round_robin_takes_turns_and_skips_down_backends() {
        let pool = pool(Balance::RoundRobin, &[1, 1, 1]);
        let balancer = Balancer::new(Balance::RoundRobin, pool.backends());
        assert_eq!(picks(&balancer, &pool, 6), [0, 1, 2, 0, 1, 2]);
        down(&pool, 1);
        assert_eq!(counts(&picks(&balancer, &pool, 10), 3), [5, 0, 5]);
    }

    #[test]
    fn weighted_is_smooth_and_exact() {
        let pool = pool(Balance::Weighted, &[3, 1]);
        let balancer = Balancer::new(Balance::Weighted, pool.backends());
        assert_eq!(picks(&balancer, &pool, 8), [0, 0, 1, 0, 0, 0, 1, 0]);
        let pool = pool_5_3_2();
        let balancer = Balancer::new(Balance::Weighted, pool.backends());
        assert_eq!(counts(&picks(&balancer, &pool, 100), 3), [50, 30, 20]);
    }

    fn pool_5_3_2() -> Arc<Pool> {
        pool(Balance::Weighted, &[5, 3, 2])
    }

    #[test]
    fn a_round_robin_retry_does_not_take_a_turn() {
        let pool = pool(Balance::RoundRobin, &[1, 1, 1]);
        let balancer = Balancer::new(Balance::RoundRobin, pool.backends());
        let client = Ipv4Addr::LOCALHOST.into();
        let mut tried = Tried::default();
        tried.push(0);
        let retry = Pick {
            client,
            cookie: None,
            tried: &tried,
        };
        assert_eq!(balancer.pick(pool.backends(), &retry), Some(1));
        assert_eq!(balancer.pick(pool.backends(), &retry), Some(1));
        assert_eq!(picks(&balancer, &pool, 3), [0, 1, 2], "the rotation did not move");
    }

    #[test]
    fn every_backend_down_fails_open() {
        let pool = pool(Balance::RoundRobin, &[1, 1]);
        let balancer = Balancer::new(Balance::RoundRobin, pool.backends());
        down(&pool, 0);
        down(&pool, 1);
        assert_eq!(counts(&picks(&balancer, &pool, 4), 2), [2, 2]);
    }

    #[test]
    fn tried_backends_are_not_picked_again() {
        let pool = pool(Balance::RoundRobin, &[1, 1, 1]);
        for method in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::LeastConn,
            Balance::RandomTwo,
            Balance::SourceHash,
        ] {
            let balancer = Balancer::new(method, pool.backends());
            let mut tried = Tried::default();
            let mut seen = Vec::new();
            for _ in 0..3 {
                let pick = Pick {
                    client: Ipv4Addr::LOCALHOST.into(),
                    cookie: None,
                    tried: &tried,
                };
                let i = balancer.pick(pool.backends(), &pick).expect("a backend");
                assert!(!seen.contains(&i), "{method:?} picked {i} twice");
                seen.push(i);
                tried.push(i);
            }
            let pick = Pick {
                client: Ipv4Addr::LOCALHOST.into(),
                cookie: None,
                tried: &tried,
            };
            assert_eq!(balancer.pick(pool.backends(), &pick), None, "{method:?}");
        }
    }

    #[test]
    fn least_conn_prefers_the_idle_backend_and_rotates_ties() {
        let pool = pool(Balance::LeastConn, &[1, 1, 1]);
        let balancer = Balancer::new(Balance::LeastConn, pool.backends());
        assert_eq!(counts(&picks(&balancer, &pool, 9), 3), [3, 3, 3], "ties go round");
        pool.backends()[0].stats.connections.inc();
        pool.backends()[2].stats.connections.inc();
        assert_eq!(picks(&balancer, &pool, 5), [1; 5]);
    }

    #[test]
    fn least_conn_divides_by_weight() {
        let pool = pool(Balance::LeastConn, &[4, 1]);
        let balancer = Balancer::new(Balance::LeastConn, pool.backends());
        // 3 in flight on a weight-4 backend is lighter than 1 on a weight-1 one.
        pool.backends()[0].stats.connections.set(3);
        pool.backends()[1].stats.connections.set(1);
        assert_eq!(picks(&balancer, &pool, 3), [0; 3]);
    }

    #[test]
    fn random_two_prefers_the_less_loaded_and_never_a_down_backend() {
        let pool = pool(Balance::RandomTwo, &[1, 1, 1, 1]);
        let balancer = Balancer::new(Balance::RandomTwo, pool.backends());
        down(&pool, 2);
        let got = counts(&picks(&balancer, &pool, 3000), 4);
        assert_eq!(got[2], 0, "{got:?}");
        assert!(got.iter().enumerate().all(|(i, &c)| i == 2 || c > 700), "{got:?}");
        // Backend 0 busy: it wins only when drawn together with... nobody: it
        // always loses its pairings.
        pool.backends()[0].stats.connections.set(5);
        let got = counts(&picks(&balancer, &pool, 3000), 4);
        assert_eq!(got[0], 0, "{got:?}");
        assert_eq!(got[2], 0, "{got:?}");
    }

    #[test]
    fn random_spreads_and_skips_down_backends() {
        let pool = pool(Balance::Random, &[1, 1, 1]);
        let balancer = Balancer::new(Balance::Random, pool.backends());
        down(&pool, 0);
        let got = counts(&picks(&balancer, &pool, 2000), 3);
        assert_eq!(got[0], 0);
        assert!(got[1] > 800 && got[2] > 800, "{got:?}");
    }

    #[test]
    fn source_hash_moves_only_the_removed_backends_clients() {
        let pool = pool(Balance::SourceHash, &[1, 1, 1, 1, 1]);
        let balancer = Balancer::new(Balance::SourceHash, pool.backends());
        let clients: Vec<IpAddr> = (0..2000u32)
            .map(|i| Ipv4Addr::from(0xcb00_7100 + i).into())
            .collect();
        let before: Vec<usize> = clients
            .iter()
            .map(|&c| pick_from(&balancer, &pool, c, None))
            .collect();
        let spread = counts(&before, 5);
        assert!(spread.iter().all(|&c| c > 300), "uneven: {spread:?}");
        let again: Vec<usize> = clients
            .iter()
            .map(|&c| pick_from(&balancer, &pool, c, None))
            .collect();
        assert_eq!(before, again, "one client, one backend");
        down(&pool, 3);
        let after: Vec<usize> = clients
            .iter()
            .map(|&c| pick_from(&balancer, &pool, c, None))
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if *b == 3 {
                assert_ne!(*a, 3);
            } else {
                assert_eq!(a, b, "a client of a surviving backend moved");
            }
        }
    }

    #[test]
    fn source_hash_honours_weights() {
        let pool = pool(Balance::SourceHash, &[3, 1]);
        let balancer = Balancer::new(Balance::SourceHash, pool.backends());
        let got: Vec<usize> = (0..4000u32)
            .map(|i| pick_from(&balancer, &pool, Ipv4Addr::from(0x0a00_0000 + i).into(), None))
            .collect();
        let share = counts(&got, 2)[0] as f64 / 4000.0;
        assert!((0.70..0.80).contains(&share), "weight 3 of 4 got {share}");
    }

    #[test]
    fn cookie_sticks_while_the_backend_is_up() {
        let pool = pool(Balance::Cookie, &[1, 1, 1]);
        let balancer = Balancer::new(Balance::Cookie, pool.backends());
        let client = Ipv4Addr::LOCALHOST.into();
        assert_eq!(pool.backends()[2].cookie, "b2");
        for _ in 0..5 {
            assert_eq!(pick_from(&balancer, &pool, client, Some("b2")), 2);
        }
        // No cookie, or one naming nobody: weighted round-robin.
        assert_eq!(counts(&picks(&balancer, &pool, 6), 3), [2, 2, 2]);
        let unknown: Vec<usize> = (0..3)
            .map(|_| pick_from(&balancer, &pool, client, Some("nobody")))
            .collect();
        assert_eq!(counts(&unknown, 3), [1, 1, 1]);
        down(&pool, 2);
        assert_ne!(pick_from(&balancer, &pool, client, Some("b2")), 2);
    }

    #[test]
    fn random_below_stays_in_range() {
        for n in [1, 2, 3, 7, 1000] {
            assert!((0..1000).all(|_| random_below(n) < n));
        }
    }
}
