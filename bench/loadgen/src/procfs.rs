//! What the bench reads from the kernel: a process's RSS and CPU ticks, the whole
//! machine's busy ticks and its busiest other processes (/proc), this process's and its
//! children's CPU time (getrusage), and the open-file limit.
use crate::Result;

/// VmRSS of a process in kB.
pub(crate) fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// utime+stime of a process (all its threads, live and exited) in clock ticks, and ticks/s.
pub(crate) fn cpu_ticks(pid: u32) -> Result<(u64, f64)> {
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
pub(crate) fn machine_busy_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = s.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = f.iter().take(8).sum();
    Some(total - f.get(3)? - f.get(4)?)
}

/// CPU ticks of every process now (pid → (command, utime+stime)).
pub(crate) fn all_process_ticks() -> std::collections::HashMap<u32, (String, u64)> {
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
pub(crate) fn top_others(
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
    v.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
    v.iter()
        .take(4)
        .map(|(c, t)| format!("{}:{:.0}ms", c.replace(' ', "_"), *t as f64 * 1e3 / hz))
        .collect::<Vec<_>>()
        .join(",")
}

/// CPU time (user + system) of this process so far, in seconds.
pub(crate) fn self_cpu_s() -> f64 {
    // SAFETY: getrusage fills a plain struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// CPU time of this process's waited-for children (the load command of `cpu`), in seconds.
pub(crate) fn children_cpu_s() -> f64 {
    // SAFETY: getrusage fills a plain struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
pub(crate) fn raise_nofile() -> u64 {
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
