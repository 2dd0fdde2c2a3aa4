//! `/logs` on the admin listener: the questions `gatehouse logs` answers,
//! over HTTP, for the status page and for scripts.
//!
//!   GET /logs?host=web1&host=web2&since=1h&until=...&grep=REGEX&last=N
//!       lines oldest first, as text (`web1 | ...`), or NDJSON with
//!       `format=json` or `Accept: application/x-ndjson`; at most the last
//!       1000 matching lines unless `last` says otherwise (`last=0`: all).
//!   GET /logs?follow=1&...
//!       the same, then new lines as they arrive, until the client goes;
//!       server-sent events (one JSON object per event) when asked for
//!       with `Accept: text/event-stream`.
//!   GET /logs/stats
//!       per host what is kept, and per sender what was received and shed.

use std::convert::Infallible;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gatehouse_logd::Line;
use gatehouse_logd::query::{self, Cursor, Query};
use serde_json::json;

use super::SharedView;
use crate::logs_cmd::{Request, render, stats_json};

/// How many lines a query without `last` returns: a page, not the whole store.
const DEFAULT_LAST: usize = 1000;
/// How often a follower looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// A comment line that keeps idle event streams (and proxies) open.
const KEEPALIVE: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Text,
    Json,
    Events,
}

struct Params {
    request: Request,
    format: Format,
    follow: bool,
}

fn params(raw: Option<&str>, headers: &HeaderMap) -> Result<Params, String> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut format = if accept.contains("text/event-stream") {
        Format::Events
    } else if accept.contains("application/x-ndjson") || accept.contains("application/json") {
        Format::Json
    } else {
        Format::Text
    };
    let mut request = Request {
        last: Some(DEFAULT_LAST),
        ..Request::default()
    };
    let mut follow = false;
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let value = value.into_owned();
        match key.as_ref() {
            "host" => request
                .hosts
                .extend(value.split(',').filter(|h| !h.is_empty()).map(String::from)),
            "since" => request.since = Some(value),
            "until" => request.until = Some(value),
            "grep" if !value.is_empty() => request.grep = Some(value),
            "grep" => {}
            "last" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| format!("last \"{value}\" is not a number of lines"))?;
                request.last = (n > 0).then_some(n);
            }
            "format" => {
                format = match value.as_str() {
                    "text" => Format::Text,
                    "json" => Format::Json,
                    "events" => Format::Events,
                    other => return Err(format!("format \"{other}\" is not text, json or events")),
                }
            }
            "follow" => follow = matches!(value.as_str(), "1" | "true" | "yes" | ""),
            other => {
                return Err(format!(
                    "unknown parameter \"{other}\": use host, since, until, grep, last, format, follow"
                ));
            }
        }
    }
    Ok(Params {
        request,
        format,
        follow,
    })
}

fn bad_request(text: String) -> Response {
    (StatusCode::BAD_REQUEST, format!("{text}\n")).into_response()
}

fn log_dir(view: &SharedView) -> Option<PathBuf> {
    view.read().unwrap_or_else(|e| e.into_inner()).logs.clone()
}

fn no_log_server() -> Response {
    (
        StatusCode::NOT_FOUND,
        "this gatehouse has no [log_server]; add one to the config and reload\n",
    )
        .into_response()
}

fn write_line(line: &Line, format: Format, out: &mut String) {
    match format {
        Format::Text => render(line, false, out),
        Format::Json => render(line, true, out),
        Format::Events => {
            out.push_str("data: ");
            render(line, true, out);
            out.push('\n');
        }
    }
}

fn content_type(format: Format) -> &'static str {
    match format {
        Format::Text => "text/plain; charset=utf-8",
        Format::Json => "application/x-ndjson",
        Format::Events => "text/event-stream",
    }
}

