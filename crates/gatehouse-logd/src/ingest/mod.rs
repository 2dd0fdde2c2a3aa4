//! Listeners: UDP, TCP and TLS (RFC 5425), the per-source rate limit and
//! the counters.
//!
//! Per read, not per message: a TCP connection reads into its decoder's
//! reusable buffer, frames and classifies what it got into a reusable
//! [`Batch`], and makes one `append` to its host's log before reading again
//! (a slow disk slows the sender, it never loses a message); the UDP
//! listener drains every datagram waiting after each wakeup and makes one
//! `append` per source. The clock is read once per read, the rate limit and
//! the counters are touched once per read.

mod limit;
mod stats;
mod tcp;
mod udp;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

use crate::Batch;
use crate::store::{HostLog, Store};

pub use stats::{IngestStats, SourceStats};

use limit::{Bucket, Limiter};
use stats::Counters;

/// The default `max_message`.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

/// What to listen on and how to treat what arrives.
#[derive(Clone, Debug)]
pub struct IngestOptions {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    /// RFC 5425: the same framing as TCP, inside TLS.
    pub tls: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
    /// The sender's name by peer address; else the address as text (an
    /// IPv4-mapped IPv6 address as IPv4).
    pub hosts: HashMap<IpAddr, String>,
    /// Longer messages are cut here (and flagged truncated).
    pub max_message: usize,
    /// Messages a second per source address; the burst is one second's worth.
    pub rate_limit: Option<NonZeroU32>,
}

impl Default for IngestOptions {
    fn default() -> IngestOptions {
        IngestOptions {
            udp: None,
            tcp: None,
            tls: None,
            hosts: HashMap::new(),
            max_message: DEFAULT_MAX_MESSAGE,
            rate_limit: None,
        }
    }
}

/// The addresses the listeners are bound to (port 0 resolved).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenAddrs {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
}

/// What can change without rebinding.
#[derive(Debug)]
struct Settings {
    hosts: HashMap<IpAddr, String>,
    max_message: usize,
    rate_limit: Option<NonZeroU32>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Settings {
    fn from(options: &IngestOptions) -> Settings {
        Settings {
            hosts: options
                .hosts
                .iter()
                .map(|(ip, name)| (ip.to_canonical(), name.clone()))
                .collect(),
            max_message: options.max_message.max(1),
            rate_limit: options.rate_limit,
            tls: options.tls.as_ref().map(|(_, config)| config.clone()),
        }
    }

    fn host_name(&self, source: IpAddr) -> Arc<str> {
        match self.hosts.get(&source) {
            Some(name) => name.as_str().into(),
            None => source.to_string().into(),
        }
    }
}

struct Shared {
    store: Arc<Store>,
    stats: Arc<IngestStats>,
    limiter: Limiter,
    settings: RwLock<Arc<Settings>>,
    /// Bumped after every settings change, so readers look only when it moved.
    generation: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn settings(&self) -> (u64, Arc<Settings>) {
        let generation = self.generation.load(Ordering::Acquire);
        (generation, crate::sync::read(&self.settings).clone())
    }
}

/// A sender as a connection (or the UDP listener) sees it: resolved once,
/// looked at again only when the settings change.
struct Source {
    ip: IpAddr,
    generation: u64,
    settings: Arc<Settings>,
    name: Arc<str>,
    log: Arc<HostLog>,
    counters: Arc<Counters>,
    bucket: Arc<Mutex<Bucket>>,
}

impl Source {
    fn resolve(shared: &Shared, ip: IpAddr) -> io::Result<Source> {
        let (generation, settings) = shared.settings();
        let name = settings.host_name(ip);
        let log = shared.store.host(&name)?;
        Ok(Source {
            ip,
            generation,
            counters: shared.stats.source(&name, ip),
            bucket: shared.limiter.bucket(ip),
            settings,
            name,
            log,
        })
    }

