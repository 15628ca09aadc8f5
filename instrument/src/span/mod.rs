//! Spans: one handle per operation, recorded in place (nothing is allocated unless the span
//! gets attributes or events) and moved into the thread's context stack while it is active.
//!
//! A [`Span`] is either recording (sampled, its record is exported when it ends), a bare
//! context (not sampled: children and outgoing requests still carry the trace) or disabled
//! (no pipeline installed: everything is a no-op).

use std::borrow::Cow;
use std::sync::Arc;

use crate::propagation::baggage::Member;
use crate::propagation::composite::Extracted;
use crate::propagation::{SpanContext, SpanId, TraceId};

pub(crate) mod clock;
pub(crate) mod context;
pub(crate) mod hooks;
pub(crate) mod ids;
#[cfg(feature = "opentelemetry")]
pub(crate) mod otel;
mod record;
pub(crate) mod sink;

#[cfg(feature = "profiling")]
pub(crate) use record::Scope;
pub(crate) use record::{Ctx, Event, Extra, Record};
pub use record::{KeyValue, Link, SpanKind, Status, Value};

/// Most attributes, events and links kept per span (OpenTelemetry's default limits); the rest
/// are counted as dropped.
pub const MAX_ATTRIBUTES: usize = 128;
pub const MAX_EVENTS: usize = 128;
pub const MAX_LINKS: usize = 128;

#[derive(Debug, Default)]
pub(crate) enum Inner {
    #[default]
    Disabled,
    Context(Ctx),
    Recording(Record),
}

/// One operation. Ends (and is queued for export) when dropped or on [`Span::end`].
#[derive(Debug, Default)]
#[must_use = "a span measures until it is dropped; bind it to a variable"]
pub struct Span(pub(crate) Inner);

/// Where a new span's parent comes from.
#[derive(Debug)]
pub(crate) enum Parent {
    /// The span active on this thread, if any.
    Current,
    Root,
    /// A span of this process (a `tracing` span's explicit parent).
    Local(Ctx),
    /// What an incoming request carried (parent and/or baggage).
    Remote(Extracted),
}

/// Configures a span before it starts.
#[derive(Debug)]
#[must_use]
pub struct SpanBuilder {
    name: Cow<'static, str>,
    kind: SpanKind,
    parent: Parent,
    attributes: Vec<KeyValue>,
    links: Vec<Link>,
    start: Option<clock::Instant>,
}

impl SpanBuilder {
    pub fn kind(mut self, kind: SpanKind) -> Self {
        self.kind = kind;
        self
    }

    /// Starts a new trace even when a span is active.
    pub fn root(mut self) -> Self {
        self.parent = Parent::Root;
        self
    }

    pub(crate) fn local_parent(mut self, parent: Ctx) -> Self {
        self.parent = Parent::Local(parent);
        self
    }

    /// Continues the trace an incoming request carried (a new trace when it carried none).
    pub fn remote_parent(mut self, extracted: Extracted) -> Self {
        self.parent = Parent::Remote(extracted);
        self
    }

    pub fn attribute(mut self, key: impl Into<Cow<'static, str>>, value: impl Into<Value>) -> Self {
        self.attributes.push(KeyValue::new(key, value));
        self
    }

    /// Links this span to another (of this trace or another one).
    pub fn link(self, context: SpanContext) -> Self {
        self.link_with_attributes(context, Vec::new())
    }

    pub fn link_with_attributes(mut self, context: SpanContext, attributes: Vec<KeyValue>) -> Self {
        self.links.push(Link { context, attributes });
        self
    }

    /// Starts at `start` instead of now (the OpenTelemetry API's explicit start times).
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn start_time(mut self, start: clock::Instant) -> Self {
        self.start = Some(start);
        self
    }

    pub fn start(self) -> Span {
        let Some(p) = sink::active() else { return Span(Inner::Disabled) };
        let (ctx, parent, remote_parent) = resolve(self.parent, p);
        if !ctx.sampled {
            return Span(Inner::Context(ctx));
        }
        let mut attributes = self.attributes;
        let dropped_attributes = attributes.len().saturating_sub(MAX_ATTRIBUTES) as u32;
        attributes.truncate(MAX_ATTRIBUTES);
        let mut links = self.links;
        let dropped_links = links.len().saturating_sub(MAX_LINKS) as u32;
        links.truncate(MAX_LINKS);
        let now = self.start.unwrap_or_else(clock::now);
        let extra = (dropped_attributes > 0 || !links.is_empty()).then(|| {
            Box::new(Extra { dropped_attributes, links, dropped_links, ..Extra::default() })
        });
        // Built where it is returned: no copy of the record on the way out.
        let mut span = Span(Inner::Recording(Record {
            ctx,
            parent,
            remote_parent,
            name: self.name,
            kind: self.kind,
            start: now,
            end: now,
            attributes,
            extra,
        }));
        if let Inner::Recording(r) = &mut span.0 {
            hooks::on_start(r);
        }
        span
    }
}

