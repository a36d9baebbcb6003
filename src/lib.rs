#![doc = include_str!("../README.md")]
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

pub mod auth;
pub mod body;
pub mod clock;
pub mod credential;
pub mod error;
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub mod jwt;
pub mod key;
pub mod maybe;
mod outage;
pub mod principal;
pub mod ratelimit;
pub mod scope;
pub mod store;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod tonic;

pub use auth::{AuthLayer, AuthService};
pub use credential::{CredentialError, CredentialSource, RequestHead};
pub use error::{AuthError, DefaultResponder, ErrorContext, ErrorResponder, InvalidCredential};
pub use principal::{Principal, PrincipalKind};
pub use ratelimit::{Quota, RateLimitLayer};
pub use scope::RequireScopeLayer;

/// A boxed error, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The names most services need, in one import.
pub mod prelude {
    pub use crate::key::{ApiKey, KeyFormat, KeyRecord, Scopes};
    pub use crate::ratelimit::{MemoryLimiter, RateLimiter};
    pub use crate::store::{KeyStore, MemoryStore};
    pub use crate::{
        AuthError, AuthLayer, CredentialSource, Principal, PrincipalKind, Quota, RateLimitLayer,
        RequireScopeLayer,
    };
}
