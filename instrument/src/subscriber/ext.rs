//! Links and parents for `tracing` spans, the way `tracing-opentelemetry`'s
//! `OpenTelemetrySpanExt` offers them: `span.set_parent(cx)`, `span.add_link(cx)`.

use tracing_subscriber::Registry;
use tracing_subscriber::registry::LookupSpan;

use super::Slot;
use crate::propagation::SpanContext;
use crate::propagation::composite::Extracted;
use crate::span::{KeyValue, Parent};

/// Extends `tracing::Span` with what skein spans can do but `tracing` cannot express. Works
/// when the subscriber is a `tracing_subscriber::Registry` with [`super::layer`] (what
/// `init()` installs); otherwise (or for a disabled span) the calls do nothing.
pub trait TracingSpanExt {
    /// Continues the trace an incoming request carried (a propagator's extraction). Call it
    /// before the span is first entered: children already started keep their parent. Returns
    /// whether the span took the new parent.
    fn set_remote_parent(&self, extracted: Extracted) -> bool;

    /// Makes the span of an OpenTelemetry context (a remote one a propagator extracted, or a
    /// local OpenTelemetry-API span) this span's parent, as `OpenTelemetrySpanExt::set_parent`
    /// does; an empty context makes it a root. Call it before the span is first entered.
    #[cfg(feature = "opentelemetry")]
    fn set_parent(&self, cx: opentelemetry::Context) -> bool;

    /// Links this span to another (OTLP span link); takes skein's or (with the
    /// `opentelemetry` feature) OpenTelemetry's span context.
    fn add_link(&self, cx: impl Into<SpanContext>) {
        self.add_link_with_attributes(cx, Vec::<KeyValue>::new());
    }

    fn add_link_with_attributes<A: Into<KeyValue>>(
        &self,
        cx: impl Into<SpanContext>,
        attributes: Vec<A>,
    );

    /// The skein span context of this span (to propagate or to link to), if it has one.
    fn span_context(&self) -> Option<SpanContext>;

    /// This span as an OpenTelemetry context, for OpenTelemetry-API code (propagators, child
    /// spans with an explicit parent).
    #[cfg(feature = "opentelemetry")]
    fn context(&self) -> opentelemetry::Context;
}

/// Runs `f` on `span`'s slot, if the subscriber is the registry and the layer keeps one.
fn with_slot<R>(span: &tracing::Span, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let span_ref = registry.span(id)?;
        let mut ext = span_ref.extensions_mut();
        ext.get_mut::<Slot>().map(f)
    })
    .flatten()
}

fn reparent(span: &tracing::Span, parent: Parent) -> bool {
    with_slot(span, |slot| {
        // Entered (on the context stack): its children may exist already; refused.
        let Some(s) = &mut slot.span else { return false };
        s.reparent(parent);
        slot.ctx = s.ctx().cloned();
        true
    })
    .unwrap_or(false)
}

impl TracingSpanExt for tracing::Span {
    fn set_remote_parent(&self, extracted: Extracted) -> bool {
        reparent(self, Parent::Remote(extracted))
    }

    #[cfg(feature = "opentelemetry")]
    fn set_parent(&self, cx: opentelemetry::Context) -> bool {
        use opentelemetry::trace::TraceContextExt;

        use crate::span::context::CurrentParent;
        let span = cx.span();
        let sc = span.span_context();
        let parent = match (cx.has_active_span() && sc.is_valid())
            .then(|| crate::span::otel::parent_from(sc))
        {
            Some(CurrentParent::Local(c)) => Parent::Local(c),
            Some(CurrentParent::Remote(rp)) => {
                Parent::Remote(Extracted { parent: Some(rp), baggage: crate::otel::members(&cx) })
            }
            None => Parent::Remote(Extracted { parent: None, baggage: crate::otel::members(&cx) }),
        };
        reparent(self, parent)
    }

    fn add_link_with_attributes<A: Into<KeyValue>>(
        &self,
        cx: impl Into<SpanContext>,
        attributes: Vec<A>,
    ) {
        let cx = cx.into();
        if !cx.trace_id.is_valid() || !cx.span_id.is_valid() {
            return;
        }
        let attributes = attributes.into_iter().map(Into::into).collect();
        with_slot(self, |slot| slot.on_span(|s| s.add_link(cx, attributes)));
    }

    fn span_context(&self) -> Option<SpanContext> {
        with_slot(self, |slot| slot.ctx.as_ref().map(|c| c.to_span_context())).flatten()
    }

    #[cfg(feature = "opentelemetry")]
    fn context(&self) -> opentelemetry::Context {
        use opentelemetry::trace::TraceContextExt;
        let cx = opentelemetry::Context::current();
        match self.span_context() {
            Some(sc) => cx.with_remote_span_context(sc.to_otel(false)),
            None => cx,
        }
    }
}
