//! The OpenAPI document is generated from the router and the request/response types:
//! every route is in it, every documented route answers with a status and content type
//! the document gives (the payload endpoints with each version's own type), errors have
//! one documented shape, and request bodies refuse unknown fields, naming them.
use imprint_testkit::{assert_error, spawn_app, SendJson};
use reqwest::Method;
use serde_json::{json, Value};

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn every_route_is_documented_and_answers(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    let doc: Value = app.req(Method::GET, "/api/v1/openapi.json").json_body().await;
    let paths = doc["paths"].as_object().expect("paths");
    let expected = [
        "/api/v1/topics",
        "/api/v1/topics/{topic}",
        "/api/v1/topics/{topic}/versions",
        "/api/v1/topics/{topic}/versions/{n}",
        "/api/v1/topics/{topic}/versions/{n}/data",
        "/api/v1/topics/{topic}/versions/{n}/scopes",
        "/api/v1/topics/{topic}/versions/{n}/regions",
        "/api/v1/topics/{topic}/resolve",
        "/api/v1/topics/{topic}/retention",
        "/api/v1/topics/{topic}/pins",
        "/api/v1/topics/{topic}/latest",
        "/api/v1/topics/{topic}/consumers",
        "/api/v1/blobs/sha256/{hash}",
        "/api/v1/topics/{topic}/rollouts",
        "/api/v1/topics/{topic}/rollouts/{id}",
        "/api/v1/topics/{topic}/rollouts/{id}/{action}",
        "/api/v1/poll",
        "/api/v1/relay/poll",
        "/api/v1/relay/reports",
        "/api/v1/relay/topics/{topic}/versions/{n}/data",
        "/api/v1/webhooks",
        "/api/v1/webhooks/{id}",
        "/api/v1/webhooks/{id}/rotate",
        "/api/v1/webhooks/{id}/deliveries",
        "/api/v1/webhooks/{id}/deliveries/{delivery}/redeliver",
        "/api/v1/topics/{topic}/drafts",
        "/api/v1/topics/{topic}/drafts/{id}",
        "/api/v1/topics/{topic}/drafts/{id}/diff",
        "/api/v1/topics/{topic}/drafts/{id}/release",
        "/api/v1/topics/{topic}/review",
        "/api/v1/topics/{topic}/freezes",
        "/api/v1/topics/{topic}/plaintext-reads",
        "/api/v1/change-requests",
        "/api/v1/change-requests/{id}",
        "/api/v1/change-requests/{id}/approve",
        "/api/v1/change-requests/{id}/reject",
        "/api/v1/change-requests/{id}/withdraw",
        "/api/v1/freezes",
        "/api/v1/freezes/{id}",
        "/api/v1/openapi.json",
        "/api/v1/validation/candidates/{token}",
        "/ofrep/v1/evaluate/flags/{key}",
        "/ofrep/v1/evaluate/flags",
        "/ofrep/v1/events",
        "/healthz",
        "/readyz",
        "/metrics",
        "/spring/{file}",
        "/spring/{application}/{profile}",
        "/spring/{application}/{profile}/{label}",
    ];
    let mut documented: Vec<&str> = paths.keys().map(String::as_str).collect();
    documented.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    assert_eq!(documented, want);

    // The router is built from the document (utoipa_axum): the only route added beside it
    // is the API's catch-all 404 (api/mod.rs). A `.route(` added anywhere else would escape
    // the document. (The console's routes and Apollo's protocol live elsewhere; no /api
    // route may.)
    let src = format!("{}/src", env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![std::path::PathBuf::from(&src)];
    let mut files = Vec::new();
    while let Some(dir) = sources.pop() {
        for entry in std::fs::read_dir(&dir).expect("src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                sources.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(files.len() > 8, "the server's sources: {files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read");
        let (any, api) = (text.matches(".route(\"").count(), text.matches(".route(\"/api").count());
        if path.ends_with("api/mod.rs") {
            assert_eq!((any, api), (1, 1), "api/mod.rs registers routes outside the OpenAPI router");
        } else if path.starts_with(format!("{src}/api")) {
            assert_eq!(any, 0, "{} registers routes outside the OpenAPI router", path.display());
        } else {
            assert_eq!(api, 0, "{} registers routes outside the OpenAPI router", path.display());
        }
    }

    // Every documented operation answers (not the catch-all, not 405), and every error
    // response it documents is the one error shape.
    app.create_topic("t").await;
    let mut operations = 0;
    let mut undocumented = Vec::new();
    for (path, item) in paths {
        let concrete = path
            .replace("{topic}", "t")
            .replace("{n}", "1")
            .replace("{id}", "1")
            .replace("{action}", "pause")
            .replace("{key}", "k")
            .replace("{delivery}", "1")
            .replace("{token}", &"0".repeat(64));
        for (method, op) in item.as_object().expect("path item") {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            operations += 1;
            let r = app.admin(m.clone(), &concrete).send().await.unwrap();
            let status = r.status().as_u16();
            let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
            if let Err(e) = check_documented(&doc, method, path, status, ct.as_deref()) {
                undocumented.push(e);
            }
            // An event stream does not end: its status and type are the answer.
            let body: Value = if ct.as_deref().is_some_and(|t| t.starts_with("text/event-stream")) {
                Value::Null
            } else {
                r.json().await.unwrap_or(Value::Null)
            };
            assert_ne!(status, 405, "{method} {path}");
            assert!(body["error"]["code"] != "not_found", "{method} {path} fell through to the catch-all: {body}");
            for (code, resp) in op["responses"].as_object().expect("responses") {
                if code.starts_with('4') || code.starts_with('5') {
                    let schema = &resp["content"]["application/json"]["schema"]["$ref"];
                    // OpenFeature's protocol has error shapes of its own (server/src/ofrep.rs).
                    if path != "/readyz" && !path.starts_with("/ofrep/") {
                        assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {code}");
                    }
                }
            }
        }
    }
    assert!(operations >= 25, "{operations} operations");
    assert!(undocumented.is_empty(), "answers the document does not give: {undocumented:#?}");
    for schema in ["ErrorBody", "PublishBody", "PinBody", "ScopeBody", "RolloutBody", "RolloutActionBody", "NewTopic"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema} missing from components");
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn unknown_or_misspelt_fields_are_refused_by_name(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("t").await;
    app.publish("t", json!({"data": "a"})).await;
    let cases = [
        (Method::POST, "/api/v1/topics", json!({"name": "u", "descripton": "typo"}), "descripton"),
        (Method::PATCH, "/api/v1/topics/t", json!({"retention": {"max_version": 3}}), "max_version"),
        (Method::POST, "/api/v1/topics/t/versions", json!({"dta": "a"}), "dta"),
        (Method::POST, "/api/v1/topics/t/versions/1/scopes", json!({"selector": {}, "why": 1}), "why"),
        (Method::PUT, "/api/v1/topics/t/pins", json!({"selector": {}, "version": 1, "reson": "x"}), "reson"),
        (Method::POST, "/api/v1/topics/t/rollouts", json!({"version": 1, "stage": []}), "stage"),
        (Method::POST, "/api/v1/topics/t/rollouts/1/cancel", json!({"rolback": true}), "rolback"),
        (Method::POST, "/api/v1/poll", json!({"consumer": {"instance": "i"}, "topics": {}, "wait": 10}), "wait"),
    ];
    for (method, path, body, field) in cases {
        let r = app.admin(method.clone(), path).json(&body).send().await.unwrap();
        let b = assert_error(r, 400, "invalid_request").await;
        let msg = b["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(field), "{method} {path}: {msg}");
    }
    // Nothing was changed by any of them.
    assert_eq!(app.versions_in_db("t").await, 1);
    let topic: Value = app.req(Method::GET, "/api/v1/topics/t").json_body().await;
    assert_eq!(topic["active_pins"], 0);
    assert_eq!(topic["retention"]["max_versions"], Value::Null);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_bad_token_is_refused_on_reads_too(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("t").await;
    let r = app.req(Method::GET, "/api/v1/topics/t").bearer_auth("not-a-token").send().await.unwrap();
    assert_error(r, 401, "unauthorized").await;
    let r = app.req(Method::GET, "/api/v1/topics/t").send().await.unwrap();
    assert_eq!(r.status(), 200, "anonymous reads stay open");
}

/// Is an answer one the served document gives for `method path`: its status listed, its
/// content type one the status lists (a media range such as `*/*` counts), and no body
/// where the status lists no content?
fn check_documented(
    doc: &Value,
    method: &str,
    path: &str,
    status: u16,
    content_type: Option<&str>,
) -> Result<(), String> {
    let op = &doc["paths"][path][method];
    let responses = op["responses"].as_object().ok_or(format!("{method} {path} is not documented"))?;
    let resp = responses
        .get(&status.to_string())
        .or_else(|| responses.get("default"))
        .ok_or(format!("{method} {path}: status {status} is not documented"))?;
    let media = |t: &str| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match (resp["content"].as_object(), content_type.map(media)) {
        (None, None) => Ok(()),
        (None, Some(t)) => Err(format!("{method} {path} {status}: answered {t}, documented without content")),
        (Some(_), None) => Err(format!("{method} {path} {status}: answered no content type")),
        (Some(listed), Some(t)) => {
            let (kind, _) = t.split_once('/').unwrap_or((&t, ""));
            let matches = |range: &String| {
                let range = media(range);
                range == "*/*" || range == t || range.strip_suffix("/*") == Some(kind)
            };
            if listed.keys().any(matches) {
                Ok(())
            } else {
                Err(format!("{method} {path} {status}: answered {t}, documented {:?}", listed.keys()))
            }
        }
    }
}

/// The payload endpoints answer with each version's own content type, whole or in part,
/// not modified, refused, gone: every answer is one the served document gives. (A
/// document that said only `application/octet-stream` for the bytes fails this.) A fixed
/// set of requests, then seeded random ones (`IMPRINT_FUZZ_SEED`; `IMPRINT_FUZZ_CASES`/20).
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn payload_answers_are_the_documented_ones(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    let doc: Value = app.req(Method::GET, "/api/v1/openapi.json").json_body().await;
    let data = "/api/v1/topics/{topic}/versions/{n}/data";
    let latest = "/api/v1/topics/{topic}/latest";
    let mut undocumented = std::collections::BTreeSet::new();
    let mut statuses = std::collections::BTreeSet::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut check = |template: &str, r: reqwest::Response| {
        let status = r.status().as_u16();
        let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
        statuses.insert(status);
        if status == 200 {
            seen.extend(ct.clone());
        }
        if let Err(e) = check_documented(&doc, "get", template, status, ct.as_deref()) {
            undocumented.insert(e);
        }
    };
    app.create_topic("p").await;
    // Before any version: `latest` has nothing to answer.
    check(latest, app.req(Method::GET, "/api/v1/topics/p/latest").send().await.unwrap());
    let types = [
        "text/plain; charset=utf-8",
        "application/json",
        "text/csv",
        "image/png",
        "text/html",
        "application/x-custom",
        "application/vnd.imprint.rules+json; version=2",
        "font/woff2",
    ];
    let mut etags = Vec::new();
    for (i, ct) in types.iter().enumerate() {
        let n = i + 1;
        app.publish("p", json!({"data": format!("{{\"n\": {n}}}"), "content_type": ct})).await;
        let version: Value = app.req(Method::GET, &format!("/api/v1/topics/p/versions/{n}")).json_body().await;
        let sha = version["sha256"].as_str().expect("sha256").to_owned();
        etags.push(format!("\"{sha}\""));
        for (template, url, etag) in [
            (data, format!("/api/v1/topics/p/versions/{n}/data"), format!("\"{sha}\"")),
            (latest, "/api/v1/topics/p/latest".to_owned(), format!("\"v{n}\"")),
        ] {
            let get = || app.req(Method::GET, &url);
            check(template, get().send().await.unwrap());
            check(template, get().header("range", "bytes=0-3").send().await.unwrap());
            check(template, get().header("range", "bytes=-2").send().await.unwrap());
            check(template, get().header("range", "bytes=100000-").send().await.unwrap());
            check(template, get().header("if-none-match", etag.as_str()).send().await.unwrap());
            check(template, get().bearer_auth("not-a-token").send().await.unwrap());
            let query = if template == data { "?redirect=true" } else { "?labels=region=eu" };
            check(template, app.req(Method::GET, &format!("{url}{query}")).send().await.unwrap());
            let query = if template == data { "?redirect=maybe" } else { "?labels=,=" };
            check(template, app.req(Method::GET, &format!("{url}{query}")).send().await.unwrap());
        }
    }
    check(data, app.req(Method::GET, "/api/v1/topics/p/versions/99/data").send().await.unwrap());
    check(data, app.req(Method::GET, "/api/v1/topics/nope/versions/1/data").send().await.unwrap());
    check(latest, app.req(Method::GET, "/api/v1/topics/nope/latest").send().await.unwrap());

    // Random requests: any version or the latest, any mix of Range, If-None-Match, token
    // and query (xorshift64*, so a failure replays from its seed).
    let cases = std::env::var("IMPRINT_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).map_or(300, |n: u64| n / 20);
    let seed: u64 = std::env::var("IMPRINT_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5EED_1234);
    let mut state = seed.rotate_left(29) | 1;
    let mut below = |n: usize| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    };
    for _ in 0..cases {
        let n = 1 + below(types.len() + 1);
        let (template, mut req) = if n > types.len() {
            let labels = ["", "?labels=region=eu", "?labels=a=b,c=d", "?labels=bad", "?labels=="][below(5)];
            (latest, app.req(Method::GET, &format!("/api/v1/topics/p/latest{labels}")))
        } else {
            let q = ["", "?redirect=true", "?redirect=false", "?redirect=", "?redirect=2"][below(5)];
            (data, app.req(Method::GET, &format!("/api/v1/topics/p/versions/{n}/data{q}")))
        };
        let (a, b) = (below(24), below(24));
        let range = match below(8) {
            0 => Some(format!("bytes={a}-{b}")),
            1 => Some(format!("bytes={a}-")),
            2 => Some(format!("bytes=-{a}")),
            3 => Some(["bytes=", "bytes=0-1,3-4", "items=0-1", "bytes=x-y", "bytes=-0"][below(5)].to_owned()),
            _ => None,
        };
        if let Some(range) = range {
            req = req.header("range", range);
        }
        let etag = &etags[below(etags.len())];
        match below(6) {
            0 => req = req.header("if-none-match", etag.as_str()),
            1 => req = req.header("if-none-match", format!("W/{etag}, \"v{n}\"")),
            2 => req = req.header("if-none-match", "*"),
            _ => {}
        }
        match below(5) {
            0 => req = req.bearer_auth("not-a-token"),
            1 => req = req.bearer_auth(imprint_testkit::ADMIN_TOKEN),
            _ => {}
        }
        check(template, req.send().await.unwrap());
    }

    // Purged by retention: the version's data is gone.
    let r = app
        .admin(Method::PATCH, "/api/v1/topics/p")
        .json(&json!({"retention": {"max_versions": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.imprint().janitor_pass().await.expect("janitor pass");
    check(data, app.req(Method::GET, "/api/v1/topics/p/versions/1/data").send().await.unwrap());

    assert!(undocumented.is_empty(), "answers the document does not give (seed {seed}): {undocumented:#?}");
    assert_eq!(statuses, [200, 206, 304, 400, 401, 404, 410, 416].into(), "the answers exercised");
    assert!(seen.len() >= types.len(), "each version's own content type: {seen:?}");
}
