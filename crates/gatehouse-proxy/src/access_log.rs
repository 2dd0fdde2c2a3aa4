//! Access logs: Apache's combined format plus the backend and two timings,
//!
//! ```text
//! 203.0.113.7 - - [24/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 612 "-" "curl/7.88.1" backend=10.0.0.11:80 upstream=0.003 total=0.004
//! ```
//!
//! and for tcp services one line per connection:
//!
//! ```text
//! 203.0.113.7 - - [24/Nov/2026:10:00:00 +0000] tcp backend=10.0.0.11:5432 up=512 down=20480 duration=12.034 end=closed
//! ```
//!
//! Requests only format their line and hand it to a channel; a thread of the
//! sink's own writes it, buffered, flushing whenever the channel runs empty.
//! The channel is bounded: when the target cannot keep up (a slow disk, a
//! blocked stdout) lines are dropped and counted rather than letting requests
//! wait, and the thread says how many in a warning.
//!
//! Times are UTC (`+0000`): the proxy has no time zone database, and UTC lines
//! sort and merge across servers.

use std::fmt::Write as _;
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatehouse_config::AccessLog;
use hyper::Request;
use hyper::header;
use tokio::sync::mpsc;

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

enum Message {
    Line(String),
    /// Close the target and open this one (a reload; also how logrotate's
    /// "rename, then SIGHUP" gets a new file).
    Reopen(AccessLog),
}

/// Where a service's requests send their lines (and the backup server's, through
/// serve); cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    queue: mpsc::Sender<Message>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogSink")
    }
}

