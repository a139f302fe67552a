//! `imprint webhook …`: subscriptions to change events (docs/webhooks.md) — list, create,
//! show, change, delete, rotate the secret, the delivery log and redelivery.
use crate::api::{Api, CliResult};
use crate::cmd::{print_json, show};
use crate::fmt;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum WebhookCmd {
    /// The subscriptions you may manage.
    List,
    /// Subscribe a URL to change events; prints the signing secret (shown only now).
    Create(CreateArgs),
    /// One subscription.
    Show { id: i64 },
    /// Change a subscription's URL, event types, description or state.
    Update(UpdateArgs),
    /// Delete a subscription and its queued deliveries.
    Delete { id: i64 },
    /// A new signing secret; the previous one keeps signing for --keep (default 1d).
    Rotate {
        id: i64,
        /// How long the previous secret signs too: 600, 2h, 1d (at most 7d).
        #[arg(long)]
        keep: Option<String>,
    },
    /// The delivery log, newest first.
    Deliveries {
        id: i64,
        /// Only pending, delivered or failed ones.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Send a delivery again, with fresh retries.
    Redeliver { id: i64, delivery: i64 },
}

#[derive(Args)]
pub struct CreateArgs {
    /// The receiver's URL (named `receiver`: `--url` is the Imprint server's).
    #[arg(value_name = "URL")]
    receiver: String,
    /// Only this topic's events.
    #[arg(long, conflicts_with = "team")]
    topic: Option<String>,
    /// Only the events of this team's topics (neither: every topic's, admins only).
    #[arg(long)]
    team: Option<String>,
    /// Only these event types (repeatable or comma-separated): version.published, pin.set, …
    #[arg(long = "event", value_delimiter = ',')]
    events: Vec<String>,
    #[arg(long, default_value = "")]
    description: String,
    /// Deliver to loopback/private addresses too (admins only).
    #[arg(long)]
    allow_private: bool,
    /// Created disabled (nothing is queued until enabled).
    #[arg(long)]
    disabled: bool,
}

#[derive(Args)]
pub struct UpdateArgs {
    id: i64,
    /// A new receiver URL.
    #[arg(long, value_name = "URL")]
    receiver: Option<String>,
    /// The event types (comma-separated; `all` for every type).
    #[arg(long = "events")]
    events: Option<String>,
    #[arg(long)]
    description: Option<String>,
    #[arg(long, conflicts_with = "disable")]
    enable: bool,
    #[arg(long)]
    disable: bool,
    #[arg(long)]
    allow_private: Option<bool>,
}

#[derive(Deserialize)]
struct Webhook {
    id: i64,
    url: String,
    topic: Option<String>,
    team: Option<String>,
    event_types: Vec<String>,
    enabled: bool,
    description: String,
    secret: Option<String>,
    previous_secret_expires_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct WebhookList {
    webhooks: Vec<Webhook>,
}

#[derive(Deserialize)]
struct Delivery {
    id: i64,
    event_type: String,
    topic: Option<String>,
    event_time: DateTime<Utc>,
    state: String,
    attempts: i32,
    last_status: Option<i32>,
    last_latency_ms: Option<i32>,
    last_error: Option<String>,
    next_attempt_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct DeliveryList {
    deliveries: Vec<Delivery>,
}

fn scope(w: &Webhook) -> String {
    match (&w.topic, &w.team) {
        (Some(t), _) => format!("topic {t}"),
        (None, Some(t)) => format!("team {t}"),
        (None, None) => "every topic".into(),
    }
}

fn events(w: &Webhook) -> String {
    if w.event_types.is_empty() {
        "all".into()
    } else {
        w.event_types.join(",")
    }
}

fn print_one(w: &Webhook) {
    println!("webhook {} → {}", w.id, w.url);
    println!("  scope:   {}", scope(w));
    println!("  events:  {}", events(w));
    println!("  enabled: {}", w.enabled);
    if !w.description.is_empty() {
        println!("  about:   {}", w.description);
    }
    if let Some(t) = w.previous_secret_expires_at {
        println!("  the previous secret signs too until {}", fmt::time(Some(t)));
    }
    if let Some(s) = &w.secret {
        println!("  secret:  {s}\n  (shown only now: receivers verify deliveries with it)");
    }
}

pub async fn run(api: &Api, cmd: WebhookCmd, json_out: bool) -> CliResult<u8> {
    match cmd {
        WebhookCmd::List => {
            show(api.get(&["webhooks"], &[("limit", "500".into())]).await?, json_out, |l: WebhookList| {
                let rows: Vec<Vec<String>> = l
                    .webhooks
                    .iter()
                    .map(|w| vec![w.id.to_string(), w.url.clone(), scope(w), events(w), w.enabled.to_string()])
                    .collect();
                fmt::table(&["ID", "URL", "SCOPE", "EVENTS", "ENABLED"], &rows);
            })
        }
        WebhookCmd::Create(a) => {
            let body = json!({"url": a.receiver, "topic": a.topic, "team": a.team, "event_types": a.events,
                              "description": a.description, "allow_private": a.allow_private, "enabled": !a.disabled});
            let v = api.send_json(Method::POST, &["webhooks"], &body).await?;
            show(v, json_out, |w: Webhook| print_one(&w))
        }
        WebhookCmd::Show { id } => {
            show(api.get(&["webhooks", &id.to_string()], &[]).await?, json_out, |w: Webhook| print_one(&w))
        }
        WebhookCmd::Update(a) => {
            let mut body = serde_json::Map::new();
            if let Some(u) = a.receiver {
                body.insert("url".into(), json!(u));
            }
            if let Some(e) = a.events {
                let list: Vec<&str> =
                    if e == "all" { vec![] } else { e.split(',').map(str::trim).filter(|s| !s.is_empty()).collect() };
                body.insert("event_types".into(), json!(list));
            }
            if let Some(d) = a.description {
                body.insert("description".into(), json!(d));
            }
            if a.enable || a.disable {
                body.insert("enabled".into(), json!(a.enable));
            }
            if let Some(p) = a.allow_private {
                body.insert("allow_private".into(), json!(p));
            }
            let v = api.send_json(Method::PATCH, &["webhooks", &a.id.to_string()], &Value::Object(body)).await?;
            show(v, json_out, |w: Webhook| print_one(&w))
        }
        WebhookCmd::Delete { id } => {
            api.delete(&["webhooks", &id.to_string()], &[]).await?;
            if json_out {
                print_json(&json!({"deleted": id}));
            } else {
                println!("deleted webhook {id}");
            }
            Ok(0)
        }
        WebhookCmd::Rotate { id, keep } => {
            let body = match keep {
                Some(k) => {
                    let secs = imprint_domain::parse_wait(&k).map_err(|_| {
                        crate::api::CliError::new(format!("--keep {k:?} is not a duration (600, 2h, 1d)"))
                    })?;
                    json!({"previous_valid_secs": secs})
                }
                None => json!({}),
            };
            let v = api.send_json(Method::POST, &["webhooks", &id.to_string(), "rotate"], &body).await?;
            show(v, json_out, |w: Webhook| print_one(&w))
        }
        WebhookCmd::Deliveries { id, state, limit } => {
            let mut q = vec![];
            if let Some(s) = state {
                q.push(("state", s));
            }
            if let Some(l) = limit {
                q.push(("limit", l.to_string()));
            }
            show(api.get(&["webhooks", &id.to_string(), "deliveries"], &q).await?, json_out, |l: DeliveryList| {
                let rows: Vec<Vec<String>> = l
                    .deliveries
                    .iter()
                    .map(|d| {
                        vec![
                            d.id.to_string(),
                            d.event_type.clone(),
                            fmt::opt(&d.topic),
                            fmt::time(Some(d.event_time)),
                            d.state.clone(),
                            d.attempts.to_string(),
                            fmt::opt(&d.last_status),
                            d.last_latency_ms.map(|l| format!("{l} ms")).unwrap_or_else(|| "-".into()),
                            fmt::time(d.next_attempt_at),
                            fmt::short(d.last_error.as_deref().unwrap_or(""), 60),
                        ]
                    })
                    .collect();
                fmt::table(
                    &["ID", "EVENT", "TOPIC", "AT", "STATE", "TRIES", "STATUS", "LATENCY", "NEXT", "ERROR"],
                    &rows,
                );
            })
        }
        WebhookCmd::Redeliver { id, delivery } => {
            let v = api
                .send_json(
                    Method::POST,
                    &["webhooks", &id.to_string(), "deliveries", &delivery.to_string(), "redeliver"],
                    &json!({}),
                )
                .await?;
            show(v, json_out, |d: Delivery| println!("delivery {} of webhook {id} is {} again", d.id, d.state))
        }
    }
}
