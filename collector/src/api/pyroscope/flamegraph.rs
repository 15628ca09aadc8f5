//! A merged call tree in Pyroscope's flame graph encoding (`querier.v1.FlameGraph`), which
//! Grafana's flame graph panel draws.
//!
//! `levels[d]` holds the nodes at depth `d` from left to right, 4 integers each: the gap
//! between the end of the previous node on that level and this node's start, the node's total,
//! its self value, and the index of its name in `names`. Level 0 is the root, `total`. Only the
//! `max_nodes` largest nodes are kept; the rest of each node's children are merged into one
//! child named `other`, placed after its kept siblings.

use crate::profile::{Tree, TreeNode};

use super::proto::querier::v1::{FlameGraph, Level};

/// What a request that does not set `max_nodes` gets (Pyroscope's default too).
pub const DEFAULT_MAX_NODES: usize = 8192;
pub const OTHER: &str = "other";

/// The smallest total a node may have to be kept: the `max_nodes`-th largest total.
fn min_total(tree: &Tree, max_nodes: usize) -> i64 {
    let mut totals = Vec::new();
    let mut stack: Vec<&TreeNode> = tree.root.children.iter().collect();
    while let Some(n) = stack.pop() {
        totals.push(n.total);
        stack.extend(n.children.iter());
    }
    if max_nodes == 0 || totals.len() <= max_nodes {
        return 0;
    }
    let k = max_nodes - 1;
    let (_, kth, _) = totals.select_nth_unstable_by(k, |a, b| b.cmp(a));
    *kth
}

enum Item<'a> {
    Node(&'a TreeNode),
    Other(i64),
}

pub fn encode(tree: &Tree, max_nodes: usize) -> FlameGraph {
    let min = min_total(tree, max_nodes);
    let mut names: Vec<String> = Vec::new();
    let mut index: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    let mut levels: Vec<Level> = Vec::new();
    let mut max_self = 0i64;
    // Nodes of the current level with their absolute start, left to right.
    let mut level: Vec<(i64, Item<'_>)> = vec![(0, Item::Node(&tree.root))];
    while !level.is_empty() {
        let mut values = Vec::with_capacity(level.len() * 4);
        let mut next = Vec::new();
        let mut prev_end = 0i64;
        for (x, item) in &level {
            let (name, total, self_value) = match item {
                Item::Node(n) => (n.name.as_str(), n.total, n.self_value),
                Item::Other(t) => (OTHER, *t, *t),
            };
            let idx = *index.entry(name).or_insert_with(|| {
                names.push(name.to_string());
                names.len() as i64 - 1
            });
            values.extend_from_slice(&[x - prev_end, total, self_value, idx]);
            prev_end = x + total;
            max_self = max_self.max(self_value);
            if let Item::Node(n) = item {
                let (mut cx, mut other) = (*x, 0i64);
                for c in &n.children {
                    if c.total >= min {
                        next.push((cx, Item::Node(c)));
                        cx += c.total;
                    } else {
                        other += c.total;
                    }
                }
                if other > 0 {
                    next.push((cx, Item::Other(other)));
                }
            }
        }
        levels.push(Level { values });
        level = next;
    }
    FlameGraph { names, levels, total: tree.total(), max_self }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// main(0 self) → work(2 self) → leaf(3); main → idle(1).
    fn tree() -> Tree {
        let (a, b, c) = (s(&["main", "work", "leaf"]), s(&["main", "work"]), s(&["main", "idle"]));
        Tree::from_stacks([(a.as_slice(), 3), (b.as_slice(), 2), (c.as_slice(), 1)])
    }

    #[test]
    fn levels_hold_offset_total_self_and_name_for_a_known_tree() {
        let fg = encode(&tree(), DEFAULT_MAX_NODES);
        assert_eq!(fg.names, vec!["total", "main", "idle", "work", "leaf"]);
        let levels: Vec<Vec<i64>> = fg.levels.iter().map(|l| l.values.clone()).collect();
        assert_eq!(
            levels,
            vec![
                vec![0, 6, 0, 0],
                vec![0, 6, 0, 1],
                // idle at x=0 (1 wide), work right after it.
                vec![0, 1, 1, 2, 0, 5, 2, 3],
                // leaf starts at x=1, where its parent work starts: 0 after idle's end.
                vec![1, 3, 3, 4],
            ]
        );
        assert_eq!((fg.total, fg.max_self), (6, 3));
    }

    #[test]
    fn max_nodes_merges_the_smallest_into_other() {
        // Node totals: main 6, work 5, leaf 3, idle 1: keep the 3 largest.
        let fg = encode(&tree(), 3);
        assert!(fg.names.contains(&"other".to_string()));
        assert!(!fg.names.contains(&"idle".to_string()));
        let idx = |name: &str| fg.names.iter().position(|n| n == name).unwrap() as i64;
        // Level 2: work at x=0, then "other" (idle's 1) after it.
        assert_eq!(fg.levels[2].values, vec![0, 5, 2, idx("work"), 0, 1, 1, idx("other")]);
        let fg = encode(&tree(), 1);
        assert_eq!(fg.levels.len(), 3, "only main kept below the root, its children are other");
        assert_eq!(fg.levels[2].values[1], 6);
    }

    #[test]
    fn an_empty_tree_is_a_lone_root() {
        let fg = encode(&Tree::from_stacks(std::iter::empty()), 10);
        assert_eq!(fg.names, vec!["total"]);
        assert_eq!(fg.levels.len(), 1);
        assert_eq!(fg.total, 0);
    }
}
