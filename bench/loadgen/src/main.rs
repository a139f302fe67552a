//! imprint-loadgen: the load generator and reference server behind `bench/scale.sh`.
//!
//! Subcommands (each prints human lines on stderr and `key=value` results on stdout):
//!
//! * `park`         — N long polls (one TCP connection each, HTTP/1.1, distinct
//!                    `consumer.instance`), waits until the server holds them all
//!                    (`imprint_long_polls_open`), reads the server's RSS, then publishes
//!                    one version and times every answer from the publish request's start;
//!                    also the CPU the server, this process and the rest of the machine
//!                    used until the last answer. With `--change-topic B`: parks the polls
//!                    on `--topic` (plus a few on B), publishes to B instead and reports how
//!                    many of the others answered, and `imprint_long_poll_wakeups_total`
//!                    before and after.
//! * `bare-server`  — a bare axum 0.8 JSON handler: the CPU reference for the poll path.
//! * `publish-rate` — small JSON publishes to several topics for S seconds.
//! * `cpu`          — runs a load command (wrk) and divides the server's CPU time
//!                    (utime+stime from /proc/<pid>/stat) by the requests it served.
//! * `load`         — the request mix of bench/scale-poll.lua from this process, at a fixed
//!                    rate (or closed loop), with the server's CPU per request.
//! * `stat`         — a process's RSS and CPU seconds.
//!
//! Build: `CARGO_TARGET_DIR=/work/bench-target cargo build --release --manifest-path bench/loadgen/Cargo.toml`
//! (bench/scale.sh does it when the binary is missing). Examples:
//!
//!     imprint-loadgen park --url http://127.0.0.1:3910 --topic t --polls 10000 --token T --pid 1234
//!     imprint-loadgen park --url … --topic a --change-topic b --polls 10000 --token T
//!     imprint-loadgen bare-server --addr 127.0.0.1:3911
//!     imprint-loadgen publish-rate --url … --token T --seconds 15 --concurrency 16
//!     imprint-loadgen cpu --pid 1234 -- wrk -t1 -c16 -d10s -s bench/scale-poll.lua http://…
//!     SCALE_TOPICS=100 imprint-loadgen load --url … --rate 3000 --seconds 10 --pid 1234
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Parser)]
#[command(name = "imprint-loadgen", about = "Load generator and reference server for bench/scale.sh")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Park N long polls, publish once, time every answer (or: change another topic, count wakeups).
    Park(ParkArgs),
    /// A bare axum JSON handler answering every POST like a poll with nothing new (or with
    /// the JSON of `--answer`).
    BareServer(BareArgs),
    /// Small JSON publishes to several topics; publishes/s and latency percentiles.
    PublishRate(PublishArgs),
    /// Run a load command and print the server's CPU time per request served.
    Cpu(CpuArgs),
    /// Batch polls (as bench/scale-poll.lua) at a fixed rate or closed-loop; with --pid,
    /// the server's CPU time per request.
    Load(LoadArgs),
    /// Print a process's RSS (kB) and CPU time (s).
    Stat(StatArgs),
}

#[derive(Args)]
struct ParkArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// Topic the polls wait on (must exist).
    #[arg(long)]
    topic: String,
    /// Long polls to park (one connection each).
    #[arg(long, default_value_t = 10_000)]
    polls: usize,
    /// Token for publishing.
    #[arg(long)]
    token: String,
    /// Server process id (for VmRSS from /proc/<pid>/status).
    #[arg(long)]
    pid: Option<u32>,
    /// `wait_ms` of every poll.
    #[arg(long, default_value_t = 60_000)]
    wait_ms: u64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Give up waiting for the polls to be parked after this long.
    #[arg(long, default_value_t = 120)]
    park_timeout_s: u64,
    /// Extra pause once all are parked, before RSS is read (without the gauge: the only wait).
    #[arg(long, default_value_t = 1.0)]
    settle_s: f64,
    /// Wakeups mode: publish to this topic instead of --topic, and count --topic's answers.
    #[arg(long)]
    change_topic: Option<String>,
    /// Wakeups mode: polls also parked on --change-topic (they should be answered).
    #[arg(long, default_value_t = 100)]
    change_polls: usize,
    /// Wakeups mode: how long to watch for answers after the change.
    #[arg(long, default_value_t = 3_000)]
    observe_ms: u64,
    /// Park mode: give up waiting for answers after this long.
    #[arg(long, default_value_t = 30)]
    answer_timeout_s: u64,
    /// Instances are named <prefix>-<n>.
    #[arg(long, default_value = "park")]
    instance_prefix: String,
    /// HTTP client of the parked polls: `raw` (a minimal HTTP/1.1 exchange on a plain
    /// socket, cheapest) or `hyper` (hyper 1's http1 connection).
    #[arg(long, default_value = "raw")]
    client: String,
}

