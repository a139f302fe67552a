//! Failed sign-ins per (username, client address) pair and per client address, with locks
//! that grow and are capped. An attempt is reserved before its password is checked, so a
//! parallel burst gets no more guesses than the lock allows. Time is a parameter, so the
//! rules are tested without waiting.
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
/// What a refused attempt is told to wait while others of its keys are being checked.
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// A counter. A username is counted only together with the address it is tried from:
/// one address failing for `admin` locks `admin` for that address, not for everyone.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ThrottleKey {
    /// A username (lower case) tried from an address (`None`: no address known).
    UserClient(String, Option<IpAddr>),
    Client(IpAddr),
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
    /// Attempts reserved and still being checked.
    pending: u32,
}

/// How long the `count`-th consecutive failure locks: from the fifth on, 30 s doubling
/// per failure, at most 15 minutes.
fn lock_for(count: u32) -> Option<Duration> {
    let over = count.checked_sub(LOCK_AFTER_FAILURES)?;
    let factor = 1u32.checked_shl(over).unwrap_or(u32::MAX);
    Some(FIRST_LOCK.checked_mul(factor).unwrap_or(MAX_LOCK).min(MAX_LOCK))
}

/// How many attempts a counter lets be checked at once: up to the lock, and after a lock
/// ran out one (whose failure locks again, longer).
fn allowance(count: u32) -> u32 {
    LOCK_AFTER_FAILURES.checked_sub(count).filter(|n| *n > 0).unwrap_or(1)
}

/// Failed sign-ins, in this server's memory (a restart forgets them; several replicas
/// each count their own).
#[derive(Default)]
pub struct SignInThrottle {
    entries: Mutex<HashMap<ThrottleKey, Failures>>,
    /// Attempts let through to a password check since start (what a burst could try).
    checked: std::sync::atomic::AtomicU64,
}

/// A reserved sign-in attempt: say how it ended with `failed` or `succeeded`; dropped
/// without either (the request went away), it is given back uncounted.
pub struct Attempt<'a> {
    throttle: &'a SignInThrottle,
    keys: Vec<ThrottleKey>,
    done: bool,
}

impl Attempt<'_> {
    /// Counts the failure against every key; returns the longest lock it started.
    pub fn failed(mut self, now: Instant) -> Option<Duration> {
        self.done = true;
        self.throttle.fail(&self.keys, now)
    }

    /// The pair's counter starts over (the address keeps counting its failures).
    pub fn succeeded(mut self) {
        self.done = true;
        let mut entries = self.throttle.entries();
        for k in &self.keys {
            if let Some(f) = entries.get_mut(k) {
                f.pending = f.pending.saturating_sub(1);
            }
        }
        if let Some(k @ ThrottleKey::UserClient(..)) = self.keys.first() {
            entries.remove(k);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut entries = self.throttle.entries();
            for k in &self.keys {
                if let Some(f) = entries.get_mut(k) {
                    f.pending = f.pending.saturating_sub(1);
                }
            }
        }
    }
}

impl SignInThrottle {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<ThrottleKey, Failures>> {
        // A panic elsewhere while holding the lock leaves the counters usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many attempts were let through to a password check since start.
    pub fn checked(&self) -> u64 {
        self.checked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How long until none of `keys` is locked, if one is.
    #[cfg(test)]
    pub fn locked(&self, keys: &[ThrottleKey], now: Instant) -> Option<Duration> {
        let entries = self.entries();
        keys.iter()
            .filter_map(|k| entries.get(k)?.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max()
    }

    /// Reserves an attempt on every key before its password is checked, or says how
    /// long to wait: a key is locked, or as many attempts as it allows are already being
    /// checked (so a parallel burst gets no more guesses than sequential ones).
    pub fn begin(&self, keys: Vec<ThrottleKey>, now: Instant) -> Result<Attempt<'_>, Duration> {
        let mut entries = self.entries();
        if entries.len() > PRUNE_ABOVE {
            entries.retain(|_, f| {
                f.pending > 0 || f.locked_until.is_some_and(|u| u > now) || now.duration_since(f.last) < FORGET_AFTER
            });
        }
        let mut wait: Option<Duration> = None;
        for k in &keys {
            let Some(f) = entries.get_mut(k) else { continue };
            if f.pending == 0 && now.duration_since(f.last) >= FORGET_AFTER {
                f.count = 0;
            }
            if let Some(until) = f.locked_until.filter(|u| *u > now) {
                wait = wait.max(Some(until - now));
            } else if f.pending >= allowance(f.count) {
                wait = wait.max(Some(BUSY_RETRY));
            }
        }
        if let Some(w) = wait {
            return Err(w);
        }
        for k in &keys {
            let f =
                entries.entry(k.clone()).or_insert(Failures { count: 0, last: now, locked_until: None, pending: 0 });
            f.pending += 1;
        }
        self.checked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Attempt { throttle: self, keys, done: false })
    }

