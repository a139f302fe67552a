//! One subscription's versions on disk: each version is copied into the state directory
//! (`<state_dir>/versions/<topic>/v<N>-<sha>`, verified against its SHA-256 while it is
//! copied), checked there by the `check` command, then made the subscription's `path` with
//! an atomic rename (a reader sees the old file or the new one, never half of one), then the
//! `reload` command runs. A failing check keeps the old file; a failing reload puts the old
//! file back. Either way the error goes back to the client, which reports the version
//! *failed* to the server (what rollout gates count). The last `keep` versions stay.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use imprint_client::Payload;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::command;
use crate::config::Subscription;

/// A version as the agent holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// The server's version number; 0 for an operator's failover file.
    pub version: u64,
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    pub pinned: bool,
    /// The verified copy in the state directory (what the local endpoint serves).
    pub file: PathBuf,
    /// Unix seconds when it was installed.
    pub installed_at: u64,
    /// Installed from `failover_dir`, overriding what the server says.
    #[serde(default)]
    pub failover: bool,
    /// Decrypted from an end-to-end encrypted topic (docs/encryption.md): the copy is
    /// plaintext, so it and the installed file are readable by their owner only (0600).
    #[serde(default)]
    pub decrypted: bool,
}

/// Installs the versions of one subscription and publishes what it holds.
pub struct Installer {
    sub: Subscription,
    dir: PathBuf,
    /// `<failover_dir>/<topic>`: while it exists it overrides every version.
    failover: Option<PathBuf>,
    held: watch::Sender<Option<Installed>>,
    /// One install at a time (the client's apply and the failover pass both install).
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The newest server version verified in the state directory: installed, or waiting
    /// behind a failover file.
    server: Option<Installed>,
    /// The failover file installed, as (size, modified) to notice an edit.
    failover_seen: Option<(u64, SystemTime)>,
}

/// The record of what is installed: `<dir>/current.json`.
const CURRENT: &str = "current.json";