impl LogSink {
    /// Start the writer thread; it ends when the last clone is dropped.
    pub fn start(target: &AccessLog, service: &str) -> io::Result<LogSink> {
        let (queue, lines) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            lines,
            dropped: dropped.clone(),
            service: service.to_owned(),
        };
        let target = target.clone();
        std::thread::Builder::new()
            .name(format!("gh-log-{service}"))
            .spawn(move || writer.run(target))?;
        Ok(LogSink { queue, dropped })
    }

    pub fn send(&self, line: String) {
        if self.queue.try_send(Message::Line(line)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits for room rather than dropping: a reload is rare and must land
    /// (on a helper thread, as this may be called from async code).
    pub fn reopen(&self, target: &AccessLog) {
        if let Err(mpsc::error::TrySendError::Full(message)) =
            self.queue.try_send(Message::Reopen(target.clone()))
        {
            let queue = self.queue.clone();
            std::thread::spawn(move || queue.blocking_send(message));
        }
    }
}

/// A request's line, begun when the request arrives and finished when its
/// response has been sent.
#[derive(Debug)]
pub(crate) struct HttpLog {
    sink: LogSink,
    /// `IP - - [time] "request line"`
    head: String,
    /// ` "referer" "user agent"`
    agents: String,
    started: Instant,
    pub(crate) status: u16,
    pub(crate) backend: Option<SocketAddr>,
    pub(crate) upstream: Option<Duration>,
}

impl HttpLog {
    pub(crate) fn start<B>(sink: LogSink, ip: IpAddr, request: &Request<B>) -> HttpLog {
        let mut head = String::with_capacity(128);
        let _ = write!(head, "{ip} - - [");
        apache_time(&mut head, SystemTime::now());
        head.push_str("] \"");
        escape(&mut head, request.method().as_str().as_bytes());
        head.push(' ');
        escape(&mut head, request.uri().to_string().as_bytes());
        let _ = write!(head, " {:?}\"", request.version());
        let mut agents = String::with_capacity(64);
        for name in [header::REFERER, header::USER_AGENT] {
            agents.push_str(" \"");
            match request.headers().get(name) {
                Some(value) => escape(&mut agents, value.as_bytes()),
                None => agents.push('-'),
            }
            agents.push('"');
        }
        HttpLog {
            sink,
            head,
            agents,
            started: Instant::now(),
            // Until an answer is made: the client went away first.
            status: 499,
            backend: None,
            upstream: None,
        }
    }

    pub(crate) fn finish(self, bytes: u64) {
        let mut line = self.head;
        let _ = write!(line, " {} {bytes}{} backend=", self.status, self.agents);
        match self.backend {
            Some(addr) => {
                let _ = write!(line, "{addr}");
            }
            None => line.push('-'),
        }
        match self.upstream {
            Some(t) => {
                let _ = write!(line, " upstream={:.3}", t.as_secs_f64());
            }
            None => line.push_str(" upstream=-"),
        }
        let _ = write!(line, " total={:.3}", self.started.elapsed().as_secs_f64());
        self.sink.send(line);
    }
}

/// A tcp connection's line.
pub(crate) fn tcp_line(
    ip: IpAddr,
    wall: SystemTime,
    backend: Option<SocketAddr>,
    up: u64,
    down: u64,
    duration: Duration,
    end: &str,
) -> String {
    let mut line = String::with_capacity(128);
    let _ = write!(line, "{ip} - - [");
    apache_time(&mut line, wall);
    line.push_str("] tcp backend=");
    match backend {
        Some(addr) => {
            let _ = write!(line, "{addr}");
        }
        None => line.push('-'),
    }
    let _ = write!(
        line,
        " up={up} down={down} duration={:.3} end={end}",
        duration.as_secs_f64()
    );
    line
}

/// Bytes as nginx writes them into a log: printable ASCII as is, `"` and `\`
/// and everything else as `\xHH`, so a line is always one parseable line.
fn escape(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// UTC calendar fields of a time: (year, month 1-12, day, hour, minute, second).
/// humantime renders "YYYY-MM-DDTHH:MM:SSZ" into a stack buffer (no
/// allocation on this per-request path); the fields are read back from it.
fn civil(time: SystemTime) -> (i64, usize, u32, u32, u32, u32) {
    let mut buf = [0u8; 20];
    let rfc3339 = humantime::format_rfc3339_seconds(time.max(UNIX_EPOCH));
    let _ = std::io::Write::write_fmt(&mut &mut buf[..], format_args!("{rfc3339}"));
    let field = |at: usize, len: usize| {
        buf[at..at + len]
            .iter()
            .fold(0u32, |n, digit| n * 10 + u32::from(digit.wrapping_sub(b'0') % 10))
    };
    (
        i64::from(field(0, 4)),
        field(5, 2) as usize,
        field(8, 2),
        field(11, 2),
        field(14, 2),
        field(17, 2),
    )
}

/// `24/Nov/2026:10:00:00 +0000`, the time of a combined-format line, for
/// other writers of such lines (the demo's web servers).
pub fn apache_time_text(time: SystemTime) -> String {
    let mut out = String::with_capacity(26);
    apache_time(&mut out, time);
    out
}

/// `24/Nov/2026:10:00:00 +0000`
fn apache_time(out: &mut String, time: SystemTime) {
    let (y, mo, d, h, mi, s) = civil(time);
    let _ = write!(out, "{d:02}/{}/{y}:{h:02}:{mi:02}:{s:02} +0000", MONTHS[mo - 1]);
}

/// `Nov 24 10:00:00` (RFC 3164: the day padded with a space).
fn syslog_time(out: &mut String, time: SystemTime) {
    let (_, mo, d, h, mi, s) = civil(time);
    let _ = write!(out, "{} {d:>2} {h:02}:{mi:02}:{s:02}", MONTHS[mo - 1]);
}

struct Writer {
    lines: mpsc::Receiver<Message>,
    dropped: Arc<AtomicU64>,
    service: String,
}

impl Writer {
    fn run(mut self, target: AccessLog) {
        let mut out = Output::open(target, &self.service);
        let mut reported = 0;
        let mut warned: Option<Instant> = None;
        while let Some(first) = self.lines.blocking_recv() {
            let mut next = Some(first);
            while let Some(message) = next {
                match message {
                    Message::Line(line) => out.write_line(&line, &self.service),
                    Message::Reopen(target) => {
                        out.flush(&self.service);
                        out = Output::open(target, &self.service);
                    }
                }
                next = self.lines.try_recv().ok();
            }
            out.flush(&self.service);
            let dropped = self.dropped.load(Ordering::Relaxed);
            if dropped > reported && warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(
                    service = %self.service,
                    "access log: {} lines dropped because {} could not keep up with the traffic",
                    dropped - reported,
                    out.describe()
                );
                reported = dropped;
                warned = Some(Instant::now());
            }
        }
        out.flush(&self.service);
    }
}

enum Output {
    File {
        path: std::path::PathBuf,
        file: BufWriter<std::fs::File>,
    },
    Syslog {
        to: String,
        socket: UdpSocket,
        host: String,
        pid: u32,
    },
    Stdout(BufWriter<io::Stdout>),
    /// The target could not be opened; retried now and then.
    Broken {
        target: AccessLog,
        since: Instant,
    },
}

impl Output {
    fn open(target: AccessLog, service: &str) -> Output {
        let opened = match &target {
            AccessLog::File(path) => open_file(path).map(|file| Output::File {
                path: path.clone(),
                file: BufWriter::with_capacity(64 * 1024, file),
            }),
            AccessLog::Syslog(to) => UdpSocket::bind(if to.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            })
            .and_then(|socket| socket.connect(to.as_str()).map(|()| socket))
            .map(|socket| Output::Syslog {
                to: to.clone(),
                socket,
                host: hostname(),
                pid: std::process::id(),
            }),
            AccessLog::Stdout => Ok(Output::Stdout(BufWriter::with_capacity(64 * 1024, io::stdout()))),
        };
        opened.unwrap_or_else(|e| {
            tracing::warn!(service, "access log: cannot open {}: {e}", describe(&target));
            Output::Broken {
                target,
                since: Instant::now(),
            }
        })
    }

    fn describe(&self) -> String {
        match self {
            Output::File { path, .. } => path.display().to_string(),
            Output::Syslog { to, .. } => format!("syslog://{to}"),
            Output::Stdout(_) => "stdout".into(),
            Output::Broken { target, .. } => describe(target),
        }
    }

    fn write_line(&mut self, line: &str, service: &str) {
        if let Output::Broken { target, since } = self {
            if since.elapsed() < Duration::from_secs(10) {
                return;
            }
            *self = Output::open(target.clone(), service);
        }
        let written = match self {
            Output::File { file, .. } => file
                .write_all(line.as_bytes())
                .and_then(|()| file.write_all(b"\n")),
            Output::Stdout(out) => out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n")),
            Output::Syslog {
                socket, host, pid, ..
            } => {
                // <190>: facility local7, severity info, as nginx's syslog logging.
                let mut datagram = String::with_capacity(line.len() + 64);
                datagram.push_str("<190>");
                syslog_time(&mut datagram, SystemTime::now());
                let _ = write!(datagram, " {host} gatehouse[{pid}]: {line}");
                // Nobody listening (ECONNREFUSED) is the collector's business.
                let _ = socket.send(datagram.as_bytes());
                Ok(())
            }
            Output::Broken { .. } => Ok(()),
        };
        if let Err(e) = written {
            self.fail(e, service);
        }
    }

    fn flush(&mut self, service: &str) {
        let flushed = match self {
            Output::File { file, .. } => file.flush(),
            Output::Stdout(out) => out.flush(),
            _ => Ok(()),
        };
        if let Err(e) = flushed {
            self.fail(e, service);
        }
    }

    fn fail(&mut self, e: io::Error, service: &str) {
        let target = match self {
            Output::File { path, .. } => AccessLog::File(path.clone()),
            Output::Stdout(_) => AccessLog::Stdout,
            Output::Syslog { to, .. } => AccessLog::Syslog(to.clone()),
            Output::Broken { .. } => return,
        };
        tracing::warn!(service, "access log: writing {} failed: {e}", describe(&target));
        *self = Output::Broken {
            target,
            since: Instant::now(),
        };
    }
}

