//! The resolution rule of docs/design.md, at any point in time, plus a precomputed index
//! for answering "now" quickly on the poll path.
//!
//! For a topic and consumer labels L at time t:
//! 1. active pins matching L: the most specific wins, ties to the most recently created;
//! 2. otherwise the highest non-purged version with a scope matching L;
//! 3. otherwise nothing.
use crate::{Labels, Selector};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub version: u64,
    pub pinned: bool,
}

/// Whether a consumer holding `held` should be told about `resolved`: a pinned result
/// whenever it differs, an unpinned one only when it is newer. Consumers therefore never
/// move backwards except by a pin.
pub fn is_update(held: Option<u64>, resolved: Resolution) -> bool {
    match held {
        None => true,
        Some(h) if resolved.pinned => h != resolved.version,
        Some(h) => resolved.version > h,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionEntry {
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub purged_at: Option<DateTime<Utc>>,
}

impl VersionEntry {
    fn live_at(&self, t: DateTime<Utc>) -> bool {
        self.created_at <= t && self.purged_at.is_none_or(|p| p > t)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeEntry {
    pub version: u64,
    pub selector: Selector,
    pub added_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinEntry {
    /// Database id: breaks ties between pins created in the same instant (later id = newer).
    pub id: i64,
    pub selector: Selector,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub removed_at: Option<DateTime<Utc>>,
}

impl PinEntry {
    fn active_at(&self, t: DateTime<Utc>) -> bool {
        self.created_at <= t && self.removed_at.is_none_or(|r| r > t)
    }

    /// Ordering key: more specific first, then newer first.
    fn precedence(&self) -> (usize, DateTime<Utc>, i64) {
        (self.selector.specificity(), self.created_at, self.id)
    }
}

/// Everything that resolution depends on for one topic: its versions, the append-only
/// scope history and every pin ever made (removed ones included, for time travel).
#[derive(Clone, Debug, Default)]
pub struct TopicHistory {
    pub versions: BTreeMap<u64, VersionEntry>,
    pub scopes: Vec<ScopeEntry>,
    pub pins: Vec<PinEntry>,
}

impl TopicHistory {
    /// What a consumer with `labels` saw at time `at`.
    pub fn resolve_at(&self, labels: &Labels, at: DateTime<Utc>) -> Option<Resolution> {
        let pin =
            self.pins.iter().filter(|p| p.active_at(at) && p.selector.matches(labels)).max_by_key(|p| p.precedence());
        if let Some(p) = pin {
            return Some(Resolution { version: p.version, pinned: true });
        }
        self.scopes
            .iter()
            .filter(|s| s.added_at <= at && s.selector.matches(labels))
            .filter(|s| self.versions.get(&s.version).is_some_and(|v| v.live_at(at)))
            .map(|s| s.version)
            .max()
            .map(|version| Resolution { version, pinned: false })
    }

    /// The index that answers "now" (everything recorded so far applies).
    pub fn current_index(&self) -> CurrentIndex {
        CurrentIndex::build(self)
    }
}

/// The state of a topic as it stands now, precomputed for the poll path: the active pins
/// in precedence order, and for each distinct scope selector the highest live version
/// released to it. Resolution is then a scan over a handful of selectors.
#[derive(Clone, Debug, Default)]
pub struct CurrentIndex {
    pins: Vec<(Selector, u64)>,
    best_by_selector: Vec<(Selector, u64)>,
}

impl CurrentIndex {
    pub fn build(h: &TopicHistory) -> Self {
        let mut active: Vec<&PinEntry> = h.pins.iter().filter(|p| p.removed_at.is_none()).collect();
        active.sort_by_key(|p| std::cmp::Reverse(p.precedence()));
        let mut best: HashMap<&Selector, u64> = HashMap::new();
        for s in &h.scopes {
            if h.versions.get(&s.version).is_some_and(|v| v.purged_at.is_none()) {
                let e = best.entry(&s.selector).or_insert(s.version);
                *e = (*e).max(s.version);
            }
        }
        let mut best_by_selector: Vec<(Selector, u64)> = best.into_iter().map(|(s, v)| (s.clone(), v)).collect();
        // Highest version first, so the first match is the answer.
        best_by_selector.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Self { pins: active.into_iter().map(|p| (p.selector.clone(), p.version)).collect(), best_by_selector }
    }

    pub fn resolve(&self, labels: &Labels) -> Option<Resolution> {
        self.resolve_matched(labels).map(|(r, _)| r)
    }

    /// The resolution and the selector that decided it (the pin's, or the scope's).
    pub fn resolve_matched(&self, labels: &Labels) -> Option<(Resolution, &Selector)> {
        if let Some((s, v)) = self.pins.iter().find(|(s, _)| s.matches(labels)) {
            return Some((Resolution { version: *v, pinned: true }, s));
        }
        self.best_by_selector
            .iter()
            .find(|(s, _)| s.matches(labels))
            .map(|(s, v)| (Resolution { version: *v, pinned: false }, s))
    }

    pub fn active_pins(&self) -> usize {
        self.pins.len()
    }

    /// Every version `resolve` can return now (each once): the ones worth keeping hot.
    pub fn versions(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.pins.iter().chain(&self.best_by_selector).map(|(_, v)| *v).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The active pins as (selector, version), highest precedence first.
    pub fn pins(&self) -> &[(Selector, u64)] {
        &self.pins
    }

    /// This index after `version` — newer than every version of the topic — is released
    /// to `selectors` (a publish): what `build` gives for the history with those scopes
    /// added, without the history.
    pub fn with_released(&self, version: u64, selectors: &[Selector]) -> Self {
        let mut best = self.best_by_selector.clone();
        for s in selectors {
            match best.iter_mut().find(|(b, _)| b == s) {
                Some(e) => e.1 = e.1.max(version),
                None => best.push((s.clone(), version)),
            }
        }
        best.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Self { pins: self.pins.clone(), best_by_selector: best }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // proptest bodies are not `#[test]` fns to clippy
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use proptest::prelude::*;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).single().expect("valid time")
    }
    fn sel(s: &str) -> Selector {
        Selector::parse(s).expect("selector")
    }
    fn labels(s: &str) -> Labels {
        Labels::parse(s).expect("labels")
    }

    /// A small builder: versions published at second n*10, each with the given scopes.
    #[derive(Default)]
    struct H(TopicHistory);
    impl H {
        fn version(mut self, n: u64, scopes: &[&str]) -> Self {
            let at = t(n as i64 * 10);
            self.0.versions.insert(n, VersionEntry { version: n, created_at: at, purged_at: None });
            for s in scopes {
                self.0.scopes.push(ScopeEntry { version: n, selector: sel(s), added_at: at });
            }
            self
        }
        fn scope(mut self, n: u64, s: &str, at: i64) -> Self {
            self.0.scopes.push(ScopeEntry { version: n, selector: sel(s), added_at: t(at) });
            self
        }
        fn purge(mut self, n: u64, at: i64) -> Self {
            self.0.versions.get_mut(&n).expect("version").purged_at = Some(t(at));
            self
        }
        fn pin(mut self, id: i64, s: &str, v: u64, at: i64, removed: Option<i64>) -> Self {
            self.0.pins.push(PinEntry {
                id,
                selector: sel(s),
                version: v,
                created_at: t(at),
                removed_at: removed.map(t),
            });
            self
        }
        fn now(&self, l: &str) -> Option<Resolution> {
            let a = self.0.resolve_at(&labels(l), t(1_000_000));
            let b = self.0.current_index().resolve(&labels(l));
            assert_eq!(a, b, "index and history disagree for {l}");
            a
        }
    }
    fn unpinned(v: u64) -> Option<Resolution> {
        Some(Resolution { version: v, pinned: false })
    }
    fn pinned(v: u64) -> Option<Resolution> {
        Some(Resolution { version: v, pinned: true })
    }

    #[test]
    fn nothing_without_versions_or_matching_scope() {
        assert_eq!(H::default().now("region=eu"), None);
        let h = H::default().version(1, &["region=us"]);
        assert_eq!(h.now("region=eu"), None);
        let h = H::default().version(1, &[]);
        assert_eq!(h.now(""), None, "a version with no scope is released to nobody");
    }

    #[test]
    fn highest_scoped_version_wins() {
        let h = H::default().version(1, &["*"]).version(2, &["region=eu"]).version(3, &["cluster=canary"]);
        assert_eq!(h.now("region=us"), unpinned(1));
        assert_eq!(h.now("region=eu"), unpinned(2));
        assert_eq!(h.now("region=eu,cluster=canary"), unpinned(3));
        assert_eq!(h.now("cluster=canary"), unpinned(3));
    }

    #[test]
    fn scope_added_later_widens_release() {
        let h = H::default().version(1, &["*"]).version(2, &["cluster=canary"]).scope(2, "*", 100);
        assert_eq!(h.now("region=us"), unpinned(2));
        assert_eq!(h.0.resolve_at(&labels("region=us"), t(50)), unpinned(1), "before the scope was added");
        assert_eq!(h.0.resolve_at(&labels("cluster=canary"), t(50)), unpinned(2));
    }

    #[test]
    fn purged_versions_are_skipped() {
        let h = H::default().version(1, &["*"]).version(2, &["*"]).purge(2, 100);
        assert_eq!(h.now(""), unpinned(1));
        assert_eq!(h.0.resolve_at(&Labels::default(), t(99)), unpinned(2), "before the purge");
    }

    #[test]
    fn pin_overrides_newer_and_older() {
        let h = H::default().version(1, &["*"]).version(2, &["*"]).version(3, &["*"]).pin(1, "region=eu", 1, 40, None);
        assert_eq!(h.now("region=eu"), pinned(1));
        assert_eq!(h.now("region=us"), unpinned(3));
        // A pin can also force a version not released to the pinned selector.
        let h = H::default().version(1, &["*"]).version(2, &["cluster=canary"]).pin(1, "region=eu", 2, 40, None);
        assert_eq!(h.now("region=eu"), pinned(2));
    }

    #[test]
    fn pin_overrides_later_publishes() {
        let h = H::default().version(1, &["*"]).pin(1, "*", 1, 15, None).version(2, &["*"]).version(3, &["*"]);
        assert_eq!(h.now("region=eu"), pinned(1));
    }

    #[test]
    fn most_specific_pin_wins_then_newest() {
        let h = H::default()
            .version(1, &["*"])
            .version(2, &["*"])
            .version(3, &["*"])
            .pin(1, "region=eu", 1, 40, None)
            .pin(2, "region=eu,app=checkout", 2, 35, None)
            .pin(3, "app=checkout", 3, 50, None);
        assert_eq!(h.now("region=eu,app=checkout"), pinned(2), "two keys beat one, even older");
        assert_eq!(h.now("region=eu,app=search"), pinned(1));
        assert_eq!(h.now("region=us,app=checkout"), pinned(3));
        // Same specificity: the most recently created wins.
        let h = H::default()
            .version(1, &["*"])
            .version(2, &["*"])
            .pin(1, "region=eu", 1, 40, None)
            .pin(2, "app=x", 2, 45, None);
        assert_eq!(h.now("region=eu,app=x"), pinned(2));
        let h = H::default()
            .version(1, &["*"])
            .version(2, &["*"])
            .pin(1, "region=eu", 1, 45, None)
            .pin(2, "app=x", 2, 40, None);
        assert_eq!(h.now("region=eu,app=x"), pinned(1));
        // Same instant: the later id is the newer pin.
        let h = H::default()
            .version(1, &["*"])
            .version(2, &["*"])
            .pin(7, "region=eu", 1, 45, None)
            .pin(8, "app=x", 2, 45, None);
        assert_eq!(h.now("region=eu,app=x"), pinned(2));
    }

    #[test]
    fn removed_pin_no_longer_applies_but_did_in_the_past() {
        let h = H::default().version(1, &["*"]).version(2, &["*"]).pin(1, "*", 1, 25, Some(60));
        assert_eq!(h.now(""), unpinned(2));
        assert_eq!(h.0.resolve_at(&Labels::default(), t(30)), pinned(1));
        assert_eq!(h.0.resolve_at(&Labels::default(), t(60)), unpinned(2), "removed at 60: inactive from 60 on");
        assert_eq!(h.0.resolve_at(&Labels::default(), t(24)), unpinned(2));
    }

    #[test]
    fn time_travel_sees_versions_as_they_stood() {
        let h = H::default().version(1, &["*"]).version(2, &["*"]);
        assert_eq!(h.0.resolve_at(&Labels::default(), t(5)), None);
        assert_eq!(h.0.resolve_at(&Labels::default(), t(10)), unpinned(1));
        assert_eq!(h.0.resolve_at(&Labels::default(), t(19)), unpinned(1));
        assert_eq!(h.0.resolve_at(&Labels::default(), t(20)), unpinned(2));
    }

    #[test]
    fn update_rule_never_backwards_except_by_pin() {
        assert!(is_update(None, Resolution { version: 3, pinned: false }));
        assert!(is_update(Some(2), Resolution { version: 3, pinned: false }));
        assert!(!is_update(Some(3), Resolution { version: 3, pinned: false }));
        assert!(!is_update(Some(4), Resolution { version: 3, pinned: false }), "unpinned never goes back");
        assert!(is_update(Some(4), Resolution { version: 3, pinned: true }), "a pin moves back");
        assert!(is_update(Some(2), Resolution { version: 3, pinned: true }));
        assert!(!is_update(Some(3), Resolution { version: 3, pinned: true }));
    }

    // ---- properties ----

    #[derive(Debug, Clone)]
    enum Op {
        Publish(Vec<usize>),
        AddScope { back: usize, sel: usize },
        Purge { back: usize },
    }

    const SELECTORS: [&str; 6] = ["*", "region=eu", "region=us", "app=a", "region=eu,app=a", "cluster=c1"];
    const CONSUMERS: [&str; 5] = ["region=eu,app=a", "region=us,app=a", "region=eu,app=b", "cluster=c1", ""];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => proptest::collection::vec(0..SELECTORS.len(), 0..3).prop_map(Op::Publish),
            2 => (0usize..5, 0..SELECTORS.len()).prop_map(|(back, sel)| Op::AddScope { back, sel }),
            1 => (0usize..5).prop_map(|back| Op::Purge { back }),
        ]
    }

    fn apply(ops: &[Op]) -> (TopicHistory, Vec<DateTime<Utc>>) {
        let mut h = TopicHistory::default();
        let mut times = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let at = t(i as i64);
            let latest = h.versions.keys().next_back().copied().unwrap_or(0);
            match op {
                Op::Publish(sels) => {
                    let n = latest + 1;
                    h.versions.insert(n, VersionEntry { version: n, created_at: at, purged_at: None });
                    for &s in sels {
                        h.scopes.push(ScopeEntry { version: n, selector: sel(SELECTORS[s]), added_at: at });
                    }
                }
                Op::AddScope { back, sel: s } if latest > *back as u64 => {
                    let v = latest - *back as u64;
                    h.scopes.push(ScopeEntry { version: v, selector: sel(SELECTORS[*s]), added_at: at });
                }
                Op::Purge { back } if latest > *back as u64 + 1 => {
                    // Retention only purges old versions; model that (never the newest two).
                    let v = latest - *back as u64 - 1;
                    if let Some(e) = h.versions.get_mut(&v) {
                        e.purged_at.get_or_insert(at);
                    }
                }
                _ => {}
            }
            times.push(at);
        }
        (h, times)
    }

    proptest! {
        /// Without pins or purges, whatever the order of publishes and scope additions, the
        /// version a consumer resolves to never decreases over time.
        #[test]
        fn without_pins_resolution_never_decreases(ops in proptest::collection::vec(op(), 1..40)) {
            let ops: Vec<Op> = ops.into_iter().filter(|o| !matches!(o, Op::Purge { .. })).collect();
            let (h, times) = apply(&ops);
            for c in CONSUMERS {
                let l = labels(c);
                let mut last = None;
                for &at in &times {
                    let r = h.resolve_at(&l, at).map(|r| r.version);
                    prop_assert!(r >= last, "{c}: went from {last:?} to {r:?} at {at}");
                    last = r;
                }
            }
        }

        /// The precomputed index gives the same answer as the full rule, with pins too.
        #[test]
        fn index_agrees_with_history(ops in proptest::collection::vec(op(), 1..40),
                                     pins in proptest::collection::vec((0..SELECTORS.len(), 1u64..10, any::<bool>()), 0..4)) {
            let (mut h, _) = apply(&ops);
            let latest = h.versions.keys().next_back().copied().unwrap_or(0);
            for (i, (s, v, removed)) in pins.into_iter().enumerate() {
                if latest == 0 { break; }
                let at = t(100 + i as i64);
                h.pins.push(PinEntry { id: i as i64, selector: sel(SELECTORS[s]), version: v.min(latest), created_at: at,
                    removed_at: removed.then(|| at + Duration::seconds(1)) });
            }
            let idx = h.current_index();
            for c in CONSUMERS {
                let l = labels(c);
                prop_assert_eq!(idx.resolve(&l), h.resolve_at(&l, t(10_000)));
            }
        }

        /// A publish applied to the index (`with_released`, what the writing server does)
        /// answers like the index built from the history with that publish in it.
        #[test]
        fn released_index_agrees_with_rebuilt(ops in proptest::collection::vec(op(), 0..40),
                                              pins in proptest::collection::vec((0..SELECTORS.len(), 1u64..10), 0..3),
                                              new_scopes in proptest::collection::vec(0..SELECTORS.len(), 1..3)) {
            let (mut h, _) = apply(&ops);
            let latest = h.versions.keys().next_back().copied().unwrap_or(0);
            for (i, (s, v)) in pins.into_iter().enumerate() {
                if latest == 0 { break; }
                h.pins.push(PinEntry { id: i as i64, selector: sel(SELECTORS[s]), version: v.min(latest),
                    created_at: t(100 + i as i64), removed_at: None });
            }
            let before = h.current_index();
            let n = latest + 1;
            let selectors: Vec<Selector> = new_scopes.iter().map(|&s| sel(SELECTORS[s])).collect();
            h.versions.insert(n, VersionEntry { version: n, created_at: t(200), purged_at: None });
            for s in &selectors {
                h.scopes.push(ScopeEntry { version: n, selector: s.clone(), added_at: t(200) });
            }
            let rebuilt = h.current_index();
            let released = before.with_released(n, &selectors);
            prop_assert_eq!(released.versions(), rebuilt.versions());
            for c in CONSUMERS {
                let l = labels(c);
                prop_assert_eq!(released.resolve(&l), rebuilt.resolve(&l), "{}", c);
            }
        }

        /// A consumer that applies every update it is told about ends at the resolved
        /// version, and an unpinned update always moves it forward.
        #[test]
        fn following_updates_converges(ops in proptest::collection::vec(op(), 1..40)) {
            let (h, times) = apply(&ops);
            for c in CONSUMERS {
                let l = labels(c);
                let mut held: Option<u64> = None;
                for &at in &times {
                    if let Some(r) = h.resolve_at(&l, at) {
                        if is_update(held, r) {
                            prop_assert!(r.pinned || held < Some(r.version));
                            held = Some(r.version);
                        }
                    }
                }
                if let Some(r) = h.resolve_at(&l, *times.last().unwrap()) {
                    if !r.pinned {
                        prop_assert!(held >= Some(r.version));
                    }
                }
            }
        }
    }
}
