//! Header rewriting, both ways: hop-by-hop headers stay on their hop, the
//! backend learns who the client was, and the stickiness cookie.

use std::net::IpAddr;
use std::sync::Mutex;

use hyper::body::Bytes;
use hyper::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

/// Headers about one connection, never forwarded (RFC 9110 7.6.1), besides
/// those the Connection header names.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What one client connection contributes to every request's forwarding
/// headers, formatted once per connection rather than once per request.
#[derive(Debug)]
pub(crate) struct ClientHeaders {
    /// The client address as X-Forwarded-For writes it.
    ip: HeaderValue,
    /// Over TLS: X-Forwarded-Proto and Forwarded's proto say "https".
    https: bool,
    /// `for=192.0.2.7;proto=http` or `for="[2001:db8::7]";proto=http`.
    forwarded: String,
    /// The last Host and the Forwarded value made with it: a keep-alive
    /// client sends the same Host every time. (One connection's requests come
    /// one at a time, so the lock is never contended.)
    last: Mutex<Option<(HeaderValue, HeaderValue)>>,
}

impl ClientHeaders {
    /// `https`: the client connection is TLS (X-Forwarded-Proto and
    /// Forwarded's proto say so).
    pub(crate) fn new(ip: IpAddr, https: bool) -> ClientHeaders {
        let text = ip.to_string();
        let proto = if https { "https" } else { "http" };
        let forwarded = match ip {
            IpAddr::V4(_) => format!("for={text};proto={proto}"),
            IpAddr::V6(_) => format!("for=\"[{text}]\";proto={proto}"),
        };
        ClientHeaders {
            https,
            ip: HeaderValue::from_str(&text).expect("an IP address is a valid header value"),
            forwarded,
            last: Mutex::new(None),
        }
    }

    /// Our Forwarded element for a request with this Host.
    fn forwarded(&self, host: Option<&HeaderValue>) -> Option<HeaderValue> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(host), Some((seen, value))) = (host, last.as_ref())
            && host == seen
        {
            return Some(value.clone());
        }
        let mut text = String::with_capacity(self.forwarded.len() + 40);
        text.push_str(&self.forwarded);
        push_host(&mut text, host);
        let value = HeaderValue::from_maybe_shared(Bytes::from(text)).ok()?;
        if let Some(host) = host {
            // A copy: the request's value is a slice of hyper's read buffer,
            // and would keep all of it alive with the connection.
            let host = HeaderValue::from_bytes(host.as_bytes()).ok()?;
            *last = Some((host, value.clone()));
        }
        Some(value)
    }
}

/// `;host=HOST`, quoted unless it is a token (`host:port` and `[v6]` are not).
fn push_host(out: &mut String, host: Option<&HeaderValue>) {
    if let Some(text) = host.and_then(|h| h.to_str().ok()) {
        out.push_str(";host=");
        if text.bytes().all(is_tchar) {
            out.push_str(text);
        } else {
            out.push('"');
            out.push_str(text);
            out.push('"');
        }
    }
}

/// Whether the request asks to switch protocols (WebSocket and others):
/// `Connection: upgrade` together with an `Upgrade` header.
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(token)))
}

fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Remove hop-by-hop headers. When `upgrade` is set (an upgrade request, or
/// the 101 answering one), `Connection: upgrade` and `Upgrade` are the point of
/// the message and stay.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over a message's few names finds which are present; absent
    // ones then cost nothing (a remove is a hash lookup each).
    let mut present = [false; 7];
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
        }
    }
    if present[0] {
        // Headers the Connection header names are hop-by-hop too. Most
        // messages have only "keep-alive" or "close" there: no allocation.
        let mut values = headers.get_all(header::CONNECTION).iter();
        let plain = match (values.next(), values.next()) {
            (Some(value), None) => is_plain_connection(value),
            _ => false,
        };
        if !plain {
            let named: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .flat_map(tokens)
                .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
                .filter(|name| !(upgrade && *name == header::UPGRADE))
                .collect();
            for name in named {
                headers.remove(name);
            }
        }
    }
    for (i, _) in present.iter().enumerate().filter(|(_, p)| **p) {
        match i {
            0 | 4 if upgrade => {}
            0..=4 => {
                headers.remove(&HOP_BY_HOP[i]);
            }
            5 => {
                headers.remove(&KEEP_ALIVE);
            }
            _ => {
                headers.remove(&PROXY_CONNECTION);
            }
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Connection, TE, Trailer, Transfer-Encoding, Upgrade, Keep-Alive,
/// Proxy-Connection: 0 to 6.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    HOP_BY_HOP.iter().position(|h| h == name).or_else(|| {
        if *name == KEEP_ALIVE {
            Some(5)
        } else if *name == PROXY_CONNECTION {
            Some(6)
        } else {
            None
        }
    })
}

fn is_plain_connection(value: &HeaderValue) -> bool {
    let v = value.as_bytes();
    v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
}

