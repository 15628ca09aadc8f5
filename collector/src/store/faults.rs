//! A fault-injecting wrapper around a real object store, for tests: a put that fails (the Nth,
//! or only those matching a path), or an outage in which every call fails. Everything that is
//! not failed goes to the wrapped store unchanged, so what succeeds is really stored.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};
use parking_lot::Mutex;

type PathPred = Box<dyn Fn(&Path) -> bool + Send + Sync>;

/// Which puts fail next.
#[derive(Default)]
struct Rules {
    /// The next this many puts fail, whatever their path.
    next_puts: usize,
    /// Puts whose path matches fail, each rule as many times as its count.
    puts_where: Vec<(PathPred, usize)>,
}

#[derive(Default)]
struct State {
    rules: Mutex<Rules>,
    down: AtomicBool,
    injected: AtomicUsize,
}

impl State {
    /// An error for `op` if the store is down, counted.
    fn outage(&self, op: &'static str, path: &str) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(injected(op, path));
        }
        Ok(())
    }

    /// An error for a put of `path` if the store is down or a rule says so, counted.
    fn put(&self, path: &Path) -> Result<()> {
        self.outage("put", path.as_ref())?;
        let mut rules = self.rules.lock();
        let fail = if rules.next_puts > 0 {
            rules.next_puts -= 1;
            true
        } else if let Some(rule) = rules.puts_where.iter_mut().find(|(p, n)| *n > 0 && p(path)) {
            rule.1 -= 1;
            true
        } else {
            false
        };
        rules.puts_where.retain(|(_, n)| *n > 0);
        if fail {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(injected("put", path.as_ref()));
        }
        Ok(())
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State").field("down", &self.down).field("injected", &self.injected).finish()
    }
}

/// What an S3 server's 503 SlowDown looks like through `object_store`: a generic error.
fn injected(op: &'static str, path: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyStore",
        source: format!("injected fault: {op} {path}: 503 Service Unavailable (SlowDown)").into(),
    }
}

/// See the module documentation.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    state: Arc<State>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<FaultyStore> {
        Arc::new(FaultyStore { inner, state: Arc::default() })
    }

    /// The next `n` put calls (put_opts / multipart) fail with a retryable-looking error.
    pub fn fail_next_puts(&self, n: usize) {
        self.state.rules.lock().next_puts = n;
    }

    /// Puts whose path satisfies `pred` fail, `n` times.
    pub fn fail_puts_where(&self, pred: impl Fn(&Path) -> bool + Send + Sync + 'static, n: usize) {
        if n > 0 {
            self.state.rules.lock().puts_where.push((Box::new(pred), n));
        }
    }

    /// While down, every call fails (an outage); `set_down(false)` recovers.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// How many calls failed by injection so far.
    pub fn injected(&self) -> usize {
        self.state.injected.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore")
            .field("inner", &self.inner)
            .field("down", &self.state.down.load(Ordering::SeqCst))
            .field("injected", &self.injected())
            .finish()
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.state.put(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        // Decided when the upload starts: an upload is one put, and its parts and completion
        // then fail only in an outage.
        self.state.put(location)?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload { inner, state: self.state.clone(), path: location.to_string() }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.state.outage("get", location.as_ref())?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.state.outage("get", location.as_ref())?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let state = self.state.clone();
        let checked = locations
            .map(move |l| {
                let l = l?;
                state.outage("delete", l.as_ref())?;
                Ok(l)
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let at = prefix.map(|p| p.to_string()).unwrap_or_default();
        match self.state.outage("list", &at) {
            Ok(()) => self.inner.list(prefix),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let at = prefix.map(|p| p.to_string()).unwrap_or_default();
        match self.state.outage("list", &at) {
            Ok(()) => self.inner.list_with_offset(prefix, offset),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let at = prefix.map(|p| p.to_string()).unwrap_or_default();
        self.state.outage("list", &at)?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.state.outage("copy", from.as_ref())?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.state.outage("rename", from.as_ref())?;
        self.inner.rename_opts(from, to, options).await
    }
}

/// A multipart upload that fails its parts and completion during an outage.
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    state: Arc<State>,
    path: String,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        match self.state.outage("put", &self.path) {
            Ok(()) => self.inner.put_part(data),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    async fn complete(&mut self) -> Result<PutResult> {
        self.state.outage("put", &self.path)?;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    fn store() -> Arc<FaultyStore> {
        FaultyStore::new(Arc::new(InMemory::new()))
    }

    #[tokio::test]
    async fn a_failed_put_stores_nothing_and_the_next_one_succeeds() {
        let s = store();
        let p = Path::from("t/b/meta.json");
        s.fail_next_puts(1);
        assert!(s.put(&p, "x".into()).await.is_err());
        assert!(matches!(s.head(&p).await, Err(object_store::Error::NotFound { .. })));
        s.put(&p, "x".into()).await.unwrap();
        assert_eq!(s.get(&p).await.unwrap().bytes().await.unwrap(), "x");
        assert_eq!(s.injected(), 1);
    }

    #[tokio::test]
    async fn the_next_n_puts_fail_including_multipart_uploads() {
        let s = store();
        s.fail_next_puts(2);
        assert!(s.put(&Path::from("a"), "x".into()).await.is_err());
        assert!(s.put_multipart(&Path::from("b")).await.is_err());
        let mut up = s.put_multipart(&Path::from("b")).await.unwrap();
        up.put_part("y".into()).await.unwrap();
        up.complete().await.unwrap();
        assert_eq!(s.get(&Path::from("b")).await.unwrap().bytes().await.unwrap(), "y");
        assert_eq!(s.injected(), 2);
    }

    #[tokio::test]
    async fn only_puts_matching_the_predicate_fail_and_only_n_times() {
        let s = store();
        s.fail_puts_where(|p| p.filename() == Some("bloom.bin"), 2);
        s.put(&Path::from("t/b/spans.parquet"), "x".into()).await.unwrap();
        assert!(s.put(&Path::from("t/b/bloom.bin"), "x".into()).await.is_err());
        assert!(s.put(&Path::from("t/c/bloom.bin"), "x".into()).await.is_err());
        s.put(&Path::from("t/d/bloom.bin"), "x".into()).await.unwrap();
        assert_eq!(s.injected(), 2);
    }

    #[tokio::test]
    async fn every_call_fails_while_down_and_works_again_after_recovery() {
        let s = store();
        let p = Path::from("t/b/meta.json");
        s.put(&p, "x".into()).await.unwrap();
        s.set_down(true);
        assert!(s.put(&p, "y".into()).await.is_err());
        assert!(s.get(&p).await.is_err());
        assert!(s.head(&p).await.is_err());
        assert!(s.list(None).try_collect::<Vec<_>>().await.is_err());
        assert!(s.list_with_delimiter(None).await.is_err());
        assert!(s.copy(&p, &Path::from("c")).await.is_err());
        assert!(s.delete(&p).await.is_err());
        assert_eq!(s.injected(), 7);
        s.set_down(false);
        assert_eq!(s.get(&p).await.unwrap().bytes().await.unwrap(), "x", "outage kept the data");
        assert_eq!(s.list(None).try_collect::<Vec<_>>().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_outage_during_a_multipart_upload_fails_its_completion() {
        let s = store();
        let mut up = s.put_multipart(&Path::from("big")).await.unwrap();
        up.put_part("a".into()).await.unwrap();
        s.set_down(true);
        assert!(up.complete().await.is_err());
        s.set_down(false);
        assert!(s.head(&Path::from("big")).await.is_err(), "an incomplete upload is not stored");
    }
}
