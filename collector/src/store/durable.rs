//! Local-disk object store whose writes are durable when they return. `object_store`'s
//! `LocalFileSystem` never fsyncs: a put writes a staging file and renames it into place, and
//! after a power loss the file can be empty or gone although the put succeeded. Here a put
//! (and a multipart completion, a copy, a rename) fsyncs the file and every directory from the
//! file's up to the store root, since the put may have created them; a delete fsyncs the parent
//! directory. So a block is durable once `commit_block` returns, before the WAL segments it
//! covers or the compaction inputs it replaces are deleted.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};

/// Called with every path after it was fsynced (tests record them).
pub type SyncHook = Arc<dyn Fn(&std::path::Path) + Send + Sync>;

/// Where a synced write lives and what to tell.
#[derive(Clone)]
struct Syncer {
    /// Canonical store root: the last directory synced.
    root: PathBuf,
    hook: Option<SyncHook>,
}

impl Syncer {
    fn sync(&self, path: &std::path::Path) -> std::io::Result<()> {
        // Directories open read-only too; fsync on a read-only descriptor flushes the inode.
        std::fs::File::open(path)?.sync_all()?;
        if let Some(hook) = &self.hook {
            hook(path);
        }
        Ok(())
    }

    /// Syncs `file` (if given) and each directory from `dir` up to the root.
    fn sync_up(&self, file: Option<&std::path::Path>, dir: &std::path::Path) -> Result<()> {
        let err = |path: &std::path::Path, e: std::io::Error| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: format!("fsync {}: {e}", path.display()).into(),
        };
        if let Some(f) = file {
            self.sync(f).map_err(|e| err(f, e))?;
        }
        let mut d = Some(dir);
        while let Some(p) = d.filter(|p| p.starts_with(&self.root)) {
            self.sync(p).map_err(|e| err(p, e))?;
            d = p.parent();
        }
        Ok(())
    }

    /// Syncs a written file and the directories above it, on a blocking thread.
    async fn written(&self, file: PathBuf) -> Result<()> {
        let s = self.clone();
        blocking(move || match file.parent() {
            Some(dir) => s.sync_up(Some(&file), dir),
            None => s.sync_up(Some(&file), &s.root),
        })
        .await
    }

    /// Syncs the directory a file was removed from, and removes that directory once it is
    /// empty (a deleted block's directory would stay behind otherwise: one per block ever
    /// deleted by compaction or retention). Directories above it are left alone: a flush may be
    /// creating a block in them right now.
    async fn removed(&self, file: PathBuf) -> Result<()> {
        let s = self.clone();
        let err = |dir: &std::path::Path, e: std::io::Error| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: format!("fsync {}: {e}", dir.display()).into(),
        };
        blocking(move || match file.parent() {
            Some(dir) if dir.starts_with(&s.root) && dir != s.root => {
                s.sync(dir).map_err(|e| err(dir, e))?;
                match (std::fs::remove_dir(dir), dir.parent()) {
                    (Ok(()), Some(up)) => s.sync(up).map_err(|e| err(up, e)),
                    // Not empty (or already gone): nothing more to make durable.
                    _ => Ok(()),
                }
            }
            Some(dir) if dir == s.root => s.sync(dir).map_err(|e| err(dir, e)),
            _ => Ok(()),
        })
        .await
    }
}

async fn blocking(f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    tokio::task::spawn_blocking(f).await.map_err(|e| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(e),
    })?
}

/// See the module documentation.
pub struct DurableStore {
    inner: Arc<LocalFileSystem>,
    syncer: Syncer,
}

impl DurableStore {
    /// The directory `root` (which must exist) as a durable object store.
    pub fn new(root: impl AsRef<std::path::Path>) -> Result<DurableStore> {
        Self::build(root.as_ref(), None)
    }

    /// Like [`DurableStore::new`], calling `hook` with each path once it is fsynced.
    pub fn with_sync_hook(
        root: impl AsRef<std::path::Path>,
        hook: SyncHook,
    ) -> Result<DurableStore> {
        Self::build(root.as_ref(), Some(hook))
    }

    fn build(root: &std::path::Path, hook: Option<SyncHook>) -> Result<DurableStore> {
        let inner = LocalFileSystem::new_with_prefix(root)?;
        // Canonical, as the inner store resolves paths against it.
        let root = std::fs::canonicalize(root).map_err(|e| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: format!("{}: {e}", root.display()).into(),
        })?;
        Ok(DurableStore { inner: Arc::new(inner), syncer: Syncer { root, hook } })
    }

    fn file(&self, location: &Path) -> Result<PathBuf> {
        self.inner.path_to_filesystem(location)
    }
}

impl fmt::Debug for DurableStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableStore").field("root", &self.syncer.root).finish()
    }
}

impl fmt::Display for DurableStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableStore({})", self.syncer.root.display())
    }
}