#[derive(Args)]
struct BareArgs {
    #[arg(long, default_value = "127.0.0.1:3950")]
    addr: SocketAddr,
    /// Answer with this JSON (read once, serialised per request like any handler's
    /// answer) instead of an empty poll answer: the reference for answers of that size.
    #[arg(long)]
    answer: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct PublishArgs {
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    #[arg(long)]
    token: String,
    /// Topics published to, round-robin (created when missing).
    #[arg(long, default_value_t = 8)]
    topics: usize,
    #[arg(long, default_value = "scale.pub")]
    prefix: String,
    /// Measured seconds.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Unmeasured seconds first.
    #[arg(long, default_value_t = 2)]
    warmup_s: u64,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Approximate size of each JSON payload.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
}

#[derive(Args)]
struct CpuArgs {
    /// Server process id.
    #[arg(long)]
    pid: u32,
    /// Requests served (default: parsed from wrk's "N requests in" line).
    #[arg(long)]
    requests: Option<u64>,
    /// The load command, e.g. `-- wrk -t1 -c32 -d15s -s bench/scale-poll.lua http://…`.
    #[arg(trailing_var_arg = true, required = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct LoadArgs {
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// Requests per second in all (0: closed loop, each connection as fast as it can).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Keep-alive connections (HTTP/1.1, one request in flight each).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Server process id: prints its CPU time per request.
    #[arg(long)]
    pid: Option<u32>,
    /// The request mix, as bench/scale-poll.lua reads it from the same variables.
    #[arg(long, env = "SCALE_TOPICS", default_value_t = 100)]
    topics: usize,
    #[arg(long, env = "SCALE_INSTANCES", default_value_t = 10_000)]
    instances: usize,
    #[arg(long, env = "SCALE_PER_POLL", default_value_t = 7)]
    per_poll: usize,
    #[arg(long, env = "SCALE_HELD", default_value_t = 20)]
    held: u64,
    #[arg(long, env = "SCALE_UPDATE", default_value = "0")]
    update: u8,
    #[arg(long, env = "SCALE_PREFIX", default_value = "scale.t-")]
    prefix: String,
}

#[derive(Args)]
struct StatArgs {
    #[arg(long)]
    pid: u32,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Cpu(a) => cpu(a),
        Cmd::Stat(a) => {
            let (ticks, hz) = cpu_ticks(a.pid)?;
            println!("rss_kb={}", rss_kb(a.pid).unwrap_or(0));
            println!("cpu_s={:.2}", ticks as f64 / hz);
            Ok(())
        }
        cmd => tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async move {
            match cmd {
                Cmd::Park(a) => park(a).await,
                Cmd::BareServer(a) => bare_server(a).await,
                Cmd::PublishRate(a) => publish_rate(a).await,
                Cmd::Load(a) => load(a).await,
                Cmd::Cpu(_) | Cmd::Stat(_) => unreachable!(),
            }
        }),
    }
}

// ------------------------------------------------------------------ /proc ----

/// VmRSS of a process in kB.
fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// utime+stime of a process (all its threads, live and exited) in clock ticks, and ticks/s.
fn cpu_ticks(pid: u32) -> Result<(u64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &s[s.rfind(')').ok_or("bad /proc stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f[11].parse()?;
    let stime: u64 = f[12].parse()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime, if hz > 0.0 { hz } else { 100.0 }))
}

/// Busy clock ticks of the whole machine so far (all CPUs; /proc/stat minus idle and iowait).
fn machine_busy_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = s.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = f.iter().take(8).sum();
    Some(total - f.get(3)? - f.get(4)?)
}

