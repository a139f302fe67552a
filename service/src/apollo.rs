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

/// A request's Apollo signature, checked against one secret at a time: each namespace is
/// answered only if the signature verifies with the secret of that namespace's own
/// binding (another binding's secret, of the same app or not, opens nothing). The check
/// itself (HMAC, timestamp) is the endpoint's; it says why a secret does not verify.
#[derive(Clone)]
pub struct ApolloSignature(Arc<SignatureCheck>);

/// Checks a request's signature against one secret: `Err` says why it does not verify.
type SignatureCheck = dyn Fn(&str) -> std::result::Result<(), String> + Send + Sync;

impl ApolloSignature {
    pub fn new(check: impl Fn(&str) -> std::result::Result<(), String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(check))
    }

    /// Whether the request was signed with `secret` (else why not).
    pub fn verify(&self, secret: &str) -> std::result::Result<(), String> {
        (self.0)(secret)
    }
}

impl std::fmt::Debug for ApolloSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApolloSignature(..)")
    }
}

/// Who is asking, as Apollo clients say it.
#[derive(Clone, Debug, Default)]
pub struct ApolloClient {
    pub app_id: String,
    pub cluster: String,
    pub ip: Option<String>,
    pub label: Option<String>,
    pub data_center: Option<String>,
    /// The request's signature, if it carried one (`Authorization: Apollo …`).
    pub signature: Option<ApolloSignature>,
    /// The address the request came from (set by the server, not by the client): an
    /// unsigned client's new instances and open requests count against it.
    pub peer: Option<std::net::IpAddr>,
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
    /// The topic behind a namespace, if this request may read it, and whether it was
    /// signed with that namespace's secret. A binding with a secret answers only
    /// requests signed with that very secret (401 otherwise); a binding without one is
    /// open, except that a restricted topic is served to signed requests only (so it
    /// needs a secret of its own: a signature made with another binding's secret never
    /// counts).
    fn apollo_topic(&self, client: &ApolloClient, namespace: &str) -> Result<(Arc<ServingTopic>, bool)> {
        let t = self.state().apollo_topic(&client.app_id, namespace).ok_or_else(|| {
            Error::NotFound(format!("no topic is bound to Apollo app {:?}, namespace {namespace:?}", client.app_id))
        })?;
        let signed = match t.apollo.as_ref().and_then(|a| a.secret.as_deref()) {
            None => false,
            Some(secret) => {
                let Some(signature) = &client.signature else {
                    return Err(Error::Unauthorized(format!(
                        "namespace {namespace:?} of Apollo app {:?} has a secret: sign the requests \
                         (Authorization: Apollo {{appId}}:{{signature}} and Timestamp)",
                        client.app_id
                    )));
                };
                signature
                    .verify(secret)
                    .map_err(|why| Error::Unauthorized(format!("namespace {namespace:?}: {why}")))?;
                true
            }
        };
        if t.restricted && !signed {
            return Err(Error::Forbidden(format!(
                "the topic behind {namespace:?} is restricted: it is served to requests signed with its binding's secret only"
            )));
        }
        Ok((t, signed))
    }

    /// What an Apollo client gets for a namespace now (404 when nothing is released to it).
    pub async fn apollo_config(&self, client: &ApolloClient, namespace: &str) -> Result<ApolloConfig> {
        let (t, signed) = self.apollo_topic(client, namespace)?;
        let labels = client.labels();
        let r = t.index.resolve(&labels).ok_or_else(|| Error::NoVersionInScope(t.name.to_string()))?;
        let payload = match t.served.get(&r.version).and_then(|v| v.payload.clone()) {
            Some(p) => p,
            None => self.version_data(&crate::auth::Caller::System, &t.name, Error::known_version(r.version)?).await?.0,
        };
        let bound = t.apollo.as_ref().map_or(namespace, |a| a.namespace.as_str());
        let configurations = configurations(bound, &payload)
            .map_err(|e| Error::SchemaViolation(format!("version {} of {}: {e}", r.version, t.name)))?;
        self.record_apollo(client, signed, &t, &labels, r.version);
        if t.served.get(&r.version).is_some_and(|v| v.sealed) {
            // At rest: the configuration handed out is plaintext (docs/encryption.md). An
            // Apollo client has no token; it is known by its app id, and an unsigned one
            // (an unrestricted topic whose binding has no secret) is marked so.
            let reader = if signed {
                format!("apollo:{}", client.app_id)
            } else {
                format!("apollo:{} (unsigned)", client.app_id)
            };
            self.plaintext_reads().record_as(t.id, r.version, reader, self.now());
        }
        Ok(ApolloConfig {
            namespace: strip_properties(namespace).to_owned(),
            configurations,
            release_key: format!("{}-v{}{}", t.name, r.version, if r.pinned { "-pinned" } else { "" }),
            version: r.version,
        })
    }

