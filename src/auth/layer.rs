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
                strip: false,
                rendering: Rendering::default(),
                clock: crate::clock::system(),
                events: None,
                counters: crate::metrics::AuthCounters::new(),
            }),
            accepts: PhantomData,
        }
    }

    fn config(&mut self) -> &mut AuthConfig {
        Arc::make_mut(&mut self.config)
    }

    /// The credential sources, in order (for [`openapi`](crate::openapi)).
    #[cfg(feature = "utoipa")]
    pub(crate) fn credential_sources(&self) -> &[CredentialSource] {
        &self.config.sources
    }

    /// Whether the layer looks API keys up in a store.
    #[cfg(feature = "utoipa")]
    pub(crate) fn accepts_keys(&self) -> bool {
        self.config.keys.is_some()
    }

    /// Whether the layer verifies JWTs.
    #[cfg(feature = "utoipa")]
    pub(crate) fn accepts_jwts(&self) -> bool {
        #[cfg(feature = "jwt")]
        return self.config.jwt.is_some();
        #[cfg(not(feature = "jwt"))]
        false
    }

    /// Whether requests without a credential are let through.
    #[cfg(feature = "utoipa")]
    pub(crate) fn is_optional(&self) -> bool {
        self.config.optional
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

    /// Takes the credential out of every admitted request before the inner service sees it, so
    /// that handlers, their logs and the services they forward requests to never hold it: the
    /// `Authorization` header (for `Bearer`, API key or JWT alike) or the named header; the
    /// credential's cookie pair, keeping the other cookies byte for byte (and dropping a
    /// `Cookie` header left empty); or the query parameter's `name=value` pair, keeping every
    /// other byte of the query in order (and the `?` only if something is left). The
    /// [`Principal`](crate::Principal) says who called.
    ///
    /// A [custom source](CredentialSource::custom) strips with
    /// [`ExtractCredential::strip`](crate::credential::ExtractCredential::strip), which by
    /// default leaves the request as it is. Rejected requests never reach the inner service.
    /// Without this setting the request is passed on untouched, at no cost.
    ///
    /// ```
    /// use keygate::{auth::AuthLayer, store::MemoryStore};
    ///
    /// // `GET /v1/echo?q=London&key=KEY` reaches the handler as `GET /v1/echo?q=London`.
    /// let layer = AuthLayer::new(MemoryStore::new()).strip_credential();
    /// # let _ = layer;
    /// ```
    pub fn strip_credential(mut self) -> Self {
        self.config().strip = true;
        self
    }

    fn rendering_mut(&mut self) -> &mut Rendering {
        &mut self.config().rendering
    }

    define_rendering_setters!(
        "By default `\"api\"` and the standard responder. Used here and by the layers and \
         extractors behind this one that are not given their own."
    );

    /// Reads time from `clock` to check key expiry (and to time the events of
    /// [`events`](Self::events)).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.config().clock = Arc::new(clock);
        self
    }

    /// Tells `hook` of every request the layer judges: one [`AuthEvent`](crate::events::AuthEvent)
    /// each, admitted or turned away, with the time, the outcome, the caller (also a known key
    /// that was refused) and the client's address when known, for audit logs and analytics. The
    /// hook runs on the request's task and must not block; [`events::channel`](crate::events::channel)
    /// takes the events to a task of their own, dropping and counting those it has no room for.
    /// Called again, it replaces the hook. Without one (the default) no event is made.
    ///
    /// ```
    /// use keygate::{auth::AuthLayer, events, store::MemoryStore};
    ///
    /// let (sender, receiver) = events::channel(1024);
    /// let layer = AuthLayer::new(MemoryStore::new()).events(sender);
    /// // tokio::spawn(audit(receiver));
    /// # let _ = (layer, receiver);
    /// ```
    pub fn events(mut self, hook: impl crate::events::AuthEvents) -> Self {
        self.config().events = Some(Arc::new(hook));
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
    /// (401) without asking the store. Keys without the prefix still go to the store. Called
    /// again, it adds another format; its keys are of no environment (see
    /// [`key_environment`](Self::key_environment)).
    ///
    /// # Panics
    ///
    /// If `format`'s prefix is already that of an environment's format.
    pub fn key_format(self, format: KeyFormat) -> Self {
        self.add_format("key_format", format, None)
    }

    /// Keys of `format` belong to the environment `name` (such as `"live"` or `"test"`): they
    /// must pass its checksum, as with [`key_format`](Self::key_format), and their
    /// [`Principal::environment`](crate::Principal::environment) is `name`. Called once per
    /// environment; keys of no configured prefix still go to the store, of no environment. When
    /// prefixes overlap (`wk_` and `wk_live_`), a key is read with the longest prefix it has,
    /// unless it is a well-formed key of a shorter one.
    ///
    /// ```
    /// use keygate::{auth::AuthLayer, key::KeyFormat, store::MemoryStore};
    ///
    /// let live = KeyFormat::new("wk_live_")?;
    /// let test = KeyFormat::new("wk_test_")?;
    /// let layer = AuthLayer::new(MemoryStore::with_format(live.clone()))
    ///     .key_environment("live", live)
    ///     .key_environment("test", test);
    /// # let _ = layer;
    /// # Ok::<(), keygate::key::FormatError>(())
    /// ```
    ///
    /// # Panics
    ///
    /// If `format`'s prefix is already that of another environment's format, or of one without
    /// an environment: a key of that prefix would belong to two.
    pub fn key_environment(self, name: impl Into<Arc<str>>, format: KeyFormat) -> Self {
        self.add_format("key_environment", format, Some(name.into()))
    }

    fn add_format(
        mut self,
        method: &str,
        format: KeyFormat,
        environment: Option<Arc<str>>,
    ) -> Self {
        if let Err(taken) = self.keys().formats.add(format, environment) {
            match taken.environment {
                Some(other) => panic!(
                    "AuthLayer::{method}: the prefix {:?} is already the format of the environment {other:?}",
                    taken.prefix
                ),
                None => panic!(
                    "AuthLayer::{method}: the prefix {:?} is already a format without an environment",
                    taken.prefix
                ),
            }
        }
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
            .field("strip_credential", &self.config.strip)
            .field("rendering", &self.config.rendering)
            .field("events", &self.config.events.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    #[should_panic(
        expected = "the prefix \"wk_live_\" is already the format of the environment \"live\""
    )]
    fn one_prefix_in_two_environments_is_a_configuration_error() {
        let format = KeyFormat::new("wk_live_").unwrap();
        let _ = AuthLayer::new(MemoryStore::new())
            .key_environment("live", format.clone())
            .key_environment("test", format);
    }

    #[test]
    #[should_panic(expected = "already a format without an environment")]
    fn a_prefix_with_and_without_an_environment_is_a_configuration_error() {
        let format = KeyFormat::new("wk_").unwrap();
        let _ = AuthLayer::new(MemoryStore::new())
            .key_format(format.clone())
            .key_environment("live", format);
    }

    #[test]
    #[should_panic(expected = "no request could carry a credential")]
    fn a_layer_without_sources_is_a_configuration_error() {
        let _ = AuthLayer::new(MemoryStore::new()).sources([]);
    }
}
