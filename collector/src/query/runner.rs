//! Where and for how long a query runs: on a runtime of its own (so a query flood cannot take
//! the threads that acknowledge OTLP exports and commit the WAL), at most `max_concurrent` at
//! a time (later ones wait briefly, then are refused), and for at most `timeout` (then the
//! query's task is aborted, which drops its DataFusion streams and so stops the work).
//!
//! See `query/DESIGN.md` ("Query isolation").

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::Semaphore;

use super::QueryError;
use crate::telemetry::Telemetry;

/// How long a query waits for a free slot before it is refused with 429.
pub const QUEUE_WAIT: Duration = Duration::from_secs(1);
/// Stack of a query thread: planning and evaluating deeply nested expressions recurses
/// (DataFusion is built without its stack-growing recursion protection).
const QUERY_STACK_BYTES: usize = 16 << 20;

/// The limits every query runs under.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Memory all running queries may hold together (DataFusion's pool).
    pub memory_bytes: usize,
    /// Wall-clock time one query may take.
    pub timeout: Duration,
    /// Queries running at once; more wait up to [`QUEUE_WAIT`], then get 429.
    pub max_concurrent: usize,
    /// Trace ids one search may collect across its spansets before it is refused (422).
    pub max_search_trace_ids: usize,
    /// Worker threads of the query runtime.
    pub threads: usize,
    /// Series and samples one PromQL / TraceQL-metrics answer may hold.
    pub answer: crate::promql::answer_limits::AnswerLimits,
}

impl QueryLimits {
    /// Defaults a single node survives: 60 s, 2 × cores (at least 4) at once, 100k trace ids.
    pub fn with_memory(memory_bytes: usize) -> QueryLimits {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        QueryLimits {
            memory_bytes,
            timeout: Duration::from_secs(60),
            max_concurrent: cores.saturating_mul(2).max(4),
            max_search_trace_ids: 100_000,
            threads: cores.max(2),
            answer: crate::promql::answer_limits::AnswerLimits::default(),
        }
    }
}

/// The query runtime, shut down without blocking when dropped (it may be dropped from inside
/// another runtime, where a blocking shutdown panics).
struct Pool(Option<tokio::runtime::Runtime>);

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct QueryRunner {
    limits: QueryLimits,
    slots: Arc<Semaphore>,
    /// Built on first use: engines that only answer in-process calls never start threads.
    pool: OnceLock<Result<Pool, String>>,
    metrics: Arc<Telemetry>,
}

impl QueryRunner {
    pub fn new(limits: QueryLimits, metrics: Arc<Telemetry>) -> QueryRunner {
        let slots = Arc::new(Semaphore::new(limits.max_concurrent.max(1)));
        QueryRunner { limits, slots, pool: OnceLock::new(), metrics }
    }

    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// Queries holding a slot now.
    pub fn running(&self) -> usize {
        self.limits.max_concurrent.max(1).saturating_sub(self.slots.available_permits())
    }

    /// Counts a refusal of `reason` on `/metrics`.
    pub fn refused(&self, reason: &str) {
        self.metrics.queries_refused.with_label_values(&[reason]).inc();
    }

    fn handle(&self) -> Result<tokio::runtime::Handle, QueryError> {
        let threads = self.limits.threads.max(1);
        let pool = self.pool.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("skein-query")
                .thread_stack_size(QUERY_STACK_BYTES)
                .enable_all()
                .build()
                .map(|rt| Pool(Some(rt)))
                .map_err(|e| e.to_string())
        });
        match pool {
            Ok(Pool(Some(rt))) => Ok(rt.handle().clone()),
            Ok(Pool(None)) => Err(QueryError::Internal("the query runtime is shut down".into())),
            Err(e) => Err(QueryError::Internal(format!("cannot start the query runtime: {e}"))),
        }
    }

    /// Runs `work` on the query runtime under the concurrency limit and the timeout.
    pub async fn run<F>(&self, work: F) -> Result<F::Output, QueryError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let permit = match tokio::time::timeout(QUEUE_WAIT, self.slots.clone().acquire_owned())
            .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(QueryError::Internal("the query slots are closed".into())),
            Err(_) => {
                self.refused("concurrency");
                return Err(QueryError::Busy(format!(
                    "{} queries are running already (--max-concurrent-queries); retry later",
                    self.limits.max_concurrent
                )));
            }
        };
        let deadline = std::time::Instant::now().checked_add(self.limits.timeout);
        let notes = crate::partial::current().unwrap_or_default();
        let work = crate::partial::scope(notes, async move {
            let out = work.await;
            drop(permit);
            out
        });
        let task = match deadline {
            Some(d) => self.handle()?.spawn(crate::deadline::scope(d, work).boxed()),
            None => self.handle()?.spawn(work.boxed()),
        };
        // Also when the client goes away and this future is dropped.
        let _abort = AbortOnDrop(task.abort_handle());
        match tokio::time::timeout(self.limits.timeout, task).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) if e.is_panic() => Err(QueryError::Internal("the query panicked".into())),
            Ok(Err(_)) => Err(QueryError::Internal("the query was cancelled".into())),
            Err(_) => {
                // `_abort` drops the query's future, with its plans and streams: the work stops.
                self.refused("timeout");
                Err(QueryError::Timeout(format!(
                    "the query ran longer than {:?} (--query-timeout) and was stopped",
                    self.limits.timeout
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(max_concurrent: usize, timeout: Duration) -> QueryRunner {
        let limits = QueryLimits {
            timeout,
            max_concurrent,
            threads: 1,
            ..QueryLimits::with_memory(1 << 20)
        };
        QueryRunner::new(limits, Arc::new(Telemetry::new()))
    }

    #[tokio::test]
    async fn work_runs_on_the_query_threads() {
        let r = runner(4, Duration::from_secs(10));
        let name = r.run(async { std::thread::current().name().map(str::to_string) }).await;
        assert_eq!(name.unwrap().as_deref(), Some("skein-query"));
    }

    #[tokio::test]
    async fn overrunning_work_is_stopped() {
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let r = runner(4, Duration::from_millis(100));
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let e = r
            .run(async move {
                let _flag = flag;
                std::future::pending::<()>().await
            })
            .await
            .unwrap_err();
        assert!(matches!(e, QueryError::Timeout(_)), "{e}");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !dropped.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(std::time::Instant::now() < deadline, "the timed-out work kept running");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn queries_beyond_the_limit_are_refused() {
        let r = Arc::new(runner(1, Duration::from_secs(30)));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let busy = {
            let r = r.clone();
            tokio::spawn(async move { r.run(async move { rx.await.ok() }).await })
        };
        // Poll until the first query holds the only slot.
        while r.slots.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let e = r.run(async {}).await.unwrap_err();
        assert!(matches!(e, QueryError::Busy(_)), "{e}");
        tx.send(()).unwrap();
        busy.await.unwrap().unwrap();
        r.run(async {}).await.unwrap();
    }
}
