//! The Imprint server: the `/api/v1` router, operations endpoints, the console, and the
//! process lifecycle (migrations, background jobs, graceful shutdown).
#![forbid(unsafe_code)]

pub mod api;
pub mod apollo;
mod application;
pub mod error;
pub mod extract;
pub mod fairness;
pub mod grpc;
pub mod headers;
mod listener;
mod live;
pub mod ofrep;
pub mod payload;
pub mod spring;
mod upload;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use imprint_service::Imprint;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub use application::{AdminUser, Application, Database, Settings, ShutdownHandle, MIN_BOOTSTRAP_TOKEN_CHARS};
pub use grpc::GrpcSettings;
pub use listener::{serve_with_limits, ConnectionLimits};

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

/// The metric handles of one (method, route, status): looked up once, then reused (a
/// registry lookup with three labels per request is a measurable part of a poll).
type RouteMetrics = (metrics::Counter, metrics::Histogram);

fn route_metrics(method: &axum::http::Method, route: &str, status: u16) -> RouteMetrics {
    // Keyed by where the route's text lives (axum keeps one `Arc<str>` per route, so the
    // address names the route) — no String is built to look a request up. The method is
    // folded first: a client picks it, and made-up ones must not make series (or entries).
    type Key = (usize, usize, &'static str, u16);
    static CACHE: OnceLock<std::sync::RwLock<std::collections::HashMap<Key, RouteMetrics>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let method = method_label(method);
    let key = (route.as_ptr() as usize, route.len(), method, status);
    if let Some(m) = cache.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return m.clone();
    }
    let r = route.to_owned();
    let handles = (
        metrics::counter!("imprint_http_requests_total", "method" => method, "route" => r.clone(), "status" => status.to_string()),
        metrics::histogram!("imprint_http_request_seconds", "method" => method, "route" => r),
    );
    cache.write().unwrap_or_else(|e| e.into_inner()).insert(key, handles.clone());
    handles
}

/// The `method` label: one of the standard methods, or `other` for any other string.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    KNOWN.iter().find(|m| *m == method).map_or("other", |m| m.as_str())
}

/// Counts requests by route and status, and times them.
async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let route = route.as_ref().map_or("other", |p| p.as_str());
    let (count, time) = route_metrics(&method, route, resp.status().as_u16());
    count.increment(1);
    time.record(started.elapsed().as_secs_f64());
    resp
}

/// The API and operations endpoints (no console): what consumers, publishers and
/// monitoring talk to. Calls outside this process's roles are refused (`role_gate`).
pub fn api_router(imprint: Imprint) -> Router {
    metrics_handle();
    let router = Router::new().merge(api::routes()).merge(apollo::routes());
    // Fair serving (server/src/fairness.rs): per-application adaptive limits on the reads.
    let router = match fairness::layer(&imprint) {
        Some(f) => router.layer(axum::middleware::from_fn_with_state(f, fairness::fair)),
        None => router,
    };
    router
        .layer(axum::middleware::from_fn_with_state(imprint.clone(), token_before_body))
        .route_layer(axum::middleware::from_fn(track))
        .layer(axum::middleware::from_fn_with_state(imprint.clone(), role_gate))
        .with_state(imprint)
}

