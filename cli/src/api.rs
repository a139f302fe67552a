//! The HTTP side of the CLI: URLs under `/api/v1`, the bearer token, JSON in and out,
//! and the API's `{"error": {...}}` turned into an error that says what went wrong.
use imprint_client::Error as ClientError;
use reqwest::{Method, RequestBuilder, Response, Url};
use serde_json::Value;
use std::time::Duration;

/// A failed command: what to print, and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: u8,
    /// The HTTP status when the server answered with an error.
    pub status: Option<u16>,
}

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 1, status: None }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The error and its causes, on one line (reqwest's own message hides the cause).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError { status: e.status(), ..CliError::new(chain(&e)) }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::new(e.to_string())
    }
}

pub type CliResult<T> = Result<T, CliError>;

pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

/// How long a JSON call may take (uploads and downloads have no total bound, only one
/// between two reads).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl Api {
    pub fn new(base: &str, token: Option<String>) -> CliResult<Self> {
        let base = base.trim().trim_end_matches('/').to_owned();
        let parsed = Url::parse(&base).map_err(|e| CliError::new(format!("bad server URL {base:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(CliError::new(format!("the server URL {base:?} must start with http:// or https://")));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("imprint-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| CliError::new(format!("HTTP client: {}", chain(&e))))?;
        Ok(Self { http, base, token: token.filter(|t| !t.is_empty()) })
    }

    /// `<base>/api/v1/<segments…>?<query>`, each segment escaped.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = Url::parse(&self.base).unwrap_or_else(|_| Url::parse("http://127.0.0.1:3000").expect("valid"));
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        url
    }

    /// Where version `n` of `topic` is downloaded: the protocol's `data_url` under this
    /// server. A name the domain refuses (which needs escaping) goes as an escaped path
    /// segment, and the server answers for it.
    pub fn data_url(&self, topic: &str, n: u64) -> Url {
        imprint_domain::TopicName::parse(topic)
            .ok()
            .and_then(|t| Url::parse(&format!("{}{}", self.base, imprint_protocol::data_url(t.as_str(), n))).ok())
            .unwrap_or_else(|| self.url(&["topics", topic, "versions", &n.to_string(), "data"], &[]))
    }

    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let r = self.http.request(method, url);
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends; a non-2xx answer becomes the API's error.
    pub async fn send(&self, rb: RequestBuilder) -> CliResult<Response> {
        let resp = rb.send().await.map_err(|e| {
            let url = e.url().map(|u| format!("{}://{}", u.scheme(), u.authority())).unwrap_or_default();
            CliError::new(format!("cannot reach the Imprint server {url}: {}", chain(&e)))
        })?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(ClientError::from_response(resp).await.into())
        }
    }

    async fn json(&self, rb: RequestBuilder) -> CliResult<Value> {
        let resp = self.send(rb.timeout(CALL_TIMEOUT)).await?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let bytes = resp.bytes().await.map_err(|e| CliError::new(format!("reading the answer: {}", chain(&e))))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| CliError::new(format!("the server's answer is not JSON: {e}")))
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, String)]) -> CliResult<Value> {
        self.json(self.request(Method::GET, self.url(segments, query))).await
    }

    pub async fn send_json(&self, method: Method, segments: &[&str], body: &Value) -> CliResult<Value> {
        self.json(self.request(method, self.url(segments, &[])).json(body)).await
    }

    pub async fn delete(&self, segments: &[&str], query: &[(&str, String)]) -> CliResult<Value> {
        self.json(self.request(Method::DELETE, self.url(segments, query))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_are_the_protocols_under_the_base() {
        let api = Api::new("http://h:1/prefix/", None).expect("api");
        assert_eq!(api.data_url("a.b", 3).as_str(), "http://h:1/prefix/api/v1/topics/a.b/versions/3/data");
        assert_eq!(api.data_url("a.b", 3), api.url(&["topics", "a.b", "versions", "3", "data"], &[]));
        assert_eq!(api.data_url("A/b", 3).as_str(), "http://h:1/prefix/api/v1/topics/A%2Fb/versions/3/data");
    }
}
