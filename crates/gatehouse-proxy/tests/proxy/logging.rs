//! Access log lines, to a file and over syslog.

use std::time::Duration;

use tokio::net::UdpSocket;

use crate::common::*;

/// `127.0.0.1 - - [DD/Mon/YYYY:HH:MM:SS +0000] "GET /x?y=1 HTTP/1.1" 200 4 "-" "test-agent" backend=ADDR upstream=S total=S`
fn assert_combined(line: &str, backend: std::net::SocketAddr) {
    let (client, rest) = line.split_once(" - - [").unwrap_or_else(|| panic!("{line}"));
    assert_eq!(client, "127.0.0.1");
    let (time, rest) = rest.split_once("] ").unwrap();
    assert_eq!(time.len(), "24/Nov/2026:10:00:00 +0000".len(), "{time}");
    assert!(
        time.ends_with(" +0000") && time.as_bytes()[2] == b'/' && time.as_bytes()[6] == b'/',
        "{time}"
    );
    let prefix = format!(
        "\"GET /x?y=1 HTTP/1.1\" 200 4 \"https://ref.example/\" \"test-agent\" backend={backend} upstream="
    );
    assert!(rest.starts_with(&prefix), "{rest}");
    let times: Vec<&str> = rest[prefix.len()..].split(" total=").collect();
    assert_eq!(times.len(), 2, "{rest}");
    for t in times {
        let seconds: f64 = t.parse().unwrap_or_else(|_| panic!("{t} in {line}"));
        assert!((0.0..1.0).contains(&seconds), "{line}");
        assert_eq!(t.split('.').nth(1).map(str::len), Some(3), "milliseconds: {t}");
    }
}

fn logged_request() -> hyper::Request<http_body_util::Full<hyper::body::Bytes>> {
    hyper::Request::get("/x?y=1")
        .header("host", "example.com")
        .header("user-agent", "test-agent")
        .header("referer", "https://ref.example/")
        .body(http_body_util::Full::default())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_go_to_a_file_in_combined_format() {
    let web = Nginx::start("web");
    let dir = TempDir::new("log");
    let path = dir.path().join("sub/dir/access.log");
    let extra = format!("access_log = \"{}\"", path.display());
    let proxy = Proxy::start(&http_service(&[web.addr()], &extra)).await;
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..3 {
        assert_eq!(client.send(logged_request()).await.unwrap().status, 200);
    }
    let mut text = String::new();
    wait_for(Duration::from_secs(3), "three lines in the file", || {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines().count() == 3
    })
    .await;
    for line in text.lines() {
        assert_combined(line, web.addr());
    }

    // logrotate: the file is renamed, update() reopens the path.
    let rotated = dir.path().join("sub/dir/access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    let service = http_service(&[web.addr()], &extra);
    proxy.update(&service);
    assert_eq!(client.send(logged_request()).await.unwrap().status, 200);
    wait_for(Duration::from_secs(3), "a line in the new file", || {
        std::fs::read_to_string(&path).unwrap_or_default().lines().count() == 1
    })
    .await;
    assert_eq!(std::fs::read_to_string(&rotated).unwrap().lines().count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_go_over_syslog_udp() {
    let web = Nginx::start("web");
    let collector = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let extra = format!("access_log = \"syslog://{}\"", collector.local_addr().unwrap());
    let proxy = Proxy::start(&http_service(&[web.addr()], &extra)).await;
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(client.send(logged_request()).await.unwrap().status, 200);

    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(3), collector.recv(&mut buf))
        .await
        .expect("a datagram")
        .unwrap();
    let datagram = String::from_utf8(buf[..n].to_vec()).unwrap();
    // <190>Nov 24 10:00:00 HOSTNAME gatehouse[PID]: LINE
    let rest = datagram
        .strip_prefix("<190>")
        .unwrap_or_else(|| panic!("{datagram}"));
    let (stamp, rest) = rest.split_at("Nov 24 10:00:00".len());
    assert!(
        stamp.as_bytes()[3] == b' ' && stamp.as_bytes()[9] == b':',
        "{stamp}"
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let tag = format!(" {} gatehouse[{}]: ", host.trim(), std::process::id());
    let line = rest.strip_prefix(&tag).unwrap_or_else(|| panic!("{datagram}"));
    assert_combined(line, web.addr());
}
