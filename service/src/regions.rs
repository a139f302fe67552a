//! Several object stores, one per region (docs/regions.md): their configuration
//! (`IMPRINT_OBJECT_STORES`, `IMPRINT_REGION_PREFERENCE`), the order a consumer is sent to
//! them in, and a verified copy between two stores (the worker's pass is `region_copies`).
use crate::error::{Error, Result};
use crate::objects::{store_error, Objects};
use futures::StreamExt;
use object_store::path::Path;
use object_store::WriteMultipart;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The region name of the one-store form (`IMPRINT_OBJECT_STORE`).
pub const DEFAULT_REGION: &str = "default";
/// A region named by a request (`?region=`, a report) that this server has no store for.
pub(crate) fn unknown_region(region: Option<&str>) -> Error {
    Error::invalid(format!("{:?} is not a configured region", region.unwrap_or_default()))
}

/// Backoff of a failed copy: 5 s doubling per attempt, at most an hour.
pub(crate) fn backoff(attempts: i32) -> chrono::Duration {
    let secs = 5i64.saturating_mul(1i64 << attempts.clamp(0, 10)).min(3600);
    chrono::Duration::seconds(secs)
}

/// Refuses a client's `applied` report whose `region` is not a region name (the poll and
/// the relay's reports check it alike).
pub(crate) fn check_report(topic: &str, a: &imprint_protocol::Applied) -> Result<()> {
    match &a.region {
        Some(region) => check_region_name(region).map_err(|e| Error::invalid(format!("applied.{topic}.region: {e}"))),
        None => Ok(()),
    }
}

/// A region's name: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn check_region_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a region name ([a-z0-9][a-z0-9-]{{0,62}})"))
    }
}

/// A region that is not the home region.
#[derive(Clone, Debug)]
pub struct Region {
    pub name: String,
    pub objects: Objects,
}

/// The configured regions besides the home one (`Config::objects`), and the preference order.
#[derive(Clone, Debug)]
pub struct Regions {
    inner: Arc<RegionsInner>,
}

#[derive(Debug, Clone)]
struct RegionsInner {
    home: String,
    others: Vec<Region>,
    /// Every region, most preferred first (`IMPRINT_REGION_PREFERENCE`, then configuration order).
    ranked: Vec<String>,
    /// The public base URL of each region's servers (`IMPRINT_REGION_URLS`): `data_urls`
    /// entries of these regions are absolute. Regions left out get this server's path.
    public_urls: PublicUrls,
}

/// Region → public base URL (no trailing slash).
pub type PublicUrls = Arc<std::collections::BTreeMap<String, String>>;

impl Default for Regions {
    fn default() -> Self {
        Self::new(DEFAULT_REGION.into(), Vec::new(), &[]).expect("one region")
    }
}

impl Regions {
    /// `home` is the name of `Config::objects`; `preference` may name any of the regions.
    pub fn new(home: String, others: Vec<Region>, preference: &[String]) -> std::result::Result<Self, String> {
        let mut all: Vec<String> = vec![home.clone()];
        for r in &others {
            check_region_name(&r.name)?;
            if all.contains(&r.name) {
                return Err(format!("region {:?} is configured twice", r.name));
            }
            all.push(r.name.clone());
        }
        check_region_name(&home)?;
        let mut ranked = Vec::new();
        for p in preference {
            if !all.contains(p) {
                return Err(format!("IMPRINT_REGION_PREFERENCE names {p:?}, which is not a configured region"));
            }
            if !ranked.contains(p) {
                ranked.push(p.clone());
            }
        }
        ranked.extend(all.into_iter().filter(|r| !preference.contains(r)));
        Ok(Self { inner: Arc::new(RegionsInner { home, others, ranked, public_urls: Default::default() }) })
    }

