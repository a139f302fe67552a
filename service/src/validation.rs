//! What a topic's payloads must satisfy before a version of them commits: its JSON Schema
//! (compiled once per topic and schema) and, for a topic bound to Apollo, a properties
//! namespace Apollo clients can read; for a topic bound to Spring, a property source.
use crate::error::{Error, Result};
use crate::store;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// What a topic's payloads must satisfy: its JSON Schema (compiled once per topic and
/// schema, `compiled`) and its Apollo namespace.
#[derive(Clone)]
pub(crate) struct Validation {
    topic: String,
    schema: Option<(String, Arc<jsonschema::Validator>)>,
    apollo_namespace: Option<String>,
    /// Bound to a Spring application: payloads must be property sources.
    spring: bool,
}

impl Validation {
    pub(crate) fn of(t: &store::topics::TopicRef) -> Result<Option<Validation>> {
        if t.json_schema.is_none() && t.apollo_namespace.is_none() && t.spring_application.is_none() {
            return Ok(None);
        }
        Ok(Some(Validation {
            topic: t.name.clone(),
            schema: t.json_schema.as_ref().map(|s| compiled(t.id, s)).transpose()?,
            apollo_namespace: t.apollo_namespace.clone(),
            spring: t.spring_application.is_some(),
        }))
    }

    /// Equal keys: the same rules (schema by its hash).
    pub(crate) fn key(&self) -> (Option<&str>, Option<&str>, bool) {
        (self.schema.as_ref().map(|(h, _)| h.as_str()), self.apollo_namespace.as_deref(), self.spring)
    }

    pub(crate) fn validate(&self, bytes: &[u8]) -> Result<()> {
        if let Some((_, validator)) = &self.schema {
            validate_against(validator, bytes)?;
        }
        if let Some(ns) = &self.apollo_namespace {
            // Apollo clients read a properties namespace as flat key/values.
            imprint_domain::apollo::configurations(ns, bytes).map_err(|e| {
                Error::SchemaViolation(format!("{} is bound to Apollo namespace {ns:?}: {e}", self.topic))
            })?;
        }
        if self.spring {
            // Spring clients read a property source: JSON, YAML or .properties mappings.
            imprint_domain::spring::flatten(bytes)
                .map_err(|e| Error::SchemaViolation(format!("{} is bound to a Spring application: {e}", self.topic)))?;
        }
        Ok(())
    }
}

/// Compiled schemas, by topic id and the schema's SHA-256: a schema is compiled once per
/// topic setting, not per publish. Small (a schema is at most `MAX_SCHEMA_BYTES`) and
/// emptied when it holds more than `MAX_COMPILED` of them.
static COMPILED: std::sync::LazyLock<std::sync::Mutex<HashMap<(i64, String), CompiledSchema>>> =
    std::sync::LazyLock::new(Default::default);
const MAX_COMPILED: usize = 1_000;

/// A stored schema compiles (it was checked when set); one that somehow does not refuses
/// every publish to the topic with the compiler's message.
type CompiledSchema = std::result::Result<Arc<jsonschema::Validator>, String>;

fn compiled(topic_id: i64, schema: &serde_json::Value) -> Result<(String, Arc<jsonschema::Validator>)> {
    let hash = hex::encode(Sha256::digest(schema.to_string().as_bytes()));
    let key = (topic_id, hash.clone());
    let mut cache = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
    if !cache.contains_key(&key) {
        if cache.len() >= MAX_COMPILED {
            cache.clear();
        }
        let v = jsonschema::validator_for(schema).map(Arc::new).map_err(|e| e.to_string());
        cache.insert(key.clone(), v);
    }
    match &cache[&key] {
        Ok(v) => Ok((hash, v.clone())),
        Err(e) => Err(Error::Internal(format!("stored schema does not compile: {e}"))),
    }
}

fn validate_against(validator: &jsonschema::Validator, payload: &[u8]) -> Result<()> {
    let parsed: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
        Error::SchemaViolation(format!(
            "payload does not satisfy the topic's JSON Schema: the topic has a JSON Schema and the payload is not JSON: {e}"
        ))
    })?;
    let errors: Vec<String> =
        validator.iter_errors(&parsed).take(5).map(|e| format!("{} (at {})", e, e.instance_path)).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::SchemaViolation(format!("payload does not satisfy the topic's JSON Schema: {}", errors.join("; "))))
    }
}
