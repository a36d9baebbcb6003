use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use tower::Layer;

#[cfg(feature = "jwt")]
use super::RequireClaims;
use super::expr::ScopeExpr;
use super::{RequirePrincipal, RequireScope};
use crate::Principal;
use crate::error::{AuthError, Forbidden, Rendering};

/// What the rendering setters say applies by default.
macro_rules! rendering_setters {
    () => {
        define_rendering_setters!(
            "By default, those of the [`AuthLayer`](crate::auth::AuthLayer) in front (or \
             `\"api\"` and the standard responder)."
        );
    };
}

/// Requires the caller's [`Principal`] to have a scope, all of several, or any of several.
/// Builds [`RequireScope`] services.
///
/// A caller without them gets 403 `insufficient_scope` ([`AuthError::InsufficientScope`]),
/// whose `WWW-Authenticate` lists the required scopes in its `scope` attribute (RFC 6750 §3)
/// and whose `detail` names the missing ones (for [`any`](Self::any): that any of them would
/// do). A request without a `Principal` is answered 401 when
/// [`AuthLayer`](crate::auth::AuthLayer) let it through anonymously (optional mode), and 500
/// when no `AuthLayer` ran at all: a forgotten layer must not look like an open door.
///
/// The check is a lookup per required scope in the caller's scopes; it allocates nothing for
/// a caller that passes.
#[derive(Clone)]
#[must_use]
pub struct RequireScopeLayer {
    pub(crate) expr: ScopeExpr,
    pub(crate) rendering: Rendering,
}

impl RequireScopeLayer {
    /// Requires `scope`.
    ///
    /// # Panics
    ///
    /// If `scope` is empty or has characters RFC 6749 §3.3 does not allow in a scope (space,
    /// `"`, `\`, control characters): a configuration mistake, found at start.
    pub fn new(scope: impl Into<Arc<str>>) -> Self {
        Self::with(ScopeExpr::one(scope.into()))
    }

    /// Requires every scope of `scopes` (repeated ones count once). A caller without some gets
    /// 403 with `scope="a b"` in the challenge (all of them, in the order given) and a
    /// `detail` naming the missing ones.
    ///
    /// ```
    /// use keygate::scope::RequireScopeLayer;
    ///
    /// let forecast = RequireScopeLayer::all(["weather:read", "forecast:read"]);
    /// # let _ = forecast;
    /// ```
    ///
    /// # Panics
    ///
    /// If `scopes` is empty, or one of them is not a valid scope (as for [`new`](Self::new)):
    /// a configuration mistake, found at start.
    pub fn all<S: Into<Arc<str>>>(scopes: impl IntoIterator<Item = S>) -> Self {
        Self::with(ScopeExpr::list(scopes, false, "RequireScopeLayer::all"))
    }

    /// Requires at least one scope of `scopes`. A caller with none gets 403 with all of them
    /// in the challenge's `scope` attribute (a token with them all would pass) and a `detail`
    /// saying that it needs any of them. Any of one scope is [`new`](Self::new) of it.
    ///
    /// ```
    /// use keygate::scope::RequireScopeLayer;
    ///
    /// let alerts = RequireScopeLayer::any(["alerts:read", "weather:admin"]);
    /// # let _ = alerts;
    /// ```
    ///
    /// # Panics
    ///
    /// As for [`all`](Self::all).
    pub fn any<S: Into<Arc<str>>>(scopes: impl IntoIterator<Item = S>) -> Self {
        Self::with(ScopeExpr::list(scopes, true, "RequireScopeLayer::any"))
    }

    fn with(expr: ScopeExpr) -> Self {
        Self {
            expr,
            rendering: Rendering::default(),
        }
    }

    fn rendering_mut(&mut self) -> &mut Rendering {
        &mut self.rendering
    }

    rendering_setters!();
}

impl fmt::Debug for RequireScopeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireScopeLayer")
            .field("scope", &self.expr)
            .field("rendering", &self.rendering)
            .finish()
    }
}

impl<S> Layer<S> for RequireScopeLayer {
    type Service = RequireScope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScope::new(inner, self.clone())
    }
}

/// What a check layer holds: the predicate, what a refusal says, and how it renders.
pub(crate) struct Check<X: ?Sized> {
    predicate: Arc<dyn Fn(&X) -> bool + Send + Sync>,
    detail: Cow<'static, str>,
    pub(crate) rendering: Rendering,
}

/// The `detail` of a refusal when the layer was given none.
const DEFAULT_DETAIL: &str = "The credential does not allow this request.";

impl<X: ?Sized> Check<X> {
    fn new(predicate: impl Fn(&X) -> bool + Send + Sync + 'static) -> Self {
        Self {
            predicate: Arc::new(predicate),
            detail: Cow::Borrowed(DEFAULT_DETAIL),
            rendering: Rendering::default(),
        }
    }

    pub(crate) fn passes(&self, x: &X) -> bool {
        (self.predicate)(x)
    }

    /// The refusal: 403 with this check's detail.
    pub(crate) fn refusal(&self) -> AuthError {
        AuthError::Forbidden(Forbidden::Denied(self.detail.clone()))
    }

    fn debug(&self, f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
        f.debug_struct(name)
            .field("detail", &self.detail)
            .field("rendering", &self.rendering)
            .finish_non_exhaustive()
    }
}

