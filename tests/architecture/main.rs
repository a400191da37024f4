//! The architecture as tests: which crate may depend on which (read from `cargo metadata`, so
//! a new dependency that breaks the layering fails here, not in review), and no import cycles
//! between the top-level modules of any crate. ARCHITECTURE.md states the same rules in prose.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Every workspace crate and the workspace crates it may depend on (normal dependencies). A crate
/// missing here fails the test: a new crate states its place in the graph.
const ALLOWED: &[(&str, &[&str])] = &[
    ("berth-wire", &[]),
    ("berth-ingress", &[]),
    // `berth ingress` (the agent crate's `edge`) runs the proxy on edge-only nodes.
    ("berth-agent", &["berth-wire", "berth-ingress"]),
    // `berth-testdb` only under the `testing` feature, which only the suites' dev-dependencies enable.
    ("berth-store", &["berth-wire", "berth-testdb"]),
    ("berth-control", &["berth-wire", "berth-store", "berth-agent", "berth-ingress"]),
    ("berth-frontend", &["berth-wire"]),
    ("berth-api", &["berth-wire", "berth-store", "berth-agent", "berth-control", "berth-ingress", "berth-frontend"]),
    ("berth-cli", &["berth-wire"]),
    ("berth", &["berth-wire", "berth-api", "berth-agent", "berth-cli"]),
    ("berth-tests", &["berth-wire", "berth-cli", "berth-testdb"]),
    // Test support: a throwaway PostgreSQL for the tests; it needs no workspace crate.
    ("berth-testdb", &[]),
    // The newcomer's path (`cargo xtask run`) must not build the test support.
    ("xtask", &[]),
];

/// Third-party crates that must not be anywhere in a crate's dependency closure.
const FORBIDDEN_ANYWHERE: &[(&str, &[&str])] = &[
    // The agent runs on every host next to the container engine: no database, no web server, no
    // dashboard, no identity code.
    ("berth-agent", &["sqlx", "sqlx-core", "axum", "leptos", "argon2", "jsonwebtoken", "oauth2", "openidconnect"]),
    // The ingress is the data plane: it knows nothing of apps, stores or containers.
    ("berth-ingress", &["sqlx-core", "bollard", "axum", "leptos"]),
    ("berth-store", &["bollard", "axum", "leptos", "hyper"]),
    ("berth-cli", &["sqlx-core", "bollard", "axum", "leptos"]),
    ("xtask", &["sqlx-core", "bollard", "axum", "leptos", "fantoccini"]),
];

/// Third-party crates a crate must not depend on directly (it may through another crate).
const FORBIDDEN_DIRECT: &[(&str, &[&str])] = &[
    // The control plane never calls a container engine; only agents do.
    ("berth-control", &["bollard", "axum", "leptos"]),
];

struct Metadata {
    /// Package id → name, for workspace members.
    members: BTreeMap<String, String>,
    /// Package id → name, for every package.
    names: BTreeMap<String, String>,
    /// Package id → ids of its normal (non-dev, non-build) dependencies.
    normal_deps: BTreeMap<String, Vec<String>>,
    /// The root source file of every library and binary of the workspace, by package name.
    roots: Vec<(String, PathBuf)>,
}

