//! The per-source rate limit: a token bucket per source address, shared by
//! all its connections and its UDP datagrams. `rate` tokens a second, at most
//! one second's worth saved up. Over the limit, UDP messages are shed and TCP
//! reads wait (the bucket goes into debt and the reader sleeps it off), so a
//! flooding source slows only itself and TCP never loses a message.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket {
            tokens: f64::INFINITY,
            last: now,
        }
    }

    fn refill(&mut self, rate: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(rate);
    }

    /// UDP: how many of `n` messages may pass now (the rest are shed).
    pub fn admit(&mut self, n: usize, rate: NonZeroU32, now: Instant) -> usize {
        let rate = f64::from(rate.get());
        self.refill(rate, now);
        let admitted = (self.tokens.max(0.0).floor() as usize).min(n);
        self.tokens -= admitted as f64;
        admitted
    }

    /// Returns tokens taken with [`Bucket::admit`] and not used.
    pub fn give_back(&mut self, n: usize) {
        self.tokens += n as f64;
    }

    /// TCP: takes `n` tokens; returns how long the reader must wait before
    /// reading again and how many of the `n` were over the limit.
    pub fn take(&mut self, n: usize, rate: NonZeroU32, now: Instant) -> (Duration, usize) {
        let rate = f64::from(rate.get());
        self.refill(rate, now);
        let available = self.tokens.max(0.0);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            return (Duration::ZERO, 0);
        }
        let over = (n as f64 - available).ceil() as usize;
        (Duration::from_secs_f64(-self.tokens / rate), over.min(n))
    }
}

/// The buckets, by source address.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    buckets: Mutex<HashMap<IpAddr, Arc<Mutex<Bucket>>>>,
}

/// Beyond this many sources, the buckets nobody holds are forgotten.
const PRUNE_AT: usize = 4096;

impl Limiter {
    /// The bucket of a source: resolve it once per connection (or UDP source).
    pub fn bucket(&self, source: IpAddr) -> Arc<Mutex<Bucket>> {
        let mut buckets = crate::sync::lock(&self.buckets);
        if buckets.len() >= PRUNE_AT && !buckets.contains_key(&source) {
            buckets.retain(|_, bucket| Arc::strong_count(bucket) > 1);
        }
        buckets
            .entry(source)
            .or_insert_with(|| Arc::new(Mutex::new(Bucket::new(Instant::now()))))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn udp_gets_a_seconds_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(start);
        assert_eq!(bucket.admit(150, rate(100), start), 100);
        assert_eq!(bucket.admit(10, rate(100), start), 0);
        assert_eq!(
            bucket.admit(100, rate(100), start + Duration::from_millis(500)),
            50
        );
        // Idle for long: back to one second's worth, not more.
        assert_eq!(
            bucket.admit(1000, rate(100), start + Duration::from_secs(60)),
            100
        );
    }

    #[test]
    fn a_sender_under_the_limit_never_waits() {
        let start = Instant::now();
        let mut bucket = Bucket::new(start);
        for i in 0..10_000u64 {
            // 200 a second against a limit of 1000, in reads of one to four messages.
            let now = start + Duration::from_millis(5 * i);
            assert_eq!(
                bucket.take(1 + (i % 4) as usize, rate(1000), now),
                (Duration::ZERO, 0)
            );
        }
    }

    #[test]
    fn tcp_over_the_limit_waits_off_its_debt() {
        let start = Instant::now();
        let mut bucket = Bucket::new(start);
        assert_eq!(bucket.take(100, rate(100), start), (Duration::ZERO, 0));
        let (wait, over) = bucket.take(50, rate(100), start);
        assert_eq!((wait, over), (Duration::from_millis(500), 50));
        let (wait, over) = bucket.take(50, rate(100), start + Duration::from_millis(500));
        assert_eq!((wait, over), (Duration::from_millis(500), 50));
    }

    #[test]
    fn sources_share_a_bucket_and_unused_ones_are_pruned() {
        let limiter = Limiter::default();
        let a = limiter.bucket("10.0.0.1".parse().unwrap());
        let b = limiter.bucket("10.0.0.1".parse().unwrap());
        assert!(Arc::ptr_eq(&a, &b));
        for i in 0..PRUNE_AT as u32 + 10 {
            limiter.bucket(IpAddr::from(i.to_be_bytes()));
        }
        assert!(crate::sync::lock(&limiter.buckets).len() < PRUNE_AT);
        assert!(Arc::ptr_eq(&a, &limiter.bucket("10.0.0.1".parse().unwrap())));
    }
}
