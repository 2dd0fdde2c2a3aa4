//! A socket that is TCP, or TLS over TCP: one type for both, so the HTTP
//! code above it is compiled once (a match per read or write costs nothing
//! next to the system call).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Debug)]
pub(crate) enum MaybeTls<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// A client connection.
pub(crate) type ClientStream = MaybeTls<tokio_rustls::server::TlsStream<SendOnly>>;

/// The TCP socket under TLS, writing with send(2) rather than writev(2).
/// rustls hands its records over as a vectored write; for the one or two
/// small records of a typical response, copying them into one buffer and
/// sending that costs less than the vectored path through the VFS (the same
/// reason hyper's writev is off, see `http::builder`).
#[derive(Debug)]
pub(crate) struct SendOnly(pub(crate) TcpStream);

/// Records up to this size in all are joined for one send; larger writes
/// send the first record alone (its size makes the copy the bigger cost).
const JOIN_UP_TO: usize = 16 * 1024 + 512;

impl AsyncRead for SendOnly {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendOnly {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream = Pin::new(&mut self.get_mut().0);
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        let (Some(first), second) = (nonempty.next(), nonempty.next()) else {
            return Poll::Ready(Ok(0));
        };
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if second.is_none() || total > JOIN_UP_TO {
            return stream.poll_write(cx, first);
        }
        let mut joined = Vec::with_capacity(total);
        for buf in bufs {
            joined.extend_from_slice(buf);
        }
        stream.poll_write(cx, &joined)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl ClientStream {
    /// Readable again: for a parked connection (no buffers of ours), the
    /// socket's readiness. TLS keeps no plaintext back once a read returned
    /// Pending, so the socket tells for both.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            MaybeTls::Plain(s) => s.poll_read_ready(cx),
            MaybeTls::Tls(s) => s.get_ref().0.0.poll_read_ready(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::SendOnly;

    /// What a vectored write hands over arrives whole and in order, in one
    /// write when small (the join) and in parts when large (then the caller
    /// writes the rest, as with any partial write).
    #[tokio::test]
    async fn vectored_writes_arrive_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let reader = tokio::spawn(async move {
            let (mut peer, _) = listener.accept().await.expect("accept");
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.expect("read");
            all
        });
        let mut stream = SendOnly(TcpStream::connect(addr).await.expect("connect"));
        let small = [IoSlice::new(b""), IoSlice::new(b"head "), IoSlice::new(b"body")];
        let n = stream.write_vectored(&small).await.expect("write");
        assert_eq!(n, 9, "small records go in one send");
        let big = vec![7u8; 20_000];
        let parts = [IoSlice::new(b"x"), IoSlice::new(&big)];
        let mut sent = stream.write_vectored(&parts).await.expect("write");
        assert_eq!(sent, 1, "over the join limit the first record goes alone");
        while sent < 1 + big.len() {
            sent += stream.write(&big[sent - 1..]).await.expect("write rest");
        }
        stream.shutdown().await.expect("shutdown");
        drop(stream);
        let all = reader.await.expect("reader");
        assert_eq!(&all[..10], b"head bodyx");
        assert_eq!(all.len(), 10 + big.len());
        assert!(all[10..].iter().all(|&b| b == 7));
    }
}
