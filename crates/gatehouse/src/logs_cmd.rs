//! `gatehouse logs`: what the log server kept, oldest first, one line per
//! message as `web1 | <the line>` (the seed's per-server prefix).
//!
//! It reads the store's files directly (no running serve needed, and no
//! copy through HTTP for a search over gigabytes); only `--stats` asks a
//! running serve too, for what it shed and throttled. The admin listener's
//! `/logs` answers the same questions over HTTP with the same parsing,
//! which lives here.

use std::io::Write;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_config::Farm;
use gatehouse_logd::Line;
use gatehouse_logd::query::{self, Query};
use serde_json::{Value, json};

use crate::Failure;
use crate::kernel_cmd::ConfigArg;

#[derive(clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Read this directory instead of the config's [log_server] dir.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Only this sender (its [log_server] hosts name, or its address); repeat for more.
    #[arg(long = "host", short = 'H', value_name = "HOST")]
    hosts: Vec<String>,
    /// Only lines received since then: an age ("1h", "30m", "2d") or a UTC time ("2026-11-25 04:00:00").
    #[arg(long, value_name = "AGE|TIME")]
    since: Option<String>,
    /// Only lines received before then: an age or a UTC time, as for --since.
    #[arg(long, value_name = "AGE|TIME")]
    until: Option<String>,
    /// Only lines matching this regular expression (Rust regex syntax, on the whole message).
    #[arg(long, short = 'g', value_name = "REGEX")]
    grep: Option<String>,
    /// Only the last N matching lines.
    #[arg(long = "lines", short = 'n', value_name = "N")]
    last: Option<usize>,
    /// Keep printing lines as they arrive (Ctrl-C stops).
    #[arg(long, short = 'f')]
    follow: bool,
    /// One JSON object per line, with the parsed syslog fields.
    #[arg(long)]
    json: bool,
    /// Per sender: lines and bytes kept, time range, and (from a running serve) what was shed.
    #[arg(long, conflicts_with_all = ["grep", "last", "follow", "since", "until"])]
    stats: bool,
    /// The admin listener to ask for --stats, instead of the config's [admin] listen.
    #[arg(long, value_name = "ADDR:PORT")]
    admin: Option<SocketAddr>,
}

/// What a query asks, as text from the command line or a URL.
#[derive(Default)]
pub struct Request {
    pub hosts: Vec<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub grep: Option<String>,
    pub last: Option<usize>,
}

impl Request {
    /// The store query, or what is wrong with the request, said so the
    /// user can fix it.
    pub fn query(&self, now: SystemTime) -> Result<Query, String> {
        let grep = match &self.grep {
            Some(pattern) => Some(
                regex::bytes::Regex::new(pattern)
                    .map_err(|e| format!("--grep \"{pattern}\" is not a regular expression: {e}"))?,
            ),
            None => None,
        };
        Ok(Query {
            hosts: self.hosts.clone(),
            since_us: self
                .since
                .as_deref()
                .map(|t| parse_time(t, now, "since"))
                .transpose()?,
            until_us: self
                .until
                .as_deref()
                .map(|t| parse_time(t, now, "until"))
                .transpose()?,
            grep,
            last: self.last,
        })
    }
}

/// An age before `now` ("90s", "1h", "2d 3h") or a UTC time
/// ("2026-11-25T04:00:00Z", "2026-11-25 04:00:00", "2026-11-25"), in
/// microseconds since the epoch.
pub fn parse_time(text: &str, now: SystemTime, key: &str) -> Result<i64, String> {
    let text = text.trim();
    let at = if let Ok(age) = humantime::parse_duration(text) {
        now.checked_sub(age).unwrap_or(UNIX_EPOCH)
    } else if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        time
    } else if let Ok(day) = humantime::parse_rfc3339_weak(&format!("{text} 00:00:00")) {
        day
    } else {
        return Err(format!(
            "--{key} \"{text}\" is neither an age nor a time: write an age such as \"1h\" or \"30m\", \
             or a UTC time such as \"2026-11-25 04:00:00\""
        ));
    };
    Ok(micros(at))
}

pub fn micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// A line as printed: the seed's prefixed text, or JSON.
pub fn render(line: &Line, json: bool, out: &mut String) {
    if json {
        out.push_str(&gatehouse_logd::message::to_json(line).to_string());
    } else {
        gatehouse_logd::message::write_text(line, out);
    }
    out.push('\n');
}

