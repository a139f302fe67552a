//! What Spring Cloud Config means by an application, its profiles and a property source,
//! as pure rules: names, the `{application}-{profiles}.{ext}` file form, a payload
//! (`.properties`, JSON or YAML) flattened into dotted keys and `a[0]` list entries as
//! Spring's `YamlProcessor` does, and the merged map turned back into a tree for the
//! `.yml`/`.json` forms or into `.properties` text.
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A request names at most this many profiles.
pub const MAX_PROFILES: usize = 16;
/// List indexes past this stay literal keys when a tree is rebuilt (a key such as
/// `a[99999999]` must not make the server build a list that long).
const MAX_LIST_INDEX: usize = 10_000;
/// Nesting deeper than this is refused (YAML/JSON bombs of nested lists).
const MAX_DEPTH: usize = 64;

/// The application shared by every application (`application.yml` in Spring).
pub const SHARED_APPLICATION: &str = "application";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpringError {
    #[error("{0}")]
    BadName(String),
    #[error("a Spring property source is a mapping (JSON object, YAML mapping or .properties text): {0}")]
    NotASource(String),
}

/// An application or profile name: 1-64 letters, digits, '.', '_' or '-' (a profile is
/// also a label value, so no ',' '=' '*' or spaces).
pub fn check_name(what: &str, s: &str) -> Result<(), SpringError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !s.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(SpringError::BadName(format!("{what} {s:?} is not a name: 1-64 letters, digits, '.', '_' or '-'")))
    }
}

/// `dev,mysql` → `["dev", "mysql"]` (Spring: the last one wins).
pub fn parse_profiles(s: &str) -> Result<Vec<String>, SpringError> {
    let mut out: Vec<String> = Vec::new();
    for p in s.split(',').map(str::trim) {
        check_name("profile", p)?;
        if !out.iter().any(|q| q == p) {
            out.push(p.to_owned());
        }
    }
    if out.len() > MAX_PROFILES {
        return Err(SpringError::BadName(format!("a request names at most {MAX_PROFILES} profiles")));
    }
    Ok(out)
}

/// The plain forms' formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    Properties,
    Yaml,
    Json,
}

/// `shop-dev,mysql.yml` → (`shop`, `dev,mysql`, Yaml): the name is split at its last
/// `-` (as Spring's `{application}-{profiles}` pattern matches). `None`: not that form.
pub fn split_file(file: &str) -> Option<(&str, &str, FileFormat)> {
    let (stem, ext) = file.rsplit_once('.')?;
    let format = match ext {
        "properties" => FileFormat::Properties,
        "yml" | "yaml" => FileFormat::Yaml,
        "json" => FileFormat::Json,
        _ => return None,
    };
    let (app, profiles) = stem.rsplit_once('-')?;
    (!app.is_empty() && !profiles.is_empty()).then_some((app, profiles, format))
}

/// A payload as one Spring property source: dotted keys, `key[i]` for list entries,
/// scalars as they are (numbers and booleans stay typed, `null` and empty lists become
/// `""`, as Spring's `YamlProcessor` makes them). JSON, YAML (one document) or
/// `.properties` text (every value a string), tried in that order.
pub fn flatten(payload: &[u8]) -> Result<BTreeMap<String, Value>, SpringError> {
    let trimmed = payload.iter().position(|b| !b.is_ascii_whitespace());
    let Some(_) = trimmed else { return Ok(BTreeMap::new()) };
    let text = std::str::from_utf8(payload).map_err(|_| SpringError::NotASource("the payload is not UTF-8".into()))?;
    let tree = match serde_json::from_str::<Value>(text) {
        Ok(v) => v,
        Err(_) => match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
            Ok(y) if y.is_mapping() => yaml_to_json(y, 0)?,
            yaml => {
                return match crate::apollo::parse_properties(text) {
                    Ok(props) => Ok(props.into_iter().map(|(k, v)| (k, Value::String(v))).collect()),
                    Err(crate::apollo::ConfigError::NotProperties(e)) => Err(SpringError::NotASource(match yaml {
                        Err(y) => format!("not JSON, not YAML ({y}) and not .properties ({e})"),
                        Ok(_) => format!("the YAML is not a mapping, and the text is not .properties ({e})"),
                    })),
                };
            }
        },
    };
    let Value::Object(map) = tree else {
        return Err(SpringError::NotASource("the payload is JSON but not an object".into()));
    };
    let mut out = BTreeMap::new();
    flatten_into(&mut out, "", &Value::Object(map), 0)?;
    Ok(out)
}

