//! The block-directory plumbing span blocks and profile blocks share. Both kinds live at
//! `[<prefix>/]<tenant>/<id>/` on the object store, with `meta.json` written last (a block
//! exists once its meta exists) and `compacted_from` naming the blocks a merge replaced. So
//! loading the directory at start (deleting interrupted writes and the inputs of committed
//! compactions), deleting a block, retention and the choice of which blocks compaction merges
//! are the same for both; each store only names its files and says how to write and merge.
//! A damaged block (unreadable meta, missing or wrongly sized files, an undecodable bloom
//! filter) is moved aside to `quarantine/[<prefix>/]<tenant>/<id>/` instead of stopping start-up.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::{Path, PathPart};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use prometheus::IntCounter;
use serde::de::DeserializeOwned;

use super::catalog::{Catalog, CatalogEntry};

/// What the directory scan reads from a block's `meta.json`.
pub trait BlockMetaFile: DeserializeOwned {
    fn tenant(&self) -> &str;
    fn id(&self) -> &str;
    /// Ids of the blocks (same tenant) this one was merged from.
    fn compacted_from(&self) -> &[String];
    /// The size of data file `file` the meta records, if it records one.
    fn recorded_size(&self, file: &str) -> Option<u64>;
    /// Whether the block has data file `file` (blocks written before a file was added lack it).
    fn expects(&self, _file: &str) -> bool {
        true
    }
}

/// Top-level directory damaged blocks are moved to. Its keys are at least one level deeper
/// than span block files (`<tenant>/<id>/<file>`), so no scan takes them for blocks.
pub const QUARANTINE: &str = "quarantine";

/// Top-level directory of profile blocks (`profiles/<tenant>/<id>/`).
pub const PROFILES_DIR: &str = "profiles";

#[derive(Debug, thiserror::Error)]
pub enum BlockDirError {
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("{tenant}/{id}/meta.json: {source}")]
    Meta { tenant: String, id: String, source: serde_json::Error },
}

/// One kind of block on the object store.
pub struct BlockDir {
    object_store: Arc<dyn ObjectStore>,
    /// Top-level directory of this kind (`None`: the root).
    prefix: Option<&'static str>,
    meta_file: &'static str,
    /// Every other file a block may have.
    data_files: &'static [&'static str],
    /// What the logs call these blocks ("block", "profile block").
    kind: &'static str,
    /// Damaged blocks moved aside (`blocks_quarantined{kind}`).
    quarantined: IntCounter,
    /// Blocks out of the catalog (compacted away, expired) whose files wait for the queries
    /// still reading them; see [`BlockDir::retire`].
    retired: parking_lot::Mutex<Vec<Retired>>,
}

/// A block out of the catalog, held until no one else holds it.
struct Retired {
    tenant: String,
    id: String,
    /// The catalog entry itself: queries hold clones of it while they read the block's files.
    entry: Arc<dyn std::any::Any + Send + Sync>,
}

/// Why a block on the object store cannot be served.
#[derive(Debug)]
struct Damage {
    tenant: String,
    id: String,
    reason: String,
}

