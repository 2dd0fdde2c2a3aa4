//! Response bodies: small ones in memory, objects streamed from disk in big chunks read on the
//! blocking pool (positioned reads, so several ranges of one file need no seeking). The body
//! also writes the access log line and counts bytes read when it is dropped, because only then
//! is it known how much was really sent.

use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::sync::mpsc;

use crate::access_log::Entry;
use crate::metrics::RepoCounters;

/// Bytes per read from disk.
pub const CHUNK: usize = 256 * 1024;
/// Chunks read ahead of the connection.
const READ_AHEAD: usize = 4;

/// A part of a streamed response: bytes made in memory, or a stretch of the file.
#[derive(Debug)]
pub enum Piece {
    Bytes(Bytes),
    File { offset: u64, length: u64 },
}

enum Source {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<io::Result<Bytes>>),
}

/// Where an access log line goes.
pub type Sink = Arc<dyn Fn(String) + Send + Sync>;

pub struct ResponseBody {
    source: Source,
    length: u64,
    sent: u64,
    /// Counts the bytes sent as read from a repository.
    read: Option<Arc<RepoCounters>>,
    /// Writes the access log line.
    log: Option<(Entry, Sink)>,
}

impl ResponseBody {
    pub fn empty() -> ResponseBody {
        ResponseBody::full(Bytes::new())
    }

    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        let bytes = bytes.into();
        let length = bytes.len() as u64;
        let source = Source::Full(if bytes.is_empty() { None } else { Some(bytes) });
        ResponseBody {
            source,
            length,
            sent: 0,
            read: None,
            log: None,
        }
    }

    /// Streams pieces of `file`; `length` must be their total.
    pub fn file(file: std::fs::File, pieces: Vec<Piece>, length: u64) -> ResponseBody {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        tokio::spawn(produce(Arc::new(file), pieces, tx));
        ResponseBody {
            source: Source::Stream(rx),
            length,
            sent: 0,
            read: None,
            log: None,
        }
    }

    pub fn len(&self) -> u64 {
        self.length
    }

    pub fn set_read(&mut self, counters: Arc<RepoCounters>) {
        self.read = Some(counters);
    }

    pub fn set_log(&mut self, entry: Entry, sink: Sink) {
        self.log = Some((entry, sink));
    }
}

async fn produce(file: Arc<std::fs::File>, pieces: Vec<Piece>, tx: mpsc::Sender<io::Result<Bytes>>) {
    for piece in pieces {
        match piece {
            Piece::Bytes(bytes) => {
                if tx.send(Ok(bytes)).await.is_err() {
                    return;
                }
            }
            Piece::File { mut offset, length } => {
                let end = offset + length;
                while offset < end {
                    let n = (end - offset).min(CHUNK as u64) as usize;
                    let file = file.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; n];
                        file.read_exact_at(&mut buf, offset).map(|()| Bytes::from(buf))
                    })
                    .await
                    .unwrap_or_else(|error| Err(io::Error::other(error)));
                    let failed = read.is_err();
                    if tx.send(read).await.is_err() || failed {
                        return;
                    }
                    offset += n as u64;
                }
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let next = match &mut this.source {
            Source::Full(bytes) => bytes.take().map(Ok),
            Source::Stream(rx) => match rx.poll_recv(cx) {
                Poll::Ready(next) => next,
                Poll::Pending => return Poll::Pending,
            },
        };
        Poll::Ready(next.map(|chunk| {
            chunk.map(|bytes| {
                this.sent += bytes.len() as u64;
                Frame::data(bytes)
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.source, Source::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.length - self.sent.min(self.length))
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(read) = self.read.take() {
            read.bytes_read.fetch_add(self.sent, Relaxed);
        }
        if let Some((entry, sink)) = self.log.take() {
            sink(entry.line(self.sent));
        }
    }
}