    /// Notes an Apollo client in the consumer audit (instance: its ip), like a poll.
    fn record_apollo(&self, client: &ApolloClient, signed: bool, t: &ServingTopic, labels: &Labels, version: u64) {
        if !self.config().audit_enabled {
            return;
        }
        let Some(ip) = client.ip.as_deref().filter(|ip| !ip.is_empty() && ip.len() <= 200) else { return };
        let instance = format!("apollo:{ip}");
        let principal = signed.then(|| format!("apollo:{}", client.app_id));
        let who = Reporter {
            instance: &instance,
            labels: labels.pairs(),
            principal: principal.as_deref(),
            relayed_by: None,
            at: self.now(),
        };
        let seen = Seen {
            topic_id: t.id,
            version: Some(version),
            expected: Some(version),
            applied: None,
            published_at: t.served.get(&version).map(|v| v.created_at),
        };
        self.audit().record_from(&who, client.peer, [seen]);
    }

    /// `/notifications/v2`: the listed namespaces whose topic changed past the id the
    /// client has (`-1`: answer at once if anything is released), waiting up to `hold`
    /// for one. Empty: nothing changed in time (the caller answers 304). Each namespace
    /// is checked on its own (`apollo_topic`): one the request may not read is never
    /// answered, and when every bound namespace listed refuses the signature, the
    /// request is refused (401) rather than held.
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
        let mut refused = None;
        let mut readable = false;
        for (ns, _) in known {
            match self.apollo_topic(client, ns) {
                Ok(_) => readable = true,
                Err(e @ Error::Unauthorized(_)) => refused = refused.or(Some(e)),
                Err(_) => {}
            }
        }
        if let (false, Some(e)) = (readable, refused) {
            return Err(e);
        }
        // Held among the server's open requests (long polls' caps); over them the client
        // is told to come back later (Apollo clients back off on an error, not on a 304).
        let bytes = 4096 + known.iter().map(|(ns, _)| ns.len() + 64).sum::<usize>();
        let anonymous = client.peer.filter(|_| client.signature.is_none());
        let Some(_place) = self.long_poll_place(bytes, anonymous) else {
            return Err(Error::Busy("this server holds as many open requests as it may; try again later".into()));
        };
        let waiter = self.state().waiter(bound.iter().map(String::as_str));
        let mut draining = self.draining();
        let deadline = tokio::time::Instant::now() + hold;
        loop {
            let mut out = Vec::new();
            for (ns, id) in known {
                let Ok((t, _)) = self.apollo_topic(client, ns) else { continue };
                if t.change_seq > *id && t.has_live {
                    let namespace = strip_properties(ns).to_owned();
                    let key = format!("{}+{}+{}", client.app_id, client.cluster, namespace);
                    out.push(ApolloNotification { namespace, id: t.change_seq, key });
                }
            }
            if !out.is_empty() || *draining.borrow() {
                return Ok(out);
            }
            // Waiting for news is not work: the fair-serving place goes back (once).
            crate::fair::parking();
            tokio::select! {
                _ = waiter.changed() => {},
                _ = tokio::time::sleep_until(deadline) => return Ok(out),
                _ = draining.changed() => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        let served = crate::serving::ApolloServed {
            app_id: "shop".into(),
            namespace: "application".into(),
            secret: Some("hunter2-apollo".into()),
        };
        let input = crate::model::ApolloBindingInput {
            app_id: "shop".into(),
            namespace: "application".into(),
            secret: Some("hunter2-apollo".into()),
        };
        let client = ApolloClient {
            app_id: "shop".into(),
            signature: Some(ApolloSignature::new(|s| if s == "hunter2-apollo" { Ok(()) } else { Err("no".into()) })),
            ..ApolloClient::default()
        };
        for shown in [format!("{served:?}"), format!("{input:?}"), format!("{client:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("shop"), "{shown}");
        }
        assert!(format!("{served:?}").contains("<redacted>"));
    }
}
