//! The retention rule of docs/design.md, as a pure function of a topic's history, its policy
//! and the time:
//!
//! A topic keeps its newest `max_versions` versions and/or those younger than `max_age`.
//! A version outside the policy is purged — unless it is pinned, part of an active
//! rollout, or still the resolved version for one of its own scope selectors (the
//! selector itself, read as labels).
use crate::TopicHistory;
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeSet;

/// A topic's retention policy; with neither limit set, everything is kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub max_versions: Option<u64>,
    pub max_age: Option<Duration>,
}

impl RetentionPolicy {
    pub fn keeps_everything(&self) -> bool {
        self.max_versions.is_none() && self.max_age.is_none()
    }

    /// Is `version` (created at `created_at`, `latest` being the newest version) inside
    /// the policy? Both limits set: kept when either keeps it.
    pub fn keeps(&self, version: u64, created_at: DateTime<Utc>, latest: u64, now: DateTime<Utc>) -> bool {
        if self.keeps_everything() {
            return true;
        }
        let by_count = self.max_versions.is_some_and(|n| version + n > latest);
        let by_age = self.max_age.is_some_and(|age| now - created_at < age);
        by_count || by_age
    }
}

/// Why a version outside the policy is kept anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    Pinned,
    InRollout,
    StillResolved,
}

/// What retention decides for one live version outside the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionDecision {
    pub version: u64,
    /// `None`: purge it.
    pub kept: Option<Kept>,
}

/// The live (not yet purged) versions outside the policy, oldest first, each with the
/// reason it is kept or none (purge). `in_rollout`: versions of running or paused rollouts.
pub fn retention_decisions(
    history: &TopicHistory,
    policy: &RetentionPolicy,
    in_rollout: &BTreeSet<u64>,
    now: DateTime<Utc>,
) -> Vec<RetentionDecision> {
    if policy.keeps_everything() {
        return Vec::new();
    }
    let Some(&latest) = history.versions.keys().next_back() else { return Vec::new() };
    let index = history.current_index();
    let pinned: BTreeSet<u64> = index.pins().iter().map(|(_, v)| *v).collect();
    // Each version's scopes, gathered once: not a pass over every scope per version.
    let mut scopes_of: std::collections::BTreeMap<u64, Vec<&crate::ScopeEntry>> = Default::default();
    for s in &history.scopes {
        scopes_of.entry(s.version).or_default().push(s);
    }
    history
        .versions
        .values()
        .filter(|v| v.purged_at.is_none() && !policy.keeps(v.version, v.created_at, latest, now))
        .map(|v| {
            let still_resolved = || {
                scopes_of
                    .get(&v.version)
                    .into_iter()
                    .flatten()
                    .any(|s| index.resolve(&s.selector.as_labels()).is_some_and(|r| r.version == v.version))
            };
            let kept = if pinned.contains(&v.version) {
                Some(Kept::Pinned)
            } else if in_rollout.contains(&v.version) {
                Some(Kept::InRollout)
            } else if still_resolved() {
                Some(Kept::StillResolved)
            } else {
                None
            };
            RetentionDecision { version: v.version, kept }
        })
        .collect()
}

