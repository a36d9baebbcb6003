//! The one response future behind every layer: call the inner service now, answer with a
//! response of our own, or wait for a backend first and then do one of the two.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use crate::body::LayerBody;
use crate::ratelimit::Permit;

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

/// Something done to the inner service's response on its way out (rate-limit headers), and
/// what the response body holds until it ends (a concurrency permit).
///
/// A `Then` lives in the response future from the moment the request goes to the inner service
/// until its response exists, so whatever it holds is dropped with it when the inner service
/// fails or the future is dropped first.
pub(crate) trait Then {
    /// The guard the response body holds until it ends or is dropped; taken before
    /// [`apply`](Self::apply).
    fn guard(&mut self) -> Option<Permit> {
        None
    }

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
    ResB: LayerBody,
{
    type Output = Result<Response<ResB>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                DeferredProj::Called { future, then } => {
                    let result = ready!(future.poll(cx));
                    // Taken out first so that an error releases what it holds now, not when
                    // the future is dropped.
                    let mut then = then.take();
                    let mut response = result?;
                    let guard = then.as_mut().and_then(Then::guard);
                    if let Some(then) = then {
                        then.apply(&mut response);
                    }
                    if let Some(permit) = guard {
                        response = response.map(|body| body.hold(permit));
                    }
                    return Poll::Ready(Ok(response));
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
                        Err(response) => return Poll::Ready(Ok(response.map(ResB::full))),
                    }
                }
                DeferredProj::Answered { response } => {
                    let response = response.take().expect(POLLED_AFTER_COMPLETION);
                    return Poll::Ready(Ok(response.map(ResB::full)));
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
            ResB: crate::LayerBody,
        {
            type Output = Result<http::Response<ResB>, S::Error>;

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

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use http::HeaderValue;
    use http_body::Body;
    use http_body_util::Full;

    use super::*;
    use crate::body::ResponseBody;
    use crate::ratelimit::ConcurrencyLimiter;

    /// A streaming body: `Full` itself is complete when made, and drops a permit at once.
    type Streamed = ResponseBody<Full<Bytes>>;
    type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Streamed>, &'static str>>>>;

    /// An inner service that answers, fails, or never answers.
    #[derive(Clone, Copy)]
    enum Inner {
        Answers,
        Fails,
        Hangs,
    }

    impl Service<Request<()>> for Inner {
        type Response = Response<Streamed>;
        type Error = &'static str;
        type Future = BoxFuture;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), &'static str>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> BoxFuture {
            match *self {
                Self::Answers => Box::pin(std::future::ready(Ok(Response::new(
                    ResponseBody::new(Full::new(Bytes::from_static(b"hello"))),
                )))),
                Self::Fails => Box::pin(std::future::ready(Err("inner failed"))),
                Self::Hangs => Box::pin(std::future::pending()),
            }
        }
    }

    /// A `Then` that hands its permit to the body and marks the response.
    struct Guarded(Option<Permit>);

    impl Then for Guarded {
        fn guard(&mut self) -> Option<Permit> {
            self.0.take()
        }

        fn apply<T>(self, response: &mut Response<T>) {
            response
                .headers_mut()
                .insert("x-applied", HeaderValue::from_static("1"));
        }
    }

    /// A wait that is pending once, then lets the request through with its permit.
    struct HoldsPermit {
        permit: Option<Permit>,
        polled: bool,
    }

    impl<B> Wait<B> for HoldsPermit {
        type Then = Guarded;

