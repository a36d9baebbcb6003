//! The response bodies of keygate's layers: [`LayerBody`], the inner service's own body type
//! (what an axum or tonic service already answers with), and [`ResponseBody`], an adapter for
//! any other body.
//!
//! A layer passes the inner service's body through untouched and makes its own responses (a
//! refusal's problem+json) in the same type, so that axum and tonic take the response as it is:
//! axum boxes every response body that is not its own `Body`, once per request.
//!
//! The inner service's body can carry a guard (a concurrency [`Permit`]): the request counts
//! as in flight until its response body ends or is dropped, whichever comes first.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use smallvec::SmallVec;

use crate::ratelimit::Permit;

/// A response body type keygate's layers can answer with: the body type of the inner service,
/// which the layers pass through untouched and make their own responses in.
///
/// Implemented for axum's `Body` (feature `axum`), tonic's `Body` (feature `tonic`),
/// `http_body_util`'s `Full<Bytes>`, `BoxBody` and `UnsyncBoxBody`, `String`, and
/// [`ResponseBody<B>`], which adapts any other body: map the inner service's response body
/// with [`ResponseBody::new`] to use one of your own.
///
/// ```
/// use std::convert::Infallible;
///
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Empty;
/// use keygate::{ResponseBody, prelude::*};
/// use tower::{ServiceBuilder, ServiceExt as _};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // A body type keygate does not know: wrap it.
/// let service = ServiceBuilder::new()
///     .layer(AuthLayer::new(MemoryStore::new()))
///     .map_response(|res: Response<Empty<bytes::Bytes>>| res.map(ResponseBody::new))
///     .service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(Empty::new())) });
/// let res = service.oneshot(Request::new(())).await?;
/// assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
/// # Ok(())
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "keygate's layers cannot answer with a response body of type `{Self}`",
    label = "the inner service's response body",
    note = "wrap the inner service's response body in `keygate::ResponseBody` (`ResponseBody::new`), or answer with axum's or tonic's `Body`, `Full<Bytes>`, `BoxBody`, `UnsyncBoxBody` or `String`"
)]
pub trait LayerBody: Body<Data = Bytes> + Sized {
    /// A complete body of `bytes`: the body of a response the layer makes itself.
    fn full(bytes: Bytes) -> Self;

    /// This body, holding `permit` until it ends (its last frame, trailers, an error, or no
    /// more frames) or is dropped. A body that is complete when made (`Full`, `String`) drops
    /// it at once: the request's work is done by then.
    fn hold(self, permit: Permit) -> Self;
}

pin_project! {
    /// A response body of keygate's layers for an inner service whose body type is not a
    /// [`LayerBody`]: the inner body, passed through untouched, or the full body of a response
    /// a layer made itself.
    ///
    /// Its error type is the inner body's, so wrapping adds no boxing.
    ///
    /// When a concurrency limit admitted the request, the body holds its place until the body
    /// ends (its last frame, a trailers frame, an error, or no more frames) or is dropped (the
    /// client went away).
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
        guard: SmallVec<[Permit; 1]>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps an inner service's body: keygate's layers pass it through and make their own
    /// responses in this type.
    pub fn new(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
            guard: SmallVec::new(),
        }
    }

    /// A complete body of these bytes.
    pub(crate) fn full(data: Bytes) -> Self {
        let data = if data.is_empty() { None } else { Some(data) };
        Self {
            kind: Kind::Full { data },
            guard: SmallVec::new(),
        }
    }
}

impl<B> LayerBody for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    fn full(bytes: Bytes) -> Self {
        Self::full(bytes)
    }

    fn hold(mut self, permit: Permit) -> Self {
        // A body that has ended already (a complete one) has nothing left to wait for.
        if !self.is_end_stream() {
            self.guard.push(permit);
        }
        self
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Inner { mut body } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                // The response is over once the body says so: its last frame, trailers (which
                // end a body), an error, or no more frames. A server that stops polling after
                // the last frame may hold the body a while longer; its place is free already.
                let ended = match &frame {
                    Some(Ok(frame)) => frame.is_trailers() || body.is_end_stream(),
                    Some(Err(_)) | None => true,
                };
                if ended {
                    this.guard.clear();
                }
                Poll::Ready(frame)
            }
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl LayerBody for http_body_util::Full<Bytes> {
    fn full(bytes: Bytes) -> Self {
        Self::new(bytes)
    }

    fn hold(self, permit: Permit) -> Self {
        drop(permit);
        self
    }
}

