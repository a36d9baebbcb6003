//! axum extractors: [`Principal`] and `Option<Principal>`.
//!
//! ```
//! use axum::{Json, Router, routing::get};
//! use keygate::{Principal, auth::AuthLayer, store::MemoryStore};
//!
//! async fn me(principal: Principal) -> Json<Principal> {
//!     Json(principal)
//! }
//!
//! async fn greeting(principal: Option<Principal>) -> String {
//!     match principal {
//!         Some(p) => format!("hello, {}", p.id()),
//!         None => "hello, stranger".to_owned(),
//!     }
//! }
//!
//! let app: Router = Router::new()
//!     .route("/v1/me", get(me))
//!     .route("/hello", get(greeting))
//!     .layer(AuthLayer::new(MemoryStore::new()).optional());
//! # let _ = app;
//! ```
//!
//! `Principal` rejects with 401 when the request was let through anonymously (optional mode) and
//! with 500 when no [`AuthLayer`](crate::auth::AuthLayer) ran: the route was left unprotected by
//! mistake. Rejections are rendered with the realm and responder of the `AuthLayer` the request
//! passed. `Option<Principal>` is `None` only for anonymous requests; it too rejects with 500
//! when no layer ran, so a forgotten layer never passes for an anonymous caller.

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;

use crate::caller::Caller;
use crate::credential::RequestHead;
use crate::error::{AuthError, Rendering};
use crate::principal::Principal;

/// Why a [`Principal`] could not be extracted.
#[derive(Debug)]
pub struct PrincipalRejection {
    error: AuthError,
    response: http::Response<bytes::Bytes>,
}

impl PrincipalRejection {
    /// Rendered as the `AuthLayer` the request passed renders errors (or by default).
    fn new(error: AuthError, parts: &Parts) -> Self {
        let response = Rendering::default().render_head(&error, RequestHead::from_parts(parts));
        Self { error, response }
    }

    /// The error behind the rejection.
    pub fn error(&self) -> &AuthError {
        &self.error
    }
}

impl std::fmt::Display for PrincipalRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for PrincipalRejection {}

impl IntoResponse for PrincipalRejection {
    fn into_response(self) -> Response {
        self.response.map(axum_core::body::Body::from)
    }
}

/// The caller, `None` for an anonymous one, or the rejection of a route no `AuthLayer` covers.
/// (The rejection is what the extractor returns anyway: its size is axum's.)
#[allow(clippy::result_large_err)]
fn caller(parts: &Parts) -> Result<Option<Principal>, PrincipalRejection> {
    match Caller::of(&parts.extensions) {
        Caller::Known(p) => Ok(Some(p.clone())),
        Caller::Anonymous => Ok(None),
        Caller::Unchecked => Err(unchecked(parts)),
    }
}

/// The rejection of a route no `AuthLayer` covers: a server mistake, logged.
fn unchecked(parts: &Parts) -> PrincipalRejection {
    crate::outage::error_misconfigured!(
        path = parts.uri.path(),
        "Principal extracted on a route without AuthLayer"
    );
    PrincipalRejection::new(AuthError::MissingLayer, parts)
}

/// The rejection of an anonymous caller on a route that needs one.
fn anonymous(parts: &Parts) -> PrincipalRejection {
    PrincipalRejection::new(AuthError::MissingCredential, parts)
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = PrincipalRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        caller(parts)?.ok_or_else(|| anonymous(parts))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
    type Rejection = PrincipalRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        caller(parts)
    }
}

#[cfg(feature = "jwt")]
mod claims {
    use super::*;
    use crate::error::InvalidCredential;
    use crate::jwt::Claims;
    use crate::principal::PrincipalKind;

    fn missing_claims<T>(parts: &Parts) -> PrincipalRejection {
        match Caller::of(&parts.extensions) {
            // An API-key caller on a route that needs a token's claims.
            Caller::Known(p) if p.kind() != PrincipalKind::Jwt => PrincipalRejection::new(
                AuthError::InvalidCredential(InvalidCredential::InvalidToken),
                parts,
            ),
            Caller::Known(_) => {
                let error = AuthError::ClaimsType(std::any::type_name::<T>());
                crate::outage::error_misconfigured!(path = parts.uri.path(), "{error}");
                PrincipalRejection::new(error, parts)
            }
            Caller::Anonymous => anonymous(parts),
            Caller::Unchecked => unchecked(parts),
        }
    }

    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    /// Rejects like [`Principal`] does; a caller that used an API key instead of a token gets
    /// 401, and a verifier not configured with `.claims::<T>()` for this `T` gives 500
    /// ([`AuthError::ClaimsType`], which names `T` in the log).
    impl<S: Send + Sync, T: Send + Sync + 'static> FromRequestParts<S> for Claims<T> {
        type Rejection = PrincipalRejection;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<Claims<T>>()
                .cloned()
                .ok_or_else(|| missing_claims::<T>(parts))
        }
    }

    /// `None` for anonymous and API-key callers; 500 when no layer ran, or when a token's
    /// verifier decodes no claims of type `T`.
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    impl<S: Send + Sync, T: Send + Sync + 'static> OptionalFromRequestParts<S> for Claims<T> {
        type Rejection = PrincipalRejection;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Option<Self>, Self::Rejection> {
            if let Some(c) = parts.extensions.get::<Claims<T>>() {
                return Ok(Some(c.clone()));
            }
            match caller(parts)? {
                // A token whose claims are not of type `T`: a misconfiguration, never "no claims".
                Some(p) if p.kind() == PrincipalKind::Jwt => Err(missing_claims::<T>(parts)),
                _ => Ok(None),
            }
        }
    }
}