/// CPU ticks of every process now (pid → (command, utime+stime)).
fn all_process_ticks() -> std::collections::HashMap<u32, (String, u64)> {
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let (Some(open), Some(close)) = (s.find('('), s.rfind(')')) else { continue };
        let comm = s[open + 1..close].to_owned();
        let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
        if let (Some(u), Some(st)) =
            (f.get(11).and_then(|v| v.parse::<u64>().ok()), f.get(12).and_then(|v| v.parse::<u64>().ok()))
        {
            out.insert(pid, (comm, u + st));
        }
    }
    out
}

/// The processes (other than `skip`) that used the most CPU between two snapshots, by
/// command name: "postgres:310ms rustc:120ms".
fn top_others(
    before: &std::collections::HashMap<u32, (String, u64)>,
    after: &std::collections::HashMap<u32, (String, u64)>,
    skip: &[u32],
    hz: f64,
) -> String {
    let mut by_comm: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for (pid, (comm, t1)) in after {
        if skip.contains(pid) {
            continue;
        }
        let t0 = before.get(pid).map_or(0, |(_, t)| *t);
        *by_comm.entry(comm.as_str()).or_default() += t1.saturating_sub(t0);
    }
    let mut v: Vec<(&str, u64)> = by_comm.into_iter().filter(|(_, t)| *t > 0).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1));
    v.iter()
        .take(4)
        .map(|(c, t)| format!("{}:{:.0}ms", c.replace(' ', "_"), *t as f64 * 1e3 / hz))
        .collect::<Vec<_>>()
        .join(",")
}

/// CPU time (user + system) of this process so far, in seconds.
fn self_cpu_s() -> f64 {
    // SAFETY: getrusage fills a plain struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// CPU time of this process's waited-for children (the load command of `cpu`), in seconds.
fn children_cpu_s() -> f64 {
    // SAFETY: getrusage fills a plain struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
fn raise_nofile() -> u64 {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit { rlim_cur: rl.rlim_max, rlim_max: rl.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return rl.rlim_max;
            }
        }
    }
    rl.rlim_cur
}

// ------------------------------------------------------------------ HTTP ----

struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(base: &str, token: Option<String>, pool: usize) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(pool.max(1)).build(conn);
        Self { client, base: base.trim_end_matches('/').to_owned(), token }
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<(StatusCode, Bytes)> {
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
    async fn metric(&self, name: &str) -> Result<Option<f64>> {
        let (status, body) = self.send("GET", "/metrics", None).await?;
        if !status.is_success() {
            return Err(format!("/metrics: {status}").into());
        }
        Ok(parse_metric(&String::from_utf8_lossy(&body), name))
    }
}

fn parse_metric(text: &str, name: &str) -> Option<f64> {
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

fn authority(url: &str) -> Result<(SocketAddr, String)> {
    let uri: hyper::Uri = url.parse()?;
    let host = uri.host().ok_or("URL without host")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))?.next().ok_or("cannot resolve host")?;
    Ok((addr, format!("{host}:{port}")))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn fmt_ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "unanswered".to_owned()
    }
}

// ------------------------------------------------------------------ park ----

#[derive(Clone, Debug)]
enum Outcome {
    /// Answered with at least one update.
    Update(Instant),
    /// Answered with nothing new; `busy` when the server refused to hold it (poll_after_ms ≥ 5 s).
    Empty {
        at: Instant,
        busy: bool,
    },
    Failed {
        at: Instant,
        error: String,
    },
    /// Not parsed yet.
    Raw {
        at: Instant,
        status: StatusCode,
        body: Bytes,
    },
}

impl Outcome {
    fn at(&self) -> Instant {
        match self {
            Outcome::Update(at) | Outcome::Empty { at, .. } | Outcome::Failed { at, .. } | Outcome::Raw { at, .. } => {
                *at
            }
        }
    }
}

