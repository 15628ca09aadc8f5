//! A merged call tree: every stack's frames from the root, with each node's `total` (its
//! samples and its callees') and `self` (samples whose leaf it is). Siblings are sorted by name,
//! as flame graphs draw them.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TreeNode {
    pub name: String,
    pub total: i64,
    #[serde(rename = "self")]
    pub self_value: i64,
    pub children: Vec<TreeNode>,
}

/// The root is a synthetic node named `total` whose total is the sum of all samples.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tree {
    pub root: TreeNode,
}

pub const ROOT_NAME: &str = "total";

struct Arena {
    names: Vec<String>,
    total: Vec<i64>,
    self_value: Vec<i64>,
    children: Vec<Vec<usize>>,
    index: HashMap<(usize, String), usize>,
}

impl Arena {
    fn child(&mut self, parent: usize, name: &str) -> usize {
        if let Some(&i) = self.index.get(&(parent, name.to_string())) {
            return i;
        }
        let i = self.names.len();
        self.names.push(name.to_string());
        self.total.push(0);
        self.self_value.push(0);
        self.children.push(Vec::new());
        self.children[parent].push(i);
        self.index.insert((parent, name.to_string()), i);
        i
    }

    /// Depth is bounded by `model::MAX_STACK_DEPTH`, so recursion stays shallow.
    fn node(&self, i: usize) -> TreeNode {
        let mut children: Vec<TreeNode> = self.children[i].iter().map(|c| self.node(*c)).collect();
        children.sort_by(|a, b| a.name.cmp(&b.name));
        TreeNode {
            name: self.names[i].clone(),
            total: self.total[i],
            self_value: self.self_value[i],
            children,
        }
    }
}

impl Tree {
    /// Merges stacks (frames root first) with their values; equal paths add up.
    pub fn from_stacks<'a>(stacks: impl IntoIterator<Item = (&'a [String], i64)>) -> Tree {
        let mut a = Arena {
            names: vec![ROOT_NAME.to_string()],
            total: vec![0],
            self_value: vec![0],
            children: vec![Vec::new()],
            index: HashMap::new(),
        };
        for (frames, value) in stacks {
            a.total[0] += value;
            let mut at = 0;
            for f in frames {
                at = a.child(at, f);
                a.total[at] += value;
            }
            if at != 0 {
                a.self_value[at] += value;
            } else {
                // A sample without frames: its value is the root's own.
                a.self_value[0] += value;
            }
        }
        Tree { root: a.node(0) }
    }

    pub fn total(&self) -> i64 {
        self.root.total
    }

    pub fn is_empty(&self) -> bool {
        self.root.children.is_empty() && self.root.total == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn equal_paths_merge_and_totals_include_callees() {
        let (a, b, c) = (s(&["main", "work", "leaf"]), s(&["main", "work"]), s(&["main", "idle"]));
        let t = Tree::from_stacks([
            (a.as_slice(), 3),
            (b.as_slice(), 2),
            (c.as_slice(), 1),
            (a.as_slice(), 1),
        ]);
        assert_eq!(t.total(), 7);
        let main = &t.root.children[0];
        assert_eq!((main.name.as_str(), main.total, main.self_value), ("main", 7, 0));
        let names: Vec<&str> = main.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["idle", "work"], "siblings sorted by name");
        let work = &main.children[1];
        assert_eq!((work.total, work.self_value), (6, 2));
        assert_eq!((work.children[0].total, work.children[0].self_value), (4, 4));
    }
}
