//! Payload bodies in and out of HTTP: the three publish forms (JSON, raw body, multipart
//! form) turned into a `PublishInput` — the raw and multipart forms streamed, never held
//! in memory — and payload responses (inline or streamed from the object store) with
//! `ETag`, `If-None-Match`, a single `Range` and presigned redirects.
use crate::error::{ApiError, ApiResult};
use crate::extract::body_bytes;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use futures::{StreamExt, TryStreamExt};
use imprint_domain::Selector;
use imprint_service::payloads::{PayloadBody, VersionPayload};
use imprint_service::{BodyStream, Error, Imprint, Payload, PlanChoice, PublishInput, RolloutRequest};
use std::collections::BTreeMap;

/// The header a raw-body publish gives its SHA-256 in.
pub const SHA256_HEADER: &str = "x-imprint-sha256";
/// A text field of a multipart publish has at most this many bytes.
const MAX_FIELD_BYTES: usize = 64 * 1024;
/// A multipart publish has at most this many parts before its file.
const MAX_FIELDS: usize = 200;

fn media_type(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// What a publish request says, whatever its form. The JSON form is a `PublishBody`
/// (parsed by `json`); a multipart form streams its `file` part; any other body is the
/// payload itself, streamed, with the rest in the query string.
pub async fn publish_input(
    req: Request,
    json: impl FnOnce(&Bytes) -> ApiResult<PublishInput>,
) -> ApiResult<PublishInput> {
    match media_type(req.headers()).as_deref() {
        Some("application/json") => json(&body_bytes(req).await?),
        Some("multipart/form-data") => multipart_input(req).await,
        _ => raw_input(req),
    }
}

/// Fields a raw or multipart publish may give besides the payload.
#[derive(Default)]
struct Fields {
    scopes: Vec<Selector>,
    metadata: BTreeMap<String, String>,
    message: String,
    rollout: Option<RolloutRequest>,
    content_type: Option<String>,
    sha256: Option<String>,
    force: bool,
    force_reason: Option<String>,
}

/// `force` and `force_reason` as the service takes them: the reason when forced; a reason
/// without `force`, or `force` without a reason, is a mistake.
pub fn force(force: bool, reason: Option<String>) -> ApiResult<Option<String>> {
    match (force, reason.filter(|r| !r.trim().is_empty())) {
        (true, Some(r)) => Ok(Some(r)),
        (true, None) => Err(ApiError::invalid("force needs force_reason: why the checks are overridden")),
        (false, Some(_)) => Err(ApiError::invalid("force_reason is given without force=true")),
        (false, None) => Ok(None),
    }
}

impl Fields {
    /// Takes one `name=value`; false when the name is not a publish field.
    fn take(&mut self, name: &str, value: String) -> ApiResult<bool> {
        let known =
            matches!(name, "scope" | "message" | "rollout" | "content_type" | "sha256" | "force" | "force_reason")
                || name.starts_with("meta.");
        if known && value.trim().is_empty() {
            // An empty form field is an absent one (browsers send every field).
            return Ok(true);
        }
        if name == "scope" {
            self.scopes.push(Selector::parse(&value).map_err(Error::from)?);
        } else if let Some(key) = name.strip_prefix("meta.") {
            self.metadata.insert(key.to_owned(), value);
        } else if name == "message" {
            self.message = value;
        } else if name == "rollout" {
            self.rollout = Some(if value == "none" {
                RolloutRequest::None
            } else {
                RolloutRequest::Plan(PlanChoice::Named(value))
            });
        } else if name == "content_type" {
            self.content_type = Some(value).filter(|v| !v.trim().is_empty());
        } else if name == "sha256" {
            self.sha256 = Some(value).filter(|v| !v.trim().is_empty());
        } else if name == "force" {
            self.force = crate::extract::parse_bool(&Some(value), "force")?;
        } else if name == "force_reason" {
            self.force_reason = Some(value);
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    fn into_input(self, payload: Payload) -> ApiResult<PublishInput> {
        Ok(PublishInput {
            force: force(self.force, self.force_reason)?,
            payload,
            content_type: self.content_type,
            metadata: self.metadata,
            scopes: if self.scopes.is_empty() { None } else { Some(self.scopes) },
            message: self.message,
            rollout: self.rollout.unwrap_or(RolloutRequest::TopicDefault),
            sha256: self.sha256,
        })
    }
}

/// The request body as a stream of chunks; a client that goes away or sends less than
/// its `Content-Length` ends it with an error.
fn body_stream(body: Body) -> BodyStream {
    body.into_data_stream().map_err(std::io::Error::other).boxed()
}

fn raw_input(req: Request) -> ApiResult<PublishInput> {
    let mut fields = Fields::default();
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned() {
        if k == "content_type" || !fields.take(&k, v)? {
            return Err(ApiError::invalid(format!(
                "unknown query parameter {k:?} (use scope=, meta.<key>=, message=, rollout=, sha256=, force=, force_reason=)"
            )));
        }
    }
    if let Some(sha) = req.headers().get(SHA256_HEADER) {
        let sha = sha.to_str().map_err(|_| ApiError::invalid("X-Imprint-Sha256 is not text"))?;
        fields.sha256 = Some(sha.to_owned());
    }
    // curl's default for --data is form encoding, which is never what a payload is.
    fields.content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|c| !c.starts_with("application/x-www-form-urlencoded"))
        .map(str::to_owned);
    let len = declared_length(req.headers());
    fields.into_input(Payload::Stream { body: body_stream(req.into_body()), len })
}

/// A multipart form: text parts first (`message`, `scope`, `meta.<key>`,
/// `content_type`, `rollout`, `sha256`), then the `file` part, which must be the last.
async fn multipart_input(req: Request) -> ApiResult<PublishInput> {
    let boundary = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .ok_or_else(|| ApiError::invalid("multipart/form-data without a boundary"))?;
    let mut fields = Fields::default();
    if let Some(sha) = req.headers().get(SHA256_HEADER).and_then(|v| v.to_str().ok()) {
        fields.sha256 = Some(sha.to_owned());
    }
    let mut form = multer::Multipart::new(req.into_body().into_data_stream(), boundary);
    let bad = |e: multer::Error| ApiError::invalid(format!("the multipart form is malformed: {e}"));
    for _ in 0..MAX_FIELDS {
        let Some(mut field) = form.next_field().await.map_err(bad)? else {
            return Err(ApiError::invalid("the multipart form has no file part (name it \"file\")"));
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            if fields.content_type.is_none() {
                fields.content_type = field
                    .content_type()
                    .map(ToString::to_string)
                    .filter(|c| c != "application/octet-stream" && !c.is_empty());
            }
            return fields.into_input(Payload::Stream { body: file_part(form, field), len: None });
        }
        let mut value = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            value.extend_from_slice(&chunk);
            if value.len() > MAX_FIELD_BYTES {
                return Err(ApiError::invalid(format!("the form field {name:?} has more than 64 KiB")));
            }
        }
        let value =
            String::from_utf8(value).map_err(|_| ApiError::invalid(format!("the form field {name:?} is not UTF-8")))?;
        if !fields.take(&name, value)? {
            return Err(ApiError::invalid(format!(
                "unknown form field {name:?} (use file, message, scope, meta.<key>, content_type, rollout, sha256, force, force_reason)"
            )));
        }
    }
    Err(ApiError::invalid(format!("the multipart form has more than {MAX_FIELDS} parts")))
}

/// The `file` part as a stream; anything after it in the form is an error (so the
/// publish fails before it commits instead of ignoring what followed).
fn file_part(form: multer::Multipart<'static>, field: multer::Field<'static>) -> BodyStream {
    futures::stream::unfold((form, Some(field)), |(mut form, field)| async move {
        let mut field = field?;
        match field.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), (form, Some(field)))),
            Ok(None) => {
                drop(field);
                match form.next_field().await {
                    Ok(None) => None,
                    Ok(Some(_)) => Some((
                        Err(std::io::Error::other("the file part must be the last part of the form")),
                        (form, None),
                    )),
                    Err(e) => Some((Err(std::io::Error::other(e)), (form, None))),
                }
            }
            Err(e) => Some((Err(std::io::Error::other(e)), (form, None))),
        }
    })
    .boxed()
}

