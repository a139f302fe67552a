//! The connection level, as an attacker would use it: heads and bodies sent a byte now
//! and then (slowloris), more connections than one address may hold, a shutdown while such
//! connections are open, and anonymous writes that announce a body they never send.
//! Raw TCP, because HTTP clients do not misbehave on request.
use imprint_server::ConnectionLimits;
use imprint_testkit::{spawn_app, spawn_app_configured, spawn_app_limited, ADMIN_TOKEN};
use sqlx::PgPool;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Only keeps a test from hanging for ever: no assertion is timed.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// Reads until the server closes the connection (EOF, or an error such as a reset) and
/// returns what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(HANG_GUARD, stream.read(&mut buf)).await {
            Err(_) => panic!("the server kept the connection open (sent so far: {:?})", String::from_utf8_lossy(&got)),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one response (head and a `content-length` body): (status, head, body).
pub async fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(HANG_GUARD, stream.read(&mut buf))
            .await
            .expect("the server answers")
            .expect("the connection stays up until the answer");
        assert!(n > 0, "closed before an answer: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while got.len() < head_end + length {
        let n = tokio::time::timeout(HANG_GUARD, stream.read(&mut buf)).await.expect("the body comes").expect("read");
        assert!(n > 0, "closed in the body");
        got.extend_from_slice(&buf[..n]);
    }
    (status, head, String::from_utf8_lossy(&got[head_end..head_end + length]).to_string())
}

