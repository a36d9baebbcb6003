//! [`ResponseBody`]: the inner service's body, or the body of a response keygate made itself.
//!
//! The inner service's body can carry a guard (a concurrency [`Permit`]): the request counts
//! as in flight until its response body ends or is dropped, whichever comes first.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::ratelimit::Permit;

pin_project! {
    /// The response body of keygate's services: the inner service's body, passed through
    /// untouched, or the full body of an error response.
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
        guard: Option<Permit>,
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
    /// Wraps the inner service's body, holding `guard` (if any) until the body ends or is
    /// dropped.
    pub(crate) fn with_guard(body: B, guard: Option<Permit>) -> Self {
        Self {
            kind: Kind::Inner { body },
            guard,
        }
    }

    /// A complete body of these bytes.
    pub(crate) fn full(data: Bytes) -> Self {
        let data = if data.is_empty() { None } else { Some(data) };
        Self {
            kind: Kind::Full { data },
            guard: None,
        }
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
                    this.guard.take();
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
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
        ResponseBody::with_guard(body, Some(limiter.acquire("caller", 1).unwrap()))
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
        let mut body = ResponseBody::with_guard(Frames::data(&["a"], true), None);
        assert_eq!(next(&mut body).unwrap().unwrap().into_data().unwrap(), "a");
        assert!(next(&mut body).is_none());

        let mut full = ResponseBody::<Frames>::full(Bytes::from_static(b"problem"));
        assert!(full.guard.is_none());
        assert_eq!(
            next(&mut full).unwrap().unwrap().into_data().unwrap(),
            "problem"
        );
        assert!(full.is_end_stream());
    }
}