/// The answer with a version's payload: a 304 when the client has it, a 307 to a
/// presigned URL when asked and enabled, a single range (206/416), or all of it —
/// objects streamed from the store with their `Content-Length`.
pub async fn payload_response(
    imprint: &Imprint,
    p: VersionPayload,
    etag: &str,
    pinned: Option<bool>,
    headers: &HeaderMap,
    redirect: bool,
) -> ApiResult<Response> {
    let mut builder = Response::builder()
        .header(header::ETAG, etag)
        .header("X-Imprint-Version", p.version.to_string())
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "no-cache");
    if let Some(pinned) = pinned {
        builder = builder.header("X-Imprint-Pinned", pinned.to_string());
    }
    if if_none_match(headers, etag) {
        return Ok(builder.status(StatusCode::NOT_MODIFIED).body(Body::empty()).unwrap_or_default());
    }
    if let (true, PayloadBody::Object(key)) = (redirect, &p.body) {
        if let Some(url) = imprint.presigned_url_in(p.region.as_deref(), key).await? {
            return Ok(builder
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header(header::LOCATION, url)
                .body(Body::empty())
                .unwrap_or_default());
        }
    }
    builder = builder.header(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&p.content_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Some(h) = builder.headers_mut() {
        crate::headers::inert_payload(h, &p.content_type);
    }
    // A sealed object (an at-rest topic, docs/encryption.md) answers ranges of its
    // plaintext: the service reads and opens only the chunks holding them.
    let len = p.size;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(r) => match parse_range(r, len) {
            Some(r) => Some(r),
            None => return Err(Error::RangeNotSatisfiable { size: len }.into()),
        },
    };
    if let Some((start, end)) = range {
        builder = builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))
            .header(header::CONTENT_LENGTH, end - start + 1);
    } else {
        builder = builder.status(StatusCode::OK).header(header::CONTENT_LENGTH, len);
    }
    let body = match (p.body, range) {
        (PayloadBody::Inline(data), Some((start, end))) => Body::from(data.slice(start as usize..=end as usize)),
        (PayloadBody::Inline(data), None) => Body::from(data),
        (body, range) => {
            let stream = imprint.payload_stream(body, p.region.as_deref(), range.map(|(s, e)| s..e + 1)).await?;
            Body::from_stream(stream)
        }
    };
    Ok(builder.body(body).unwrap_or_default())
}

/// Does `If-None-Match` match `etag` (RFC 9110 §13.1.2: weak comparison, a list of
/// entity tags, or `*`)?
pub fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    let opaque = |t: &str| t.trim().strip_prefix("W/").unwrap_or(t.trim()).to_owned();
    let want = opaque(etag);
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || opaque(t) == want)
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` → inclusive (start, end); None if unsatisfiable.
fn parse_range(h: &str, len: u64) -> Option<(u64, u64)> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return None;
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let start: u64 = a.parse().ok()?;
        let end: u64 = if b.is_empty() { len - 1 } else { b.parse::<u64>().ok()?.min(len - 1) };
        (start, end)
    };
    (start <= end && start < len).then_some((start, end))
}
#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-3", 10), Some((0, 3)));
        assert_eq!(parse_range("bytes=5-", 10), Some((5, 9)));
        assert_eq!(parse_range("bytes=-4", 10), Some((6, 9)));
        assert_eq!(parse_range("bytes=-40", 10), Some((0, 9)));
        assert_eq!(parse_range("bytes=8-100", 10), Some((8, 9)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=4-2", 10), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
        assert_eq!(parse_range("bytes=0-0", 0), None);
    }
}
