//! The analysis client against a real Prometheus (Debian's 2.42, `/usr/bin/prometheus`;
//! missing, the test fails): a tiny exporter the test sets, scraped every second, and
//! `PrometheusClient::query` reading one number, following the exporter's changes, with
//! the analysis rules of imprint_domain judging what it reads.
#![allow(clippy::unwrap_used)]
use std::time::Duration;

use imprint_domain::analysis::{render_query, Analysis, RunVerdict, Verdict};
use imprint_service::prometheus::PrometheusClient;
use imprint_testkit::{closed_port_url, eventually, Exporter, Prometheus};

fn metrics(v2: f64) -> String {
    format!(
        "# TYPE imprint_test_errors_ratio gauge\nimprint_test_errors_ratio{{topic=\"prices\",version=\"1\"}} 0.5\n\
         imprint_test_errors_ratio{{topic=\"prices\",version=\"2\"}} {v2}\n"
    )
}

#[tokio::test]
async fn analysis_reads_prometheus() {
    let exporter = Exporter::start(&metrics(0.001)).await;
    let prom = Prometheus::start(exporter.addr).await;
    let client = PrometheusClient::new(&prom.url, Duration::from_secs(5)).unwrap();
    let analysis: Analysis = serde_json::from_value(serde_json::json!({
        "name": "errors",
        "query": "max(imprint_test_errors_ratio{topic=\"{{topic}}\",version=\"{{version}}\"})",
        "interval_s": 1, "count": 3,
        "success": "result < 0.01", "failure": "result >= 0.05"
    }))
    .unwrap();
    analysis.validate().unwrap();
    let q = analysis.render_query("prices", 2, "cluster=canary");

    // Healthy: three successful measurements make a successful run.
    let mut seen = Vec::new();
    while analysis.run_verdict(&seen) == RunVerdict::Running {
        let v = client.query(&q).await;
        assert_eq!(v, Ok(0.001), "{}", prom.log());
        seen.push(analysis.judge(v.ok()));
    }
    assert_eq!(analysis.run_verdict(&seen), RunVerdict::Successful);

    // Raised: once Prometheus has scraped it, the measurement fails the run.
    exporter.set(&metrics(0.2));
    eventually("prometheus to see the raised error ratio", || {
        let (client, q) = (client.clone(), q.clone());
        async move { client.query(&q).await == Ok(0.2) }
    })
    .await;
    let v = client.query(&q).await.ok();
    assert_eq!(analysis.judge(v), Verdict::Failed);
    assert_eq!(analysis.run_verdict(&[Verdict::Successful, analysis.judge(v)]), RunVerdict::Failed);

    // No such version: no series, inconclusive with the reason.
    let none = client.query(&render_query(&analysis.query, "prices", 9, "")).await.unwrap_err();
    assert!(none.0.contains("no data"), "{none}");
    // Several series: not one number.
    let many = client.query("imprint_test_errors_ratio").await.unwrap_err();
    assert!(many.0.contains("2 series"), "{many}");
    // A bad query: Prometheus' own message.
    let bad = client.query("sum(").await.unwrap_err();
    assert!(bad.0.contains("Prometheus query failed"), "{bad}");
    // A NaN from Prometheus is inconclusive.
    let nan = client.query("0/0").await;
    assert!(nan.as_ref().is_ok_and(|v| v.is_nan()), "{nan:?}");
    assert_eq!(analysis.judge(nan.ok()), Verdict::Inconclusive);
    // Prometheus down: inconclusive with the reason.
    let down = PrometheusClient::new(&closed_port_url().await, Duration::from_secs(2)).unwrap();
    let err = down.query("up").await.unwrap_err();
    assert!(err.0.contains("unreachable"), "{err}");
}

/// A server at the Prometheus URL that answers too much, or never: the client stops at
/// its bounds with a reason (inconclusive), it neither buffers without end nor waits forever.
#[tokio::test]
async fn answers_are_bounded() {
    use axum::{routing::get, Router};
    let huge = "x".repeat(imprint_service::prometheus::MAX_RESPONSE_BYTES + 1);
    let app = Router::new().route("/big/api/v1/query", get(move || async move { huge.clone() })).route(
        "/slow/api/v1/query",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "{}"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let big = PrometheusClient::new(&format!("http://{addr}/big"), Duration::from_secs(30)).unwrap();
    let err = big.query("up").await.unwrap_err();
    assert!(err.0.contains("more than"), "{err}");

    let slow = PrometheusClient::new(&format!("http://{addr}/slow"), Duration::from_millis(500)).unwrap();
    let err = slow.query("up").await.unwrap_err();
    assert!(err.0.contains("unreachable") && err.0.contains("timed out"), "{err}");
    server.abort();
}
