//! The agent binary against a real server (started through the production startup path on
//! the test's Postgres): files swapped atomically under a reader, the local endpoint, a
//! failing check keeping the old file and pausing a gated rollout, and a restart with the
//! server gone serving the last good version.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use imprint_testkit::{eventually, scratch_dir, spawn_app, TestApp};
use serde_json::{json, Value};

mod support;
use support::Agent;

fn config(dir: &Path, app: &TestApp, topic: &str, extra: &str) -> PathBuf {
    config_at(dir, &app.base_url(), "", topic, extra)
}

/// A config for `server`; `top` holds more top-level keys, `extra` more subscription keys.
fn config_at(dir: &Path, server: &str, top: &str, topic: &str, extra: &str) -> PathBuf {
    let file = dir.join("agent.toml");
    let text = format!(
        "server = \"{server}\"\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n{top}\n[labels]\ncluster = \"canary\"\n\n\
         [[subscription]]\ntopic = \"{topic}\"\npath = \"{}\"\ntimeout = \"10s\"\nkeep = 2\n{extra}\n",
        dir.join("state").display(),
        dir.join("out").join("data.txt").display(),
    );
    std::fs::write(&file, text).expect("write the config");
    file
}

/// A payload of `n` whose every byte says which version it is: a torn read shows up as a
/// mix, or as a size no version has.
fn payload(n: usize) -> String {
    format!("{n}:").repeat(40_000 + n * 1_000)
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn files_swap_atomically_under_a_reader_and_are_served_locally(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("agent.files").await;
    app.publish_text("agent.files", &payload(1)).await;
    let dir = scratch_dir("agent-files");
    // Root hands the file to another user (1, daemon); anyone else can only name themselves.
    let owner = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&dir).unwrap();
        if m.uid() == 0 {
            (1, 1)
        } else {
            (m.uid(), m.gid())
        }
    };
    let agent = Agent::start(&config(
        &dir,
        &app,
        "agent.files",
        &format!("appconfig = \"checkout/prod/files\"\nmode = \"0640\"\nowner = \"{}:{}\"", owner.0, owner.1),
    ))
    .await;
    let target = dir.join("out").join("data.txt");
    eventually("the first version on disk", || async {
        std::fs::read_to_string(&target).ok().filter(|t| *t == payload(1))
    })
    .await;

    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let m = std::fs::metadata(&target).unwrap();
        assert_eq!(
            (m.permissions().mode() & 0o777, m.uid(), m.gid()),
            (0o640, owner.0, owner.1),
            "mode and owner as configured"
        );
    }
    // A reader loops over the file while versions are published: it must only ever see
    // whole versions.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, target) = (stop.clone(), target.clone());
        std::thread::spawn(move || {
            let whole: Vec<String> = (1..=6).map(payload).collect();
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let text = std::fs::read_to_string(&target).expect("the file is always there");
                assert!(whole.contains(&text), "a torn read: {} bytes starting {:?}", text.len(), &text[..20]);
                reads += 1;
            }
            reads
        })
    };
    for n in 2..=6 {
        app.publish_text("agent.files", &payload(n)).await;
        eventually("the version on disk", || async {
            std::fs::read_to_string(&target).ok().filter(|t| *t == payload(n))
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().expect("no torn read") > 0);
    // keep = 2: the current version and two older ones stay in the state directory.
    // (The file is swapped in before the record is written and older versions pruned.)
    let count = || std::fs::read_dir(dir.join("state/versions/agent.files")).unwrap().filter_map(Result::ok).count();
    eventually("three version files and current.json", || async { (count() == 3 + 1).then_some(()) }).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(count(), 3 + 1, "three version files and current.json, and no more");

    // The local endpoint: payload, ETag, 304, a wait answered by a publish, meta, readiness.
    let r = agent.get("/v1/topics/agent.files").await;
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(r.headers()["x-imprint-version"], "6");
    assert_eq!(r.headers()["x-imprint-source"], "server");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.text().await.unwrap(), payload(6));
    let local = reqwest::Client::new();
    let url = format!("{}/v1/topics/agent.files", agent.url);
    let r = local.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(r.status(), 304);
    let waiting = tokio::spawn({
        let (local, url, etag) = (local.clone(), url.clone(), etag.clone());
        async move { local.get(format!("{url}?wait=30s")).header("if-none-match", etag).send().await.unwrap() }
    });
    app.publish_text("agent.files", &payload(7)).await;
    let r = waiting.await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["x-imprint-version"].to_str().unwrap()), (200, "7"));
    let meta: Value = agent.get("/v1/topics/agent.files/meta").await.json().await.unwrap();
    assert_eq!((meta["version"].clone(), meta["source"].clone()), (json!(7), json!("server")));
    assert_eq!(agent.get("/readyz").await.status(), 200);
    let r = agent.get("/v1/topics/someone.else").await;
    assert_eq!(r.status(), 404);
    let r = local.get(format!("{url}?wait=forever")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let metrics = agent.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("imprint_agent_version{topic=\"agent.files\"} 7"), "{metrics}");
    assert!(metrics.contains("imprint_agent_source{topic=\"agent.files\",source=\"server\"} 1"), "{metrics}");
    assert!(metrics.contains("imprint_agent_staleness_seconds{topic=\"agent.files\"}"), "{metrics}");

    // The AWS AppConfig Agent's path, mapped by the subscription's `appconfig`.
    let r = agent.get("/applications/checkout/environments/prod/configurations/files").await;
    assert_eq!((r.status().as_u16(), r.headers()["configuration-version"].to_str().unwrap()), (200, "7"));
    assert_eq!(r.text().await.unwrap(), payload(7));
    assert_eq!(agent.get("/applications/checkout/environments/prod/configurations/other").await.status(), 404);

    // Events: what is held now, then each change.
    let mut events = agent.get("/v1/events").await;
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    while !seen.contains("\"version\":7") {
        seen.push_str(&String::from_utf8_lossy(&events.chunk().await.unwrap().expect("an event")));
    }
    assert!(seen.contains("event: version"), "{seen}");
    app.publish_text("agent.files", &payload(8)).await;
    while !seen.contains("\"version\":8") {
        seen.push_str(&String::from_utf8_lossy(&events.chunk().await.unwrap().expect("an event")));
    }
    drop(events);
    agent.stop().await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_failing_check_keeps_the_old_file_and_pauses_a_gated_rollout(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("agent.gated").await;
    app.publish_text("agent.gated", "good 1").await;
    let token = app.consumer_token("agent", None, &[("cluster", "canary")], &[]).await;
    let dir = scratch_dir("agent-check");
    let cfg =
        config(&dir, &app, "agent.gated", "check = \"! grep -q bad {path} || (echo 'found bad data' >&2; exit 1)\"");
    std::fs::write(&cfg, format!("token = \"{token}\"\n{}", std::fs::read_to_string(&cfg).unwrap())).unwrap();
    let agent = Agent::start(&cfg).await;
    let target = dir.join("out").join("data.txt");
    eventually("v1 on disk", || async { std::fs::read_to_string(&target).ok().filter(|t| t == "good 1") }).await;

    app.publish(
        "agent.gated",
        json!({"data": "bad 2", "rollout": {"stages": [
            {"selector": {"cluster": "canary"}, "wait_s": 0, "gate": {"min_applied_ratio": 1.0, "max_failure_ratio": 0.5}},
            {"selector": {}, "wait_s": 0}]}}),
    )
    .await;
    let instance = std::fs::read_to_string(dir.join("state/instance-id")).unwrap();
    let row = app.consumer_where("agent.gated", &instance, |c| c["last_applied_ok"] == false).await;
    assert!(row["last_error"].as_str().unwrap().contains("found bad data"), "{row}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "good 1", "the old file stays");
    let r = agent.get("/v1/topics/agent.gated").await;
    assert_eq!(r.headers()["x-imprint-version"], "1");
    assert_eq!(r.text().await.unwrap(), "good 1");
    let paused = eventually("the rollout to pause itself", || async {
        let (_, list) = app.get_json("/api/v1/topics/agent.gated/rollouts").await;
        list["rollouts"][0].clone().as_object().cloned().filter(|r| r["state"] == "paused")
    })
    .await;
    assert_eq!(paused["current_stage"], 0, "stopped at the canary stage: {paused:?}");
    agent.stop().await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_restart_with_the_server_gone_serves_the_last_good_version(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("agent.offline").await;
    app.publish_text("agent.offline", "kept").await;
    let dir = scratch_dir("agent-offline");
    let cfg = config(&dir, &app, "agent.offline", "");
    let agent = Agent::start(&cfg).await;
    let target = dir.join("out").join("data.txt");
    eventually("v1 on disk", || async { std::fs::read_to_string(&target).ok().filter(|t| t == "kept") }).await;
    agent.stop().await;
    app.shut_down().await.expect("the server stops");

    let agent = Agent::start(&cfg).await;
    let r = agent.get("/v1/topics/agent.offline").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-imprint-source"], "cache");
    assert_eq!(r.text().await.unwrap(), "kept");
    assert_eq!(agent.get("/readyz").await.status(), 200);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "kept");
    agent.stop().await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_failover_file_overrides_the_server_until_it_is_removed(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("agent.failover").await;
    app.publish_text("agent.failover", "from the server 1").await;
    let dir = scratch_dir("agent-failover");
    let failover = dir.join("failover");
    std::fs::create_dir_all(&failover).unwrap();
    std::fs::write(failover.join("agent.failover"), "operator's override").unwrap();
    let top = format!("failover_dir = \"{}\"\n", failover.display());
    let agent = Agent::start(&config_at(&dir, &app.base_url(), &top, "agent.failover", "")).await;
    let target = dir.join("out").join("data.txt");
    // Present at start: it is what the node holds, whatever the server says.
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "operator's override");
    let meta: Value = agent.get("/v1/topics/agent.failover/meta").await.json().await.unwrap();
    assert_eq!((meta["source"].clone(), meta["failover"].clone()), (json!("failover"), json!(true)), "{meta}");
    app.publish_text("agent.failover", "from the server 2").await;
    let instance = std::fs::read_to_string(dir.join("state/instance-id")).unwrap();
    let row = app.consumer_where("agent.failover", &instance, |c| c["last_applied_version"] == 2).await;
    assert!(row["last_error"].as_str().unwrap().contains("failover file"), "{row}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "operator's override");
    let r = agent.get("/v1/topics/agent.failover").await;
    assert_eq!(r.headers()["x-imprint-source"], "failover");
    assert_eq!(r.text().await.unwrap(), "operator's override");

    // Edited: the new override is installed. Removed: the server's newest version returns.
    std::fs::write(failover.join("agent.failover"), "a second override").unwrap();
    eventually("the edited override", || async {
        std::fs::read_to_string(&target).ok().filter(|t| t == "a second override")
    })
    .await;
    std::fs::remove_file(failover.join("agent.failover")).unwrap();
    eventually("the server's version back", || async {
        std::fs::read_to_string(&target).ok().filter(|t| t == "from the server 2")
    })
    .await;
    let meta: Value = agent.get("/v1/topics/agent.failover/meta").await.json().await.unwrap();
    assert_eq!((meta["version"].clone(), meta["failover"].clone()), (json!(2), json!(false)), "{meta}");
    agent.stop().await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn an_empty_state_dir_with_the_server_down_starts_from_the_snapshot(pool: sqlx::PgPool) {
    let store = scratch_dir("agent-snapshot-store");
    let objects = imprint_service::objects::Objects::local(&store).expect("local store");
    let app = imprint_testkit::spawn_app_configured(pool.clone(), pool, |c| {
        c.objects = objects;
        c.snapshot_every = std::time::Duration::from_secs(3600);
    })
    .await;
    app.create_topic("agent.snap").await;
    app.publish_text("agent.snap", "in the snapshot").await;
    app.imprint().snapshot_pass().await.expect("snapshot pass");
    let dir = scratch_dir("agent-snapshot");
    let down = imprint_testkit::closed_port_url().await;
    let top = format!("snapshot_store = \"file://{}\"\n", store.display());
    let agent = Agent::start(&config_at(&dir, &down, &top, "agent.snap", "")).await;
    let r = agent.get("/v1/topics/agent.snap").await;
    assert_eq!((r.status().as_u16(), r.headers()["x-imprint-source"].to_str().unwrap()), (200, "snapshot"));
    assert_eq!(r.text().await.unwrap(), "in the snapshot");
    assert_eq!(std::fs::read_to_string(dir.join("out").join("data.txt")).unwrap(), "in the snapshot");
    agent.stop().await;
}

/// A topic encrypted at rest has a sealed snapshot manifest: an agent given a copy of the
/// server's keyring starts from it (the plaintext installed); one without does not.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_sealed_snapshot_starts_an_agent_given_the_keyring_and_no_other(pool: sqlx::PgPool) {
    use imprint_service::keys::{KeyCacheLimits, Keyring, Keys, LocalKeyring};
    let ring_path = scratch_dir("agent-sealed-keyring").join("keyring.json");
    let mut ring = Keyring::load(&ring_path).unwrap();
    ring.create("orders").unwrap();
    ring.save(&ring_path).unwrap();
    let keys = Keys::new(std::sync::Arc::new(LocalKeyring::open(&ring_path).unwrap()), KeyCacheLimits::default());
    let store = scratch_dir("agent-sealed-store");
    let objects = imprint_service::objects::Objects::local(&store).expect("local store");
    let app = imprint_testkit::spawn_app_configured(pool.clone(), pool, |c| {
        c.objects = objects;
        c.keys = Some(keys);
        c.snapshot_every = std::time::Duration::from_secs(3600);
    })
    .await;
    app.create_topic_with(json!({"name": "agent.sealed", "encryption": {"mode": "at_rest", "key": "orders"}})).await;
    app.publish_text("agent.sealed", "sealed in the snapshot").await;
    assert_eq!(app.imprint().snapshot_pass().await.expect("snapshot pass").written, 1);
    let down = imprint_testkit::closed_port_url().await;
    let store_line = format!("snapshot_store = \"file://{}\"\n", store.display());

    let dir = scratch_dir("agent-sealed");
    let top = format!("{store_line}snapshot_keyring = \"{}\"\n", ring_path.display());
    let agent = Agent::start(&config_at(&dir, &down, &top, "agent.sealed", "")).await;
    let r = agent.get("/v1/topics/agent.sealed").await;
    assert_eq!((r.status().as_u16(), r.headers()["x-imprint-source"].to_str().unwrap()), (200, "snapshot"));
    assert_eq!(r.text().await.unwrap(), "sealed in the snapshot");
    assert_eq!(std::fs::read_to_string(dir.join("out").join("data.txt")).unwrap(), "sealed in the snapshot");
    agent.stop().await;

    // Without the keyring the sealed manifest is not used: nothing is installed.
    let dir = scratch_dir("agent-sealed-nokey");
    let agent = Agent::start(&config_at(&dir, &down, &store_line, "agent.sealed", "")).await;
    let r = agent.get("/v1/topics/agent.sealed").await;
    assert_ne!(r.status().as_u16(), 200, "{:?}", r.text().await);
    assert!(!dir.join("out").join("data.txt").exists());
    agent.stop().await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_template_renders_json_into_a_config_file_served_on_a_unix_socket(pool: sqlx::PgPool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app(pool).await;
    app.create_topic("edge.upstreams").await;
    app.publish_text("edge.upstreams", r#"{"servers": ["10.0.0.1:80", "10.0.0.2:80"]}"#).await;
    let dir = scratch_dir("agent-template");
    let template = dir.join("upstreams.conf.j2");
    std::fs::write(
        &template,
        "upstream edge { # v{{ version }}\n{% for s in payload.servers %}  server {{ s }};\n{% endfor %}}\n",
    )
    .unwrap();
    let socket = dir.join("agent.sock");
    let cfg = config_at(&dir, &app.base_url(), "", "edge.upstreams", &format!("template = \"{}\"", template.display()));
    let text = std::fs::read_to_string(&cfg).unwrap().replace("127.0.0.1:0", &format!("unix:{}", socket.display()));
    std::fs::write(&cfg, text).unwrap();
    let agent = Agent::start(&cfg).await;
    let target = dir.join("out").join("data.txt");
    let want = "upstream edge { # v1\n  server 10.0.0.1:80;\n  server 10.0.0.2:80;\n}";
    assert_eq!(std::fs::read_to_string(&target).unwrap(), want);

    // A payload the template cannot render fails its version; the rendered file stays.
    app.publish_text("edge.upstreams", r#"{"hosts": []}"#).await;
    let instance = std::fs::read_to_string(dir.join("state/instance-id")).unwrap();
    let row = app.consumer_where("edge.upstreams", &instance, |c| c["last_applied_version"] == 2).await;
    assert!(row["last_error"].as_str().unwrap().contains("undefined"), "{row}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), want);

    // The local endpoint on the unix socket serves the topic's payload (v1: what is held).
    let mut conn = tokio::net::UnixStream::connect(&socket).await.expect("the socket");
    conn.write_all(b"GET /v1/topics/edge.upstreams HTTP/1.0\r\nHost: agent\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("x-imprint-version: 1"), "{answer}");
    assert!(answer.ends_with(r#"{"servers": ["10.0.0.1:80", "10.0.0.2:80"]}"#), "{answer}");
    agent.stop().await;
}

#[test]
fn check_config_names_the_first_bad_key_and_its_line() {
    let dir = scratch_dir("agent-check-config");
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        "server = \"http://127.0.0.1:3000\"\nstate_dir = \"/tmp/x\"\n\n[[subscription]]\ntopic = \"a.b\"\nrelaod = \"true\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imprint-agent")).arg("check-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 6") && err.contains("relaod"), "{err}");
    std::fs::write(
        &file,
        "server = \"http://127.0.0.1:3000\"\nstate_dir = \"/tmp/x\"\n\n[[subscription]]\ntopic = \"a.b\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imprint-agent")).arg("check-config").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (1 subscription(s))"));
}

/// Several regions (docs/regions.md): with the eu S3 server stopped, an eu agent's download
/// comes from us, and the agent, its metrics and the consumer audit say so.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn with_the_eu_store_stopped_the_agent_downloads_from_us_and_reports_it(pool: sqlx::PgPool) {
    let Some(mut eu) = imprint_testkit::Moto::start().await else { return };
    let Some(us) = imprint_testkit::Moto::start().await else { return };
    let (home, regions) = imprint_testkit::two_regions(&eu, &us);
    let app = imprint_testkit::spawn_app_configured(pool.clone(), pool, move |c| {
        c.objects = home;
        c.regions = regions;
    })
    .await;
    app.create_topic_with(json!({"name": "agent.regions", "owner": "payments", "inline_limit_bytes": 1024})).await;
    let body = payload(7);
    app.publish_raw("agent.regions", body.clone().into_bytes()).await;
    eu.stop();

    let dir = scratch_dir("agent-regions");
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "server = \"{}\"\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n\n[labels]\nregion = \"eu\"\n\n\
             [[subscription]]\ntopic = \"agent.regions\"\npath = \"{}\"\n",
            app.base_url(),
            dir.join("state").display(),
            dir.join("out").join("data.txt").display(),
        ),
    )
    .unwrap();
    let agent = Agent::start(&file).await;
    let target = dir.join("out").join("data.txt");
    eventually("the payload on disk, from us", || async {
        std::fs::read_to_string(&target).ok().filter(|t| *t == body)
    })
    .await;
    let meta: Value = agent.get("/v1/topics/agent.regions/meta").await.json().await.unwrap();
    assert_eq!((meta["source"].as_str(), meta["served_region"].as_str()), (Some("server"), Some("us")), "{meta}");
    let metrics = agent.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("imprint_client_region_downloads_total{region=\"us\"} 1")),
        "{metrics}"
    );
    assert!(metrics.contains("imprint_client_region_failovers_total{region=\"eu\"}"), "{metrics}");
    // The poll's applied report carries the region into the consumer audit.
    eventually("the audit says us served the agent", || async {
        let (_, list) = app.get_json("/api/v1/topics/agent.regions/consumers").await;
        list["consumers"][0]["served_region"] == "us"
    })
    .await;
    agent.stop().await;
}
