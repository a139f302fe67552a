//! No crate of the workspace has a module-level import circle: a top-level module `y`
//! whose source names `crate::x…` depends on `x` (and, among the submodules of a module
//! directory such as `server/src/api/`, `y` naming `crate::api::x…` or `super::x…` depends
//! on its sibling `x`), and no module may reach itself through such references. Read
//! textually from the sources (as `service/tests/layering.rs` does for the service's finer
//! rules), so a new `use crate::…` that closes a circle fails here; there is no allow-list.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The modules (of `modules`) a source text names through `prefix` (`crate::`,
/// `crate::api::`, `super::`): `prefix name…` and `prefix {a, b::c}`. Comment lines are
/// skipped (a doc link is not an import).
fn references(text: &str, prefix: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let code: String = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String { s.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    let mut from = 0;
    while let Some(i) = code[from..].find(prefix).map(|i| from + i) {
        from = i + prefix.len();
        let rest = &code[from..];
        // `imprint_crate::x`, `super::super::x` or `a::super_x::` are other paths.
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let names: Vec<String> = match rest.strip_prefix('{') {
            // `use crate::{a, b::c, d}`: every first segment inside the braces.
            Some(inner) => inner[..inner.find('}').unwrap_or(inner.len())].split(',').map(ident).collect(),
            None => vec![ident(rest)],
        };
        out.extend(names.into_iter().filter(|n| modules.contains(n)));
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir") {
        let p = entry.expect("entry").path();
        if p.is_dir() {
            files.extend(rust_files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            files.push(p);
        }
    }
    files
}

/// One module's source: its own file (`x.rs` or `x/mod.rs`, where `super::` means the
/// directory it sits in) and the files of its submodules (under `x/`).
#[derive(Default)]
struct Module {
    own: String,
    below: String,
    dir: Option<PathBuf>,
}

/// The modules of one directory (a crate's `src/`, or a module's directory): a file
/// `x.rs` and a directory `x/` are one module `x`; the directory's own module file
/// (`lib.rs`, `main.rs`, `mod.rs`) only declares and re-exports.
fn modules_in(dir: &Path, top: bool) -> BTreeMap<String, Module> {
    let mut out: BTreeMap<String, Module> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
        if path.is_dir() {
            if top && name == "bin" {
                continue; // separate binaries: each its own crate
            }
            let m = out.entry(name).or_default();
            for f in rust_files(&path) {
                let text = std::fs::read_to_string(&f).expect("read");
                if f == path.join("mod.rs") {
                    m.own.push_str(&text);
                } else {
                    m.below.push_str(&text);
                }
            }
            m.dir = Some(path);
        } else if path.extension().is_some_and(|e| e == "rs") && !["lib", "main", "mod"].contains(&name.as_str()) {
            out.entry(name).or_default().own.push_str(&std::fs::read_to_string(&path).expect("read"));
        }
    }
    out
}

/// The dependency graph among the modules of one directory, `path` being its module path
/// (empty for a crate's `src/`): `y -> x` when y's files name `crate::<path>::x…` or, in
/// y's own file, `super::x…`.
fn graph(modules: &BTreeMap<String, Module>, path: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let crate_prefix: String =
        std::iter::once("crate".to_owned()).chain(path.iter().cloned()).collect::<Vec<_>>().join("::") + "::";
    modules
        .iter()
        .map(|(m, src)| {
            let mut r = references(&src.own, &crate_prefix, &names);
            r.extend(references(&src.below, &crate_prefix, &names));
            r.extend(references(&src.own, "super::", &names));
            r.remove(m);
            (m.clone(), r)
        })
        .collect()
}

/// The strongly connected components with more than one module (Tarjan): the circles.
fn circles(deps: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct State<'a> {
        deps: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in &s.deps[v] {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.insert(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        deps,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in deps.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

/// The workspace members named in the root Cargo.toml's `members = [...]`.
fn members(root: &Path) -> Vec<String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("workspace Cargo.toml");
    let start = manifest.find("members").expect("members") + "members".len();
    let list = &manifest[start..];
    let list = &list[list.find('[').expect("[") + 1..list.find(']').expect("]")];
    list.split(',').map(|m| m.trim().trim_matches('"').to_owned()).filter(|m| !m.is_empty()).collect()
}

/// Every circle among the modules of `dir` and, recursively, of its module directories:
/// (the module path, the circle's edges).
fn circles_under(member: &str, dir: &Path, path: Vec<String>, found: &mut Vec<(String, Vec<String>)>) {
    let modules = modules_in(dir, path.is_empty());
    let deps = graph(&modules, &path);
    for circle in circles(&deps) {
        let edges =
            circle.iter().map(|m| format!("{m} -> {:?}", deps[m].intersection(&circle).collect::<Vec<_>>())).collect();
        let at = std::iter::once(format!("{member}/src")).chain(path.iter().cloned()).collect::<Vec<_>>().join("/");
        found.push((at, edges));
    }
    for (name, m) in &modules {
        if let Some(sub) = &m.dir {
            let mut p = path.clone();
            p.push(name.clone());
            circles_under(member, sub, p, found);
        }
    }
}

#[test]
fn no_crate_has_an_import_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let members = members(&root);
    assert!(members.len() >= 6, "workspace members: {members:?}");
    let mut found = Vec::new();
    for member in &members {
        let src = root.join(member).join("src");
        if src.is_dir() {
            circles_under(member, &src, Vec::new(), &mut found);
        }
    }
    let found: Vec<String> = found.iter().map(|(at, edges)| format!("{at}: {}", edges.join("; "))).collect();
    assert!(
        found.is_empty(),
        "module import circles (a module reaches itself through crate::/super:: paths):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scanner_sees_braced_and_plain_paths_and_finds_circles() {
    let modules: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let r = references("use crate::{a, b::X};\nfn f() { crate::c::g() }", "crate::", &modules);
    assert_eq!(r, modules);
    assert!(
        references("use other::crate_thing;\nuse imprint_crate::a;\n// see crate::b", "crate::", &modules).is_empty()
    );
    let nested = references("use super::a::X;\nuse crate::api::b;\nuse super::super::c;", "super::", &modules);
    assert_eq!(nested, ["a".to_string()].into_iter().collect());
    assert_eq!(references("use crate::api::{b, c::Y};", "crate::api::", &modules).len(), 2);
    let set = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
    let deps: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), set(&["b"])),
        ("b".to_string(), set(&["c"])),
        ("c".to_string(), set(&["a"])),
        ("d".to_string(), set(&["a"])),
    ]
    .into_iter()
    .collect();
    assert_eq!(circles(&deps), vec![set(&["a", "b", "c"])]);
    let mut dag = deps.clone();
    dag.insert("c".into(), set(&[]));
    assert!(circles(&dag).is_empty());
}
