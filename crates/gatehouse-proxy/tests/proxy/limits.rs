//! Deadlines on clients, and limits on what they may send or hold open.

use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const TIMEOUTS: &str = "timeouts = { header = \"1s\", idle = \"2s\" }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_nothing_is_cut_after_the_header_timeout() {
    let web = Nginx::start("web");
    let proxy = Proxy::start(&http_service(&[web.addr()], TIMEOUTS)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let took = time_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(1700),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_after_the_header_timeout() {
    let web = Nginx::start("web");
    let proxy = Proxy::start(&http_service(&[web.addr()], TIMEOUTS)).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    // One byte every 250 ms: never idle for long, never finishing the head.
    let trickle = tokio::spawn(async move {
        for byte in b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Slow: ".iter().cycle() {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), read.read(&mut buf))
        .await
        .expect("cut in time")
        .unwrap_or(0);
    let took = started.elapsed();
    assert_eq!(
        n,
        0,
        "no answer, just closed: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(1700),
        "{took:?}"
    );
    trickle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let web = Nginx::start("web");
    let proxy = Proxy::start(&http_service(&[web.addr()], TIMEOUTS)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(
        head.starts_with("HTTP/1.1 200 OK") && head.ends_with("web\n"),
        "{head}"
    );
    // Longer than the header timeout (1s), as long as the idle one (2s).
    let took = time_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(2700),
        "{took:?}"
    );
}

/// An idle connection gives up its buffers after a moment (it is "parked");
/// the client sees nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_keep_alive_connection_serves_the_next_request() {
    let web = Nginx::start("web");
    let proxy = Proxy::start(&http_service(&[web.addr()], TIMEOUTS)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    for pause in [0, 500, 1500, 50] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        // Two pipelined requests at once, the second split mid-head.
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\nGET / HTTP/1.1\r\nHo")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        stream.write_all(b"st: example.com\r\n\r\n").await.unwrap();
        let mut got = String::new();
        while got.matches("web\n").count() < 2 {
            let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed after a {pause} ms pause: {got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 2, "{got}");
    }
    assert_eq!(proxy.server().connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_the_next_client_in_the_backlog() {
    let web = Nginx::start("web");
    let proxy = Proxy::start(&http_service(&[web.addr()], "max_connections = 2")).await;
    let mut first = Client::connect(proxy.addr).await;
    let mut second = Client::connect(proxy.addr).await;
    assert_eq!(first.get("/").await.unwrap().body, "web\n");
    assert_eq!(second.get("/").await.unwrap().body, "web\n");
    assert_eq!(proxy.server().connections(), 2);

    // The kernel completes the third handshake; the proxy does not accept it.
    let addr = proxy.addr;
    let third = tokio::spawn(async move {
        let mut third = Client::connect(addr).await;
        third.get("/").await.map(|a| a.body)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third connection was served");

    drop(first);
    let body = tokio::time::timeout(Duration::from_secs(2), third)
        .await
        .expect("served once one closed");
    assert_eq!(body.unwrap().unwrap(), "web\n");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body_are_refused() {
    let web = Nginx::start("web");
    let proxy = Proxy::start(&http_service(&[web.addr()], "max_body = \"1KiB\"")).await;
    let mut client = Client::connect(proxy.addr).await;
    let post = |n: usize| {
        hyper::Request::post("/")
            .header("host", "example.com")
            .body(Full::new(Bytes::from(vec![b'x'; n])))
            .unwrap()
    };
    let answer = client.send(post(4096)).await.unwrap();
    assert_eq!(answer.status, 413);
    assert_eq!(
        answer.body,
        "413 Payload Too Large: the request body is larger than this service accepts\n"
    );
    // nginx answers POST to a `return` location as it answers GET.
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(client.send(post(512)).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_max_header_is_a_431() {
    let web = Nginx::start("web");
    let proxy = Proxy::start(&http_service(&[web.addr()], "max_header = \"8KiB\"")).await;
    let mut client = Client::connect(proxy.addr).await;
    let big = hyper::Request::get("/")
        .header("host", "example.com")
        .header("x-big", "x".repeat(9000))
        .body(Full::default())
        .unwrap();
    assert_eq!(client.send(big).await.unwrap().status, 431);
    let mut client = Client::connect(proxy.addr).await;
    let fits = hyper::Request::get("/")
        .header("host", "example.com")
        .header("x-big", "x".repeat(7000))
        .body(Full::default())
        .unwrap();
    assert_eq!(client.send(fits).await.unwrap().status, 200);
}
