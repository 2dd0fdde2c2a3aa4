//! Connections to one backend: new ones, and kept-alive idle ones to reuse.
//!
//! An idle connection goes back only when its response body was read to the
//! end (anything else leaves it mid-message), most recently used first so the
//! oldest age out. At most [`MAX_IDLE`] wait per backend, each for about a
//! minute: less than nginx's default keepalive_timeout (75 s), so we close
//! first and rarely send a request on a connection the backend is closing.
//!
//! A pooled connection's protocol (hyper's client dispatcher) is driven by
//! whichever request uses it, on that request's task, rather than by a task
//! of its own: a request then costs no wake-ups across tasks, and the
//! backend's socket wakes the client connection's task directly. An idle
//! connection is driven by nobody; whether it is still open is found out when
//! it is next checked out. Upgrade requests get a connection with a task of
//! its own, which hyper needs to hand the upgraded socket over.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use gatehouse_config::{BackendProtocol, ProxyVersion, UpstreamOptions};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::client::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::body::RequestBody;
use crate::deadline::Deadline;
use crate::proxy_protocol::{self, Addresses};
use crate::stream::{MaybeTls, SendOnly};

/// Idle connections kept per backend: enough for the concurrency of a busy
/// moment (an HTTP/2 client alone may have hundreds of requests in flight,
/// each needing its own HTTP/1.1 connection), so that the next one does not
/// open and close connections; those idle too long are reaped.
pub(crate) const MAX_IDLE: usize = 1024;
/// How often [`Upstream::reap`] runs; idle connections are aged in these
/// ticks rather than timestamped, which saves two clock reads per request.
pub(crate) const REAP_EVERY: Duration = Duration::from_secs(5);
/// How long an idle connection is kept: 60 s, in reaper ticks.
const IDLE_TICKS: u32 = 12;

pub(crate) type Sender = SendRequest<RequestBody>;
type Driver = Connection<TokioIo<BackendStream>, RequestBody>;
pub(crate) type H2Sender = http2::SendRequest<RequestBody>;

/// A connection to a backend, plain or TLS.
pub(crate) type BackendStream = MaybeTls<tokio_rustls::client::TlsStream<SendOnly>>;

/// One HTTP/1.1 connection to a backend.
pub(crate) struct Conn {
    sender: Sender,
    /// The protocol state, driven by the user of the connection; none when a
    /// task of its own drives it (upgrades) or once it has ended.
    /// Boxed: a `Conn` moves with request futures, the dispatcher is large.
    driver: Option<Box<Driver>>,
    /// Whether it may go back to the pool.
    pooled: bool,
    /// It began with one client's PROXY header: it may serve only that
    /// client's later requests (kept by the client, not the pool).
    pub(crate) private: bool,
    closed: bool,
    /// The response-head deadline, kept with the connection so that it is
    /// not a new timer per request.
    deadline: Deadline,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// No response head within the request timeout.
#[derive(Debug)]
pub(crate) struct Elapsed;

impl Conn {
    /// Let the connection read and write what it can; note when it ends.
    pub(crate) fn poll_drive(&mut self, cx: &mut Context<'_>) {
        drive(&mut self.driver, &mut self.closed, cx);
    }

