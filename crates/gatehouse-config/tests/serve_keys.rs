//! The keys `gatehouse serve` reads: health, the proxy's options, [admin] and
//! [serve]. Each rule broken once, with its message and position.

use std::time::Duration;

mod common;

use common::{at, error, errors, farm};
use gatehouse_config::{AccessLog, Balance, Check, Health};

/// A proxied service with `extra` lines appended to its table.
fn proxied(mode: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"app\"\nlisten = \"8080\"\nmode = \"{mode}\"\n\
         backends = [\"10.0.0.11:80\", \"10.0.0.12:80\"]\n{extra}\n"
    )
}

const GATEWAY: &str = "[gateway]\nwan = \"eth0\"\nlan = \"eth1\"\n\n";

#[test]
fn defaults_follow_haproxy_and_nginx() {
    let farm = farm(&proxied("http", ""));
    let s = &farm.services[0];
    assert_eq!(s.health, Health::default());
    assert_eq!(
        s.health.check,
        Check::Tcp,
        "no health table still gets a tcp check"
    );
    assert_eq!(
        (s.health.interval, s.health.rise, s.health.fall),
        (Duration::from_secs(2), 2, 3)
    );
    assert_eq!(s.proxy.timeouts.connect, Duration::from_secs(3));
    assert_eq!(s.proxy.timeouts.header, Duration::from_secs(10));
    assert_eq!(s.proxy.timeouts.idle, Duration::from_secs(60));
    assert_eq!(s.proxy.max_connections, 10_000);
    assert_eq!(s.proxy.max_body, None);
    assert_eq!(farm.drain, Duration::from_secs(10));
    assert!(farm.admin.is_none());
    assert_eq!(s.bind_addr().to_string(), "[::]:8080");
}

#[test]
fn every_key_as_the_issue_writes_it() {
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:9900\"\n[serve]\ndrain = \"30s\"\n{}",
        proxied(
            "http",
            "balance = \"least-conn\"\n\
             health = { check = \"http\", path = \"/healthz\", expect = 204, interval = \"500ms\", timeout = \"250ms\", rise = 3, fall = 4 }\n\
             access_log = \"/var/log/gatehouse/app.log\"\n\
             timeouts = { connect = \"1s\", header = \"5s\", idle = \"2m\", request = \"30s\" }\n\
             max_connections = 500\nmax_header = \"16KiB\"\nmax_body = \"10MiB\"\n"
        )
    );
    let farm = farm(&text);
    let s = &farm.services[0];
    assert_eq!(s.balance, Balance::LeastConn);
    assert_eq!(
        s.health,
        Health {
            check: Check::Http {
                path: "/healthz".into(),
                expect: 204
            },
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(250),
            rise: 3,
            fall: 4,
        }
    );
    assert_eq!(
        s.proxy.access_log,
        Some(AccessLog::File("/var/log/gatehouse/app.log".into()))
    );
    assert_eq!(s.proxy.timeouts.idle, Duration::from_secs(120));
    assert_eq!((s.proxy.max_connections, s.proxy.max_header), (500, 16 * 1024));
    assert_eq!(s.proxy.max_body, Some(10 * 1024 * 1024));
    assert_eq!(farm.drain, Duration::from_secs(30));
    assert_eq!(
        farm.admin.as_ref().map(|a| a.listen.value.to_string()).as_deref(),
        Some("127.0.0.1:9900")
    );
    let summary = farm.summary();
    assert!(
        summary.contains("health http GET /healthz expects 204 every 500ms, down after 4 failures"),
        "{summary}"
    );
    assert!(summary.contains("admin    http://127.0.0.1:9900/"), "{summary}");
}

#[test]
fn access_log_targets() {
    let target = |value: &str| {
        farm(&proxied("http", &format!("access_log = \"{value}\""))).services[0]
            .proxy
            .access_log
            .clone()
    };
    assert_eq!(target("stdout"), Some(AccessLog::Stdout));
    assert_eq!(
        target("syslog://10.0.0.2:514"),
        Some(AccessLog::Syslog("10.0.0.2:514".into()))
    );
    let text = proxied("http", "access_log = \"syslog://10.0.0.2\"");
    assert_eq!(
        error(&text),
        (
            "access_log \"syslog://10.0.0.2\" has no HOST:PORT".into(),
            at(&text, "\"syslog://")
        )
    );
    let text = proxied("http", "access_log = \"app.log\"");
    assert_eq!(
        error(&text),
        (
            "access_log \"app.log\" is not a file, syslog or stdout".into(),
            at(&text, "\"app.log")
        )
    );
}

