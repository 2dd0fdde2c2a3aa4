//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, v1 text and v2 binary).
//!
//! Behind another load balancer or a CDN, a connection's peer address is that
//! upstream's address, not the client's. A trusted upstream therefore puts a
//! PROXY header before the client's bytes saying who the client is, and
//! [`read_header`] takes it off the socket. The other way round, [`encode`]
//! makes the header we send first to a backend (HAProxy's `send-proxy` and
//! `send-proxy-v2`) so that it sees the client, not us.
//!
//! Parsing and building are ppp's; what is ours is taking exactly the
//! header's bytes off the socket, so that the TLS or HTTP bytes behind it are
//! still there for whoever reads next.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::PartialResult;
use ppp::{v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The addresses a PROXY header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Addresses {
    pub(crate) source: SocketAddr,
    pub(crate) destination: SocketAddr,
}

// ppp's v1 and v2 share these two address types.
impl From<v1::IPv4> for Addresses {
    fn from(a: v1::IPv4) -> Addresses {
        Addresses {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        }
    }
}

impl From<v1::IPv6> for Addresses {
    fn from(a: v1::IPv6) -> Addresses {
        Addresses {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

/// The longest v1 line, "\r\n" included (the spec's worst case, a TCP6 line).
const V1_MAX: usize = 107;

/// The v1 signature.
const V1_PREFIX: &[u8] = b"PROXY ";

/// The fixed part of a v2 header: signature, version and command, family and
/// transport, and the big-endian length of what follows.
const V2_FIXED: usize = 16;

/// The longest v2 header we take. Addresses need at most 216 bytes (two unix
/// socket paths); the TLVs upstreams add on top (AWS's VPC endpoint id, TLS
/// details, unique ids) stay well under this. Uncapped, the u16 length would
/// let any peer make us wait for and buffer 64 KiB.
const V2_MAX: usize = 4096;

/// How much of what a peer sent goes into an error message.
const QUOTE_MAX: usize = 64;

/// Read a PROXY header (v1 or v2, detected by its signature) from the start
/// of a just-accepted connection, consuming exactly the header's bytes and
/// nothing after it, so the TLS or HTTP bytes that follow stay in the socket.
/// Within `timeout`, else an [`io::ErrorKind::TimedOut`] error. Returns:
///
/// - `Ok(Some(addresses))` for a v1 `PROXY TCP4`/`TCP6` line, or a v2 PROXY
///   command with an AF_INET or AF_INET6 STREAM address block;
/// - `Ok(None)` for v1 `PROXY UNKNOWN`, a v2 LOCAL command (the upstream's
///   own health checks), or a v2 PROXY command with AF_UNSPEC (which the
///   spec lets a receiver accept, using the connection's own endpoints): the
///   caller then uses the socket's own peer address;
/// - [`io::ErrorKind::InvalidData`], saying what was wrong and quoting what
///   arrived, when the connection does not start with a valid header, the v1
///   line exceeds 107 bytes, the v2 header would exceed 4096 bytes, or a v2
///   header carries addresses that are not TCP over IP (unix sockets, UDP);
/// - [`io::ErrorKind::UnexpectedEof`] when the peer closes before a complete
///   header.
pub(crate) async fn read_header(stream: &mut TcpStream, timeout: Duration) -> io::Result<Option<Addresses>> {
    let upstream = match stream.peer_addr() {
        Ok(peer) => peer.ip().to_canonical().to_string(),
        Err(_) => "(unknown address)".to_owned(),
    };
    let mut buf = vec![0; V2_MAX];
    let mut taken = 0;
    match tokio::time::timeout(timeout, take_header(stream, &upstream, &mut buf, &mut taken)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no PROXY protocol header from trusted upstream {upstream} within {timeout:?} \
                 ({taken} bytes received)"
            ),
        )),
    }
}

/// The loop of [`read_header`], without its timeout. `taken` says how many
/// bytes of `buf` have been read off the socket (for the timeout's message).
///
/// Rather than peeking again and again until the whole header is there, the
/// bytes of an incomplete header are read off the socket as soon as they are
/// seen (they are all the header's: the header does not end before them). A
/// peek at a socket that still holds unread bytes never waits, so waiting for
/// readability between peeks of the same bytes would spin until the rest
/// arrived; with the socket drained, the next peek sleeps until it does.
async fn take_header(
    stream: &mut TcpStream,
    upstream: &str,
    buf: &mut [u8],
    taken: &mut usize,
) -> io::Result<Option<Addresses>> {
    loop {
        let have = *taken;
        if have == buf.len() {
            // Unreachable: `parse` says Incomplete only below both caps.
            return Err(malformed(upstream, "header longer than we accept", &buf[..have]));
        }
        let peeked = stream.peek(&mut buf[have..]).await?;
        if peeked == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "trusted upstream {upstream} closed the connection before a complete PROXY \
                     protocol header ({have} bytes received)"
                ),
            ));
        }
        let seen = have + peeked;
        match parse(&buf[..seen]) {
            Parsed::Header { len, addresses } => {
                // The same bytes the peek saw: we are the socket's only reader.
                stream.read_exact(&mut buf[have..len]).await?;
                *taken = len;
                return Ok(addresses);
            }
            Parsed::Incomplete => {
                stream.read_exact(&mut buf[have..seen]).await?;
                *taken = seen;
            }
            Parsed::NotProxy => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "expected a PROXY protocol header from trusted upstream {upstream}, got {}",
                        quote(&buf[..seen])
                    ),
                ));
            }
            Parsed::Malformed(reason) => return Err(malformed(upstream, &reason, &buf[..seen])),
        }
    }
}

