//! Several servers: the first is down, the client fails over to the next and gets its
//! values and its reports through there (the server's consumer audit shows the node).

use std::time::Duration;

use imprint_client::{Client, Source};
use imprint_testkit::{closed_port_url, eventually, spawn_app};

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_down_first_server_fails_over_to_the_next(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("fallback.t").await;
    app.publish_text("fallback.t", "hello").await;
    let down = closed_port_url().await;
    let client = Client::builder(&down)
        .fallback_urls([app.base_url()])
        .instance("i-fallback")
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .expect("client");
    let sub = client.subscribe_bytes("fallback.t").await.expect("subscribe");
    eventually("the value through the second server", || async { (sub.source() == Source::Server).then(|| sub.get()) })
        .await;
    assert_eq!(&sub.get()[..], b"hello");
    app.consumer_where("fallback.t", "i-fallback", |c| c["version"] == 1).await;
    client.shutdown().await;
}