/// The new span's context, its parent span id and whether that parent is remote.
#[inline]
fn resolve(parent: Parent, p: &sink::Sink) -> (Ctx, Option<SpanId>, bool) {
    let child_of = |c: Ctx| {
        let parent = c.span_id;
        (Ctx { span_id: ids::span_id(), ..c }, Some(parent), false)
    };
    match parent {
        Parent::Current => match context::current_parent() {
            Some(context::CurrentParent::Local(c)) => child_of(c),
            Some(context::CurrentParent::Remote(rp)) => {
                #[cfg(feature = "opentelemetry")]
                let baggage = otel::current_baggage();
                #[cfg(not(feature = "opentelemetry"))]
                let baggage = Vec::new();
                resolve(Parent::Remote(Extracted { parent: Some(rp), baggage }), p)
            }
            None => (new_root(p, None), None, false),
        },
        Parent::Root => (new_root(p, None), None, false),
        Parent::Local(c) => child_of(c),
        Parent::Remote(Extracted { parent: Some(rp), baggage }) => {
            let sampled = p.sampler.should_sample(&rp.trace_id, Some(&rp));
            let ctx = Ctx {
                trace_id: rp.trace_id,
                span_id: ids::span_id(),
                sampled,
                trace_state: (!rp.trace_state.is_empty()).then(|| Arc::new(rp.trace_state)),
                baggage: (!baggage.is_empty()).then(|| Arc::new(baggage)),
                profile_scope: None,
            };
            (ctx, Some(rp.span_id), true)
        }
        Parent::Remote(Extracted { parent: None, baggage }) => {
            (new_root(p, (!baggage.is_empty()).then(|| Arc::new(baggage))), None, false)
        }
    }
}

fn new_root(p: &sink::Sink, baggage: Option<Arc<Vec<Member>>>) -> Ctx {
    let trace_id = ids::trace_id();
    Ctx {
        trace_id,
        span_id: ids::span_id(),
        sampled: p.sampler.should_sample(&trace_id, None),
        trace_state: None,
        baggage,
        profile_scope: None,
    }
}

impl Span {
    /// An internal span, child of the span active on this thread (or a new trace).
    pub fn new(name: impl Into<Cow<'static, str>>) -> Span {
        Span::builder(name).start()
    }

    pub fn builder(name: impl Into<Cow<'static, str>>) -> SpanBuilder {
        Span::builder_with_capacity(name, 0)
    }

    /// For callers that know how many attributes they will add (the RPC layers).
    pub(crate) fn builder_with_capacity(
        name: impl Into<Cow<'static, str>>,
        attributes: usize,
    ) -> SpanBuilder {
        SpanBuilder {
            name: name.into(),
            kind: SpanKind::Internal,
            parent: Parent::Current,
            attributes: Vec::with_capacity(attributes),
            links: Vec::new(),
            start: None,
        }
    }

    /// A span that records nothing and carries no context.
    pub fn disabled() -> Span {
        Span(Inner::Disabled)
    }

    /// Whether this span's data will be exported.
    pub fn is_recording(&self) -> bool {
        matches!(self.0, Inner::Recording(_))
    }

    pub(crate) fn ctx(&self) -> Option<&Ctx> {
        match &self.0 {
            Inner::Disabled => None,
            Inner::Context(c) => Some(c),
            Inner::Recording(r) => Some(&r.ctx),
        }
    }

    /// The context to propagate to callees.
    pub fn context(&self) -> Option<SpanContext> {
        self.ctx().map(Ctx::to_span_context)
    }

    pub fn trace_id(&self) -> Option<TraceId> {
        self.ctx().map(|c| c.trace_id)
    }

    pub fn span_id(&self) -> Option<SpanId> {
        self.ctx().map(|c| c.span_id)
    }

