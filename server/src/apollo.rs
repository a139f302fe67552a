//! Apollo's config-service protocol under `/apollo` (a client's config-service URL is
//! `http://imprint:3000/apollo`): `/configs`, `/configfiles/json`, `/configfiles` and the
//! long-polled `/notifications/v2`, with Apollo's request signatures when a namespace's
//! binding has a secret (each namespace is checked with its own binding's secret). What a
//! client gets is decided by the service (`imprint_service::apollo`).
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use hmac::{Hmac, Mac};
use imprint_service::apollo::{ApolloClient, ApolloSignature};
use imprint_service::Imprint;
use serde::Deserialize;
use serde_json::json;

/// How far a request's `Timestamp` may be from the server's clock (Apollo: 60 s).
const TIMESTAMP_TOLERANCE_MS: i64 = 60_000;
/// At most this many namespaces in one notifications request.
const MAX_NOTIFICATIONS: usize = 100;

pub fn routes() -> Router<Imprint> {
    Router::new()
        .route("/apollo/configs/{app_id}/{cluster}/{namespace}", get(configs))
        .route("/apollo/configfiles/json/{app_id}/{cluster}/{namespace}", get(config_json))
        .route("/apollo/configfiles/{app_id}/{cluster}/{namespace}", get(config_text))
        .route("/apollo/notifications/v2", get(notifications))
}

#[derive(Deserialize)]
pub struct ConfigQuery {
    #[serde(rename = "releaseKey")]
    release_key: Option<String>,
    ip: Option<String>,
    label: Option<String>,
    #[serde(rename = "dataCenter")]
    data_center: Option<String>,
}

#[derive(Deserialize)]
pub struct NotificationQuery {
    #[serde(rename = "appId")]
    app_id: Option<String>,
    cluster: Option<String>,
    notifications: Option<String>,
    ip: Option<String>,
    #[serde(rename = "dataCenter")]
    data_center: Option<String>,
}

#[derive(Deserialize)]
struct KnownNotification {
    #[serde(rename = "namespaceName")]
    namespace_name: String,
    #[serde(rename = "notificationId", default = "minus_one")]
    notification_id: i64,
}

fn minus_one() -> i64 {
    -1
}

/// The request's Apollo signature, if it carries one: `Authorization: Apollo
/// {appId}:{base64(HMAC-SHA1(secret, timestamp + "\n" + path_with_query))}` and
/// `Timestamp: <epoch ms>`, over the raw request target as received (with or without the
/// `/apollo` prefix: the Java client signs the whole path, some clients the part after
/// their configured URL). The service checks it against the secret of each namespace's
/// own binding, one at a time.
fn signature(imprint: &Imprint, headers: &HeaderMap, uri: &Uri) -> Option<ApolloSignature> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().unwrap_or("").to_owned();
    let ts = headers.get("timestamp").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let now_ms = imprint.now().timestamp_millis();
    let full = uri.path_and_query().map(|pq| pq.as_str().to_owned()).unwrap_or_default();
    let relative = full.strip_prefix("/apollo").unwrap_or(&full).to_owned();
    let given = auth
        .strip_prefix("Apollo ")
        .and_then(|rest| rest.rsplit_once(':'))
        .and_then(|(_, sig)| base64::engine::general_purpose::STANDARD.decode(sig.trim()).ok());
    Some(ApolloSignature::new(move |secret: &str| {
        let ts_ms: i64 = ts.parse().map_err(|_| "a signed request needs a Timestamp header (epoch ms)".to_owned())?;
        if (now_ms - ts_ms).abs() > TIMESTAMP_TOLERANCE_MS {
            return Err("the request's Timestamp is too far from the server's clock".into());
        }
        let given = given
            .as_ref()
            .ok_or_else(|| "a signed request needs Authorization: Apollo {appId}:{signature}".to_owned())?;
        for target in [&full, &relative] {
            let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) else { continue };
            mac.update(imprint_domain::apollo::string_to_sign(&ts, target).as_bytes());
            if mac.verify_slice(given).is_ok() {
                return Ok(());
            }
        }
        Err("the request's signature does not match the namespace's secret".into())
    }))
}

async fn resolve_config(
    imprint: &Imprint,
    (app_id, cluster, namespace): (String, String, String),
    q: &ConfigQuery,
    headers: &HeaderMap,
    uri: &Uri,
    peer: Option<std::net::IpAddr>,
) -> ApiResult<imprint_service::apollo::ApolloConfig> {
    let client = ApolloClient {
        peer,
        signature: signature(imprint, headers, uri),
        app_id,
        cluster,
        ip: q.ip.clone(),
        label: q.label.clone(),
        data_center: q.data_center.clone(),
    };
    Ok(imprint.apollo_config(&client, &namespace).await?)
}

