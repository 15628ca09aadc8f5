//! What a span records: its context (shared with local children and injected into outgoing
//! requests), its attributes, events and status, and the finished record the exporter encodes.

use std::borrow::Cow;
use std::sync::Arc;

use super::clock;
use crate::propagation::baggage::Member;
use crate::propagation::{SpanContext, SpanId, TraceId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SpanKind {
    #[default]
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(Cow<'static, str>),
    I64(i64),
    F64(f64),
    Bool(bool),
}

macro_rules! value_from {
    ($($t:ty => $v:ident($conv:expr)),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from(x: $t) -> Value {
                Value::$v($conv(x))
            }
        })*
    };
}
value_from!(
    &'static str => Str(Cow::Borrowed),
    String => Str(Cow::Owned),
    Cow<'static, str> => Str(std::convert::identity),
    i64 => I64(std::convert::identity),
    i32 => I64(i64::from),
    u32 => I64(i64::from),
    u16 => I64(i64::from),
    f64 => F64(std::convert::identity),
    bool => Bool(std::convert::identity),
);

impl From<usize> for Value {
    fn from(x: usize) -> Value {
        Value::I64(i64::try_from(x).unwrap_or(i64::MAX))
    }
}

impl From<u64> for Value {
    fn from(x: u64) -> Value {
        Value::I64(i64::try_from(x).unwrap_or(i64::MAX))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct KeyValue {
    pub key: Cow<'static, str>,
    pub value: Value,
}

impl KeyValue {
    pub fn new(key: impl Into<Cow<'static, str>>, value: impl Into<Value>) -> KeyValue {
        KeyValue { key: key.into(), value: value.into() }
    }
}

#[derive(Clone, Debug, PartialEq, Default)]
pub enum Status {
    #[default]
    Unset,
    Ok,
    Error(Cow<'static, str>),
}

/// A link to another span (of this or another trace): a batch job linking the requests it
/// serves, a consumer linking the producer, a `tracing` span's `follows_from`.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    pub context: SpanContext,
    pub attributes: Vec<KeyValue>,
}

impl Link {
    pub fn new(context: SpanContext) -> Link {
        Link { context, attributes: Vec::new() }
    }

    pub fn with_attributes(context: SpanContext, attributes: Vec<KeyValue>) -> Link {
        Link { context, attributes }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub name: Cow<'static, str>,
    pub time: clock::Instant,
    pub attributes: Vec<KeyValue>,
}

/// What a span shares with its local children and injects into outgoing requests.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
    pub trace_state: Option<Arc<Vec<(String, String)>>>,
    pub baggage: Option<Arc<Vec<Member>>>,
    /// With profiling on: the nearest ancestor-or-self span that carries
    /// `pyroscope.profile.id`, whose id labels this span's CPU samples.
    pub profile_scope: Option<Scope>,
}

impl Ctx {
    pub fn to_span_context(&self) -> SpanContext {
        SpanContext {
            trace_id: self.trace_id,
            span_id: self.span_id,
            sampled: self.sampled,
            debug: false,
            trace_state: self.trace_state.as_deref().cloned().unwrap_or_default(),
        }
    }
}

/// A finished or running span's data, as exported.
#[derive(Debug)]
pub(crate) struct Record {
    pub ctx: Ctx,
    pub parent: Option<SpanId>,
    pub remote_parent: bool,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub start: clock::Instant,
    pub end: clock::Instant,
    pub attributes: Vec<KeyValue>,
    /// What most spans never have, out of line so records stay small: a record is moved on
    /// every enter, exit and finish.
    pub extra: Option<Box<Extra>>,
}

#[derive(Debug, Default)]
pub(crate) struct Extra {
    pub events: Vec<Event>,
    pub links: Vec<Link>,
    pub status: Status,
    pub dropped_attributes: u32,
    pub dropped_events: u32,
    pub dropped_links: u32,
}

impl Record {
    pub fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    pub fn status(&self) -> &Status {
        static UNSET: Status = Status::Unset;
        self.extra.as_ref().map_or(&UNSET, |e| &e.status)
    }
}

/// A profile scope: the span whose id labels the samples of its subtree (up to the next
/// scope). Carried in every span's context, so children started on other threads or tasks
/// still know it.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "profiling"), allow(dead_code))]
pub(crate) struct Scope {
    pub id: SpanId,
    pub name: Arc<str>,
}
