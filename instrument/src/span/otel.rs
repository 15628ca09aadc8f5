//! The OpenTelemetry API's current context, seen from skein spans (feature `opentelemetry`):
//! a span attached with `Context::attach` (an OpenTelemetry API span, or a remote context a
//! propagator extracted) is the parent of skein spans started inside it.

use std::sync::Arc;

use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{SpanContext as OtelSpanContext, TraceContextExt};

use super::Ctx;
use super::context::CurrentParent;
use crate::propagation::baggage::Member;
use crate::propagation::{SpanContext, SpanId};

/// The current OpenTelemetry context's span, if it has a valid one.
pub(crate) fn with_current<R>(f: impl FnOnce(Option<&OtelSpanContext>) -> R) -> R {
    Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        f((cx.has_active_span() && sc.is_valid()).then_some(sc))
    })
}

/// The current OpenTelemetry context's baggage (what a propagator extracted with the remote
/// parent).
pub(crate) fn current_baggage() -> Vec<Member> {
    Context::map_current(baggage_of)
}

/// A context's OpenTelemetry baggage as skein baggage members.
pub(crate) fn baggage_of(cx: &Context) -> Vec<Member> {
    cx.baggage()
        .iter()
        .map(|(k, (v, meta))| Member {
            key: k.to_string(),
            value: v.to_string(),
            properties: meta.as_str().to_string(),
        })
        .collect()
}

pub(crate) fn current_span_id() -> Option<SpanId> {
    with_current(|sc| sc.map(|sc| SpanId(sc.span_id().to_bytes())))
}

/// A skein parent for an OpenTelemetry span context: remote ones are continued as an incoming
/// request's parent would be (sampler consulted, parent flagged remote), local ones as a
/// local parent.
pub(crate) fn parent_from(sc: &OtelSpanContext) -> CurrentParent {
    let sc_skein = SpanContext::from(sc);
    if sc.is_remote() {
        return CurrentParent::Remote(sc_skein);
    }
    CurrentParent::Local(Ctx {
        trace_id: sc_skein.trace_id,
        span_id: sc_skein.span_id,
        sampled: sc_skein.sampled,
        trace_state: (!sc_skein.trace_state.is_empty()).then(|| Arc::new(sc_skein.trace_state)),
        baggage: None,
        profile_scope: None,
    })
}