fn short(header: u64, body: u64) -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: Duration::from_secs(header),
        body_idle_timeout: Duration::from_secs(body),
        ..ConnectionLimits::default()
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn half_a_request_line_is_cut_off(pool: PgPool) {
    let app = spawn_app_limited(pool, short(1, 30)).await;
    let addr = app.addr;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /api/v1/top").await.expect("write");
    // Nothing more is sent: the server must close the connection by itself.
    read_until_closed(&mut s).await;

    // Headers one byte at a time, each well within the deadline, do not reset it.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let closed = async {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if s.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    };
    let cut = tokio::time::timeout(HANG_GUARD, closed).await.expect("not hung");
    if !cut {
        // Every byte was written (into the socket buffer): the server still closes it.
        read_until_closed(&mut s).await;
    }

    // An idle keep-alive connection is under the same deadline.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let (status, _, _) = read_response(&mut s).await;
    assert_eq!(status, 200);
    read_until_closed(&mut s).await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_stalled_body_is_cut_off(pool: PgPool) {
    let app = spawn_app_limited(pool, short(30, 1)).await;
    let addr = app.addr;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/v1/topics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    // The rest of the body never comes: the request fails and the connection ends.
    let got = read_until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "a client error or a closed connection: {text}");

    // A body trickling in slower than the idle deadline is cut as well.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write");
    let trickle = async {
        for b in b"\"slow\", \"owner\": \"payments\"                                                   }" {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            if s.write_all(&[*b]).await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(HANG_GUARD, trickle).await;
    let got = read_until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert!(!text.starts_with("HTTP/1.1 201"), "the trickled topic was not created: {text}");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn connections_past_the_per_address_cap_are_refused(pool: PgPool) {
    let limits = ConnectionLimits { max_conns_per_ip: 3, ..short(60, 30) };
    let app = spawn_app_limited(pool, limits).await;
    let addr = app.addr;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        assert_eq!(read_response(&mut s).await.0, 200, "within the cap");
        held.push(s);
    }
    // The fourth is answered 429 (or just closed) without being read.
    let mut extra = TcpStream::connect(addr).await.expect("connect");
    let got = read_until_closed(&mut extra).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 429"), "refused: {text}");
    // The held ones still work.
    held[0].write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert_eq!(read_response(&mut held[0]).await.0, 200);
    // Closing one frees its place (the server notices the close shortly).
    held.pop();
    let served = async {
        loop {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.is_ok() {
                let got = read_until_closed(&mut s).await;
                if got.starts_with(b"HTTP/1.1 200") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(HANG_GUARD, served).await.expect("a freed place is given to a new connection");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn shutdown_is_not_held_up_by_slow_clients(pool: PgPool) {
    let limits = ConnectionLimits { shutdown_grace: Duration::from_secs(1), ..short(600, 600) };
    let app = spawn_app_limited(pool, limits).await;
    let addr = app.addr;
    // One sends half a head, one half a body (with a token), one nothing at all.
    let mut slow_head = TcpStream::connect(addr).await.expect("connect");
    slow_head.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    let mut slow_body = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/v1/topics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 100\r\n\r\n{{"
    );
    slow_body.write_all(head.as_bytes()).await.expect("write");
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    // A served request on a fourth shows the server has them all.
    let mut ok = TcpStream::connect(addr).await.expect("connect");
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert_eq!(read_response(&mut ok).await.0, 200);

    let finished =
        tokio::time::timeout(HANG_GUARD, app.shut_down()).await.expect("shutdown finishes despite slow clients");
    finished.expect("no error");
    for s in [&mut slow_head, &mut slow_body, &mut silent, &mut ok] {
        read_until_closed(s).await;
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn anonymous_writes_are_refused_before_their_body(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("open").await;
    for (path, length) in [
        ("/api/v1/topics", "1000000000"),
        ("/api/v1/topics", "1000"),
        ("/api/v1/topics/open/versions", "1000"),
        ("/api/v1/topics/open/pins", "1000"),
        ("/api/v1/topics/open/rollouts/1/cancel", "1000"),
        ("/api/v1/no/such/route", "1000"),
    ] {
        let method = if path.ends_with("/pins") { "PUT" } else { "POST" };
        let mut s = TcpStream::connect(app.addr).await.expect("connect");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.expect("write");
        // The body never comes: the answer must not wait for it.
        let (status, head, body) = read_response(&mut s).await;
        assert_eq!(status, 401, "{method} {path}: {head}{body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("an API error body");
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
    }
    // A malformed Authorization header is refused the same way.
    let mut s = TcpStream::connect(app.addr).await.expect("connect");
    s.write_all(
        b"POST /api/v1/topics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic eDp5\r\nContent-Length: 1000\r\n\r\n",
    )
    .await
    .expect("write");
    assert_eq!(read_response(&mut s).await.0, 401);
    // Polls are reads: anonymous ones are served (by default).
    let r = app
        .req(reqwest::Method::POST, "/api/v1/poll")
        .json(&serde_json::json!({"consumer": {"instance": "a"}, "topics": {"open": null}}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    // With a token, the request goes on to read its body.
    let r = app
        .admin(reqwest::Method::POST, "/api/v1/topics")
        .json(&serde_json::json!({"name": "with.token", "owner": "payments"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn anonymous_polls_are_refused_before_their_body_when_polls_need_a_token(pool: PgPool) {
    let app = spawn_app_configured(pool.clone(), pool, |c| c.poll_auth_required = true).await;
    let mut s = TcpStream::connect(app.addr).await.expect("connect");
    s.write_all(
        b"POST /api/v1/poll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
    )
    .await
    .expect("write");
    let (status, head, body) = read_response(&mut s).await;
    assert_eq!(status, 401, "{head}{body}");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn made_up_methods_make_no_metric_series(pool: PgPool) {
    let app = spawn_app(pool).await;
    let series = |text: &str| -> Vec<String> {
        text.lines().filter(|l| l.starts_with("imprint_http_requests_total{")).map(str::to_owned).collect()
    };
    let before = app.req(reqwest::Method::GET, "/metrics").send().await.expect("send").text().await.expect("text");
    let other_before = series(&before).iter().filter(|l| l.contains("method=\"other\"")).count();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut methods = Vec::new();
    for i in 0..50 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let name =
            format!("ZZ{}Q{i}", (0..6).map(|k| (b'A' + ((seed >> (k * 5)) % 26) as u8) as char).collect::<String>());
        let method = reqwest::Method::from_bytes(name.as_bytes()).expect("a token");
        for path in ["/api/v1/topics", "/healthz"] {
            let r = app.admin(method.clone(), path).send().await.expect("send");
            assert!(r.status().is_client_error(), "{name} {path}: {}", r.status());
        }
        methods.push(name);
    }
    let after = app.req(reqwest::Method::GET, "/metrics").send().await.expect("send").text().await.expect("text");
    for m in &methods {
        assert!(!after.contains(m.as_str()), "{m} names a series");
    }
    const KNOWN: [&str; 10] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "other"];
    for line in series(&after) {
        let method = line.split("method=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
        assert!(KNOWN.contains(&method), "a method label outside the known ones: {line}");
    }
    let other_after = series(&after).iter().filter(|l| l.contains("method=\"other\"")).count();
    assert!(other_after < other_before + 50, "{other_before} → {other_after} series for made-up methods");
    assert!(after.contains("method=\"other\""), "they are counted, under one label");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn metrics_never_name_restricted_topics(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("lagmetric.open.topic").await;
    app.create_topic_with(
        serde_json::json!({"name": "lagmetric.secret.topic", "owner": "payments", "restricted": true}),
    )
    .await;
    app.imprint().state().reload(&app.pool, None).await.expect("reload");
    app.imprint().update_lag_gauges().await.expect("gauges");
    let text = app.req(reqwest::Method::GET, "/metrics").send().await.expect("send").text().await.expect("text");
    assert!(text.contains("lagmetric.open.topic"), "open topics have their series");
    assert!(!text.contains("lagmetric.secret"), "a restricted topic is named: {text}");
    assert!(text.contains("imprint_lagging_nodes{topic=\"restricted\"}"), "restricted ones are summed");
}
