//! The client's socket, with the read deadlines of an HTTP/1.1 connection,
//! and parking of idle connections.
//!
//! Three waits, three rules:
//! - a request head being received (and a new connection's first request):
//!   it must be complete within `timeouts.header`, counted from its first
//!   byte (from the accept for the first request). This is the slowloris
//!   bound, and it also cuts clients that connect and send nothing;
//! - between requests on a kept-alive connection: `timeouts.idle` from the end
//!   of the previous response to the next request's first byte;
//! - a request being served: no client deadline here (the backend's are
//!   `connect` and `request`).
//!
//! hyper's own `header_read_timeout` starts when hyper starts waiting for a
//! head, so it would cut idle keep-alive connections after the (short) header
//! timeout; HAProxy and nginx keep the two apart, and so do we. hyper reads
//! again after a response only when the socket becomes readable, so the idle
//! deadline is started when hyper flushes the response's end.
//!
//! Parking: hyper holds about 16 KiB of buffers per connection for as long as
//! the connection lives. A keep-alive connection idle for [`PARK_AFTER`] is
//! parked instead: its reads report end-of-stream (and its shutdown does
//! nothing), so hyper ends the connection cleanly and hands the socket back
//! (see `http::serve`), which then waits for the client's next request with
//! no buffers at all, as HAProxy and nginx do.
//!
//! The deadline is a [`Deadline`]: keep-alive requests do not each pay for
//! timer-wheel updates.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::deadline::Deadline;
use crate::http::Client;
use crate::stream::ClientStream;

/// How long a keep-alive connection idles before it gives up hyper's buffers.
/// Long enough that a client sending request after request never parks.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Receiving a request head.
    Head,
    /// Between requests.
    Idle,
    /// A request is being served.
    Busy,
}

#[derive(Debug)]
pub(crate) struct ClientIo {
    stream: ClientStream,
    /// HTTP/2: requests interleave with frames (pings, window updates), so
    /// bytes between requests do not start a request head, and the
    /// connection is never parked (hyper's h2 cannot be handed back).
    multiplexed: bool,
    client: Arc<Client>,
    wait: Wait,
    /// When the current wait ends (while idle: parking, or the idle timeout).
    deadline: Deadline,
    /// While idle: when the idle timeout closes the connection.
    idle_until: Instant,
    /// A request head began but its deadline is not set yet: that takes a
    /// clock read, needed only if the head does not arrive in one read.
    head_started: bool,
    /// Handed to hyper as the end of the stream: no hyper state until the
    /// client sends again.
    parked: bool,
    /// Bytes hyper had read but not used when the connection was parked.
    unread: Bytes,
}

impl ClientIo {
    pub(crate) fn new(stream: ClientStream, client: Arc<Client>, multiplexed: bool) -> ClientIo {
        let deadline = Instant::now() + client.header_timeout();
        ClientIo {
            stream,
            multiplexed,
            client,
            wait: Wait::Head,
            deadline: Deadline::new(deadline),
            idle_until: deadline,
            head_started: false,
            parked: false,
            unread: Bytes::new(),
        }
    }

    /// Nothing to read: fail once the deadline of the current wait passed;
    /// while idle, park first.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.deadline.poll_expired(cx));
        if self.wait == Wait::Idle && Instant::now() < self.idle_until {
            if self.multiplexed {
                self.deadline.set(self.idle_until);
                return self.poll_deadline(cx);
            }
            self.parked = true;
            self.deadline.set(self.idle_until);
            return Poll::Ready(Ok(()));
        }
        let what = match self.wait {
            Wait::Head => "no complete request head within the header timeout",
            _ => "no request within the idle timeout",
        };
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
    }

    fn start_head(&mut self) {
        self.wait = Wait::Head;
        self.deadline.set(Instant::now() + self.client.header_timeout());
    }

    /// Follow the connection's requests: busy while one is being served,
    /// idle from the moment the last one is answered.
    fn observe(&mut self) {
        if self.client.in_flight.load(Ordering::Relaxed) > 0 {
            self.wait = Wait::Busy;
            self.head_started = false;
        } else if self.wait == Wait::Busy {
            self.wait = Wait::Idle;
            let now = Instant::now();
            let idle = self.client.idle_timeout();
            self.idle_until = now + idle;
            self.deadline.set(now + idle.min(PARK_AFTER));
        }
    }

    /// Whether hyper let go of the connection because it was parked.
    pub(crate) fn parked(&self) -> bool {
        self.parked
    }

    /// Parked: wait for the client's next request (Ok), or for the idle
    /// timeout or the client's close (Err).
    pub(crate) fn poll_next_request(&mut self, unread: Bytes, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !unread.is_empty() {
            self.unread = unread;
        }
        if !self.unread.is_empty() || self.stream.poll_read_ready(cx).is_ready() {
            self.parked = false;
            return Poll::Ready(Ok(()));
        }
        ready!(self.deadline.poll_expired(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no request within the idle timeout",
        )))
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.parked {
            return Poll::Ready(Ok(()));
        }
        this.observe();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(n));
            if this.wait == Wait::Idle {
                this.start_head();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.wait == Wait::Idle && buf.filled().len() > before && !this.multiplexed {
                    this.wait = Wait::Head;
                    this.head_started = true;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.wait != Wait::Busy => {
                if std::mem::take(&mut this.head_started) {
                    this.start_head();
                }
                this.poll_deadline(cx)
            }
            other => other,
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        AsyncWrite::is_write_vectored(&self.stream)
    }

    /// hyper flushes after writing a response's end but reads again only
    /// when the socket becomes readable: the idle deadline must start here,
    /// with the timer registered to wake the connection when it passes.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.wait == Wait::Busy {
            this.observe();
            if this.wait == Wait::Idle {
                // Pending: the timer now wakes the task at the deadline, and
                // hyper's next read parks or reports the timeout.
                if this.deadline.poll_expired(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
            }
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    /// A parked connection is not closed: hyper only thinks so.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parked {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
