//! Parked long polls, one TCP connection each: opening them (bounded, retried while the
//! accept queue is full), the exchange over hyper or a minimal raw HTTP/1.1 reader, and
//! each answer's outcome (stamped when read, parsed afterwards).
use crate::{Error, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    /// Answered with at least one update.
    Update(Instant),
    /// Answered with nothing new; `busy` when the server refused to hold it (poll_after_ms ≥ 5 s).
    Empty {
        at: Instant,
        busy: bool,
    },
    Failed {
        at: Instant,
        error: String,
    },
    /// Not parsed yet.
    Raw {
        at: Instant,
        status: StatusCode,
        body: Bytes,
    },
}

impl Outcome {
    pub(crate) fn at(&self) -> Instant {
        match self {
            Outcome::Update(at) | Outcome::Empty { at, .. } | Outcome::Failed { at, .. } | Outcome::Raw { at, .. } => {
                *at
            }
        }
    }
}

/// A group of parked polls on one topic.
pub(crate) struct Group {
    results: Arc<Mutex<Vec<Option<Outcome>>>>,
    pub(crate) answered: Arc<AtomicUsize>,
    pub(crate) connected: Arc<AtomicUsize>,
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Group {
    pub(crate) fn outcomes(&self) -> Vec<Option<Outcome>> {
        let raw = self.results.lock().unwrap_or_else(|e| e.into_inner()).clone();
        raw.into_iter().map(|o| o.map(classify)).collect()
    }
}

/// One long poll on its own connection. Returns the answer unparsed (stamped the moment
/// its last byte was read), so that answering 10 000 polls costs this process as little
/// as possible while the rest are still arriving; `classify` parses it afterwards. One
/// task drives both the connection and the exchange (no extra task per poll).
/// Keeps an answered poll's connection open: closing 10 000 sockets while other answers are
/// still on their way would load both ends (on loopback the close is processed for both
/// sides by the closer) and skew the latencies of the polls still waiting.
type Guard = Box<dyn std::any::Any + Send>;

/// A connection to `addr` (one of `connect`'s permits at a time), retried with a growing
/// pause while the server's accept queue is full.
async fn connect_with_retry(addr: SocketAddr, connect: &tokio::sync::Semaphore) -> Result<tokio::net::TcpStream> {
    let _permit = connect.acquire().await?;
    let mut tries = 0;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) if tries < 20 => {
                tries += 1;
                tracing_note(&format!("connect failed ({e}); retrying"));
                tokio::time::sleep(Duration::from_millis(50 * tries)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn one_poll(
    addr: SocketAddr,
    host: &str,
    body: Bytes,
    connect: &tokio::sync::Semaphore,
) -> Result<(Outcome, Guard)> {
    let stream = connect_with_retry(addr, connect).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let req = Request::post("/api/v1/poll")
        .header("host", host)
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let exchange = async move {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, Error>((Outcome::Raw { at: Instant::now(), status, body }, sender))
    };
    tokio::pin!(exchange);
    let mut conn = Box::pin(conn);
    let (outcome, sender) = tokio::select! {
        biased;
        // The connection first: it reads the socket and hands the answer over, which the
        // exchange then finds ready in the same wake-up.
        c = &mut conn => {
            c?;
            let (o, _) = exchange.await?;
            return Ok((o, Box::new(())));
        }
        r = &mut exchange => r?,
    };
    Ok((outcome, Box::new((sender, conn))))
}

/// The same long poll over a plain socket: a hand-written HTTP/1.1 request and a minimal
/// response reader (status line, Content-Length or chunked). Costs this process a fraction
/// of hyper's CPU per answer, which matters when 10 000 answers and the server share two
/// cores: every microsecond spent here is added to the latencies measured.
async fn one_poll_raw(
    addr: SocketAddr,
    host: &str,
    body: Bytes,
    connect: &tokio::sync::Semaphore,
) -> Result<(Outcome, Guard)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = connect_with_retry(addr, connect).await?;
    stream.set_nodelay(true)?;
    let mut req = format!(
        "POST /api/v1/poll HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    stream.write_all(&req).await?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(format!("connection closed after {} bytes of answer", buf.len()).into());
        }
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = std::str::from_utf8(&buf[..head_end])?;
        let start = head_end + 4;
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let complete = match header("content-length") {
            Some(cl) => buf.len() >= start + cl.parse::<usize>()?,
            None if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) => {
                buf.ends_with(b"0\r\n\r\n")
            }
            None => false,
        };
        if !complete {
            continue;
        }
        let at = Instant::now();
        let status: u16 = head.split_whitespace().nth(1).ok_or("no status")?.parse()?;
        let body = match header("content-length") {
            Some(cl) => Bytes::copy_from_slice(&buf[start..start + cl.parse::<usize>()?]),
            None => dechunk(&buf[start..])?,
        };
        return Ok((Outcome::Raw { at, status: StatusCode::from_u16(status)?, body }, Box::new(stream)));
    }
}

