//! The listening socket, the accept loop, and the register of open client
//! connections that lets `shutdown` drain them and then cut the rest.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Poll, Waker};
use std::time::Duration;

use futures_util::future::Either;
use gatehouse_config::Mode;
use gatehouse_health::ServiceStats;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::access_log::LogSink;
use crate::http::TlsSession;
use crate::proxy_protocol::{self, Addresses};
use crate::settings::Settings;
use crate::stream::{ClientStream, SendOnly};

/// What the server's handle, its accept loop and its connections share.
#[derive(Debug)]
pub(crate) struct Shared {
    settings: RwLock<Arc<Settings>>,
    generation: AtomicU64,
    pub(crate) tracker: Tracker,
    /// The access log writer, while the service has an access log.
    pub(crate) log: Mutex<Option<LogSink>>,
}

impl Shared {
    pub(crate) fn new(settings: Settings, log: Option<LogSink>) -> Shared {
        Shared {
            generation: AtomicU64::new(settings.generation),
            settings: RwLock::new(Arc::new(settings)),
            tracker: Tracker::default(),
            log: Mutex::new(log),
        }
    }

    pub(crate) fn settings(&self) -> Arc<Settings> {
        self.settings.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Count a new client connection until the returned guard is dropped.
    pub(crate) fn opened(self: &Arc<Shared>, stats: ServiceStats) -> Open {
        self.tracker.open.fetch_add(1, Ordering::AcqRel);
        stats.client_connections.inc();
        Open {
            shared: self.clone(),
            stats,
        }
    }

    pub(crate) fn set_settings(&self, settings: Settings) {
        let generation = settings.generation;
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
        self.generation.store(generation, Ordering::Release);
    }
}

/// Bind with SO_REUSEADDR (a restart must not wait for TIME_WAIT); `[::]`
/// accepts IPv4 too, and falls back to `0.0.0.0` where IPv6 is unavailable.
pub(crate) fn bind(addr: SocketAddr, backlog: usize) -> io::Result<TcpListener> {
    let open = |addr: SocketAddr| -> io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        Ok(socket.into())
    };
    let listener = match open(addr) {
        // EAFNOSUPPORT, or EADDRNOTAVAIL when IPv6 is disabled by sysctl.
        Err(e)
            if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                && matches!(e.raw_os_error(), Some(97 | 99)) =>
        {
            open(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()))
        }
        other => other,
    }
    .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {}", plain(&e))))?;
    TcpListener::from_std(listener)
}

/// The OS's words without " (os error 98)".
fn plain(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Accept until aborted. At `max_connections` the loop stops accepting and
/// new connections wait in the kernel's backlog, as with HAProxy's maxconn.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        loop {
            let closed = shared.tracker.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if shared.tracker.open() < shared.settings().max_connections {
                break;
            }
            closed.await;
        }
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                if !is_connection_error(&e) {
                    // Out of descriptors or memory: wait for some to free up.
                    tracing::warn!(addr = ?listener.local_addr().ok(), "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let settings = shared.settings();
        let guard = shared.opened(settings.stats.clone());
        let shared = shared.clone();
        // Each connection's task ends by dropping `guard`: everything the
        // connection held (requests in flight and their backend gauges) is
        // gone before it stops counting as open, so a shutdown that waits for
        // the count then finds everything closed.
        let proxy_header = settings.expects_proxy_header(peer.ip());
        if settings.tls.is_none() && !proxy_header {
            // Nothing to set up: the task holds only the serving future (an
            // idle keep-alive connection costs what this task holds).
            let addresses = client_addresses(&settings, &stream, peer);
            tokio::spawn(async move {
                serve(
                    shared,
                    settings,
                    ClientStream::Plain(stream),
                    addresses,
                    None,
                    false,
                )
                .await;
                drop(guard);
            });
        } else {
            tokio::spawn(async move {
                let mut setup = Box::pin(set_up(&settings, stream, peer, proxy_header));
                let ready = shared.tracker.run(&mut setup, |_| {}).await.flatten();
                drop(setup);
                if let Some((stream, addresses, session, h2)) = ready {
                    serve(shared, settings, stream, addresses, session, h2).await;
                }
                drop(guard);
            });
        }
    }
}

/// A connection once set up (the PROXY header from a trusted upstream and
/// the TLS handshake, both within the header timeout, run under the tracker
/// so that a shutdown cuts them too): HTTP or TCP. Not an `async fn`: the
/// future is the serving one itself, with no room of its own around it.
fn serve(
    shared: Arc<Shared>,
    settings: Arc<Settings>,
    stream: ClientStream,
    addresses: Addresses,
    session: Option<TlsSession>,
    h2: bool,
) -> impl Future<Output = ()> {
    match settings.mode {
        Mode::Tcp => Either::Left(async move {
            let mut relay = Box::pin(crate::tcp::serve(settings, stream, addresses));
            shared.tracker.run(&mut relay, |_| {}).await;
        }),
        // Runs its connection under the tracker itself (to drain gracefully).
        _ => Either::Right(crate::http::serve(
            shared, settings, stream, addresses, session, h2,
        )),
    }
}

/// What a connection is once set up: the stream, who the client is, the
/// TLS session and whether ALPN chose HTTP/2.
type SetUp = (ClientStream, Addresses, Option<TlsSession>, bool);

