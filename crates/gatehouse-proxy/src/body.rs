//! Bodies in both directions, streamed frame by frame, and what happens when
//! a response ends: the backend connection goes back to its pool, the
//! in-flight gauges come down, the access log line is written.
//!
//! Those are `Drop` impls because a response can end in many ways (read to the
//! end, client gone, backend gone, connection cut at shutdown) and every one
//! must balance the gauges.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use gatehouse_health::Backend;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

use crate::access_log::HttpLog;
use crate::http::Client;
use crate::upstream::{Conn, Upstream};

/// A request body on its way to the backend, cut at `max_body`.
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: Incoming,
    limit: u64,
    seen: u64,
}

/// The request body was larger than `max_body`.
#[derive(Debug)]
pub(crate) struct TooLarge(pub u64);

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request body larger than max_body ({} bytes)", self.0)
    }
}

impl StdError for TooLarge {}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, limit: Option<u64>) -> RequestBody {
        RequestBody {
            inner,
            limit: limit.unwrap_or(u64::MAX),
            seen: 0,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err(Box::new(TooLarge(this.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a forwarding error came from cutting the body at `max_body`.
pub(crate) fn is_too_large(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<TooLarge>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// A request in flight to a backend: counted in the backend's connections
/// gauge (least-conn and random-two read it) until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Backend>);

impl InFlight {
    pub(crate) fn new(backend: Arc<Backend>) -> InFlight {
        backend.stats.connections.inc();
        InFlight(backend)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.stats.connections.dec();
    }
}

/// The end of one request on a client connection, however it ends: the
/// connection's request count (its read timeouts) and the access log line.
/// Made when hyper hands the request over (before its future first runs, so
/// the connection counts as busy at once), and it travels with the response
/// body; a request whose client disappears before the answer still balances
/// the count and is logged (499, as nginx does).
#[derive(Debug)]
pub(crate) struct Finish {
    client: Arc<Client>,
    pub(crate) log: Option<Box<HttpLog>>,
    /// Response body bytes sent.
    bytes: u64,
    /// An upgraded connection: the tunnel owns the connection from now on, so
    /// the client's header and idle timeouts must not apply any more.
    pub(crate) keep_busy: bool,
}

impl Finish {
    pub(crate) fn new(client: Arc<Client>) -> Finish {
        client.in_flight.fetch_add(1, Ordering::Relaxed);
        Finish {
            client,
            log: None,
            bytes: 0,
            keep_busy: false,
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if !self.keep_busy {
            self.client.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(log) = self.log.take() {
            log.finish(self.bytes);
        }
    }
}

/// A response body: the backend's, streamed, or a short one of our own.
#[derive(Debug)]
pub(crate) struct ResponseBody {
    inner: Inner,
    ended: bool,
    /// The backend connection, driven while the body streams, and where it
    /// goes back when the body was read to the end.
    reuse: Option<(Arc<Upstream>, Conn)>,
    _in_flight: Option<InFlight>,
    finish: Finish,
}

#[derive(Debug)]
enum Inner {
    Backend(Incoming),
    Fixed(Option<Bytes>),
}

impl ResponseBody {
    pub(crate) fn backend(
        body: Incoming,
        reuse: Option<(Arc<Upstream>, Conn)>,
        in_flight: InFlight,
        finish: Finish,
    ) -> ResponseBody {
        ResponseBody {
            inner: Inner::Backend(body),
            ended: false,
            reuse,
            _in_flight: Some(in_flight),
            finish,
        }
    }

    pub(crate) fn fixed(bytes: Bytes, finish: Finish) -> ResponseBody {
        ResponseBody {
            inner: Inner::Fixed((!bytes.is_empty()).then_some(bytes)),
            ended: false,
            reuse: None,
            _in_flight: None,
            finish,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = match (&mut this.inner, &mut this.reuse) {
            // The body is fed by its connection, which is driven only here:
            // take what is there, drive the connection only when nothing is.
            // Data can arrive only while we drive, so the body itself need
            // not wake us (a wake-up would only poll this task once more for
            // nothing); the connection's socket does.
            (Inner::Backend(body), Some((_, conn))) if conn.is_inline() => {
                let quiet = &mut Context::from_waker(Waker::noop());
                match Pin::new(&mut *body).poll_frame(quiet) {
                    Poll::Pending => {
                        conn.poll_drive(cx);
                        Pin::new(body).poll_frame(quiet)
                    }
                    ready => ready,
                }
            }
            (Inner::Backend(body), _) => Pin::new(body).poll_frame(cx),
            (Inner::Fixed(bytes), _) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.finish.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended
            || match &self.inner {
                Inner::Backend(body) => body.is_end_stream(),
                Inner::Fixed(bytes) => bytes.is_none(),
            }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Backend(body) => body.size_hint(),
            Inner::Fixed(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some((upstream, conn)) = self.reuse.take()
            && self.is_end_stream()
        {
            if conn.private {
                self.finish.client.keep_private(upstream, conn);
            } else {
                upstream.checkin(conn);
            }
        }
    }
}