/// A group of parked polls on one topic.
struct Group {
    results: Arc<Mutex<Vec<Option<Outcome>>>>,
    answered: Arc<AtomicUsize>,
    connected: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Group {
    fn outcomes(&self) -> Vec<Option<Outcome>> {
        let raw = self.results.lock().unwrap_or_else(|e| e.into_inner()).clone();
        raw.into_iter().map(|o| o.map(classify)).collect()
    }
}

/// One long poll on its own connection. Returns the answer unparsed (stamped the moment
/// its last byte was read), so that answering 10 000 polls costs this process as little
/// as possible while the rest are still arriving; `classify` parses it afterwards. One
/// task drives both the connection and the exchange (no extra task per poll).
/// Keeps an answered poll's connection open: closing 10 000 sockets while other answers are
/// still on their way would load both ends (on loopback the close is processed for both
/// sides by the closer) and skew the latencies of the polls still waiting.
type Guard = Box<dyn std::any::Any + Send>;

/// A connection to `addr` (one of `connect`'s permits at a time), retried with a growing
/// pause while the server's accept queue is full.
async fn connect_with_retry(addr: SocketAddr, connect: &tokio::sync::Semaphore) -> Result<tokio::net::TcpStream> {
    let _permit = connect.acquire().await?;
    let mut tries = 0;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) if tries < 20 => {
                tries += 1;
                tracing_note(&format!("connect failed ({e}); retrying"));
                tokio::time::sleep(Duration::from_millis(50 * tries)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn one_poll(
    addr: SocketAddr,
    host: &str,
    body: Bytes,
    connect: &tokio::sync::Semaphore,
) -> Result<(Outcome, Guard)> {
    let stream = connect_with_retry(addr, connect).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let req = Request::post("/api/v1/poll")
        .header("host", host)
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let exchange = async move {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, Error>((Outcome::Raw { at: Instant::now(), status, body }, sender))
    };
    tokio::pin!(exchange);
    let mut conn = Box::pin(conn);
    let (outcome, sender) = tokio::select! {
        biased;
        // The connection first: it reads the socket and hands the answer over, which the
        // exchange then finds ready in the same wake-up.
        c = &mut conn => {
            c?;
            let (o, _) = exchange.await?;
            return Ok((o, Box::new(())));
        }
        r = &mut exchange => r?,
    };
    Ok((outcome, Box::new((sender, conn))))
}

/// The same long poll over a plain socket: a hand-written HTTP/1.1 request and a minimal
/// response reader (status line, Content-Length or chunked). Costs this process a fraction
/// of hyper's CPU per answer, which matters when 10 000 answers and the server share two
/// cores: every microsecond spent here is added to the latencies measured.
async fn one_poll_raw(
    addr: SocketAddr,
    host: &str,
    body: Bytes,
    connect: &tokio::sync::Semaphore,
) -> Result<(Outcome, Guard)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = connect_with_retry(addr, connect).await?;
    stream.set_nodelay(true)?;
    let mut req = format!(
        "POST /api/v1/poll HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    stream.write_all(&req).await?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(format!("connection closed after {} bytes of answer", buf.len()).into());
        }
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = std::str::from_utf8(&buf[..head_end])?;
        let start = head_end + 4;
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let complete = match header("content-length") {
            Some(cl) => buf.len() >= start + cl.parse::<usize>()?,
            None if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) => {
                buf.ends_with(b"0\r\n\r\n")
            }
            None => false,
        };
        if !complete {
            continue;
        }
        let at = Instant::now();
        let status: u16 = head.split_whitespace().nth(1).ok_or("no status")?.parse()?;
        let body = match header("content-length") {
            Some(cl) => Bytes::copy_from_slice(&buf[start..start + cl.parse::<usize>()?]),
            None => dechunk(&buf[start..])?,
        };
        return Ok((Outcome::Raw { at, status: StatusCode::from_u16(status)?, body }, Box::new(stream)));
    }
}

fn dechunk(mut b: &[u8]) -> Result<Bytes> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end])?.split(';').next().unwrap_or("").trim(), 16)?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(Bytes::from(out));
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Parses a raw answer: with an update, empty (busy: refused as a long poll), or failed.
fn classify(o: Outcome) -> Outcome {
    let Outcome::Raw { at, status, body } = o else { return o };
    if !status.is_success() {
        return Outcome::Failed { at, error: format!("{status}: {}", String::from_utf8_lossy(&body)) };
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return Outcome::Failed { at, error: format!("bad JSON: {e}") },
    };
    if v.get("updates").and_then(Value::as_object).is_some_and(|u| !u.is_empty()) {
        Outcome::Update(at)
    } else {
        let busy = v.get("poll_after_ms").and_then(Value::as_u64).unwrap_or(0) >= 5_000;
        Outcome::Empty { at, busy }
    }
}

static NOTES: AtomicUsize = AtomicUsize::new(0);
fn tracing_note(msg: &str) {
    // At most a few such lines, not ten thousand.
    if NOTES.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!("  note: {msg}");
    }
}

