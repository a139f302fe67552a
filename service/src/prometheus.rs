//! The Prometheus HTTP API client of rollout analyses (docs/validation.md, issue 24 part
//! 3): one instant query (`GET /api/v1/query`) answered by one number. Bounded: every
//! request by a timeout, the answer's body by [`MAX_RESPONSE_BYTES`]. Prometheus is the
//! operator's own server (`IMPRINT_PROMETHEUS_URL`), so private addresses are allowed; no
//! redirect is followed and no proxy from the environment is used.
//!
//! Anything that is not exactly one number — Prometheus unreachable or erroring, no series,
//! several series, a string — is a [`NoValue`] with the reason, which an analysis counts as
//! inconclusive (`imprint_domain::analysis`). NaN is returned as a number (the caller's
//! `judge` treats it as inconclusive too).
use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result};

/// The longest answer read from Prometheus.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// The default bound on one query.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a query gave no number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoValue(pub String);

impl std::fmt::Display for NoValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client of one Prometheus server.
#[derive(Clone, Debug)]
pub struct PrometheusClient {
    query_url: url::Url,
    http: reqwest::Client,
}

impl PrometheusClient {
    /// `base` is the server's address (`http://prometheus:9090`, a path prefix allowed).
    pub fn new(base: &str, timeout: Duration) -> Result<Self> {
        let mut base = url::Url::parse(base)
            .map_err(|e| Error::InvalidRequest(format!("IMPRINT_PROMETHEUS_URL {base:?} is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(Error::InvalidRequest(format!(
                "IMPRINT_PROMETHEUS_URL {base} must be an http(s) URL with a host"
            )));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let query_url = base
            .join("api/v1/query")
            .map_err(|e| Error::InvalidRequest(format!("IMPRINT_PROMETHEUS_URL {base}: {e}")))?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .user_agent(concat!("Imprint-Analysis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Internal(format!("Prometheus HTTP client: {e}")))?;
        Ok(Self { query_url, http })
    }

    /// Runs one instant query: its one number, or why there is none.
    pub async fn query(&self, promql: &str) -> std::result::Result<f64, NoValue> {
        let mut resp = self
            .http
            .get(self.query_url.clone())
            .query(&[("query", promql)])
            .send()
            .await
            .map_err(|e| NoValue(format!("Prometheus unreachable: {}", crate::error::error_chain(&e))))?;
        let status = resp.status();
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return Err(NoValue(format!("Prometheus answered more than {MAX_RESPONSE_BYTES} bytes")));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(NoValue(format!("Prometheus answer broke off: {}", crate::error::error_chain(&e))))
                }
            }
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|_| NoValue(format!("Prometheus answered HTTP {} with no JSON", status.as_u16())))?;
        value_of(&v)
    }
}

/// The number in a `/api/v1/query` answer (Prometheus' JSON shape).
pub fn value_of(v: &Value) -> std::result::Result<f64, NoValue> {
    if v["status"] != "success" {
        let msg: String = v["error"].as_str().unwrap_or("no error message").chars().take(300).collect();
        return Err(NoValue(format!("Prometheus query failed: {msg}")));
    }
    let data = &v["data"];
    let sample = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => {
            let series = data["result"].as_array().map(Vec::as_slice).unwrap_or_default();
            match series {
                [] => return Err(NoValue("no data: the query returned no series".into())),
                [one] => &one["value"],
                more => {
                    return Err(NoValue(format!(
                        "the query returned {} series; an analysis needs one number (aggregate it, e.g. sum(…))",
                        more.len()
                    )))
                }
            }
        }
        other => {
            return Err(NoValue(format!(
                "the query returned a {}; an analysis needs a scalar or a one-series instant vector",
                other.unwrap_or("nothing")
            )))
        }
    };
    let text = sample[1].as_str().ok_or_else(|| NoValue("Prometheus answered a sample without a value".into()))?;
    // Prometheus writes NaN, +Inf and -Inf as those words; Rust's parser reads them too.
    text.parse::<f64>().map_err(|_| NoValue(format!("Prometheus answered {text:?}, not a number")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_number_or_a_reason() {
        let vector = |result: Value| json!({"status": "success", "data": {"resultType": "vector", "result": result}});
        assert_eq!(value_of(&vector(json!([{"metric": {}, "value": [1.0, "0.25"]}]))), Ok(0.25));
        assert!(value_of(&vector(json!([]))).unwrap_err().0.contains("no data"));
        let two = json!([{"metric": {"a": "1"}, "value": [1.0, "1"]}, {"metric": {"a": "2"}, "value": [1.0, "2"]}]);
        assert!(value_of(&vector(two)).unwrap_err().0.contains("2 series"));
        let scalar = json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}});
        assert_eq!(value_of(&scalar), Ok(3.0));
        let nan = json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "NaN"]}});
        assert!(value_of(&nan).unwrap().is_nan());
        let err = json!({"status": "error", "errorType": "bad_data", "error": "parse error"});
        assert!(value_of(&err).unwrap_err().0.contains("parse error"));
        let matrix = json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        assert!(value_of(&matrix).unwrap_err().0.contains("matrix"));
    }

    #[test]
    fn base_urls() {
        let c = PrometheusClient::new("http://prom:9090/prefix", DEFAULT_TIMEOUT).unwrap();
        assert_eq!(c.query_url.as_str(), "http://prom:9090/prefix/api/v1/query");
        let c = PrometheusClient::new("http://prom:9090", DEFAULT_TIMEOUT).unwrap();
        assert_eq!(c.query_url.as_str(), "http://prom:9090/api/v1/query");
        assert!(PrometheusClient::new("ftp://prom", DEFAULT_TIMEOUT).is_err());
        assert!(PrometheusClient::new("not a url", DEFAULT_TIMEOUT).is_err());
    }
}
