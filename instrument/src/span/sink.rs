//! Where spans come from and go to once a pipeline is installed: the sampling decision for
//! new traces, and the function that takes finished records off a thread's buffer (into the
//! export queue). The exporter (`crate::export`) registers itself here, so spans need not know
//! the exporter, which itself depends on span records.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Record;
use crate::sampler::Sampler;

pub(crate) struct Sink {
    pub sampler: Sampler,
    /// Cleared when the pipeline shuts down (or cannot start): new spans are then disabled.
    active: AtomicBool,
    /// Empties the buffer: its records are queued for export, or dropped and counted.
    enqueue: fn(&mut Vec<Record>),
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Registers the pipeline, active (once per process; false if one was registered already).
pub(crate) fn install(sampler: Sampler, enqueue: fn(&mut Vec<Record>)) -> bool {
    SINK.set(Sink { sampler, active: AtomicBool::new(true), enqueue }).is_ok()
}

/// The registered pipeline, while it runs.
#[inline]
pub(crate) fn active() -> Option<&'static Sink> {
    SINK.get().filter(|s| s.active.load(Ordering::Relaxed))
}

/// Stops recording new spans (finished ones are still handed over).
pub(crate) fn deactivate() {
    if let Some(s) = SINK.get() {
        s.active.store(false, Ordering::Relaxed);
    }
}

/// Hands `buf`'s records over (emptying it); without a pipeline they are dropped.
pub(crate) fn enqueue(buf: &mut Vec<Record>) {
    match SINK.get() {
        Some(s) => (s.enqueue)(buf),
        None => buf.clear(),
    }
}
