//! Counters per user and repository, and requests per status code, for Prometheus and for
//! `gatehouse status`. A request resolves its repository's [`RepoCounters`] once and then only
//! adds to atomics.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;

/// What one user did to one repository since the server started.
#[derive(Clone, Debug, PartialEq)]
pub struct RepoStats {
    pub user: String,
    pub repo: String,
    pub bytes_written: u64,
    pub objects_written: u64,
    pub bytes_read: u64,
    pub objects_read: u64,
    pub bytes_deleted: u64,
    pub objects_deleted: u64,
}

#[derive(Debug, Default)]
pub(crate) struct RepoCounters {
    pub bytes_written: AtomicU64,
    pub objects_written: AtomicU64,
    pub bytes_read: AtomicU64,
    pub objects_read: AtomicU64,
    pub bytes_deleted: AtomicU64,
    pub objects_deleted: AtomicU64,
}

/// The backup server's metrics; one value lives as long as the process, across reloads.
#[derive(Debug, Default)]
pub struct BackupMetrics {
    repos: Mutex<HashMap<(String, String), Arc<RepoCounters>>>,
    requests: Mutex<BTreeMap<u16, u64>>,
}

impl BackupMetrics {
    pub fn new() -> Arc<BackupMetrics> {
        Arc::new(BackupMetrics::default())
    }

    /// The counters of one user (`-` without authentication) and repository.
    pub(crate) fn repo(&self, user: &str, repo: &str) -> Arc<RepoCounters> {
        let user = if user.is_empty() { "-" } else { user };
        let mut repos = crate::sync::lock(&self.repos);
        repos
            .entry((user.to_string(), repo.to_string()))
            .or_default()
            .clone()
    }

    pub(crate) fn request(&self, code: u16) {
        *crate::sync::lock(&self.requests).entry(code).or_default() += 1;
    }

    /// Every user and repository seen, sorted by user then repository.
    pub fn snapshot(&self) -> Vec<RepoStats> {
        let repos = crate::sync::lock(&self.repos);
        let mut stats: Vec<RepoStats> = repos
            .iter()
            .map(|((user, repo), c)| RepoStats {
                user: user.clone(),
                repo: repo.clone(),
                bytes_written: c.bytes_written.load(Relaxed),
                objects_written: c.objects_written.load(Relaxed),
                bytes_read: c.bytes_read.load(Relaxed),
                objects_read: c.objects_read.load(Relaxed),
                bytes_deleted: c.bytes_deleted.load(Relaxed),
                objects_deleted: c.objects_deleted.load(Relaxed),
            })
            .collect();
        stats.sort_by(|a, b| (&a.user, &a.repo).cmp(&(&b.user, &b.repo)));
        stats
    }

    /// Requests answered, by status code.
    pub fn requests(&self) -> BTreeMap<u16, u64> {
        crate::sync::lock(&self.requests).clone()
    }

    /// The metrics, for the server's registry.
    pub fn collector(self: &Arc<Self>) -> Box<dyn Collector> {
        Box::new(MetricsCollector(self.clone()))
    }
}

#[derive(Debug)]
struct MetricsCollector(Arc<BackupMetrics>);

impl Collector for MetricsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.snapshot();
        type Field = fn(&RepoStats) -> u64;
        let families: [(&str, &str, Field); 6] = [
            ("gatehouse_backup_bytes_written", "Bytes of objects stored", |s| {
                s.bytes_written
            }),
            ("gatehouse_backup_objects_written", "Objects stored", |s| {
                s.objects_written
            }),
            ("gatehouse_backup_bytes_read", "Bytes of objects sent", |s| {
                s.bytes_read
            }),
            ("gatehouse_backup_objects_read", "Objects sent", |s| {
                s.objects_read
            }),
            (
                "gatehouse_backup_bytes_deleted",
                "Bytes of objects deleted",
                |s| s.bytes_deleted,
            ),
            ("gatehouse_backup_objects_deleted", "Objects deleted", |s| {
                s.objects_deleted
            }),
        ];
        for (name, help, field) in families {
            let counter = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            for stats in &snapshot {
                let labels = [("user", stats.user.clone()), ("repo", stats.repo.clone())];
                ConstCounter::new(field(stats)).encode(family.encode_family(&labels)?)?;
            }
        }
        let counter = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "gatehouse_backup_requests",
            "Requests answered, by status code",
            None,
            counter.metric_type(),
        )?;
        for (code, count) in self.0.requests() {
            let labels = [("code", code.to_string())];
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
