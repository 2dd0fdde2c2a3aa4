//! mode = "tcp": bytes through, balanced, with connect retries.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

/// Greets each connection with its name and a newline, then echoes.
async fn echo_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                stream.write_all(format!("{name}\n").as_bytes()).await?;
                let (mut r, mut w) = stream.split();
                tokio::io::copy(&mut r, &mut w).await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
    addr
}

/// Connect through the proxy; the greeting names the backend.
async fn open(proxy: SocketAddr) -> (String, BufReader<TcpStream>) {
    let mut stream = BufReader::new(TcpStream::connect(proxy).await.unwrap());
    let mut greeting = String::new();
    tokio::time::timeout(Duration::from_secs(3), stream.read_line(&mut greeting))
        .await
        .expect("a greeting")
        .unwrap();
    (greeting.trim().to_owned(), stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_echo_through_and_connections_take_turns() {
    let one = echo_backend("one").await;
    let two = echo_backend("two").await;
    let dir = TempDir::new("tcp-log");
    let log = dir.path().join("tcp.log");
    let extra = format!("access_log = \"{}\"", log.display());
    let proxy = Proxy::start(&service_on(free_port(), "tcp", &[one, two], &extra)).await;
    let mut names = Vec::new();
    for _ in 0..4 {
        let (name, mut stream) = open(proxy.addr).await;
        let message = vec![b'z'; 100_000];
        let (mut r, mut w) = stream.get_mut().split();
        let (sent, received) = tokio::join!(
            async {
                w.write_all(&message).await.unwrap();
                w.shutdown().await.unwrap();
            },
            async {
                let mut back = Vec::new();
                r.read_to_end(&mut back).await.unwrap();
                back
            }
        );
        let () = sent;
        assert_eq!(received.len(), message.len(), "echoed and closed after our close");
        names.push(name);
    }
    assert!(
        names == ["one", "two", "one", "two"] || names == ["two", "one", "two", "one"],
        "{names:?}"
    );
    let backends = proxy.pool.backends();
    assert_eq!(
        backends[0].stats.responses[1].get() + backends[1].stats.responses[1].get(),
        4,
        "each counts as 2xx"
    );

    let mut text = String::new();
    wait_for(Duration::from_secs(3), "four log lines", || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().count() == 4
    })
    .await;
    let line = text.lines().next().unwrap();
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains("] tcp backend=127.0.0.1:") && line.contains(" up=100000 down=100004 "),
        "{line}"
    );
    assert!(line.ends_with(" end=closed"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_is_retried_on_another() {
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let live = echo_backend("live").await;
    let proxy = Proxy::start(&service_on(
        free_port(),
        "tcp",
        &[dead, live],
        "health = { fall = 100 }",
    ))
    .await;
    for _ in 0..4 {
        let (name, _stream) = open(proxy.addr).await;
        assert_eq!(name, "live");
    }
    assert_eq!(proxy.pool.backends()[0].stats.connect_errors.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tcp_connection_is_closed() {
    let one = echo_backend("one").await;
    let proxy = Proxy::start(&service_on(
        free_port(),
        "tcp",
        &[one],
        "timeouts = { idle = \"500ms\" }",
    ))
    .await;
    let (_, mut stream) = open(proxy.addr).await;
    stream.get_mut().write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    let took = time_until_closed(stream.get_mut(), Duration::from_secs(3)).await;
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1200),
        "{took:?}"
    );
}