fn spawn_group(
    addr: SocketAddr,
    host: &str,
    topic: &str,
    held: Option<u64>,
    n: usize,
    prefix: &str,
    wait_ms: u64,
    connect: Arc<tokio::sync::Semaphore>,
    raw: bool,
) -> Group {
    let results = Arc::new(Mutex::new(vec![None; n]));
    let answered = Arc::new(AtomicUsize::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let body = json!({
            "consumer": {"instance": format!("{prefix}-{i}"), "labels": {"region": format!("region-{}", i % 10), "app": "scale"}},
            "topics": {topic: held},
            "wait_ms": wait_ms,
        });
        let body = Bytes::from(serde_json::to_vec(&body).expect("json"));
        let (results, answered, connected, connect, host) =
            (results.clone(), answered.clone(), connected.clone(), connect.clone(), host.to_owned());
        tasks.push(tokio::spawn(async move {
            connected.fetch_add(1, Ordering::Relaxed);
            let r = if raw {
                one_poll_raw(addr, &host, body, &connect).await
            } else {
                one_poll(addr, &host, body, &connect).await
            };
            let (outcome, guard) = match r {
                Ok((o, g)) => (o, Some(g)),
                Err(e) => (Outcome::Failed { at: Instant::now(), error: e.to_string() }, None),
            };
            results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(outcome);
            answered.fetch_add(1, Ordering::Relaxed);
            if guard.is_some() {
                // hold the connection until the run ends (the task is aborted then)
                std::future::pending::<()>().await
            }
        }));
    }
    Group { results, answered, connected, tasks }
}

async fn held_version(api: &Api, topic: &str) -> Result<Option<u64>> {
    let (status, body) = api.send("GET", &format!("/api/v1/topics/{topic}"), None).await?;
    if !status.is_success() {
        return Err(format!("GET topic {topic}: {status} {}", String::from_utf8_lossy(&body)).into());
    }
    let v: Value = serde_json::from_slice(&body)?;
    Ok(v.get("latest_version").and_then(Value::as_u64).filter(|v| *v > 0))
}

async fn publish_one(api: &Api, topic: &str, note: &str) -> Result<()> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let data = json!({"bench": note, "at_ms": now as u64}).to_string();
    let (status, body) =
        api.send("POST", &format!("/api/v1/topics/{topic}/versions"), Some(json!({"data": data}))).await?;
    if status != StatusCode::CREATED && !status.is_success() {
        return Err(format!("publish to {topic}: {status} {}", String::from_utf8_lossy(&body)).into());
    }
    Ok(())
}

