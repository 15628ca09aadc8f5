//! The crate's top-level modules (`src/<name>.rs`, `src/<name>/`) must not import each other in
//! a circle: reads the crate's own sources and fails on a top-level module that imports one
//! that (transitively) imports it back.
//!
//! An import is `crate::<module>` anywhere in code (also inside `use crate::{a, b::c}`), or
//! `super::<module>` written where `super` is the crate root. Comments are ignored (doc links
//! are no imports).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// `(file, depth)` for every `.rs` file of the module at `path` (a file, or a directory with
/// `mod.rs`) `depth` levels below the root; a file's depth is how many `super` reach the root.
fn rust_files(path: &Path, depth: usize, out: &mut Vec<(PathBuf, usize)>) {
    if path.is_file() {
        out.push((path.to_path_buf(), depth));
        return;
    }
    let Ok(entries) = fs::read_dir(path) else { return };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, depth + 1, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let is_mod = p.file_name().is_some_and(|n| n == "mod.rs");
            out.push((p, if is_mod { depth } else { depth + 1 }));
        }
    }
}

fn top_level_modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(src).into_iter().flatten().flatten() {
        let p = entry.path();
        let Some(stem) = p.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
            continue;
        };
        if p.is_dir() || (p.extension().is_some_and(|e| e == "rs") && stem != "lib") {
            out.insert(stem, p);
        }
    }
    out
}

fn strip_comments(code: &str) -> String {
    code.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The first path segment of each item of a `{a, b::c, d::{e, f}}` list (after the `{`).
fn brace_heads(s: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let (mut depth, mut item) = (0usize, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            ',' | '}' if depth == 0 => {
                heads.push(ident_at(s[item..i].trim_start()));
                if c == '}' {
                    break;
                }
                item = i + 1;
            }
            _ => {}
        }
    }
    heads
}

/// Top-level names `code` imports through `prefix` (`crate::` or the right number of
/// `super::`).
fn imported(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        // Only where a path begins (not the inner `super::` of `super::super::x`).
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let after = &code[at + prefix.len()..];
        if let Some(list) = after.strip_prefix('{') {
            out.extend(brace_heads(list).into_iter().map(str::to_string));
        } else {
            out.push(ident_at(after).to_string());
        }
    }
    out.retain(|n| !n.is_empty() && n != "self" && n != "super");
    out
}

fn module_graph(src: &Path) -> Graph {
    let modules = top_level_modules(src);
    let mut graph = Graph::new();
    for (name, path) in &modules {
        let mut files = Vec::new();
        rust_files(path, 1, &mut files);
        let deps = graph.entry(name.clone()).or_default();
        for (file, depth) in files {
            let code = strip_comments(&fs::read_to_string(&file).unwrap_or_default());
            let mut names = imported(&code, "crate::");
            // A file `depth` levels below the root reaches it with `depth` `super`s.
            names.extend(imported(&code, &"super::".repeat(depth)));
            for n in names {
                if n != *name && modules.contains_key(&n) {
                    deps.insert(n);
                }
            }
        }
    }
    graph
}

/// A circle through `start`, if any: `start → … → start`.
fn circle_through(graph: &Graph, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &Graph,
        at: &str,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, next, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(graph, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn the_parser_sees_imports() {
    let code =
        "use crate::{a, b::{c, d}, e::f};\nuse super::g;\nlet x = crate::h::i();\n// crate::j\n";
    let code = strip_comments(code);
    assert_eq!(imported(&code, "crate::"), ["a", "b", "e", "h"]);
    assert_eq!(imported(&code, "super::"), ["g"]);
    assert!(imported("use super::super::k;", "super::").is_empty());
    assert_eq!(imported("use super::super::k;", "super::super::"), ["k"]);
}

#[test]
fn top_level_modules_import_each_other_without_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    // The graph is read at all: the exporter encodes span records.
    assert!(graph.get("export").is_some_and(|d| d.contains("span")), "{graph:#?}");
    let circles: Vec<String> =
        graph.keys().filter_map(|m| circle_through(&graph, m)).map(|c| c.join(" → ")).collect();
    assert!(
        circles.is_empty(),
        "import circles between top-level modules:\n{}",
        circles.join("\n")
    );
}
