//! The collector's integration tests, linked into one test binary: each binary links the whole
//! DataFusion/Arrow stack (~0.5 GB in a debug build), and CI disks are not endless.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod alert;
mod alert_tenants;
mod architecture;
mod cli;
#[cfg(feature = "demo")]
mod demo;
mod fuzz_corpus;
mod hostile_ingest;
mod hostile_profiles;
mod hostile_queries;
mod hostile_sql;
mod ingest;
mod native;
mod profiles;
mod promql;
mod recovery;
mod replicas;
mod search;
mod storage;
mod tenancy;
mod traceql_metrics;
