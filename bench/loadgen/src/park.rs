//! `park`: N long polls parked, the server's RSS per poll, then one publish and every
//! answer timed (or, with `--change-topic`, another topic changed and the wakeups counted).
use crate::http::{authority, Api};
use crate::polls::{spawn_group, tracing_note, Group, Outcome};
use crate::procfs::{all_process_ticks, cpu_ticks, machine_busy_ticks, raise_nofile, rss_kb, self_cpu_s, top_others};
use crate::stats::{fmt_ms, percentile};
use crate::Result;
use clap::Args;
use hyper::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub(crate) struct ParkArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub(crate) url: String,
    /// Topic the polls wait on (must exist).
    #[arg(long)]
    pub(crate) topic: String,
    /// Long polls to park (one connection each).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) polls: usize,
    /// Token for publishing.
    #[arg(long)]
    pub(crate) token: String,
    /// Server process id (for VmRSS from /proc/<pid>/status).
    #[arg(long)]
    pub(crate) pid: Option<u32>,
    /// `wait_ms` of every poll.
    #[arg(long, default_value_t = 60_000)]
    pub(crate) wait_ms: u64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    pub(crate) connect_concurrency: usize,
    /// Give up waiting for the polls to be parked after this long.
    #[arg(long, default_value_t = 120)]
    pub(crate) park_timeout_s: u64,
    /// Extra pause once all are parked, before RSS is read (without the gauge: the only wait).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) settle_s: f64,
    /// Wakeups mode: publish to this topic instead of --topic, and count --topic's answers.
    #[arg(long)]
    pub(crate) change_topic: Option<String>,
    /// Wakeups mode: polls also parked on --change-topic (they should be answered).
    #[arg(long, default_value_t = 100)]
    pub(crate) change_polls: usize,
    /// Wakeups mode: how long to watch for answers after the change.
    #[arg(long, default_value_t = 3_000)]
    pub(crate) observe_ms: u64,
    /// Park mode: give up waiting for answers after this long.
    #[arg(long, default_value_t = 30)]
    pub(crate) answer_timeout_s: u64,
    /// Instances are named <prefix>-<n>.
    #[arg(long, default_value = "park")]
    pub(crate) instance_prefix: String,
    /// HTTP client of the parked polls: `raw` (a minimal HTTP/1.1 exchange on a plain
    /// socket, cheapest) or `hyper` (hyper 1's http1 connection).
    #[arg(long, default_value = "raw")]
    pub(crate) client: String,
}

pub(crate) async fn held_version(api: &Api, topic: &str) -> Result<Option<u64>> {
    let (status, body) = api.send("GET", &format!("/api/v1/topics/{topic}"), None).await?;
    if !status.is_success() {
        return Err(format!("GET topic {topic}: {status} {}", String::from_utf8_lossy(&body)).into());
    }
    let v: Value = serde_json::from_slice(&body)?;
    Ok(v.get("latest_version").and_then(Value::as_u64).filter(|v| *v > 0))
}

pub(crate) async fn publish_one(api: &Api, topic: &str, note: &str) -> Result<()> {
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

pub(crate) async fn park(a: ParkArgs) -> Result<()> {
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
