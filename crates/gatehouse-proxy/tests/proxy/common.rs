//! Real peers on loopback: nginx backends (started and killed by pid), tiny
//! backends written here for what nginx cannot do (answer slowly, send
//! garbage, echo WebSocket frames), and an HTTP/1.1 client on hyper.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gatehouse_config::{Farm, Service};
use gatehouse_health::{Metrics, Pool};
use gatehouse_lab::loopback::{Nginx as LabNginx, Page};
use gatehouse_proxy::Server;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use gatehouse_lab::loopback::TempDir;

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    gatehouse_lab::loopback::free_port().expect("a free loopback port")
}

/// One nginx on loopback (gatehouse-lab's), serving `/` with its name and
/// `/headers` with the request headers the forwarding tests look at.
pub struct Nginx {
    pub name: String,
    server: LabNginx,
}

impl Nginx {
    pub fn start(name: &str) -> Nginx {
        let server = LabNginx::start(Page::Text(name.to_owned())).expect("starting nginx");
        Nginx {
            name: name.to_owned(),
            server,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Start it again, on the same port, and wait until it accepts.
    pub fn restart(&mut self) {
        self.server.restart().expect("restarting nginx");
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        self.server.kill();
    }
}

/// The first service of a config text.
pub fn service(text: &str) -> Service {
    let farm = Farm::parse("test.toml", text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    farm.services.into_iter().next().expect("a service")
}

/// An http service on a free loopback port with these backends and extra keys.
pub fn http_service(backends: &[SocketAddr], extra: &str) -> Service {
    service_on(free_port(), "http", backends, extra)
}

pub fn service_on(port: u16, mode: &str, backends: &[SocketAddr], extra: &str) -> Service {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    service(&format!(
        "[[service]]\nname = \"app\"\nlisten = \"127.0.0.1:{port}\"\nmode = \"{mode}\"\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    ))
}

/// A started proxy and its pools.
pub struct Proxy {
    pub server: Option<Server>,
    /// The first pool: the service's own backends (or its first route's).
    pub pool: Arc<Pool>,
    /// Every pool, in `Service::targets` order.
    pub pools: Vec<Arc<Pool>>,
    pub metrics: Metrics,
    pub addr: SocketAddr,
}

impl Proxy {
    pub async fn start(service: &Service) -> Proxy {
        let metrics = Metrics::new();
        let pools = Pool::for_service(service, &metrics, &[]);
        let server = Server::start(service, pools.clone(), &metrics)
            .await
            .expect("proxy starts");
        let addr = server.local_addr();
        Proxy {
            server: Some(server),
            pool: pools[0].clone(),
            pools,
            metrics,
            addr,
        }
    }

    /// Reload with `service` (same listen address); health carries over.
    pub fn update(&self, service: &Service) {
        let pools = Pool::for_service(service, &self.metrics, &self.pools);
        let redirect = if self.server().needs_redirect(service) {
            gatehouse_proxy::Redirect::bind(service).expect("redirect listener binds")
        } else {
            None
        };
        self.server().update(service, pools, &self.metrics, redirect);
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }
}

/// An HTTP/1.1 client holding one keep-alive connection.
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect to the proxy");
        Client::handshake(stream).await
    }

    pub async fn handshake(stream: TcpStream) -> Client {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        Client { sender }
    }

    pub async fn get(&mut self, path: &str) -> Result<Answer, hyper::Error> {
        self.send(
            Request::get(path)
                .header("host", "test.example")
                .body(Full::default())
                .unwrap(),
        )
        .await
    }

    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<Answer, hyper::Error> {
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// One request on a new connection.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    Client::connect(addr).await.get(path).await.expect("an answer")
}

/// A backend answering `/` with its name at once and `/slow` with its name
/// after `delay`, so requests can be kept in flight.
pub async fn slow_backend(name: &'static str, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| async move {
                        if request.uri().path() == "/slow" {
                            tokio::time::sleep(delay).await;
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                            format!("{name}\n"),
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A backend that answers anything with bytes that are not HTTP.
pub async fn garbage_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
            });
        }
    });
    addr
}

