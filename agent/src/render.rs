//! The template form of a subscription: a JSON payload rendered through a template
//! (minijinja, Jinja2 syntax) into the file a program reads, e.g. an nginx upstream list.
//! The template sees `payload` (the parsed JSON), `topic`, `version` and `sha256`; an
//! undefined name is an error, so a payload missing a field fails its version instead of
//! rendering an empty config.

use std::io::Read;
use std::path::Path;

use minijinja::{context, Environment, UndefinedBehavior};

/// The largest payload rendered (it is parsed in memory) and the largest template.
pub const MAX_INPUT: u64 = 64 * 1024 * 1024;
pub const MAX_TEMPLATE: u64 = 1024 * 1024;

fn read_bounded(path: &Path, max: u64, what: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if bytes.len() as u64 > max {
        return Err(format!("{what} {} is over {max} bytes", path.display()));
    }
    Ok(bytes)
}

/// Renders `template` with the JSON in `payload`; the text to install.
pub fn render(template: &Path, payload: &Path, topic: &str, version: u64, sha256: &str) -> Result<String, String> {
    let source = String::from_utf8(read_bounded(template, MAX_TEMPLATE, "template")?)
        .map_err(|_| format!("template {} is not UTF-8", template.display()))?;
    let data: serde_json::Value = serde_json::from_slice(&read_bounded(payload, MAX_INPUT, "payload")?)
        .map_err(|e| format!("the payload is not JSON, so the template cannot render it: {e}"))?;
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_template("template", &source).map_err(|e| format!("template {}: {e}", template.display()))?;
    let t = env.get_template("template").map_err(|e| e.to_string())?;
    t.render(context! { payload => data, topic => topic, version => version, sha256 => sha256 })
        .map_err(|e| format!("template {}: {e}", template.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_json_and_refuses_what_does_not_fit() {
        let dir = std::env::temp_dir().join(format!("imprint-agent-render-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (t, p) = (dir.join("t.j2"), dir.join("p.json"));
        std::fs::write(
            &t,
            "upstream {{ topic }} { # v{{ version }}\n{% for s in payload.servers %}  server {{ s }};\n{% endfor %}}\n",
        )
        .unwrap();
        std::fs::write(&p, r#"{"servers": ["10.0.0.1:80", "10.0.0.2:80"]}"#).unwrap();
        assert_eq!(
            render(&t, &p, "edge", 4, "ab").unwrap(),
            "upstream edge { # v4\n  server 10.0.0.1:80;\n  server 10.0.0.2:80;\n}"
        );
        std::fs::write(&p, r#"{"hosts": []}"#).unwrap();
        assert!(render(&t, &p, "edge", 5, "ab").unwrap_err().contains("undefined"), "a missing field fails");
        std::fs::write(&p, "not json").unwrap();
        assert!(render(&t, &p, "edge", 6, "ab").unwrap_err().contains("not JSON"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
