use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};

use super::config::{Admission, AuthConfig, Pending};

/// A request waiting for the key store (or for new JWT keys).
pub(crate) struct AuthWait {
    pending: Pending,
    config: Arc<AuthConfig>,
}

impl AuthWait {
    pub(crate) fn new(pending: Pending, config: Arc<AuthConfig>) -> Self {
        Self { pending, config }
    }
}

impl<B> crate::future::Wait<B> for AuthWait {
    type Then = ();

    fn poll_wait(
        &mut self,
        cx: &mut Context<'_>,
        request: &mut Request<B>,
    ) -> Poll<Result<(), Response<Bytes>>> {
        let config = &self.config;
        let result = match &mut self.pending {
            Pending::Key(lookup) => {
                let result = ready!(Pin::new(lookup).poll(cx));
                let head = crate::credential::RequestHead::of(request);
                config.finish_key(result, &head).map(Admission::Key)
            }
            #[cfg(feature = "jwt")]
            Pending::Token(refetch, token) => match ready!(Pin::new(refetch).poll(cx)) {
                crate::jwt::Refetch::Fetched => config.recheck_token(token),
                // The fetch failed, or took longer than the request may wait.
                _ => Err(super::config::token_error(
                    crate::jwt::VerifyError::KeysUnavailable,
                )),
            },
        };
        Poll::Ready(config.conclude(request, result))
    }
}

crate::future::define_response_future!("Auth", AuthWait);