/// Read from a raw socket until it closes; how long that took.
pub async fn time_until_closed(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), stream.read(&mut buf)).await {
            Err(_) => panic!("still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// Poll `condition` every 5 ms until true; how long it took.
pub async fn wait_for(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

// TLS, routes and PROXY headers: what tls.rs and routing.rs share.

/// Where the tiny backends of tls.rs and routing.rs listen: not 127.0.0.1,
/// whose ports free_port() hands to nginx a moment before nginx binds them
/// (a backend bound to port 0 there could take such a port first, and nginx's
/// readiness check would then see our backend).
pub const TINY_BACKEND_IP: &str = "127.0.0.3";

/// What curl did.
#[derive(Debug)]
pub struct CurlOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// curl with these arguments (after `-sS --noproxy '*' --max-time 5`), on a
/// blocking thread so that the proxy keeps running on the runtime.
pub async fn curl(args: &[String]) -> CurlOutput {
    let args = args.to_vec();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--noproxy", "*", "--max-time", "5"])
            .args(&args)
            .output()
    })
    .await
    .expect("curl thread")
    .expect("curl runs");
    CurlOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Arguments that make curl reach NAME at 127.0.0.1:PORT, sending NAME as
/// SNI and Host and verifying the certificate against NAME and our CA.
pub fn https(name: &str, port: u16, path: &str, ca: &Path) -> Vec<String> {
    vec![
        "--resolve".into(),
        format!("{name}:{port}:127.0.0.1"),
        "--cacert".into(),
        ca.display().to_string(),
        format!("https://{name}:{port}{path}"),
    ]
}

/// A rustls client trusting only `ca`, offering `alpn`.
pub fn tls_client(ca: &Path, alpn: &[&[u8]]) -> Arc<tokio_rustls::rustls::ClientConfig> {
    gatehouse_tls::client_config(Some(ca), alpn).expect("a client config")
}

/// Connect to `addr` and shake hands with SNI `name`.
pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<tokio_rustls::rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let stream = TcpStream::connect(addr).await.expect("connect to the proxy");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(name.to_owned()).expect("a name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .expect("TLS handshake")
}

impl Client {
    /// An HTTP/1.1 client on any stream, e.g. a TLS one.
    pub async fn over<T>(io: T) -> Client
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        Client { sender }
    }
}

/// An HTTP/2 client on any stream.
pub async fn h2_client<T>(io: T) -> hyper::client::conn::http2::SendRequest<Full<Bytes>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    sender
}

/// One request on an HTTP/2 connection: (status, body).
pub async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    uri: &str,
) -> (StatusCode, String) {
    let request = Request::get(uri).body(Full::default()).unwrap();
    let response = sender.send_request(request).await.expect("an h2 answer");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("an h2 body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A backend answering every request with "NAME VERSION" (e.g. "b HTTP/2.0")
/// on plain HTTP/1.1, or with TLS from `leaf` (ALPN h2 and http/1.1, HTTP/2
/// when negotiated), or cleartext HTTP/2 with prior knowledge when `h2c`.
/// Counts the connections it accepted.
pub async fn version_backend(
    name: &'static str,
    leaf: Option<&crate::certs::Leaf>,
    h2c: bool,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let acceptor = leaf.map(|leaf| {
        let cert = gatehouse_tls::load(&leaf.cert, &leaf.key).expect("the backend's pair");
        let config =
            gatehouse_tls::server_config(&[Arc::new(cert)], &[b"h2", b"http/1.1"]).expect("server config");
        tokio_rustls::TlsAcceptor::from(config)
    });
    let listener = TcpListener::bind((TINY_BACKEND_IP, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| async move {
                        let body = format!("{name} {:?}\n", request.version());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                    });
                match acceptor {
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        let io = TokioIo::new(tls);
                        if h2 {
                            let _ = hyper::server::conn::http2::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .serve_connection(io, service)
                            .await;
                        } else {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await;
                        }
                    }
                    None if h2c => {
                        let _ =
                            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                    }
                    None => {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Read an HTTP/1.x response to its end (the request said `Connection:
/// close`): (head, body).
pub async fn read_response(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> (String, String) {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) => (head.to_owned(), body.to_owned()),
        None => (text, String::new()),
    }
}
