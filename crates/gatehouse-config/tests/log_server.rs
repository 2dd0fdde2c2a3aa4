//! `[log_server]`: every key read into the model with its default, and every
//! mistake refused at its position with what to write instead.

mod common;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{at, error, errors, farm};

#[test]
fn every_key_is_read() {
    let text = r#"
[log_server]
udp = "0.0.0.0:514"
tcp = "0.0.0.0:601"
dir = "/var/lib/gatehouse/logs"
retention = "30d"
max_size = "50GiB"
hosts = { "10.0.0.11" = "web1", "10.0.0.12" = "web2", "fd00::12" = "web2" }
max_message = "8KiB"
rate_limit = 1000
fsync = "250ms"
segment_size = "16MiB"
segment_age = "10m"
"#;
    let log = farm(text).log_server.expect("log_server");
    assert_eq!(
        log.udp.as_ref().map(|a| a.to_string()).as_deref(),
        Some("0.0.0.0:514")
    );
    assert_eq!(
        log.tcp.as_ref().map(|a| a.to_string()).as_deref(),
        Some("0.0.0.0:601")
    );
    assert!(log.tls.is_none());
    assert_eq!(log.dir.value, PathBuf::from("/var/lib/gatehouse/logs"));
    assert_eq!(log.retention, Some(Duration::from_secs(30 * 86400)));
    assert_eq!(log.max_size, Some(50 * 1024 * 1024 * 1024));
    let hosts: Vec<(IpAddr, &str)> = log
        .hosts
        .iter()
        .map(|(ip, name)| (ip.value, name.as_str()))
        .collect();
    assert_eq!(
        hosts,
        [
            ("10.0.0.11".parse().unwrap(), "web1"),
            ("10.0.0.12".parse().unwrap(), "web2"),
            ("fd00::12".parse().unwrap(), "web2"),
        ]
    );
    assert_eq!(log.max_message, 8192);
    assert_eq!(log.rate_limit.map(|r| r.get()), Some(1000));
    assert_eq!(log.fsync, Duration::from_millis(250));
    assert_eq!(log.segment_size, 16 * 1024 * 1024);
    assert_eq!(log.segment_age, Duration::from_secs(600));
}

#[test]
fn defaults_and_a_relative_dir() {
    let log = common::farm_at(
        "/etc/gatehouse/gatehouse.toml",
        "[log_server]\nudp = \"127.0.0.1:514\"\ndir = \"logs\"\n",
    )
    .log_server
    .expect("log_server");
    assert_eq!(log.dir.value, PathBuf::from("/etc/gatehouse/logs"));
    assert_eq!(log.max_message, 64 * 1024);
    assert_eq!(log.rate_limit.map(|r| r.get()), Some(50_000));
    assert_eq!(log.fsync, Duration::from_secs(1));
    assert_eq!(log.segment_size, 128 * 1024 * 1024);
    assert_eq!(log.segment_age, Duration::from_secs(3600));
    assert_eq!((log.retention, log.max_size), (None, None));
    assert!(log.hosts.is_empty());

    let off = farm("[log_server]\ntcp = \"127.0.0.1:601\"\ndir = \"/tmp/l\"\nrate_limit = 0\n");
    assert_eq!(off.log_server.expect("log_server").rate_limit, None);
}

