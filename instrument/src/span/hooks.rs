//! Profiler hooks: what the span code calls so a profiler knows the running span. The
//! profiler (`crate::profiling`) installs its functions here when it starts; while it is not
//! running, each hook costs one relaxed atomic load.
//!
//! - `on_start`: a recording span starts (it may open a profile scope);
//! - `publish`: the thread's active span changed (every context push/pop, i.e. every poll of
//!   an instrumented future); `stack` is the thread's span stack, innermost last;
//! - `on_end`: a recording span ends (it may be marked as slow).
//!
//! Without the `profiling` feature the hooks are empty functions: nothing is left on the span
//! path.

use super::{Record, Span};

#[cfg(feature = "profiling")]
pub(crate) use on::*;

#[cfg(feature = "profiling")]
mod on {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::{Record, Span};

    pub(crate) struct Hooks {
        pub on_start: fn(&mut Record),
        pub publish: fn(&[Span]),
        pub on_end: fn(&mut Record),
    }

    static HOOKS: OnceLock<Hooks> = OnceLock::new();
    static ENABLED: AtomicBool = AtomicBool::new(false);

    /// Installs the profiler's hooks (once per process; false if some were installed
    /// already). They run only while [`set_enabled`] says so.
    pub(crate) fn install(hooks: Hooks) -> bool {
        HOOKS.set(hooks).is_ok()
    }

    pub(crate) fn set_enabled(on: bool) {
        ENABLED.store(on, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn enabled() -> bool {
        ENABLED.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn hooks() -> Option<&'static Hooks> {
        if enabled() { HOOKS.get() } else { None }
    }
}

#[inline]
pub(crate) fn on_start(_r: &mut Record) {
    #[cfg(feature = "profiling")]
    if let Some(h) = hooks() {
        (h.on_start)(_r);
    }
}

#[inline]
pub(crate) fn publish(_stack: &[Span]) {
    #[cfg(feature = "profiling")]
    if let Some(h) = hooks() {
        (h.publish)(_stack);
    }
}

#[inline]
pub(crate) fn on_end(_r: &mut Record) {
    #[cfg(feature = "profiling")]
    if let Some(h) = hooks() {
        (h.on_end)(_r);
    }
}