    /// Picks up new settings (a new host name: a new log and counters).
    fn refresh(&mut self, shared: &Shared) -> io::Result<()> {
        if shared.generation.load(Ordering::Acquire) == self.generation {
            return Ok(());
        }
        let (generation, settings) = shared.settings();
        let name = settings.host_name(self.ip);
        if name != self.name {
            self.log = shared.store.host(&name)?;
            self.counters = shared.stats.source(&name, self.ip);
            self.name = name;
        }
        self.settings = settings;
        self.generation = generation;
        Ok(())
    }

    /// Counts a stored batch.
    fn count(&self, batch: &Batch, unparsed: u64, truncated: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.counters.messages.fetch_add(batch.len() as u64, Relaxed);
        self.counters.bytes.fetch_add(batch.bytes() as u64, Relaxed);
        if unparsed > 0 {
            self.counters.unparsed.fetch_add(unparsed, Relaxed);
        }
        if truncated > 0 {
            self.counters.truncated.fetch_add(truncated, Relaxed);
        }
    }
}

/// Now, in microseconds since the Unix epoch.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

struct Listener {
    requested: SocketAddr,
    local: SocketAddr,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Listeners {
    udp: Option<Listener>,
    tcp: Option<Listener>,
    tls: Option<Listener>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A socket bound, not yet served.
enum Bound {
    Udp(tokio::net::UdpSocket),
    Tcp(tokio::net::TcpListener),
}

/// The running listeners.
pub struct Ingest {
    shared: Arc<Shared>,
    listeners: Mutex<Listeners>,
    shutdown: watch::Sender<bool>,
    /// Every connection task holds a clone; all gone when `recv` gives `None`.
    connections: (mpsc::Sender<()>, mpsc::Receiver<()>),
}

impl Ingest {
    /// Binds every listener, then serves them. An error names the listener
    /// and its address ("log_server tcp 0.0.0.0:601: Address already in use").
    pub async fn start(
        options: IngestOptions,
        store: Arc<Store>,
        stats: Arc<IngestStats>,
    ) -> io::Result<Ingest> {
        let udp = options.udp.map(|addr| bind("udp", addr)).transpose()?;
        let tcp = options.tcp.map(|addr| bind("tcp", addr)).transpose()?;
        let tls = options
            .tls
            .as_ref()
            .map(|(addr, _)| bind("tls", *addr))
            .transpose()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let ingest = Ingest {
            shared: Arc::new(Shared {
                store,
                stats,
                limiter: Limiter::default(),
                settings: RwLock::new(Arc::new(Settings::from(&options))),
                generation: AtomicU64::new(0),
                shutdown: shutdown_rx,
            }),
            listeners: Mutex::new(Listeners::default()),
            shutdown: shutdown_tx,
            connections: mpsc::channel(1),
        };
        {
            let mut listeners = crate::sync::lock(&ingest.listeners);
            listeners.udp = udp.map(|(addr, bound)| ingest.serve(addr, bound, false));
            listeners.tcp = tcp.map(|(addr, bound)| ingest.serve(addr, bound, false));
            listeners.tls = tls.map(|(addr, bound)| ingest.serve(addr, bound, true));
        }
        Ok(ingest)
    }

    fn serve(&self, requested: SocketAddr, bound: Bound, tls: bool) -> Listener {
        let shared = self.shared.clone();
        let (local, task) = match bound {
            Bound::Udp(socket) => {
                let local = socket.local_addr().unwrap_or(requested);
                (local, tokio::spawn(udp::serve(shared, socket)))
            }
            Bound::Tcp(listener) => {
                let local = listener.local_addr().unwrap_or(requested);
                let done = self.connections.0.clone();
                (local, tokio::spawn(tcp::accept(shared, listener, tls, done)))
            }
        };
        Listener {
            requested,
            local,
            task,
        }
    }

    /// Applies new options: rebinds only the listeners whose address changed
    /// (the new socket is bound before the old one closes; if a bind fails,
    /// nothing changes), and swaps hosts, max_message, rate_limit and the TLS
    /// config live (new connections get the new certificate; open ones pick
    /// up the rest at their next read).
    pub async fn reconfigure(&self, options: IngestOptions) -> io::Result<()> {
        let mut listeners = crate::sync::lock(&self.listeners);
        let requested = |listener: &Option<Listener>| listener.as_ref().map(|l| l.requested);
        let tls_addr = options.tls.as_ref().map(|(addr, _)| *addr);
        let rebind = |name, old: Option<SocketAddr>, new: Option<SocketAddr>| -> io::Result<_> {
            if old == new {
                return Ok(None);
            }
            Ok(Some(new.map(|addr| bind(name, addr)).transpose()?))
        };
        let udp = rebind("udp", requested(&listeners.udp), options.udp)?;
        let tcp = rebind("tcp", requested(&listeners.tcp), options.tcp)?;
        let tls = rebind("tls", requested(&listeners.tls), tls_addr)?;

        *crate::sync::write(&self.shared.settings) = Arc::new(Settings::from(&options));
        self.shared.generation.fetch_add(1, Ordering::AcqRel);

        if let Some(udp) = udp {
            listeners.udp = udp.map(|(addr, bound)| self.serve(addr, bound, false));
        }
        if let Some(tcp) = tcp {
            listeners.tcp = tcp.map(|(addr, bound)| self.serve(addr, bound, false));
        }
        if let Some(tls) = tls {
            listeners.tls = tls.map(|(addr, bound)| self.serve(addr, bound, true));
        }
        Ok(())
    }

    /// Where the listeners are bound.
    pub fn local_addrs(&self) -> ListenAddrs {
        let listeners = crate::sync::lock(&self.listeners);
        let local = |listener: &Option<Listener>| listener.as_ref().map(|l| l.local);
        ListenAddrs {
            udp: local(&listeners.udp),
            tcp: local(&listeners.tcp),
            tls: local(&listeners.tls),
        }
    }

    /// Stops accepting; open TCP and TLS connections get up to about a
    /// second to send what is in flight, then are closed. Everything read
    /// (and every datagram waiting) is appended, and the store flushed,
    /// before this returns.
    pub async fn shutdown(self) {
        let Ingest {
            shared,
            listeners,
            shutdown,
            connections: (done, mut all_done),
        } = self;
        let mut listeners = listeners.into_inner().unwrap_or_else(|e| e.into_inner());
        for listener in [listeners.tcp.take(), listeners.tls.take()].into_iter().flatten() {
            listener.task.abort();
            let _ = (&mut { listener }.task).await;
        }
        let _ = shutdown.send(true);
        if let Some(mut udp) = listeners.udp.take() {
            // It drains the socket once more and returns.
            let _ = (&mut udp.task).await;
        }
        drop(done);
        let _ = all_done.recv().await;
        if let Err(error) = shared.store.flush() {
            tracing::warn!("log_server: flushing the store at shutdown: {error}");
        }
    }
}

/// Binds a listener socket; the error names it.
fn bind(name: &str, addr: SocketAddr) -> io::Result<(SocketAddr, Bound)> {
    let bound = match name {
        "udp" => udp::bind(addr).map(Bound::Udp),
        _ => std::net::TcpListener::bind(addr)
            .and_then(|listener| {
                listener.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(listener)
            })
            .map(Bound::Tcp),
    };
    bound.map(|bound| (addr, bound)).map_err(|error| {
        let text = error.to_string();
        let text = text.split(" (os error").next().unwrap_or(&text);
        io::Error::new(error.kind(), format!("log_server {name} {addr}: {text}"))
    })
}

/// How long a shut-down connection may go on reading in all.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// A shut-down connection that sends nothing for this long is closed at once.
const SHUTDOWN_IDLE: Duration = Duration::from_millis(100);
/// A TLS handshake must finish in this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