    fn fail(&self, keys: &[ThrottleKey], now: Instant) -> Option<Duration> {
        let mut entries = self.entries();
        let mut longest = None;
        for k in keys {
            let f =
                entries.entry(k.clone()).or_insert(Failures { count: 0, last: now, locked_until: None, pending: 1 });
            f.pending = f.pending.saturating_sub(1);
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

    /// Forgets counters (an administrator lifting a lockout): those of a username (from
    /// every address) and/or of an address (and every username tried from it). Returns
    /// how many there were.
    pub fn clear(&self, username: Option<&str>, client: Option<IpAddr>) -> usize {
        let user = username.map(normalise_username);
        let client = client.map(client_block);
        let mut entries = self.entries();
        let before = entries.len();
        entries.retain(|k, _| match k {
            ThrottleKey::UserClient(u, c) => {
                let user_matches = user.as_ref().is_none_or(|want| want == u);
                let client_matches = client.is_none_or(|want| *c == Some(want));
                !(user_matches && client_matches)
            }
            ThrottleKey::Client(c) => client != Some(*c),
        });
        before - entries.len()
    }
}

fn normalise_username(username: &str) -> String {
    username.trim().to_lowercase().chars().take(128).collect()
}

/// IPv6 clients are counted per /64, the block one subscriber usually holds, so rotating
/// addresses within it does not help.
fn client_block(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The counters a sign-in attempt touches: the (username, address) pair first, then the
/// address.
pub fn throttle_keys(username: &str, client: Option<IpAddr>) -> Vec<ThrottleKey> {
    let client = client.map(client_block);
    let mut keys = vec![ThrottleKey::UserClient(normalise_username(username), client)];
    if let Some(ip) = client {
        keys.push(ThrottleKey::Client(ip));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(t: &SignInThrottle, keys: &[ThrottleKey], now: Instant) -> Option<Duration> {
        t.begin(keys.to_vec(), now).expect("not locked").failed(now)
    }

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
    fn throttle_locks_after_five_failures_and_success_resets_the_pair() {
        let t = SignInThrottle::default();
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let keys = throttle_keys("alice", Some(ip));
        let start = Instant::now();
        for i in 0..4 {
            assert_eq!(fail(&t, &keys, start), None, "failure {i}");
            assert_eq!(t.locked(&keys, start), None);
        }
        assert_eq!(fail(&t, &keys, start), Some(FIRST_LOCK));
        assert_eq!(t.locked(&keys, start + Duration::from_secs(10)), Some(Duration::from_secs(20)));
        assert!(t.begin(keys.clone(), start + Duration::from_secs(10)).is_err(), "locked: nothing is checked");
        // The lock runs out; the next failure locks for twice as long.
        let later = start + Duration::from_secs(31);
        assert_eq!(t.locked(&keys, later), None);
        assert_eq!(fail(&t, &keys, later), Some(Duration::from_secs(60)));

        // Success clears the pair's counter, not the address's.
        let after = later + Duration::from_secs(61);
        t.begin(keys.clone(), after).expect("unlocked").succeeded();
        let same_ip = throttle_keys("bob", Some(ip));
        assert_eq!(fail(&t, &same_ip, after), Some(Duration::from_secs(120)), "the address keeps counting");
        // The same username from another address was never locked.
        let elsewhere = throttle_keys("alice", Some("192.0.2.8".parse().expect("ip")));
        assert_eq!(t.locked(&elsewhere, after), None);

        // A quiet hour forgets everything.
        let much_later = after + FORGET_AFTER + MAX_LOCK;
        assert_eq!(fail(&t, &same_ip, much_later), None);
    }

    #[test]
    fn a_parallel_burst_gets_no_more_checks_than_the_lock_allows() {
        let t = SignInThrottle::default();
        let keys = throttle_keys("admin", Some("203.0.113.1".parse().expect("ip")));
        let now = Instant::now();
        // Twenty attempts at once: five are reserved, the others wait for them.
        let attempts: Vec<_> = (0..20).filter_map(|_| t.begin(keys.clone(), now).ok()).collect();
        assert_eq!(attempts.len(), 5);
        assert_eq!(t.checked(), 5);
        for a in attempts {
            a.failed(now);
        }
        assert_eq!(t.locked(&keys, now), Some(FIRST_LOCK));
        // An attempt given back uncounted (the request went away) frees its reservation.
        let t = SignInThrottle::default();
        drop(t.begin(keys.clone(), now).expect("free"));
        let attempts: Vec<_> = (0..20).filter_map(|_| t.begin(keys.clone(), now).ok()).collect();
        assert_eq!(attempts.len(), 5);
    }

    #[test]
    fn clearing_by_username_or_address() {
        let t = SignInThrottle::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().expect("ip"), "192.0.2.2".parse().expect("ip"));
        let now = Instant::now();
        for _ in 0..5 {
            fail(&t, &throttle_keys("admin", Some(a)), now);
            fail(&t, &throttle_keys("admin", Some(b)), now);
        }
        // The username from both addresses: its pairs, not the addresses.
        assert_eq!(t.clear(Some("Admin"), None), 2);
        assert!(t.locked(&throttle_keys("admin", Some(a)), now).is_some(), "the address is still locked");
        // An address: its own counter and the pairs tried from it.
        fail(&t, &[ThrottleKey::UserClient("admin".into(), Some(a))], now);
        assert_eq!(t.clear(None, Some(a)), 2);
        assert_eq!(t.locked(&throttle_keys("admin", Some(a)), now), None);
        assert!(t.locked(&throttle_keys("admin", Some(b)), now).is_some());
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let a = throttle_keys("x", Some("2001:db8:1:2:aaaa::1".parse().expect("ip")));
        let b = throttle_keys("x", Some("2001:db8:1:2:bbbb::9".parse().expect("ip")));
        let c = throttle_keys("x", Some("2001:db8:1:3::1".parse().expect("ip")));
        assert_eq!(a, b);
        assert_ne!(a[1], c[1]);
        let mapped = throttle_keys("x", Some("::ffff:192.0.2.1".parse().expect("ip")));
        assert_eq!(mapped[1], ThrottleKey::Client("192.0.2.1".parse().expect("ip")));
    }
}
