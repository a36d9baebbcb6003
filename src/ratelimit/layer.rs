use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::headers::{HeaderStyle, Policy};
use super::{Check, Decision, Quota, RateLimitError, RateLimiter, UsageTracker};
use crate::body::{ResponseBody, take_error, take_ready};
use crate::credential::RequestHead;
use crate::error::{AuthError, ErrorResponder, RateLimited, Rendering, Unavailable};
use crate::outage::{OutageLog, error_misconfigured, info_recovered, warn_outage};
use crate::principal::{Anonymous, Principal};

type CostFn = dyn Fn(&RequestHead<'_>) -> u32 + Send + Sync;
type KeyFn = dyn Fn(&RequestHead<'_>) -> Option<String> + Send + Sync;

/// The key anonymous requests (optional mode) share when no [`RateLimitLayer::key_by`] is set.
pub const ANONYMOUS_KEY: &str = "anonymous";

/// Limits each caller's request rate. Builds [`RateLimit`] services.
///
/// Every response it lets through carries rate-limit headers (by default the IETF draft's
/// `RateLimit-Policy` and `RateLimit`); a limited request gets 429 with `Retry-After` (whole
/// seconds, at least 1), `Cache-Control: no-store` and a problem+json body of type
/// `https://iana.org/assignments/http-problem-types#quota-exceeded` (gRPC: status 8
/// `RESOURCE_EXHAUSTED`, with the same headers as metadata). A limiter that cannot decide makes
/// the request fail with 503.
///
/// ```
/// use keygate::ratelimit::{HeaderStyle, MemoryLimiter, RateLimitLayer, UsageTracker};
/// use keygate::Quota;
///
/// let usage = UsageTracker::new(100_000);
/// let layer = RateLimitLayer::new(MemoryLimiter::new(), "100/min".parse().unwrap())
///     .tier("gold", Quota::per_minute(10_000))
///     .cost(|head| if head.method == "POST" { 5 } else { 1 })
///     .headers(HeaderStyle::Both)
///     .track_usage(usage.clone());
/// # let _ = layer;
/// ```
#[derive(Clone)]
#[must_use]
pub struct RateLimitLayer {
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    limiter: Arc<dyn RateLimiter>,
    default: Policy,
    tiers: Vec<Policy>,
    cost: Option<Arc<CostFn>>,
    key_by: Option<Arc<KeyFn>>,
    style: HeaderStyle,
    usage: Option<UsageTracker>,
    rendering: Rendering,
    outage: OutageLog,
}

/// Which policy applies to a request.
enum Which {
    Default,
    Tier(usize),
    Own(Box<Policy>),
}

impl Config {
    fn policy<'a>(&'a self, which: &'a Which) -> &'a Policy {
        match which {
            Which::Default => &self.default,
            Which::Tier(i) => &self.tiers[*i],
            Which::Own(p) => p,
        }
    }

    fn which(&self, principal: &Principal) -> Which {
        if let Some(quota) = principal.quota() {
            return Which::Own(Box::new(Policy::new("key", quota)));
        }
        if let Some(tier) = principal.tier()
            && let Some(i) = self.tiers.iter().position(|p| &*p.name == tier)
        {
            return Which::Tier(i);
        }
        Which::Default
    }

    /// Records a decision the limiter made.
    fn record(&self, key: &str, allowed: bool) {
        info_recovered!(self.outage, "rate limiter");
        if let Some(usage) = &self.usage {
            usage.record(key, allowed);
        }
    }

    fn limited(&self, which: &Which, decision: &Decision) -> AuthError {
        let mut headers = HeaderMap::new();
        self.policy(which).write(&mut headers, decision, self.style);
        AuthError::RateLimited(Box::new(RateLimited::new(decision.retry_after, headers)))
    }

    fn unavailable(&self, e: RateLimitError) -> AuthError {
        warn_outage!(self.outage, e, "rate limiter");
        AuthError::Unavailable(Unavailable::RateLimiter(Arc::new(e.into())))
    }
}

impl RateLimitLayer {
    /// Limits every caller to `default` (unless its key or tier says otherwise) with `limiter`.
    pub fn new(limiter: impl RateLimiter, default: Quota) -> Self {
        Self {
            config: Arc::new(Config {
                limiter: Arc::new(limiter),
                default: Policy::new("default", default),
                tiers: Vec::new(),
                cost: None,
                key_by: None,
                style: HeaderStyle::default(),
                usage: None,
                rendering: Rendering::default(),
                outage: OutageLog::new(),
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Callers whose principal names tier `name` (a JWT tier claim) get `quota`.
    pub fn tier(mut self, name: &str, quota: Quota) -> Self {
        let policy = Policy::new(name, quota);
        let config = self.config();
        config.tiers.retain(|p| p.name != policy.name);
        config.tiers.push(policy);
        self
    }

    /// What a request costs, in units of the quota (default 1). A cost of 0 is taken as 1.
    pub fn cost(mut self, cost: impl Fn(&RequestHead<'_>) -> u32 + Send + Sync + 'static) -> Self {
        self.config().cost = Some(Arc::new(move |head| cost(head).max(1)));
        self
    }

    /// Limits by another key than the principal's id (a client IP, a tenant header). A
    /// request for which it returns `None` is not limited. With it, the layer needs no
    /// `AuthLayer` in front.
    pub fn key_by(
        mut self,
        key: impl Fn(&RequestHead<'_>) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.config().key_by = Some(Arc::new(key));
        self
    }

    /// Which headers responses carry (default [`HeaderStyle::Draft`]).
    pub fn headers(mut self, style: HeaderStyle) -> Self {
        self.config().style = style;
        self
    }

    /// Counts allowed and limited requests per caller in `usage`.
    pub fn track_usage(mut self, usage: UsageTracker) -> Self {
        self.config().usage = Some(usage);
        self
    }

    /// The realm named in `WWW-Authenticate` of the errors this layer gives (default `"api"`).
    pub fn realm(mut self, realm: impl Into<Arc<str>>) -> Self {
        self.config().rendering.realm = realm.into();
        self
    }

    /// Replaces the error responder.
    pub fn responder(mut self, responder: impl ErrorResponder) -> Self {
        self.config().rendering.responder = Arc::new(responder);
        self
    }
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("default", &self.config.default.quota)
            .field("tiers", &self.config.tiers.len())
            .field("style", &self.config.style)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] builds.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> RateLimit<S> {
    define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: http_body::Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let config = &self.config;
        let head = RequestHead::of(&req);
        let custom_key;
        let (key, which): (&str, Which) = if let Some(key_by) = &config.key_by {
            custom_key = key_by(&head);
            match &custom_key {
                Some(k) => (k, Which::Default),
                None => return ResponseFuture::called(self.inner.call(req), None),
            }
        } else if let Some(p) = req.extensions().get::<Principal>() {
            (p.id(), config.which(p))
        } else if req.extensions().get::<Anonymous>().is_some() {
            (ANONYMOUS_KEY, Which::Default)
        } else {
            error_misconfigured!("RateLimitLayer without AuthLayer in front of it and no key_by");
            let response = config.rendering.render(&AuthError::MissingLayer, &req);
            return ResponseFuture::failed(response);
        };
        let cost = config.cost.as_ref().map_or(1, |f| f(&head));
        let mut check = config
            .limiter
            .check(key, &config.policy(&which).quota, cost);
        match check.take_ready() {
            Some(Ok(decision)) if decision.allowed => {
                config.record(key, true);
                let headers = Some((which, decision, self.config.clone()));
                ResponseFuture::called(self.inner.call(req), headers)
            }
            Some(Ok(decision)) => {
                config.record(key, false);
                tracing::debug!(target: "keygate", principal = key, outcome = "rate_limited");
                let error = config.limited(&which, &decision);
                ResponseFuture::failed(config.rendering.render(&error, &req))
            }
            Some(Err(e)) => {
                ResponseFuture::failed(config.rendering.render(&config.unavailable(e), &req))
            }
            None => {
                let key: Box<str> = key.into();
                let service = take_ready(&mut self.inner);
                ResponseFuture {
                    state: State::Waiting {
                        check,
                        pending: Some((service, req, key, which)),
                        config: self.config.clone(),
                    },
                }
            }
        }
    }
}

type Headers = Option<(Which, Decision, Arc<Config>)>;

pin_project! {
    /// The response future of [`RateLimit`].
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
        Called { #[pin] future: S::Future, headers: Headers },
        Waiting {
            check: Check,
            pending: Option<(S, Request<B>, Box<str>, Which)>,
            config: Arc<Config>,
        },
        Failed { response: Option<Response<Bytes>> },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn called(future: S::Future, headers: Headers) -> Self {
        Self {
            state: State::Called { future, headers },
        }
    }

    fn failed(response: Response<Bytes>) -> Self {
        Self {
            state: State::Failed {
                response: Some(response),
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
                StateProj::Called { future, headers } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some((which, decision, config)) = headers.take() {
                        config.policy(&which).write(
                            response.headers_mut(),
                            &decision,
                            config.style,
                        );
                    }
                    return Poll::Ready(Ok(response.map(ResponseBody::new)));
                }
                StateProj::Waiting {
                    check,
                    pending,
                    config,
                } => {
                    let result = ready!(Pin::new(check).poll(cx));
                    let (mut service, req, key, which) = pending
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let error = match result {
                        Ok(decision) if decision.allowed => {
                            config.record(&key, true);
                            let future = service.call(req);
                            let headers = Some((which, decision, config.clone()));
                            self.as_mut()
                                .project()
                                .state
                                .set(State::Called { future, headers });
                            continue;
                        }
                        Ok(decision) => {
                            config.record(&key, false);
                            config.limited(&which, &decision)
                        }
                        Err(e) => config.unavailable(e),
                    };
                    let response = config.rendering.render(&error, &req);
                    return Poll::Ready(Ok(response.map(ResponseBody::full)));
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
