//! `load`: the request mix of bench/scale-poll.lua sent from this process at a fixed
//! rate (or closed loop), with the server's CPU time per request.
use crate::http::authority;
use crate::procfs::{cpu_ticks, machine_busy_ticks, raise_nofile, self_cpu_s};
use crate::stats::{fmt_ms, percentile};
use crate::Result;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub(crate) struct LoadArgs {
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub(crate) url: String,
    /// Requests per second in all (0: closed loop, each connection as fast as it can).
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u64,
    /// Keep-alive connections (HTTP/1.1, one request in flight each).
    #[arg(long, default_value_t = 16)]
    pub(crate) connections: usize,
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Server process id: prints its CPU time per request.
    #[arg(long)]
    pub(crate) pid: Option<u32>,
    /// The request mix, as bench/scale-poll.lua reads it from the same variables.
    #[arg(long, env = "SCALE_TOPICS", default_value_t = 100)]
    pub(crate) topics: usize,
    #[arg(long, env = "SCALE_INSTANCES", default_value_t = 10_000)]
    pub(crate) instances: usize,
    #[arg(long, env = "SCALE_PER_POLL", default_value_t = 7)]
    pub(crate) per_poll: usize,
    #[arg(long, env = "SCALE_HELD", default_value_t = 20)]
    pub(crate) held: u64,
    #[arg(long, env = "SCALE_UPDATE", default_value = "0")]
    pub(crate) update: u8,
    #[arg(long, env = "SCALE_PREFIX", default_value = "scale.t-")]
    pub(crate) prefix: String,
}

/// The bodies bench/scale-poll.lua sends, built the same way.
fn poll_bodies(a: &LoadArgs) -> Vec<Bytes> {
    let regions = ["eu-west-1", "us-east-1", "ap-south-1"];
    (0..a.instances.max(1))
        .map(|n| {
            let topics: Vec<String> = (0..a.per_poll)
                .map(|k| {
                    let held = if a.update == 1 && k == 0 { a.held - 1 } else { a.held };
                    format!("\"{}{}\": {}", a.prefix, (n * a.per_poll + k) % a.topics.max(1), held)
                })
                .collect();
            Bytes::from(format!(
                "{{\"consumer\": {{\"instance\": \"node-{n}\", \"labels\": {{\"region\": \"{}\", \"app\": \"app-{}\"}}}}, \"topics\": {{{}}}}}",
                regions[n % 3],
                n % 20,
                topics.join(", ")
            ))
        })
        .collect()
}

pub(crate) async fn load(a: LoadArgs) -> Result<()> {
    raise_nofile();
    let (addr, host) = authority(&a.url)?;
    let bodies = Arc::new(poll_bodies(&a));
    let conns = a.connections.max(1);
    let interval = (a.rate > 0).then(|| Duration::from_secs_f64(conns as f64 / a.rate as f64));
    // connect first, then start the clock
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        senders.push(sender);
    }
    let cpu0 = a.pid.map(cpu_ticks).transpose()?;
    let (m0, self0) = (machine_busy_ticks(), self_cpu_s());
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for (i, mut sender) in senders.into_iter().enumerate() {
        let (bodies, host) = (bodies.clone(), host.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut non2xx, mut late, mut failed) = (0u64, 0u64, 0u64);
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let mut next = start + interval.map_or(Duration::ZERO, |iv| iv.mul_f64(i as f64 / conns as f64));
            loop {
                if let Some(iv) = interval {
                    let now = tokio::time::Instant::now();
                    if next > now {
                        tokio::time::sleep_until(next).await;
                    } else if now - next > iv {
                        late += 1;
                    }
                    next += iv;
                }
                let sent = tokio::time::Instant::now();
                if sent >= end {
                    break;
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let body = bodies[(rng % bodies.len() as u64) as usize].clone();
                let req = Request::post("/api/v1/poll")
                    .header("host", &host)
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .expect("request");
                match sender.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let ok = resp.into_body().collect().await.is_ok();
                        if !status.is_success() {
                            non2xx += 1;
                        }
                        if !ok {
                            failed += 1;
                        }
                        lat.push(sent.elapsed().as_secs_f64() * 1e3);
                    }
                    Err(_) => {
                        failed += 1;
                        break;
                    }
                }
            }
            (lat, non2xx, late, failed)
        }));
    }
    let mut lat = Vec::new();
    let (mut non2xx, mut late, mut failed) = (0, 0, 0);
    for t in tasks {
        let (l, n, la, f) = t.await?;
        lat.extend(l);
        non2xx += n;
        late += la;
        failed += f;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu1 = a.pid.map(cpu_ticks).transpose()?;
    let (m1, self1) = (machine_busy_ticks(), self_cpu_s());
    lat.sort_by(|x, y| x.total_cmp(y));
    let requests = lat.len() as u64;
    println!("wall_s={wall:.2}");
    println!("requests={requests}");
    println!("requests_per_s={:.0}", requests as f64 / wall);
    println!("target_rate={}", a.rate);
    println!("late={late}");
    println!("non_2xx={non2xx}");
    println!("failed={failed}");
    println!("p50_ms={}", fmt_ms(percentile(&lat, 50.0)));
    println!("p99_ms={}", fmt_ms(percentile(&lat, 99.0)));
    if let (Some((t0, hz)), Some((t1, _))) = (cpu0, cpu1) {
        let cpu_s = (t1 - t0) as f64 / hz;
        println!("cpu_s={cpu_s:.2}");
        println!("cpu_util={:.2}", cpu_s / wall);
        println!("cpu_us_per_request={:.2}", cpu_s * 1e6 / requests.max(1) as f64);
        println!("load_cpu_s={:.2}", self1 - self0);
        if let (Some(m0), Some(m1)) = (m0, m1) {
            let others = (m1 - m0) as f64 / hz - cpu_s - (self1 - self0);
            println!("others_cpu_s={:.2}", others.max(0.0));
        }
    }
    Ok(())
}
