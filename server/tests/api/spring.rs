//! The Spring Cloud Config endpoint through the real router: the Environment's shape and
//! the order of its property sources, flattening, the plain forms, profiles and headers
//! as labels (scopes reach Spring clients), labels as versions, Basic and bearer auth,
//! restricted topics (never leaked), who may bind an application, and bad input.
use base64::Engine;
use imprint_testkit::{assert_error, spawn_app_configured, SendJson, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

async fn app(pool: sqlx::PgPool) -> TestApp {
    spawn_app_configured(pool.clone(), pool, |c| {
        c.spring_label_headers = imprint_service::spring::parse_label_headers("X-Imprint-Region=region").unwrap()
    })
    .await
}

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.req(Method::GET, path).send().await.unwrap()
}

async fn env(app: &TestApp, path: &str) -> Value {
    let r = get(app, path).await;
    assert_eq!(r.status(), 200, "{path}");
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"), "{path}");
    r.json().await.unwrap()
}

fn names(env: &Value) -> Vec<String> {
    env["propertySources"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect()
}

fn basic(token: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("app:{token}")))
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn environments_order_flatten_and_render_as_spring_does(pool: sqlx::PgPool) {
    let app = app(pool).await;
    let bind = |name: &str, binding: Value| json!({"name": name, "owner": "shop", "spring": binding});
    let t = app.create_topic_with(bind("shop.base", json!({"application": "shop"}))).await;
    assert_eq!(t["spring"], json!({"application": "shop", "profile": null}));
    app.create_topic_with(bind("shop.dev", json!({"application": "shop", "profile": "dev"}))).await;
    app.create_topic_with(bind("shared", json!({"application": "application"}))).await;
    app.create_topic_with(bind("shared.dev", json!({"application": "application", "profile": "dev"}))).await;
    app.publish_text(
        "shop.base",
        "server:\n  port: 8080\nmessage: from base\nlist:\n  - a\n  - {name: b, on: true}\nempty:\n",
    )
    .await;
    app.publish_text("shop.dev", r#"{"message": "from dev", "db": {"url": "jdbc:dev", "pool": [1, 2]}}"#).await;
    app.publish_text("shared", "# shared by every application\ncommon=yes\nmessage=from shared\n").await;
    app.publish_text("shared.dev", "common: dev-wide\n").await;

    let e = env(&app, "/spring/shop/dev").await;
    assert_eq!(e["name"], "shop");
    assert_eq!(e["profiles"], json!(["dev"]));
    assert_eq!(e["label"], Value::Null);
    assert_eq!(e["state"], Value::Null);
    assert_eq!(e["version"], "shop.dev@1,shared.dev@1,shop.base@1,shared@1");
    // Most specific first: the application's profile, every application's profile, the
    // application, every application.
    assert_eq!(names(&e), ["imprint:shop.dev@1", "imprint:shared.dev@1", "imprint:shop.base@1", "imprint:shared@1"]);
    let src = |i: usize| e["propertySources"][i]["source"].clone();
    assert_eq!(src(0), json!({"message": "from dev", "db.url": "jdbc:dev", "db.pool[0]": 1, "db.pool[1]": 2}));
    assert_eq!(src(1), json!({"common": "dev-wide"}));
    assert_eq!(
        src(2),
        json!({"server.port": 8080, "message": "from base", "list[0]": "a", "list[1].name": "b", "list[1].on": true, "empty": ""})
    );
    assert_eq!(src(3), json!({"common": "yes", "message": "from shared"}));
    // Another profile: only the every-profile sources; several profiles, the last first.
    assert_eq!(names(&env(&app, "/spring/shop/default").await), ["imprint:shop.base@1", "imprint:shared@1"]);
    app.create_topic_with(bind("shop.db", json!({"application": "shop", "profile": "db"}))).await;
    app.publish_text("shop.db", "db:\n  url: jdbc:db\n").await;
    let e = env(&app, "/spring/shop/dev,db").await;
    assert_eq!(e["profiles"], json!(["dev", "db"]));
    assert_eq!(
        names(&e),
        ["imprint:shop.db@1", "imprint:shop.dev@1", "imprint:shared.dev@1", "imprint:shop.base@1", "imprint:shared@1"]
    );

    // The plain forms merge the sources (the most specific wins).
    let r = get(&app, "/spring/shop-dev.properties").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(
        r.text().await.unwrap(),
        "common: dev-wide\ndb.pool[0]: 1\ndb.pool[1]: 2\ndb.url: jdbc:dev\nempty: \nlist[0]: a\nlist[1].name: b\n\
         list[1].on: true\nmessage: from dev\nserver.port: 8080\n"
    );
    let tree = json!({"common": "dev-wide", "db": {"pool": [1, 2], "url": "jdbc:dev"}, "empty": "",
        "list": ["a", {"name": "b", "on": true}], "message": "from dev", "server": {"port": 8080}});
    let r = get(&app, "/spring/main/shop-dev.json").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), tree);
    for path in ["/spring/shop-dev.yml", "/spring/master/shop-dev.yaml", "/spring/1/shop-dev.yml"] {
        let r = get(&app, path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"), "{path}");
        let yaml: Value = serde_yaml_ng::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(yaml, tree, "{path}");
    }

    // Unknown applications, bad names, bad forms.
    assert_error(get(&app, "/spring/nope/dev").await, 404, "not_found").await;
    assert_error(get(&app, "/spring/nope-dev.yml").await, 404, "not_found").await;
    for path in ["/spring/sh%20op/dev", "/spring/shop/dev,", "/spring/shop/a%3Db", "/spring/shop.yml", "/spring/x"] {
        assert_error(get(&app, path).await, 400, "invalid_request").await;
    }
    // A bound topic refuses payloads that are no property source (and keeps what it had).
    for data in ["[1, 2]", "just words", "- a\n- b"] {
        let r = app.admin(Method::POST, "/api/v1/topics/shop.dev/versions").json(&json!({"data": data})).send().await;
        assert_error(r.unwrap(), 422, "schema_violation").await;
    }
    assert_eq!(app.versions_in_db("shop.dev").await, 1);
    // One topic per application and profile; bindings are checked.
    let r = app.admin(Method::POST, "/api/v1/topics").json(&bind("shop.dup", json!({"application": "shop"}))).send();
    assert_error(r.await.unwrap(), 409, "conflict").await;
    for bad in [
        json!({"application": ""}),
        json!({"application": "a b"}),
        json!({"application": "shop", "profile": "x,y"}),
        json!({"app": "shop"}),
    ] {
        let r = app.admin(Method::POST, "/api/v1/topics").json(&bind("shop.bad", bad.clone())).send().await.unwrap();
        assert_error(r, 400, "invalid_request").await;
    }
    // Unbinding takes the topic out at once.
    let r = app.admin(Method::PATCH, "/api/v1/topics/shop.db").json(&json!({"spring": null})).send_json().await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["spring"], Value::Null);
    assert!(!names(&env(&app, "/spring/shop/dev,db").await).contains(&"imprint:shop.db@1".to_owned()));

    // Spring clients are consumers like any other.
    let node = app.consumer_where("shop.dev", "spring:shop@127.0.0.1", |c| c["version"] == 1).await;
    assert_eq!(node["labels"], json!({"profile": "dev"}));
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn profiles_and_headers_are_labels_and_labels_are_versions(pool: sqlx::PgPool) {
    let app = app(pool).await;
    app.create_topic_with(json!({"name": "pay", "owner": "pay", "spring": {"application": "pay"}})).await;
    app.publish_text("pay", "greeting: hello\n").await;
    app.publish("pay", json!({"data": "greeting: hola\n", "scopes": [{"profile": "prod"}]})).await;
    app.publish("pay", json!({"data": "greeting: servus\n", "scopes": [{"profile": "dev", "region": "eu"}]})).await;
    let greeting = |e: &Value| e["propertySources"][0]["source"]["greeting"].clone();
    assert_eq!(greeting(&env(&app, "/spring/pay/dev").await), "hello");
    assert_eq!(greeting(&env(&app, "/spring/pay/prod").await), "hola");
    let eu = |path: &str| app.req(Method::GET, path).header("X-Imprint-Region", "eu").send_json();
    let (status, e) = eu("/spring/pay/dev").await;
    assert_eq!((status, greeting(&e)), (200, json!("servus")));
    assert_eq!(e["version"], "pay@3");
    let (status, e) = eu("/spring/pay/prod").await;
    assert_eq!((status, greeting(&e)), (200, json!("hola")));
    // A header value that cannot be a label is refused.
    let r = app.req(Method::GET, "/spring/pay/dev").header("X-Imprint-Region", "e=u").send().await.unwrap();
    assert_error(r, 400, "invalid_request").await;

    // A label that is a version number reads that version, whatever the scopes say.
    let e = env(&app, "/spring/pay/dev/2").await;
    assert_eq!((greeting(&e), e["label"].clone(), e["version"].clone()), (json!("hola"), json!("2"), json!("pay@2")));
    assert_eq!(greeting(&env(&app, "/spring/pay/dev/main").await), "hello");
    assert_eq!(env(&app, "/spring/pay/dev/master").await["label"], "master");
    assert_error(get(&app, "/spring/pay/dev/9").await, 404, "not_found").await;
    assert_error(get(&app, "/spring/pay/dev/feature-x").await, 404, "not_found").await;
    assert_error(get(&app, "/spring/feature-x/pay-dev.yml").await, 404, "not_found").await;
    let r = get(&app, "/spring/2/pay-dev.properties").await;
    assert_eq!(r.text().await.unwrap(), "greeting: hola\n");

    // A publish reaches a client when it fetches again; a pin too.
    app.publish_text("pay", "greeting: hi\n").await;
    assert_eq!(greeting(&env(&app, "/spring/pay/dev").await), "hi");
    let r = app
        .admin(Method::PUT, "/api/v1/topics/pay/pins")
        .json(&json!({"selector": {"profile": "dev"}, "version": 1, "reason": "rollback"}))
        .send_json()
        .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(greeting(&env(&app, "/spring/pay/dev").await), "hello");
    assert_eq!(greeting(&env(&app, "/spring/pay/qa").await), "hi");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn tokens_restricted_topics_and_who_may_bind(pool: sqlx::PgPool) {
    let app = app(pool).await;
    // Red's restricted application, blue's open one.
    app.create_topic_with(
        json!({"name": "red.vault", "owner": "red", "restricted": true, "spring": {"application": "vault"}}),
    )
    .await;
    app.publish_text("red.vault", "db:\n  password: hunter2\n").await;
    app.create_topic_with(json!({"name": "blue.cfg", "owner": "blue", "spring": {"application": "blue-app"}})).await;
    app.publish_text("blue.cfg", "colour: blue\n").await;
    let red = app.consumer_token("red-node", Some("red"), &[], &[]).await;
    let blue = app.consumer_token("blue-node", Some("blue"), &[], &[]).await;
    let blue_ci = app.token("blue-ci", Some("blue")).await;

    // Anonymous and blue callers do not learn that red's application exists.
    let anonymous = assert_error(get(&app, "/spring/vault/default").await, 404, "not_found").await;
    let as_blue = app.req(Method::GET, "/spring/vault/default").header("Authorization", basic(&blue)).send();
    let as_blue = assert_error(as_blue.await.unwrap(), 404, "not_found").await;
    assert_eq!(anonymous, as_blue);
    let r = app.req(Method::GET, "/spring/vault-default.yml").bearer_auth(&blue).send().await.unwrap();
    assert!(!r.text().await.unwrap().contains("hunter2"));
    // Red's token reads it, as Basic (any user) or bearer.
    for auth in [basic(&red), format!("Bearer {red}")] {
        let (status, e) = app.req(Method::GET, "/spring/vault/default").header("Authorization", auth).send_json().await;
        assert_eq!(status, 200, "{e}");
        assert_eq!(e["propertySources"][0]["source"]["db.password"], "hunter2");
    }
    // Wrong or malformed credentials are refused.
    for auth in [basic("not-a-token"), "Bearer nope".to_owned(), "Basic !!!".to_owned(), "Token x".to_owned()] {
        let r = app.req(Method::GET, "/spring/blue-app/default").header("Authorization", auth).send().await.unwrap();
        assert_error(r, 401, "unauthorized").await;
    }

    // A restricted topic shared with every application reaches only its readers.
    let admin_shared =
        json!({"name": "red.shared", "owner": "red", "restricted": true, "spring": {"application": "application"}});
    app.create_topic_with(admin_shared).await;
    app.publish_text("red.shared", "red.internal: secret-url\n").await;
    let (_, e) = app.req(Method::GET, "/spring/blue-app/default").bearer_auth(&blue).send_json().await;
    assert_eq!(names(&e), ["imprint:blue.cfg@1"], "{e}");
    let r = app.req(Method::GET, "/spring/blue-app-default.properties").bearer_auth(&blue).send().await.unwrap();
    assert!(!r.text().await.unwrap().contains("secret-url"));
    let (_, e) = app.req(Method::GET, "/spring/vault/default").bearer_auth(&red).send_json().await;
    assert_eq!(names(&e), ["imprint:red.vault@1", "imprint:red.shared@1"]);
    // Blue cannot read red's shared topic at a version label either.
    let (status, e) = app.req(Method::GET, "/spring/blue-app/default/1").bearer_auth(&blue).send_json().await;
    assert_eq!((status, names(&e)), (200, vec!["imprint:blue.cfg@1".to_owned()]));

    // Blue may not slip a source into red's application, nor into every application.
    for binding in [
        json!({"application": "vault", "profile": "default"}),
        json!({"application": "application", "profile": "blue"}),
    ] {
        let r = app
            .req(Method::POST, "/api/v1/topics")
            .bearer_auth(&blue_ci)
            .json(&json!({"name": "blue.sneaky", "owner": "blue", "spring": binding}))
            .send()
            .await
            .unwrap();
        assert_error(r, 403, "forbidden").await;
        let r = app
            .req(Method::PATCH, "/api/v1/topics/blue.cfg")
            .bearer_auth(&blue_ci)
            .json(&json!({"spring": binding}))
            .send()
            .await
            .unwrap();
        assert_error(r, 403, "forbidden").await;
    }
    let (_, e) = app.req(Method::GET, "/spring/vault/default").bearer_auth(&red).send_json().await;
    assert_eq!(names(&e), ["imprint:red.vault@1", "imprint:red.shared@1"], "nothing of blue's got in");

    // A consumer token bound to labels must claim them: here its profile.
    let prod = app.consumer_token("blue-prod", Some("blue"), &[("profile", "prod")], &[]).await;
    let r = app.req(Method::GET, "/spring/blue-app/dev").bearer_auth(&prod).send().await.unwrap();
    assert_error(r, 403, "forbidden").await;
    let r = app.req(Method::GET, "/spring/blue-app/prod").bearer_auth(&prod).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn servers_that_require_tokens_to_poll_require_them_here(pool: sqlx::PgPool) {
    let app = spawn_app_configured(pool.clone(), pool, |c| c.poll_auth_required = true).await;
    app.create_topic_with(json!({"name": "open.cfg", "owner": "open", "spring": {"application": "open"}})).await;
    app.publish_text("open.cfg", "k: v\n").await;
    assert_error(get(&app, "/spring/open/default").await, 401, "unauthorized").await;
    assert_error(get(&app, "/spring/open-default.yml").await, 401, "unauthorized").await;
    let node = app.consumer_token("node", Some("open"), &[], &[]).await;
    let r = app.req(Method::GET, "/spring/open/default").header("Authorization", basic(&node)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
