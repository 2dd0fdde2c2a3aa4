//! What the backend sees, what the client gets when things fail, and reloads.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gatehouse_health::{Metrics, Pool};

use crate::common::*;

/// curl, a real client, through the proxy to nginx's header echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_sees_forwarding_headers_and_no_hop_by_hop_ones() {
    let web = Nginx::start("web");
    let proxy = Proxy::start(&http_service(&[web.addr()], "")).await;
    let url = format!("http://{}/headers", proxy.addr);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-s", "--noproxy", "*", "--max-time", "5", &url])
            .args(["-H", "X-Forwarded-For: 198.51.100.1"])
            .args(["-H", "Forwarded: for=198.51.100.1;proto=https"])
            .args(["-H", "Connection: keep-alive, X-Custom"])
            .args(["-H", "Keep-Alive: timeout=5"])
            .args(["-H", "X-Custom: hop-by-hop, named by Connection"])
            .output()
    })
    .await
    .unwrap()
    .expect("curl runs");
    let body = String::from_utf8_lossy(&output.stdout);
    let host = proxy.addr.to_string();
    let expected = format!(
        "198.51.100.1, 127.0.0.1|http|{host}|for=198.51.100.1;proto=https, for=127.0.0.1;proto=http;host=\"{host}\"|||\
         |{host}\n"
    );
    assert_eq!(
        body, expected,
        "fields: xff|proto|x-forwarded-host|forwarded|connection|keep-alive|x-custom|host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_are_not_passed_on() {
    let web = Nginx::start("web");
    let proxy = Proxy::start(&http_service(&[web.addr()], "")).await;
    let answer = get(proxy.addr, "/").await;
    assert_eq!(answer.body, "web\n");
    // nginx sends "Connection: keep-alive"; it was for our hop only.
    assert!(answer.headers.get("connection").is_none(), "{:?}", answer.headers);
    assert_eq!(answer.headers.get("server").unwrap(), "nginx/1.22.1");
}