fn now_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Installer {
    pub fn new(sub: Subscription, state_dir: &Path, failover_dir: Option<&Path>) -> io::Result<Self> {
        let dir = state_dir.join("versions").join(&sub.topic);
        fs::create_dir_all(&dir)?;
        let failover = failover_dir.map(|d| d.join(&sub.topic));
        Ok(Self { sub, dir, failover, held: watch::channel(None).0, state: Mutex::new(State::default()) })
    }

    /// What the agent holds now, and every change after.
    pub fn held(&self) -> watch::Receiver<Option<Installed>> {
        self.held.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the last run installed, if its copy is still there.
    fn recorded(&self) -> Option<Installed> {
        let text = fs::read(self.dir.join(CURRENT)).ok()?;
        let c: Installed = serde_json::from_slice(&text).ok()?;
        c.file.is_file().then_some(c)
    }

    /// The client's apply function: the version becomes current or the old one stays.
    pub fn apply(&self, p: &Payload<'_>) -> Result<Installed, String> {
        let short = p.sha256().get(..16).ok_or("the update has no SHA-256")?;
        let file = self.dir.join(format!("v{}-{short}", p.version()));
        let mut state = self.lock();
        // The client verified the ciphertext's SHA-256; age authenticates the plaintext.
        let decrypted = p.encrypted();
        let size = if decrypted {
            copy_decrypted(p, &file)?
        } else {
            copy_verified(|feed| feed_payload(p, feed), p.sha256(), &file)?
        };
        let offered = Installed {
            version: p.version(),
            sha256: p.sha256().to_owned(),
            size,
            content_type: p.content_type().to_owned(),
            pinned: p.pinned(),
            file,
            installed_at: now_secs(),
            failover: false,
            decrypted,
        };
        if let Some(f) = self.failover.as_ref().filter(|f| f.is_file()) {
            // The client's start-up fallback offers older versions after a refusal: keep the
            // newest offered, unless a pin moves the node back.
            if state.server.as_ref().is_none_or(|s| offered.pinned || offered.version > s.version) {
                state.server = Some(offered);
            }
            return Err(format!("overridden on this node by the failover file {}", f.display()));
        }
        self.install(offered.clone())?;
        state.server = Some(offered.clone());
        Ok(offered)
    }

    /// Checks `next`, swaps it in and reloads; on success records and publishes it.
    /// What goes to `path` for `i`: the payload itself, or its rendering (`template`).
    fn output_of(&self, i: &Installed) -> PathBuf {
        match &self.sub.template {
            Some(_) => i.file.with_extension("out"),
            None => i.file.clone(),
        }
    }

    fn install(&self, next: Installed) -> Result<(), String> {
        let output = self.output_of(&next);
        if let Some(template) = &self.sub.template {
            let text = crate::render::render(template, &next.file, &self.sub.topic, next.version, &next.sha256)?;
            write_atomically(&output, text.as_bytes()).map_err(|e| format!("{}: {e}", output.display()))?;
        }
        if let Some(check) = &self.sub.check {
            command::run("check", check, &output, self.sub.timeout)?;
        }
        let previous = self.recorded();
        let out_size = fs::metadata(&output).map(|m| m.len()).map_err(|e| format!("{}: {e}", output.display()))?;
        // A restart re-applies what is already in place: no second swap, no reload.
        let in_place = previous.as_ref().is_some_and(|c| c.sha256 == next.sha256 && c.failover == next.failover)
            && self.sub.template.is_none()
            && self.sub.path.as_ref().is_none_or(|t| fs::metadata(t).is_ok_and(|m| m.len() == out_size));
        if !in_place {
            if let Some(target) = &self.sub.path {
                swap_in(&output, target, &self.sub, next.decrypted)
                    .map_err(|e| format!("install {}: {e}", target.display()))?;
                if let Some(reload) = &self.sub.reload {
                    if let Err(e) = command::run("reload", reload, target, self.sub.timeout) {
                        let back = match &previous {
                            Some(prev) => match swap_in(&self.output_of(prev), target, &self.sub, prev.decrypted) {
                                Ok(()) => format!("; the previous file is back ({})", describe(prev)),
                                Err(b) => format!("; putting the previous file back failed: {b}"),
                            },
                            None => String::new(),
                        };
                        return Err(format!("{e}{back}"));
                    }
                }
            }
        }
        write_atomically(&self.dir.join(CURRENT), &serde_json::to_vec_pretty(&next).map_err(|e| e.to_string())?)
            .map_err(|e| format!("record the current version: {e}"))?;
        self.prune(&next.file, &output);
        self.held.send_replace(Some(next));
        Ok(())
    }

    /// Follows the failover file: installs it when it appears or changes, and puts the
    /// server's newest version back when it is removed. Called every second.
    pub fn failover_pass(&self) -> Result<(), String> {
        let Some(path) = &self.failover else { return Ok(()) };
        let mut state = self.lock();
        let seen = fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| (m.len(), m.modified().ok()));
        match seen {
            Some((len, Some(modified))) => {
                if state.failover_seen == Some((len, modified)) {
                    return Ok(());
                }
                state.failover_seen = Some((len, modified));
                let tmp = self.dir.join("failover.part");
                let (size, sha) = copy_hashed(|feed| feed_file(path, feed), &tmp)?;
                let file = self.dir.join(format!("failover-{}", &sha[..16]));
                fs::rename(&tmp, &file).map_err(|e| format!("{}: {e}", file.display()))?;
                let next = Installed {
                    version: 0,
                    sha256: sha,
                    size,
                    content_type: "application/octet-stream".to_owned(),
                    pinned: false,
                    file,
                    installed_at: now_secs(),
                    failover: true,
                    decrypted: false,
                };
                tracing::warn!(topic = %self.sub.topic, file = %path.display(), "failover file overrides the server");
                self.install(next)
            }
            Some((_, None)) => Err(format!("{}: no modification time", path.display())),
            None if state.failover_seen.take().is_some() => match state.server.clone() {
                Some(server) => {
                    tracing::info!(topic = %self.sub.topic, version = server.version, "failover file removed");
                    self.install(server)
                }
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Removes version files beyond the newest `keep` besides `current`.
    fn prune(&self, current: &Path, output: &Path) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        let mut files: Vec<(SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p != current
                    && p != output
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('v') || n.starts_with("failover-"))
            })
            .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
            .collect();
        files.sort_by_key(|f| std::cmp::Reverse(f.0));
        // With a template each version has two files: the payload and its rendering.
        let per_version = if self.sub.template.is_some() { 2 } else { 1 };
        for (_, p) in files.into_iter().skip(self.sub.keep * per_version) {
            let _ = fs::remove_file(p);
        }
    }
}

