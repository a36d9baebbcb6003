#![doc = include_str!("../docs/index.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![warn(rust_2018_idioms, missing_debug_implementations)]

/// `get_ref`, `get_mut` and `into_inner` for a service whose wrapped service is `self.inner`.
macro_rules! define_inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// The inner service, unwrapped.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

/// The parts of a layer's `Service` impl that are the same for every layer: the response and
/// future types, and `poll_ready` forwarded to `self.inner`. For use inside
/// `impl<S, ReqB, ResB> Service<Request<ReqB>> for Foo<S>`.
macro_rules! forward_service_plumbing {
    () => {
        type Response = http::Response<ResB>;
        type Error = S::Error;
        type Future = ResponseFuture<S, ReqB>;

        fn poll_ready(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            self.inner.poll_ready(cx)
        }
    };
}

/// The `realm`, `responder` and `resource_metadata` builder methods of a layer, setting
/// `self.rendering_mut()`; `$by_default` says what applies when the first two are not called.
macro_rules! define_rendering_setters {
    ($by_default:literal) => {
        #[doc = concat!("The realm named in `WWW-Authenticate`. ", $by_default)]
        pub fn realm(mut self, realm: impl Into<std::sync::Arc<str>>) -> Self {
            self.rendering_mut().set_realm(realm);
            self
        }

        #[doc = concat!("Replaces the error responder. ", $by_default)]
        pub fn responder(mut self, responder: impl crate::error::ErrorResponder) -> Self {
            self.rendering_mut().set_responder(responder);
            self
        }

        /// Points every `WWW-Authenticate` challenge to the protected-resource metadata at
        /// `url` (RFC 9728 §5.1): `, resource_metadata="URL"` after the challenge's other
        /// parameters, so that a client turned away can find where to get a token. Usually
        /// [`ProtectedResource::metadata_url`](crate::resource::ProtectedResource::metadata_url).
        /// Unset by default: a layer behind an [`AuthLayer`](crate::auth::AuthLayer) then uses
        /// the `AuthLayer`'s, and an `AuthLayer` sends none.
        ///
        /// # Panics
        ///
        /// If `url` is not an absolute `https` or `http` URL without fragment, made of the
        /// characters a URL holds unencoded: a configuration mistake, found at start.
        pub fn resource_metadata(mut self, url: impl Into<std::sync::Arc<str>>) -> Self {
            self.rendering_mut().set_resource_metadata(url);
            self
        }
    };
}

#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub mod admin;
pub mod auth;
mod body;
mod caller;
pub mod client_addr;
pub mod clock;
pub mod credential;
pub mod error;
pub mod events;
mod future;
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub mod jwt;
pub mod key;
mod limits;
mod maybe;
pub mod metrics;
#[cfg(feature = "utoipa")]
#[cfg_attr(docsrs, doc(cfg(feature = "utoipa")))]
pub mod openapi;
mod outage;
mod principal;
mod quota;
pub mod ratelimit;
#[cfg(feature = "redis")]
mod redis_conn;
pub mod resource;
pub mod scope;
pub mod store;

#[doc = include_str!("../docs/deployment.md")]
pub mod deployment {}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod tonic;

// Plumbing: named in the layers' `Service` types and by implementers of stores, limiters and
// key sources, rarely by a service's own code.
pub use body::{LayerBody, ResponseBody};
pub use limits::{Limit, LimitBy, Limits, MAX_LIMITS};
pub use maybe::MaybeReady;
pub use principal::{Principal, PrincipalKind};
pub use quota::{Quota, QuotaError};

/// A boxed error, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The names most services need, in one import.
///
/// ```
/// use keygate::prelude::*;
///
/// let store = MemoryStore::new();
/// let layer = AuthLayer::new(store.clone());
/// let limit = RateLimitLayer::new(MemoryLimiter::new(), Quota::per_second(10));
/// let scope = RequireScopeLayer::new("orders:read");
/// # let _ = (layer, limit, scope);
/// ```
pub mod prelude {
    pub use crate::auth::AuthLayer;
    pub use crate::credential::CredentialSource;
    pub use crate::error::AuthError;
    #[cfg(feature = "jwt")]
    pub use crate::jwt::{Claims, JwtKey, JwtVerifier, TokenIssuer};
    pub use crate::key::{ApiKey, KeyFormat, KeyRecord};
    pub use crate::ratelimit::{MemoryLimiter, RateLimitLayer, RateLimiter};
    #[cfg(feature = "jwt")]
    pub use crate::scope::RequireClaimsLayer;
    pub use crate::scope::{RequirePrincipalLayer, RequireScopeLayer};
    pub use crate::store::{KeyStore, MemoryStore};
    #[cfg(feature = "tonic")]
    pub use crate::tonic::RequestExt;
    pub use crate::{Limits, Principal, PrincipalKind, Quota};
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