fn dechunk(mut b: &[u8]) -> Result<Bytes> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end])?.split(';').next().unwrap_or("").trim(), 16)?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(Bytes::from(out));
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Parses a raw answer: with an update, empty (busy: refused as a long poll), or failed.
fn classify(o: Outcome) -> Outcome {
    let Outcome::Raw { at, status, body } = o else { return o };
    if !status.is_success() {
        return Outcome::Failed { at, error: format!("{status}: {}", String::from_utf8_lossy(&body)) };
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return Outcome::Failed { at, error: format!("bad JSON: {e}") },
    };
    if v.get("updates").and_then(Value::as_object).is_some_and(|u| !u.is_empty()) {
        Outcome::Update(at)
    } else {
        let busy = v.get("poll_after_ms").and_then(Value::as_u64).unwrap_or(0) >= 5_000;
        Outcome::Empty { at, busy }
    }
}

static NOTES: AtomicUsize = AtomicUsize::new(0);
pub(crate) fn tracing_note(msg: &str) {
    // At most a few such lines, not ten thousand.
    if NOTES.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!("  note: {msg}");
    }
}

/// Spawns `n` long polls on `topic` (instances `<prefix>-<i>`, each holding `held`).
#[allow(clippy::too_many_arguments)] // the park settings, passed through as given
pub(crate) fn spawn_group(
    addr: SocketAddr,
    host: &str,
    topic: &str,
    held: Option<u64>,
    n: usize,
    prefix: &str,
    wait_ms: u64,
    connect: Arc<tokio::sync::Semaphore>,
    raw: bool,
) -> Group {
    let results = Arc::new(Mutex::new(vec![None; n]));
    let answered = Arc::new(AtomicUsize::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let body = json!({
            "consumer": {"instance": format!("{prefix}-{i}"), "labels": {"region": format!("region-{}", i % 10), "app": "scale"}},
            "topics": {topic: held},
            "wait_ms": wait_ms,
        });
        let body = Bytes::from(serde_json::to_vec(&body).expect("json"));
        let (results, answered, connected, connect, host) =
            (results.clone(), answered.clone(), connected.clone(), connect.clone(), host.to_owned());
        tasks.push(tokio::spawn(async move {
            connected.fetch_add(1, Ordering::Relaxed);
            let r = if raw {
                one_poll_raw(addr, &host, body, &connect).await
            } else {
                one_poll(addr, &host, body, &connect).await
            };
            let (outcome, guard) = match r {
                Ok((o, g)) => (o, Some(g)),
                Err(e) => (Outcome::Failed { at: Instant::now(), error: e.to_string() }, None),
            };
            results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(outcome);
            answered.fetch_add(1, Ordering::Relaxed);
            if guard.is_some() {
                // hold the connection until the run ends (the task is aborted then)
                std::future::pending::<()>().await
            }
        }));
    }
    Group { results, answered, connected, tasks }
}
