//! TLS termination as clients see it: curl verifying our certificates against
//! the names it asked for (`--resolve NAME:PORT:127.0.0.1 --cacert CA`), SNI
//! choosing the certificate, Host and SNI disagreeing (421), HTTP/2 by ALPN,
//! the plain-HTTP redirect, HSTS, WebSocket over TLS, and a certificate swap
//! while a download runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

use crate::certs::{Ca, Leaf, Site};
use crate::common::*;
use crate::websocket::{echo_server, frame, read_frame, read_head};

/// A TLS service for www.example.test, app.example.test (only /shop) and
/// *.wild.example.test, each routed to an nginx answering its own name, and,
/// when `default`, an nginx "default" for what matches no route.
struct Sites {
    proxy: Proxy,
    port: u16,
    site: Site,
    _nginx: Vec<Nginx>,
    _dir: TempDir,
}

impl Sites {
    async fn start(default: bool, extra: &str) -> Sites {
        let dir = TempDir::new("tls-sites");
        let site = Site::new(dir.path(), "site");
        let [www, shop, wild, fallback] = ["www", "shop", "wild", "default"].map(Nginx::start);
        let port = free_port();
        let backends = if default {
            format!("backends = [\"{}\"]\n", fallback.addr())
        } else {
            String::new()
        };
        let text = format!(
            "[[service]]\nname = \"sites\"\nlisten = \"127.0.0.1:{port}\"\nmode = \"http\"\n\
             tls = [{}, {}, {}]\n{extra}\n{backends}\
             [[service.route]]\nhost = \"www.example.test\"\nbackends = [\"{}\"]\n\
             [[service.route]]\nhost = \"app.example.test\"\npath = \"/shop\"\nbackends = [\"{}\"]\n\
             [[service.route]]\nhost = \"*.wild.example.test\"\nbackends = [\"{}\"]\n",
            site.www.toml(),
            site.app.toml(),
            site.wild.toml(),
            www.addr(),
            shop.addr(),
            wild.addr()
        );
        let proxy = Proxy::start(&service(&text)).await;
        Sites {
            proxy,
            port,
            site,
            _nginx: vec![www, shop, wild, fallback],
            _dir: dir,
        }
    }

