//! Bytes both ways between two streams until both sides are done, or until
//! neither has sent anything for the idle timeout: tcp mode, and HTTP
//! connections after an upgrade (WebSocket).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::body::InFlight;
use crate::upstream::Sender;

/// How a relay ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Both sides closed.
    Closed,
    /// Nothing either way for the idle timeout.
    Idle,
    Error(io::Error),
}

impl End {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle-timeout",
            End::Error(_) => "error",
        }
    }
}

/// What a relay carried.
#[derive(Debug)]
pub(crate) struct Relayed {
    /// Client to backend.
    pub(crate) up: u64,
    /// Backend to client.
    pub(crate) down: u64,
    pub(crate) end: End,
}

/// Traffic seen by both directions of one relay.
struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last read that returned bytes.
    last: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
}

impl Activity {
    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

/// A stream that records what is read from it.
struct Metered<'a, S> {
    inner: S,
    activity: &'a Activity,
    read: &'a AtomicU64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            let ms = self.activity.start.elapsed().as_millis() as u64;
            self.activity.last.store(ms, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<'_, S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copy both ways; when one side closes, its close is passed on and the
/// other direction continues until it closes too.
pub(crate) async fn relay<C, B>(client: C, backend: B, idle: Duration) -> Relayed
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity {
        start: Instant::now(),
        last: AtomicU64::new(0),
        up: AtomicU64::new(0),
        down: AtomicU64::new(0),
    };
    let mut client = Metered {
        inner: client,
        activity: &activity,
        read: &activity.up,
    };
    let mut backend = Metered {
        inner: backend,
        activity: &activity,
        read: &activity.down,
    };
    let end = {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut backend);
        tokio::pin!(copy);
        loop {
            let deadline = activity.last() + idle;
            tokio::select! {
                result = &mut copy => break match result {
                    Ok(_) => End::Closed,
                    Err(e) => End::Error(e),
                },
                () = tokio::time::sleep_until(deadline) => {
                    if activity.last() + idle <= Instant::now() {
                        break End::Idle;
                    }
                }
            }
        }
    };
    Relayed {
        up: activity.up.load(Ordering::Relaxed),
        down: activity.down.load(Ordering::Relaxed),
        end,
    }
}

/// The tunnel after a 101: both sides' upgraded connections, relayed. The
/// backend's request sender and in-flight count live as long as the tunnel.
pub(crate) async fn upgraded(
    client: OnUpgrade,
    backend: OnUpgrade,
    idle: Duration,
    hold: (Sender, InFlight),
) {
    let (client, backend) = match (client.await, backend.await) {
        (Ok(client), Ok(backend)) => (client, backend),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!("upgrade failed: {e}");
            return;
        }
    };
    let relayed = relay(TokioIo::new(client), TokioIo::new(backend), idle).await;
    if let End::Error(e) = &relayed.end {
        tracing::debug!("upgraded connection: {e}");
    }
    drop(hold);
}
