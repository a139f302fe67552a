//! Spring Cloud Config's environment on top of topics: the topics bound to an application
//! (and to the shared `application`) are its property sources, most specific first, each
//! resolved for the caller by the ordinary rule (scopes, pins, rollouts) with its profile
//! as the label `profile` plus the labels the server maps from request headers. A label
//! that is a version number reads that version instead. Answered from memory, like polls,
//! and noted in the consumer audit like them.
use crate::audit::{Reporter, Seen};
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::serving::ServingTopic;
use imprint_domain::spring::{flatten, SHARED_APPLICATION};
use imprint_domain::{Labels, VersionNumber};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::ToSchema;

/// The label key a request's profile becomes.
pub const PROFILE_LABEL: &str = "profile";

/// At most this many headers map to labels.
pub const MAX_LABEL_HEADERS: usize = 16;

/// `X-Imprint-Region=region,X-Zone=zone` → `[("x-imprint-region", "region"), …]`: header
/// names (compared in lower case) and the label keys their values become. `profile` is
/// the profile's own label and cannot be mapped.
pub fn parse_label_headers(s: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (h, k) = part.split_once('=').ok_or_else(|| format!("{part:?} is not Header-Name=label"))?;
        let (h, k) = (h.trim().to_ascii_lowercase(), k.trim());
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if h.is_empty() || h.len() > 128 || !h.chars().all(token) {
            return Err(format!("{h:?} is not a header name"));
        }
        Labels::from_pairs([(k, "x")]).map_err(|e| e.to_string())?;
        if k == PROFILE_LABEL {
            return Err("the label `profile` is the request's profile; map headers to other labels".into());
        }
        if out.iter().any(|(oh, ok)| *oh == h || ok == k) {
            return Err(format!("{h} or {k} is mapped twice"));
        }
        out.push((h, k.to_owned()));
    }
    if out.len() > MAX_LABEL_HEADERS {
        return Err(format!("at most {MAX_LABEL_HEADERS} headers map to labels"));
    }
    Ok(out)
}

/// Which versions a request reads (Spring's `{label}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpringLabel {
    /// What resolution gives the caller now (no label, or the default label `main`/`master`).
    Resolved,
    /// This version of each bound topic.
    Version(VersionNumber),
}

/// A Spring Cloud Config request, as the server read it.
#[derive(Clone, Debug)]
pub struct SpringRequest {
    pub application: String,
    /// As given, in order (the last wins, as in Spring).
    pub profiles: Vec<String>,
    /// The `{label}` as the client sent it (echoed in the answer).
    pub label_text: Option<String>,
    pub label: SpringLabel,
    /// Labels from the request's headers (`IMPRINT_SPRING_LABEL_HEADERS`).
    pub labels: BTreeMap<String, String>,
    /// The client's address (set by the server): the audit names the instance by it.
    pub peer: Option<std::net::IpAddr>,
}

/// Spring's `Environment` document.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpringEnvironment {
    /// The application asked for.
    pub name: String,
    pub profiles: Vec<String>,
    /// The label as asked for (null: none).
    pub label: Option<String>,
    /// The versions read: `topic@version` for each property source, `,`-separated.
    pub version: Option<String>,
    /// Always null (Spring's repository state).
    pub state: Option<String>,
    /// Most specific first: the first source that has a key gives its value.
    pub property_sources: Vec<SpringPropertySource>,
}

/// One topic's version, flattened.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct SpringPropertySource {
    /// `imprint:{topic}@{version}`
    pub name: String,
    /// Dotted keys and `key[i]` list entries; strings, numbers or booleans.
    #[schema(value_type = Object)]
    pub source: BTreeMap<String, serde_json::Value>,
}

/// The (application, profile) slots of a request, most specific first: for each profile
/// from the last to the first, `{application}-{profile}` then `application-{profile}`; then
/// `{application}` and `application` (every profile).
fn slots<'a>(application: &'a str, profiles: &'a [String]) -> Vec<(&'a str, Option<&'a str>)> {
    let mut apps = vec![application];
    if application != SHARED_APPLICATION {
        apps.push(SHARED_APPLICATION);
    }
    let mut out = Vec::new();
    for p in profiles.iter().rev() {
        out.extend(apps.iter().map(|a| (*a, Some(p.as_str()))));
    }
    out.extend(apps.iter().map(|a| (*a, None)));
    out
}

