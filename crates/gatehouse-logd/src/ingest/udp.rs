//! The UDP listener: one datagram, one message. After each wakeup it drains
//! the socket (`try_recv_from` until it would block), groups the datagrams
//! into a batch per source, and makes one append per source.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::tcp::store_error;
use super::{Shared, Source, now_us};
use crate::message::classify_frame;
use crate::{Batch, Flags};

/// The receive buffer asked for, so a burst waits in the kernel instead of
/// being dropped there (capped by net.core.rmem_max).
const RECEIVE_BUFFER: usize = 8 << 20;
/// Datagrams taken per wakeup at most, so one flood cannot hold the task.
const DRAIN: usize = 4096;
/// Tokens taken from a source's bucket at a time.
const ALLOWANCE: usize = 256;

pub(super) fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(error) = socket.set_recv_buffer_size(RECEIVE_BUFFER) {
        tracing::debug!("log_server udp {addr}: SO_RCVBUF: {error}");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

struct Sender {
    source: Source,
    batch: Batch,
    unparsed: u64,
    truncated: u64,
    shed: u64,
    /// Tokens taken from the bucket and not used yet.
    allowance: usize,
    /// The bucket was empty in this wakeup: shed the rest without asking again.
    exhausted: bool,
    /// In `active`.
    listed: bool,
}

pub(super) async fn serve(shared: Arc<Shared>, socket: UdpSocket) {
    let mut buf = vec![0u8; 65536];
    let mut senders: HashMap<IpAddr, Sender> = HashMap::new();
    let mut active: Vec<IpAddr> = Vec::new();
    let mut last_us = 0i64;
    let mut shutdown = shared.shutdown.clone();
    loop {
        let last = tokio::select! {
            ready = socket.readable() => {
                if let Err(error) = ready {
                    tracing::warn!("log_server udp: {error}");
                }
                false
            }
            _ = shutdown.changed() => true,
        };
        let now = Instant::now();
        for _ in 0..DRAIN {
            let (n, peer) = match socket.try_recv_from(&mut buf) {
                Ok(received) => received,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    tracing::debug!("log_server udp: {error}");
                    continue;
                }
            };
            // One clock read per datagram, and strictly increasing: datagrams
            // of different senders read in one wakeup keep their arrival
            // order when queries merge the senders by time.
            let received_us = now_us().max(last_us + 1);
            last_us = received_us;
            let ip = peer.ip().to_canonical();
            let sender = match senders.get_mut(&ip) {
                Some(sender) => sender,
                None => match Source::resolve(&shared, ip) {
                    Ok(source) => senders.entry(ip).or_insert(Sender {
                        source,
                        batch: Batch::new(),
                        unparsed: 0,
                        truncated: 0,
                        shed: 0,
                        allowance: 0,
                        exhausted: false,
                        listed: false,
                    }),
                    Err(error) => {
                        store_error(&shared, &shared.settings().1.host_name(ip), &error);
                        continue;
                    }
                },
            };
            if !sender.listed {
                sender.listed = true;
                active.push(ip);
                if let Err(error) = sender.source.refresh(&shared) {
                    store_error(&shared, &sender.source.name, &error);
                }
            }
            let mut message = &buf[..n];
            if let Some(rest) = message.strip_suffix(b"\n") {
                message = rest.strip_suffix(b"\r").unwrap_or(rest);
            }
            if message.is_empty() {
                continue;
            }
            if let Some(rate) = sender.source.settings.rate_limit {
                if sender.allowance == 0 && !sender.exhausted {
                    sender.allowance = crate::sync::lock(&sender.source.bucket).admit(ALLOWANCE, rate, now);
                    sender.exhausted = sender.allowance == 0;
                }
                if sender.allowance == 0 {
                    sender.shed += 1;
                    continue;
                }
                sender.allowance -= 1;
            }
            let mut flags = Flags::default();
            let max = sender.source.settings.max_message;
            if message.len() > max {
                message = &message[..max];
                flags = Flags::TRUNCATED;
            }
            flags |= classify_frame(message, flags.contains(Flags::TRUNCATED));
            sender.unparsed += u64::from(flags.contains(Flags::UNPARSED));
            sender.truncated += u64::from(flags.contains(Flags::TRUNCATED));
            sender.batch.push(received_us, flags, message);
        }
        for ip in active.drain(..) {
            let Some(sender) = senders.get_mut(&ip) else {
                continue;
            };
            if sender.allowance > 0 {
                crate::sync::lock(&sender.source.bucket).give_back(sender.allowance);
                sender.allowance = 0;
            }
            sender.exhausted = false;
            sender.listed = false;
            if sender.shed > 0 {
                sender.source.counters.shed.fetch_add(sender.shed, Relaxed);
                sender.shed = 0;
            }
            if sender.batch.is_empty() {
                continue;
            }
            match sender.source.log.append(&sender.batch) {
                Ok(()) => sender
                    .source
                    .count(&sender.batch, sender.unparsed, sender.truncated),
                Err(error) => store_error(&shared, &sender.source.name, &error),
            }
            sender.batch.clear();
            sender.unparsed = 0;
            sender.truncated = 0;
        }
        if senders.len() > 4096 {
            senders.clear();
        }
        if last {
            return;
        }
    }
}