/// Waits until the server holds `target` long polls (gauge) or every poll of `groups` is
/// answered early; without the gauge, until all connections were started, plus a pause.
async fn wait_parked(
    api: &Api,
    base_gauge: Option<f64>,
    groups: &[&Group],
    target: usize,
    timeout: Duration,
) -> Result<bool> {
    let started = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let early: usize = groups.iter().map(|g| g.answered.load(Ordering::Relaxed)).sum();
        let connected: usize = groups.iter().map(|g| g.connected.load(Ordering::Relaxed)).sum();
        let open = match base_gauge {
            Some(b) => api.metric("imprint_long_polls_open").await?.map(|g| (g - b).max(0.0) as usize),
            None => None,
        };
        let done = match open {
            Some(open) => open + early >= target,
            None => connected >= target && started.elapsed() > Duration::from_secs(5),
        };
        if last_print.elapsed() > Duration::from_secs(2) || done {
            eprintln!(
                "  parked: {} of {target} (answered early: {early}) after {:.1}s",
                open.map_or("?".to_owned(), |o| o.to_string()),
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        if done {
            return Ok(true);
        }
        if started.elapsed() > timeout {
            eprintln!("  gave up waiting for the polls to be parked");
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn park(a: ParkArgs) -> Result<()> {
    let nofile = raise_nofile();
    let need = a.polls + if a.change_topic.is_some() { a.change_polls } else { 0 } + 64;
    if (nofile as usize) < need {
        return Err(format!("open-file limit {nofile} is below the {need} this run needs").into());
    }
    let (addr, host) = authority(&a.url)?;
    let api = Api::new(&a.url, Some(a.token.clone()), 4);
    let held = held_version(&api, &a.topic).await?;
    let base_gauge = api.metric("imprint_long_polls_open").await?.or(Some(0.0));
    let wake0 = api.metric("imprint_long_poll_wakeups_total").await?.unwrap_or(0.0);
    let rss0 = a.pid.and_then(rss_kb);
    eprintln!(
        "park: {} polls on {} (held version {:?}), server RSS before {} kB",
        a.polls,
        a.topic,
        held,
        rss0.map_or("?".into(), |r| r.to_string())
    );
    let connect = Arc::new(tokio::sync::Semaphore::new(a.connect_concurrency.max(1)));
    let raw = match a.client.as_str() {
        "raw" => true,
        "hyper" => false,
        other => return Err(format!("--client raw|hyper, not {other}").into()),
    };
    let group = spawn_group(addr, &host, &a.topic, held, a.polls, &a.instance_prefix, a.wait_ms, connect.clone(), raw);
    let other = match &a.change_topic {
        Some(b) if a.change_polls > 0 => {
            let held_b = held_version(&api, b).await?;
            Some(spawn_group(
                addr,
                &host,
                b,
                held_b,
                a.change_polls,
                &format!("{}-b", a.instance_prefix),
                a.wait_ms,
                connect,
                raw,
            ))
        }
        _ => None,
    };
    let total = a.polls + other.as_ref().map_or(0, |g| g.tasks.len());
    let mut groups: Vec<&Group> = vec![&group];
    groups.extend(other.as_ref());
    let t_park = Instant::now();
    let parked_all = wait_parked(&api, base_gauge, &groups, total, Duration::from_secs(a.park_timeout_s)).await?;
    let park_s = t_park.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(a.settle_s)).await;
    let rss1 = a.pid.and_then(rss_kb);
    let gauge_now = api.metric("imprint_long_polls_open").await?;
    let early: Vec<Outcome> = group.outcomes().into_iter().flatten().collect();
    let early_busy = early.iter().filter(|o| matches!(o, Outcome::Empty { busy: true, .. })).count();
    let early_failed: Vec<&String> =
        early.iter().filter_map(|o| if let Outcome::Failed { error, .. } = o { Some(error) } else { None }).collect();
    println!("polls={}", a.polls);
    println!("parked_all={parked_all}");
    println!("park_seconds={park_s:.1}");
    println!("long_polls_open_gauge={}", gauge_now.map_or("absent".into(), |g| format!("{g}")));
    println!("answered_before_change={}", early.len());
    println!("refused_busy={early_busy}");
    println!("failed_before_change={}", early_failed.len());
    if let Some(e) = early_failed.first() {
        eprintln!("  first failure: {e}");
    }
    if let (Some(r0), Some(r1)) = (rss0, rss1) {
        println!("rss_before_kb={r0}");
        println!("rss_parked_kb={r1}");
        let held_polls = total.saturating_sub(early.len()).max(1);
        println!("rss_per_poll_bytes={:.0}", (r1 as f64 - r0 as f64) * 1024.0 / held_polls as f64);
    }
    let wake1 = api.metric("imprint_long_poll_wakeups_total").await?.unwrap_or(0.0);
    let waiting: Vec<usize> =
        group.outcomes().iter().enumerate().filter(|(_, o)| o.is_none()).map(|(i, _)| i).collect();

    match &a.change_topic {
        None => {
            // Park mode: publish to the topic they wait on, time every answer.
            let self0 = self_cpu_s();
            let machine0 = machine_busy_ticks();
            let procs0 = all_process_ticks();
            let server0 = a.pid.map(cpu_ticks).transpose()?;
            let t0 = Instant::now();
            publish_one(&api, &a.topic, "park").await?;
            let publish_ms = t0.elapsed().as_secs_f64() * 1e3;
            let deadline = Instant::now() + Duration::from_secs(a.answer_timeout_s);
            while group.answered.load(Ordering::Relaxed) < a.polls && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let window_ms = t0.elapsed().as_secs_f64() * 1e3;
            let self_ms = (self_cpu_s() - self0) * 1e3;
            let machine1 = machine_busy_ticks();
            let procs1 = all_process_ticks();
            let server1 = a.pid.map(cpu_ticks).transpose()?;
            let outcomes = group.outcomes();
            let mut lat = Vec::new();
            let (mut updated, mut empty, mut failed) = (0, 0, 0);
            for i in &waiting {
                match &outcomes[*i] {
                    Some(Outcome::Update(at)) => {
                        updated += 1;
                        lat.push(at.saturating_duration_since(t0).as_secs_f64() * 1e3);
                    }
                    Some(o @ Outcome::Empty { .. }) => {
                        empty += 1;
                        lat.push(o.at().saturating_duration_since(t0).as_secs_f64() * 1e3);
                    }
                    Some(Outcome::Failed { at, error }) => {
                        failed += 1;
                        tracing_note(&format!("poll failed: {error}"));
                        lat.push(at.saturating_duration_since(t0).as_secs_f64() * 1e3);
                    }
                    Some(Outcome::Raw { .. }) => unreachable!("classified"),
                    None => lat.push(f64::INFINITY),
                }
            }
            lat.sort_by(|x, y| x.total_cmp(y));
            println!("publish_request_ms={publish_ms:.1}");
            // Who used the two cores until the last answer: this load generator and the server.
            println!("answer_window_ms={window_ms:.0}");
            println!("loadgen_cpu_ms={self_ms:.0}");
            if let (Some((s0, hz)), Some((s1, _))) = (server0, server1) {
                println!("server_cpu_ms={:.0}", (s1 - s0) as f64 * 1e3 / hz);
                if let (Some(m0), Some(m1)) = (machine0, machine1) {
                    // everything else on the machine (Postgres, other work) in the same window
                    let busy_ms = (m1 - m0) as f64 * 1e3 / hz;
                    println!("machine_busy_ms={busy_ms:.0}");
                    // everything but the server and this process (including processes that
                    // ended in the window): other work on the machine skews the latencies
                    let others = busy_ms - (s1 - s0) as f64 * 1e3 / hz - self_ms;
                    println!("others_ms={:.0}", others.max(0.0));
                    let skip = [a.pid.unwrap_or(0), std::process::id()];
                    println!("others_cpu={}", top_others(&procs0, &procs1, &skip, hz));
                }
            }
            println!("timed_polls={}", waiting.len());
            println!("answered_with_update={updated}");
            println!("answered_empty={empty}");
            println!("failed={failed}");
            println!("unanswered={}", lat.iter().filter(|v| v.is_infinite()).count());
            println!("p50_ms={}", fmt_ms(percentile(&lat, 50.0)));
            println!("p90_ms={}", fmt_ms(percentile(&lat, 90.0)));
            println!("p99_ms={}", fmt_ms(percentile(&lat, 99.0)));
            println!("max_ms={}", fmt_ms(lat.last().copied().unwrap_or(f64::NAN)));
            println!("min_ms={}", fmt_ms(lat.first().copied().unwrap_or(f64::NAN)));
        }
        Some(b) => {
            // Wakeups mode: change B; nobody waiting on the parked topic should hear of it.
            let t0 = Instant::now();
            publish_one(&api, b, "wakeups").await?;
            let publish_ms = t0.elapsed().as_secs_f64() * 1e3;
            tokio::time::sleep(Duration::from_millis(a.observe_ms)).await;
            let wake2 = api.metric("imprint_long_poll_wakeups_total").await?.unwrap_or(0.0);
            let outcomes = group.outcomes();
            let a_answered = waiting.iter().filter(|i| outcomes[**i].is_some()).count();
            let (b_parked, b_answered) = match &other {
                Some(g) => (g.tasks.len(), g.answered.load(Ordering::Relaxed)),
                None => (0, 0),
            };
            let wakeups = wake2 - wake1;
            // Wakeups the server counted beyond the polls that wait on B.
            let beyond = (wakeups - b_parked as f64).max(0.0);
            println!("change_topic={b}");
            println!("publish_request_ms={publish_ms:.1}");
            println!("other_topic_parked={}", waiting.len());
            println!("other_topic_answered={a_answered}");
            println!("changed_topic_parked={b_parked}");
            println!("changed_topic_answered={b_answered}");
            println!("wakeups_total_before={wake1}");
            println!("wakeups_total_after={wake2}");
            println!("wakeups_delta={wakeups}");
            println!("wakeups_beyond_changed_topic={beyond}");
            println!("others_woken={}", a_answered.max(beyond as usize));
            let _ = wake0;
        }
    }
    for t in group.tasks.iter().chain(other.iter().flat_map(|g| g.tasks.iter())) {
        t.abort();
    }
    Ok(())
}

// ------------------------------------------------------------ bare server ----

async fn bare_poll(
    axum::extract::State(answer): axum::extract::State<Arc<Value>>,
    axum::Json(req): axum::Json<Value>,
) -> axum::Json<Value> {
    std::hint::black_box(&req);
    axum::Json(Value::clone(&answer))
}

async fn bare_server(a: BareArgs) -> Result<()> {
    raise_nofile();
    let answer: Value = match &a.answer {
        Some(path) => serde_json::from_slice(&std::fs::read(path)?)?,
        None => json!({"updates": {}, "missing": {}, "poll_after_ms": 0}),
    };
    let app = axum::Router::new()
        .route("/api/v1/poll", axum::routing::post(bare_poll))
        .fallback(axum::routing::post(bare_poll))
        .with_state(Arc::new(answer));
    let listener = tokio::net::TcpListener::bind(a.addr).await?;
    eprintln!("bare axum JSON handler on http://{} (pid {})", a.addr, std::process::id());
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
            tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
        })
        .await?;
    Ok(())
}

// ----------------------------------------------------------- publish-rate ----

async fn publish_rate(a: PublishArgs) -> Result<()> {
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

// -------------------------------------------------------------------- cpu ----

fn cpu(a: CpuArgs) -> Result<()> {
    let (t0, hz) = cpu_ticks(a.pid)?;
    let (m0, c0, s0) = (machine_busy_ticks(), children_cpu_s(), self_cpu_s());
    let started = Instant::now();
    let out = std::process::Command::new(&a.command[0])
        .args(&a.command[1..])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let wall = started.elapsed().as_secs_f64();
    let (t1, _) = cpu_ticks(a.pid)?;
    let (m1, c1, s1) = (machine_busy_ticks(), children_cpu_s(), self_cpu_s());
    let text = String::from_utf8_lossy(&out.stdout);
    eprint!("{text}");
    if !out.status.success() {
        return Err(format!("load command failed: {}", out.status).into());
    }
    // wrk: "  123456 requests in 15.00s, 12.34MB read"; "  Non-2xx or 3xx responses: 12"
    let parsed =
        text.lines().find_map(|l| l.split_once(" requests in ").map(|(n, _)| n.trim().parse::<u64>())).transpose()?;
    let non2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:").map(|n| n.trim().parse::<u64>()))
        .transpose()?
        .unwrap_or(0);
    // wrk --latency: "     99%    2.52ms"
    let p99_ms = text.lines().find_map(|l| {
        let v = l.trim().strip_prefix("99%")?.trim();
        let (num, mult) = if let Some(n) = v.strip_suffix("us") {
            (n, 1e-3)
        } else if let Some(n) = v.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = v.strip_suffix("m") {
            (n, 60e3)
        } else {
            (v.strip_suffix('s')?, 1e3)
        };
        num.parse::<f64>().ok().map(|n| n * mult)
    });
    let socket_errors = text.lines().find(|l| l.trim().starts_with("Socket errors:")).map(|l| l.trim().to_owned());
    let requests = a.requests.or(parsed).ok_or("cannot tell how many requests were served (pass --requests)")?;
    let cpu_s = (t1 - t0) as f64 / hz;
    println!("wall_s={wall:.2}");
    println!("requests={requests}");
    println!("requests_per_s={:.0}", requests as f64 / wall);
    println!("non_2xx={non2xx}");
    if let Some(p) = p99_ms {
        println!("p99_ms={p:.2}");
    }
    if let Some(e) = socket_errors {
        println!("socket_errors=\"{e}\"");
    }
    println!("cpu_s={cpu_s:.2}");
    println!("cpu_util={:.2}", cpu_s / wall);
    println!("cpu_us_per_request={:.2}", cpu_s * 1e6 / requests.max(1) as f64);
    println!("load_cpu_s={:.2}", (c1 - c0) + (s1 - s0));
    if let (Some(m0), Some(m1)) = (m0, m1) {
        // CPU the rest of the machine used meanwhile (Postgres, other work)
        let others = (m1 - m0) as f64 / hz - cpu_s - (c1 - c0) - (s1 - s0);
        println!("others_cpu_s={:.2}", others.max(0.0));
    }
    Ok(())
}

// ------------------------------------------------------------------- load ----

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

async fn load(a: LoadArgs) -> Result<()> {
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