pub fn run(args: &LogsArgs) -> Result<ExitCode, Failure> {
    let (dir, farm) = match &args.dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let path = gatehouse_config::resolve_path(args.config.path());
            let farm = Farm::load(&path)?;
            let Some(log) = &farm.log_server else {
                return Err(Failure::BadInput(format!(
                    "error: {} has no [log_server] section, so there are no logs to read\n  \
                     help: add one (see the config reference in README.md), or give --dir DIR",
                    path.display()
                )));
            };
            (log.dir.value.clone(), Some(farm))
        }
    };
    if args.stats {
        return stats(&dir, farm.as_ref(), args);
    }
    let request = Request {
        hosts: args.hosts.clone(),
        since: args.since.clone(),
        until: args.until.clone(),
        grep: args.grep.clone(),
        last: args.last,
    };
    let query = request
        .query(SystemTime::now())
        .map_err(|e| Failure::BadInput(format!("error: {e}")))?;
    let stdout = std::io::stdout();
    let mut printer = Printer {
        out: std::io::BufWriter::with_capacity(64 * 1024, stdout.lock()),
        text: String::new(),
        json: args.json,
        broken: None,
    };
    let mut cursor = query::search(&dir, &query, |line| printer.line(line)).map_err(|e| no_store(&dir, e))?;
    if args.follow {
        // Only new lines from here on: `last` was for the first screenful.
        let query = Query { last: None, ..query };
        while printer.broken.is_none() && printer.out.flush().is_ok() {
            std::thread::sleep(Duration::from_millis(200));
            query::search_after(&dir, &query, &mut cursor, |line| printer.line(line))
                .map_err(|e| no_store(&dir, e))?;
        }
    }
    match printer.broken.map_or_else(|| printer.out.flush(), Err) {
        // `gatehouse logs | head` closing the pipe is how such a reader says
        // it has seen enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(Failure::Failed(
            anyhow::Error::new(e).context("writing to stdout"),
        )),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

/// Lines to stdout; a write error (a closed pipe) ends the search.
struct Printer<W: Write> {
    out: W,
    text: String,
    json: bool,
    broken: Option<std::io::Error>,
}

