//! The pure rules of webhooks (docs/webhooks.md): which change events exist and which
//! audited action each is, the retry schedule of a delivery, and which addresses a
//! delivery may not reach. No I/O: the service stores, signs and sends.
use chrono::Duration;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Every event type a subscription can ask for (the CloudEvents `type` is
/// `io.imprint.<type>`).
pub const EVENT_TYPES: [&str; 26] = [
    "version.published",
    "version.rejected",
    "scope.added",
    "pin.set",
    "pin.removed",
    "rollout.started",
    "rollout.advanced",
    "rollout.paused",
    "rollout.resumed",
    "rollout.completed",
    "rollout.cancelled",
    "rollout.rolled_back",
    "topic.created",
    "topic.changed",
    "draft.created",
    "draft.updated",
    "draft.discarded",
    "change.requested",
    "change.approved",
    "change.rejected",
    "change.withdrawn",
    "change.applied",
    "change.expired",
    "change.break_glass",
    "freeze.created",
    "freeze.deleted",
];

/// The prefix of the CloudEvents `type` attribute.
pub const CLOUDEVENTS_TYPE_PREFIX: &str = "io.imprint.";

/// Is `t` one of `EVENT_TYPES`?
pub fn is_event_type(t: &str) -> bool {
    EVENT_TYPES.contains(&t)
}

/// The events one audited action stands for (in this order). `details` is what the
/// audit entry records: a rollout stage that reaches the last stage (`"stage" == "of"`
/// with state `completed`) also completes the rollout, whichever way it got there (the
/// scheduler, `advance`, `complete`), so `rollout.complete` and `rollout.advance`
/// themselves emit nothing (their stage entries do).
pub fn events_of_action(action: &str, details: &serde_json::Value) -> Vec<&'static str> {
    match action {
        "version.publish" => vec!["version.published"],
        // Rejected by the checks and kept unreleased (`keep_rejected`, docs/validation.md).
        "version.reject" => vec!["version.rejected"],
        "scope.add" => vec!["scope.added"],
        "pin.set" => vec!["pin.set"],
        "pin.remove" | "pin.expire" => vec!["pin.removed"],
        "rollout.start" => vec!["rollout.started"],
        "rollout.stage" => {
            let last = details.get("stage").is_some_and(|s| Some(s) == details.get("of"))
                && details.get("state").and_then(|s| s.as_str()) == Some("completed");
            if last {
                vec!["rollout.advanced", "rollout.completed"]
            } else {
                vec!["rollout.advanced"]
            }
        }
        "rollout.pause" | "rollout.auto_pause" => vec!["rollout.paused"],
        "rollout.resume" => vec!["rollout.resumed"],
        "rollout.cancel" | "rollout.supersede" => vec!["rollout.cancelled"],
        // A failing gate rolled the rollout back on its own (docs/validation.md).
        "rollout.auto_rollback" => vec!["rollout.cancelled", "rollout.rolled_back"],
        "topic.create" => vec!["topic.created"],
        "topic.update" => vec!["topic.changed"],
        // Change control (docs/change-control.md).
        "draft.create" => vec!["draft.created"],
        "draft.update" => vec!["draft.updated"],
        "draft.discard" => vec!["draft.discarded"],
        "change.request" => vec!["change.requested"],
        "change.approve" => vec!["change.approved"],
        "change.reject" => vec!["change.rejected"],
        "change.withdraw" => vec!["change.withdrawn"],
        "change.apply" => vec!["change.applied"],
        "change.expire" => vec!["change.expired"],
        "change.break_glass" => vec!["change.break_glass"],
        "freeze.create" => vec!["freeze.created"],
        "freeze.delete" => vec!["freeze.deleted"],
        _ => Vec::new(),
    }
}

/// Attempts a delivery gets before it is marked `failed`.
pub const MAX_ATTEMPTS: u32 = 20;
/// The wait after the first failed attempt; it doubles after each one.
pub const FIRST_RETRY: Duration = Duration::seconds(5);
/// No wait between attempts is longer than this.
pub const MAX_RETRY: Duration = Duration::hours(4);

/// How long to wait after failed attempt number `attempt` (1-based) before the next
/// one, before jitter: 5 s, 10 s, 20 s … doubling up to 4 h. `None`: that was the last
/// attempt (`MAX_ATTEMPTS`), the delivery has failed. The waits of all 19 retries add up to
/// about 33.7 h (`retry_span`; at least 27 h with jitter), so a receiver down for a day still
/// gets its events.
pub fn retry_after(attempt: u32) -> Option<Duration> {
    if attempt == 0 || attempt >= MAX_ATTEMPTS {
        return None;
    }
    let doubled = FIRST_RETRY.num_seconds().checked_shl(attempt - 1).unwrap_or(i64::MAX);
    Some(Duration::seconds(doubled.min(MAX_RETRY.num_seconds())))
}

