//! Host and path routes, and what goes to the backends per route: PROXY
//! headers in and out, TLS to backends, HTTP/2 to backends. Plain HTTP on the
//! client side here; TLS termination is tls.rs's.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::Request;
use hyper::body::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::certs::Ca;
use crate::common::*;

fn request(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", host)
        .body(Full::default())
        .unwrap()
}

/// (status, body) of `GET path` with this Host on the client's connection.
async fn ask(client: &mut Client, host: &str, path: &str) -> (u16, String) {
    let answer = client.send(request(host, path)).await.expect("an answer");
    (answer.status.as_u16(), answer.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_paths_choose_the_route() {
    let [default, www, shop, cart, wild, list, api] =
        ["default", "www", "shop", "cart", "wild", "list", "api"].map(Nginx::start);
    let port = free_port();
    let text = format!(
        "[[service]]\nname = \"sites\"\nlisten = \"127.0.0.1:{port}\"\nmode = \"http\"\nbackends = [\"{}\"]\n\
         [[service.route]]\nhost = \"www.example.test\"\nbackends = [\"{}\"]\n\
         [[service.route]]\nhost = \"app.example.test\"\npath = \"/shop\"\nbackends = [\"{}\"]\n\
         [[service.route]]\nhost = \"app.example.test\"\npath = \"/shop/cart\"\nbackends = [\"{}\"]\n\
         [[service.route]]\nhost = \"*.wild.example.test\"\nbackends = [\"{}\"]\n\
         [[service.route]]\nhost = [\"a.example.test\", \"b.example.test\"]\nbackends = [\"{}\"]\n\
         [[service.route]]\npath = \"/api\"\nbackends = [\"{}\"]\n",
        default.addr(),
        www.addr(),
        shop.addr(),
        cart.addr(),
        wild.addr(),
        list.addr(),
        api.addr()
    );
    let proxy = Proxy::start(&service(&text)).await;
    let cases = [
        ("www.example.test", "/", "www"),
        ("www.example.test", "/any/path?q=1", "www"),
        ("WWW.Example.TEST", "/", "www"),
        ("www.example.test:8443", "/", "www"),
        ("WWW.EXAMPLE.TEST:80", "/x", "www"),
        ("app.example.test", "/shop", "shop"),
        ("app.example.test", "/shop/", "shop"),
        ("app.example.test", "/shop/x/y", "shop"),
        ("app.example.test", "/shop?page=2", "shop"),
        ("app.example.test", "/shopping", "default"),
        ("app.example.test", "/", "default"),
        ("app.example.test", "/shop/cart", "cart"),
        ("app.example.test", "/shop/cart/1", "cart"),
        ("app.example.test", "/shop/cartography", "shop"),
        ("APP.example.test:443", "/shop/x", "shop"),
        ("x.wild.example.test", "/", "wild"),
        ("X.Wild.Example.Test:1234", "/", "wild"),
        ("a.b.wild.example.test", "/", "default"),
        ("wild.example.test", "/", "default"),
        ("a.example.test", "/", "list"),
        ("b.example.test:1234", "/", "list"),
        ("c.example.test", "/", "default"),
        ("c.example.test", "/api/v1", "api"),
        ("c.example.test", "/apis", "default"),
        (&proxy.addr.to_string(), "/", "default"),
    ];
    // One keep-alive connection: each request is routed on its own.
    let mut client = Client::connect(proxy.addr).await;
    let mut wrong = Vec::new();
    for (host, path, expected) in cases {
        let (status, body) = ask(&mut client, host, path).await;
        if (status, body.as_str()) != (200, &format!("{expected}\n")) {
            wrong.push(format!(
                "Host {host} {path}: expected {expected}, got {status} {body:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_service_backends_a_request_no_route_takes_is_404() {
    let [www, shop] = ["www", "shop"].map(Nginx::start);
    let port = free_port();
    let text = format!(
        "[[service]]\nname = \"sites\"\nlisten = \"127.0.0.1:{port}\"\nmode = \"http\"\n\
         [[service.route]]\nhost = \"www.example.test\"\nbackends = [\"{}\"]\n\
         [[service.route]]\nhost = \"app.example.test\"\npath = \"/shop\"\nbackends = [\"{}\"]\n",
        www.addr(),
        shop.addr()
    );
    let proxy = Proxy::start(&service(&text)).await;
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(
        ask(&mut client, "www.example.test", "/").await,
        (200, "www\n".into())
    );
    for (host, path) in [
        ("nobody.example.test", "/"),
        ("app.example.test", "/"),
        ("app.example.test", "/shopping"),
        ("example.test", "/shop"),
    ] {
        let (status, body) = ask(&mut client, host, path).await;
        assert_eq!(status, 404, "Host {host} {path}: {body}");
    }
    // The connection survives the 404s.
    assert_eq!(
        ask(&mut client, "app.example.test", "/shop/1").await,
        (200, "shop\n".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_balances_its_own_backends() {
    let [one, two, www] = ["one", "two", "www"].map(Nginx::start);
    let port = free_port();
    let text = format!(
        "[[service]]\nname = \"sites\"\nlisten = \"127.0.0.1:{port}\"\nmode = \"http\"\n\
         [[service.route]]\nhost = \"www.example.test\"\nbackends = [\"{}\"]\n\
         [[service.route]]\nhost = \"app.example.test\"\nbalance = \"round-robin\"\nbackends = [\"{}\", \"{}\"]\n",
        www.addr(),
        one.addr(),
        two.addr()
    );
    let proxy = Proxy::start(&service(&text)).await;
    let mut client = Client::connect(proxy.addr).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(ask(&mut client, "app.example.test", "/").await.1);
        // Requests for another route do not move this route's rotation.
        assert_eq!(ask(&mut client, "www.example.test", "/").await.1, "www\n");
        seen.push(ask(&mut client, "app.example.test", "/").await.1);
    }
    let first = seen[0].clone();
    let other = if first == "one\n" { "two\n" } else { "one\n" };
    let expected: Vec<String> = (0..6)
        .map(|i| {
            if i % 2 == 0 {
                first.clone()
            } else {
                other.to_owned()
            }
        })
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_has_a_pool_and_health_of_its_own() {
    let [www, shop] = ["www", "shop"].map(Nginx::start);
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let port = free_port();
    let text = format!(
        "[[service]]\nname = \"sites\"\nlisten = \"127.0.0.1:{port}\"\nmode = \"http\"\nbackends = [\"{}\"]\n\
         [[service.route]]\nname = \"shop\"\nhost = \"app.example.test\"\npath = \"/shop\"\n\
         backends = [\"{dead}\", \"{}\"]\nhealth = {{ fall = 1 }}\n",
        www.addr(),
        shop.addr()
    );
    let proxy = Proxy::start(&service(&text)).await;
    let names: Vec<&str> = proxy.pools.iter().map(|p| p.service.as_str()).collect();
    assert_eq!(names, ["sites", "sites/shop"]);
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..4 {
        assert_eq!(
            ask(&mut client, "app.example.test", "/shop/1").await,
            (200, "shop\n".into())
        );
    }
    assert_eq!(
        ask(&mut client, "www.example.test", "/").await,
        (200, "www\n".into())
    );
    let (own, route) = (&proxy.pools[0], &proxy.pools[1]);
    assert_eq!(
        route.up(),
        [false, true],
        "the dead backend is down in its route's pool"
    );
    assert_eq!(route.backends()[0].stats.connect_errors.get(), 1);
    assert_eq!(route.backends()[1].stats.responses[1].get(), 4);
    assert_eq!(own.up(), [true]);
    assert_eq!(own.backends()[0].stats.responses[1].get(), 1);
}

/// A raw request that closes its connection, after `prefix` (a PROXY header).
async fn raw_get(stream: &mut TcpStream, prefix: &[u8], path: &str) -> (String, String) {
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(
        format!("GET {path} HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    // The proxy may close at once on a refused connection: no unwrap.
    let _ = stream.write_all(&bytes).await;
    read_response(stream).await
}

/// A connection from another loopback address than 127.0.0.1.
async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.expect("connect")
}

/// A PROXY protocol v2 header for a TCP4 connection.
fn proxy_v2(src: [u8; 4], dst: [u8; 4], src_port: u16, dst_port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&src);
    header.extend_from_slice(&dst);
    header.extend_from_slice(&src_port.to_be_bytes());
    header.extend_from_slice(&dst_port.to_be_bytes());
    header
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_upstream_names_the_client_with_a_proxy_header() {
    let web = Nginx::start("web");
    let proxy = Proxy::start(&http_service(&[web.addr()], "accept_proxy = [\"127.0.0.1\"]")).await;
    let port = proxy.addr.port();

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let v1 = format!("PROXY TCP4 203.0.113.7 127.0.0.1 5555 {port}\r\n");
    let (head, body) = raw_get(&mut stream, v1.as_bytes(), "/headers").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.starts_with("203.0.113.7|http|"), "v1: {body}");

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let v2 = proxy_v2([198, 51, 100, 9], [127, 0, 0, 1], 4444, port);
    let (head, body) = raw_get(&mut stream, &v2, "/headers").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.starts_with("198.51.100.9|http|"), "v2: {body}");

    // From the trusted address, a connection without the header is refused.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (head, body) = raw_get(&mut stream, b"", "/headers").await;
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 400"),
        "served without a PROXY header: {head}\n{body}"
    );
    assert!(!body.contains("|http|"), "{body}");

    // From elsewhere (127.0.0.2 is loopback too), no header is expected, and
    // one sent is not believed: the client is the peer address.
    let mut stream = connect_from("127.0.0.2", proxy.addr).await;
    let (head, body) = raw_get(&mut stream, b"", "/headers").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.starts_with("127.0.0.2|http|"), "untrusted peer: {body}");

    let mut stream = connect_from("127.0.0.2", proxy.addr).await;
    let (head, body) = raw_get(&mut stream, v1.as_bytes(), "/headers").await;
    assert!(
        !body.contains("203.0.113.7"),
        "an untrusted peer's PROXY header was believed: {head}\n{body}"
    );
    // To HTTP it is a malformed request line.
    assert!(head.starts_with("HTTP/1.1 400"), "{head}\n{body}");
}

/// A backend behind `send_proxy`: records the PROXY header each connection
/// starts with (v1 as its text line, v2 as "v2 SRC:PORT DST:PORT"), then
/// answers one HTTP request with 200 and closes.
async fn proxy_header_backend() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind((TINY_BACKEND_IP, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 12];
                if stream.read_exact(&mut first).await.is_err() {
                    return;
                }
                let header = if first.starts_with(b"PROXY ") {
                    let mut line = first.to_vec();
                    while !line.ends_with(b"\r\n") && line.len() < 108 {
                        let mut byte = [0u8; 1];
                        if stream.read_exact(&mut byte).await.is_err() {
                            return;
                        }
                        line.push(byte[0]);
                    }
                    String::from_utf8_lossy(&line).into_owned()
                } else if &first == b"\r\n\r\n\0\r\nQUIT\n" {
                    let mut rest = [0u8; 4];
                    stream.read_exact(&mut rest).await.unwrap();
                    let mut body = vec![0u8; usize::from(u16::from_be_bytes([rest[2], rest[3]]))];
                    stream.read_exact(&mut body).await.unwrap();
                    if rest[1] == 0x11 && body.len() >= 12 {
                        let ip = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
                        let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
                        format!(
                            "v2 {}:{} {}:{}",
                            ip(&body[0..4]),
                            port(&body[8..10]),
                            ip(&body[4..8]),
                            port(&body[10..12])
                        )
                    } else {
                        format!("v2 command {:#x} family {:#x}", rest[0], rest[1])
                    }
                } else {
                    format!("no PROXY header: {:?}", String::from_utf8_lossy(&first))
                };
                record.lock().unwrap().push(header);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_names_the_client_to_the_backend() {
    let (v1_backend, v1_seen) = proxy_header_backend().await;
    let (v2_backend, v2_seen) = proxy_header_backend().await;
    let port = free_port();
    let text = format!(
        "[[service]]\nname = \"sites\"\nlisten = \"127.0.0.1:{port}\"\nmode = \"http\"\n\
         accept_proxy = [\"127.0.0.1/32\"]\nbackends = [\"{v1_backend}\"]\nsend_proxy = \"v1\"\n\
         [[service.route]]\nhost = \"v2.example.test\"\nsend_proxy = \"v2\"\nbackends = [\"{v2_backend}\"]\n"
    );
    let proxy = Proxy::start(&service(&text)).await;

    // A client from 127.0.0.2 (not a trusted upstream): the backend is told
    // its real address and port.
    let mut stream = connect_from("127.0.0.2", proxy.addr).await;
    let client = stream.local_addr().unwrap();
    let (head, body) = raw_get(&mut stream, b"", "/").await;
    assert!(
        head.starts_with("HTTP/1.1 200") && body == "ok\n",
        "{head}\n{body}"
    );
    let line = v1_seen.lock().unwrap().clone();
    assert_eq!(line.len(), 1, "{line:?}");
    let fields: Vec<&str> = line[0].trim_end().split(' ').collect();
    assert!(line[0].ends_with("\r\n"), "{line:?}");
    assert_eq!(fields[..3], ["PROXY", "TCP4", "127.0.0.2"], "{line:?}");
    assert_eq!(fields[4], client.port().to_string(), "{line:?}");
    assert_eq!(fields.len(), 6, "{line:?}");

    // A client named by a trusted upstream's PROXY header is named onwards,
    // here in v2 by the route's own send_proxy.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let v1 = format!("PROXY TCP4 203.0.113.7 127.0.0.1 5555 {port}\r\n");
    let mut bytes = v1.into_bytes();
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: v2.example.test\r\nConnection: close\r\n\r\n");
    stream.write_all(&bytes).await.unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(
        head.starts_with("HTTP/1.1 200") && body == "ok\n",
        "{head}\n{body}"
    );
    let seen = v2_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].starts_with("v2 203.0.113.7:5555 "), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_verifies_the_backends_name() {
    let dir = TempDir::new("backend-tls");
    let ca = Ca::new(dir.path(), "backends");
    let named = ca.leaf("backend", &["backend.example.test"]);
    let by_ip = ca.leaf("by-ip", &[TINY_BACKEND_IP]);
    let (named_addr, _) = version_backend("named", Some(&named), false).await;
    let (ip_addr, _) = version_backend("by-ip", Some(&by_ip), false).await;
    let ca_path = ca.ca.display();
    let port = free_port();
    let route = |host: &str, sni: Option<&str>, backend: SocketAddr| {
        let sni = sni.map(|s| format!(", sni = \"{s}\"")).unwrap_or_default();
        format!(
            "[[service.route]]\nhost = \"{host}\"\nbackends = [\"{backend}\"]\nhealth = {{ fall = 100 }}\n\
             backend_tls = {{ ca = \"{ca_path}\"{sni} }}\n"
        )
    };
    let text = format!(
        "[[service]]\nname = \"sites\"\nlisten = \"127.0.0.1:{port}\"\nmode = \"http\"\n\
         backends = [\"{ip_addr}\"]\nbackend_tls = {{ ca = \"{ca_path}\" }}\n{}{}{}",
        route("right.example.test", Some("backend.example.test"), named_addr),
        route("wrong.example.test", Some("other.example.test"), named_addr),
        route("noip.example.test", None, named_addr),
    );
    let proxy = Proxy::start(&service(&text)).await;
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(
        ask(&mut client, "right.example.test", "/").await,
        (200, "named HTTP/1.1\n".into())
    );
    // The service's own backends, verified by IP address (no sni).
    assert_eq!(
        ask(&mut client, "ip.example.test", "/").await,
        (200, "by-ip HTTP/1.1\n".into())
    );
    for host in ["wrong.example.test", "noip.example.test"] {
        let (status, body) = ask(&mut Client::connect(proxy.addr).await, host, "/").await;
        assert_eq!(
            status, 502,
            "{host}: the certificate does not name what was verified: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_protocol_h2_speaks_http2_to_the_backends() {
    let dir = TempDir::new("backend-h2");
    let ca = Ca::new(dir.path(), "backends");
    let leaf = ca.leaf("backend", &["backend.example.test"]);
    let (h2c, h2c_connections) = version_backend("h2c", None, true).await;
    let (tls, _) = version_backend("tls", Some(&leaf), false).await;
    let (h1, _) = version_backend("h1", None, false).await;
    let port = free_port();
    let text = format!(
        "[[service]]\nname = \"sites\"\nlisten = \"127.0.0.1:{port}\"\nmode = \"http\"\nbackends = [\"{h1}\"]\n\
         [[service.route]]\nhost = \"h2c.example.test\"\nbackend_protocol = \"h2\"\nbackends = [\"{h2c}\"]\n\
         [[service.route]]\nhost = \"tls.example.test\"\nbackend_protocol = \"h2\"\nbackends = [\"{tls}\"]\n\
         backend_tls = {{ ca = \"{}\", sni = \"backend.example.test\" }}\n\
         [[service.route]]\nhost = \"tls1.example.test\"\nbackends = [\"{tls}\"]\n\
         backend_tls = {{ ca = \"{}\", sni = \"backend.example.test\" }}\n",
        ca.ca.display(),
        ca.ca.display()
    );
    let proxy = Proxy::start(&service(&text)).await;
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(
        ask(&mut client, "h2c.example.test", "/").await,
        (200, "h2c HTTP/2.0\n".into())
    );
    assert_eq!(
        ask(&mut client, "tls.example.test", "/").await,
        (200, "tls HTTP/2.0\n".into())
    );
    assert_eq!(
        ask(&mut client, "tls1.example.test", "/").await,
        (200, "tls HTTP/1.1\n".into())
    );
    assert_eq!(
        ask(&mut client, "other.example.test", "/").await,
        (200, "h1 HTTP/1.1\n".into())
    );

    // Many requests at once from many clients: all answered, multiplexed on
    // the one HTTP/2 connection to the backend.
    let addr = proxy.addr;
    let requests: Vec<_> = (0..16)
        .map(|_| {
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                ask(&mut client, "h2c.example.test", "/").await
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), (200, "h2c HTTP/2.0\n".into()));
    }
    assert_eq!(
        h2c_connections.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one multiplexed connection to the h2 backend"
    );
}

/// A keep-alive backend that wants a PROXY v1 line first on each connection:
/// it records, per connection, the line and how many requests came on it.
async fn keepalive_proxy_backend() -> (SocketAddr, Arc<Mutex<Vec<(String, usize)>>>) {
    let listener = TcpListener::bind((TINY_BACKEND_IP, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<(String, usize)>>> = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut reader = tokio::io::BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let slot = {
                    let mut seen = record.lock().unwrap();
                    seen.push((line.trim_end().to_owned(), 0));
                    seen.len() - 1
                };
                loop {
                    // One request head (no bodies here), then the answer.
                    let mut head_line = String::new();
                    loop {
                        head_line.clear();
                        match reader.read_line(&mut head_line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if head_line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    record.lock().unwrap()[slot].1 += 1;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                    if reader.get_mut().write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// With send_proxy, a backend connection names one client, so it is never
/// shared with another client; but it is kept for that client's next
/// requests, as HAProxy does, rather than reopened for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_connections_are_kept_for_their_own_client() {
    let (backend, seen) = keepalive_proxy_backend().await;
    let proxy = Proxy::start(&http_service(&[backend], "send_proxy = \"v1\"")).await;

    let mut first = Client::handshake(connect_from("127.0.0.2", proxy.addr).await).await;
    let mut second = Client::handshake(connect_from("127.0.0.4", proxy.addr).await).await;
    for _ in 0..3 {
        assert_eq!(first.get("/").await.expect("first client").body, "ok\n");
    }
    for _ in 0..2 {
        assert_eq!(second.get("/").await.expect("second client").body, "ok\n");
    }
    assert_eq!(first.get("/").await.expect("first client again").body, "ok\n");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one backend connection per client: {seen:?}");
    assert!(seen[0].0.starts_with("PROXY TCP4 127.0.0.2 "), "{seen:?}");
    assert_eq!(
        seen[0].1, 4,
        "the first client's four requests on its connection: {seen:?}"
    );
    assert!(seen[1].0.starts_with("PROXY TCP4 127.0.0.4 "), "{seen:?}");
    assert_eq!(seen[1].1, 2, "{seen:?}");
}
