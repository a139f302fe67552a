//! `imprint diff`: a unified line diff of two versions (JSON payloads compared
//! pretty-printed), computed by the domain's `diff_lines` (Myers, as the console's) and
//! printed as `diff -u` would, with three lines of context.
use crate::api::{chain, Api, CliError, CliResult};
use crate::cmd::print_json;
use crate::fmt;
use clap::Args;
use imprint_domain::DiffLine;
use reqwest::Method;
use serde_json::{json, Value};

#[derive(Args)]
pub struct DiffArgs {
    topic: String,
    a: u64,
    b: u64,
    /// Compare the bytes as they are, without normalising JSON.
    #[arg(long)]
    raw: bool,
}

/// Lines of unchanged context around each change.
const CONTEXT: usize = 3;

/// A payload as text for diffing: JSON pretty-printed (unless `raw`).
fn diff_text(bytes: &[u8], raw: bool) -> Option<String> {
    if !raw {
        if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
            return serde_json::to_string_pretty(&v).ok().map(|s| s + "\n");
        }
    }
    String::from_utf8(bytes.to_vec()).ok()
}

/// One line of the diff: `' '`, `'-'` or `'+'`, its text with its line ending as in the
/// payload, and how many lines of the old and of the new text come before it.
struct Line<'a> {
    tag: char,
    text: &'a str,
    old_at: usize,
    new_at: usize,
}

/// The diff as lines, or `None` when the domain finds it too large to diff.
fn lines<'a>(old: &'a str, new: &'a str) -> Option<Vec<Line<'a>>> {
    let a: Vec<&str> = old.split_inclusive('\n').collect();
    let b: Vec<&str> = new.split_inclusive('\n').collect();
    let ops = imprint_domain::diff_lines(old, new, usize::MAX)?;
    let (mut i, mut j) = (0, 0);
    let mut out: Vec<Line<'a>> = Vec::with_capacity(ops.len());
    // Removed lines come before the added ones of the same change; a line equal but for
    // its ending ("x" at the end without a newline, "x\r\n" against "x\n") is a change.
    let mut added: Vec<Line<'a>> = Vec::new();
    for op in &ops {
        match op {
            DiffLine::Same(_) if a[i] == b[j] => {
                out.append(&mut added);
                out.push(Line { tag: ' ', text: a[i], old_at: i, new_at: j });
                (i, j) = (i + 1, j + 1);
            }
            DiffLine::Same(_) => {
                out.push(Line { tag: '-', text: a[i], old_at: i, new_at: j });
                added.push(Line { tag: '+', text: b[j], old_at: i + 1, new_at: j });
                (i, j) = (i + 1, j + 1);
            }
            DiffLine::Removed(_) => {
                out.push(Line { tag: '-', text: a[i], old_at: i, new_at: j });
                i += 1;
            }
            DiffLine::Added(_) => {
                added.push(Line { tag: '+', text: b[j], old_at: i, new_at: j });
                j += 1;
            }
        }
    }
    out.append(&mut added);
    Some(out)
}

/// `start,len` of a hunk's side (`start` alone for one line; the line before for none).
fn range(start: usize, len: usize) -> String {
    match len {
        1 => format!("{}", start + 1),
        0 => format!("{start},0"),
        _ => format!("{},{len}", start + 1),
    }
}

