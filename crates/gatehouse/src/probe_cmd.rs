//! `gatehouse probe`: the seed's `wget` loop as a command. It sends N requests to
//! one URL and counts which backend answered each, by the page's `<title>` (the
//! lab's web servers say "My Website Number K") or by a response header, with
//! latency percentiles.
//!
//! Every request opens a new TCP connection by default, as wget did in the seed: a
//! kernel load balancer balances connections, so keep-alive would pin every request
//! to one backend. `--keep-alive` reuses one connection per worker instead, which is
//! what a userspace proxy that balances requests needs to be probed with.

use std::error::Error as StdError;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{ACCEPT, CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::net::TcpStream;

use crate::Failure;

/// How much of each body is searched for `<title>`.
const TITLE_SCAN_LIMIT: usize = 64 * 1024;
/// Group keys longer than this are shortened in the table (not in the JSON).
const TABLE_KEY_MAX: usize = 60;

#[derive(clap::Args)]
#[command(
    after_help = "Answers are grouped by the page's <title> (or by --by-header NAME); an answer whose \
                  status is not 2xx is grouped with its status, e.g. \"503 (no title)\".\n\
                  Latency: connect (unless reused), request and the whole body, over answered requests.\n\
                  Exit status: 0 every request got an HTTP answer, 1 some did not, 2 bad arguments."
)]
pub struct ProbeArgs {
    /// The URL to request, http:// only (e.g. http://198.51.100.1/).
    #[arg(value_name = "URL")]
    url: String,
    /// Number of requests to send.
    #[arg(short = 'n', long = "requests", value_name = "N", default_value_t = 10, value_parser = parse_count)]
    requests: u64,
    /// Number of requests in flight at once.
    #[arg(short = 'c', long, value_name = "CONCURRENCY", default_value_t = 1, value_parser = parse_count)]
    concurrency: u64,
    /// Reuse one connection per worker (default: a new TCP connection per request,
    /// which is what a kernel load balancer balances).
    #[arg(long)]
    keep_alive: bool,
    /// Group answers by this response header (e.g. Server) instead of the page's <title>.
    #[arg(long, value_name = "NAME", value_parser = parse_header_name)]
    by_header: Option<HeaderName>,
    /// Give up on a request after this long: connect, response and body (e.g. 5s, 500ms, 1m).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_timeout)]
    timeout: Duration,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &ProbeArgs) -> Result<ExitCode, Failure> {
    let target = Target::parse(&args.url).map_err(Failure::BadInput)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let addrs = runtime.block_on(target.resolve())?;
    let plan = Arc::new(Plan {
        target,
        addrs,
        requests: args.requests,
        keep_alive: args.keep_alive,
        group_by: args.by_header.clone(),
        timeout: args.timeout,
    });
    let workers = args.concurrency.min(args.requests);

    let progress = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(args.requests), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{bar:40} {pos}/{len} requests, {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };

    let started = Instant::now();
    let outcomes = runtime.block_on(probe(Arc::clone(&plan), workers, progress.clone()))?;
    let elapsed = started.elapsed();
    progress.finish_and_clear();

    let report = Report::new(outcomes, elapsed);
    let settings = Settings {
        url: &args.url,
        requests: args.requests,
        concurrency: workers,
        keep_alive: args.keep_alive,
        by_header: args.by_header.as_ref(),
    };
    if args.json {
        let json = report.json(&settings);
        println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_else(|_| json.to_string())
        );
    } else {
        print!("{}", report.table(&settings));
    }
    Ok(if report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

// ---------------------------------------------------------------- the target

/// Where the requests go, from the URL.
#[derive(Debug, PartialEq)]
struct Target {
    /// Host as written in the URL (an IPv6 address without its brackets).
    host: String,
    port: u16,
    /// The Host header: the URL's host, and its port when the URL names one.
    host_header: String,
    /// The request target: path and query.
    path: String,
}

impl Target {
    /// Parses an http:// URL. The error is a message ready to print (exit 2).
    fn parse(url: &str) -> Result<Target, String> {
        let uri: Uri = url
            .parse()
            .map_err(|err| format!("error: {url:?} is not a URL: {err}"))?;
        match uri.scheme_str() {
            Some(scheme) if scheme.eq_ignore_ascii_case("http") => {}
            Some(scheme) if scheme.eq_ignore_ascii_case("https") => {
                return Err(format!(
                    "error: {url}: https:// is not supported yet; probe speaks plain HTTP only\n\
                     help: probe the http:// port, or the backends behind the TLS terminator"
                ));
            }
            Some(scheme) => {
                return Err(format!(
                    "error: {url}: {scheme}:// is not supported; probe speaks http:// only"
                ));
            }
            None => {
                return Err(format!(
                    "error: {url:?} has no scheme\nhelp: write it as http://{}",
                    url.trim_start_matches('/')
                ));
            }
        }
        let Some(authority) = uri.authority() else {
            return Err(format!("error: {url}: the URL has no host"));
        };
        if authority.as_str().contains('@') {
            return Err(format!("error: {url}: credentials in the URL are not supported"));
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(format!("error: {url}: the URL has no host"));
        }
        let host_header = match authority.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") => "/".to_string(),
            Some(path) => path.to_string(),
        };
        Ok(Target {
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port: authority.port_u16().unwrap_or(80),
            host_header,
            path,
        })
    }

    /// Resolves the host once; connections try its addresses in order.
    async fn resolve(&self) -> anyhow::Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("cannot resolve {}", self.host))?
            .collect();
        if addrs.is_empty() {
            return Err(anyhow!("{} resolves to no address", self.host));
        }
        Ok(addrs)
    }
}

