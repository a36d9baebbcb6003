//! What an authenticated caller may do: [`RequireScopeLayer`] lets through only callers with a
//! scope, all of several, or any of several, and answers the others 403 `insufficient_scope`,
//! naming what they lack; [`RequirePrincipalLayer`] and [`RequireClaimsLayer`] check what
//! scopes cannot express, on the [`Principal`](crate::Principal) or on the token's typed
//! [`Claims<T>`](crate::jwt::Claims), and answer 403 with a `detail` of their own.
//!
//! Place them inside (after) [`AuthLayer`](crate::auth::AuthLayer), typically per route. They
//! answer with the realm and responder of that `AuthLayer` unless given their own:
//!
//! ```
//! use axum::{Router, routing::{get, post}};
//! use keygate::{auth::AuthLayer, scope::RequireScopeLayer, store::MemoryStore};
//!
//! let app: Router = Router::new()
//!     .route("/v1/current.json", get(|| async { "sunny" }))
//!     .route_layer(RequireScopeLayer::new("weather:read"))
//!     .merge(
//!         Router::new()
//!             .route("/v1/forecast.json", get(|| async { "rain later" }))
//!             .route_layer(RequireScopeLayer::all(["weather:read", "forecast:read"])),
//!     )
//!     .merge(
//!         Router::new()
//!             .route("/v1/alerts.json", get(|| async { "[]" }))
//!             .route_layer(RequireScopeLayer::any(["alerts:read", "weather:admin"])),
//!     )
//!     .merge(
//!         Router::new()
//!             .route("/v1/alerts", post(|| async { "saved" }))
//!             .route_layer(RequireScopeLayer::new("weather:write")),
//!     )
//!     .layer(AuthLayer::new(MemoryStore::new()));
//! # let _ = app;
//! ```
//!
//! [`RequireClaimsLayer`]: crate::scope::RequireClaimsLayer

mod expr;
pub(crate) use expr::is_scope;
mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
#[cfg(feature = "jwt")]
pub use layer::RequireClaimsLayer;
pub use layer::{RequirePrincipalLayer, RequireScopeLayer};
#[cfg(feature = "jwt")]
pub use service::RequireClaims;
pub use service::{RequirePrincipal, RequireScope};