fn describe(target: &AccessLog) -> String {
    match target {
        AccessLog::File(path) => path.display().to_string(),
        AccessLog::Syslog(to) => format!("syslog://{to}"),
        AccessLog::Stdout => "stdout".into(),
    }
}

fn open_file(path: &Path) -> io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new().append(true).create(true).open(path)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_formatted_like_apache_and_syslog() {
        // 2026-11-24 10:00:00 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_795_514_400);
        let mut apache = String::new();
        apache_time(&mut apache, t);
        assert_eq!(apache, "24/Nov/2026:10:00:00 +0000");
        let mut syslog = String::new();
        syslog_time(
            &mut syslog,
            UNIX_EPOCH + Duration::from_secs(951_782_400 + 3 * 86_400 + 61),
        );
        assert_eq!(syslog, "Mar  3 00:01:01", "2000-03-03, a leap year");
        assert_eq!(civil(UNIX_EPOCH), (1970, 1, 1, 0, 0, 0));
    }

    #[test]
    fn quotes_and_control_bytes_are_escaped() {
        let mut out = String::new();
        escape(&mut out, b"a\"b\\c\n\xff");
        assert_eq!(out, "a\\x22b\\x5Cc\\x0A\\xFF");
    }

    #[test]
    fn tcp_lines_name_backend_bytes_and_duration() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_514_400);
        let line = tcp_line(
            "203.0.113.7".parse().unwrap(),
            t,
            Some("10.0.0.11:5432".parse().unwrap()),
            512,
            20480,
            Duration::from_millis(12_034),
            "closed",
        );
        assert_eq!(
            line,
            "203.0.113.7 - - [24/Nov/2026:10:00:00 +0000] tcp backend=10.0.0.11:5432 up=512 down=20480 duration=12.034 end=closed"
        );
    }
}