    /// Sets the public base URL of regions' servers from `IMPRINT_REGION_URLS`
    /// (`eu=https://eu.imprint.example,us=https://us.imprint.example`): each a configured
    /// region, an absolute `http(s)` URL without query or fragment.
    pub fn with_public_urls(mut self, spec: &str) -> std::result::Result<Self, String> {
        let mut urls = std::collections::BTreeMap::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, url) =
                item.split_once('=').ok_or_else(|| format!("{item:?}: write each as <region>=<https://…>"))?;
            if !self.is_configured(name) {
                return Err(format!("{name:?} is not a configured region"));
            }
            let parsed = url::Url::parse(url).map_err(|e| format!("region {name}: {url:?} is not a URL: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https")
                || parsed.host_str().is_none()
                || parsed.query().is_some()
                || parsed.fragment().is_some()
                || !parsed.username().is_empty()
                || parsed.password().is_some()
            {
                return Err(format!(
                    "region {name}: {url:?} must be an http(s) base URL without credentials, query or fragment"
                ));
            }
            if urls.insert(name.to_owned(), url.trim_end_matches('/').to_owned()).is_some() {
                return Err(format!("region {name:?} is named twice"));
            }
        }
        Arc::make_mut(&mut self.inner).public_urls = Arc::new(urls);
        Ok(self)
    }

    /// The public base URL of each region that has one (`IMPRINT_REGION_URLS`).
    pub fn public_urls(&self) -> &PublicUrls {
        &self.inner.public_urls
    }

    /// Parses `IMPRINT_OBJECT_STORES` (`eu=s3://bucket/prefix?endpoint=…&access_key_id_env=EU_KEY,us=…`)
    /// and opens each store: the first is the home region. Query options are the
    /// `object_store` settings of that store (`endpoint`, `region`, `access_key_id`, …);
    /// an option ending in `_env` takes its value from the environment variable it names
    /// (so secrets stay out of the URL).
    pub fn open(spec: &str, preference: &[String], presign: bool) -> std::result::Result<(Objects, Self), String> {
        let mut stores: Vec<(String, Objects)> = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, url) =
                item.split_once('=').ok_or_else(|| format!("{item:?}: write each store as <region>=<url>"))?;
            check_region_name(name)?;
            let (base, options) = split_options(url, |k| std::env::var(k).ok())?;
            let objects = Objects::open(&base, &options, presign).map_err(|e| format!("region {name}: {e}"))?;
            stores.push((name.to_owned(), objects));
        }
        if stores.is_empty() {
            return Err("IMPRINT_OBJECT_STORES names no store".into());
        }
        let (home, objects) = stores.remove(0);
        let others = stores.into_iter().map(|(name, objects)| Region { name, objects }).collect();
        Ok((objects, Self::new(home, others, preference)?))
    }

    pub fn home(&self) -> &str {
        &self.inner.home
    }

    pub fn others(&self) -> &[Region] {
        &self.inner.others
    }

    /// More than the home region is configured (polls then carry `data_urls`).
    pub fn several(&self) -> bool {
        !self.inner.others.is_empty()
    }

    /// Every region, most preferred first.
    pub fn ranked(&self) -> &[String] {
        &self.inner.ranked
    }

    pub fn is_configured(&self, name: &str) -> bool {
        self.inner.ranked.iter().any(|r| r == name)
    }

    /// Every configured region, home first, then in configuration order.
    pub fn names(&self) -> Vec<String> {
        std::iter::once(self.inner.home.clone()).chain(self.inner.others.iter().map(|r| r.name.clone())).collect()
    }

    /// The store of a region other than home.
    pub fn other(&self, name: &str) -> Option<&Objects> {
        self.inner.others.iter().find(|r| r.name == name).map(|r| &r.objects)
    }
}

/// The URL without its query, and the query as store options (`*_env` resolved by `env`).
fn split_options(
    url: &str,
    env: impl Fn(&str) -> Option<String>,
) -> std::result::Result<(String, Vec<(String, String)>), String> {
    let Some((base, query)) = url.split_once('?') else { return Ok((url.to_owned(), Vec::new())) };
    let mut options = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("option {pair:?} of {base:?} has no value"))?;
        let v = percent_decode(v);
        match k.strip_suffix("_env") {
            Some(key) => {
                let value = env(&v).ok_or_else(|| format!("option {k} of {base:?}: the variable {v} is not set"))?;
                options.push((key.to_owned(), value));
            }
            None => options.push((k.to_owned(), v)),
        }
    }
    Ok((base.to_owned(), options))
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

