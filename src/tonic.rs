#![doc = include_str!("../docs/grpc.md")]

use tonic::server::NamedService;
use tonic::{Code, Status};

use crate::auth::Auth;
use crate::caller::Caller;
use crate::error::AuthError;
use crate::principal::Principal;
use crate::ratelimit::RateLimit;
use crate::scope::{RequirePrincipal, RequireScope};

impl<S: NamedService> NamedService for Auth<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: NamedService> NamedService for RateLimit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: NamedService> NamedService for RequireScope<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: NamedService> NamedService for RequirePrincipal<S> {
    const NAME: &'static str = S::NAME;
}

#[cfg(feature = "jwt")]
impl<S: NamedService, T> NamedService for crate::scope::RequireClaims<S, T> {
    const NAME: &'static str = S::NAME;
}

/// Reads keygate's results from a `tonic::Request`.
pub trait RequestExt {
    /// The authenticated caller. Without one: `Status::unauthenticated` when the request was
    /// let through anonymously ([`AuthLayer::optional`](crate::auth::AuthLayer::optional)), and
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
        match Caller::of(self.extensions()) {
            Caller::Known(p) => Ok(p),
            Caller::Anonymous => Err(status(&AuthError::MissingCredential)),
            Caller::Unchecked => {
                crate::outage::error_misconfigured!("Principal read in a method without AuthLayer");
                Err(status(&AuthError::MissingLayer))
            }
        }
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
    Status::new(
        Code::from_i32(error.grpc_code().as_u8().into()),
        error.detail(),
    )
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
