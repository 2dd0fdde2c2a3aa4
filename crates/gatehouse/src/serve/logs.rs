//! The `[log_server]` part of `serve`: the store under `dir` and the syslog
//! listeners that feed it, started, reconfigured on reload, and flushed at
//! stop.
//!
//! The per-sender counters live as long as the process (like the proxy's
//! metrics), so a reload does not reset what `gatehouse logs --stats` shows.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use gatehouse_config::LogServer;
use gatehouse_logd::ingest::{Ingest, IngestOptions, IngestStats};
use gatehouse_logd::store::{Store, StoreOptions};

/// The log server as it runs.
pub struct Running {
    pub config: LogServer,
    pub store: Arc<Store>,
    pub ingest: Ingest,
}

/// What the store is opened with; a change needs a new store.
fn store_options(config: &LogServer) -> StoreOptions {
    let mut options = StoreOptions::new(config.dir.value.clone());
    options.segment_size = config.segment_size;
    options.segment_age = config.segment_age;
    options.retention = config.retention;
    options.max_size = config.max_size;
    options.fsync = config.fsync;
    options
}

fn ingest_options(config: &LogServer) -> anyhow::Result<IngestOptions> {
    let tls = match &config.tls {
        Some(tls) => {
            // Syslog over TLS carries no ALPN (RFC 5425).
            let server = gatehouse_tls::server_config(std::slice::from_ref(&tls.cert), &[])
                .map_err(|e| anyhow::anyhow!("log_server tls: building the TLS config: {e}"))?;
            Some((tls.listen.value, server))
        }
        None => None,
    };
    let hosts: HashMap<_, _> = config
        .hosts
        .iter()
        .map(|(address, name)| (address.value, name.value.clone()))
        .collect();
    Ok(IngestOptions {
        udp: config.udp.as_ref().map(|a| a.value),
        tcp: config.tcp.as_ref().map(|a| a.value),
        tls,
        hosts,
        max_message: config.max_message,
        rate_limit: config.rate_limit,
    })
}

/// Open the store (recovering what a crash left) and bind the listeners.
pub async fn start(config: &LogServer, stats: &Arc<IngestStats>) -> anyhow::Result<Running> {
    let options = store_options(config);
    let store = tokio::task::spawn_blocking(move || Store::open(options))
        .await
        .context("log_server: store task")?
        .with_context(|| format!("log_server: opening the store in {}", config.dir.value.display()))?;
    let store = Arc::new(store);
    let ingest = Ingest::start(ingest_options(config)?, store.clone(), stats.clone()).await?;
    tracing::info!(dir = %config.dir.value.display(), "log server: {}", listeners(config));
    Ok(Running {
        config: config.clone(),
        store,
        ingest,
    })
}

impl Running {
    /// Whether `config` keeps the store's directory: moving it takes a
    /// restart, as it does for rsyslog's files.
    pub fn same_dir(&self, config: &LogServer) -> bool {
        self.config.dir.value == config.dir.value
    }

    /// Take new listeners, names, limits and certificate without dropping
    /// a connection. On error nothing changed.
    pub async fn reconfigure(&mut self, config: &LogServer) -> anyhow::Result<()> {
        self.ingest
            .reconfigure(ingest_options(config)?)
            .await
            .context("log_server")?;
        self.store.set_limits(&store_options(config));
        self.config = config.clone();
        Ok(())
    }

    /// Stop listening, store what was read, write pending blocks out.
    pub async fn stop(self) {
        self.ingest.shutdown().await;
        let store = self.store;
        let flushed = tokio::task::spawn_blocking(move || store.flush()).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("log server: flushing the store: {e}"),
            Err(e) => tracing::error!("log server: flush task failed: {e}"),
        }
    }
}

fn listeners(config: &LogServer) -> String {
    let mut parts = Vec::new();
    if let Some(udp) = &config.udp {
        parts.push(format!("udp {}", udp.value));
    }
    if let Some(tcp) = &config.tcp {
        parts.push(format!("tcp {}", tcp.value));
    }
    if let Some(tls) = &config.tls {
        parts.push(format!("tls {}", tls.listen.value));
    }
    format!("syslog on {}", parts.join(", "))
}
