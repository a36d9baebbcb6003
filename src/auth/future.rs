use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use super::service::admit;
use super::{Admission, AuthConfig, Wait};
use crate::body::{ResponseBody, take_error};
use crate::error::AuthError;

pin_project! {
    /// The response future of [`AuthService`](super::AuthService).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Called { #[pin] future: S::Future },
        Waiting {
            wait: Wait,
            pending: Option<(S, Request<B>)>,
            config: Arc<AuthConfig>,
        },
        Failed { response: Option<Response<Bytes>> },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn called(future: S::Future) -> Self {
        Self {
            state: State::Called { future },
        }
    }

    pub(crate) fn failed(response: Response<Bytes>) -> Self {
        Self {
            state: State::Failed {
                response: Some(response),
            },
        }
    }

    pub(crate) fn waiting(
        wait: Wait,
        service: S,
        request: Request<B>,
        config: Arc<AuthConfig>,
    ) -> Self {
        Self {
            state: State::Waiting {
                wait,
                pending: Some((service, request)),
                config,
            },
        }
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().state.project() {
                StateProj::Called { future } => {
                    return future.poll(cx).map_ok(|res| res.map(ResponseBody::new));
                }
                StateProj::Waiting {
                    wait,
                    pending,
                    config,
                } => {
                    let result = match wait {
                        Wait::Key(lookup) => {
                            let result = ready!(Pin::new(lookup).poll(cx));
                            config.finish_key(result).map(Admission::Key)
                        }
                        #[cfg(feature = "jwt")]
                        Wait::Token(refetch, token) => match ready!(Pin::new(refetch).poll(cx)) {
                            crate::jwt::Refetch::Fetched => config.recheck_token(token),
                            _ => Err(AuthError::Unavailable(crate::error::Unavailable::JwtKeys)),
                        },
                    };
                    let (mut service, mut req) = pending
                        .take()
                        .expect("ResponseFuture polled after completion");
                    match result {
                        Ok(admission) => {
                            admit(&mut req, admission, config);
                            let future = service.call(req);
                            self.as_mut().project().state.set(State::Called { future });
                        }
                        Err(error) => {
                            tracing::debug!(target: "keygate", outcome = error.kind(), "rejected");
                            let response = config.rendering.render(&error, &req);
                            return Poll::Ready(Ok(response.map(ResponseBody::full)));
                        }
                    }
                }
                StateProj::Failed { response } => {
                    return Poll::Ready(Ok(take_error(response)));
                }
            }
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
