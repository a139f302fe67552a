//! Security headers: every answer is `nosniff`, never framed and sends no referrer
//! off-site; console pages carry a Content-Security-Policy whose only inline scripts are
//! the ones Leptos writes with this response's nonce; payload bytes (which a publisher
//! chose) are served inert: sandboxed, and as a download unless their type is passive.
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;

/// This response's CSP nonce, for the console's server-side rendering (`use_nonce`).
#[derive(Clone, Debug)]
pub struct CspNonce(pub String);

/// What a page of the console may load: its own scripts, styles and wasm, the inline
/// scripts Leptos writes with the nonce; no frames, plugins or foreign form targets.
fn console_policy(nonce: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'"
    )
}

/// Everything that is not a console page (API answers, files, payloads) runs nothing.
pub const INERT_POLICY: &str = "default-src 'none'; sandbox; frame-ancestors 'none'";

fn set_default(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if !headers.contains_key(&name) {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    }
}

/// Puts the security headers on every answer (a handler's own CSP, as a payload's, wins).
pub async fn security_headers(mut req: Request, next: Next) -> Response {
    let nonce = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
    req.extensions_mut().insert(CspNonce(nonce.clone()));
    let mut resp = next.run(req).await;
    let html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("text/html"));
    let h = resp.headers_mut();
    let policy = if html { console_policy(&nonce) } else { INERT_POLICY.to_owned() };
    set_default(h, header::CONTENT_SECURITY_POLICY, &policy);
    set_default(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set_default(h, header::X_FRAME_OPTIONS, "DENY");
    set_default(h, header::REFERRER_POLICY, "same-origin");
    set_default(h, HeaderName::from_static("cross-origin-opener-policy"), "same-origin");
    resp
}

/// Payload types a browser shows without running anything (with `nosniff`): these are
/// served inline, every other type as an attachment.
fn passive(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "application/json"
            | "text/plain"
            | "text/csv"
            | "application/octet-stream"
            | "image/png"
            | "image/jpeg"
            | "image/gif"
            | "image/webp"
            | "application/x-protobuf"
            | "application/protobuf"
            | "application/yaml"
            | "application/x-yaml"
            | "application/toml"
            | "text/x-java-properties"
    ) || (essence.starts_with("application/") && essence.ends_with("+json") && !essence.contains([' ', ',']))
}

/// The headers that keep a payload inert whatever its type: never sniffed, sandboxed
/// (no script, no same-origin access) and, for anything but passive types, a download.
pub fn inert_payload(headers: &mut HeaderMap, content_type: &str) {
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(INERT_POLICY));
    if !passive(content_type) {
        headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
    }
}

#[cfg(test)]
mod tests {
    use super::passive;

    #[test]
    fn only_passive_types_are_shown_inline() {
        for t in ["application/json", "text/plain; charset=utf-8", "TEXT/CSV", "application/vnd.x+json", "image/png"] {
            assert!(passive(t), "{t}");
        }
        for t in [
            "text/html",
            "text/html; charset=utf-8",
            " Text/HTML",
            "image/svg+xml",
            "application/xhtml+xml",
            "text/xml",
            "application/xml",
            "text/javascript",
            "application/javascript",
            "application/pdf",
            "text/plain, text/html",
            "multipart/x-mixed-replace",
            "",
        ] {
            assert!(!passive(t), "{t}");
        }
    }
}
