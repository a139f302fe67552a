//! The conformance adapter of the Rust `imprint-client`: a tiny HTTP service the harness
//! drives (the adapter protocol in `conformance/README.md`). It listens on 127.0.0.1 on a
//! free port (or `--port N`) and prints `listening on http://<addr>` as its first line.
#![allow(clippy::unwrap_used)] // a poisoned lock in a test adapter: crash loudly

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use imprint_client::{Client, Payload, Subscription};
use imprint_conformance::adapter::{Capabilities, CorruptCache, Decoder, NewClient, Observed, TopicSpec};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Entry {
    client: Arc<Client>,
    subs: Mutex<HashMap<String, Arc<Watched>>>,
}

/// A subscription and what its change listener has seen: (calls, last value).
struct Watched {
    sub: Subscription<Value>,
    heard: Arc<Mutex<(u64, Value)>>,
    listener: tokio::task::JoinHandle<()>,
}

impl Watched {
    /// Registers the listener (`changes()`) now, right after `subscribe` returned.
    fn new(sub: Subscription<Value>) -> Watched {
        let heard = Arc::new(Mutex::new((0, Value::Null)));
        let mut changes = sub.changes();
        let h = heard.clone();
        let listener = tokio::spawn(async move {
            while let Some(v) = changes.next().await {
                let mut h = h.lock().unwrap();
                h.0 += 1;
                h.1 = (*v).clone();
            }
        });
        Watched { sub, heard, listener }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

#[derive(Default)]
struct Adapter {
    next: AtomicU64,
    clients: Mutex<HashMap<String, Arc<Entry>>>,
}

type Shared = Arc<Adapter>;
/// A failure answer: the status and `{"error": message}`.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(imprint_conformance::adapter::Failure { error: self.1 })).into_response()
    }
}

fn refused(e: JsonRejection) -> Failure {
    Failure(StatusCode::BAD_REQUEST, e.body_text())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut port = 0u16;
    while let Some(a) = args.next() {
        if a == "--port" {
            port = args.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        }
    }
    let app = Router::new()
        .route("/", get(capabilities))
        .route("/clients", post(create))
        .route("/clients/{id}/topics/{topic}", get(observe))
        .route("/clients/{id}/topics", post(subscribe_later))
        .route("/clients/{id}/shutdown", post(shutdown))
        .route("/clients/{id}", delete(remove))
        .route("/cache/corrupt", post(corrupt_cache))
        .with_state(Shared::default());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // The harness holds our stdin (a pipe) open while it needs us: its end means the harness
    // is gone (even killed), so stop. Not for a terminal or /dev/null.
    use std::os::unix::fs::FileTypeExt;
    if std::fs::metadata("/proc/self/fd/0").is_ok_and(|m| m.file_type().is_fifo()) {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
    }
    axum::serve(listener, app).await
}

async fn capabilities() -> Json<Capabilities> {
    let caps = [
        "json",
        "bytes",
        "file",
        "cache",
        "corrupt_cache",
        "snapshot",
        "startup_fallback",
        "token",
        "shutdown",
        "listener",
        "subscribe",
        "regions",
        "sealed_snapshots",
    ];
    Json(Capabilities { name: "rust".into(), capabilities: caps.iter().map(|c| c.to_string()).collect() })
}

async fn create(
    State(adapter): State<Shared>,
    spec: Result<Json<NewClient>, JsonRejection>,
) -> Result<Json<Value>, Failure> {
    let Json(spec) = spec.map_err(refused)?;
    let bad = |e: imprint_client::Error| Failure(StatusCode::BAD_REQUEST, e.to_string());
    let ms = Duration::from_millis;
    let s = &spec.settings;
    let mut b = Client::builder(&spec.url).instance(&spec.instance).labels(spec.labels.clone());
    if let Some(t) = &spec.token {
        b = b.token(t);
    }
    if let Some(d) = &spec.cache_dir {
        b = b.cache_dir(d);
    }
    if let Some(k) = &spec.snapshot_keyring {
        b = b.snapshot_keyring(k);
    }
    if let Some(u) = &spec.snapshot_store {
        b = b.snapshot_store(u);
    }
    if let Some(v) = s.long_poll_ms {
        b = b.long_poll(ms(v));
    }
    if let Some(v) = s.initial_wait_ms {
        b = b.initial_wait(ms(v));
    }
    if let Some(v) = s.request_timeout_ms {
        b = b.request_timeout(ms(v));
    }
    if let (Some(lo), Some(hi)) = (s.backoff_min_ms, s.backoff_max_ms) {
        b = b.backoff(ms(lo), ms(hi));
    }
    if let Some(v) = s.startup_fallback {
        b = b.startup_fallback(v);
    }
    if let Some(v) = s.recheck_rejected_ms {
        b = b.recheck_rejected(ms(v));
    }
    let client = Arc::new(b.build().map_err(bad)?);
    // Subscribed concurrently, as an application starting several would; each waits at
    // most `initial_wait` for the shared first poll.
    let subscribing = spec.topics.iter().map(|t| subscribe(&client, t));
    let subs =
        futures::future::join_all(subscribing).await.into_iter().collect::<Result<HashMap<_, _>, _>>().map_err(bad)?;
    let id = format!("c{}", adapter.next.fetch_add(1, Ordering::SeqCst) + 1);
    adapter.clients.lock().unwrap().insert(id.clone(), Arc::new(Entry { client, subs: Mutex::new(subs) }));
    Ok(Json(json!({ "id": id })))
}