/// Refuses anonymous calls to the API's write endpoints (every method but GET and HEAD
/// under `/api/v1/`, except the poll — a read — unless polls need a token, and then the
/// OpenFeature endpoints too) with 401 before
/// anything reads their body: a client without a token cannot make the server wait for,
/// or buffer, a body it would refuse anyway. Whether the token is valid is the handler's
/// `Auth` to say (a malformed `Authorization` header is refused here too, as there).
async fn token_before_body(
    axum::extract::State(imprint): axum::extract::State<Imprint>,
    req: Request,
    next: Next,
) -> Response {
    use axum::http::Method;
    let path = req.uri().path();
    let write = path.starts_with("/api/v1/") && *req.method() != Method::GET && *req.method() != Method::HEAD;
    let exempt = path == "/api/v1/poll" && !imprint.config().poll_auth_required;
    // OpenFeature evaluations and their event stream are reads, like polls: refused here
    // without a token only when polls need one.
    let ofrep = path.starts_with("/ofrep/") && imprint.config().poll_auth_required;
    if (!write || exempt) && !ofrep {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    match extract::bearer(&parts) {
        Ok(Some(_)) => next.run(Request::from_parts(parts, body)).await,
        Ok(None) => {
            metrics::counter!("imprint_anonymous_writes_refused_total").increment(1);
            axum::response::IntoResponse::into_response(error::ApiError(imprint_service::Error::Unauthorized(format!(
                "{} {} needs a bearer token (Authorization: Bearer <token>)",
                parts.method,
                parts.uri.path()
            ))))
        }
        Err(e) => axum::response::IntoResponse::into_response(e),
    }
}

/// The metrics listener's router (`IMPRINT_METRICS_ADDR`): `/metrics` and nothing else,
/// for a port only the monitoring network reaches.
pub fn metrics_router() -> Router {
    metrics_handle();
    Router::new().route("/metrics", axum::routing::get(api::ops::metrics_text))
}

/// Which role answers a request: `None` for the operations endpoints every process
/// answers (health, readiness, metrics, the OpenAPI document).
fn role_of(method: &axum::http::Method, path: &str) -> Option<&'static str> {
    use axum::http::Method;
    const EVERYWHERE: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"];
    if EVERYWHERE.contains(&path) {
        return None;
    }
    if path.starts_with("/apollo/")
        || path.starts_with("/ofrep/")
        || path.starts_with("/spring/")
        || path == "/api/v1/poll"
    {
        return Some("api");
    }
    if path.starts_with("/api/") {
        // Reads (GET/HEAD) are answered by both; everything else is publishing.
        return Some(if *method == Method::GET || *method == Method::HEAD { "read" } else { "publish" });
    }
    Some("console")
}

/// Refuses what this process's roles do not serve, with a message naming the role that does.
async fn role_gate(axum::extract::State(imprint): axum::extract::State<Imprint>, req: Request, next: Next) -> Response {
    let roles = imprint.config().roles;
    let role = role_of(req.method(), req.uri().path());
    let served = match role {
        None => true,
        Some("api") => roles.api,
        Some("read") => roles.api || roles.publish,
        Some("publish") => roles.publish,
        Some(_) => roles.console,
    };
    if served {
        return next.run(req).await;
    }
    let needed = match role {
        Some("read") => "api or publish",
        Some(r) => r,
        None => "any",
    };
    metrics::counter!("imprint_role_refused_total").increment(1);
    let message = format!(
        "this server runs the roles {roles}; {} {} is served by servers with the {needed} role",
        req.method(),
        req.uri().path()
    );
    axum::response::IntoResponse::into_response(error::ApiError::not_found(message))
}

/// Refuses cross-site requests to the console's server functions (CSRF): the browser
/// says where a request comes from in `Origin` or `Sec-Fetch-Site`; only this site may post.
async fn same_origin_only(req: Request, next: Next) -> Response {
    use axum::http::{header, Method};
    let path = req.uri().path();
    if req.method() != Method::GET && (path.starts_with("/console/fn/") || path.starts_with("/console/upload/")) {
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
            return axum::response::IntoResponse::into_response(error::ApiError(imprint_service::Error::Forbidden(
                "cross-site request refused: console actions must come from the console itself".into(),
            )));
        }
    }
    next.run(req).await
}

/// Reverse proxies whose forwarding headers are believed (`IMPRINT_TRUSTED_PROXIES`).
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Comma- or space-separated CIDRs (`10.0.0.0/8, 192.168.1.7`); empty: trust none.
    pub fn parse(s: &str) -> Result<Self, String> {
        s.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("{p:?} is not a CIDR such as 10.0.0.0/8 or an address"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client behind a request from `peer`: the peer itself unless it is a trusted
    /// proxy; then the nearest address in `X-Forwarded-For` (or `Forwarded: for=`) that
    /// is not a trusted proxy. Addresses a client wrote itself (further left) are never
    /// believed.
    pub fn client(&self, peer: std::net::IpAddr, headers: &axum::http::HeaderMap) -> std::net::IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut chain: Vec<std::net::IpAddr> = Vec::new();
        for v in headers.get_all("forwarded") {
            for element in v.to_str().unwrap_or("").split(',') {
                for pair in element.split(';') {
                    if let Some((k, val)) = pair.trim().split_once('=') {
                        if k.trim().eq_ignore_ascii_case("for") {
                            if let Some(ip) = parse_forwarded_ip(val) {
                                chain.push(ip);
                            }
                        }
                    }
                }
            }
        }
        if chain.is_empty() {
            for v in headers.get_all("x-forwarded-for") {
                chain.extend(v.to_str().unwrap_or("").split(',').filter_map(parse_forwarded_ip));
            }
        }
        chain.into_iter().rev().find(|ip| !self.trusts(*ip)).unwrap_or(peer)
    }
}