    /// Wait until the connection takes a request; false when it has closed.
    pub(crate) async fn ready(&mut self) -> bool {
        if self.sender.is_ready() {
            // Closed meanwhile? Then hyper hands the request back unwritten.
            return true;
        }
        std::future::poll_fn(|cx| {
            drive(&mut self.driver, &mut self.closed, cx);
            if self.closed {
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }

    /// Send a request and wait for the response head until `deadline`.
    ///
    /// Not an `async fn`: the request goes to hyper at once and the future
    /// is a plain struct, so it carries no second copy of the request (the
    /// future is moved with every request's future).
    pub(crate) fn send(
        &mut self,
        request: Request<RequestBody>,
        deadline: Instant,
    ) -> Sending<'_, impl Future<Output = Answer> + use<>> {
        self.deadline.set(deadline.into());
        // Driven here, the dispatcher hands over the response and its body
        // only while we drive it: waiting on them needs no wake-up, so they
        // are polled with a no-op waker (a wake-up would poll this task once
        // more for nothing, or worse, the task that last drove this pooled
        // connection). The socket and the deadline wake us. The first drive,
        // quiet too, makes sure the request queued next wakes nobody.
        let inline = self.driver.is_some();
        if inline {
            drive(
                &mut self.driver,
                &mut self.closed,
                &mut Context::from_waker(Waker::noop()),
            );
        }
        Sending {
            response: self.sender.try_send_request(request),
            driver: &mut self.driver,
            closed: &mut self.closed,
            deadline: &mut self.deadline,
            inline,
        }
    }

    /// Whether this connection is driven by its user (else by a task of its
    /// own: its response and body wake whoever waits on them).
    pub(crate) fn is_inline(&self) -> bool {
        self.driver.is_some()
    }

    pub(crate) fn is_open(&self) -> bool {
        !self.closed && !self.sender.is_closed()
    }

    /// The sender, for a connection whose own task drives it (upgrades).
    pub(crate) fn into_sender(self) -> Sender {
        self.sender
    }
}

/// The response head, or the request back when it was never written.
type Answer = Result<Response<Incoming>, TrySendError<Request<RequestBody>>>;

pin_project_lite::pin_project! {
    /// A request sent on a [`Conn`], waiting for the response head.
    pub(crate) struct Sending<'a, F> {
        #[pin]
        response: F,
        driver: &'a mut Option<Box<Driver>>,
        closed: &'a mut bool,
        deadline: &'a mut Deadline,
        inline: bool,
    }
}

impl<F: Future<Output = Answer>> Future for Sending<'_, F> {
    type Output = Result<Answer, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        drive(this.driver, this.closed, cx);
        let polled = if *this.inline {
            this.response.poll(&mut Context::from_waker(Waker::noop()))
        } else {
            this.response.poll(cx)
        };
        if let Poll::Ready(result) = polled {
            return Poll::Ready(Ok(result));
        }
        this.deadline.poll_expired(cx).map(|()| Err(Elapsed))
    }
}

/// Poll the dispatcher. Ending is dropping: the request sender learns from
/// the dropped dispatcher that the connection is gone (and a request queued
/// but not written comes back to us).
fn drive(driver: &mut Option<Box<Driver>>, closed: &mut bool, cx: &mut Context<'_>) {
    if let Some(connection) = driver
        && Pin::new(connection).poll(cx).is_ready()
    {
        *driver = None;
        *closed = true;
    }
}

/// One backend's connections.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    /// How the backend is reached (compared on reload to keep connections).
    options: UpstreamOptions,
    /// For `backend_tls`: the connector and the name verified.
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// For `backend_protocol = "h2"`: the one multiplexed connection, driven
    /// by a task of its own.
    h2: Mutex<Option<H2Sender>>,
    idle: Mutex<Vec<Idle>>,
    /// Reaper ticks so far.
    tick: AtomicU32,
    /// Seconds (since `epoch`) of the last failure logged, and how many
    /// were not logged since.
    last_warning: AtomicU64,
    unlogged: AtomicU64,
    epoch: Instant,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    /// The reaper tick at check-in.
    since: u32,
}

/// Why a new connection could not be made.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Timeout(Duration),
    Io(io::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout(after) => write!(f, "connect: no answer within {after:?}"),
            ConnectError::Io(e) => write!(f, "connect: {e}"),
        }
    }
}

