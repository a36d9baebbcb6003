//! The credentials an [`AuthLayer`] accepts, as the security schemes of a
//! [utoipa](https://docs.rs/utoipa) OpenAPI document (feature `utoipa`).
//!
//! An API described with utoipa says in its document how clients authenticate: which security
//! schemes there are (`components.securitySchemes`) and which of them a request needs
//! (`security`). Written by hand, that description drifts from what the layer really accepts.
//! [`AuthLayer::security_schemes`] reads it from the layer instead: one scheme per configured
//! [credential source](crate::credential), and a requirement that any one of them satisfies.
//!
//! ```
//! use keygate::prelude::*;
//! use serde_json::json;
//! use utoipa::OpenApi;
//!
//! #[derive(OpenApi)]
//! #[openapi(info(title = "weather", version = "1"))]
//! struct ApiDoc;
//!
//! let layer = AuthLayer::new(MemoryStore::new()).sources([
//!     CredentialSource::bearer(),
//!     CredentialSource::header("x-api-key"),
//! ]);
//! let mut doc = ApiDoc::openapi();
//! keygate::openapi::add_security_schemes(&mut doc, &layer);
//!
//! let doc = serde_json::to_value(&doc)?;
//! assert_eq!(
//!     doc["components"]["securitySchemes"],
//!     json!({
//!         "bearer": {
//!             "type": "http",
//!             "scheme": "bearer",
//!             "description": "An API key as the bearer token."
//!         },
//!         "api_key_header": {
//!             "type": "apiKey",
//!             "in": "header",
//!             "name": "x-api-key",
//!             "description": "An API key."
//!         }
//!     })
//! );
//! // Either one will do: OpenAPI reads a list of requirements as "any of".
//! assert_eq!(doc["security"], json!([{ "bearer": [] }, { "api_key_header": [] }]));
//! # Ok::<(), serde_json::Error>(())
//! ```
//!
//! # Scheme names
//!
//! | source | scheme name | scheme |
//! |---|---|---|
//! | [`CredentialSource::bearer`] | [`BEARER`] `"bearer"` | `http`, `scheme: bearer`; `bearerFormat: JWT` when the layer verifies JWTs |
//! | [`CredentialSource::header`] | [`API_KEY_HEADER`] `"api_key_header"` | `apiKey` `in: header`, with the header's name |
//! | [`CredentialSource::query`] | [`API_KEY_QUERY`] `"api_key_query"` | `apiKey` `in: query`, with the parameter's name |
//! | [`CredentialSource::cookie`] | [`API_KEY_COOKIE`] `"api_key_cookie"` | `apiKey` `in: cookie`, with the cookie's name |
//! | [`CredentialSource::custom`] | — | none: keygate cannot know where it looks |
//!
//! A second source of the same kind is named with a suffix, in the order of the layer's
//! sources: `api_key_header_2`, `api_key_header_3`. Each scheme's description says what the
//! layer accepts there: an API key, a JWT, or either. [`SecuritySchemes::rename`] gives a scheme
//! the name an existing document or client generator expects, and
//! [`SecuritySchemes::with_scheme`] adds one, for a custom source, or replaces one.
//!
//! # With `#[openapi(modifiers(...))]`
//!
//! [`SecuritySchemes`] is a [`Modify`]. utoipa's derive takes modifiers that are values known
//! to the type, so a unit type can stand for the layer's schemes. They depend on the layer's
//! sources and on whether it takes API keys and JWTs, not on the keys in its store: one function
//! can build the layer for the router and, over an empty store, for the document.
//!
//! ```
//! use keygate::prelude::*;
//! use utoipa::{Modify, OpenApi, openapi};
//!
//! /// The layer in front of the API.
//! fn auth(store: impl KeyStore) -> AuthLayer {
//!     AuthLayer::new(store).sources([CredentialSource::header("x-api-key")])
//! }
//!
//! struct Security;
//!
//! impl Modify for Security {
//!     fn modify(&self, doc: &mut openapi::OpenApi) {
//!         auth(MemoryStore::new()).security_schemes().modify(doc);
//!     }
//! }
//!
//! #[derive(OpenApi)]
//! #[openapi(modifiers(&Security))]
//! struct ApiDoc;
//!
//! let doc = ApiDoc::openapi();
//! let schemes = &doc.components.as_ref().unwrap().security_schemes;
//! assert!(schemes.contains_key("api_key_header"));
//! ```
//!
//! # One operation
//!
//! [`SecuritySchemes::add_to`] requires the schemes of every operation. For some operations
//! only, add the schemes with [`SecuritySchemes::add_schemes_to`] and set each operation's
//! `security` to [`SecuritySchemes::requirements`], or to
//! [`SecuritySchemes::requirements_with_scopes`] for the scopes a
//! [`RequireScopeLayer`](crate::scope::RequireScopeLayer) checks there. In `#[utoipa::path]`
//! the stable names can be written directly: `security(("bearer" = []), ("api_key_header" = []))`.
//!
//! [`AuthLayer`]: crate::auth::AuthLayer
//! [`AuthLayer::security_schemes`]: crate::auth::AuthLayer::security_schemes
//! [`CredentialSource::bearer`]: crate::credential::CredentialSource::bearer
//! [`CredentialSource::header`]: crate::credential::CredentialSource::header
//! [`CredentialSource::query`]: crate::credential::CredentialSource::query
//! [`CredentialSource::cookie`]: crate::credential::CredentialSource::cookie
//! [`CredentialSource::custom`]: crate::credential::CredentialSource::custom

