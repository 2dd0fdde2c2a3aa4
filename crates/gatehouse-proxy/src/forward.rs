//! One request, from the client's head to the backend's answer.
//!
//! Read top to bottom: refuse what is too large, note an upgrade and the
//! stickiness cookie, rewrite the headers, then try backends (at most three,
//! each once) until one answers; answer the client with the backend's
//! response or with a short error of our own:
//!
//! | answer | when |
//! |---|---|
//! | 413 | Content-Length above `max_body` (or a chunked body cut there) |
//! | 502 | the backend failed (refused, reset, sent garbage) |
//! | 503 | no backend reachable while every backend is down |
//! | 504 | no response head within `timeouts.request` |
//!
//! Retries never repeat work the backend may have done: a request goes
//! elsewhere only when its connection failed before anything was written
//! (hyper hands such a request back). A reused connection found closed that
//! way is replaced by a new one to the same backend.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};

use crate::access_log::HttpLog;
use crate::balance::{MAX_ATTEMPTS, Pick, Tried};
use crate::body::{self, Finish, InFlight, RequestBody, ResponseBody};
use crate::headers;
use crate::http::Client;
use crate::router;
use crate::settings::{Settings, Target};
use crate::tunnel;
use crate::upstream::{Conn, ConnectError, Elapsed};

/// The answer to one request. The head is prepared here, at once; the
/// returned future carries only what the exchange with backends needs
/// (hyper moves it into place, so its size is paid on every request).
pub(crate) fn handle(
    settings: Arc<Settings>,
    client: Arc<Client>,
    mut request: Request<Incoming>,
    mut finish: Finish,
) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static {
    if request.version() == Version::HTTP_2 {
        origin_form(&mut request);
    }
    if let Some(sink) = &settings.log {
        finish.log = Some(Box::new(HttpLog::start(sink.clone(), client.ip(), &request)));
    }
    let target = pick_target(&settings, &client, &request);
    let too_large = settings
        .max_body
        .is_some_and(|max| request.body().size_hint().exact().is_some_and(|n| n > max));
    let upgrade = headers::wants_upgrade(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let sticky: Option<String> = target
        .ok()
        .and_then(|t| settings.targets[t].cookie.as_deref())
        .and_then(|name| headers::cookie(request.headers(), name))
        .map(str::to_owned);
    if !too_large {
        headers::forward_request(request.headers_mut(), &client.headers, upgrade);
    }
    // HTTP/1.1 to the backend whatever the client spoke, so the backend
    // connection stays open for the next request (nginx's proxy_http_version 1.1).
    *request.version_mut() = Version::HTTP_11;
    let request = request.map(|body| RequestBody::new(body, settings.max_body));
    async move {
        let target = match target {
            _ if too_large => return Ok(local(&settings, &client, StatusCode::PAYLOAD_TOO_LARGE, finish)),
            Err(status) => return Ok(local(&settings, &client, status, finish)),
            Ok(target) => target,
        };
        // The request lives here, lent to each attempt: one copy, not one
        // in every nested future.
        let mut request = Some(request);
        let answer = forward(
            &settings,
            target,
            &client,
            &mut request,
            &mut finish,
            upgrade,
            sticky.as_deref(),
        )
        .await;
        Ok(match answer {
            Ok((i, answer, set_cookie)) => respond(
                &settings,
                target,
                &client,
                i,
                answer,
                finish,
                client_upgrade,
                set_cookie,
            ),
            Err(status) => local(&settings, &client, status, finish),
        })
    }
}

/// An HTTP/2 request names its host in :authority (hyper puts it in the
/// URI); an HTTP/1.1 backend wants it in Host and the path alone.
fn origin_form(request: &mut Request<Incoming>) {
    if let Some(authority) = request.uri().authority()
        && !request.headers().contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(header::HOST, host);
    }
    // HTTP/2 may split Cookie into one field per cookie; HTTP/1.1 wants one
    // (RFC 9113 8.2.3).
    let mut cookies = request.headers().get_all(header::COOKIE).iter();
    if let (Some(_), Some(_)) = (cookies.next(), cookies.next()) {
        let joined: Vec<&[u8]> = request
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
            request.headers_mut().insert(header::COOKIE, value);
        }
    }
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
    *request.uri_mut() = hyper::Uri::from(path);
}