impl LayerBody for String {
    fn full(bytes: Bytes) -> Self {
        // The layers' own bodies are JSON or empty; a custom responder's bytes that are not
        // UTF-8 are replaced rather than lost.
        match String::from_utf8(Vec::from(bytes)) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    fn hold(self, permit: Permit) -> Self {
        drop(permit);
        self
    }
}

/// The boxed bodies of `http_body_util`: `$boxed` is the `BodyExt` method that makes one.
macro_rules! box_body_impl {
    ($body:ident, $boxed:ident) => {
        impl<E: 'static> LayerBody for http_body_util::combinators::$body<Bytes, E> {
            fn full(bytes: Bytes) -> Self {
                use http_body_util::BodyExt as _;
                http_body_util::Full::new(bytes)
                    .map_err(|never| match never {})
                    .$boxed()
            }

            fn hold(self, permit: Permit) -> Self {
                use http_body_util::BodyExt as _;
                if self.is_end_stream() {
                    // Nothing left to wait for: the permit is dropped here.
                    return self;
                }
                ResponseBody::new(self).hold(permit).$boxed()
            }
        }
    };
}

box_body_impl!(UnsyncBoxBody, boxed_unsync);
box_body_impl!(BoxBody, boxed);

#[cfg(feature = "axum")]
impl LayerBody for axum_core::body::Body {
    fn full(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            // A body of nothing boxes nothing.
            Self::empty()
        } else {
            Self::from(bytes)
        }
    }

    fn hold(self, permit: Permit) -> Self {
        if self.is_end_stream() {
            // Nothing left to wait for: the permit is dropped here.
            return self;
        }
        Self::new(ResponseBody::new(self).hold(permit))
    }
}

#[cfg(feature = "tonic")]
impl LayerBody for tonic::body::Body {
    fn full(bytes: Bytes) -> Self {
        // An empty body (a gRPC refusal is all headers) is tonic's unboxed empty one.
        Self::new(http_body_util::Full::new(bytes))
    }