use std::fmt;

use utoipa::Modify;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{Components, OpenApi};

use crate::auth::AuthLayer;
use crate::credential::SourceKind;

/// The name of the scheme of [`CredentialSource::bearer`](crate::credential::CredentialSource::bearer).
///
/// ```
/// use keygate::{auth::AuthLayer, openapi, store::MemoryStore};
///
/// let schemes = AuthLayer::new(MemoryStore::new()).security_schemes();
/// assert!(schemes.iter().any(|(name, _)| name == openapi::BEARER));
/// ```
pub const BEARER: &str = "bearer";

/// The name of the scheme of the first
/// [`CredentialSource::header`](crate::credential::CredentialSource::header).
///
/// ```
/// use keygate::{auth::AuthLayer, openapi, store::MemoryStore};
///
/// let schemes = AuthLayer::new(MemoryStore::new()).security_schemes();
/// assert!(schemes.iter().any(|(name, _)| name == openapi::API_KEY_HEADER));
/// ```
pub const API_KEY_HEADER: &str = "api_key_header";

/// The name of the scheme of the first
/// [`CredentialSource::query`](crate::credential::CredentialSource::query).
///
/// ```
/// use keygate::{auth::AuthLayer, openapi, store::MemoryStore};
///
/// let schemes = AuthLayer::new(MemoryStore::new()).security_schemes();
/// assert!(schemes.iter().any(|(name, _)| name == openapi::API_KEY_QUERY));
/// ```
pub const API_KEY_QUERY: &str = "api_key_query";

/// The name of the scheme of the first
/// [`CredentialSource::cookie`](crate::credential::CredentialSource::cookie).
///
/// ```
/// use keygate::{auth::AuthLayer, credential::CredentialSource, openapi, store::MemoryStore};
///
/// let layer = AuthLayer::new(MemoryStore::new()).source(CredentialSource::cookie("session"));
/// assert!(layer.security_schemes().iter().any(|(name, _)| name == openapi::API_KEY_COOKIE));
/// ```
pub const API_KEY_COOKIE: &str = "api_key_cookie";

/// The security schemes of an [`AuthLayer`], named, in the order of its sources; made by
/// [`AuthLayer::security_schemes`]. See the [module documentation](self) for the names.
///
/// ```
/// use keygate::prelude::*;
///
/// let layer = AuthLayer::new(MemoryStore::new());
/// let schemes = layer.security_schemes().rename("api_key_header", "ApiKeyAuth");
/// let names: Vec<&str> = schemes.iter().map(|(name, _)| name).collect();
/// assert_eq!(names, ["bearer", "ApiKeyAuth", "api_key_query"]);
/// ```
#[derive(Clone)]
#[must_use]
pub struct SecuritySchemes {
    schemes: Vec<(String, SecurityScheme)>,
    /// Whether the layer lets requests without a credential through.
    optional: bool,
}

/// What a layer accepts in a source, in the words of a scheme's description.
fn accepted(keys: bool, jwts: bool) -> &'static str {
    match (keys, jwts) {
        (true, false) => "An API key.",
        (false, true) => "A JWT.",
        _ => "An API key or a JWT.",
    }
}

