//! The budget of requests held open: consumer long polls, Apollo `/notifications/v2` and
//! the console's live streams all take a place, and a place is only given while the
//! count (`IMPRINT_MAX_LONG_POLLS`), the memory the parked requests hold
//! (`IMPRINT_LONG_POLL_MEMORY_MB`) and, for anonymous callers, the places of one client
//! address (`IMPRINT_MAX_LONG_POLLS_PER_ADDRESS`) stay within their caps. A poll that gets
//! no place is answered at once, as a short poll with a backoff.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub(crate) struct LongPolls {
    open: AtomicUsize,
    bytes: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

impl LongPolls {
    /// Places held now (every kind).
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

fn gauge() -> &'static metrics::Gauge {
    static G: std::sync::OnceLock<metrics::Gauge> = std::sync::OnceLock::new();
    G.get_or_init(|| metrics::gauge!("imprint_long_polls_open"))
}

fn bytes_gauge() -> &'static metrics::Gauge {
    static G: std::sync::OnceLock<metrics::Gauge> = std::sync::OnceLock::new();
    G.get_or_init(|| metrics::gauge!("imprint_long_poll_bytes"))
}

/// A place among the requests held open, given back when dropped (however the request
/// ends).
pub struct LongPollPlace {
    polls: Arc<LongPolls>,
    bytes: usize,
    address: Option<IpAddr>,
}

/// Adds `n` to `counter` unless that passes `max`.
fn take(counter: &AtomicUsize, n: usize, max: usize) -> bool {
    let mut now = counter.load(Ordering::Relaxed);
    loop {
        if now.saturating_add(n) > max {
            return false;
        }
        match counter.compare_exchange_weak(now, now + n, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(seen) => now = seen,
        }
    }
}

/// The caps a place is given within.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caps {
    pub open: usize,
    pub bytes: usize,
    pub per_address: usize,
}

impl LongPolls {
    /// A place for a request to be held open, holding about `bytes` of memory while it
    /// waits; `anonymous_from` counts it against that address's places. None: over a cap.
    pub(crate) fn place(
        self: &Arc<Self>,
        caps: Caps,
        bytes: usize,
        anonymous_from: Option<IpAddr>,
    ) -> Option<LongPollPlace> {
        if !take(&self.open, 1, caps.open) {
            return None;
        }
        if !take(&self.bytes, bytes, caps.bytes) {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        if let Some(ip) = anonymous_from {
            let mut per = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
            let n = per.entry(ip).or_default();
            if *n >= caps.per_address {
                drop(per);
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.bytes.fetch_sub(bytes, Ordering::AcqRel);
                return None;
            }
            *n += 1;
        }
        gauge().increment(1.0);
        bytes_gauge().increment(bytes as f64);
        Some(LongPollPlace { polls: self.clone(), bytes, address: anonymous_from })
    }
}

impl Drop for LongPollPlace {
    fn drop(&mut self) {
        self.polls.open.fetch_sub(1, Ordering::AcqRel);
        self.polls.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        if let Some(ip) = self.address {
            let mut per = self.polls.per_address.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = per.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per.remove(&ip);
                }
            }
        }
        gauge().decrement(1.0);
        bytes_gauge().decrement(self.bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::{Caps, LongPolls};
    use std::sync::atomic::Ordering;

    #[test]
    fn places_are_bounded_by_count_memory_and_address() {
        let polls = std::sync::Arc::new(LongPolls::default());
        let caps = Caps { open: 3, bytes: 10_000, per_address: 2 };
        let ip: std::net::IpAddr = "192.0.2.1".parse().expect("ip");
        let a = polls.place(caps, 100, Some(ip)).expect("first");
        let b = polls.place(caps, 100, Some(ip)).expect("second");
        assert!(polls.place(caps, 100, Some(ip)).is_none(), "the address holds its two places");
        assert!(polls.place(caps, 20_000, None).is_none(), "more memory than the budget");
        let c = polls.place(caps, 100, None).expect("another caller");
        assert!(polls.place(caps, 1, None).is_none(), "three places in all");
        drop(a);
        let d = polls.place(caps, 100, Some(ip)).expect("a place came free");
        assert_eq!(polls.open(), 3);
        drop((b, c, d));
        assert_eq!(polls.open(), 0);
        assert_eq!(polls.bytes.load(Ordering::Relaxed), 0);
        assert!(polls.per_address.lock().expect("lock").is_empty());
    }
}
