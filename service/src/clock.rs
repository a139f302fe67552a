//! Time as a parameter. Everything whose behaviour depends on the time (rollout stages,
//! gates, pins, the consumer audit, retention) asks the service's `Clock`, so tests can
//! set it instead of sleeping.
use chrono::{DateTime, Duration, Utc};
use std::sync::{Arc, Mutex};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock, rounded to whole microseconds (what Postgres stores), so a time
/// read back from the database equals the one written.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        micros(Utc::now())
    }
}

fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// A clock that stands still until moved: for tests.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(micros(at))))
    }

    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = micros(at);
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = DateTime::from_timestamp(1_800_000_000, 123_456_789).expect("time");
        let c = ManualClock::new(start);
        assert_eq!(c.now().timestamp_subsec_nanos(), 123_456_000, "rounded to microseconds");
        let t0 = c.now();
        c.advance(Duration::seconds(90));
        assert_eq!(c.now() - t0, Duration::seconds(90));
        assert!(SystemClock.now().timestamp_subsec_nanos().is_multiple_of(1000));
    }
}
