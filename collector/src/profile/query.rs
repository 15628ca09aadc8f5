//! Queries over the head and the blocks: profile types, label names and values, time series and
//! merged call trees.
//!
//! A query takes an atomic view (the tenant's blocks that may match plus a head snapshot), then
//! runs on a blocking thread: the head's batches, then each block's `samples.parquet` fetched
//! whole and decoded 8k rows at a time, every matching row folded into a small aggregate (sums
//! per stack or per series bucket). Only the stacks the aggregate needs are then read back from
//! the head's tables and the blocks' `stacks.parquet`. Fetched files and aggregation state are
//! charged against `--query-memory-bytes`; a query that needs more fails with
//! [`ProfileError::ResourcesExhausted`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::ProfileError;
use super::block::{BlockMeta, SAMPLES_FILE, STACKS_FILE};
use super::head::Snapshot;
use super::schema::{BatchView, DERIVED_LABELS};
use super::selector::{self, Selector};
use super::service::{Profiles, blocking};
use super::stack::frames_from_batch;
use super::tree::Tree;

/// A merged flame graph request. Times are unix nanoseconds, inclusive.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct MergeRequest {
    pub profile_type: String,
    pub selector: String,
    /// Only samples labelled with one of these span ids (16 hex digits); `None` = all samples.
    pub span_ids: Option<Vec<String>>,
    /// Only stacks starting (at the root) with these frames.
    pub call_site: Vec<String>,
    pub start_ns: i64,
    pub end_ns: i64,
}

/// A time series request. Times are unix nanoseconds, inclusive.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SeriesRequest {
    pub profile_type: String,
    pub selector: String,
    pub start_ns: i64,
    pub end_ns: i64,
    pub group_by: Vec<String>,
    pub step_ns: i64,
    /// Average per profile within a step instead of the sum.
    pub average: bool,
    /// Keep the series with the largest totals.
    pub limit: Option<usize>,
}

/// One series: its group-by labels and (step end, unix ns; value) points in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Vec<(String, String)>,
    pub points: Vec<(i64, f64)>,
}

/// A stack's frames (root first) and its summed value.
pub type Stack = (Vec<String>, i64);

/// Per step end: (sum, distinct profile times when averaging).
type Buckets = BTreeMap<i64, (f64, HashSet<i64>)>;

/// One series' per-step parts as one replica has them: (step end, sum, profile times).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SeriesBuckets {
    pub labels: Vec<(String, String)>,
    pub buckets: Vec<(i64, f64, Vec<i64>)>,
}

/// Sums or averages per step, the `limit` largest series, sorted by labels.
fn finish_series(
    series: HashMap<Vec<(String, String)>, Buckets>,
    req: &SeriesRequest,
) -> Vec<Series> {
    let mut out: Vec<(f64, Series)> = series
        .into_iter()
        .map(|(labels, buckets)| {
            let points: Vec<(i64, f64)> = buckets
                .into_iter()
                .map(|(t, (sum, profiles))| {
                    let v = if req.average { sum / profiles.len().max(1) as f64 } else { sum };
                    (t, v)
                })
                .collect();
            let total = points.iter().map(|(_, v)| v).sum();
            (total, Series { labels, points })
        })
        .collect();
    if let Some(limit) = req.limit {
        out.sort_by(|a, b| b.0.total_cmp(&a.0));
        out.truncate(limit);
    }
    let mut out: Vec<Series> = out.into_iter().map(|(_, s)| s).collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    out
}

/// Memory a query holds, checked against `--query-memory-bytes`.
struct Budget {
    limit: usize,
    used: usize,
}

impl Budget {
    fn charge(&mut self, bytes: usize) -> Result<(), ProfileError> {
        self.used += bytes;
        if self.used > self.limit {
            return Err(ProfileError::ResourcesExhausted(format!(
                "the profile query needs more than {} bytes; narrow the time range or selector",
                self.limit
            )));
        }
        Ok(())
    }

    fn release(&mut self, bytes: usize) {
        self.used = self.used.saturating_sub(bytes);
    }
}