/// Who the client is and where it connected: IPv4 clients of a dual-stack
/// listener as plain IPv4. The local address costs a system call and only
/// `send_proxy` reads it, so without that it is left as the peer's.
fn client_addresses(settings: &Settings, stream: &TcpStream, peer: SocketAddr) -> Addresses {
    let local = if settings.sends_proxy {
        stream.local_addr().unwrap_or(peer)
    } else {
        peer
    };
    Addresses {
        source: canonical(peer),
        destination: canonical(local),
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

async fn set_up(
    settings: &Settings,
    mut stream: TcpStream,
    peer: SocketAddr,
    proxy_header: bool,
) -> Option<SetUp> {
    let mut addresses = client_addresses(settings, &stream, peer);
    let deadline = tokio::time::Instant::now() + settings.timeouts.header;
    if proxy_header {
        match proxy_protocol::read_header(&mut stream, settings.timeouts.header).await {
            Ok(Some(told)) => {
                addresses = Addresses {
                    source: canonical(told.source),
                    destination: canonical(told.destination),
                }
            }
            // The upstream's own health check: its address stands.
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(service = %settings.service, "{e}");
                return None;
            }
        }
    }
    let (stream, session, h2) = match &settings.tls {
        None => (ClientStream::Plain(stream), None, false),
        Some(tls) => {
            let handshake = tokio::time::timeout_at(
                deadline,
                tokio_rustls::TlsAcceptor::from(tls.config.clone()).accept(SendOnly(stream)),
            )
            .await;
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(service = %settings.service, client = %addresses.source, "TLS handshake: {e}");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(service = %settings.service, client = %addresses.source, "TLS handshake: no handshake within the header timeout");
                    return None;
                }
            };
            let connection = stream.get_ref().1;
            let sni = connection.server_name().map(str::to_ascii_lowercase);
            let h2 = connection.alpn_protocol() == Some(b"h2");
            (ClientStream::Tls(Box::new(stream)), Some(TlsSession { sni }), h2)
        }
    };
    Some((stream, addresses, session, h2))
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

// Phases; 0 (the default) is running.
const DRAINING: u8 = 1;
const CUT: u8 = 2;

/// Open client connections, and the way to tell them all to stop.
///
/// Each connection's future registers its task's waker once; telling them
/// to drain or to stop is a flag plus a wake-up of every registered task.
/// The per-poll cost is one atomic load (no channel or `Notify` polled on
/// every wake-up of every connection).
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    phase: AtomicU8,
    open: AtomicUsize,
    wakers: Mutex<Wakers>,
    /// Notified whenever a connection closes.
    closed: Notify,
}

#[derive(Debug, Default)]
struct Wakers {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

/// One open client connection: counted while it lives.
#[derive(Debug)]
pub(crate) struct Open {
    shared: Arc<Shared>,
    stats: ServiceStats,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.stats.client_connections.dec();
        let tracker = &self.shared.tracker;
        tracker.open.fetch_sub(1, Ordering::AcqRel);
        tracker.closed.notify_waiters();
    }
}

/// Unregisters a connection's waker when its future ends or is dropped.
struct Registration<'a> {
    tracker: &'a Tracker,
    slot: Option<usize>,
    waker: Option<Waker>,
}

impl Registration<'_> {
    fn update(&mut self, waker: &Waker) {
        if self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return;
        }
        let mut wakers = self.tracker.lock();
        let slot = match self.slot {
            Some(slot) => slot,
            None => {
                let slot = wakers.free.pop().unwrap_or_else(|| {
                    wakers.slots.push(None);
                    wakers.slots.len() - 1
                });
                self.slot = Some(slot);
                slot
            }
        };
        wakers.slots[slot] = Some(waker.clone());
        self.waker = Some(waker.clone());
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            let mut wakers = self.tracker.lock();
            wakers.slots[slot] = None;
            wakers.free.push(slot);
        }
    }
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Wakers> {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Run a connection's future. When draining starts, `on_drain` is called
    /// once (hyper's graceful shutdown: finish the request in flight, close
    /// when idle); when the rest are cut, `None` is returned (and the caller
    /// drops the future).
    pub(crate) async fn run<F: Future + Unpin>(
        &self,
        future: &mut F,
        mut on_drain: impl FnMut(&mut F),
    ) -> Option<F::Output> {
        let mut registration = Registration {
            tracker: self,
            slot: None,
            waker: None,
        };
        let mut drained = false;
        std::future::poll_fn(|cx| {
            // Register before reading the phase: a phase change after this
            // point wakes us.
            registration.update(cx.waker());
            match self.phase.load(Ordering::Acquire) {
                CUT => return Poll::Ready(None),
                DRAINING if !drained => {
                    drained = true;
                    on_drain(future);
                }
                _ => {}
            }
            Pin::new(&mut *future).poll(cx).map(Some)
        })
        .await
    }

    /// Whether shutdown has begun.
    pub(crate) fn draining(&self) -> bool {
        self.phase.load(Ordering::Acquire) != 0
    }

    fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::Release);
        let wakers: Vec<Waker> = self.lock().slots.iter().flatten().cloned().collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Wait until no connection is open or the deadline passes; true if none is.
    async fn wait_closed(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.open() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return self.open() == 0;
            }
        }
    }

    /// Drain, then cut what is left after `drain`; returns how many were cut.
    pub(crate) async fn shutdown(&self, drain: Duration) -> usize {
        self.set_phase(DRAINING);
        if self.wait_closed(tokio::time::Instant::now() + drain).await {
            return 0;
        }
        let cut = self.open();
        self.set_phase(CUT);
        // Cut futures end at their next poll, which the wake-up above causes.
        self.wait_closed(tokio::time::Instant::now() + Duration::from_secs(5))
            .await;
        cut
    }
}