/// `retry_after(attempt)` spread by `jitter` in [0, 1): up to 20 % shorter, so that many
/// deliveries failing at once do not come back at once.
pub fn retry_after_jittered(attempt: u32, jitter: f64) -> Option<Duration> {
    let base = retry_after(attempt)?;
    let jitter = jitter.clamp(0.0, 1.0);
    let cut = (base.num_milliseconds() as f64 * 0.2 * jitter) as i64;
    Some(base - Duration::milliseconds(cut))
}

/// The total wait of every retry before a delivery fails (without jitter).
pub fn retry_span() -> Duration {
    (1..MAX_ATTEMPTS).filter_map(retry_after).fold(Duration::zero(), |a, b| a + b)
}

/// Why a delivery may not go to an address, unless the subscription allows private
/// addresses: loopback, link-local (cloud metadata, 169.254.169.254 included),
/// unspecified, private (RFC 1918, unique-local fc00::/7), carrier-grade NAT, multicast,
/// broadcast and documentation ranges. `None`: a public address.
pub fn forbidden_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => forbidden_v4(v4),
            None => forbidden_v6(v6),
        },
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_private() {
        Some("private")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("carrier-grade NAT")
    } else if ip.is_multicast() || ip.is_broadcast() || o[0] >= 240 {
        Some("multicast or reserved")
    } else if ip.is_documentation() {
        Some("documentation")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("private (unique local)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Some("documentation")
    } else if s[0] == 0x0064 && s[1] == 0xff9b {
        // NAT64: the embedded IPv4 address decides.
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        forbidden_v4(v4)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_backoff_doubles_is_capped_and_spans_more_than_a_day() {
        assert_eq!(retry_after(0), None);
        assert_eq!(retry_after(1), Some(Duration::seconds(5)));
        assert_eq!(retry_after(2), Some(Duration::seconds(10)));
        assert_eq!(retry_after(3), Some(Duration::seconds(20)));
        assert_eq!(retry_after(13), Some(Duration::hours(4)), "5 s · 2^12 is past the cap");
        assert_eq!(retry_after(MAX_ATTEMPTS - 1), Some(Duration::hours(4)));
        assert_eq!(retry_after(MAX_ATTEMPTS), None, "the last attempt fails the delivery");
        assert!(retry_span() >= Duration::hours(24), "{:?}", retry_span());
        assert_eq!(retry_span(), Duration::seconds(5 * 4095 + 7 * 4 * 3600), "5 s·(2¹²−1), then 7 × 4 h");
        let mut last = Duration::zero();
        for a in 1..MAX_ATTEMPTS {
            let w = retry_after(a).unwrap_or_default();
            assert!(w >= last, "never shorter than the one before");
            last = w;
        }
    }

    #[test]
    fn jitter_shortens_by_at_most_a_fifth() {
        assert_eq!(retry_after_jittered(1, 0.0), Some(Duration::seconds(5)));
        assert_eq!(retry_after_jittered(1, 0.5), Some(Duration::milliseconds(4500)));
        assert_eq!(retry_after_jittered(1, 7.0), Some(Duration::seconds(4)), "clamped");
        assert_eq!(retry_after_jittered(MAX_ATTEMPTS, 0.3), None);
        // Even fully jittered, the retries of a delivery span more than a day.
        let span: Duration = (1..MAX_ATTEMPTS).filter_map(|a| retry_after_jittered(a, 0.999)).sum();
        assert!(span >= Duration::hours(26), "{span:?}");
    }

    #[test]
    fn actions_map_to_their_events() {
        let none = json!({});
        assert_eq!(events_of_action("version.publish", &none), ["version.published"]);
        assert_eq!(events_of_action("version.reject", &none), ["version.rejected"]);
        assert_eq!(events_of_action("pin.expire", &none), ["pin.removed"]);
        assert_eq!(events_of_action("rollout.supersede", &none), ["rollout.cancelled"]);
        assert_eq!(
            events_of_action("rollout.stage", &json!({"stage": 1, "of": 2, "state": "running"})),
            ["rollout.advanced"]
        );
        assert_eq!(
            events_of_action("rollout.stage", &json!({"stage": 2, "of": 2, "state": "completed"})),
            ["rollout.advanced", "rollout.completed"]
        );
        assert!(events_of_action("rollout.complete", &none).is_empty(), "its stage entries say it");
        assert_eq!(events_of_action("rollout.auto_rollback", &none), ["rollout.cancelled", "rollout.rolled_back"]);
        assert!(events_of_action("token.create", &none).is_empty());
        assert!(events_of_action("version.purge", &none).is_empty());
        for action in [
            "version.publish",
            "version.reject",
            "scope.add",
            "pin.set",
            "pin.remove",
            "rollout.start",
            "rollout.pause",
        ] {
            for t in events_of_action(action, &none) {
                assert!(is_event_type(t), "{t}");
            }
        }
    }

    #[test]
    fn private_and_metadata_addresses_are_forbidden() {
        for bad in [
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            let ip: IpAddr = bad.parse().expect("ip");
            assert!(forbidden_address(ip).is_some(), "{bad} must be refused");
        }
        for good in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "100.128.0.1"] {
            let ip: IpAddr = good.parse().expect("ip");
            assert_eq!(forbidden_address(ip), None, "{good} is public");
        }
    }
}
