//! Pin rules shared by the service and the console: when a pin is worth a second look.
use chrono::{DateTime, Duration, Utc};

/// Pins older than this without an expiry are flagged: a forgotten pin holds a scope back.
pub const STALE_PIN_DAYS: i64 = 7;

/// Whether a pin created at `created_at` is stale at `now`: it never expires by itself
/// and was set more than `STALE_PIN_DAYS` ago.
pub fn pin_is_stale(created_at: DateTime<Utc>, expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    expires_at.is_none() && now - created_at > Duration::days(STALE_PIN_DAYS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_pins_without_expiry_are_stale() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T03:12:00Z").unwrap().with_timezone(&Utc);
        let old = now - Duration::days(STALE_PIN_DAYS) - Duration::seconds(1);
        assert!(pin_is_stale(old, None, now));
        assert!(!pin_is_stale(old, Some(now + Duration::hours(1)), now));
        assert!(!pin_is_stale(now - Duration::days(STALE_PIN_DAYS), None, now));
        assert!(!pin_is_stale(now, None, now));
    }
}
