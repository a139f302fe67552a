//! The Imprint server: the `/api/v1` router, operations endpoints, the console, and the
//! process lifecycle (migrations, background jobs, graceful shutdown).
#![forbid(unsafe_code)]

pub mod api;
pub mod error;
pub mod extract;
pub mod openapi;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use imprint_service::Imprint;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// The process-wide Prometheus recorder (installed once, also when tests start many apps).
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0])
            .and_then(|b| b.install_recorder())
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "metrics recorder not installed");
                PrometheusBuilder::new().build_recorder().handle()
            })
    })
}

/// Counts requests by route and status, and times them.
async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "other".into());
    let method = req.method().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("imprint_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("imprint_http_request_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// The API and operations endpoints (no console): what consumers, publishers and
/// monitoring talk to.
pub fn api_router(imprint: Imprint) -> Router {
    metrics_handle();
    Router::new()
        .merge(api::routes())
        .route_layer(axum::middleware::from_fn(track))
        .with_state(imprint)
}

/// Refuses cross-site requests to the console's server functions (CSRF): the browser
/// says where a request comes from in `Origin` or `Sec-Fetch-Site`; only this site may post.
async fn same_origin_only(req: Request, next: Next) -> Response {
    use axum::http::{header, Method};
    if req.method() != Method::GET && req.uri().path().starts_with("/console/fn/") {
        let h = req.headers();
        let host = h.get("x-forwarded-host").or_else(|| h.get(header::HOST)).and_then(|v| v.to_str().ok());
        let same = match (
            h.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
            h.get("sec-fetch-site").and_then(|v| v.to_str().ok()),
        ) {
            (Some(origin), _) => {
                let origin_host = origin.split_once("://").map(|(_, rest)| rest.trim_end_matches('/'));
                origin_host.is_some() && origin_host == host
            }
            (None, Some(site)) => site == "same-origin" || site == "none",
            (None, None) => false,
        };
        if !same {
            metrics::counter!("imprint_csrf_refused_total").increment(1);
            return crate::error::ApiError::with_code(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                "cross-site request refused: console actions must come from the console itself",
            );
        }
    }
    next.run(req).await
}

/// Session cookies stored in Postgres (tower-sessions): HttpOnly, SameSite=Lax, Secure
/// when the console is served over HTTPS, expiring after 12 hours of inactivity.
pub async fn session_layer(
    imprint: &Imprint,
    secure: bool,
) -> Result<tower_sessions::SessionManagerLayer<tower_sessions_sqlx_store::PostgresStore>, String> {
    use tower_sessions::cookie::{time::Duration, SameSite};
    use tower_sessions::{Expiry, SessionManagerLayer};
    let store = tower_sessions_sqlx_store::PostgresStore::new(imprint.pool().clone());
    store.migrate().await.map_err(|e| format!("session store: {e}"))?;
    let cleanup = store.clone();
    tokio::spawn(async move {
        use tower_sessions::ExpiredDeletion;
        let _ = cleanup.continuously_delete_expired(std::time::Duration::from_secs(3600)).await;
    });
    Ok(SessionManagerLayer::new(store)
        .with_name("imprint_session")
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_secure(secure)
        .with_expiry(Expiry::OnInactivity(Duration::hours(12))))
}

/// Everything: the API plus the Leptos console (pages, server functions, static files).
pub fn full_router(
    imprint: Imprint,
    leptos_options: leptos::config::LeptosOptions,
    sessions: tower_sessions::SessionManagerLayer<tower_sessions_sqlx_store::PostgresStore>,
) -> Router {
    use imprint_app::{shell, App};
    use leptos::prelude::provide_context;
    use leptos_axum::{generate_route_list, LeptosRoutes};

    let routes = generate_route_list(App);
    let ctx = imprint.clone();
    let console = Router::new()
        .leptos_routes_with_context(&leptos_options, routes, move || provide_context(ctx.clone()), {
            let options = leptos_options.clone();
            move || shell(options.clone())
        })
        .fallback(leptos_axum::file_and_error_handler(shell))
        .with_state(leptos_options)
        .layer(axum::middleware::from_fn(same_origin_only))
        .layer(sessions);
    api_router(imprint).merge(console)
}
