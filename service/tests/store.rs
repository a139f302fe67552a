//! The store layer against a real Postgres: every constraint of the schema has a mapped
//! error, and time comes from the service's clock (a test moves it instead of waiting).
use chrono::{Duration, TimeZone, Utc};
use imprint_domain::{Plan, Selector, VersionNumber};
use imprint_service::{
    Caller, Config, Error, Imprint, ManualClock, NewTopic, Payload, PlanChoice, PublishInput, RolloutRequest,
};
use serde_json::json;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A topic name of a test (the service takes parsed names).
fn topic_name(name: &str) -> imprint_domain::TopicName {
    imprint_domain::TopicName::parse(name).expect("topic name")
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn every_constraint_of_the_schema_is_mapped(pool: PgPool) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT conname::text FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
         WHERE n.nspname = 'public'
         UNION
         SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public'
           AND indexdef LIKE 'CREATE UNIQUE INDEX%'",
    )
    .fetch_all(&pool)
    .await
    .expect("constraints");
    assert!(names.len() > 20, "{names:?}");
    let unmapped: Vec<&String> = names
        .iter()
        .filter(|n| n.as_str() != "_sqlx_migrations_pkey")
        .filter(|n| !imprint_service::store::maps_constraint(n))
        .collect();
    assert!(unmapped.is_empty(), "constraints without a mapped error: {unmapped:?}");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_unique_violation_is_a_conflict_not_an_internal_error(pool: PgPool) {
    // Two active pins on one selector, written behind the service's back, hit the index.
    let imp = Imprint::with_pool(pool.clone(), Config::default());
    let t: NewTopic = serde_json::from_value(json!({"name": "c", "owner": "o"})).expect("topic");
    imp.create_topic(&Caller::System, t).await.expect("create");
    imp.publish(&Caller::System, &topic_name("c"), text("a")).await.expect("publish");
    let insert = "INSERT INTO pins (topic_id, selector, selector_key, version, created_at, created_by)
                  SELECT id, '{}'::jsonb, '*', 1, now(), 'test' FROM topics WHERE name = 'c'";
    sqlx::query(insert).execute(&pool).await.expect("first pin");
    let e: Error = sqlx::query(insert).execute(&pool).await.expect_err("second pin").into();
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");
}