impl BlockDir {
    pub fn new(
        object_store: Arc<dyn ObjectStore>,
        prefix: Option<&'static str>,
        meta_file: &'static str,
        data_files: &'static [&'static str],
        kind: &'static str,
        quarantined: IntCounter,
    ) -> Self {
        BlockDir {
            object_store,
            prefix,
            meta_file,
            data_files,
            kind,
            quarantined,
            retired: parking_lot::Mutex::new(Vec::new()),
        }
    }

    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.object_store
    }

    /// The directory of block `id` of `tenant`.
    pub fn dir(&self, tenant: &str, id: &str) -> Path {
        match self.prefix {
            Some(p) => Path::from(format!("{p}/{tenant}/{id}")),
            None => Path::from(format!("{tenant}/{id}")),
        }
    }

    pub async fn get(&self, path: &Path) -> Result<Bytes, object_store::Error> {
        self.object_store.get(path).await?.bytes().await
    }

    /// Reads every committed block's meta. Directories without a meta (interrupted writes) and
    /// blocks a committed compaction replaced (a crash before their deletion) are deleted and
    /// left out; damaged blocks are quarantined and left out. Fails only if the store does.
    pub async fn scan<M: BlockMetaFile>(&self) -> Result<Vec<M>, BlockDirError> {
        let dirs = self.list_dirs().await?;
        let mut metas: Vec<M> = Vec::new();
        let mut damaged = Vec::new();
        for ((tenant, id), files) in &dirs {
            if !files.iter().any(|o| o.location.filename() == Some(self.meta_file)) {
                tracing::warn!(tenant, block = id, kind = self.kind, "removing incomplete block");
                self.delete_files(files.iter().map(|o| &o.location)).await;
                continue;
            }
            match self.check::<M>(tenant, id, files).await? {
                Ok(meta) => metas.push(meta),
                Err(reason) => {
                    damaged.push(Damage { tenant: tenant.clone(), id: id.clone(), reason })
                }
            }
        }
        let superseded = superseded(metas.iter().map(|m| (m.tenant(), m.compacted_from())));
        for d in damaged {
            let key = (d.tenant.clone(), d.id.clone());
            if superseded.contains(&key) {
                // Its rows are in the merged block; nothing is lost by deleting it.
                tracing::warn!(
                    tenant = d.tenant,
                    block = d.id,
                    kind = self.kind,
                    reason = d.reason,
                    "removing damaged compacted-away block"
                );
                if let Some(files) = dirs.get(&key) {
                    self.delete_files(files.iter().map(|o| &o.location)).await;
                }
            } else {
                self.quarantine(&d.tenant, &d.id, &d.reason).await;
            }
        }
        let mut kept = Vec::with_capacity(metas.len());
        for meta in metas {
            let key = (meta.tenant().to_string(), meta.id().to_string());
            if superseded.contains(&key) {
                tracing::info!(
                    tenant = meta.tenant(),
                    block = meta.id(),
                    kind = self.kind,
                    "removing compacted-away block"
                );
                if let Some(files) = dirs.get(&key) {
                    self.delete_files(files.iter().map(|o| &o.location)).await;
                }
                continue;
            }
            kept.push(meta);
        }
        Ok(kept)
    }

    /// Every block directory's files, by (tenant, id).
    async fn list_dirs(&self) -> Result<HashMap<(String, String), Vec<ObjectMeta>>, BlockDirError> {
        let prefix = self.prefix.map(Path::from);
        let objects: Vec<ObjectMeta> =
            self.object_store.list(prefix.as_ref()).try_collect().await?;
        // `[prefix/]tenant/id/file`: anything shallower or deeper is not a block file of ours.
        let depth = 3 + usize::from(prefix.is_some());
        let mut dirs: HashMap<(String, String), Vec<ObjectMeta>> = HashMap::new();
        for o in objects {
            let parts: Vec<String> = o.location.parts().map(|p| p.as_ref().to_string()).collect();
            if parts.len() == depth {
                let key = (parts[depth - 3].clone(), parts[depth - 2].clone());
                dirs.entry(key).or_default().push(o);
            }
        }
        Ok(dirs)
    }

    /// Reads the metas of the committed blocks of a directory another replica owns, touching
    /// nothing: a directory without a meta may be a write in progress, a damaged block is its
    /// owner's to quarantine, a compacted-away block its owner's to delete. `known` blocks
    /// (by tenant and id, with their `compacted_from`) are not read again. Fails only if the
    /// store does.
    pub async fn scan_committed<M: BlockMetaFile>(
        &self,
        known: &HashMap<(String, String), Vec<String>>,
    ) -> Result<ScanResult<M>, BlockDirError> {
        let dirs = self.list_dirs().await?;
        let mut out = ScanResult { new: Vec::new(), present: HashSet::new() };
        let mut compacted_from = Vec::new();
        for ((tenant, id), files) in &dirs {
            if !files.iter().any(|o| o.location.filename() == Some(self.meta_file)) {
                continue;
            }
            let key = (tenant.clone(), id.clone());
            if let Some(from) = known.get(&key) {
                compacted_from.push((tenant.clone(), from.clone()));
                out.present.insert(key);
                continue;
            }
            match self.check::<M>(tenant, id, files).await? {
                Ok(meta) => {
                    compacted_from.push((tenant.clone(), meta.compacted_from().to_vec()));
                    out.present.insert(key);
                    out.new.push(meta);
                }
                Err(reason) => {
                    tracing::debug!(
                        tenant,
                        block = id,
                        reason,
                        "skipping a peer's unreadable block"
                    )
                }
            }
        }
        let superseded = superseded(compacted_from.iter().map(|(t, f)| (t.as_str(), f.as_slice())));
        out.present.retain(|k| !superseded.contains(k));
        out.new.retain(|m| !superseded.contains(&(m.tenant().to_string(), m.id().to_string())));
        Ok(out)
    }

    /// The meta of block `tenant/id` (whose listed files are `files`) if the meta parses,
    /// names this block and every data file is there with the size the meta records;
    /// otherwise why not. The outer error is a failing store, which says nothing about the
    /// block.
    async fn check<M: BlockMetaFile>(
        &self,
        tenant: &str,
        id: &str,
        files: &[ObjectMeta],
    ) -> Result<Result<M, String>, BlockDirError> {
        let bytes = match self.get(&self.dir(tenant, id).join(self.meta_file)).await {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => {
                return Ok(Err(format!("{} vanished", self.meta_file)));
            }
            Err(e) => return Err(e.into()),
        };
        let meta: M = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => {
                return Ok(Err(format!(
                    "{} ({} bytes) does not parse: {e}",
                    self.meta_file,
                    bytes.len()
                )));
            }
        };
        if meta.tenant() != tenant || meta.id() != id {
            return Ok(Err(format!(
                "{} names block {}/{}",
                self.meta_file,
                meta.tenant(),
                meta.id()
            )));
        }
        for name in self.data_files.iter().filter(|n| meta.expects(n)) {
            let Some(file) = files.iter().find(|o| o.location.filename() == Some(name)) else {
                return Ok(Err(format!("{name} is missing")));
            };
            if let Some(size) = meta.recorded_size(name)
                && size != file.size
            {
                return Ok(Err(format!("{name} is {} bytes, the meta says {size}", file.size)));
            }
        }
        Ok(Ok(meta))
    }

    /// Moves block `tenant/id` aside to `quarantine/[<prefix>/]<tenant>/<id>/` (copy, then
    /// delete, meta first) and counts it. The block is left out of the catalog whatever
    /// happens; a failed move is logged and tried again at the next start.
    pub async fn quarantine(&self, tenant: &str, id: &str, reason: &str) {
        tracing::error!(tenant, block = id, kind = self.kind, reason, "quarantining damaged block");
        self.quarantined.inc();
        let dir = self.dir(tenant, id);
        let files: Vec<Path> =
            match self.object_store.list(Some(&dir)).map_ok(|o| o.location).try_collect().await {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(tenant, block = id, error = %e, "cannot list damaged block");
                    return;
                }
            };
        let target = self.quarantine_dir(tenant, id);
        let mut moved = true;
        for f in &files {
            let Some(rest) = f.prefix_match(&dir) else { continue };
            let to = rest.fold(target.clone(), |p, part| p.join(part));
            if let Err(e) = self.object_store.copy(f, &to).await {
                tracing::error!(from = %f, to = %to, error = %e, "cannot copy damaged block file");
                moved = false;
            }
        }
        if moved {
            let meta_first = files.iter().filter(|f| f.filename() == Some(self.meta_file));
            let others = files.iter().filter(|f| f.filename() != Some(self.meta_file));
            self.delete_files(meta_first.chain(others)).await;
        }
    }

    /// Where block `tenant/id` goes when it is quarantined.
    pub fn quarantine_dir(&self, tenant: &str, id: &str) -> Path {
        let dir = self.dir(tenant, id);
        std::iter::once(PathPart::from(QUARANTINE)).chain(dir.parts()).collect()
    }

    async fn delete_files<'a>(&self, files: impl IntoIterator<Item = &'a Path>) {
        for f in files {
            if let Err(e) = self.object_store.delete(f).await
                && !matches!(e, object_store::Error::NotFound { .. })
            {
                tracing::warn!(path = %f, error = %e, "delete failed");
            }
        }
    }

    /// Deletes a block's files, meta first: a half-deleted block is then an incomplete one,
    /// cleaned up on start.
    pub async fn delete(&self, tenant: &str, id: &str) {
        let files: Vec<Path> = std::iter::once(self.meta_file)
            .chain(self.data_files.iter().copied())
            .map(|f| self.dir(tenant, id).join(f))
            .collect();
        self.delete_files(&files).await;
    }

    /// Deletes `blocks`, which are out of the catalog, once no query still reads them: a
    /// query holds the catalog entries it read from until it is done, so a block whose entry
    /// only this list holds has no reader, and (out of the catalog) can get none. The rest wait
    /// for a later call (every compaction and retention round makes one). A crash meanwhile
    /// loses nothing: compacted-away inputs are deleted at start (the merged block names them)
    /// and expired blocks expire again.
    pub async fn retire<B: CatalogEntry + Send + Sync + 'static>(&self, blocks: Vec<Arc<B>>) {
        {
            let mut retired = self.retired.lock();
            for b in blocks {
                let (tenant, id) = (b.tenant().to_owned(), b.id().to_owned());
                retired.push(Retired { tenant, id, entry: b });
            }
        }
        self.delete_unread().await;
    }

    /// Deletes the retired blocks no query reads any more; returns how many still wait.
    pub async fn delete_unread(&self) -> usize {
        let (unread, waiting): (Vec<Retired>, usize) = {
            let mut retired = self.retired.lock();
            let (unread, busy): (Vec<Retired>, Vec<Retired>) =
                retired.drain(..).partition(|r| Arc::strong_count(&r.entry) == 1);
            *retired = busy;
            (unread, retired.len())
        };
        for r in unread {
            self.delete(&r.tenant, &r.id).await;
        }
        waiting
    }

    /// Removes from `catalog` and retires (deletes once unread) every block whose newest data
    /// ended before `now - retention`; returns how many.
    pub async fn expire<B: CatalogEntry + Send + Sync + 'static>(
        &self,
        catalog: &Catalog<B>,
        retention: Duration,
    ) -> usize {
        let cutoff = cutoff_nanos(retention);
        let expired = catalog.expire(cutoff);
        let n = expired.len();
        self.retire(expired).await;
        n
    }
}