/// What a layer accepts as the bearer token.
fn accepted_as_bearer(keys: bool, jwts: bool) -> &'static str {
    match (keys, jwts) {
        (true, false) => "An API key as the bearer token.",
        (false, true) => "A JWT as the bearer token.",
        _ => "A JWT or an API key as the bearer token.",
    }
}

impl SecuritySchemes {
    fn of<M>(layer: &AuthLayer<M>) -> Self {
        let (keys, jwts) = (layer.accepts_keys(), layer.accepts_jwts());
        let mut schemes: Vec<(String, SecurityScheme)> = Vec::new();
        // How many sources of each named kind came before, for the suffixes.
        let mut seen = [0usize; 4];
        for source in layer.credential_sources() {
            let (slot, base, scheme) = match (source.kind(), source.name()) {
                (SourceKind::Bearer, _) => {
                    let mut http = HttpBuilder::new().scheme(HttpAuthScheme::Bearer);
                    if jwts {
                        http = http.bearer_format("JWT");
                    }
                    let http = http
                        .description(Some(accepted_as_bearer(keys, jwts)))
                        .build();
                    (0, BEARER, SecurityScheme::Http(http))
                }
                (SourceKind::Header, Some(name)) => {
                    let value = ApiKeyValue::with_description(name, accepted(keys, jwts));
                    (
                        1,
                        API_KEY_HEADER,
                        SecurityScheme::ApiKey(ApiKey::Header(value)),
                    )
                }
                (SourceKind::Query, Some(name)) => {
                    let value = ApiKeyValue::with_description(name, accepted(keys, jwts));
                    (
                        2,
                        API_KEY_QUERY,
                        SecurityScheme::ApiKey(ApiKey::Query(value)),
                    )
                }
                (SourceKind::Cookie, Some(name)) => {
                    let value = ApiKeyValue::with_description(name, accepted(keys, jwts));
                    (
                        3,
                        API_KEY_COOKIE,
                        SecurityScheme::ApiKey(ApiKey::Cookie(value)),
                    )
                }
                // A custom extractor may look anywhere: the user describes it, with
                // `with_scheme`.
                _ => continue,
            };
            seen[slot] += 1;
            let name = match seen[slot] {
                1 => base.to_owned(),
                n => format!("{base}_{n}"),
            };
            schemes.push((name, scheme));
        }
        Self {
            schemes,
            optional: layer.is_optional(),
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.schemes.iter().position(|(n, _)| n == name)
    }

    /// Gives the scheme `from` the name `to`, keeping its place.
    ///
    /// ```
    /// use keygate::{auth::AuthLayer, openapi, store::MemoryStore};
    ///
    /// let schemes = AuthLayer::new(MemoryStore::new())
    ///     .security_schemes()
    ///     .rename(openapi::BEARER, "BearerAuth")
    ///     .rename(openapi::API_KEY_QUERY, "ApiKeyQuery");
    /// let names: Vec<&str> = schemes.iter().map(|(name, _)| name).collect();
    /// assert_eq!(names, ["BearerAuth", "api_key_header", "ApiKeyQuery"]);
    /// ```
    ///
    /// # Panics
    ///
    /// If no scheme is named `from`, or another scheme is already named `to`: a mistake in the
    /// document's configuration, found when the document is built.
    pub fn rename(mut self, from: &str, to: impl Into<String>) -> Self {
        let to = to.into();
        let Some(at) = self.position(from) else {
            panic!("SecuritySchemes::rename: no scheme is named {from:?}");
        };
        if self.position(&to).is_some_and(|other| other != at) {
            panic!("SecuritySchemes::rename: {to:?} already names another scheme");
        }
        self.schemes[at].0 = to;
        self
    }

    /// Adds the scheme `scheme` as `name`, after the others; or, when a scheme is already named
    /// `name`, replaces it in its place. For a [custom source](crate::credential::CredentialSource::custom),
    /// which has no scheme of its own, or for a description of your own.
    ///
    /// ```
    /// use keygate::credential::{CredentialSource, RequestHead};
    /// use keygate::prelude::*;
    /// use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
    ///
    /// let legacy = CredentialSource::custom(|head: &RequestHead<'_>| {
    ///     Ok(head.headers.get("x-legacy-token").and_then(|v| v.to_str().ok()).map(str::to_owned))
    /// });
    /// let layer = AuthLayer::new(MemoryStore::new()).source(legacy);
    /// let schemes = layer.security_schemes().with_scheme(
    ///     "legacy_token",
    ///     SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-legacy-token"))),
    /// );
    /// let names: Vec<&str> = schemes.iter().map(|(name, _)| name).collect();
    /// assert_eq!(names, ["bearer", "api_key_header", "api_key_query", "legacy_token"]);
    /// ```
    pub fn with_scheme(
        mut self,
        name: impl Into<String>,
        scheme: impl Into<SecurityScheme>,
    ) -> Self {
        let name = name.into();
        let scheme = scheme.into();
        match self.position(&name) {
            Some(at) => self.schemes[at].1 = scheme,
            None => self.schemes.push((name, scheme)),
        }
        self
    }

    /// The schemes with their names, in the order of the layer's sources (then those added
    /// with [`with_scheme`](Self::with_scheme)).
    ///
    /// ```
    /// use keygate::prelude::*;
    /// use utoipa::openapi::security::{ApiKey, SecurityScheme};
    ///
    /// let layer = AuthLayer::new(MemoryStore::new()).sources([CredentialSource::query("key")]);
    /// let schemes = layer.security_schemes();
    /// let (name, scheme) = schemes.iter().next().unwrap();
    /// assert_eq!(name, "api_key_query");
    /// assert!(matches!(scheme, SecurityScheme::ApiKey(ApiKey::Query(v)) if v.name == "key"));
    /// ```
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &SecurityScheme)> {
        self.schemes
            .iter()
            .map(|(name, scheme)| (name.as_str(), scheme))
    }

