//! The collector's integration tests, linked into one test binary: each binary links the whole
//! DataFusion/Arrow stack (~0.5 GB in a debug build), and CI disks are not endless.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod alert;
mod architecture;
mod cli;
#[cfg(feature = "demo")]
mod demo;
mod hostile_ingest;
mod hostile_sql;
mod hostile_queries;
mod hostile_profiles;
mod fuzz_corpus;
mod ingest;
mod native;
mod profiles;
mod promql;
mod recovery;
mod search;
mod storage;
mod traceql_metrics;
