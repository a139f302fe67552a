//! Selectors (a conjunction of label equalities) and consumer labels.
//!
//! String form: `region=eu-west-1,app=checkout`, `*` for the empty selector.
//! JSON form: `{"region": "eu-west-1"}`, `{}` for the empty selector.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

const MAX_KEY_LEN: usize = 63;
const MAX_VALUE_LEN: usize = 256;
const MAX_PAIRS: usize = 32;
/// A consumer's labels take at most this many bytes, keys and values together: 32 pairs
/// of the longest keys and values would be ~10 KiB per node per topic in the audit.
pub const MAX_LABEL_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("label key {0:?} is invalid: keys start with a letter or digit and contain only letters, digits, '.', '_', '-' or '/' (at most 63 characters)")]
    BadKey(String),
    #[error("label value {value:?} for key {key:?} is invalid: values are 1 to 256 characters without ',', '=', '*' or whitespace")]
    BadValue { key: String, value: String },
    #[error("label key {0:?} appears twice")]
    DuplicateKey(String),
    #[error("{0:?} is not of the form key=value")]
    NotAPair(String),
    #[error("a selector has at most 32 labels")]
    TooMany,
    #[error("a selector must be a JSON object of string values, e.g. {{\"region\": \"eu-west-1\"}}")]
    NotAnObject,
    #[error("labels take at most 4096 bytes (keys and values together)")]
    TooLarge,
}

/// Labels beyond `MAX_LABEL_BYTES` are refused (selectors are not bounded this way).
fn check_label_bytes(map: &BTreeMap<String, String>) -> Result<(), SelectorError> {
    if map.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > MAX_LABEL_BYTES {
        return Err(SelectorError::TooLarge);
    }
    Ok(())
}

fn valid_key(k: &str) -> bool {
    let mut c = k.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphanumeric())
        && k.len() <= MAX_KEY_LEN
        && c.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

fn valid_value(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_VALUE_LEN
        && v.chars().all(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, ',' | '=' | '*'))
}

fn check_pair(k: &str, v: &str) -> Result<(), SelectorError> {
    if !valid_key(k) {
        return Err(SelectorError::BadKey(k.chars().take(100).collect()));
    }
    if !valid_value(v) {
        return Err(SelectorError::BadValue { key: k.to_owned(), value: v.chars().take(100).collect() });
    }
    Ok(())
}

/// Parses `k=v,k=v`; `*` and the empty string give the empty map.
fn parse_pairs(s: &str) -> Result<BTreeMap<String, String>, SelectorError> {
    let s = s.trim();
    let mut map = BTreeMap::new();
    if s.is_empty() || s == "*" {
        return Ok(map);
    }
    for part in s.split(',') {
        let part = part.trim();
        let (k, v) = part.split_once('=').ok_or_else(|| SelectorError::NotAPair(part.chars().take(100).collect()))?;
        let (k, v) = (k.trim(), v.trim());
        check_pair(k, v)?;
        if map.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(SelectorError::DuplicateKey(k.to_owned()));
        }
        if map.len() > MAX_PAIRS {
            return Err(SelectorError::TooMany);
        }
    }
    Ok(map)
}

fn pairs_from_json(v: &serde_json::Value) -> Result<BTreeMap<String, String>, SelectorError> {
    let obj = v.as_object().ok_or(SelectorError::NotAnObject)?;
    if obj.len() > MAX_PAIRS {
        return Err(SelectorError::TooMany);
    }
    let mut map = BTreeMap::new();
    for (k, v) in obj {
        let v = v.as_str().ok_or(SelectorError::NotAnObject)?;
        check_pair(k, v)?;
        map.insert(k.clone(), v.to_owned());
    }
    Ok(map)
}

fn write_pairs(map: &BTreeMap<String, String>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if map.is_empty() {
        return f.write_str("*");
    }
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write!(f, "{k}={v}")?;
    }
    Ok(())
}

/// A conjunction of label equalities. Keys are kept sorted, so the string form
/// (`Display`) is canonical: two equal selectors always print the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Selector(BTreeMap<String, String>);

