//! Counts failed object-store calls by operation (`skein_storage_failures_total{op}`), for every
//! store `open_object_store` returns: an operator sees an S3 outage or a full disk under the
//! block directory in `/metrics` without reading logs.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};
use prometheus::IntCounterVec;

/// See the module documentation.
pub struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
    failures: IntCounterVec,
}

impl MeteredStore {
    /// `failures` is labelled by `op`: `put`, `get`, `list`, `delete` or `copy`.
    pub fn new(inner: Arc<dyn ObjectStore>, failures: IntCounterVec) -> MeteredStore {
        MeteredStore { inner, failures }
    }
}

/// `r`, counting it in `failures{op}` if it is an error. A missing object is an answer, not a
/// failure of the store (the start-up scan and deletes of half-written blocks expect them).
fn count<T>(failures: &IntCounterVec, op: &str, r: Result<T>) -> Result<T> {
    if let Err(e) = &r
        && !matches!(e, object_store::Error::NotFound { .. })
    {
        failures.with_label_values(&[op]).inc();
    }
    r
}

impl fmt::Debug for MeteredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeteredStore").field("inner", &self.inner).finish()
    }
}

impl fmt::Display for MeteredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        count(&self.failures, "put", self.inner.put_opts(location, payload, opts).await)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let inner =
            count(&self.failures, "put", self.inner.put_multipart_opts(location, opts).await)?;
        Ok(Box::new(MeteredUpload { inner, failures: self.failures.clone() }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        count(&self.failures, "get", self.inner.get_opts(location, options).await)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        count(&self.failures, "get", self.inner.get_ranges(location, ranges).await)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let failures = self.failures.clone();
        self.inner.delete_stream(locations).map(move |r| count(&failures, "delete", r)).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let failures = self.failures.clone();
        self.inner.list(prefix).map(move |r| count(&failures, "list", r)).boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let failures = self.failures.clone();
        self.inner
            .list_with_offset(prefix, offset)
            .map(move |r| count(&failures, "list", r))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        count(&self.failures, "list", self.inner.list_with_delimiter(prefix).await)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        count(&self.failures, "copy", self.inner.copy_opts(from, to, options).await)
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        count(&self.failures, "copy", self.inner.rename_opts(from, to, options).await)
    }
}

/// A multipart upload counting its failed parts and completion as failed puts.
struct MeteredUpload {
    inner: Box<dyn MultipartUpload>,
    failures: IntCounterVec,
}

impl fmt::Debug for MeteredUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait]
impl MultipartUpload for MeteredUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let failures = self.failures.clone();
        self.inner.put_part(data).map(move |r| count(&failures, "put", r)).boxed()
    }

    async fn complete(&mut self) -> Result<PutResult> {
        count(&self.failures, "put", self.inner.complete().await)
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
    use crate::store::faults::FaultyStore;

    #[tokio::test]
    async fn failed_calls_are_counted_by_operation_and_missing_objects_are_not() {
        let faulty = FaultyStore::new(Arc::new(InMemory::new()));
        let failures = crate::telemetry::Telemetry::new().storage_failures;
        let s = MeteredStore::new(faulty.clone(), failures.clone());
        let n = |op: &str| failures.with_label_values(&[op]).get();
        let p = Path::from("t/b/meta.json");
        s.put(&p, "x".into()).await.unwrap();
        assert!(s.get(&Path::from("missing")).await.is_err());
        assert_eq!(n("get"), 0, "not found is an answer");

        faulty.fail_next_puts(1);
        assert!(s.put(&p, "y".into()).await.is_err());
        assert_eq!(n("put"), 1);
        faulty.set_down(true);
        assert!(s.get(&p).await.is_err());
        assert!(s.list(None).try_collect::<Vec<_>>().await.is_err());
        assert!(s.list_with_delimiter(None).await.is_err());
        assert!(s.delete(&p).await.is_err());
        assert!(s.copy(&p, &Path::from("c")).await.is_err());
        assert!(s.rename(&p, &Path::from("c")).await.is_err());
        assert_eq!([n("put"), n("get"), n("list"), n("delete"), n("copy")], [1, 1, 2, 1, 2]);
        faulty.set_down(false);
        s.get(&p).await.unwrap();
        assert_eq!(n("get"), 1);
    }
}
