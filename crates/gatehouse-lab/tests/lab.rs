//! The lab against real parts: namespaces, veth, a bridge and nginx. Needs root,
//! nginx and curl (CI has them); a missing tool fails the test with a message
//! saying what to install, never a silent skip.
//!
//! The builtin web server needs the gatehouse binary, so its tests live in
//! crates/gatehouse/tests/lab_cli.rs.

use std::process::Command;

use gatehouse_lab::{Lab, LabSpec, WebKind, web_addr};

fn require_tools() {
    gatehouse_lab::require(&["ip", "curl", "nginx"]).expect("the lab tests cannot run here");
}

fn nginx_spec(backends: usize) -> LabSpec {
    let mut spec = LabSpec::unique(backends, Vec::new());
    spec.web = WebKind::Nginx;
    spec
}

fn namespaces_of(name: &str) -> Vec<String> {
    gatehouse_lab::namespaces_of(name).unwrap()
}

/// curl with short timeouts, ignoring any proxy settings of the environment.
fn curl(lab: &Lab, ns: &str, url: &str) -> std::process::Output {
    lab.output(
        ns,
        "curl",
        &[
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
            "--connect-timeout",
            "1",
            "--max-time",
            "2",
            url,
        ],
    )
    .expect("running curl in a lab namespace")
}

fn body(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn nginx_farm_serves_each_site_and_is_closed_to_the_client() {
    require_tools();
    let lab = Lab::up(nginx_spec(2)).expect("building a 2-server nginx lab");
    let name = lab.name().to_owned();
    let run_dir = lab.run_dir().to_owned();
    assert_eq!(lab.web_kind(), WebKind::Nginx);
    assert_eq!(lab.backends(), 2);
    assert_eq!(namespaces_of(&name).len(), 5, "client, gw, lan, web1, web2");

    for k in 1..=2 {
        let out = curl(&lab, &lab.gateway_ns(), &format!("http://{}/", web_addr(k)));
        assert!(
            out.status.success(),
            "gateway -> web{k}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let page = body(&out);
        assert!(
            page.contains(&format!("<title>My Website Number {k}</title>")),
            "web{k} served: {page}"
        );
        assert!(
            page.contains("<h2>Welcome to my webpage</h2>"),
            "web{k} served: {page}"
        );
    }

    // The client routes the farm's /24 via the gateway, but the lab leaves
    // forwarding off: until `gatehouse apply`, the web servers are unreachable.
    let out = curl(&lab, &lab.client_ns(), "http://10.0.0.11/");
    assert!(
        !out.status.success(),
        "the client reached a web server without forwarding: {}",
        body(&out)
    );

    // nginx logged to its own run dir, not /var/log/nginx.
    let access_log = run_dir.join("web1/access.log");
    assert!(
        std::fs::metadata(&access_log)
            .map(|m| m.len() > 0)
            .unwrap_or(false),
        "{} is empty",
        access_log.display()
    );

    drop(lab);
    assert!(
        namespaces_of(&name).is_empty(),
        "namespaces left behind: {:?}",
        namespaces_of(&name)
    );
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
}

#[test]
fn a_web_server_stops_and_starts_again() {
    require_tools();
    let mut lab = Lab::up(nginx_spec(2)).expect("building a lab");
    let gw = lab.gateway_ns();
    let url1 = format!("http://{}/", web_addr(1));

    lab.stop_web(1).expect("stopping web server 1");
    assert!(
        !curl(&lab, &gw, &url1).status.success(),
        "web1 still answers after stop_web"
    );
    assert!(
        lab.stop_web(1).is_err(),
        "stopping a stopped server must be an error"
    );
    let other = curl(&lab, &gw, &format!("http://{}/", web_addr(2)));
    assert!(
        body(&other).contains("My Website Number 2"),
        "web2 must be unaffected"
    );

    lab.start_web(1).expect("starting web server 1 again");
    assert!(body(&curl(&lab, &gw, &url1)).contains("My Website Number 1"));
    assert!(
        lab.start_web(1).is_err(),
        "starting a running server must be an error"
    );
    assert!(lab.stop_web(3).is_err(), "there is no web server 3");
}

#[test]
fn a_panicking_test_still_removes_its_lab() {
    require_tools();
    let spec = nginx_spec(1);
    let name = spec.name.clone();
    let run_dir = spec.run_dir.clone();
    let result = std::panic::catch_unwind(move || {
        let lab = Lab::up(spec).expect("building a lab");
        assert_eq!(namespaces_of(lab.name()).len(), 4);
        panic!("a test failing while its lab is up");
    });
    assert!(result.is_err());
    assert!(
        namespaces_of(&name).is_empty(),
        "namespaces left behind: {:?}",
        namespaces_of(&name)
    );
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
}

#[test]
fn a_failure_midway_through_up_removes_what_was_built() {
    require_tools();
    // A "web server" that exits at once: up fails after the whole topology exists.
    let mut spec = LabSpec::unique(2, vec!["false".into()]);
    spec.web = WebKind::Builtin;
    let name = spec.name.clone();
    let run_dir = spec.run_dir.clone();
    let err = format!(
        "{:#}",
        Lab::up(spec)
            .err()
            .expect("a lab whose web servers exit must not come up")
    );
    assert!(
        err.contains("web server 1") && err.contains("exited"),
        "unclear error: {err}"
    );
    assert!(
        namespaces_of(&name).is_empty(),
        "namespaces left behind: {:?}",
        namespaces_of(&name)
    );
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
}

#[test]
fn a_persisted_lab_survives_its_value_and_goes_down_from_its_record() {
    require_tools();
    let lab = Lab::up(nginx_spec(2)).expect("building a lab");
    let name = lab.name().to_owned();
    let run_dir = lab.run_dir().to_owned();
    let record = lab.persist().expect("persisting the lab");
    assert_eq!(record, run_dir.join("lab.json"));

    // Dropped but persisted: everything still there and serving.
    assert_eq!(namespaces_of(&name).len(), 5);
    let status = Lab::status(&run_dir).expect("reading the lab's status");
    assert!(status.is_healthy(), "{status}");
    assert_eq!(status.processes.len(), 2);
    let table = status.to_string();
    assert!(
        table.contains(&format!("{name}-web2")) && table.contains("running"),
        "{table}"
    );
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{name}-gw"),
            "curl",
            "-s",
            "--noproxy",
            "*",
            "--max-time",
            "2",
        ])
        .arg(format!("http://{}/", web_addr(2)))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("My Website Number 2"));

    let down = Lab::down(&run_dir);
    // Clean up by hand if down failed, so a broken down() cannot leak namespaces.
    for ns in namespaces_of(&name) {
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    }
    down.expect("tearing the persisted lab down");
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
    Lab::down(&run_dir).expect("down is idempotent");
}

