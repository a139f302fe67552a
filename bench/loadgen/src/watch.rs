//! `watch`: N gRPC Watch streams (distinct instances, multiplexed over a few HTTP/2
//! connections), waits until each has its first state, reads the server's RSS per stream,
//! then publishes one version over HTTP and times every stream's answer from the publish
//! request's start (the same measure as `park` for the HTTP long poll).
use crate::http::Api;
use crate::park::{held_version, publish_one};
use crate::procfs::{cpu_ticks, raise_nofile, rss_kb, self_cpu_s};
use crate::stats::{fmt_ms, percentile};
use crate::Result;
use clap::Args;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) mod pb {
    tonic::include_proto!("imprint.v1");
}

#[derive(Args)]
pub(crate) struct WatchArgs {
    /// Server base URL (HTTP API: publishing, metrics).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub(crate) url: String,
    /// gRPC URL (IMPRINT_GRPC_ADDR).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub(crate) grpc: String,
    /// Topic the streams watch (must exist).
    #[arg(long)]
    pub(crate) topic: String,
    #[arg(long, default_value_t = 10_000)]
    pub(crate) streams: usize,
    /// HTTP/2 connections the streams are spread over (the server allows 1 024 per connection).
    #[arg(long, default_value_t = 20)]
    pub(crate) connections: usize,
    #[arg(long)]
    pub(crate) token: String,
    /// Server process id (VmRSS).
    #[arg(long)]
    pub(crate) pid: Option<u32>,
    #[arg(long, default_value_t = 180)]
    pub(crate) start_timeout_s: u64,
    #[arg(long, default_value_t = 30)]
    pub(crate) answer_timeout_s: u64,
    #[arg(long, default_value_t = 1.0)]
    pub(crate) settle_s: f64,
}

pub(crate) async fn watch(a: WatchArgs) -> Result<()> {
    raise_nofile();
    let api = Api::new(&a.url, Some(a.token.clone()), 4);
    let held = held_version(&api, &a.topic).await?.unwrap_or(0);
    let rss0 = a.pid.and_then(rss_kb);
    eprintln!("watch: {} streams on {} over {} connections (held {held})", a.streams, a.topic, a.connections);
    let mut channels = Vec::new();
    for _ in 0..a.connections.max(1) {
        let ch = tonic::transport::Channel::from_shared(a.grpc.clone())?.connect().await?;
        channels.push(ch);
    }
    let started = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    // Per stream: when its answer after the publish came.
    let answers: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; a.streams]));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(a.streams);
    let open = Arc::new(tokio::sync::Semaphore::new(500));
    for i in 0..a.streams {
        let mut client = pb::imprint_client::ImprintClient::new(channels[i % channels.len()].clone());
        let (started, failed, answers, answered, open) =
            (started.clone(), failed.clone(), answers.clone(), answered.clone(), open.clone());
        let topic = a.topic.clone();
        tasks.push(tokio::spawn(async move {
            let permit = open.acquire_owned().await;
            let start = pb::WatchRequest {
                kind: Some(pb::watch_request::Kind::Start(pb::WatchStart {
                    consumer: Some(pb::Consumer { instance: format!("watch-{i}"), labels: Default::default() }),
                    topics: [(topic.clone(), held)].into_iter().collect(),
                    applied: Default::default(),
                })),
            };
            // The request side stays open (no half-close) for the stream's life.
            let (keep, rx) = tokio::sync::mpsc::channel::<pb::WatchRequest>(1);
            let _ = keep.send(start).await;
            let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
            let mut s = match client.watch(outbound).await {
                Ok(r) => r.into_inner(),
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("  watch {i}: {e}");
                    return;
                }
            };
            match s.message().await {
                Ok(Some(_)) => {
                    started.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("  watch {i} first state: {other:?}");
                    return;
                }
            }
            drop(permit);
            loop {
                match s.message().await {
                    Ok(Some(m)) if m.updates.contains_key(&topic) => {
                        answers.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(Instant::now());
                        answered.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Ok(Some(_)) => continue,
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            // Keep the stream open until the run ends (it is aborted then).
            let _open = keep;
            std::future::pending::<()>().await;
        }));
    }
    let t_start = Instant::now();
    let mut last = Instant::now();
    while started.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < a.streams {
        if t_start.elapsed() > Duration::from_secs(a.start_timeout_s) {
            break;
        }
        if last.elapsed() > Duration::from_secs(2) {
            eprintln!("  started {} (failed {})", started.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let start_s = t_start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(a.settle_s)).await;
    let rss1 = a.pid.and_then(rss_kb);
    let n_started = started.load(Ordering::Relaxed);
    println!("streams={}", a.streams);
    println!("connections={}", a.connections);
    println!("started={n_started}");
    println!("failed_before_publish={}", failed.load(Ordering::Relaxed));
    println!("start_seconds={start_s:.1}");
    println!("long_polls_open_gauge={}", api.metric("imprint_long_polls_open").await?.unwrap_or(f64::NAN));
    if let (Some(r0), Some(r1)) = (rss0, rss1) {
        println!("rss_before_kb={r0}");
        println!("rss_streams_kb={r1}");
        println!("rss_per_stream_bytes={:.0}", (r1 as f64 - r0 as f64) * 1024.0 / n_started.max(1) as f64);
    }
    let self0 = self_cpu_s();
    let server0 = a.pid.map(cpu_ticks).transpose()?;
    let t0 = Instant::now();
    publish_one(&api, &a.topic, "watch").await?;
    let publish_ms = t0.elapsed().as_secs_f64() * 1e3;
    let deadline = Instant::now() + Duration::from_secs(a.answer_timeout_s);
    while answered.load(Ordering::Relaxed) < n_started && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let window_ms = t0.elapsed().as_secs_f64() * 1e3;
    let self_ms = (self_cpu_s() - self0) * 1e3;
    let server1 = a.pid.map(cpu_ticks).transpose()?;
    let mut lat: Vec<f64> = answers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|at| at.map_or(f64::INFINITY, |at| at.saturating_duration_since(t0).as_secs_f64() * 1e3))
        .collect();
    lat.sort_by(|x, y| x.total_cmp(y));
    println!("publish_request_ms={publish_ms:.1}");
    println!("answer_window_ms={window_ms:.0}");
    println!("loadgen_cpu_ms={self_ms:.0}");
    if let (Some((s0, hz)), Some((s1, _))) = (server0, server1) {
        println!("server_cpu_ms={:.0}", (s1 - s0) as f64 * 1e3 / hz);
    }
    println!("answered={}", answered.load(Ordering::Relaxed));
    println!("unanswered={}", lat.iter().filter(|v| v.is_infinite()).count());
    println!("p50_ms={}", fmt_ms(percentile(&lat, 50.0)));
    println!("p90_ms={}", fmt_ms(percentile(&lat, 90.0)));
    println!("p99_ms={}", fmt_ms(percentile(&lat, 99.0)));
    println!("max_ms={}", fmt_ms(lat.last().copied().unwrap_or(f64::NAN)));
    for t in tasks {
        t.abort();
    }
    Ok(())
}