/// Unix nanoseconds `retention` ago: blocks whose newest data is older are expired.
pub fn cutoff_nanos(retention: Duration) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    now.saturating_sub(i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX))
}

/// What [`BlockDir::scan_committed`] found.
pub struct ScanResult<M> {
    /// Committed blocks not known before.
    pub new: Vec<M>,
    /// Every committed block there, known or new (by tenant and id), except those a committed
    /// compaction replaced.
    pub present: HashSet<(String, String)>,
}

/// (tenant, block id) of every block a committed compaction replaced, from the blocks'
/// `(tenant, compacted_from)`: leftovers of a crash between committing a merged block and
/// deleting its inputs.
pub fn superseded<'a>(
    blocks: impl IntoIterator<Item = (&'a str, &'a [String])>,
) -> HashSet<(String, String)> {
    blocks
        .into_iter()
        .flat_map(|(t, from)| from.iter().map(move |id| (t.to_string(), id.clone())))
        .collect()
}

/// Which blocks compaction merges.
#[derive(Debug, Clone, Copy)]
pub struct CompactionPolicy {
    /// Blocks with fewer rows than half of this are merged together, up to this many rows.
    pub target_rows: u64,
    /// Most blocks merged at once (each input costs memory while merging).
    pub max_inputs: usize,
    /// A run of small blocks that never adds up to half the target is merged once its oldest
    /// block is this old.
    pub after: Duration,
}

