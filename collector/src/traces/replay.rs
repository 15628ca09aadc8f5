//! WAL replay at start-up: the records no block holds (`Store::covered`, filtered while the
//! WAL is read) are applied to the head in sequence order, through the same dedupe filter as
//! live writes. Replay never crash-loops: a record that cannot be decoded or applied is moved to
//! the quarantine directory and counted, and the rest is replayed. If applying a record
//! panicked half-way, the tenant's head is rebuilt from its earlier records without it.

use std::collections::HashSet;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::dedupe::RecentSpans;
use super::quarantine::Quarantine;
use super::writer::panic_message;
use crate::head::SpanHead;
use crate::telemetry::Telemetry;
use crate::wal::WalRecord;

/// How a record failed to apply.
enum Failure {
    /// The head is unchanged.
    Refused(String),
    /// The tenant's head may hold part of the record.
    Panicked(String),
}

fn apply(head: &SpanHead, dedupe: &RecentSpans, r: &WalRecord) -> Result<usize, Failure> {
    // Records were validated before they were written; undecodable means disk damage.
    let mut req = ExportTraceServiceRequest::decode(r.payload.as_slice())
        .map_err(|e| Failure::Refused(format!("undecodable record: {e}")))?;
    let dropped = dedupe.filter(&r.tenant, &mut req);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        head.apply(r.seq, &r.tenant, &req)
    })) {
        Ok(Ok(())) => Ok(dropped),
        Ok(Err(e)) => Err(Failure::Refused(e.to_string())),
        Err(p) => Err(Failure::Panicked(format!("applying panicked: {}", panic_message(&*p)))),
    }
}

/// Applies `records` to the head; returns how many were applied.
pub fn replay(
    head: &SpanHead,
    dedupe: &RecentSpans,
    quarantine: &Quarantine,
    metrics: &Telemetry,
    records: &[WalRecord],
) -> usize {
    let mut applied = 0;
    let mut skipped: HashSet<u64> = HashSet::new();
    for (i, r) in records.iter().enumerate() {
        let failure = match apply(head, dedupe, r) {
            // Copies dropped here were counted when they first arrived.
            Ok(_dropped) => {
                applied += 1;
                continue;
            }
            Err(f) => f,
        };
        let (reason, rebuild) = match failure {
            Failure::Refused(reason) => (reason, false),
            Failure::Panicked(reason) => (reason, true),
        };
        skipped.insert(r.seq);
        metrics.records_quarantined.inc();
        match quarantine.record(r.seq, &r.tenant, &r.payload, &reason) {
            Ok(path) => tracing::error!(seq = r.seq, tenant = r.tenant, %reason,
                path = %path.display(), "WAL record cannot be replayed; quarantined"),
            Err(e) => tracing::error!(seq = r.seq, tenant = r.tenant, %reason, error = %e,
                "WAL record cannot be replayed, and quarantining it failed; skipped"),
        }
        if rebuild {
            rebuild_tenant(head, &r.tenant, &records[..i], &skipped);
        }
    }
    applied
}

/// Rebuilds `tenant`'s head from its `earlier` records, leaving out `skipped` ones. A fresh
/// dedupe window filters them exactly as their first replay did (the shared one already holds
/// their keys).
fn rebuild_tenant(head: &SpanHead, tenant: &str, earlier: &[WalRecord], skipped: &HashSet<u64>) {
    head.forget(tenant);
    let dedupe = RecentSpans::new(usize::MAX, std::time::Duration::MAX);
    for r in earlier.iter().filter(|r| r.tenant == tenant && !skipped.contains(&r.seq)) {
        if apply(head, &dedupe, r).is_err() {
            tracing::error!(seq = r.seq, tenant, "record failed again while rebuilding the head");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spanrows::DedicatedColumns;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn record(seq: u64, span: u8) -> WalRecord {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![1; 16],
                        span_id: vec![span; 8],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        WalRecord { seq, tenant: "t".into(), payload: req.encode_to_vec() }
    }

    #[test]
    fn a_damaged_record_is_quarantined_and_the_rest_replayed_once() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quarantine::new(dir.path());
        let head = SpanHead::new(DedicatedColumns::default());
        let dedupe = RecentSpans::new(1000, std::time::Duration::from_secs(60));
        let metrics = Telemetry::new();
        let damaged = WalRecord { seq: 2, tenant: "t".into(), payload: vec![0xff; 7] };
        // Record 3 repeats record 1's span: a retried export.
        let records = vec![record(1, 1), damaged, record(3, 1), record(4, 2)];
        assert_eq!(replay(&head, &dedupe, &q, &metrics, &records), 3);
        assert_eq!(head.unflushed_spans(), 2, "each span once");
        assert_eq!(metrics.records_quarantined.get(), 1);
        assert_eq!(std::fs::read(dir.path().join("wal-2-t.pb")).unwrap(), vec![0xff; 7]);
    }

    #[test]
    fn rebuilding_a_tenant_keeps_its_earlier_records_and_leaves_out_skipped_ones() {
        let head = SpanHead::new(DedicatedColumns::default());
        let records = vec![record(1, 1), record(2, 2), record(3, 3)];
        let dedupe = RecentSpans::new(1000, std::time::Duration::from_secs(60));
        for r in &records {
            assert!(apply(&head, &dedupe, r).is_ok());
        }
        rebuild_tenant(&head, "t", &records, &HashSet::from([2]));
        assert_eq!(head.unflushed_spans(), 2);
    }
}
