//! Line diffs for the console's payload comparison, and a readable rendering of payloads.

/// One line of a diff.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DiffLine {
    Same(String),
    Added(String),
    Removed(String),
}

/// The work one diff may take, in the product of the changed lines' counts once the common
/// prefix and suffix are trimmed: Myers' algorithm takes time proportional to (n+m)·D
/// (D = the lines that differ), so this bounds time whatever `max_lines` says.
pub const MAX_DIFF_CELLS: usize = 4_000_000;

/// Line diff of `old` → `new` (Myers, from the `similar` crate; removed lines come before
/// the added lines that replace them). Inputs are capped at `max_lines` lines each and the
/// work at `MAX_DIFF_CELLS`; beyond that the caller gets `None` (too large to diff).
pub fn diff_lines(old: &str, new: &str, max_lines: usize) -> Option<Vec<DiffLine>> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a.len() > max_lines || b.len() > max_lines {
        return None;
    }
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..].iter().rev().zip(b[prefix..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (n, m) = (a.len() - prefix - suffix, b.len() - prefix - suffix);
    if (n + 1).saturating_mul(m + 1) > MAX_DIFF_CELLS {
        return None;
    }
    let ops = similar::capture_diff_slices(similar::Algorithm::Myers, &a, &b);
    Some(
        ops.iter()
            .flat_map(|op| op.iter_changes(&a, &b))
            .map(|c| {
                let line = (*c.value()).to_owned();
                match c.tag() {
                    similar::ChangeTag::Equal => DiffLine::Same(line),
                    similar::ChangeTag::Delete => DiffLine::Removed(line),
                    similar::ChangeTag::Insert => DiffLine::Added(line),
                }
            })
            .collect(),
    )
}

/// How a payload is best shown to a human.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Rendered {
    /// Valid JSON, pretty-printed with sorted keys (so diffs of reordered keys are empty).
    Json(String),
    /// UTF-8 text as it is.
    Text(String),
    /// Binary: a hex dump of the first bytes.
    Binary { size: u64, hex_preview: String },
}

impl Rendered {
    /// The text to diff, if the payload is text at all.
    pub fn text(&self) -> Option<&str> {
        match self {
            Rendered::Json(s) | Rendered::Text(s) => Some(s),
            Rendered::Binary { .. } => None,
        }
    }
}

/// Renders a payload: pretty JSON, text, or a hex preview of at most `preview_bytes`.
pub fn render_payload(bytes: &[u8], preview_bytes: usize) -> Rendered {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
        if let Ok(pretty) = serde_json::to_string_pretty(&sorted(v)) {
            return Rendered::Json(pretty);
        }
    }
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) => Rendered::Text(s.to_owned()),
        _ => Rendered::Binary {
            size: bytes.len() as u64,
            hex_preview: hex_dump(&bytes[..bytes.len().min(preview_bytes)]),
        },
    }
}

/// Rebuilds objects with sorted keys (whatever map type serde_json was built with).
fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let mut entries: Vec<(String, serde_json::Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

fn hex_dump(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, chunk)| {
            let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            let ascii: String =
                chunk.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }).collect();
            format!("{:08x}  {:<47}  {}", i * 16, hex.join(" "), ascii)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // proptest bodies are not `#[test]` fns to clippy
mod tests {
    use super::*;
    use DiffLine::*;

    fn s(x: &str) -> String {
        x.to_owned()
    }

    #[test]
    fn diffs_lines() {
        let d = diff_lines("a\nb\nc\nd", "a\nx\nc\nd\ne", 100).unwrap();
        assert_eq!(d, vec![Same(s("a")), Removed(s("b")), Added(s("x")), Same(s("c")), Same(s("d")), Added(s("e"))]);
        assert_eq!(diff_lines("same", "same", 10).unwrap(), vec![Same(s("same"))]);
        assert_eq!(diff_lines("", "new", 10).unwrap(), vec![Added(s("new"))]);
        assert!(diff_lines(&"x\n".repeat(20), "y", 10).is_none());
        // Within the line cap but every line different: the table would be too big.
        let a: String = (0..2500).map(|i| format!("a{i}\n")).collect();
        let b: String = (0..2500).map(|i| format!("b{i}\n")).collect();
        assert!(diff_lines(&a, &b, 5000).is_none(), "too large to diff");
        // The same size with a local change is trimmed to a small table and diffed.
        let c = a.replacen("a7\n", "c7\n", 1);
        assert_eq!(diff_lines(&a, &c, 5000).map(|d| d.len()), Some(2501));
    }

    #[test]
    fn diff_reapplies() {
        // Same + Removed reproduce old; Same + Added reproduce new.
        let (old, new) = ("1\n2\n3\n4\n5\n6", "0\n2\n3\n5\n6\n7\n8");
        let d = diff_lines(old, new, 100).unwrap();
        let back: Vec<&str> = d
            .iter()
            .filter_map(|l| match l {
                Same(x) | Removed(x) => Some(x.as_str()),
                Added(_) => None,
            })
            .collect();
        let fwd: Vec<&str> = d
            .iter()
            .filter_map(|l| match l {
                Same(x) | Added(x) => Some(x.as_str()),
                Removed(_) => None,
            })
            .collect();
        assert_eq!(back.join("\n"), old);
        assert_eq!(fwd.join("\n"), new);
    }

    #[test]
    fn renders_payloads() {
        assert_eq!(
            render_payload(br#"{"b":1,"a":[1,2]}"#, 8),
            Rendered::Json(s("{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": 1\n}"))
        );
        assert_eq!(render_payload(b"plain text\nline", 8), Rendered::Text(s("plain text\nline")));
        match render_payload(&[0, 1, 2, 255, 65], 4) {
            Rendered::Binary { size, hex_preview } => {
                assert_eq!(size, 5);
                assert!(hex_preview.starts_with("00000000  00 01 02 ff"), "{hex_preview}");
            }
            other => panic!("{other:?}"),
        }
    }
}
