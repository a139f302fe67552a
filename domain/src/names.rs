//! Topic names: `[a-z0-9][a-z0-9._-]{0,127}`.
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
}