/// Spring's key building: `path.key`, or `path[i]` for list entries.
fn join(path: &str, key: &str) -> String {
    match (path.is_empty(), key.starts_with('[')) {
        (true, _) => key.to_owned(),
        (false, true) => format!("{path}{key}"),
        (false, false) => format!("{path}.{key}"),
    }
}

fn flatten_into(out: &mut BTreeMap<String, Value>, path: &str, v: &Value, depth: usize) -> Result<(), SpringError> {
    if depth > MAX_DEPTH {
        return Err(SpringError::NotASource(format!("nested deeper than {MAX_DEPTH} levels")));
    }
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten_into(out, &join(path, k), v, depth + 1)?;
            }
        }
        Value::Array(a) if a.is_empty() => {
            out.insert(path.to_owned(), Value::String(String::new()));
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten_into(out, &join(path, &format!("[{i}]")), v, depth + 1)?;
            }
        }
        Value::Null => {
            out.insert(path.to_owned(), Value::String(String::new()));
        }
        scalar => {
            out.insert(path.to_owned(), scalar.clone());
        }
    }
    Ok(())
}

/// A YAML value as JSON: keys as their text, tags dropped (their value kept), `.inf`
/// and `.nan` as text.
fn yaml_to_json(y: serde_yaml_ng::Value, depth: usize) -> Result<Value, SpringError> {
    use serde_yaml_ng::Value as Y;
    if depth > MAX_DEPTH {
        return Err(SpringError::NotASource(format!("nested deeper than {MAX_DEPTH} levels")));
    }
    Ok(match y {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or_else(|| Value::String(n.to_string()), Value::Number)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(s) => Value::Array(s.into_iter().map(|v| yaml_to_json(v, depth + 1)).collect::<Result<_, _>>()?),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Bool(b) => b.to_string(),
                    Y::Number(n) => n.to_string(),
                    Y::Null => "null".to_owned(),
                    _ => return Err(SpringError::NotASource("a YAML key is a list or a mapping".into())),
                };
                out.insert(key, yaml_to_json(v, depth + 1)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(t.value, depth + 1)?,
    })
}

/// Property sources merged as a client sees them: the first source (most specific)
/// wins for each key.
pub fn merge<'a>(sources: impl IntoIterator<Item = &'a BTreeMap<String, Value>>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for s in sources {
        for (k, v) in s {
            out.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    out
}

/// A scalar as `.properties` shows it.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The `.properties` form: `key: value` lines, keys sorted (Spring's
/// `EnvironmentController`).
pub fn render_properties(merged: &BTreeMap<String, Value>) -> String {
    let mut out = String::new();
    for (k, v) in merged {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(&text_of(v));
        out.push('\n');
    }
    out
}

/// One step of a flattened key: a map key or a list index.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[0][1].c` → a, b, 0, 1, c. `None`: a key that is not of this form (kept literal).
fn steps(key: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() {
            return None;
        }
        out.push(Step::Key(name));
        while !rest.is_empty() {
            let close = rest.find(']')?;
            let n: usize = rest.get(1..close)?.parse().ok().filter(|n| *n <= MAX_LIST_INDEX)?;
            out.push(Step::Index(n));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return None;
            }
        }
    }
    Some(out)
}

