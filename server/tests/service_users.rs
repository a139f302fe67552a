//! Users, teams, sign-in, rights and the operator audit log, through the service's public
//! API against a fresh database per test (with the server's mapping of errors to HTTP).
use imprint_domain::{Plan, RolloutAction, Selector, VersionNumber};
use imprint_service::model::{AuditEntry, AuditFilter, User};
use imprint_service::{
    Caller, Config, Error, Imprint, NewTopic, Payload, PinInput, PlanChoice, PublishInput, RolloutRequest, TopicPatch,
};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A topic name of a test (the service takes parsed names).
fn topic_name(name: &str) -> imprint_domain::TopicName {
    imprint_domain::TopicName::parse(name).expect("topic name")
}

const ADMIN_PASSWORD: &str = "admin-password-1";
const PASSWORD: &str = "a-good-password";

fn imprint(pool: PgPool) -> Imprint {
    Imprint::with_pool(pool, Config::default())
}

/// The `admin` user created at first start, signed in.
async fn admin(imp: &Imprint) -> Caller {
    imp.ensure_admin_user(Some(ADMIN_PASSWORD)).await.expect("admin user");
    imp.sign_in("admin", ADMIN_PASSWORD, None).await.expect("admin signs in").caller()
}

async fn user(imp: &Imprint, admin: &Caller, name: &str, teams: &[&str]) -> Caller {
    imp.create_user(admin, name, PASSWORD, false).await.expect("create user");
    for t in teams {
        if !imp.teams(admin).await.expect("teams").iter().any(|x| x.name == *t) {
            imp.create_team(admin, t, "").await.expect("create team");
        }
        imp.set_team_member(admin, t, name, true).await.expect("add member");
    }
    let id = imp.users(admin).await.expect("users").into_iter().find(|u| u.username == name).expect("listed").id;
    imp.user_caller(id).await.expect("user_caller").expect("enabled").1
}

async fn topic(imp: &Imprint, name: &str, owner: &str) {
    let t: NewTopic = serde_json::from_value(json!({"name": name, "owner": owner})).expect("topic");
    imp.create_topic(&Caller::System, t).await.expect("create topic");
}

fn text(data: &str) -> PublishInput {
    PublishInput {
        payload: Payload::Text(data.into()),
        content_type: None,
        metadata: BTreeMap::new(),
        scopes: None,
        message: format!("publish {data}"),
        rollout: RolloutRequest::None,
        sha256: None,
        force: None,
    }
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().expect("ip"))
}

async fn log(imp: &Imprint, filter: AuditFilter) -> Vec<AuditEntry> {
    imp.audit_log(&Caller::System, &filter).await.expect("audit log").items
}

async fn audit_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(pool).await.expect("count")
}

fn action(a: &str) -> AuditFilter {
    AuditFilter { action: Some(a.into()), ..AuditFilter::default() }
}

