//! Flame graph rendering: merged call trees as interactive SVG (inferno: zoom, search, tooltips)
//! or JSON, and differential graphs of two selections.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::profile::tree::{Tree, TreeNode};

use super::NativeError;

/// Leaf-terminated stacks (`a;b;c`) with their self values, as inferno's folded input wants.
pub fn folded(tree: &Tree) -> BTreeMap<String, i64> {
    fn walk(n: &TreeNode, path: &mut Vec<String>, out: &mut BTreeMap<String, i64>) {
        // Folded format separates frames with ';' — a name containing one would split.
        path.push(n.name.replace(';', ":"));
        if n.self_value > 0 {
            *out.entry(path.join(";")).or_default() += n.self_value;
        }
        for c in &n.children {
            walk(c, path, out);
        }
        path.pop();
    }
    let mut out = BTreeMap::new();
    let mut path = Vec::new();
    for c in &tree.root.children {
        walk(c, &mut path, &mut out);
    }
    out
}

/// Adds `b`'s stacks to `a`'s.
pub fn add(a: &Tree, b: &Tree) -> Tree {
    let mut all = folded(a);
    for (k, v) in folded(b) {
        *all.entry(k).or_default() += v;
    }
    let stacks: Vec<(Vec<String>, i64)> =
        all.into_iter().map(|(k, v)| (k.split(';').map(str::to_string).collect(), v)).collect();
    Tree::from_stacks(stacks.iter().map(|(f, v)| (f.as_slice(), *v)))
}

fn options(title: &str, count_name: &str) -> inferno::flamegraph::Options<'static> {
    let mut o = inferno::flamegraph::Options::default();
    o.title = title.to_string();
    o.count_name = count_name.to_string();
    o
}

fn render(
    o: &mut inferno::flamegraph::Options<'_>,
    lines: &[String],
) -> Result<String, NativeError> {
    let mut out = Vec::new();
    if lines.is_empty() {
        // inferno refuses empty input; an empty graph is a valid answer.
        return Ok(format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1200\" height=\"60\"><text x=\"10\" y=\"30\">{}: no samples</text></svg>",
            escape(&o.title)
        ));
    }
    inferno::flamegraph::from_lines(o, lines.iter().map(String::as_str), &mut out)
        .map_err(|e| NativeError::Render(e.to_string()))?;
    String::from_utf8(out).map_err(|e| NativeError::Render(e.to_string()))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// An interactive SVG flame graph of `tree`.
pub fn svg(tree: &Tree, title: &str, count_name: &str) -> Result<String, NativeError> {
    let lines: Vec<String> = folded(tree).into_iter().map(|(k, v)| format!("{k} {v}")).collect();
    render(&mut options(title, count_name), &lines)
}

/// A node of a differential tree: values of the baseline and of the comparison, the latter
/// scaled to the baseline's total so shapes compare and not sample counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffNode {
    pub name: String,
    pub baseline: i64,
    pub comparison: i64,
    pub children: Vec<DiffNode>,
}

fn scale(comparison: &Tree, baseline_total: i64) -> f64 {
    if comparison.total() == 0 || baseline_total == 0 {
        1.0
    } else {
        baseline_total as f64 / comparison.total() as f64
    }
}

/// Differential SVG: frame width from `comparison` (the slow calls), colour by how much a
/// frame grew (red) or shrank (blue) relative to `baseline` (the normal calls).
pub fn diff_svg(baseline: &Tree, comparison: &Tree, title: &str) -> Result<String, NativeError> {
    let k = scale(comparison, baseline.total());
    let (a, b) = (folded(baseline), folded(comparison));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let lines: Vec<String> = keys
        .into_iter()
        .map(|s| {
            let before = a.get(s).copied().unwrap_or(0);
            let after = (b.get(s).copied().unwrap_or(0) as f64 * k).round() as i64;
            format!("{s} {before} {after}")
        })
        .collect();
    render(&mut options(title, "samples (normalised)"), &lines)
}

/// Differential JSON tree (comparison normalised to the baseline total).
pub fn diff_json(baseline: &Tree, comparison: &Tree) -> DiffNode {
    let k = scale(comparison, baseline.total());
    fn merge(a: Option<&TreeNode>, b: Option<&TreeNode>, k: f64) -> DiffNode {
        let name = a.or(b).map(|n| n.name.clone()).unwrap_or_default();
        let mut names: Vec<&str> = a
            .iter()
            .flat_map(|n| n.children.iter())
            .chain(b.iter().flat_map(|n| n.children.iter()))
            .map(|c| c.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        let children = names
            .into_iter()
            .map(|nm| {
                let ca = a.and_then(|n| n.children.iter().find(|c| c.name == nm));
                let cb = b.and_then(|n| n.children.iter().find(|c| c.name == nm));
                merge(ca, cb, k)
            })
            .collect();
        DiffNode {
            name,
            baseline: a.map_or(0, |n| n.total),
            comparison: b.map_or(0, |n| (n.total as f64 * k).round() as i64),
            children,
        }
    }
    merge(Some(&baseline.root), Some(&comparison.root), k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(stacks: &[(&str, i64)]) -> Tree {
        let owned: Vec<(Vec<String>, i64)> =
            stacks.iter().map(|(s, v)| (s.split(';').map(str::to_string).collect(), *v)).collect();
        Tree::from_stacks(owned.iter().map(|(f, v)| (f.as_slice(), *v)))
    }

    #[test]
    fn folded_lines_carry_self_values_only() {
        let t = tree(&[("main;work;hash", 3), ("main;work", 2), ("main;idle", 1)]);
        let f = folded(&t);
        assert_eq!(f["main;work;hash"], 3);
        assert_eq!(f["main;work"], 2);
        assert_eq!(f.values().sum::<i64>(), t.total());
    }

    #[test]
    fn svg_is_interactive_and_names_the_frames() {
        let svg =
            svg(&tree(&[("main;fraud_score", 5), ("main;io", 1)]), "payment", "samples").unwrap();
        assert!(svg.starts_with("<?xml") || svg.starts_with("<svg"));
        assert!(svg.contains("fraud_score") && svg.contains("<script"));
        let empty = super::svg(&tree(&[]), "nothing", "samples").unwrap();
        assert!(empty.contains("no samples"));
    }

    #[test]
    fn diff_normalises_the_comparison_to_the_baseline_total() {
        let normal = tree(&[("main;io", 8), ("main;fraud_score", 2)]);
        let slow = tree(&[("main;io", 10), ("main;fraud_score", 30)]);
        let d = diff_json(&normal, &slow);
        assert_eq!((d.baseline, d.comparison), (10, 10));
        let main = &d.children[0];
        let fraud = main.children.iter().find(|c| c.name == "fraud_score").unwrap();
        assert_eq!((fraud.baseline, fraud.comparison), (2, 8), "grew from 20% to 75%");
        let svg = diff_svg(&normal, &slow, "slow vs normal").unwrap();
        assert!(svg.contains("fraud_score"));
        assert_eq!(add(&normal, &slow).total(), 50);
    }
}