    /// Baggage entries this span carries (from the incoming request).
    pub fn baggage(&self) -> &[Member] {
        self.ctx().and_then(|c| c.baggage.as_deref()).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn set_attribute(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<Value>) {
        if let Inner::Recording(r) = &mut self.0 {
            if r.attributes.len() < MAX_ATTRIBUTES {
                r.attributes.push(KeyValue::new(key, value));
            } else {
                r.extra().dropped_attributes += 1;
            }
        }
    }

    pub(crate) fn set_kind(&mut self, kind: SpanKind) {
        if let Inner::Recording(r) = &mut self.0 {
            r.kind = kind;
        }
    }

    pub fn update_name(&mut self, name: impl Into<Cow<'static, str>>) {
        if let Inner::Recording(r) = &mut self.0 {
            r.name = name.into();
        }
    }

    pub fn add_event(&mut self, name: impl Into<Cow<'static, str>>, attributes: Vec<KeyValue>) {
        if let Inner::Recording(_) = &self.0 {
            self.add_event_at(name, clock::now(), attributes);
        }
    }

    pub(crate) fn add_event_at(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        time: clock::Instant,
        attributes: Vec<KeyValue>,
    ) {
        if let Inner::Recording(r) = &mut self.0 {
            let x = r.extra();
            if x.events.len() < MAX_EVENTS {
                x.events.push(Event { name: name.into(), time, attributes });
            } else {
                x.dropped_events += 1;
            }
        }
    }

    /// Links this span to another (exported as an OTLP span link).
    pub fn add_link(&mut self, context: SpanContext, attributes: Vec<KeyValue>) {
        if let Inner::Recording(r) = &mut self.0 {
            let x = r.extra();
            if x.links.len() < MAX_LINKS {
                x.links.push(Link { context, attributes });
            } else {
                x.dropped_links += 1;
            }
        }
    }

    /// Ends the span at `end` (the OpenTelemetry API's explicit end times).
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn end_at(mut self, end: clock::Instant) {
        if let Inner::Recording(r) = &mut self.0 {
            r.end = end;
            context::finish_in_place(&mut self.0);
        }
    }

    /// Moves a span that has not been entered yet under another parent (a `tracing` span's
    /// `set_parent`): its trace, parent and sampling decision change, its data stays. A span
    /// that was not sampled stays unrecorded: its data was never kept.
    pub(crate) fn reparent(&mut self, parent: Parent) {
        let Some(p) = sink::active() else { return };
        let (mut ctx, parent, remote_parent) = resolve(parent, p);
        self.0 = match std::mem::take(&mut self.0) {
            Inner::Recording(mut r) if ctx.sampled => {
                ctx.profile_scope = r.ctx.profile_scope.take();
                r.ctx = ctx;
                r.parent = parent;
                r.remote_parent = remote_parent;
                Inner::Recording(r)
            }
            // Unsampled now: the record is discarded, not exported.
            Inner::Recording(_) | Inner::Context(_) => Inner::Context(ctx),
            Inner::Disabled => Inner::Disabled,
        };
    }

    pub fn set_status(&mut self, status: Status) {
        if let Inner::Recording(r) = &mut self.0 {
            // Ok is final (OpenTelemetry: once Ok, later Error is ignored).
            if *r.status() != Status::Ok {
                r.extra().status = status;
            }
        }
    }

    pub fn status(&self) -> Option<&Status> {
        match &self.0 {
            Inner::Recording(r) => Some(r.status()),
            _ => None,
        }
    }

    /// Error status plus an `exception` event, as the OpenTelemetry conventions ask.
    pub fn record_error(&mut self, error: &dyn std::error::Error) {
        let message = error.to_string();
        self.add_event("exception", vec![KeyValue::new("exception.message", message.clone())]);
        self.set_status(Status::Error(message.into()));
    }

    /// Ends the span now (dropping it does the same).
    pub fn end(self) {}

    /// Makes this span the active one on this thread until the guard drops.
    pub fn enter(&mut self) -> Entered<'_> {
        context::push(std::mem::take(self));
        Entered { slot: self }
    }

    pub fn in_scope<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let _entered = self.enter();
        f()
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Inner::Recording(r) = &mut self.0 {
            r.end = clock::now();
            context::finish_in_place(&mut self.0);
        }
    }
}

/// While alive, its span is the active one on this thread.
#[must_use = "the span is active only while the guard lives"]
pub struct Entered<'a> {
    slot: &'a mut Span,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        *self.slot = context::pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_convert_from_rust_types() {
        assert_eq!(Value::from("a"), Value::Str("a".into()));
        assert_eq!(Value::from(3u16), Value::I64(3));
        assert_eq!(Value::from(u64::MAX), Value::I64(i64::MAX));
        assert_eq!(Value::from(true), Value::Bool(true));
    }

    #[test]
    fn without_a_pipeline_spans_are_disabled_and_free() {
        // The unit-test binary never installs a pipeline.
        let mut s = Span::new("x");
        s.set_attribute("k", 1i64);
        assert!(!s.is_recording());
        assert!(s.context().is_none());
        assert_eq!(std::mem::size_of::<Span>(), std::mem::size_of::<Inner>());
        // Records move on every enter, exit and finish: keep them small.
        assert!(std::mem::size_of::<Span>() <= 160, "{}", std::mem::size_of::<Span>());
    }
}
