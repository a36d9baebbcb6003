//! [`MaybeReady`]: a future whose answer is often known at once.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The answer of a backend call: known now (no allocation, no task switch — an in-memory
/// store or limiter) or to be waited for (a boxed future — a database, Redis).
///
/// Backends return [`MaybeReady::ready`] or [`MaybeReady::pending`]; keygate's layers take a
/// ready answer on the spot and only park the request when they must.
#[must_use = "it does nothing unless awaited"]
pub struct MaybeReady<T>(Repr<T>);

enum Repr<T> {
    Ready(Option<T>),
    Pending(Pin<Box<dyn Future<Output = T> + Send>>),
}

impl<T> MaybeReady<T> {
    /// An answer known now.
    pub fn ready(value: T) -> Self {
        Self(Repr::Ready(Some(value)))
    }

    /// An answer that needs waiting for.
    pub fn pending<F>(future: F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        Self(Repr::Pending(Box::pin(future)))
    }

    /// Takes the answer if it is known without waiting.
    pub fn take_ready(&mut self) -> Option<T> {
        match &mut self.0 {
            Repr::Ready(v) => v.take(),
            Repr::Pending(_) => None,
        }
    }
}

impl<T> Future for MaybeReady<T> {
    type Output = T;

    /// # Panics
    ///
    /// If polled again after it returned its answer.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.0 {
            Repr::Ready(v) => Poll::Ready(v.take().expect("MaybeReady polled after completion")),
            Repr::Pending(f) => f.as_mut().poll(cx),
        }
    }
}

impl<T> Unpin for MaybeReady<T> {}

impl<T> fmt::Debug for MaybeReady<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Ready(_) => f.write_str("MaybeReady::Ready"),
            Repr::Pending(_) => f.write_str("MaybeReady::Pending"),
        }
    }
}
