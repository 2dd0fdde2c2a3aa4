//! The log server as a user runs it: `gatehouse serve` with a `[log_server]`
//! receiving the proxy's own access log (`access_log = "syslog://..."`) and
//! util-linux logger, `gatehouse logs` and the admin listener's `/logs`
//! answering, a reload renaming a sender, and a kill -9 in the middle of a
//! stream of lines: the restarted server reads back every line it stored,
//! in order, none twice, and loses at most what one fsync interval holds.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gatehouse_lab::loopback::{LoopbackNginx, TempDir, free_port};
use support::{EXE, Process, require, show};

fn gatehouse(args: &[&str]) -> Output {
    Command::new(EXE).args(args).output().expect("running gatehouse")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    assert!(out.status.success(), "{}", show(out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// `gatehouse logs -c CONFIG ARGS` until `done` holds for its lines (5 s).
fn logs_until(config: &Path, args: &[&str], done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let config = config.to_str().expect("utf-8 path");
    let mut all = vec!["logs", "-c", config];
    all.extend_from_slice(args);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = stdout_lines(&gatehouse(&all));
        if done(&lines) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "gatehouse {all:?} never got there:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn logger(args: &[&str]) {
    let out = Command::new("logger")
        .args(args)
        .output()
        .expect("running logger");
    assert!(out.status.success(), "logger {args:?}: {}", show(&out));
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "5"])
        .args(args)
        .output()
        .expect("running curl");
    assert!(out.status.success(), "curl {args:?}: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child's stdout, line by line, on a thread: `next` waits up to 5 s.
struct Lines {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Lines {
    fn spawn(program: &str, args: &[&str]) -> Lines {
        let mut child = Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting a follower");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { child, lines }
    }

    fn next(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(5))
            .expect("a line within 5 s")
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_keeps_the_proxys_access_log_and_logger_lines_and_answers_queries() {
    require(&["nginx", "curl", "logger"]);
    let dir = TempDir::new("query");
    let web = LoopbackNginx::start(1).expect("nginx");
    let (proxy, admin, udp, tcp) = (
        free_port().expect("port"),
        free_port().expect("port"),
        free_port().expect("port"),
        free_port().expect("port"),
    );
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
         [[service]]\nname = \"app\"\nlisten = \"127.0.0.1:{proxy}\"\nmode = \"http\"\n\
         backends = [\"{}\"]\naccess_log = \"syslog://127.0.0.1:{udp}\"\n\n\
         [log_server]\nudp = \"127.0.0.1:{udp}\"\ntcp = \"127.0.0.1:{tcp}\"\ndir = \"logs\"\n\
         hosts = {{ \"127.0.0.1\" = \"gateway\" }}\n",
        web.addr(1)
    );
    let config = dir.0.join("gatehouse.toml");
    std::fs::write(&config, &text).expect("config");
    let check = gatehouse(&["check", "-c", config.to_str().expect("path")]);
    let summary = String::from_utf8_lossy(&check.stdout);
    assert!(
        summary.contains(&format!(
            "logs     syslog on udp 127.0.0.1:{udp}, tcp 127.0.0.1:{tcp}, into {}",
            dir.0.join("logs").display()
        )),
        "{}",
        show(&check)
    );
    let mut serve = Process::spawn(
        &["serve".as_ref(), "-c".as_ref(), config.as_os_str()],
        dir.0.join("serve.log"),
    );
    serve.wait_for_log("serving", Duration::from_secs(10));

    for path in ["/alpha", "/beta", "/gamma"] {
        curl(&[&format!("http://127.0.0.1:{proxy}{path}")]);
    }
    logger(&[
        "-T",
        "-n",
        "127.0.0.1",
        "-P",
        &tcp.to_string(),
        "-t",
        "deploy",
        "hello from logger",
    ]);
    let lines = logs_until(&config, &[], |lines| lines.len() >= 4);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    for line in &lines {
        assert!(line.starts_with("gateway | "), "the seed's prefix: {line}");
    }
    let find = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(find("\"GET /alpha HTTP/1.1\" 404"), 1, "{lines:#?}");
    assert_eq!(find("\"GET /gamma HTTP/1.1\" 404"), 1, "{lines:#?}");
    assert_eq!(find("deploy: hello from logger"), 1, "{lines:#?}");
    // Oldest first: the requests were made in this order.
    let position = |needle: &str| lines.iter().position(|l| l.contains(needle));
    assert!(position("/alpha") < position("/beta") && position("/beta") < position("/gamma"));

    // Filters: regex, host, time.
    assert_eq!(
        logs_until(&config, &["--grep", "GET /(beta|gamma) "], |_| true).len(),
        2
    );
    assert!(logs_until(&config, &["--host", "web9"], |_| true).is_empty());
    assert_eq!(
        logs_until(&config, &["--host", "gateway", "--since", "1h"], |_| true).len(),
        4
    );
    assert!(logs_until(&config, &["--until", "1h"], |_| true).is_empty());
    assert_eq!(logs_until(&config, &["-n", "1"], |_| true), [lines[3].clone()]);
    let json = logs_until(&config, &["--json", "--grep", "logger"], |_| true);
    assert_eq!(json.len(), 1);
    let value: serde_json::Value = serde_json::from_str(&json[0]).expect("JSON");
    assert_eq!(value["host"], "gateway");
    assert_eq!(value["app"], "deploy");
    assert_eq!(value["message"], "hello from logger");

    // The same over HTTP on the admin listener.
    let base = format!("http://127.0.0.1:{admin}");
    let body = curl(&[&format!("{base}/logs?grep=GET%20/beta")]);
    assert_eq!(body.lines().count(), 1, "{body}");
    assert!(
        body.starts_with("gateway | ") && body.contains("GET /beta"),
        "{body}"
    );
    let ndjson = curl(&[&format!("{base}/logs?format=json&last=2")]);
    assert_eq!(ndjson.lines().count(), 2, "{ndjson}");
    let stats: serde_json::Value =
        serde_json::from_str(&curl(&[&format!("{base}/logs/stats")])).expect("JSON");
    assert_eq!(stats["hosts"][0]["host"], "gateway", "{stats}");
    assert_eq!(stats["hosts"][0]["lines"], 4, "{stats}");
    assert_eq!(stats["hosts"][0]["received"], 4, "{stats}");
    let metrics = curl(&[&format!("{base}/metrics")]);
    assert!(
        metrics.contains("gatehouse_log_messages_total{host=\"gateway\",source=\"127.0.0.1\"} 4"),
        "{metrics}"
    );
    let table = stdout_lines(&gatehouse(&[
        "logs",
        "-c",
        config.to_str().expect("path"),
        "--stats",
    ]));
    assert!(table[0].starts_with("HOST"), "{table:#?}");
    assert!(table[1].starts_with("gateway  4 "), "{table:#?}");

    // Following, over HTTP and from the command line: only new lines.
    let http = Lines::spawn(
        "curl",
        &[
            "-sSN",
            "--noproxy",
            "*",
            &format!("{base}/logs?follow=1&grep=later"),
        ],
    );
    let cli = Lines::spawn(
        EXE,
        &[
            "logs",
            "-c",
            config.to_str().expect("path"),
            "-f",
            "--grep",
            "later",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    logger(&[
        "-d",
        "-n",
        "127.0.0.1",
        "-P",
        &udp.to_string(),
        "-t",
        "app",
        "a later line",
    ]);
    for follower in [&http, &cli] {
        let line = follower.next();
        assert!(
            line.starts_with("gateway | ") && line.ends_with("app: a later line"),
            "{line}"
        );
    }

    // A reload renames the sender; what it sent before keeps its name.
    std::fs::write(&config, text.replace("\"gateway\"", "\"edge\"")).expect("config");
    let reload = gatehouse(&["reload", "-c", config.to_str().expect("path")]);
    assert!(reload.status.success(), "{}", show(&reload));
    logger(&[
        "-T",
        "-n",
        "127.0.0.1",
        "-P",
        &tcp.to_string(),
        "-t",
        "deploy",
        "after the reload",
    ]);
    let edge = logs_until(&config, &["--host", "edge"], |lines| !lines.is_empty());
    assert!(
        edge[0].starts_with("edge | ") && edge[0].ends_with("deploy: after the reload"),
        "{edge:#?}"
    );
    assert_eq!(logs_until(&config, &["--host", "gateway"], |_| true).len(), 5);

    serve.signal("TERM");
    assert!(
        serve.wait_exit(Duration::from_secs(15)).success(),
        "{}",
        serve.log()
    );
    // Stopped, the store still answers.
    assert_eq!(logs_until(&config, &[], |_| true).len(), 6);
}

#[test]
fn kill_9_during_ingest_keeps_every_stored_line_once_and_in_order() {
    let dir = TempDir::new("crash");
    let tcp = free_port().expect("port");
    let text = format!(
        "[log_server]\ntcp = \"127.0.0.1:{tcp}\"\ndir = \"{}\"\nfsync = \"1s\"\nrate_limit = 0\n",
        dir.0.join("logs").display()
    );
    let config = dir.0.join("gatehouse.toml");
    std::fs::write(&config, &text).expect("config");
    let spawn = |log: &str| {
        Process::spawn(
            &["serve".as_ref(), "-c".as_ref(), config.as_os_str()],
            dir.0.join(log),
        )
    };
    let mut serve = spawn("serve-1.log");
    serve.wait_for_log("serving", Duration::from_secs(10));

    // A sender writing numbered lines at about 20,000 a second until the
    // connection breaks.
    const RATE: u64 = 20_000;
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (sent, stop) = (sent.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut stream = TcpStream::connect(("127.0.0.1", tcp)).expect("connect");
            let start = Instant::now();
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = start.elapsed().as_micros() as u64 * RATE / 1_000_000;
                let mut chunk = String::new();
                while next < due {
                    chunk.push_str(&format!("<14>Nov 25 04:19:26 web1 app: line {next:08}\n"));
                    next += 1;
                }
                if stream.write_all(chunk.as_bytes()).is_err() {
                    break;
                }
                sent.store(next, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(2500));
    serve.signal("KILL");
    serve.wait_exit(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let sent = sent.load(Ordering::SeqCst);
    assert!(sent > 40_000, "the writer sent only {sent} lines");

    let mut serve = spawn("serve-2.log");
    serve.wait_for_log("serving", Duration::from_secs(10));
    let lines = stdout_lines(&gatehouse(&["logs", "-c", config.to_str().expect("path")]));
    let numbers: Vec<u64> = lines
        .iter()
        .map(|l| {
            let n = l.rsplit("line ").next().expect("a numbered line");
            n.parse().unwrap_or_else(|_| panic!("not a numbered line: {l}"))
        })
        .collect();
    let stored = numbers.len() as u64;
    assert!(
        numbers.iter().enumerate().all(|(i, &n)| n == i as u64),
        "lines must be 0..{stored} in order, each once"
    );
    let lost = sent - stored;
    assert!(
        lost <= RATE,
        "lost {lost} of {sent} lines: more than one fsync interval (1 s) of this sender's"
    );
    // And it goes on taking lines after the crash.
    let mut stream = TcpStream::connect(("127.0.0.1", tcp)).expect("connect");
    stream
        .write_all(b"<14>Nov 25 04:19:27 web1 app: after the crash\n")
        .expect("write");
    drop(stream);
    let after = logs_until(&config, &["--grep", "after the crash"], |lines| lines.len() == 1);
    assert!(after[0].starts_with("127.0.0.1 | "), "{after:#?}");
    eprintln!("kill -9: {sent} sent, {stored} stored, {lost} lost");
}