impl Selector {
    /// The empty selector `*`, matching every consumer.
    pub fn all() -> Self {
        Self::default()
    }

    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        parse_pairs(s).map(Self)
    }

    pub fn from_json(v: &serde_json::Value) -> Result<Self, SelectorError> {
        pairs_from_json(v).map(Self)
    }

    pub fn from_pairs<I, K, V>(pairs: I) -> Result<Self, SelectorError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            let (k, v) = (k.into(), v.into());
            check_pair(&k, &v)?;
            if map.insert(k.clone(), v).is_some() {
                return Err(SelectorError::DuplicateKey(k));
            }
        }
        if map.len() > MAX_PAIRS {
            return Err(SelectorError::TooMany);
        }
        Ok(Self(map))
    }

    /// Number of keys: how specific the selector is.
    pub fn specificity(&self) -> usize {
        self.0.len()
    }

    pub fn is_all(&self) -> bool {
        self.0.is_empty()
    }

    /// True iff every `k=v` of the selector is in `labels`.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|(k, v)| labels.0.get(k) == Some(v))
    }

    pub fn pairs(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// The selector read as consumer labels (used to ask "what does this scope resolve to").
    pub fn as_labels(&self) -> Labels {
        Labels(self.0.clone())
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect(),
        )
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_pairs(&self.0, f)
    }
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Selector::from_json(&v).map_err(serde::de::Error::custom)
    }
}

/// A consumer's labels: a string map (`region`, `env`, `app`, `cluster`, or any other key).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let map = parse_pairs(s)?;
        check_label_bytes(&map)?;
        Ok(Self(map))
    }

    pub fn from_json(v: &serde_json::Value) -> Result<Self, SelectorError> {
        let map = pairs_from_json(v)?;
        check_label_bytes(&map)?;
        Ok(Self(map))
    }

    pub fn from_pairs<I, K, V>(pairs: I) -> Result<Self, SelectorError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let s = Selector::from_pairs(pairs)?;
        check_label_bytes(&s.0)?;
        Ok(Labels(s.0))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn pairs(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_pairs(&self.0, f)
    }
}

