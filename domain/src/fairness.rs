//! An adaptive concurrency limit in the manner of Netflix's concurrency-limits `Gradient2`:
//! the limit follows the ratio of a long-term latency average to the latest latency. While
//! latency stays near its long-term level the limit grows (by about √limit per sample,
//! smoothed); when requests take longer than `tolerance` times the long-term level — work
//! is queueing — it shrinks, down to half per sample at most. A bucket that does not use
//! half its limit keeps it (an idle application's limit does not drift). Pure: the server's
//! fair-serving layer (server/src/fairness.rs) feeds it latencies and asks for the limit.
use std::time::Duration;

/// The limit's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradientParams {
    pub initial: usize,
    pub min: usize,
    pub max: usize,
    /// How much slower than the long-term average a request may be before the limit
    /// shrinks (Netflix's default: 1.5; 2.0 here, polls' latency is noisy).
    pub tolerance: f64,
    /// How far one sample moves the limit toward its target (0–1).
    pub smoothing: f64,
    /// Samples in the long-term average (an exponential moving average over about this many).
    pub long_window: u32,
}

impl Default for GradientParams {
    fn default() -> Self {
        GradientParams { initial: 20, min: 4, max: 200, tolerance: 2.0, smoothing: 0.2, long_window: 100 }
    }
}

/// Latencies below this are taken as this: a sub-millisecond request says nothing about
/// queueing, and the ratio of two tiny numbers is noise.
const MIN_SAMPLE: Duration = Duration::from_micros(200);

#[derive(Clone, Debug)]
pub struct GradientLimit {
    p: GradientParams,
    limit: f64,
    /// The long-term latency (seconds), an EMA; None before the first sample.
    long: Option<f64>,
    /// Samples seen (for the EMA's warm-up).
    samples: u32,
}

impl GradientLimit {
    pub fn new(p: GradientParams) -> Self {
        let min = p.min.max(1);
        let max = p.max.max(min);
        let p = GradientParams { min, max, initial: p.initial.clamp(min, max), ..p };
        GradientLimit { p, limit: p.initial as f64, long: None, samples: 0 }
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        (self.limit as usize).clamp(self.p.min, self.p.max)
    }

    /// One request took `rtt` (its working time, not time parked waiting for news), with
    /// `in_flight` requests of its bucket running when it ended (itself included).
    pub fn sample(&mut self, rtt: Duration, in_flight: usize) {
        let short = rtt.max(MIN_SAMPLE).as_secs_f64();
        self.samples = self.samples.saturating_add(1);
        let n = f64::from(self.samples.min(self.p.long_window.max(1)));
        let long = match self.long {
            None => short,
            Some(l) => l + (short - l) / n,
        };
        // A long-term average far above what requests take now is left from a past
        // overload: let it come down faster (Gradient2 does the same).
        let long = if long / short > 2.0 { long * 0.95 } else { long };
        self.long = Some(long);
        // Not using half its limit: the bucket is not what limits it; keep the limit.
        if (in_flight as f64) < self.limit / 2.0 {
            return;
        }
        let gradient = (self.p.tolerance * long / short).clamp(0.5, 1.0);
        let queue = self.limit.sqrt();
        let target = self.limit * gradient + queue;
        let next = self.limit * (1.0 - self.p.smoothing) + target * self.p.smoothing;
        self.limit = next.clamp(self.p.min as f64, self.p.max as f64);
    }

    /// A request of this bucket was refused (its wait in the queue ran out): the bucket is
    /// asking for more than it gets; the limit is not raised by it, and shrinks a little
    /// (the queue is a symptom of overload as much as slow answers are).
    pub fn refused(&mut self) {
        self.limit = (self.limit * 0.98).clamp(self.p.min as f64, self.p.max as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn steady_latency_at_full_use_grows_the_limit_to_its_max() {
        let mut l = GradientLimit::new(GradientParams { initial: 10, max: 100, ..Default::default() });
        for _ in 0..500 {
            let in_flight = l.limit();
            l.sample(ms(5), in_flight);
        }
        assert_eq!(l.limit(), 100);
    }

    #[test]
    fn latency_rising_far_above_its_long_term_level_shrinks_the_limit() {
        let mut l = GradientLimit::new(GradientParams { initial: 50, max: 100, ..Default::default() });
        for _ in 0..200 {
            let f = l.limit();
            l.sample(ms(5), f);
        }
        let before = l.limit();
        // Work queues: requests take ten times as long.
        for _ in 0..30 {
            let f = l.limit();
            l.sample(ms(50), f);
        }
        assert!(l.limit() < before / 2, "{} -> {}", before, l.limit());
        assert!(l.limit() >= 4, "never below min");
    }

    #[test]
    fn an_idle_bucket_keeps_its_limit() {
        let mut l = GradientLimit::new(GradientParams { initial: 40, ..Default::default() });
        for _ in 0..100 {
            l.sample(ms(100), 1);
        }
        assert_eq!(l.limit(), 40);
    }

    #[test]
    fn refusals_lower_the_limit_but_not_below_min() {
        let mut l = GradientLimit::new(GradientParams { initial: 20, min: 4, ..Default::default() });
        l.refused();
        assert!(l.limit() < 20);
        for _ in 0..1000 {
            l.refused();
        }
        assert_eq!(l.limit(), 4);
    }

    #[test]
    fn bad_parameters_are_clamped() {
        let l = GradientLimit::new(GradientParams { initial: 0, min: 0, max: 0, ..Default::default() });
        assert_eq!(l.limit(), 1);
    }
}