impl<W: Write> Printer<W> {
    fn line(&mut self, line: &Line) -> ControlFlow<()> {
        self.text.clear();
        render(line, self.json, &mut self.text);
        match self.out.write_all(self.text.as_bytes()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                self.broken = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}

fn no_store(dir: &Path, e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::NotFound {
        Failure::Failed(anyhow::anyhow!(
            "no logs in {}: is serve running with this [log_server] dir, and has it received anything?",
            dir.display()
        ))
    } else {
        Failure::Failed(anyhow::Error::new(e).context(format!("reading the logs in {}", dir.display())))
    }
}

/// Per host: what is kept (from the files) and what was received, shed and
/// throttled since serve started (from its admin listener, when it answers).
fn stats(dir: &Path, farm: Option<&Farm>, args: &LogsArgs) -> Result<ExitCode, Failure> {
    let hosts = query::hosts(dir).map_err(|e| no_store(dir, e))?;
    let admin = args
        .admin
        .or_else(|| farm.and_then(|f| f.admin.as_ref()).map(|a| a.listen.value));
    let (sources, server_note) = match admin {
        Some(addr) => match crate::serve_cmd::request(addr, hyper::Method::GET, "/logs/stats") {
            Ok((200, body)) => {
                let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                (value["sources"].as_array().cloned().unwrap_or_default(), None)
            }
            Ok((status, body)) => (
                Vec::new(),
                Some(format!("serve answered {status}: {}", body.trim())),
            ),
            Err(e) => (Vec::new(), Some(format!("{e:#}"))),
        },
        None => (
            Vec::new(),
            Some("no [admin] listener to ask for received and shed counts".into()),
        ),
    };
    let value = stats_json(&hosts, &sources);
    if args.json {
        println!("{value}");
    } else {
        print!("{}", stats_table(&value));
        if let Some(note) = server_note {
            println!("(counters of the running serve not shown: {note})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `{"hosts": [...]}` with what is kept per host and, under `sources`,
/// what each sender address sent; serve's `/logs/stats` answers the same.
pub fn stats_json(hosts: &[query::HostSummary], sources: &[Value]) -> Value {
    let time = |us: Option<i64>| {
        us.map(|us| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_micros(us.max(0) as u64))
                .to_string()
        })
    };
    let hosts: Vec<Value> = hosts
        .iter()
        .map(|h| {
            let mine: Vec<&Value> = sources.iter().filter(|s| s["host"] == h.host.as_str()).collect();
            let sum = |key: &str| mine.iter().filter_map(|s| s[key].as_u64()).sum::<u64>();
            json!({
                "host": h.host,
                "lines": h.lines,
                "disk_bytes": h.disk_bytes,
                "segments": h.segments,
                "first": time(h.first_us),
                "last": time(h.last_us),
                "received": sum("messages"),
                "shed": sum("shed"),
                "throttled": sum("throttled"),
                "unparsed": sum("unparsed"),
                "truncated": sum("truncated"),
            })
        })
        .collect();
    json!({ "hosts": hosts, "sources": sources })
}

fn stats_table(value: &Value) -> String {
    let mut rows = vec![
        [
            "HOST",
            "LINES",
            "ON DISK",
            "SEGMENTS",
            "FIRST",
            "LAST",
            "RECEIVED",
            "SHED",
            "THROTTLED",
            "UNPARSED",
            "TRUNCATED",
        ]
        .map(String::from),
    ];
    let empty = Vec::new();
    for h in value["hosts"].as_array().unwrap_or(&empty) {
        let text = |key: &str| match &h[key] {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        rows.push([
            text("host"),
            text("lines"),
            bytesize::ByteSize::b(h["disk_bytes"].as_u64().unwrap_or(0))
                .display()
                .iec()
                .to_string(),
            text("segments"),
            text("first"),
            text("last"),
            text("received"),
            text("shed"),
            text("throttled"),
            text("unparsed"),
            text("truncated"),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.len() == 1 {
        out.push_str("(no logs yet)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_ages_or_utc_times() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(parse_time("1h", now, "since"), Ok(micros(now) - 3_600_000_000));
        assert_eq!(
            parse_time("2d 3h", now, "since"),
            Ok(micros(now) - 183_600_000_000)
        );
        assert_eq!(
            parse_time("2026-11-25T04:00:00Z", now, "since"),
            Ok(1_795_579_200_000_000)
        );
        assert_eq!(
            parse_time("2026-11-25 04:00:00", now, "since"),
            Ok(1_795_579_200_000_000)
        );
        assert_eq!(parse_time("2026-11-25", now, "until"), Ok(1_795_564_800_000_000));
        let err = parse_time("yesterday", now, "since").unwrap_err();
        assert!(
            err.starts_with("--since \"yesterday\" is neither an age nor a time"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_regex_is_named() {
        let request = Request {
            grep: Some("(unclosed".into()),
            ..Request::default()
        };
        let Err(err) = request.query(SystemTime::now()) else {
            panic!("a bad regex was accepted");
        };
        assert!(
            err.starts_with("--grep \"(unclosed\" is not a regular expression"),
            "{err}"
        );
    }

    #[test]
    fn stats_join_what_is_kept_with_what_was_received() {
        let hosts = [query::HostSummary {
            host: "web1".into(),
            segments: 2,
            disk_bytes: 3 * 1024 * 1024,
            lines: 1500,
            first_us: Some(1_795_579_200_000_000),
            last_us: Some(1_795_579_260_000_000),
        }];
        let sources = [
            json!({"host": "web1", "source": "10.0.0.11", "messages": 1000, "shed": 7, "throttled": 0, "unparsed": 1, "truncated": 0}),
            json!({"host": "web1", "source": "fd00::11", "messages": 500, "shed": 0, "throttled": 3, "unparsed": 0, "truncated": 2}),
            json!({"host": "web2", "source": "10.0.0.12", "messages": 9, "shed": 0, "throttled": 0, "unparsed": 0, "truncated": 0}),
        ];
        let value = stats_json(&hosts, &sources);
        let web1 = &value["hosts"][0];
        assert_eq!(web1["received"], 1500);
        assert_eq!(web1["shed"], 7);
        assert_eq!(web1["throttled"], 3);
        assert_eq!(web1["truncated"], 2);
        assert_eq!(web1["first"], "2026-11-25T04:00:00Z");
        let table = stats_table(&value);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("HOST  LINES  ON DISK"), "{table}");
        assert!(lines[1].starts_with("web1  1500   3.0 MiB"), "{table}");
    }
}