/// `GET /configs/{appId}/{cluster}/{namespace}`: 200 with the configuration, 304 when the
/// client's `releaseKey` is the current one (never without one), 404 when nothing is
/// released to this client.
pub async fn configs(
    State(imprint): State<Imprint>,
    Path(p): Path<(String, String, String)>,
    ApiQuery(q): ApiQuery<ConfigQuery>,
    headers: HeaderMap,
    uri: Uri,
    crate::extract::ClientAddr(peer): crate::extract::ClientAddr,
) -> ApiResult<Response> {
    let (app_id, cluster) = (p.0.clone(), p.1.clone());
    let c = resolve_config(&imprint, p, &q, &headers, &uri, peer).await?;
    let client_key = q.release_key.as_deref().filter(|k| !k.is_empty() && *k != "-1");
    if client_key == Some(c.release_key.as_str()) {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    Ok(Json(json!({
        "appId": app_id,
        "cluster": cluster,
        "namespaceName": c.namespace,
        "configurations": c.configurations,
        "releaseKey": c.release_key,
    }))
    .into_response())
}

/// `GET /configfiles/json/{appId}/{cluster}/{namespace}`: the bare configurations.
pub async fn config_json(
    State(imprint): State<Imprint>,
    Path(p): Path<(String, String, String)>,
    ApiQuery(q): ApiQuery<ConfigQuery>,
    headers: HeaderMap,
    uri: Uri,
    crate::extract::ClientAddr(peer): crate::extract::ClientAddr,
) -> ApiResult<Response> {
    let c = resolve_config(&imprint, p, &q, &headers, &uri, peer).await?;
    Ok(Json(c.configurations).into_response())
}

/// `GET /configfiles/{appId}/{cluster}/{namespace}`: `.properties` text.
pub async fn config_text(
    State(imprint): State<Imprint>,
    Path(p): Path<(String, String, String)>,
    ApiQuery(q): ApiQuery<ConfigQuery>,
    headers: HeaderMap,
    uri: Uri,
    crate::extract::ClientAddr(peer): crate::extract::ClientAddr,
) -> ApiResult<Response> {
    let c = resolve_config(&imprint, p, &q, &headers, &uri, peer).await?;
    let text = imprint_domain::apollo::render_properties(&c.configurations);
    Ok(([(header::CONTENT_TYPE, "text/plain;charset=UTF-8")], text).into_response())
}

/// `GET /notifications/v2?appId=&cluster=&notifications=[{namespaceName, notificationId}]`:
/// answers as soon as a listed namespace changed past the given id, else 304 after the
/// hold (60 s).
pub async fn notifications(
    State(imprint): State<Imprint>,
    ApiQuery(q): ApiQuery<NotificationQuery>,
    headers: HeaderMap,
    uri: Uri,
    crate::extract::ClientAddr(peer): crate::extract::ClientAddr,
) -> ApiResult<Response> {
    let bad = |m: String| ApiError::invalid(m);
    let app_id = q.app_id.clone().filter(|a| !a.is_empty()).ok_or_else(|| bad("appId is required".into()))?;
    let cluster = q.cluster.clone().filter(|c| !c.is_empty()).unwrap_or_else(|| "default".into());
    let raw = q.notifications.as_deref().ok_or_else(|| bad("notifications is required".into()))?;
    let known: Vec<KnownNotification> = serde_json::from_str(raw)
        .map_err(|e| bad(format!("notifications must be a JSON list of {{namespaceName, notificationId}}: {e}")))?;
    if known.is_empty() || known.len() > MAX_NOTIFICATIONS || known.iter().any(|n| n.namespace_name.trim().is_empty()) {
        return Err(bad(format!("notifications lists 1 to {MAX_NOTIFICATIONS} namespaces, each with a name")));
    }
    let client = ApolloClient {
        peer,
        signature: signature(&imprint, &headers, &uri),
        app_id,
        cluster,
        ip: q.ip.clone(),
        label: None,
        data_center: q.data_center.clone(),
    };
    let known: Vec<(String, i64)> = known.into_iter().map(|n| (n.namespace_name, n.notification_id)).collect();
    let hold = imprint.config().apollo_hold;
    let changed = imprint.apollo_notifications(&client, &known, hold).await?;
    if changed.is_empty() {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let body: Vec<_> = changed
        .into_iter()
        .map(|n| {
            json!({
                "namespaceName": n.namespace,
                "notificationId": n.id,
                "messages": {"details": {n.key: n.id}},
            })
        })
        .collect();
    Ok(Json(body).into_response())
}
