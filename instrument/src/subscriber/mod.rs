//! `tracing` integration: a subscriber layer that turns `tracing` spans into skein spans under
//! the active RPC span (events become span events), and a log line format that appends the
//! active `trace_id` and `span_id`.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record as Values};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::span::{Ctx, Inner, KeyValue, Span, SpanKind, Status, context};
use crate::suppress::suppressed;

mod ext;

pub use ext::TracingSpanExt;

/// The layer: add it to a `tracing_subscriber::registry()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SkeinLayer;

pub fn layer() -> SkeinLayer {
    SkeinLayer
}

/// Per-`tracing`-span state, kept in the registry's extensions. The span itself lives here
/// while not entered and on the thread's context stack while entered.
struct Slot {
    ctx: Option<Ctx>,
    span: Option<Span>,
}

impl Slot {
    /// Runs `f` on the span, here or (while entered on this thread) on the context stack.
    fn on_span(&mut self, f: impl FnOnce(&mut Span)) {
        match &mut self.span {
            Some(s) => f(s),
            None => {
                let want = self.ctx.as_ref().map(|c| c.span_id);
                context::with_current_span(|s| {
                    if s.span_id().is_some() && s.span_id() == want {
                        f(s)
                    }
                });
            }
        }
    }
}

/// Fields, with those `tracing-opentelemetry` gives a meaning picked out: `otel.name` (the
/// span name), `otel.kind` (`server`, `client`, `producer`, `consumer`, `internal`),
/// `otel.status_code` (`ok`, `error`) and `otel.status_message` (also spelled
/// `otel.status_description`; an error's description).
#[derive(Default)]
struct Fields {
    attrs: Vec<KeyValue>,
    message: Option<String>,
    name: Option<String>,
    kind: Option<SpanKind>,
    status_code: Option<StatusCode>,
    status_message: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StatusCode {
    Unset,
    Ok,
    Error,
}

fn span_kind(s: &str) -> Option<SpanKind> {
    [
        ("server", SpanKind::Server),
        ("client", SpanKind::Client),
        ("producer", SpanKind::Producer),
        ("consumer", SpanKind::Consumer),
        ("internal", SpanKind::Internal),
    ]
    .into_iter()
    .find_map(|(name, kind)| s.eq_ignore_ascii_case(name).then_some(kind))
}

fn status_code(s: &str) -> StatusCode {
    if s.eq_ignore_ascii_case("ok") {
        StatusCode::Ok
    } else if s.eq_ignore_ascii_case("error") {
        StatusCode::Error
    } else {
        StatusCode::Unset
    }
}

impl Fields {
    /// The span status the `otel.status_*` fields ask for, if any: a message alone means an
    /// error (as in `tracing-opentelemetry`).
    fn status(&mut self) -> Option<Status> {
        match (self.status_code, self.status_message.take()) {
            (Some(StatusCode::Ok), _) => Some(Status::Ok),
            (Some(StatusCode::Error) | None, Some(m)) => Some(Status::Error(m.into())),
            (Some(StatusCode::Error), None) => Some(Status::Error("".into())),
            _ => None,
        }
    }

