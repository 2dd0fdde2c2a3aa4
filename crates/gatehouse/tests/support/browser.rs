//! Headless Chromium driven through ChromeDriver (Debian's chromium and
//! chromium-driver): the W3C WebDriver protocol is JSON over HTTP, so each
//! command is one curl call, and the test needs no WebDriver crate. The
//! browser and its driver end when the value is dropped (session deleted,
//! driver killed by pid), also when the test fails.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
}

/// Chromium as the probe of this machine starts it: headless, and without
/// the background connections a closed network refuses.
const ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1500",
];

impl Browser {
    pub fn start() -> Browser {
        for tool in ["chromium", "chromedriver"] {
            assert!(
                super::on_path(tool),
                "`{tool}` is not installed: apt-get install chromium chromium-driver \
                 (scripts/test.sh installs what the tests need)"
            );
        }
        let port = gatehouse_lab::loopback::free_port().expect("a free port");
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while browser.call("GET", "/status", None)["value"]["ready"] != json!(true) {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not get ready in 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let created = browser.call(
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": ARGS},
                "goog:loggingPrefs": {"browser": "ALL"},
            }}})),
        );
        browser.session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session from chromedriver: {created}"))
            .to_string();
        browser
    }

    /// One WebDriver command; the answer's JSON (an error is JSON too).
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let mut curl = Command::new("curl");
        curl.args([
            "-s",
            "-m",
            "60",
            "-X",
            method,
            "-H",
            "Content-Type: application/json",
        ]);
        if body.is_some() {
            curl.args(["--data-binary", "@-"]);
        }
        let mut child = curl
            .arg(format!("{}{path}", self.base))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("running curl");
        if let (Some(body), Some(mut stdin)) = (body, child.stdin.take()) {
            stdin
                .write_all(body.to_string().as_bytes())
                .expect("writing to curl");
        }
        let out = child.wait_with_output().expect("waiting for curl");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let answer = self.call(method, &format!("/session/{}{path}", self.session), body);
        if let Some(error) = answer["value"]["error"].as_str() {
            panic!(
                "webdriver {method} {path}: {error}: {}",
                answer["value"]["message"]
            );
        }
        answer["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.session_call("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Run `body` (a function body: `return ...;`) in the page.
    pub fn script(&self, body: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": body, "args": [] })),
        )
    }

    /// Wait until `body` returns true in the page; how long that took.
    pub fn wait_until(&self, what: &str, within: Duration, body: &str) -> Duration {
        let started = Instant::now();
        loop {
            if self.script(body) == json!(true) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "{what}: not within {within:?}; the page says:\n{}",
                self.script("return document.body.innerText;")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Type `text` into the element `css` selects (WebDriver's key codes
    /// included: "\u{E007}" is Enter).
    pub fn type_into(&self, css: &str, text: &str) {
        let found = self.session_call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        let id = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string();
        self.session_call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// What the page wrote to the console at level error (and failed loads).
    pub fn console_errors(&self) -> Vec<String> {
        let logs = self.session_call("POST", "/se/log", Some(json!({ "type": "browser" })));
        logs.as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == json!("SEVERE"))
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// A PNG of the window, written to `path`.
    pub fn screenshot(&self, path: &std::path::Path) {
        let base64 = self.session_call("GET", "/screenshot", None);
        let mut decode = Command::new("base64")
            .arg("-d")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("running base64");
        if let Some(mut stdin) = decode.stdin.take() {
            stdin
                .write_all(base64.as_str().unwrap_or_default().as_bytes())
                .expect("writing to base64");
        }
        let png = decode.wait_with_output().expect("decoding the screenshot");
        std::fs::write(path, png.stdout).expect("writing the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