fn malformed(upstream: &str, reason: &str, received: &[u8]) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "bad PROXY protocol header from trusted upstream {upstream}: {reason}; got {}",
            quote(received)
        ),
    )
}

/// What arrived, for an error message: the first line (a peer speaking HTTP
/// to us shows its request line), or the first bytes when there is no line
/// (the v2 signature itself starts with "\r\n"), escaped.
fn quote(received: &[u8]) -> String {
    let line = match received.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end > 0 => &received[..end],
        _ => received,
    };
    let shown = &line[..line.len().min(QUOTE_MAX)];
    let more = if shown.len() < line.len() { "..." } else { "" };
    format!("\"{}\"{more}", shown.escape_ascii())
}

/// What the bytes at the start of a connection are so far.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A complete header of `len` bytes; `None` when it says to use the
    /// connection's own addresses.
    Header {
        len: usize,
        addresses: Option<Addresses>,
    },
    /// A valid beginning of a header, and every byte of it is the header's.
    Incomplete,
    /// Neither signature: not a PROXY header at all.
    NotProxy,
    /// A PROXY header, but one we cannot use, and more bytes will not help.
    Malformed(String),
}

fn parse(bytes: &[u8]) -> Parsed {
    let starts_with = |signature: &[u8]| {
        let n = bytes.len().min(signature.len());
        bytes[..n] == signature[..n]
    };
    if starts_with(v2::PROTOCOL_PREFIX) {
        parse_v2(bytes)
    } else if starts_with(V1_PREFIX) {
        parse_v1(bytes)
    } else {
        Parsed::NotProxy
    }
}

fn parse_v1(bytes: &[u8]) -> Parsed {
    // ppp takes its input to end at the line's end: given part of a line it
    // can call it invalid ("PROXY TCP4 192.0.2.1 198.51.100.2 56324 " has an
    // empty destination port). So it sees only whole lines, and until the
    // end arrives the only thing to check is the length.
    if !line_ended(bytes) {
        return if bytes.len() >= V1_MAX {
            too_long()
        } else {
            Parsed::Incomplete
        };
    }
    match v1::Header::try_from(bytes) {
        Ok(header) => {
            let addresses = match header.addresses {
                v1::Addresses::Tcp4(a) => Some(a.into()),
                v1::Addresses::Tcp6(a) => Some(a.into()),
                v1::Addresses::Unknown => None,
            };
            // ppp keeps the line it parsed, which is the input up to and
            // including the first "\r\n": its length is what to consume.
            Parsed::Header {
                len: header.header.len(),
                addresses,
            }
        }
        Err(v1::BinaryParseError::Parse(v1::ParseError::HeaderTooLong)) => too_long(),
        // Including what ppp calls incomplete: a whole line with too few
        // fields ("PROXY TCP4\r\n") will not get more.
        Err(error) => Parsed::Malformed(format!("invalid v1 line ({})", reason(&error))),
    }
}

