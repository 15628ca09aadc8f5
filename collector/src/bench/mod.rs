//! `skein bench`: reproducible benchmarks (ingest, query).

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which benchmark: ingest or query.
    pub which: String,
}

pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    Err(BenchError::Usage(format!("unknown benchmark {:?} (ingest, query)", args.which)))
}