/// The unified diff of `old` → `new` under the `---`/`+++` header (empty when equal).
fn unified(old: &str, new: &str, from: &str, to: &str) -> Option<String> {
    let lines = lines(old, new)?;
    let changed: Vec<usize> = (0..lines.len()).filter(|&k| lines[k].tag != ' ').collect();
    let mut out = String::new();
    let mut k = 0;
    while k < changed.len() {
        // A hunk takes the changes with at most 2 × CONTEXT unchanged lines between them.
        let first = changed[k];
        while k + 1 < changed.len() && changed[k + 1] - changed[k] - 1 <= 2 * CONTEXT {
            k += 1;
        }
        let last = changed[k];
        k += 1;
        let hunk = &lines[first.saturating_sub(CONTEXT)..(last + 1 + CONTEXT).min(lines.len())];
        if out.is_empty() {
            out.push_str(&format!("--- {from}\n+++ {to}\n"));
        }
        let old_len = hunk.iter().filter(|l| l.tag != '+').count();
        let new_len = hunk.iter().filter(|l| l.tag != '-').count();
        let (old_at, new_at) = (hunk[0].old_at, hunk[0].new_at);
        out.push_str(&format!("@@ -{} +{} @@\n", range(old_at, old_len), range(new_at, new_len)));
        for l in hunk {
            out.push(l.tag);
            out.push_str(l.text);
            if !l.text.ends_with(['\n', '\r']) {
                out.push_str("\n\\ No newline at end of file\n");
            }
        }
    }
    Some(out)
}