    fn apply(mut self, s: &mut Span) {
        if let Some(n) = self.name.take() {
            s.update_name(n);
        }
        if let Some(k) = self.kind {
            s.set_kind(k);
        }
        if let Some(st) = self.status() {
            s.set_status(st);
        }
        for kv in self.attrs {
            s.set_attribute(kv.key, kv.value);
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = Some(value.to_string()),
            "otel.name" => self.name = Some(value.to_string()),
            "otel.kind" => self.kind = span_kind(value),
            "otel.status_code" => self.status_code = Some(status_code(value)),
            "otel.status_message" | "otel.status_description" => {
                self.status_message = Some(value.to_string())
            }
            k => self.attrs.push(KeyValue::new(k, value.to_string())),
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.attrs.push(KeyValue::new(field.name(), value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.attrs.push(KeyValue::new(field.name(), value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.attrs.push(KeyValue::new(field.name(), value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.attrs.push(KeyValue::new(field.name(), value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

impl<S> tracing_subscriber::Layer<S> for SkeinLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if suppressed() {
            return;
        }
        let Some(span_ref) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let meta = attrs.metadata();
        let mut b = match fields.name.take() {
            Some(n) => Span::builder(n),
            None => Span::builder(meta.name()),
        };
        if let Some(k) = fields.kind {
            b = b.kind(k);
        }
        let status = fields.status();
        if attrs.is_root() {
            b = b.root();
        } else if let Some(parent) = attrs.parent() {
            let pctx = ctx
                .span(parent)
                .and_then(|p| p.extensions().get::<Slot>().and_then(|s| s.ctx.clone()));
            if let Some(p) = pctx {
                b = b.local_parent(p);
            }
        }
        for kv in fields.attrs {
            b = b.attribute(kv.key, kv.value);
        }
        if let Some(m) = meta.module_path() {
            b = b.attribute("code.namespace", m);
        }
        let mut span = b.start();
        if let Some(st) = status {
            span.set_status(st);
        }
        span_ref.extensions_mut().insert(Slot { ctx: span.ctx().cloned(), span: Some(span) });
    }

    fn on_record(&self, id: &Id, values: &Values<'_>, ctx: Context<'_, S>) {
        let Some(span_ref) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        values.record(&mut fields);
        let mut ext = span_ref.extensions_mut();
        let Some(slot) = ext.get_mut::<Slot>() else { return };
        slot.on_span(|s| fields.apply(s));
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, S>) {
        let Some(target) = ctx
            .span(follows)
            .and_then(|f| f.extensions().get::<Slot>().and_then(|s| s.ctx.clone()))
        else {
            return;
        };
        let Some(span_ref) = ctx.span(id) else { return };
        let mut ext = span_ref.extensions_mut();
        let Some(slot) = ext.get_mut::<Slot>() else { return };
        slot.on_span(|s| s.add_link(target.to_span_context(), Vec::new()));
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span_ref) = ctx.span(id) else { return };
        let mut ext = span_ref.extensions_mut();
        let Some(slot) = ext.get_mut::<Slot>() else { return };
        // A span entered on two threads at once records on the first; the second carries
        // its context only.
        let span = match slot.span.take() {
            Some(s) => s,
            None => slot.ctx.clone().map_or_else(Span::disabled, |c| Span(Inner::Context(c))),
        };
        context::push(span);
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span_ref) = ctx.span(id) else { return };
        let mut ext = span_ref.extensions_mut();
        let Some(slot) = ext.get_mut::<Slot>() else { return };
        let span = context::pop();
        if slot.span.is_none() && span.is_recording() {
            slot.span = Some(span);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span_ref) = ctx.span(&id) else { return };
        let slot = span_ref.extensions_mut().remove::<Slot>();
        drop(slot);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if suppressed() {
            return;
        }
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let name = fields.message.take().unwrap_or_else(|| meta.name().to_string());
        let mut attrs = fields.attrs;
        attrs.push(KeyValue::new("level", meta.level().as_str()));
        attrs.push(KeyValue::new("target", meta.target().to_string()));
        let error = *meta.level() == Level::ERROR;
        let add = move |s: &mut Span| {
            if error {
                s.set_status(Status::Error(name.clone().into()));
            }
            s.add_event(name, attrs);
        };
        if let Some(parent) = event.parent() {
            if let Some(p) = ctx.span(parent)
                && let Some(Slot { span: Some(s), .. }) = p.extensions_mut().get_mut::<Slot>()
            {
                add(s);
            }
            return;
        }
        context::with_current_span(add);
    }
}

/// Log lines as `<time> <LEVEL> <target>: <message> <fields> trace_id=… span_id=…`, the ids
/// being those of the span active when the line was emitted.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogFormat;

impl<S, N> FormatEvent<S, N> for LogFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        SystemTime.format_time(&mut w)?;
        let meta = event.metadata();
        write!(w, " {:>5} {}: ", meta.level(), meta.target())?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        if let Some(c) = context::current_ctx() {
            write!(w, " trace_id={} span_id={}", c.trace_id.to_hex(), c.span_id.to_hex())?;
        }
        writeln!(w)
    }
}