/// One subscription, its decoder as `t` says, with its listener registered.
async fn subscribe(client: &Client, t: &TopicSpec) -> imprint_client::Result<(String, Arc<Watched>)> {
    let sub = match t.decoder {
        Decoder::Json => client.subscribe_json::<Value>(&t.name, t.default.clone().unwrap_or(Value::Null)).await,
        Decoder::Bytes => {
            client
                .subscribe_with(&t.name, Value::String(String::new()), |b| {
                    Ok::<_, std::convert::Infallible>(Value::String(String::from_utf8_lossy(b).into_owned()))
                })
                .await
        }
        Decoder::File => client.subscribe_file_with(&t.name, Value::Null, describe_file).await,
    }?;
    Ok((t.name.clone(), Arc::new(Watched::new(sub))))
}

/// `POST /clients/{id}/topics`: one more subscription on a running client.
async fn subscribe_later(
    State(adapter): State<Shared>,
    Path(id): Path<String>,
    spec: Result<Json<TopicSpec>, JsonRejection>,
) -> Result<StatusCode, Failure> {
    let Json(spec) = spec.map_err(refused)?;
    let e = entry(&adapter, &id)?;
    if e.subs.lock().unwrap().contains_key(&spec.name) {
        return Err(Failure(StatusCode::BAD_REQUEST, format!("client {id} has {} already", spec.name)));
    }
    let (name, w) = subscribe(&e.client, &spec).await.map_err(|e| Failure(StatusCode::BAD_REQUEST, e.to_string()))?;
    e.subs.lock().unwrap().insert(name, w);
    Ok(StatusCode::NO_CONTENT)
}

/// The file decoder's value: what is on disk, read back (not what the update claimed).
fn describe_file(p: &Payload<'_>) -> Result<Value, String> {
    let path = p.path().ok_or("no file")?;
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(json!({ "size": bytes.len(), "sha256": imprint_conformance::sha256_hex(&bytes) }))
}

fn entry(adapter: &Adapter, id: &str) -> Result<Arc<Entry>, Failure> {
    adapter.clients.lock().unwrap().get(id).cloned().ok_or(Failure(StatusCode::NOT_FOUND, format!("no client {id}")))
}

async fn observe(
    State(adapter): State<Shared>,
    Path((id, topic)): Path<(String, String)>,
) -> Result<Json<Observed>, Failure> {
    let e = entry(&adapter, &id)?;
    let w = e
        .subs
        .lock()
        .unwrap()
        .get(&topic)
        .cloned()
        .ok_or(Failure(StatusCode::NOT_FOUND, format!("client {id} has no topic {topic}")))?;
    let c = w.sub.current();
    let (changes, last_change) = w.heard.lock().unwrap().clone();
    Ok(Json(Observed {
        value: (*c.value).clone(),
        version: c.version,
        source: c.source.as_str().into(),
        pinned: c.pinned,
        changes,
        last_change,
        served_region: e.client.served_region(&topic),
    }))
}

async fn shutdown(State(adapter): State<Shared>, Path(id): Path<String>) -> Result<StatusCode, Failure> {
    entry(&adapter, &id)?.client.shutdown().await;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove(State(adapter): State<Shared>, Path(id): Path<String>) -> Result<StatusCode, Failure> {
    let e =
        adapter.clients.lock().unwrap().remove(&id).ok_or(Failure(StatusCode::NOT_FOUND, format!("no client {id}")))?;
    e.client.shutdown().await;
    Ok(StatusCode::NO_CONTENT)
}

/// The Rust client's cache layout: `<dir>/<topic>/v<version>-<sha>.bin` plus `meta.json`.
/// Every payload file gets its bytes flipped (same length), the checksums stay.
async fn corrupt_cache(req: Result<Json<CorruptCache>, JsonRejection>) -> Result<StatusCode, Failure> {
    let Json(req) = req.map_err(refused)?;
    let io = |e: std::io::Error| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let dir = std::path::Path::new(&req.cache_dir).join(&req.topic);
    let mut spoiled = 0;
    if !dir.is_dir() {
        return Err(Failure(StatusCode::NOT_FOUND, format!("no cached payload in {}", dir.display())));
    }
    for f in std::fs::read_dir(&dir).map_err(io)? {
        let path = f.map_err(io)?.path();
        if path.extension().is_some_and(|x| x == "bin") {
            let bytes: Vec<u8> = std::fs::read(&path).map_err(io)?.iter().map(|b| !b).collect();
            std::fs::write(&path, bytes).map_err(io)?;
            spoiled += 1;
        }
    }
    if spoiled == 0 {
        return Err(Failure(StatusCode::NOT_FOUND, format!("no cached payload in {}", dir.display())));
    }
    Ok(StatusCode::NO_CONTENT)
}
