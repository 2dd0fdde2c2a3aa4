//! TCP and TLS connections: one task each, one append per read.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use super::{HANDSHAKE_TIMEOUT, SHUTDOWN_GRACE, SHUTDOWN_IDLE, Shared, Source, now_us};
use crate::frame::Decoder;
use crate::message::classify_frame;
use crate::{Batch, Flags};

/// Accepts connections until aborted; each gets a task holding a clone of `done`.
pub(super) async fn accept(shared: Arc<Shared>, listener: TcpListener, tls: bool, done: mpsc::Sender<()>) {
    let name = if tls { "tls" } else { "tcp" };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, mostly: wait rather than spin.
                tracing::warn!("log_server {name}: accept: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket2::SockRef::from(&stream).set_keepalive(true);
        let config = if tls {
            match shared.settings().1.tls.clone() {
                Some(config) => Some(config),
                None => continue,
            }
        } else {
            None
        };
        let shared = shared.clone();
        let guard = Guard::new(&shared, done.clone());
        tokio::spawn(async move {
            let _guard = guard;
            match config {
                None => serve(&shared, stream, peer).await,
                Some(config) => {
                    let handshake = TlsAcceptor::from(config).accept(stream);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(stream)) => serve(&shared, stream, peer).await,
                        Ok(Err(error)) => tracing::debug!("log_server tls {peer}: handshake: {error}"),
                        Err(_) => tracing::debug!("log_server tls {peer}: handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Counts the connection while it lives, and tells shutdown when it is gone.
struct Guard {
    shared: Arc<Shared>,
    _done: mpsc::Sender<()>,
}

impl Guard {
    fn new(shared: &Arc<Shared>, done: mpsc::Sender<()>) -> Guard {
        shared.stats.connection_opened();
        Guard {
            shared: shared.clone(),
            _done: done,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.stats.connection_closed();
    }
}

/// Reads smaller than this, back to back, mean a sender writing message by
/// message faster than they are read: worth waiting [`COALESCE`] for more.
const BUSY_READ: usize = 16 * 1024;
const COALESCE: Duration = Duration::from_millis(1);

/// Reads, frames, classifies and appends until the peer closes (or shutdown's
/// grace ends).
async fn serve<S: AsyncRead + Unpin>(shared: &Shared, mut stream: S, peer: SocketAddr) {
    let ip = peer.ip().to_canonical();
    let Some(mut source) = resolve(shared, ip).await else {
        return;
    };
    let mut decoder = Decoder::new(source.settings.max_message);
    let mut batch = Batch::new();
    let mut shutdown = shared.shutdown.clone();
    let mut deadline = (*shutdown.borrow_and_update()).then(|| Instant::now() + SHUTDOWN_GRACE);
    let mut last_read = Instant::now() - COALESCE;
    loop {
        let read = match deadline {
            None => {
                tokio::select! {
                    read = stream.read(decoder.read_buf()) => read,
                    _ = shutdown.changed() => {
                        deadline = Some(Instant::now() + SHUTDOWN_GRACE);
                        continue;
                    }
                }
            }
            Some(deadline) => {
                let wait = deadline
                    .saturating_duration_since(Instant::now())
                    .min(SHUTDOWN_IDLE);
                match tokio::time::timeout(wait, stream.read(decoder.read_buf())).await {
                    Ok(read) => read,
                    Err(_) => Ok(0),
                }
            }
        };
        let n = match read {
            Ok(n) => n,
            Err(error) => {
                tracing::debug!("log_server {peer}: {error}");
                0
            }
        };
        let received_us = now_us();
        decoder.filled(n);
        if let Err(error) = source.refresh(shared) {
            store_error(shared, &source.name, &error);
        }
        if source.settings.max_message != decoder.max_message() {
            decoder.set_max_message(source.settings.max_message);
        }
        let (mut unparsed, mut truncated) = (0, 0);
        let mut push = |message: &[u8], flags: Flags| {
            let flags = flags | classify_frame(message, flags.contains(Flags::TRUNCATED));
            unparsed += u64::from(flags.contains(Flags::UNPARSED));
            truncated += u64::from(flags.contains(Flags::TRUNCATED));
            batch.push(received_us, flags, message);
        };
        while let Some(frame) = decoder.next_frame() {
            push(frame.message, frame.flags);
        }
        if n == 0
            && let Some(frame) = decoder.finish()
        {
            push(frame.message, frame.flags);
        }
        let mut wait = Duration::ZERO;
        if !batch.is_empty() {
            if let Some(rate) = source.settings.rate_limit {
                let over;
                (wait, over) = crate::sync::lock(&source.bucket).take(batch.len(), rate, Instant::now());
                if over > 0 {
                    source
                        .counters
                        .throttled
                        .fetch_add(over as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            append(shared, &source, &batch, deadline.is_some()).await;
            source.count(&batch, unparsed, truncated);
            batch.clear();
        }
        if n == 0 {
            return;
        }
        // A busy sender writes each message on its own (loggen, rsyslog
        // without batching): reading each as it comes costs a wakeup, a
        // read and a WAL write per message. When reads come back to back
        // and small, let a millisecond's worth gather in the socket first;
        // a quiet sender's message is still read at once.
        let now = Instant::now();
        if n < BUSY_READ && now.duration_since(last_read) < COALESCE {
            wait = wait.max(COALESCE);
        }
        last_read = now;
        if !wait.is_zero() && deadline.is_none() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => deadline = Some(Instant::now() + SHUTDOWN_GRACE),
            }
        }
    }
}

/// The source of a new connection; a store that cannot open the host's log
/// is retried (the sender waits) until shutdown.
async fn resolve(shared: &Shared, ip: IpAddr) -> Option<Source> {
    loop {
        match Source::resolve(shared, ip) {
            Ok(source) => return Some(source),
            Err(error) => {
                store_error(shared, &shared.settings().1.host_name(ip), &error);
                if *shared.shutdown.borrow() {
                    return None;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Appends a batch; on an error, retries every second (the sender waits:
/// nothing is lost to a full disk) unless shutting down.
async fn append(shared: &Shared, source: &Source, batch: &Batch, shutting_down: bool) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let Err(error) = source.log.append(batch) else {
            return;
        };
        store_error(shared, &source.name, &error);
        if shutting_down || *shutdown.borrow_and_update() {
            tracing::error!(
                "log_server: {} messages from {} lost at shutdown",
                batch.len(),
                source.name
            );
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

pub(super) fn store_error(shared: &Shared, host: &str, error: &std::io::Error) {
    shared.stats.store_error();
    // One line per error: every one of them means the disk needs attention.
    tracing::warn!("log_server: storing the log of {host}: {error}");
}