/// `1.2.3.4`, `"[2001:db8::1]:443"`, `1.2.3.4:80`
fn parse_forwarded_ip(s: &str) -> Option<std::net::IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
}

/// Puts the client's address (`ClientIp`) on every request, per `TrustedProxies`.
async fn client_ip(
    axum::extract::State(trusted): axum::extract::State<TrustedProxies>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    if let Some(peer) = peer {
        let ip = trusted.client(peer, req.headers());
        req.extensions_mut().insert(imprint_service::auth::ClientIp(ip));
    }
    next.run(req).await
}

/// Console server functions read at most this much (sign-in, forms): a bigger body is
/// refused with 413 before it is read.
pub const CONSOLE_MAX_BODY_BYTES: usize = 1024 * 1024;

async fn console_body_limit(req: Request, next: Next) -> Response {
    use axum::http::header;
    if req.uri().path().starts_with("/console/fn/") {
        let declared =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if let Some(size) = declared.filter(|n| *n > CONSOLE_MAX_BODY_BYTES as u64) {
            let limit = CONSOLE_MAX_BODY_BYTES as u64;
            let e = imprint_service::Error::PayloadTooLarge { size, limit };
            return axum::response::IntoResponse::into_response(error::ApiError(e));
        }
        // Without a length (chunked), the body is cut off at the limit while it is read.
        let (parts, body) = req.into_parts();
        let limited = axum::body::Body::new(http_body_util::Limited::new(body, CONSOLE_MAX_BODY_BYTES));
        return next.run(Request::from_parts(parts, limited)).await;
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
    trusted: TrustedProxies,
) -> Router {
    use imprint_app::{shell, App};
    use leptos::prelude::provide_context;
    use leptos_axum::{generate_route_list, LeptosRoutes};

    if !imprint.config().roles.console {
        return api_router(imprint)
            .fallback(|| async {
                error::ApiError::not_found("this server does not serve the console (IMPRINT_ROLES has no `console`)")
            })
            .layer(axum::middleware::from_fn_with_state(trusted, client_ip))
            .layer(axum::middleware::from_fn(headers::security_headers));
    }
    let routes = generate_route_list(App);
    let ctx = imprint.clone();
    let context = move || {
        provide_context(ctx.clone());
        // The CSP header names this nonce: the inline scripts Leptos writes must carry it.
        let nonce = leptos::prelude::use_context::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<headers::CspNonce>().cloned());
        if let Some(n) = nonce {
            provide_context(leptos::nonce::Nonce::from_value(n.0));
        }
    };
    let console = Router::new()
        .leptos_routes_with_context(&leptos_options, routes, context, {
            let options = leptos_options.clone();
            move || shell(options.clone())
        })
        .fallback(leptos_axum::file_and_error_handler(shell))
        .with_state(leptos_options)
        .merge(
            Router::new()
                .route("/console/upload/{topic}", axum::routing::post(upload::console_upload))
                .route("/console/download/{topic}/{n}", axum::routing::get(upload::console_download))
                .route("/console/events", axum::routing::get(live::console_events))
                .with_state(imprint.clone()),
        )
        .layer(axum::middleware::from_fn(same_origin_only))
        .layer(axum::middleware::from_fn(console_body_limit))
        .layer(sessions);
    api_router(imprint)
        .merge(console)
        .layer(axum::middleware::from_fn_with_state(trusted, client_ip))
        .layer(axum::middleware::from_fn(headers::security_headers))
}
