//! `skein bench`: reproducible benchmarks (ingest, query).
//!
//! Each benchmark starts the processes it measures itself (a `skein serve` from this very
//! executable on free ports with a scratch data dir, and for ingest the rotel peer when it is
//! installed), drives them from this process, prints a table `metric | skein | peer | ratio |
//! goal` and can write the same results as JSON (`--json FILE`).

pub mod dataset;
pub mod ingest;
pub mod procs;
pub mod query;
pub mod red;
pub mod report;
pub mod rpc;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: Which,
}

#[derive(Debug, clap::Subcommand)]
pub enum Which {
    /// Durable OTLP/gRPC ingest throughput, latency and collector RSS, against rotel.
    Ingest(ingest::IngestArgs),
    /// Bytes per span on disk, trace-by-id and TraceQL search latency over a loaded data set.
    Query(query::QueryArgs),
    /// RED panel `query_range` latency over an hour of demo-shaped span metrics, against
    /// Prometheus holding the same samples.
    Red(red::RedArgs),
}

pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    match args.which {
        Which::Ingest(a) => ingest::run(a).await,
        Which::Query(a) => query::run(a).await,
        Which::Red(a) => red::run(a).await,
    }
}

/// Parses a duration flag like `20s` or `1m30s`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}
