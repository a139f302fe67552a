//! imprint-loadgen: the load generator and reference server behind `bench/scale.sh`.
//!
//! Subcommands (each prints human lines on stderr and `key=value` results on stdout):
//!
//! * `park`         — N long polls (one TCP connection each, HTTP/1.1, distinct
//!   `consumer.instance`), waits until the server holds them all (`imprint_long_polls_open`),
//!   reads the server's RSS, then publishes one version and times every answer from the
//!   publish request's start; also the CPU the server, this process and the rest of the
//!   machine used until the last answer. With `--change-topic B`: parks the polls on
//!   `--topic` (plus a few on B), publishes to B instead and reports how many of the others
//!   answered, and `imprint_long_poll_wakeups_total` before and after.
//! * `bare-server`  — a bare axum 0.8 JSON handler: the CPU reference for the poll path.
//! * `publish-rate` — small JSON publishes to several topics for S seconds.
//! * `cpu`          — runs a load command (wrk) and divides the server's CPU time
//!   (utime+stime from /proc/<pid>/stat) by the requests it served.
//! * `load`         — the request mix of bench/scale-poll.lua from this process, at a fixed
//!   rate (or closed loop), with the server's CPU per request.
//! * `stat`         — a process's RSS and CPU seconds.
//! * `watch`        — N gRPC Watch streams (bench/grpc.sh): the `park` measure over gRPC.
//! * `fair`, `burst` — fair serving under a flood, and coalesced identical reads
//!   (bench/fairness.sh).
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
//!
//! One file per subcommand (`park`, `bare`, `publish`, `cpu`, `load`; `stat` is here),
//! on `polls` (the parked connections), `http` (the API client), `procfs` (RSS, CPU
//! ticks) and `stats` (percentiles).
mod bare;
mod cpu;
mod fair;
mod http;
mod load;
mod park;
mod polls;
mod procfs;
mod publish;
mod stats;
mod watch;

use clap::{Args, Parser, Subcommand};

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
    Park(park::ParkArgs),
    /// A bare axum JSON handler answering every POST like a poll with nothing new (or with
    /// the JSON of `--answer`).
    BareServer(bare::BareArgs),
    /// Small JSON publishes to several topics; publishes/s and latency percentiles.
    PublishRate(publish::PublishArgs),
    /// Run a load command and print the server's CPU time per request served.
    Cpu(cpu::CpuArgs),
    /// Batch polls (as bench/scale-poll.lua) at a fixed rate or closed-loop; with --pid,
    /// the server's CPU time per request.
    Load(load::LoadArgs),
    /// Print a process's RSS (kB) and CPU time (s).
    Stat(StatArgs),
    /// N gRPC Watch streams, publish once, time every stream's answer; RSS per stream.
    Watch(watch::WatchArgs),
    /// One application floods with polls, another polls at a fixed rate: the calm one's
    /// latency and the flood's answers by status (bench/fairness.sh).
    Fair(fair::FairArgs),
    /// N identical GETs at once: the Postgres queries the coalesced reads made for them.
    Burst(fair::BurstArgs),
}

#[derive(Args)]
struct StatArgs {
    #[arg(long)]
    pid: u32,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Cpu(a) => cpu::cpu(a),
        Cmd::Stat(a) => {
            let (ticks, hz) = procfs::cpu_ticks(a.pid)?;
            println!("rss_kb={}", procfs::rss_kb(a.pid).unwrap_or(0));
            println!("cpu_s={:.2}", ticks as f64 / hz);
            Ok(())
        }
        cmd => tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async move {
            match cmd {
                Cmd::Park(a) => park::park(a).await,
                Cmd::BareServer(a) => bare::bare_server(a).await,
                Cmd::PublishRate(a) => publish::publish_rate(a).await,
                Cmd::Load(a) => load::load(a).await,
                Cmd::Watch(a) => watch::watch(a).await,
                Cmd::Fair(a) => fair::fair(a).await,
                Cmd::Burst(a) => fair::burst(a).await,
                Cmd::Cpu(_) | Cmd::Stat(_) => unreachable!(),
            }
        }),
    }
}