/// Which target serves the request, or the status that answers it: 404
/// when no route matches and the service has no backends of its own; 421
/// when a TLS client asks, on a connection made for one name, for a name
/// gatehouse serves that the connection's certificate does not cover (an
/// HTTP/2 client reusing a connection too eagerly; it retries on a new one).
fn pick_target(
    settings: &Settings,
    client: &Client,
    request: &Request<Incoming>,
) -> Result<usize, StatusCode> {
    // 421 is possible only where another certificate or a route could
    // claim the name; a lone certificate without routes covers what it covers.
    let session = client.tls.as_ref().filter(|s| {
        s.sni.is_some()
            && (settings.router.has_routes() || settings.tls.as_ref().is_some_and(|t| t.certs.len() > 1))
    });
    if !settings.router.has_routes() && session.is_none() {
        return settings.router.pick(None, "/").ok_or(StatusCode::NOT_FOUND);
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .and_then(router::host_of);
    if let (Some(session), Some(host), Some(tls)) = (session, host.as_deref(), &settings.tls)
        && session.sni.as_deref() != Some(host)
        && tls
            .certs
            .get(gatehouse_tls::select(&tls.certs, session.sni.as_deref()))
            .is_some_and(|cert| !cert.covers(host))
        && (settings.router.names(host) || tls.certs.iter().any(|c| c.covers(host)))
    {
        return Err(StatusCode::MISDIRECTED_REQUEST);
    }
    settings
        .router
        .pick(host.as_deref(), request.uri().path())
        .ok_or(StatusCode::NOT_FOUND)
}

/// Try backends of the target until one answers: at most three, each once.
async fn forward(
    settings: &Settings,
    t: usize,
    client: &Client,
    request: &mut Option<Request<RequestBody>>,
    finish: &mut Finish,
    upgrade: bool,
    sticky: Option<&str>,
) -> Result<(usize, Answer, Option<HeaderValue>), StatusCode> {
    let target = &settings.targets[t];
    let backends = target.pool.backends();
    let attempts = backends.len().min(MAX_ATTEMPTS);
    let mut tried = Tried::default();
    while tried.len() < attempts {
        let pick = Pick {
            client: client.ip(),
            cookie: sticky,
            tried: &tried,
        };
        let Some(i) = target.balancer.pick(backends, &pick) else {
            break;
        };
        tried.push(i);
        let backend = &backends[i];
        if let Some(log) = &mut finish.log {
            log.backend = Some(backend.addr);
        }
        let exchanged = if target.h2() {
            exchange_h2(settings, target, i, client, request).await
        } else {
            exchange(settings, target, i, client, request, upgrade).await
        };
        match exchanged {
            Exchange::Unreachable => {}
            Exchange::Failed(status) => return Err(status),
            Exchange::Answered(answer) => {
                let set_cookie = target
                    .cookie
                    .as_deref()
                    .filter(|_| sticky != Some(backend.cookie.as_str()))
                    .and_then(|name| headers::set_cookie(name, &backend.cookie));
                return Ok((i, answer, set_cookie));
            }
        }
    }
    target.pool.stats.no_backend.inc();
    Err(if target.pool.fail_open() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_GATEWAY
    })
}

/// What one backend made of the request.
// Returned once per attempt: boxing the answer would cost an allocation
// per request to save a move.
#[allow(clippy::large_enum_variant)]
enum Exchange {
    /// No connection could be made (or it closed before anything was
    /// written): the request, untouched and given back, may go to another
    /// backend.
    Unreachable,
    Failed(StatusCode),
    Answered(Answer),
}

struct Answer {
    response: Response<Incoming>,
    /// The HTTP/1.1 connection it came on (none for HTTP/2: the connection
    /// is shared and stays with the upstream).
    conn: Option<Conn>,
    in_flight: InFlight,
    upstream_time: Duration,
}

