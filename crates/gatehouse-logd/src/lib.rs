//! The log server: every web server's logs in one place, per server, searchable.
//!
//! The path of a message, top to bottom:
//!
//!   listener (`ingest`: UDP, TCP, TLS) → frame (`frame`: RFC 6587 octet
//!   counting or LF) → flags (`message`: syslog_loose says whether it parses)
//!   → a [`Batch`] per read → the sender's [`store::HostLog`] (a write-ahead
//!   tail, then zstd blocks in segment files) → `query` (only the segments
//!   and blocks whose time range matches, merged oldest first).
//!
//! A line belongs to the host that sent it (the peer address, named through
//! the config's `hosts`), never to the hostname in its header, which senders
//! get wrong; the header stays in the stored message.

pub mod frame;
pub mod ingest;
pub mod message;
pub mod query;
pub mod store;

mod batch;
mod sync;

pub use batch::{Batch, Entry, Flags, Line};
