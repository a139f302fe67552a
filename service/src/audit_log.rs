//! The operator audit log: who did what, when, and what changed. Rows are written by
//! `audit` inside the transaction of the change they record (a rejected or rolled-back
//! request leaves none), and the table refuses UPDATE and DELETE.
use crate::error::{Error, Result};
use crate::model::{AuditEntry, AuditFilter, Page};
use crate::{cursor, Caller, Imprint};
use chrono::{DateTime, Utc};

/// Records one action in the caller's transaction.
pub(crate) async fn audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    caller_who: &str,
    action: &str,
    topic: Option<&str>,
    details: serde_json::Value,
) -> Result<()> {
    sqlx::query("INSERT INTO audit_log (actor, action, topic, details) VALUES ($1, $2, $3, $4)")
        .bind(caller_who)
        .bind(action)
        .bind(topic)
        .bind(details)
        .execute(&mut **tx)
        .await?;
    metrics::counter!("imprint_audit_log_entries_total").increment(1);
    Ok(())
}

/// The old and new value of every top-level field that differs between two JSON
/// objects: `{"field": {"from": old, "to": new}}`.
pub(crate) fn changes(
    before: &serde_json::Value,
    after: &serde_json::Value,
) -> serde_json::Map<String, serde_json::Value> {
    let empty = serde_json::Map::new();
    let (b, a) = (before.as_object().unwrap_or(&empty), after.as_object().unwrap_or(&empty));
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (from, to) = (b.get(k).cloned().unwrap_or_default(), a.get(k).cloned().unwrap_or_default());
            (from != to).then(|| (k.clone(), serde_json::json!({"from": from, "to": to})))
        })
        .collect()
}

/// `LIKE` pattern matching every string that starts with `prefix`.
fn prefix_pattern(prefix: &str) -> String {
    format!("{}%", prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"))
}

type AuditRow = (i64, DateTime<Utc>, String, String, Option<String>, serde_json::Value);

impl Imprint {
    /// The audit log, newest first. Every signed-in user and every token may read it:
    /// knowing who changed what is part of operating a topic, not a privilege.
    pub async fn audit_log(&self, caller: &Caller, filter: &AuditFilter) -> Result<Page<AuditEntry>> {
        if matches!(caller, Caller::Anonymous) {
            return Err(Error::Unauthorized("reading the audit log needs a bearer token or a signed-in user".into()));
        }
        let limit = cursor::limit(filter.limit)?;
        let before = filter.cursor.as_deref().filter(|c| !c.is_empty()).map(cursor::decode).transpose()?;
        let nonempty = |s: &Option<String>| s.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT id, at, actor, action, topic, details FROM audit_log
             WHERE ($1::text IS NULL OR topic = $1)
               AND ($2::text IS NULL OR actor = $2)
               AND ($3::text IS NULL OR action LIKE $3)
               AND ($4::bigint IS NULL OR id < $4)
             ORDER BY id DESC LIMIT $5",
        )
        .bind(nonempty(&filter.topic))
        .bind(nonempty(&filter.actor))
        .bind(nonempty(&filter.action).map(|a| prefix_pattern(&a)))
        .bind(before)
        .bind(limit + 1)
        .fetch_all(self.pool())
        .await?;
        let more = rows.len() as i64 > limit;
        let items: Vec<AuditEntry> = rows
            .into_iter()
            .take(limit as usize)
            .map(|(id, at, actor, action, topic, details)| AuditEntry { id, at, actor, action, topic, details })
            .collect();
        let next = if more { items.last().map(|e| cursor::encode(e.id)) } else { None };
        Ok(Page { items, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_lists_differing_fields_only() {
        let before = json!({"description": "a", "owner": "payments", "content_type": null});
        let after = json!({"description": "b", "owner": "payments", "content_type": "application/json"});
        let c = changes(&before, &after);
        assert_eq!(
            serde_json::Value::Object(c),
            json!({
                "description": {"from": "a", "to": "b"},
                "content_type": {"from": null, "to": "application/json"},
            })
        );
        assert!(changes(&before, &before).is_empty());
    }

    #[test]
    fn prefix_patterns_escape_like_wildcards() {
        assert_eq!(prefix_pattern("pin."), "pin.%");
        assert_eq!(prefix_pattern("a_b%"), "a\\_b\\%%");
    }
}