    fn hold(self, permit: Permit) -> Self {
        if self.is_end_stream() {
            // Nothing left to wait for: the permit is dropped here.
            return self;
        }
        Self::new(ResponseBody::new(self).hold(permit))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::fmt;
    use std::task::Waker;

    use http::HeaderMap;

    use super::*;
    use crate::ratelimit::ConcurrencyLimiter;

    /// A body of given frames that reports its end only if `reports_end`.
    struct Frames {
        frames: VecDeque<Result<Frame<Bytes>, &'static str>>,
        reports_end: bool,
    }

    impl Frames {
        fn new(
            frames: impl IntoIterator<Item = Result<Frame<Bytes>, &'static str>>,
            reports_end: bool,
        ) -> Self {
            Self {
                frames: frames.into_iter().collect(),
                reports_end,
            }
        }

        fn data(chunks: &[&'static str], reports_end: bool) -> Self {
            Self::new(
                chunks
                    .iter()
                    .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))),
                reports_end,
            )
        }
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            Poll::Ready(self.get_mut().frames.pop_front())
        }

        fn is_end_stream(&self) -> bool {
            self.reports_end && self.frames.is_empty()
        }
    }

    /// Polls `body` once; none of the test bodies is ever pending.
    fn next<B: Body + Unpin>(body: &mut B) -> Option<Result<Frame<B::Data>, B::Error>> {
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(body).poll_frame(&mut cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => panic!("test bodies are never pending"),
        }
    }

    fn guarded(limiter: &ConcurrencyLimiter, body: Frames) -> ResponseBody<Frames> {
        ResponseBody::new(body).hold(limiter.acquire("caller", 1).unwrap())
    }

    #[test]
    fn released_when_no_frame_is_left() {
        let limiter = ConcurrencyLimiter::new();
        let mut body = guarded(&limiter, Frames::data(&["a", "b"], false));
        assert!(next(&mut body).is_some());
        assert!(next(&mut body).is_some());
        assert_eq!(
            limiter.in_flight("caller"),
            1,
            "the body has not said it ended"
        );
        assert!(next(&mut body).is_none());
        assert_eq!(limiter.in_flight("caller"), 0);
        assert!(limiter.is_empty());
        drop(body);
        assert!(limiter.is_empty());
    }

    #[test]
    fn released_with_the_last_frame_when_the_body_reports_its_end() {
        let limiter = ConcurrencyLimiter::new();
        let mut body = guarded(&limiter, Frames::data(&["a", "b"], true));
        assert!(next(&mut body).is_some());
        assert_eq!(limiter.in_flight("caller"), 1);
        let last = next(&mut body).unwrap().unwrap();
        assert_eq!(last.into_data().unwrap(), "b");
        assert_eq!(
            limiter.in_flight("caller"),
            0,
            "released before anyone polls again"
        );
        assert!(body.is_end_stream());
    }

    #[test]
    fn released_with_trailers() {
        let limiter = ConcurrencyLimiter::new();
        let frames = [
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Ok(Frame::trailers(HeaderMap::new())),
        ];
        let mut body = guarded(&limiter, Frames::new(frames, false));
        assert!(next(&mut body).unwrap().unwrap().is_data());
        assert_eq!(limiter.in_flight("caller"), 1);
        assert!(next(&mut body).unwrap().unwrap().is_trailers());
        assert_eq!(limiter.in_flight("caller"), 0);
    }

    #[test]
    fn released_on_a_body_error() {
        let limiter = ConcurrencyLimiter::new();
        let mut body = guarded(&limiter, Frames::new([Err("broken")], false));
        assert_eq!(next(&mut body).unwrap().unwrap_err(), "broken");
        assert_eq!(limiter.in_flight("caller"), 0);
    }

    #[test]
    fn released_when_dropped_before_its_end() {
        // A client that disconnects mid-response: the server drops the body unfinished.
        let limiter = ConcurrencyLimiter::new();
        let mut body = guarded(&limiter, Frames::data(&["a", "b", "c"], true));
        assert!(next(&mut body).is_some());
        assert_eq!(limiter.in_flight("caller"), 1);
        drop(body);
        assert_eq!(limiter.in_flight("caller"), 0);
        assert!(limiter.is_empty());
    }

    #[test]
    fn bodies_without_a_guard_pass_through() {
        let mut body = ResponseBody::new(Frames::data(&["a"], true));
        assert_eq!(next(&mut body).unwrap().unwrap().into_data().unwrap(), "a");
        assert!(next(&mut body).is_none());

        let mut full = ResponseBody::<Frames>::full(Bytes::from_static(b"problem"));
        assert!(full.guard.is_empty());
        assert_eq!(
            next(&mut full).unwrap().unwrap().into_data().unwrap(),
            "problem"
        );
        assert!(full.is_end_stream());
    }

    /// Reads `body` to its end and returns its data.
    fn collect<B: Body<Data = Bytes> + Unpin>(mut body: B) -> Vec<u8>
    where
        B::Error: fmt::Debug,
    {
        let mut out = Vec::new();
        while let Some(frame) = next(&mut body) {
            if let Ok(data) = frame.unwrap().into_data() {
                out.extend_from_slice(&data);
            }
        }
        out
    }

    /// Checks that `T::full` makes a complete body of the bytes, and of nothing.
    fn makes_full_bodies<T: LayerBody + Unpin>()
    where
        T::Error: fmt::Debug,
    {
        let body = T::full(Bytes::from_static(b"{\"status\":401}"));
        assert_eq!(body.size_hint().exact(), Some(14));
        assert_eq!(collect(body), b"{\"status\":401}");
        let empty = T::full(Bytes::new());
        assert!(empty.is_end_stream());
        assert!(collect(empty).is_empty());
    }

    /// Checks that a streaming body of type `T` holds its permit until its end, and that an
    /// ended one drops it at once.
    fn holds_until_the_end<T: LayerBody + Unpin>(wrap: impl Fn(Frames) -> T)
    where
        T::Error: fmt::Debug,
    {
        let limiter = ConcurrencyLimiter::new();
        let permit = limiter.acquire("caller", 1).unwrap();
        let mut body = wrap(Frames::data(&["a", "b"], false)).hold(permit);
        assert_eq!(next(&mut body).unwrap().unwrap().into_data().unwrap(), "a");
        assert_eq!(limiter.in_flight("caller"), 1, "the response is not over");
        assert!(limiter.acquire("caller", 1).is_none());
        assert_eq!(collect(body), b"b");
        assert!(limiter.is_empty(), "released at the end of the body");

        let permit = limiter.acquire("caller", 1).unwrap();
        let body = wrap(Frames::data(&["a", "b"], false)).hold(permit);
        drop(body);
        assert!(limiter.is_empty(), "released when the body is dropped");

        let permit = limiter.acquire("caller", 1).unwrap();
        let ended = wrap(Frames::data(&[], true)).hold(permit);
        assert!(limiter.is_empty(), "an ended body has nothing to wait for");
        assert!(collect(ended).is_empty());
    }

    #[test]
    fn response_body_makes_full_bodies_and_holds_streams() {
        makes_full_bodies::<ResponseBody<Frames>>();
        holds_until_the_end(ResponseBody::new);
    }

    #[test]
    fn nested_holds_are_all_kept_to_the_end() {
        let limiter = ConcurrencyLimiter::new();
        let outer = limiter.acquire("outer", 1).unwrap();
        let inner = limiter.acquire("inner", 1).unwrap();
        let mut body = ResponseBody::new(Frames::data(&["a", "b"], false))
            .hold(inner)
            .hold(outer);
        assert!(next(&mut body).is_some());
        assert_eq!(limiter.in_flight("inner"), 1);
        assert_eq!(limiter.in_flight("outer"), 1);
        assert_eq!(collect(body), b"b");
        assert!(limiter.is_empty());
    }

    #[test]
    fn complete_bodies_drop_the_permit_at_once() {
        makes_full_bodies::<http_body_util::Full<Bytes>>();
        makes_full_bodies::<String>();
        let limiter = ConcurrencyLimiter::new();
        let full = http_body_util::Full::new(Bytes::from_static(b"done"))
            .hold(limiter.acquire("caller", 1).unwrap());
        assert!(limiter.is_empty());
        assert_eq!(collect(full), b"done");
        let text = String::from("done").hold(limiter.acquire("caller", 1).unwrap());
        assert!(limiter.is_empty());
        assert_eq!(text, "done");
    }

    #[test]
    fn strings_keep_bytes_that_are_not_utf8_as_replacements() {
        assert_eq!(String::full(Bytes::from_static(b"ok \xff")), "ok \u{fffd}");
    }

    #[test]
    fn boxed_bodies_make_full_bodies_and_hold_streams() {
        use http_body_util::BodyExt as _;
        use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
        makes_full_bodies::<UnsyncBoxBody<Bytes, &'static str>>();
        makes_full_bodies::<BoxBody<Bytes, &'static str>>();
        holds_until_the_end(|frames| frames.boxed_unsync());
        holds_until_the_end(|frames| frames.boxed());
    }

    #[cfg(feature = "axum")]
    #[test]
    fn axum_bodies_make_full_bodies_and_hold_streams() {
        makes_full_bodies::<axum_core::body::Body>();
        holds_until_the_end(axum_core::body::Body::new);
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn tonic_bodies_make_full_bodies_and_hold_streams() {
        makes_full_bodies::<tonic::body::Body>();
        holds_until_the_end(tonic::body::Body::new);
    }
}
