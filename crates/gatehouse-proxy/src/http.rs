//! One HTTP client connection: hyper's HTTP/1.1 or HTTP/2 server on the
//! client's socket (plain or TLS; ALPN chose the protocol), each request
//! handed to [`forward`](crate::forward), and after an HTTP/1.1 upgrade (a
//! 101 answer) the tunnel between client and backend.

use std::cell::RefCell;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, Stream};
use gatehouse_config::Timeouts;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::body::Finish;
use crate::client_io::ClientIo;
use crate::headers::ClientHeaders;
use crate::listener::Shared;
use crate::proxy_protocol::Addresses;
use crate::settings::Settings;
use crate::stream::ClientStream;
use crate::upstream::{Conn, Upstream};

pub(crate) type Tunnel = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What every request of one client connection shares.
pub(crate) struct Client {
    /// The client and the address it connected to (from a PROXY header
    /// when a trusted upstream sent one): what `send_proxy` tells backends.
    pub(crate) addresses: Addresses,
    /// Over TLS: the SNI name the client sent, and the certificate it got.
    pub(crate) tls: Option<TlsSession>,
    pub(crate) headers: ClientHeaders,
    /// Requests received and not yet answered to the end: tells the socket
    /// which read deadline applies.
    pub(crate) in_flight: AtomicUsize,
    header_ms: AtomicU64,
    idle_ms: AtomicU64,
    /// Set by a request answered with 101: run after hyper lets go of the
    /// connection.
    tunnel: Mutex<Option<Tunnel>>,
    /// A backend connection that began with this client's PROXY header
    /// (`send_proxy`): kept for the client's next request to that backend, as
    /// HAProxy keeps such connections private to their client.
    /// Boxed: most clients never have one, and every client pays for the room.
    private: Mutex<Option<Box<Private>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("ip", &self.ip())
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

/// A private backend connection and the upstream it goes to.
type Private = (Arc<Upstream>, Conn);

/// What a TLS client connection negotiated. (Which certificate it got
/// follows from the SNI name; it is worked out only when a 421 may be due.)
#[derive(Debug, Clone)]
pub(crate) struct TlsSession {
    pub(crate) sni: Option<String>,
}

impl Client {
    fn new(addresses: Addresses, tls: Option<TlsSession>, timeouts: &Timeouts) -> Client {
        let ip = addresses.source.ip();
        let client = Client {
            addresses,
            headers: ClientHeaders::new(ip, tls.is_some()),
            tls,
            in_flight: AtomicUsize::new(0),
            header_ms: AtomicU64::new(0),
            idle_ms: AtomicU64::new(0),
            tunnel: Mutex::new(None),
            private: Mutex::new(None),
        };
        client.set_timeouts(timeouts);
        client
    }

    /// The client's address (a trusted upstream's PROXY header tells it).
    pub(crate) fn ip(&self) -> IpAddr {
        self.addresses.source.ip()
    }

    fn set_timeouts(&self, timeouts: &Timeouts) {
        self.header_ms.store(millis(timeouts.header), Ordering::Relaxed);
        self.idle_ms.store(millis(timeouts.idle), Ordering::Relaxed);
    }

    pub(crate) fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn set_tunnel(&self, tunnel: Tunnel) {
        *self.tunnel.lock().unwrap_or_else(|e| e.into_inner()) = Some(tunnel);
    }

    /// Keep a private backend connection whose response was read to the end
    /// (one: the most recent; an older one closes).
    pub(crate) fn keep_private(&self, upstream: Arc<Upstream>, conn: Conn) {
        if conn.is_open() {
            *self.private.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new((upstream, conn)));
        }
    }

    /// The kept private connection, if it is to `upstream`.
    pub(crate) fn take_private(&self, upstream: &Arc<Upstream>) -> Option<Conn> {
        let mut private = self.private.lock().unwrap_or_else(|e| e.into_inner());
        match private.take() {
            Some(kept) if Arc::ptr_eq(&kept.0, upstream) => Some(kept.1),
            other => {
                *private = other;
                None
            }
        }
    }