#[async_trait]
impl ObjectStore for DurableStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let file = self.file(location)?;
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.syncer.written(file).await?;
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let file = self.file(location)?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DurableUpload { inner, file, syncer: self.syncer.clone() }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let (inner, syncer) = (self.inner.clone(), self.syncer.clone());
        self.inner
            .delete_stream(locations)
            .and_then(move |l| {
                let (inner, syncer) = (inner.clone(), syncer.clone());
                async move {
                    syncer.removed(inner.path_to_filesystem(&l)?).await?;
                    Ok(l)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let file = self.file(to)?;
        self.inner.copy_opts(from, to, options).await?;
        self.syncer.written(file).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let (src, dst) = (self.file(from)?, self.file(to)?);
        self.inner.rename_opts(from, to, options).await?;
        self.syncer.written(dst).await?;
        self.syncer.removed(src).await
    }
}

/// A multipart upload whose completion fsyncs the file and its directories.
struct DurableUpload {
    inner: Box<dyn MultipartUpload>,
    file: PathBuf,
    syncer: Syncer,
}

impl fmt::Debug for DurableUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableUpload").field("file", &self.file).finish()
    }
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let r = self.inner.complete().await?;
        self.syncer.written(self.file.clone()).await?;
        Ok(r)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;
    use parking_lot::Mutex;

    use super::*;

    /// A durable store over a temp dir and the paths it synced, relative to the root
    /// (`""` for the root itself).
    fn store() -> (tempfile::TempDir, DurableStore, Arc<Mutex<Vec<String>>>) {
        let dir = tempfile::tempdir().unwrap();
        let synced = Arc::new(Mutex::new(Vec::new()));
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let log = synced.clone();
        let hook: SyncHook = Arc::new(move |p: &std::path::Path| {
            let rel = p.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            log.lock().push(rel);
        });
        let store = DurableStore::with_sync_hook(dir.path(), hook).unwrap();
        (dir, store, synced)
    }

    fn take(synced: &Mutex<Vec<String>>) -> Vec<String> {
        std::mem::take(&mut *synced.lock())
    }

    #[tokio::test]
    async fn a_put_syncs_the_file_then_every_directory_up_to_the_root() {
        let (_dir, s, synced) = store();
        s.put(&Path::from("t/b/meta.json"), "x".into()).await.unwrap();
        assert_eq!(take(&synced), vec!["t/b/meta.json", "t/b", "t", ""]);
        s.put(&Path::from("top"), "x".into()).await.unwrap();
        assert_eq!(take(&synced), vec!["top", ""]);
    }

    #[tokio::test]
    async fn a_multipart_upload_is_synced_when_it_completes() {
        let (_dir, s, synced) = store();
        let mut up = s.put_multipart(&Path::from("t/b/spans.parquet")).await.unwrap();
        up.put_part("abc".into()).await.unwrap();
        assert!(take(&synced).is_empty(), "nothing is published before completion");
        up.complete().await.unwrap();
        assert_eq!(take(&synced), vec!["t/b/spans.parquet", "t/b", "t", ""]);
        assert_eq!(
            s.get(&Path::from("t/b/spans.parquet")).await.unwrap().bytes().await.unwrap(),
            "abc"
        );
    }

    #[tokio::test]
    async fn delete_syncs_the_parent_and_copy_and_rename_sync_the_target() {
        let (dir, s, synced) = store();
        s.put(&Path::from("t/b/meta.json"), "x".into()).await.unwrap();
        take(&synced);
        s.copy(&Path::from("t/b/meta.json"), &Path::from("q/t/b/meta.json")).await.unwrap();
        assert_eq!(take(&synced), vec!["q/t/b/meta.json", "q/t/b", "q/t", "q", ""]);
        s.rename(&Path::from("q/t/b/meta.json"), &Path::from("q/t/c/meta.json")).await.unwrap();
        assert_eq!(take(&synced), vec!["q/t/c/meta.json", "q/t/c", "q/t", "q", "", "q/t/b", "q/t"]);
        s.delete(&Path::from("t/b/meta.json")).await.unwrap();
        assert_eq!(take(&synced), vec!["t/b", "t"], "the emptied block directory is removed");
        assert!(!dir.path().join("t/b").exists());
        s.put(&Path::from("t/c/a"), "x".into()).await.unwrap();
        s.put(&Path::from("t/c/b"), "x".into()).await.unwrap();
        take(&synced);
        s.delete(&Path::from("t/c/a")).await.unwrap();
        assert_eq!(take(&synced), vec!["t/c"], "a directory still holding files stays");
    }

    #[tokio::test]
    async fn a_failed_put_syncs_nothing_and_reports_the_error() {
        let (_dir, s, synced) = store();
        s.put(&Path::from("t"), "file".into()).await.unwrap();
        take(&synced);
        // `t` is a file, so nothing can be created below it.
        assert!(s.put(&Path::from("t/b/meta.json"), "x".into()).await.is_err());
        assert!(take(&synced).is_empty());
    }
}
