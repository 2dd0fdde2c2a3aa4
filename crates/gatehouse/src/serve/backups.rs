//! The `[backup_server]` part of `serve`: restic's REST protocol, started,
//! given new users and limits on reload (the htpasswd file is re-read), and
//! stopped with the rest.
//!
//! Its access log goes through the proxy's log writer, so a backup server's
//! lines land in a file, stdout or the log server like a service's.

use std::collections::HashMap;
use std::sync::Arc;

use gatehouse_backupd::{BackupMetrics, BackupServer, Options, UserOptions};
use gatehouse_proxy::LogSink;

/// The backup server as it runs.
pub struct Running {
    pub config: gatehouse_config::BackupServer,
    pub server: BackupServer,
    /// Kept to reopen (logrotate) or retarget on reload.
    sink: Option<LogSink>,
}

fn options(config: &gatehouse_config::BackupServer, sink: Option<&LogSink>) -> anyhow::Result<Options> {
    let tls = match &config.tls {
        Some(cert) => Some(
            gatehouse_tls::server_config(std::slice::from_ref(cert), &[b"http/1.1"])
                .map_err(|e| anyhow::anyhow!("backup_server tls: building the TLS config: {e}"))?,
        ),
        None => None,
    };
    let users: HashMap<String, UserOptions> = config
        .users
        .iter()
        .map(|u| {
            (
                u.name.value.clone(),
                UserOptions {
                    append_only: u.append_only,
                    quota: u.quota,
                },
            )
        })
        .collect();
    let access_log = sink.cloned().map(|sink| {
        let send: Arc<dyn Fn(String) + Send + Sync> = Arc::new(move |line| sink.send(line));
        send
    });
    Ok(Options {
        listen: config.listen.value,
        tls,
        dir: config.dir.value.clone(),
        htpasswd: config.htpasswd.as_ref().map(|h| h.value.clone()),
        private_repos: config.private_repos,
        append_only: config.append_only,
        verify_uploads: config.verify_uploads,
        users,
        max_size: config.max_size,
        access_log,
    })
}

pub async fn start(
    config: &gatehouse_config::BackupServer,
    metrics: &Arc<BackupMetrics>,
) -> anyhow::Result<Running> {
    let sink = match &config.access_log {
        Some(target) => Some(LogSink::start(target, "backup")?),
        None => None,
    };
    let server = BackupServer::start(options(config, sink.as_ref())?, metrics.clone()).await?;
    tracing::info!(
        dir = %config.dir.value.display(),
        "backup server: restic REST on {}://{}/",
        if config.tls.is_some() { "https" } else { "http" },
        server.local_addr()
    );
    Ok(Running {
        config: config.clone(),
        server,
        sink,
    })
}

impl Running {
    /// Whether this server can take `config` as it runs: same listener and
    /// directory.
    pub fn same_place(&self, config: &gatehouse_config::BackupServer) -> bool {
        self.config.listen.value == config.listen.value && self.config.dir.value == config.dir.value
    }

    pub fn same_listen(&self, config: &gatehouse_config::BackupServer) -> bool {
        self.config.listen.value == config.listen.value
    }

    /// New users (the htpasswd file re-read), limits, certificate and access
    /// log. On error nothing changed.
    pub fn reconfigure(&mut self, config: &gatehouse_config::BackupServer) -> anyhow::Result<()> {
        let sink = match (&self.sink, &config.access_log) {
            (Some(sink), Some(_)) => Some(sink.clone()),
            (None, Some(target)) => Some(LogSink::start(target, "backup")?),
            (_, None) => None,
        };
        self.server.reconfigure(options(config, sink.as_ref())?)?;
        if let (Some(sink), Some(target)) = (&sink, &config.access_log) {
            sink.reopen(target);
        }
        self.sink = sink;
        self.config = config.clone();
        Ok(())
    }

    pub async fn stop(self) {
        self.server.shutdown().await;
    }
}
