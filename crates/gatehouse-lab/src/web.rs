//! The builtin web server: a small HTTP/1.1 server for machines without nginx, and
//! the "who am I" page tests use to see which source address a peer observes
//! (proving masquerade from the client's side).
//!
//! It is hyper on a single-threaded tokio runtime rather than a hand-rolled
//! responder: the proxy data plane uses the same stack anyway, and load tests need
//! correct keep-alive and pipelining behaviour from every backend.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue, SERVER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the server answers to every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// The seed's page for web server K: `<title>My Website Number K</title>`.
    Site(usize),
    /// The peer's address as this server sees it: `you are 198.51.100.1:40312\n`.
    WhoAmI,
}

/// The seed's index.html for web server `k`; nginx serves the same file.
pub fn site_html(k: usize) -> String {
    format!(
        "<html>\n<head>\n  <title>My Website Number {k}</title>\n</head>\n<body>\n  \
         <h2>Welcome to my webpage</h2>\n  <p>Served by web server {k} of the gatehouse lab.</p>\n\
         </body>\n</html>\n"
    )
}

/// What a request got, for an access log kept by whoever runs the server.
pub struct Answered<'a> {
    pub peer: SocketAddr,
    pub method: &'a str,
    pub target: String,
    pub version: hyper::Version,
    pub status: u16,
    pub bytes: usize,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

/// Called once per answered request (the demo's web servers log through it).
pub type OnAnswer = Arc<dyn Fn(&Answered<'_>) + Send + Sync>;

/// Serves `page` on `listen` until the process is killed. Blocking.
pub fn serve(listen: SocketAddr, page: Page) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(listen).await.with_context(|| {
            format!("listening on {listen}: is the address configured in this namespace and the port free?")
        })?;
        eprintln!("gatehouse lab web: serving {page:?} on http://{listen}/");
        serve_on(listener, page, None).await;
        Ok(())
    })
}

/// Serves `page` on a bound listener until the future is dropped (abort
/// its task to take the server down: the listener closes with it).
pub async fn serve_on(listener: TcpListener, page: Page, on_answer: Option<OnAnswer>) {
    let site = match page {
        Page::Site(k) => Some(Bytes::from(site_html(k))),
        Page::WhoAmI => None,
    };
    // Connections live in a set of their own, so dropping this future (a
    // demo stopping "web2") ends them too, not only the listener.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of descriptors or a connection reset before accept: keep serving,
                // pausing briefly so a persistent error does not spin the CPU.
                eprintln!("gatehouse lab web: accept: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let (body, content_type) = match &site {
            Some(html) => (html.clone(), "text/html; charset=utf-8"),
            None => (
                Bytes::from(format!("you are {peer}\n")),
                "text/plain; charset=utf-8",
            ),
        };
        let on_answer = on_answer.clone();
        connections.spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let mut response = Response::new(Full::new(body.clone()));
                let headers = response.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                headers.insert(SERVER, HeaderValue::from_static("gatehouse-lab"));
                if let Some(on_answer) = &on_answer {
                    let header = |name| {
                        request
                            .headers()
                            .get(name)
                            .and_then(|v: &HeaderValue| v.to_str().ok())
                    };
                    on_answer(&Answered {
                        peer,
                        method: request.method().as_str(),
                        target: request.uri().to_string(),
                        version: request.version(),
                        status: 200,
                        bytes: body.len(),
                        referer: header(hyper::header::REFERER),
                        user_agent: header(hyper::header::USER_AGENT),
                    });
                }
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("gatehouse lab web: connection from {peer}: {err}");
            }
        });
    }
}
