//! The blocks of the other namespaces of a shared storage root: other replicas' (`nodes/<id>/`)
//! and, after an upgrade from a single node, blocks at the root itself. Read-only: their owners
//! write, compact and clean them up; here they are listed (every poll, and whenever a peer's
//! answer names a block not known yet), read and, long after they expired, deleted if their
//! owner is gone. See `store/DESIGN.md` ("Many replicas, one bucket").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::RwLock;

use super::block::{BLOOM_FILE, BlockMeta, META_FILE};
use super::blocks::{BlockDir, cutoff_nanos};
use super::bloom::Bloom;
use super::namespace::{NODES, NodeId, within};
use super::{Block, DATA_FILES, StoreError};
use crate::spanrows::TagKeys;
use crate::telemetry::Telemetry;

/// How long after retention another namespace's expired blocks are deleted here: a live owner
/// deletes them at retention itself (and never compacts expired blocks after that), so only a
/// replica gone for good leaves them this long.
pub const FOREIGN_DELETE_GRACE: Duration = Duration::from_secs(3600);

/// The name the blocks at the storage root go by (they belong to no replica).
pub const ROOT_NAMESPACE: &str = "";

struct Space {
    dir: BlockDir,
    root: Path,
    /// Blocks by tenant.
    blocks: HashMap<String, Vec<Arc<Block>>>,
}

pub struct SharedBlocks {
    root: Arc<dyn ObjectStore>,
    own: NodeId,
    spaces: RwLock<BTreeMap<String, Space>>,
    /// One listing at a time: concurrent queries that find the same block missing wait for the
    /// first one's listing instead of repeating it.
    refreshing: tokio::sync::Mutex<()>,
    metrics: Arc<Telemetry>,
}

