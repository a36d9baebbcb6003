//! [`AuthLayer`]: finds the request's credential, verifies it, and hands the handler a
//! [`Principal`].
//!
//! ```
//! use axum::{Router, routing::get};
//! use keygate::{AuthLayer, Principal, key::KeyRecord, store::MemoryStore};
//!
//! let store = MemoryStore::new();
//! let key = store.issue(KeyRecord::new("key_1", "acme").with_scopes(["weather:read"])).unwrap();
//!
//! let app: Router = Router::new()
//!     .route("/v1/me", get(|p: Principal| async move { p.id().to_owned() }))
//!     .layer(AuthLayer::new(store).realm("weather"));
//! # let _ = (app, key);
//! ```
//!
//! Per request, an API-key check costs one SHA-256 of the key and one map lookup in the store;
//! a [`MemoryStore`](crate::store::MemoryStore) answers without allocating or switching tasks, so
//! the request goes straight on to the inner service.

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::AuthLayer;
pub use service::AuthService;

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::credential::{self, CredentialError, CredentialSource, RequestHead};
use crate::error::{AuthError, InvalidCredential, Rendering, Unavailable};
use crate::key::{KeyDigest, KeyFormat, KeyStatus};
use crate::principal::Principal;
use crate::store::{KeyStore, Lookup, LookupResult};

/// The default limit on a presented API key, in bytes.
pub const DEFAULT_MAX_KEY_LEN: usize = 512;

#[derive(Clone)]
pub(crate) struct KeyAuth {
    pub(crate) store: Arc<dyn KeyStore>,
    pub(crate) format: Option<KeyFormat>,
    pub(crate) max_len: usize,
    pub(crate) outage: Arc<crate::outage::OutageLog>,
}

#[derive(Clone)]
pub(crate) struct AuthConfig {
    pub(crate) sources: Vec<CredentialSource>,
    pub(crate) keys: Option<KeyAuth>,
    #[cfg(feature = "jwt")]
    pub(crate) jwt: Option<crate::jwt::JwtVerifier>,
    pub(crate) optional: bool,
    pub(crate) rendering: Rendering,
    pub(crate) clock: SharedClock,
}

/// Who a request was admitted as.
pub(crate) enum Admission {
    /// No credential, optional mode.
    Anonymous,
    /// An API key.
    Key(Principal),
    /// A verified token, with its claims.
    #[cfg(feature = "jwt")]
    Token(Arc<crate::jwt::Verified>),
}

/// What a request waits for.
pub(crate) enum Wait {
    /// The key store.
    Key(Lookup),
    /// New JWT keys; then the token is checked again.
    #[cfg(feature = "jwt")]
    Token(crate::maybe::MaybeReady<crate::jwt::Refetch>, Box<str>),
}

/// What to do with a request, decided without waiting when possible.
pub(crate) enum Decision {
    /// Let it through.
    Admit(Admission),
    /// Turn it away.
    Reject(AuthError),
    /// Wait first.
    Wait(Wait),
}

impl AuthConfig {
    fn max_credential_len(&self) -> usize {
        let keys = self.keys.as_ref().map_or(0, |k| k.max_len);
        #[cfg(feature = "jwt")]
        let keys = keys.max(self.jwt.as_ref().map_or(0, |j| j.max_len()));
        keys
    }

    #[cfg(feature = "jwt")]
    pub(crate) fn token_outcome(outcome: crate::jwt::Outcome, token: &str) -> Decision {
        match outcome {
            crate::jwt::Outcome::Done(Ok(v)) => Decision::Admit(Admission::Token(v)),
            crate::jwt::Outcome::Done(Err(e)) => Decision::Reject(e),
            crate::jwt::Outcome::Refetch(wait) => Decision::Wait(Wait::Token(wait, token.into())),
        }
    }

    pub(crate) fn decide(&self, head: &RequestHead<'_>) -> Decision {
        let found = match credential::extract(&self.sources, head, self.max_credential_len()) {
            Ok(Some(found)) => found,
            Ok(None) if self.optional => return Decision::Admit(Admission::Anonymous),
            Ok(None) => return Decision::Reject(AuthError::MissingCredential),
            Err(e) => return Decision::Reject(AuthError::InvalidRequest(e)),
        };
        let key = &*found.value;
        #[cfg(feature = "jwt")]
        if let Some(jwt) = &self.jwt
            && crate::jwt::looks_like_jws(key)
        {
            return Self::token_outcome(jwt.check(key, true), key);
        }
        let Some(keys) = &self.keys else {
            return Decision::Reject(AuthError::InvalidCredential(InvalidCredential::UnknownKey));
        };
        if key.len() > keys.max_len {
            return Decision::Reject(AuthError::InvalidRequest(CredentialError::TooLong));
        }
        if let Some(format) = &keys.format {
            // Keys with the format's prefix must carry a valid checksum; keys without it (brought
            // from an older system) go to the store as they are.
            if format.has_prefix(key) && format.check(key).is_err() {
                return Decision::Reject(AuthError::InvalidCredential(
                    InvalidCredential::MalformedKey,
                ));
            }
        }
        let mut lookup = keys.store.lookup(&KeyDigest::of(key));
        match lookup.take_ready() {
            Some(result) => match self.finish_key(result) {
                Ok(p) => Decision::Admit(Admission::Key(p)),
                Err(e) => Decision::Reject(e),
            },
            None => Decision::Wait(Wait::Key(lookup)),
        }
    }

    /// Checks a token again after its key source fetched keys; no second fetch.
    #[cfg(feature = "jwt")]
    pub(crate) fn recheck_token(&self, token: &str) -> Result<Admission, AuthError> {
        let Some(jwt) = &self.jwt else {
            return Err(AuthError::InvalidCredential(
                InvalidCredential::InvalidToken,
            ));
        };
        match jwt.check(token, false) {
            crate::jwt::Outcome::Done(Ok(v)) => Ok(Admission::Token(v)),
            crate::jwt::Outcome::Done(Err(e)) => Err(e),
            crate::jwt::Outcome::Refetch(_) => Err(AuthError::InvalidCredential(
                InvalidCredential::InvalidToken,
            )),
        }
    }

    pub(crate) fn finish_key(&self, result: LookupResult) -> Result<Principal, AuthError> {
        let invalid = |why| Err(AuthError::InvalidCredential(why));
        let outage = self.keys.as_ref().map(|k| &*k.outage);
        let record = match result {
            Ok(found) => {
                if let Some(outage) = outage {
                    crate::outage::info_recovered!(outage, "key store");
                }
                match found {
                    Some(record) => record,
                    None => return invalid(InvalidCredential::UnknownKey),
                }
            }
            Err(e) => {
                if let Some(outage) = outage {
                    crate::outage::warn_outage!(outage, e, "key store");
                }
                return Err(AuthError::Unavailable(Unavailable::KeyStore(Arc::new(e))));
            }
        };
        match record.status {
            KeyStatus::Active => {}
            KeyStatus::Revoked => return invalid(InvalidCredential::RevokedKey),
            _ => return invalid(InvalidCredential::DisabledKey),
        }
        if record.expires_at.is_some_and(|at| at <= self.clock.now()) {
            return invalid(InvalidCredential::ExpiredKey);
        }
        Ok(Principal::from_key_record(record))
    }
}
