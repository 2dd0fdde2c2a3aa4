//! `gatehouse serve` as a user runs it: real nginx backends on loopback, real
//! curl and wrk as clients, reloads by `gatehouse reload` and by SIGHUP, and
//! SIGTERM. The proxy's own behaviour (headers, errors, balancing) is tested
//! in crates/gatehouse-proxy; here it is the supervisor's promises.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use gatehouse_lab::loopback::{LoopbackNginx, free_port};
use support::{EXE, Process, require, show};

/// A running `gatehouse serve` on its own config and ports (the process is
/// stopped by pid when dropped: see support::Process).
struct Serve {
    process: Process,
    dir: PathBuf,
    config: PathBuf,
    port: u16,
    admin: u16,
}

impl std::ops::Deref for Serve {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Serve {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Serve {
    /// Start serve on `text`, where `PORT` and `ADMIN` are replaced by free
    /// ports; returns once it says it is serving.
    fn start(text: &str) -> Serve {
        let dir = std::env::temp_dir().join(format!(
            "gatehouse-serve-test-{}-{}",
            std::process::id(),
            free_port().expect("port")
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (port, admin) = (free_port().expect("port"), free_port().expect("port"));
        let config = dir.join("gatehouse.toml");
        write_config(&config, text, port, admin);
        let mut process = Process::spawn(
            &["serve".as_ref(), "-c".as_ref(), config.as_os_str()],
            dir.join("serve.log"),
        );
        process.wait_for_log("serving:", Duration::from_secs(10));
        Serve {
            process,
            dir,
            config,
            port,
            admin,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn rewrite(&self, text: &str) {
        write_config(&self.config, text, self.port, self.admin);
    }

    fn gatehouse(&self, args: &[&str]) -> Output {
        Command::new(EXE)
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .output()
            .expect("running gatehouse")
    }

    fn metrics(&self) -> String {
        curl(&[&format!("http://127.0.0.1:{}/metrics", self.admin)]).1
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_config(path: &Path, text: &str, port: u16, admin: u16) {
    let text = text
        .replace("PORT", &port.to_string())
        .replace("ADMIN", &admin.to_string());
    std::fs::write(path, text).expect("writing the config");
}

/// curl with a short timeout; (exit code, body).
fn curl(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .expect("running curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn site(body: &str) -> Option<usize> {
    let start = body.find("Number ")? + "Number ".len();
    body[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn two_backends(web: &LoopbackNginx, balance: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:ADMIN\"\n\n[[service]]\nname = \"app\"\nlisten = \"127.0.0.1:PORT\"\n\
         mode = \"http\"\nbalance = \"{balance}\"\n\
         backends = [{{ addr = \"{}\", name = \"web1\" }}, {{ addr = \"{}\", name = \"web2\" }}]\n\
         health = {{ check = \"http\", interval = \"200ms\", timeout = \"150ms\", fall = 2, rise = 2 }}\n",
        web.addr(1),
        web.addr(2)
    )
}

#[test]
fn serve_balances_and_reports_status_and_metrics() {
    require(&["nginx", "curl"]);
    let web = LoopbackNginx::start(2).expect("nginx");
    let serve = Serve::start(&two_backends(&web, "round-robin"));
    let sites: Vec<Option<usize>> = (0..4).map(|_| site(&curl(&[&serve.url("/")]).1)).collect();
    assert_eq!(sites, [Some(1), Some(2), Some(1), Some(2)]);

    let out = serve.gatehouse(&["status"]);
    assert!(out.status.success(), "{}", show(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let web1 = table.lines().find(|l| l.contains("web1")).expect("web1 row");
    assert!(
        web1.contains(&web.addr(1).to_string()) && web1.contains(" up "),
        "{table}"
    );

    let out = serve.gatehouse(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(json["services"][0]["backends"][1]["requests"], 2, "{json}");

    let metrics = serve.metrics();
    assert!(
        metrics.contains(r#"gatehouse_requests_total{service="app",backend="web1",class="2xx"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gatehouse_backend_up{service="app",backend="web2"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_request_duration_seconds_bucket"),
        "{metrics}"
    );
}

#[test]
fn a_dead_backend_shows_down_in_status_within_the_bound_and_comes_back() {
    require(&["nginx", "curl"]);
    let mut web = LoopbackNginx::start(2).expect("nginx");
    let serve = Serve::start(&two_backends(&web, "round-robin"));
    let state = |serve: &Serve| -> String {
        let out = serve.gatehouse(&["status", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        json["services"][0]["backends"][1]["state"]
            .as_str()
            .unwrap_or("?")
            .to_owned()
    };
    // interval 200 ms x fall 2, + 200 ms.
    let bound = Duration::from_millis(600);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state(&serve), "up");
    web.stop(2);
    let killed = Instant::now();
    while state(&serve) != "down" {
        assert!(
            killed.elapsed() < bound * 3,
            "web2 still up {:?} after its death",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let removal = killed.elapsed();
    eprintln!("web2 out of rotation {removal:?} after its death (bound {bound:?})");
    assert!(removal <= bound, "took {removal:?}, bound {bound:?}");
    for _ in 0..6 {
        assert_eq!(
            site(&curl(&[&serve.url("/")]).1),
            Some(1),
            "traffic goes to web1 only"
        );
    }
    let metrics = serve.metrics();
    assert!(
        metrics.contains(r#"gatehouse_backend_up{service="app",backend="web2"} 0"#),
        "{metrics}"
    );
    let table = String::from_utf8_lossy(&serve.gatehouse(&["status"]).stdout).into_owned();
    assert!(
        table.lines().any(|l| l.contains("web2") && l.contains("down")),
        "{table}"
    );

    web.restart(2).expect("restarting web2");
    let restarted = Instant::now();
    while state(&serve) != "up" {
        assert!(restarted.elapsed() < Duration::from_secs(3), "web2 not back");
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("web2 back {:?} after its restart", restarted.elapsed());
    assert!(restarted.elapsed() <= bound, "rise 2 x 200 ms + 200 ms");
    assert!(serve.log().contains("backend DOWN"), "{}", serve.log());
}

/// wrk's summary: (requests, socket error line or "", non-2xx line or "").
fn wrk(url: &str, seconds: u32) -> (u64, String) {
    let out = Command::new("wrk")
        .args(["-t2", "-c16", &format!("-d{seconds}s"), url])
        .output()
        .expect("running wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (requests, text)
}

#[test]
fn reloads_under_load_fail_no_request() {
    require(&["nginx", "curl", "wrk"]);
    let web = LoopbackNginx::start(3).expect("nginx");
    let serve = Serve::start(&two_backends(&web, "round-robin"));
    let url = serve.url("/");
    let load = std::thread::spawn(move || wrk(&url, 4));
    let three = format!(
        "[admin]\nlisten = \"127.0.0.1:ADMIN\"\n\n[[service]]\nname = \"app\"\nlisten = \"127.0.0.1:PORT\"\n\
         mode = \"http\"\nbalance = \"least-conn\"\nbackends = [\"{}\", \"{}\", \"{}\"]\n",
        web.addr(1),
        web.addr(2),
        web.addr(3)
    );
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        if i % 2 == 0 {
            serve.rewrite(&three);
        } else {
            serve.rewrite(&two_backends(&web, "round-robin"));
        }
        if i < 3 {
            let out = serve.gatehouse(&["reload"]);
            assert!(out.status.success(), "reload {i}: {}", show(&out));
        } else {
            serve.signal("HUP");
        }
    }
    let (requests, text) = load.join().expect("wrk thread");
    assert!(requests > 1000, "wrk made only {requests} requests:\n{text}");
    assert!(
        !text.contains("Socket errors"),
        "connections failed during reloads:\n{text}"
    );
    assert!(
        !text.contains("Non-2xx"),
        "requests failed during reloads:\n{text}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let json: serde_json::Value =
        serde_json::from_slice(&serve.gatehouse(&["status", "--json"]).stdout).expect("status JSON");
    assert_eq!(json["reloads"], 6, "{json}");
    // The last config is the two-backend one: web3 has left the pool.
    assert_eq!(json["services"][0]["backends"].as_array().map(Vec::len), Some(2));
}

#[test]
fn an_invalid_reload_is_refused_and_the_farm_keeps_serving() {
    require(&["nginx", "curl"]);
    let web = LoopbackNginx::start(2).expect("nginx");
    let good = two_backends(&web, "round-robin");
    let serve = Serve::start(&good);
    serve.rewrite(&good.replace("round-robin", "least-con"));
    let out = serve.gatehouse(&["reload"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown balance method \"least-con\""),
        "{stderr}"
    );
    assert!(stderr.contains("gatehouse.toml:8:11"), "{stderr}");
    assert!(stderr.contains("keeps running the previous config"), "{stderr}");
    serve.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(serve.log().contains("reload refused"), "{}", serve.log());
    let sites: Vec<Option<usize>> = (0..2).map(|_| site(&curl(&[&serve.url("/")]).1)).collect();
    assert_eq!(sites, [Some(1), Some(2)], "still round-robin on the old config");

    // A listener that cannot be bound refuses the whole reload, too.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr").port();
    serve.rewrite(&good.replace("127.0.0.1:PORT", &format!("127.0.0.1:{busy}")));
    let out = serve.gatehouse(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        show(&out)
    );
    assert_eq!(
        site(&curl(&[&serve.url("/")]).1),
        Some(1),
        "the old listener still serves"
    );
}

/// A backend that answers every request after `delay`.
fn slow_backend(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        std::thread::sleep(delay);
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nslow\n",
                        );
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    addr
}

#[test]
fn sigterm_lets_requests_in_flight_finish_then_exits_zero() {
    require(&["curl"]);
    let backend = slow_backend(Duration::from_millis(1500));
    let mut serve = Serve::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:ADMIN\"\n\n[[service]]\nname = \"slow\"\nlisten = \"127.0.0.1:PORT\"\n\
         mode = \"http\"\nbackends = [\"{backend}\"]\n"
    ));
    let url = serve.url("/");
    let in_flight = std::thread::spawn(move || curl(&["-o", "-", "-w", " %{http_code}", &url]));
    std::thread::sleep(Duration::from_millis(400));
    let stopped = Instant::now();
    serve.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    let mut late = std::net::TcpStream::connect(("127.0.0.1", serve.port));
    if let Ok(stream) = &mut late {
        // Accepted by a backlog not yet closed: it must not be served.
        let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
        let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(
            !answer.contains("slow"),
            "a new request was served after SIGTERM: {answer}"
        );
    }
    let (code, body) = in_flight.join().expect("curl thread");
    assert_eq!(
        (code, body.as_str()),
        (0, "slow\n 200"),
        "the request in flight was cut"
    );
    let status = serve.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "serve exited with {status}:\n{}", serve.log());
    assert!(stopped.elapsed() < Duration::from_secs(5));
    assert!(serve.log().contains("stopped"), "{}", serve.log());
}

#[test]
fn serve_refuses_an_invalid_file_at_start_with_its_position() {
    let dir = std::env::temp_dir().join(format!("gatehouse-serve-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("bad.toml");
    std::fs::write(
        &config,
        "[[service]]\nname = \"app\"\nlisten = \"8080\"\nmode = \"http\"\nbackends = [\"127.0.0.1:80\"]\n\
         health = { check = \"http\", interval = \"1s\", timeout = \"2s\" }\n",
    )
    .expect("write");
    let out = Command::new(EXE)
        .arg("serve")
        .arg("-c")
        .arg(&config)
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("health timeout 2s is longer than the interval 1s"),
        "{stderr}"
    );
    assert!(stderr.contains("bad.toml:6:"), "{stderr}");
}
