//! The scope matrix the console's matrix page shows: one row per selector that matters
//! (scopes released, active pins), one column per recent version, and what each row's
//! own labels resolve to now. Computed here from the topic's bounded present and its
//! serving index, so the page only renders it.
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handle::Imprint;
use imprint_domain::{CurrentIndex, Selector, TopicHistory};
use std::collections::HashSet;

/// The matrix shows at most this many selectors (rows), the least specific first.
pub const MATRIX_ROWS: usize = 500;
/// …and the newest this many versions (columns).
pub const MATRIX_COLUMNS: usize = 12;

/// One version as seen by one selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatrixCell {
    /// The version was released to exactly this selector.
    pub released: bool,
    /// The selector's own labels resolve to this version now.
    pub resolved: bool,
    /// An active pin on exactly this selector holds this version.
    pub pinned: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatrixRow {
    pub selector: Selector,
    /// One cell per column, in the columns' order.
    pub cells: Vec<MatrixCell>,
    /// What the selector's own labels resolve to now.
    pub resolves_to: Option<u64>,
    /// …and whether a pin decides it.
    pub pinned: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeMatrix {
    /// Version numbers, newest first.
    pub columns: Vec<u64>,
    pub rows: Vec<MatrixRow>,
}

/// The matrix of a topic's present `h` (live versions, their scopes, active pins), with
/// resolution answered by the topic's serving `index`.
pub fn scope_matrix(h: &TopicHistory, index: &CurrentIndex) -> ScopeMatrix {
    let released: HashSet<(u64, &Selector)> = h.scopes.iter().map(|s| (s.version, &s.selector)).collect();
    let mut selectors: Vec<&Selector> = h.scopes.iter().map(|s| &s.selector).collect();
    selectors.extend(h.pins.iter().filter(|p| p.removed_at.is_none()).map(|p| &p.selector));
    selectors.sort_by(|a, b| a.specificity().cmp(&b.specificity()).then_with(|| a.cmp(b)));
    selectors.dedup();
    selectors.truncate(MATRIX_ROWS);
    let columns: Vec<u64> = h.versions.keys().rev().take(MATRIX_COLUMNS).copied().collect();
    let rows = selectors
        .into_iter()
        .map(|sel| {
            let r = index.resolve(&sel.as_labels());
            let pin = h.pins.iter().find(|p| p.removed_at.is_none() && p.selector == *sel).map(|p| p.version);
            MatrixRow {
                selector: sel.clone(),
                cells: columns
                    .iter()
                    .map(|v| MatrixCell {
                        released: released.contains(&(*v, sel)),
                        resolved: r.map(|r| r.version) == Some(*v),
                        pinned: pin == Some(*v),
                    })
                    .collect(),
                resolves_to: r.map(|r| r.version),
                pinned: r.is_some_and(|r| r.pinned),
            }
        })
        .collect();
    ScopeMatrix { columns, rows }
}

impl Imprint {
    /// The scope matrix of a topic the caller may read: its bounded present (not its
    /// whole history, `topic_present`) resolved against what this server serves now.
    pub async fn scope_matrix(&self, caller: &Caller, topic: &imprint_domain::TopicName) -> Result<ScopeMatrix> {
        let (present, _) = self.topic_present(caller, topic).await?;
        let serving =
            self.state().get(topic.as_str()).ok_or_else(|| Error::Busy("topic not loaded yet; try again".into()))?;
        Ok(scope_matrix(&present, &serving.index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use imprint_domain::{PinEntry, ScopeEntry, VersionEntry};

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).expect("time")
    }

    fn sel(s: &str) -> Selector {
        Selector::parse(s).expect("selector")
    }

    fn history(versions: u64, scopes: &[(u64, &str)], pins: &[(u64, &str, bool)]) -> TopicHistory {
        let mut h = TopicHistory::default();
        for v in 1..=versions {
            h.versions.insert(v, VersionEntry { version: v, created_at: at(v as i64), purged_at: None });
        }
        h.scopes =
            scopes.iter().map(|(v, s)| ScopeEntry { version: *v, selector: sel(s), added_at: at(*v as i64) }).collect();
        h.pins = pins
            .iter()
            .enumerate()
            .map(|(i, (v, s, active))| PinEntry {
                id: i as i64 + 1,
                selector: sel(s),
                version: *v,
                created_at: at(100 + i as i64),
                removed_at: (!active).then(|| at(200)),
            })
            .collect();
        h
    }

    fn cell(released: bool, resolved: bool, pinned: bool) -> MatrixCell {
        MatrixCell { released, resolved, pinned }
    }

    #[test]
    fn rows_are_selectors_that_matter_columns_newest_versions() {
        let h = history(
            3,
            &[(1, "*"), (2, "region=eu"), (3, "region=eu,app=checkout")],
            &[(1, "region=us", true), (2, "region=ap", false)],
        );
        let m = scope_matrix(&h, &CurrentIndex::build(&h));
        assert_eq!(m.columns, [3, 2, 1]);
        let selectors: Vec<String> = m.rows.iter().map(|r| r.selector.to_string()).collect();
        // Least specific first; the removed pin's selector is not a row.
        assert_eq!(selectors, ["*", "region=eu", "region=us", "app=checkout,region=eu"]);

        let all = &m.rows[0];
        assert_eq!((all.resolves_to, all.pinned), (Some(1), false));
        assert_eq!(all.cells, [cell(false, false, false), cell(false, false, false), cell(true, true, false)]);
        let eu = &m.rows[1];
        assert_eq!((eu.resolves_to, eu.pinned), (Some(2), false));
        assert_eq!(eu.cells, [cell(false, false, false), cell(true, true, false), cell(false, false, false)]);
        let us = &m.rows[2];
        assert_eq!((us.resolves_to, us.pinned), (Some(1), true), "the pin decides");
        assert_eq!(us.cells, [cell(false, false, false), cell(false, false, false), cell(false, true, true)]);
        let checkout = &m.rows[3];
        assert_eq!(checkout.resolves_to, Some(3));
        assert_eq!(checkout.cells[0], cell(true, true, false));
    }

    #[test]
    fn a_selector_both_scoped_and_pinned_is_one_row() {
        let h = history(2, &[(1, "*"), (2, "region=eu")], &[(1, "region=eu", true)]);
        let m = scope_matrix(&h, &CurrentIndex::build(&h));
        assert_eq!(m.rows.len(), 2);
        let eu = &m.rows[1];
        assert_eq!((eu.resolves_to, eu.pinned), (Some(1), true));
        assert_eq!(eu.cells, [cell(true, false, false), cell(false, true, true)]);
    }

    #[test]
    fn the_matrix_is_bounded() {
        let scopes: Vec<(u64, String)> = (0..MATRIX_ROWS + 20).map(|i| (1, format!("node=n{i:04}"))).collect();
        let scopes: Vec<(u64, &str)> = scopes.iter().map(|(v, s)| (*v, s.as_str())).collect();
        let h = history(MATRIX_COLUMNS as u64 + 5, &scopes, &[]);
        let m = scope_matrix(&h, &CurrentIndex::build(&h));
        assert_eq!(m.rows.len(), MATRIX_ROWS);
        assert_eq!(m.columns.len(), MATRIX_COLUMNS);
        assert_eq!(m.columns[0], MATRIX_COLUMNS as u64 + 5, "the newest versions");
        assert!(m.rows.iter().all(|r| r.cells.len() == MATRIX_COLUMNS));
        assert!(m.rows.iter().all(|r| r.resolves_to == Some(1)));
    }

    #[test]
    fn nothing_released_is_an_empty_matrix() {
        let h = history(0, &[], &[]);
        assert_eq!(scope_matrix(&h, &CurrentIndex::build(&h)), ScopeMatrix { columns: vec![], rows: vec![] });
    }
}
