//! JSON over HTTP in one call, waiting until something holds, and API error assertions.
use reqwest::{RequestBuilder, Response};
use serde_json::Value;
use std::future::Future;
use std::time::{Duration, Instant};

/// How long `eventually` waits before it gives up: a guard against a hung test, far
/// longer than anything should take (no test asserts how fast something happens).
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// Sends a request and reads its JSON answer in one call.
pub trait SendJson {
    /// The status and the parsed body (`Null` when empty; any other body must be JSON).
    fn send_json(self) -> impl Future<Output = (u16, Value)> + Send;
    /// The parsed body (the request must be answered with JSON; the status is not looked at).
    fn json_body(self) -> impl Future<Output = Value> + Send;
}

impl SendJson for RequestBuilder {
    async fn send_json(self) -> (u16, Value) {
        let r = self.send().await.expect("send");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        if text.is_empty() {
            return (status, Value::Null);
        }
        let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("a JSON answer ({status}): {e}: {text}"));
        (status, body)
    }

    async fn json_body(self) -> Value {
        self.send().await.expect("send").json().await.expect("a JSON answer")
    }
}

/// What `eventually`'s check returns: `true`, or `Some(value)`, when the wait is over.
pub trait Outcome {
    type Value;
    fn ready(self) -> Option<Self::Value>;
}

impl Outcome for bool {
    type Value = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// Runs `check` every 20 ms until it holds (`true`, or `Some(value)`: returned); panics
/// naming `what` if it still does not after `HANG_GUARD`.
pub async fn eventually<F, Fut, O>(what: &str, mut check: F) -> O::Value
where
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
    O: Outcome,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await.ready() {
            return v;
        }
        assert!(start.elapsed() < HANG_GUARD, "still waiting after {HANG_GUARD:?} for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts an API error: status and `error.code`, and that a message is present.
pub async fn assert_error(r: Response, status: u16, code: &str) -> Value {
    let got = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "status; body {body}");
    assert_eq!(body["error"]["code"], code, "code; body {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "message; body {body}");
    body
}
