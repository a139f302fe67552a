//! The adapters the harness can drive (one row per language) and a running adapter process:
//! started from its command line, its address read from its first line of output.
use imprint_conformance::adapter::{Capabilities, CorruptCache, NewClient, Observed, TopicSpec};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How to start one language's adapter: it must print `listening on http://<addr>` first.
pub struct AdapterSpec {
    pub name: String,
    pub program: String,
    pub args: Vec<String>,
}

impl AdapterSpec {
    /// The Rust client's adapter, built with this crate.
    #[allow(dead_code)] // each test binary includes the harness; only the Rust row uses this
    pub fn rust() -> AdapterSpec {
        AdapterSpec { name: "rust".into(), program: env!("CARGO_BIN_EXE_adapter-rust").into(), args: Vec::new() }
    }

    #[allow(dead_code)] // not used by the Rust row
    /// Another language's adapter, its command line (split on whitespace) in `var`; `Err`
    /// says why there is none.
    pub fn from_env(name: &str, var: &str) -> Result<AdapterSpec, String> {
        let line = std::env::var(var).unwrap_or_default();
        let mut words = line.split_whitespace().map(str::to_owned);
        let program = words.next().ok_or(format!("{var} is not set (the {name} adapter's command line)"))?;
        Ok(AdapterSpec { name: name.into(), program, args: words.collect() })
    }
}

pub struct Adapter {
    pub name: String,
    pub base: String,
    pub capabilities: Vec<String>,
    http: reqwest::Client,
    _child: Child,
}

impl Adapter {
    pub async fn start(spec: &AdapterSpec) -> Adapter {
        // Its stdin stays open (in `_child`) while the adapter is wanted; stderr is ours.
        let mut child = Command::new(&spec.program)
            .args(&spec.args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start the {} adapter ({}): {e}", spec.name, spec.program));
        let stdout = child.stdout.take().expect("adapter stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the {} adapter printed no address", spec.name))
            .expect("adapter output")
            .unwrap_or_default();
        let base = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("the {} adapter's first line: {first:?}", spec.name))
            .trim()
            .to_owned();
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        let caps: Capabilities = http
            .get(&base)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET / of the {} adapter: {e}", spec.name))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET / of the {} adapter: not the capabilities: {e}", spec.name));
        assert_eq!(caps.name, spec.name, "the adapter's name (GET /) is not its row's");
        Adapter { name: spec.name.clone(), base, capabilities: caps.capabilities, http, _child: child }
    }

    pub async fn create(&self, spec: &NewClient) -> Result<String, String> {
        let r = self.http.post(format!("{}/clients", self.base)).json(spec).send().await.map_err(|e| e.to_string())?;
        let status = r.status();
        let text = r.text().await.map_err(|e| format!("POST /clients answered {status}: {e}"))?;
        let body: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        match body["id"].as_str() {
            Some(id) if status.is_success() => Ok(id.to_owned()),
            _ => Err(format!("POST /clients answered {status}: {text}")),
        }
    }

    pub async fn observe(&self, id: &str, topic: &str) -> Result<Observed, String> {
        let r = self
            .http
            .get(format!("{}/clients/{id}/topics/{topic}", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("GET topic {topic}: {} {}", r.status(), r.text().await.unwrap_or_default()));
        }
        r.json().await.map_err(|e| e.to_string())
    }

    pub async fn subscribe(&self, id: &str, topic: &TopicSpec) -> Result<(), String> {
        self.call(self.http.post(format!("{}/clients/{id}/topics", self.base)).json(topic)).await
    }

    pub async fn shutdown(&self, id: &str) -> Result<(), String> {
        self.call(self.http.post(format!("{}/clients/{id}/shutdown", self.base))).await
    }

    pub async fn drop_client(&self, id: &str) -> Result<(), String> {
        self.call(self.http.delete(format!("{}/clients/{id}", self.base))).await
    }

    pub async fn corrupt_cache(&self, req: &CorruptCache) -> Result<(), String> {
        self.call(self.http.post(format!("{}/cache/corrupt", self.base)).json(req)).await
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<(), String> {
        let r = req.send().await.map_err(|e| e.to_string())?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("{} {}", r.status(), r.text().await.unwrap_or_default()))
        }
    }
}
