use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use tower::Layer;

use super::Auth;
use super::config::{AuthConfig, KeyAuth};
use crate::clock::Clock;
use crate::credential::{self, CredentialSource};
use crate::error::Rendering;
use crate::key::KeyFormat;
use crate::store::KeyStore;

/// What an [`AuthLayer`] made with [`AuthLayer::new`] accepts: API keys from a store (and JWTs,
/// when given a verifier). Only such a layer has the API-key settings.
#[derive(Debug, Clone, Copy)]
pub struct WithKeys;

/// What an [`AuthLayer`] made with [`AuthLayer::jwt_only`] accepts: JWT bearer tokens only. It
/// has no key store, so it has no API-key settings either.
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
#[derive(Debug, Clone, Copy)]
pub struct JwtOnly;

/// The authentication layer. Builds [`Auth`] services.
///
/// Defaults: credentials from `Authorization: Bearer`, the `x-api-key` header and the `key` query
/// parameter (exactly one of them); keys up to 512 bytes; realm `"api"`; every request must
/// authenticate.
///
/// The realm and responder set here are also used by the layers and extractors behind it
/// ([`RequireScopeLayer`](crate::scope::RequireScopeLayer),
/// [`RateLimitLayer`](crate::ratelimit::RateLimitLayer), the `Principal` and `Claims<T>`
/// extractors), unless they are given their own.
///
/// ```
/// use keygate::{auth::AuthLayer, key::KeyFormat, store::MemoryStore};
///
/// let format = KeyFormat::new("wk_live_").unwrap();
/// let store = MemoryStore::with_format(format.clone());
/// let layer = AuthLayer::new(store)
///     .key_format(format)          // turn away keys with a bad checksum before the store
///     .realm("weather")
///     .optional();                 // let anonymous requests through without a Principal
/// # let _ = layer;
/// ```
///
/// The type parameter records whether the layer takes API keys. A layer made for JWTs only has
/// no key store, so key settings on it do not compile:
///
/// ```compile_fail
/// use keygate::{auth::AuthLayer, jwt::{JwtKey, JwtVerifier}};
///
/// let verifier = JwtVerifier::with_keys([JwtKey::hmac(b"a secret of at least 32 bytes!!")]);
/// let layer = AuthLayer::jwt_only(verifier).max_key_len(64); // error: no such method
/// ```
#[must_use]
pub struct AuthLayer<M = WithKeys> {
    config: Arc<AuthConfig>,
    accepts: PhantomData<fn() -> M>,
}

impl<M> Clone for AuthLayer<M> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            accepts: PhantomData,
        }
    }
}

impl<M> AuthLayer<M> {
    fn with(keys: Option<KeyAuth>) -> Self {
        Self {
            config: Arc::new(AuthConfig {
                sources: credential::default_sources(),
                keys,
                #[cfg(feature = "jwt")]
                jwt: None,
                optional: false,
                rendering: Rendering::default(),
                clock: crate::clock::system(),
            }),
            accepts: PhantomData,
        }
    }

    fn config(&mut self) -> &mut AuthConfig {
        Arc::make_mut(&mut self.config)
    }

    /// Replaces the credential sources. They are all looked at; exactly one may hold a
    /// credential.
    ///
    /// # Panics
    ///
    /// If `sources` is empty: such a layer would find no credential in any request.
    pub fn sources(mut self, sources: impl IntoIterator<Item = CredentialSource>) -> Self {
        let sources: Vec<_> = sources.into_iter().collect();
        assert!(
            !sources.is_empty(),
            "AuthLayer::sources with no source: no request could carry a credential"
        );
        self.config().sources = sources;
        self
    }

    /// Adds a credential source to the current ones.
    pub fn source(mut self, source: CredentialSource) -> Self {
        self.config().sources.push(source);
        self
    }

    /// Lets requests without any credential through, without a [`Principal`](crate::Principal).
    /// A credential that is present but bad is still turned away.
    pub fn optional(mut self) -> Self {
        self.config().optional = true;
        self
    }

    fn rendering_mut(&mut self) -> &mut Rendering {
        &mut self.config().rendering
    }

    define_rendering_setters!(
        "By default `\"api\"` and the standard responder. Used here and by the layers and \
         extractors behind this one that are not given their own."
    );

