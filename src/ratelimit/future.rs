use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};

use super::Check;
use super::config::{Config, Headers, Which};

/// A request waiting for a limiter that answers over the network.
pub(crate) struct LimitWait {
    check: Check,
    key: Box<str>,
    which: Which,
    config: Arc<Config>,
}

impl LimitWait {
    pub(crate) fn new(check: Check, key: &str, which: Which, config: Arc<Config>) -> Self {
        Self {
            check,
            key: key.into(),
            which,
            config,
        }
    }
}

impl<B> crate::future::Wait<B> for LimitWait {
    type Then = Headers;

    fn poll_wait(
        &mut self,
        cx: &mut Context<'_>,
        request: &mut Request<B>,
    ) -> Poll<Result<Headers, Response<Bytes>>> {
        let answer = ready!(Pin::new(&mut self.check).poll(cx));
        let config = &self.config;
        Poll::Ready(match config.outcome(&self.key, &self.which, answer) {
            Ok(decision) => {
                let which = std::mem::replace(&mut self.which, Which::Default);
                Ok(Headers(Some((which, decision, config.clone()))))
            }
            Err(error) => Err(config.rendering.render(&error, request)),
        })
    }
}

crate::future::define_response_future!("RateLimit", LimitWait);
