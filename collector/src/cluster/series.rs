//! Span-metric series across replicas: what a replica answers a peer
//! (`/internal/v1/series`: its series of some selectors in a time range, each labelled with its
//! `skein_node`) and what it asks its peers for, for PromQL over every replica's series (the
//! Prometheus API and the rule evaluator both use it).

use std::collections::BTreeMap;

use promql_parser::parser::{Expr, VectorSelector};
use serde::{Deserialize, Serialize};

use super::Cluster;
use crate::promql::federation::NODE_LABEL;
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
    pub labels: BTreeMap<String, String>,
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
            let mut labels: BTreeMap<String, String> =
                s.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            labels.insert(NODE_LABEL.to_string(), node.to_string());
            let points = s.points.iter().map(|(t, v)| (*t, v.to_string())).collect();
            WireSeries { labels, points }
        })
        .collect())
}

impl Cluster {
    /// The peers' series of `selectors` (empty: all) in `[start, end]` (ms) of `tenant`; a
    /// peer that does not answer is left out (and noted as partial).
    pub async fn series(
        &self,
        tenant: &str,
        selectors: Vec<String>,
        start: i64,
        end: i64,
    ) -> Vec<Series> {
        let mut remote = Vec::new();
        let req = SeriesRequest { selectors, start, end };
        for reply in self.ask(SERIES_PATH, tenant, &req).await {
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
                Err(e) => {
                    crate::partial::note(format!("peer {}: unreadable series: {e}", reply.node))
                }
            }
        }
        remote
    }
}
