//! The listener: accepts connections (TLS when configured), serves HTTP/1.1 on each, swaps its
//! configuration live on reload, and stops by closing the listener and letting requests in
//! flight finish for up to [`DRAIN`].

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::htpasswd::Htpasswd;
use crate::metrics::BackupMetrics;
use crate::usage::Usage;
use crate::{Options, handler};

/// How long requests in flight get when the server stops.
const DRAIN: Duration = Duration::from_secs(10);
/// How long a client gets to send a request's headers. Generous: restic keeps connections
/// idle between requests, and hyper's default (30 s) would close them sooner than Go's pool
/// expects.
const HEADER_READ: Duration = Duration::from_secs(120);
/// How long a client gets to finish a TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// What a reload may change, swapped as a whole.
pub struct Live {
    pub options: Options,
    pub htpasswd: Option<Arc<Htpasswd>>,
}

impl Live {
    fn load(options: Options) -> io::Result<Live> {
        let htpasswd = match &options.htpasswd {
            Some(path) => Some(Arc::new(Htpasswd::load(path)?)),
            None => None,
        };
        Ok(Live { options, htpasswd })
    }
}

/// What every connection and request shares.
pub struct Shared {
    pub dir: PathBuf,
    pub usage: Arc<Usage>,
    pub metrics: Arc<BackupMetrics>,
    live: RwLock<Arc<Live>>,
}

impl Shared {
    pub fn live(&self) -> Arc<Live> {
        crate::sync::read(&self.live).clone()
    }
}

/// A running backup server.
pub struct BackupServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    listen: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for BackupServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// An I/O error's text without Rust's " (os error N)" tail, for messages people read.
fn plain(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

impl BackupServer {
    /// Creates the directory, reads htpasswd, counts the bytes stored, binds, and serves.
    pub async fn start(options: Options, metrics: Arc<BackupMetrics>) -> io::Result<BackupServer> {
        let dir = options.dir.clone();
        let listen = options.listen;
        std::fs::create_dir_all(&dir).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("backup_server dir {}: {}", dir.display(), plain(&error)),
            )
        })?;
        let live = Live::load(options)?;
        let scan_dir = dir.clone();
        let usage = tokio::task::spawn_blocking(move || Usage::scan(&scan_dir))
            .await
            .map_err(io::Error::other)?
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("backup_server dir {}: {}", dir.display(), plain(&error)),
                )
            })?;
        let listener = TcpListener::bind(listen).await.map_err(|error| {
            io::Error::new(error.kind(), format!("backup_server {listen}: {}", plain(&error)))
        })?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            dir,
            usage: Arc::new(usage),
            metrics,
            live: RwLock::new(Arc::new(live)),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stopped));
        Ok(BackupServer {
            shared,
            local_addr,
            listen,
            stop,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Applies new options: `listen` and `dir` must stay; htpasswd is read again. On error
    /// nothing changes.
    pub fn reconfigure(&self, options: Options) -> io::Result<()> {
        if options.listen != self.listen {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "backup_server listen cannot change on reload ({} to {})",
                    self.listen, options.listen
                ),
            ));
        }
        if options.dir != self.shared.dir {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "backup_server dir cannot change on reload ({} to {})",
                    self.shared.dir.display(),
                    options.dir.display()
                ),
            ));
        }
        let live = Live::load(options)?;
        *crate::sync::write(&self.shared.live) = Arc::new(live);
        Ok(())
    }

    /// Stops accepting; requests in flight get up to ten seconds.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(stream, peer, shared.clone(), stopped.clone()));
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(%error, "backup server accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained =
        tokio::time::timeout(DRAIN, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "backup server stopped with requests unfinished"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stopped: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let tls = shared.live().options.tls.clone();
    match tls {
        None => serve(TokioIo::new(stream), peer, shared, stopped).await,
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve(TokioIo::new(stream), peer, shared, stopped).await,
                Ok(Err(error)) => tracing::debug!(%peer, %error, "backup server TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "backup server TLS handshake timed out"),
            }
        }
    }
}

async fn serve<I>(io: TokioIo<I>, peer: SocketAddr, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(handler::handle(shared, peer, request).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ)
        .serve_connection(io, service);
    tokio::pin!(conn);
    if *stopped.borrow() {
        conn.as_mut().graceful_shutdown();
    }
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "backup connection ended with an error");
            }
            return;
        }
        _ = stopped.changed() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}
