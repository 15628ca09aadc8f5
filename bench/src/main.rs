//! `skein-bench`: reproducible benchmarks (ingest, query, RED panels).
//!
//! Each benchmark starts the processes it measures itself (a `skein serve` on free ports with a
//! scratch data dir, and for ingest the rotel peer when it is installed), drives them from this
//! process, prints a table `metric | skein | peer | ratio | goal` and can write the same results
//! as JSON (`--json FILE`). The `skein` under test is the one built beside this executable
//! (`cargo build --release --bin skein`), or `SKEIN_BIN`.

mod clickhouse;
mod dataset;
mod ingest;
mod procs;
mod query;
mod red;
mod report;
mod rpc;
mod scale;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The load generator allocates as the collector does (many small protobuf messages), with the
// allocator `skein` uses, as when both were one executable.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Parser)]
#[command(name = "skein-bench", version, about = "skein-bench: reproducible benchmarks of skein")]
struct Cli {
    #[command(subcommand)]
    which: Which,
}

#[derive(Debug, Subcommand)]
enum Which {
    /// Durable OTLP/gRPC ingest throughput, latency and collector RSS, against rotel.
    Ingest(ingest::IngestArgs),
    /// Bytes per span on disk, trace-by-id and TraceQL search latency over a loaded data set.
    Query(query::QueryArgs),
    /// RED panel `query_range` latency over an hour of demo-shaped span metrics, against
    /// Prometheus holding the same samples.
    Red(red::RedArgs),
    /// TraceQL search over one data set with 1, 2 and 3 replicas sharing the work: CPU per
    /// replica, the cost of splitting, latency.
    Scale(scale::ScaleArgs),
}

async fn run(which: Which) -> Result<(), BenchError> {
    match which {
        Which::Ingest(a) => ingest::run(a).await,
        Which::Query(a) => query::run(a).await,
        Which::Red(a) => red::run(a).await,
        Which::Scale(a) => scale::run(a).await,
    }
}

/// Parses a duration flag like `20s` or `1m30s`.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// Logs of the collector library code the benchmarks run in-process (span metrics for `red`).
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SKEIN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Failed(format!("cannot start runtime: {e}")))
        .and_then(|rt| rt.block_on(run(cli.which)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(BenchError::Usage(m)) => {
            eprintln!("skein-bench: {m}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("skein-bench: {e}");
            ExitCode::from(1)
        }
    }
}
