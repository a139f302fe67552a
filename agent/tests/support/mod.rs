//! What the agent's binary tests share: the agent as a child process.
#![allow(dead_code)] // each test binary uses part of it

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running agent process; killed when dropped.
pub struct Agent {
    pub child: Child,
    /// `http://127.0.0.1:<port>` or `unix:<path>`, from its first line of output.
    pub url: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    /// (Reads its first line off the runtime: the in-process server must go on answering.)
    pub async fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_imprint-agent"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the agent");
        let stdout = child.stdout.take().expect("stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).expect("the agent's first line");
            line
        })
        .await
        .expect("read the first line");
        let url = line.trim().rsplit(' ').next().expect("listening on URL").to_owned();
        assert!(url.starts_with("http://127.0.0.1:") || url.starts_with("unix:"), "{line}");
        Self { child, url }
    }

    /// SIGTERM, then wait for the graceful stop.
    /// (Waits without blocking the runtime: the in-process server runs on it.)
    pub async fn stop(mut self) {
        let _ = Command::new("kill").args(["-s", "TERM", "--"]).arg(self.child.id().to_string()).status();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert!(status.success(), "the agent stopped with {status}");
    }

    /// `GET` on its local endpoint.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(format!("{}{path}", self.url)).await.expect("local endpoint")
    }
}