    /// The security requirements a request of the layer meets: one per scheme, since any one
    /// of them will do (OpenAPI reads a list of requirements as "any of"), and, when the layer
    /// is [`optional`](crate::auth::AuthLayer::optional), the empty requirement `{}` last: no
    /// credential at all. Empty when there is no scheme.
    ///
    /// ```
    /// use keygate::prelude::*;
    ///
    /// let layer = AuthLayer::new(MemoryStore::new())
    ///     .sources([CredentialSource::header("x-api-key")])
    ///     .optional();
    /// let requirements = serde_json::to_value(layer.security_schemes().requirements())?;
    /// assert_eq!(requirements, serde_json::json!([{ "api_key_header": [] }, {}]));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn requirements(&self) -> Vec<SecurityRequirement> {
        let mut requirements = self.requirements_with(&[]);
        if self.optional && !requirements.is_empty() {
            requirements.push(SecurityRequirement::default());
        }
        requirements
    }

    /// The security requirements of an operation that needs `scopes` as well: one per scheme,
    /// each listing the scopes, and never the empty requirement, since a caller without a
    /// credential has no scopes. (OpenAPI 3.1, which utoipa writes, lets a requirement of any
    /// scheme list the roles it needs; the scopes of a key or token are such roles.)
    ///
    /// ```
    /// use keygate::prelude::*;
    /// use utoipa::openapi::path::OperationBuilder;
    ///
    /// let layer = AuthLayer::new(MemoryStore::new())
    ///     .sources([CredentialSource::bearer(), CredentialSource::header("x-api-key")]);
    /// let schemes = layer.security_schemes();
    /// let mut operation = OperationBuilder::new().operation_id(Some("current")).build();
    /// operation.security = Some(schemes.requirements_with_scopes(["weather:read"]));
    /// assert_eq!(
    ///     serde_json::to_value(&operation)?["security"],
    ///     serde_json::json!([
    ///         { "bearer": ["weather:read"] },
    ///         { "api_key_header": ["weather:read"] },
    ///     ])
    /// );
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn requirements_with_scopes<I>(&self, scopes: I) -> Vec<SecurityRequirement>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        self.requirements_with(&scopes)
    }

    fn requirements_with(&self, scopes: &[String]) -> Vec<SecurityRequirement> {
        self.schemes
            .iter()
            .map(|(name, _)| SecurityRequirement::new(name.as_str(), scopes.iter().cloned()))
            .collect()
    }

    /// Puts the schemes into `doc`'s `components.securitySchemes`, replacing schemes of the
    /// same names, and requires none of them: for documents whose operations each say what
    /// they require.
    ///
    /// ```
    /// use keygate::prelude::*;
    /// use utoipa::openapi::OpenApiBuilder;
    ///
    /// let mut doc = OpenApiBuilder::new().build();
    /// AuthLayer::new(MemoryStore::new()).security_schemes().add_schemes_to(&mut doc);
    /// assert_eq!(doc.components.unwrap().security_schemes.len(), 3);
    /// assert!(doc.security.is_none());
    /// ```
    pub fn add_schemes_to(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Components::new);
        for (name, scheme) in &self.schemes {
            components.add_security_scheme(name.as_str(), scheme.clone());
        }
    }

    /// Puts the schemes into `doc` ([`add_schemes_to`](Self::add_schemes_to)) and requires
    /// them of every operation: the [`requirements`](Self::requirements) go into the
    /// document's top-level `security`, after the requirements already there, as further ways
    /// to authenticate. A requirement already there is not added twice. What [`Modify`] does.
    ///
    /// ```
    /// use keygate::prelude::*;
    /// use utoipa::openapi::OpenApiBuilder;
    ///
    /// let mut doc = OpenApiBuilder::new().build();
    /// let schemes = AuthLayer::new(MemoryStore::new()).security_schemes();
    /// schemes.add_to(&mut doc);
    /// schemes.add_to(&mut doc);
    /// assert_eq!(doc.security.unwrap().len(), 3);
    /// ```
    pub fn add_to(&self, doc: &mut OpenApi) {
        self.add_schemes_to(doc);
        let requirements = self.requirements();
        if requirements.is_empty() {
            return;
        }
        let security = doc.security.get_or_insert_with(Vec::new);
        for requirement in requirements {
            if !security.contains(&requirement) {
                security.push(requirement);
            }
        }
    }
}

