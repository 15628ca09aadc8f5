//! Namespaces of a storage root shared by several replicas: each replica writes, compacts and
//! cleans up only `nodes/<node-id>/` and reads every namespace (`shared.rs`). See
//! `store/DESIGN.md` ("Many replicas, one bucket").

use std::fmt;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path;

use super::prefix::PrefixedStore;

/// Top-level directory holding one directory per replica.
pub const NODES: &str = "nodes";

/// A replica's name: its namespace on the storage root and the `skein_node` label of its
/// span-metric series. 1–63 of `A-Z a-z 0-9 . _ -`, not starting with a dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

#[derive(Debug, thiserror::Error)]
#[error("invalid node id {0:?}: 1-63 of A-Z a-z 0-9 . _ -, not starting with a dot")]
pub struct InvalidNodeId(pub String);

impl NodeId {
    pub fn new(s: &str) -> Result<NodeId, InvalidNodeId> {
        let ok = (1..=63).contains(&s.len())
            && !s.starts_with('.')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok { Ok(NodeId(s.to_string())) } else { Err(InvalidNodeId(s.to_string())) }
    }

    /// The host name (what `--node-id` defaults to), cut to what a node id allows; `skein`
    /// when there is none.
    pub fn from_host() -> NodeId {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        let clean: String = host
            .trim()
            .chars()
            .map(
                |c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' },
            )
            .take(63)
            .collect();
        NodeId::new(clean.trim_start_matches('.')).unwrap_or_else(|_| NodeId("skein".into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// This node's directory from the storage root.
    pub fn dir(&self) -> Path {
        Path::from_iter([NODES, self.0.as_str()])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// True when the storage root holds tenant directories of its own: blocks written before
/// namespaces existed (top-level names other than `nodes`, `quarantine` and `profiles`).
pub async fn root_has_blocks(store: &Arc<dyn ObjectStore>) -> Result<bool, object_store::Error> {
    use super::blocks::{PROFILES_DIR, QUARANTINE};
    let top = store.list_with_delimiter(None).await?;
    Ok(top
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename())
        .any(|name| name != NODES && name != QUARANTINE && name != PROFILES_DIR))
}

/// `store` seen from directory `dir` (itself when `dir` is the root).
pub fn within(store: &Arc<dyn ObjectStore>, dir: &Path) -> Arc<dyn ObjectStore> {
    if dir.as_ref().is_empty() {
        store.clone()
    } else {
        Arc::new(PrefixedStore::new(store.clone(), dir.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_single_safe_path_segments() {
        assert_eq!(NodeId::new("skein-0").unwrap().dir().as_ref(), "nodes/skein-0");
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(64), ".hidden"] {
            assert!(NodeId::new(bad).is_err(), "{bad:?}");
        }
        assert!(NodeId::new(NodeId::from_host().as_str()).is_ok());
    }
}
