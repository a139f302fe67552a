//! Random JSON and random bytes at every API route: the server answers every one with a
//! status below 500 and never panics. `IMPRINT_FUZZ_CASES` (default 10 000) sets how many.
use crate::helpers::{spawn_app, ADMIN_TOKEN};
use reqwest::Method;
use serde_json::{json, Map, Value};

/// xorshift64*: deterministic, so a failing case can be replayed with its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const WORDS: &[&str] = &[
    "data",
    "data_base64",
    "scopes",
    "selector",
    "version",
    "reason",
    "stages",
    "plan",
    "rollback",
    "consumer",
    "instance",
    "labels",
    "topics",
    "applied",
    "wait_ms",
    "name",
    "owner",
    "retention",
    "max_versions",
    "metadata",
    "message",
    "rollout",
    "content_type",
    "json_schema",
    "plans",
    "default_plan",
    "restricted",
    "ok",
    "error",
    "wait_s",
    "gate",
    "region",
    "*",
    "",
    "a.b",
    "-1",
    "0",
    "1e308",
    "\u{0}",
    "é",
    "../../etc",
    "null",
];

fn value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth > 3 { 6 } else { 9 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => json!(rng.next() as i64),
        3 => json!(rng.below(5)),
        4 => json!((rng.next() as f64) / 3.0),
        5 => Value::String(rng.pick(WORDS).to_string().repeat(1 + rng.below(3) as usize)),
        6 | 7 => {
            let mut m = Map::new();
            for _ in 0..rng.below(6) {
                m.insert(rng.pick(WORDS).to_string(), value(rng, depth + 1));
            }
            Value::Object(m)
        }
        _ => Value::Array((0..rng.below(5)).map(|_| value(rng, depth + 1)).collect()),
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn random_requests_never_get_a_server_error(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("f").await;
    app.publish("f", json!({"data": "1"})).await;
    let cases: u64 = std::env::var("IMPRINT_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let seed: u64 = std::env::var("IMPRINT_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5EED_1234);
    let mut rng = Rng(seed | 1);
    let routes: &[(Method, &str)] = &[
        (Method::POST, "/api/v1/topics"),
        (Method::GET, "/api/v1/topics"),
        (Method::GET, "/api/v1/topics/f"),
        (Method::PATCH, "/api/v1/topics/f"),
        (Method::POST, "/api/v1/topics/f/versions"),
        (Method::GET, "/api/v1/topics/f/versions"),
        (Method::GET, "/api/v1/topics/f/versions/1"),
        (Method::GET, "/api/v1/topics/f/versions/1/data"),
        (Method::POST, "/api/v1/topics/f/versions/1/scopes"),
        (Method::GET, "/api/v1/topics/f/resolve"),
        (Method::PUT, "/api/v1/topics/f/pins"),
        (Method::DELETE, "/api/v1/topics/f/pins"),
        (Method::GET, "/api/v1/topics/f/pins"),
        (Method::GET, "/api/v1/topics/f/latest"),
        (Method::GET, "/api/v1/topics/f/consumers"),
        (Method::POST, "/api/v1/topics/f/rollouts"),
        (Method::GET, "/api/v1/topics/f/rollouts"),
        (Method::GET, "/api/v1/topics/f/rollouts/1"),
        (Method::POST, "/api/v1/topics/f/rollouts/1/cancel"),
        (Method::POST, "/api/v1/poll"),
    ];
    let queries = [
        "",
        "?limit=0",
        "?limit=x",
        "?cursor=%%",
        "?labels=a=b,,",
        "?selector=*",
        "?at=now",
        "?all=maybe",
        "?unused_days=-1",
        "?scope=region",
        "?meta.k=v",
        "?version=0",
        "?lagging=2",
    ];
    let mut seen_5xx = Vec::new();
    for case in 0..cases {
        let (method, path) = rng.pick(routes).clone();
        let q = rng.pick(&queries);
        let mut req = app.req(method.clone(), &format!("{path}{q}"));
        if rng.below(3) > 0 {
            req = req.bearer_auth(ADMIN_TOKEN);
        }
        req = match rng.below(4) {
            0 => {
                let n = rng.below(64) as usize;
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                req.header(
                    "content-type",
                    if rng.below(2) == 0 { "application/json" } else { "application/octet-stream" },
                )
                .body(bytes)
            }
            1 => req.body(""),
            _ => req.json(&value(&mut rng, 0)),
        };
        let status = req.send().await.expect("the server answers").status().as_u16();
        if status >= 500 {
            seen_5xx.push(format!("case {case}: {method} {path}{q} → {status}"));
        }
    }
    assert!(seen_5xx.is_empty(), "server errors (seed {seed}): {seen_5xx:?}");
    // Still alive and consistent.
    assert_eq!(app.req(Method::GET, "/healthz").send().await.unwrap().status(), 200);
}
