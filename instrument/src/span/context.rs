//! The per-thread context: a stack of active spans (the top is the parent of new spans and the
//! context injected into outgoing calls) and a small buffer of finished spans.
//!
//! Entering a span moves it onto the stack and leaving moves it back, so async tasks that
//! migrate between threads carry their span with them (`crate::context::Instrumented` enters
//! on every poll).
//! Finished spans are buffered per thread and handed to the export queue in batches: when the
//! thread has no active span left (the end of a poll or a request), when the buffer is full, or
//! when its oldest span is half a second old — so nothing waits behind a long-lived span.

use std::cell::RefCell;
use std::time::Duration;

use super::{Ctx, Inner, Record, Span, clock, hooks, sink};
use crate::propagation::SpanContext;
#[cfg(feature = "opentelemetry")]
use crate::propagation::SpanId;

const LOCAL_BATCH: usize = 64;
const LOCAL_MAX_AGE: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Local {
    stack: Vec<Span>,
    /// Per stack entry: the OpenTelemetry span that was current when it was entered, which
    /// tells whether an OpenTelemetry span attached later is the innermost one.
    #[cfg(feature = "opentelemetry")]
    otel_marks: Vec<Option<SpanId>>,
    buf: Vec<Record>,
    oldest: Option<clock::Instant>,
}

impl Drop for Local {
    fn drop(&mut self) {
        sink::enqueue(&mut self.buf);
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::default();
}

pub(crate) fn push(span: Span) {
    let mut slot = Some(span);
    let _ = LOCAL.try_with(|l| {
        if let (Ok(mut l), Some(span)) = (l.try_borrow_mut(), slot.take()) {
            #[cfg(feature = "opentelemetry")]
            l.otel_marks.push(super::otel::current_span_id());
            l.stack.push(span);
            hooks::publish(&l.stack);
        }
    });
    // Only on thread teardown or re-entrant use from inside `with_current_span`: the span
    // ends here rather than being lost.
    drop(slot);
}

/// Leaves the active span. When that empties the stack (the end of a poll, a request or a
/// scope), spans finished meanwhile are handed to the export queue: the thread may not finish
/// another span for a long time, and they must not wait for it.
pub(crate) fn pop() -> Span {
    LOCAL
        .try_with(|l| {
            let mut l = l.try_borrow_mut().ok()?;
            let span = l.stack.pop();
            #[cfg(feature = "opentelemetry")]
            l.otel_marks.pop();
            hooks::publish(&l.stack);
            if l.stack.is_empty() && !l.buf.is_empty() {
                l.oldest = None;
                sink::enqueue(&mut l.buf);
            }
            span
        })
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// A copy of the active span's context, if any.
pub(crate) fn current_ctx() -> Option<Ctx> {
    LOCAL
        .try_with(|l| {
            l.try_borrow().ok().and_then(|l| l.stack.last().and_then(|s| s.ctx().cloned()))
        })
        .ok()
        .flatten()
}

/// The parent of a span started "under the current one".
pub(crate) enum CurrentParent {
    /// A span of this process.
    Local(Ctx),
    /// An OpenTelemetry context attached with a remote span context (one a propagator
    /// extracted).
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    Remote(SpanContext),
}

/// The innermost active span: the top of this thread's stack or, with the `opentelemetry`
/// feature, the span of the current OpenTelemetry context when that was attached later.
pub(crate) fn current_parent() -> Option<CurrentParent> {
    #[cfg(feature = "opentelemetry")]
    {
        super::otel::with_current(parent_under)
    }
    #[cfg(not(feature = "opentelemetry"))]
    {
        current_ctx().map(CurrentParent::Local)
    }
}

/// The innermost of this thread's top span and the OpenTelemetry span `otel` (the current
/// OpenTelemetry context's, or one passed explicitly): the skein span wins only if it was
/// entered while `otel` was current, i.e. inside it.
#[cfg(feature = "opentelemetry")]
pub(crate) fn parent_under(
    otel: Option<&opentelemetry::trace::SpanContext>,
) -> Option<CurrentParent> {
    let top = LOCAL
        .try_with(|l| {
            let l = l.try_borrow().ok()?;
            let ctx = l.stack.last().and_then(|s| s.ctx().cloned());
            Some((ctx, l.otel_marks.last().copied().flatten()))
        })
        .ok()
        .flatten();
    let (top, mark) = top.unwrap_or((None, None));
    match (top, otel) {
        (Some(top), Some(o)) if mark == Some(SpanId(o.span_id().to_bytes())) => {
            Some(CurrentParent::Local(top))
        }
        (_, Some(o)) => Some(super::otel::parent_from(o)),
        (top, None) => top.map(CurrentParent::Local),
    }
}

/// The active span's context, for propagation and log correlation.
pub fn current_context() -> Option<SpanContext> {
    current_ctx().map(|c| c.to_span_context())
}

/// Runs `f` on the active span (attributes, events, status). Spans started inside `f` do not
/// see it as their parent.
pub fn with_current_span<R>(f: impl FnOnce(&mut Span) -> R) -> Option<R> {
    LOCAL
        .try_with(|l| l.try_borrow_mut().ok().and_then(|mut l| l.stack.last_mut().map(f)))
        .ok()
        .flatten()
}

/// Buffers a finished span's record (`inner` is left disabled); hands the buffer to the export
/// queue when due. The record is moved once, from where it lies into the buffer, rather than
/// through every call on the way: it is ~150 bytes and this is the hot path of every span.
pub(crate) fn finish_in_place(inner: &mut Inner) {
    let Inner::Recording(r) = inner else { return };
    hooks::on_end(r);
    let buffered = LOCAL.try_with(|l| {
        let Ok(mut l) = l.try_borrow_mut() else { return false };
        let Inner::Recording(r) = std::mem::take(inner) else { return true };
        let end = r.end;
        let oldest = *l.oldest.get_or_insert(end);
        l.buf.push(r);
        if l.stack.is_empty()
            || l.buf.len() >= LOCAL_BATCH
            || end.saturating_duration_since(oldest) >= LOCAL_MAX_AGE
        {
            l.oldest = None;
            sink::enqueue(&mut l.buf);
        }
        true
    });
    // Thread teardown or re-entrancy: straight to the queue.
    if buffered != Ok(true)
        && let Inner::Recording(r) = std::mem::take(inner)
    {
        sink::enqueue(&mut vec![r]);
    }
}

/// Hands this thread's buffered spans to the export queue now.
pub(crate) fn flush_local() {
    let _ = LOCAL.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            l.oldest = None;
            sink::enqueue(&mut l.buf);
        }
    });
}