/// The groups of each tenant's blocks to merge, in catalog (start time) order. Runs of small
/// blocks are cut where the next block would pass the target or the input limit; a cut run is
/// merged, and the last run only once it adds up to half the target or its oldest block is
/// `after` old, so each row is rewritten about once instead of at every few flushes.
pub fn compaction_plan<B: CatalogEntry>(
    catalog: &Catalog<B>,
    policy: &CompactionPolicy,
    now_unix: i64,
) -> Vec<(String, Vec<Arc<B>>)> {
    let mut plan = Vec::new();
    for tenant in catalog.tenants() {
        for group in compaction_groups(catalog.blocks(&tenant), policy, now_unix) {
            plan.push((tenant.clone(), group));
        }
    }
    plan
}

fn compaction_groups<B: CatalogEntry>(
    blocks: Vec<Arc<B>>,
    policy: &CompactionPolicy,
    now_unix: i64,
) -> Vec<Vec<Arc<B>>> {
    let target = policy.target_rows;
    let mut groups = Vec::new();
    let mut group: Vec<Arc<B>> = Vec::new();
    let mut rows = 0u64;
    for b in blocks.into_iter().filter(|b| b.rows() < target / 2) {
        let full = rows + b.rows() > target || group.len() >= policy.max_inputs;
        if full && group.len() >= 2 {
            groups.push(std::mem::take(&mut group));
            rows = 0;
        }
        rows += b.rows();
        group.push(b);
    }
    let oldest = group.iter().map(|b| b.created_unix()).min().unwrap_or(now_unix);
    let old_enough = now_unix - oldest >= i64::try_from(policy.after.as_secs()).unwrap_or(i64::MAX);
    if group.len() >= 2 && (rows >= target / 2 || old_enough) {
        groups.push(group);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (id, rows, created_unix)
    struct B(&'static str, u64, i64);

    impl CatalogEntry for B {
        fn tenant(&self) -> &str {
            "t"
        }
        fn id(&self) -> &str {
            self.0
        }
        fn min_time(&self) -> i64 {
            0
        }
        fn max_time(&self) -> i64 {
            0
        }
        fn wal_ranges(&self) -> crate::wal::SeqRanges {
            crate::wal::SeqRanges::new()
        }
        fn rows(&self) -> u64 {
            self.1
        }
        fn created_unix(&self) -> i64 {
            self.2
        }
    }

    fn ids(groups: &[Vec<Arc<B>>]) -> Vec<Vec<&'static str>> {
        groups.iter().map(|g| g.iter().map(|b| b.0).collect()).collect()
    }

    const POLICY: CompactionPolicy =
        CompactionPolicy { target_rows: 100, max_inputs: 3, after: Duration::from_secs(600) };

    #[test]
    fn runs_are_cut_at_the_target_and_the_input_limit_and_big_blocks_are_left_alone() {
        let blocks = [B("a", 30, 0), B("b", 30, 0), B("big", 60, 0), B("c", 45, 0), B("d", 40, 0)]
            .map(Arc::new)
            .to_vec();
        // a+b+c would pass 100 rows: a, b are cut; c, d hold 85 ≥ 50 rows.
        assert_eq!(
            ids(&compaction_groups(blocks, &POLICY, 0)),
            vec![vec!["a", "b"], vec!["c", "d"]]
        );
        let blocks = [1, 2, 3, 4].map(|_| Arc::new(B("x", 1, 0))).to_vec();
        let groups = compaction_groups(blocks, &POLICY, 0);
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), vec![3], "the rest waits");
    }

    #[test]
    fn a_small_last_run_waits_until_its_oldest_block_is_old_enough() {
        let blocks = || [B("a", 10, 100), B("b", 10, 200)].map(Arc::new).to_vec();
        assert!(compaction_groups(blocks(), &POLICY, 699).is_empty());
        assert_eq!(ids(&compaction_groups(blocks(), &POLICY, 700)), vec![vec!["a", "b"]]);
        let one = vec![Arc::new(B("a", 10, 0))];
        assert!(compaction_groups(one, &POLICY, 10_000).is_empty(), "nothing to merge with");
    }

    #[derive(serde::Deserialize)]
    struct Meta {
        tenant: String,
        id: String,
        size: u64,
    }

    impl BlockMetaFile for Meta {
        fn tenant(&self) -> &str {
            &self.tenant
        }
        fn id(&self) -> &str {
            &self.id
        }
        fn compacted_from(&self) -> &[String] {
            &[]
        }
        fn recorded_size(&self, file: &str) -> Option<u64> {
            (file == "data").then_some(self.size)
        }
    }

    #[tokio::test]
    async fn damaged_blocks_under_a_prefix_go_to_quarantine_under_the_same_prefix() {
        use futures::TryStreamExt;
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let quarantined = IntCounter::new("q", "q").unwrap();
        let dir = BlockDir::new(
            store.clone(),
            Some("p"),
            "meta.json",
            &["data"],
            "test",
            quarantined.clone(),
        );
        let put = |path: &'static str, body: &'static str| {
            let store = store.clone();
            async move { store.put(&Path::from(path), body.into()).await.unwrap() }
        };
        put("p/t/ok/meta.json", r#"{"tenant":"t","id":"ok","size":4}"#).await;
        put("p/t/ok/data", "1234").await;
        put("p/t/short/meta.json", r#"{"tenant":"t","id":"short","size":4}"#).await;
        put("p/t/short/data", "12").await;
        put("p/t/other/meta.json", r#"{"tenant":"t","id":"ok","size":4}"#).await;
        put("p/t/other/data", "1234").await;
        put("p/t/nodata/meta.json", r#"{"tenant":"t","id":"nodata","size":4}"#).await;

        let kept: Vec<String> =
            dir.scan::<Meta>().await.unwrap().into_iter().map(|m| m.id).collect();
        assert_eq!(kept, vec!["ok"]);
        assert_eq!(quarantined.get(), 3);
        let mut keys: Vec<String> =
            store.list(None).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "p/t/ok/data",
                "p/t/ok/meta.json",
                "quarantine/p/t/nodata/meta.json",
                "quarantine/p/t/other/data",
                "quarantine/p/t/other/meta.json",
                "quarantine/p/t/short/data",
                "quarantine/p/t/short/meta.json",
            ]
        );
        // Nothing is taken for a block again, by this scan or one of the root.
        assert_eq!(dir.scan::<Meta>().await.unwrap().len(), 1);
        let root =
            BlockDir::new(store.clone(), None, "meta.json", &["data"], "test", quarantined.clone());
        assert!(root.scan::<Meta>().await.unwrap().is_empty());
        assert_eq!(quarantined.get(), 3);
        assert_eq!(store.list(None).try_collect::<Vec<_>>().await.unwrap().len(), 7);
    }
}
