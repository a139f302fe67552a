//! `fair` (bench/fairness.sh): one application (`--flood-token`) floods the server with
//! polls over `--flood-conns` connections, closed loop, retrying at once on a 429 (the worst
//! client: it ignores `Retry-After`), while another (`--calm-token`) polls at a modest fixed
//! rate; prints the calm application's latency percentiles and the flood's answers by
//! status. `--flood-conns 0`: the calm application alone (the baseline).
//!
//! `burst` (bench/fairness.sh): `--requests` identical GETs of `--path` sent at once, one
//! connection each; prints how many Postgres queries the coalesced reads made for them
//! (`imprint_coalesced_queries_total` before and after) and the answers by status.
use crate::http::{authority, Api};
use crate::procfs::raise_nofile;
use crate::stats::{fmt_ms, percentile};
use crate::Result;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::time::Duration;

#[derive(Args)]
pub(crate) struct FairArgs {
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub(crate) url: String,
    #[arg(long)]
    pub(crate) topic: String,
    #[arg(long)]
    pub(crate) calm_token: String,
    #[arg(long)]
    pub(crate) flood_token: String,
    /// The calm application's polls per second (over `--calm-conns` connections).
    #[arg(long, default_value_t = 50)]
    pub(crate) calm_rate: u64,
    #[arg(long, default_value_t = 4)]
    pub(crate) calm_conns: usize,
    /// The flooding application's connections, each as fast as it goes (0: no flood).
    #[arg(long, default_value_t = 64)]
    pub(crate) flood_conns: usize,
    #[arg(long, default_value_t = 20)]
    pub(crate) seconds: u64,
    /// A request slower than this counts as timed out (and ends its connection's loop).
    #[arg(long, default_value_t = 10)]
    pub(crate) timeout_s: u64,
}

#[derive(Default)]
struct Tally {
    lat_ms: Vec<f64>,
    ok: u64,
    too_many: u64,
    other: u64,
    failed: u64,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.lat_ms.extend(o.lat_ms);
        self.ok += o.ok;
        self.too_many += o.too_many;
        self.other += o.other;
        self.failed += o.failed;
    }
}

async fn connect(addr: std::net::SocketAddr) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One connection's polls until `end`: at `interval` (None: closed loop).
#[allow(clippy::too_many_arguments)]
async fn poller(
    addr: std::net::SocketAddr,
    host: String,
    token: String,
    body: Bytes,
    interval: Option<Duration>,
    offset: Duration,
    end: tokio::time::Instant,
    timeout: Duration,
) -> Tally {
    let mut t = Tally::default();
    let Ok(mut sender) = connect(addr).await else {
        t.failed += 1;
        return t;
    };
    let mut next = tokio::time::Instant::now() + offset;
    loop {
        if let Some(iv) = interval {
            tokio::time::sleep_until(next).await;
            next += iv;
        }
        let sent = tokio::time::Instant::now();
        if sent >= end {
            break;
        }
        if sender.ready().await.is_err() {
            // The server closed the connection (e.g. after a 429 with Connection: close).
            match connect(addr).await {
                Ok(s) => sender = s,
                Err(_) => {
                    t.failed += 1;
                    break;
                }
            }
        }
        let req = Request::post("/api/v1/poll")
            .header("host", &host)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .expect("request");
        let answered = tokio::time::timeout(timeout, async {
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok::<_, crate::Error>(status)
        })
        .await;
        match answered {
            Ok(Ok(status)) => {
                t.lat_ms.push(sent.elapsed().as_secs_f64() * 1e3);
                match status.as_u16() {
                    200..=299 => t.ok += 1,
                    429 => t.too_many += 1,
                    _ => t.other += 1,
                }
            }
            Ok(Err(_)) | Err(_) => {
                t.failed += 1;
                match connect(addr).await {
                    Ok(s) => sender = s,
                    Err(_) => break,
                }
            }
        }
    }
    t
}

fn poll_body(instance: &str, topic: &str) -> Bytes {
    Bytes::from(format!("{{\"consumer\": {{\"instance\": \"{instance}\"}}, \"topics\": {{\"{topic}\": null}}}}"))
}