/// The versions to purge now, oldest first.
pub fn versions_to_purge(
    history: &TopicHistory,
    policy: &RetentionPolicy,
    in_rollout: &BTreeSet<u64>,
    now: DateTime<Utc>,
) -> Vec<u64> {
    retention_decisions(history, policy, in_rollout, now)
        .into_iter()
        .filter(|d| d.kept.is_none())
        .map(|d| d.version)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PinEntry, ScopeEntry, Selector, VersionEntry};
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("time")
    }

    /// Versions 1..=n, one a day, each released to `*`.
    fn history(n: u64) -> TopicHistory {
        let mut h = TopicHistory::default();
        for v in 1..=n {
            let at = t0() + Duration::days(v as i64);
            h.versions.insert(v, VersionEntry { version: v, created_at: at, purged_at: None });
            h.scopes.push(ScopeEntry { version: v, selector: Selector::all(), added_at: at });
        }
        h
    }

    fn sel(s: &str) -> Selector {
        Selector::parse(s).expect("selector")
    }

    fn count(n: u64) -> RetentionPolicy {
        RetentionPolicy { max_versions: Some(n), max_age: None }
    }

    #[test]
    fn no_policy_keeps_everything() {
        let h = history(10);
        assert!(
            versions_to_purge(&h, &RetentionPolicy::default(), &BTreeSet::new(), t0() + Duration::days(999)).is_empty()
        );
    }

    #[test]
    fn max_versions_keeps_the_newest_n() {
        let h = history(5);
        assert_eq!(versions_to_purge(&h, &count(2), &BTreeSet::new(), t0()), vec![1, 2, 3]);
        assert_eq!(versions_to_purge(&h, &count(5), &BTreeSet::new(), t0()), Vec::<u64>::new());
        assert_eq!(versions_to_purge(&h, &count(1), &BTreeSet::new(), t0()), vec![1, 2, 3, 4]);
    }

    #[test]
    fn max_age_keeps_the_young_and_time_is_a_parameter() {
        let h = history(5); // version v created at day v
        let age = RetentionPolicy { max_versions: None, max_age: Some(Duration::days(2)) };
        // At day 6: versions 5 (1 day old) and 4 (2 days old: not younger than 2 days) …
        assert_eq!(versions_to_purge(&h, &age, &BTreeSet::new(), t0() + Duration::days(6)), vec![1, 2, 3, 4]);
        // … a moment earlier version 4 was still young.
        let earlier = t0() + Duration::days(6) - Duration::seconds(1);
        assert_eq!(versions_to_purge(&h, &age, &BTreeSet::new(), earlier), vec![1, 2, 3]);
        // Long after, everything but the still-resolved newest goes.
        assert_eq!(versions_to_purge(&h, &age, &BTreeSet::new(), t0() + Duration::days(100)), vec![1, 2, 3, 4]);
    }

    #[test]
    fn both_limits_keep_what_either_keeps() {
        let h = history(6);
        let both = RetentionPolicy { max_versions: Some(2), max_age: Some(Duration::days(3)) };
        // Day 7: count keeps 5, 6; age keeps 5 (2 days), 6 (1 day), 4 (3 days? no: not younger).
        assert_eq!(versions_to_purge(&h, &both, &BTreeSet::new(), t0() + Duration::days(7)), vec![1, 2, 3, 4]);
        // Day 6: age keeps 4 (2 days old) as well.
        assert_eq!(versions_to_purge(&h, &both, &BTreeSet::new(), t0() + Duration::days(6)), vec![1, 2, 3]);
    }

    #[test]
    fn a_pinned_version_is_kept() {
        let mut h = history(5);
        h.pins.push(PinEntry {
            id: 1,
            selector: sel("region=eu"),
            version: 2,
            created_at: t0() + Duration::days(9),
            removed_at: None,
        });
        let d = retention_decisions(&h, &count(1), &BTreeSet::new(), t0());
        assert_eq!(d.iter().find(|d| d.version == 2).and_then(|d| d.kept), Some(Kept::Pinned));
        assert_eq!(versions_to_purge(&h, &count(1), &BTreeSet::new(), t0()), vec![1, 3, 4]);
        // A removed pin protects nothing.
        h.pins[0].removed_at = Some(t0() + Duration::days(10));
        assert_eq!(versions_to_purge(&h, &count(1), &BTreeSet::new(), t0()), vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_version_in_an_active_rollout_is_kept() {
        let h = history(5);
        let rolling = BTreeSet::from([3]);
        let d = retention_decisions(&h, &count(1), &rolling, t0());
        assert_eq!(d.iter().find(|d| d.version == 3).and_then(|d| d.kept), Some(Kept::InRollout));
        assert_eq!(versions_to_purge(&h, &count(1), &rolling, t0()), vec![1, 2, 4]);
    }

    #[test]
    fn a_version_still_resolved_for_one_of_its_own_selectors_is_kept() {
        let mut h = history(3);
        // Version 2 also went to region=eu; version 3 (newest) only to cluster=canary.
        h.scopes.push(ScopeEntry { version: 2, selector: sel("region=eu"), added_at: t0() + Duration::days(2) });
        h.scopes.retain(|s| !(s.version == 3 && s.selector.is_all()));
        h.scopes.push(ScopeEntry { version: 3, selector: sel("cluster=canary"), added_at: t0() + Duration::days(3) });
        // `*` still resolves to 2 (3 went to the canary only): 2 is kept; 1 is not
        // resolved by its own `*` any more.
        let d = retention_decisions(&h, &count(1), &BTreeSet::new(), t0());
        assert_eq!(
            d,
            vec![
                RetentionDecision { version: 1, kept: None },
                RetentionDecision { version: 2, kept: Some(Kept::StillResolved) },
            ]
        );
        // Once 3 reaches everyone, `*` and region=eu resolve to 3: 2 goes.
        h.scopes.push(ScopeEntry { version: 3, selector: Selector::all(), added_at: t0() + Duration::days(4) });
        assert_eq!(versions_to_purge(&h, &count(1), &BTreeSet::new(), t0()), vec![1, 2]);
    }

    #[test]
    fn purged_versions_are_not_purged_again() {
        let mut h = history(4);
        if let Some(v) = h.versions.get_mut(&1) {
            v.purged_at = Some(t0() + Duration::days(5));
        }
        assert_eq!(versions_to_purge(&h, &count(1), &BTreeSet::new(), t0()), vec![2, 3]);
    }
}
