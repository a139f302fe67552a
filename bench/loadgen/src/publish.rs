//! `publish-rate`: small JSON publishes to several topics for a while; publishes/s and
//! latency percentiles.
use crate::http::Api;
use crate::stats::{fmt_ms, percentile};
use crate::Result;
use clap::Args;
use hyper::StatusCode;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args)]
pub(crate) struct PublishArgs {
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub(crate) url: String,
    #[arg(long)]
    pub(crate) token: String,
    /// Topics published to, round-robin (created when missing).
    #[arg(long, default_value_t = 8)]
    pub(crate) topics: usize,
    #[arg(long, default_value = "scale.pub")]
    pub(crate) prefix: String,
    /// Measured seconds.
    #[arg(long, default_value_t = 15)]
    pub(crate) seconds: u64,
    /// Unmeasured seconds first.
    #[arg(long, default_value_t = 2)]
    pub(crate) warmup_s: u64,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
    /// Approximate size of each JSON payload.
    #[arg(long, default_value_t = 200)]
    pub(crate) payload_bytes: usize,
}

pub(crate) async fn publish_rate(a: PublishArgs) -> Result<()> {
    let api = Arc::new(Api::new(&a.url, Some(a.token.clone()), a.concurrency));
    let topics: Vec<String> = (0..a.topics.max(1)).map(|i| format!("{}-{i}", a.prefix)).collect();
    for t in &topics {
        let (status, body) = api.send("POST", "/api/v1/topics", Some(json!({"name": t}))).await?;
        if !(status.is_success() || status == StatusCode::CONFLICT) {
            return Err(format!("create topic {t}: {status} {}", String::from_utf8_lossy(&body)).into());
        }
    }
    let padding = "x".repeat(a.payload_bytes.saturating_sub(60));
    let counter = Arc::new(AtomicUsize::new(0));
    let warm_end = Instant::now() + Duration::from_secs(a.warmup_s);
    let end = warm_end + Duration::from_secs(a.seconds);
    let lat = Arc::new(Mutex::new(Vec::<f64>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for _ in 0..a.concurrency.max(1) {
        let (api, topics, counter, lat, errors, padding) =
            (api.clone(), topics.clone(), counter.clone(), lat.clone(), errors.clone(), padding.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let started = Instant::now();
                if started >= end {
                    break;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let topic = &topics[n % topics.len()];
                let data = json!({"n": n, "padding": padding}).to_string();
                let r =
                    api.send("POST", &format!("/api/v1/topics/{topic}/versions"), Some(json!({"data": data}))).await;
                let ms = started.elapsed().as_secs_f64() * 1e3;
                let measured = started >= warm_end && Instant::now() <= end;
                match r {
                    Ok((s, _)) if s.is_success() => {
                        if measured {
                            lat.lock().unwrap_or_else(|e| e.into_inner()).push(ms);
                        }
                    }
                    Ok((s, body)) => errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("{s}: {}", String::from_utf8_lossy(&body))),
                    Err(e) => errors.lock().unwrap_or_else(|e| e.into_inner()).push(e.to_string()),
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let mut lat = lat.lock().unwrap_or_else(|e| e.into_inner()).clone();
    lat.sort_by(|x, y| x.total_cmp(y));
    let errors = errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(e) = errors.first() {
        eprintln!("  first error: {e}");
    }
    println!("topics={}", topics.len());
    println!("concurrency={}", a.concurrency);
    println!("seconds={}", a.seconds);
    println!("publishes={}", lat.len());
    println!("errors={}", errors.len());
    println!("publishes_per_s={:.1}", lat.len() as f64 / a.seconds as f64);
    println!("p50_ms={}", fmt_ms(percentile(&lat, 50.0)));
    println!("p90_ms={}", fmt_ms(percentile(&lat, 90.0)));
    println!("p99_ms={}", fmt_ms(percentile(&lat, 99.0)));
    println!("max_ms={}", fmt_ms(lat.last().copied().unwrap_or(f64::NAN)));
    Ok(())
}