impl<X: ?Sized> Clone for Check<X> {
    fn clone(&self) -> Self {
        Self {
            predicate: self.predicate.clone(),
            detail: self.detail.clone(),
            rendering: self.rendering.clone(),
        }
    }
}

/// Requires the caller's [`Principal`] to pass a check that scopes cannot express (its
/// [`kind`](Principal::kind), [`owner`](Principal::owner), key metadata, ...). Builds
/// [`RequirePrincipal`] services.
///
/// A caller that fails it gets 403 with `WWW-Authenticate: Bearer realm="R",
/// error="insufficient_scope"` and the [`detail`](Self::detail) ([`Forbidden::Denied`]); gRPC
/// callers get 7 `PERMISSION_DENIED`. A request without a `Principal` is answered as
/// [`RequireScopeLayer`] answers it: 401 behind an optional `AuthLayer`, 500 with none.
///
/// ```
/// use axum::{Router, routing::delete};
/// use keygate::{auth::AuthLayer, scope::RequirePrincipalLayer, store::MemoryStore};
///
/// let app: Router = Router::new()
///     .route("/v1/alerts/{id}", delete(|| async { "deleted" }))
///     .route_layer(
///         RequirePrincipalLayer::new(|p| p.owner() == Some("acme"))
///             .detail("Only acme's keys may delete alerts."),
///     )
///     .layer(AuthLayer::new(MemoryStore::new()));
/// # let _ = app;
/// ```
#[derive(Clone)]
#[must_use]
pub struct RequirePrincipalLayer {
    pub(crate) check: Check<Principal>,
}

impl RequirePrincipalLayer {
    /// Lets through only callers for which `predicate` is true. It runs on every request that
    /// reaches the layer: keep it cheap, and free of anything a client can make slow.
    pub fn new(predicate: impl Fn(&Principal) -> bool + Send + Sync + 'static) -> Self {
        Self {
            check: Check::new(predicate),
        }
    }

    /// The problem's `detail` (and gRPC message) for a refused caller; by default "The
    /// credential does not allow this request." The client reads it: no secrets.
    pub fn detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.check.detail = detail.into();
        self
    }

    fn rendering_mut(&mut self) -> &mut Rendering {
        &mut self.check.rendering
    }

    rendering_setters!();
}

impl fmt::Debug for RequirePrincipalLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.check.debug(f, "RequirePrincipalLayer")
    }
}

impl<S> Layer<S> for RequirePrincipalLayer {
    type Service = RequirePrincipal<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequirePrincipal::new(inner, self.clone())
    }
}

/// Requires the verified token's typed claims, [`Claims<T>`](crate::jwt::Claims), to pass a
/// check. Builds [`RequireClaims`] services.
///
/// The claims are there when the caller presented a JWT and its
/// [`JwtVerifier`](crate::jwt::JwtVerifier) was configured with
/// [`.claims::<T>()`](crate::jwt::JwtVerifier::claims). A caller without them — one that used
/// an API key, or a token whose verifier decodes no `T` — is refused like one whose claims fail
/// the check: 403 with the [`detail`](Self::detail). Otherwise it answers as
/// [`RequirePrincipalLayer`] does.
///
/// ```
/// use axum::{Router, routing::post};
/// use keygate::{auth::AuthLayer, jwt::{JwtKey, JwtVerifier}, scope::RequireClaimsLayer};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Staff {
///     department: String,
/// }
///
/// let verifier = JwtVerifier::with_keys([JwtKey::hmac(b"a test-only secret of 32 bytes..")])
///     .claims::<Staff>();
/// let app: Router = Router::new()
///     .route("/v1/alerts", post(|| async { "saved" }))
///     .route_layer(
///         RequireClaimsLayer::new(|c: &Staff| c.department == "forecasting")
///             .detail("Only the forecasting department may post alerts."),
///     )
///     .layer(AuthLayer::jwt_only(verifier));
/// # let _ = app;
/// ```
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
#[must_use]
pub struct RequireClaimsLayer<T> {
    pub(crate) check: Check<T>,
}

#[cfg(feature = "jwt")]
impl<T: Send + Sync + 'static> RequireClaimsLayer<T> {
    /// Lets through only callers whose token's claims decode as `T` and pass `predicate`. It
    /// runs on every such request: keep it cheap.
    pub fn new(predicate: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        Self {
            check: Check::new(predicate),
        }
    }

    /// The problem's `detail` (and gRPC message) for a refused caller, including one without
    /// claims of type `T`; by default "The credential does not allow this request." The
    /// client reads it: no secrets.
    pub fn detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.check.detail = detail.into();
        self
    }

    fn rendering_mut(&mut self) -> &mut Rendering {
        &mut self.check.rendering
    }

    rendering_setters!();
}

#[cfg(feature = "jwt")]
impl<T> Clone for RequireClaimsLayer<T> {
    fn clone(&self) -> Self {
        Self {
            check: self.check.clone(),
        }
    }
}

#[cfg(feature = "jwt")]
impl<T> fmt::Debug for RequireClaimsLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.check.debug(f, "RequireClaimsLayer")
    }
}

#[cfg(feature = "jwt")]
impl<S, T> Layer<S> for RequireClaimsLayer<T> {
    type Service = RequireClaims<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireClaims::new(inner, self.clone())
    }
}
