//! `gatehouse probe` against small HTTP servers the tests start on loopback: the
//! table and its counts, `--json`, `--keep-alive`, `--by-header`, failures and exit
//! statuses. No root needed; every server stops when its test ends.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

const EXE: &str = env!("CARGO_BIN_EXE_gatehouse");

/// What a test server answers to request number `request` (counted over the
/// server, from 0) on its connection number `connection` (from 0). `None` closes
/// the connection without an answer.
type Answer = fn(request: usize, connection: usize) -> Option<Reply>;

struct Reply {
    status: u16,
    header: Option<(&'static str, String)>,
    body: String,
}

fn page(title: &str) -> Option<Reply> {
    Some(Reply {
        status: 200,
        header: None,
        body: format!("<html><head><title>{title}</title></head><body>hi</body></html>\n"),
    })
}

/// An HTTP/1.1 server (hyper, keep-alive) on 127.0.0.1 in a thread of its own.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(answer: Answer) -> Server {
        let listener = StdListener::bind("127.0.0.1:0").expect("binding a loopback port");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || serve(listener, answer, stop)
        });
        Server {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: StdListener, answer: Answer, stop: Arc<AtomicBool>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let mut connections = 0;
        // Poll the stop flag between accepts; the runtime's drop then closes the
        // listener and every connection.
        while !stop.load(SeqCst) {
            let Ok(accepted) = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await
            else {
                continue;
            };
            let Ok((stream, _peer)) = accepted else { continue };
            let connection = connections;
            connections += 1;
            let requests = Arc::clone(&requests);
            tokio::spawn(async move {
                let service = service_fn(move |_request: Request<hyper::body::Incoming>| {
                    let reply = answer(requests.fetch_add(1, SeqCst), connection);
                    async move {
                        let Some(reply) = reply else {
                            return Err("closing without an answer");
                        };
                        let mut response = Response::new(Full::new(Bytes::from(reply.body)));
                        *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
                        if let Some((name, value)) = reply.header {
                            response.headers_mut().insert(name, value.parse().unwrap());
                        }
                        Ok::<_, &str>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn probe(args: &[&str]) -> Run {
    let output = Command::new(EXE)
        .arg("probe")
        .args(args)
        .output()
        .expect("running gatehouse probe");
    let run = Run {
        code: output
            .status
            .code()
            .expect("gatehouse probe was killed by a signal"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!(
        "gatehouse probe {}\n--- exit {}\n{}{}",
        args.join(" "),
        run.code,
        run.stdout,
        run.stderr
    );
    run
}

/// The cells after the group name on the table row of `group`: count, share, p50,
/// p90, p99, max.
fn row(table: &str, group: &str) -> Option<Vec<String>> {
    table.lines().find_map(|line| {
        let rest = line.strip_prefix(group)?;
        rest.starts_with("  ")
            .then(|| rest.split_whitespace().map(str::to_string).collect())
    })
}

fn count_and_share(table: &str, group: &str) -> (String, String) {
    let cells = row(table, group).unwrap_or_else(|| panic!("no row for {group:?} in:\n{table}"));
    (cells[0].clone(), cells[1].clone())
}

fn cs(count: &str, share: &str) -> (String, String) {
    (count.to_string(), share.to_string())
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn alternating(request: usize, _connection: usize) -> Option<Reply> {
    page(if request.is_multiple_of(2) { "A" } else { "B" })
}

#[test]
fn alternating_backends_split_exactly_ten_and_ten() {
    let server = Server::start(alternating);
    let run = probe(&[&server.url(), "-n", "20", "-c", "4"]);
    assert_eq!(run.code, 0);
    assert_eq!(count_and_share(&run.stdout, "A"), cs("10", "50.0%"));
    assert_eq!(count_and_share(&run.stdout, "B"), cs("10", "50.0%"));
    assert_eq!(count_and_share(&run.stdout, "all answers"), cs("20", "100.0%"));
    let latencies = &row(&run.stdout, "A").unwrap()[2..];
    assert_eq!(latencies.len(), 4, "p50 p90 p99 max");
    let ms: Vec<f64> = latencies.iter().map(|cell| cell.parse().unwrap()).collect();
    assert!(
        ms.windows(2).all(|w| w[0] <= w[1]),
        "percentiles in order: {ms:?}"
    );
    assert!(
        run.stdout
            .contains("20 requests, 4 at a time, a new connection per request")
    );
    assert!(run.stdout.contains("20 answered, 0 failed"));
    assert!(run.stdout.contains("req/s"));
    assert!(!run.stdout.contains("error:"));
}

#[test]
fn each_lab_web_server_is_one_group() {
    fn site1(_: usize, _: usize) -> Option<Reply> {
        Some(Reply {
            status: 200,
            header: None,
            body: gatehouse_lab::web::site_html(1),
        })
    }
    fn site2(_: usize, _: usize) -> Option<Reply> {
        Some(Reply {
            status: 200,
            header: None,
            body: gatehouse_lab::web::site_html(2),
        })
    }
    for (k, server) in [(1, Server::start(site1)), (2, Server::start(site2))] {
        let run = probe(&[&server.url(), "-n", "20", "-c", "4"]);
        assert_eq!(run.code, 0);
        let group = format!("My Website Number {k}");
        assert_eq!(count_and_share(&run.stdout, &group), cs("20", "100.0%"));
        assert!(row(&run.stdout, &format!("My Website Number {}", 3 - k)).is_none());
    }
}

#[test]
fn json_output_has_the_same_figures() {
    let server = Server::start(alternating);
    let run = probe(&[&server.url(), "-n", "20", "-c", "4", "--json"]);
    assert_eq!(run.code, 0);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("probe --json prints JSON");
    assert_eq!(json["url"], server.url());
    assert_eq!(json["requests"], 20);
    assert_eq!(json["concurrency"], 4);
    assert_eq!(json["keep_alive"], false);
    assert_eq!(json["group_by"], "title");
    assert_eq!(json["answered"], 20);
    assert_eq!(json["failed"], 0);
    assert!(json["requests_per_second"].as_f64().unwrap() > 0.0);
    assert!(json["total_seconds"].as_f64().unwrap() > 0.0);
    let groups = json["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    for (group, name) in groups.iter().zip(["A", "B"]) {
        assert_eq!(group["group"], name);
        assert_eq!(group["error"], false);
        assert_eq!(group["count"], 10);
        assert_eq!(group["share_percent"], 50.0);
        let l = &group["latency_ms"];
        let [p50, p90, p99, max] = ["p50", "p90", "p99", "max"].map(|p| l[p].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max, "{l}");
    }
    assert!(json["latency_ms"]["max"].as_f64().unwrap() > 0.0);
}

#[test]
fn keep_alive_pins_a_worker_to_one_connection() {
    fn by_connection(_request: usize, connection: usize) -> Option<Reply> {
        page(&format!("connection parity {}", connection % 2))
    }
    let server = Server::start(by_connection);
    // A new connection per request: the connections alternate, like a kernel balancer's backends.
    let run = probe(&[&server.url(), "-n", "10"]);
    assert_eq!(run.code, 0);
    assert_eq!(
        count_and_share(&run.stdout, "connection parity 0"),
        cs("5", "50.0%")
    );
    assert_eq!(
        count_and_share(&run.stdout, "connection parity 1"),
        cs("5", "50.0%")
    );
    // Kept alive: every request rides the first connection.
    let run = probe(&[&server.url(), "-n", "10", "--keep-alive"]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("one kept-alive connection per worker"));
    assert_eq!(
        count_and_share(&run.stdout, "connection parity 0"),
        cs("10", "100.0%")
    );
}

#[test]
fn by_header_groups_by_the_header_value() {
    fn tagged(request: usize, _connection: usize) -> Option<Reply> {
        Some(Reply {
            status: 200,
            header: Some(("x-backend", format!("web{}", request % 2 + 1))),
            body: "no title here\n".to_string(),
        })
    }
    let server = Server::start(tagged);
    let run = probe(&[&server.url(), "-n", "20", "-c", "4", "--by-header", "X-Backend"]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("grouped by header x-backend"));
    assert_eq!(count_and_share(&run.stdout, "web1"), cs("10", "50.0%"));
    assert_eq!(count_and_share(&run.stdout, "web2"), cs("10", "50.0%"));
    let run = probe(&[&server.url(), "-n", "4", "--by-header", "x-missing"]);
    assert_eq!(run.code, 0);
    assert_eq!(
        count_and_share(&run.stdout, "(no x-missing header)"),
        cs("4", "100.0%")
    );
    let run = probe(&[&server.url(), "-n", "4"]);
    assert_eq!(count_and_share(&run.stdout, "(no title)"), cs("4", "100.0%"));
}

#[test]
fn a_non_2xx_status_is_an_answer_shown_with_its_status() {
    fn overloaded(request: usize, _connection: usize) -> Option<Reply> {
        if request.is_multiple_of(4) {
            Some(Reply {
                status: 503,
                header: None,
                body: "overloaded\n".to_string(),
            })
        } else {
            page("Shop")
        }
    }
    let server = Server::start(overloaded);
    let run = probe(&[&server.url(), "-n", "20", "-c", "4"]);
    assert_eq!(run.code, 0, "every request got an HTTP answer");
    assert_eq!(count_and_share(&run.stdout, "Shop"), cs("15", "75.0%"));
    assert_eq!(count_and_share(&run.stdout, "503 (no title)"), cs("5", "25.0%"));
    assert!(run.stdout.contains("20 answered, 0 failed"));
}

#[test]
fn refused_connections_are_errors_and_exit_1() {
    let url = format!("http://127.0.0.1:{}/", closed_port());
    let run = probe(&[&url, "-n", "20", "-c", "4"]);
    assert_eq!(run.code, 1);
    assert_eq!(
        count_and_share(&run.stdout, "error: connection refused"),
        cs("20", "100.0%")
    );
    assert_eq!(row(&run.stdout, "error: connection refused").unwrap()[2], "-");
    assert_eq!(count_and_share(&run.stdout, "all answers"), cs("0", "0.0%"));
    assert!(run.stdout.contains("0 answered, 20 failed"));

    let run = probe(&[&url, "-n", "3", "--json"]);
    assert_eq!(run.code, 1);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["failed"], 3);
    assert_eq!(json["answered"], 0);
    assert_eq!(json["latency_ms"], serde_json::Value::Null);
    assert_eq!(json["groups"][0]["group"], "error: connection refused");
    assert_eq!(json["groups"][0]["error"], true);
}

#[test]
fn some_failures_exit_1_and_are_listed_after_the_answers() {
    fn every_other_dropped(request: usize, _connection: usize) -> Option<Reply> {
        if request.is_multiple_of(2) {
            page("A")
        } else {
            None
        }
    }
    let server = Server::start(every_other_dropped);
    let run = probe(&[&server.url(), "-n", "20", "-c", "4"]);
    assert_eq!(run.code, 1);
    assert_eq!(count_and_share(&run.stdout, "A"), cs("10", "50.0%"));
    let errors: Vec<&str> = run.stdout.lines().filter(|l| l.starts_with("error: ")).collect();
    let failed: u64 = errors
        .iter()
        .map(|line| {
            line.split("  ")
                .find_map(|cell| cell.trim().parse::<u64>().ok())
                .unwrap()
        })
        .sum();
    assert_eq!(failed, 10, "{errors:?}");
    assert!(run.stdout.find("\nA ").unwrap() < run.stdout.find("\nerror: ").unwrap());
}

#[test]
fn a_silent_server_times_out() {
    // The kernel completes the handshake into the backlog; nobody ever reads.
    let silent = StdListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", silent.local_addr().unwrap());
    let run = probe(&[&url, "-n", "2", "-c", "2", "--timeout", "300ms"]);
    assert_eq!(run.code, 1);
    assert_eq!(count_and_share(&run.stdout, "error: timeout"), cs("2", "100.0%"));
}

#[test]
fn bad_arguments_exit_2() {
    for (args, says) in [
        (&["https://127.0.0.1/"][..], "https:// is not supported"),
        (&["ftp://127.0.0.1/"][..], "ftp:// is not supported"),
        (&["127.0.0.1:80"][..], "write it as http://127.0.0.1:80"),
        (&["http://exa mple/"][..], "is not a URL"),
        (&["http://127.0.0.1/", "-n", "0"][..], "at least 1"),
        (&["http://127.0.0.1/", "-c", "0"][..], "at least 1"),
        (&["http://127.0.0.1/", "--timeout", "0s"][..], "more than zero"),
        (
            &["http://127.0.0.1/", "--by-header", "bad header"][..],
            "not a valid header name",
        ),
    ] {
        let run = probe(args);
        assert_eq!(run.code, 2, "{args:?}");
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}");
    }
}
