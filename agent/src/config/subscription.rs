//! The `[[subscription]]` tables: one topic each (subscribed once), where and how its file
//! is installed, its check and reload, what it keeps, and its AppConfig path and template.

use std::path::PathBuf;

use serde::Deserialize;

use super::values::{bad, parse_duration, parse_owner};
use super::{ConfigError, Subscription, DEFAULT_TIMEOUT, MAX_KEEP};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSubscription {
    topic: String,
    path: Option<PathBuf>,
    mode: Option<String>,
    owner: Option<String>,
    check: Option<String>,
    reload: Option<String>,
    timeout: Option<String>,
    keep: Option<usize>,
    required: Option<bool>,
    appconfig: Option<String>,
    template: Option<PathBuf>,
}

/// The subscriptions validated in order; the first bad key is named with its index.
pub(super) fn validate_all(raw: Vec<RawSubscription>) -> Result<Vec<Subscription>, ConfigError> {
    let mut subscriptions = Vec::new();
    let mut topics = std::collections::BTreeSet::new();
    let mut appconfigs = std::collections::BTreeSet::new();
    for (i, s) in raw.into_iter().enumerate() {
        let at = |key: &str| format!("subscription[{i}].{key}");
        imprint_domain::TopicName::parse(&s.topic).map_err(|e| bad(&at("topic"), e))?;
        if !topics.insert(s.topic.clone()) {
            return Err(bad(&at("topic"), format!("{:?} is subscribed twice", s.topic)));
        }
        if let Some(p) = &s.path {
            if !p.is_absolute() || p.file_name().is_none() {
                return Err(bad(&at("path"), format!("{} must be an absolute file path", p.display())));
            }
        }
        let mode = match s.mode.as_deref() {
            None => 0o644,
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| bad(&at("mode"), format!("{m:?} is not a file mode such as \"0644\"")))?,
        };
        let owner = match s.owner.as_deref() {
            None => None,
            Some(o) => Some(parse_owner(o).map_err(|e| bad(&at("owner"), e))?),
        };
        let timeout = match s.timeout.as_deref() {
            None => DEFAULT_TIMEOUT,
            Some(t) => parse_duration(&at("timeout"), t)?,
        };
        let keep = s.keep.unwrap_or(3);
        if keep > MAX_KEEP {
            return Err(bad(&at("keep"), format!("at most {MAX_KEEP}")));
        }
        for (key, cmd) in [("check", &s.check), ("reload", &s.reload)] {
            if cmd.as_deref().is_some_and(|c| c.trim().is_empty()) {
                return Err(bad(&at(key), "is empty"));
            }
        }
        let appconfig = match s.appconfig.as_deref() {
            None => None,
            Some(text) => {
                let parts: Vec<&str> = text.split('/').collect();
                let ok = |p: &&str| {
                    !p.is_empty()
                        && p.len() <= 128
                        && !p.starts_with('.')
                        && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                };
                match parts.as_slice() {
                    [a, e, p] if [a, e, p].iter().all(|x| ok(x)) => {
                        Some(((*a).to_owned(), (*e).to_owned(), (*p).to_owned()))
                    }
                    _ => return Err(bad(&at("appconfig"), format!("{text:?} is not application/environment/profile"))),
                }
            }
        };
        if let Some(a) = &appconfig {
            if !appconfigs.insert(a.clone()) {
                return Err(bad(
                    &at("appconfig"),
                    format!("{:?} names a second topic", s.appconfig.unwrap_or_default()),
                ));
            }
        }
        if let Some(t) = &s.template {
            if s.path.is_none() {
                return Err(bad(&at("template"), "needs a path to render into"));
            }
            if let Err(e) = std::fs::metadata(t) {
                return Err(bad(&at("template"), format!("{}: {e}", t.display())));
            }
        }
        subscriptions.push(Subscription {
            appconfig,
            template: s.template,
            topic: s.topic,
            path: s.path,
            mode,
            owner,
            check: s.check,
            reload: s.reload,
            timeout,
            keep,
            required: s.required.unwrap_or(true),
        });
    }
    Ok(subscriptions)
}
