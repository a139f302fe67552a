//! The console's file upload (`POST /console/upload/{topic}`): a multipart form from a
//! signed-in user, streamed like the API's multipart publish. A plain form post gets a
//! redirect (to the topic, or back to the form with the error); the console's script
//! (`Accept: application/json`) gets the API's JSON answer.
use crate::error::ApiError;
use crate::payload::publish_input;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use imprint_service::{Error, Imprint};
use tower_sessions::Session;

fn wants_json(req: &Request) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"))
}

fn back_with(path: &str, key: &str, message: &str) -> Response {
    Redirect::to(&format!("{path}?{key}={}#upload", urlencoding::encode(message))).into_response()
}

/// The signed-in user's caller identity, if any.
pub(crate) async fn session_caller(imprint: &Imprint, session: &Session) -> Option<imprint_service::Caller> {
    imprint_app::ssr::session_user(imprint, session).await.ok().flatten().map(|(_, c)| c)
}

/// `GET /console/download/{topic}/{n}`: a version's payload for a signed-in user,
/// streamed (objects straight from the store) as an attachment.
pub async fn console_download(
    State(imprint): State<Imprint>,
    session: Session,
    Path((topic, n)): Path<(String, u64)>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Some(caller) = session_caller(&imprint, &session).await else {
        let back = format!("/topics/{}/versions/{n}", urlencoding::encode(&topic));
        return Redirect::to(&format!("/login?next={}", urlencoding::encode(&back))).into_response();
    };
    let answer = async {
        // Parsed as the API parses `{topic}/versions/{n}` (the same 400s).
        let name = imprint_domain::TopicName::parse(&topic).map_err(Error::from)?;
        let p = imprint.version_payload(&caller, &name, crate::extract::parse_version(&n.to_string())?).await?;
        let etag = format!("\"{}\"", p.sha256);
        crate::payload::payload_response(&imprint, p, &etag, None, &headers, false).await
    }
    .await;
    match answer {
        Ok(mut r) => {
            let file = format!("attachment; filename=\"{}-v{n}\"", topic.replace(['"', '\\'], "_"));
            if let Ok(v) = axum::http::HeaderValue::from_str(&file) {
                r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
        Err(e) => e.into_response(),
    }
}

pub async fn console_upload(
    State(imprint): State<Imprint>,
    session: Session,
    Path(topic): Path<String>,
    req: Request,
) -> Response {
    let json = wants_json(&req);
    let form_page = format!("/topics/{}/publish", urlencoding::encode(&topic));
    let Some(caller) = session_caller(&imprint, &session).await else {
        return if json {
            ApiError(Error::Unauthorized("sign in to the console to upload".into())).into_response()
        } else {
            Redirect::to(&format!("/login?next={}", urlencoding::encode(&form_page))).into_response()
        };
    };
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.to_ascii_lowercase().starts_with("multipart/form-data"));
    let outcome = async {
        if !is_multipart {
            return Err(ApiError::invalid("the upload is a multipart/form-data form with a file part"));
        }
        let input = publish_input(req, |_| Err(ApiError::invalid("not a form"))).await?;
        let name = imprint_domain::TopicName::parse(&topic).map_err(Error::from)?;
        // Not cancelled by a client that goes away: the publish cleans up after itself.
        let task = tokio::spawn(async move { imprint.publish(&caller, &name, input).await });
        Ok(task.await.map_err(|e| Error::Internal(format!("publish task: {e}")))??)
    }
    .await;
    match (outcome, json) {
        (Ok(p), true) => (StatusCode::CREATED, Json(p)).into_response(),
        (Ok(p), false) => Redirect::to(&format!(
            "/topics/{}?notice={}#v{}",
            urlencoding::encode(&p.topic),
            urlencoding::encode(&format!("Published v{} ({} bytes, {})", p.version, p.size, p.storage)),
            p.version
        ))
        .into_response(),
        (Err(e), true) => e.into_response(),
        (Err(ApiError(e)), false) => {
            // The form page shows what the API would say (an internal detail only in the log).
            e.log("console upload");
            back_with(&form_page, "upload_error", &e.public_message())
        }
    }
}
