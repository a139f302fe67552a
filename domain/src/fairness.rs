//! An adaptive concurrency limit in the manner of Netflix's concurrency-limits `VegasLimit`
//! (after TCP Vegas): from a request's latency and the bucket's no-load latency (the least
//! it has seen), the requests queued are estimated as `limit × (1 − no_load / latency)`.
//! Few queued (≤ α = 3·log10 limit): the limit grows by log10 limit; many (> β = 6·log10
//! limit): it shrinks by as much. A bucket not using half its limit keeps it, and only then
//! may its no-load latency drift up (slowly), so a sustained flood cannot teach the bucket
//! that queueing is normal — the reason for Vegas over Gradient2 here: Gradient's long-term
//! average catches up with a flood that lasts, and the limit climbs back.
//! Pure: the server's fair-serving layer (server/src/fairness.rs) feeds it latencies.
use std::time::Duration;

/// The limit's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VegasParams {
    pub initial: usize,
    pub min: usize,
    pub max: usize,
}

impl Default for VegasParams {
    fn default() -> Self {
        VegasParams { initial: 20, min: 4, max: 200 }
    }
}

/// Latencies below this are taken as this (timer noise). Low on purpose: a poll answered from
/// memory takes tens of microseconds, and a floor near a millisecond hid the queueing of a
/// flood (bench/fairness.sh: the flood's limit settled at 20-odd, not near 4).
const MIN_SAMPLE: Duration = Duration::from_micros(20);
/// How fast an idle bucket's no-load latency may rise per sample (it follows a slower
/// workload within some thousand requests).
const NO_LOAD_DRIFT: f64 = 1.001;

#[derive(Clone, Debug)]
pub struct VegasLimit {
    p: VegasParams,
    limit: f64,
    /// The no-load latency (seconds); None before the first sample.
    no_load: Option<f64>,
}

impl VegasLimit {
    pub fn new(p: VegasParams) -> Self {
        let min = p.min.max(1);
        let max = p.max.max(min);
        let p = VegasParams { min, max, initial: p.initial.clamp(min, max) };
        VegasLimit { p, limit: p.initial as f64, no_load: None }
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        (self.limit as usize).clamp(self.p.min, self.p.max)
    }

    /// One request took `rtt` (its working time, not time parked waiting for news), with
    /// `in_flight` requests of its bucket running when it ended (itself included).
    pub fn sample(&mut self, rtt: Duration, in_flight: usize) {
        let rtt = rtt.max(MIN_SAMPLE).as_secs_f64();
        let app_limited = (in_flight as f64) < self.limit / 2.0;
        let no_load = match self.no_load {
            None => rtt,
            Some(n) if app_limited => rtt.min(n * NO_LOAD_DRIFT),
            Some(n) => rtt.min(n),
        };
        self.no_load = Some(no_load);
        if app_limited {
            return;
        }
        let log = self.limit.max(1.0).log10().max(1.0);
        let queued = self.limit * (1.0 - no_load / rtt);
        let next = if queued <= 3.0 * log {
            self.limit + log
        } else if queued > 6.0 * log {
            self.limit - log
        } else {
            self.limit
        };
        self.limit = next.clamp(self.p.min as f64, self.p.max as f64);
    }

    /// A request of this bucket was refused (its wait for a place ran out): the bucket asks
    /// for more than it gets, a symptom of overload as much as slow answers are.
    pub fn refused(&mut self) {
        self.limit = (self.limit * 0.98).clamp(self.p.min as f64, self.p.max as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: f64) -> Duration {
        Duration::from_secs_f64(n / 1e3)
    }

    /// A server with `cores` that takes `service_ms` per request: with `in_flight` requests
    /// of the bucket running, each takes about this long.
    fn loaded(service_ms: f64, cores: f64, in_flight: usize) -> Duration {
        ms(service_ms * (in_flight as f64 / cores).max(1.0))
    }

    #[test]
    fn without_queueing_at_full_use_the_limit_grows_to_its_max() {
        let mut l = VegasLimit::new(VegasParams { initial: 10, max: 100, ..Default::default() });
        for _ in 0..2000 {
            let f = l.limit();
            l.sample(ms(5.0), f);
        }
        assert_eq!(l.limit(), 100);
    }

    #[test]
    fn a_flood_that_saturates_the_server_is_held_near_the_cores_it_has() {
        // Two cores, 2 ms a request: every request in flight beyond two only queues.
        let mut l = VegasLimit::new(VegasParams { initial: 20, min: 2, max: 200 });
        l.sample(ms(2.0), 1); // once, unloaded
        for _ in 0..5000 {
            let f = l.limit();
            l.sample(loaded(2.0, 2.0, f), f);
        }
        assert!(l.limit() <= 12, "a sustained flood does not climb back: {}", l.limit());
        assert!(l.limit() >= 2);
    }

    #[test]
    fn latency_rising_far_above_no_load_shrinks_the_limit() {
        let mut l = VegasLimit::new(VegasParams { initial: 50, max: 100, ..Default::default() });
        for _ in 0..100 {
            let f = l.limit();
            l.sample(ms(5.0), f);
        }
        let before = l.limit();
        for _ in 0..60 {
            let f = l.limit();
            l.sample(ms(50.0), f);
        }
        assert!(l.limit() < before / 2, "{} -> {}", before, l.limit());
    }

    #[test]
    fn an_idle_bucket_keeps_its_limit() {
        let mut l = VegasLimit::new(VegasParams { initial: 40, ..Default::default() });
        for _ in 0..100 {
            l.sample(ms(100.0), 1);
        }
        assert_eq!(l.limit(), 40);
    }

    #[test]
    fn refusals_lower_the_limit_but_not_below_min() {
        let mut l = VegasLimit::new(VegasParams { initial: 20, min: 4, ..Default::default() });
        l.refused();
        assert!(l.limit() < 20);
        for _ in 0..1000 {
            l.refused();
        }
        assert_eq!(l.limit(), 4);
    }

    #[test]
    fn bad_parameters_are_clamped() {
        let l = VegasLimit::new(VegasParams { initial: 0, min: 0, max: 0 });
        assert_eq!(l.limit(), 1);
    }
}