async fn exchange(
    settings: &Settings,
    target: &Target,
    i: usize,
    client: &Client,
    request: &mut Option<Request<RequestBody>>,
    upgrade: bool,
) -> Exchange {
    let backend = &target.pool.backends()[i];
    let upstream = &target.upstreams[i];
    let in_flight = InFlight::new(backend.clone());
    loop {
        let pooled = if upgrade {
            None
        } else if target.shares_connections() {
            upstream.checkout().await
        } else {
            match client.take_private(upstream) {
                Some(mut conn) => conn.ready().await.then_some(conn),
                None => None,
            }
        };
        let (mut conn, reused) = match pooled {
            Some(conn) => (conn, true),
            // Boxed: connecting is rare with pooling, and its future is large;
            // inline it would be moved with every request's future.
            None => {
                match Box::pin(upstream.connect(settings.timeouts.connect, upgrade, client.addresses)).await {
                    Ok(conn) => (conn, false),
                    Err(e) => return unreachable(target, i, e),
                }
            }
        };
        let started = Instant::now();
        let Some(sending) = request.take() else {
            return Exchange::Failed(StatusCode::BAD_GATEWAY);
        };
        let error = match conn.send(sending, started + settings.timeouts.request).await {
            Ok(Ok(response)) => {
                return Exchange::Answered(Answer {
                    response,
                    conn: Some(conn),
                    in_flight,
                    upstream_time: started.elapsed(),
                });
            }
            Err(Elapsed) => return timed_out(settings, target, i),
            Ok(Err(mut e)) => match e.take_message() {
                // Nothing was written: a reused connection had just closed.
                Some(back) if reused => {
                    *request = Some(back);
                    continue;
                }
                Some(back) => {
                    *request = Some(back);
                    backend.stats.connect_errors.inc();
                    target.backend_failed(i, format!("connection closed: {}", e.error()));
                    return Exchange::Unreachable;
                }
                None => e.into_error(),
            },
        };
        return failed(target, i, &error);
    }
}

/// The same over the backend's shared HTTP/2 connection.
async fn exchange_h2(
    settings: &Settings,
    target: &Target,
    i: usize,
    client: &Client,
    request: &mut Option<Request<RequestBody>>,
) -> Exchange {
    let backend = &target.pool.backends()[i];
    let upstream = &target.upstreams[i];
    let in_flight = InFlight::new(backend.clone());
    let mut sender = match Box::pin(upstream.h2(settings.timeouts.connect, client.addresses)).await {
        Ok(sender) => sender,
        Err(e) => return unreachable(target, i, e),
    };
    let Some(mut sending) = request.take() else {
        return Exchange::Failed(StatusCode::BAD_GATEWAY);
    };
    // HTTP/2 carries scheme and authority in the request line.
    let scheme = if target.options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let authority = sending
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map_or_else(|| backend.addr.to_string(), str::to_owned);
    let path = sending.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(uri) = format!("{scheme}://{authority}{path}").parse() {
        *sending.uri_mut() = uri;
    }
    *sending.version_mut() = Version::HTTP_2;
    sending.headers_mut().remove(header::HOST);
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + settings.timeouts.request);
    match tokio::time::timeout_at(deadline, sender.try_send_request(sending)).await {
        Ok(Ok(response)) => Exchange::Answered(Answer {
            response,
            conn: None,
            in_flight,
            upstream_time: started.elapsed(),
        }),
        Err(_) => timed_out(settings, target, i),
        Ok(Err(mut e)) => match e.take_message() {
            Some(back) => {
                *request = Some(back);
                backend.stats.connect_errors.inc();
                target.backend_failed(i, format!("h2 connection closed: {}", e.error()));
                Exchange::Unreachable
            }
            None => failed(target, i, &e.into_error()),
        },
    }
}

fn unreachable(target: &Target, i: usize, e: ConnectError) -> Exchange {
    let backend = &target.pool.backends()[i];
    match e {
        ConnectError::Timeout(_) => backend.stats.timeouts.inc(),
        ConnectError::Io(_) => backend.stats.connect_errors.inc(),
    };
    target.backend_failed(i, e.to_string());
    Exchange::Unreachable
}

fn timed_out(settings: &Settings, target: &Target, i: usize) -> Exchange {
    // Dropping the connection with the request in flight closes it.
    target.pool.backends()[i].stats.timeouts.inc();
    target.backend_failed(i, format!("no response within {:?}", settings.timeouts.request));
    Exchange::Failed(StatusCode::GATEWAY_TIMEOUT)
}

fn failed(target: &Target, i: usize, error: &hyper::Error) -> Exchange {
    if body::is_too_large(error) {
        return Exchange::Failed(StatusCode::PAYLOAD_TOO_LARGE);
    }
    target.pool.backends()[i].stats.response_errors.inc();
    target.backend_failed(i, error_chain(error));
    Exchange::Failed(StatusCode::BAD_GATEWAY)
}