// ---------------------------------------------------------------- sending

/// Everything a worker needs, shared by all of them.
struct Plan {
    target: Target,
    addrs: Vec<SocketAddr>,
    requests: u64,
    keep_alive: bool,
    group_by: Option<HeaderName>,
    timeout: Duration,
}

impl Plan {
    fn request(&self) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.target.path.parse().expect("the path of a parsed URI parses");
        let headers = request.headers_mut();
        if let Ok(host) = HeaderValue::from_str(&self.target.host_header) {
            headers.insert(HOST, host);
        }
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("gatehouse-probe/", env!("CARGO_PKG_VERSION"))),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        if !self.keep_alive {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        request
    }
}

/// What became of one request.
#[derive(Debug)]
enum Outcome {
    /// An HTTP answer: its group key and how long it took.
    Answer { key: String, latency: Duration },
    /// No HTTP answer: what went wrong ("connection refused", "timeout", ...).
    Failed { kind: String },
}

/// Runs `workers` workers that take request numbers from one counter until N are sent.
async fn probe(plan: Arc<Plan>, workers: u64, progress: ProgressBar) -> anyhow::Result<Vec<Outcome>> {
    let next = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..workers)
        .map(|_| tokio::spawn(worker(Arc::clone(&plan), Arc::clone(&next), progress.clone())))
        .collect();
    let mut outcomes = Vec::with_capacity(plan.requests as usize);
    for handle in handles {
        outcomes.extend(handle.await.context("a probe worker panicked")?);
    }
    Ok(outcomes)
}

async fn worker(plan: Arc<Plan>, next: Arc<AtomicU64>, progress: ProgressBar) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut connection = None;
    while next.fetch_add(1, Ordering::Relaxed) < plan.requests {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(plan.timeout, exchange(&plan, &mut connection)).await {
            Ok(Ok(key)) => Outcome::Answer {
                key,
                latency: started.elapsed(),
            },
            Ok(Err(kind)) => Outcome::Failed { kind },
            Err(_elapsed) => Outcome::Failed {
                kind: "timeout".to_string(),
            },
        };
        // A failed connection is in an unknown state; without keep-alive, every
        // request gets its own.
        if !plan.keep_alive || matches!(outcome, Outcome::Failed { .. }) {
            connection = None;
        }
        progress.inc(1);
        outcomes.push(outcome);
    }
    outcomes
}