fn closed_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_backend_is_a_502() {
    // fall = 100: traffic failures do not take it down, so this is not fail-open.
    let proxy = Proxy::start(&http_service(&[closed_port()], "health = { fall = 100 }")).await;
    let answer = get(proxy.addr, "/").await;
    assert_eq!(answer.status, 502);
    assert_eq!(
        answer.body,
        "502 Bad Gateway: the backend server failed to answer\n"
    );
    assert_eq!(
        answer.headers.get("content-type").unwrap(),
        "text/plain; charset=utf-8"
    );
    let backend = &proxy.pool.backends()[0];
    assert_eq!(backend.stats.connect_errors.get(), 1);
    assert_eq!(proxy.pool.stats.no_backend.get(), 1);
    assert_eq!(
        backend.stats.connections.get(),
        0,
        "the in-flight gauge came down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_sending_garbage_is_a_502() {
    let garbage = garbage_backend().await;
    let proxy = Proxy::start(&http_service(&[garbage], "health = { fall = 100 }")).await;
    let answer = get(proxy.addr, "/").await;
    assert_eq!(answer.status, 502);
    assert_eq!(
        answer.body,
        "502 Bad Gateway: the backend server failed to answer\n"
    );
    assert_eq!(proxy.pool.backends()[0].stats.response_errors.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_dead_is_a_503_after_trying_each() {
    let proxy = Proxy::start(&http_service(
        &[closed_port(), closed_port()],
        "health = { fall = 1 }",
    ))
    .await;
    let answer = get(proxy.addr, "/").await;
    assert_eq!(answer.status, 503);
    assert_eq!(
        answer.body,
        "503 Service Unavailable: no backend server is available\n"
    );
    for backend in proxy.pool.backends() {
        assert_eq!(backend.stats.connect_errors.get(), 1, "each backend tried once");
    }
    assert!(proxy.pool.fail_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_is_retried_on_another() {
    let web = Nginx::start("web");
    let proxy = Proxy::start(&http_service(
        &[closed_port(), web.addr()],
        "health = { fall = 100 }",
    ))
    .await;
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..6 {
        let answer = client.get("/").await.expect("answer");
        assert_eq!((answer.status.as_u16(), answer.body.as_str()), (200, "web\n"));
    }
    assert_eq!(
        proxy.pool.backends()[0].stats.connect_errors.get(),
        3,
        "every other request tried it first"
    );
}

/// A backend that closes every connection after one answer, without saying
/// so: the pooled connection is found closed when reused, and the request
/// goes out again on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closed_by_the_backend_is_replaced() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                    .await;
            });
        }
    });
    let proxy = Proxy::start(&http_service(&[addr], "health = { fall = 100 }")).await;
    let mut client = Client::connect(proxy.addr).await;
    for _ in 0..5 {
        let answer = client.get("/").await.expect("answer");
        assert_eq!((answer.status.as_u16(), answer.body.as_str()), (200, "ok\n"));
        // Let the backend's close arrive before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::Relaxed),
        5,
        "a new connection each time"
    );
    let backend = &proxy.pool.backends()[0];
    assert_eq!(
        backend.stats.connect_errors.get() + backend.stats.response_errors.get(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_slower_than_the_request_timeout_is_a_504() {
    let slow = slow_backend("slow", Duration::from_secs(3)).await;
    let proxy = Proxy::start(&http_service(
        &[slow],
        "timeouts = { request = \"300ms\" }\nhealth = { fall = 100 }",
    ))
    .await;
    let started = Instant::now();
    let answer = get(proxy.addr, "/slow").await;
    let took = started.elapsed();
    assert_eq!(answer.status, 504);
    assert_eq!(
        answer.body,
        "504 Gateway Timeout: the backend server did not answer in time\n"
    );
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert_eq!(proxy.pool.backends()[0].stats.timeouts.get(), 1);
    // The fast path of the same backend still works.
    assert_eq!(get(proxy.addr, "/").await.body, "slow\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_moves_a_kept_alive_connection_to_the_new_backends() {
    let old = Nginx::start("old");
    let new = Nginx::start("new");
    let port = free_port();
    let first = service_on(port, "http", &[old.addr()], "");
    let proxy = Proxy::start(&first).await;
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(client.get("/").await.expect("answer").body, "old\n");

    let second = service_on(port, "http", &[new.addr()], "");
    proxy.update(&second);

    assert_eq!(client.get("/").await.expect("same connection").body, "new\n");
    assert!(!client.is_closed());
    assert_eq!(proxy.server().connections(), 1, "one client connection all along");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_request_finish_and_closes_idle_connections() {
    let slow = slow_backend("slow", Duration::from_millis(500)).await;
    let mut proxy = Proxy::start(&http_service(&[slow], "")).await;
    let mut idle = Client::connect(proxy.addr).await;
    assert_eq!(idle.get("/").await.expect("answer").body, "slow\n");
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move { get(addr, "/slow").await });
    wait_for(Duration::from_secs(2), "request in flight", || {
        proxy.pool.backends()[0].stats.connections.get() == 1
    })
    .await;

    let server = proxy.server.take().unwrap();
    let cut = server.shutdown(Duration::from_secs(5)).await;
    assert_eq!(cut, 0);
    let answer = in_flight.await.expect("in-flight request");
    assert_eq!((answer.status.as_u16(), answer.body.as_str()), (200, "slow\n"));
    assert!(idle.get("/").await.is_err(), "the idle connection was closed");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_what_is_left_after_the_drain_time() {
    let slow = slow_backend("slow", Duration::from_secs(10)).await;
    let mut proxy = Proxy::start(&http_service(&[slow], "")).await;
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move { Client::connect(addr).await.get("/slow").await });
    wait_for(Duration::from_secs(2), "request in flight", || {
        proxy.pool.backends()[0].stats.connections.get() == 1
    })
    .await;
    let started = Instant::now();
    let cut = proxy
        .server
        .take()
        .unwrap()
        .shutdown(Duration::from_millis(300))
        .await;
    assert_eq!(cut, 1);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(in_flight.await.expect("task").is_err(), "the cut request failed");
    assert_eq!(proxy.pool.backends()[0].stats.connections.get(), 0);
}

/// `listen = "PORT"` binds `[::]`, which takes IPv4 clients too; the
/// backend sees the IPv4 client as IPv4, not as `::ffff:127.0.0.1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_only_listener_takes_ipv4_and_ipv6_clients() {
    let web = Nginx::start("web");
    let port = free_port();
    let text = format!(
        "[[service]]\nname = \"app\"\nlisten = \"{port}\"\nmode = \"http\"\nbackends = [\"{}\"]\n",
        web.addr()
    );
    let proxy = Proxy::start(&service(&text)).await;
    assert_eq!(
        proxy.addr,
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))
    );
    let v4 = get(SocketAddr::from(([127, 0, 0, 1], port)), "/headers").await;
    assert!(v4.body.starts_with("127.0.0.1|http|"), "{}", v4.body);
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let v6 = get(
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
            "/headers",
        )
        .await;
        assert!(v6.body.starts_with("::1|http|"), "{}", v6.body);
        assert!(v6.body.contains("for=\"[::1]\";proto=http"), "{}", v6.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_address_is_named_in_the_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let service = service_on(port, "http", &[SocketAddr::from(([127, 0, 0, 1], 1))], "");
    let metrics = Metrics::new();
    let pools = Pool::for_service(&service, &metrics, &[]);
    let error = gatehouse_proxy::Server::start(&service, pools, &metrics)
        .await
        .expect_err("the port is taken");
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    assert_eq!(
        error.to_string(),
        format!("cannot listen on 127.0.0.1:{port}: Address already in use")
    );
}