/// The merged map as a tree (the `.yml`/`.json` forms): dotted keys become nested
/// mappings, `[i]` list entries lists. Keys that are not of that form, or that clash
/// with another key's tree (`a` and `a.b`), stay as they are at the top.
pub fn unflatten(merged: &BTreeMap<String, Value>) -> Value {
    let mut root = Value::Object(Map::new());
    for (k, v) in merged {
        let placed = steps(k).is_some_and(|s| place(&mut root, &s, v.clone()));
        if !placed {
            if let Value::Object(m) = &mut root {
                m.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    root
}

/// Puts `v` at `steps` under `node`; false when the tree has something else there.
fn place(node: &mut Value, steps: &[Step<'_>], v: Value) -> bool {
    let Some((first, rest)) = steps.split_first() else {
        if node.is_null() {
            *node = v;
            return true;
        }
        return false;
    };
    let child = match first {
        Step::Key(k) => {
            if node.is_null() {
                *node = Value::Object(Map::new());
            }
            let Value::Object(m) = node else { return false };
            m.entry((*k).to_owned()).or_insert(Value::Null)
        }
        Step::Index(i) => {
            if node.is_null() {
                *node = Value::Array(Vec::new());
            }
            let Value::Array(a) = node else { return false };
            if a.len() <= *i {
                a.resize(*i + 1, Value::Null);
            }
            &mut a[*i]
        }
    };
    place(child, rest, v)
}

/// The tree as YAML text (the `.yml` form).
pub fn render_yaml(tree: &Value) -> String {
    serde_yaml_ng::to_string(tree).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_flattens_as_spring_does() {
        let y = b"server:\n  port: 8080\n  ssl: true\nfoo:\n  bars:\n    - a\n    - name: b\n      w: 1.5\n  none:\n  empty: []\n";
        let f = flatten(y).unwrap();
        assert_eq!(f["server.port"], json!(8080));
        assert_eq!(f["server.ssl"], json!(true));
        assert_eq!(f["foo.bars[0]"], json!("a"));
        assert_eq!(f["foo.bars[1].name"], json!("b"));
        assert_eq!(f["foo.bars[1].w"], json!(1.5));
        assert_eq!(f["foo.none"], json!(""));
        assert_eq!(f["foo.empty"], json!(""));
        assert_eq!(f.len(), 7);
    }

    #[test]
    fn json_and_properties_flatten_too() {
        let f = flatten(br#"{"a": {"b": [1, [2, 3]]}, "c": null}"#).unwrap();
        assert_eq!(f["a.b[0]"], json!(1));
        assert_eq!(f["a.b[1][1]"], json!(3));
        assert_eq!(f["c"], json!(""));
        let p = flatten(b"# comment\nmessage=hello world\nfoo.bar = 2\n").unwrap();
        assert_eq!(p["message"], json!("hello world"));
        assert_eq!(p["foo.bar"], json!("2"));
        assert!(flatten(b"").unwrap().is_empty());
        assert!(flatten(b"[1, 2]").is_err());
        assert!(flatten(b"just some words").is_err());
        assert!(flatten(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn trees_come_back_from_flat_keys() {
        let merged = flatten(b"a:\n  b: 1\n  l: [x, {y: 2}]\n").unwrap();
        assert_eq!(unflatten(&merged), json!({"a": {"b": 1, "l": ["x", {"y": 2}]}}));
        let odd = BTreeMap::from([
            ("a".to_owned(), json!(1)),
            ("a.b".to_owned(), json!(2)),
            ("z[99999999]".into(), json!(3)),
        ]);
        assert_eq!(unflatten(&odd), json!({"a": 1, "a.b": 2, "z[99999999]": 3}));
        assert_eq!(render_properties(&merged), "a.b: 1\na.l[0]: x\na.l[1].y: 2\n");
        assert!(render_yaml(&unflatten(&merged)).contains("b: 1"));
    }

    #[test]
    fn the_first_source_wins() {
        let specific = BTreeMap::from([("k".to_owned(), json!("dev"))]);
        let base = BTreeMap::from([("k".to_owned(), json!("base")), ("only".to_owned(), json!(1))]);
        let m = merge([&specific, &base]);
        assert_eq!(m["k"], json!("dev"));
        assert_eq!(m["only"], json!(1));
    }

    #[test]
    fn names_profiles_and_files() {
        assert_eq!(parse_profiles("dev, mysql,dev").unwrap(), vec!["dev", "mysql"]);
        assert!(parse_profiles("dev,").is_err());
        assert!(parse_profiles("a b").is_err());
        assert!(check_name("application", "my-app").is_ok());
        assert!(check_name("application", "../x").is_err());
        assert_eq!(split_file("my-app-dev.yml"), Some(("my-app", "dev", FileFormat::Yaml)));
        assert_eq!(split_file("shop-dev,db.properties"), Some(("shop", "dev,db", FileFormat::Properties)));
        assert_eq!(split_file("shop-dev.json"), Some(("shop", "dev", FileFormat::Json)));
        assert_eq!(split_file("shop.yml"), None);
        assert_eq!(split_file("shop-dev.txt"), None);
    }
}