type Sender = SendRequest<Empty<Bytes>>;

/// One request and its answer, on `connection` (opened first when there is none).
/// Returns the answer's group key, or the kind of failure.
async fn exchange(plan: &Plan, connection: &mut Option<Sender>) -> Result<String, String> {
    let reused = connection.as_ref().is_some_and(|sender| !sender.is_closed());
    if !reused {
        *connection = Some(connect(&plan.addrs).await?);
    }
    let mut sender = connection.take().expect("connected above");
    if sender.ready().await.is_err() && reused {
        // The server closed the idle connection (keep-alive timeout or request limit):
        // that is not the request failing, so open a new one.
        sender = connect(&plan.addrs).await?;
        sender.ready().await.map_err(|err| error_kind(&err))?;
    }
    let response = sender
        .send_request(plan.request())
        .await
        .map_err(|err| error_kind(&err))?;
    *connection = Some(sender);

    let status = response.status();
    let by_header = plan
        .group_by
        .as_ref()
        .map(|name| header_label(response.headers(), name));
    let head = read_head(response.into_body()).await?;
    let label = by_header.unwrap_or_else(|| title_label(&head));
    Ok(if status.is_success() {
        label
    } else {
        format!("{} {label}", status.as_u16())
    })
}

async fn connect(addrs: &[SocketAddr]) -> Result<Sender, String> {
    let stream = TcpStream::connect(addrs).await.map_err(|err| io_kind(&err))?;
    // Requests are single small writes; no reason to wait for Nagle.
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| error_kind(&err))?;
    tokio::spawn(async move {
        // Its errors reach the request through `send_request`.
        let _ = connection.await;
    });
    Ok(sender)
}

/// Reads the whole body (the connection may be reused, and latency counts it all)
/// and keeps its first TITLE_SCAN_LIMIT bytes.
async fn read_head(mut body: Incoming) -> Result<Vec<u8>, String> {
    let mut head = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| error_kind(&err))?;
        if let Ok(data) = frame.into_data() {
            let room = TITLE_SCAN_LIMIT.saturating_sub(head.len());
            head.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(head)
}

/// A failure in a few words that group well: "connection refused", not the OS's
/// full message with its error number.
fn error_kind(err: &(dyn StdError + 'static)) -> String {
    if let Some(hyper_err) = err.downcast_ref::<hyper::Error>() {
        if hyper_err.is_incomplete_message() {
            return "connection closed before a complete response".to_string();
        }
        if hyper_err.is_parse() || hyper_err.is_parse_status() {
            return "malformed HTTP response".to_string();
        }
        if hyper_err.is_timeout() {
            return "timeout".to_string();
        }
    }
    let mut cause = Some(err);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            return io_kind(io);
        }
        cause = current.source();
    }
    err.to_string()
}

fn io_kind(err: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    let kind = match err.kind() {
        ConnectionRefused => "connection refused",
        ConnectionReset => "connection reset",
        ConnectionAborted => "connection aborted",
        BrokenPipe => "connection closed while sending (broken pipe)",
        TimedOut => "timeout",
        HostUnreachable => "host unreachable",
        NetworkUnreachable => "network unreachable",
        AddrNotAvailable => "no local address or port available",
        UnexpectedEof => "connection closed before a complete response",
        _ => return err.to_string(),
    };
    kind.to_string()
}

// ---------------------------------------------------------------- grouping

/// The group label from the page: its title, "(no title)" or "(empty title)".
fn title_label(head: &[u8]) -> String {
    match extract_title(head) {
        None => "(no title)".to_string(),
        Some(title) if title.is_empty() => "(empty title)".to_string(),
        Some(title) => title,
    }
}

/// The group label from a header: its value(s), or "(no NAME header)".
fn header_label(headers: &HeaderMap, name: &HeaderName) -> String {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).trim().to_string())
        .collect();
    if values.is_empty() {
        format!("(no {name} header)")
    } else {
        values.join(", ")
    }
}