/// Labels are read straight into their map (every poll carries them; going through a
/// `serde_json::Value` of the whole object and copying it was a measurable part of a
/// poll), with the same checks and messages as `Labels::from_json`.
impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, Visitor};
        struct V;
        fn not_an_object<E: Error>() -> E {
            E::custom(SelectorError::NotAnObject)
        }
        impl<'de> Visitor<'de> for V {
            type Value = Labels;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string labels")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Labels, A::Error> {
                let mut map = BTreeMap::new();
                let mut bytes = 0;
                while let Some(k) = m.next_key::<String>()? {
                    let serde_json::Value::String(v) = m.next_value::<serde_json::Value>()? else {
                        return Err(not_an_object());
                    };
                    check_pair(&k, &v).map_err(A::Error::custom)?;
                    bytes += k.len() + v.len();
                    if bytes > MAX_LABEL_BYTES {
                        return Err(A::Error::custom(SelectorError::TooLarge));
                    }
                    map.insert(k, v);
                    if map.len() > MAX_PAIRS {
                        return Err(A::Error::custom(SelectorError::TooMany));
                    }
                }
                Ok(Labels(map))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Labels, A::Error> {
                Err(not_an_object())
            }
            fn visit_str<E: Error>(self, _: &str) -> Result<Labels, E> {
                Err(not_an_object())
            }
            fn visit_bool<E: Error>(self, _: bool) -> Result<Labels, E> {
                Err(not_an_object())
            }
            fn visit_i64<E: Error>(self, _: i64) -> Result<Labels, E> {
                Err(not_an_object())
            }
            fn visit_u64<E: Error>(self, _: u64) -> Result<Labels, E> {
                Err(not_an_object())
            }
            fn visit_f64<E: Error>(self, _: f64) -> Result<Labels, E> {
                Err(not_an_object())
            }
            fn visit_unit<E: Error>(self) -> Result<Labels, E> {
                Err(not_an_object())
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // proptest bodies are not `#[test]` fns to clippy
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_are_bounded_in_bytes() {
        let big: serde_json::Map<String, serde_json::Value> =
            (0..20).map(|i| (format!("k{i:02}"), json!("v".repeat(250)))).collect();
        let v = serde_json::Value::Object(big);
        assert_eq!(Labels::from_json(&v), Err(SelectorError::TooLarge));
        let e = serde_json::from_value::<Labels>(v.clone()).expect_err("too large");
        assert!(e.to_string().contains("4096 bytes"), "{e}");
        assert!(Selector::from_json(&v).is_ok(), "selectors are not bounded this way");
        let pairs: Vec<String> = (0..20).map(|i| format!("k{i:02}={}", "v".repeat(250))).collect();
        assert_eq!(Labels::parse(&pairs.join(",")), Err(SelectorError::TooLarge));
        let small: serde_json::Map<String, serde_json::Value> =
            (0..15).map(|i| (format!("k{i:02}"), json!("v".repeat(250)))).collect();
        assert!(serde_json::from_value::<Labels>(serde_json::Value::Object(small)).is_ok());
    }

    #[test]
    fn parses_string_form_canonically() {
        let s = Selector::parse(" region=eu-west-1 , app=checkout").unwrap();
        assert_eq!(s.to_string(), "app=checkout,region=eu-west-1");
        assert_eq!(s.specificity(), 2);
        assert_eq!(Selector::parse("*").unwrap(), Selector::all());
        assert_eq!(Selector::parse("").unwrap().to_string(), "*");
    }

    #[test]
    fn labels_deserialize_like_from_json() {
        let many: serde_json::Map<String, serde_json::Value> =
            (0..=MAX_PAIRS).map(|i| (format!("k{i}"), json!("v"))).collect();
        for v in [
            json!({"region": "eu", "app": "a"}),
            json!({}),
            json!({"a": 1}),
            json!({"a": ""}),
            json!({"": "x"}),
            json!({"a": {"b": "c"}}),
            json!([]),
            json!("a=b"),
            json!(null),
            json!(3),
            serde_json::Value::Object(many),
        ] {
            let direct = serde_json::from_value::<Labels>(v.clone()).map_err(|e| e.to_string());
            let checked = Labels::from_json(&v).map_err(|e| e.to_string());
            assert_eq!(direct, checked, "{v}");
        }
    }

    #[test]
    fn json_and_string_forms_agree() {
        let a = Selector::from_json(&json!({"region": "eu-west-1", "app": "checkout"})).unwrap();
        let b = Selector::parse("app=checkout,region=eu-west-1").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_json(), json!({"app": "checkout", "region": "eu-west-1"}));
        assert_eq!(Selector::from_json(&json!({})).unwrap(), Selector::all());
    }

    #[test]
    fn rejects_bad_selectors() {
        for s in ["region", "region=", "=x", "a=b,a=c", "re gion=x", "a=b=c", "a=*", ",", "a=b,"] {
            assert!(Selector::parse(s).is_err(), "{s:?} should be rejected");
        }
        for v in [json!([]), json!("a=b"), json!({"a": 1}), json!({"a": ""}), json!({"": "x"}), json!(null)] {
            assert!(Selector::from_json(&v).is_err(), "{v} should be rejected");
        }
    }

    #[test]
    fn matching_is_subset_of_labels() {
        let labels = Labels::parse("region=eu-west-1,app=checkout,env=prod").unwrap();
        assert!(Selector::all().matches(&labels));
        assert!(Selector::parse("region=eu-west-1").unwrap().matches(&labels));
        assert!(Selector::parse("app=checkout,region=eu-west-1").unwrap().matches(&labels));
        assert!(!Selector::parse("region=us-east-1").unwrap().matches(&labels));
        assert!(!Selector::parse("cluster=c1").unwrap().matches(&labels));
        assert!(!Selector::parse("region=eu-west-1,cluster=c1").unwrap().matches(&labels));
        assert!(Selector::all().matches(&Labels::default()));
    }
}
