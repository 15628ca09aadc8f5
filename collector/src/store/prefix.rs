//! An object store seen under a key prefix (`s3://bucket/prefix`): every request path gets the
//! prefix, every path coming back loses it. `object_store`'s own `PrefixStore` (0.13) returns
//! the full key from `get_opts` and `head`, so DataFusion's listing saw objects outside its
//! table and read nothing back; this one strips the prefix from every `ObjectMeta`,
//! `ListResult` and `GetResult`.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// See the module documentation.
#[derive(Debug)]
pub struct PrefixedStore {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl PrefixedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: impl Into<Path>) -> PrefixedStore {
        PrefixedStore { inner, prefix: prefix.into() }
    }

    fn full(&self, location: &Path) -> Path {
        full(&self.prefix, location)
    }
}

fn full(prefix: &Path, location: &Path) -> Path {
    prefix.parts().chain(location.parts()).collect()
}

/// `path` without `prefix`. A key outside the prefix (which the inner store never returns for
/// a request under it) is returned unchanged rather than dropped, so nothing disappears silently.
fn strip(prefix: &Path, path: Path) -> Path {
    let stripped: Option<Path> = path.prefix_match(prefix).map(|rest| rest.collect());
    stripped.unwrap_or(path)
}

fn strip_meta(prefix: &Path, meta: ObjectMeta) -> ObjectMeta {
    ObjectMeta { location: strip(prefix, meta.location), ..meta }
}

impl fmt::Display for PrefixedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.inner, self.prefix)
    }
}

#[async_trait]
impl ObjectStore for PrefixedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(&self.full(location), payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(&self.full(location), opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let mut r = self.inner.get_opts(&self.full(location), options).await?;
        r.meta = strip_meta(&self.prefix, r.meta);
        Ok(r)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(&self.full(location), ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let (add, remove) = (self.prefix.clone(), self.prefix.clone());
        let full_paths = locations.map_ok(move |l| full(&add, &l)).boxed();
        self.inner.delete_stream(full_paths).map_ok(move |l| strip(&remove, l)).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let under = prefix.map_or_else(|| self.prefix.clone(), |p| self.full(p));
        let strip_from = self.prefix.clone();
        self.inner.list(Some(&under)).map_ok(move |m| strip_meta(&strip_from, m)).boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let under = prefix.map_or_else(|| self.prefix.clone(), |p| self.full(p));
        let strip_from = self.prefix.clone();
        self.inner
            .list_with_offset(Some(&under), &self.full(offset))
            .map_ok(move |m| strip_meta(&strip_from, m))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let under = prefix.map_or_else(|| self.prefix.clone(), |p| self.full(p));
        let r = self.inner.list_with_delimiter(Some(&under)).await?;
        Ok(ListResult {
            common_prefixes: r
                .common_prefixes
                .into_iter()
                .map(|p| strip(&self.prefix, p))
                .collect(),
            objects: r.objects.into_iter().map(|m| strip_meta(&self.prefix, m)).collect(),
        })
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(&self.full(from), &self.full(to), options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(&self.full(from), &self.full(to), options).await
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    /// The bucket and the prefixed view of it, with one object outside the prefix.
    async fn stores() -> (Arc<dyn ObjectStore>, PrefixedStore) {
        let bucket: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        bucket.put(&Path::from("other/t/x/meta.json"), "no".into()).await.unwrap();
        let view = PrefixedStore::new(bucket.clone(), "pre/fix");
        for f in ["t/a/meta.json", "t/a/spans.parquet", "t/b/meta.json", "u/c/meta.json"] {
            view.put(&Path::from(f), f.into()).await.unwrap();
        }
        (bucket, view)
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[tokio::test]
    async fn requests_are_stored_under_the_prefix() {
        let (bucket, view) = stores().await;
        let full = bucket.get(&Path::from("pre/fix/t/a/meta.json")).await.unwrap();
        assert_eq!(full.bytes().await.unwrap(), "t/a/meta.json");
        let mut up = view.put_multipart(&Path::from("t/a/big")).await.unwrap();
        up.put_part("big".into()).await.unwrap();
        up.complete().await.unwrap();
        assert!(bucket.head(&Path::from("pre/fix/t/a/big")).await.is_ok());
    }

    #[tokio::test]
    async fn get_and_head_return_keys_relative_to_the_prefix() {
        let (_, view) = stores().await;
        let p = Path::from("t/a/meta.json");
        let got = view.get(&p).await.unwrap();
        assert_eq!(got.meta.location, p);
        assert_eq!(got.bytes().await.unwrap(), "t/a/meta.json");
        assert_eq!(view.head(&p).await.unwrap().location, p);
        let ranged = view.get_opts(&p, GetOptions::new().with_range(Some(0..3))).await.unwrap();
        assert_eq!(ranged.meta.location, p);
        assert_eq!(view.get_range(&p, 0..3).await.unwrap(), "t/a");
        assert_eq!(view.get_ranges(&p, &[0..1, 2..3]).await.unwrap(), vec!["t", "a"]);
    }

    #[tokio::test]
    async fn listings_return_keys_relative_to_the_prefix_and_nothing_outside_it() {
        let (_, view) = stores().await;
        let all: Vec<String> =
            view.list(None).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
        assert_eq!(
            sorted(all),
            vec!["t/a/meta.json", "t/a/spans.parquet", "t/b/meta.json", "u/c/meta.json"]
        );
        let t: Vec<String> = view
            .list(Some(&Path::from("t")))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(sorted(t), vec!["t/a/meta.json", "t/a/spans.parquet", "t/b/meta.json"]);
        let after: Vec<String> = view
            .list_with_offset(Some(&Path::from("t")), &Path::from("t/a/spans.parquet"))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(after, vec!["t/b/meta.json"]);
        let top = view.list_with_delimiter(None).await.unwrap();
        assert!(top.objects.is_empty());
        assert_eq!(top.common_prefixes, vec![Path::from("t"), Path::from("u")]);
        let a = view.list_with_delimiter(Some(&Path::from("t/a"))).await.unwrap();
        let names: Vec<String> = a.objects.iter().map(|m| m.location.to_string()).collect();
        assert_eq!(sorted(names), vec!["t/a/meta.json", "t/a/spans.parquet"]);
    }

    #[tokio::test]
    async fn copy_rename_and_delete_work_on_relative_keys() {
        let (bucket, view) = stores().await;
        let (a, b, c) = (Path::from("t/a/meta.json"), Path::from("q/a/meta.json"), Path::from("r"));
        view.copy(&a, &b).await.unwrap();
        assert!(bucket.head(&Path::from("pre/fix/q/a/meta.json")).await.is_ok());
        view.rename(&b, &c).await.unwrap();
        assert!(view.head(&b).await.is_err());
        assert_eq!(view.head(&c).await.unwrap().location, c);
        let deleted: Vec<Path> = view
            .delete_stream(futures::stream::iter([Ok(a.clone()), Ok(c.clone())]).boxed())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(deleted, vec![a.clone(), c]);
        assert!(bucket.head(&Path::from("pre/fix/t/a/meta.json")).await.is_err());
        assert!(bucket.head(&Path::from("other/t/x/meta.json")).await.is_ok(), "outside kept");
    }
}
