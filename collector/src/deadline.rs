//! The time by which the running query must be done. The query runner sets it for the work it
//! spawns; code that computes without awaiting (PromQL evaluation on a blocking thread, which
//! aborting its task cannot stop) reads it and gives up itself once it has passed.

use std::future::Future;
use std::time::Instant;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `f` with `deadline` as the current query's deadline.
pub fn scope<F: Future>(deadline: Instant, f: F) -> impl Future<Output = F::Output> {
    DEADLINE.scope(deadline, f)
}

/// The current query's deadline, if it runs under [`scope`].
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_deadline_is_seen_inside_its_scope_only() {
        let d = Instant::now();
        assert_eq!(scope(d, async { current() }).await, Some(d));
        assert_eq!(current(), None);
    }
}
