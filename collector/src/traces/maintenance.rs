//! The span maintenance loop, [`Traces::run`]: every 500 ms freeze the tenants whose head is
//! due, write each frozen part as a block (a failed flush is retried next tick, its spans still
//! visible from the head and still in the WAL), then truncate the WAL behind what is flushed;
//! every minute apply retention. Compaction runs beside it every 10 s, so a long merge never
//! delays the next flush.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Traces;
use crate::spanrows::SealedRows;

/// Aborts a background task when the owner stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Traces {
    /// Flushes, truncates the WAL, compacts and applies retention until `stop` resolves.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failed: Vec<Arc<SealedRows>> = Vec::new();
        let mut last_retention: Option<Instant> = None;
        let (store, target) = (self.store.clone(), self.block_target_spans);
        let compactor = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = store.compact(target).await {
                    tracing::error!(error = %e, "compaction failed");
                }
            }
        });
        let _abort_compactor = AbortOnDrop(compactor);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            let flushed = self.flush_due(&mut failed).await;
            if flushed && let Err(e) = self.writer.truncate().await {
                tracing::error!(error = %e, "WAL truncation failed");
            }
            if last_retention.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                last_retention = Some(Instant::now());
                if let Err(e) = self.store.apply_retention(self.retention).await {
                    tracing::error!(error = %e, "retention failed");
                }
            }
        }
    }

    /// Writes the due head parts and those whose flush failed before as blocks; the ones that
    /// fail again are left in `failed`. Returns whether anything was due.
    async fn flush_due(&self, failed: &mut Vec<Arc<SealedRows>>) -> bool {
        let mut due = std::mem::take(failed);
        match self.head.freeze_due(self.head_cfg.max_spans, self.head_cfg.max_age, false) {
            Ok(f) => due.extend(f),
            Err(e) => tracing::error!(error = %e, "freezing head failed"),
        }
        let any = !due.is_empty();
        for f in due {
            match self.store.flush(&f, || self.head.release(&f)).await {
                Ok(_) => {}
                Err(e) => {
                    // Still visible from the head and still in the WAL; retry next tick.
                    tracing::error!(tenant = f.tenant, error = %e, "flush failed");
                    failed.push(f);
                }
            }
        }
        any
    }
}
