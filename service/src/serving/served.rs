//! What the serving state holds of one topic (`ServingTopic`: its index, owner, Apollo
//! binding) and of one version (`ServedVersion`, with its poll update pre-serialised).
use bytes::Bytes;
use imprint_domain::{CurrentIndex, TopicName};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Payloads up to this size are held in memory and sent inline in poll answers.
pub const INLINE_POLL_BYTES: u64 = 64 * 1024;

/// What the poll path needs of one version.
#[derive(Debug)]
pub struct ServedVersion {
    pub topic: TopicName,
    pub version: u64,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    pub metadata: BTreeMap<String, String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Present for small inline payloads of versions some consumer can resolve to now.
    pub payload: Option<Bytes>,
    /// The payload is sealed at rest in storage (held here opened): reads of it are
    /// counted in the plaintext-read audit.
    pub sealed: bool,
    /// The regions holding a copy of its object, most preferred first (empty: one
    /// region only, or an inline payload; docs/regions.md).
    pub regions: Vec<String>,
    /// The public base URL of regions' servers (`IMPRINT_REGION_URLS`): their `data_urls`
    /// entries are absolute.
    region_urls: crate::regions::PublicUrls,
    /// The poll answer's JSON for this version, per (pinned, consumer's region slot: 0 for
    /// none, 1 + its index in `regions`), built once on first use and shared by every poll
    /// that gets it.
    json: Box<[std::sync::OnceLock<Box<serde_json::value::RawValue>>]>,
}

/// The fields of a poll update (docs/api.md), as serialised once per version.
#[derive(serde::Serialize)]
struct UpdateJson<'a> {
    version: u64,
    pinned: bool,
    metadata: &'a BTreeMap<String, String>,
    content_type: &'a str,
    size: u64,
    sha256: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
    data_url: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    data_urls: Vec<imprint_protocol::DataUrl>,
}

impl ServedVersion {
    /// A version as the poll path serves it (`payload`: the bytes of a small inline one).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        topic: TopicName,
        version: u64,
        content_type: String,
        size: u64,
        sha256: String,
        metadata: BTreeMap<String, String>,
        created_at: chrono::DateTime<chrono::Utc>,
        payload: Option<Bytes>,
    ) -> Self {
        let payload = payload.filter(|_| size <= INLINE_POLL_BYTES);
        ServedVersion {
            topic,
            version,
            content_type,
            size,
            sha256,
            metadata,
            created_at,
            payload,
            sealed: false,
            regions: Vec::new(),
            region_urls: Default::default(),
            json: (0..2).map(|_| Default::default()).collect(),
        }
    }

    /// The regions holding its object, most preferred first (several regions configured).
    pub fn with_regions(mut self, regions: Vec<String>, urls: crate::regions::PublicUrls) -> Self {
        self.json = (0..2 * (regions.len() + 1)).map(|_| Default::default()).collect();
        self.regions = regions;
        self.region_urls = urls;
        self
    }

    /// Marks a version sealed at rest (its plaintext reads are audited).
    pub(crate) fn with_sealed(mut self, sealed: bool) -> Self {
        self.sealed = sealed;
        self
    }

    /// The slot of a consumer's `region` label for `update_json` (0: none of the holding regions).
    pub fn region_slot(&self, own: Option<&str>) -> usize {
        own.and_then(|o| self.regions.iter().position(|r| r == o)).map_or(0, |i| i + 1)
    }

    /// The update's JSON, pre-serialised (built at most once per version, flag and region slot).
    pub fn update_json(&self, pinned: bool, slot: usize) -> &serde_json::value::RawValue {
        let slot = if slot > self.regions.len() { 0 } else { slot };
        self.json[2 * slot + usize::from(pinned)].get_or_init(|| {
            use base64::Engine;
            let base = imprint_protocol::data_url(self.topic.as_str(), self.version);
            // Its own region first, then the preference order (`regions` is in that order).
            let mut order: Vec<&String> = Vec::with_capacity(self.regions.len());
            if slot > 0 {
                order.push(&self.regions[slot - 1]);
            }
            order.extend(self.regions.iter().enumerate().filter(|(i, _)| *i + 1 != slot).map(|(_, r)| r));
            let data_urls: Vec<imprint_protocol::DataUrl> = order
                .into_iter()
                .map(|r| {
                    // Absolute when the region's servers have a public URL: a consumer that
                    // cannot reach them moves on to the next region.
                    let host = self.region_urls.get(r).map_or("", String::as_str);
                    imprint_protocol::DataUrl { region: r.clone(), url: format!("{host}{base}?region={r}") }
                })
                .collect();
            let u = UpdateJson {
                version: self.version,
                pinned,
                metadata: &self.metadata,
                content_type: &self.content_type,
                size: self.size,
                sha256: &self.sha256,
                data_base64: self.payload.as_ref().map(|p| base64::engine::general_purpose::STANDARD.encode(p)),
                data_url: data_urls.first().map_or(base.clone(), |d| d.url.clone()),
                data_urls,
            };
            let text = serde_json::to_string(&u).unwrap_or_else(|_| "null".into());
            serde_json::value::RawValue::from_string(text)
                .unwrap_or_else(|_| serde_json::value::RawValue::from_string("null".into()).expect("null is JSON"))
        })
    }
}

#[derive(Debug)]
pub struct ServingTopic {
    pub id: i64,
    pub name: TopicName,
    /// The topic's change counter at the snapshot this was loaded from.
    pub change_seq: i64,
    /// The owning team and whether the topic is restricted (who may poll it).
    pub owner: String,
    pub restricted: bool,
    /// How Apollo clients address it, if they do.
    pub apollo: Option<ApolloServed>,
    /// How OpenFeature (OFREP) providers address it, if they do.
    pub ofrep: Option<OfrepServed>,
    /// The Spring application and profile it is a property source of, if it is one.
    pub spring: Option<SpringServed>,
    /// Some version is not purged (Apollo notifies only topics with a release).
    pub has_live: bool,
    pub index: CurrentIndex,
    /// The versions that resolution can return now (pinned or best per selector).
    pub served: HashMap<u64, Arc<ServedVersion>>,
}

/// A topic's OpenFeature binding, as the `/ofrep` endpoints need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfrepServed {
    pub flag_key: String,
    /// The payload's top-level field that is the flag's value (None: the whole payload).
    pub field: Option<String>,
}

/// A topic's Spring binding: application, and profile (`None`: every profile).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpringServed {
    pub application: String,
    pub profile: Option<String>,
}

/// A topic's Apollo binding, as the `/apollo` endpoint needs it.
#[derive(Clone)]
pub struct ApolloServed {
    pub app_id: String,
    pub namespace: String,
    /// Requests for this namespace (and only this one) must be signed with it.
    pub secret: Option<String>,
}

/// The secret never reaches a log: `Debug` says only whether there is one.
impl std::fmt::Debug for ApolloServed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApolloServed")
            .field("app_id", &self.app_id)
            .field("namespace", &self.namespace)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}
