//! PromQL over every replica's span metrics: a dry run over this replica's series tells which
//! time range the query reads; the peers send their series of the query's selectors in that
//! range (`/internal/v1/series`, each labelled with its `skein_node`); the query is then
//! evaluated over the union ([`Federated`]). Without peers the local series are read as they
//! are, without the label.

use std::sync::Arc;

use promql_parser::parser::{Expr, VectorSelector};
use serde::{Deserialize, Serialize};

use super::{blocking, collect_selectors};
use crate::api::AppState;
use crate::promql::federation::{Federated, NODE_LABEL, Recording};
use crate::promql::labels::Labels;
use crate::promql::value::Series;
use crate::promql::{PromqlError, Storage, selector_matches};

pub const SERIES_PATH: &str = "series";

/// What a replica asks its peers for.
#[derive(Debug, Serialize, Deserialize)]
pub struct SeriesRequest {
    /// Series selectors (PromQL text); empty: every series.
    pub selectors: Vec<String>,
    /// Milliseconds, inclusive.
    pub start: i64,
    pub end: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireSeries {
    pub labels: std::collections::BTreeMap<String, String>,
    /// (ms, value as Prometheus formats it: NaN and ±Inf survive JSON).
    pub points: Vec<(i64, String)>,
}

/// This replica's series of `selectors` in `[start, end]`, labelled with its node.
pub fn answer(
    storage: &dyn Storage,
    node: &str,
    req: &SeriesRequest,
) -> Result<Vec<WireSeries>, PromqlError> {
    let sel: Vec<VectorSelector> = req
        .selectors
        .iter()
        .map(|m| match crate::promql::parse(m)? {
            Expr::VectorSelector(vs) => Ok(vs),
            _ => Err(PromqlError::BadData(format!("{m:?} is not a series selector"))),
        })
        .collect::<Result<_, _>>()?;
    let matches = |l: &Labels| sel.is_empty() || sel.iter().any(|vs| selector_matches(vs, l));
    Ok(storage
        .select(&matches, req.start, req.end)?
        .into_iter()
        .map(|s| {
            let mut labels: std::collections::BTreeMap<String, String> =
                s.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            labels.insert(NODE_LABEL.to_string(), node.to_string());
            let points = s.points.iter().map(|(t, v)| (*t, v.to_string())).collect();
            WireSeries { labels, points }
        })
        .collect())
}

/// The storage `expr` is evaluated over: with peers, this replica's series and theirs.
/// `dry` evaluates the query over a storage (its result is thrown away; only the range it
/// read matters).
pub async fn storage(
    s: &AppState,
    local: Arc<dyn Storage>,
    tenant: &str,
    expr: &Expr,
    dry: impl FnOnce(&dyn Storage) + Send + 'static,
) -> Result<Arc<dyn Storage>, PromqlError> {
    let Some(cluster) = s.engine.cluster.as_ref().filter(|c| c.has_peers()) else {
        return Ok(local);
    };
    let recording = Arc::new(Recording::new(local.clone()));
    let r = recording.clone();
    blocking(move || {
        dry(r.as_ref());
        Ok(())
    })
    .await?;
    let Some((start, end)) = recording.range() else {
        return Ok(Arc::new(Federated {
            local,
            node: cluster.node.to_string(),
            remote: Vec::new(),
        }));
    };
    let mut sel = Vec::new();
    collect_selectors(expr, &mut sel);
    let selectors = sel.iter().map(|vs| vs.to_string()).collect();
    Ok(storage_in(s, local, tenant, selectors, start, end).await)
}

/// The storage for reads within `[start, end]` (ms) of series matching `selectors` (empty:
/// all): with peers, this replica's series and theirs.
pub async fn storage_in(
    s: &AppState,
    local: Arc<dyn Storage>,
    tenant: &str,
    selectors: Vec<String>,
    start: i64,
    end: i64,
) -> Arc<dyn Storage> {
    let Some(cluster) = s.engine.cluster.as_ref().filter(|c| c.has_peers()) else {
        return local;
    };
    let mut remote = Vec::new();
    let req = SeriesRequest { selectors, start, end };
    for reply in cluster.ask(SERIES_PATH, tenant, &req).await {
        match serde_json::from_slice::<Vec<WireSeries>>(&reply.body) {
            Ok(series) => remote.extend(series.into_iter().map(|w| {
                Series {
                    labels: Labels::new(w.labels),
                    points: w
                        .points
                        .into_iter()
                        .map(|(t, v)| (t, v.parse::<f64>().unwrap_or(f64::NAN)))
                        .collect(),
                }
            })),
            Err(e) => crate::partial::note(format!("peer {}: unreadable series: {e}", reply.node)),
        }
    }
    Arc::new(Federated { local, node: cluster.node.to_string(), remote })
}
