//! The OpenTelemetry API on skein's pipeline (feature `opentelemetry`): code written against
//! `opentelemetry::trace` (libraries, existing services) records skein spans.
//!
//! - [`TracerProvider`] / [`Tracer`] implement the `opentelemetry::trace` traits; their spans
//!   are skein spans (same sampler, queue and OTLP export). [`crate::init`] installs the
//!   provider as OpenTelemetry's global one, so `opentelemetry::global::tracer(..)` uses it.
//! - [`Propagator`] is the configured `OTEL_PROPAGATORS` formats as an OpenTelemetry
//!   `TextMapPropagator`, installed as the global one: `inject` writes the innermost active
//!   span's context, whether a skein span or an OpenTelemetry one.
//!
//! Parents cross both ways: an OpenTelemetry span started inside a skein span (an RPC span, a
//! `tracing` span, a `Span::new`) is its child, and a skein span started while an
//! OpenTelemetry context is attached (`Context::attach`, `Tracer::in_span`) is the child of
//! that context's span.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator, text_map_propagator};
use opentelemetry::trace::{self as ot, TraceContextExt};
use opentelemetry::{Context, InstrumentationScope};

use crate::propagation::baggage::Member;
use crate::propagation::composite::{Extracted, Format, Propagators};
use crate::propagation::{SpanContext, b3, baggage, w3c};
use crate::span::context::{CurrentParent, parent_under};
use crate::span::{KeyValue, Span, SpanKind, Status, Value};

/// Creates [`Tracer`]s; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct TracerProvider {
    _private: (),
}

impl TracerProvider {
    pub fn new() -> TracerProvider {
        TracerProvider::default()
    }
}

impl ot::TracerProvider for TracerProvider {
    type Tracer = Tracer;

    fn tracer_with_scope(&self, scope: InstrumentationScope) -> Tracer {
        let name = scope.name();
        Tracer { scope: (!name.is_empty()).then(|| Cow::Owned(name.to_string())) }
    }
}

/// Starts skein spans through the OpenTelemetry API. Spans are exported under skein's
/// instrumentation scope; the tracer's own scope name is kept as the `otel.scope.name`
/// attribute (as OpenTelemetry's non-OTLP exporters do).
#[derive(Clone, Debug)]
pub struct Tracer {
    scope: Option<Cow<'static, str>>,
}

/// A skein span behind the OpenTelemetry `Span` trait; ends when dropped or on `end()`.
#[derive(Debug)]
pub struct BridgeSpan {
    span: Span,
    context: ot::SpanContext,
}

impl ot::Tracer for Tracer {
    type Span = BridgeSpan;

    fn build_with_context(&self, builder: ot::SpanBuilder, parent_cx: &Context) -> BridgeSpan {
        let otel_parent = {
            let span = parent_cx.span();
            let sc = span.span_context();
            (parent_cx.has_active_span() && sc.is_valid()).then(|| sc.clone())
        };
        let attributes = builder.attributes.unwrap_or_default();
        let mut b = Span::builder_with_capacity(builder.name, attributes.len() + 1)
            .kind(kind(builder.span_kind.unwrap_or(ot::SpanKind::Internal)));
        b = match parent_under(otel_parent.as_ref()) {
            Some(CurrentParent::Local(c)) => b.local_parent(c),
            Some(CurrentParent::Remote(rp)) => {
                b.remote_parent(Extracted { parent: Some(rp), baggage: members(parent_cx) })
            }
            None => b.remote_parent(Extracted { parent: None, baggage: members(parent_cx) }),
        };
        if let Some(scope) = &self.scope {
            b = b.attribute("otel.scope.name", scope.clone());
        }
        for kv in attributes {
            let kv = key_value(kv);
            b = b.attribute(kv.key, kv.value);
        }
        for l in builder.links.unwrap_or_default() {
            b = b.link_with_attributes(
                SpanContext::from(&l.span_context),
                l.attributes.into_iter().map(key_value).collect(),
            );
        }
        if let Some(t) = builder.start_time {
            b = b.start_time(instant_at(t));
        }
        let mut span = b.start();
        for e in builder.events.unwrap_or_default() {
            span.add_event_at(
                e.name,
                instant_at(e.timestamp),
                e.attributes.into_iter().map(key_value).collect(),
            );
        }
        let context = match span.context() {
            Some(c) => c.to_otel(false),
            // No pipeline: like OpenTelemetry's no-op tracer, carry the parent's context on.
            None => otel_parent.unwrap_or_else(ot::SpanContext::empty_context),
        };
        BridgeSpan { span, context }
    }
}

impl ot::Span for BridgeSpan {
    fn add_event_with_timestamp<T>(
        &mut self,
        name: T,
        timestamp: SystemTime,
        attributes: Vec<opentelemetry::KeyValue>,
    ) where
        T: Into<Cow<'static, str>>,
    {
        if self.span.is_recording() {
            let attributes = attributes.into_iter().map(key_value).collect();
            self.span.add_event_at(name, instant_at(timestamp), attributes);
        }
    }

    fn span_context(&self) -> &ot::SpanContext {
        &self.context
    }

    fn is_recording(&self) -> bool {
        self.span.is_recording()
    }

    fn set_attribute(&mut self, attribute: opentelemetry::KeyValue) {
        if self.span.is_recording() {
            let kv = key_value(attribute);
            self.span.set_attribute(kv.key, kv.value);
        }
    }

    fn set_status(&mut self, status: ot::Status) {
        self.span.set_status(match status {
            ot::Status::Unset => return,
            ot::Status::Ok => Status::Ok,
            ot::Status::Error { description } => Status::Error(description),
        });
    }