#[test]
fn tls_loads_its_certificate() {
    let dir = std::env::temp_dir().join(format!("gh-config-logtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["logs.example.com".to_string()])
        .expect("names")
        .self_signed(&key)
        .expect("self-signed");
    std::fs::write(dir.join("logs.pem"), cert.pem()).expect("write cert");
    std::fs::write(dir.join("logs.key"), key.serialize_pem()).expect("write key");
    let text = format!(
        "[log_server]\ntls = {{ listen = \"127.0.0.1:6514\", cert = \"{0}/logs.pem\", key = \"{0}/logs.key\" }}\ndir = \"/tmp/l\"\n",
        dir.display()
    );
    let log = farm(&text).log_server.expect("log_server");
    let tls = log.tls.expect("tls");
    assert_eq!(tls.listen.to_string(), "127.0.0.1:6514");
    assert_eq!(tls.cert.names, ["logs.example.com"]);

    let missing = text.replace("logs.key", "nothing.key");
    let (message, position) = error(&missing);
    assert!(message.contains("nothing.key"), "{message}");
    assert_eq!(
        position,
        at(&missing, &format!("\"{}/nothing.key", dir.display()))
    );
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
}

#[test]
fn mistakes_are_refused_where_they_are() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[log_server]\ndir = \"/tmp/l\"\n",
            "log_server has no listener",
            "[log_server]",
        ),
        (
            "[log_server]\nudp = \"514\"\ndir = \"/tmp/l\"\n",
            "log_server udp \"514\" is not an ADDR:PORT",
            "\"514\"",
        ),
        (
            "[log_server]\ntcp = \"127.0.0.1:601\"\ndir = \"\"\n",
            "log_server dir is empty",
            "\"\"",
        ),
        (
            "[log_server]\nudp = \"0.0.0.0:514\"\ndir = \"/l\"\nhosts = { \"web1\" = \"web1\" }\n",
            "hosts key \"web1\" is not an IP address",
            "\"web1\" =",
        ),
        (
            "[log_server]\nudp = \"0.0.0.0:514\"\ndir = \"/l\"\nhosts = { \"10.0.0.1\" = \"../etc\" }\n",
            "\"../etc\" is not a valid host name for logs",
            "\"../etc\"",
        ),
        (
            "[log_server]\nudp = \"0.0.0.0:514\"\ndir = \"/l\"\nmax_message = \"100B\"\n",
            "max_message 100 bytes is out of range",
            "\"100B\"",
        ),
        (
            "[log_server]\nudp = \"0.0.0.0:514\"\ndir = \"/l\"\nrate_limit = -5\n",
            "rate_limit -5 is not a rate",
            "-5",
        ),
        (
            "[log_server]\nudp = \"0.0.0.0:514\"\ndir = \"/l\"\nretention = \"forever\"\n",
            "retention \"forever\" is not a duration",
            "\"forever\"",
        ),
        (
            "[log_server]\nudp = \"0.0.0.0:514\"\ndir = \"/l\"\nmax_size = \"lots\"\n",
            "max_size \"lots\" is not a size",
            "\"lots\"",
        ),
        (
            "[log_server]\nudp = \"0.0.0.0:514\"\ndir = \"/l\"\nfacility = \"local0\"\n",
            "unknown field `facility`",
            "facility",
        ),
        (
            "[admin]\nlisten = \"127.0.0.1:601\"\n[log_server]\ntcp = \"0.0.0.0:601\"\ndir = \"/l\"\n",
            "log_server listens on port 601, as admin does",
            "\"0.0.0.0:601\"",
        ),
    ];
    for (text, message, needle) in cases {
        let (got, position) = error(text);
        assert!(
            got.contains(message),
            "for:\n{text}\ngot: {got}\nwanted: {message}"
        );
        assert_eq!(position, at(text, needle), "position of {message}");
    }
}

#[test]
fn a_service_on_the_log_port_is_refused() {
    let text = r#"
[[service]]
name = "web"
listen = "601"
mode = "http"
backends = ["10.0.0.11:80"]

[log_server]
tcp = "0.0.0.0:601"
dir = "/l"
"#;
    let (message, position) = error(text);
    assert_eq!(message, "log_server listens on port 601, as service \"web\" does");
    assert_eq!(position, at(text, "\"0.0.0.0:601\""));
    // UDP 601 is another port than TCP 601.
    farm(&text.replace("tcp = \"0.0.0.0:601\"", "udp = \"0.0.0.0:601\""));
    let d = errors(&text.replace(
        "dir = \"/l\"",
        "dir = \"/l\"\ntls = { listen = \"0.0.0.0:601\", cert = \"c\", key = \"k\" }",
    ));
    assert!(d.items.len() >= 2, "{}", d.render(false));
}

#[test]
fn the_example_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/log-server.toml");
    let farm = gatehouse_config::Farm::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let log = farm.log_server.expect("log_server");
    assert_eq!(log.hosts.len(), 2);
    assert_eq!(log.retention, Some(Duration::from_secs(30 * 86400)));
}
