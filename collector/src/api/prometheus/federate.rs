//! PromQL over every replica's span metrics: a dry run over this replica's series tells which
//! time range the query reads; the peers send their series of the query's selectors in that
//! range (`cluster/series.rs`, each labelled with its `skein_node`); the query is then
//! evaluated over the union ([`Federated`]), with this replica's rule output read as it is.
//! Without peers the local series are read as they are, without the label.

use std::sync::Arc;

use promql_parser::parser::Expr;

use super::blocking;
use crate::api::AppState;
use crate::promql::federation::{Federated, Recording};
use crate::promql::{PromqlError, Storage, collect_selectors};

/// What this replica holds for PromQL: span metrics, and rule output where rules run.
#[derive(Clone)]
pub struct Local {
    pub series: Arc<dyn Storage>,
    pub rules: Option<Arc<dyn Storage>>,
}

/// The storage `expr` is evaluated over: with peers, this replica's series and theirs.
/// `dry` evaluates the query over a storage (its result is thrown away; only the range it
/// read matters).
pub async fn storage(
    s: &AppState,
    local: Local,
    tenant: &str,
    expr: &Expr,
    dry: impl FnOnce(&dyn Storage) + Send + 'static,
) -> Result<Arc<dyn Storage>, PromqlError> {
    if !has_peers(s) {
        return Ok(Arc::new(Federated::alone(local.series, local.rules)));
    }
    let recording = Arc::new(Recording::new(local.series.clone()));
    let r = recording.clone();
    blocking(move || {
        dry(r.as_ref());
        Ok(())
    })
    .await?;
    let Some((start, end)) = recording.range() else {
        return Ok(storage_in(s, local, tenant, Vec::new(), 0, -1).await);
    };
    let selectors = collect_selectors(expr).iter().map(|vs| vs.to_string()).collect();
    Ok(storage_in(s, local, tenant, selectors, start, end).await)
}

fn has_peers(s: &AppState) -> bool {
    s.engine.cluster.as_ref().is_some_and(|c| c.has_peers())
}

/// The storage for reads within `[start, end]` (ms) of series matching `selectors` (empty:
/// all): with peers, this replica's series and theirs (none asked for an empty range).
pub async fn storage_in(
    s: &AppState,
    local: Local,
    tenant: &str,
    selectors: Vec<String>,
    start: i64,
    end: i64,
) -> Arc<dyn Storage> {
    let Some(cluster) = s.engine.cluster.as_ref().filter(|c| c.has_peers()) else {
        return Arc::new(Federated::alone(local.series, local.rules));
    };
    let remote =
        if start <= end { cluster.series(tenant, selectors, start, end).await } else { Vec::new() };
    Arc::new(Federated {
        local: local.series,
        node: Some(cluster.node.to_string()),
        remote,
        rules: local.rules,
    })
}