pub async fn run(api: &Api, args: DiffArgs, json_out: bool) -> CliResult<u8> {
    let DiffArgs { topic, a, b, raw } = args;
    let fetch = |n: u64| {
        let topic = &topic;
        async move {
            let resp = api.send(api.request(Method::GET, api.data_url(topic, n))).await?;
            resp.bytes().await.map_err(|e| CliError::new(format!("downloading version {n}: {}", chain(&e))))
        }
    };
    let (left, right) = (fetch(a).await?, fetch(b).await?);
    let (ta, tb) = match (diff_text(&left, raw), diff_text(&right, raw)) {
        (Some(x), Some(y)) => (x, y),
        _ => {
            let same = left == right;
            if json_out {
                print_json(&json!({"topic": topic, "from": a, "to": b, "binary": true, "changed": !same}));
            } else if same {
                println!("versions {a} and {b} are identical (binary, {})", fmt::bytes(left.len() as u64));
            } else {
                println!(
                    "binary payloads differ: version {a} has {}, version {b} has {}",
                    fmt::bytes(left.len() as u64),
                    fmt::bytes(right.len() as u64)
                );
            }
            return Ok(0);
        }
    };
    let Some(unified) = unified(&ta, &tb, &format!("{topic} v{a}"), &format!("{topic} v{b}")) else {
        return Err(CliError::new(format!(
            "versions {a} and {b} differ in too many lines to diff here: compare them with `imprint get`"
        )));
    };
    if json_out {
        print_json(
            &json!({"topic": topic, "from": a, "to": b, "binary": false, "changed": ta != tb, "unified": unified}),
        );
    } else if ta == tb {
        println!("no differences between versions {a} and {b}");
    } else {
        print!("{unified}");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udiff(a: &str, b: &str) -> String {
        unified(a, b, "t v1", "t v2").expect("small enough")
    }

    /// The output `similar`'s unified diff gave for these (what `imprint diff` printed
    /// before it used the domain's diff).
    #[test]
    fn prints_like_diff_u() {
        assert_eq!(
            udiff("a\nb\nc\nd\n", "a\nx\nc\nd\ne\n"),
            "--- t v1\n+++ t v2\n@@ -1,4 +1,5 @@\n a\n-b\n+x\n c\n d\n+e\n"
        );
        assert_eq!(udiff("x\n", "x\n"), "");
        assert_eq!(udiff("x", "x"), "");
        assert_eq!(udiff("", "x\n"), "--- t v1\n+++ t v2\n@@ -0,0 +1 @@\n+x\n");
        // Line endings count: a missing last newline is shown, CRLF differs from LF.
        assert_eq!(udiff("a\n", "b"), "--- t v1\n+++ t v2\n@@ -1 +1 @@\n-a\n+b\n\\ No newline at end of file\n");
        assert_eq!(udiff("a", "a\n"), "--- t v1\n+++ t v2\n@@ -1 +1 @@\n-a\n\\ No newline at end of file\n+a\n");
        assert_eq!(udiff("a\r\nb\n", "a\nb\n"), "--- t v1\n+++ t v2\n@@ -1,2 +1,2 @@\n-a\r\n+a\n b\n");
    }

    #[test]
    fn hunks_keep_three_lines_of_context() {
        let old: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let edit = |changes: &[(&str, &str)]| {
            old.lines()
                .map(|l| changes.iter().find(|(k, _)| *k == l).map_or(l, |(_, v)| *v).to_owned() + "\n")
                .collect::<String>()
        };
        // Seven unchanged lines between two changes: two hunks.
        assert_eq!(
            udiff(&old, &edit(&[("2", "two"), ("10", "ten")])),
            "--- t v1\n+++ t v2\n@@ -1,5 +1,5 @@\n 1\n-2\n+two\n 3\n 4\n 5\n@@ -7,7 +7,7 @@\n 7\n 8\n 9\n-10\n+ten\n 11\n 12\n 13\n"
        );
        // Six: one.
        assert_eq!(
            udiff(&old, &edit(&[("3", "three"), ("10", "ten")])),
            "--- t v1\n+++ t v2\n@@ -1,13 +1,13 @@\n 1\n 2\n-3\n+three\n 4\n 5\n 6\n 7\n 8\n 9\n-10\n+ten\n 11\n 12\n 13\n"
        );
    }

    /// Whatever the texts, the context and removed lines are the old text, the context and
    /// added lines the new one, each hunk's header counts its lines, and no context is
    /// further than three lines from a change.
    #[test]
    fn diffs_reapply() {
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for _ in 0..2000 {
            let n = next() % 40;
            let a: String =
                (0..n).map(|_| format!("{}{}", next() % 6, ["\n", "\r\n"][usize::from(next() % 9 == 0)])).collect();
            let mut b = String::new();
            for l in a.lines() {
                match next() % 7 {
                    0 => {}
                    1 => b.push_str(&format!("{}\n", next() % 6)),
                    2 => b.push_str(&format!("{l}\n{}\n", next() % 6)),
                    _ => b.push_str(&format!("{l}\n")),
                }
            }
            let (a, b) = match next() % 4 {
                0 => (a.trim_end().to_owned(), b),
                1 => (a, b.trim_end().to_owned()),
                _ => (a, b),
            };
            let all = lines(&a, &b).expect("small");
            let side = |skip: char| all.iter().filter(|l| l.tag != skip).map(|l| l.text).collect::<String>();
            assert_eq!((side('+'), side('-')), (a.clone(), b.clone()), "{a:?} -> {b:?}");
            let out = udiff(&a, &b);
            assert_eq!(out.is_empty(), a == b, "{a:?} -> {b:?}");
            for hunk in out.split("\n@@ ").skip(1) {
                let (header, body) = hunk.split_once(" @@\n").expect("a header");
                let count = |r: &str| r.split_once(',').map_or(1, |(_, n)| n.parse::<usize>().expect("count"));
                let (old, new) = header.split_once(' ').expect("two ranges");
                let body: Vec<&str> = body.lines().filter(|l| !l.starts_with('\\')).collect();
                assert_eq!(count(&old[1..]), body.iter().filter(|l| !l.starts_with('+')).count(), "{out}");
                assert_eq!(count(&new[1..]), body.iter().filter(|l| !l.starts_with('-')).count(), "{out}");
                let changed: Vec<usize> = (0..body.len()).filter(|&k| !body[k].starts_with(' ')).collect();
                assert!(changed.first().is_some_and(|&f| f <= CONTEXT), "{out}");
                assert!(changed.last().is_some_and(|&l| body.len() - 1 - l <= CONTEXT), "{out}");
                assert!(changed.windows(2).all(|w| w[1] - w[0] - 1 <= 2 * CONTEXT), "{out}");
            }
        }
    }
}