/// Which rows a query reads.
#[derive(Default)]
struct Filter {
    start: i64,
    end: i64,
    profile_type: Option<String>,
    /// Any of them (none: all rows).
    selectors: Vec<Selector>,
    span_ids: Option<HashSet<[u8; 8]>>,
}

impl Filter {
    /// Rows in the range that any of `matchers` selects (LabelNames, LabelValues).
    fn any_of(matchers: &[String], start: i64, end: i64) -> Result<Filter, ProfileError> {
        Ok(Filter { start, end, selectors: selector::parse_any(matchers)?, ..Default::default() })
    }

    fn block(&self, b: &BlockMeta) -> bool {
        b.overlaps(self.start, self.end)
            && self.profile_type.as_ref().is_none_or(|t| b.profile_types.contains(t))
            && (self.span_ids.is_none() || b.label_names.contains("span_id"))
    }

    fn row(&self, v: &BatchView<'_>, row: usize) -> bool {
        let t = v.time.value(row);
        if t < self.start || t > self.end {
            return false;
        }
        if self.profile_type.as_ref().is_some_and(|pt| v.profile_type(row) != pt) {
            return false;
        }
        if let Some(ids) = &self.span_ids {
            let hit = v
                .span_id(row)
                .and_then(|id| <[u8; 8]>::try_from(id).ok())
                .is_some_and(|id| ids.contains(&id));
            if !hit {
                return false;
            }
        }
        self.selectors.is_empty() || self.selectors.iter().any(|s| s.matches(|n| v.label(row, n)))
    }
}

fn span_ids(ids: &[String]) -> Result<HashSet<[u8; 8]>, ProfileError> {
    ids.iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            let mut id = [0u8; 8];
            hex::decode_to_slice(s, &mut id).map_err(|_| {
                ProfileError::BadRequest(format!("invalid span id {s:?}: expected 16 hex digits"))
            })?;
            Ok(id)
        })
        .collect()
}

/// A consistent view of one tenant: blocks that may match, and the head.
struct View {
    blocks: Vec<Arc<BlockMeta>>,
    head: Snapshot,
}

impl View {
    fn head_overlaps(&self, start: i64, end: i64) -> bool {
        self.head.min_time <= end && self.head.max_time >= start
    }
}

impl Profiles {
    fn view(&self, tenant: &str, filter: &Filter) -> Result<View, ProfileError> {
        self.store.catalog().view(tenant, |blocks| {
            Ok(View {
                blocks: blocks.iter().filter(|b| filter.block(b)).cloned().collect(),
                head: self.head.snapshot(tenant)?,
            })
        })
    }

    fn budget(&self) -> Budget {
        Budget { limit: self.cfg.query_memory_bytes, used: 0 }
    }

