//! The client's error type, and the reading of the server's `{"error": {...}}` answers.

/// What can go wrong talking to Imprint or keeping a subscription.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The builder was given something unusable (a bad URL, an empty instance name, …).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// Not a valid topic name (`[a-z0-9][a-z0-9._-]{0,127}`).
    #[error("invalid topic name {0:?}: topic names are 1-128 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit")]
    InvalidTopic(String),
    /// A client subscribes to a topic once; clone the `Subscription` to share it.
    #[error("topic {0:?} is already subscribed by this client (clone the Subscription to share it)")]
    AlreadySubscribed(String),
    /// `Client::shutdown` was called.
    #[error("the client has been shut down")]
    Shutdown,
    /// The request did not get an HTTP answer (connection refused, reset, timed out, …).
    #[error("request to {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error (`{"error": {"code", "message"}}`).
    #[error("{message} ({code}, HTTP {status})")]
    Api { status: u16, code: String, message: String },
    /// The bytes received do not have the SHA-256 the server announced.
    #[error("checksum mismatch: expected sha256 {expected}, received {actual}")]
    Checksum { expected: String, actual: String },
    /// The body ended before (or went on after) the announced size.
    #[error("size mismatch: expected {expected} bytes, received {actual}")]
    Size { expected: u64, actual: u64 },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A wait had a bound and reached it.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The server answered something this client does not understand.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The object-store snapshot (read when the server is unreachable) cannot be used: not
    /// readable, not understood, sealed without a key for it, or not matching its manifest.
    #[error("snapshot in the object store: {0}")]
    Snapshot(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn http(url: &str, source: reqwest::Error) -> Self {
        Error::Http { url: url.to_owned(), source }
    }

    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            Error::Http { source, .. } => source.status().map(|s| s.as_u16()),
            _ => None,
        }
    }

    /// The API's error code (`topic_not_found`, `unauthorized`, …).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Worth retrying soon: the network, a timeout, a 5xx, a 429 or a 408. A 4xx is the
    /// caller's mistake (a bad token, a bad request) and is retried slowly instead.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Http { .. } | Error::Timeout(_) | Error::Size { .. } => true,
            Error::Api { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            Error::Io { .. } => true,
            _ => false,
        }
    }

    /// The error of an unsuccessful answer: the API's `{"error": {...}}` when the body is
    /// one, the status and the start of the body otherwise.
    pub async fn from_response(resp: reqwest::Response) -> Self {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        Self::from_parts(status.as_u16(), &body)
    }

    /// As `from_response`, from a status and a body already read.
    pub fn from_parts(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<imprint_protocol::ErrorBody>(body) {
            Ok(e) => Error::Api { status, code: e.error.code, message: e.error.message },
            Err(_) => {
                let text: String = String::from_utf8_lossy(body).chars().take(300).collect();
                let reason =
                    reqwest::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("error");
                let message =
                    if text.trim().is_empty() { reason.to_owned() } else { format!("{reason}: {}", text.trim()) };
                Error::Api { status, code: "http_error".into(), message }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_are_read_from_the_envelope() {
        let e = Error::from_parts(401, br#"{"error":{"code":"unauthorized","message":"unknown token"}}"#);
        assert_eq!(e.to_string(), "unknown token (unauthorized, HTTP 401)");
        assert_eq!(e.code(), Some("unauthorized"));
        assert!(!e.is_transient());
        let e = Error::from_parts(502, b"<html>bad gateway</html>");
        assert_eq!(e.code(), Some("http_error"));
        assert!(e.is_transient());
        assert!(e.to_string().contains("Bad Gateway"));
    }
}
