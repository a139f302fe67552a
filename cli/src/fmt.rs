//! Output for people: aligned tables, sizes, times, durations and optional cells.
//! (Selectors and labels print with the domain's `Display`: `region=eu,app=x`, `*`.)
use chrono::{DateTime, Utc};
use std::fmt::Display;

/// Prints rows under headers, columns aligned (the last one is not padded).
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", render_table(headers, rows));
}

pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            s.push_str(c);
            if i < last {
                let pad = widths[i].saturating_sub(c.chars().count()) + 2;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `1.5 MiB`
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A time as `2026-01-31 12:00:05Z`; `-` for none.
pub fn time(t: Option<DateTime<Utc>>) -> String {
    match t {
        Some(t) => t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        None => "-".into(),
    }
}

/// An optional value for a table cell: `-` for none.
pub fn opt<T: Display>(v: &Option<T>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "-".into(),
    }
}

/// A duration in seconds as `1h02m`, `4m30s`, `12s`.
pub fn secs(s: i64) -> String {
    let s = s.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The first `n` characters of a long string (checksums).
pub fn short(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use imprint_domain::Selector;
    use serde_json::json;

    #[test]
    fn tables_align() {
        let t = render_table(&["A", "LONGER"], &[vec!["wide cell".into(), "x".into()], vec!["b".into(), "".into()]]);
        assert_eq!(t, "A          LONGER\nwide cell  x\nb\n");
    }

    #[test]
    fn formats() {
        assert_eq!(bytes(10), "10 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        let selector = |v| Selector::from_json(&v).expect("selector").to_string();
        assert_eq!(selector(json!({})), "*");
        assert_eq!(selector(json!({"a": "1", "b": "2"})), "a=1,b=2");
        let t = |s| serde_json::from_value::<DateTime<Utc>>(json!(s)).expect("time");
        assert_eq!(time(Some(t("2026-01-31T12:00:05.123Z"))), "2026-01-31 12:00:05Z");
        assert_eq!(time(None), "-");
        assert_eq!(opt(&None::<u64>), "-");
        assert_eq!(secs(270), "4m30s");
        assert_eq!(secs(3720), "1h02m");
    }
}