    /// Calls `f` with every row `filter` keeps: head first, then block by block. Must run on a
    /// blocking thread (it waits for block downloads). Returns the indexes of the blocks that
    /// had matching rows.
    fn scan(
        &self,
        view: &View,
        filter: &Filter,
        budget: &mut Budget,
        mut f: impl FnMut(&BatchView<'_>, usize, &mut Budget) -> Result<(), ProfileError>,
    ) -> Result<Vec<usize>, ProfileError> {
        let mut visit = |batch: &arrow::array::RecordBatch, budget: &mut Budget| {
            let v = BatchView::new(batch)?;
            let mut hit = false;
            for row in 0..v.len() {
                if filter.row(&v, row) {
                    hit = true;
                    f(&v, row, budget)?;
                }
            }
            Ok::<bool, ProfileError>(hit)
        };
        for b in &view.head.batches {
            visit(b, budget)?;
        }
        let rt = tokio::runtime::Handle::current();
        let mut hits = Vec::new();
        for (i, meta) in view.blocks.iter().enumerate() {
            let file = rt.block_on(self.store.get(&meta.file(SAMPLES_FILE)))?;
            let held = file.len();
            budget.charge(held)?;
            let mut hit = false;
            for batch in super::block::read(file)? {
                hit |= visit(&batch?, budget)?;
            }
            budget.release(held);
            if hit {
                hits.push(i);
            }
        }
        Ok(hits)
    }

    /// The distinct strings `each` yields for the rows `filter` keeps.
    async fn distinct(
        self: &Arc<Self>,
        view: View,
        filter: Filter,
        each: impl Fn(&BatchView<'_>, usize, &mut dyn FnMut(&str)) + Send + 'static,
    ) -> Result<BTreeSet<String>, ProfileError> {
        let this = self.clone();
        blocking(move || {
            let mut out: BTreeSet<String> = BTreeSet::new();
            let mut budget = this.budget();
            this.scan(&view, &filter, &mut budget, |v, row, budget| {
                let mut err = Ok(());
                each(v, row, &mut |s| {
                    if err.is_ok() && !out.contains(s) {
                        err = budget.charge(s.len() + 32);
                        out.insert(s.to_string());
                    }
                });
                err
            })?;
            Ok(out)
        })
        .await
    }

    /// Profile types with data in the range.
    pub async fn profile_types_local(
        &self,
        tenant: &str,
        start_ns: i64,
        end_ns: i64,
    ) -> Result<Vec<String>, ProfileError> {
        let filter = Filter { start: start_ns, end: end_ns, ..Default::default() };
        let view = self.view(tenant, &filter)?;
        let mut out: BTreeSet<String> = BTreeSet::new();
        if view.head_overlaps(start_ns, end_ns) {
            out.extend(view.head.profile_types.iter().cloned());
        }
        for b in &view.blocks {
            out.extend(b.profile_types.iter().cloned());
        }
        Ok(out.into_iter().collect())
    }

    /// Label names of the rows any of `matchers` selects (all rows when none), including the
    /// ones derived from the profile type (`__name__`, ...), sorted.
    pub async fn label_names_local(
        self: &Arc<Self>,
        tenant: &str,
        matchers: &[String],
        start_ns: i64,
        end_ns: i64,
    ) -> Result<Vec<String>, ProfileError> {
        let filter = Filter::any_of(matchers, start_ns, end_ns)?;
        let view = self.view(tenant, &filter)?;
        if filter.selectors.is_empty() {
            // Every block and the head know their label names: no data needs reading.
            let mut names: BTreeSet<String> = BTreeSet::new();
            if view.head_overlaps(start_ns, end_ns) {
                names.extend(view.head.label_names.iter().cloned());
            }
            for b in &view.blocks {
                names.extend(b.label_names.iter().cloned());
            }
            if !names.is_empty() {
                names.extend(DERIVED_LABELS.iter().map(|s| s.to_string()));
            }
            return Ok(names.into_iter().collect());
        }
        let mut names = self.distinct(view, filter, |v, row, out| v.label_names(row, out)).await?;
        if !names.is_empty() {
            names.extend(DERIVED_LABELS.iter().map(|s| s.to_string()));
        }
        Ok(names.into_iter().collect())
    }

    /// Distinct non-empty values of label `name` in the rows `matchers` selects, sorted.
    pub async fn label_values_local(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        matchers: &[String],
        start_ns: i64,
        end_ns: i64,
    ) -> Result<Vec<String>, ProfileError> {
        let filter = Filter::any_of(matchers, start_ns, end_ns)?;
        let view = self.view(tenant, &filter)?;
        let name = name.to_string();
        let values = self
            .distinct(view, filter, move |v, row, out| {
                if let Some(val) = v.label(row, &name).filter(|s| !s.is_empty()) {
                    out(&val);
                }
            })
            .await?;
        Ok(values.into_iter().collect())
    }

    /// Sums (or averages per profile) of sample values per step, one series per distinct
    /// combination of the `group_by` labels. A point at `t` covers samples in `(t - step, t]`.
    pub async fn select_series(
        self: &Arc<Self>,
        tenant: &str,
        req: SeriesRequest,
    ) -> Result<Vec<Series>, ProfileError> {
        let peers = self.ask_peers::<_, Vec<SeriesBuckets>>(super::federate::SERIES, tenant, &req);
        let (local, remote) = futures::join!(self.series_buckets(tenant, req.clone()), peers);
        let mut series: HashMap<Vec<(String, String)>, Buckets> = HashMap::new();
        for part in local?.into_iter().chain(remote.into_iter().flatten()) {
            let buckets = series.entry(part.labels).or_default();
            for (t, sum, times) in part.buckets {
                let b = buckets.entry(t).or_default();
                b.0 += sum;
                b.1.extend(times);
            }
        }
        Ok(finish_series(series, &req))
    }

    /// This replica's per-step sums (and profile times) of each series `req` selects.
    pub async fn series_buckets(
        self: &Arc<Self>,
        tenant: &str,
        req: SeriesRequest,
    ) -> Result<Vec<SeriesBuckets>, ProfileError> {
        super::model::ProfileType::parse(&req.profile_type)?;
        let filter = Filter {
            start: req.start_ns,
            end: req.end_ns,
            profile_type: Some(req.profile_type.clone()),
            selectors: vec![selector::parse(&req.selector)?],
            ..Default::default()
        };
        let view = self.view(tenant, &filter)?;
        let this = self.clone();
        blocking(move || {
            let step = req.step_ns.max(1_000_000);
            let mut series: HashMap<Vec<(String, String)>, Buckets> = HashMap::new();
            let mut budget = this.budget();
            this.scan(&view, &filter, &mut budget, |v, row, budget| {
                let key: Vec<(String, String)> = req
                    .group_by
                    .iter()
                    .filter_map(|n| {
                        let val = v.label(row, n).filter(|s| !s.is_empty())?;
                        Some((n.clone(), val.into_owned()))
                    })
                    .collect();
                let t = v.time.value(row);
                let bucket = req.start_ns.saturating_add(
                    (t.saturating_sub(req.start_ns)).saturating_add(step - 1).div_euclid(step)
                        * step,
                );
                if !series.contains_key(&key) {
                    budget.charge(
                        96 + key.iter().map(|(a, b)| a.len() + b.len() + 48).sum::<usize>(),
                    )?;
                }
                let buckets = series.entry(key).or_default();
                if !buckets.contains_key(&bucket) {
                    budget.charge(80)?;
                }
                let b = buckets.entry(bucket).or_default();
                b.0 += v.value.value(row) as f64;
                if req.average && b.1.insert(t) {
                    budget.charge(16)?;
                }
                Ok(())
            })?;
            Ok(series
                .into_iter()
                .map(|(labels, buckets)| SeriesBuckets {
                    labels,
                    buckets: buckets
                        .into_iter()
                        .map(|(t, (sum, times))| (t, sum, times.into_iter().collect()))
                        .collect(),
                })
                .collect())
        })
        .await
    }

    /// The merged call tree of the samples `req` selects (every replica's).
    pub async fn merge(
        self: &Arc<Self>,
        tenant: &str,
        req: MergeRequest,
    ) -> Result<Tree, ProfileError> {
        let mut sums: HashMap<Vec<String>, i64> = HashMap::new();
        let peers = self.ask_peers::<_, Vec<Stack>>(super::federate::STACKS, tenant, &req);
        let (local, remote) = futures::join!(self.merged_stacks(tenant, req.clone()), peers);
        for (frames, v) in local?.into_iter().chain(remote.into_iter().flatten()) {
            let s = sums.entry(frames).or_default();
            *s = s.saturating_add(v);
        }
        Ok(Tree::from_stacks(sums.iter().map(|(f, v)| (f.as_slice(), *v))))
    }

    /// This replica's stacks (frames, root first) and their summed values among the samples
    /// `req` selects.
    pub async fn merged_stacks(
        self: &Arc<Self>,
        tenant: &str,
        req: MergeRequest,
    ) -> Result<Vec<Stack>, ProfileError> {
        super::model::ProfileType::parse(&req.profile_type)?;
        let filter = Filter {
            start: req.start_ns,
            end: req.end_ns,
            profile_type: Some(req.profile_type.clone()),
            selectors: vec![selector::parse(&req.selector)?],
            span_ids: req.span_ids.as_deref().map(span_ids).transpose()?,
        };
        if filter.span_ids.as_ref().is_some_and(|s| s.is_empty()) {
            return Ok(Vec::new());
        }
        let view = self.view(tenant, &filter)?;
        let this = self.clone();
        blocking(move || {
            let mut budget = this.budget();
            let mut sums: HashMap<u64, i64> = HashMap::new();
            let hits = this.scan(&view, &filter, &mut budget, |v, row, budget| {
                let id = v.stack_id.value(row);
                match sums.get_mut(&id) {
                    Some(s) => *s = s.saturating_add(v.value.value(row)),
                    None => {
                        budget.charge(48)?;
                        sums.insert(id, v.value.value(row));
                    }
                }
                Ok(())
            })?;
            let frames = this.resolve(&view, &hits, &sums, &mut budget)?;
            let call_site = &req.call_site;
            let mut frames = frames;
            let stacks = sums.iter().filter_map(|(id, v)| {
                let f = frames.remove(id)?;
                let keep =
                    f.len() >= call_site.len() && f.iter().zip(call_site).all(|(a, b)| a == b);
                keep.then_some((f, *v))
            });
            Ok(stacks.collect())
        })
        .await
    }

    /// Frames of the stacks in `sums`: from the head's tables, then from the stack files of
    /// the blocks that had matching rows.
    fn resolve(
        &self,
        view: &View,
        hits: &[usize],
        sums: &HashMap<u64, i64>,
        budget: &mut Budget,
    ) -> Result<HashMap<u64, Vec<String>>, ProfileError> {
        let mut frames: HashMap<u64, Vec<String>> = HashMap::with_capacity(sums.len());
        let charge = |f: &[String], budget: &mut Budget| {
            budget.charge(48 + f.iter().map(|s| s.len() + 24).sum::<usize>())
        };
        for table in &view.head.stacks {
            let t = table.read();
            for id in sums.keys() {
                if !frames.contains_key(id)
                    && let Some(f) = t.frames(*id)
                {
                    charge(&f, budget)?;
                    frames.insert(*id, f);
                }
            }
        }
        let rt = tokio::runtime::Handle::current();
        for i in hits {
            if frames.len() == sums.len() {
                break;
            }
            let Some(meta) = view.blocks.get(*i) else { continue };
            let file = rt.block_on(self.store.get(&meta.file(STACKS_FILE)))?;
            let held = file.len();
            budget.charge(held)?;
            for batch in super::block::read(file)? {
                let mut found = HashMap::new();
                frames_from_batch(
                    &batch?,
                    &mut |id| sums.contains_key(&id) && !frames.contains_key(&id),
                    &mut found,
                )?;
                for f in found.values() {
                    charge(f, budget)?;
                }
                frames.extend(found);
            }
            budget.release(held);
        }
        if frames.len() < sums.len() {
            // A block compacted or expired away during the query; its samples are dropped
            // rather than shown under a wrong name.
            tracing::warn!(missing = sums.len() - frames.len(), "profile stacks not found");
        }
        Ok(frames)
    }

    /// Merged call tree of `profile_type` samples selected by `selector` (a label selector,
    /// `""` for all) and, when given, by span ids (16 hex digits each), between `start_ns` and
    /// `end_ns` inclusive. See the module docs.
    pub async fn merge_stacktraces(
        self: &Arc<Self>,
        tenant: &str,
        profile_type: &str,
        selector: &str,
        span_ids: Option<&[String]>,
        start_ns: i64,
        end_ns: i64,
    ) -> Result<Tree, ProfileError> {
        let req = MergeRequest {
            profile_type: profile_type.to_string(),
            selector: selector.to_string(),
            span_ids: span_ids.map(|s| s.to_vec()),
            call_site: Vec::new(),
            start_ns,
            end_ns,
        };
        self.merge(tenant, req).await
    }
}
