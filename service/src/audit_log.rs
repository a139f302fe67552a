//! The operator audit log: who did what, when, and what changed. Rows are written by
//! `store::audit` inside the transaction of the change they record (a rejected or
//! rolled-back request leaves none), and the table refuses UPDATE and DELETE.
use crate::auth::Caller;
use crate::error::Result;
use crate::handle::Imprint;
use crate::model::{AuditEntry, AuditFilter, Page};
use crate::{cursor, store};

/// `LIKE` pattern matching every string that starts with `prefix`.
fn prefix_pattern(prefix: &str) -> String {
    format!("{}%", prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"))
}

impl Imprint {
    /// The audit log, newest first. Every signed-in user and every token may read it:
    /// knowing who changed what is part of operating a topic, not a privilege. The
    /// entries of a restricted topic are left out for callers who may not read the topic
    /// (as the topic is left out of topic lists: its name, sha256s, schema and settings
    /// are its team's), so a page may hold fewer than `limit` entries while `next` says
    /// there are more. Apollo secrets never appear: entries record only whether one is
    /// set (and older entries that recorded a hash of it show `"set"` instead).
    pub async fn audit_log(&self, caller: &Caller, filter: &AuditFilter) -> Result<Page<AuditEntry>> {
        caller.require_known("reading the audit log")?;
        let limit = cursor::limit(filter.limit)?;
        let before = filter.cursor.as_deref().filter(|c| !c.is_empty()).map(cursor::decode).transpose()?;
        let nonempty = |s: &Option<String>| s.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
        let action = nonempty(&filter.action).map(|a| prefix_pattern(&a));
        let rows = store::audit_log::list(
            self.pool(),
            nonempty(&filter.topic).as_deref(),
            nonempty(&filter.actor).as_deref(),
            action.as_deref(),
            before,
            limit + 1,
        )
        .await?;
        let more = rows.len() as i64 > limit;
        let rows: Vec<_> = rows.into_iter().take(limit as usize).collect();
        let next = if more { rows.last().map(|r| cursor::encode(r.id)) } else { None };
        let items: Vec<AuditEntry> = rows
            .into_iter()
            .filter(|r| match (&r.topic, &r.topic_owner) {
                (Some(topic), Some(owner)) => {
                    caller.require_read(topic, owner, r.topic_restricted.unwrap_or(true)).is_ok()
                }
                // A topic that is not there (any more): its entries are admins' only.
                (Some(_), None) => caller.is_admin(),
                (None, _) => true,
            })
            .map(|r| AuditEntry {
                id: r.id,
                at: r.at,
                actor: r.actor,
                action: r.action,
                topic: r.topic,
                details: without_secrets(r.details),
            })
            .collect();
        Ok(Page { items, next })
    }
}

/// Entries written before secrets were left out recorded a hash of an Apollo secret
/// (`"apollo": {"secret": "<md5>"}`, or in a change's `from`/`to`): shown as `"set"`.
fn without_secrets(mut details: serde_json::Value) -> serde_json::Value {
    fn scrub(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    if k == "secret" && v.is_string() {
                        *v = serde_json::Value::String("set".into());
                    } else {
                        scrub(v);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(scrub),
            _ => {}
        }
    }
    scrub(&mut details);
    details
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_secrets_of_old_entries_are_not_shown() {
        let old = serde_json::json!({"apollo": {"from": {"app_id": "a", "secret": "0cc175b9c0f1b6a831c399e269772661"},
                                                "to": {"app_id": "a", "secret": null}}});
        let shown = without_secrets(old);
        assert_eq!(shown["apollo"]["from"]["secret"], "set");
        assert_eq!(shown["apollo"]["to"]["secret"], serde_json::Value::Null);
        assert!(!shown.to_string().contains("0cc175b9"));
    }

    #[test]
    fn prefix_patterns_escape_like_wildcards() {
        assert_eq!(prefix_pattern("pin."), "pin.%");
        assert_eq!(prefix_pattern("a_b%"), "a\\_b\\%%");
    }
}
