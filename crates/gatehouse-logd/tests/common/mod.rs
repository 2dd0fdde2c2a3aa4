//! Helpers for the ingest tests: a temp dir and child processes that clean up
//! after themselves, a server on loopback ports, reading lines back.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_logd::Line;
use gatehouse_logd::ingest::{Ingest, IngestOptions, IngestStats};
use gatehouse_logd::query::{self, Query};
use gatehouse_logd::store::{Store, StoreOptions};

pub use gatehouse_lab::loopback::TempDir;

/// A child process stopped (SIGTERM by its pid, SIGKILL after 5 s) and reaped
/// on drop. SIGTERM first so that nginx's master takes its workers with it.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn any_port() -> SocketAddr {
    loopback(0)
}

/// A server on loopback ports over a store in a temp dir.
pub struct Server {
    pub ingest: Option<Ingest>,
    pub store: Arc<Store>,
    pub stats: Arc<IngestStats>,
    pub dir: TempDir,
}

impl Server {
    /// UDP and TCP on 127.0.0.1 (any port) unless `options` says otherwise.
    pub async fn start(name: &str, options: IngestOptions) -> Server {
        let dir = TempDir::new(name);
        let store = Arc::new(Store::open(StoreOptions::new(dir.path().join("logs"))).unwrap());
        let stats = IngestStats::new();
        let ingest = Ingest::start(options, store.clone(), stats.clone())
            .await
            .unwrap();
        Server {
            ingest: Some(ingest),
            store,
            stats,
            dir,
        }
    }

    pub fn options() -> IngestOptions {
        IngestOptions {
            udp: Some(any_port()),
            tcp: Some(any_port()),
            ..IngestOptions::default()
        }
    }

    pub fn ingest(&self) -> &Ingest {
        self.ingest.as_ref().unwrap()
    }

    pub fn tcp(&self) -> SocketAddr {
        self.ingest().local_addrs().tcp.unwrap()
    }

    pub fn udp(&self) -> SocketAddr {
        self.ingest().local_addrs().udp.unwrap()
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// Every line of `host` (every host: None), oldest first.
    pub fn lines(&self, host: Option<&str>) -> Vec<Line> {
        let query = Query {
            hosts: host.map(|h| vec![h.to_string()]).unwrap_or_default(),
            ..Query::default()
        };
        let mut lines = Vec::new();
        query::search(&self.logs(), &query, |line| {
            lines.push(line.clone());
            ControlFlow::Continue(())
        })
        .unwrap();
        lines
    }

    /// Waits (up to `timeout`) until `host` has at least `n` lines; returns them.
    pub async fn wait_lines(&self, host: Option<&str>, n: usize, timeout: Duration) -> Vec<Line> {
        let start = Instant::now();
        loop {
            let lines = self.lines(host);
            if lines.len() >= n || start.elapsed() > timeout {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the stats count `n` messages from every source in all.
    pub async fn wait_messages(&self, n: u64, timeout: Duration) -> u64 {
        let start = Instant::now();
        loop {
            let total: u64 = self.stats.snapshot().iter().map(|s| s.messages).sum();
            if total >= n || start.elapsed() > timeout {
                return total;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn shutdown(&mut self) {
        if let Some(ingest) = self.ingest.take() {
            ingest.shutdown().await;
        }
    }
}

pub fn hosts(list: &[(&str, &str)]) -> HashMap<IpAddr, String> {
    list.iter()
        .map(|(ip, name)| (ip.parse().unwrap(), name.to_string()))
        .collect()
}

pub fn text(line: &Line) -> String {
    String::from_utf8_lossy(&line.message).into_owned()
}

/// A command's path, searching PATH and the sbin directories.
pub fn command(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
}
