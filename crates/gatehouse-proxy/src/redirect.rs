//! `redirect_http`: a plain HTTP listener that answers every request with
//! 308 Permanent Redirect to the same URL over https, as nginx's
//! `return 308 https://$host$request_uri` does. 308 rather than 301 so that
//! a POST stays a POST.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use gatehouse_config::{Listen, Service};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::listener;
use crate::router::host_of;

/// How long a redirect client has to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound redirect listener, not yet serving: binding is what can fail, so
/// a reload binds first and swaps only when everything bound.
#[derive(Debug)]
pub struct Redirect {
    listener: TcpListener,
    listen: Listen,
}

impl Redirect {
    /// Bind the service's `redirect_http` listener, if it has one.
    pub fn bind(service: &Service) -> io::Result<Option<Redirect>> {
        let Some(listen) = &service.redirect_http else {
            return Ok(None);
        };
        let ip = listen.addr.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let listener = listener::bind(SocketAddr::new(ip, listen.port), 1024)?;
        Ok(Some(Redirect {
            listener,
            listen: listen.value,
        }))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A redirect listener serving.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) listen: Listen,
    pub(crate) local: SocketAddr,
    /// The https port redirected to; a reload may change it.
    https_port: Arc<AtomicU16>,
    accept: JoinHandle<()>,
}

impl Running {
    pub(crate) fn start(redirect: Redirect, https_port: u16) -> io::Result<Running> {
        let local = redirect.listener.local_addr()?;
        let https_port = Arc::new(AtomicU16::new(https_port));
        let accept = tokio::spawn(accept_loop(redirect.listener, https_port.clone()));
        Ok(Running {
            listen: redirect.listen,
            local,
            https_port,
            accept,
        })
    }

    pub(crate) fn set_https_port(&self, port: u16) {
        self.https_port.store(port, Ordering::Relaxed);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, https_port: Arc<AtomicU16>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!("redirect listener: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let port = https_port.load(Ordering::Relaxed);
        tokio::spawn(async move {
            let service =
                service_fn(move |request| async move { Ok::<_, Infallible>(answer(&request, port)) });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!("redirect connection: {e}");
            }
        });
    }
}

/// 308 to `https://HOST[:PORT]/path?query`; 400 without a usable Host.
fn answer(request: &Request<Incoming>, https_port: u16) -> Response<Full<Bytes>> {
    let location = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(host_of)
        // Only name and address characters go into Location.
        .filter(|host| {
            host.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
        })
        .map(|host| {
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            let port = if https_port == 443 {
                String::new()
            } else {
                format!(":{https_port}")
            };
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            format!("https://{host}{port}{path}")
        })
        .and_then(|location| HeaderValue::try_from(location).ok());
    let Some(location) = location else {
        let mut response = Response::new(Full::new(Bytes::from_static(
            b"400 Bad Request: this address redirects to https, which needs the Host header\n",
        )));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let body = format!(
        "308 Permanent Redirect: use {}\n",
        location.to_str().unwrap_or("")
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(header::LOCATION, location);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