/// Prepare a client's request for the backend: strip hop-by-hop headers and
/// say who the client was (X-Forwarded-For/-Proto/-Host and RFC 7239
/// Forwarded, each appended to what earlier proxies wrote).
pub(crate) fn forward_request(headers: &mut HeaderMap, client: &ClientHeaders, upgrade: bool) {
    strip_hop_by_hop(headers, upgrade);

    // Entries: one hash of each (custom) name, not a lookup and an insert.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(entry) => {
            entry.insert(client.ip.clone());
        }
        Entry::Occupied(mut entry) => {
            let mut list = join(entry.iter());
            list.push_str(", ");
            list.push_str(client.ip.to_str().unwrap_or(""));
            let value =
                HeaderValue::from_maybe_shared(Bytes::from(list)).unwrap_or_else(|_| client.ip.clone());
            entry.insert(value);
        }
    }
    let proto = if client.https { "https" } else { "http" };
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));

    let host = headers.get(header::HOST).cloned();
    match headers.entry(header::FORWARDED) {
        Entry::Vacant(entry) => {
            if let Some(value) = client.forwarded(host.as_ref()) {
                entry.insert(value);
            }
        }
        Entry::Occupied(mut entry) => {
            let mut list = join(entry.iter());
            list.push_str(", ");
            list.push_str(&client.forwarded);
            push_host(&mut list, host.as_ref());
            if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(list)) {
                entry.insert(value);
            }
        }
    }
    match host {
        Some(host) => headers.insert(&X_FORWARDED_HOST, host),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// Several fields of one name as one comma-separated list.
fn join<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> String {
    let mut out = String::new();
    for value in values {
        if let Ok(text) = value.to_str() {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(text.trim());
        }
    }
    out
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The value of cookie `name` in the request's Cookie headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim().trim_matches('"'))
        })
}

/// `Set-Cookie` pinning a client to a backend for the browser session.
pub(crate) fn set_cookie(name: &str, value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        headers
    }

    fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
        headers.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut headers, false);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn an_upgrade_keeps_connection_upgrade_and_upgrade() {
        let mut headers = map(&[
            ("connection", "Upgrade, x-secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
        ]);
        assert!(wants_upgrade(&headers));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(get(&headers, "connection"), Some("upgrade"));
        assert_eq!(get(&headers, "upgrade"), Some("websocket"));
        assert_eq!(get(&headers, "x-secret"), None);
        assert!(!wants_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarding_headers_append_to_earlier_proxies() {
        let client = ClientHeaders::new("203.0.113.7".parse().unwrap(), false);
        let mut headers = map(&[
            ("host", "example.com:8080"),
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("forwarded", "for=198.51.100.1"),
            ("x-forwarded-proto", "https"),
        ]);
        forward_request(&mut headers, &client, false);
        assert_eq!(
            get(&headers, "x-forwarded-for"),
            Some("198.51.100.1, 198.51.100.2, 203.0.113.7")
        );
        assert_eq!(get(&headers, "x-forwarded-proto"), Some("http"));
        assert_eq!(get(&headers, "x-forwarded-host"), Some("example.com:8080"));
        assert_eq!(
            get(&headers, "forwarded"),
            Some("for=198.51.100.1, for=203.0.113.7;proto=http;host=\"example.com:8080\"")
        );
    }

    #[test]
    fn the_forwarded_element_follows_the_host() {
        let client = ClientHeaders::new("203.0.113.7".parse().unwrap(), false);
        for host in ["a.example", "a.example", "b.example:8080", "b.example:8080"] {
            let mut headers = map(&[("host", host)]);
            forward_request(&mut headers, &client, false);
            let quoted = if host.contains(':') {
                format!("\"{host}\"")
            } else {
                host.to_owned()
            };
            assert_eq!(
                get(&headers, "forwarded").unwrap(),
                format!("for=203.0.113.7;proto=http;host={quoted}")
            );
        }
        let mut headers = map(&[]);
        forward_request(&mut headers, &client, false);
        assert_eq!(get(&headers, "forwarded"), Some("for=203.0.113.7;proto=http"));
        assert_eq!(get(&headers, "x-forwarded-host"), None);
    }

    #[test]
    fn ipv6_clients_are_quoted_and_bracketed() {
        let client = ClientHeaders::new(Ipv6Addr::LOCALHOST.into(), false);
        let mut headers = map(&[("host", "example.com")]);
        forward_request(&mut headers, &client, false);
        assert_eq!(get(&headers, "x-forwarded-for"), Some("::1"));
        assert_eq!(
            get(&headers, "forwarded"),
            Some("for=\"[::1]\";proto=http;host=example.com")
        );
    }

    #[test]
    fn tls_clients_are_https() {
        let client = ClientHeaders::new("203.0.113.7".parse().unwrap(), true);
        let mut headers = map(&[("host", "example.com"), ("x-forwarded-proto", "http")]);
        forward_request(&mut headers, &client, false);
        assert_eq!(get(&headers, "x-forwarded-proto"), Some("https"));
        assert_eq!(
            get(&headers, "forwarded"),
            Some("for=203.0.113.7;proto=https;host=example.com")
        );
    }

    #[test]
    fn cookies_are_found_by_name() {
        let headers = map(&[("cookie", "a=1; gh_app=web2"), ("cookie", "b=2")]);
        assert_eq!(cookie(&headers, "gh_app"), Some("web2"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "gh"), None);
        assert_eq!(
            set_cookie("gh_app", "web2").unwrap().to_str().unwrap(),
            "gh_app=web2; Path=/; HttpOnly; SameSite=Lax"
        );
    }
}
