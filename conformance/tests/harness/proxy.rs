//! The fault proxy between the client under test and the server: forwards HTTP requests to
//! wherever the server is now (it follows a restart), counts them by kind, and on command
//! looks unreachable, answers with a status, corrupts or cuts off downloads, or delays.
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine;
use imprint_conformance::{Fault, RequestKind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

pub struct Proxy {
    pub addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    upstream: Mutex<String>,
    fault: Mutex<Fault>,
    /// Set while the fault is `Down`: new connections are closed at once.
    down: Arc<AtomicBool>,
    counts: [AtomicU64; 3],
    http: reqwest::Client,
}

/// Closes connections while the proxy is "down", as a dead host would.
struct Gate {
    inner: TcpListener,
    down: Arc<AtomicBool>,
}

impl axum::serve::Listener for Gate {
    type Io = TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (TcpStream, std::net::SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((s, a)) if !self.down.load(Ordering::SeqCst) => return (s, a),
                Ok((s, _)) => drop(s),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

impl Proxy {
    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let down = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            fault: Mutex::new(Fault::Pass),
            down: down.clone(),
            counts: Default::default(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(120))
                .build()
                .expect("proxy client"),
        });
        let router = axum::Router::new().fallback(forward).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(Gate { inner: listener, down }, router).await;
        });
        Proxy { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn retarget(&self, upstream: String) {
        *self.shared.upstream.lock().expect("lock") = upstream;
    }

    pub fn set(&self, fault: Fault) {
        self.shared.down.store(matches!(fault, Fault::Down), Ordering::SeqCst);
        *self.shared.fault.lock().expect("lock") = fault;
    }

    pub fn reset_counts(&self) {
        self.shared.counts.iter().for_each(|c| c.store(0, Ordering::SeqCst));
    }

    pub fn count(&self, kind: RequestKind) -> u64 {
        let c = |i: usize| self.shared.counts[i].load(Ordering::SeqCst);
        match kind {
            RequestKind::Poll => c(0),
            RequestKind::Data => c(1),
            RequestKind::Other => c(2),
            RequestKind::Any => c(0) + c(1) + c(2),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn kind_of(req: &Request) -> RequestKind {
    let path = req.uri().path();
    if path == "/api/v1/poll" {
        RequestKind::Poll
    } else if path.ends_with("/data") {
        RequestKind::Data
    } else {
        RequestKind::Other
    }
}

fn index(kind: RequestKind) -> usize {
    match kind {
        RequestKind::Poll => 0,
        RequestKind::Data => 1,
        _ => 2,
    }
}

/// What the current fault does to a request of `kind`, taken (and counted down) at once.
enum Action {
    Forward,
    Unreachable,
    Answer(u16, Option<u32>),
    Reset,
    Hang,
    PollAfter(u64),
    Corrupt,
    CorruptInline,
    Truncate,
    Delay(u64),
}

fn take_action(shared: &Shared, kind: RequestKind) -> Action {
    let mut fault = shared.fault.lock().expect("lock");
    let (action, spent) = match &mut *fault {
        Fault::Pass => (Action::Forward, false),
        Fault::Down => (Action::Unreachable, false),
        Fault::Delay { ms } => (Action::Delay(*ms), false),
        Fault::Status { status, kind: k, count, retry_after_s }
            if *count > 0 && (*k == kind || *k == RequestKind::Any) =>
        {
            *count -= 1;
            (Action::Answer(*status, *retry_after_s), *count == 0)
        }
        Fault::Reset { kind: k, count } if *count > 0 && (*k == kind || *k == RequestKind::Any) => {
            *count -= 1;
            (Action::Reset, *count == 0)
        }
        Fault::Hang { kind: k, count } if *count > 0 && (*k == kind || *k == RequestKind::Any) => {
            *count -= 1;
            (Action::Hang, *count == 0)
        }
        Fault::PollAfter { ms, count } if *count > 0 && kind == RequestKind::Poll => {
            *count -= 1;
            (Action::PollAfter(*ms), *count == 0)
        }
        Fault::Corrupt { count } if *count > 0 && kind == RequestKind::Data => {
            *count -= 1;
            (Action::Corrupt, *count == 0)
        }
        Fault::CorruptInline { count } if *count > 0 && kind == RequestKind::Poll => {
            // Counted down only by an answer that carries an inline payload (below).
            (Action::CorruptInline, false)
        }
        Fault::Truncate { count } if *count > 0 && kind == RequestKind::Data => {
            *count -= 1;
            (Action::Truncate, *count == 0)
        }
        _ => (Action::Forward, false),
    };
    if spent {
        *fault = Fault::Pass;
    }
    action
}

fn unreachable() -> Response {
    let mut r = Response::new(Body::from("the fault proxy finds no server"));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

async fn forward(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let kind = kind_of(&req);
    shared.counts[index(kind)].fetch_add(1, Ordering::SeqCst);
    let action = take_action(&shared, kind);
    match action {
        Action::Unreachable => return unreachable(),
        Action::Answer(status, retry_after) => {
            let body = serde_json::json!({"error": {"code": "busy", "message": "injected by the fault proxy"}});
            let mut r = Response::new(Body::from(body.to_string()));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Some(s) = retry_after {
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
            }
            return r;
        }
        Action::Reset => {
            // A promised body that never comes: the connection breaks at once.
            let broken: Vec<Result<bytes::Bytes, std::io::Error>> =
                vec![Err(std::io::Error::other("reset by the fault proxy"))];
            let mut r = Response::new(Body::from_stream(futures::stream::iter(broken)));
            r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("4096"));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return r;
        }
        Action::Hang => {
            // Bounded, so a client without a time bound still ends (and fails its scenario).
            tokio::time::sleep(Duration::from_secs(300)).await;
            let mut r = Response::new(Body::from("the fault proxy hung"));
            *r.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            return r;
        }
        Action::Delay(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        _ => {}
    }
    let upstream = shared.upstream.lock().expect("lock").clone();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else { return unreachable() };
    let mut out = shared.http.request(parts.method, format!("{upstream}{path}")).body(body);
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH && name != header::CONNECTION {
            out = out.header(name, value);
        }
    }
    let Ok(resp) = out.send().await else { return unreachable() };
    let status = resp.status();
    let headers = resp.headers().clone();
    let Ok(mut bytes) = resp.bytes().await.map(|b| b.to_vec()) else { return unreachable() };
    let ok = status.is_success();
    let mut rewritten = false;
    let body = match action {
        Action::Corrupt if ok && !bytes.is_empty() => {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            Body::from(bytes)
        }
        Action::Truncate if ok && bytes.len() > 1 => {
            // Half the body, then the connection breaks: a hang-up mid-download.
            // The pause lets the half reach the client before the break.
            let half = bytes::Bytes::from(bytes[..bytes.len() / 2].to_vec());
            let cut = futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(std::io::Error::other("cut off by the fault proxy"))
            });
            Body::from_stream(futures::StreamExt::chain(futures::stream::iter([Ok::<_, std::io::Error>(half)]), cut))
        }
        Action::PollAfter(ms) if ok => {
            let mut answer: serde_json::Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(_) => return unreachable(),
            };
            answer["poll_after_ms"] = serde_json::json!(ms);
            rewritten = true;
            Body::from(answer.to_string())
        }
        Action::CorruptInline if ok => {
            let mut answer: serde_json::Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(_) => return unreachable(),
            };
            let mut spoiled = false;
            if let Some(updates) = answer["updates"].as_object_mut() {
                for u in updates.values_mut() {
                    let Some(inline) = u["data_base64"].as_str() else { continue };
                    let Ok(mut data) = base64::engine::general_purpose::STANDARD.decode(inline) else { continue };
                    if let Some(b) = data.get_mut(0) {
                        *b ^= 0xff;
                        u["data_base64"] = serde_json::json!(base64::engine::general_purpose::STANDARD.encode(&data));
                        spoiled = true;
                    }
                }
            }
            if spoiled {
                let mut fault = shared.fault.lock().expect("lock");
                if let Fault::CorruptInline { count } = &mut *fault {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        *fault = Fault::Pass;
                    }
                }
            }
            rewritten = true;
            Body::from(answer.to_string())
        }
        _ => Body::from(bytes),
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    for (name, value) in &headers {
        let stale_length = rewritten && name == header::CONTENT_LENGTH;
        if name != header::TRANSFER_ENCODING && name != header::CONNECTION && !stale_length {
            r.headers_mut().append(name, value.clone());
        }
    }
    r
}