impl Imprint {
    /// The `Environment` a Spring Cloud Config client gets. 404 when no topic is bound to
    /// the application that the caller may read (a restricted topic it may not read is
    /// never named, nor counted); topics with nothing for it (no version in scope, or no
    /// such version for a version label) are left out.
    pub async fn spring_environment(&self, caller: &Caller, req: &SpringRequest) -> Result<SpringEnvironment> {
        let last = req.profiles.last().ok_or_else(|| Error::invalid("a request names at least one profile"))?;
        let mut claimed = req.labels.clone();
        claimed.insert(PROFILE_LABEL.to_owned(), last.clone());
        self.require_poller(caller, &claimed)?;
        let mut bound = self.state().spring_topics(&req.application);
        bound.retain(|t| caller.require_read(t.name.as_str(), &t.owner, t.restricted).is_ok());
        if bound.is_empty() {
            return Err(Error::NotFound(format!(
                "no topic you may read is bound to Spring application {:?}",
                req.application
            )));
        }
        if req.application != SHARED_APPLICATION {
            let mut shared = self.state().spring_topics(SHARED_APPLICATION);
            shared.retain(|t| caller.require_read(t.name.as_str(), &t.owner, t.restricted).is_ok());
            bound.extend(shared);
        }
        let mut sources = Vec::new();
        let mut seen = Vec::new();
        for (app, profile) in slots(&req.application, &req.profiles) {
            let Some(t) = bound
                .iter()
                .find(|t| t.spring.as_ref().is_some_and(|b| b.application == app && b.profile.as_deref() == profile))
            else {
                continue;
            };
            // A profile's topic is resolved for that profile; the every-profile ones for the
            // request's last (winning) profile.
            let mut labels = req.labels.clone();
            labels.insert(PROFILE_LABEL.to_owned(), profile.unwrap_or(last).to_owned());
            let labels = Labels::from_pairs(labels).map_err(|e| Error::invalid(e.to_string()))?;
            let Some((version, payload)) = self.spring_read(caller, t, &labels, req.label).await? else { continue };
            let source = flatten(&payload)
                .map_err(|e| Error::SchemaViolation(format!("version {version} of {}: {e}", t.name)))?;
            seen.push((t.clone(), labels, version));
            sources.push(SpringPropertySource { name: format!("imprint:{}@{version}", t.name), source });
        }
        if let (SpringLabel::Version(n), true) = (req.label, sources.is_empty()) {
            return Err(Error::NotFound(format!(
                "no label {n}: no topic of Spring application {:?} has a version {n}",
                req.application
            )));
        }
        for (t, labels, version) in &seen {
            self.record_spring(caller, req, t, labels, *version);
        }
        let version = (!sources.is_empty())
            .then(|| sources.iter().map(|s| s.name.trim_start_matches("imprint:")).collect::<Vec<_>>().join(","));
        Ok(SpringEnvironment {
            name: req.application.clone(),
            profiles: req.profiles.clone(),
            label: req.label_text.clone(),
            version,
            state: None,
            property_sources: sources,
        })
    }

    /// One bound topic's version and payload for this request: resolved for `labels`, or
    /// the label's version (through the ordinary version read, with its access check).
    /// `None`: nothing for this request.
    async fn spring_read(
        &self,
        caller: &Caller,
        t: &ServingTopic,
        labels: &Labels,
        label: SpringLabel,
    ) -> Result<Option<(u64, bytes::Bytes)>> {
        match label {
            SpringLabel::Resolved => {
                let Some(r) = t.index.resolve(labels) else { return Ok(None) };
                let payload = match t.served.get(&r.version).filter(|v| v.payload.is_some()) {
                    Some(v) => {
                        if v.sealed {
                            // At rest: plaintext handed out from memory is a counted read
                            // (the version read below counts its own).
                            self.plaintext_reads().record(t.id, r.version, caller, self.now());
                        }
                        v.payload.clone().expect("filtered")
                    }
                    None => self.version_data(caller, &t.name, Error::known_version(r.version)?).await?.0,
                };
                Ok(Some((r.version, payload)))
            }
            SpringLabel::Version(n) => match self.version_data(caller, &t.name, n).await {
                Ok((payload, _, _)) => Ok(Some((n.get(), payload))),
                Err(Error::VersionNotFound { .. } | Error::VersionPurged { .. }) => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// Notes a Spring client in the consumer audit, like a poll: instance
    /// `spring:{application}@{address}`, its labels, the version it was given.
    fn record_spring(
        &self,
        caller: &Caller,
        req: &SpringRequest,
        t: &Arc<ServingTopic>,
        labels: &Labels,
        version: u64,
    ) {
        if !self.config().audit_enabled {
            return;
        }
        let Some(peer) = req.peer else { return };
        let instance = format!("spring:{}@{peer}", req.application);
        let principal = caller.principal();
        let who = Reporter {
            instance: &instance,
            labels: labels.pairs(),
            principal: principal.as_deref(),
            relayed_by: None,
            at: self.now(),
        };
        let resolved = (req.label == SpringLabel::Resolved).then_some(version);
        let seen = Seen {
            topic_id: t.id,
            version: Some(version),
            expected: resolved.or_else(|| t.index.resolve(labels).map(|r| r.version)),
            applied: None,
            published_at: t.served.get(&version).map(|v| v.created_at),
        };
        self.audit().record_from(&who, req.peer, [seen]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_headers_parse_and_refuse_what_cannot_work() {
        assert_eq!(
            parse_label_headers("X-Imprint-Region=region, X-Zone = zone").unwrap(),
            vec![("x-imprint-region".to_owned(), "region".to_owned()), ("x-zone".to_owned(), "zone".to_owned())]
        );
        assert!(parse_label_headers("").unwrap().is_empty());
        for bad in ["X-Region", "X Region=region", "X-Region=pro file", "X-P=profile", "X-A=a,x-a=b"] {
            assert!(parse_label_headers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sources_go_most_specific_first() {
        let profiles = vec!["dev".to_owned(), "mysql".to_owned()];
        assert_eq!(
            slots("shop", &profiles),
            vec![
                ("shop", Some("mysql")),
                ("application", Some("mysql")),
                ("shop", Some("dev")),
                ("application", Some("dev")),
                ("shop", None),
                ("application", None),
            ]
        );
        let one = vec!["default".to_owned()];
        assert_eq!(slots("application", &one), vec![("application", Some("default")), ("application", None)]);
    }
}
