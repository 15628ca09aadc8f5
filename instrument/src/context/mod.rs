//! The active span, for code outside the span API: reading its context, running code on it,
//! and futures that carry a span across `.await`s and tokio workers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::span::Span;

pub use crate::span::context::{current_context, with_current_span};

pin_project_lite::pin_project! {
    /// A future that runs with its span active on every poll; the span ends when the future
    /// completes (or is dropped).
    pub struct Instrumented<F> {
        #[pin]
        fut: F,
        span: Span,
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = {
            let _entered = this.span.enter();
            this.fut.poll(cx)
        };
        if out.is_ready() {
            drop(std::mem::take(this.span));
        }
        out
    }
}

pub trait FutureExt: Future + Sized {
    /// Runs this future inside `span`.
    fn in_span(self, span: Span) -> Instrumented<Self> {
        Instrumented { fut: self, span }
    }
}

impl<F: Future> FutureExt for F {}
