//! Issue 22's client measurements for the Rust client, against a running server:
//! 1. idle cost: one client subscribed to `TOPICS` topics (default 100), after a warm-up,
//!    the process's CPU time over `IDLE_S` seconds (default 60) and its RSS before the
//!    client was made and after;
//! 2. propagation: `ROUNDS` publishes (default 30) to one of those topics, each timed from
//!    just before the publish request to the subscription's change stream.
//!
//! ```sh
//! IMPRINT_URL=http://127.0.0.1:3000 IMPRINT_TOKEN=<admin token> \
//!   cargo run --release -p imprint-client --example idle_and_propagation
//! ```
//! (`bench/clients.sh` starts a server and runs it, with the other clients' benches.)
//! Prints one JSON object. Linux only (reads /proc/self).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

use imprint_client::Client;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// RSS in MiB (`VmRSS` of /proc/self/status).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    kib / 1024.0
}

/// User + system CPU time of the whole process (fields 14 and 15 of /proc/self/stat, in
/// clock ticks of 10 ms).
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // the command name may hold spaces: the fields start after its closing parenthesis
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum()).unwrap_or(0);
    ticks * 10
}

fn pct(xs: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * xs.len() as f64) as usize;
    xs[i.min(xs.len() - 1)]
}

#[tokio::main]
async fn main() {
    let url = std::env::var("IMPRINT_URL").expect("IMPRINT_URL: the server");
    let token = std::env::var("IMPRINT_TOKEN").expect("IMPRINT_TOKEN: an admin token (to publish)");
    let topics_n = env_num("TOPICS", 100);
    let idle_s = env_num("IDLE_S", 60);
    let rounds = env_num("ROUNDS", 30) as usize;
    let admin = reqwest::Client::new();
    let api = |method: reqwest::Method, path: String, body: Value| {
        admin.request(method, format!("{url}{path}")).bearer_auth(&token).json(&body).send()
    };
    let run = format!("rs{}", std::process::id());
    let mut topics = Vec::new();
    for i in 0..topics_n {
        let t = format!("bench.{run}-{i}");
        let r = api(reqwest::Method::POST, "/api/v1/topics".into(), json!({"name": t})).await.unwrap();
        assert_eq!(r.status().as_u16(), 201, "create {t}: {}", r.text().await.unwrap_or_default());
        let data = json!({"topic": i, "v": 1}).to_string();
        let r =
            api(reqwest::Method::POST, format!("/api/v1/topics/{t}/versions"), json!({"data": data})).await.unwrap();
        assert_eq!(r.status().as_u16(), 201, "publish {t}");
        topics.push(t);
    }
    let rss_before = rss_mib();
    let client = Client::builder(url.as_str()).instance("rust-bench").build().unwrap();
    let mut subs = Vec::new();
    for t in &topics {
        subs.push(client.subscribe_json::<Value>(t, Value::Null).await.unwrap());
    }
    let held = subs.iter().filter(|s| s.version() == Some(1)).count();
    tokio::time::sleep(Duration::from_secs(5)).await; // warm-up: the first long poll is open
    let (cpu0, t0) = (cpu_ms(), Instant::now());
    tokio::time::sleep(Duration::from_secs(idle_s)).await;
    let (cpu, wall) = (cpu_ms() - cpu0, t0.elapsed().as_secs_f64());
    let idle = json!({
        "topics": topics_n,
        "held_at_start": held,
        "seconds": wall.round(),
        "cpu_ms": cpu,
        "cpu_percent": (cpu as f64 / 1000.0 / wall * 100.0 * 1000.0).round() / 1000.0,
        "rss_before_client_mib": (rss_before * 10.0).round() / 10.0,
        "rss_mib": (rss_mib() * 10.0).round() / 10.0,
    });
    let mut changes = subs[0].changes();
    let mut times = Vec::new();
    for i in 0..rounds {
        let start = Instant::now();
        let data = json!({"topic": 0, "v": i + 2}).to_string();
        let r = api(reqwest::Method::POST, format!("/api/v1/topics/{}/versions", topics[0]), json!({"data": data}))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "publish round {i}");
        tokio::time::timeout(Duration::from_secs(30), changes.next()).await.expect("a change within 30 s");
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    times.sort_by(f64::total_cmp);
    let round1 = |v: f64| (v * 10.0).round() / 10.0;
    let out = json!({
        "client": "rust",
        "idle": idle,
        "propagation": {
            "rounds": rounds,
            "p50_ms": round1(pct(&times, 50.0)),
            "p90_ms": round1(pct(&times, 90.0)),
            "max_ms": round1(times[times.len() - 1]),
        },
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