/// The regions a topic's objects go to: its own list (narrowed), else all, home first,
/// and how many must hold an object before a version commits (at least 1: home).
pub(crate) fn topic_regions(regions: &Regions, topic: Option<&[String]>, min: Option<i32>) -> (Vec<String>, usize) {
    let all = regions.names();
    let list: Vec<String> = match topic {
        Some(t) => all.into_iter().filter(|r| t.contains(r)).collect(),
        None => all,
    };
    let min = min.map_or(list.len(), |m| (m.max(1) as usize).min(list.len()));
    (list, min.max(1))
}

/// The region a topic's publishes stream to (its objects' own region): home when the
/// topic's regions (`topic_regions`) include it, else the most preferred of them. None: home.
pub(crate) fn primary_region(regions: &Regions, list: &[String]) -> Option<String> {
    if list.iter().any(|r| r == regions.home()) {
        return None;
    }
    regions.ranked().iter().find(|r| list.contains(r)).cloned()
}

/// Checks a topic's `regions` and `min_regions` settings against the configuration (400 otherwise).
pub(crate) fn check_topic_regions(regions: &Regions, list: Option<&[String]>, min: Option<u32>) -> Result<()> {
    if let Some(list) = list {
        if list.is_empty() {
            return Err(Error::invalid("regions must name at least one region (null: all configured regions)"));
        }
        for r in list {
            if !regions.is_configured(r) {
                return Err(Error::invalid(format!(
                    "regions: {r:?} is not a configured region (configured: {})",
                    regions.names().join(", ")
                )));
            }
        }
    }
    if let Some(m) = min {
        let n = list.map_or(regions.names().len(), <[String]>::len);
        if m == 0 || m as usize > n {
            return Err(Error::invalid(format!("min_regions must be between 1 and the topic's {n} regions, not {m}")));
        }
    }
    Ok(())
}

/// A region a registered object's `locations` names: configured, not the home region (its
/// URL is the object's `url`), one of the topic's regions.
pub(crate) fn check_location_region(regions: &Regions, topic_regions: &[String], region: &str) -> Result<()> {
    check_region_name(region).map_err(|e| Error::invalid(format!("locations: {e}")))?;
    if !regions.is_configured(region) {
        return Err(Error::invalid(format!(
            "locations: {region:?} is not a configured region (configured: {})",
            regions.names().join(", ")
        )));
    }
    if region == regions.home() {
        return Err(Error::invalid(format!("locations: {region:?} is the home region, whose URL is the object's url")));
    }
    if !topic_regions.iter().any(|r| r == region) {
        return Err(Error::invalid(format!(
            "locations: {region:?} is not one of the topic's regions ({})",
            topic_regions.join(", ")
        )));
    }
    Ok(())
}

/// `regions` holding a copy, ordered for a consumer in `own` (its `region` label): its own
/// region first, then the preference order.
pub fn order_for(ranked: &[String], holding: &[String], own: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(holding.len());
    if let Some(own) = own.filter(|o| holding.iter().any(|h| h == o)) {
        out.push(own.to_owned());
    }
    for r in ranked {
        if holding.contains(r) && !out.contains(r) {
            out.push(r.clone());
        }
    }
    out
}

/// The key of `home_key` (a key of the home store) in `to`: the same path under its prefix.
pub(crate) fn key_in(home: &Objects, to: &Objects, home_key: &str) -> Path {
    to.key_under_prefix(&home.relative(home_key))
}