    fn take_tunnel(&self) -> Option<Tunnel> {
        self.tunnel.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// hyper's HTTP/1.1 server, as the service's settings want it.
fn builder(settings: &Settings) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        // Our ClientIo keeps the header and idle deadlines (see there).
        .header_read_timeout(None)
        // A head larger than max_header is answered 431 (the buffer bound
        // makes hyper give up on an incomplete one of that size too).
        .max_header_size(settings.max_header)
        .max_buf_size(settings.max_header.max(8192))
        // One send(2) per flush rather than writev(2) of head and body: for
        // the small responses that dominate, the copy is cheaper than the
        // vectored path through the VFS.
        .writev(false);
    builder
}

/// Serve one client connection until it closes, is drained, or is cut:
/// hyper serves requests; an idle connection is parked (hyper lets go of it
/// and its buffers) until the client sends again; after a 101 the tunnel
/// takes over. `h2`: ALPN chose HTTP/2.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    settings: Arc<Settings>,
    stream: ClientStream,
    addresses: Addresses,
    tls: Option<TlsSession>,
    h2: bool,
) {
    let client = Arc::new(Client::new(addresses, tls, &settings.timeouts));

    // Each request takes the service's settings current when it arrives: a
    // reload reaches kept-alive connections at their next request. The
    // generation check is one atomic load; the lock is taken only after a
    // reload.
    let current = RefCell::new(settings);
    let handler_client = client.clone();
    let handler_shared = shared.clone();
    let mut service = service_fn(move |request| {
        let finish = Finish::new(handler_client.clone());
        let settings = {
            let mut current = current.borrow_mut();
            if current.generation != handler_shared.generation() {
                *current = handler_shared.settings();
                handler_client.set_timeouts(&current.timeouts);
            }
            current.clone()
        };
        crate::forward::handle(settings, handler_client.clone(), request, finish)
    });

    let mut io = ClientIo::new(stream, client.clone(), h2);
    if h2 {
        // Boxed: an HTTP/1.1 connection's task then does not carry HTTP/2's
        // room (idle keep-alive connections cost what their task holds).
        return Box::pin(async move {
            let streams = Streams::default();
            let mut builder = http2::Builder::new(streams.clone());
            builder
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(shared.settings().max_header).unwrap_or(u32::MAX))
                .max_concurrent_streams(256);
            let mut connection = H2Connection {
                connection: Box::pin(builder.serve_connection(TokioIo::new(io), service)),
                running: FuturesUnordered::new(),
                streams,
            };
            let served = shared
                .tracker
                .run(&mut connection, |c| c.connection.as_mut().graceful_shutdown())
                .await;
            if let Some(Err(e)) = served {
                tracing::debug!(client = %client.ip(), "client h2 connection: {e}");
            }
        })
        .await;
    }
    loop {
        // Boxed, so that a parked connection does not keep its room.
        let mut connection = Box::new(
            builder(&shared.settings())
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        );
        let served = shared
            .tracker
            .run(&mut connection, |c| Pin::new(&mut **c).graceful_shutdown())
            .await;
        let Some(result) = served else {
            return; // cut at shutdown
        };
        if let Err(e) = result {
            tracing::debug!(client = %client.ip(), "client connection: {e}");
        }
        if let Some(mut tunnel) = client.take_tunnel() {
            shared.tracker.run(&mut tunnel, |_| {}).await;
            return;
        }
        // hyper let go of the connection: closed, or parked (see ClientIo).
        let Some(parts) = (*connection).into_parts() else {
            return;
        };
        io = parts.io.into_inner();
        service = parts.service;
        if !io.parked() {
            return;
        }
        let mut unread = Some(parts.read_buf);
        let tracker = &shared.tracker;
        let mut next = std::future::poll_fn(|cx| {
            if tracker.draining() {
                return Poll::Ready(Err(()));
            }
            io.poll_next_request(unread.take().unwrap_or_default(), cx)
                .map_err(|_| ())
        });
        if !matches!(tracker.run(&mut next, |_| {}).await, Some(Ok(()))) {
            return;
        }
    }
}

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper runs each HTTP/2 stream (a request and its response) as a future
/// handed to an executor. This one keeps them in the connection's own task,
/// polled beside the connection ([`H2Connection`]), instead of a task per
/// request: no task to allocate and schedule, and a backend's answer wakes
/// the task that writes it to the client. (Requests of one client
/// connection then share one core, as they share one socket anyway.)
#[derive(Clone, Default)]
struct Streams {
    new: Arc<Mutex<Vec<StreamFuture>>>,
}

impl<F> hyper::rt::Executor<F> for Streams
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        self.new
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::pin(stream));
    }
}

/// A client's HTTP/2 connection and its streams in flight.
struct H2Connection<C> {
    connection: Pin<Box<C>>,
    running: FuturesUnordered<StreamFuture>,
    streams: Streams,
}

impl<C: Future> Future for H2Connection<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<C::Output> {
        let this = &mut *self;
        let ended = this.connection.as_mut().poll(cx);
        if let Poll::Ready(output) = ended {
            // Streams end with their connection.
            return Poll::Ready(output);
        }
        // Streams the connection started, then every stream that was woken
        // (FuturesUnordered polls only those); a stream that answers wakes
        // the connection through its own waker, which is this task's.
        loop {
            let new = std::mem::take(&mut *this.streams.new.lock().unwrap_or_else(|e| e.into_inner()));
            this.running.extend(new);
            while let Poll::Ready(Some(())) = Pin::new(&mut this.running).poll_next(cx) {}
            if this
                .streams
                .new
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                return Poll::Pending;
            }
        }
    }
}
