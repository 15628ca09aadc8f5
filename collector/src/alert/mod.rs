//! Alerting and recording rules in Prometheus' rule-file format, evaluated inside skein over
//! each tenant's span metrics: `layout` says which rule files are whose, `rules` parses and
//! validates files, `eval` runs groups on their intervals,
//! `state` is the pending → firing → resolved machine, `template` expands labels and
//! annotations, `exemplars` adds slow trace ids and flamegraph links to latency alerts,
//! `notify` sends to Alertmanager and webhooks, `recorded` keeps rule output queryable, `api`
//! renders `/api/v1/rules` and `/api/v1/alerts`, `cli` is `skein rules check`.
//! Design notes: DESIGN.md beside this file.

pub mod api;
pub mod cli;
pub mod error;
pub mod eval;
pub mod exemplars;
pub mod layout;
pub mod notify;
pub mod recorded;
pub mod rules;
pub mod state;
pub mod template;

pub use error::AlertError;
pub use eval::{Alerting, AlertingConfig};
