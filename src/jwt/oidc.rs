//! [`OidcProvider`]: an issuer's keys found from its URL alone, by OpenID Connect Discovery
//! (feature `jwks`).

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::task::AbortHandle;

use super::jwks::{GetError, default_client, get_limited, redacted};
use super::{JwksError, JwtVerifier, KeySet, KeySource, Refetch, RemoteJwks, RemoteJwksBuilder};
use crate::MaybeReady;

/// How often the discovery document is fetched again.
const DEFAULT_DOCUMENT_REFRESH: Duration = Duration::from_secs(60 * 60);
/// The first wait before fetching the document again after a failure (doubling, up to the
/// refresh interval).
const DOCUMENT_RETRY: Duration = Duration::from_secs(30);
/// How long one fetch of the document may take.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest document accepted, in bytes.
const DEFAULT_MAX_DOCUMENT: usize = 256 * 1024;
/// The longest text of a document's `issuer` quoted in an error.
const MAX_SHOWN: usize = 200;

/// Why an issuer could not be discovered.
///
/// Messages never carry a response body, nor a URL's credentials or query.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The issuer is not an absolute `https` URL without credentials, query or fragment (or
    /// `http`, when allowed). Holds the issuer without credentials or query.
    #[error("the issuer {0:?} is not an https URL without query or fragment")]
    Issuer(String),
    /// The HTTP client could not be built.
    #[error("the HTTP client could not be built: {0}")]
    Client(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The request for the document failed: connection, TLS, protocol.
    #[error("the discovery request failed: {0}")]
    Request(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The document's URL answered with a status other than 200.
    #[error("the discovery document's URL answered HTTP {0}")]
    Status(u16),
    /// The document was larger than the limit.
    #[error("the discovery document is larger than {0} bytes")]
    TooLarge(usize),
    /// The fetch took longer than the timeout.
    #[error("the discovery request timed out")]
    Timeout,
    /// The body is not a discovery document (a JSON object with `issuer` and `jwks_uri`).
    #[error("the response is not an OpenID Provider configuration: {0}")]
    Document(#[source] Arc<serde_json::Error>),
    /// The document's `issuer` is not the issuer asked for (OpenID Connect Discovery §4.3): its
    /// keys must not be trusted for the issuer asked for.
    #[error("the discovery document is for the issuer {found:?}, not {expected:?}")]
    IssuerMismatch {
        /// The issuer asked for.
        expected: String,
        /// The document's `issuer` (cut short if long).
        found: String,
    },
    /// The document's `jwks_uri` is not an `https` URL (or `http`, when allowed).
    #[error("the discovery document's jwks_uri is not an https URL")]
    JwksUri,
    /// The key set could not be set up.
    #[error(transparent)]
    Jwks(JwksError),
}

impl From<GetError> for DiscoveryError {
    fn from(e: GetError) -> Self {
        match e {
            GetError::Request(e) => Self::Request(e),
            GetError::Status(status) => Self::Status(status),
            GetError::TooLarge(max) => Self::TooLarge(max),
            GetError::Timeout => Self::Timeout,
        }
    }
}

/// An OpenID Provider found from its issuer URL alone (OpenID Connect Discovery 1.0): its
/// `{issuer}/.well-known/openid-configuration` document is fetched, its `issuer` must equal the
/// issuer asked for (§4.3), and its `jwks_uri` becomes a [`RemoteJwks`] (refreshed, kept on
/// errors, refetched when a token names a new `kid`, throttled). The document is fetched again
/// every [`document_refresh`](OidcBuilder::document_refresh) (default 1 h): a new `jwks_uri`
/// is followed at once; a failed fetch, or a document that now names another issuer, keeps the
/// last good one.
///
/// It is a [`KeySource`]; [`verifier`](Self::verifier) gives a [`JwtVerifier`] of its keys that
/// accepts only tokens whose `iss` is this issuer, to be given its audience and claim rules and
/// put with others into [`JwtIssuers`](super::JwtIssuers). `https` only, unless
/// [`allow_http`](OidcBuilder::allow_http) says otherwise (for tests on loopback).
///
/// ```no_run
/// use keygate::{auth::AuthLayer, jwt::OidcProvider, store::MemoryStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let google = OidcProvider::builder("https://accounts.google.com").discover().await?;
/// let corp = OidcProvider::builder("https://login.example.com/realms/corp").discover().await?;
///
/// let layer = AuthLayer::new(MemoryStore::new())
///     .jwt(google.verifier().audience(["my-api"]))
///     .jwt(corp.verifier().audience(["my-api"]).subject_claim("preferred_username"));
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct OidcProvider {
    inner: Arc<Provider>,
}

struct Provider {
    issuer: String,
    jwks: RemoteJwks,
    jwks_uri: Arc<RwLock<String>>,
    task: AbortHandle,
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Options for an [`OidcProvider`], from [`OidcProvider::builder`].
#[must_use]
pub struct OidcBuilder {
    issuer: String,
    allow_http: bool,
    document_refresh: Duration,
    timeout: Duration,
    max_document: usize,
    client: Option<reqwest::Client>,
    jwks: Option<Box<dyn FnOnce(RemoteJwksBuilder) -> RemoteJwksBuilder + Send>>,
}

#[derive(Deserialize)]
struct Document {
    issuer: String,
    jwks_uri: Option<String>,
}

/// What the document refresh needs.
struct Discovery {
    issuer: String,
    url: reqwest::Url,
    client: reqwest::Client,
    allow_http: bool,
    timeout: Duration,
    max_document: usize,
}

impl OidcProvider {
    /// Starts configuring the provider of `issuer`, such as `https://accounts.example.com`.
    pub fn builder(issuer: impl Into<String>) -> OidcBuilder {
        OidcBuilder {
            issuer: issuer.into(),
            allow_http: false,
            document_refresh: DEFAULT_DOCUMENT_REFRESH,
            timeout: DEFAULT_TIMEOUT,
            max_document: DEFAULT_MAX_DOCUMENT,
            client: None,
            jwks: None,
        }
    }

    /// The issuer, as configured (and as its document says).
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The key set's URL, as the last good document gave it (without credentials or query).
    pub fn jwks_uri(&self) -> String {
        self.inner
            .jwks_uri
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The provider's key set.
    pub fn jwks(&self) -> &RemoteJwks {
        &self.inner.jwks
    }

    /// A verifier of this provider's keys that accepts only tokens whose `iss` is its issuer.
    ///
    /// Give it an [`audience`](JwtVerifier::audience): a provider signs tokens for every
    /// client it serves with the same keys, so without one this verifier accepts tokens minted
    /// for other services of the provider (and ID tokens, unless
    /// [`require_typ`](JwtVerifier::require_typ) asks for `at+jwt`). With several issuers,
    /// consider a [`subject_prefix`](JwtVerifier::subject_prefix), so that its subjects cannot
    /// share limits with those of another issuer or with API keys of the same id.
    pub fn verifier(&self) -> JwtVerifier {
        JwtVerifier::new(self.clone()).issuer([self.inner.issuer.clone()])
    }
}

impl OidcBuilder {
    /// Allows an `http` issuer and `jwks_uri` (default: `https` only). Tokens are then verified
    /// with keys anyone on the path can replace: for tests on loopback only.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }

    /// How often the discovery document is fetched again (default 1 h).
    pub fn document_refresh(mut self, interval: Duration) -> Self {
        self.document_refresh = interval.max(Duration::from_millis(10));
        self
    }

    /// How long one fetch of the document may take (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest document accepted (default 256 KiB).
    pub fn max_document(mut self, bytes: usize) -> Self {
        self.max_document = bytes;
        self
    }

    /// Fetches with this client (document and key set), instead of keygate's own. keygate's own
    /// follows at most 5 redirects and never from `https` to `http`; a client of your own
    /// follows its own redirect policy, so give it one that does not downgrade either.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Configures the key set (refresh intervals, waits, limits), as on [`RemoteJwks::builder`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use keygate::jwt::OidcProvider;
    ///
    /// let builder = OidcProvider::builder("https://login.example.com")
    ///     .jwks(|jwks| jwks.refresh_interval(Duration::from_secs(600)));
    /// # let _ = builder;
    /// ```
    pub fn jwks(
        mut self,
        configure: impl FnOnce(RemoteJwksBuilder) -> RemoteJwksBuilder + Send + 'static,
    ) -> Self {
        self.jwks = Some(Box::new(configure));
        self
    }

    /// Fetches the discovery document, checks it, sets up the key set (its first fetch is made
    /// here; see [`RemoteJwks`] for what happens when it fails) and starts refreshing the
    /// document on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// The issuer is not an acceptable URL, the document cannot be had or read, names another
    /// issuer, or has no acceptable `jwks_uri`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn discover(self) -> Result<OidcProvider, DiscoveryError> {
        let parsed = reqwest::Url::parse(&self.issuer);
        let shown = parsed
            .as_ref()
            .map_or_else(|_| shorten(&self.issuer), redacted);
        let issuer_error = || DiscoveryError::Issuer(shown.clone());
        let issuer_url = parsed.map_err(|_| issuer_error())?;
        if !scheme_allowed(&issuer_url, self.allow_http)
            || issuer_url.query().is_some()
            || issuer_url.fragment().is_some()
            || !issuer_url.username().is_empty()
            || issuer_url.password().is_some()
        {
            return Err(issuer_error());
        }
        // §4: any terminating `/` of the issuer is removed before the well-known path is added.
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let url = reqwest::Url::parse(&url).map_err(|_| issuer_error())?;
        let client = match self.client {
            Some(client) => client,
            None => default_client().map_err(|e| match e {
                JwksError::Client(e) => DiscoveryError::Client(e),
                other => DiscoveryError::Jwks(other),
            })?,
        };
        let discovery = Discovery {
            issuer: self.issuer,
            url,
            client,
            allow_http: self.allow_http,
            timeout: self.timeout,
            max_document: self.max_document,
        };
        let jwks_uri = discovery.fetch().await?;
        let mut jwks = RemoteJwks::builder(jwks_uri.as_str()).http_client(discovery.client.clone());
        if let Some(configure) = self.jwks {
            jwks = configure(jwks);
        }
        let jwks = jwks.build().await.map_err(DiscoveryError::Jwks)?;
        let shown = Arc::new(RwLock::new(redacted(&jwks_uri)));
        let issuer = discovery.issuer.clone();
        let task = tokio::spawn(refresh_document(
            discovery,
            jwks.clone(),
            shown.clone(),
            self.document_refresh,
        ))
        .abort_handle();
        tracing::info!(target: "keygate", issuer = %issuer, jwks_uri = %jwks.shown_url(), "OpenID provider discovered");
        Ok(OidcProvider {
            inner: Arc::new(Provider {
                issuer,
                jwks,
                jwks_uri: shown,
                task,
            }),
        })
    }
}

impl Discovery {
    /// Fetches and checks the document; returns its `jwks_uri`.
    async fn fetch(&self) -> Result<reqwest::Url, DiscoveryError> {
        let fetched = get_limited(
            &self.client,
            self.url.clone(),
            "application/json",
            self.timeout,
            self.max_document,
        )
        .await?;
        let document: Document = serde_json::from_slice(&fetched.body)
            .map_err(|e| DiscoveryError::Document(Arc::new(e)))?;
        // §4.3: exactly the issuer asked for, byte for byte.
        if document.issuer != self.issuer {
            return Err(DiscoveryError::IssuerMismatch {
                expected: self.issuer.clone(),
                found: shorten(&document.issuer),
            });
        }
        let jwks_uri = document
            .jwks_uri
            .and_then(|uri| reqwest::Url::parse(&uri).ok())
            .filter(|uri| scheme_allowed(uri, self.allow_http))
            .ok_or(DiscoveryError::JwksUri)?;
        Ok(jwks_uri)
    }
}

/// Fetches the document again on its interval, following a new `jwks_uri`.
async fn refresh_document(
    discovery: Discovery,
    jwks: RemoteJwks,
    shown: Arc<RwLock<String>>,
    interval: Duration,
) {
    let mut delay = interval;
    let mut failures: u32 = 0;
    loop {
        tokio::time::sleep(delay).await;
        match discovery.fetch().await {
            Ok(jwks_uri) => {
                if failures > 0 {
                    tracing::info!(target: "keygate", issuer = %discovery.issuer, failures, "discovery document fetched again after failures");
                }
                failures = 0;
                delay = interval;
                let now = redacted(&jwks_uri);
                let changed = {
                    let mut current = shown.write().unwrap_or_else(PoisonError::into_inner);
                    let changed = *current != now;
                    *current = now;
                    changed
                };
                if changed {
                    tracing::info!(target: "keygate", issuer = %discovery.issuer, jwks_uri = %redacted(&jwks_uri), "the discovery document names a new jwks_uri");
                }
                jwks.set_url(jwks_uri);
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(target: "keygate", issuer = %discovery.issuer, error = %e, "discovery document fetch failed; keeping the last good one");
                } else {
                    tracing::debug!(target: "keygate", issuer = %discovery.issuer, error = %e, failures = failures + 1, "discovery document fetch failed again");
                }
                delay = DOCUMENT_RETRY
                    .saturating_mul(1 << failures.min(16))
                    .min(interval);
                failures = failures.saturating_add(1);
            }
        }
    }
}

fn scheme_allowed(url: &reqwest::Url, allow_http: bool) -> bool {
    url.host().is_some() && (url.scheme() == "https" || (allow_http && url.scheme() == "http"))
}

/// `s`, cut to at most [`MAX_SHOWN`] bytes on a character boundary.
fn shorten(s: &str) -> String {
    let mut end = s.len().min(MAX_SHOWN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl KeySource for OidcProvider {
    fn current(&self) -> Arc<KeySet> {
        self.inner.jwks.current()
    }

    fn current_generation(&self) -> u64 {
        self.inner.jwks.current_generation()
    }

    fn unknown_kid(&self, kid: &str) -> Option<MaybeReady<Refetch>> {
        self.inner.jwks.unknown_kid(kid)
    }
}

impl fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.inner.issuer)
            .field("jwks", &self.inner.jwks)
            .finish()
    }
}

impl fmt::Debug for OidcBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcBuilder")
            .field("issuer", &self.issuer)
            .field("allow_http", &self.allow_http)
            .field("document_refresh", &self.document_refresh)
            .field("timeout", &self.timeout)
            .field("max_document", &self.max_document)
            .field("custom_client", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn issuers_that_are_not_https_urls_are_refused_before_any_request() {
        for issuer in [
            "http://login.example.com",
            "https://login.example.com/?tenant=1",
            "https://login.example.com/#x",
            "https://user:pw@login.example.com",
            "login.example.com",
            "ftp://login.example.com",
        ] {
            let e = OidcProvider::builder(issuer).discover().await.unwrap_err();
            assert!(matches!(e, DiscoveryError::Issuer(_)), "{issuer}: {e:?}");
        }
    }

    #[test]
    fn shorten_keeps_char_boundaries() {
        let long = "é".repeat(300);
        let short = shorten(&long);
        assert!(short.len() <= MAX_SHOWN && long.starts_with(&short));
    }
}
