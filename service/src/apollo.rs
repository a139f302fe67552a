//! Apollo's config-service protocol on top of topics: an Apollo client's cluster, label,
//! ip and data center become consumer labels, so the ordinary resolution rule (scopes,
//! pins, rollouts) decides what it gets. Answered from memory, like polls.
use crate::audit::{Reporter, Seen};
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::serving::ServingTopic;
use imprint_domain::apollo::{configurations, strip_properties};
use imprint_domain::Labels;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Who is asking, as Apollo clients say it.
#[derive(Clone, Debug, Default)]
pub struct ApolloClient {
    pub app_id: String,
    pub cluster: String,
    pub ip: Option<String>,
    pub label: Option<String>,
    pub data_center: Option<String>,
    /// The request carried a valid signature of one of the app's secrets.
    pub signed: bool,
}

impl ApolloClient {
    /// The consumer labels resolution sees: `cluster`, `label`, `ip`, `dc` (values that
    /// cannot be label values are left out: no selector could match them anyway).
    pub fn labels(&self) -> Labels {
        let mut pairs = BTreeMap::new();
        for (k, v) in [
            ("cluster", Some(&self.cluster)),
            ("label", self.label.as_ref()),
            ("ip", self.ip.as_ref()),
            ("dc", self.data_center.as_ref()),
        ] {
            if let Some(v) = v.map(|v| v.trim()).filter(|v| !v.is_empty()) {
                if Labels::from_pairs(BTreeMap::from([(k.to_owned(), v.to_owned())])).is_ok() {
                    pairs.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        Labels::from_pairs(pairs).unwrap_or_default()
    }
}

/// `/configs` for one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApolloConfig {
    /// As the client asked for it, without a `.properties` suffix.
    pub namespace: String,
    pub configurations: BTreeMap<String, String>,
    /// Identifies what was resolved (version, pinned or not): unchanged means unchanged.
    pub release_key: String,
    pub version: u64,
}

/// One changed namespace of a `/notifications/v2` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApolloNotification {
    pub namespace: String,
    /// The topic's change sequence.
    pub id: i64,
    /// `{appId}+{cluster}+{namespace}`
    pub key: String,
}

impl Imprint {
    /// The secrets of an app's bindings (its requests must be signed with one when any).
    pub fn apollo_secrets(&self, app_id: &str) -> Vec<String> {
        self.state().apollo_secrets(app_id)
    }

    fn apollo_topic(&self, client: &ApolloClient, namespace: &str) -> Result<Arc<ServingTopic>> {
        let t = self.state().apollo_topic(&client.app_id, namespace).ok_or_else(|| {
            Error::NotFound(format!("no topic is bound to Apollo app {:?}, namespace {namespace:?}", client.app_id))
        })?;
        // A restricted topic is served to signed requests only.
        if t.restricted && !client.signed {
            return Err(Error::Forbidden(format!("the topic behind {namespace:?} is restricted: sign the requests")));
        }
        Ok(t)
    }

    /// What an Apollo client gets for a namespace now (404 when nothing is released to it).
    pub async fn apollo_config(&self, client: &ApolloClient, namespace: &str) -> Result<ApolloConfig> {
        let t = self.apollo_topic(client, namespace)?;
        let labels = client.labels();
        let r = t.index.resolve(&labels).ok_or_else(|| Error::NoVersionInScope(t.name.to_string()))?;
        let payload = match t.served.get(&r.version).and_then(|v| v.payload.clone()) {
            Some(p) => p,
            None => self.version_data(&crate::auth::Caller::System, t.name.as_str(), r.version).await?.0,
        };
        let bound = t.apollo.as_ref().map_or(namespace, |a| a.namespace.as_str());
        let configurations = configurations(bound, &payload)
            .map_err(|e| Error::SchemaViolation(format!("version {} of {}: {e}", r.version, t.name)))?;
        self.record_apollo(client, &t, &labels, r.version);
        Ok(ApolloConfig {
            namespace: strip_properties(namespace).to_owned(),
            configurations,
            release_key: format!("{}-v{}{}", t.name, r.version, if r.pinned { "-pinned" } else { "" }),
            version: r.version,
        })
    }

    /// Notes an Apollo client in the consumer audit (instance: its ip), like a poll.
    fn record_apollo(&self, client: &ApolloClient, t: &ServingTopic, labels: &Labels, version: u64) {
        if !self.config().audit_enabled {
            return;
        }
        let Some(ip) = client.ip.as_deref().filter(|ip| !ip.is_empty() && ip.len() <= 200) else { return };
        let instance = format!("apollo:{ip}");
        let principal = client.signed.then(|| format!("apollo:{}", client.app_id));
        let who =
            Reporter { instance: &instance, labels: labels.pairs(), principal: principal.as_deref(), at: self.now() };
        let seen = Seen {
            topic_id: t.id,
            version: Some(version),
            expected: Some(version),
            applied: None,
            published_at: t.served.get(&version).map(|v| v.created_at),
        };
        self.audit().record(&who, [seen]);
    }

    /// `/notifications/v2`: the listed namespaces whose topic changed past the id the
    /// client has (`-1`: answer at once if anything is released), waiting up to `hold`
    /// for one. Empty: nothing changed in time (the caller answers 304).
    pub async fn apollo_notifications(
        &self,
        client: &ApolloClient,
        known: &[(String, i64)],
        hold: Duration,
    ) -> Result<Vec<ApolloNotification>> {
        // Woken by changes to the bound topics only (registered before the first look).
        let bound: Vec<String> = known
            .iter()
            .filter_map(|(ns, _)| self.state().apollo_topic(&client.app_id, ns).map(|t| t.name.to_string()))
            .collect();
        let waiter = self.state().waiter(bound.iter().map(String::as_str));
        let mut draining = self.draining();
        let deadline = tokio::time::Instant::now() + hold;
        loop {
            let mut out = Vec::new();
            for (ns, id) in known {
                let Ok(t) = self.apollo_topic(client, ns) else { continue };
                if t.change_seq > *id && t.has_live {
                    let namespace = strip_properties(ns).to_owned();
                    let key = format!("{}+{}+{}", client.app_id, client.cluster, namespace);
                    out.push(ApolloNotification { namespace, id: t.change_seq, key });
                }
            }
            if !out.is_empty() || *draining.borrow() {
                return Ok(out);
            }
            tokio::select! {
                _ = waiter.changed() => {},
                _ = tokio::time::sleep_until(deadline) => return Ok(out),
                _ = draining.changed() => return Ok(out),
            }
        }
    }
}