fn text(data: &str) -> PublishInput {
    PublishInput {
        payload: Payload::Text(data.into()),
        content_type: None,
        metadata: BTreeMap::new(),
        scopes: None,
        message: String::new(),
        rollout: RolloutRequest::None,
        sha256: None,
        force: None,
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn rollouts_and_records_follow_the_clock(pool: PgPool) {
    let start = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).single().expect("time");
    let clock = ManualClock::new(start);
    let imp = Imprint::with_clock(pool, Config::default(), Arc::new(clock.clone()));
    imp.start_background().await.expect("state");
    let t: NewTopic = serde_json::from_value(json!({"name": "clocked", "owner": "o"})).expect("topic");
    let topic = imp.create_topic(&Caller::System, t).await.expect("create");
    assert_eq!(topic.created_at, start);

    let mut input = text("v1");
    input.scopes = Some(vec![]);
    let published = imp.publish(&Caller::System, &topic_name("clocked"), input).await.expect("publish");
    assert_eq!(published.created_at, start, "a version is dated by the clock");

    let plan: Plan = serde_json::from_value(json!({"stages": [
        {"selector": {"region": "eu"}, "wait_s": 600},
        {"selector": {}, "wait_s": 0}
    ]}))
    .expect("plan");
    let r = imp
        .start_rollout(
            &Caller::System,
            &topic_name("clocked"),
            VersionNumber::new(1).unwrap(),
            PlanChoice::Inline(plan),
        )
        .await
        .expect("start");
    assert_eq!(r.view.reached, 1);

    // Ten minutes have not passed on this clock, however long the test takes.
    clock.advance(Duration::seconds(599));
    assert_eq!(imp.tick_rollouts().await.expect("tick"), 0);
    let everyone = Selector::all().as_labels();
    assert_eq!(imp.resolve(&Caller::System, &topic_name("clocked"), &everyone, None).await.expect("resolve"), None);

    clock.advance(Duration::seconds(1));
    assert_eq!(imp.tick_rollouts().await.expect("tick"), 1);
    let r = imp.rollout(&Caller::System, &topic_name("clocked"), r.id).await.expect("rollout");
    assert_eq!(r.view.state.as_str(), "completed");
    assert_eq!(r.view.stages[1].reached_at, Some(start + Duration::seconds(600)));
    let got = imp
        .resolve(&Caller::System, &topic_name("clocked"), &everyone, None)
        .await
        .expect("resolve")
        .expect("resolved");
    assert_eq!(got.version, 1);

    // The audit log carries the clock's time too.
    let log = imp.audit_log(&Caller::System, &imprint_service::model::AuditFilter::default()).await.expect("log");
    assert!(log.items.iter().all(|e| e.at >= start && e.at <= start + Duration::seconds(600)), "{:?}", log.items);
    imp.shutdown();
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_change_wakes_only_the_long_polls_waiting_on_that_topic(pool: PgPool) {
    let imp = Imprint::with_pool(pool, Config::default());
    imp.start_background().await.expect("state");
    for name in ["wake.a", "wake.b"] {
        let t: NewTopic = serde_json::from_value(json!({"name": name, "owner": "o"})).expect("topic");
        imp.create_topic(&Caller::System, t).await.expect("create");
        imp.publish(&Caller::System, &topic_name(name), text("1")).await.expect("publish");
    }
    let poll = |topic: &str| {
        let req: imprint_service::PollRequest = serde_json::from_value(json!({
            "consumer": {"instance": format!("n-{topic}")}, "topics": {topic: 1}, "wait_ms": 10_000
        }))
        .expect("poll");
        let imp = imp.clone();
        tokio::spawn(async move { imp.poll(&Caller::Anonymous, req).await })
    };
    // Ten long polls on a; none on b.
    let waiting: Vec<_> = (0..10).map(|_| poll("wake.a")).collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = imp.state().wakeups();
    imp.publish(&Caller::System, &topic_name("wake.b"), text("2")).await.expect("publish b");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(imp.state().wakeups(), before, "a change to b woke polls waiting on a");
    assert!(waiting.iter().all(|w| !w.is_finished()));
    // The safety-net reload changes nothing, and wakes nobody.
    imp.state().reload(imp.pool(), None).await.expect("reload");
    assert_eq!(imp.state().wakeups(), before);
    imp.publish(&Caller::System, &topic_name("wake.a"), text("2")).await.expect("publish a");
    for w in waiting {
        let answer = w.await.expect("task").expect("poll");
        assert_eq!(answer.updates["wake.a"].version.version, 2);
    }
    assert_eq!(imp.state().wakeups() - before, 10, "each poll on a woke once");
    imp.shutdown();
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn the_serving_state_holds_the_present_and_history_comes_from_postgres(pool: PgPool) {
    // The periodic safety net is out of the way: the test runs it when it wants.
    let config = Config { full_reload_every: std::time::Duration::from_secs(3600), ..Config::default() };
    let imp = Imprint::with_pool(pool.clone(), config);
    imp.start_background().await.expect("state");
    let t: NewTopic = serde_json::from_value(json!({"name": "long.history", "owner": "o"})).expect("topic");
    imp.create_topic(&Caller::System, t).await.expect("create");
    let mut times = Vec::new();
    for v in 1..=30 {
        let mut input = text(&format!("v{v}"));
        if v == 30 {
            input.scopes = Some(vec![Selector::parse("region=eu").expect("selector")]);
        }
        let p = imp.publish(&Caller::System, &topic_name("long.history"), input).await.expect("publish");
        times.push(p.created_at);
    }
    // The publishes were applied in memory as written (no read-back): what a load from
    // Postgres gives, at the change sequence Postgres has.
    assert_eq!(imp.state().publishes_applied(), 30);
    let applied = imp.state().get("long.history").expect("loaded");
    assert_eq!(imp.state().catch_up(imp.pool()).await.expect("catch up"), 0, "the sequence applied is Postgres's");
    imp.state().reload(imp.pool(), Some(applied.id)).await.expect("reload");
    let loaded = imp.state().get("long.history").expect("loaded");
    let mut keys: Vec<u64> = applied.served.keys().copied().collect();
    keys.sort_unstable();
    assert_eq!(keys, vec![29, 30]);
    for v in [29, 30] {
        let (a, b) = (&applied.served[&v], &loaded.served[&v]);
        assert_eq!(
            (&a.sha256, a.size, &a.content_type, &a.metadata, a.created_at, &a.payload),
            (&b.sha256, b.size, &b.content_type, &b.metadata, b.created_at, &b.payload),
            "version {v}"
        );
        assert_eq!(a.update_json(false, 0).get(), b.update_json(false, 0).get());
    }
    assert_eq!(loaded.served.len(), 2);

    let pin = imprint_service::PinInput {
        selector: Selector::parse("region=us").expect("selector"),
        version: VersionNumber::new(3).unwrap(),
        reason: "hold us back".into(),
        expires_at: None,
    };
    imp.pin(&Caller::System, &topic_name("long.history"), pin).await.expect("pin");
    // In memory: the versions resolution can return now (29 for everyone, 30 for eu, 3
    // pinned for us) — not the thirty published.
    let served = imp.state().get("long.history").expect("loaded");
    let mut held: Vec<u64> = served.served.keys().copied().collect();
    held.sort_unstable();
    assert_eq!(held, vec![3, 29, 30]);
    assert!(served.served[&29].payload.is_some(), "small inline payloads are held");
    // The past is read from Postgres.
    let everyone = Selector::all().as_labels();
    let then =
        imp.resolve(&Caller::System, &topic_name("long.history"), &everyone, Some(times[9])).await.expect("resolve");
    assert_eq!(then.map(|r| r.version), Some(10));

    // A change nobody announced (no NOTIFY) is found by the safety net, which reloads
    // only the topic whose change sequence moved.
    let t2: NewTopic = serde_json::from_value(json!({"name": "quiet", "owner": "o"})).expect("topic");
    imp.create_topic(&Caller::System, t2).await.expect("create");
    assert_eq!(imp.state().catch_up(imp.pool()).await.expect("catch up"), 0, "nothing differs");
    sqlx::raw_sql(
        "UPDATE pins SET removed_at = now(), removed_by = 'test' WHERE removed_at IS NULL;
         UPDATE topics SET change_seq = change_seq + 1 WHERE name = 'long.history'",
    )
    .execute(&pool)
    .await
    .expect("change behind the server's back");
    let us = Selector::parse("region=us").expect("selector").as_labels();
    let before = imp.resolve(&Caller::System, &topic_name("long.history"), &us, None).await.expect("resolve");
    assert_eq!(before.map(|r| r.version), Some(3), "not seen yet");
    assert_eq!(imp.state().catch_up(imp.pool()).await.expect("catch up"), 1);
    let after = imp.resolve(&Caller::System, &topic_name("long.history"), &us, None).await.expect("resolve");
    assert_eq!(after.map(|r| r.version), Some(29));

    // Purged versions are passed over per selector: the next live version answers. The
    // reload of one topic (the index walked per selector) and the full load (every scope
    // row read) agree.
    sqlx::raw_sql(
        "UPDATE versions SET purged_at = now()
           WHERE version IN (29, 30) AND topic_id = (SELECT id FROM topics WHERE name = 'long.history');
         UPDATE topics SET change_seq = change_seq + 1 WHERE name = 'long.history'",
    )
    .execute(&pool)
    .await
    .expect("purge behind the server's back");
    assert_eq!(imp.state().catch_up(imp.pool()).await.expect("catch up"), 1);
    let eu = Selector::parse("region=eu").expect("selector").as_labels();
    for (labels, what) in [(&everyone, "everyone"), (&eu, "eu, whose only scope was purged"), (&us, "us")] {
        let r = imp.resolve(&Caller::System, &topic_name("long.history"), labels, None).await.expect("resolve");
        assert_eq!(r.map(|r| r.version), Some(28), "{what}");
    }
    let keys = |imp: &Imprint| {
        let mut k: Vec<u64> = imp.state().get("long.history").expect("loaded").served.keys().copied().collect();
        k.sort_unstable();
        k
    };
    assert_eq!(keys(&imp), vec![28]);
    imp.state().reload(imp.pool(), None).await.expect("full load");
    assert_eq!(keys(&imp), vec![28]);
    imp.shutdown();
}
