//! The gRPC API (proto/imprint/v1/imprint.proto) through a real tonic client against a
//! real server (the test kit starts it with its gRPC listener on a free port): auth and
//! read rights as over HTTP, bad input with the right status and error code, Watch (the
//! first state, then updates, only to matching labels; reports on the same call), streamed
//! Publish and Download of 200 MiB with the process's memory staying flat, health and
//! reflection, and the role gates.
#![allow(clippy::unwrap_used)]
use futures::StreamExt;
use imprint_server::grpc::pb;
use imprint_server::grpc::pb::imprint_client::ImprintClient;
use imprint_testkit::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

async fn client(app: &TestApp) -> ImprintClient<Channel> {
    let channel = Channel::from_shared(app.grpc_url()).unwrap().connect().await.expect("gRPC connects");
    ImprintClient::new(channel).max_decoding_message_size(8 << 20).max_encoding_message_size(8 << 20)
}

/// `msg` with `authorization: Bearer <token>`.
fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// The status has this gRPC code and carries the API's error code (metadata and ErrorInfo).
fn assert_status(s: &Status, code: Code, api_code: &str) {
    use tonic_types::StatusExt;
    assert_eq!(s.code(), code, "{s:?}");
    let meta = s.metadata().get("imprint-error-code").and_then(|v| v.to_str().ok());
    assert_eq!(meta, Some(api_code), "{s:?}");
    let info = s.get_details_error_info().expect("an ErrorInfo detail");
    assert_eq!((info.reason.as_str(), info.domain.as_str()), (api_code, "imprint"));
}

fn consumer(instance: &str, labels: &[(&str, &str)]) -> Option<pb::Consumer> {
    Some(pb::Consumer {
        instance: instance.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    })
}

fn topics(t: &[(&str, u64)]) -> HashMap<String, u64> {
    t.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn end() -> pb::PublishRequest {
    pb::PublishRequest { kind: Some(pb::publish_request::Kind::End(pb::PublishEnd {})) }
}

fn header(topic: &str) -> pb::PublishHeader {
    pb::PublishHeader { topic: topic.into(), ..Default::default() }
}

/// A Publish call's messages: the header, then `payload` in chunks of `chunk` bytes.
fn publish_messages(h: pb::PublishHeader, payload: Vec<u8>, chunk: usize) -> Vec<pb::PublishRequest> {
    let mut out = vec![pb::PublishRequest { kind: Some(pb::publish_request::Kind::Header(h)) }];
    for c in payload.chunks(chunk) {
        out.push(pb::PublishRequest { kind: Some(pb::publish_request::Kind::Chunk(bytes::Bytes::copy_from_slice(c))) });
    }
    out.push(end());
    out
}

async fn publish(
    c: &mut ImprintClient<Channel>,
    token: &str,
    h: pb::PublishHeader,
    payload: Vec<u8>,
) -> Result<pb::PublishResponse, Status> {
    let msgs = publish_messages(h, payload, 64 << 10);
    c.publish(authed(token, futures::stream::iter(msgs))).await.map(tonic::Response::into_inner)
}

/// A Watch call: the sender for reports and the answer stream.
async fn watch(
    c: &mut ImprintClient<Channel>,
    token: Option<&str>,
    start: pb::WatchStart,
) -> Result<(tokio::sync::mpsc::Sender<pb::WatchRequest>, tonic::Streaming<pb::WatchResponse>), Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::WatchRequest { kind: Some(pb::watch_request::Kind::Start(start)) }).await.unwrap();
    let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
    let req = match token {
        Some(t) => authed(t, outbound),
        None => Request::new(outbound),
    };
    Ok((tx, c.watch(req).await?.into_inner()))
}

