use std::fmt;
use std::sync::Arc;

use tower::Layer;

use super::{AuthConfig, AuthService, DEFAULT_MAX_KEY_LEN, KeyAuth};
use crate::clock::Clock;
use crate::credential::{self, CredentialSource};
use crate::error::{ErrorResponder, Rendering};
use crate::key::KeyFormat;
use crate::store::KeyStore;

/// The authentication layer. Builds [`AuthService`]s.
///
/// Defaults: credentials from `Authorization: Bearer`, the `x-api-key` header and the `key` query
/// parameter (exactly one of them); keys up to 512 bytes; realm `"api"`; every request must
/// authenticate.
///
/// ```
/// use keygate::{AuthLayer, CredentialSource, key::KeyFormat, store::MemoryStore};
///
/// let format = KeyFormat::new("wk_live_").unwrap();
/// let store = MemoryStore::with_format(format.clone());
/// let layer = AuthLayer::new(store)
///     .key_format(format)          // turn away keys with a bad checksum before the store
///     .realm("weather")
///     .optional();                 // let anonymous requests through without a Principal
/// # let _ = layer;
/// ```
#[derive(Clone)]
#[must_use]
pub struct AuthLayer {
    config: Arc<AuthConfig>,
}

impl AuthLayer {
    /// A layer that accepts API keys found in `store`.
    pub fn new(store: impl KeyStore) -> Self {
        Self {
            config: Arc::new(AuthConfig {
                sources: credential::default_sources(),
                keys: Some(KeyAuth {
                    store: Arc::new(store),
                    format: None,
                    max_len: DEFAULT_MAX_KEY_LEN,
                    outage: Default::default(),
                }),
                #[cfg(feature = "jwt")]
                jwt: None,
                optional: false,
                rendering: Rendering::default(),
                clock: crate::clock::system(),
            }),
        }
    }

    /// A layer that accepts JWT bearer tokens only.
    #[cfg(feature = "jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    pub fn jwt_only(verifier: crate::jwt::JwtVerifier) -> Self {
        let mut layer = Self::new(crate::store::MemoryStore::new());
        let config = layer.config();
        config.keys = None;
        config.jwt = Some(verifier);
        layer
    }

    /// Also accepts JWT bearer tokens: a credential shaped like a compact JWS goes to
    /// `verifier`, anything else is looked up as an API key.
    #[cfg(feature = "jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    pub fn jwt(mut self, verifier: crate::jwt::JwtVerifier) -> Self {
        self.config().jwt = Some(verifier);
        self
    }

    fn config(&mut self) -> &mut AuthConfig {
        Arc::make_mut(&mut self.config)
    }

    /// Replaces the credential sources. They are all looked at; exactly one may hold a
    /// credential.
    pub fn sources(mut self, sources: impl IntoIterator<Item = CredentialSource>) -> Self {
        self.config().sources = sources.into_iter().collect();
        self
    }

    /// Adds a credential source to the current ones.
    pub fn source(mut self, source: CredentialSource) -> Self {
        self.config().sources.push(source);
        self
    }

    /// Keys that start with `format`'s prefix must pass its checksum, or they are turned away
    /// (401) without asking the store. Keys without the prefix still go to the store.
    pub fn key_format(mut self, format: KeyFormat) -> Self {
        if let Some(keys) = &mut self.config().keys {
            keys.format = Some(format);
        }
        self
    }

    /// The longest API key accepted, in bytes (default 512). Longer ones get 400.
    pub fn max_key_len(mut self, max: usize) -> Self {
        if let Some(keys) = &mut self.config().keys {
            keys.max_len = max;
        }
        self
    }

    /// Lets requests without any credential through, without a [`Principal`](crate::Principal).
    /// A credential that is present but bad is still turned away.
    pub fn optional(mut self) -> Self {
        self.config().optional = true;
        self
    }

    /// The realm named in `WWW-Authenticate` (default `"api"`).
    pub fn realm(mut self, realm: impl Into<Arc<str>>) -> Self {
        self.config().rendering.realm = realm.into();
        self
    }

    /// Replaces the error responder.
    pub fn responder(mut self, responder: impl ErrorResponder) -> Self {
        self.config().rendering.responder = Arc::new(responder);
        self
    }

    /// Reads time from `clock` to check key expiry.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.config().clock = Arc::new(clock);
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService::new(inner, self.config.clone())
    }
}

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("sources", &self.config.sources)
            .field("optional", &self.config.optional)
            .field("realm", &self.config.rendering.realm)
            .finish_non_exhaustive()
    }
}
