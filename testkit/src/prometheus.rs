//! A real Prometheus for analysis tests: [`Exporter`] serves `/metrics` (a text body the
//! test sets) on a free port, [`Prometheus::start`] runs `/usr/bin/prometheus` (Debian's
//! package, which `./dev` installs) with a temporary config scraping it every second and
//! a temporary data directory, on a free port. The binary missing fails the test: it is
//! never skipped. The process is killed when the handle drops.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{extract::State, routing::get, Router};

use crate::fixtures::scratch_dir;
use crate::http::eventually;

/// Where `./dev` installs Prometheus (Debian's `prometheus` package).
pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";

/// A `/metrics` endpoint whose body the test sets.
pub struct Exporter {
    pub addr: SocketAddr,
    body: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Exporter {
    /// Serves `body` (Prometheus text exposition format) at `/metrics` on a free port.
    pub async fn start(body: &str) -> Self {
        let body = Arc::new(Mutex::new(body.to_string()));
        let app = Router::new()
            .route(
                "/metrics",
                get(|State(b): State<Arc<Mutex<String>>>| async move {
                    let text = b.lock().unwrap().clone();
                    ([("content-type", "text/plain; version=0.0.4")], text)
                }),
            )
            .with_state(body.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, body, task }
    }

    /// What the next scrape sees.
    pub fn set(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_string();
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running Prometheus scraping one exporter every second.
pub struct Prometheus {
    pub url: String,
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) and waits until it is ready and has
    /// scraped the target at least once (`up == 1`).
    pub async fn start(target: SocketAddr) -> Self {
        assert!(
            std::path::Path::new(PROMETHEUS_BIN).exists(),
            "{PROMETHEUS_BIN} is missing: install Debian's prometheus package (./dev test installs it)"
        );
        let dir = scratch_dir("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: test\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS_BIN)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // An instant query looks this far back for a sample: short, so a target that
            // stops exporting a series is "no data" soon.
            .arg("--query.lookback-delta=5s")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {PROMETHEUS_BIN}: {e}"));
        let p = Self { url: format!("http://127.0.0.1:{port}"), child, dir };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let ready = format!("{}/-/ready", p.url);
        let up = format!("{}/api/v1/query?query=up", p.url);
        eventually("prometheus to be ready and to have scraped its target", || {
            let (http, ready, up) = (http.clone(), ready.clone(), up.clone());
            async move {
                if !http.get(&ready).send().await.is_ok_and(|r| r.status().is_success()) {
                    return false;
                }
                let Ok(r) = http.get(&up).send().await else { return false };
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                v["data"]["result"][0]["value"][1] == "1"
            }
        })
        .await;
        p
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
