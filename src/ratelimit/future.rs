use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};

use super::config::{Config, Headers, Which};
use super::{CheckAll, Permit, Subject, Verdict};
use crate::store::CreditCheck;

/// A request waiting for a limiter or a credit store that answers over the network.
pub(crate) struct LimitWait {
    stage: Stage,
    key: Box<str>,
    owner: Option<Box<str>>,
    /// The principal whose credits the request spends, once the limits admitted it.
    spender: Option<Box<str>>,
    cost: u32,
    which: Which,
    permit: Option<Permit>,
    /// Whether a shadow concurrency limit would have refused the request.
    shadow_entry: bool,
    config: Arc<Config>,
}

enum Stage {
    Limits(CheckAll),
    Credits(CreditCheck, Verdict),
    Done,
}

impl LimitWait {
    /// Waits for the limiter, then spends `spender`'s credits if there is one.
    pub(crate) fn limits(
        check: CheckAll,
        subject: Subject<'_>,
        spender: Option<&str>,
        cost: u32,
        which: Which,
        (permit, shadow_entry): (Option<Permit>, bool),
        config: &Arc<Config>,
    ) -> Self {
        Self {
            stage: Stage::Limits(check),
            key: subject.key.into(),
            owner: subject.owner.map(Into::into),
            spender: spender.map(Into::into),
            cost,
            which,
            permit,
            shadow_entry,
            config: config.clone(),
        }
    }

    /// Waits for the credit store, the limits having admitted the request with `verdict`.
    pub(crate) fn credits(
        spend: CreditCheck,
        spender: &str,
        which: Which,
        verdict: Verdict,
        (permit, shadow_entry): (Option<Permit>, bool),
        config: &Arc<Config>,
    ) -> Self {
        Self {
            stage: Stage::Credits(spend, verdict),
            key: spender.into(),
            owner: None,
            spender: Some(spender.into()),
            cost: 0,
            which,
            permit,
            shadow_entry,
            config: config.clone(),
        }
    }

    fn admit(&mut self, verdict: Verdict) -> Headers {
        let which = std::mem::replace(&mut self.which, Which::Default);
        Headers(
            Some((which, verdict, self.config.clone())),
            self.permit.take(),
        )
    }
}

impl<B> crate::future::Wait<B> for LimitWait {
    type Then = Headers;

    fn poll_wait(
        &mut self,
        cx: &mut Context<'_>,
        request: &mut Request<B>,
    ) -> Poll<Result<Headers, Response<Bytes>>> {
        loop {
            match &mut self.stage {
                Stage::Limits(check) => {
                    let answer = ready!(Pin::new(check).poll(cx));
                    let config = self.config.clone();
                    let subject = Subject::with_owner(&self.key, self.owner.as_deref());
                    let credits_next = self.spender.is_some() && config.credits.is_some();
                    let shadow = self.shadow_entry;
                    let verdict =
                        match config.outcome(subject, &self.which, answer, credits_next, shadow) {
                            Ok(verdict) => verdict,
                            Err(error) => {
                                self.stage = Stage::Done;
                                return Poll::Ready(Err(config.rendering.render(&error, request)));
                            }
                        };
                    match (&self.spender, &config.credits) {
                        (Some(id), Some(credits)) => {
                            self.stage = Stage::Credits(credits.spend(id, self.cost), verdict);
                        }
                        _ => {
                            self.stage = Stage::Done;
                            return Poll::Ready(Ok(self.admit(verdict)));
                        }
                    }
                }
                Stage::Credits(spend, _) => {
                    let answer = ready!(Pin::new(spend).poll(cx));
                    let verdict = match std::mem::replace(&mut self.stage, Stage::Done) {
                        Stage::Credits(_, verdict) => verdict,
                        _ => return Poll::Pending,
                    };
                    let config = self.config.clone();
                    let id = self.spender.as_deref().unwrap_or_default();
                    return Poll::Ready(
                        match config.credit_outcome(
                            id,
                            &self.which,
                            &verdict,
                            answer,
                            self.shadow_entry,
                        ) {
                            Ok(()) => Ok(self.admit(verdict)),
                            Err(error) => Err(config.rendering.render(&error, request)),
                        },
                    );
                }
                Stage::Done => return Poll::Pending,
            }
        }
    }
}

crate::future::define_response_future!("RateLimit", LimitWait);
