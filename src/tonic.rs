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

use tonic::Status;
use tonic::server::NamedService;

use crate::auth::AuthService;
use crate::principal::Principal;
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
    /// The authenticated caller, or `Status::unauthenticated` when there is none (the method is
    /// not behind `AuthLayer`, or the request was let through anonymously).
    #[allow(clippy::result_large_err)]
    fn principal(&self) -> Result<&Principal, Status>;

    /// The verified token's claims, or `Status::unauthenticated`.
    #[cfg(feature = "jwt")]
    #[allow(clippy::result_large_err)]
    fn claims<T: Send + Sync + 'static>(&self) -> Result<&crate::jwt::Claims<T>, Status>;
}

impl<B> RequestExt for tonic::Request<B> {
    fn principal(&self) -> Result<&Principal, Status> {
        self.extensions()
            .get::<Principal>()
            .ok_or_else(|| Status::unauthenticated("The request carries no credential."))
    }

    #[cfg(feature = "jwt")]
    fn claims<T: Send + Sync + 'static>(&self) -> Result<&crate::jwt::Claims<T>, Status> {
        self.extensions()
            .get::<crate::jwt::Claims<T>>()
            .ok_or_else(|| Status::unauthenticated("The request carries no token claims."))
    }
}
