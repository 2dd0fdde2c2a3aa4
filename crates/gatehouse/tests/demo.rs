//! `gatehouse demo` end to end, as a newcomer meets it: the farm on free
//! loopback ports, both sites through the proxy (curl), a line from logger
//! found through the HTTP query API, restic init against the demo's backup
//! server; and the status page in headless Chromium: no console errors,
//! both backends up, one turning red within the health bound after its web
//! server is stopped, a log line sent during the test, the search box.

mod support;

use std::ffi::OsString;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use gatehouse_lab::loopback::{TempDir, free_port};
use support::browser::Browser;
use support::{EXE, Process, on_path, show, site_number};

/// The demo's health checks (demo.toml): every 1 s, 500 ms timeout, down
/// after 2 failures; and the page re-reads itself every 2 s.
const HEALTH_BOUND: Duration = Duration::from_millis(2 * 1000 + 500);
const PAGE_PERIOD: Duration = Duration::from_secs(2);

struct Ports {
    proxy: u16,
    admin: u16,
    backup: u16,
    log: u16,
    web: [u16; 2],
}

impl Ports {
    /// Six different ports free for TCP (and the log port for UDP too).
    fn free() -> Ports {
        let mut taken = Vec::new();
        while taken.len() < 6 {
            let port = free_port().expect("a free port");
            if !taken.contains(&port) && UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                taken.push(port);
            }
        }
        Ports {
            proxy: taken[0],
            admin: taken[1],
            backup: taken[2],
            log: taken[3],
            web: [taken[4], taken[5]],
        }
    }

    fn args(&self) -> Vec<String> {
        [
            "demo".to_string(),
            "--proxy-port".into(),
            self.proxy.to_string(),
            "--admin-port".into(),
            self.admin.to_string(),
            "--backup-port".into(),
            self.backup.to_string(),
            "--log-port".into(),
            self.log.to_string(),
            "--web-ports".into(),
            format!("{},{}", self.web[0], self.web[1]),
        ]
        .to_vec()
    }
}

struct Demo {
    process: Process,
    ports: Ports,
    password: String,
    /// The demo's own temporary directory, as it printed it.
    dir: std::path::PathBuf,
    _logs: TempDir,
}

impl Demo {
    fn start() -> Demo {
        let ports = Ports::free();
        let logs = TempDir::new("demo");
        let args: Vec<OsString> = ports.args().into_iter().map(OsString::from).collect();
        let args: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
        let mut process = Process::spawn_with_input(&args, logs.path().join("demo.log"));
        process.wait_for_log("Ctrl-C stops everything.", Duration::from_secs(30));
        let log = process.log();
        let password = log
            .split("password ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("no password printed:\n{log}"))
            .to_string();
        let dir = log
            .split("(files in ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_else(|| panic!("no directory printed:\n{log}"))
            .into();
        Demo {
            process,
            ports,
            password,
            dir,
            _logs: logs,
        }
    }

    fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.admin)
    }

