//! The bench's HTTP client of the Imprint API (hyper, keep-alive pool): requests with
//! the bearer token, the server's Prometheus metrics, and a URL's socket address.
use crate::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::net::SocketAddr;

pub(crate) struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
}

impl Api {
    pub(crate) fn new(base: &str, token: Option<String>, pool: usize) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(pool.max(1)).build(conn);
        Self { client, base: base.trim_end_matches('/').to_owned(), token }
    }

    pub(crate) async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<(StatusCode, Bytes)> {
        let mut b = Request::builder().method(method).uri(format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                Full::new(Bytes::from(serde_json::to_vec(&v)?))
            }
            None => Full::new(Bytes::new()),
        };
        let resp = self.client.request(b.body(body)?).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// Sum of every series of a metric in /metrics (None when the metric is absent).
    pub(crate) async fn metric(&self, name: &str) -> Result<Option<f64>> {
        let (status, body) = self.send("GET", "/metrics", None).await?;
        if !status.is_success() {
            return Err(format!("/metrics: {status}").into());
        }
        Ok(parse_metric(&String::from_utf8_lossy(&body), name))
    }
}

pub(crate) fn parse_metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

pub(crate) fn authority(url: &str) -> Result<(SocketAddr, String)> {
    let uri: hyper::Uri = url.parse()?;
    let host = uri.host().ok_or("URL without host")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))?.next().ok_or("cannot resolve host")?;
    Ok((addr, format!("{host}:{port}")))
}