fn too_long() -> Parsed {
    Parsed::Malformed(format!("the v1 line is longer than {V1_MAX} bytes"))
}

/// Whether the line has ended: the first "\r" and the byte after it (which
/// should be "\n"; ppp looks no further than that byte, so neither do we).
fn line_ended(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .position(|&b| b == b'\r')
        .is_some_and(|cr| cr + 1 < bytes.len())
}

fn parse_v2(bytes: &[u8]) -> Parsed {
    if bytes.len() >= V2_FIXED {
        let len = V2_FIXED + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
        if len > V2_MAX {
            return Parsed::Malformed(format!(
                "the v2 header is {len} bytes, more than the {V2_MAX} we take"
            ));
        }
    }
    let header = match v2::Header::try_from(bytes) {
        Ok(header) => header,
        Err(error) if error.is_incomplete() => return Parsed::Incomplete,
        Err(error) => return Parsed::Malformed(format!("invalid v2 header ({})", reason(&error))),
    };
    let addresses = match (header.command, header.addresses, header.protocol) {
        (v2::Command::Local, ..) | (v2::Command::Proxy, v2::Addresses::Unspecified, _) => None,
        (v2::Command::Proxy, v2::Addresses::IPv4(a), v2::Protocol::Stream) => Some(a.into()),
        (v2::Command::Proxy, v2::Addresses::IPv6(a), v2::Protocol::Stream) => Some(a.into()),
        (v2::Command::Proxy, v2::Addresses::Unix(_), _) => {
            return Parsed::Malformed("the v2 header carries unix socket addresses, not IP".to_owned());
        }
        (v2::Command::Proxy, _, protocol) => {
            return Parsed::Malformed(format!(
                "the v2 header's transport is {protocol:?}, not Stream (TCP)"
            ));
        }
    };
    Parsed::Header {
        len: header.len(),
        addresses,
    }
}

/// ppp's message, as a clause: its messages are sentences ending in '.'.
fn reason(error: &dyn std::error::Error) -> String {
    error.to_string().trim_end_matches('.').to_owned()
}

/// The header to send to a backend, first thing on a new connection: v1
/// `PROXY TCP4 src dst sport dport\r\n` (TCP6 for IPv6), or a v2 PROXY
/// command, STREAM over INET or INET6, without TLVs.
///
/// A header has one address family for both ends, but a dual-stack listener
/// sees IPv4 clients as `::ffff:a.b.c.d` while the backend may be IPv4 (or
/// the other way round): when the families differ, the IPv4 address is
/// written IPv4-mapped, so both are IPv6.
pub(crate) fn encode(version: Version, addresses: Addresses) -> Vec<u8> {
    let (source, destination) = match (addresses.source, addresses.destination) {
        (source @ SocketAddr::V4(_), destination @ SocketAddr::V6(_)) => (mapped(source), destination),
        (source @ SocketAddr::V6(_), destination @ SocketAddr::V4(_)) => (source, mapped(destination)),
        same => same,
    };
    match version {
        Version::V1 => v1::Addresses::from((source, destination))
            .to_string()
            .into_bytes(),
        Version::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (source, destination),
        )
        .build()
        .expect("a v2 header without TLVs is at most 52 bytes, well within its u16 length"),
    }
}

