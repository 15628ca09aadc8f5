//! The skein threads' own `tracing` activity (the exporter's HTTP/2 client internals, the
//! profile pusher) must not become spans: those threads set this flag, and the `tracing`
//! layer ignores spans and events on them.

use std::cell::Cell;

thread_local! {
    static SUPPRESSED: Cell<bool> = const { Cell::new(false) };
}

/// Stops this thread's `tracing` spans and events from being recorded (for good).
pub(crate) fn suppress_on_this_thread() {
    SUPPRESSED.with(|s| s.set(true));
}

pub(crate) fn suppressed() -> bool {
    SUPPRESSED.with(Cell::get)
}