async fn next_answer(s: &mut tonic::Streaming<pb::WatchResponse>, within: Duration) -> Option<pb::WatchResponse> {
    match tokio::time::timeout(within, s.next()).await {
        Err(_) => None,
        Ok(Some(Ok(a))) => Some(a),
        Ok(other) => panic!("the Watch ended: {other:?}"),
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn calls_check_the_caller_as_the_http_api_does(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "red.secret", "owner": "red", "restricted": true})).await;
    app.create_topic("open.cfg").await;
    app.publish_text("red.secret", "s3cr3t").await;
    app.publish_text("open.cfg", "hello").await;
    let blue = app.consumer_token("blue-node", Some("blue"), &[], &[]).await;
    let red = app.consumer_token("red-node", Some("red"), &[], &[]).await;
    let mut c = client(&app).await;

    // No token: publishing needs one. An unknown token, or a malformed header: refused.
    let s =
        c.publish(Request::new(futures::stream::iter(publish_messages(header("open.cfg"), b"x".to_vec(), 1)))).await;
    assert_status(&s.unwrap_err(), Code::Unauthenticated, "unauthorized");
    let s = publish(&mut c, "not-a-token", header("open.cfg"), b"x".to_vec()).await;
    assert_status(&s.unwrap_err(), Code::Unauthenticated, "unauthorized");
    let mut r = Request::new(pb::GetVersionRequest { topic: "open.cfg".into(), version: 1 });
    r.metadata_mut().insert("authorization", "Basic abc".parse().unwrap());
    assert_status(&c.get_version(r).await.unwrap_err(), Code::Unauthenticated, "unauthorized");
    // A consumer token may not publish.
    let s = publish(&mut c, &red, header("open.cfg"), b"x".to_vec()).await;
    assert_status(&s.unwrap_err(), Code::PermissionDenied, "forbidden");
    assert_eq!(app.versions_in_db("open.cfg").await, 1);

    // Team blue's consumer token may not read red's restricted topic, by any call.
    let get = pb::GetVersionRequest { topic: "red.secret".into(), version: 1 };
    assert_status(&c.get_version(authed(&blue, get.clone())).await.unwrap_err(), Code::PermissionDenied, "forbidden");
    let list = pb::ListVersionsRequest { topic: "red.secret".into(), ..Default::default() };
    assert_status(&c.list_versions(authed(&blue, list)).await.unwrap_err(), Code::PermissionDenied, "forbidden");
    let resolve = pb::ResolveRequest { topic: "red.secret".into(), labels: HashMap::new() };
    assert_status(&c.resolve(authed(&blue, resolve.clone())).await.unwrap_err(), Code::PermissionDenied, "forbidden");
    for version in [0, 1] {
        let d = pb::DownloadRequest { topic: "red.secret".into(), version, labels: HashMap::new() };
        assert_status(&c.download(authed(&blue, d)).await.unwrap_err(), Code::PermissionDenied, "forbidden");
    }
    // Anonymous: as over HTTP, a restricted topic needs a token.
    let d = pb::DownloadRequest { topic: "red.secret".into(), version: 1, labels: HashMap::new() };
    assert_status(&c.download(Request::new(d)).await.unwrap_err(), Code::Unauthenticated, "unauthorized");
    // Polls and Watches answer it as missing ("forbidden"), never its payload.
    let poll = pb::PollRequest {
        consumer: consumer("b-1", &[]),
        topics: topics(&[("red.secret", 0), ("open.cfg", 0)]),
        ..Default::default()
    };
    let answer = c.poll(authed(&blue, poll.clone())).await.unwrap().into_inner();
    assert_eq!(answer.missing.get("red.secret").map(String::as_str), Some("forbidden"));
    assert_eq!(answer.updates["open.cfg"].data, b"hello".as_slice());
    assert!(!answer.updates.contains_key("red.secret"));
    let start = pb::WatchStart {
        consumer: consumer("b-2", &[]),
        topics: topics(&[("red.secret", 0), ("open.cfg", 0)]),
        ..Default::default()
    };
    let (_tx, mut w) = watch(&mut c, Some(&blue), start.clone()).await.unwrap();
    let first = next_answer(&mut w, Duration::from_secs(5)).await.expect("the first state");
    assert_eq!(first.missing.get("red.secret").map(String::as_str), Some("forbidden"));
    assert_eq!(first.updates.keys().collect::<Vec<_>>(), ["open.cfg"]);
    // Red's own token reads it.
    let v = c.get_version(authed(&red, get)).await.unwrap().into_inner();
    assert_eq!((v.topic.as_str(), v.version, v.size), ("red.secret", 1, 6));
    let answer = c.poll(authed(&red, poll)).await.unwrap().into_inner();
    assert_eq!(answer.updates["red.secret"].data, b"s3cr3t".as_slice());

    // A label-bound consumer token must claim its labels, on Watch as on the poll.
    let bound = app.consumer_token("eu-node", None, &[("region", "eu")], &[]).await;
    let s = match watch(&mut c, Some(&bound), start).await {
        Err(s) => s,
        Ok((_tx, mut w)) => w.next().await.unwrap().unwrap_err(),
    };
    assert_status(&s, Code::PermissionDenied, "forbidden");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn bad_input_gets_the_right_status_and_changes_nothing(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("cfg").await;
    let mut c = client(&app).await;
    let admin = ADMIN_TOKEN;

    let get = |topic: &str, version| pb::GetVersionRequest { topic: topic.into(), version };
    let s = c.get_version(authed(admin, get("nope", 1))).await.unwrap_err();
    assert_status(&s, Code::NotFound, "topic_not_found");
    let s = c.get_version(authed(admin, get("cfg", 7))).await.unwrap_err();
    assert_status(&s, Code::NotFound, "version_not_found");
    let s = c.get_version(authed(admin, get("Not A Name!", 1))).await.unwrap_err();
    assert_status(&s, Code::InvalidArgument, "invalid_topic_name");
    let s = c.get_version(authed(admin, get("cfg", 0))).await.unwrap_err();
    assert_status(&s, Code::InvalidArgument, "invalid_request");
    let s = publish(&mut c, admin, header("nope"), b"x".to_vec()).await.unwrap_err();
    assert_status(&s, Code::NotFound, "topic_not_found");
    let s = c
        .resolve(authed(admin, pb::ResolveRequest { topic: "cfg".into(), labels: HashMap::new() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.version, 0, "nothing is published yet");

    // A bad selector in the scopes, a bad checksum, a wrong announced size: nothing stored.
    let h = pb::PublishHeader { scopes: vec!["=eu".into()], ..header("cfg") };
    assert_status(
        &publish(&mut c, admin, h, b"x".to_vec()).await.unwrap_err(),
        Code::InvalidArgument,
        "invalid_selector",
    );
    let h = pb::PublishHeader { sha256: "0".repeat(64), ..header("cfg") };
    let s = publish(&mut c, admin, h, b"payload".to_vec()).await.unwrap_err();
    assert_status(&s, Code::InvalidArgument, "checksum_mismatch");
    let h = pb::PublishHeader { sha256: "xyz".into(), ..header("cfg") };
    assert_status(
        &publish(&mut c, admin, h, b"x".to_vec()).await.unwrap_err(),
        Code::InvalidArgument,
        "invalid_request",
    );
    let h = pb::PublishHeader { no_scopes: true, scopes: vec!["region=eu".into()], ..header("cfg") };
    assert_status(
        &publish(&mut c, admin, h, b"x".to_vec()).await.unwrap_err(),
        Code::InvalidArgument,
        "invalid_request",
    );
    // A message over 4 MiB is refused by the transport; a chunk over 1 MiB by the server.
    let msgs = publish_messages(header("cfg"), vec![7u8; 5 << 20], 5 << 20);
    let s = c.publish(authed(admin, futures::stream::iter(msgs))).await.unwrap_err();
    assert_eq!(s.code(), Code::OutOfRange, "an oversized message: {s:?}");
    let msgs = publish_messages(header("cfg"), vec![7u8; 2 << 20], 2 << 20);
    let s = c.publish(authed(admin, futures::stream::iter(msgs))).await.unwrap_err();
    assert_status(&s, Code::InvalidArgument, "invalid_request");
    // A Publish without a header, or with a second one.
    let chunk = pb::PublishRequest { kind: Some(pb::publish_request::Kind::Chunk(bytes::Bytes::from_static(b"x"))) };
    let s = c.publish(authed(admin, futures::stream::iter(vec![chunk]))).await.unwrap_err();
    assert_status(&s, Code::InvalidArgument, "invalid_request");
    let mut msgs = publish_messages(header("cfg"), b"abc".to_vec(), 1);
    msgs.insert(2, pb::PublishRequest { kind: Some(pb::publish_request::Kind::Header(header("cfg"))) });
    let s = c.publish(authed(admin, futures::stream::iter(msgs))).await.unwrap_err();
    assert_status(&s, Code::InvalidArgument, "invalid_request");
    // Without its end message (a cancelled call looks like this), or with more after it.
    let mut msgs = publish_messages(header("cfg"), b"abc".to_vec(), 1);
    msgs.pop();
    let s = c.publish(authed(admin, futures::stream::iter(msgs))).await.unwrap_err();
    assert_status(&s, Code::InvalidArgument, "invalid_request");
    assert!(s.message().contains("end message"), "{s:?}");
    let mut msgs = publish_messages(header("cfg"), b"abc".to_vec(), 1);
    msgs.push(end());
    let s = c.publish(authed(admin, futures::stream::iter(msgs))).await.unwrap_err();
    assert_status(&s, Code::InvalidArgument, "invalid_request");
    assert_eq!(app.versions_in_db("cfg").await, 0, "no bad publish stored anything");

    // The right checksum and size: stored, and read back alike.
    let payload = b"{\"a\": 1}".to_vec();
    let sha = hex::encode(Sha256::digest(&payload));
    let h = pb::PublishHeader {
        sha256: sha.clone(),
        size: payload.len() as u64,
        content_type: "application/json".into(),
        message: "first".into(),
        metadata: HashMap::from([("git".to_string(), "abc".to_string())]),
        ..header("cfg")
    };
    let p = publish(&mut c, admin, h, payload.clone()).await.unwrap();
    assert_eq!((p.version, p.sha256.as_str(), p.size), (1, sha.as_str(), payload.len() as u64));
    assert_eq!(p.scopes.iter().map(|s| s.selector.as_str()).collect::<Vec<_>>(), ["*"], "everyone");
    let (status, http) = app.get_json("/api/v1/topics/cfg/versions/1").await;
    assert_eq!(status, 200);
    assert_eq!((http["message"].as_str(), http["metadata"]["git"].as_str()), (Some("first"), Some("abc")));
    // A payload of another size than its header announced, shorter or longer.
    for size in [99, 3] {
        let h = pb::PublishHeader { size, ..header("cfg") };
        let s = publish(&mut c, admin, h, payload.clone()).await.unwrap_err();
        assert_status(&s, Code::InvalidArgument, "invalid_request");
        assert!(s.message().contains("announced"), "{s:?}");
    }
    assert_eq!(app.versions_in_db("cfg").await, 1);

    // Poll and Watch: bad consumers and waits are refused as over HTTP.
    let poll = pb::PollRequest { consumer: consumer("", &[]), topics: topics(&[("cfg", 0)]), ..Default::default() };
    assert_status(&c.poll(Request::new(poll)).await.unwrap_err(), Code::InvalidArgument, "invalid_request");
    let poll = pb::PollRequest { consumer: consumer("i", &[]), wait_ms: 60_001, ..Default::default() };
    assert_status(&c.poll(Request::new(poll)).await.unwrap_err(), Code::InvalidArgument, "invalid_request");
    let poll = pb::PollRequest { consumer: None, ..Default::default() };
    assert_status(&c.poll(Request::new(poll)).await.unwrap_err(), Code::InvalidArgument, "invalid_request");
    let bad_labels = consumer("i", &[("", "x")]);
    let poll = pb::PollRequest { consumer: bad_labels, ..Default::default() };
    assert_status(&c.poll(Request::new(poll)).await.unwrap_err(), Code::InvalidArgument, "invalid_selector");
    let report = pb::WatchRequest { kind: Some(pb::watch_request::Kind::Report(pb::WatchReport::default())) };
    let s = c.watch(Request::new(futures::stream::iter(vec![report]))).await.unwrap_err();
    assert_status(&s, Code::InvalidArgument, "invalid_request");
    // Unknown topics are missing, not errors (as the poll answers them).
    let poll = pb::PollRequest { consumer: consumer("i", &[]), topics: topics(&[("nope", 0)]), ..Default::default() };
    let a = c.poll(Request::new(poll)).await.unwrap().into_inner();
    assert_eq!(a.missing.get("nope").map(String::as_str), Some("topic_not_found"));
    let d = pb::DownloadRequest { topic: "nope".into(), version: 0, labels: HashMap::new() };
    assert_status(&c.download(Request::new(d)).await.unwrap_err(), Code::NotFound, "topic_not_found");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn watch_sends_the_state_then_each_release_to_matching_labels_only(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("fleet").await;
    app.create_topic("other").await;
    app.publish_text("fleet", "v1").await;
    let mut c = client(&app).await;
    let start = |instance: &str, region: &str, held: u64| pb::WatchStart {
        consumer: consumer(instance, &[("region", region)]),
        topics: topics(&[("fleet", held), ("ghost", 0)]),
        ..Default::default()
    };
    let (eu_tx, mut eu) = watch(&mut c, None, start("eu-1", "eu", 0)).await.unwrap();
    let (_us_tx, mut us) = watch(&mut c, None, start("us-1", "us", 1)).await.unwrap();
    // The first answer is the current state: eu holds nothing (v1 is its update), us holds v1.
    let first = next_answer(&mut eu, Duration::from_secs(5)).await.expect("eu's first state");
    assert_eq!(first.updates["fleet"].version, 1);
    assert_eq!(first.updates["fleet"].data, b"v1".as_slice());
    assert!(first.updates["fleet"].has_data);
    assert_eq!(first.updates["fleet"].data_url, "/api/v1/topics/fleet/versions/1/data");
    assert_eq!(first.missing.get("ghost").map(String::as_str), Some("topic_not_found"));
    let first = next_answer(&mut us, Duration::from_secs(5)).await.expect("us's first state");
    assert!(first.updates.is_empty(), "us holds what it should: {first:?}");

    // A release to eu only: eu's Watch gets it within a second, us's does not.
    let published = Instant::now();
    app.publish("fleet", json!({"data": "v2", "scopes": [{"region": "eu"}], "rollout": null})).await;
    let got = next_answer(&mut eu, Duration::from_secs(1)).await.expect("eu sees v2 within 1 s");
    let seen = published.elapsed();
    assert_eq!(got.updates["fleet"].version, 2, "{got:?}");
    assert!(seen < Duration::from_secs(1), "{seen:?}");
    // A publish to another topic wakes neither.
    app.publish_text("other", "x").await;
    assert!(next_answer(&mut us, Duration::from_millis(700)).await.is_none(), "us gets no eu-only release");
    // Released to everyone: us gets it now, and eu too.
    app.publish_text("fleet", "v3").await;
    assert_eq!(next_answer(&mut us, Duration::from_secs(2)).await.unwrap().updates["fleet"].version, 3);
    assert_eq!(next_answer(&mut eu, Duration::from_secs(2)).await.unwrap().updates["fleet"].version, 3);

    // A report on the same call reaches the consumer audit.
    let applied = pb::Applied { version: 3, ok: false, error: "disk full".into(), region: String::new() };
    eu_tx
        .send(pb::WatchRequest {
            kind: Some(pb::watch_request::Kind::Report(pb::WatchReport {
                applied: HashMap::from([("fleet".to_string(), applied)]),
            })),
        })
        .await
        .unwrap();
    let row = app.consumer_where("fleet", "eu-1", |c| c["last_applied_ok"] == false).await;
    assert_eq!(row["last_error"], "disk full");
    assert_eq!(row["labels"], json!({"region": "eu"}));
    // …and so does one by Report.
    let report = pb::ReportRequest {
        consumer: consumer("eu-1", &[("region", "eu")]),
        topics: topics(&[("fleet", 3)]),
        applied: HashMap::from([(
            "fleet".to_string(),
            pb::Applied { version: 3, ok: true, error: String::new(), region: "us".into() },
        )]),
    };
    c.report(Request::new(report.clone())).await.unwrap();
    let row = app.consumer_where("fleet", "eu-1", |c| c["last_applied_ok"] == true).await;
    assert_eq!((&row["version"], &row["served_region"]), (&json!(3), &json!("us")), "{row}");
    // A region that is no region name is refused.
    let mut bad = report;
    bad.applied.get_mut("fleet").unwrap().region = "../us".into();
    let s = c.report(Request::new(bad)).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    // The Watch lives on after reports.
    app.publish_text("fleet", "v4").await;
    assert_eq!(next_answer(&mut eu, Duration::from_secs(2)).await.unwrap().updates["fleet"].version, 4);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn watch_streams_are_bounded_and_end_with_their_lifetime(pool: sqlx::PgPool) {
    let app = spawn_app_with_settings(pool, |s| {
        s.service.max_long_polls = 1;
        s.grpc.watch_max = Duration::from_secs(2);
    })
    .await;
    app.create_topic("t").await;
    let mut c = client(&app).await;
    let start = pb::WatchStart { consumer: consumer("a", &[]), topics: topics(&[("t", 0)]), ..Default::default() };
    let (_tx, mut first) = watch(&mut c, None, start.clone()).await.unwrap();
    next_answer(&mut first, Duration::from_secs(5)).await.expect("the first state");
    // The one place is taken: the next Watch is refused at once.
    let s = watch(&mut c, None, pb::WatchStart { consumer: consumer("b", &[]), ..start.clone() }).await.unwrap_err();
    assert_status(&s, Code::Unavailable, "too_many_streams");
    // The first ends (OK) at its lifetime and gives its place back.
    let end = tokio::time::timeout(Duration::from_secs(5), first.next()).await.expect("the Watch ends");
    assert!(end.is_none(), "ends cleanly: {end:?}");
    let (_tx, mut again) = eventually("a place is free again", || {
        let mut c = c.clone();
        let start = start.clone();
        async move { watch(&mut c, None, start).await.ok() }
    })
    .await;
    assert!(next_answer(&mut again, Duration::from_secs(5)).await.is_some());
}

/// VmRSS of this process (the server runs in it), in MiB.
fn rss_mib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 =
        s.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024
}

/// Samples `rss_mib` every 20 ms until dropped; the highest seen.
struct RssPeak(std::sync::Arc<std::sync::atomic::AtomicU64>, tokio::task::JoinHandle<()>);

impl RssPeak {
    fn start() -> Self {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss_mib()));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                p.fetch_max(rss_mib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        RssPeak(peak, task)
    }
    fn peak(&self) -> u64 {
        self.0.fetch_max(rss_mib(), std::sync::atomic::Ordering::Relaxed).max(rss_mib())
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.1.abort();
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn publish_and_download_200_mib_streamed_with_flat_memory(pool: sqlx::PgPool) {
    const SIZE: usize = 200 << 20;
    const CHUNK: usize = 1 << 20;
    let dir = std::env::temp_dir().join("imprint-test-objects").join(format!("grpc-{}", rand::random::<u64>()));
    let objects = imprint_service::objects::Objects::local(&dir).unwrap();
    let app = spawn_app_configured(pool.clone(), pool, |c| c.objects = objects).await;
    app.create_topic("big").await;
    let mut c = client(&app).await;
    // The payload: 200 chunks made as they are sent (never the whole of it in memory).
    let chunk_of = |i: usize| bytes::Bytes::from(vec![(i % 251) as u8; CHUNK]);
    let mut sha = Sha256::new();
    for i in 0..SIZE / CHUNK {
        sha.update(chunk_of(i));
    }
    let sha = hex::encode(sha.finalize());
    let baseline = rss_mib();
    let sampler = RssPeak::start();
    let h = pb::PublishHeader { sha256: sha.clone(), size: SIZE as u64, ..header("big") };
    let msgs = futures::stream::iter(0..=SIZE / CHUNK + 1).map(move |i| match i {
        0 => pb::PublishRequest { kind: Some(pb::publish_request::Kind::Header(h.clone())) },
        i if i > SIZE / CHUNK => end(),
        i => pb::PublishRequest { kind: Some(pb::publish_request::Kind::Chunk(chunk_of(i - 1))) },
    });
    let started = Instant::now();
    let p = c.publish(authed(ADMIN_TOKEN, msgs)).await.unwrap().into_inner();
    let up = started.elapsed();
    assert_eq!((p.size, p.sha256.as_str(), p.storage.as_str()), (SIZE as u64, sha.as_str(), "object"));
    let after_publish = sampler.peak();

    let started = Instant::now();
    let d = pb::DownloadRequest { topic: "big".into(), version: p.version, labels: HashMap::new() };
    let mut s = c.download(authed(ADMIN_TOKEN, d)).await.unwrap().into_inner();
    let Some(pb::download_response::Kind::Header(h)) = s.next().await.unwrap().unwrap().kind else {
        panic!("a Download begins with its header")
    };
    assert_eq!((h.version, h.size, h.sha256.as_str()), (p.version, SIZE as u64, sha.as_str()));
    let (mut got, mut hasher, mut largest) = (0usize, Sha256::new(), 0usize);
    while let Some(m) = s.next().await {
        let Some(pb::download_response::Kind::Chunk(c)) = m.unwrap().kind else {
            panic!("only chunks after the header")
        };
        got += c.len();
        largest = largest.max(c.len());
        hasher.update(&c);
    }
    let down = started.elapsed();
    assert_eq!(got, SIZE);
    assert_eq!(hex::encode(hasher.finalize()), sha, "the bytes downloaded are the bytes published");
    assert!(largest <= CHUNK, "chunks of at most 1 MiB: {largest}");
    let peak = sampler.peak();
    eprintln!(
        "200 MiB over gRPC: publish {up:?}, download {down:?}; RSS {baseline} MiB before, peak {after_publish} MiB \
         publishing, {peak} MiB downloading"
    );
    assert!(peak < baseline + 64, "memory stays flat: {baseline} MiB before, peak {peak} MiB (200 MiB moved)");
    // By resolution (version 0), as a consumer would.
    let d = pb::DownloadRequest { topic: "big".into(), version: 0, labels: HashMap::new() };
    let mut s = c.download(Request::new(d)).await.unwrap().into_inner();
    let first = s.next().await.unwrap().unwrap();
    assert!(matches!(first.kind, Some(pb::download_response::Kind::Header(pb::DownloadHeader { version: 1, .. }))));
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn reads_answer_as_the_http_api(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("cfg").await;
    for i in 1..=3 {
        app.publish_text("cfg", &format!("v{i}")).await;
    }
    let pin = json!({"selector": {"region": "eu"}, "version": 2});
    let (status, body) = app.admin(reqwest::Method::PUT, "/api/v1/topics/cfg/pins").json(&pin).send_json().await;
    assert!((200..300).contains(&status), "pin: {status} {body}");
    let mut c = client(&app).await;
    let eu = HashMap::from([("region".to_string(), "eu".to_string())]);
    let r = c.resolve(Request::new(pb::ResolveRequest { topic: "cfg".into(), labels: eu.clone() })).await.unwrap();
    let (_, http) = app.get_json("/api/v1/topics/cfg/resolve?labels=region=eu").await;
    assert_eq!((r.get_ref().version, r.get_ref().pinned), (http["version"].as_u64().unwrap(), http["pinned"] == true));
    assert_eq!(r.get_ref().version, 2);
    let page = c
        .list_versions(Request::new(pb::ListVersionsRequest { topic: "cfg".into(), limit: 2, cursor: String::new() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [3, 2]);
    let rest = c
        .list_versions(Request::new(pb::ListVersionsRequest { topic: "cfg".into(), limit: 2, cursor: page.next }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1]);
    assert!(rest.next.is_empty());
    let (_, http) = app.get_json("/api/v1/topics/cfg/versions/3").await;
    let v = c.get_version(Request::new(pb::GetVersionRequest { topic: "cfg".into(), version: 3 })).await.unwrap();
    let v = v.into_inner();
    assert_eq!((v.sha256.as_str(), v.size, v.storage.as_str()), (http["sha256"].as_str().unwrap(), 2, "inline"));
    assert_eq!(v.created_by, http["created_by"].as_str().unwrap());
    // Download of what eu resolves to: the pinned v2.
    let d = pb::DownloadRequest { topic: "cfg".into(), version: 0, labels: eu };
    let mut s = c.download(Request::new(d)).await.unwrap().into_inner();
    let Some(pb::download_response::Kind::Header(h)) = s.next().await.unwrap().unwrap().kind else { panic!() };
    assert_eq!((h.version, h.pinned), (2, true));
    let Some(pb::download_response::Kind::Chunk(b)) = s.next().await.unwrap().unwrap().kind else { panic!() };
    assert_eq!(b, b"v2".as_slice());
    assert!(s.next().await.is_none());
    // The batched poll: the updates of a long poll, as HTTP's.
    let poll = pb::PollRequest { consumer: consumer("n", &[]), topics: topics(&[("cfg", 1)]), ..Default::default() };
    let a = c.poll(Request::new(poll)).await.unwrap().into_inner();
    assert_eq!(a.updates["cfg"].version, 3);
    assert_eq!(a.poll_after_ms, 30_000);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn health_and_reflection_are_served(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    let channel = Channel::from_shared(app.grpc_url()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "imprint.v1.Imprint"] {
        let r =
            health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status(), tonic_health::pb::health_check_response::ServingStatus::Serving, "{service:?}");
    }
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request, server_reflection_response,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(futures::stream::iter(vec![req])).await.unwrap().into_inner();
    let Some(server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("a list of services")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"imprint.v1.Imprint".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn roles_gate_the_calls(pool: sqlx::PgPool) {
    let publish_only = spawn_app_configured(pool.clone(), pool.clone(), |c| c.roles.api = false).await;
    publish_only.create_topic("t").await;
    let api_only = spawn_app_configured(pool.clone(), pool, |c| c.roles.publish = false).await;
    let mut c = client(&api_only).await;
    let s = publish(&mut c, ADMIN_TOKEN, header("t"), b"x".to_vec()).await.unwrap_err();
    assert_status(&s, Code::NotFound, "not_found");
    assert!(s.message().contains("publish role"), "{s:?}");
    let mut c = client(&publish_only).await;
    let poll = pb::PollRequest { consumer: consumer("n", &[]), topics: topics(&[("t", 0)]), ..Default::default() };
    let s = c.poll(Request::new(poll)).await.unwrap_err();
    assert_status(&s, Code::NotFound, "not_found");
    assert!(s.message().contains("api role"), "{s:?}");
    let p = publish(&mut c, ADMIN_TOKEN, header("t"), b"x".to_vec()).await.unwrap();
    assert_eq!(p.version, 1);
    // Reads are served by publish servers too.
    let v = c.get_version(Request::new(pb::GetVersionRequest { topic: "t".into(), version: 1 })).await.unwrap();
    assert_eq!(v.into_inner().version, 1);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_revoked_token_ends_its_watch_and_a_shutdown_ends_every_watch(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("t").await;
    let token = app.consumer_token("nodes", None, &[], &[]).await;
    let mut c = client(&app).await;
    let start = pb::WatchStart { consumer: consumer("a", &[]), topics: topics(&[("t", 0)]), ..Default::default() };
    let (_tx, mut revoked) = watch(&mut c, Some(&token), start.clone()).await.unwrap();
    next_answer(&mut revoked, Duration::from_secs(5)).await.expect("the first state");
    let (_tx2, mut open) = watch(&mut c, None, pb::WatchStart { consumer: consumer("b", &[]), ..start }).await.unwrap();
    next_answer(&mut open, Duration::from_secs(5)).await.expect("the first state");
    app.imprint().revoke_token(&imprint_service::Caller::System, "nodes").await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), revoked.next()).await.expect("the Watch ends");
    assert_status(&end.unwrap().unwrap_err(), Code::Unauthenticated, "unauthorized");
    // A shutdown ends the other (OK), and does not wait for it.
    let stopping = Instant::now();
    let (down, end) = tokio::join!(app.shut_down(), tokio::time::timeout(Duration::from_secs(10), open.next()));
    down.unwrap();
    assert!(end.expect("the Watch ends at shutdown").is_none());
    assert!(stopping.elapsed() < Duration::from_secs(10), "{:?}", stopping.elapsed());
}

/// Files under `dir` (the local object store), recursively.
fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_publish_that_breaks_off_stores_nothing(pool: sqlx::PgPool) {
    let dir = std::env::temp_dir().join("imprint-test-objects").join(format!("grpc-cut-{}", rand::random::<u64>()));
    let objects = imprint_service::objects::Objects::local(&dir).unwrap();
    let app = spawn_app_configured(pool.clone(), pool, |c| c.objects = objects).await;
    app.create_topic("big").await;
    let mut c = client(&app).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let call = {
        let mut c = c.clone();
        tokio::spawn(
            async move { c.publish(authed(ADMIN_TOKEN, tokio_stream::wrappers::ReceiverStream::new(rx))).await },
        )
    };
    tx.send(pb::PublishRequest { kind: Some(pb::publish_request::Kind::Header(header("big"))) }).await.unwrap();
    for _ in 0..4 {
        let chunk = bytes::Bytes::from(vec![1u8; 1 << 20]);
        tx.send(pb::PublishRequest { kind: Some(pb::publish_request::Kind::Chunk(chunk)) }).await.unwrap();
    }
    // 4 MiB are on their way into an upload (past the inline limit); the client goes away.
    eventually("the upload to begin", || async { (files_under(&dir) > 0).then_some(()) }).await;
    // The client goes away: its call is dropped (the server sees the request end early).
    call.abort();
    drop(tx);
    eventually("the upload to be discarded", || async { (files_under(&dir) == 0).then_some(()) }).await;
    assert_eq!(app.versions_in_db("big").await, 0);
    // And the server goes on: the next publish works.
    let p = publish(&mut c, ADMIN_TOKEN, header("big"), b"whole".to_vec()).await.unwrap();
    assert_eq!(p.version, 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn connections_from_one_address_are_capped_as_on_http(pool: sqlx::PgPool) {
    // IMPRINT_MAX_CONNS_PER_IP bounds the gRPC listener too: one address cannot hold more
    // connections open than that, however few streams each carries.
    let limits = imprint_server::ConnectionLimits { max_conns_per_ip: 2, ..Default::default() };
    let app = spawn_app_limited(pool, limits).await;
    let addr = app.grpc_addr.expect("gRPC address");
    let first = client(&app).await;
    let second = client(&app).await;
    // A third connection is closed before anything is spoken: reading it ends at once.
    let mut third = tokio::net::TcpStream::connect(addr).await.expect("TCP connects");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read(&mut third, &mut buf))
        .await
        .expect("the refused connection is closed, not left open");
    assert!(matches!(read, Ok(0) | Err(_)), "the third connection was served: {read:?}");
    // A gRPC client on a third connection is not served either (the connection closes
    // under it: UNAVAILABLE or CANCELLED), while the first two are.
    let refused = Channel::from_shared(app.grpc_url()).unwrap().connect().await;
    if let Ok(channel) = refused {
        let mut c = ImprintClient::new(channel);
        let r = c.list_versions(pb::ListVersionsRequest { topic: "nope".into(), ..Default::default() }).await;
        let code = r.expect_err("refused").code();
        assert!(matches!(code, Code::Unavailable | Code::Cancelled), "{code:?}");
    }
    for mut c in [first.clone(), second.clone()] {
        let r = c.list_versions(pb::ListVersionsRequest { topic: "nope".into(), ..Default::default() }).await;
        assert_eq!(r.expect_err("no such topic").code(), Code::NotFound, "an open connection is served");
    }
    // Closing one gives its place back.
    drop(first);
    drop(third);
    let mut later = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(channel) = Channel::from_shared(app.grpc_url()).unwrap().connect().await {
            let mut c = ImprintClient::new(channel);
            let r = c.list_versions(pb::ListVersionsRequest { topic: "nope".into(), ..Default::default() }).await;
            if r.as_ref().err().map(|s| s.code()) == Some(Code::NotFound) {
                later = Some(());
                break;
            }
        }
    }
    assert!(later.is_some(), "a place freed by a closed connection is given to a new one");
}

/// keep_rejected over gRPC (docs/validation.md): a rejected version's record says so and
/// why; downloading it by number is refused as over HTTP (409 version_rejected), and
/// downloading what labels resolve to gets the accepted version.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_rejected_version_is_marked_and_never_downloaded(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "cfg", "owner": "payments", "keep_rejected": true,
        "checks": [{"type": "not_empty"}]}))
        .await;
    app.publish_text("cfg", "[1]").await;
    let (status, err) = app.post_json("/api/v1/topics/cfg/versions", &json!({"data": "[]"})).await;
    assert_eq!((status, &err["error"]["details"]["version"]), (422, &json!(2)), "{err}");
    let mut c = client(&app).await;
    let v = c.get_version(Request::new(pb::GetVersionRequest { topic: "cfg".into(), version: 2 })).await.unwrap();
    let v = v.into_inner();
    assert!(v.rejected);
    assert_eq!(v.rejected_reasons.len(), 1);
    assert!(v.rejected_reasons[0].starts_with("not_empty: "), "{:?}", v.rejected_reasons);
    let v1 = c.get_version(Request::new(pb::GetVersionRequest { topic: "cfg".into(), version: 1 })).await.unwrap();
    assert!(!v1.get_ref().rejected && v1.get_ref().rejected_reasons.is_empty());
    let d = pb::DownloadRequest { topic: "cfg".into(), version: 2, labels: HashMap::new() };
    let refused = match c.download(Request::new(d)).await {
        Err(s) => s,
        Ok(r) => r.into_inner().next().await.expect("an answer").expect_err("refused"),
    };
    assert_status(&refused, Code::FailedPrecondition, "version_rejected");
    let d = pb::DownloadRequest { topic: "cfg".into(), version: 0, labels: HashMap::new() };
    let mut s = c.download(Request::new(d)).await.unwrap().into_inner();
    let Some(pb::download_response::Kind::Header(h)) = s.next().await.unwrap().unwrap().kind else { panic!() };
    assert_eq!(h.version, 1);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn calls_share_their_applications_fair_serving_limit_with_http(pool: sqlx::PgPool) {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_configured(pool.clone(), pool, |c| {
        c.fair.initial_limit = 2;
        c.fair.min_limit = 2;
        c.fair.max_limit = 2;
        c.fair.queue_wait = Duration::from_millis(50);
    })
    .await;
    app.create_topic("cfg").await;
    app.publish_text("cfg", "v1").await;
    let flood = app.consumer_token("flood", None, &[], &[]).await;
    let calm = app.consumer_token("calm", None, &[], &[]).await;
    let mut c = client(&app).await;
    // Long polls of one token, parked over gRPC, hold no place: the token's reads go on.
    let parked: Vec<_> = (0..4)
        .map(|i| {
            let mut c = c.clone();
            let calm = calm.clone();
            tokio::spawn(async move {
                let poll = pb::PollRequest {
                    consumer: consumer(&format!("p{i}"), &[]),
                    topics: topics(&[("cfg", 1)]),
                    wait_ms: 20_000,
                    ..Default::default()
                };
                c.poll(authed(&calm, poll)).await
            })
        })
        .collect();
    eventually("the polls are parked", || async { app.imprint().state().waiter_entries().0 >= 4 }).await;
    let resolve = || pb::ResolveRequest { topic: "cfg".into(), labels: HashMap::new() };
    assert_eq!(c.resolve(authed(&calm, resolve())).await.unwrap().get_ref().version, 1);
    // Two HTTP polls of the flooding token whose bodies never come hold its two places…
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /api/v1/poll HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {flood}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // …so its gRPC reads and polls queue, then RESOURCE_EXHAUSTED `overloaded`, while the
    // calm token's are answered.
    let e = c.resolve(authed(&flood, resolve())).await.unwrap_err();
    assert_status(&e, Code::ResourceExhausted, "overloaded");
    let poll = pb::PollRequest { consumer: consumer("f", &[]), topics: topics(&[("cfg", 0)]), ..Default::default() };
    let e = c.poll(authed(&flood, poll.clone())).await.unwrap_err();
    assert_status(&e, Code::ResourceExhausted, "overloaded");
    assert_eq!(c.poll(authed(&calm, poll)).await.unwrap().get_ref().updates["cfg"].version, 1);
    drop(held);
    for p in parked {
        p.abort();
    }
}