    /// curl NAME/PATH, verified against our CA, with `extra` arguments first.
    async fn curl(&self, name: &str, path: &str, extra: &[&str]) -> CurlOutput {
        let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        args.extend(https(name, self.port, path, &self.site.ca.ca));
        curl(&args).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_name_gets_its_certificate_and_its_backend() {
    let sites = Sites::start(true, "").await;
    let cases = [
        ("www.example.test", "/", "www", "www.example.test"),
        ("app.example.test", "/shop/x", "shop", "app.example.test"),
        ("app.example.test", "/shopping", "default", "app.example.test"),
        ("x.wild.example.test", "/", "wild", "*.wild.example.test"),
    ];
    for (name, path, backend, cert) in cases {
        let out = sites
            .curl(name, path, &["-v", "-w", "|%{ssl_verify_result}|%{http_code}"])
            .await;
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (0, format!("{backend}\n|0|200").as_str()),
            "{name}{path}:\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&format!("subject: CN={cert}")),
            "{name} got another certificate:\n{}",
            out.stderr
        );
    }
    // The Host header's port and case do not matter.
    let host = format!("Host: WWW.Example.Test:{}", sites.port);
    let out = sites.curl("www.example.test", "/", &["-H", &host]).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, "www\n"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_are_both_served() {
    let sites = Sites::start(false, "").await;
    let roots = {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&sites.site.ca.ca).expect("the CA"))
            .expect("a root");
        roots
    };
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut config = rustls::ClientConfig::builder_with_provider(gatehouse_tls::provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let stream = tls_connect(sites.proxy.addr, "www.example.test", Arc::new(config)).await;
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
        let mut client = Client::over(stream).await;
        let answer = client
            .send(
                Request::get("/")
                    .header("host", "www.example.test")
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .expect("an answer");
        assert_eq!((answer.status.as_u16(), answer.body.as_str()), (200, "www\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_http2_and_many_requests_share_one_connection() {
    let sites = Sites::start(true, "").await;
    let out = sites
        .curl(
            "app.example.test",
            "/shop",
            &["--http2", "-w", "|%{http_version}"],
        )
        .await;
    assert_eq!((out.code, out.stdout.as_str()), (0, "shop\n|2"), "{}", out.stderr);

    // Ten transfers in parallel: curl multiplexes them on one connection.
    let out = sites
        .curl(
            "www.example.test",
            "/?[1-10]",
            &[
                "--http2",
                "--parallel",
                "-w",
                "|%{http_version}|%{num_connects}\n",
            ],
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let stats: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix('|')).collect();
    assert_eq!(
        lines.iter().filter(|l| **l == "www").count(),
        10,
        "{}",
        out.stdout
    );
    assert_eq!(stats.len(), 10, "{}", out.stdout);
    assert!(stats.iter().all(|s| s.starts_with("2|")), "{}", out.stdout);
    let connects: u32 = stats.iter().map(|s| s[2..].parse::<u32>().unwrap()).sum();
    assert_eq!(connects, 1, "one connection for all: {}", out.stdout);

    // hyper's HTTP/2 client over rustls: ALPN picks h2; 20 requests at once.
    let config = tls_client(&sites.site.ca.ca, &[b"h2", b"http/1.1"]);
    let stream = tls_connect(sites.proxy.addr, "www.example.test", config).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let sender = h2_client(stream).await;
    let port = sites.port;
    let requests: Vec<_> = (0..20)
        .map(|i| {
            let mut sender = sender.clone();
            tokio::spawn(
                async move { h2_get(&mut sender, &format!("https://www.example.test:{port}/{i}")).await },
            )
        })
        .collect();
    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (200, "www\n"));
    }
    assert_eq!(sites.proxy.server().connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_name_gets_the_first_certificate_and_a_404() {
    let sites = Sites::start(false, "").await;
    let port = sites.port;
    // -k: the certificate cannot match; -v shows which one it is.
    let resolve = format!("nobody.example.test:{port}:127.0.0.1");
    let url = format!("https://nobody.example.test:{port}/");
    let out = curl(&[
        "-k".into(),
        "-v".into(),
        "-w".into(),
        "|%{http_code}".into(),
        "--resolve".into(),
        resolve,
        url,
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.ends_with("|404"), "{}", out.stdout);
    assert!(
        out.stderr.contains("subject: CN=www.example.test"),
        "{}",
        out.stderr
    );
    // Verified, it is refused: it really is www's certificate.
    let out = sites.curl("nobody.example.test", "/", &[]).await;
    assert_eq!(out.code, 60, "{}", out.stderr);

    // No SNI at all (an IP address in the URL): the first certificate too.
    let out = curl(&[
        "-k".into(),
        "-v".into(),
        "-w".into(),
        "|%{http_code}".into(),
        format!("https://127.0.0.1:{port}/"),
    ])
    .await;
    assert!(out.stdout.ends_with("|404"), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("subject: CN=www.example.test"),
        "{}",
        out.stderr
    );

    // openssl says the same, for an unknown SNI and for none.
    for sni in [
        &["-servername", "nobody.example.test"][..],
        &["-noservername"][..],
    ] {
        let connect = format!("127.0.0.1:{port}");
        let mut args = vec!["s_client", "-connect", &connect];
        args.extend_from_slice(sni);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("openssl")
                .args(&args)
                .stdin(std::process::Stdio::null())
                .output()
                .expect("openssl runs")
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("subject=CN = www.example.test"), "{sni:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_the_connections_certificate_does_not_cover_is_421() {
    let sites = Sites::start(true, "").await;
    let code = |out: CurlOutput| {
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stdout
    };
    let w = ["-o", "/dev/null", "-w", "%{http_code}"];
    let with_host = |host: &'static str| {
        let mut args = w.to_vec();
        args.extend(["-H", host]);
        args
    };
    // SNI www, Host app: a name we serve, on www's certificate.
    let out = sites
        .curl("www.example.test", "/shop", &with_host("Host: app.example.test"))
        .await;
    assert_eq!(code(out), "421");
    let out = sites
        .curl("www.example.test", "/", &with_host("Host: www.example.test"))
        .await;
    assert_eq!(code(out), "200");
    // The wildcard certificate covers every name under it.
    let out = sites
        .curl(
            "a.wild.example.test",
            "/",
            &with_host("Host: b.wild.example.test"),
        )
        .await;
    assert_eq!(code(out), "200");

    // An HTTP/2 client reusing its www connection for app (connection
    // coalescing) is told to open one of its own.
    let config = tls_client(&sites.site.ca.ca, &[b"h2"]);
    let stream = tls_connect(sites.proxy.addr, "www.example.test", config).await;
    let mut sender = h2_client(stream).await;
    let port = sites.port;
    let (status, _) = h2_get(&mut sender, &format!("https://app.example.test:{port}/shop")).await;
    assert_eq!(status.as_u16(), 421);
    let (status, body) = h2_get(&mut sender, &format!("https://www.example.test:{port}/")).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "www\n"),
        "the connection goes on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_to_https_with_308() {
    let redirect = free_port();
    let sites = Sites::start(true, &format!("redirect_http = \"127.0.0.1:{redirect}\"")).await;
    let port = sites.port;
    let redirect_addr = sites.proxy.server().redirect_addr().expect("a redirect listener");
    assert_eq!(redirect_addr, SocketAddr::from(([127, 0, 0, 1], redirect)));
    let cases = [
        (
            "www.example.test",
            "/",
            format!("https://www.example.test:{port}/"),
        ),
        (
            &format!("www.example.test:{redirect}") as &str,
            "/a/b?x=1&y=%20z",
            format!("https://www.example.test:{port}/a/b?x=1&y=%20z"),
        ),
        (
            "app.example.test",
            "/shop",
            format!("https://app.example.test:{port}/shop"),
        ),
    ];
    for (host, path, location) in cases {
        let answer = Client::connect(redirect_addr)
            .await
            .send(
                Request::get(path)
                    .header("host", host)
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .expect("an answer");
        assert_eq!(answer.status.as_u16(), 308, "{host}{path}");
        assert_eq!(answer.headers.get("location").unwrap(), &location, "{host}{path}");
    }
    // curl follows it to the TLS listener.
    let out = curl(&[
        "-L".into(),
        "--resolve".into(),
        format!("app.example.test:{redirect}:127.0.0.1"),
        "--resolve".into(),
        format!("app.example.test:{port}:127.0.0.1"),
        "--cacert".into(),
        sites.site.ca.ca.display().to_string(),
        "-w".into(),
        "|%{num_redirects}|%{url_effective}".into(),
        format!("http://app.example.test:{redirect}/shop/1?q=2"),
    ])
    .await;
    assert_eq!(
        out.stdout,
        format!("shop\n|1|https://app.example.test:{port}/shop/1?q=2"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_port_443_the_redirect_leaves_the_port_out() {
    // Another loopback address, so that 443 is ours whatever the host runs.
    let ip = "127.42.0.1";
    if std::net::TcpListener::bind((ip, 443)).is_err() {
        panic!("cannot bind {ip}:443 (not root?): this test needs it");
    }
    let dir = TempDir::new("tls-443");
    let site = Site::new(dir.path(), "site");
    let web = Nginx::start("www");
    let redirect = free_port();
    let text = format!(
        "[[service]]\nname = \"sites\"\nlisten = \"{ip}:443\"\nmode = \"http\"\ntls = [{}]\n\
         redirect_http = \"{ip}:{redirect}\"\nbackends = [\"{}\"]\n",
        site.www.toml(),
        web.addr()
    );
    let proxy = Proxy::start(&service(&text)).await;
    let mut client = Client::connect(proxy.server().redirect_addr().expect("a redirect listener")).await;
    let answer = client
        .send(
            Request::get("/x?y=1")
                .header("host", format!("www.example.test:{redirect}"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status.as_u16(), 308);
    assert_eq!(
        answer.headers.get("location").unwrap(),
        "https://www.example.test/x?y=1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_sees_https_and_the_client_gets_hsts() {
    let sites = Sites::start(true, "hsts = \"365d\"").await;
    for http in ["--http1.1", "--http2"] {
        let out = sites
            .curl("www.example.test", "/headers", &[http, "-D", "-"])
            .await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let (head, body) = out.stdout.split_once("\r\n\r\n").expect("a head");
        assert!(
            format!("{head}\r\n")
                .to_ascii_lowercase()
                .contains("\r\nstrict-transport-security: max-age=31536000\r\n"),
            "{http}: {head}"
        );
        let fields: Vec<&str> = body.trim_end().split('|').collect();
        assert_eq!(fields[0], "127.0.0.1", "X-Forwarded-For: {body}");
        assert_eq!(fields[1], "https", "X-Forwarded-Proto: {body}");
        assert!(fields[3].contains("proto=https"), "Forwarded: {body}");
    }
    // Also on answers the proxy makes itself (421 here).
    let out = sites
        .curl(
            "www.example.test",
            "/",
            &["-D", "-", "-o", "/dev/null", "-H", "Host: app.example.test"],
        )
        .await;
    let head = out.stdout.to_ascii_lowercase();
    assert_eq!(head.split_whitespace().nth(1), Some("421"), "{head}");
    assert!(
        head.contains("strict-transport-security: max-age=31536000"),
        "{head}"
    );
}

// WebSocket over TLS, with websocket.rs's echo server and frames. The client
// uses the RFC's sample key, so the accept value is the RFC's too.

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echoes_through_tls() {
    let dir = TempDir::new("tls-ws");
    let site = Site::new(dir.path(), "site");
    let echo = echo_server().await;
    let port = free_port();
    let text = format!(
        "[[service]]\nname = \"chat\"\nlisten = \"127.0.0.1:{port}\"\nmode = \"http\"\ntls = [{}]\n\
         [[service.route]]\nhost = \"www.example.test\"\nbackends = [\"{echo}\"]\n",
        site.www.toml()
    );
    let proxy = Proxy::start(&service(&text)).await;
    let config = tls_client(&site.ca.ca, &[b"http/1.1"]);
    let mut stream = tls_connect(proxy.addr, "www.example.test", config).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let request = format!(
        "GET /chat HTTP/1.1\r\nHost: www.example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains(WS_ACCEPT), "{head}");
    let mask = Some([9, 8, 7, 6]);
    for message in ["hello", "over TLS"] {
        stream
            .write_all(&frame(1, message.as_bytes(), mask))
            .await
            .unwrap();
        assert_eq!(read_frame(&mut stream).await, (1, message.as_bytes().to_vec()));
    }
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    stream.write_all(&frame(2, &big, mask)).await.unwrap();
    assert_eq!(read_frame(&mut stream).await, (2, big));
    stream.write_all(&frame(8, &[], mask)).await.unwrap();
    assert_eq!(read_frame(&mut stream).await.0, 8);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the tunnel did not close after the close frames");
}

/// A backend answering `/` with "small" and `/big` with `chunks` x 64 KiB,
/// one chunk every 50 ms; counts the chunks it sent.
async fn slow_download_backend(chunks: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((TINY_BACKEND_IP, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                loop {
                    let Ok(head) = tokio::time::timeout(Duration::from_secs(10), async {
                        let mut head = Vec::new();
                        let mut byte = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") {
                            if stream.read(&mut byte).await.ok()? == 0 {
                                return None;
                            }
                            head.push(byte[0]);
                        }
                        Some(String::from_utf8_lossy(&head).into_owned())
                    })
                    .await
                    else {
                        return;
                    };
                    let Some(head) = head else { return };
                    if head.starts_with("GET /big ") {
                        let chunk = vec![b'x'; 65536];
                        let start = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", chunks * 65536);
                        if stream.write_all(start.as_bytes()).await.is_err() {
                            return;
                        }
                        for _ in 0..chunks {
                            if stream.write_all(&chunk).await.is_err() {
                                return;
                            }
                            counter.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    } else if stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsmall\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_serves_new_connections_and_spares_a_running_download() {
    let dir = TempDir::new("tls-swap");
    let (old_ca, new_ca) = (Ca::new(dir.path(), "old"), Ca::new(dir.path(), "new"));
    let old = old_ca.leaf("www-old", &["www.example.test"]);
    let new = new_ca.leaf("www-new", &["www.example.test"]);
    let chunks = 32; // 2 MiB over 1.6 s
    let (backend, sent) = slow_download_backend(chunks).await;
    let port = free_port();
    let text = |leaf: &Leaf| {
        format!(
            "[[service]]\nname = \"www\"\nlisten = \"127.0.0.1:{port}\"\nmode = \"http\"\ntls = [{}]\n\
             backends = [\"{backend}\"]\n",
            leaf.toml()
        )
    };
    let first = service(&text(&old));
    let proxy = Proxy::start(&first).await;
    let get = |ca: &Ca, path: &str, extra: &[&str]| {
        let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        args.extend(https("www.example.test", port, path, &ca.ca));
        async move { curl(&args).await }
    };
    let out = get(&old_ca, "/", &[]).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, "small\n"), "{}", out.stderr);

    let download = tokio::spawn(get(
        &old_ca,
        "/big",
        &[
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{http_code}",
        ],
    ));
    wait_for(Duration::from_secs(3), "the download started", || {
        sent.load(Ordering::Relaxed) >= 2
    })
    .await;

    let second = service(&text(&new));
    proxy.update(&second);
    assert!(
        sent.load(Ordering::Relaxed) < chunks,
        "the download ended before the swap"
    );

    let out = get(&new_ca, "/", &["-v"]).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, "small\n"), "{}", out.stderr);
    assert!(out.stderr.contains("O=new"), "{}", out.stderr);
    let out = get(&old_ca, "/", &[]).await;
    assert_eq!(
        out.code, 60,
        "the old certificate is still served: {}",
        out.stderr
    );

    let out = download.await.unwrap();
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, format!("{} 200", chunks * 65536).as_str()),
        "the download was cut: {}",
        out.stderr
    );
}

/// The client deadlines hold over TLS too: a client that connects and never
/// shakes hands is cut after the header timeout (a TLS slowloris), and an
/// HTTP/2 connection with nothing in flight is closed after the idle
/// timeout, while one waiting for an answer is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_clients_and_idle_h2_connections_are_closed() {
    let sites = Sites::start(true, "timeouts = { header = \"300ms\", idle = \"600ms\" }").await;

    // No ClientHello at all.
    let started = Instant::now();
    let mut silent = TcpStream::connect(sites.proxy.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed, not left open: {read:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1500),
        "cut after the header timeout, not before: {waited:?}"
    );

    // An HTTP/2 connection: one answer, then nothing; it closes on its own.
    let config = tls_client(&sites.site.ca.ca, &[b"h2"]);
    let stream = tls_connect(sites.proxy.addr, "www.example.test", config).await;
    let mut sender = h2_client(stream).await;
    let port = sites.port;
    let (status, body) = h2_get(&mut sender, &format!("https://www.example.test:{port}/")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "www\n"));
    let idle_from = Instant::now();
    wait_for(Duration::from_secs(3), "the idle h2 connection to close", || {
        sender.is_closed()
    })
    .await;
    let idled = idle_from.elapsed();
    assert!(
        idled >= Duration::from_millis(500),
        "not before the idle timeout: {idled:?}"
    );
    assert_eq!(sites.proxy.server().connections(), 0);
}