        fn poll_wait(
            &mut self,
            cx: &mut Context<'_>,
            _: &mut Request<B>,
        ) -> Poll<Result<Guarded, Response<Bytes>>> {
            if !std::mem::replace(&mut self.polled, true) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Ok(Guarded(self.permit.take())))
        }
    }

    type Deferral = Deferred<Inner, (), HoldsPermit>;

    fn poll(future: Pin<&mut Deferral>) -> Poll<<Deferral as Future>::Output> {
        Future::poll(future, &mut Context::from_waker(Waker::noop()))
    }

    fn called(mut inner: Inner, limiter: &ConcurrencyLimiter) -> Deferral {
        let permit = limiter.acquire("caller", 1).expect("nothing in flight");
        Deferred::called(inner.call(Request::new(())), Guarded(Some(permit)))
    }

    fn frame<B: Body + Unpin>(body: &mut B) -> Option<Result<http_body::Frame<B::Data>, B::Error>> {
        match Pin::new(body).poll_frame(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(frame) => frame,
            Poll::Pending => panic!("test bodies are never pending"),
        }
    }

    #[test]
    fn the_body_holds_the_permit_until_its_end() {
        let limiter = ConcurrencyLimiter::new();
        let mut future = Box::pin(called(Inner::Answers, &limiter));
        let Poll::Ready(Ok(response)) = poll(future.as_mut()) else {
            panic!("the inner service answers at once");
        };
        assert_eq!(response.headers()["x-applied"], "1", "the Then was applied");
        drop(future);
        assert_eq!(
            limiter.in_flight("caller"),
            1,
            "the response is not over yet"
        );
        assert!(limiter.acquire("caller", 1).is_none());

        let mut body = response.into_body();
        assert_eq!(
            frame(&mut body).unwrap().unwrap().into_data().unwrap(),
            "hello"
        );
        assert_eq!(
            limiter.in_flight("caller"),
            0,
            "released with the body's last frame"
        );
        assert!(limiter.is_empty());
        assert!(limiter.acquire("caller", 1).is_some());
    }

    #[test]
    fn a_body_dropped_before_its_end_releases_the_permit() {
        let limiter = ConcurrencyLimiter::new();
        let mut future = std::pin::pin!(called(Inner::Answers, &limiter));
        let Poll::Ready(Ok(response)) = poll(future.as_mut()) else {
            panic!("the inner service answers at once");
        };
        assert_eq!(limiter.in_flight("caller"), 1);
        // The client went away before reading the body.
        drop(response);
        assert_eq!(limiter.in_flight("caller"), 0);
        assert!(limiter.is_empty());
    }

    #[test]
    fn a_future_dropped_before_the_response_releases_the_permit() {
        let limiter = ConcurrencyLimiter::new();
        let mut future = Box::pin(called(Inner::Hangs, &limiter));
        assert!(poll(future.as_mut()).is_pending());
        assert_eq!(
            limiter.in_flight("caller"),
            1,
            "in flight while the inner service works"
        );
        drop(future);
        assert_eq!(limiter.in_flight("caller"), 0);
        assert!(limiter.is_empty());
    }

    #[test]
    fn an_inner_error_releases_the_permit_at_once() {
        let limiter = ConcurrencyLimiter::new();
        let mut future = std::pin::pin!(called(Inner::Fails, &limiter));
        let Poll::Ready(Err(error)) = poll(future.as_mut()) else {
            panic!("the inner service fails at once");
        };
        assert_eq!(error, "inner failed");
        assert_eq!(
            limiter.in_flight("caller"),
            0,
            "released before the future is dropped"
        );
        assert!(limiter.is_empty());
    }

    #[test]
    fn a_permit_taken_before_a_wait_reaches_the_body() {
        let limiter = ConcurrencyLimiter::new();
        let mut inner = Inner::Answers;
        let wait = HoldsPermit {
            permit: limiter.acquire("caller", 1),
            polled: false,
        };
        let mut future = Box::pin(Deferred::waiting(wait, &mut inner, Request::new(())));
        assert!(poll(future.as_mut()).is_pending());
        assert_eq!(limiter.in_flight("caller"), 1);
        let Poll::Ready(Ok(response)) = poll(future.as_mut()) else {
            panic!("the wait and the inner service are done");
        };
        drop(future);
        assert_eq!(limiter.in_flight("caller"), 1);
        drop(response.into_body());
        assert!(limiter.is_empty());
    }

    #[test]
    fn a_future_dropped_while_waiting_releases_the_permit() {
        let limiter = ConcurrencyLimiter::new();
        let mut inner = Inner::Answers;
        let wait = HoldsPermit {
            permit: limiter.acquire("caller", 1),
            polled: false,
        };
        let mut future = Box::pin(Deferred::waiting(wait, &mut inner, Request::new(())));
        assert!(poll(future.as_mut()).is_pending());
        assert_eq!(limiter.in_flight("caller"), 1);
        drop(future);
        assert!(limiter.is_empty());
    }

    #[test]
    fn responses_of_our_own_hold_no_permit() {
        let answered: Deferral = Deferred::answered(Response::new(Bytes::from_static(b"denied")));
        let mut answered = std::pin::pin!(answered);
        let Poll::Ready(Ok(response)) = poll(answered.as_mut()) else {
            panic!("answered at once");
        };
        let mut body = response.into_body();
        assert_eq!(
            frame(&mut body).unwrap().unwrap().into_data().unwrap(),
            "denied"
        );
    }

    #[test]
    fn a_then_without_a_guard_leaves_the_body_plain() {
        struct Plain;
        impl Then for Plain {
            fn apply<T>(self, _: &mut Response<T>) {}
        }
        assert!(Plain.guard().is_none());
    }
}
