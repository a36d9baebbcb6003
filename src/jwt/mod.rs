#![doc = include_str!("../../docs/jwt.md")]

mod claims;
mod issuer;
mod issuers;
#[cfg(feature = "jwks")]
mod jwks;
mod keys;
#[cfg(feature = "jwks")]
mod oidc;
mod revocation;
#[cfg(feature = "redis")]
mod shared;
mod source;
mod verifier;

pub use issuer::{IssueError, IssuedToken, TokenIssuer};
pub use issuers::{IssuersError, JwtIssuers};
pub use jsonwebtoken::Algorithm;
#[cfg(feature = "jwks")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwks")))]
pub use jwks::{JwksError, RemoteJwks, RemoteJwksBuilder};
pub use keys::{JwtKey, JwtKeyError, KeySet};
#[cfg(feature = "jwks")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwks")))]
pub use oidc::{DiscoveryError, OidcBuilder, OidcProvider};
pub use revocation::{
    MemoryRevocations, Revocations, RevokeFuture, RevokeMintedTokens, SubjectRevoker, TokenInfo,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use shared::{RedisRevocations, RedisRevocationsBuilder, RedisRevocationsError};
pub use source::{KeySource, Refetch, StaticKeys};
pub use verifier::{JwtVerifier, VerifyError};

pub(crate) use verifier::{Outcome, UnknownKid, Verified, looks_like_jws};

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A verified token's claims, decoded into `T`; in request extensions next to the
/// [`Principal`](crate::Principal) when the verifier was configured with
/// [`JwtVerifier::claims`]. With the `axum` feature it is an extractor. Cloning is cheap.
pub struct Claims<T>(Arc<T>);

impl<T> Claims<T> {
    /// Wraps claims.
    pub fn new(claims: T) -> Self {
        Self(Arc::new(claims))
    }

    /// The shared claims.
    pub fn into_arc(self) -> Arc<T> {
        self.0
    }
}

impl<T> Clone for Claims<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Deref for Claims<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for Claims<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Claims").field(&self.0).finish()
    }
}