/// [`SecuritySchemes::add_to`], for `#[openapi(modifiers(...))]` and other users of utoipa's
/// modifiers.
///
/// ```
/// use keygate::prelude::*;
/// use utoipa::{Modify, OpenApi};
///
/// #[derive(OpenApi)]
/// struct ApiDoc;
///
/// let mut doc = ApiDoc::openapi();
/// AuthLayer::new(MemoryStore::new()).security_schemes().modify(&mut doc);
/// assert_eq!(doc.security.unwrap().len(), 3);
/// ```
impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApi) {
        self.add_to(openapi);
    }
}

impl fmt::Debug for SecuritySchemes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // utoipa's types have `Debug` only with its `debug` feature: the names tell them apart.
        let names: Vec<&str> = self.iter().map(|(name, _)| name).collect();
        f.debug_struct("SecuritySchemes")
            .field("schemes", &names)
            .field("optional", &self.optional)
            .finish()
    }
}

/// Adds the security schemes of `layer` to `doc` and requires them of every operation:
/// `layer.security_schemes().add_to(doc)` (see [`SecuritySchemes::add_to`]).
///
/// ```
/// use keygate::prelude::*;
/// use utoipa::OpenApi;
///
/// #[derive(OpenApi)]
/// struct ApiDoc;
///
/// let layer = AuthLayer::new(MemoryStore::new());
/// let mut doc = ApiDoc::openapi();
/// keygate::openapi::add_security_schemes(&mut doc, &layer);
/// let schemes = &doc.components.as_ref().unwrap().security_schemes;
/// assert_eq!(
///     schemes.keys().collect::<Vec<_>>(),
///     ["api_key_header", "api_key_query", "bearer"]
/// );
/// ```
pub fn add_security_schemes<M>(doc: &mut OpenApi, layer: &AuthLayer<M>) {
    layer.security_schemes().add_to(doc);
}

