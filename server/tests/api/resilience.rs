//! Postgres going away and coming back, simulated with a TCP proxy the test can cut.
use imprint_testkit::*;
use reqwest::Method;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// Forwards connections (to Postgres, to moto's KMS) while `up`; `cut()` drops every connection and
/// refuses new ones until `restore()`.
pub(crate) struct Proxy {
    pub(crate) port: u16,
    up: Arc<AtomicBool>,
    kill: broadcast::Sender<()>,
}

impl Proxy {
    pub(crate) async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (kill, _) = broadcast::channel(4);
        let (up2, kill2) = (up.clone(), kill.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let mut killed = kill2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = killed.recv() => {}
                    }
                });
            }
        });
        Proxy { port, up, kill }
    }

    pub(crate) fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let _ = self.kill.send(());
    }

    pub(crate) fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn polls_survive_postgres_outage_and_publishing_recovers(pool: sqlx::PgPool) {
    let opts = (*pool.connect_options()).clone();
    let target = format!("{}:{}", opts.get_host(), opts.get_port());
    assert!(!opts.get_host().starts_with('/'), "this test needs Postgres over TCP, not a unix socket");
    let proxy = Proxy::start(target).await;
    let serving = imprint_service::pool_options().connect_lazy_with(opts.host("127.0.0.1").port(proxy.port));
    let app = spawn_app_with(serving, pool).await;
    app.create_topic("resilient").await;
    app.publish("resilient", json!({"data": "before"})).await;

    proxy.cut();
    // Polls are answered from memory.
    let r = app.poll(json!({"consumer": {"instance": "i", "labels": {}}, "topics": {"resilient": null}})).await;
    assert_eq!(r["updates"]["resilient"]["version"], 1);
    let r = app.req(Method::GET, "/api/v1/topics/resilient/latest").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "before");
    app.poll(
        json!({"consumer": {"instance": "seen-during-outage", "labels": {"az": "b"}}, "topics": {"resilient": 1}}),
    )
    .await;
    // Publishing fails cleanly, and readiness says why.
    let r = app
        .admin(Method::POST, "/api/v1/topics/resilient/versions")
        .json(&json!({"data": "during"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 503, "storage_unavailable").await;
    let r = app.req(Method::GET, "/readyz").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(app.req(Method::GET, "/healthz").send().await.unwrap().status(), 200);

    proxy.restore();
    // The server recovers by itself: ready again, publishing works, changes flow.
    eventually("ready again after Postgres returned", || async {
        app.req(Method::GET, "/readyz").send().await.unwrap().status() == 200
    })
    .await;
    // The audit catches up: the instance seen during the outage is recorded.
    let recorded = eventually("the instance seen during the outage is recorded", || async {
        let recorded = app.req(Method::GET, "/api/v1/topics/resilient/consumers").json_body().await;
        let seen =
            recorded["consumers"].as_array().is_some_and(|c| c.iter().any(|c| c["instance"] == "seen-during-outage"));
        seen.then_some(recorded)
    })
    .await;
    let seen = recorded["consumers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["instance"] == "seen-during-outage"))
        .unwrap_or_else(|| panic!("the instance seen during the outage is recorded: {recorded}"));
    assert_eq!(seen["labels"], json!({"az": "b"}));
    let p = app.publish("resilient", json!({"data": "after"})).await;
    assert_eq!(p["version"], 2, "the failed publish used no number");
    // A change made behind this server's back arrives through the re-established LISTEN.
    let waiting = {
        let body = json!({"consumer": {"instance": "i", "labels": {}}, "topics": {"resilient": 2}, "wait_ms": 30000});
        let req = app.req(Method::POST, "/api/v1/poll").json(&body);
        tokio::spawn(async move { req.json_body().await })
    };
    let other = spawn_app(app.pool.clone()).await;
    other.publish("resilient", json!({"data": "elsewhere"})).await;
    let r = tokio::time::timeout(Duration::from_secs(40), waiting).await.expect("change seen after recovery").unwrap();
    assert_eq!(r["updates"]["resilient"]["version"], 3, "{r}");
}