fn mapped(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), address.port()),
        IpAddr::V6(_) => address,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    /// What the client sends after the header, which must stay in the socket.
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";

    impl Addresses {
        fn pair(self) -> (SocketAddr, SocketAddr) {
            (self.source, self.destination)
        }
    }

    fn addresses(source: &str, destination: &str) -> Addresses {
        Addresses {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    /// A client on 127.0.0.1 sends `chunks`, `pause` apart, then shuts down
    /// its side (unless `hold`, when it keeps the connection open and
    /// silent). The server side reads a header with `timeout`, then the rest
    /// of the stream; returns both.
    async fn exchange(
        chunks: Vec<Vec<u8>>,
        pause: Duration,
        hold: bool,
        timeout: Duration,
    ) -> (io::Result<Option<Addresses>>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            for (i, chunk) in chunks.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(pause).await;
                }
                stream.write_all(chunk).await.unwrap();
            }
            if hold {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            // The server may have closed already (after an error): ignore.
            let _ = stream.shutdown().await;
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let header = read_header(&mut stream, timeout).await;
        let mut rest = Vec::new();
        if header.is_ok() {
            stream.read_to_end(&mut rest).await.unwrap();
            client.await.unwrap();
        } else {
            client.abort();
        }
        (header, rest)
    }

    /// Sends `bytes` in one write; the header is read within 2 s.
    async fn send(bytes: Vec<u8>) -> (io::Result<Option<Addresses>>, Vec<u8>) {
        exchange(vec![bytes], Duration::ZERO, false, Duration::from_secs(2)).await
    }

    fn then_request(header: &[u8]) -> Vec<u8> {
        [header, REQUEST].concat()
    }

    fn v2_header(command: v2::Command, addresses: impl Into<v2::Addresses>) -> Vec<u8> {
        v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, addresses)
            .write_tlv(v2::Type::Authority, b"example.com")
            .unwrap()
            .build()
            .unwrap()
    }

    fn error_of(result: io::Result<Option<Addresses>>) -> io::Error {
        result.expect_err("should have failed")
    }

    #[tokio::test]
    async fn v1_tcp4_parses_and_leaves_the_request() {
        let (header, rest) = send(then_request(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n")).await;
        assert_eq!(
            header.unwrap(),
            Some(addresses("192.0.2.1:56324", "198.51.100.2:443"))
        );
        assert_eq!(rest, REQUEST);
    }

    #[tokio::test]
    async fn v1_tcp6_parses_and_leaves_the_request() {
        let line = b"PROXY TCP6 2001:db8::1 2001:db8:0:1::2 56324 443\r\n";
        let (header, rest) = send(then_request(line)).await;
        assert_eq!(
            header.unwrap(),
            Some(addresses("[2001:db8::1]:56324", "[2001:db8:0:1::2]:443"))
        );
        assert_eq!(rest, REQUEST);
    }

    #[tokio::test]
    async fn v1_unknown_is_none() {
        let (header, rest) = send(then_request(b"PROXY UNKNOWN\r\n")).await;
        assert_eq!(header.unwrap(), None);
        assert_eq!(rest, REQUEST);

        // The spec lets a sender put addresses after UNKNOWN; they are ignored.
        let line = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
            ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(line.len(), V1_MAX);
        let (header, rest) = send(then_request(line)).await;
        assert_eq!(header.unwrap(), None);
        assert_eq!(rest, REQUEST);
    }

    #[tokio::test]
    async fn v2_ipv4_with_a_tlv_parses_and_leaves_the_request() {
        let expected = addresses("192.0.2.1:56324", "198.51.100.2:443");
        let header = v2_header(v2::Command::Proxy, expected.pair());
        let (header, rest) = send(then_request(&header)).await;
        assert_eq!(header.unwrap(), Some(expected));
        assert_eq!(rest, REQUEST);
    }

    #[tokio::test]
    async fn v2_ipv6_with_a_tlv_parses_and_leaves_the_request() {
        let expected = addresses("[2001:db8::1]:56324", "[2001:db8:0:1::2]:443");
        let header = v2_header(v2::Command::Proxy, expected.pair());
        let (header, rest) = send(then_request(&header)).await;
        assert_eq!(header.unwrap(), Some(expected));
        assert_eq!(rest, REQUEST);
    }

    #[tokio::test]
    async fn v2_local_is_none() {
        let local = v2::Builder::new(
            v2::Version::Two | v2::Command::Local,
            v2::AddressFamily::Unspecified | v2::Protocol::Unspecified,
        )
        .build()
        .unwrap();
        let (header, rest) = send(then_request(&local)).await;
        assert_eq!(header.unwrap(), None);
        assert_eq!(rest, REQUEST);

        // LOCAL with addresses (HAProxy's checks send them): still ignored.
        let local = v2_header(v2::Command::Local, addresses("10.0.0.1:1", "10.0.0.2:2").pair());
        let (header, rest) = send(then_request(&local)).await;
        assert_eq!(header.unwrap(), None);
        assert_eq!(rest, REQUEST);
    }

    #[tokio::test]
    async fn v2_proxy_unspec_is_none() {
        let header = v2::Builder::new(
            v2::Version::Two | v2::Command::Proxy,
            v2::AddressFamily::Unspecified | v2::Protocol::Unspecified,
        )
        .build()
        .unwrap();
        let (header, rest) = send(then_request(&header)).await;
        assert_eq!(header.unwrap(), None);
        assert_eq!(rest, REQUEST);
    }

    #[tokio::test]
    async fn a_header_split_across_writes_parses() {
        let expected = addresses("192.0.2.1:56324", "198.51.100.2:443");
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n".to_vec();
        let v2 = v2_header(v2::Command::Proxy, expected.pair());
        // In the middle of each, and inside the v2 signature and fixed part.
        for (header, at) in [
            (&v1, v1.len() / 2),
            (&v1, v1.len() - 1),
            (&v2, v2.len() / 2),
            (&v2, 5),
            (&v2, 14),
        ] {
            let chunks = vec![header[..at].to_vec(), then_request(&header[at..])];
            let started = Instant::now();
            let (parsed, rest) =
                exchange(chunks, Duration::from_millis(50), false, Duration::from_secs(2)).await;
            assert_eq!(parsed.unwrap(), Some(expected), "split at {at}");
            assert_eq!(rest, REQUEST);
            assert!(started.elapsed() >= Duration::from_millis(50));
        }
    }

    #[tokio::test]
    async fn garbage_is_invalid_data_quoting_it() {
        let (header, _) = send(b"GET / HTTP/1.1\r\n".to_vec()).await;
        let error = error_of(header);
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            error.to_string(),
            "expected a PROXY protocol header from trusted upstream 127.0.0.1, got \"GET / HTTP/1.1\""
        );

        // A TLS ClientHello: binary, no line.
        let (header, _) = send(vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
        let error = error_of(header);
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(
            error
                .to_string()
                .ends_with("got \"\\x16\\x03\\x01\\x02\\x00\\x01\""),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_over_long_v1_line_is_invalid_data() {
        // 108 bytes, "\r\n" included.
        let line = format!("PROXY TCP6 {} {} 65535 65535\r\n", "f".repeat(41), "f".repeat(41));
        assert_eq!(line.len(), V1_MAX + 1);
        let (header, _) = send(line.into_bytes()).await;
        let error = error_of(header);
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("longer than 107 bytes"), "{error}");

        // No end of line at all.
        let (header, _) = send(format!("PROXY {}", "x".repeat(200)).into_bytes()).await;
        let error = error_of(header);
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("longer than 107 bytes"), "{error}");
    }

    #[tokio::test]
    async fn a_malformed_v1_line_is_invalid_data_at_once() {
        for line in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2\r\n"[..],
            b"PROXY TCP4\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 99999\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP5 192.0.2.1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\rX",
        ] {
            // Held open: an error must not wait for more bytes or the timeout.
            let started = Instant::now();
            let (header, _) =
                exchange(vec![line.to_vec()], Duration::ZERO, true, Duration::from_secs(2)).await;
            let error = error_of(header);
            assert_eq!(
                error.kind(),
                io::ErrorKind::InvalidData,
                "{}",
                line.escape_ascii()
            );
            assert!(
                error.to_string().starts_with("bad PROXY protocol header"),
                "{error}"
            );
            assert!(started.elapsed() < Duration::from_secs(1));
        }
    }

    #[tokio::test]
    async fn an_over_long_v2_header_is_invalid_data() {
        let mut header = v2::PROTOCOL_PREFIX.to_vec();
        header.extend([0x21, 0x11]);
        header.extend(u16::MAX.to_be_bytes());
        let (header, _) = exchange(vec![header], Duration::ZERO, true, Duration::from_secs(2)).await;
        let error = error_of(header);
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(
            error.to_string().contains("65551 bytes, more than the 4096"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_v2_unix_or_udp_header_is_invalid_data() {
        let unix = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            v2::Unix::new([1; 108], [2; 108]),
        )
        .build()
        .unwrap();
        let udp = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Datagram,
            addresses("192.0.2.1:53", "198.51.100.2:53").pair(),
        )
        .build()
        .unwrap();
        for header in [unix, udp] {
            let (header, _) = send(header).await;
            assert_eq!(error_of(header).kind(), io::ErrorKind::InvalidData);
        }
    }

    #[tokio::test]
    async fn a_silent_client_times_out() {
        let started = Instant::now();
        let (header, _) = exchange(vec![], Duration::ZERO, true, Duration::from_millis(200)).await;
        let error = error_of(header);
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(2));

        // Half a header, then nothing: also the timeout, counting what came.
        let half = b"PROXY TCP4 192.0.2.1".to_vec();
        let (header, _) = exchange(vec![half], Duration::ZERO, true, Duration::from_millis(200)).await;
        let error = error_of(header);
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(error.to_string().contains("(20 bytes received)"), "{error}");
    }

    #[tokio::test]
    async fn half_a_header_then_close_is_unexpected_eof() {
        let v2 = v2_header(
            v2::Command::Proxy,
            addresses("192.0.2.1:1", "198.51.100.2:2").pair(),
        );
        for half in [&b"PROXY TCP4 192.0.2.1 "[..], &v2[..v2.len() / 2], &v2[..8], b""] {
            let (header, _) = send(half.to_vec()).await;
            assert_eq!(
                error_of(header).kind(),
                io::ErrorKind::UnexpectedEof,
                "{}",
                half.escape_ascii()
            );
        }
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        let v4 = addresses("192.0.2.1:56324", "198.51.100.2:443");
        let headers = [
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2_header(v2::Command::Proxy, v4.pair()),
            encode(Version::V2, addresses("[2001:db8::1]:1", "[2001:db8::2]:2")),
        ];
        for header in headers {
            for at in 1..header.len() {
                assert_eq!(
                    parse(&header[..at]),
                    Parsed::Incomplete,
                    "{}",
                    header[..at].escape_ascii()
                );
            }
            let bytes = then_request(&header);
            assert!(matches!(parse(&bytes), Parsed::Header { len, .. } if len == header.len()));
        }
    }

    #[test]
    fn encode_writes_the_expected_bytes() {
        let v4 = addresses("192.0.2.1:56324", "198.51.100.2:443");
        assert_eq!(
            encode(Version::V1, v4),
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
        );
        let v6 = addresses("[2001:db8::1]:56324", "[2001:db8::2]:443");
        assert_eq!(
            encode(Version::V1, v6),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n"
        );
        let mixed = addresses("[::ffff:192.0.2.1]:56324", "198.51.100.2:443");
        assert_eq!(
            encode(Version::V1, mixed),
            b"PROXY TCP6 ::ffff:192.0.2.1 ::ffff:198.51.100.2 56324 443\r\n"
        );

        let mut v2 = v2::PROTOCOL_PREFIX.to_vec();
        v2.extend([0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 2]);
        v2.extend([56324u16.to_be_bytes(), 443u16.to_be_bytes()].concat());
        assert_eq!(encode(Version::V2, v4), v2);
    }

    #[tokio::test]
    async fn encode_round_trips_through_read_header() {
        let cases = [
            (addresses("192.0.2.1:56324", "198.51.100.2:443"), None),
            (addresses("[2001:db8::1]:56324", "[2001:db8:0:1::2]:443"), None),
            (
                addresses("[::ffff:192.0.2.1]:56324", "198.51.100.2:443"),
                Some(addresses("[::ffff:192.0.2.1]:56324", "[::ffff:198.51.100.2]:443")),
            ),
            (
                addresses("192.0.2.1:56324", "[2001:db8::2]:443"),
                Some(addresses("[::ffff:192.0.2.1]:56324", "[2001:db8::2]:443")),
            ),
        ];
        for (sent, mapped) in cases {
            for version in [Version::V1, Version::V2] {
                let (header, rest) = send(then_request(&encode(version, sent))).await;
                assert_eq!(
                    header.unwrap(),
                    Some(mapped.unwrap_or(sent)),
                    "{version:?} {sent:?}"
                );
                assert_eq!(rest, REQUEST);
            }
        }
    }
}