    fn update_name<T>(&mut self, new_name: T)
    where
        T: Into<Cow<'static, str>>,
    {
        self.span.update_name(new_name);
    }

    fn add_link(
        &mut self,
        span_context: ot::SpanContext,
        attributes: Vec<opentelemetry::KeyValue>,
    ) {
        if span_context.is_valid() {
            let attributes = attributes.into_iter().map(key_value).collect();
            self.span.add_link(SpanContext::from(&span_context), attributes);
        }
    }

    fn end_with_timestamp(&mut self, timestamp: SystemTime) {
        std::mem::take(&mut self.span).end_at(instant_at(timestamp));
    }
}

fn kind(k: ot::SpanKind) -> SpanKind {
    match k {
        ot::SpanKind::Client => SpanKind::Client,
        ot::SpanKind::Server => SpanKind::Server,
        ot::SpanKind::Producer => SpanKind::Producer,
        ot::SpanKind::Consumer => SpanKind::Consumer,
        ot::SpanKind::Internal => SpanKind::Internal,
    }
}

impl From<opentelemetry::KeyValue> for KeyValue {
    fn from(kv: opentelemetry::KeyValue) -> KeyValue {
        key_value(kv)
    }
}

fn key_value(kv: opentelemetry::KeyValue) -> KeyValue {
    let value = match kv.value {
        opentelemetry::Value::Bool(b) => Value::Bool(b),
        opentelemetry::Value::I64(i) => Value::I64(i),
        opentelemetry::Value::F64(f) => Value::F64(f),
        opentelemetry::Value::String(s) => Value::Str(String::from(s).into()),
        // skein's attribute values are scalars: arrays (and future kinds) as their text.
        other => Value::Str(other.to_string().into()),
    };
    KeyValue { key: String::from(kv.key).into(), value }
}

/// The span clock's instant for a wall-clock time (explicit start, end and event times).
fn instant_at(t: SystemTime) -> crate::span::clock::Instant {
    let (mono, wall) = (crate::span::clock::now(), SystemTime::now());
    match wall.duration_since(t) {
        Ok(ago) => mono.checked_sub(ago).unwrap_or(mono),
        Err(ahead) => mono + ahead.duration(),
    }
}

pub(crate) fn members(cx: &Context) -> Vec<Member> {
    crate::span::otel::baggage_of(cx)
}

/// The configured propagation formats (`OTEL_PROPAGATORS`) as an OpenTelemetry propagator.
#[derive(Debug, Clone)]
pub struct Propagator {
    propagators: Propagators,
    fields: Vec<String>,
}

impl Propagator {
    pub fn new(propagators: Propagators) -> Propagator {
        let mut fields = Vec::new();
        for f in propagators.formats() {
            let names: &[&str] = match f {
                Format::TraceContext => &[w3c::TRACEPARENT, w3c::TRACESTATE],
                Format::Baggage => &[baggage::BAGGAGE],
                Format::B3 => &[b3::B3],
                Format::B3Multi => &[b3::TRACE_ID, b3::SPAN_ID, b3::SAMPLED, b3::FLAGS],
            };
            fields.extend(names.iter().map(|n| n.to_string()));
        }
        Propagator { propagators, fields }
    }
}

impl TextMapPropagator for Propagator {
    /// Injects the innermost of `cx`'s span and the active skein span (see the module
    /// documentation), with `cx`'s baggage or else the skein span's.
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let otel = {
            let span = cx.span();
            let sc = span.span_context();
            (cx.has_active_span() && sc.is_valid()).then(|| sc.clone())
        };
        let (sc, mut bag) = match parent_under(otel.as_ref()) {
            Some(CurrentParent::Local(c)) => {
                (c.to_span_context(), c.baggage.as_deref().cloned().unwrap_or_default())
            }
            Some(CurrentParent::Remote(sc)) => (sc, Vec::new()),
            None => return inject_baggage_only(&self.propagators, cx, injector),
        };
        let otel_bag = members(cx);
        if !otel_bag.is_empty() {
            bag = otel_bag;
        }
        self.propagators.inject(&sc, &bag, |k, v| injector.set(k, v));
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let Extracted { parent, baggage } = self.propagators.extract(|k| extractor.get(k));
        let mut out = match parent {
            Some(p) => cx.with_remote_span_context(p.to_otel(true)),
            None => cx.clone(),
        };
        if !baggage.is_empty() {
            out = out.with_baggage(baggage.into_iter().map(|m| {
                opentelemetry::baggage::KeyValueMetadata::new(m.key, m.value, m.properties)
            }));
        }
        out
    }

    fn fields(&self) -> text_map_propagator::FieldIter<'_> {
        text_map_propagator::FieldIter::new(&self.fields)
    }
}

/// No span anywhere: only the context's baggage, if the baggage format is configured.
fn inject_baggage_only(p: &Propagators, cx: &Context, injector: &mut dyn Injector) {
    if p.formats().contains(&Format::Baggage)
        && let Some(v) = baggage::inject(&members(cx))
    {
        injector.set(baggage::BAGGAGE, v);
    }
}

/// Installs skein's tracer provider and the configured propagators as OpenTelemetry's
/// globals (what `init()` does with the `opentelemetry` feature).
pub fn install_globals(propagators: &Propagators) {
    opentelemetry::global::set_tracer_provider(TracerProvider::new());
    opentelemetry::global::set_text_map_propagator(Propagator::new(propagators.clone()));
}