pub async fn logs(State(view): State<SharedView>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Response {
    let Some(dir) = log_dir(&view) else {
        return no_log_server();
    };
    let params = match params(raw.as_deref(), &headers) {
        Ok(params) => params,
        Err(e) => return bad_request(e),
    };
    let query = match params.request.query(SystemTime::now()) {
        Ok(query) => query,
        Err(e) => return bad_request(e.replacen("--", "", 1)),
    };
    let format = params.format;
    let first = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut body = String::new();
            let cursor = query::search(&dir, &query, |line| {
                write_line(line, format, &mut body);
                ControlFlow::Continue(())
            });
            (query, cursor, body)
        })
        .await
    };
    let (query, cursor, body) = match first {
        Ok((query, Ok(cursor), body)) => (query, cursor, body),
        // Nothing received yet: an empty answer (and a follower waits).
        Ok((query, Err(e), _)) if e.kind() == std::io::ErrorKind::NotFound => {
            (query, Cursor::default(), String::new())
        }
        Ok((_, Err(e), _)) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading {}: {e}\n", dir.display()),
            )
                .into_response();
        }
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("query task: {e}\n")).into_response(),
    };
    let headers = [
        (header::CONTENT_TYPE, content_type(format)),
        (header::CACHE_CONTROL, "no-store"),
    ];
    if !params.follow {
        return (headers, body).into_response();
    }
    let (sender, receiver) = tokio::sync::mpsc::channel::<String>(16);
    let _ = sender.try_send(body);
    tokio::spawn(follow(dir, Query { last: None, ..query }, cursor, format, sender));
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), receiver))
    });
    (headers, Body::from_stream(stream)).into_response()
}

/// Send new lines until the client goes away (the channel closes).
async fn follow(
    dir: PathBuf,
    query: Query,
    mut cursor: Cursor,
    format: Format,
    sender: tokio::sync::mpsc::Sender<String>,
) {
    let query = std::sync::Arc::new(query);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(FOLLOW_POLL).await;
        if sender.is_closed() {
            return;
        }
        let (dir, query) = (dir.clone(), query.clone());
        let found = tokio::task::spawn_blocking(move || {
            let mut chunk = String::new();
            let result = query::search_after(&dir, &query, &mut cursor, |line| {
                write_line(line, format, &mut chunk);
                ControlFlow::Continue(())
            });
            (result, chunk, cursor)
        })
        .await;
        let Ok((result, mut chunk, next)) = found else {
            return;
        };
        cursor = next;
        if let Err(e) = result
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("log follow: {e}");
        }
        if chunk.is_empty() {
            quiet += FOLLOW_POLL;
            if quiet < KEEPALIVE || format != Format::Events {
                continue;
            }
            chunk.push_str(": keepalive\n\n");
        }
        quiet = Duration::ZERO;
        if sender.send(chunk).await.is_err() {
            return;
        }
    }
}

pub async fn stats(State(view): State<SharedView>) -> Response {
    let (dir, sources) = {
        let view = view.read().unwrap_or_else(|e| e.into_inner());
        let sources: Vec<serde_json::Value> = view
            .log_stats
            .snapshot()
            .into_iter()
            .map(|s| {
                json!({
                    "host": s.host,
                    "source": s.source.to_string(),
                    "messages": s.messages,
                    "bytes": s.bytes,
                    "unparsed": s.unparsed,
                    "truncated": s.truncated,
                    "shed": s.shed,
                    "throttled": s.throttled,
                })
            })
            .collect();
        (view.logs.clone(), sources)
    };
    let Some(dir) = dir else {
        return no_log_server();
    };
    let hosts = tokio::task::spawn_blocking(move || query::hosts(&dir)).await;
    let hosts = match hosts {
        Ok(Ok(hosts)) => hosts,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Ok(Err(e)) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        stats_json(&hosts, &sources).to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_read_like_the_command_line() {
        let headers = HeaderMap::new();
        let p = params(
            Some("host=web1&host=web2,web3&since=1h&grep=GET%20%2F&last=5&follow=1"),
            &headers,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.request.hosts, ["web1", "web2", "web3"]);
        assert_eq!(p.request.since.as_deref(), Some("1h"));
        assert_eq!(p.request.grep.as_deref(), Some("GET /"));
        assert_eq!(p.request.last, Some(5));
        assert!(p.follow);
        assert!(p.format == Format::Text);

        let p = params(None, &headers).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.request.last, Some(DEFAULT_LAST));
        let p = params(Some("last=0&format=json"), &headers).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.request.last, None);
        assert!(p.format == Format::Json);

        let mut sse = HeaderMap::new();
        sse.insert(header::ACCEPT, "text/event-stream".parse().expect("header"));
        assert!(params(None, &sse).unwrap_or_else(|e| panic!("{e}")).format == Format::Events);

        assert_eq!(
            params(Some("hots=web1"), &headers).err().as_deref(),
            Some("unknown parameter \"hots\": use host, since, until, grep, last, format, follow")
        );
        assert_eq!(
            params(Some("last=many"), &headers).err().as_deref(),
            Some("last \"many\" is not a number of lines")
        );
    }
}