impl<M> AuthLayer<M> {
    /// The layer's credential sources as OpenAPI security schemes, for a
    /// [utoipa](https://docs.rs/utoipa) document: see [`openapi`](crate::openapi) for the
    /// schemes and their names.
    ///
    /// ```
    /// use keygate::prelude::*;
    /// use utoipa::openapi::OpenApiBuilder;
    ///
    /// let layer = AuthLayer::new(MemoryStore::new()).sources([CredentialSource::query("key")]);
    /// let mut doc = OpenApiBuilder::new().build();
    /// layer.security_schemes().add_to(&mut doc);
    /// let doc = serde_json::to_value(&doc)?;
    /// assert_eq!(doc["components"]["securitySchemes"]["api_key_query"]["name"], "key");
    /// assert_eq!(doc["security"], serde_json::json!([{ "api_key_query": [] }]));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "utoipa")))]
    pub fn security_schemes(&self) -> SecuritySchemes {
        SecuritySchemes::of(self)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use utoipa::openapi::OpenApiBuilder;

    use super::*;
    use crate::credential::{CredentialSource, RequestHead};
    use crate::store::MemoryStore;

    fn keys() -> AuthLayer {
        AuthLayer::new(MemoryStore::new())
    }

    fn names(schemes: &SecuritySchemes) -> Vec<&str> {
        schemes.iter().map(|(name, _)| name).collect()
    }

    fn json_of(value: &impl serde::Serialize) -> Value {
        serde_json::to_value(value).expect("serializes")
    }

    fn doc_with(schemes: &SecuritySchemes) -> Value {
        let mut doc = OpenApiBuilder::new().build();
        schemes.add_to(&mut doc);
        json_of(&doc)
    }

    #[test]
    fn default_sources_give_three_schemes_in_order() {
        let schemes = keys().security_schemes();
        assert_eq!(names(&schemes), [BEARER, API_KEY_HEADER, API_KEY_QUERY]);
        assert_eq!(
            json_of(&schemes.requirements()),
            json!([{ "bearer": [] }, { "api_key_header": [] }, { "api_key_query": [] }])
        );
    }

    #[test]
    fn every_named_kind_has_its_scheme() {
        let schemes = keys()
            .sources([
                CredentialSource::header("X-Api-Key"),
                CredentialSource::query("api_key"),
                CredentialSource::cookie("session"),
            ])
            .security_schemes();
        let doc = doc_with(&schemes);
        assert_eq!(
            doc["components"]["securitySchemes"],
            json!({
                "api_key_header": {
                    "type": "apiKey", "in": "header", "name": "x-api-key",
                    "description": "An API key."
                },
                "api_key_query": {
                    "type": "apiKey", "in": "query", "name": "api_key",
                    "description": "An API key."
                },
                "api_key_cookie": {
                    "type": "apiKey", "in": "cookie", "name": "session",
                    "description": "An API key."
                },
            })
        );
    }

    #[test]
    fn sources_of_one_kind_are_numbered_in_order() {
        let schemes = keys()
            .sources([
                CredentialSource::header("x-api-key"),
                CredentialSource::query("key"),
                CredentialSource::header("x-legacy-key"),
                CredentialSource::header("x-third"),
            ])
            .security_schemes();
        assert_eq!(
            names(&schemes),
            [
                "api_key_header",
                "api_key_query",
                "api_key_header_2",
                "api_key_header_3"
            ]
        );
        let doc = doc_with(&schemes);
        assert_eq!(
            doc["components"]["securitySchemes"]["api_key_header_2"]["name"],
            "x-legacy-key"
        );
    }

    #[test]
    fn custom_sources_have_no_scheme_until_given_one() {
        let custom = CredentialSource::custom(|_: &RequestHead<'_>| Ok(Some("x".to_owned())));
        let schemes = keys().sources([custom]).security_schemes();
        assert_eq!(schemes.iter().len(), 0);
        assert!(schemes.requirements().is_empty());
        let mut doc = OpenApiBuilder::new().build();
        schemes.add_to(&mut doc);
        // Nothing to require: the document does not claim that requests need nothing.
        assert!(doc.security.is_none());

        let schemes = schemes.with_scheme(
            "legacy",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-legacy"))),
        );
        assert_eq!(json_of(&schemes.requirements()), json!([{ "legacy": [] }]));
    }

    #[test]
    fn with_scheme_replaces_in_place() {
        let replacement = SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "x-api-key",
            "A key from the dashboard.",
        )));
        let schemes = keys()
            .security_schemes()
            .with_scheme(API_KEY_HEADER, replacement);
        assert_eq!(names(&schemes), [BEARER, API_KEY_HEADER, API_KEY_QUERY]);
        let doc = doc_with(&schemes);
        assert_eq!(
            doc["components"]["securitySchemes"]["api_key_header"]["description"],
            "A key from the dashboard."
        );
    }

    #[test]
    fn rename_keeps_the_place_and_the_scheme() {
        let schemes = keys().security_schemes().rename(API_KEY_QUERY, "KeyParam");
        assert_eq!(names(&schemes), [BEARER, API_KEY_HEADER, "KeyParam"]);
        let doc = doc_with(&schemes);
        assert_eq!(
            doc["components"]["securitySchemes"]["KeyParam"]["in"],
            "query"
        );
        assert_eq!(doc["security"][2], json!({ "KeyParam": [] }));
        // To its own name: nothing changes.
        let same = keys().security_schemes().rename(BEARER, BEARER);
        assert_eq!(names(&same), [BEARER, API_KEY_HEADER, API_KEY_QUERY]);
    }

    #[test]
    #[should_panic(expected = "no scheme is named \"api_key_cookie\"")]
    fn renaming_a_missing_scheme_is_a_configuration_error() {
        let _ = keys().security_schemes().rename(API_KEY_COOKIE, "Cookie");
    }

    #[test]
    #[should_panic(expected = "\"bearer\" already names another scheme")]
    fn renaming_onto_another_scheme_is_a_configuration_error() {
        let _ = keys().security_schemes().rename(API_KEY_HEADER, BEARER);
    }

    #[test]
    fn an_optional_layer_also_accepts_no_credential() {
        let schemes = keys()
            .sources([CredentialSource::bearer()])
            .optional()
            .security_schemes();
        assert_eq!(
            json_of(&schemes.requirements()),
            json!([{ "bearer": [] }, {}])
        );
        // Scopes need a caller: no empty requirement.
        assert_eq!(
            json_of(&schemes.requirements_with_scopes(["a", "b"])),
            json!([{ "bearer": ["a", "b"] }])
        );
    }

    #[test]
    fn add_to_appends_to_the_requirements_already_there_once() {
        let mut doc = OpenApiBuilder::new()
            .security(Some([SecurityRequirement::new(
                "mtls",
                Vec::<String>::new(),
            )]))
            .build();
        let schemes = keys()
            .sources([CredentialSource::bearer()])
            .security_schemes();
        schemes.add_to(&mut doc);
        schemes.add_to(&mut doc);
        assert_eq!(
            json_of(&doc)["security"],
            json!([{ "mtls": [] }, { "bearer": [] }])
        );
    }

    #[test]
    fn add_schemes_to_keeps_other_components() {
        let mut doc = OpenApiBuilder::new()
            .components(Some(
                Components::builder()
                    .security_scheme(
                        "other",
                        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-other"))),
                    )
                    .build(),
            ))
            .build();
        keys().security_schemes().add_schemes_to(&mut doc);
        let schemes = &doc
            .components
            .as_ref()
            .expect("components")
            .security_schemes;
        assert_eq!(
            schemes.keys().collect::<Vec<_>>(),
            ["api_key_header", "api_key_query", "bearer", "other"]
        );
        assert!(doc.security.is_none());
    }

    #[test]
    fn bearer_of_a_key_only_layer_has_no_jwt_format() {
        let doc = doc_with(
            &keys()
                .sources([CredentialSource::bearer()])
                .security_schemes(),
        );
        assert_eq!(
            doc["components"]["securitySchemes"],
            json!({
                "bearer": {
                    "type": "http", "scheme": "bearer",
                    "description": "An API key as the bearer token."
                }
            })
        );
    }

    #[cfg(feature = "jwt")]
    #[test]
    fn jwt_layers_say_so_in_every_scheme() {
        use crate::jwt::{JwtKey, JwtVerifier};

        let verifier = || JwtVerifier::with_keys([JwtKey::hmac(&[7; 32])]);
        let both = keys().jwt(verifier()).security_schemes();
        let doc = doc_with(&both);
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(
            schemes["bearer"],
            json!({
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "A JWT or an API key as the bearer token."
            })
        );
        assert_eq!(
            schemes["api_key_header"]["description"],
            "An API key or a JWT."
        );

        let tokens = AuthLayer::jwt_only(verifier()).security_schemes();
        let doc = doc_with(&tokens);
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(
            schemes["bearer"],
            json!({
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "A JWT as the bearer token."
            })
        );
        assert_eq!(schemes["api_key_query"]["description"], "A JWT.");
    }

    #[test]
    fn debug_names_the_schemes() {
        let schemes = keys().optional().security_schemes();
        assert_eq!(
            format!("{schemes:?}"),
            r#"SecuritySchemes { schemes: ["bearer", "api_key_header", "api_key_query"], optional: true }"#
        );
    }
}
