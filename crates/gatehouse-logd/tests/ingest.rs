//! Ingest end to end: real senders (util-linux logger, nginx, rsyslog, and
//! Rust sockets) over loopback, a real store, lines read back with
//! `query::search`.

mod common;

use std::io::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::num::NonZeroU32;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gatehouse_logd::Flags;
use gatehouse_logd::ingest::{Ingest, IngestOptions, IngestStats};
use gatehouse_logd::message;
use gatehouse_logd::store::{Store, StoreOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

fn logger(args: &[&str]) {
    let output = Command::new("logger")
        .args(args)
        .output()
        .expect("running logger (util-linux)");
    assert!(
        output.status.success(),
        "logger {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn find<'a>(lines: &'a [gatehouse_logd::Line], needle: &str) -> &'a gatehouse_logd::Line {
    let found: Vec<_> = lines.iter().filter(|line| text(line).contains(needle)).collect();
    assert_eq!(
        found.len(),
        1,
        "{needle:?} in {:?}",
        lines.iter().map(text).collect::<Vec<_>>()
    );
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logger_over_udp_tcp_and_octet_counting_in_both_formats() {
    let server = Server::start("logger", Server::options()).await;
    let (udp, tcp) = (server.udp().port().to_string(), server.tcp().port().to_string());
    let sends: [(&str, &[&str]); 6] = [
        ("udp-5424", &["-d", "-P", &udp]),
        ("udp-3164", &["-d", "-P", &udp, "--rfc3164"]),
        ("tcp-lf-5424", &["-T", "-P", &tcp]),
        ("tcp-lf-3164", &["-T", "-P", &tcp, "--rfc3164"]),
        ("tcp-octet-5424", &["-T", "-P", &tcp, "--octet-count"]),
        (
            "tcp-octet-3164",
            &["-T", "-P", &tcp, "--octet-count", "--rfc3164"],
        ),
    ];
    for (name, args) in &sends {
        let mut all = vec!["-n", "127.0.0.1", "-t", "ingesttest", "-p", "user.notice"];
        all.extend_from_slice(args);
        let body = format!("hello from logger {name}");
        all.push(&body);
        logger(&all);
    }
    let lines = server.wait_lines(Some("127.0.0.1"), sends.len(), WAIT).await;
    assert_eq!(
        lines.len(),
        sends.len(),
        "{:?}",
        lines.iter().map(text).collect::<Vec<_>>()
    );
    for (name, _) in &sends {
        let line = find(&lines, &format!("hello from logger {name}"));
        let message = text(line);
        assert!(
            message.ends_with(&format!("ingesttest: hello from logger {name}")) || name.ends_with("5424")
        );
        assert!(
            message.ends_with(&format!("hello from logger {name}")),
            "{message:?}"
        );
        assert!(message.starts_with("<13>"), "{message:?}");
        assert_eq!(
            message.starts_with("<13>1 "),
            name.ends_with("5424"),
            "{message:?}"
        );
        assert_eq!(line.flags, Flags::default(), "{message:?}");
        assert_eq!(&*line.host, "127.0.0.1");
        let json = message::to_json(line);
        assert_eq!(json["app"], "ingesttest", "{json}");
        assert_eq!(json["message"], format!("hello from logger {name}"), "{json}");
    }
    let stats = server.stats.snapshot();
    assert_eq!(stats.len(), 1);
    assert_eq!((stats[0].host.as_str(), stats[0].messages), ("127.0.0.1", 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_names_the_sender_and_reconfigure_renames_it_live() {
    let mut options = Server::options();
    options.hosts = hosts(&[("127.0.0.1", "web1")]);
    let server = Server::start("hosts", options.clone()).await;
    let mut stream = TcpStream::connect(server.tcp()).await.unwrap();
    stream
        .write_all(b"<13>Nov 25 04:19:26 x app: one\n")
        .await
        .unwrap();
    logger(&[
        "-d",
        "-n",
        "127.0.0.1",
        "-P",
        &server.udp().port().to_string(),
        "udp one",
    ]);
    assert_eq!(server.wait_lines(Some("web1"), 2, WAIT).await.len(), 2);

    options.hosts = hosts(&[("127.0.0.1", "web2")]);
    server.ingest().reconfigure(options.clone()).await.unwrap();
    // Same listeners, same open connection: the next lines get the new name.
    stream
        .write_all(b"<13>Nov 25 04:19:26 x app: two\n")
        .await
        .unwrap();
    logger(&[
        "-d",
        "-n",
        "127.0.0.1",
        "-P",
        &server.udp().port().to_string(),
        "udp two",
    ]);
    let web2 = server.wait_lines(Some("web2"), 2, WAIT).await;
    assert_eq!(web2.iter().map(text).collect::<Vec<_>>().len(), 2);
    find(&web2, "app: two");
    find(&web2, "udp two");
    assert_eq!(server.lines(Some("web1")).len(), 2);
    let hosts: Vec<_> = server
        .stats
        .snapshot()
        .into_iter()
        .map(|s| (s.host, s.messages))
        .collect();
    assert_eq!(hosts, [("web1".to_string(), 2), ("web2".to_string(), 2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconfigure_moves_the_tcp_listener_and_a_failed_bind_changes_nothing() {
    let mut options = Server::options();
    let server = Server::start("rebind", options.clone()).await;
    let before = server.ingest().local_addrs();

    // An address in use: an error naming the listener, and nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut bad = options.clone();
    bad.tcp = Some(taken.local_addr().unwrap());
    bad.hosts = hosts(&[("127.0.0.1", "never")]);
    let error = server.ingest().reconfigure(bad).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "log_server tcp {}: Address already in use",
            taken.local_addr().unwrap()
        )
    );
    assert_eq!(server.ingest().local_addrs(), before);
    let mut stream = TcpStream::connect(server.tcp()).await.unwrap();
    stream
        .write_all(b"<13>Nov 25 04:19:26 x app: still here\n")
        .await
        .unwrap();
    assert_eq!(server.wait_lines(Some("127.0.0.1"), 1, WAIT).await.len(), 1);

    // Move TCP to another port: UDP stays where it was.
    let port = free_port();
    options.tcp = Some(loopback(port));
    server.ingest().reconfigure(options.clone()).await.unwrap();
    let after = server.ingest().local_addrs();
    assert_eq!(after.tcp, Some(loopback(port)));
    assert_eq!(after.udp, before.udp);
    let mut moved = TcpStream::connect(loopback(port)).await.unwrap();
    moved
        .write_all(b"<13>Nov 25 04:19:26 x app: moved\n")
        .await
        .unwrap();
    // The connection made before the move still works.
    stream
        .write_all(b"<13>Nov 25 04:19:26 x app: old connection\n")
        .await
        .unwrap();
    let lines = server.wait_lines(Some("127.0.0.1"), 3, WAIT).await;
    find(&lines, "moved");
    find(&lines, "old connection");
    // The old port closes.
    let start = Instant::now();
    while TcpStream::connect(before.tcp.unwrap()).await.is_ok() {
        assert!(start.elapsed() < WAIT, "the old listener still accepts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_names_the_listener_that_cannot_bind() {
    let dir = TempDir::new("start-error");
    let store = Arc::new(Store::open(StoreOptions::new(dir.path().join("logs"))).unwrap());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let options = IngestOptions {
        udp: Some(any_port()),
        tcp: Some(taken.local_addr().unwrap()),
        ..IngestOptions::default()
    };
    let Err(error) = Ingest::start(options, store, IngestStats::new()).await else {
        panic!("bound a port in use");
    };
    assert_eq!(
        error.to_string(),
        format!(
            "log_server tcp {}: Address already in use",
            taken.local_addr().unwrap()
        )
    );
}

/// ~150 bytes, numbered.
fn numbered(connection: usize, i: usize) -> String {
    format!(
        "<190>Nov 25 04:19:26 web1 nginx: 10.0.0.{connection} - - [25/Nov/2026:04:19:26 +0000] \"GET /item/{i:07} HTTP/1.1\" 200 612 \"-\" \"curl/7.88.1\""
    )
}

async fn send_numbered(addr: SocketAddr, connection: usize, n: usize) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut chunk = Vec::with_capacity(1 << 20);
    for i in 0..n {
        let message = numbered(connection, i);
        if i % 2 == 0 {
            chunk.extend_from_slice(message.as_bytes());
            chunk.push(b'\n');
        } else {
            write!(chunk, "{} {message}", message.len()).unwrap();
        }
        if chunk.len() > 1 << 19 {
            stream.write_all(&chunk).await.unwrap();
            chunk.clear();
        }
    }
    stream.write_all(&chunk).await.unwrap();
    stream.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_thousand_messages_over_one_connection_arrive_once_in_order() {
    let server = Server::start("many", Server::options()).await;
    send_numbered(server.tcp(), 1, 100_000).await;
    let lines = server
        .wait_lines(Some("127.0.0.1"), 100_000, Duration::from_secs(60))
        .await;
    assert_eq!(lines.len(), 100_000);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line.seq, i as u64);
        assert_eq!(line.message, numbered(1, i).as_bytes());
        assert_eq!(line.flags, Flags::default());
    }
    let stats = &server.stats.snapshot()[0];
    assert_eq!(stats.messages, 100_000);
    assert_eq!(
        stats.bytes,
        lines.iter().map(|l| l.message.len() as u64).sum::<u64>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_thousand_lines_from_logger_arrive_once_in_order() {
    let server = Server::start("logger-many", Server::options()).await;
    let file = server.dir.path().join("lines.txt");
    let content: String = (0..100_000).map(|i| format!("line {i:06} of a file\n")).collect();
    std::fs::write(&file, content).unwrap();
    let port = server.tcp().port().to_string();
    let path = file.display().to_string();
    tokio::task::spawn_blocking(move || {
        logger(&[
            "-T",
            "--octet-count",
            "-n",
            "127.0.0.1",
            "-P",
            &port,
            "-t",
            "bulk",
            "-f",
            &path,
        ])
    })
    .await
    .unwrap();
    let lines = server
        .wait_lines(Some("127.0.0.1"), 100_000, Duration::from_secs(60))
        .await;
    assert_eq!(lines.len(), 100_000);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line.seq, i as u64);
        // RFC 5424 as logger writes it: "<13>1 TIME HOST bulk - - [timeQuality ...] MSG".
        let got = text(line);
        assert!(
            got.starts_with("<13>1 ") && got.ends_with(&format!("] line {i:06} of a file")),
            "line {i}: {got}"
        );
        assert_eq!(line.flags, Flags::default());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_concurrent_connections_each_arrive_in_order() {
    let server = Server::start("two", Server::options()).await;
    let addr = server.tcp();
    let n = 30_000;
    tokio::join!(send_numbered(addr, 1, n), send_numbered(addr, 2, n));
    let lines = server
        .wait_lines(Some("127.0.0.1"), 2 * n, Duration::from_secs(60))
        .await;
    assert_eq!(lines.len(), 2 * n);
    for connection in [1, 2] {
        let marker = format!("10.0.0.{connection} ");
        let mine: Vec<_> = lines.iter().filter(|l| text(l).contains(&marker)).collect();
        assert_eq!(mine.len(), n);
        for (i, line) in mine.iter().enumerate() {
            assert_eq!(line.message, numbered(connection, i).as_bytes());
        }
    }
    assert!(lines.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_binary_and_oversize_input_is_kept_flagged_and_the_connection_goes_on() {
    let server = Server::start("malformed", Server::options()).await;
    let mut stream = TcpStream::connect(server.tcp()).await.unwrap();
    let big_lf = format!("<13>Nov 25 04:19:26 host app: big {}", "x".repeat(1 << 20));
    let big_octet = format!("<13>Nov 25 04:19:26 host app: counted {}", "y".repeat(2 << 20));
    let mut input = Vec::new();
    input.extend_from_slice(b"this is no syslog\n");
    input.extend_from_slice(b"<13>Nov 25 04:19:26 host app: bin \xff\xfe\x00\x01 end\n");
    input.extend_from_slice(b"\x00\x00\x00\n");
    input.extend_from_slice(big_lf.as_bytes());
    input.extend_from_slice(b"\r\n");
    input.extend_from_slice(b"<13>Nov 25 04:19:26 host app: after lf\n");
    input.extend_from_slice(format!("{} {big_octet}", big_octet.len()).as_bytes());
    input.extend_from_slice(b"<13>Nov 25 04:19:26 host app: after octets\n");
    // Written in pieces, so the big ones cross many reads.
    for piece in input.chunks(100_000) {
        stream.write_all(piece).await.unwrap();
    }
    let lines = server.wait_lines(Some("127.0.0.1"), 7, WAIT).await;
    let got: Vec<(usize, Flags)> = lines.iter().map(|l| (l.message.len(), l.flags)).collect();
    assert_eq!(
        got,
        [
            (17, Flags::UNPARSED),
            (42, Flags::BINARY),
            (3, Flags::UNPARSED),
            (65536, Flags::TRUNCATED),
            (38, Flags::default()),
            (65536, Flags::TRUNCATED),
            (42, Flags::default()),
        ]
    );
    assert_eq!(
        lines[1].message,
        b"<13>Nov 25 04:19:26 host app: bin \xff\xfe\x00\x01 end"
    );
    assert_eq!(lines[3].message, &big_lf.as_bytes()[..65536]);
    assert_eq!(lines[5].message, &big_octet.as_bytes()[..65536]);
    let stats = &server.stats.snapshot()[0];
    assert_eq!((stats.unparsed, stats.truncated), (2, 2));
    // A text line never has a raw control character.
    for line in &lines {
        let mut out = String::new();
        message::write_text(line, &mut out);
        assert!(!out.chars().any(char::is_control), "{out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversize_udp_datagrams_are_truncated() {
    let mut options = Server::options();
    options.max_message = 1000;
    let server = Server::start("udp-oversize", options).await;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .send_to(
            format!("<13>Nov 25 04:19:26 h a: {}", "z".repeat(5000)).as_bytes(),
            server.udp(),
        )
        .unwrap();
    socket
        .send_to(b"<13>Nov 25 04:19:26 h a: small\n", server.udp())
        .unwrap();
    let lines = server.wait_lines(None, 2, WAIT).await;
    assert_eq!((lines[0].message.len(), lines[0].flags), (1000, Flags::TRUNCATED));
    assert_eq!(lines[1].message, b"<13>Nov 25 04:19:26 h a: small");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn a_flooding_source_does_not_starve_another() {
    let mut options = Server::options();
    options.udp = Some("127.0.0.1:0".parse().unwrap());
    options.tcp = Some("127.0.0.1:0".parse().unwrap());
    options.rate_limit = NonZeroU32::new(1000);
    options.hosts = hosts(&[
        ("127.0.0.2", "flooder"),
        ("127.0.0.3", "steady-tcp"),
        ("127.0.0.4", "steady-udp"),
    ]);
    let server = Server::start("flood", options).await;
    let (udp, tcp) = (server.udp(), server.tcp());
    let run = Duration::from_secs(2);

    let flooder = tokio::task::spawn_blocking(move || {
        let socket = UdpSocket::bind("127.0.0.2:0").unwrap();
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < run {
            for _ in 0..100 {
                if socket
                    .send_to(b"<13>Nov 25 04:19:26 flood app: flood", udp)
                    .is_ok()
                {
                    sent += 1;
                }
            }
        }
        sent
    });
    let steady_tcp = tokio::spawn(async move {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        let mut stream = socket.connect(tcp).await.unwrap();
        let mut ticker = tokio::time::interval(Duration::from_millis(5));
        for i in 0..400 {
            ticker.tick().await;
            stream
                .write_all(format!("<13>Nov 25 04:19:26 s app: tcp {i}\n").as_bytes())
                .await
                .unwrap();
        }
        stream
    });
    let steady_udp = tokio::spawn(async move {
        let socket = tokio::net::UdpSocket::bind("127.0.0.4:0").await.unwrap();
        let mut ticker = tokio::time::interval(Duration::from_millis(5));
        for i in 0..400 {
            ticker.tick().await;
            socket
                .send_to(format!("<13>Nov 25 04:19:26 s app: udp {i}").as_bytes(), udp)
                .await
                .unwrap();
        }
    });
    let sent = flooder.await.unwrap();
    let _stream = steady_tcp.await.unwrap();
    steady_udp.await.unwrap();

    let tcp_lines = server.wait_lines(Some("steady-tcp"), 400, WAIT).await;
    let udp_lines = server
        .wait_lines(Some("steady-udp"), 400, Duration::from_secs(3))
        .await;
    assert_eq!(tcp_lines.len(), 400);
    // Datagrams the kernel drops before anyone reads them (when the machine
    // is busier than the flood: the tests run in parallel) cannot be helped;
    // every one the server read was kept.
    let kernel_drops = udp_drops(udp).unwrap_or(0);
    assert!(
        udp_lines.len() as u64 + kernel_drops >= 400,
        "{} + {kernel_drops}",
        udp_lines.len()
    );
    for (i, line) in tcp_lines.iter().enumerate() {
        assert_eq!(text(line), format!("<13>Nov 25 04:19:26 s app: tcp {i}"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = server.stats.snapshot();
    let of = |host: &str| stats.iter().find(|s| s.host == host).cloned().unwrap();
    let (flood, tcp_stats, udp_stats) = (of("flooder"), of("steady-tcp"), of("steady-udp"));
    eprintln!(
        "flooder sent {sent}: {flood:?}, kernel drops {:?}",
        udp_drops(udp)
    );
    assert!(flood.shed > 0, "{flood:?}");
    // One second's burst plus the rate for about two seconds, and no more.
    assert!(flood.messages <= 1000 + 1000 * 3, "{flood:?}");
    assert!(flood.messages >= 1000, "{flood:?}");
    assert_eq!(
        (tcp_stats.messages, tcp_stats.throttled, tcp_stats.shed),
        (400, 0, 0)
    );
    assert_eq!((udp_stats.messages, udp_stats.shed), (udp_lines.len() as u64, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_over_the_rate_limit_is_throttled_not_dropped() {
    let mut options = Server::options();
    options.rate_limit = NonZeroU32::new(2000);
    let server = Server::start("throttle", options).await;
    let start = Instant::now();
    // 5000 messages at once against 2000/s with a burst of 2000: about 1.5 s.
    send_numbered(server.tcp(), 1, 5000).await;
    let lines = server.wait_lines(Some("127.0.0.1"), 5000, WAIT).await;
    let elapsed = start.elapsed();
    assert_eq!(lines.len(), 5000);
    let stats = &server.stats.snapshot()[0];
    assert!(stats.throttled > 0, "{stats:?}");
    assert_eq!(stats.shed, 0);
    assert!(elapsed >= Duration::from_millis(1000), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_appends_everything_already_sent() {
    let mut server = Server::start("shutdown", Server::options()).await;
    let mut stream = TcpStream::connect(server.tcp()).await.unwrap();
    let mut idle = TcpStream::connect(server.tcp()).await.unwrap();
    idle.write_all(b"<13>Nov 25 04:19:26 x app: idle one")
        .await
        .unwrap(); // no LF: kept at close
    let mut input = Vec::new();
    for i in 0..20_000 {
        input.extend_from_slice(numbered(1, i).as_bytes());
        input.push(b'\n');
    }
    stream.write_all(&input).await.unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..100 {
        udp.send_to(
            format!("<13>Nov 25 04:19:26 x app: udp {i}").as_bytes(),
            server.udp(),
        )
        .unwrap();
    }
    let start = Instant::now();
    server.shutdown().await;
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    let lines = server.lines(None);
    assert_eq!(lines.len(), 20_000 + 100 + 1);
    assert_eq!(server.stats.connections(), 0);
    find(&lines, "idle one");
    let tcp: Vec<_> = lines.iter().filter(|l| text(l).contains("nginx")).collect();
    for (i, line) in tcp.iter().enumerate() {
        assert_eq!(line.message, numbered(1, i).as_bytes());
    }
    // The connections were closed.
    let mut buf = [0u8; 1];
    use tokio::io::AsyncReadExt;
    assert_eq!(stream.read(&mut buf).await.unwrap_or(0), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nginx_access_log_over_syslog() {
    let server = Server::start("nginx", Server::options()).await;
    let dir = TempDir::new("nginx-prefix");
    let http = free_port();
    let prefix = dir.path();
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\n\
             error_log {p}/error.log;\n\
             pid {p}/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
               client_body_temp_path {p}/client; proxy_temp_path {p}/proxy; fastcgi_temp_path {p}/fastcgi;\n\
               uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;\n\
               access_log syslog:server=127.0.0.1:{udp},tag=nginx combined;\n\
               server {{ listen 127.0.0.1:{http}; location / {{ return 200 \"ok\\n\"; }} }}\n\
             }}\n",
            p = prefix.display(),
            udp = server.udp().port(),
        ),
    )
    .unwrap();
    let nginx = command("nginx").expect("nginx is not installed: apt-get install nginx-light");
    let _nginx = Kill(
        Command::new(nginx)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(prefix)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(loopback(http)).is_err() {
        assert!(
            start.elapsed() < WAIT,
            "nginx did not start: {:?}",
            std::fs::read_to_string(prefix.join("error.log"))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..3 {
        let status = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-A", "ingest-test"])
            .arg(format!("http://127.0.0.1:{http}/page/{i}"))
            .status()
            .unwrap();
        assert!(status.success());
    }
    let lines = server.wait_lines(Some("127.0.0.1"), 3, WAIT).await;
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        let message = text(line);
        assert!(
            message.contains(&format!("\"GET /page/{i} HTTP/1.1\" 200 3 \"-\" \"ingest-test\"")),
            "{message}"
        );
        assert_eq!(line.flags, Flags::default(), "{message}");
        let json = message::to_json(line);
        assert_eq!(json["app"], "nginx");
        assert_eq!(json["facility"], "local7");
        assert_eq!(json["severity"], "info");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rsyslog_forwarding_octet_counted_5424_and_traditional_3164() {
    let Some(rsyslogd) = command("rsyslogd") else {
        panic!("rsyslogd is not installed: apt-get install rsyslog (scripts/test.sh installs it)");
    };
    let server = Server::start("rsyslog", Server::options()).await;
    let dir = TempDir::new("rsyslog");
    let input = free_udp_port();
    let conf = dir.path().join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{work}\")\n\
             module(load=\"imudp\")\n\
             input(type=\"imudp\" address=\"127.0.0.1\" port=\"{input}\")\n\
             action(type=\"omfwd\" target=\"127.0.0.1\" port=\"{tcp}\" protocol=\"tcp\" \
                    TCP_Framing=\"octet-counted\" template=\"RSYSLOG_SyslogProtocol23Format\")\n\
             action(type=\"omfwd\" target=\"127.0.0.1\" port=\"{tcp}\" protocol=\"tcp\" \
                    template=\"RSYSLOG_TraditionalForwardFormat\")\n",
            work = dir.path().display(),
            tcp = server.tcp().port(),
        ),
    )
    .unwrap();
    let _rsyslog = Kill(
        Command::new(rsyslogd)
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .arg("-n")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Probe until rsyslog forwards (its UDP input is bound).
    let port = input.to_string();
    let start = Instant::now();
    loop {
        logger(&["-d", "-n", "127.0.0.1", "-P", &port, "-t", "probe", "probe"]);
        if server
            .wait_lines(Some("127.0.0.1"), 2, Duration::from_millis(200))
            .await
            .len()
            >= 2
        {
            break;
        }
        assert!(start.elapsed() < WAIT, "rsyslog forwarded nothing");
    }
    for i in 0..5 {
        logger(&[
            "-d",
            "-n",
            "127.0.0.1",
            "-P",
            &port,
            "-t",
            "sshd",
            "--id=812",
            &format!("forwarded {i}"),
        ]);
    }
    let start = Instant::now();
    let lines = loop {
        let lines = server.lines(Some("127.0.0.1"));
        if lines.iter().filter(|l| text(l).contains("forwarded")).count() >= 10 || start.elapsed() > WAIT {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for i in 0..5 {
        let needle = format!("forwarded {i}");
        let found: Vec<_> = lines.iter().filter(|l| text(l).ends_with(&needle)).collect();
        assert_eq!(
            found.len(),
            2,
            "{needle}: {:?}",
            lines.iter().map(text).collect::<Vec<_>>()
        );
        let protocol23 = found
            .iter()
            .find(|l| text(l).starts_with("<13>1 "))
            .expect("a 5424 line");
        let traditional = found
            .iter()
            .find(|l| !text(l).starts_with("<13>1 "))
            .expect("a 3164 line");
        for line in [protocol23, traditional] {
            assert_eq!(line.flags, Flags::default(), "{}", text(line));
            let json = message::to_json(line);
            assert_eq!(json["app"], "sshd", "{json}");
            assert_eq!(json["procid"], "812", "{json}");
            assert_eq!(json["message"], needle, "{json}");
        }
    }
}

/// The datagrams the kernel dropped for the UDP socket bound to `addr` (IPv4), from /proc/net/udp.
fn udp_drops(addr: SocketAddr) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let local = format!(":{:04X}", addr.port());
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1)?.ends_with(&local)).then(|| fields.last()?.parse().ok())?
    })
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_with_a_certificate_swapped_live() {
    let dir = TempDir::new("tls");
    let make = |name: &str| {
        let key = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let (cert_path, key_path) = (
            dir.path().join(format!("{name}.crt")),
            dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, key.cert.pem()).unwrap();
        std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
        let certificate = Arc::new(gatehouse_tls::load(&cert_path, &key_path).unwrap());
        (
            gatehouse_tls::server_config(&[certificate], &[]).unwrap(),
            key.cert.der().clone(),
        )
    };
    let (first, first_der) = make("logs.example");
    let (second, second_der) = make("logs2.example");
    let mut options = Server::options();
    options.tls = Some((any_port(), first));
    let server = Server::start("tls", options.clone()).await;
    let addr = server.ingest().local_addrs().tls.unwrap();

    let connect = |der: CertDer, name: &'static str| async move {
        use tokio_rustls::rustls;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(gatehouse_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.unwrap();
        connector.connect(name.try_into().unwrap(), tcp).await
    };
    let mut stream = connect(first_der.clone(), "logs.example").await.unwrap();
    stream
        .write_all(b"26 <13>Nov 25 04:19:26 h a: x<13>Nov 25 04:19:26 h a: lf\n")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let lines = server.wait_lines(Some("127.0.0.1"), 2, WAIT).await;
    assert_eq!(
        lines.iter().map(text).collect::<Vec<_>>(),
        ["<13>Nov 25 04:19:26 h a: x", "<13>Nov 25 04:19:26 h a: lf"]
    );

    options.tls = Some((options.tls.unwrap().0, second));
    server.ingest().reconfigure(options).await.unwrap();
    assert_eq!(server.ingest().local_addrs().tls, Some(addr));
    assert!(
        connect(first_der, "logs.example").await.is_err(),
        "the old certificate is still served"
    );
    let mut new = connect(second_der, "logs2.example").await.unwrap();
    new.write_all(b"<13>Nov 25 04:19:26 h a: new cert\n")
        .await
        .unwrap();
    new.flush().await.unwrap();
    // The connection made before still works.
    stream
        .write_all(b"<13>Nov 25 04:19:26 h a: old cert\n")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let lines = server.wait_lines(Some("127.0.0.1"), 4, WAIT).await;
    find(&lines, "new cert");
    find(&lines, "old cert");
}

type CertDer = tokio_rustls::rustls::pki_types::CertificateDer<'static>;
