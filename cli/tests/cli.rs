//! The `imprint` binary against a real server (in-process, fresh database per test).

use imprint_testkit::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "exit status; stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("--json output does not parse ({e}):\n{}", self.stdout))
    }
}

fn command(server_url: &str, token: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imprint"));
    cmd.args(args).env("IMPRINT_URL", server_url).env_remove("IMPRINT_TOKEN").env_remove("RUST_LOG");
    if let Some(t) = token {
        cmd.env("IMPRINT_TOKEN", t);
    }
    cmd
}

/// Runs `imprint ARGS` off the async threads (the server runs on this runtime).
async fn run_with(server_url: &str, token: Option<&str>, args: &[&str], stdin: Option<Vec<u8>>) -> Out {
    let mut cmd = command(server_url, token, args);
    let out = tokio::task::spawn_blocking(move || {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().expect("run imprint");
        if let Some(bytes) = stdin {
            use std::io::Write;
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(&bytes).expect("write stdin");
        }
        child.wait_with_output().expect("imprint output")
    })
    .await
    .expect("join");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn imprint(server: &TestApp, args: &[&str]) -> Out {
    run_with(&server.base_url(), Some(ADMIN_TOKEN), args, None).await
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p.to_string_lossy().into_owned()
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn publish_versions_get_and_diff(pool: sqlx::PgPool) {
    let server = spawn_app(pool).await;
    let dir = scratch_dir("cli-publish");
    imprint(&server, &["topics", "create", "payments.methods", "--owner", "payments", "--description", "methods"])
        .await
        .ok();
    imprint(&server, &["topics", "create", "ml.model", "--inline-limit", "4KiB"]).await.ok();

    // A JSON file (guessed content type, sent as a streamed form) and a text file (raw body).
    let v1 = write(&dir, "methods.json", br#"{"card": true, "limits": {"eur": 100}}"#);
    let out = imprint(&server, &["publish", "payments.methods", &v1, "-m", "first", "--meta", "commit=abc"]).await.ok();
    assert!(out.stdout.contains("published payments.methods version 1"), "{}", out.stdout);
    let v2 = write(&dir, "methods2.json", br#"{"card": false, "limits": {"eur": 100}}"#);
    let out = imprint(
        &server,
        &["--json", "publish", "payments.methods", &v2, "--scope", "region=eu", "--message", "second"],
    )
    .await
    .ok();
    let published = out.json();
    assert_eq!(published["version"], 2);
    assert_eq!(published["content_type"], "application/json");
    assert_eq!(published["scopes"][0]["selector"], serde_json::json!({"region": "eu"}));

    let out = imprint(&server, &["versions", "payments.methods"]).await.ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("VERSION"), "{}", out.stdout);
    assert!(
        lines[1].starts_with('2') && lines[1].contains("region=eu") && lines[1].contains("second"),
        "{}",
        out.stdout
    );
    assert!(lines[2].starts_with('1') && lines[2].contains('*') && lines[2].contains("first"), "{}", out.stdout);
    let versions = imprint(&server, &["--json", "versions", "payments.methods"]).await.ok().json();
    assert_eq!(versions["versions"][1]["metadata"]["commit"], "abc");

    // get: a version to a file; the resolved one for some labels to stdout.
    let target = dir.join("out.json");
    let out =
        imprint(&server, &["get", "payments.methods", "--version", "1", "-o", &target.to_string_lossy()]).await.ok();
    assert_eq!(std::fs::read(&target).expect("read"), std::fs::read(&v1).expect("read"));
    assert!(out.stderr.contains("wrote version 1"), "{}", out.stderr);
    let out = imprint(&server, &["get", "payments.methods", "--labels", "region=eu"]).await.ok();
    assert_eq!(out.stdout.as_bytes(), std::fs::read(&v2).expect("read"));
    let out = imprint(&server, &["get", "payments.methods", "--labels", "region=us"]).await.ok();
    assert_eq!(out.stdout.as_bytes(), std::fs::read(&v1).expect("read"));

    let out = imprint(&server, &["diff", "payments.methods", "1", "2"]).await.ok();
    assert!(out.stdout.contains("-  \"card\": true,") && out.stdout.contains("+  \"card\": false,"), "{}", out.stdout);
    let diff = imprint(&server, &["--json", "diff", "payments.methods", "1", "2"]).await.ok().json();
    assert_eq!(diff["changed"], true);

    // A binary payload from standard input, past the inline limit: stored as an object.
    let blob = bytes_of(300_000, 7);
    let out =
        run_with(&server.base_url(), Some(ADMIN_TOKEN), &["--json", "publish", "ml.model", "-"], Some(blob.clone()))
            .await
            .ok();
    let p = out.json();
    assert_eq!(p["storage"], "object");
    assert_eq!(p["size"], 300_000);
    let target = dir.join("model.bin");
    imprint(&server, &["get", "ml.model", "--version", "1", "-o", &target.to_string_lossy()]).await.ok();
    assert_eq!(std::fs::read(&target).expect("read"), blob);
    let out = imprint(&server, &["diff", "ml.model", "1", "1"]).await.ok();
    assert!(out.stdout.contains("identical (binary"), "{}", out.stdout);

    // Topics: list, show, set (retention is merged, not replaced).
    let out = imprint(&server, &["topics", "list"]).await.ok();
    assert!(out.stdout.lines().any(|l| l.starts_with("payments.methods") && l.contains("payments")), "{}", out.stdout);
    imprint(&server, &["topics", "set", "payments.methods", "--keep-versions", "10"]).await.ok();
    let t = imprint(&server, &["--json", "topics", "set", "payments.methods", "--keep-days", "30"]).await.ok().json();
    assert_eq!(t["retention"], serde_json::json!({"max_versions": 10, "max_age_days": 30}));
    let out = imprint(&server, &["topics", "show", "payments.methods"]).await.ok();
    assert!(out.stdout.contains("10 newest versions, 30 days"), "{}", out.stdout);

    // The server's checks come back as errors: a topic that does not exist.
    let out = imprint(&server, &["publish", "nope", &v1]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("topic_not_found"), "{}", out.stderr);
    let _ = std::fs::remove_dir_all(dir);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn scopes_pins_and_resolve(pool: sqlx::PgPool) {
    let server = spawn_app(pool).await;
    server.create_topic_with(serde_json::json!({"name": "ab.config"})).await;
    server.publish_text("ab.config", "one").await;
    server.publish("ab.config", serde_json::json!({"data": "two", "scopes": []})).await;

    let out = imprint(&server, &["resolve", "ab.config", "--labels", "region=eu"]).await.ok();
    assert_eq!(out.stdout.trim(), "1");
    imprint(&server, &["scope", "add", "ab.config", "2", "region=eu"]).await.ok();
    assert_eq!(imprint(&server, &["resolve", "ab.config", "--labels", "region=eu"]).await.ok().stdout.trim(), "2");

    let out = imprint(&server, &["pin", "ab.config", "region=eu", "1", "--reason", "bad canary", "--expires-at", "2h"])
        .await
        .ok();
    assert!(out.stdout.contains("pinned region=eu of ab.config to version 1 until "), "{}", out.stdout);
    assert_eq!(
        imprint(&server, &["resolve", "ab.config", "--labels", "region=eu,app=x"]).await.ok().stdout.trim(),
        "1 (pinned)"
    );
    let out = imprint(&server, &["pins", "ab.config"]).await.ok();
    assert!(
        out.stdout.lines().nth(1).is_some_and(|l| l.starts_with("region=eu") && l.contains("bad canary")),
        "{}",
        out.stdout
    );
    let pins = imprint(&server, &["--json", "pins", "ab.config"]).await.ok().json();
    assert_eq!(pins["pins"][0]["version"], 1);
    let expires =
        chrono::DateTime::parse_from_rfc3339(pins["pins"][0]["expires_at"].as_str().expect("expiry")).expect("time");
    let in_secs = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds();
    assert!((7000..=7200).contains(&in_secs), "expires in 2 h: {in_secs} s");
    let resolved = imprint(&server, &["--json", "resolve", "ab.config", "--labels", "region=eu"]).await.ok().json();
    assert_eq!(resolved["pinned"], true);

    imprint(&server, &["unpin", "ab.config", "region=eu"]).await.ok();
    assert_eq!(imprint(&server, &["resolve", "ab.config", "--labels", "region=eu"]).await.ok().stdout.trim(), "2");
    let out = imprint(&server, &["unpin", "ab.config", "region=eu"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("pin_not_found"), "{}", out.stderr);
    // A selector the CLI can tell is wrong never reaches the server.
    let out = imprint(&server, &["pin", "ab.config", "region", "1", "--reason", "x"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("invalid selector"), "{}", out.stderr);

    // --at: a change request the scheduler applies then (docs/change-control.md).
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let out = imprint(&server, &["scope", "add", "ab.config", "2", "region=us", "--at", &at]).await.ok();
    assert!(out.stdout.contains("add scope region=us to v2"), "{}", out.stdout);
    assert!(out.stdout.contains(": approved"), "{}", out.stdout);
    let out = imprint(&server, &["--json", "pin", "ab.config", "region=ap", "1", "--reason", "later", "--at", &at])
        .await
        .ok()
        .json();
    assert_eq!((out["kind"].as_str(), out["state"].as_str()), (Some("pin"), Some("approved")), "{out}");
    let out = imprint(&server, &["unpin", "ab.config", "region=ap", "--at", &at]).await.ok();
    assert!(out.stdout.contains("unpin region=ap"), "{}", out.stdout);
    assert_eq!(imprint(&server, &["resolve", "ab.config", "--labels", "region=us"]).await.ok().stdout.trim(), "1");
    let out = imprint(&server, &["scope", "add", "ab.config", "2", "region=us", "--at", "tomorrow"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("RFC 3339"), "{}", out.stderr);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn rollouts_start_watch_and_steer(pool: sqlx::PgPool) {
    let server = spawn_app(pool).await;
    let dir = scratch_dir("cli-rollout");
    imprint(&server, &["topics", "create", "feature.flags"]).await.ok();
    let f1 = write(&dir, "flags.txt", b"a=1\n");
    imprint(&server, &["publish", "feature.flags", &f1]).await.ok();
    let f2 = write(&dir, "flags2.txt", b"a=2\n");
    imprint(&server, &["publish", "feature.flags", &f2, "--scope", "cluster=canary"]).await.ok();

    let started = imprint(
        &server,
        &["--json", "rollout", "start", "feature.flags", "2", "--stage", "region=eu 1s", "--stage", "* 0"],
    )
    .await
    .ok()
    .json();
    assert_eq!(started["state"], "running");
    let id = started["id"].as_i64().expect("id").to_string();
    let t = Instant::now();
    let out = imprint(&server, &["rollout", "watch", "feature.flags", &id, "--interval", "0.3", "--timeout", "30"])
        .await
        .ok();
    println!("rollout watch ({:?}):\n{}", t.elapsed(), out.stdout);
    assert!(out.stdout.lines().count() >= 2, "{}", out.stdout);
    assert!(out.stdout.lines().last().is_some_and(|l| l.contains("completed (2/2 stages reached)")), "{}", out.stdout);
    assert_eq!(imprint(&server, &["resolve", "feature.flags", "--labels", "region=us"]).await.ok().stdout.trim(), "2");

    // A plan of the topic, used by a publish; then steered by hand.
    let plans = write(
        &dir,
        "plans.json",
        br#"{"slow": {"stages": [{"selector": {"region": "eu"}, "wait_s": 3600}, {"selector": {}, "wait_s": 0}]}}"#,
    );
    imprint(&server, &["topics", "set", "feature.flags", "--plans", &plans]).await.ok();
    let f3 = write(&dir, "flags3.txt", b"a=3\n");
    let p = imprint(&server, &["--json", "publish", "feature.flags", &f3, "--plan", "slow"]).await.ok().json();
    let id = p["rollout"]["id"].as_i64().expect("rollout id").to_string();
    let out = imprint(&server, &["rollout", "pause", "feature.flags", &id]).await.ok();
    assert!(out.stdout.contains("paused"), "{}", out.stdout);
    imprint(&server, &["rollout", "resume", "feature.flags", &id]).await.ok();
    let list = imprint(&server, &["--json", "rollout", "list", "feature.flags"]).await.ok().json();
    assert_eq!(list["rollouts"][0]["state"], "running");
    let out = imprint(&server, &["rollout", "cancel", "--rollback", "feature.flags", &id]).await.ok();
    assert!(out.stdout.contains("cancelled"), "{}", out.stdout);
    let out = imprint(&server, &["rollout", "watch", "feature.flags", &id]).await;
    assert_eq!(out.code, 1, "a cancelled rollout is a failure for scripts");
    let out = imprint(&server, &["rollout", "advance", "feature.flags", &id]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("invalid_state"), "{}", out.stderr);
    let _ = std::fs::remove_dir_all(dir);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_bad_token_or_no_server_is_a_clear_error(pool: sqlx::PgPool) {
    let server = spawn_app(pool).await;
    let out = run_with(&server.base_url(), Some("not-a-token"), &["topics", "create", "x"], None).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.starts_with("imprint: error: "), "{}", out.stderr);
    assert!(out.stderr.contains("(unauthorized, HTTP 401)"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    let out = run_with(&server.base_url(), None, &["topics", "create", "x"], None).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("HTTP 401"), "{}", out.stderr);

    let down = closed_port_url().await;
    let out = run_with(&down, Some(ADMIN_TOKEN), &["topics", "list"], None).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("cannot reach the Imprint server"), "{}", out.stderr);
    // --url wins over IMPRINT_URL.
    let out =
        run_with(&down, Some(ADMIN_TOKEN), &["--url", &server.base_url(), "--json", "topics", "list"], None).await.ok();
    assert!(out.json()["topics"].is_array());
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn watch_runs_a_command_per_version_and_reports_its_status(pool: sqlx::PgPool) {
    let server = spawn_app(pool).await;
    let dir = scratch_dir("cli-watch");
    server.create_topic_with(serde_json::json!({"name": "nginx.allowlist"})).await;
    server.publish_text("nginx.allowlist", "10.0.0.1\n").await;
    let seen = dir.join("seen.txt");
    let exec = format!(
        "cat \"$IMPRINT_PAYLOAD\" >> '{}'; echo \"v$IMPRINT_VERSION $IMPRINT_TOPIC\" >> '{}'; test \"$IMPRINT_VERSION\" != 2",
        seen.display(),
        seen.display()
    );
    let mut cmd = command(
        &server.base_url(),
        Some(ADMIN_TOKEN),
        &[
            "watch",
            "nginx.allowlist",
            "--labels",
            "region=eu",
            "--instance",
            "w-1",
            "--exec",
            &exec,
            "--max-versions",
            "2",
        ],
    );
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("watch");
    let waiter = tokio::task::spawn_blocking(move || {
        let mut child = child;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                let out = child.wait_with_output().expect("output");
                return (status.code(), String::from_utf8_lossy(&out.stderr).into_owned());
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                return (None, String::from_utf8_lossy(&out.stderr).into_owned());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    // Version 1 applied (the command ran and succeeded, the report reached the server).
    let row = server.consumer_where("nginx.allowlist", "w-1", |r| r["version"] == 1).await;
    assert_eq!(row["labels"], serde_json::json!({"region": "eu"}));
    assert!(row["last_error"].is_null(), "{row}");
    server.publish_text("nginx.allowlist", "10.0.0.2\n").await;
    let (code, stderr) = waiter.await.expect("join");
    assert_eq!(code, Some(1), "the last command failed; stderr:\n{stderr}");
    assert_eq!(
        std::fs::read_to_string(&seen).expect("seen"),
        "10.0.0.1\nv1 nginx.allowlist\n10.0.0.2\nv2 nginx.allowlist\n"
    );
    // The failure was reported before the watch exited.
    let row = server.consumer_where("nginx.allowlist", "w-1", |r| !r["last_error"].is_null()).await;
    assert_eq!(row["version"], 1);
    assert!(row["last_error"].as_str().is_some_and(|e| e.contains("exited with status 1")), "{row}");
    let out = imprint(&server, &["consumers", "nginx.allowlist", "--lagging"]).await.ok();
    println!("{}", out.stdout);
    let listed = imprint(&server, &["--json", "consumers", "nginx.allowlist"]).await.ok().json();
    assert_eq!(listed["consumers"][0]["instance"], "w-1");
    let _ = std::fs::remove_dir_all(dir);
}

/// `imprint webhook …`: create (the secret shown once), list, update, rotate, the
/// delivery log and redeliver, and a refusal with the server's message.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn webhooks_create_list_rotate_and_deliveries(pool: sqlx::PgPool) {
    let server = spawn_app(pool).await;
    server.create_topic("hooked.cli").await;
    let out = imprint(
        &server,
        &[
            "webhook",
            "create",
            "https://hooks.example.com/x",
            "--topic",
            "hooked.cli",
            "--event",
            "version.published,pin.set",
        ],
    )
    .await
    .ok();
    assert!(out.stdout.contains("secret:  whsec_"), "{}", out.stdout);
    let list = imprint(&server, &["--json", "webhook", "list"]).await.ok().json();
    let id = list["webhooks"][0]["id"].as_i64().expect("id").to_string();
    assert_eq!(list["webhooks"][0]["event_types"], serde_json::json!(["version.published", "pin.set"]));
    let table = imprint(&server, &["webhook", "list"]).await.ok();
    assert!(
        table.stdout.contains("topic hooked.cli") && table.stdout.contains("version.published,pin.set"),
        "{}",
        table.stdout
    );
    let out = imprint(&server, &["webhook", "update", &id, "--events", "all", "--disable"]).await.ok();
    assert!(out.stdout.contains("events:  all") && out.stdout.contains("enabled: false"), "{}", out.stdout);
    let rotated = imprint(&server, &["--json", "webhook", "rotate", &id, "--keep", "2h"]).await.ok().json();
    assert!(rotated["secret"].as_str().is_some_and(|s| s.starts_with("whsec_")));
    assert!(rotated["previous_secret_expires_at"].is_string());
    imprint(&server, &["webhook", "update", &id, "--enable"]).await.ok();
    server.publish_text("hooked.cli", "one").await;
    // The receiver does not exist: the first attempt fails and the log says why.
    let log = eventually("an attempt", || async {
        let out = imprint(&server, &["--json", "webhook", "deliveries", &id]).await.ok().json();
        out["deliveries"].as_array().and_then(|d| d.first()).filter(|d| d["attempts"] == 1).cloned()
    })
    .await;
    assert_eq!(log["event_type"], "version.published");
    let table = imprint(&server, &["webhook", "deliveries", &id]).await.ok();
    assert!(table.stdout.contains("version.published") && table.stdout.contains("pending"), "{}", table.stdout);
    let d = log["id"].as_i64().expect("delivery").to_string();
    let out = imprint(&server, &["webhook", "redeliver", &id, &d]).await.ok();
    assert!(out.stdout.contains("is pending again"), "{}", out.stdout);
    let out = imprint(&server, &["webhook", "create", "http://127.0.0.1:9/"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("loopback"), "{}", out.stderr);
    imprint(&server, &["webhook", "delete", &id]).await.ok();
    let out = imprint(&server, &["webhook", "show", &id]).await;
    assert!(out.stderr.contains("webhook_not_found"), "{}", out.stderr);
}

/// `imprint publish` on a topic with checks: a rejected payload fails with the checks'
/// message, `--force --reason` publishes it (as a form for JSON, a raw body for text).
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn publish_with_checks_and_force(pool: sqlx::PgPool) {
    let server = spawn_app(pool).await;
    let dir = scratch_dir("cli-checks");
    for name in ["cat.json", "cat.lines"] {
        server
            .create_topic_with(serde_json::json!({"name": name.replace('.', "-"), "owner": "payments",
                "checks": [{"type": "record_count_change_pct", "max_pct": 20}]}))
            .await;
    }
    for (topic, first, second) in [("cat-json", "c1.json", "c2.json"), ("cat-lines", "c1.txt", "c2.txt")] {
        let (a, b): (&[u8], &[u8]) =
            if topic == "cat-json" { (b"[1,2,3,4]", b"[1,2]") } else { (b"a\nb\nc\nd\n", b"a\nb\n") };
        let v1 = write(&dir, first, a);
        imprint(&server, &["publish", topic, &v1]).await.ok();
        let v2 = write(&dir, second, b);
        let out = imprint(&server, &["publish", topic, &v2]).await;
        assert_ne!(out.code, 0, "{}", out.stdout);
        assert!(out.stderr.contains("record count varied by 50% (4 → 2)"), "{}", out.stderr);
        let out = imprint(&server, &["publish", topic, &v2, "--force"]).await;
        assert_ne!(out.code, 0, "--force needs --reason");
        let out =
            imprint(&server, &["--json", "publish", topic, &v2, "--force", "--reason", "retired half"]).await.ok();
        assert_eq!(out.json()["checks"]["force_reason"], "retired half", "{}", out.stdout);
    }
}

/// `imprint draft|review|freeze` (docs/change-control.md): a draft diffed and released
/// through a review by a second token, a freeze that refuses a release.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn drafts_reviews_and_freezes(pool: sqlx::PgPool) {
    let server = spawn_app(pool).await;
    let dir = scratch_dir("cli-change");
    imprint(&server, &["topics", "create", "cc", "--owner", "sre"]).await.ok();
    let v1 = write(&dir, "v1.json", br#"{"limit": 1}"#);
    imprint(&server, &["publish", "cc", &v1]).await.ok();
    let alice = server.token("alice", Some("sre")).await;
    let bob = server.token("bob", Some("sre")).await;
    imprint(&server, &["review", "require", "cc", "--approvals", "1", "--team", "sre"]).await.ok();

    let v2 = write(&dir, "v2.json", br#"{"limit": 2}"#);
    let url = server.base_url();
    let out = run_with(&url, Some(&alice), &["--json", "draft", "create", "cc", &v2, "-m", "raise"], None).await.ok();
    let id = out.json()["id"].as_i64().unwrap().to_string();
    let out = run_with(&url, Some(&alice), &["draft", "list", "cc"], None).await.ok();
    assert!(out.stdout.contains("raise"), "{}", out.stdout);
    let out = run_with(&url, Some(&alice), &["draft", "diff", "cc", &id, "--scope", "region=eu"], None).await.ok();
    assert!(out.stdout.contains("-  \"limit\": 1") && out.stdout.contains("+  \"limit\": 2"), "{}", out.stdout);

    let out = run_with(&url, Some(&alice), &["draft", "release", "cc", &id], None).await.ok();
    assert!(out.stdout.contains(": pending") && out.stdout.contains("approvals 0/1"), "{}", out.stdout);
    let out = run_with(&url, Some(&alice), &["--json", "review", "list", "--state", "pending"], None).await.ok();
    let req = out.json()["change_requests"][0]["id"].as_i64().unwrap().to_string();
    let own = run_with(&url, Some(&alice), &["review", "approve", &req], None).await;
    assert_ne!(own.code, 0, "the author cannot approve: {}", own.stdout);
    assert!(own.stderr.contains("author"), "{}", own.stderr);
    let out = run_with(&url, Some(&bob), &["review", "approve", &req], None).await.ok();
    assert!(out.stdout.contains(": applied") && out.stdout.contains("applied as version 2"), "{}", out.stdout);

    // A freeze refuses a release with the window's name; deleted, it is gone.
    let out = imprint(
        &server,
        &[
            "freeze",
            "create",
            "all week",
            "--days",
            "mon,tue,wed,thu,fri,sat,sun",
            "--start",
            "00:00",
            "--end",
            "00:00",
        ],
    )
    .await;
    assert_ne!(out.code, 0, "from and to must differ: {}", out.stdout);
    let out = imprint(
        &server,
        &[
            "--json",
            "freeze",
            "create",
            "incident",
            "--topic",
            "cc",
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
        ],
    )
    .await
    .ok();
    let fid = out.json()["id"].as_i64().unwrap().to_string();
    let out = imprint(&server, &["freeze", "list"]).await.ok();
    assert!(out.stdout.contains("incident") && out.stdout.contains("ACTIVE"), "{}", out.stdout);
    imprint(&server, &["review", "lift", "cc"]).await.ok();
    let v3 = write(&dir, "v3.json", br#"{"limit": 3}"#);
    let out = imprint(&server, &["--json", "draft", "create", "cc", &v3]).await.ok();
    let id3 = out.json()["id"].as_i64().unwrap().to_string();
    let refused = imprint(&server, &["draft", "release", "cc", &id3]).await;
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("incident"), "{}", refused.stderr);
    let out = imprint(&server, &["draft", "release", "cc", &id3, "--break-glass", "INC-7"]).await.ok();
    assert!(out.stdout.contains("released cc version 3"), "{}", out.stdout);
    imprint(&server, &["freeze", "delete", &fid]).await.ok();
    let out = imprint(&server, &["freeze", "list"]).await.ok();
    assert!(!out.stdout.contains("incident"), "{}", out.stdout);
}