    /// GET on the admin listener: the body.
    fn get(&self, path: &str, accept: &str) -> String {
        let out = curl(&[
            "-s",
            "-m",
            "10",
            "-H",
            &format!("Accept: {accept}"),
            &self.admin(path),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Wait until `path` on the admin listener answers with `text` in it.
    fn wait_for(&self, path: &str, accept: &str, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let body = self.get(path, accept);
            if body.contains(text) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} at {path} within {within:?}:\n{body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logger(&self, message: &str) {
        let out = Command::new("logger")
            .args([
                "-n",
                "127.0.0.1",
                "-P",
                &self.ports.log.to_string(),
                "-d",
                message,
            ])
            .output()
            .expect("running logger");
        assert!(out.status.success(), "{}", show(&out));
    }

    fn restic(&self, password: &str, args: &[&str]) -> Output {
        let repo = format!(
            "rest:http://demo:{password}@127.0.0.1:{}/demo/site",
            self.ports.backup
        );
        Command::new("restic")
            .args(["-r", &repo])
            .args(args)
            .env("RESTIC_PASSWORD", "the repository's own key")
            .env("RESTIC_CACHE_DIR", self._logs.path().join("restic-cache"))
            .output()
            .expect("running restic")
    }
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl").args(args).output().expect("running curl")
}

fn require(tools: &[&str]) {
    for tool in tools {
        assert!(
            on_path(tool),
            "`{tool}` is not installed (scripts/test.sh installs what the tests need)"
        );
    }
}

/// A word no other line has, so a search finds exactly this test's line.
fn token(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{what}-{}-{nanos}", std::process::id())
}

#[test]
fn the_demo_runs_the_farm_logs_and_backups_and_stops_cleanly() {
    require(&["curl", "logger", "restic"]);
    let mut demo = Demo::start();

    // Both sites through the proxy, one after the other (round-robin).
    let proxy = format!("http://127.0.0.1:{}/", demo.ports.proxy);
    let sites: Vec<Option<usize>> = (0..2)
        .map(|_| site_number(&String::from_utf8_lossy(&curl(&["-s", "-m", "5", &proxy]).stdout)))
        .collect();
    let mut seen = sites.clone();
    seen.sort();
    assert_eq!(seen, [Some(1), Some(2)], "two requests, two sites: {sites:?}");

    // The status page without JavaScript: the tables are in the HTML.
    let page = demo.wait_for(
        "/",
        "text/html",
        "data-backend=\"web2\" data-state=\"up\"",
        Duration::from_secs(15),
    );
    assert!(page.contains("data-backend=\"web1\" data-state=\"up\""), "{page}");
    assert!(page.contains("<caption>Backends of web</caption>"));
    // curl and scripts get the list of endpoints instead.
    assert!(demo.get("/", "*/*").starts_with("gatehouse admin"));

    // A line from logger arrives, named by its sender's address (the demo
    // names 127.0.0.1 "gatehouse"), and the HTTP query API finds it.
    let word = token("hello-from-logger");
    demo.logger(&format!("{word} says hello"));
    let found = demo.wait_for(
        &format!("/logs?grep={word}"),
        "*/*",
        &word,
        Duration::from_secs(10),
    );
    assert_eq!(found.lines().count(), 1, "{found}");
    assert!(found.starts_with("gatehouse | "), "{found}");
    // The web servers log the visits from their own addresses: web1, web2.
    for web in ["web1", "web2"] {
        let lines = demo.wait_for(
            &format!("/logs?host={web}&grep=curl"),
            "*/*",
            "GET / HTTP/1.1",
            Duration::from_secs(10),
        );
        assert!(
            lines.lines().all(|l| l.starts_with(&format!("{web} | "))),
            "{lines}"
        );
        assert!(
            !lines.contains("gatehouse-health"),
            "health checks are left out:\n{lines}"
        );
    }
    // And the proxy's access log, with the backend each request went to.
    let proxied = demo.wait_for(
        "/logs?host=gatehouse&grep=backend%3D",
        "*/*",
        "backend=127.0.0.1:",
        Duration::from_secs(10),
    );
    assert!(
        proxied.contains(&format!("backend=127.0.0.1:{}", demo.ports.web[0])),
        "{proxied}"
    );

    // restic against the backup server, with the password printed once.
    let wrong = demo.restic("not-the-password", &["init"]);
    assert!(
        !wrong.status.success(),
        "a wrong password is refused:\n{}",
        show(&wrong)
    );
    let password = demo.password.clone();
    let init = demo.restic(&password, &["init"]);
    assert!(init.status.success(), "restic init:\n{}", show(&init));
    let snapshots = demo.restic(&password, &["snapshots", "--json"]);
    assert!(
        snapshots.status.success(),
        "restic snapshots:\n{}",
        show(&snapshots)
    );
    let backups = demo.get("/backups", "*/*");
    assert!(backups.contains("\"repo\":\"demo/site\""), "{backups}");

    // Ctrl-C: everything stops, exit 0, and the temporary directory goes.
    assert!(
        demo.dir.join("gatehouse.toml").is_file(),
        "{}",
        demo.dir.display()
    );
    demo.process.signal("INT");
    let status = demo.process.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit {status}:\n{}", demo.process.log());
    assert!(!demo.dir.exists(), "{} is left behind", demo.dir.display());
    assert!(
        TcpListener::bind((Ipv4Addr::LOCALHOST, demo.ports.proxy)).is_ok(),
        "the proxy's port is free again"
    );
}

#[test]
fn a_port_in_use_is_named_with_the_flag_that_moves_it() {
    let ports = Ports::free();
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, ports.proxy)).expect("holding the proxy's port");
    let out = Command::new(EXE)
        .args(ports.args())
        .output()
        .expect("running gatehouse demo");
    drop(taken);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{} (the proxy) is not free", ports.proxy)),
        "{stderr}"
    );
    assert!(
        stderr.contains("choose another port with --proxy-port"),
        "{stderr}"
    );

    // --print-config shows the farm with the ports asked for, and writes nothing.
    let out = Command::new(EXE)
        .args(ports.args())
        .arg("--print-config")
        .output()
        .expect("running gatehouse demo --print-config");
    assert!(out.status.success(), "{}", show(&out));
    let config = String::from_utf8_lossy(&out.stdout);
    assert!(
        config.contains(&format!("listen = \"127.0.0.1:{}\"", ports.proxy)),
        "{config}"
    );
    assert!(config.contains(&format!(
        "{{ addr = \"127.0.0.1:{}\", name = \"web2\" }}",
        ports.web[1]
    )));
}

#[test]
fn the_status_page_in_chromium_shows_health_logs_and_a_backend_going_down() {
    require(&["curl", "logger"]);
    let mut demo = Demo::start();
    let browser = Browser::start();
    browser.goto(&demo.admin("/"));

    let row = |name: &str| format!("var r = document.querySelector('tr[data-backend=\"{name}\"]');");
    let state = |name: &str| format!("{} return r ? r.dataset.state : null;", row(name));
    let is = |name: &str, want: &str| format!("{} return !!r && r.dataset.state === '{want}';", row(name));
    for web in ["web1", "web2"] {
        browser.wait_until(&format!("{web} up"), Duration::from_secs(20), &is(web, "up"));
    }
    assert_eq!(browser.script("return document.title;"), "gatehouse status");

    // Made for everyone: labelled controls, captioned tables, described
    // charts, a live summary, and the skip link first in the tab order.
    let problems = browser.script(
        r#"
        var p = [];
        document.querySelectorAll('input, select').forEach(function (e) {
          if (!document.querySelector('label[for="' + e.id + '"]')) p.push('unlabelled ' + e.outerHTML);
        });
        document.querySelectorAll('table').forEach(function (t) {
          if (!t.caption || !t.caption.textContent.trim()) p.push('table without caption');
          if (!t.querySelector('th[scope]')) p.push('table without th scope');
        });
        document.querySelectorAll('svg[role="img"]').forEach(function (s) {
          var label = document.getElementById(s.getAttribute('aria-labelledby'));
          if (!label || !label.textContent.trim()) p.push('chart without a description');
        });
        if (document.querySelectorAll('svg[role="img"]').length < 2) p.push('no charts');
        var live = document.getElementById('summary');
        if (!live || live.getAttribute('aria-live') !== 'polite') p.push('no live summary');
        var first = document.querySelector('a[href], button, input, select, textarea, [tabindex]');
        if (!first || first.className !== 'skip') p.push('the first stop is not the skip link');
        if (!document.documentElement.lang) p.push('no lang');
        return p;
        "#,
    );
    assert_eq!(problems, serde_json::json!([]), "accessibility");

    // A log line sent now appears without reloading the page.
    let word = token("status-page-line");
    demo.logger(&format!("{word} from the test"));
    browser.wait_until(
        "the new log line on the page",
        Duration::from_secs(15),
        &format!("return document.getElementById('logs-live').innerText.indexOf('{word}') >= 0;"),
    );
    let row = browser.script(&format!(
        "var rows = Array.from(document.querySelectorAll('#logs-live tbody tr'));\
         var r = rows.find(function (r) {{ return r.innerText.indexOf('{word}') >= 0; }});\
         return r.querySelector('th').innerText;"
    ));
    assert_eq!(row, "gatehouse", "the line has its host");

    // The search box, from the keyboard: type, Enter.
    browser.type_into("#grep", &format!("{word}\u{E007}"));
    browser.wait_until(
        "the search's answer",
        Duration::from_secs(15),
        &format!(
            "return location.search.indexOf('grep={word}') >= 0 && \
             document.querySelectorAll('#logs-live tbody tr').length === 1;"
        ),
    );
    assert!(browser.url().contains(&format!("grep={word}")));

    // web2 stops: the page turns it red within the health bound (and its
    // own refresh period), without a reload.
    demo.process.type_line("stop 2");
    let took = browser.wait_until(
        "web2 down on the page",
        HEALTH_BOUND + PAGE_PERIOD + Duration::from_secs(3),
        &is("web2", "down"),
    );
    eprintln!("web2 turned red on the page {took:?} after `stop 2`");
    let color = browser.script(
        "return getComputedStyle(document.querySelector('tr[data-backend=\"web2\"] .state')).backgroundColor;",
    );
    let rgb: Vec<u32> = color
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    assert!(
        rgb.len() == 3 && rgb[0] > 150 && rgb[1] < 100 && rgb[2] < 100,
        "red, not {color}"
    );
    assert_eq!(browser.script(&state("web1")), "up");
    let summary = browser.script("return document.getElementById('summary').innerText;");
    assert_eq!(summary, "1 of 2 backends up; 1 down: web2 (web).");

    // The screenshot for the README (docs/status-page.png is one of these).
    let shot = std::env::var_os("GATEHOUSE_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| demo._logs.path().join("status-page.png"));
    browser.goto(&demo.admin("/"));
    browser.wait_until("the page again", Duration::from_secs(10), &is("web2", "down"));
    browser.screenshot(&shot);
    let png = std::fs::read(&shot).unwrap_or_default();
    assert!(
        png.starts_with(b"\x89PNG"),
        "a PNG screenshot at {}",
        shot.display()
    );

    // And back: `start 2`, web2 rises again.
    demo.process.type_line("start 2");
    browser.wait_until("web2 up again", Duration::from_secs(15), &is("web2", "up"));

    let errors = browser.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}