fn metadata() -> Metadata {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(output.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let names: BTreeMap<String, String> = json["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_string(), p["name"].as_str().unwrap().to_string()))
        .collect();
    let members: BTreeMap<String, String> = json["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .map(|id| (id.clone(), names[&id].clone()))
        .collect();
    let normal_deps = json["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .map(|node| {
            let deps = node["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|dep| dep["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null()))
                .map(|dep| dep["pkg"].as_str().unwrap().to_string())
                .collect();
            (node["id"].as_str().unwrap().to_string(), deps)
        })
        .collect();
    let roots = json["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| members.contains_key(p["id"].as_str().unwrap()))
        .flat_map(|p| {
            let name = p["name"].as_str().unwrap().to_string();
            p["targets"].as_array().unwrap().iter().filter_map(move |target| {
                let kinds = target["kind"].as_array().unwrap();
                let built = kinds.iter().any(|k| matches!(k.as_str(), Some("lib" | "cdylib" | "rlib" | "bin")));
                built.then(|| (name.clone(), PathBuf::from(target["src_path"].as_str().unwrap())))
            })
        })
        .collect();
    Metadata { members, names, normal_deps, roots }
}

impl Metadata {
    fn id_of(&self, name: &str) -> &str {
        self.members.iter().find(|(_, n)| *n == name).map(|(id, _)| id.as_str()).unwrap_or_else(|| {
            panic!("{name} is not a workspace member");
        })
    }

    fn direct(&self, name: &str) -> BTreeSet<String> {
        self.normal_deps[self.id_of(name)].iter().map(|id| self.names[id].clone()).collect()
    }

    fn closure(&self, name: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![self.id_of(name).to_string()];
        while let Some(id) = todo.pop() {
            for dep in &self.normal_deps[&id] {
                if seen.insert(dep.clone()) {
                    todo.push(dep.clone());
                }
            }
        }
        seen.into_iter().map(|id| self.names[&id].clone()).collect()
    }
}

#[test]
fn crates_depend_on_each_other_only_one_way() {
    let metadata = metadata();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let members: BTreeSet<&String> = metadata.members.values().collect();
    let mut problems = Vec::new();
    for name in &members {
        let Some(allowed) = allowed.get(name.as_str()) else {
            problems.push(format!("{name} is not in ALLOWED: state where it sits in the graph"));
            continue;
        };
        for dep in metadata.direct(name).iter().filter(|d| members.contains(d)) {
            if !allowed.contains(&dep.as_str()) {
                problems.push(format!("{name} depends on {dep}"));
            }
        }
    }
    assert!(problems.is_empty(), "the crate graph breaks its layering:\n  {}", problems.join("\n  "));
}

#[test]
fn crates_stay_free_of_what_they_must_never_link() {
    let metadata = metadata();
    let mut problems = Vec::new();
    for (name, forbidden) in FORBIDDEN_ANYWHERE {
        let closure = metadata.closure(name);
        problems.extend(forbidden.iter().filter(|f| closure.contains(**f)).map(|f| format!("{name} links {f}")));
    }
    for (name, forbidden) in FORBIDDEN_DIRECT {
        let direct = metadata.direct(name);
        problems.extend(forbidden.iter().filter(|f| direct.contains(**f)).map(|f| format!("{name} depends on {f}")));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `crate::x` references in Rust source, as the names of the top-level modules they reach.
fn crate_references(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in source.match_indices("crate::") {
        // Skip `berth_crate::` and the like: only the `crate` keyword counts.
        if source[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &source[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut end = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = i;
                    break;
                }
            }
            for item in split_top_level(&group[..end]) {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Splits `a, b::{c, d}, e` at its top-level commas.
fn split_top_level(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    items
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The first cycle in `graph`, as a path that starts and ends at the same module.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_import_cycles_between_its_modules() {
    let metadata = metadata();
    assert!(metadata.roots.len() >= 10, "every crate of the workspace is checked: {:?}", metadata.roots);
    let mut problems = Vec::new();
    for (name, root) in &metadata.roots {
        let src = root.parent().expect("BUG: a source file is in a directory");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in rust_files(src) {
            // The crate root declares and re-exports modules; that is not a dependency.
            if file == *root {
                continue;
            }
            let relative = file.strip_prefix(src).expect("BUG: listed under src");
            let module = relative.components().next().expect("BUG: a file has a name");
            let module = module.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
            let source = std::fs::read_to_string(&file).expect("reading a source file");
            let references: Vec<String> = crate_references(&source).into_iter().filter(|r| *r != module).collect();
            graph.entry(module).or_default().extend(references);
        }
        if let Some(cycle) = find_cycle(&graph) {
            problems.push(format!("{name} ({}): {}", src.display(), cycle.join(" -> ")));
        }
    }
    assert!(problems.is_empty(), "module import cycles:\n  {}", problems.join("\n  "));
}

#[test]
fn the_reference_scanner_sees_groups_and_paths() {
    let source = "use crate::{a::X, b, c::{d, e}};\nuse crate::f::G;\nlet x = crate::h::i();\nberth_crate::j;";
    let found: Vec<String> = crate_references(source).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "f", "h"]);
    let graph = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(find_cycle(&graph), Some(vec!["a".into(), "b".into(), "a".into()]));
}