/// The text of the first `<title>` element (tag names in any case), whitespace
/// collapsed and the common entities decoded; `None` when there is no complete one.
fn extract_title(html: &[u8]) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let mut from = 0;
    let open = loop {
        let at = from + find(&lower[from..], b"<title")?;
        let after = at + b"<title".len();
        match lower.get(after)? {
            // `<title>` or `<title lang="en">`, not `<titlex>`.
            b'>' | b' ' | b'\t' | b'\n' | b'\r' => break after,
            _ => from = after,
        }
    };
    let text_start = open + find(&lower[open..], b">")? + 1;
    let text_end = text_start + find(&lower[text_start..], b"</title")?;
    let raw = String::from_utf8_lossy(&html[text_start..text_end]);
    let collapsed = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(decode_entities(&collapsed))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
}

/// Parses `--timeout`: a number with `ms`, `s` or `m` (a bare number is seconds).
/// By hand rather than humantime (which the config uses) because a timeout
/// on the command line is often fractional ("1.5") and humantime takes whole
/// numbers only.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit_secs) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (examples: 5s, 500ms, 1.5s, 1m)"))?;
    if value.is_nan() || value <= 0.0 {
        return Err(format!("{text:?}: the timeout must be more than zero"));
    }
    Duration::try_from_secs_f64(value * unit_secs).map_err(|_| format!("{text:?} is too long a timeout"))
}

fn parse_count(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

fn parse_header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.trim().as_bytes()).map_err(|_| format!("{text:?} is not a valid header name"))
}

// ---------------------------------------------------------------- the report

/// The nearest-rank percentile of sorted values: the smallest value with at least
/// `pct` percent of the values at or below it. `None` for no values.
fn percentile(sorted: &[Duration], pct: u64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len() as u64;
    let rank = (pct * n).div_ceil(100).clamp(1, n);
    Some(sorted[rank as usize - 1])
}

/// p50, p90, p99 and max of sorted latencies.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Latencies {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

