//! `cpu`: runs a load command (wrk) and divides the server's CPU time by the requests
//! it served (read from wrk's output, or given).
use crate::procfs::{children_cpu_s, cpu_ticks, machine_busy_ticks, self_cpu_s};
use crate::Result;
use clap::Args;
use std::time::Instant;

#[derive(Args)]
pub(crate) struct CpuArgs {
    /// Server process id.
    #[arg(long)]
    pub(crate) pid: u32,
    /// Requests served (default: parsed from wrk's "N requests in" line).
    #[arg(long)]
    pub(crate) requests: Option<u64>,
    /// The load command, e.g. `-- wrk -t1 -c32 -d15s -s bench/scale-poll.lua http://…`.
    #[arg(trailing_var_arg = true, required = true)]
    pub(crate) command: Vec<String>,
}

pub(crate) fn cpu(a: CpuArgs) -> Result<()> {
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
