//! Topic names (`[a-z0-9][a-z0-9._-]{0,127}`) and version numbers (1, 2, 3, …).
use serde::{Deserialize, Serialize};
use std::fmt;

/// A topic name that is known to be valid; the only way to build one is [`TopicName::parse`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TopicName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic name {name:?}: {reason}")]
pub struct TopicNameError {
    pub name: String,
    pub reason: &'static str,
}

impl TopicName {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Self, TopicNameError> {
        let err = |reason| TopicNameError { name: s.chars().take(200).collect(), reason };
        let mut chars = s.chars();
        match chars.next() {
            None => return Err(err("a topic name cannot be empty")),
            Some(c) if !(c.is_ascii_lowercase() || c.is_ascii_digit()) => {
                return Err(err("a topic name must start with a lowercase letter or a digit"))
            }
            _ => {}
        }
        if s.len() > Self::MAX_LEN {
            return Err(err("a topic name has at most 128 characters"));
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')) {
            return Err(err("a topic name may only contain a-z, 0-9, '.', '_' and '-'"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TopicName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TopicName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A version number: 1, 2, 3, … (a topic's first version is 1; 0 is never one). The only
/// ways to build one are [`VersionNumber::new`] and [`VersionNumber::parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct VersionNumber(u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionNumberError {
    #[error("version must be a version number (1, 2, 3, …)")]
    Zero,
    #[error("{0:?} is not a version number (1, 2, 3, …)")]
    NotANumber(String),
}

impl VersionNumber {
    pub fn new(n: u64) -> Result<Self, VersionNumberError> {
        if n == 0 {
            return Err(VersionNumberError::Zero);
        }
        Ok(Self(n))
    }

    /// `1`, `2`, … as written in a path or a form.
    pub fn parse(s: &str) -> Result<Self, VersionNumberError> {
        let not = || VersionNumberError::NotANumber(s.chars().take(40).collect());
        s.parse::<u64>().ok().filter(|n| *n >= 1).map(Self).ok_or_else(not)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for VersionNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<VersionNumber> for u64 {
    fn from(v: VersionNumber) -> u64 {
        v.0
    }
}

impl<'de> Deserialize<'de> for VersionNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        VersionNumber::new(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for n in ["payments.supported-methods", "a", "0", "ab_c.d-e", &"a".repeat(128)] {
            assert_eq!(TopicName::parse(n).map(|t| t.to_string()), Ok(n.to_string()));
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for n in ["", "A", ".a", "-a", "_a", "a b", "a/b", "aB", "ä", &"a".repeat(129)] {
            assert!(TopicName::parse(n).is_err(), "{n:?} should be rejected");
        }
    }

    #[test]
    fn version_numbers_start_at_one() {
        assert_eq!(VersionNumber::new(1).map(VersionNumber::get), Ok(1));
        assert_eq!(VersionNumber::new(0), Err(VersionNumberError::Zero));
        assert_eq!(VersionNumber::new(0).unwrap_err().to_string(), "version must be a version number (1, 2, 3, …)");
        assert_eq!(VersionNumber::parse("42").map(u64::from), Ok(42));
        for bad in ["0", "", "-1", "1.5", "v2", "99999999999999999999"] {
            let e = VersionNumber::parse(bad).unwrap_err();
            assert_eq!(e.to_string(), format!("{bad:?} is not a version number (1, 2, 3, …)"));
        }
        assert_eq!(VersionNumber::new(7).unwrap().to_string(), "7");
        assert_eq!(serde_json::to_string(&VersionNumber::new(3).unwrap()).unwrap(), "3");
        assert!(serde_json::from_str::<VersionNumber>("0").is_err());
        assert_eq!(serde_json::from_str::<VersionNumber>("5").unwrap().get(), 5);
    }
}