#[test]
fn impossible_specs_are_refused_clearly() {
    for backends in [0, 300] {
        let err = Lab::up(LabSpec::unique(backends, Vec::new()))
            .err()
            .expect("must be refused");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("between 1 and 240 backends"),
            "unclear error for {backends}: {msg}"
        );
    }
    let mut spec = LabSpec::unique(1, Vec::new());
    spec.name = "bad/name".into();
    let msg = format!("{:#}", Lab::up(spec).err().expect("must be refused"));
    assert!(msg.contains("invalid lab name"), "{msg}");

    let mut spec = LabSpec::unique(1, Vec::new());
    spec.web = WebKind::Builtin;
    let msg = format!("{:#}", Lab::up(spec).err().expect("must be refused"));
    assert!(msg.contains("builtin_web"), "{msg}");
}

#[test]
fn a_64_server_farm_comes_up() {
    require_tools();
    let started = std::time::Instant::now();
    let lab = Lab::up(nginx_spec(64)).expect("building a 64-server lab");
    let built = started.elapsed();
    let out = curl(&lab, &lab.gateway_ns(), &format!("http://{}/", web_addr(64)));
    assert!(body(&out).contains("My Website Number 64"), "{}", body(&out));
    let name = lab.name().to_owned();
    drop(lab);
    eprintln!(
        "64 servers: up in {built:?}, down in {:?}",
        started.elapsed() - built
    );
    assert!(namespaces_of(&name).is_empty());
}
