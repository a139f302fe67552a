//! The consumer audit: many simulated instances, filters, lag and apply failures.
use imprint_testkit::*;
use reqwest::Method;
use serde_json::{json, Value};

/// Polls the consumer list until `pred` holds (the audit is written in batches).
async fn consumers_until(app: &TestApp, query: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let path = format!("/api/v1/topics/fleet/consumers{query}");
    eventually(&format!("the consumer list {query} to match"), || async {
        Some(app.req(Method::GET, &path).json_body().await).filter(|v| pred(v))
    })
    .await
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn audit_records_every_instance(pool: sqlx::PgPool) {
    // The lag grace passes when the test moves the service's clock.
    let clock = ManualClock::new(chrono::Utc::now());
    let app = spawn_app_clocked(pool.clone(), pool, |_| {}, std::sync::Arc::new(clock.clone())).await;
    app.create_topic("fleet").await;
    app.publish("fleet", json!({"data": "v1"})).await;
    app.publish("fleet", json!({"data": "v2", "scopes": [{"region": "eu"}]})).await;

    // 30 instances: eu nodes should hold 2, us nodes 1. Some hold what they should,
    // some are behind, some failed to apply.
    for i in 0..30 {
        let region = if i % 2 == 0 { "eu" } else { "us" };
        let held = match i % 5 {
            0 => Value::Null,
            1 | 2 => json!(1),
            _ => json!(if region == "eu" { 2 } else { 1 }),
        };
        let mut body = json!({"consumer": {"instance": format!("node-{i:02}"), "labels": {"region": region, "app": "checkout"}},
                              "topics": {"fleet": held}});
        if i % 5 == 1 && region == "eu" {
            body["applied"] = json!({"fleet": {"version": 2, "ok": false, "error": "schema mismatch"}});
        }
        app.poll(body).await;
    }
    let all = consumers_until(&app, "", |v| v["total"] == 30).await;
    let list = all["consumers"].as_array().unwrap();
    // The clock has not moved since v2 was published: nobody lags yet.
    assert!(list.iter().all(|c| c["lagging"] == false), "v2 was published moments ago: nobody lags yet: {all}");
    let node =
        |name: &str| list.iter().find(|c| c["instance"] == name).unwrap_or_else(|| panic!("{name} in {all}")).clone();
    // node-00: eu, held nothing, should hold 2.
    let n0 = node("node-00");
    assert_eq!(n0["labels"], json!({"region": "eu", "app": "checkout"}));
    assert!(n0["version"].is_null());
    assert_eq!(n0["expected_version"], 2);
    // node-06: eu, i%5==1 → held 1 and reported a failed apply of 2.
    let n6 = node("node-06");
    assert_eq!((n6["version"].clone(), n6["expected_version"].clone()), (json!(1), json!(2)));
    assert_eq!(n6["last_error"], "schema mismatch");
    assert_eq!(n6["last_applied_ok"], false);
    // node-03: us, holds 1 as it should.
    let n3 = node("node-03");
    assert_eq!(
        (n3["version"].clone(), n3["expected_version"].clone(), n3["lagging"].clone()),
        (json!(1), json!(1), json!(false))
    );
    assert!(n3["last_error"].is_null());
    // Counts by version: i%5==0 → none (6 nodes); eu with i%5 in 3,4 → 2; the rest → 1.
    let eu_on_2 = (0..30).filter(|i| i % 2 == 0 && (i % 5 == 3 || i % 5 == 4)).count();
    assert_eq!(all["by_version"]["none"], 6);
    assert_eq!(all["by_version"]["2"], eu_on_2);
    assert_eq!(all["by_version"]["1"], 30 - 6 - eu_on_2);

    // Filters.
    let eu = consumers_until(&app, "?labels=region=eu", |v| v["total"] == 15).await;
    assert!(eu["consumers"].as_array().unwrap().iter().all(|c| c["labels"]["region"] == "eu"));
    let on2 = consumers_until(&app, "?version=2", |v| v["total"].as_u64().is_some()).await;
    assert_eq!(on2["total"], eu_on_2);
    // Lagging needs the expected version to have been out for the grace period.
    // (A minute more than the grace: also if some times are the database's own.)
    clock.advance(chrono::Duration::seconds(LAG_GRACE_SECS as i64 + 60));
    let lagging = consumers_until(&app, "?lagging=true", |v| v["total"].as_u64().is_some()).await;
    let expected_lagging = (0..30).filter(|i| i % 5 == 0 || (i % 2 == 0 && (i % 5 == 1 || i % 5 == 2))).count();
    assert_eq!(lagging["total"], expected_lagging, "{lagging}");

    // A later successful apply clears the error; the instance moves to 2.
    app.poll(json!({"consumer": {"instance": "node-06", "labels": {"region": "eu", "app": "checkout"}},
                    "topics": {"fleet": 2}, "applied": {"fleet": {"version": 2, "ok": true}}}))
        .await;
    let after = consumers_until(&app, "?labels=region=eu&version=2", |v| {
        v["consumers"].as_array().unwrap().iter().any(|c| c["instance"] == "node-06")
    })
    .await;
    let n6 = after["consumers"].as_array().unwrap().iter().find(|c| c["instance"] == "node-06").unwrap().clone();
    assert!(n6["last_error"].is_null(), "{n6}");
    assert_eq!(n6["last_applied_ok"], true);
    assert_eq!(n6["lagging"], false);

    // Counts on the topic, and "unused topics": fleet is polled, the new one never was.
    app.create_topic("nobody-reads-this").await;
    let t: Value = app.req(Method::GET, "/api/v1/topics/fleet").json_body().await;
    assert_eq!(t["consumers"], 30);
    assert!(t["last_polled_at"].is_string(), "{t}");
    let unused: Value = app.req(Method::GET, "/api/v1/topics?unused_days=1").json_body().await;
    let names: Vec<&str> = unused["topics"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["nobody-reads-this"]);
    let r = app.req(Method::GET, "/api/v1/topics?unused_days=0").send().await.unwrap();
    assert_error(r, 400, "invalid_request").await;

    // Bad input.
    let r = app.req(Method::GET, "/api/v1/topics/fleet/consumers?labels=region").send().await.unwrap();
    assert_error(r, 400, "invalid_selector").await;
    let r = app.req(Method::GET, "/api/v1/topics/fleet/consumers?version=x").send().await.unwrap();
    assert_error(r, 400, "invalid_request").await;
    let r = app.req(Method::GET, "/api/v1/topics/fleet/consumers?lagging=maybe").send().await.unwrap();
    assert_error(r, 400, "invalid_request").await;
    let r = app.req(Method::GET, "/api/v1/topics/ghost/consumers").send().await.unwrap();
    assert_error(r, 404, "topic_not_found").await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn consumers_group_by_a_label_and_list_trouble_first(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("fleet").await;
    app.publish("fleet", json!({"data": "v1"})).await;
    app.publish("fleet", json!({"data": "v2"})).await;
    // eu: 3 on v2, 1 on v1 that failed to apply v2; us: 2 on v1; one node without a region.
    let nodes = [
        ("eu-1", Some("eu"), 2, false),
        ("eu-2", Some("eu"), 2, false),
        ("eu-3", Some("eu"), 2, false),
        ("eu-4", Some("eu"), 1, true),
        ("us-1", Some("us"), 1, false),
        ("us-2", Some("us"), 1, false),
        ("bare", None, 2, false),
    ];
    for (name, region, held, failed) in nodes {
        let labels = match region {
            Some(r) => json!({"region": r, "app": "checkout"}),
            None => json!({"app": "checkout"}),
        };
        let mut body = json!({"consumer": {"instance": name, "labels": labels}, "topics": {"fleet": held}});
        if failed {
            body["applied"] = json!({"fleet": {"version": 2, "ok": false, "error": "bad model"}});
        }
        app.poll(body).await;
    }
    let grouped = consumers_until(&app, "?group_by=region", |v| v["total"] == 7).await;
    let groups = grouped["groups"].as_array().expect("groups");
    let group =
        |value: &str| groups.iter().find(|g| g["value"] == value).unwrap_or_else(|| panic!("{value}: {grouped}"));
    assert_eq!(group("eu")["total"], 4);
    assert_eq!(group("eu")["by_version"], json!({"1": 1, "2": 3}));
    assert_eq!(group("eu")["failed"], 1);
    assert_eq!(group("us")["by_version"], json!({"1": 2}));
    assert_eq!(group("us")["failed"], 0);
    assert_eq!(group("")["total"], 1, "nodes without the label form their own group");
    assert_eq!(grouped["label_keys"], json!(["app", "region"]));
    // Trouble first: the node that failed to apply leads the list.
    assert_eq!(grouped["consumers"][0]["instance"], "eu-4", "{grouped}");
    // Filters apply to the groups too; without group_by there are none.
    let eu_only = consumers_until(&app, "?group_by=region&labels=region=eu", |v| v["total"] == 4).await;
    assert_eq!(eu_only["groups"].as_array().map(Vec::len), Some(1));
    let plain = consumers_until(&app, "", |v| v["total"] == 7).await;
    assert!(plain.get("groups").is_none(), "{plain}");
    // Paging keeps the order and the totals.
    let first = consumers_until(&app, "?limit=3", |v| v["total"] == 7).await;
    assert_eq!(first["consumers"].as_array().map(Vec::len), Some(3));
    assert_eq!(first["consumers"][0]["instance"], "eu-4");
    let cursor = first["next"].as_str().expect("next").to_owned();
    let rest = consumers_until(&app, &format!("?limit=10&cursor={cursor}"), |v| v["total"] == 7).await;
    assert_eq!(rest["consumers"].as_array().map(Vec::len), Some(4));
    let r = app
        .req(Method::GET, &format!("/api/v1/topics/fleet/consumers?group_by={}", "k".repeat(200)))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
}

/// Rows of `fleet`'s audit in Postgres.
async fn rows_in_db(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM consumers c JOIN topics t ON t.id = c.topic_id WHERE t.name = 'fleet'")
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

/// Anyone can poll with made-up instance names: one address adds at most
/// `MAX_INSTANCES_PER_SOURCE` of them to a topic's audit; another address and a token
/// are still recorded.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn one_anonymous_address_cannot_flood_the_audit(pool: sqlx::PgPool) {
    let app = std::sync::Arc::new(spawn_full_app(pool, "127.0.0.1/32").await);
    app.create_topic("fleet").await;
    app.publish("fleet", json!({"data": "v1"})).await;
    let cap = imprint_service::audit::MAX_INSTANCES_PER_SOURCE as i64;
    let poll_from = |app: std::sync::Arc<TestApp>, from: &'static str, instance: String| async move {
        let body = json!({"consumer": {"instance": instance, "labels": {"app": "x"}}, "topics": {"fleet": null}});
        let r = app.req(Method::POST, "/api/v1/poll").header("x-forwarded-for", from).json(&body).send().await;
        assert_eq!(r.expect("send").status(), 200);
    };
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let app = app.clone();
        tasks.spawn(async move {
            for i in (worker..5_000).step_by(8) {
                poll_from(app.clone(), "203.0.113.7", format!("made-up-{i}")).await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("poller");
    }
    // Another address and a token each still get their instances recorded.
    poll_from(app.clone(), "198.51.100.9", "honest-node".to_owned()).await;
    let token = app.consumer_token("fleet-reader", None, &[], &[]).await;
    let body = json!({"consumer": {"instance": "token-node", "labels": {}}, "topics": {"fleet": null}});
    let r = app.req(Method::POST, "/api/v1/poll").bearer_auth(&token).json(&body).send().await.expect("send");
    assert_eq!(r.status(), 200);
    let listed = consumers_until(&app, "?limit=1", |v| v["total"] == cap + 2).await;
    assert_eq!(listed["total"], cap + 2, "{listed}");
    // Nothing more arrives later: the rest were never recorded.
    app.imprint().flush_audit().await.ok();
    assert_eq!(rows_in_db(&app).await, cap + 2);
}

/// Labels are bounded in bytes: an over-long set is refused with the API's error shape
/// and nothing is recorded.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn over_long_labels_are_refused_and_not_recorded(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("fleet").await;
    app.publish("fleet", json!({"data": "v1"})).await;
    let labels: serde_json::Map<String, Value> =
        (0..20).map(|i| (format!("k{i:02}"), json!("v".repeat(250)))).collect();
    let body = json!({"consumer": {"instance": "fat", "labels": labels}, "topics": {"fleet": null}});
    let r = app.req(Method::POST, "/api/v1/poll").json(&body).send().await.unwrap();
    let e = assert_error(r, 400, "invalid_request").await;
    assert!(e["error"]["message"].as_str().unwrap().contains("4096"), "{e}");
    // /latest and /resolve read labels from the query: the same bound.
    let q: Vec<String> = (0..20).map(|i| format!("k{i:02}={}", "v".repeat(250))).collect();
    let r = app.req(Method::GET, &format!("/api/v1/topics/fleet/resolve?labels={}", q.join(","))).send().await.unwrap();
    assert_error(r, 400, "invalid_selector").await;
    // A normal poll afterwards is recorded; the refused one never was.
    app.poll(json!({"consumer": {"instance": "slim", "labels": {"k": "v"}}, "topics": {"fleet": null}})).await;
    let listed = consumers_until(&app, "", |v| v["total"] == 1).await;
    assert_eq!(listed["consumers"][0]["instance"], "slim");
    assert_eq!(rows_in_db(&app).await, 1);
}

/// A topic with many consumers is listed a page at a time: each page has `limit` rows,
/// and following `next` yields every consumer exactly once, trouble first.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn consumer_listing_pages_through_every_row_once(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("fleet").await;
    app.publish("fleet", json!({"data": "v1"})).await;
    // 1 234 consumers written behind the server's back, some failed, some stale, many
    // with the same last_seen (the cursor must break ties by instance).
    sqlx::query(
        "INSERT INTO consumers (topic_id, instance, labels, version, expected_version, first_seen, last_seen,
                                last_applied_version, last_applied_ok, principal)
         SELECT t.id, 'node-' || lpad(i::text, 5, '0'), jsonb_build_object('zone', 'z' || (i % 7)::text), 1, 1,
                now() - interval '1 hour', now() - ((i % 3) * interval '10 minutes'),
                CASE WHEN i % 50 = 0 THEN 1 END, CASE WHEN i % 50 = 0 THEN false END,
                CASE WHEN i % 2 = 0 THEN 'token:x' END
         FROM topics t, generate_series(1, 1234) i WHERE t.name = 'fleet'",
    )
    .execute(&app.pool)
    .await
    .expect("insert");
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor: Option<String> = None;
    let mut sizes = Vec::new();
    let mut ranks = Vec::new();
    loop {
        let q = match &cursor {
            None => "?limit=100".to_owned(),
            Some(c) => format!("?limit=100&cursor={c}"),
        };
        let page: Value =
            app.req(Method::GET, &format!("/api/v1/topics/fleet/consumers{q}&group_by=zone")).json_body().await;
        assert_eq!(page["total"], 1234, "{}", page["total"]);
        assert_eq!(page["by_version"], json!({"1": 1234}));
        assert_eq!(page["groups"].as_array().map(Vec::len), Some(7));
        let rows = page["consumers"].as_array().expect("consumers");
        sizes.push(rows.len());
        for c in rows {
            assert!(seen.insert(c["instance"].as_str().unwrap().to_owned()), "{} twice", c["instance"]);
            ranks.push(c["last_applied_ok"] == false);
        }
        match page["next"].as_str() {
            Some(n) => cursor = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(sizes.len(), 13);
    assert!(sizes[..12].iter().all(|s| *s == 100), "{sizes:?}");
    assert_eq!(sizes[12], 34);
    assert_eq!(seen.len(), 1234);
    // Failed applies (every 50th) come first across pages.
    let failed = 1234 / 50;
    assert!(ranks[..failed].iter().all(|f| *f) && ranks[failed..].iter().all(|f| !*f));
    // A bad cursor is a 400.
    let r = app.req(Method::GET, "/api/v1/topics/fleet/consumers?cursor=bogus").send().await.unwrap();
    assert_error(r, 400, "invalid_request").await;
}

/// Anonymous consumers are forgotten sooner than authenticated ones.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn anonymous_consumers_expire_sooner(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("fleet").await;
    sqlx::query(
        "INSERT INTO consumers (topic_id, instance, first_seen, last_seen, principal)
         SELECT t.id, x.instance, now() - x.age, now() - x.age, x.principal FROM topics t,
           (VALUES ('anon-old', interval '2 hours', NULL), ('anon-new', interval '10 minutes', NULL),
                   ('token-old', interval '2 hours', 'token:x'), ('token-ancient', interval '9 days', 'token:x'))
             AS x(instance, age, principal)
         WHERE t.name = 'fleet'",
    )
    .execute(&app.pool)
    .await
    .expect("insert");
    let n = app
        .imprint()
        .expire_consumers_split(chrono::Duration::days(7), chrono::Duration::hours(1))
        .await
        .expect("expire");
    assert_eq!(n, 2);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT instance FROM consumers ORDER BY instance").fetch_all(&app.pool).await.unwrap();
    assert_eq!(left, ["anon-new", "token-old"]);
}
