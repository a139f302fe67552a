//! Running a subscription's `check` and `reload` commands: through `sh -c`, with `{path}`
//! replaced by the shell-quoted file, bounded by a timeout (the whole process group is
//! killed when it passes), keeping the last lines of standard error for the failure report.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt;

/// Lines of standard error kept for a failure report, and their byte bound.
const TAIL_LINES: usize = 10;
const TAIL_BYTES: usize = 2048;
/// Standard error read from a command at most (the rest is drained and dropped).
const MAX_STDERR: usize = 64 * 1024;

/// `cmd` with each `{path}` replaced by `path`, quoted for `sh`.
pub fn render(cmd: &str, path: &Path) -> Result<String, String> {
    let p = path.to_str().ok_or_else(|| format!("{} is not UTF-8", path.display()))?;
    let quoted = shlex::try_quote(p).map_err(|e| format!("{p:?} cannot be quoted: {e}"))?;
    Ok(cmd.replace("{path}", &quoted))
}

/// Runs `cmd` (rendered for `path`) and waits at most `timeout`. `Ok(())` on exit 0;
/// otherwise a message with the exit status (or the timeout) and the tail of stderr.
pub fn run(what: &str, cmd: &str, path: &Path, timeout: Duration) -> Result<(), String> {
    let line = render(cmd, path)?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&line)
        .env("IMPRINT_PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{what} could not start: {e}"))?;
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.by_ref().take(MAX_STDERR as u64).read_to_end(&mut kept);
            let _ = std::io::copy(s, &mut std::io::sink());
        }
        kept
    });
    let status = match child.wait_timeout(timeout) {
        Ok(Some(status)) => Ok(status),
        Ok(None) => {
            // The command and anything it started: its process group.
            // `--` first: without it `kill` reads `-<pgid>` as an option (and `-1` as
            // "every process"). The group id is the child's pid (process_group(0)), never 0/1.
            if child.id() > 1 {
                let _ = Command::new("kill").args(["-s", "KILL", "--"]).arg(format!("-{}", child.id())).status();
            }
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("{what} timed out after {}", humantime::format_duration(timeout)))
        }
        Err(e) => Err(format!("{what} could not be waited for: {e}")),
    };
    let err = reader.join().unwrap_or_default();
    let tail = tail(&String::from_utf8_lossy(&err));
    let failure = match status {
        Ok(s) if s.success() => return Ok(()),
        Ok(s) => format!("{what} failed ({s})"),
        Err(m) => m,
    };
    Err(if tail.is_empty() { failure } else { format!("{failure}: {tail}") })
}

/// The last [`TAIL_LINES`] non-empty lines, at most [`TAIL_BYTES`] bytes, joined by ` | `.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    let mut out = lines[lines.len().saturating_sub(TAIL_LINES)..].join(" | ");
    if out.len() > TAIL_BYTES {
        let mut cut = out.len() - TAIL_BYTES;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = format!("…{}", &out[cut..]);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quotes_the_path() {
        let p = Path::new("/tmp/a b/it's.json");
        let line = render("cat {path}", p).unwrap();
        assert_eq!(shlex::split(&line).unwrap(), ["cat", "/tmp/a b/it's.json"], "{line}");
        let dir = std::env::temp_dir().join(format!("imprint-agent-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("it's here; rm -rf x");
        std::fs::write(&f, "ok").unwrap();
        run("check", "test \"$(cat {path})\" = ok", &f, Duration::from_secs(10)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reports_status_and_the_tail_of_stderr() {
        let p = Path::new("/nonexistent");
        let e = run("check", "for i in $(seq 1 30); do echo line$i >&2; done; exit 3", p, Duration::from_secs(10))
            .unwrap_err();
        assert!(e.starts_with("check failed (exit status: 3): line21 | "), "{e}");
        assert!(e.ends_with("line30") && !e.contains("line20 "), "{e}");
    }

    #[test]
    fn kills_what_outlives_its_timeout() {
        let e = run("check", "sleep 30 & sleep 30", Path::new("/x"), Duration::from_millis(300)).unwrap_err();
        assert!(e.starts_with("check timed out after 300ms"), "{e}");
    }
}
