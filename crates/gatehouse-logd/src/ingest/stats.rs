//! Counters per source: a connection or the UDP listener resolves its
//! source's [`Counters`] once and adds to atomics per read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// What one source address has sent, under one host name.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceStats {
    pub host: String,
    pub source: IpAddr,
    pub messages: u64,
    pub bytes: u64,
    pub unparsed: u64,
    pub truncated: u64,
    /// UDP messages dropped by the rate limit.
    pub shed: u64,
    /// TCP messages delayed by the rate limit.
    pub throttled: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub unparsed: AtomicU64,
    pub truncated: AtomicU64,
    pub shed: AtomicU64,
    pub throttled: AtomicU64,
}

/// A host name and a source address.
type SourceKey = (Arc<str>, IpAddr);

/// Ingest's counters, per source address (and host name), for the metrics.
#[derive(Debug, Default)]
pub struct IngestStats {
    sources: Mutex<HashMap<SourceKey, Arc<Counters>>>,
    connections: AtomicI64,
    store_errors: AtomicU64,
}

impl IngestStats {
    pub fn new() -> Arc<IngestStats> {
        Arc::new(IngestStats::default())
    }

    pub(crate) fn source(&self, host: &Arc<str>, source: IpAddr) -> Arc<Counters> {
        let mut sources = crate::sync::lock(&self.sources);
        sources.entry((host.clone(), source)).or_default().clone()
    }

    pub(crate) fn connection_opened(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    pub(crate) fn store_error(&self) {
        self.store_errors.fetch_add(1, Relaxed);
    }

    /// Open TCP and TLS connections.
    pub fn connections(&self) -> i64 {
        self.connections.load(Relaxed)
    }

    /// Appends that failed (each retried or, at shutdown, dropped).
    pub fn store_errors(&self) -> u64 {
        self.store_errors.load(Relaxed)
    }

    /// Every source seen, sorted by host, then source address.
    pub fn snapshot(&self) -> Vec<SourceStats> {
        let sources = crate::sync::lock(&self.sources);
        let mut list: Vec<SourceStats> = sources
            .iter()
            .map(|((host, source), c)| SourceStats {
                host: host.to_string(),
                source: *source,
                messages: c.messages.load(Relaxed),
                bytes: c.bytes.load(Relaxed),
                unparsed: c.unparsed.load(Relaxed),
                truncated: c.truncated.load(Relaxed),
                shed: c.shed.load(Relaxed),
                throttled: c.throttled.load(Relaxed),
            })
            .collect();
        list.sort_by(|a, b| (&a.host, a.source).cmp(&(&b.host, b.source)));
        list
    }

    /// The metrics, for the server's registry.
    pub fn collector(self: &Arc<Self>) -> Box<dyn Collector> {
        Box::new(StatsCollector(self.clone()))
    }
}

#[derive(Debug)]
struct StatsCollector(Arc<IngestStats>);

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.snapshot();
        type Field = fn(&SourceStats) -> u64;
        let families: [(&str, &str, Field); 6] = [
            (
                "gatehouse_log_messages",
                "Syslog messages received and stored",
                |s| s.messages,
            ),
            ("gatehouse_log_bytes", "Bytes of the messages stored", |s| s.bytes),
            (
                "gatehouse_log_unparsed",
                "Messages stored without a syslog header",
                |s| s.unparsed,
            ),
            ("gatehouse_log_truncated", "Messages cut at max_message", |s| {
                s.truncated
            }),
            (
                "gatehouse_log_shed",
                "UDP messages dropped by the rate limit",
                |s| s.shed,
            ),
            (
                "gatehouse_log_throttled",
                "TCP messages delayed by the rate limit",
                |s| s.throttled,
            ),
        ];
        for (name, help, field) in families {
            let counter = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            for source in &snapshot {
                let labels = [
                    ("host", source.host.clone()),
                    ("source", source.source.to_string()),
                ];
                ConstCounter::new(field(source)).encode(family.encode_family(&labels)?)?;
            }
        }
        let gauge = ConstGauge::new(self.0.connections());
        gauge.encode(encoder.encode_descriptor(
            "gatehouse_log_connections",
            "Open syslog TCP and TLS connections",
            None,
            gauge.metric_type(),
        )?)?;
        let counter = ConstCounter::new(self.0.store_errors());
        counter.encode(encoder.encode_descriptor(
            "gatehouse_log_store_errors",
            "Appends to the log store that failed",
            None,
            counter.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn metrics_have_the_documented_names() {
        let stats = IngestStats::new();
        let web: Arc<str> = "web1".into();
        let counters = stats.source(&web, "10.0.0.1".parse().unwrap());
        counters.messages.fetch_add(3, Relaxed);
        counters.shed.fetch_add(1, Relaxed);
        stats.connection_opened();
        let mut registry = Registry::default();
        registry.register_collector(stats.collector());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("gatehouse_log_messages_total{host=\"web1\",source=\"10.0.0.1\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("gatehouse_log_shed_total{host=\"web1\",source=\"10.0.0.1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gatehouse_log_bytes_total{host=\"web1\",source=\"10.0.0.1\"} 0"),
            "{text}"
        );
        assert!(text.contains("gatehouse_log_connections 1"), "{text}");
        assert!(text.contains("gatehouse_log_store_errors_total 0"), "{text}");
        assert_eq!(stats.snapshot()[0].messages, 3);
    }
}
