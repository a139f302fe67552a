//! The service's modules depend downward only: no module reaches (directly or through
//! others) back to itself. Read from the sources, so a new `use crate::…` that closes a
//! cycle fails here. The order it prints is the one the closing notes quote.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level modules a source text refers to with `crate::name`.
fn references(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(inner) = rest.strip_prefix('{') {
            // `use crate::{a, b::c, d}`: every first segment inside the braces.
            let end = inner.find('}').unwrap_or(inner.len());
            for item in inner[..end].split(',') {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if modules.contains(&name) {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if modules.contains(&name) {
                out.insert(name);
            }
        }
    }
    out
}

fn module_sources(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("src") {
        let path = entry.expect("entry").path();
        let name = path.file_stem().and_then(|s| s.to_str()).expect("name").to_owned();
        if name == "lib" {
            continue; // the crate root only declares and re-exports
        }
        let text = if path.is_dir() {
            let mut all = String::new();
            for f in walk(&path) {
                all.push_str(&std::fs::read_to_string(f).expect("read"));
            }
            all
        } else {
            std::fs::read_to_string(&path).expect("read")
        };
        out.insert(name, text);
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir") {
        let p = entry.expect("entry").path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            files.push(p);
        }
    }
    files
}

#[test]
fn service_modules_form_a_dag() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let sources = module_sources(&src);
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let deps: BTreeMap<String, BTreeSet<String>> = sources
        .iter()
        .map(|(m, text)| {
            let mut r = references(text, &modules);
            r.remove(m);
            (m.clone(), r)
        })
        .collect();
    // Kahn's algorithm: peel off modules whose dependencies are all placed.
    let mut placed: Vec<String> = Vec::new();
    let mut left: BTreeSet<String> = modules.clone();
    while !left.is_empty() {
        let ready: Vec<String> = left.iter().filter(|m| deps[*m].iter().all(|d| placed.contains(d))).cloned().collect();
        assert!(
            !ready.is_empty(),
            "import cycle among {left:?}: {:?}",
            left.iter().map(|m| (m, &deps[m])).collect::<Vec<_>>()
        );
        for m in ready {
            left.remove(&m);
            placed.push(m);
        }
    }
    println!("service modules, lowest first:");
    for m in &placed {
        println!("  {m} -> {:?}", deps[m]);
    }
    // The leaves stay leaves.
    for leaf in ["error", "clock", "model", "cursor", "throttle", "audit"] {
        let d: Vec<_> = deps[leaf].iter().filter(|d| !["error", "model"].contains(&d.as_str())).collect();
        assert!(d.is_empty(), "{leaf} must not depend on {d:?}");
    }
    // The store knows tables, not features.
    let features = ["topics", "versions", "pins", "rollouts", "users", "consumers", "poll", "audit_log", "background"];
    for f in features {
        assert!(!deps["store"].contains(f), "store depends on the feature module {f}");
    }
}

#[test]
fn the_reference_scanner_sees_braced_and_plain_paths() {
    let modules: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let r = references("use crate::{a, b::X};\nfn f() { crate::c::g() }", &modules);
    assert_eq!(r, modules);
    assert!(references("use other::crate_thing;", &modules).is_empty());
}