/// Copies `from_key` of `from` to `to_key` of `to`, streaming, and checks the bytes
/// against `sha256`; a mismatch deletes the copy and fails. `sha256: None`: copied as they
/// are (a sealed object, whose checksum is the plaintext's: `Imprint::copy_checked` opens
/// the copy to check it).
pub(crate) async fn copy_verified(
    from: &Objects,
    from_key: &Path,
    to: &Objects,
    to_key: &Path,
    sha256: Option<&str>,
) -> Result<u64> {
    let mut stream = from.store().get(from_key).await.map_err(store_error)?.into_stream();
    let upload = to.store().put_multipart(to_key).await.map_err(store_error)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let streamed: Result<()> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(store_error)?;
            hash.update(&chunk);
            size += chunk.len() as u64;
            writer.wait_for_capacity(4).await.map_err(store_error)?;
            writer.put(chunk);
        }
        Ok(())
    }
    .await;
    if let Err(e) = streamed {
        let _ = writer.abort().await;
        return Err(e);
    }
    let got = hex::encode(hash.finalize());
    if let Some(sha256) = sha256.filter(|s| *s != got) {
        let _ = writer.abort().await;
        return Err(Error::ObjectStoreUnavailable(format!(
            "the source object {from_key} has SHA-256 {got}, not the version's {sha256}: not copied"
        )));
    }
    writer.finish().await.map_err(store_error)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_options_come_from_the_query_and_secrets_from_named_variables() {
        let env = |k: &str| (k == "EU_KEY").then(|| "s3cr3t".to_owned());
        let (base, opts) =
            split_options("s3://b/p?endpoint=http%3A%2F%2Fh%3A9&secret_access_key_env=EU_KEY", env).unwrap();
        assert_eq!(base, "s3://b/p");
        assert_eq!(opts, vec![("endpoint".into(), "http://h:9".into()), ("secret_access_key".into(), "s3cr3t".into())]);
        assert!(split_options("s3://b?x_env=NOPE", env).is_err());
        assert!(split_options("s3://b?novalue", env).is_err());
        assert_eq!(split_options("s3://b", env).unwrap(), ("s3://b".into(), vec![]));
    }

    #[test]
    fn a_consumer_gets_its_own_region_first_then_the_preference_order() {
        let ranked: Vec<String> = ["us", "eu", "ap"].map(String::from).to_vec();
        let holding: Vec<String> = ["eu", "us"].map(String::from).to_vec();
        assert_eq!(order_for(&ranked, &holding, Some("eu")), ["eu", "us"]);
        assert_eq!(order_for(&ranked, &holding, None), ["us", "eu"]);
        // Its own region without a copy: not listed.
        assert_eq!(order_for(&ranked, &holding, Some("ap")), ["us", "eu"]);
    }

    #[test]
    fn topic_regions_narrow_the_set_and_min_defaults_to_all() {
        let r = Regions::new(
            "eu".into(),
            vec![Region { name: "us".into(), objects: Objects::default() }],
            &["us".to_owned()],
        )
        .unwrap();
        assert_eq!(r.ranked(), ["us", "eu"]);
        assert_eq!(topic_regions(&r, None, None), (vec!["eu".to_owned(), "us".to_owned()], 2));
        assert_eq!(topic_regions(&r, None, Some(1)), (vec!["eu".to_owned(), "us".to_owned()], 1));
        assert_eq!(topic_regions(&r, Some(&["eu".to_owned()]), None), (vec!["eu".to_owned()], 1));
        assert!(check_topic_regions(&r, Some(&["mars".to_owned()]), None).is_err());
        assert!(check_topic_regions(&r, Some(&[]), None).is_err());
        assert!(check_topic_regions(&r, None, Some(3)).is_err());
        assert!(check_topic_regions(&r, None, Some(0)).is_err());
        assert!(check_topic_regions(&r, None, Some(2)).is_ok());
        // Topics may leave out the home region: they stream to the most preferred of theirs.
        assert!(check_topic_regions(&r, Some(&["us".to_owned()]), Some(1)).is_ok());
        assert_eq!(primary_region(&r, &["us".to_owned()]), Some("us".to_owned()));
        assert_eq!(primary_region(&r, &["eu".to_owned(), "us".to_owned()]), None);
        assert!(Regions::new("eu".into(), vec![], &["us".to_owned()]).is_err());
        assert!(Regions::new("EU".into(), vec![], &[]).is_err());
        let urls = r.clone().with_public_urls("eu=https://eu.imprint.example/, us=http://10.0.0.2:3000").unwrap();
        assert_eq!(urls.public_urls().get("eu").map(String::as_str), Some("https://eu.imprint.example"));
        assert_eq!(urls.public_urls().get("us").map(String::as_str), Some("http://10.0.0.2:3000"));
        for bad in [
            "mars=https://m.example",
            "eu",
            "eu=ftp://x",
            "eu=https://x/?a=1",
            "eu=https://u:p@x",
            "eu=/relative",
            "eu=https://a,eu=https://b",
        ] {
            assert!(r.clone().with_public_urls(bad).is_err(), "{bad}");
        }
    }
}
