//! The span maintenance loop, [`Traces::run`]: every 500 ms freeze the tenants whose head is
//! due, write each frozen part as a block, then truncate the WAL behind what is flushed; every
//! minute apply retention. Compaction runs beside it every 10 s, so a long merge never delays
//! the next flush.
//!
//! A part whose flush fails stays visible from the head and stays in the WAL (truncation stops
//! at its first sequence). What happens next depends on the failure:
//! - **transient** (object store or I/O: S3 5xx, timeouts, a full disk): retried with backoff
//!   (1 s doubling to 30 s) for as long as it takes; storage is reported failing to `Health`
//!   until a flush succeeds again;
//! - **deterministic** (the rows cannot be encoded): the part is written batch by batch; a batch
//!   that still fails goes to the quarantine directory as an Arrow file. Only the last batch's
//!   block claims the part's WAL range, so a crash half-way (or a last batch that had to be
//!   quarantined) replays the whole part: copies of the pieces already written are answered
//!   once by trace by id and merged away by compaction, and nothing is lost. Then the part is
//!   released, and truncation moves on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Traces;
use crate::error::{Coded, ErrorCode};
use crate::health::Check;
use crate::spanrows::SealedRows;
use crate::store::StoreError;

/// Aborts a background task when the owner stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// First and longest wait before retrying a part whose flush failed.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A frozen part whose flush failed, and when to try again.
pub(super) struct Failed {
    part: Arc<SealedRows>,
    wait: Duration,
    next: Instant,
}

/// Whether retrying the same write can succeed.
fn is_transient(e: &StoreError) -> bool {
    matches!(e.code(), ErrorCode::Unavailable | ErrorCode::Overloaded)
}

impl Traces {
    /// Flushes, truncates the WAL, compacts and applies retention until `stop` resolves.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failed: Vec<Failed> = Vec::new();
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
                self.dedupe.sweep();
                if let Err(e) = self.store.apply_retention(self.retention).await {
                    tracing::error!(error = %e, "retention failed");
                }
            }
        }
    }

    /// Writes the due head parts, and the failed ones whose retry is due, as blocks; parts
    /// that fail again stay in `failed`. Returns whether any part left the head.
    pub(super) async fn flush_due(&self, failed: &mut Vec<Failed>) -> bool {
        let now = Instant::now();
        let (retry, waiting): (Vec<Failed>, Vec<Failed>) =
            std::mem::take(failed).into_iter().partition(|f| f.next <= now);
        *failed = waiting;
        let mut due: Vec<(Arc<SealedRows>, Option<Duration>)> =
            retry.into_iter().map(|f| (f.part, Some(f.wait))).collect();
        match self.head.freeze_due(self.head_cfg.max_spans, self.head_cfg.max_age, false) {
            Ok(parts) => due.extend(parts.into_iter().map(|p| (p, None))),
            Err(e) => tracing::error!(error = %e, "freezing head failed"),
        }
        let mut released = false;
        for (part, waited) in due {
            let _busy = self.health.busy("flushing the head to a block");
            let Err(e) = self.store.flush(&part, || self.head.release(&part)).await else {
                self.health.clear(Check::Storage);
                released = true;
                continue;
            };
            self.metrics.flush_failures.inc();
            if is_transient(&e) {
                tracing::error!(tenant = part.tenant, error = %e, "flush failed; will retry");
                self.health.fail(Check::Storage, format!("flushing a block failed: {e}"));
                let wait = waited.map_or(RETRY_FIRST, |w| w.saturating_mul(2).min(RETRY_MAX));
                failed.push(Failed { part, wait, next: Instant::now() + wait });
            } else {
                tracing::error!(tenant = part.tenant, error = %e,
                    "flush failed and would fail again; writing the part in pieces");
                match self.flush_in_pieces(&part).await {
                    Ok(()) => released = true,
                    Err(e) => {
                        tracing::error!(tenant = part.tenant, error = %e,
                            "writing the part in pieces failed; will retry");
                        let next = Instant::now() + RETRY_MAX;
                        failed.push(Failed { part, wait: RETRY_MAX, next });
                    }
                }
            }
        }
        released
    }

    /// Writes each batch of `part` as a block of its own, quarantining the ones that cannot be
    /// written, then releases the part. Only the last batch's block claims the part's WAL range.
    async fn flush_in_pieces(&self, part: &Arc<SealedRows>) -> Result<(), StoreError> {
        let last = part.batches.len().saturating_sub(1);
        let mut written = 0;
        for (n, batch) in part.batches.iter().enumerate() {
            let claims = n == last;
            let piece = SealedRows {
                id: part.id,
                tenant: part.tenant.clone(),
                batches: vec![batch.clone()],
                spans: batch.num_rows(),
                min_time: part.min_time,
                max_time: part.max_time,
                // An empty range (first > last) claims nothing.
                min_seq: if claims { part.min_seq } else { 1 },
                max_seq: if claims { part.max_seq } else { 0 },
                tags: part.tags.clone(),
            };
            match self.store.flush(&piece, || {}).await {
                Ok(_) => written += 1,
                Err(e) if is_transient(&e) => return Err(e),
                Err(e) => {
                    let reason = e.to_string();
                    let seqs = (part.min_seq, part.max_seq);
                    let path = self.quarantine.part(&part.tenant, seqs, n, batch, &reason)?;
                    self.metrics.parts_quarantined.inc();
                    tracing::error!(tenant = part.tenant, rows = batch.num_rows(), %reason,
                        path = %path.display(), "head part cannot be written as a block; quarantined");
                }
            }
        }
        self.head.release(part);
        tracing::info!(tenant = part.tenant, blocks = written, "part written in pieces");
        Ok(())
    }
}
