//! An upgrade through the proxy: a WebSocket echo, handshake and frames by
//! hand (RFC 6455), on both ends.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

/// RFC 3174 SHA-1, only for Sec-WebSocket-Accept.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in message.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[i * 4..i * 4 + 4].try_into().unwrap());
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn accept_key(key: &str) -> String {
    base64(&sha1(
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    ))
}

/// A request or response head, read byte by byte (nothing after it is taken).
pub async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "closed inside a head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// One frame: (opcode, payload), unmasking if masked.
pub async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.unwrap();
    let masked = head[1] & 0x80 != 0;
    let mut len = u64::from(head[1] & 0x7f);
    if len == 126 {
        let mut ext = [0u8; 2];
        stream.read_exact(&mut ext).await.unwrap();
        len = u64::from(u16::from_be_bytes(ext));
    } else if len == 127 {
        let mut ext = [0u8; 8];
        stream.read_exact(&mut ext).await.unwrap();
        len = u64::from_be_bytes(ext);
    }
    let mut mask = [0u8; 4];
    if masked {
        stream.read_exact(&mut mask).await.unwrap();
    }
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).await.unwrap();
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    (head[0] & 0x0f, payload)
}

/// A final frame; masked (as a client must) with `mask`.
pub fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n < 65536 => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A WebSocket server that echoes every data frame until a close frame.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind((TINY_BACKEND_IP, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                let key = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("Sec-WebSocket-Key: ")
                            .or_else(|| l.strip_prefix("sec-websocket-key: "))
                    })
                    .expect("a key")
                    .trim()
                    .to_owned();
                let reply = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: {}\r\n\r\n",
                    accept_key(&key)
                );
                stream.write_all(reply.as_bytes()).await.unwrap();
                loop {
                    let (opcode, payload) = read_frame(&mut stream).await;
                    stream.write_all(&frame(opcode, &payload, None)).await.unwrap();
                    if opcode == 8 {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn the_handshake_digest_is_rfc_6455s() {
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echoes_through_the_proxy() {
    let server = echo_server().await;
    let proxy = Proxy::start(&http_service(
        &[server],
        "timeouts = { header = \"1s\", idle = \"5s\" }",
    ))
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let request = format!(
        "GET /chat HTTP/1.1\r\nHost: chat.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(head.contains(&accept_key(key)), "{head}");

    let mask = Some([1, 2, 3, 4]);
    for message in ["hello", "through the proxy"] {
        stream
            .write_all(&frame(1, message.as_bytes(), mask))
            .await
            .unwrap();
        assert_eq!(read_frame(&mut stream).await, (1, message.as_bytes().to_vec()));
    }
    // Quiet for longer than the header timeout: a tunnel is not a request head.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let big = vec![7u8; 200_000];
    stream.write_all(&frame(2, &big, mask)).await.unwrap();
    assert_eq!(read_frame(&mut stream).await, (2, big));
    assert_eq!(
        proxy.pool.backends()[0].stats.connections.get(),
        1,
        "the tunnel counts as in flight"
    );

    stream.write_all(&frame(8, &[], mask)).await.unwrap();
    assert_eq!(read_frame(&mut stream).await.0, 8);
    let took = time_until_closed(&mut stream, Duration::from_secs(3)).await;
    assert!(took < Duration::from_secs(1));
    // The backend closed its side; the tunnel ends when ours closes too.
    drop(stream);
    wait_for(Duration::from_secs(2), "tunnel closed", || {
        proxy.pool.backends()[0].stats.connections.get() == 0
    })
    .await;
}

/// nginx's `return` ignores Upgrade: the answer is an ordinary response,
/// streamed from a connection that was set up for an upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_the_backend_declines_is_an_ordinary_answer() {
    let web = Nginx::start("web");
    let proxy = Proxy::start(&http_service(&[web.addr()], "")).await;
    let mut client = Client::connect(proxy.addr).await;
    let request = hyper::Request::get("/")
        .header("host", "example.com")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(http_body_util::Full::default())
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(3), client.send(request))
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!((answer.status.as_u16(), answer.body.as_str()), (200, "web\n"));
    assert_eq!(client.get("/").await.expect("keep-alive").body, "web\n");
}
