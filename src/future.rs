//! The one response future behind every layer: call the inner service now, answer with a
//! response of our own, or wait for a backend first and then do one of the two.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use crate::body::ResponseBody;

const POLLED_AFTER_COMPLETION: &str = "ResponseFuture polled after completion";

/// What a deferred request waits for (a key lookup, a limiter's answer), and what it does with
/// the answer: let the request through (possibly changed, e.g. with a `Principal` inserted) or
/// answer it.
pub(crate) trait Wait<B>: Unpin {
    /// Done to the inner service's response of a request that was let through.
    type Then: Then;

    /// Polls what the request waits for. `Ok` lets `request` through; `Err` answers it.
    fn poll_wait(
        &mut self,
        cx: &mut Context<'_>,
        request: &mut Request<B>,
    ) -> Poll<Result<Self::Then, Response<Bytes>>>;
}

/// Something done to the inner service's response on its way out (rate-limit headers).
pub(crate) trait Then {
    fn apply<T>(self, response: &mut Response<T>);
}

impl Then for () {
    fn apply<T>(self, _: &mut Response<T>) {}
}

/// The wait of a layer that never waits.
pub(crate) enum NoWait {}

impl<B> Wait<B> for NoWait {
    type Then = ();

    fn poll_wait(
        &mut self,
        _: &mut Context<'_>,
        _: &mut Request<B>,
    ) -> Poll<Result<(), Response<Bytes>>> {
        match *self {}
    }
}

pin_project! {
    /// The state of a layer's response future.
    #[project = DeferredProj]
    pub(crate) enum Deferred<S, B, W>
    where
        S: Service<Request<B>>,
        W: Wait<B>,
    {
        Called { #[pin] future: S::Future, then: Option<W::Then> },
        Waiting { wait: W, pending: Option<(S, Request<B>)> },
        Answered { response: Option<Response<Bytes>> },
    }
}

impl<S, B, W> Deferred<S, B, W>
where
    S: Service<Request<B>>,
    W: Wait<B>,
{
    /// The request went on to the inner service.
    pub(crate) fn called(future: S::Future, then: W::Then) -> Self {
        Self::Called {
            future,
            then: Some(then),
        }
    }

    /// The layer answered the request itself.
    pub(crate) fn answered(response: Response<Bytes>) -> Self {
        Self::Answered {
            response: Some(response),
        }
    }

    /// The request waits for `wait`. The service that was polled ready goes with it and a clone
    /// takes its place for the next `poll_ready` (the tower "clone dance").
    pub(crate) fn waiting(wait: W, inner: &mut S, request: Request<B>) -> Self
    where
        S: Clone,
    {
        let clone = inner.clone();
        let ready = std::mem::replace(inner, clone);
        Self::Waiting {
            wait,
            pending: Some((ready, request)),
        }
    }
}

impl<S, B, W, ResB> Future for Deferred<S, B, W>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    W: Wait<B>,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                DeferredProj::Called { future, then } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(then) = then.take() {
                        then.apply(&mut response);
                    }
                    return Poll::Ready(Ok(response.map(ResponseBody::new)));
                }
                DeferredProj::Waiting { wait, pending } => {
                    let (_, request) = pending.as_mut().expect(POLLED_AFTER_COMPLETION);
                    let outcome = ready!(wait.poll_wait(cx, request));
                    let (mut service, request) = pending.take().expect(POLLED_AFTER_COMPLETION);
                    match outcome {
                        Ok(then) => {
                            let future = service.call(request);
                            self.set(Self::called(future, then));
                        }
                        Err(response) => return Poll::Ready(Ok(response.map(ResponseBody::full))),
                    }
                }
                DeferredProj::Answered { response } => {
                    let response = response.take().expect(POLLED_AFTER_COMPLETION);
                    return Poll::Ready(Ok(response.map(ResponseBody::full)));
                }
            }
        }
    }
}

/// Defines a layer's public `ResponseFuture<S, B>` around [`Deferred`] with its `Wait` type.
macro_rules! define_response_future {
    ($service:literal, $wait:ty) => {
        pin_project_lite::pin_project! {
            #[doc = concat!("The response future of [`", $service, "`](super::", $service, ").")]
            pub struct ResponseFuture<S, B>
            where
                S: tower::Service<http::Request<B>>,
            {
                #[pin]
                inner: crate::future::Deferred<S, B, $wait>,
            }
        }

        impl<S, B> ResponseFuture<S, B>
        where
            S: tower::Service<http::Request<B>>,
        {
            pub(crate) fn new(inner: crate::future::Deferred<S, B, $wait>) -> Self {
                Self { inner }
            }
        }

        impl<S, B, ResB> std::future::Future for ResponseFuture<S, B>
        where
            S: tower::Service<http::Request<B>, Response = http::Response<ResB>>,
        {
            type Output = Result<http::Response<crate::ResponseBody<ResB>>, S::Error>;

            fn poll(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Self::Output> {
                self.project().inner.poll(cx)
            }
        }

        impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
        where
            S: tower::Service<http::Request<B>>,
        {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("ResponseFuture").finish_non_exhaustive()
            }
        }
    };
}

pub(crate) use define_response_future;