impl SharedBlocks {
    pub fn new(root: Arc<dyn ObjectStore>, own: NodeId, metrics: Arc<Telemetry>) -> SharedBlocks {
        SharedBlocks {
            root,
            own,
            spaces: RwLock::new(BTreeMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    /// Namespaces of the storage root besides this replica's: every `nodes/<id>/` and, if the
    /// root holds tenant directories of its own, the root.
    async fn namespaces(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let nodes = self.root.list_with_delimiter(Some(&Path::from(NODES))).await?;
        for p in nodes.common_prefixes {
            if let Some(name) = p.filename()
                && name != self.own.as_str()
                && NodeId::new(name).is_ok()
            {
                out.push(name.to_string());
            }
        }
        if super::namespace::root_has_blocks(&self.root).await? {
            out.push(ROOT_NAMESPACE.to_string());
        }
        Ok(out)
    }

    fn space(&self, name: &str) -> Space {
        let root =
            if name == ROOT_NAMESPACE { Path::default() } else { Path::from_iter([NODES, name]) };
        let store = within(&self.root, &root);
        let quarantined = self.metrics.blocks_quarantined.with_label_values(&["spans"]);
        let dir = BlockDir::new(store, None, META_FILE, DATA_FILES, "block", quarantined);
        Space { dir, root, blocks: HashMap::new() }
    }

    /// Lists every namespace again and loads the blocks that appeared; blocks that are gone
    /// (compacted away, expired) are dropped.
    pub async fn refresh_all(&self) -> Result<(), StoreError> {
        let _one = self.refreshing.lock().await;
        let names = self.namespaces().await?;
        {
            let mut spaces = self.spaces.write();
            spaces.retain(|n, _| names.contains(n));
            for n in &names {
                if !spaces.contains_key(n) {
                    let space = self.space(n);
                    spaces.insert(n.clone(), space);
                }
            }
        }
        let mut first_err = None;
        for n in &names {
            if let Err(e) = self.refresh_locked(n).await {
                tracing::warn!(namespace = n, error = %e, "cannot list a peer namespace");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn refresh_locked(&self, name: &str) -> Result<(), StoreError> {
        let (dir_store, root, known) = {
            let mut spaces = self.spaces.write();
            let space = spaces.entry(name.to_string()).or_insert_with(|| self.space(name));
            let known: HashMap<(String, String), Vec<String>> = space
                .blocks
                .iter()
                .flat_map(|(t, bs)| {
                    bs.iter().map(move |b| {
                        ((t.clone(), b.meta.id.clone()), b.meta.compacted_from.clone())
                    })
                })
                .collect();
            (space.dir.object_store().clone(), space.root.clone(), known)
        };
        let quarantined = self.metrics.blocks_quarantined.with_label_values(&["spans"]);
        let dir =
            BlockDir::new(dir_store.clone(), None, META_FILE, DATA_FILES, "block", quarantined);
        let found = dir.scan_committed::<BlockMeta>(&known).await?;
        let mut loaded = Vec::with_capacity(found.new.len());
        for meta in found.new {
            let bytes = match dir.get(&meta.file(BLOOM_FILE)).await {
                Ok(b) => b,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let Some(bloom) = Bloom::from_bytes(&bytes) else { continue };
            loaded.push(Arc::new(Block { meta, bloom, root: root.clone() }));
        }
        let mut spaces = self.spaces.write();
        let Some(space) = spaces.get_mut(name) else { return Ok(()) };
        let present = &found.present;
        for bs in space.blocks.values_mut() {
            bs.retain(|b| present.contains(&(b.meta.tenant.clone(), b.meta.id.clone())));
        }
        for b in loaded {
            space.blocks.entry(b.meta.tenant.clone()).or_default().push(b);
        }
        space.blocks.retain(|_, bs| !bs.is_empty());
        for bs in space.blocks.values_mut() {
            bs.sort_by_key(|b| b.meta.min_time);
        }
        Ok(())
    }

    /// The blocks of `tenant` in namespace `name` among `ids` (what that namespace's owner
    /// said it holds), listing the namespace again first if any of them is not known yet.
    /// Blocks the owner named but that are gone by now (compacted, expired) are left out.
    pub async fn pinned(
        &self,
        name: &str,
        tenant: &str,
        ids: &[String],
    ) -> Result<Vec<Arc<Block>>, StoreError> {
        let pick = |spaces: &BTreeMap<String, Space>| -> (Vec<Arc<Block>>, bool) {
            let blocks = spaces.get(name).and_then(|s| s.blocks.get(tenant));
            let known: HashMap<&str, &Arc<Block>> = blocks
                .map(|bs| bs.iter().map(|b| (b.meta.id.as_str(), b)).collect())
                .unwrap_or_default();
            let mut chosen: Vec<Arc<Block>> = Vec::with_capacity(ids.len());
            let mut complete = true;
            for id in ids {
                match known.get(id.as_str()) {
                    Some(b) => chosen.push(Arc::clone(b)),
                    None => {
                        complete = false;
                        // Compacted since the owner named it: its rows are in the merged block.
                        let merged = blocks
                            .into_iter()
                            .flatten()
                            .find(|b| b.meta.compacted_from.contains(id));
                        if let Some(m) = merged
                            && !chosen.iter().any(|c| Arc::ptr_eq(c, m))
                        {
                            chosen.push(m.clone());
                        }
                    }
                }
            }
            (chosen, complete)
        };
        let (chosen, complete) = pick(&self.spaces.read());
        if complete {
            return Ok(chosen);
        }
        {
            let _one = self.refreshing.lock().await;
            // Another query may have listed it meanwhile.
            if !pick(&self.spaces.read()).1 {
                self.refresh_locked(name).await?;
            }
        }
        Ok(pick(&self.spaces.read()).0)
    }

    /// Every block of `tenant` in every namespace but those in `except` (whose blocks the
    /// caller takes from [`SharedBlocks::pinned`]), newest data not older than `cutoff` (unix
    /// ns): expired blocks are out of every answer as soon as their owner deletes its own.
    pub fn blocks(&self, tenant: &str, except: &HashSet<String>, cutoff: i64) -> Vec<Arc<Block>> {
        self.spaces
            .read()
            .iter()
            .filter(|(n, _)| !except.contains(*n))
            .filter_map(|(_, s)| s.blocks.get(tenant))
            .flatten()
            .filter(|b| b.meta.max_time >= cutoff)
            .cloned()
            .collect()
    }

    /// The namespaces known, with their block counts (for `/metrics` and the status page).
    pub fn namespace_blocks(&self) -> Vec<(String, usize)> {
        self.spaces
            .read()
            .iter()
            .map(|(n, s)| (n.clone(), s.blocks.values().map(Vec::len).sum()))
            .collect()
    }

    pub fn tag_keys(&self, tenant: &str, cutoff: i64) -> TagKeys {
        let mut tags = TagKeys::default();
        for b in self.blocks(tenant, &HashSet::new(), cutoff) {
            tags.extend(&b.meta.tags);
        }
        tags
    }

    /// Deletes (meta first) the blocks of other namespaces whose newest span ended more than
    /// `retention` + [`FOREIGN_DELETE_GRACE`] ago: a live owner has deleted them by then, so
    /// these are a retired replica's. Deleting what is already gone is harmless.
    pub async fn delete_abandoned(&self, retention: Duration) -> usize {
        let cutoff = cutoff_nanos(retention.saturating_add(FOREIGN_DELETE_GRACE));
        let doomed: Vec<Arc<Block>> = {
            let mut spaces = self.spaces.write();
            let mut out = Vec::new();
            for s in spaces.values_mut() {
                for bs in s.blocks.values_mut() {
                    let (old, keep): (Vec<_>, Vec<_>) =
                        bs.drain(..).partition(|b| b.meta.max_time < cutoff);
                    *bs = keep;
                    out.extend(old);
                }
            }
            out
        };
        for b in &doomed {
            for name in std::iter::once(META_FILE).chain(DATA_FILES.iter().copied()) {
                if let Err(e) = self.root.delete(&b.file(name)).await
                    && !matches!(e, object_store::Error::NotFound { .. })
                {
                    tracing::warn!(block = b.meta.id, error = %e, "cannot delete an abandoned block");
                }
            }
        }
        if !doomed.is_empty() {
            tracing::info!(blocks = doomed.len(), "deleted expired blocks of retired replicas");
        }
        doomed.len()
    }
}
