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
    /// knowing who changed what is part of operating a topic, not a privilege.
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
        let items: Vec<AuditEntry> = rows
            .into_iter()
            .take(limit as usize)
            .map(|r| AuditEntry {
                id: r.id,
                at: r.at,
                actor: r.actor,
                action: r.action,
                topic: r.topic,
                details: r.details,
            })
            .collect();
        let next = if more { items.last().map(|e| cursor::encode(e.id)) } else { None };
        Ok(Page { items, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_patterns_escape_like_wildcards() {
        assert_eq!(prefix_pattern("pin."), "pin.%");
        assert_eq!(prefix_pattern("a_b%"), "a\\_b\\%%");
    }
}
