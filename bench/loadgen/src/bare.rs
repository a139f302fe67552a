//! `bare-server`: a bare axum JSON handler, the CPU reference for the poll path.
use crate::procfs::raise_nofile;
use crate::Result;
use clap::Args;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Args)]
pub(crate) struct BareArgs {
    #[arg(long, default_value = "127.0.0.1:3950")]
    pub(crate) addr: SocketAddr,
    /// Answer with this JSON (read once, serialised per request like any handler's
    /// answer) instead of an empty poll answer: the reference for answers of that size.
    #[arg(long)]
    pub(crate) answer: Option<std::path::PathBuf>,
}

async fn bare_poll(
    axum::extract::State(answer): axum::extract::State<Arc<Value>>,
    axum::Json(req): axum::Json<Value>,
) -> axum::Json<Value> {
    std::hint::black_box(&req);
    axum::Json(Value::clone(&answer))
}

pub(crate) async fn bare_server(a: BareArgs) -> Result<()> {
    raise_nofile();
    let answer: Value = match &a.answer {
        Some(path) => serde_json::from_slice(&std::fs::read(path)?)?,
        None => json!({"updates": {}, "missing": {}, "poll_after_ms": 0}),
    };
    let app = axum::Router::new()
        .route("/api/v1/poll", axum::routing::post(bare_poll))
        .fallback(axum::routing::post(bare_poll))
        .with_state(Arc::new(answer));
    let listener = tokio::net::TcpListener::bind(a.addr).await?;
    eprintln!("bare axum JSON handler on http://{} (pid {})", a.addr, std::process::id());
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
            tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
        })
        .await?;
    Ok(())
}
