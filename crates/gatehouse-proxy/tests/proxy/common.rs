//! Real peers on loopback: nginx backends (started and killed by pid), tiny
//! backends written here for what nginx cannot do (answer slowly, send
//! garbage, echo WebSocket frames), and an HTTP/1.1 client on hyper.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gatehouse_config::{Farm, Service};
use gatehouse_health::{Metrics, Pool};
use gatehouse_proxy::Server;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A directory of our own under /tmp, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("gh-proxy-test-{}-{what}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// One nginx process (`master_process off`: the pid we hold is the server).
pub struct Nginx {
    pub name: String,
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Nginx {
    /// Serves `/` with its name, `/headers` with the request headers the
    /// forwarding tests look at.
    pub fn start(name: &str) -> Nginx {
        let dir = TempDir::new(&format!("nginx-{name}"));
        let mut nginx = Nginx {
            name: name.to_owned(),
            port: free_port(),
            dir,
            child: None,
        };
        nginx.restart();
        nginx
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Start it (again, on the same port) and wait until it accepts.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "nginx {} is running", self.name);
        let d = self.dir.path().display();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        default_type text/plain;
        location / {{ return 200 "{name}\n"; }}
        location /headers {{
            return 200 "$http_x_forwarded_for|$http_x_forwarded_proto|$http_x_forwarded_host|$http_forwarded|$http_connection|$http_keep_alive|$http_x_custom|$http_host\n";
        }}
    }}
}}
"#,
            port = self.port,
            name = self.name,
        );
        let conf_path = self.dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(format!("{d}/"))
            .arg("-e")
            .arg(format!("{d}/error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed (apt-get install nginx-light)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr()).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
                panic!("nginx {} exited with {status}: {log}", self.name);
            }
            assert!(Instant::now() < deadline, "nginx {} did not start", self.name);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
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

/// A started proxy and its pool.
pub struct Proxy {
    pub server: Option<Server>,
    pub pool: Arc<Pool>,
    pub addr: SocketAddr,
}

impl Proxy {
    pub async fn start(service: &Service) -> Proxy {
        let pool = Pool::new(service, &Metrics::new(), None);
        let server = Server::start(service, pool.clone()).await.expect("proxy starts");
        let addr = server.local_addr();
        Proxy {
            server: Some(server),
            pool,
            addr,
        }
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