fn describe(i: &Installed) -> String {
    if i.failover {
        "the failover file".to_owned()
    } else {
        format!("version {}", i.version)
    }
}

type Feed<'f> = &'f mut dyn FnMut(&[u8]) -> io::Result<()>;

/// Hands the payload's bytes to `feed` in chunks (from its file, or from memory).
fn feed_payload(p: &Payload<'_>, feed: Feed<'_>) -> io::Result<()> {
    match (p.path(), p.bytes()) {
        (Some(path), _) => feed_file(path, feed),
        (None, Some(bytes)) => feed(bytes),
        (None, None) => Err(io::Error::other("the payload has neither bytes nor a file")),
    }
}

fn feed_file(path: &Path, feed: Feed<'_>) -> io::Result<()> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        feed(&buf[..n])?;
    }
}

/// Writes what `source` feeds into `to` (synced) while hashing it: (size, SHA-256 hex).
/// Streams, so memory stays flat whatever the size.
fn copy_hashed(source: impl FnOnce(Feed<'_>) -> io::Result<()>, to: &Path) -> Result<(u64, String), String> {
    let mut out = File::create(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let copied = source(&mut |chunk: &[u8]| {
        hash.update(chunk);
        size += chunk.len() as u64;
        out.write_all(chunk)
    });
    let done = copied.and_then(|()| out.sync_all());
    drop(out);
    if let Err(e) = done {
        let _ = fs::remove_file(to);
        return Err(format!("copy into the state directory: {e}"));
    }
    let _ = fs::set_permissions(to, fs::Permissions::from_mode(0o444));
    Ok((size, hex::encode(hash.finalize())))
}

/// The plaintext of an encrypted payload into `to` through `to.part` (mode 0600), decrypted
/// as it streams with the client's identities; a tampered chunk fails the copy.
fn copy_decrypted(p: &Payload<'_>, to: &Path) -> Result<u64, String> {
    let tmp = to.with_extension("part");
    let copied = copy_hashed(
        |feed| {
            let mut r = p.open()?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                feed(&buf[..n])?;
            }
        },
        &tmp,
    );
    let (size, _) = copied.map_err(|e| format!("decrypting the payload: {e}"))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::rename(&tmp, to).map_err(|e| format!("{}: {e}", to.display()))?;
    Ok(size)
}

/// [`copy_hashed`] into `to` through `to.part`, renamed only when the copy matches `sha256`.
fn copy_verified(source: impl FnOnce(Feed<'_>) -> io::Result<()>, sha256: &str, to: &Path) -> Result<u64, String> {
    let tmp = to.with_extension("part");
    let (size, sha) = copy_hashed(source, &tmp)?;
    if sha != sha256 {
        let _ = fs::remove_file(&tmp);
        return Err("the copy in the state directory does not match the version's SHA-256".to_owned());
    }
    fs::rename(&tmp, to).map_err(|e| format!("{}: {e}", to.display()))?;
    Ok(size)
}

/// Makes `target` a copy of `from`, atomically: a temporary file beside `target` (same
/// file system), mode and owner set, synced, renamed over it, and the directory synced.
/// A decrypted payload keeps at most the owner's bits of `mode` (0600 for the default 0644).
pub fn swap_in(from: &Path, target: &Path, sub: &Subscription, decrypted: bool) -> io::Result<()> {
    let dir = target.parent().ok_or_else(|| io::Error::other("no parent directory"))?;
    fs::create_dir_all(dir)?;
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("payload");
    let tmp = dir.join(format!(".{name}.imprint-{}", std::process::id()));
    let result = (|| {
        fs::copy(from, &tmp)?;
        let mode = if decrypted { sub.mode & 0o700 } else { sub.mode };
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = sub.owner {
            std::os::unix::fs::chown(&tmp, uid, gid)?;
        }
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, target)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}
