//! Profile queries over every replica: each replica stores the profiles pushed to it in its
//! own namespace, so a query asks every peer for its part of the answer (`/internal/v1/profiles/…`,
//! computed over its head and its own blocks only) and merges: label names, values and profile
//! types are united, stacks and series buckets added up. A peer that does not answer makes the
//! answer partial (`crate::partial`). See `cluster/DESIGN.md`.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::ProfileError;
use super::service::Profiles;
use crate::cluster::Cluster;

/// Internal endpoints (under `/internal/v1/`).
pub const TYPES: &str = "profiles/types";
pub const LABEL_NAMES: &str = "profiles/label-names";
pub const LABEL_VALUES: &str = "profiles/label-values";
pub const STACKS: &str = "profiles/stacks";
pub const SERIES: &str = "profiles/series";

/// A label or profile-type question, as a peer is asked it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LabelsRequest {
    /// The label whose values are asked for (label-values only).
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub matchers: Vec<String>,
    pub start_ns: i64,
    pub end_ns: i64,
}

impl Profiles {
    /// Makes queries also answer for the replicas of `cluster`.
    pub fn set_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// Every peer's answer to `path` (nothing without peers); a peer that fails or answers
    /// garbage is noted as missing.
    pub(crate) async fn ask_peers<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        tenant: &str,
        req: &Req,
    ) -> Vec<Resp> {
        let Some(cluster) = self.cluster.get().filter(|c| c.has_peers()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for reply in cluster.ask(path, tenant, req).await {
            match serde_json::from_slice(&reply.body) {
                Ok(r) => out.push(r),
                Err(e) => {
                    crate::partial::note(format!("peer {}: unreadable answer: {e}", reply.node))
                }
            }
        }
        out
    }

    /// Profile types with data in the range, on any replica.
    pub async fn profile_types(
        &self,
        tenant: &str,
        start_ns: i64,
        end_ns: i64,
    ) -> Result<Vec<String>, ProfileError> {
        let req = LabelsRequest { start_ns, end_ns, ..Default::default() };
        let peers = self.ask_peers::<_, Vec<String>>(TYPES, tenant, &req);
        let (local, remote) =
            futures::join!(self.profile_types_local(tenant, start_ns, end_ns), peers);
        Ok(union(local?, remote))
    }

    /// Label names of the rows any of `matchers` selects, on any replica.
    pub async fn label_names(
        self: &Arc<Self>,
        tenant: &str,
        matchers: &[String],
        start_ns: i64,
        end_ns: i64,
    ) -> Result<Vec<String>, ProfileError> {
        let req =
            LabelsRequest { matchers: matchers.to_vec(), start_ns, end_ns, ..Default::default() };
        let peers = self.ask_peers::<_, Vec<String>>(LABEL_NAMES, tenant, &req);
        let local = self.label_names_local(tenant, matchers, start_ns, end_ns);
        let (local, remote) = futures::join!(local, peers);
        Ok(union(local?, remote))
    }

    /// Distinct values of label `name` in the rows `matchers` selects, on any replica.
    pub async fn label_values(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        matchers: &[String],
        start_ns: i64,
        end_ns: i64,
    ) -> Result<Vec<String>, ProfileError> {
        let req =
            LabelsRequest { name: name.to_string(), matchers: matchers.to_vec(), start_ns, end_ns };
        let peers = self.ask_peers::<_, Vec<String>>(LABEL_VALUES, tenant, &req);
        let local = self.label_values_local(tenant, name, matchers, start_ns, end_ns);
        let (local, remote) = futures::join!(local, peers);
        Ok(union(local?, remote))
    }
}

fn union(local: Vec<String>, remote: Vec<Vec<String>>) -> Vec<String> {
    let all: BTreeSet<String> = local.into_iter().chain(remote.into_iter().flatten()).collect();
    all.into_iter().collect()
}