pub(crate) async fn fair(a: FairArgs) -> Result<()> {
    raise_nofile();
    let (addr, host) = authority(&a.url)?;
    let timeout = Duration::from_secs(a.timeout_s.max(1));
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs(a.seconds);
    let calm_conns = a.calm_conns.max(1);
    let interval = Duration::from_secs_f64(calm_conns as f64 / a.calm_rate.max(1) as f64);
    // The calm application on its own thread and runtime: its latency must not include
    // waiting behind the flood's tasks in this process.
    let (topic, calm_token) = (a.topic.clone(), a.calm_token.clone());
    let calm_host = host.clone();
    let calm = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for i in 0..calm_conns {
                let offset = Duration::from_millis(200) + interval.mul_f64(i as f64 / calm_conns as f64);
                let body = poll_body(&format!("calm-{i}"), &topic);
                let (h, t) = (calm_host.clone(), calm_token.clone());
                tasks.push(tokio::spawn(poller(addr, h, t, body, Some(interval), offset, end, timeout)));
            }
            let mut c = Tally::default();
            for t in tasks {
                c.add(t.await.unwrap_or_default());
            }
            c
        })
    });
    let mut flood = Vec::new();
    for i in 0..a.flood_conns {
        let body = poll_body(&format!("flood-{i}"), &a.topic);
        let offset = Duration::from_millis(200);
        flood.push(tokio::spawn(poller(addr, host.clone(), a.flood_token.clone(), body, None, offset, end, timeout)));
    }
    let (mut c, mut f) = (Tally::default(), Tally::default());
    for t in flood {
        f.add(t.await?);
    }
    c.add(tokio::task::spawn_blocking(move || calm.join()).await?.map_err(|_| "the calm thread panicked")?);
    c.lat_ms.sort_by(|x, y| x.total_cmp(y));
    let secs = a.seconds as f64;
    println!("calm_requests={}", c.lat_ms.len());
    println!("calm_ok={}", c.ok);
    println!("calm_429={}", c.too_many);
    println!("calm_other={}", c.other);
    println!("calm_timed_out_or_failed={}", c.failed);
    println!("calm_p50_ms={}", fmt_ms(percentile(&c.lat_ms, 50.0)));
    println!("calm_p99_ms={}", fmt_ms(percentile(&c.lat_ms, 99.0)));
    println!("calm_max_ms={}", fmt_ms(c.lat_ms.last().copied().unwrap_or(f64::NAN)));
    println!("flood_conns={}", a.flood_conns);
    println!("flood_requests_per_s={:.0}", (f.ok + f.too_many + f.other) as f64 / secs);
    println!("flood_ok_per_s={:.0}", f.ok as f64 / secs);
    println!("flood_429={}", f.too_many);
    println!("flood_other={}", f.other);
    println!("flood_timed_out_or_failed={}", f.failed);
    Ok(())
}

#[derive(Args)]
pub(crate) struct BurstArgs {
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub(crate) url: String,
    /// The GET sent (e.g. /api/v1/topics/t/versions).
    #[arg(long)]
    pub(crate) path: String,
    #[arg(long)]
    pub(crate) token: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub(crate) requests: usize,
}

pub(crate) async fn burst(a: BurstArgs) -> Result<()> {
    raise_nofile();
    let (addr, host) = authority(&a.url)?;
    let api = Api::new(&a.url, None, 1);
    let metric = "imprint_coalesced_queries_total";
    // Connections first (one per request), then every request at once.
    let mut senders = Vec::with_capacity(a.requests);
    for _ in 0..a.requests {
        senders.push(connect(addr).await?);
    }
    let before = api.metric(metric).await?.unwrap_or(0.0);
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(a.requests));
    let started = tokio::time::Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut s| {
            let mut b = Request::get(a.path.as_str()).header("host", &host);
            if let Some(t) = &a.token {
                b = b.header("authorization", format!("Bearer {t}"));
            }
            let req = b.body(Full::new(Bytes::new())).expect("request");
            let go = go.clone();
            tokio::spawn(async move {
                go.wait().await;
                let resp = s.send_request(req).await.ok()?;
                let status = resp.status().as_u16();
                resp.into_body().collect().await.ok()?;
                Some(status)
            })
        })
        .collect();
    let (mut ok, mut other) = (0, 0);
    for t in tasks {
        match t.await? {
            Some(200) => ok += 1,
            _ => other += 1,
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let after = api.metric(metric).await?.unwrap_or(0.0);
    println!("requests={}", a.requests);
    println!("ok={ok}");
    println!("not_ok={other}");
    println!("wall_ms={:.0}", wall * 1e3);
    println!("postgres_queries={}", after - before);
    Ok(())
}