impl Latencies {
    fn of(sorted: &[Duration]) -> Option<Latencies> {
        Some(Latencies {
            p50: percentile(sorted, 50)?,
            p90: percentile(sorted, 90)?,
            p99: percentile(sorted, 99)?,
            max: *sorted.last()?,
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "p50": ms(self.p50), "p90": ms(self.p90), "p99": ms(self.p99), "max": ms(self.max),
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The answers (or failures) that share a key.
#[derive(Debug)]
struct Group {
    key: String,
    error: bool,
    count: u64,
    /// Sorted; empty for errors.
    latencies: Vec<Duration>,
}

/// How the probe was run, for the report's header.
struct Settings<'a> {
    url: &'a str,
    requests: u64,
    concurrency: u64,
    keep_alive: bool,
    by_header: Option<&'a HeaderName>,
}

#[derive(Debug)]
struct Report {
    /// Answers by count (most first), then errors by count.
    groups: Vec<Group>,
    /// Every answer's latency, sorted.
    answered: Vec<Duration>,
    total: u64,
    elapsed: Duration,
}

impl Report {
    fn new(outcomes: Vec<Outcome>, elapsed: Duration) -> Report {
        let total = outcomes.len() as u64;
        let mut groups: Vec<Group> = Vec::new();
        let mut answered = Vec::new();
        for outcome in outcomes {
            let (key, error, latency) = match outcome {
                Outcome::Answer { key, latency } => (key, false, Some(latency)),
                Outcome::Failed { kind } => (format!("error: {kind}"), true, None),
            };
            let index = match groups.iter().position(|g| g.key == key && g.error == error) {
                Some(index) => index,
                None => {
                    groups.push(Group {
                        key,
                        error,
                        count: 0,
                        latencies: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            let group = &mut groups[index];
            group.count += 1;
            if let Some(latency) = latency {
                group.latencies.push(latency);
                answered.push(latency);
            }
        }
        for group in &mut groups {
            group.latencies.sort();
        }
        answered.sort();
        groups.sort_by(|a, b| {
            a.error
                .cmp(&b.error)
                .then(b.count.cmp(&a.count))
                .then(a.key.cmp(&b.key))
        });
        Report {
            groups,
            answered,
            total,
            elapsed,
        }
    }

    fn failed(&self) -> u64 {
        self.total - self.answered.len() as u64
    }

    fn share(&self, count: u64) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            count as f64 * 100.0 / self.total as f64
        }
    }

    fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.total as f64 / secs } else { 0.0 }
    }

    fn table(&self, settings: &Settings) -> String {
        let mut rows: Vec<[String; 7]> = vec![[
            "GROUP".to_string(),
            "COUNT".to_string(),
            "SHARE".to_string(),
            "P50 ms".to_string(),
            "P90 ms".to_string(),
            "P99 ms".to_string(),
            "MAX ms".to_string(),
        ]];
        let mut row = |key: &str, count: u64, latencies: Option<Latencies>| {
            let cell = |pick: fn(&Latencies) -> Duration| match &latencies {
                Some(l) => format!("{:.2}", ms(pick(l))),
                None => "-".to_string(),
            };
            rows.push([
                shorten(key, TABLE_KEY_MAX),
                count.to_string(),
                format!("{:.1}%", self.share(count)),
                cell(|l| l.p50),
                cell(|l| l.p90),
                cell(|l| l.p99),
                cell(|l| l.max),
            ]);
        };
        for group in &self.groups {
            row(&group.key, group.count, Latencies::of(&group.latencies));
        }
        row(
            "all answers",
            self.answered.len() as u64,
            Latencies::of(&self.answered),
        );

        let width = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
        let mut out = format!("{}\n\n", describe(settings));
        for r in &rows {
            let pad = width - r[0].chars().count();
            out.push_str(&format!(
                "{}{}  {:>6}  {:>6}  {:>8}  {:>8}  {:>8}  {:>8}\n",
                r[0],
                " ".repeat(pad),
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6]
            ));
        }
        out.push_str(&format!(
            "\n{} requests in {:.3} s, {:.1} req/s: {} answered, {} failed\n",
            self.total,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.answered.len(),
            self.failed()
        ));
        out
    }

    fn json(&self, settings: &Settings) -> serde_json::Value {
        let groups: Vec<_> = self
            .groups
            .iter()
            .map(|group| {
                serde_json::json!({
                    "group": group.key,
                    "error": group.error,
                    "count": group.count,
                    "share_percent": self.share(group.count),
                    "latency_ms": Latencies::of(&group.latencies).map(|l| l.json()),
                })
            })
            .collect();
        serde_json::json!({
            "url": settings.url,
            "requests": settings.requests,
            "concurrency": settings.concurrency,
            "keep_alive": settings.keep_alive,
            "group_by": match settings.by_header {
                Some(name) => format!("header {name}"),
                None => "title".to_string(),
            },
            "answered": self.answered.len(),
            "failed": self.failed(),
            "total_seconds": self.elapsed.as_secs_f64(),
            "requests_per_second": self.rate(),
            "latency_ms": Latencies::of(&self.answered).map(|l| l.json()),
            "groups": groups,
        })
    }
}

fn describe(settings: &Settings) -> String {
    format!(
        "probe {}: {} requests, {} at a time, {}, grouped by {}",
        settings.url,
        settings.requests,
        settings.concurrency,
        if settings.keep_alive {
            "one kept-alive connection per worker"
        } else {
            "a new connection per request"
        },
        match settings.by_header {
            Some(name) => format!("header {name}"),
            None => "<title>".to_string(),
        }
    )
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(max - 3).collect();
        short.push_str("...");
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_of_the_seed_page() {
        let page = gatehouse_lab::web::site_html(2);
        assert_eq!(
            extract_title(page.as_bytes()).as_deref(),
            Some("My Website Number 2")
        );
    }

    #[test]
    fn title_tag_in_any_case_with_attributes_and_whitespace() {
        let html = b"<HTML><Head><TITLE lang=\"en\">\n  Two\n\t words  </Title></head>";
        assert_eq!(extract_title(html).as_deref(), Some("Two words"));
    }

    #[test]
    fn title_skips_lookalike_tags_and_decodes_entities() {
        let html = b"<titles>no</titles><title>Fish &amp; Chips &lt;3</title>";
        assert_eq!(extract_title(html).as_deref(), Some("Fish & Chips <3"));
    }

    #[test]
    fn no_title_when_missing_or_unterminated() {
        assert_eq!(extract_title(b"<html><body>hello</body></html>"), None);
        assert_eq!(extract_title(b"<title>cut off"), None);
        assert_eq!(extract_title(b"<title"), None);
        assert_eq!(extract_title(b""), None);
        assert_eq!(title_label(b"plain text"), "(no title)");
        assert_eq!(title_label(b"<title> </title>"), "(empty title)");
    }

    #[test]
    fn title_in_invalid_utf8_is_still_read() {
        let html = b"<title>caf\xe9</title>";
        assert_eq!(extract_title(html).as_deref(), Some("caf\u{fffd}"));
    }

    fn millis(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted = millis(&(1..=10).collect::<Vec<_>>());
        assert_eq!(percentile(&sorted, 50), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&sorted, 90), Some(Duration::from_millis(9)));
        assert_eq!(percentile(&sorted, 99), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&sorted, 100), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&sorted, 0), Some(Duration::from_millis(1)));
        let hundred = millis(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&hundred, 99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&hundred, 50), Some(Duration::from_millis(50)));
    }

    #[test]
    fn percentiles_of_one_and_none() {
        assert_eq!(percentile(&millis(&[7]), 50), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&millis(&[7]), 99), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(Latencies::of(&[]), None);
        let l = Latencies::of(&millis(&[1, 2, 3])).unwrap();
        assert_eq!(
            (l.p50, l.max),
            (Duration::from_millis(2), Duration::from_millis(3))
        );
    }

    #[test]
    fn report_groups_answers_first_by_count_then_errors() {
        let answer = |key: &str, ms: u64| Outcome::Answer {
            key: key.into(),
            latency: Duration::from_millis(ms),
        };
        let failed = |kind: &str| Outcome::Failed { kind: kind.into() };
        let report = Report::new(
            vec![
                answer("B", 3),
                failed("timeout"),
                answer("A", 1),
                answer("B", 2),
                answer("A", 4),
                answer("B", 1),
            ],
            Duration::from_secs(2),
        );
        let keys: Vec<_> = report.groups.iter().map(|g| (g.key.as_str(), g.count)).collect();
        assert_eq!(keys, [("B", 3), ("A", 2), ("error: timeout", 1)]);
        assert_eq!(report.failed(), 1);
        assert_eq!(report.rate(), 3.0);
        assert_eq!(report.answered, millis(&[1, 1, 2, 3, 4]));
        assert_eq!(report.groups[0].latencies, millis(&[1, 2, 3]));
    }

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:8080/a?b=c").unwrap();
        assert_eq!(
            t,
            Target {
                host: "127.0.0.1".into(),
                port: 8080,
                host_header: "127.0.0.1:8080".into(),
                path: "/a?b=c".into()
            }
        );
        let t = Target::parse("http://example.com").unwrap();
        assert_eq!(
            (t.port, t.host_header.as_str(), t.path.as_str()),
            (80, "example.com", "/")
        );
        let t = Target::parse("http://[::1]:81/").unwrap();
        assert_eq!((t.host.as_str(), t.host_header.as_str()), ("::1", "[::1]:81"));
        assert!(
            Target::parse("https://example.com/")
                .unwrap_err()
                .contains("https:// is not supported")
        );
        assert!(Target::parse("ftp://example.com/").is_err());
        assert!(
            Target::parse("127.0.0.1:8080")
                .unwrap_err()
                .contains("http://127.0.0.1:8080")
        );
        assert!(Target::parse("http://user:pw@example.com/").is_err());
        assert!(Target::parse("not a url").is_err());
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("-1s").is_err());
        assert!(parse_timeout("soon").is_err());
        assert!(parse_timeout("NaN").is_err());
    }
}
