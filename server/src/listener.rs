//! The HTTP listener: what `axum::serve` does, plus what it cannot be told — a deadline for
//! a request's head, an idle deadline for its body, a cap on connections per client
//! address, and a graceful shutdown with a deadline (slow or stalled clients cannot hold a
//! connection, a process's sockets, or its shutdown).
//!
//! HTTP/1.1 only (with upgrades): every connection then either makes progress or ends —
//! an idle keep-alive connection waiting for its next request head is under the same
//! header-read deadline as a new one.
use crate::TrustedProxies;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// Connection-level limits (`IMPRINT_HEADER_TIMEOUT_SECS`, `IMPRINT_BODY_IDLE_TIMEOUT_SECS`,
/// `IMPRINT_MAX_CONNS_PER_IP`, `IMPRINT_SHUTDOWN_GRACE_SECS`).
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// A request's head (request line and headers) must have arrived this long after the
    /// server started waiting for it — on a new connection and between keep-alive requests.
    pub header_read_timeout: Duration,
    /// While a handler waits for the request body, the client must send some of it at
    /// least this often (the deadline restarts with every chunk); else the body fails.
    pub body_idle_timeout: Duration,
    /// Connections open at once from one client address (IPv6: one /64); past it a new
    /// connection is answered 429 and closed without reading it. 0: no limit.
    pub max_conns_per_ip: usize,
    /// After the shutdown signal, open connections may finish their requests this long;
    /// then the ones left are dropped.
    pub shutdown_grace: Duration,
    /// Peers not counted against `max_conns_per_ip`: the trusted reverse proxies, whose
    /// connections carry many clients.
    pub exempt: TrustedProxies,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            // Longer than the Rust client's 30 s idle pool, so an idle keep-alive
            // connection is dropped by the client before the server closes it under it.
            header_read_timeout: Duration::from_secs(40),
            body_idle_timeout: Duration::from_secs(30),
            max_conns_per_ip: 256,
            shutdown_grace: Duration::from_secs(10),
            exempt: TrustedProxies::default(),
        }
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown` completes, then drains:
/// no new connections, open ones finish their requests (idle ones close at once), and
/// whatever is still open after `shutdown_grace` is dropped. Handlers see the peer as
/// `ConnectInfo<SocketAddr>`, as with `into_make_service_with_connect_info`.
pub async fn serve_with_limits(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    let http = Arc::new(http);
    let per_ip = PerIp::new(limits.max_conns_per_ip);
    // `drain`: finish what is in flight, then close; `kill`: close now.
    let (drain_tx, drain_rx) = watch::channel(false);
    let (kill_tx, kill_rx) = watch::channel(false);
    // Every connection task holds a receiver: all dropped = all connections closed.
    let (open_tx, open_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of descriptors, most likely: wait a little instead of spinning.
                tracing::error!(error = %e, "accepting a connection failed");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        let slot = if limits.exempt.trusts(peer.ip()) {
            None
        } else {
            match per_ip.acquire(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    refuse(stream, peer);
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let idle = limits.body_idle_timeout;
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let req = req.map(|body| axum::body::Body::new(IdleTimeoutBody::new(body, idle)));
            router.clone().oneshot(req)
        });
        let http = http.clone();
        let (mut drain, mut kill, open) = (drain_rx.clone(), kill_rx.clone(), open_rx.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _open = open;
            let conn = http.serve_connection(TokioIo::new(stream), service).with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let mut draining = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended");
                        }
                        break;
                    }
                    _ = drain.wait_for(|d| *d), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = kill.wait_for(|k| *k) => break,
                }
            }
        });
    }
    drop(listener);
    drop(open_rx);
    let open = open_tx.receiver_count();
    tracing::info!(open, grace_secs = limits.shutdown_grace.as_secs_f64(), "no new connections; draining open ones");
    let _ = drain_tx.send(true);
    if tokio::time::timeout(limits.shutdown_grace, open_tx.closed()).await.is_err() {
        tracing::warn!(left = open_tx.receiver_count(), "shutdown grace is over; dropping the connections left");
        let _ = kill_tx.send(true);
        // The tasks end as soon as they see it; the bound only guards against a surprise.
        let _ = tokio::time::timeout(Duration::from_secs(5), open_tx.closed()).await;
    }
    Ok(())
}

/// Errors of one incoming connection (the listener itself is fine).
pub(crate) fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset)
}

/// Answers a connection over its address's cap with 429 and closes it, without reading
/// or waiting for anything (a write into a new socket's empty buffer never blocks).
fn refuse(stream: tokio::net::TcpStream, peer: SocketAddr) {
    // Written before any HTTP machinery runs, so by hand; its status, code and message
    // are the service error's own (`Error::TooManyConnections`), like every other answer.
    static RESPONSE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let response = RESPONSE.get_or_init(|| {
        let e = imprint_service::Error::TooManyConnections;
        let status = e.status();
        let body = serde_json::json!({"error": {"code": e.code(), "message": e.public_message()}}).to_string();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 5\r\nconnection: close\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        )
    });
    metrics::counter!("imprint_connections_refused_total").increment(1);
    tracing::debug!(%peer, "connection refused: too many from this address");
    let _ = stream.try_write(response.as_bytes());
}

/// Open connections per client address.
#[derive(Clone)]
pub(crate) struct PerIp {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in its address's count; given back when dropped.
pub(crate) struct Slot {
    key: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIp {
    pub(crate) fn new(max: usize) -> Self {
        PerIp { max, open: Arc::default() }
    }

    pub(crate) fn acquire(&self, ip: IpAddr) -> Option<Slot> {
        if self.max == 0 {
            // No cap: a slot counted nowhere.
            return Some(Slot { key: ip, open: Arc::default() });
        }
        let key = address_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot { key, open: self.open.clone() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// What is counted as one client: an IPv4 address, or an IPv6 /64 (one host's usual share).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// A request body that fails when the client sends nothing for `idle` while someone waits
/// for it (the deadline restarts with every frame; it runs only while a handler reads).
struct IdleTimeoutBody {
    inner: Incoming,
    idle: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimeoutBody {
    fn new(inner: Incoming, idle: Duration) -> Self {
        IdleTimeoutBody { inner, idle, deadline: None }
    }
}

/// The error of a body whose client went quiet.
#[derive(Debug)]
pub struct BodyIdleTimeout(Duration);

impl std::fmt::Display for BodyIdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client sent no body data for {} s", self.0.as_secs_f64())
    }
}

impl std::error::Error for BodyIdleTimeout {}

impl http_body::Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        metrics::counter!("imprint_request_body_timeouts_total").increment(1);
                        Poll::Ready(Some(Err(Box::new(BodyIdleTimeout(idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap_or(IpAddr::from([0u8; 16]));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap_or(IpAddr::from([0u8; 16]));
        assert_eq!(address_key(mapped), IpAddr::from([10, 1, 2, 3]));
    }

    #[test]
    fn slots_are_given_back() {
        let per_ip = PerIp::new(2);
        let ip = IpAddr::from([192, 0, 2, 1]);
        let first = per_ip.acquire(ip);
        let second = per_ip.acquire(ip);
        assert!(first.is_some() && second.is_some());
        assert!(per_ip.acquire(ip).is_none(), "a third is over the cap");
        assert!(per_ip.acquire(IpAddr::from([192, 0, 2, 2])).is_some(), "other addresses have their own");
        drop(first);
        assert!(per_ip.acquire(ip).is_some(), "a closed connection frees its place");
    }
}
