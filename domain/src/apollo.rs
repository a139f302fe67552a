//! What Apollo's config service means by a namespace and a configuration, as pure rules:
//! name normalisation, which namespaces are properties, turning a payload into Apollo's
//! `configurations`, the `.properties` text form, and signatures' string to sign.
use std::collections::BTreeMap;

/// Namespace formats that Apollo serves as one `content` item rather than key/values.
const FILE_FORMATS: [&str; 5] = ["json", "yaml", "yml", "xml", "txt"];

/// `application.properties` → `application` (Apollo drops the suffix, any case).
pub fn strip_properties(ns: &str) -> &str {
    let n = ns.len();
    if n > 11 && ns.is_char_boundary(n - 11) && ns[n - 11..].eq_ignore_ascii_case(".properties") {
        &ns[..n - 11]
    } else {
        ns
    }
}

/// The key two namespace names are compared by: without `.properties`, lower case.
pub fn namespace_key(ns: &str) -> String {
    strip_properties(ns).to_ascii_lowercase()
}

/// Is this a properties namespace (flat key/values), as opposed to a file format?
pub fn is_properties(ns: &str) -> bool {
    let ns = strip_properties(ns);
    match ns.rsplit_once('.') {
        Some((_, ext)) => !FILE_FORMATS.iter().any(|f| ext.eq_ignore_ascii_case(f)),
        None => true,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("a properties namespace needs a JSON object of scalar values (or .properties text); {0}")]
    NotProperties(String),
}

/// A payload as Apollo `configurations`: for a properties namespace, a JSON object of
/// scalars (strings as they are, numbers and booleans as their JSON text, nulls left out)
/// or `.properties` text; for a file namespace, `{"content": <the text>}`.
pub fn configurations(ns: &str, payload: &[u8]) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = String::from_utf8_lossy(payload);
    if !is_properties(ns) {
        return Ok(BTreeMap::from([("content".to_owned(), text.into_owned())]));
    }
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                serde_json::Value::Number(n) => Ok((k, n.to_string())),
                serde_json::Value::Bool(b) => Ok((k, b.to_string())),
                _ => Err(ConfigError::NotProperties(format!("the value of {k:?} is an object or an array"))),
            })
            .collect(),
        Ok(_) => Err(ConfigError::NotProperties("the payload is JSON but not an object".into())),
        Err(_) => parse_properties(&text),
    }
}

/// `.properties` text: `key=value` or `key: value` lines, `#`/`!` comments, blank lines.
/// (Line continuations and escapes beyond `\\=`/`\\:` are not needed by config payloads.)
pub fn parse_properties(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let split = line.char_indices().find(|(j, c)| matches!(c, '=' | ':') && !line[..*j].ends_with('\\'));
        let Some((j, _)) = split else {
            return Err(ConfigError::NotProperties(format!("line {} has no '=' or ':'", i + 1)));
        };
        let key = line[..j].trim().replace("\\=", "=").replace("\\:", ":");
        if key.is_empty() {
            return Err(ConfigError::NotProperties(format!("line {} has an empty key", i + 1)));
        }
        out.insert(key, line[j + 1..].trim().to_owned());
    }
    Ok(out)
}

/// The `.properties` text form Apollo's `/configfiles` answers (Java escaping).
pub fn render_properties(conf: &BTreeMap<String, String>) -> String {
    fn esc(s: &str, key: bool) -> String {
        let mut out = String::with_capacity(s.len());
        for (i, c) in s.chars().enumerate() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '=' | ':' | '#' | '!' => {
                    out.push('\\');
                    out.push(c);
                }
                ' ' if key || i == 0 => out.push_str("\\ "),
                c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                    let mut buf = [0u16; 2];
                    for u in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{u:04X}"));
                    }
                }
                c => out.push(c),
            }
        }
        out
    }
    conf.iter().map(|(k, v)| format!("{}={}\n", esc(k, true), esc(v, false))).collect()
}

/// Apollo's string to sign: `timestamp + "\n" + path_with_query`.
pub fn string_to_sign(timestamp: &str, path_with_query: &str) -> String {
    format!("{timestamp}\n{path_with_query}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // proptest bodies are not `#[test]` fns to clippy
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(strip_properties("application.properties"), "application");
        assert_eq!(strip_properties("Application.PROPERTIES"), "Application");
        assert_eq!(strip_properties("x.json"), "x.json");
        assert_eq!(strip_properties(".properties"), ".properties");
        assert_eq!(namespace_key("Feature.Flags.properties"), "feature.flags");
        assert!(is_properties("application") && is_properties("a.b.properties") && is_properties("team.flags"));
        for f in ["x.json", "x.yaml", "x.YML", "x.xml", "x.txt"] {
            assert!(!is_properties(f), "{f}");
        }
    }

    #[test]
    fn payloads_become_configurations() {
        let c = configurations("application", br#"{"timeout": 100, "name": "a b", "on": true, "gone": null}"#).unwrap();
        assert_eq!(
            c,
            BTreeMap::from([
                ("name".into(), "a b".into()),
                ("on".into(), "true".into()),
                ("timeout".into(), "100".into()),
            ])
        );
        let c = configurations("application", b"# comment\nurl = http://x:1/y\n\nmode: fast\na\\=b=c\n").unwrap();
        assert_eq!(c["url"], "http://x:1/y");
        assert_eq!(c["mode"], "fast");
        assert_eq!(c["a=b"], "c");
        assert!(matches!(configurations("application", br#"{"a": {"b": 1}}"#), Err(ConfigError::NotProperties(_))));
        assert!(matches!(configurations("application", b"[1, 2]"), Err(ConfigError::NotProperties(_))));
        assert!(matches!(configurations("application", b"just words"), Err(ConfigError::NotProperties(_))));
        let f = configurations("rules.json", br#"{"a": {"b": 1}}"#).unwrap();
        assert_eq!(f["content"], r#"{"a": {"b": 1}}"#);
    }

    #[test]
    fn properties_text_round_trips() {
        let conf = BTreeMap::from([
            ("a key".to_owned(), " lead=x:y#z".to_owned()),
            ("é".to_owned(), "line\nbreak\\".to_owned()),
        ]);
        let text = render_properties(&conf);
        assert_eq!(text, "a\\ key=\\ lead\\=x\\:y\\#z\n\\u00E9=line\\nbreak\\\\\n");
    }
}
