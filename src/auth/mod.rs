//! [`AuthLayer`]: finds the request's credential, verifies it, and hands the handler a
//! [`Principal`](crate::Principal).
//!
//! ```
//! use axum::{Router, routing::get};
//! use keygate::{Principal, auth::AuthLayer, key::KeyRecord, store::MemoryStore};
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

mod config;
mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
#[cfg(feature = "jwt")]
pub use layer::JwtOnly;
pub use layer::{AuthLayer, WithKeys};
pub use service::Auth;

/// The former name of [`Auth`].
#[deprecated(note = "renamed to `Auth`, after the rule `FooLayer` builds `Foo`")]
pub type AuthService<S> = Auth<S>;