fn error_chain(error: &hyper::Error) -> String {
    let mut text = error.to_string();
    let mut next = std::error::Error::source(error);
    while let Some(e) = next {
        text.push_str(": ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}

// The pieces of one answer; a struct for them would only be unpacked here.
#[allow(clippy::too_many_arguments)]
fn respond(
    settings: &Settings,
    t: usize,
    client: &Client,
    i: usize,
    answer: Answer,
    mut finish: Finish,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    set_cookie: Option<HeaderValue>,
) -> Response<ResponseBody> {
    let Answer {
        mut response,
        conn,
        in_flight,
        upstream_time,
    } = answer;
    let target = &settings.targets[t];
    let backend = &target.pool.backends()[i];
    let upstream = &target.upstreams[i];
    let status = response.status();
    backend.stats.observe_latency(upstream_time.as_secs_f64());
    backend.stats.response(status.as_u16());
    if status.is_server_error() {
        target
            .pool
            .report_failure(backend, format!("answered {}", status.as_u16()));
    } else {
        target.pool.report_success(backend);
    }
    if let Some(log) = &mut finish.log {
        log.status = status.as_u16();
        log.upstream = Some(upstream_time);
    }

    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let backend_side = match (&client_upgrade, &conn) {
        (Some(_), Some(_)) if switching => Some(hyper::upgrade::on(&mut response)),
        _ => None,
    };
    let (mut parts, body) = response.into_parts();
    finish_head(settings, client, &mut parts, backend_side.is_some(), set_cookie);
    let body = match (backend_side, client_upgrade, conn) {
        (Some(backend_side), Some(client_side), Some(conn)) => {
            // The connection is the tunnel's from now on: no reuse, and the
            // backend stays "in flight" until the tunnel closes.
            finish.keep_busy = true;
            let idle = settings.timeouts.idle;
            client.set_tunnel(Box::pin(tunnel::upgraded(
                client_side,
                backend_side,
                idle,
                (conn.into_sender(), in_flight),
            )));
            ResponseBody::fixed(Bytes::new(), finish)
        }
        (_, _, conn) => ResponseBody::backend(body, conn.map(|c| (upstream.clone(), c)), in_flight, finish),
    };
    Response::from_parts(parts, body)
}

/// The response head as the client gets it: hop-by-hop headers off, the
/// stickiness cookie and HSTS on.
fn finish_head(
    settings: &Settings,
    client: &Client,
    parts: &mut hyper::http::response::Parts,
    tunnel: bool,
    set_cookie: Option<HeaderValue>,
) {
    headers::strip_hop_by_hop(&mut parts.headers, tunnel);
    if let Some(cookie) = set_cookie {
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    add_hsts(settings, client, &mut parts.headers);
}

fn add_hsts(settings: &Settings, client: &Client, headers: &mut hyper::HeaderMap) {
    if let Some(hsts) = &settings.hsts
        && client.tls.is_some()
    {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
}

/// A short answer of our own.
fn local(
    settings: &Settings,
    client: &Client,
    status: StatusCode,
    mut finish: Finish,
) -> Response<ResponseBody> {
    let text: &'static str = match status {
        StatusCode::NOT_FOUND => {
            "404 Not Found: no route of this service matches the request's host and path\n"
        }
        StatusCode::MISDIRECTED_REQUEST => {
            "421 Misdirected Request: this connection's certificate is not for the requested host; open a new connection\n"
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            "413 Payload Too Large: the request body is larger than this service accepts\n"
        }
        StatusCode::BAD_GATEWAY => "502 Bad Gateway: the backend server failed to answer\n",
        StatusCode::SERVICE_UNAVAILABLE => "503 Service Unavailable: no backend server is available\n",
        StatusCode::GATEWAY_TIMEOUT => "504 Gateway Timeout: the backend server did not answer in time\n",
        _ => "error\n",
    };
    if let Some(log) = &mut finish.log {
        log.status = status.as_u16();
    }
    let mut response = Response::new(ResponseBody::fixed(Bytes::from_static(text.as_bytes()), finish));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    add_hsts(settings, client, response.headers_mut());
    response
}