    /// Reads time from `clock` to check key expiry.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.config().clock = Arc::new(clock);
        self
    }
}

impl AuthLayer<WithKeys> {
    /// A layer that accepts API keys found in `store`.
    pub fn new(store: impl KeyStore) -> Self {
        Self::with(Some(KeyAuth::new(store)))
    }

    /// Also accepts JWT bearer tokens: a credential shaped like a compact JWS goes to
    /// `verifier` (a [`JwtVerifier`](crate::jwt::JwtVerifier), or
    /// [`JwtIssuers`](crate::jwt::JwtIssuers) for several issuers), anything else is looked up
    /// as an API key. Called again, it adds the issuers of `verifier` to those accepted: each
    /// token is then verified by the verifier of its `iss` (see `JwtIssuers`).
    ///
    /// # Panics
    ///
    /// If the verifiers cannot be told apart by issuer ([`IssuersError`](crate::jwt::IssuersError):
    /// two accept the same `iss`, or two have no issuer rule). Build a `JwtIssuers` to get that
    /// as an error.
    #[cfg(feature = "jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    pub fn jwt(mut self, verifier: impl Into<crate::jwt::JwtIssuers>) -> Self {
        self.config().add_jwt(verifier.into());
        self
    }

    fn keys(&mut self) -> &mut KeyAuth {
        self.config()
            .keys
            .as_mut()
            .expect("an AuthLayer<WithKeys> always has a key store")
    }

    /// Keys that start with `format`'s prefix must pass its checksum, or they are turned away
    /// (401) without asking the store. Keys without the prefix still go to the store.
    pub fn key_format(mut self, format: KeyFormat) -> Self {
        self.keys().format = Some(format);
        self
    }

    /// The longest API key accepted, in bytes (default 512). Longer ones get 400.
    pub fn max_key_len(mut self, max: usize) -> Self {
        self.keys().max_len = max;
        self
    }

    /// The proxies in front of the service, whose `Forwarded` and `X-Forwarded-For` headers
    /// are believed when a key's [IP allowlist](crate::store#ip-allowlists) is checked
    /// (default: none; then the connection's peer is the client, whatever the headers say).
    /// Called again, it replaces the list. How the client's address is found is in
    /// [`client_addr`](crate::client_addr).
    ///
    /// ```
    /// use keygate::{auth::AuthLayer, client_addr::Networks, store::MemoryStore};
    ///
    /// let proxies: Networks = "10.0.0.0/8, 192.0.2.10".parse()?; // e.g. from TRUSTED_PROXIES
    /// let layer = AuthLayer::new(MemoryStore::new()).trusted_proxies(proxies);
    /// # let _ = layer;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn trusted_proxies(
        mut self,
        proxies: impl IntoIterator<Item = crate::client_addr::IpNet>,
    ) -> Self {
        self.keys().trusted_proxies = proxies.into_iter().collect();
        self
    }
}

#[cfg(feature = "jwt")]
impl AuthLayer<JwtOnly> {
    /// A layer that accepts JWT bearer tokens only: every other credential is refused as an
    /// unknown key.
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    pub fn jwt_only(verifier: impl Into<crate::jwt::JwtIssuers>) -> Self {
        let mut layer = Self::with(None);
        layer.config().add_jwt(verifier.into());
        layer
    }

    /// Also accepts tokens of the issuers of `verifier`, as [`AuthLayer::jwt`] does.
    ///
    /// # Panics
    ///
    /// As [`AuthLayer::jwt`].
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    pub fn jwt(mut self, verifier: impl Into<crate::jwt::JwtIssuers>) -> Self {
        self.config().add_jwt(verifier.into());
        self
    }
}

impl<S, M> Layer<S> for AuthLayer<M> {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth::new(inner, self.config.clone())
    }
}

impl<M> fmt::Debug for AuthLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("sources", &self.config.sources)
            .field("api_keys", &self.config.keys.is_some())
            .field("optional", &self.config.optional)
            .field("rendering", &self.config.rendering)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    #[should_panic(expected = "no request could carry a credential")]
    fn a_layer_without_sources_is_a_configuration_error() {
        let _ = AuthLayer::new(MemoryStore::new()).sources([]);
    }
}
