//! Active checks: can the backend be reached, and does it answer as expected.

use std::net::SocketAddr;

use gatehouse_config::{Check, Health};
use http_body_util::Empty;
use hyper::body::Bytes;
use tokio::net::TcpStream;

/// What HTTP checks send as User-Agent, so backends can leave them out of
/// their access logs.
pub const USER_AGENT: &str = "gatehouse-health";

use crate::pool::Outcome;

/// One check of one backend, bounded by the health timeout.
pub async fn probe(addr: SocketAddr, health: &Health) -> Outcome {
    match tokio::time::timeout(health.timeout, attempt(addr, &health.check)).await {
        Ok(Ok(())) => Outcome::Success,
        Ok(Err(why)) => Outcome::Failure(why),
        Err(_) => Outcome::Failure(format!(
            "no answer within {}",
            humantime::format_duration(health.timeout)
        )),
    }
}

async fn attempt(addr: SocketAddr, check: &Check) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Check::Http { path, expect } = check else {
        return Ok(());
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("http: {e}"))?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path.as_str())
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::USER_AGENT, USER_AGENT)
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender.send_request(request).await;
    driver.abort();
    let status = response.map_err(|e| format!("http: {e}"))?.status().as_u16();
    if status == *expect {
        Ok(())
    } else {
        Err(format!("GET {path} answered {status}, expected {expect}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn health(check: Check) -> Health {
        Health {
            check,
            timeout: Duration::from_millis(300),
            ..Health::default()
        }
    }

    /// A server that answers every connection with `status` once.
    async fn answering(status: u16) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = socket.write_all(reply.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn tcp_check_needs_a_listener() {
        let up = answering(200).await;
        assert_eq!(probe(up, &health(Check::Tcp)).await, Outcome::Success);
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = closed.local_addr().expect("addr");
        drop(closed);
        let Outcome::Failure(why) = probe(addr, &health(Check::Tcp)).await else {
            panic!("a closed port passed the check");
        };
        assert!(why.starts_with("connect:"), "{why}");
    }

    #[tokio::test]
    async fn http_check_compares_the_status() {
        let check = Check::Http {
            path: "/healthz".into(),
            expect: 200,
        };
        assert_eq!(
            probe(answering(200).await, &health(check.clone())).await,
            Outcome::Success
        );
        assert_eq!(
            probe(answering(503).await, &health(check)).await,
            Outcome::Failure("GET /healthz answered 503, expected 200".into())
        );
    }

    #[tokio::test]
    async fn a_silent_backend_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let check = Check::Http {
            path: "/".into(),
            expect: 200,
        };
        // Accepted by the kernel, never answered.
        assert_eq!(
            probe(addr, &health(check)).await,
            Outcome::Failure("no answer within 300ms".into())
        );
        drop(listener);
    }
}
