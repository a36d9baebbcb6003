use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};

use super::config::{Admission, AuthConfig, Pending};
use crate::credential::FoundIn;

/// A request waiting for the key store (or for new JWT keys).
pub(crate) struct AuthWait {
    pending: Pending,
    config: Arc<AuthConfig>,
    /// Where the credential is, when the layer strips it once the request is admitted.
    found_in: Option<FoundIn>,
}

impl AuthWait {
    pub(crate) fn new(
        pending: Pending,
        config: Arc<AuthConfig>,
        found_in: Option<FoundIn>,
    ) -> Self {
        Self {
            pending,
            config,
            found_in,
        }
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
            Pending::Key(lookup, environment) => {
                let result = ready!(Pin::new(lookup).poll(cx));
                let head = crate::credential::RequestHead::of(request);
                config
                    .finish_key(result, &head)
                    .map(|p| Admission::Key(p.in_environment(environment.take())))
            }
            #[cfg(feature = "jwt")]
            Pending::Token(refetch, token) => match ready!(Pin::new(refetch).poll(cx)) {
                crate::jwt::Refetch::Fetched => config.recheck_token(token).map_err(Into::into),
                // The fetch failed, or took longer than the request may wait.
                _ => {
                    let unavailable = crate::jwt::VerifyError::KeysUnavailable;
                    Err(super::config::token_error(unavailable).into())
                }
            },
        };
        let concluded = config.conclude(request, result);
        if concluded.is_ok() {
            config.strip(request, self.found_in);
        }
        Poll::Ready(concluded)
    }
}

crate::future::define_response_future!("Auth", AuthWait);
