//! The poller honours the server's `Retry-After` on a refused poll (429 `too_many_attempts`,
//! 503 `busy`/`storage_unavailable`): it waits at least that long before it polls again,
//! instead of its own (shorter) backoff. A fake server answers the first poll 503 with
//! `Retry-After: 2`, and notes when each poll arrives.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use imprint_client::Client;

#[tokio::test]
async fn a_refused_poll_waits_for_retry_after() {
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = arrivals.clone();
    let app = axum::Router::new().route(
        "/api/v1/poll",
        post(move || {
            let seen = seen.clone();
            async move {
                let first = {
                    let mut a = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    a.push(Instant::now());
                    a.len() == 1
                };
                if first {
                    let mut h = HeaderMap::new();
                    h.insert("retry-after", "2".parse().expect("header"));
                    let body = r#"{"error": {"code": "busy", "message": "long-poll capacity reached"}}"#;
                    (StatusCode::SERVICE_UNAVAILABLE, h, body).into_response()
                } else {
                    (StatusCode::OK, r#"{"updates": {}, "missing": {"t": "no_version_in_scope"}, "poll_after_ms": 0}"#)
                        .into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Its own backoff would retry after 50–100 ms.
    let client = Client::builder(&url)
        .backoff(Duration::from_millis(100), Duration::from_millis(200))
        .long_poll(Duration::from_millis(200))
        .initial_wait(Duration::from_millis(100))
        .build()
        .expect("client");
    let _sub = client.subscribe_bytes("t").await.expect("subscribe");
    imprint_testkit::eventually("a second poll", || async {
        let a = arrivals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (a.len() >= 2).then(|| a[1] - a[0])
    })
    .await;
    let a = arrivals.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    assert!(a[1] - a[0] >= Duration::from_secs(2), "polled again after {:?}, before Retry-After", a[1] - a[0]);
    client.shutdown().await;
}
