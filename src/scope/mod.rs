//! [`RequireScopeLayer`]: lets through only callers with a scope; others get 403
//! `insufficient_scope`, naming it.
//!
//! Place it inside (after) [`AuthLayer`](crate::auth::AuthLayer), typically per route. It
//! answers with the realm and responder of that `AuthLayer` unless given its own:
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
//!             .route("/v1/alerts", post(|| async { "saved" }))
//!             .route_layer(RequireScopeLayer::new("weather:write")),
//!     )
//!     .layer(AuthLayer::new(MemoryStore::new()));
//! # let _ = app;
//! ```

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::RequireScopeLayer;
pub use service::RequireScope;
