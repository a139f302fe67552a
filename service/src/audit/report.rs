//! What the consumer audit records: one poll's report (`Reporter`, `Seen`), the
//! observation kept per (topic, instance) and how a newer one folds into it, and who a
//! report counts against (`source_of`).
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;

/// New instances one source (a token, or an anonymous client's address) may add to one
/// topic's audit while its earlier ones are still in memory: made-up instance names
/// from one address cannot fill the audit. Past it the poll is answered, not recorded.
pub const MAX_INSTANCES_PER_SOURCE: u32 = 1_000;

#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub version: u64,
    pub ok: bool,
    pub error: Option<String>,
    /// The region that served the download (docs/regions.md), as the client reported it.
    pub region: Option<String>,
    pub at: DateTime<Utc>,
}

/// The longest failure message the audit keeps, in characters.
pub const MAX_ERROR_CHARS: usize = 2000;

impl Applied {
    /// A client's report (direct or through a relay) as the audit keeps it, at `at`.
    pub fn from_report(a: &imprint_protocol::Applied, at: DateTime<Utc>) -> Self {
        Applied {
            version: a.version,
            ok: a.ok,
            error: a.error.as_ref().map(|e| e.chars().take(MAX_ERROR_CHARS).collect()),
            region: a.region.clone(),
            at,
        }
    }
}

/// What one poll told us about one (topic, instance).
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub labels: Arc<BTreeMap<String, String>>,
    pub version: Option<u64>,
    pub version_since: DateTime<Utc>,
    pub expected: Option<u64>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub applied: Option<Applied>,
    /// When the held version was published (for the propagation metric; not stored).
    pub published_at: Option<DateTime<Utc>>,
    /// Who reported: `token:<name>` for an authenticated consumer, `None` when anonymous.
    pub principal: Option<Arc<str>>,
    /// The relay instance the report came through (`None`: a direct poll).
    pub relayed_by: Option<Arc<str>>,
}

/// Who reported, once per poll: the node, its labels, the caller and the time.
pub struct Reporter<'a> {
    pub instance: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// `token:<name>` for an authenticated consumer, `None` when anonymous.
    pub principal: Option<&'a str>,
    /// The relay the report came through (`None`: a direct poll).
    pub relayed_by: Option<&'a str>,
    pub at: DateTime<Utc>,
}

/// Who a report counts against for `MAX_INSTANCES_PER_SOURCE`: the principal when there
/// is one, else the client's address (`ip:<addr>`), else one shared anonymous source.
pub fn source_of(principal: Option<&str>, client: Option<std::net::IpAddr>) -> Arc<str> {
    match (principal, client) {
        (Some(p), _) => Arc::from(p),
        (None, Some(ip)) => Arc::from(format!("ip:{ip}")),
        (None, None) => Arc::from("anonymous"),
    }
}

/// What a poll said about one topic.
#[derive(Clone, Debug)]
pub struct Seen {
    pub topic_id: i64,
    /// The version the node holds.
    pub version: Option<u64>,
    /// The version it resolves to now.
    pub expected: Option<u64>,
    pub applied: Option<Applied>,
    /// When the held version was published (for the propagation metric).
    pub published_at: Option<DateTime<Utc>>,
}

pub type Key = (i64, String);

impl Observation {
    pub(super) fn new(
        who: &Reporter<'_>,
        s: Seen,
        labels: Arc<BTreeMap<String, String>>,
        principal: Option<Arc<str>>,
    ) -> Self {
        Observation {
            labels,
            version: s.version,
            version_since: who.at,
            expected: s.expected,
            first_seen: who.at,
            last_seen: who.at,
            applied: s.applied,
            published_at: s.published_at,
            principal,
            relayed_by: who.relayed_by.map(Arc::from),
        }
    }

    /// Is this report what the entry already says (so only `last_seen` moves)?
    pub(super) fn same_report(&self, who: &Reporter<'_>, s: &Seen) -> bool {
        self.version == s.version
            && self.expected == s.expected
            && self.principal.as_deref() == who.principal
            && self.relayed_by.as_deref() == who.relayed_by
            && s.applied.as_ref().is_none_or(|a| {
                self.applied
                    .as_ref()
                    .is_some_and(|b| (b.version, b.ok, &b.error, &b.region) == (a.version, a.ok, &a.error, &a.region))
            })
            && *self.labels == *who.labels
    }

    /// Folds a newer observation into this one (same key).
    pub(super) fn merge(&mut self, newer: Observation) {
        let first_seen = self.first_seen.min(newer.first_seen);
        let version_since = if self.version == newer.version {
            self.version_since.min(newer.version_since)
        } else {
            newer.version_since
        };
        let applied = match (self.applied.take(), newer.applied.clone()) {
            (Some(a), Some(b)) => Some(if b.at >= a.at { b } else { a }),
            (a, b) => b.or(a),
        };
        if newer.last_seen >= self.last_seen {
            *self = newer;
        }
        self.first_seen = first_seen;
        self.version_since = version_since;
        self.applied = applied;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use chrono::TimeZone;

    pub(in crate::audit) fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).single().expect("time")
    }

    pub(in crate::audit) fn obs(version: Option<u64>, at: i64, applied: Option<(u64, bool, i64)>) -> Observation {
        Observation {
            labels: Default::default(),
            version,
            version_since: t(at),
            expected: Some(2),
            first_seen: t(at),
            last_seen: t(at),
            applied: applied.map(|(v, ok, at)| Applied {
                version: v,
                ok,
                error: (!ok).then(|| "boom".into()),
                region: None,
                at: t(at),
            }),
            published_at: None,
            principal: None,
            relayed_by: None,
        }
    }

    #[test]
    fn merge_keeps_the_newest_and_the_earliest() {
        let mut a = obs(Some(1), 10, Some((1, false, 10)));
        a.merge(obs(Some(1), 20, None));
        assert_eq!((a.first_seen, a.last_seen, a.version_since), (t(10), t(20), t(10)));
        assert_eq!(a.applied.as_ref().map(|x| x.ok), Some(false), "an absent report keeps the last one");
        a.merge(obs(Some(2), 30, Some((2, true, 30))));
        assert_eq!((a.version, a.version_since), (Some(2), t(30)));
        assert_eq!(a.applied.as_ref().map(|x| (x.version, x.ok)), Some((2, true)));
        // An older observation arriving late changes nothing but first_seen.
        a.merge(obs(Some(1), 5, Some((1, false, 5))));
        assert_eq!((a.version, a.last_seen, a.first_seen), (Some(2), t(30), t(5)));
        assert_eq!(a.applied.as_ref().map(|x| x.version), Some(2));
    }
}