impl Upstream {
    pub(crate) fn new(addr: SocketAddr, options: &UpstreamOptions) -> Upstream {
        let tls = options.tls.as_ref().map(|tls| {
            let name = match &tls.sni {
                // Validation checked it is a DNS name.
                Some(name) => ServerName::try_from(name.clone())
                    .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into())),
                None => ServerName::IpAddress(addr.ip().into()),
            };
            (tls.config.clone(), name)
        });
        Upstream {
            addr,
            options: options.clone(),
            tls,
            h2: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            tick: AtomicU32::new(0),
            last_warning: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection that still takes requests.
    pub(crate) async fn checkout(&self) -> Option<Conn> {
        let tick = self.tick.load(Ordering::Relaxed);
        loop {
            let mut conn = {
                let mut idle = self.idle();
                loop {
                    let entry = idle.pop()?;
                    if entry.conn.is_open() && tick.wrapping_sub(entry.since) < IDLE_TICKS {
                        break entry.conn;
                    }
                }
            };
            if conn.ready().await {
                return Some(conn);
            }
        }
    }

    /// Keep a connection whose response was read to the end.
    pub(crate) fn checkin(&self, conn: Conn) {
        if !conn.pooled || conn.private || !conn.is_open() {
            return;
        }
        let since = self.tick.load(Ordering::Relaxed);
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push(Idle { conn, since });
        }
    }

    /// Every [`REAP_EVERY`]: close connections idle for about a minute
    /// (dropping a connection closes its socket).
    pub(crate) fn reap(&self) {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let stale: Vec<Idle> = {
            let mut idle = self.idle();
            // Oldest first: check-ins push to the end.
            let keep = idle
                .iter()
                .position(|c| tick.wrapping_sub(c.since) < IDLE_TICKS)
                .unwrap_or(idle.len());
            idle.drain(..keep).collect()
        };
        drop(stale);
    }

    /// Whether connections made for `options` are the same as ours.
    pub(crate) fn same_options(&self, options: &UpstreamOptions) -> bool {
        let tls = |o: &UpstreamOptions| o.tls.as_ref().map(|t| (t.ca.clone(), t.sni.clone()));
        tls(&self.options) == tls(options)
            && self.options.send_proxy == options.send_proxy
            && self.options.protocol == options.protocol
    }

    /// A new connection's stream: TCP, then the PROXY header for `client`
    /// when the backend wants one, then TLS when it speaks it.
    pub(crate) async fn open(
        &self,
        timeout: Duration,
        client: Addresses,
    ) -> Result<BackendStream, ConnectError> {
        let mut stream = connect_tcp(self.addr, timeout).await?;
        if let Some(version) = self.options.send_proxy {
            let version = match version {
                ProxyVersion::V1 => proxy_protocol::Version::V1,
                ProxyVersion::V2 => proxy_protocol::Version::V2,
            };
            stream
                .write_all(&proxy_protocol::encode(version, client))
                .await
                .map_err(ConnectError::Io)?;
        }
        let Some((config, name)) = &self.tls else {
            return Ok(MaybeTls::Plain(stream));
        };
        let connector = TlsConnector::from(config.clone());
        match tokio::time::timeout(timeout, connector.connect(name.clone(), SendOnly(stream))).await {
            Err(_) => Err(ConnectError::Timeout(timeout)),
            Ok(Err(e)) => Err(ConnectError::Io(io::Error::new(e.kind(), format!("TLS: {e}")))),
            Ok(Ok(tls)) => Ok(MaybeTls::Tls(Box::new(tls))),
        }
    }

    /// A new HTTP/1.1 connection. `upgrade`: for a request that may switch
    /// protocols, so driven by a task of its own and never pooled. `client`:
    /// whom the PROXY header (if any) names.
    pub(crate) async fn connect(
        &self,
        timeout: Duration,
        upgrade: bool,
        client: Addresses,
    ) -> Result<Conn, ConnectError> {
        let stream = self.open(timeout, client).await?;
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Io(io::Error::other(e)))?;
        let driver = if upgrade {
            tokio::spawn(async move {
                // Errors here are the request's to report: it gets them too.
                let _ = connection.with_upgrades().await;
            });
            None
        } else {
            Some(Box::new(connection))
        };
        Ok(Conn {
            sender,
            driver,
            pooled: !upgrade,
            // A connection that began with one client's PROXY header is that
            // client's alone.
            private: self.options.send_proxy.is_some(),
            closed: false,
            deadline: Deadline::new(tokio::time::Instant::now() + timeout),
        })
    }

    /// The backend's HTTP/2 connection, opened when there is none (or it
    /// closed). Streams of every client share it, as HAProxy's and nginx's
    /// h2 backends do.
    pub(crate) async fn h2(&self, timeout: Duration, client: Addresses) -> Result<H2Sender, ConnectError> {
        let current = self.h2.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(mut sender) = current
            && !sender.is_closed()
            && sender.ready().await.is_ok()
        {
            return Ok(sender);
        }
        debug_assert!(self.options.protocol == BackendProtocol::H2);
        let stream = self.open(timeout, client).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Io(io::Error::other(e)))?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(backend = %addr, "h2 connection: {e}");
            }
        });
        *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    /// Whether a failure may be logged now, and how many went unlogged
    /// before it: at most one line a second per backend, so a dead backend
    /// under load does not flood the log (the pool logs it going down).
    pub(crate) fn may_log_failure(&self) -> Option<u64> {
        let now = self.epoch.elapsed().as_secs() + 1;
        let last = self.last_warning.load(Ordering::Relaxed);
        if now != last
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.unlogged.swap(0, Ordering::Relaxed));
        }
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// A TCP connection with Nagle off (requests and responses are written whole).
pub(crate) async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout(timeout)),
        Ok(Err(e)) => return Err(ConnectError::Io(e)),
        Ok(Ok(stream)) => stream,
    };
    stream.set_nodelay(true).map_err(ConnectError::Io)?;
    Ok(stream)
}
