//! The lab through the gatehouse binary: the builtin web server (`gatehouse lab
//! web`), the who-am-I page, and `gatehouse lab up --no-apply | status | down`.
//! Needs root, curl and iproute2 (and nginx for `lab up` with the default web
//! server); a missing tool fails the test with what to install.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use gatehouse_lab::{CLIENT_ADDR, GATEWAY_LAN_ADDR, GATEWAY_WAN_ADDR, Lab, LabSpec, WebKind, web_addr};

const EXE: &str = env!("CARGO_BIN_EXE_gatehouse");

fn require_tools(tools: &[&str]) {
    gatehouse_lab::require(tools).expect("the lab tests cannot run here");
}

fn builtin_prefix() -> Vec<OsString> {
    vec![EXE.into(), "lab".into(), "web".into()]
}

fn namespaces_of(name: &str) -> Vec<String> {
    gatehouse_lab::namespaces_of(name).unwrap()
}

fn curl_in(ns: &str, url: &str) -> Output {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
        ])
        .args(["--connect-timeout", "1", "--max-time", "2", url])
        .output()
        .expect("running curl in a lab namespace")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn builtin_web_servers_serve_the_seed_pages() {
    require_tools(&["ip", "curl"]);
    let mut spec = LabSpec::unique(3, builtin_prefix());
    spec.web = WebKind::Builtin;
    let mut lab = Lab::up(spec).expect("building a lab with the builtin web server");
    assert_eq!(lab.web_kind(), WebKind::Builtin);
    let gw = lab.gateway_ns();
    for k in 1..=3 {
        let out = curl_in(&gw, &format!("http://{}/any/path", web_addr(k)));
        let page = text(&out.stdout);
        assert!(
            page.contains(&format!("<title>My Website Number {k}</title>")),
            "web{k}: {page} {}",
            text(&out.stderr)
        );
        assert!(page.contains("<h2>Welcome to my webpage</h2>"), "web{k}: {page}");
    }
    lab.stop_web(2).expect("stopping web server 2");
    assert!(!curl_in(&gw, &format!("http://{}/", web_addr(2))).status.success());
    lab.start_web(2).expect("starting web server 2 again");
    assert!(text(&curl_in(&gw, &format!("http://{}/", web_addr(2))).stdout).contains("My Website Number 2"));
}

#[test]
fn whoami_reports_the_address_the_server_sees() {
    require_tools(&["ip", "curl"]);
    let mut spec = LabSpec::unique(1, builtin_prefix());
    spec.web = WebKind::Builtin;
    let mut lab = Lab::up(spec).expect("building a lab");
    let client = lab.client_ns();
    let args: Vec<OsString> = [
        "lab",
        "web",
        "--listen",
        &format!("{CLIENT_ADDR}:8080"),
        "--whoami",
    ]
    .map(OsString::from)
    .to_vec();
    lab.spawn(&client, EXE, &args, "whoami.log")
        .expect("starting the who-am-I server in the client");
    let args: Vec<OsString> = [
        "lab",
        "web",
        "--listen",
        &format!("{}:8080", web_addr(1)),
        "--whoami",
    ]
    .map(OsString::from)
    .to_vec();
    lab.spawn(&lab.web_ns(1), EXE, &args, "whoami-web1.log")
        .expect("starting the who-am-I server in web1");

    // From the gateway, each server sees the gateway's address on that side.
    for (url, expected) in [
        (
            format!("http://{CLIENT_ADDR}:8080/"),
            format!("you are {GATEWAY_WAN_ADDR}:"),
        ),
        (
            format!("http://{}:8080/", web_addr(1)),
            format!("you are {GATEWAY_LAN_ADDR}:"),
        ),
    ] {
        let deadline = Instant::now() + Duration::from_secs(5);
        let body = loop {
            let out = curl_in(&lab.gateway_ns(), &url);
            if out.status.success() || Instant::now() > deadline {
                break text(&out.stdout);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            body.starts_with(&expected),
            "{url} answered {body:?}, expected {expected:?}..."
        );
        assert!(body.ends_with('\n'));
    }
    // Stopping web 1 leaves the other process in its namespace alone.
    lab.stop_web(1).expect("stopping web server 1");
    assert!(
        text(&curl_in(&lab.gateway_ns(), &format!("http://{}:8080/", web_addr(1))).stdout)
            .starts_with("you are")
    );
}

/// Removes a CLI-built lab even when the test fails halfway.
struct CliLab {
    name: String,
}

impl Drop for CliLab {
    fn drop(&mut self) {
        let _ = Command::new(EXE)
            .args(["lab", "down", "--name", &self.name])
            .output();
        for ns in namespaces_of(&self.name) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = std::fs::remove_dir_all(run_dir(&self.name));
    }
}

fn run_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/gatehouse/lab-{name}"))
}

fn gatehouse(args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .output()
        .expect("running the gatehouse binary")
}

#[test]
fn lab_up_status_and_down_through_the_binary() {
    require_tools(&["ip", "curl", "nginx"]);
    let name = format!("ghcli{}", std::process::id());
    let _cleanup = CliLab { name: name.clone() };

    let out = gatehouse(&["lab", "up", "--no-apply", "--name", &name, "--backends", "3"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "lab up failed: {}{}",
        stdout,
        text(&out.stderr)
    );
    assert!(stdout.contains(&format!("lab {name} is up")), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "ip netns exec {name}-client curl -s http://198.51.100.1/"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("gatehouse lab down --name {name}")),
        "{stdout}"
    );

    let config = std::fs::read_to_string(run_dir(&name).join("gatehouse.toml"))
        .expect("lab up writes the farm config");
    assert!(
        config.contains(r#"backends = ["10.0.0.11:80", "10.0.0.12:80", "10.0.0.13:80"]"#),
        "{config}"
    );
    assert_eq!(namespaces_of(&name).len(), 6, "client, gw, lan and 3 web servers");

    // The lab outlives the command that built it.
    for k in 1..=3 {
        let page = text(&curl_in(&format!("{name}-gw"), &format!("http://{}/", web_addr(k))).stdout);
        assert!(page.contains(&format!("My Website Number {k}")), "web{k}: {page}");
    }

    let out = gatehouse(&["lab", "status", "--name", &name]);
    let table = text(&out.stdout);
    assert!(out.status.success(), "status: {table}{}", text(&out.stderr));
    assert!(table.contains(&format!("lab {name} is up")), "{table}");
    assert_eq!(table.matches(" running ").count(), 3, "{table}");
    assert!(table.contains(&format!("{name}-web3")), "{table}");

    let again = gatehouse(&["lab", "up", "--no-apply", "--name", &name]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("lab down --name"),
        "{}",
        text(&again.stderr)
    );

    let out = gatehouse(&["lab", "down", "--name", &name]);
    assert!(
        out.status.success(),
        "lab down: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        namespaces_of(&name).is_empty(),
        "left behind: {:?}",
        namespaces_of(&name)
    );
    assert!(!run_dir(&name).exists());

    let gone = gatehouse(&["lab", "status", "--name", &name]);
    assert!(!gone.status.success());
    assert!(
        text(&gone.stderr).contains(&format!("no lab named {name}")),
        "{}",
        text(&gone.stderr)
    );
}

#[test]
fn lab_web_needs_exactly_one_page() {
    let out = gatehouse(&["lab", "web", "--listen", "127.0.0.1:1"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap usage error expected: {}",
        text(&out.stderr)
    );
}
