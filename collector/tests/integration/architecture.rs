//! The module layering of `collector/src` (ARCHITECTURE.md): every top-level module has a layer,
//! and a module may use only modules of lower layers. This keeps the data path one-way
//! (receive → WAL → head → blocks → queries → API) and rules out import circles; a new module
//! must be given its layer here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of each top-level module; a module may import only strictly lower layers.
const LAYERS: &[(&str, u32)] = &[
    // What kind of failure an error is: below everything.
    ("error", 0),
    // Foundations that know nothing of spans' journey: tenant ids, the collector's own
    // metrics, the write-ahead log, and the span-row codec (OTLP <-> Arrow).
    ("tenant", 1),
    ("tls", 1),
    // Dev PKI and tokens for `skein certs` / `skein demo --secure` (checked against tls, tenant).
    ("devcerts", 2),
    ("telemetry", 1),
    ("health", 1),
    ("deadline", 1),
    ("partial", 1),
    ("wal", 1),
    ("spanrows", 1),
    // Span storage (the in-memory head and the block store) and the PromQL engine.
    ("head", 2),
    ("store", 2),
    ("promql", 2),
    // This replica among the others sharing the storage root: peers, their client, the
    // other namespaces' blocks.
    ("cluster", 3),
    // Questions over head and blocks.
    ("query", 4),
    // The span write path: WAL + head + flush to blocks, behind one handle.
    ("traces", 5),
    // What stands on the write path: OTLP receivers, and span metrics fed as spans apply.
    ("ingest", 6),
    ("span_metrics", 6),
    // Alerting over span metrics; the profile pipeline (its own receiver, WAL, head, blocks).
    ("alert", 7),
    ("profile", 7),
    // Wire surfaces and configuration, then the wiring itself.
    ("api", 8),
    ("config", 8),
    // The fuzz harnesses' entry points drive input paths of every layer below.
    ("fuzzing", 8),
    ("serve", 9),
    ("demo", 10),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level module a source file belongs to (`None` for lib.rs/main.rs).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src_dir()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "lib" && name != "main").then_some(name)
}

/// Top-level modules named by `crate::x` paths, including `use crate::{x::…, y}` groups.
fn imported_modules(source: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group's top-level entries; the first segment of each names a module.
            let mut entries = vec![String::new()];
            let mut depth = 0;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => entries.push(String::new()),
                    c => entries.last_mut().unwrap().push(c),
                }
            }
            for entry in entries {
                let ident = leading_ident(entry.trim_start());
                if !ident.is_empty() {
                    out.insert(ident);
                }
            }
        } else {
            let ident = leading_ident(rest);
            if !ident.is_empty() {
                out.insert(ident);
            }
        }
    }
    out
}

fn leading_ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&file) else { continue };
        let source = std::fs::read_to_string(&file).unwrap();
        let imports: Vec<String> =
            imported_modules(&source).into_iter().filter(|m| *m != module).collect();
        graph.entry(module).or_default().extend(imports);
    }
    graph
}

#[test]
fn every_module_imports_only_lower_layers() {
    let layers: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let graph = import_graph();
    let mut violations = Vec::new();
    for (module, imports) in &graph {
        let Some(&own) = layers.get(module.as_str()) else {
            violations.push(format!("{module}: not in LAYERS (give the new module a layer)"));
            continue;
        };
        for import in imports {
            match layers.get(import.as_str()) {
                Some(&theirs) if theirs < own => {}
                Some(&theirs) => violations
                    .push(format!("{module} (layer {own}) imports {import} (layer {theirs})")),
                None => violations.push(format!("{module} imports unknown module {import}")),
            }
        }
    }
    assert!(violations.is_empty(), "layering violations:\n{}", violations.join("\n"));
}

#[test]
fn import_scanner_sees_grouped_and_nested_paths() {
    let found = imported_modules(
        "use crate::a::X;\nuse crate::{b::{C, D}, e, f::g};\nlet x = crate::h::now();",
    );
    let want: BTreeSet<String> = ["a", "b", "e", "f", "h"].iter().map(|s| s.to_string()).collect();
    assert_eq!(found, want);
}
