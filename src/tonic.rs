//! tonic (gRPC) integration: keygate's layers on a tonic server, and reading the caller in a
//! method.
//!
//! The layers are plain tower layers, so they go on every service of a server with
//! `Server::builder().layer(...)`, or around one service with `tower::ServiceBuilder` (they
//! forward the wrapped service's [`NamedService`] name, so the wrapped service can be added to
//! the server like the bare one). Credentials come from gRPC metadata — `authorization: Bearer
//! …` or `x-api-key` — which are HTTP/2 headers, so extraction is the same as for HTTP. Failures
//! of gRPC requests are answered as gRPC statuses (16 `UNAUTHENTICATED`, 7 `PERMISSION_DENIED`,
//! 8 `RESOURCE_EXHAUSTED`, 14 `UNAVAILABLE`) in trailers-only responses.
//!
//! ```no_run
//! use keygate::{AuthLayer, store::MemoryStore, tonic::RequestExt};
//! # use tonic::{Request, Response, Status};
//!
//! // In a method: the caller, or `Status::unauthenticated` in one call.
//! async fn current(request: Request<()>) -> Result<Response<String>, Status> {
//!     let principal = request.principal()?;
//!     Ok(Response::new(format!("hello, {}", principal.id())))
//! }
//!
//! // On the server (with `tonic::transport::Server`):
//! // Server::builder()
//! //     .layer(AuthLayer::new(MemoryStore::new()))
//! //     .add_service(WeatherServer::new(MyWeather))
//! //     .serve(addr)
//! //     .await?;
//! ```

use tonic::server::NamedService;
use tonic::{Code, Status};

use crate::auth::AuthService;
use crate::error::AuthError;
use crate::principal::{Anonymous, Principal};
use crate::ratelimit::RateLimit;
use crate::scope::RequireScope;

impl<S: NamedService> NamedService for AuthService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: NamedService> NamedService for RateLimit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: NamedService> NamedService for RequireScope<S> {
    const NAME: &'static str = S::NAME;
}

/// Reads keygate's results from a `tonic::Request`.
pub trait RequestExt {
    /// The authenticated caller. Without one: `Status::unauthenticated` when the request was
    /// let through anonymously ([`AuthLayer::optional`](crate::AuthLayer::optional)), and
    /// `Status::internal` when no `AuthLayer` ran at all (the method was left unprotected by
    /// mistake), as the axum extractor answers 401 and 500.
    #[allow(clippy::result_large_err)]
    fn principal(&self) -> Result<&Principal, Status>;

    /// The verified token's claims: the failures of [`principal`](Self::principal),
    /// `Status::unauthenticated` when the caller did not present a token (an API key), or
    /// `Status::internal` when it did but the verifier decodes no claims of type `T` (it was not
    /// configured with [`JwtVerifier::claims`](crate::jwt::JwtVerifier::claims) for this `T`: a
    /// server misconfiguration, not the client's fault).
    #[cfg(feature = "jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    #[allow(clippy::result_large_err)]
    fn claims<T: Send + Sync + 'static>(&self) -> Result<&crate::jwt::Claims<T>, Status>;
}

impl<B> RequestExt for tonic::Request<B> {
    fn principal(&self) -> Result<&Principal, Status> {
        let extensions = self.extensions();
        extensions.get::<Principal>().ok_or_else(|| {
            if extensions.get::<Anonymous>().is_some() {
                status(&AuthError::MissingCredential)
            } else {
                status(&AuthError::MissingLayer)
            }
        })
    }

    #[cfg(feature = "jwt")]
    fn claims<T: Send + Sync + 'static>(&self) -> Result<&crate::jwt::Claims<T>, Status> {
        let principal = self.principal()?;
        self.extensions()
            .get::<crate::jwt::Claims<T>>()
            .ok_or_else(|| {
                if principal.kind() == crate::PrincipalKind::Jwt {
                    let error = AuthError::ClaimsType(std::any::type_name::<T>());
                    crate::outage::error_misconfigured!("{error}");
                    status(&error)
                } else {
                    Status::unauthenticated("The credential carries no token claims.")
                }
            })
    }
}

/// The gRPC status of `error`, with the message keygate's responses carry.
fn status(error: &AuthError) -> Status {
    Status::new(Code::from_i32(error.grpc_code().into()), error.detail())
}

#[cfg(all(test, feature = "jwt"))]
mod tests {
    use super::*;
    use crate::PrincipalKind;
    use crate::jwt::Claims;

    #[derive(Debug)]
    struct Mine;
    #[derive(Debug)]
    struct Other;

    fn request(kind: PrincipalKind) -> tonic::Request<()> {
        let mut req = tonic::Request::new(());
        req.extensions_mut().insert(Principal::new("u1", kind));
        req
    }

    #[test]
    fn claims_of_another_type_are_a_server_error_not_the_callers() {
        let mut req = request(PrincipalKind::Jwt);
        req.extensions_mut().insert(Claims::new(Mine));
        assert!(req.claims::<Mine>().is_ok());
        let status = req.claims::<Other>().unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(
            status
                .message()
                .contains("a type the JwtVerifier does not decode"),
            "{}",
            status.message()
        );
        // An API-key caller has no token claims at all: the caller's credential is the wrong one.
        let status = request(PrincipalKind::ApiKey).claims::<Mine>().unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
}