#[test]
fn health_rules() {
    let text = proxied("http", "health = { check = \"icmp\" }");
    assert_eq!(
        error(&text),
        ("unknown health check \"icmp\"".into(), at(&text, "\"icmp"))
    );
    let text = proxied("http", "health = { interval = \"1s\", timeout = \"3s\" }");
    assert_eq!(
        error(&text),
        (
            "health timeout 3s is longer than the interval 1s".into(),
            at(&text, "\"3s")
        )
    );
    let text = proxied("http", "health = { interval = \"often\" }");
    assert_eq!(
        error(&text),
        (
            "interval \"often\" is not a duration".into(),
            at(&text, "\"often")
        )
    );
    let text = proxied("http", "health = { interval = \"0s\" }");
    assert_eq!(error(&text).1, at(&text, "\"0s"));
    let text = proxied("http", "health = { fall = 0 }");
    assert_eq!(
        error(&text),
        ("fall = 0 is out of range".into(), at(&text, "0 }"))
    );
    let text = proxied("http", "health = { path = \"/up\" }");
    assert_eq!(
        error(&text),
        ("path applies to http checks".into(), at(&text, "\"/up"))
    );
    let text = proxied("http", "health = { check = \"http\", path = \"up\" }");
    assert_eq!(
        error(&text),
        ("health path \"up\" is not a URL path".into(), at(&text, "\"up\""))
    );
    let text = proxied("http", "health = { check = \"http\", expect = 999 }");
    assert_eq!(
        error(&text),
        ("999 is not an HTTP status".into(), at(&text, "999"))
    );
    let text = proxied("http", "health = { check = \"http\", every = \"1s\" }");
    assert!(error(&text).0.contains("unknown field `every`"));
}

#[test]
fn balance_methods_belong_to_their_data_plane() {
    let text = format!("{GATEWAY}{}", proxied("nat", "balance = \"least-conn\""));
    assert_eq!(
        error(&text),
        (
            "balance = \"least-conn\" needs the userspace proxy".into(),
            at(&text, "\"least-conn")
        )
    );
    let text = proxied("http", "balance = \"maglev\"");
    assert_eq!(
        error(&text),
        (
            "balance = \"maglev\" is for nat services".into(),
            at(&text, "\"maglev")
        )
    );
    let text = proxied("tcp", "balance = \"cookie\"");
    assert_eq!(
        error(&text),
        (
            "balance = \"cookie\" needs mode = \"http\"".into(),
            at(&text, "\"cookie")
        )
    );
    for method in [
        "round-robin",
        "weighted",
        "least-conn",
        "random-two",
        "source-hash",
        "random",
        "cookie",
    ] {
        farm(&proxied("http", &format!("balance = \"{method}\"")));
    }
}

#[test]
fn proxy_keys_on_a_nat_service_are_refused() {
    let text = format!(
        "{GATEWAY}{}",
        proxied("nat", "max_connections = 10\naccess_log = \"stdout\"")
    );
    let d = errors(&text);
    let messages: Vec<&str> = d.items.iter().map(|i| i.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "max_connections applies to the userspace proxy, not to nat services",
            "access_log applies to the userspace proxy, not to nat services"
        ]
    );
    assert_eq!(
        d.location(0).as_deref(),
        Some(&*format!("farm.toml:{}", at(&text, "10\n")))
    );
}

#[test]
fn proxy_limits_are_checked() {
    let text = proxied("http", "max_connections = 0");
    assert_eq!(
        error(&text),
        ("max_connections = 0 is out of range".into(), at(&text, "0\n"))
    );
    let text = proxied("http", "max_header = \"1KiB\"");
    assert_eq!(
        error(&text),
        ("max_header must be from 8KiB to 1MiB".into(), at(&text, "\"1KiB"))
    );
    let text = proxied("http", "max_body = \"lots\"");
    assert_eq!(
        error(&text),
        ("max_body \"lots\" is not a size".into(), at(&text, "\"lots"))
    );
    let text = proxied("http", "timeouts = { header = \"soon\" }");
    assert_eq!(
        error(&text),
        ("header \"soon\" is not a duration".into(), at(&text, "\"soon"))
    );
}

#[test]
fn backend_names() {
    let text = "[[service]]\nname = \"app\"\nlisten = \"8080\"\nmode = \"http\"\nbalance = \"cookie\"\n\
                backends = [{ addr = \"10.0.0.11:80\", name = \"web1\" }, { addr = \"10.0.0.12:80\", name = \"web1\" }]\n";
    let (message, location) = error(text);
    assert_eq!(message, "backend name \"web1\" is used twice");
    assert_eq!(location, "6:87");
    let text = "[[service]]\nname = \"app\"\nlisten = \"8080\"\nmode = \"http\"\n\
                backends = [{ addr = \"10.0.0.11:80\", name = \"web one\" }]\n";
    assert_eq!(
        error(text),
        (
            "\"web one\" is not a valid backend name".into(),
            at(text, "\"web one")
        )
    );
    let farm =
        farm(&proxied("http", "").replace("\"10.0.0.12:80\"", "{ addr = \"10.0.0.12:80\", name = \"b\" }"));
    let labels: Vec<String> = farm.services[0].backends.iter().map(|b| b.label()).collect();
    assert_eq!(labels, ["10.0.0.11:80", "b"]);
}

#[test]
fn admin_and_serve_sections() {
    let text = format!("[admin]\nlisten = \"9900\"\n{}", proxied("http", ""));
    assert_eq!(
        error(&text),
        (
            "admin listen \"9900\" is not an ADDR:PORT".into(),
            at(&text, "\"9900")
        )
    );
    let text = format!("[admin]\nlisten = \"127.0.0.1:8080\"\n{}", proxied("http", ""));
    assert_eq!(
        error(&text),
        (
            "admin listens on port 8080, as service \"app\" does".into(),
            at(&text, "\"127.0.0.1:8080")
        )
    );
    let text = format!("[serve]\ndrain = \"forever\"\n{}", proxied("http", ""));
    assert_eq!(
        error(&text),
        (
            "drain \"forever\" is not a duration".into(),
            at(&text, "\"forever")
        )
    );
}