fn assert_err(r: Result<impl std::fmt::Debug, Error>, status: u16, code: &str) -> Error {
    let e = r.expect_err(&format!("expected {code}"));
    let (s, c) = (e.status(), e.code());
    assert_eq!((s.as_u16(), c), (status, code), "{e}");
    e
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn admin_bootstrap_generates_a_password_once_and_never_overwrites(pool: PgPool) {
    let imp = imprint(pool);
    let generated = imp.ensure_admin_user(None).await.expect("bootstrap").expect("a generated password");
    assert_eq!(generated.chars().count(), 20);
    let admin = imp.sign_in("admin", &generated, None).await.expect("signs in");
    assert!(admin.is_admin && !admin.disabled);

    // Restarts, with or without IMPRINT_ADMIN_PASSWORD, leave the admin alone.
    assert_eq!(imp.ensure_admin_user(Some("another-password")).await.expect("again"), None);
    assert_eq!(imp.ensure_admin_user(None).await.expect("again"), None);
    assert_err(imp.sign_in("admin", "another-password", None).await, 401, "unauthorized");
    imp.sign_in("admin", &generated, None).await.expect("the first password still works");

    let created = log(&imp, action("user.create")).await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].actor, "system");
    assert_eq!(created[0].details, json!({"username": "admin", "is_admin": true, "password": "generated"}));
    assert!(!created[0].details.to_string().contains(&generated), "the password is never logged");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn admin_bootstrap_uses_the_given_password(pool: PgPool) {
    let imp = imprint(pool);
    assert_err(imp.ensure_admin_user(Some("short")).await, 400, "invalid_request");
    assert_eq!(imp.ensure_admin_user(Some(ADMIN_PASSWORD)).await.expect("bootstrap"), None);
    let admin = imp.sign_in("admin", ADMIN_PASSWORD, None).await.expect("signs in");
    assert_eq!(admin.username, "admin");
    assert!(admin.is_admin);
    assert_eq!(log(&imp, action("user.create")).await[0].details["password"], "IMPRINT_ADMIN_PASSWORD");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn sign_in_outcomes_look_alike_and_are_audited(pool: PgPool) {
    let imp = imprint(pool);
    let admin = admin(&imp).await;
    let bob = imp.create_user(&admin, "bob", PASSWORD, false).await.expect("bob");
    assert!(!bob.is_admin && bob.teams.is_empty());

    let ok = imp.sign_in("bob", PASSWORD, ip("192.0.2.1")).await.expect("signs in");
    assert_eq!(ok, bob);
    let wrong = assert_err(imp.sign_in("bob", "not-the-password", ip("192.0.2.1")).await, 401, "unauthorized");
    let unknown = assert_err(imp.sign_in("nobody", PASSWORD, ip("192.0.2.1")).await, 401, "unauthorized");
    assert_eq!(wrong.to_string(), "wrong username or password");
    assert_eq!(unknown.to_string(), wrong.to_string());

    imp.set_user_disabled(&admin, "bob", true).await.expect("disable");
    let disabled = assert_err(imp.sign_in("bob", PASSWORD, ip("192.0.2.1")).await, 401, "unauthorized");
    assert_eq!(disabled.to_string(), wrong.to_string());
    assert!(imp.user_caller(bob.id).await.expect("lookup").is_none(), "a disabled user's sessions stop working");
    assert!(imp.users(&admin).await.expect("users").iter().any(|u| u.username == "bob" && u.disabled));
    imp.set_user_disabled(&admin, "bob", false).await.expect("enable");
    let (u, c) = imp.user_caller(bob.id).await.expect("lookup").expect("enabled again");
    assert_eq!(u.username, "bob");
    assert_eq!(c.who(), "user:bob");
    assert!(imp.user_caller(9_999_999).await.expect("lookup").is_none());

    let ok = log(&imp, action("user.sign_in")).await;
    let (fails, oks): (Vec<_>, Vec<_>) = ok.iter().partition(|e| e.action == "user.sign_in_failed");
    assert_eq!(oks.len(), 2, "admin and bob signed in once each");
    assert_eq!(oks[0].actor, "user:bob");
    assert_eq!(oks[0].details["client"], "192.0.2.1");
    let reasons: Vec<(&str, &str)> = fails
        .iter()
        .map(|e| (e.details["username"].as_str().unwrap_or("-"), e.details["reason"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(reasons, [("bob", "disabled"), ("nobody", "unknown_user"), ("bob", "wrong_password")]);
    assert!(fails.iter().all(|e| e.actor == "anonymous"));
    let toggles: Vec<String> = log(&imp, action("user.")).await.iter().map(|e| e.action.clone()).collect();
    assert!(toggles.contains(&"user.disable".to_owned()) && toggles.contains(&"user.enable".to_owned()));
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn sign_in_is_throttled_per_username_and_address(pool: PgPool) {
    let imp = imprint(pool);
    let admin = admin(&imp).await;
    for name in ["carol", "dave"] {
        imp.create_user(&admin, name, PASSWORD, false).await.expect("user");
    }

    // Five failures lock the username for that address: the sixth attempt from there is
    // refused even with the right password.
    for _ in 0..5 {
        assert_err(imp.sign_in("carol", "wrong-password", ip("198.51.100.1")).await, 401, "unauthorized");
    }
    let e = assert_err(imp.sign_in("carol", PASSWORD, ip("198.51.100.1")).await, 429, "too_many_attempts");
    match e {
        Error::TooManyAttempts { retry_after_s } => assert!((1..=30).contains(&retry_after_s), "{retry_after_s}"),
        e => panic!("{e:?}"),
    }
    // (Changed rule, issue 19: the lock is per username *and* address, so one address
    // cannot lock a user out everywhere. Another address still signs in.)
    imp.sign_in("carol", PASSWORD, ip("198.51.100.2")).await.expect("another address signs in");
    // ... and the address that failed is locked for other usernames too.
    assert_err(imp.sign_in("dave", PASSWORD, ip("198.51.100.1")).await, 429, "too_many_attempts");
    let locked = log(&imp, action("user.sign_in_failed")).await;
    assert_eq!(locked.len(), 5, "refused attempts while locked are not sign-in failures");
    assert_eq!(locked[0].details["locked_for_s"], 30);

    // A success resets the username's counter: four failures, success, four failures: no lock.
    for round in 0..2 {
        for _ in 0..4 {
            assert_err(imp.sign_in("dave", "wrong-password", None).await, 401, "unauthorized");
        }
        imp.sign_in("dave", PASSWORD, None).await.unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn team_members_and_admins_may_write_others_may_not(pool: PgPool) {
    let imp = imprint(pool.clone());
    let admin = admin(&imp).await;
    let erin = user(&imp, &admin, "erin", &["payments"]).await;
    let frank = user(&imp, &admin, "frank", &["search"]).await;
    topic(&imp, "payments.methods", "payments").await;
    topic(&imp, "nobody.s", "").await;

    let v = imp.publish(&erin, &topic_name("payments.methods"), text("one")).await.expect("a member publishes");
    assert_eq!(v.version, 1);
    let before = audit_count(&pool).await;
    assert_err(imp.publish(&frank, &topic_name("payments.methods"), text("two")).await, 403, "forbidden");
    assert_eq!(audit_count(&pool).await, before, "a rejected publish writes no audit row");
    assert_err(
        imp.publish(&Caller::Anonymous, &topic_name("payments.methods"), text("two")).await,
        401,
        "unauthorized",
    );
    imp.publish(&admin, &topic_name("payments.methods"), text("two")).await.expect("an admin publishes");
    assert_err(imp.publish(&erin, &topic_name("nobody.s"), text("x")).await, 403, "forbidden");
    imp.publish(&admin, &topic_name("nobody.s"), text("x")).await.expect("admins own ownerless topics");

    let pin = PinInput {
        selector: Selector::all(),
        version: VersionNumber::new(1).unwrap(),
        reason: "test".into(),
        expires_at: None,
    };
    assert_err(imp.pin(&frank, &topic_name("payments.methods"), pin).await, 403, "forbidden");
    let patch: TopicPatch = serde_json::from_value(json!({"description": "x"})).expect("patch");
    assert_err(imp.update_topic(&frank, &topic_name("payments.methods"), patch.clone()).await, 403, "forbidden");
    imp.update_topic(&erin, &topic_name("payments.methods"), patch).await.expect("a member changes settings");
    // Handing the topic to a team erin is not in needs rights there too.
    let patch: TopicPatch = serde_json::from_value(json!({"owner": "search"})).expect("patch");
    assert_err(imp.update_topic(&erin, &topic_name("payments.methods"), patch).await, 403, "forbidden");

    // Creating: a user with one team owns what they create; nobody else's team.
    let t: NewTopic = serde_json::from_value(json!({"name": "payments.new"})).expect("topic");
    assert_eq!(imp.create_topic(&erin, t).await.expect("create").owner, "payments");
    let t: NewTopic = serde_json::from_value(json!({"name": "payments.other", "owner": "search"})).expect("topic");
    assert_err(imp.create_topic(&erin, t).await, 403, "forbidden");

    // Membership is read per session: removing erin takes her rights away.
    imp.set_team_member(&admin, "payments", "erin", false).await.expect("remove");
    let erin_id = imp.users(&admin).await.expect("users").into_iter().find(|u| u.username == "erin").expect("erin").id;
    let erin = imp.user_caller(erin_id).await.expect("lookup").expect("enabled").1;
    assert_err(imp.publish(&erin, &topic_name("payments.methods"), text("three")).await, 403, "forbidden");

    // Every signed-in user reads; anonymous callers do not read the audit log.
    assert!(imp.audit_log(&frank, &AuditFilter::default()).await.is_ok());
    assert_err(imp.audit_log(&Caller::Anonymous, &AuditFilter::default()).await, 401, "unauthorized");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn user_and_team_management_rights_and_errors(pool: PgPool) {
    let imp = imprint(pool);
    let admin = admin(&imp).await;
    let gina = user(&imp, &admin, "gina", &[]).await;

    assert_err(imp.create_user(&gina, "hank", PASSWORD, false).await, 403, "forbidden");
    assert_err(imp.create_user(&Caller::Anonymous, "hank", PASSWORD, false).await, 401, "unauthorized");
    assert_err(imp.create_user(&admin, "Hank", PASSWORD, false).await, 400, "invalid_request");
    assert_err(imp.create_user(&admin, "hank", "short", false).await, 400, "invalid_request");
    assert_err(imp.create_user(&admin, "gina", PASSWORD, false).await, 409, "user_exists");
    let hank = imp.create_user(&admin, "hank", PASSWORD, true).await.expect("an admin creates an admin");
    assert!(hank.is_admin);
    // An admin token may manage users too.
    let token = Caller::Token { name: "ops".into(), admin: true, team: None };
    imp.create_user(&token, "ivan", PASSWORD, false).await.expect("admin token");

    assert_err(imp.users(&gina).await, 403, "forbidden");
    let names: Vec<String> = imp.users(&admin).await.expect("users").into_iter().map(|u| u.username).collect();
    assert_eq!(names, ["admin", "gina", "hank", "ivan"]);

    assert_err(imp.create_team(&gina, "payments", "").await, 403, "forbidden");
    assert_err(imp.create_team(&admin, "bad/name", "").await, 400, "invalid_request");
    let team = imp.create_team(&admin, "payments", "the payments team").await.expect("team");
    assert_eq!((team.name.as_str(), team.members.len()), ("payments", 0));
    assert_err(imp.create_team(&admin, "payments", "").await, 409, "team_exists");
    assert_err(imp.set_team_member(&admin, "nope", "gina", true).await, 404, "team_not_found");
    assert_err(imp.set_team_member(&admin, "payments", "nope", true).await, 404, "user_not_found");
    assert_err(imp.set_team_member(&gina, "payments", "gina", true).await, 403, "forbidden");
    imp.set_team_member(&admin, "payments", "gina", true).await.expect("add");
    imp.set_team_member(&admin, "payments", "gina", true).await.expect("adding twice is a no-op");
    imp.set_team_member(&admin, "payments", "hank", true).await.expect("add");
    let teams = imp.teams(&Caller::System).await.expect("teams");
    assert_eq!(teams.len(), 1);
    assert_eq!(teams[0].members, ["gina", "hank"]);
    assert_eq!(teams[0].description, "the payments team");
    let users = imp.users(&admin).await.expect("users");
    let gina_user: &User = users.iter().find(|u| u.username == "gina").expect("gina");
    assert_eq!(gina_user.teams, ["payments"]);
    assert_eq!(log(&imp, action("team.member_add")).await.len(), 2, "the no-op is not recorded");

    // Passwords: one's own, or anyone's as an admin.
    imp.set_password(&gina, "gina", "ginas-new-password").await.expect("own password");
    imp.sign_in("gina", "ginas-new-password", None).await.expect("new password works");
    assert_err(imp.set_password(&gina, "hank", "hanks-new-password").await, 403, "forbidden");
    assert_err(imp.set_password(&Caller::Anonymous, "gina", "whatever-password").await, 401, "unauthorized");
    assert_err(imp.set_password(&gina, "gina", "short").await, 400, "invalid_request");
    imp.set_password(&admin, "hank", "hanks-new-password").await.expect("admin resets");
    assert_err(imp.set_password(&admin, "nope", "whatever-password").await, 404, "user_not_found");
    let pw = log(&imp, action("user.password")).await;
    assert_eq!(pw.len(), 2);
    assert_eq!((pw[0].actor.as_str(), &pw[0].details), ("user:admin", &json!({"username": "hank", "own": false})));
    assert!(!pw.iter().any(|e| e.details.to_string().contains("new-password")));

    // Disabling: admins only, never oneself.
    assert_err(imp.set_user_disabled(&gina, "hank", true).await, 403, "forbidden");
    assert_err(imp.set_user_disabled(&admin, "admin", true).await, 400, "invalid_request");
    assert_err(imp.set_user_disabled(&admin, "nope", true).await, 404, "user_not_found");
    imp.set_user_disabled(&admin, "gina", true).await.expect("disable");
    imp.set_user_disabled(&admin, "gina", true).await.expect("twice is a no-op");
    assert_eq!(log(&imp, action("user.disable")).await.len(), 1);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn operator_actions_are_audited_with_actor_and_details(pool: PgPool) {
    let imp = imprint(pool.clone());
    let admin = admin(&imp).await;
    let erin = user(&imp, &admin, "erin", &["payments"]).await;
    let t: NewTopic = serde_json::from_value(json!({"name": "payments.methods", "owner": "payments",
        "description": "before", "retention": {"max_versions": 5}}))
    .expect("topic");
    imp.create_topic(&erin, t).await.expect("create");

    let created = log(&imp, action("topic.create")).await;
    assert_eq!(created[0].actor, "user:erin");
    assert_eq!(created[0].topic.as_deref(), Some("payments.methods"));
    assert_eq!(created[0].details["owner"], "payments");
    assert_eq!(created[0].details["retention"], json!({"max_versions": 5, "max_age_days": null}));

    let p = imp.publish(&erin, &topic_name("payments.methods"), text("[1]")).await.expect("publish");
    let e = &log(&imp, action("version.publish")).await[0];
    assert_eq!((e.actor.as_str(), e.topic.as_deref()), ("user:erin", Some("payments.methods")));
    assert_eq!(
        e.details,
        json!({"version": 1, "size": 3, "sha256": p.sha256, "content_type": "application/json",
               "scopes": ["*"], "message": "publish [1]", "rollout": null, "storage": "inline"})
    );
    imp.publish(&erin, &topic_name("payments.methods"), text("[2]")).await.expect("publish");

    let eu = Selector::parse("region=eu").expect("selector");
    let added = imp
        .add_scope(&erin, &topic_name("payments.methods"), VersionNumber::new(1).unwrap(), eu.clone())
        .await
        .expect("scope");
    assert!(added.1);
    imp.add_scope(&erin, &topic_name("payments.methods"), VersionNumber::new(1).unwrap(), eu.clone())
        .await
        .expect("again");
    let scopes = log(&imp, action("scope.add")).await;
    assert_eq!(scopes.len(), 1, "adding a scope the version has is not an action");
    assert_eq!(scopes[0].details, json!({"version": 1, "selector": "region=eu"}));

    let pin = |version, reason: &str| PinInput {
        selector: eu.clone(),
        version: VersionNumber::new(version).unwrap(),
        reason: reason.into(),
        expires_at: None,
    };
    imp.pin(&erin, &topic_name("payments.methods"), pin(1, "bad v2")).await.expect("pin");
    imp.pin(&admin, &topic_name("payments.methods"), pin(2, "v2 is fine")).await.expect("re-pin");
    imp.unpin(&erin, &topic_name("payments.methods"), &eu).await.expect("unpin");
    assert_err(imp.unpin(&erin, &topic_name("payments.methods"), &eu).await, 404, "pin_not_found");
    let pins = log(&imp, action("pin.")).await;
    let got: Vec<(&str, &str, &Value)> =
        pins.iter().map(|e| (e.action.as_str(), e.actor.as_str(), &e.details)).collect();
    assert_eq!(
        got,
        [
            ("pin.remove", "user:erin", &json!({"selector": "region=eu", "version": 2})),
            (
                "pin.set",
                "user:admin",
                &json!({"selector": "region=eu", "version": 2, "reason": "v2 is fine", "replaced": 1, "expires_at": null})
            ),
            (
                "pin.set",
                "user:erin",
                &json!({"selector": "region=eu", "version": 1, "reason": "bad v2", "replaced": null, "expires_at": null})
            ),
        ]
    );

    let patch: TopicPatch =
        serde_json::from_value(json!({"description": "after", "owner": "payments", "inline_limit_bytes": 2048}))
            .expect("patch");
    imp.update_topic(&erin, &topic_name("payments.methods"), patch.clone()).await.expect("update");
    let updated = log(&imp, action("topic.update")).await;
    assert_eq!(updated.len(), 1);
    assert_eq!(
        updated[0].details,
        json!({"description": {"from": "before", "to": "after"},
               "inline_limit_bytes": {"from": 1048576, "to": 2048}}),
        "only what changed"
    );
    imp.update_topic(&erin, &topic_name("payments.methods"), patch).await.expect("same again");
    assert_eq!(log(&imp, action("topic.update")).await.len(), 1, "a patch that changes nothing is not recorded");

    let secret = imp.create_token(&admin, "ci", false, Some("payments")).await.expect("token");
    imp.revoke_token(&admin, "ci").await.expect("revoke");
    assert_err(imp.create_token(&erin, "ci2", false, None).await, 403, "forbidden");
    let tokens = log(&imp, action("token.")).await;
    assert_eq!(tokens.len(), 2);
    assert_eq!((tokens[0].action.as_str(), &tokens[0].details), ("token.revoke", &json!({"name": "ci"})));
    assert_eq!(tokens[1].actor, "user:admin");
    assert_eq!(tokens[1].details, json!({"name": "ci", "admin": false, "team": "payments"}));
    assert!(!tokens[1].details.to_string().contains(&secret));

    imp.create_user(&admin, "newbie", PASSWORD, false).await.expect("user");
    let u = &log(&imp, action("user.create")).await[0];
    assert_eq!((u.actor.as_str(), &u.details), ("user:admin", &json!({"username": "newbie", "is_admin": false})));
    let teams = log(&imp, action("team.")).await;
    let got: Vec<&str> = teams.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(got, ["team.member_add", "team.create"]);
    assert_eq!(teams[0].details, json!({"team": "payments", "username": "erin"}));

    // The bootstrap token is recorded when it is created, not on every restart.
    imp.ensure_bootstrap_token("bootstrap-secret-1").await.expect("bootstrap");
    imp.ensure_bootstrap_token("bootstrap-secret-1").await.expect("bootstrap again");
    assert_eq!(log(&imp, action("token.create")).await.len(), 2);
    imp.ensure_bootstrap_token("bootstrap-secret-2").await.expect("another value");
    let tokens = log(&imp, action("token.")).await;
    let got: Vec<(&str, &str)> = tokens.iter().take(2).map(|e| (e.action.as_str(), e.actor.as_str())).collect();
    assert_eq!(got, [("token.create", "system"), ("token.revoke", "system")]);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn rollouts_are_audited(pool: PgPool) {
    let imp = imprint(pool.clone());
    let admin = admin(&imp).await;
    topic(&imp, "ab.config", "ab").await;
    imp.publish(&admin, &topic_name("ab.config"), text("v1")).await.expect("v1");
    let plan: Plan = serde_json::from_value(json!({"stages": [
        {"selector": {"cluster": "canary"}, "wait_s": 0},
        {"selector": {"region": "eu"}, "wait_s": 3600},
        {"selector": {}, "wait_s": 0}
    ]}))
    .expect("plan");
    let mut input = text("v2");
    input.rollout = RolloutRequest::Plan(PlanChoice::Inline(plan));
    let p = imp.publish(&admin, &topic_name("ab.config"), input).await.expect("v2 with a rollout");
    let id = p.rollout.expect("a rollout").id;

    let publish = &log(&imp, action("version.publish")).await[0];
    assert_eq!(publish.details["rollout"], id);
    assert_eq!(publish.details["scopes"], json!([]));
    let start = &log(&imp, action("rollout.start")).await[0];
    assert_eq!(start.details["id"], id);
    assert_eq!(start.details["version"], 2);
    assert_eq!(start.details["stages"].as_array().map(Vec::len), Some(3));

    assert_eq!(imp.tick_rollouts().await.expect("tick"), 1);
    let stages = log(&imp, action("rollout.stage")).await;
    let got: Vec<(&str, &Value, &Value)> =
        stages.iter().map(|e| (e.actor.as_str(), &e.details["stage"], &e.details["selector"])).collect();
    assert_eq!(got, [("system", &json!(2), &json!("region=eu")), ("user:admin", &json!(1), &json!("cluster=canary"))]);

    imp.rollout_action(&admin, &topic_name("ab.config"), id, RolloutAction::Pause, false).await.expect("pause");
    imp.rollout_action(&admin, &topic_name("ab.config"), id, RolloutAction::Cancel, true).await.expect("cancel");
    let cancel = &log(&imp, action("rollout.cancel")).await[0];
    assert_eq!(cancel.details, json!({"id": id, "version": 2, "rollback": true, "state": "cancelled", "reached": 2}));
    let paused = &log(&imp, action("rollout.pause")).await[0];
    assert_eq!(paused.details["state"], "paused");
    assert_eq!(paused.details["rollback"], false);
    // The rollback pins are pin.set entries like any other.
    let pins = log(&imp, action("pin.set")).await;
    let got: Vec<(&Value, &Value, &Value)> =
        pins.iter().map(|e| (&e.details["selector"], &e.details["version"], &e.details["rollout"])).collect();
    assert_eq!(got, [(&json!("region=eu"), &json!(1), &json!(id)), (&json!("cluster=canary"), &json!(1), &json!(id))]);

    // A newer publish supersedes a running rollout.
    let plan: Plan = serde_json::from_value(
        json!({"stages": [{"selector": {"cluster": "canary"}, "wait_s": 3600}, {"selector": {}, "wait_s": 0}]}),
    )
    .expect("plan");
    let mut input = text("v3");
    input.rollout = RolloutRequest::Plan(PlanChoice::Inline(plan));
    let r3 = imp.publish(&admin, &topic_name("ab.config"), input).await.expect("v3").rollout.expect("rollout").id;
    imp.publish(&admin, &topic_name("ab.config"), text("v4")).await.expect("v4");
    let sup = &log(&imp, action("rollout.supersede")).await[0];
    assert_eq!(sup.details, json!({"id": r3, "version": 3, "by_version": 4, "state": "superseded"}));
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_failing_gate_pause_is_audited(pool: PgPool) {
    let imp = imprint(pool.clone());
    topic(&imp, "ab.config", "ab").await;
    let plan: Plan = serde_json::from_value(json!({"stages": [
        {"selector": {"cluster": "canary"}, "wait_s": 3600, "gate": {"max_failure_ratio": 0.1}},
        {"selector": {}, "wait_s": 0}
    ]}))
    .expect("plan");
    let mut input = text("v1");
    input.rollout = RolloutRequest::Plan(PlanChoice::Inline(plan));
    let id =
        imp.publish(&Caller::System, &topic_name("ab.config"), input).await.expect("v1").rollout.expect("rollout").id;
    // Two canary nodes (polling with a token: gates trust them) report that applying v1 failed.
    sqlx::query(
        "INSERT INTO consumers (topic_id, instance, labels, first_seen, last_seen, last_applied_version, last_applied_ok, principal)
         SELECT t.id, i, '{\"cluster\": \"canary\"}', now(), now(), 1, false, 'token:canary' FROM topics t, unnest(ARRAY['a', 'b']) i
         WHERE t.name = 'ab.config'",
    )
    .execute(&pool)
    .await
    .expect("consumers");
    imp.tick_rollouts().await.expect("tick");
    let paused = log(&imp, action("rollout.auto_pause")).await;
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].actor, "system");
    assert_eq!(paused[0].details["id"], id);
    assert_eq!(paused[0].details["stage"], 1);
    assert!(paused[0].details["reason"].as_str().is_some_and(|r| r.contains("failed")), "{}", paused[0].details);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn audit_log_filters_pages_and_is_append_only(pool: PgPool) {
    let imp = imprint(pool.clone());
    let admin = admin(&imp).await;
    topic(&imp, "a.one", "").await;
    topic(&imp, "b.two", "").await;
    for i in 0..3 {
        imp.publish(&admin, &topic_name("a.one"), text(&format!("a{i}"))).await.expect("publish");
        imp.publish(&Caller::System, &topic_name("b.two"), text(&format!("b{i}"))).await.expect("publish");
    }

    let by_topic = log(&imp, AuditFilter { topic: Some("a.one".into()), ..AuditFilter::default() }).await;
    assert_eq!(by_topic.len(), 4, "create and three publishes");
    assert!(by_topic.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let by_actor = log(&imp, AuditFilter { actor: Some("user:admin".into()), ..AuditFilter::default() }).await;
    assert!(by_actor.iter().all(|e| e.actor == "user:admin"));
    assert_eq!(by_actor.iter().filter(|e| e.action == "version.publish").count(), 3);
    let both = AuditFilter {
        topic: Some("b.two".into()),
        actor: Some("system".into()),
        action: Some("version.".into()),
        ..AuditFilter::default()
    };
    assert_eq!(log(&imp, both).await.len(), 3);
    assert!(log(&imp, action("version.publish_")).await.is_empty(), "LIKE wildcards are literal");
    assert!(log(&imp, action("")).await.len() > 6, "an empty filter is no filter");

    // Pages of two over the six publishes.
    let mut seen = vec![];
    let mut filter = AuditFilter { action: Some("version.publish".into()), limit: Some(2), ..AuditFilter::default() };
    loop {
        let page = imp.audit_log(&admin, &filter).await.expect("page");
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|e| e.id));
        match page.next {
            Some(next) => filter.cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);
    assert!(seen.windows(2).all(|w| w[0] > w[1]));

    for bad in [Some(0), Some(501)] {
        let f = AuditFilter { limit: bad, ..AuditFilter::default() };
        assert_err(imp.audit_log(&admin, &f).await, 400, "invalid_request");
    }
    let f = AuditFilter { cursor: Some("garbage".into()), ..AuditFilter::default() };
    assert_err(imp.audit_log(&admin, &f).await, 400, "invalid_request");

    // History cannot be rewritten, not even with direct SQL.
    let before = audit_count(&pool).await;
    let upd = sqlx::query("UPDATE audit_log SET actor = 'someone-else'").execute(&pool).await;
    assert!(upd.is_err_and(|e| e.to_string().contains("append-only")));
    assert!(sqlx::query("DELETE FROM audit_log").execute(&pool).await.is_err());
    assert!(sqlx::query("TRUNCATE audit_log").execute(&pool).await.is_err());
    assert_eq!(audit_count(&pool).await, before);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_password_change_ends_the_users_sessions_and_sessions_have_an_absolute_lifetime(pool: PgPool) {
    let imp = imprint(pool);
    let admin = admin(&imp).await;
    let ivy = user(&imp, &admin, "ivy", &[]).await;
    let Caller::User { id, .. } = ivy else { panic!("a user") };
    let now = chrono::Utc::now();
    let epoch = imp.session_epoch(id).await.expect("epoch").expect("user");
    // Two sessions of ivy's, signed in now.
    assert!(imp.session_user(id, epoch, now).await.expect("lookup").is_some());
    // Older than the absolute lifetime, however active: over.
    let old = now - chrono::Duration::days(7) - chrono::Duration::minutes(1);
    assert!(imp.session_user(id, epoch, old).await.expect("lookup").is_none());
    assert!(imp.session_user(id, epoch, now - chrono::Duration::days(6)).await.expect("lookup").is_some());

    // Changing one's password needs the current one ...
    assert_err(imp.change_password(&ivy, "not-the-password", "ivys-new-password").await, 403, "forbidden");
    assert_err(imp.change_password(&ivy, PASSWORD, "short").await, 400, "invalid_request");
    assert_err(imp.change_password(&Caller::Anonymous, PASSWORD, "ivys-new-password").await, 401, "unauthorized");
    let new_epoch = imp.change_password(&ivy, PASSWORD, "ivys-new-password").await.expect("changed");
    assert_ne!(new_epoch, epoch);
    // ... and every session signed in before ends; the one that changed it goes on
    // with the new epoch.
    assert!(imp.session_user(id, epoch, now).await.expect("lookup").is_none());
    assert!(imp.session_user(id, new_epoch, now).await.expect("lookup").is_some());
    imp.sign_in("ivy", "ivys-new-password", None).await.expect("the new password works");
    assert_err(imp.sign_in("ivy", PASSWORD, None).await, 401, "unauthorized");
    // An admin resetting it ends them too.
    imp.set_password(&admin, "ivy", "reset-by-admin").await.expect("reset");
    assert!(imp.session_user(id, new_epoch, now).await.expect("lookup").is_none());
    let pw = log(&imp, action("user.password")).await;
    assert!(!pw.iter().any(|e| e.details.to_string().contains("password\"") && e.details.to_string().contains("new")));
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn the_bootstrap_token_is_revoked_when_no_longer_configured(pool: PgPool) {
    let imp = imprint(pool.clone());
    let token = "a-bootstrap-token-of-32-characters!";
    imp.ensure_bootstrap_token(token).await.expect("bootstrap token");
    let active = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM api_tokens WHERE name = 'bootstrap' AND revoked_at IS NULL")
            .fetch_one(&pool)
            .await
            .expect("count")
    };
    assert_eq!(active().await, 1);
    assert!(imp.revoke_bootstrap_token().await.expect("revoke"));
    assert_eq!(active().await, 0);
    assert!(!imp.revoke_bootstrap_token().await.expect("nothing left"), "nothing to revoke twice");
    assert_eq!(log(&imp, action("token.revoke")).await.len(), 1);
    // Set again: it is back.
    imp.ensure_bootstrap_token(token).await.expect("bootstrap token");
    assert_eq!(active().await, 1);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn tokens_run_on_the_handles_clock(pool: PgPool) {
    let at = chrono::DateTime::from_timestamp(1_900_000_000, 0).expect("time");
    let clock = imprint_service::ManualClock::new(at);
    let imp = Imprint::with_clock(pool, Config::default(), std::sync::Arc::new(clock.clone()));
    let secret = imp.create_token(&Caller::System, "ci", false, Some("payments")).await.expect("token");
    let listed = imp.list_tokens(&Caller::System).await.expect("tokens");
    let ci = listed.iter().find(|t| t.name == "ci").expect("listed");
    assert_eq!((ci.created_at, ci.last_used_at), (at, None));

    clock.advance(chrono::Duration::hours(1));
    let caller = imp.authenticate(Some(&secret)).await.expect("authenticates");
    assert_eq!(caller.who(), "token:ci");
    let listed = imp.list_tokens(&Caller::System).await.expect("tokens");
    let ci = listed.iter().find(|t| t.name == "ci").expect("listed");
    assert_eq!(ci.last_used_at, Some(at + chrono::Duration::hours(1)), "use is noted at the clock's time");

    clock.advance(chrono::Duration::hours(1));
    imp.revoke_token(&Caller::System, "ci").await.expect("revoke");
    let revoked: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT revoked_at FROM api_tokens WHERE name = 'ci'")
            .fetch_one(imp.pool())
            .await
            .expect("row");
    assert_eq!(revoked, Some(at + chrono::Duration::hours(2)));
    assert!(imp.list_tokens(&Caller::System).await.expect("tokens").iter().all(|t| t.name != "ci"));
}
