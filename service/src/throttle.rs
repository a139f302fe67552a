//! Failed sign-ins per username and per client address, with locks that grow and are
//! capped. Time is a parameter, so the rules are tested without waiting.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures before the first lock, its length, and the longest lock.
const LOCK_AFTER_FAILURES: u32 = 5;
const FIRST_LOCK: Duration = Duration::from_secs(30);
const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
/// A counter with no failure for this long starts over.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Above this many counters, forgotten ones are dropped (usernames are attacker-chosen).
const PRUNE_ABOVE: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ThrottleKey {
    User(String),
    Client(IpAddr),
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// How long the `count`-th consecutive failure locks: from the fifth on, 30 s doubling
/// per failure, at most 15 minutes.
fn lock_for(count: u32) -> Option<Duration> {
    let over = count.checked_sub(LOCK_AFTER_FAILURES)?;
    let factor = 1u32.checked_shl(over).unwrap_or(u32::MAX);
    Some(FIRST_LOCK.checked_mul(factor).unwrap_or(MAX_LOCK).min(MAX_LOCK))
}

/// Failed sign-ins per username and per client address, in this server's memory (a
/// restart forgets them; several replicas each count their own). Time is a parameter,
/// so the rules are tested without waiting.
#[derive(Default)]
pub struct SignInThrottle {
    entries: Mutex<HashMap<ThrottleKey, Failures>>,
}

impl SignInThrottle {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<ThrottleKey, Failures>> {
        // A panic elsewhere while holding the lock leaves the counters usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long until none of `keys` is locked, if one is.
    pub fn locked(&self, keys: &[ThrottleKey], now: Instant) -> Option<Duration> {
        let entries = self.entries();
        keys.iter()
            .filter_map(|k| entries.get(k)?.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max()
    }

    /// Counts a failure against every key; returns the longest lock it started.
    pub fn failed(&self, keys: &[ThrottleKey], now: Instant) -> Option<Duration> {
        let mut entries = self.entries();
        if entries.len() > PRUNE_ABOVE {
            entries.retain(|_, f| f.locked_until.is_some_and(|u| u > now) || now.duration_since(f.last) < FORGET_AFTER);
        }
        let mut longest = None;
        for k in keys {
            let f = entries.entry(k.clone()).or_insert(Failures { count: 0, last: now, locked_until: None });
            if now.duration_since(f.last) >= FORGET_AFTER {
                f.count = 0;
            }
            f.count = f.count.saturating_add(1);
            f.last = now;
            if let Some(d) = lock_for(f.count) {
                f.locked_until = Some(now + d);
                longest = longest.max(Some(d));
            }
        }
        longest
    }

    /// Forgets the counters of `keys` (an administrator lifting a lockout). Returns how
    /// many there were.
    pub fn clear(&self, keys: &[ThrottleKey]) -> usize {
        let mut entries = self.entries();
        keys.iter().filter(|k| entries.remove(k).is_some()).count()
    }

    pub fn succeeded(&self, key: &ThrottleKey) {
        self.entries().remove(key);
    }
}

/// The counters a sign-in attempt touches. IPv6 clients are counted per /64, the block
/// one subscriber usually holds, so rotating addresses within it does not help.
pub fn throttle_keys(username: &str, client: Option<IpAddr>) -> Vec<ThrottleKey> {
    let user: String = username.trim().to_lowercase().chars().take(128).collect();
    let mut keys = vec![ThrottleKey::User(user)];
    if let Some(ip) = client {
        let ip = match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            v4 => v4,
        };
        keys.push(ThrottleKey::Client(ip));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_double_up_to_fifteen_minutes() {
        assert_eq!(lock_for(4), None);
        assert_eq!(lock_for(5), Some(Duration::from_secs(30)));
        assert_eq!(lock_for(6), Some(Duration::from_secs(60)));
        assert_eq!(lock_for(8), Some(Duration::from_secs(240)));
        assert_eq!(lock_for(10), Some(MAX_LOCK));
        assert_eq!(lock_for(40), Some(MAX_LOCK));
        assert_eq!(lock_for(u32::MAX), Some(MAX_LOCK));
    }

    #[test]
    fn throttle_locks_after_five_failures_and_success_resets_the_username() {
        let t = SignInThrottle::default();
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let keys = throttle_keys("alice", Some(ip));
        let start = Instant::now();
        for i in 0..4 {
            assert_eq!(t.failed(&keys, start), None, "failure {i}");
            assert_eq!(t.locked(&keys, start), None);
        }
        assert_eq!(t.failed(&keys, start), Some(FIRST_LOCK));
        assert_eq!(t.locked(&keys, start + Duration::from_secs(10)), Some(Duration::from_secs(20)));
        // The lock runs out; the next failure locks for twice as long.
        let later = start + Duration::from_secs(31);
        assert_eq!(t.locked(&keys, later), None);
        assert_eq!(t.failed(&keys, later), Some(Duration::from_secs(60)));

        // Success clears the username's counter, not the address's.
        t.succeeded(&keys[0]);
        let other_user = throttle_keys("alice", None);
        let after = later + Duration::from_secs(61);
        assert_eq!(t.locked(&other_user, after), None);
        assert_eq!(t.failed(&other_user, after), None);
        let same_ip = throttle_keys("bob", Some(ip));
        assert_eq!(t.failed(&same_ip, after), Some(Duration::from_secs(120)), "the address keeps counting");

        // A quiet hour forgets everything.
        let much_later = after + FORGET_AFTER + MAX_LOCK;
        assert_eq!(t.failed(&same_ip, much_later), None);
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let a = throttle_keys("x", Some("2001:db8:1:2:aaaa::1".parse().expect("ip")));
        let b = throttle_keys("x", Some("2001:db8:1:2:bbbb::9".parse().expect("ip")));
        let c = throttle_keys("x", Some("2001:db8:1:3::1".parse().expect("ip")));
        assert_eq!(a[1], b[1]);
        assert_ne!(a[1], c[1]);
        let mapped = throttle_keys("x", Some("::ffff:192.0.2.1".parse().expect("ip")));
        assert_eq!(mapped[1], ThrottleKey::Client("192.0.2.1".parse().expect("ip")));
    }
}
