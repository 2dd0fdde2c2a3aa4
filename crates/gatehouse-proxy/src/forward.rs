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
use crate::route::Route;
use crate::tunnel;
use crate::upstream::{Conn, ConnectError, Elapsed};

/// The answer to one request. The head is prepared here, at once; the
/// returned future carries only what the exchange with backends needs
/// (hyper moves it into place, so its size is paid on every request).
pub(crate) fn handle(
    route: Arc<Route>,
    client: Arc<Client>,
    mut request: Request<Incoming>,
    mut finish: Finish,
) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static {
    if let Some(sink) = &route.log {
        finish.log = Some(Box::new(HttpLog::start(sink.clone(), client.ip, &request)));
    }
    let too_large = route
        .max_body
        .is_some_and(|max| request.body().size_hint().exact().is_some_and(|n| n > max));
    let upgrade = headers::wants_upgrade(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let sticky: Option<String> = route
        .cookie
        .as_deref()
        .and_then(|name| headers::cookie(request.headers(), name))
        .map(str::to_owned);
    if !too_large {
        headers::forward_request(request.headers_mut(), &client.headers, upgrade);
    }
    // HTTP/1.1 to the backend whatever the client spoke, so the backend
    // connection stays open for the next request (nginx's proxy_http_version 1.1).
    *request.version_mut() = Version::HTTP_11;
    let request = request.map(|body| RequestBody::new(body, route.max_body));
    async move {
        if too_large {
            return Ok(local(StatusCode::PAYLOAD_TOO_LARGE, finish));
        }
        // The request lives here, lent to each attempt: one copy, not one
        // in every nested future.
        let mut request = Some(request);
        let answer = forward(
            &route,
            &client,
            &mut request,
            &mut finish,
            upgrade,
            sticky.as_deref(),
        )
        .await;
        Ok(match answer {
            Ok((i, answer, set_cookie)) => {
                respond(&route, &client, i, answer, finish, client_upgrade, set_cookie)
            }
            Err(status) => local(status, finish),
        })
    }
}

/// Try backends until one answers: at most three, each once.
async fn forward(
    route: &Route,
    client: &Client,
    request: &mut Option<Request<RequestBody>>,
    finish: &mut Finish,
    upgrade: bool,
    sticky: Option<&str>,
) -> Result<(usize, Answer, Option<HeaderValue>), StatusCode> {
    let backends = route.pool.backends();
    let attempts = backends.len().min(MAX_ATTEMPTS);
    let mut tried = Tried::default();
    while tried.len() < attempts {
        let pick = Pick {
            client: client.ip,
            cookie: sticky,
            tried: &tried,
        };
        let Some(i) = route.balancer.pick(backends, &pick) else {
            break;
        };
        tried.push(i);
        let backend = &backends[i];
        if let Some(log) = &mut finish.log {
            log.backend = Some(backend.addr);
        }
        match exchange(route, i, request, upgrade).await {
            Exchange::Unreachable => {}
            Exchange::Failed(status) => return Err(status),
            Exchange::Answered(answer) => {
                let set_cookie = route
                    .cookie
                    .as_deref()
                    .filter(|_| sticky != Some(backend.cookie.as_str()))
                    .and_then(|name| headers::set_cookie(name, &backend.cookie));
                return Ok((i, answer, set_cookie));
            }
        }
    }
    route.pool.stats.no_backend.inc();
    Err(if route.pool.fail_open() {
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
    conn: Conn,
    in_flight: InFlight,
    upstream_time: Duration,
}

async fn exchange(
    route: &Route,
    i: usize,
    request: &mut Option<Request<RequestBody>>,
    upgrade: bool,
) -> Exchange {
    let backend = &route.pool.backends()[i];
    let upstream = &route.upstreams[i];
    let in_flight = InFlight::new(backend.clone());
    loop {
        let pooled = if upgrade { None } else { upstream.checkout().await };
        let (mut conn, reused) = match pooled {
            Some(conn) => (conn, true),
            // Boxed: connecting is rare with pooling, and its future is large;
            // inline it would be moved with every request's future.
            None => match Box::pin(upstream.connect(route.timeouts.connect, upgrade)).await {
                Ok(conn) => (conn, false),
                Err(e) => {
                    match e {
                        ConnectError::Timeout(_) => backend.stats.timeouts.inc(),
                        ConnectError::Io(_) => backend.stats.connect_errors.inc(),
                    };
                    route.backend_failed(i, e.to_string());
                    return Exchange::Unreachable;
                }
            },
        };
        let started = Instant::now();
        let Some(sending) = request.take() else {
            return Exchange::Failed(StatusCode::BAD_GATEWAY);
        };
        let error = match conn.send(sending, started + route.timeouts.request).await {
            Ok(Ok(response)) => {
                return Exchange::Answered(Answer {
                    response,
                    conn,
                    in_flight,
                    upstream_time: started.elapsed(),
                });
            }
            Err(Elapsed) => {
                // Dropping the connection with the request in flight closes it.
                backend.stats.timeouts.inc();
                route.backend_failed(i, format!("no response within {:?}", route.timeouts.request));
                return Exchange::Failed(StatusCode::GATEWAY_TIMEOUT);
            }
            Ok(Err(mut e)) => match e.take_message() {
                // Nothing was written: a reused connection had just closed.
                Some(back) if reused => {
                    *request = Some(back);
                    continue;
                }
                Some(back) => {
                    *request = Some(back);
                    backend.stats.connect_errors.inc();
                    route.backend_failed(i, format!("connection closed: {}", e.error()));
                    return Exchange::Unreachable;
                }
                None => e.into_error(),
            },
        };
        if body::is_too_large(&error) {
            return Exchange::Failed(StatusCode::PAYLOAD_TOO_LARGE);
        }
        backend.stats.response_errors.inc();
        route.backend_failed(i, error_chain(&error));
        return Exchange::Failed(StatusCode::BAD_GATEWAY);
    }
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

fn respond(
    route: &Route,
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
    let backend = &route.pool.backends()[i];
    let upstream = &route.upstreams[i];
    let status = response.status();
    backend.stats.latency.observe(upstream_time.as_secs_f64());
    backend.stats.response(status.as_u16());
    if status.is_server_error() {
        route
            .pool
            .report_failure(backend, format!("answered {}", status.as_u16()));
    } else {
        route.pool.report_success(backend);
    }
    if let Some(log) = &mut finish.log {
        log.status = status.as_u16();
        log.upstream = Some(upstream_time);
    }

    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let tunnel = match client_upgrade {
        Some(client_side) if switching => Some((client_side, hyper::upgrade::on(&mut response))),
        _ => None,
    };
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, tunnel.is_some());
    if let Some(cookie) = set_cookie {
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    let body = match tunnel {
        Some((client_side, backend_side)) => {
            // The connection is the tunnel's from now on: no reuse, and the
            // backend stays "in flight" until the tunnel closes.
            finish.keep_busy = true;
            let idle = route.timeouts.idle;
            client.set_tunnel(Box::pin(tunnel::upgraded(
                client_side,
                backend_side,
                idle,
                (conn.into_sender(), in_flight),
            )));
            ResponseBody::fixed(Bytes::new(), finish)
        }
        None => ResponseBody::backend(body, Some((upstream.clone(), conn)), in_flight, finish),
    };
    Response::from_parts(parts, body)
}

/// A short answer of our own.
fn local(status: StatusCode, mut finish: Finish) -> Response<ResponseBody> {
    let text: &'static str = match status {
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
    response
}
