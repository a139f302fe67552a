//! The gRPC listener's connections, bounded as the HTTP listener's are: at most
//! `IMPRINT_MAX_CONNS_PER_IP` open at once from one client address (IPv6: one /64; the
//! trusted proxies are not counted). Past it a new connection is closed at once, before
//! any HTTP/2 is spoken (the client sees UNAVAILABLE). Streams per connection are bounded
//! by the server's `max_concurrent_streams`, each Watch by its long-poll place.
use crate::listener::{is_connection_error, PerIp, Slot};
use crate::TrustedProxies;
use futures::Stream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection and its place in its address's count (given back when the
/// connection is dropped).
pub(super) struct CappedConnection {
    stream: TcpStream,
    _slot: Option<Slot>,
}

impl Connected for CappedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for CappedConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The connections `listener` accepts, each counted against its address's cap
/// (`max_per_ip`, 0: no cap); the ones over it are closed and never yielded.
pub(super) fn incoming(
    listener: TcpListener,
    max_per_ip: usize,
    exempt: TrustedProxies,
) -> impl Stream<Item = io::Result<CappedConnection>> {
    let per_ip = PerIp::new(max_per_ip);
    futures::stream::unfold((listener, per_ip, exempt), |(listener, per_ip, exempt)| async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of descriptors, most likely: wait a little instead of spinning.
                    tracing::error!(error = %e, "accepting a gRPC connection failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let slot = if exempt.trusts(peer.ip()) {
                None
            } else {
                match per_ip.acquire(peer.ip()) {
                    Some(slot) => Some(slot),
                    None => {
                        metrics::counter!("imprint_connections_refused_total").increment(1);
                        tracing::debug!(%peer, "gRPC connection refused: too many from this address");
                        drop(stream);
                        continue;
                    }
                }
            };
            let _ = stream.set_nodelay(true);
            return Some((Ok(CappedConnection { stream, _slot: slot }), (listener, per_ip, exempt)));
        }
    })
}
