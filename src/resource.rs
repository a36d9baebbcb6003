//! Protected-resource metadata (RFC 9728): the document that tells a client which authorization
//! servers issue tokens for this API, which scopes it knows and how it takes a token.
//!
//! [`ProtectedResource`] is the document; [`service`](ProtectedResource::service) serves it
//! (`GET` and `HEAD`, `application/json`) at its well-known path,
//! [`metadata_path`](ProtectedResource::metadata_path). Give its
//! [`metadata_url`](ProtectedResource::metadata_url) to the
//! [`AuthLayer`](crate::auth::AuthLayer) with `.resource_metadata(...)`, and every
//! `WWW-Authenticate` challenge keygate sends points to it (RFC 9728 §5.1), so that a client
//! that was turned away can find out where to get a token.
//!
//! ```
//! use axum::{Router, body::Body, routing::get};
//! use http::{Request, StatusCode};
//! use keygate::prelude::*;
//! use keygate::resource::{BearerMethod, ProtectedResource};
//! use tower::ServiceExt as _; // oneshot
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let metadata = ProtectedResource::new("https://weather.example.com/v1")
//!     .authorization_servers(["https://auth.example.com"])
//!     .scopes_supported(["weather:read", "weather:write"])
//!     .bearer_methods_supported([BearerMethod::Header]);
//! assert_eq!(
//!     metadata.metadata_url(),
//!     "https://weather.example.com/.well-known/oauth-protected-resource/v1"
//! );
//!
//! let auth = AuthLayer::new(MemoryStore::new())
//!     .realm("weather")
//!     .resource_metadata(metadata.metadata_url());
//! let app = Router::new()
//!     .route("/v1/forecast", get(|| async { "sunny" }))
//!     .route_layer(auth) // the routes above need a credential; the document below does not
//!     .route_service(metadata.metadata_path(), metadata.service());
//!
//! let res = app.clone().oneshot(Request::get("/v1/forecast").body(Body::empty())?).await?;
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(
//!     res.headers()["www-authenticate"],
//!     "Bearer realm=\"weather\", resource_metadata=\
//!      \"https://weather.example.com/.well-known/oauth-protected-resource/v1\""
//! );
//!
//! let req = Request::get(metadata.metadata_path()).body(Body::empty())?;
//! let res = app.oneshot(req).await?;
//! assert_eq!(res.headers()["content-type"], "application/json");
//! let body = axum::body::to_bytes(res.into_body(), 4096).await?;
//! let document: serde_json::Value = serde_json::from_slice(&body)?;
//! assert_eq!(document["resource"], "https://weather.example.com/v1");
//! assert_eq!(document["authorization_servers"][0], "https://auth.example.com");
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use serde::Serialize;
use serde_json::{Map, Value};

/// The well-known URI suffix of protected-resource metadata (RFC 9728 §3).
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// How long clients and caches may keep the document. It changes when the deployment does, and
/// a client reads it again when a challenge points to it.
const CACHE_FOR: &str = "public, max-age=3600";

/// The members RFC 9728 §2 defines (and `signed_metadata`), which
/// [`member`](ProtectedResource::member) may not set: the document would hold them twice.
const MEMBERS: [&str; 15] = [
    "resource",
    "authorization_servers",
    "jwks_uri",
    "scopes_supported",
    "bearer_methods_supported",
    "resource_signing_alg_values_supported",
    "resource_name",
    "resource_documentation",
    "resource_policy_uri",
    "resource_tos_uri",
    "tls_client_certificate_bound_access_tokens",
    "authorization_details_types_supported",
    "dpop_signing_alg_values_supported",
    "dpop_bound_access_tokens_required",
    "signed_metadata",
];

/// A way of sending an access token (RFC 6750 §2), as `bearer_methods_supported` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BearerMethod {
    /// The `Authorization: Bearer` header (RFC 6750 §2.1).
    Header,
    /// A form-encoded body parameter (RFC 6750 §2.2).
    Body,
    /// A URI query parameter (RFC 6750 §2.3).
    Query,
}

impl BearerMethod {
    /// The method's name in the metadata: `"header"`, `"body"` or `"query"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Body => "body",
            Self::Query => "query",
        }
    }
}

/// A protected resource's metadata (RFC 9728 §2). Members left unset are left out of the
/// document. Serialize it with serde, or serve it with [`service`](Self::service).
///
/// Every setter replaces what an earlier call set. The values are configuration, checked when
/// they are set: a setter given a value RFC 9728 does not allow panics.
#[derive(Clone, Serialize)]
#[must_use]
pub struct ProtectedResource {
    resource: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    authorization_servers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jwks_uri: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    scopes_supported: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bearer_methods_supported: Vec<BearerMethod>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    resource_signing_alg_values_supported: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_documentation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_policy_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_tos_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_client_certificate_bound_access_tokens: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    authorization_details_types_supported: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dpop_signing_alg_values_supported: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dpop_bound_access_tokens_required: Option<bool>,
    #[serde(flatten)]
    extra: Map<String, Value>,
    #[serde(skip)]
    metadata_url: String,
    #[serde(skip)]
    metadata_path: String,
}

impl ProtectedResource {
    /// The metadata of the resource identified by `resource`: the URL clients use as the base
    /// of the API, such as `https://api.example.com` or `https://api.example.com/v1`.
    ///
    /// # Panics
    ///
    /// If `resource` is not an absolute `https` (or, for local use, `http`) URL with a host and
    /// no fragment (RFC 9728 §1.2), or holds characters a URL may not hold unencoded.
    pub fn new(resource: impl Into<String>) -> Self {
        let resource = resource.into();
        let url = Url::parse(&resource)
            .unwrap_or_else(|e| panic!("invalid protected resource {resource:?}: {e}"));
        let (metadata_url, metadata_path) = url.well_known();
        Self {
            resource,
            authorization_servers: Vec::new(),
            jwks_uri: None,
            scopes_supported: Vec::new(),
            bearer_methods_supported: Vec::new(),
            resource_signing_alg_values_supported: Vec::new(),
            resource_name: None,
            resource_documentation: None,
            resource_policy_uri: None,
            resource_tos_uri: None,
            tls_client_certificate_bound_access_tokens: None,
            authorization_details_types_supported: Vec::new(),
            dpop_signing_alg_values_supported: Vec::new(),
            dpop_bound_access_tokens_required: None,
            extra: Map::new(),
            metadata_url,
            metadata_path,
        }
    }

    /// The resource identifier, as given to [`new`](Self::new).
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Where the document is found (RFC 9728 §3.1): the well-known suffix inserted between the
    /// resource's host and its path, so `https://api.example.com/v1` has its metadata at
    /// `https://api.example.com/.well-known/oauth-protected-resource/v1`. This is the value for
    /// `resource_metadata(...)` on the layers.
    pub fn metadata_url(&self) -> &str {
        &self.metadata_url
    }

    /// The path part of [`metadata_url`](Self::metadata_url), without a query: where to route
    /// [`service`](Self::service), such as `/.well-known/oauth-protected-resource/v1`.
    pub fn metadata_path(&self) -> &str {
        &self.metadata_path
    }

    /// `authorization_servers`: the issuer identifiers of the OAuth authorization servers whose
    /// tokens this resource accepts.
    ///
    /// # Panics
    ///
    /// If one is not an absolute `https` (or `http`) URL without query or fragment (RFC 8414
    /// §2).
    pub fn authorization_servers<I>(mut self, issuers: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.authorization_servers = issuers
            .into_iter()
            .map(|issuer| {
                let issuer = issuer.into();
                match Url::parse(&issuer) {
                    Ok(url) if url.query.is_none() => {}
                    Ok(_) => panic!("invalid authorization server {issuer:?}: it has a query"),
                    Err(e) => panic!("invalid authorization server {issuer:?}: {e}"),
                }
                issuer
            })
            .collect();
        self
    }

    /// `jwks_uri`: the URL of the resource's own JSON Web Key Set, for clients that check
    /// responses it signs.
    ///
    /// # Panics
    ///
    /// If `url` is not an absolute `https` (or `http`) URL without fragment.
    pub fn jwks_uri(mut self, url: impl Into<String>) -> Self {
        self.jwks_uri = Some(checked_url("jwks_uri", url.into()));
        self
    }

    /// `scopes_supported`: the scopes clients may ask for to call this resource.
    ///
    /// # Panics
    ///
    /// If a scope is empty or has characters RFC 6749 §3.3 does not allow (space, `"`, `\`,
    /// control characters).
    pub fn scopes_supported<I>(mut self, scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.scopes_supported = scopes
            .into_iter()
            .map(|scope| {
                let scope = scope.into();
                assert!(
                    crate::scope::is_scope(&scope),
                    "invalid scope {scope:?}: RFC 6749 scopes are printable ASCII without space, \
                     '\"' or '\\'"
                );
                scope
            })
            .collect();
        self
    }

    /// `bearer_methods_supported`: how clients may send a token.
    pub fn bearer_methods_supported(
        mut self,
        methods: impl IntoIterator<Item = BearerMethod>,
    ) -> Self {
        self.bearer_methods_supported = methods.into_iter().collect();
        self
    }

    /// `resource_signing_alg_values_supported`: the JWS algorithms (such as `"ES256"`) the
    /// resource signs its responses with.
    ///
    /// # Panics
    ///
    /// If one is `"none"`, which RFC 9728 §2 forbids here.
    pub fn resource_signing_alg_values_supported<I>(mut self, algorithms: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.resource_signing_alg_values_supported =
            algorithms_except_none("resource_signing_alg_values_supported", algorithms);
        self
    }

    /// `resource_name`: a name for people to read, such as `"Weather API"`. A translation goes
    /// in a [`member`](Self::member) named like `resource_name#fr`.
    pub fn resource_name(mut self, name: impl Into<String>) -> Self {
        self.resource_name = Some(name.into());
        self
    }

    /// `resource_documentation`: the URL of the resource's documentation for developers.
    ///
    /// # Panics
    ///
    /// If `url` is not an absolute `https` (or `http`) URL without fragment.
    pub fn resource_documentation(mut self, url: impl Into<String>) -> Self {
        self.resource_documentation = Some(checked_url("resource_documentation", url.into()));
        self
    }

    /// `resource_policy_uri`: the URL of what the resource does with the data clients send.
    ///
    /// # Panics
    ///
    /// If `url` is not an absolute `https` (or `http`) URL without fragment.
    pub fn resource_policy_uri(mut self, url: impl Into<String>) -> Self {
        self.resource_policy_uri = Some(checked_url("resource_policy_uri", url.into()));
        self
    }

    /// `resource_tos_uri`: the URL of the resource's terms of service.
    ///
    /// # Panics
    ///
    /// If `url` is not an absolute `https` (or `http`) URL without fragment.
    pub fn resource_tos_uri(mut self, url: impl Into<String>) -> Self {
        self.resource_tos_uri = Some(checked_url("resource_tos_uri", url.into()));
        self
    }

    /// `tls_client_certificate_bound_access_tokens`: whether the resource supports tokens
    /// bound to a client certificate (RFC 8705). Absent means `false`.
    pub fn tls_client_certificate_bound_access_tokens(mut self, supported: bool) -> Self {
        self.tls_client_certificate_bound_access_tokens = Some(supported);
        self
    }

    /// `authorization_details_types_supported`: the `authorization_details` types (RFC 9396)
    /// the resource understands.
    pub fn authorization_details_types_supported<I>(mut self, types: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.authorization_details_types_supported = types.into_iter().map(Into::into).collect();
        self
    }

    /// `dpop_signing_alg_values_supported`: the JWS algorithms the resource accepts for DPoP
    /// proofs (RFC 9449).
    ///
    /// # Panics
    ///
    /// If one is `"none"`: a proof must be signed.
    pub fn dpop_signing_alg_values_supported<I>(mut self, algorithms: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.dpop_signing_alg_values_supported =
            algorithms_except_none("dpop_signing_alg_values_supported", algorithms);
        self
    }

    /// `dpop_bound_access_tokens_required`: whether every token must be DPoP-bound. Absent
    /// means `false`.
    pub fn dpop_bound_access_tokens_required(mut self, required: bool) -> Self {
        self.dpop_bound_access_tokens_required = Some(required);
        self
    }

    /// A member RFC 9728 §2 has no setter for here: an extension, a translation such as
    /// `resource_name#fr`, or `signed_metadata`.
    ///
    /// # Panics
    ///
    /// If `name` is one of the members that have their own setter (the document would hold it
    /// twice) other than `signed_metadata`.
    pub fn member(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        let name = name.into();
        assert!(
            name == "signed_metadata" || !MEMBERS.contains(&name.as_str()),
            "the metadata member {name:?} has its own setter"
        );
        self.extra.insert(name, value.into());
        self
    }

    /// The document as JSON.
    pub fn to_json(&self) -> Bytes {
        // Strings, booleans and string-keyed maps: serializing cannot fail.
        serde_json::to_vec(self)
            .expect("protected-resource metadata serializes")
            .into()
    }

    /// A service that answers `GET` and `HEAD` with the document (`application/json`,
    /// `Cache-Control: public, max-age=3600`) and any other method with 405. It holds the
    /// document serialized once, so cloning it, and answering, costs a reference count.
    /// Route it at [`metadata_path`](Self::metadata_path), where no credential is needed
    /// (RFC 9728 §3: clients read it before they have a token), for example with axum's
    /// `Router::route_service` after the `route_layer` of the `AuthLayer`.
    pub fn service(&self) -> MetadataService {
        MetadataService {
            document: self.to_json(),
        }
    }
}

impl fmt::Debug for ProtectedResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtectedResource")
            .field("resource", &self.resource)
            .field("authorization_servers", &self.authorization_servers)
            .field("scopes_supported", &self.scopes_supported)
            .field("metadata_url", &self.metadata_url)
            .finish_non_exhaustive()
    }
}

/// Serves a [`ProtectedResource`] document. Made by [`ProtectedResource::service`].
#[derive(Clone)]
pub struct MetadataService {
    document: Bytes,
}

impl MetadataService {
    fn respond(&self, method: &Method) -> Response<MetadataBody> {
        let head = method == Method::HEAD;
        if method != Method::GET && !head {
            let mut res = Response::new(MetadataBody::empty());
            *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            res.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        let body = if head {
            MetadataBody::empty()
        } else {
            MetadataBody::full(self.document.clone())
        };
        let mut res = Response::new(body);
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static(CACHE_FOR));
        // Also for HEAD: the length of the document a GET would get.
        headers.insert(CONTENT_LENGTH, HeaderValue::from(self.document.len()));
        res
    }
}

impl fmt::Debug for MetadataService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetadataService")
            .field("len", &self.document.len())
            .finish()
    }
}

impl<B> tower::Service<Request<B>> for MetadataService {
    type Response = Response<MetadataBody>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        std::future::ready(Ok(self.respond(req.method())))
    }
}

/// The body of a [`MetadataService`] response: the whole document, or nothing.
#[derive(Debug)]
pub struct MetadataBody {
    data: Option<Bytes>,
}

impl MetadataBody {
    fn empty() -> Self {
        Self { data: None }
    }

    fn full(data: Bytes) -> Self {
        Self { data: Some(data) }
    }
}

impl Body for MetadataBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// Why a URL is not one the metadata may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UrlError {
    #[error("not an absolute https or http URL")]
    Scheme,
    #[error("it has no host")]
    NoHost,
    #[error("it has user information before its host")]
    UserInfo,
    #[error("it has a fragment")]
    Fragment,
    #[error("it has a character a URL may not hold unencoded")]
    Character,
}

/// An absolute `https` or `http` URL, split where RFC 9728 §3.1 needs it.
#[derive(Debug)]
struct Url<'a> {
    /// `scheme://authority`.
    origin: &'a str,
    /// The path: empty or starting with `/`.
    path: &'a str,
    /// The query, with its `?`.
    query: Option<&'a str>,
}

impl<'a> Url<'a> {
    fn parse(url: &'a str) -> Result<Self, UrlError> {
        // RFC 3986 characters only (the rest must be percent-encoded): a value that is safe
        // in a header and in a quoted-string as it is.
        if let Some(b) = url.bytes().find(|&b| !is_url_byte(b)) {
            return Err(if b == b'#' {
                UrlError::Fragment
            } else {
                UrlError::Character
            });
        }
        let scheme_len = ["https://", "http://"]
            .into_iter()
            .find(|s| {
                url.get(..s.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(s))
            })
            .ok_or(UrlError::Scheme)?
            .len();
        let authority_end = url[scheme_len..]
            .find(['/', '?'])
            .map_or(url.len(), |i| scheme_len + i);
        let authority = &url[scheme_len..authority_end];
        if authority.contains('@') {
            return Err(UrlError::UserInfo);
        }
        // A host, not just a port.
        if authority.is_empty() || authority.starts_with(':') {
            return Err(UrlError::NoHost);
        }
        let (path, query) = match url[authority_end..].find('?') {
            Some(i) => (
                &url[authority_end..authority_end + i],
                Some(&url[authority_end + i..]),
            ),
            None => (&url[authority_end..], None),
        };
        Ok(Self {
            origin: &url[..authority_end],
            path,
            query,
        })
    }

    /// The metadata URL and its path (RFC 9728 §3.1): the well-known suffix goes between the
    /// host and the path, and a path of just `/` is dropped first.
    fn well_known(&self) -> (String, String) {
        let path = if self.path == "/" { "" } else { self.path };
        let metadata_path = format!("{WELL_KNOWN}{path}");
        let metadata_url = format!(
            "{}{metadata_path}{}",
            self.origin,
            self.query.unwrap_or_default()
        );
        (metadata_url, metadata_path)
    }
}

/// Checks a metadata URL given to a layer's `resource_metadata`: an absolute `https` or `http`
/// URL without fragment, so that it can go in a header as it is.
pub(crate) fn check_url(url: &str) -> Result<(), UrlError> {
    Url::parse(url).map(|_| ())
}

/// `url`, if it may be the value of the member `what`; panics otherwise.
fn checked_url(what: &str, url: String) -> String {
    if let Err(e) = Url::parse(&url) {
        panic!("invalid {what} {url:?}: {e}");
    }
    url
}

fn algorithms_except_none<I>(what: &str, algorithms: I) -> Vec<String>
where
    I: IntoIterator,
    I::Item: Into<String>,
{
    algorithms
        .into_iter()
        .map(|alg| {
            let alg = alg.into();
            assert!(alg != "none", "{what} may not hold \"none\"");
            alg
        })
        .collect()
}

/// Unreserved, reserved (RFC 3986 §2) and `%`.
fn is_url_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:/?[]@!$&'()*+,;=%".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::Service as _;

    fn url_of(resource: &str) -> (String, String) {
        let p = ProtectedResource::new(resource);
        (p.metadata_url().to_owned(), p.metadata_path().to_owned())
    }

    #[test]
    fn the_suffix_goes_between_host_and_path() {
        let wk = "/.well-known/oauth-protected-resource";
        let cases = [
            (
                "https://api.example.com",
                format!("https://api.example.com{wk}"),
                wk.to_owned(),
            ),
            (
                "https://api.example.com/",
                format!("https://api.example.com{wk}"),
                wk.to_owned(),
            ),
            (
                "https://api.example.com/v1",
                format!("https://api.example.com{wk}/v1"),
                format!("{wk}/v1"),
            ),
            (
                "https://api.example.com/v1/",
                format!("https://api.example.com{wk}/v1/"),
                format!("{wk}/v1/"),
            ),
            (
                "http://127.0.0.1:3000/a/b",
                format!("http://127.0.0.1:3000{wk}/a/b"),
                format!("{wk}/a/b"),
            ),
            (
                "https://api.example.com/?tenant=1",
                format!("https://api.example.com{wk}?tenant=1"),
                wk.to_owned(),
            ),
            (
                "https://api.example.com/v1?tenant=1",
                format!("https://api.example.com{wk}/v1?tenant=1"),
                format!("{wk}/v1"),
            ),
            (
                "https://api.example.com?tenant=1",
                format!("https://api.example.com{wk}?tenant=1"),
                wk.to_owned(),
            ),
            (
                "HTTPS://API.example.com",
                format!("HTTPS://API.example.com{wk}"),
                wk.to_owned(),
            ),
        ];
        for (resource, url, path) in cases {
            assert_eq!(url_of(resource), (url, path), "{resource}");
        }
    }

    #[test]
    fn url_rules() {
        let ok = [
            "https://a.example",
            "http://localhost:8080/x",
            "https://[::1]:443/p",
            "https://a.example/p%20q",
        ];
        for url in ok {
            assert_eq!(check_url(url), Ok(()), "{url}");
        }
        let bad = [
            ("", UrlError::Scheme),
            ("/relative", UrlError::Scheme),
            ("api.example.com", UrlError::Scheme),
            ("ftp://a.example", UrlError::Scheme),
            ("https:/a.example", UrlError::Scheme),
            ("https://", UrlError::NoHost),
            ("https:///path", UrlError::NoHost),
            ("https://:443/", UrlError::NoHost),
            ("https://user@a.example/", UrlError::UserInfo),
            ("https://a.example/#top", UrlError::Fragment),
            ("https://a.example/a b", UrlError::Character),
            ("https://a.example/\"", UrlError::Character),
            ("https://a.example/\\", UrlError::Character),
            ("https://a.example/\r\nx: y", UrlError::Character),
            ("https://a.example/é", UrlError::Character),
        ];
        for (url, error) in bad {
            assert_eq!(check_url(url), Err(error), "{url:?}");
        }
    }

    #[test]
    #[should_panic(expected = "it has a fragment")]
    fn a_resource_with_a_fragment_is_refused() {
        let _ = ProtectedResource::new("https://api.example.com/v1#x");
    }

    #[test]
    #[should_panic(expected = "it has a query")]
    fn an_issuer_with_a_query_is_refused() {
        let _ = ProtectedResource::new("https://api.example.com")
            .authorization_servers(["https://auth.example.com?x=1"]);
    }

    #[test]
    #[should_panic(expected = "invalid scope")]
    fn a_scope_with_a_space_is_refused() {
        let _ = ProtectedResource::new("https://api.example.com").scopes_supported(["a b"]);
    }

    #[test]
    #[should_panic(expected = "may not hold \"none\"")]
    fn the_none_algorithm_is_refused() {
        let _ = ProtectedResource::new("https://api.example.com")
            .resource_signing_alg_values_supported(["ES256", "none"]);
    }

    #[test]
    #[should_panic(expected = "has its own setter")]
    fn a_member_with_a_setter_is_refused() {
        let _ = ProtectedResource::new("https://api.example.com").member("scopes_supported", "x");
    }

    #[test]
    fn only_set_members_are_serialized() {
        let bare: Value =
            serde_json::from_slice(&ProtectedResource::new("https://a.example").to_json()).unwrap();
        assert_eq!(bare, serde_json::json!({ "resource": "https://a.example" }));

        let full = ProtectedResource::new("https://a.example/v1")
            .authorization_servers(["https://auth.example", "https://other.example/tenant"])
            .jwks_uri("https://a.example/jwks.json")
            .scopes_supported(["read", "write"])
            .bearer_methods_supported([
                BearerMethod::Header,
                BearerMethod::Body,
                BearerMethod::Query,
            ])
            .resource_signing_alg_values_supported(["ES256"])
            .resource_name("A")
            .resource_documentation("https://a.example/docs")
            .resource_policy_uri("https://a.example/policy")
            .resource_tos_uri("https://a.example/tos")
            .tls_client_certificate_bound_access_tokens(true)
            .authorization_details_types_supported(["payment"])
            .dpop_signing_alg_values_supported(["ES256", "EdDSA"])
            .dpop_bound_access_tokens_required(false)
            .member("resource_name#fr", "A en français")
            .member("signed_metadata", "eyJ...");
        let json: Value = serde_json::from_slice(&full.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "resource": "https://a.example/v1",
                "authorization_servers": ["https://auth.example", "https://other.example/tenant"],
                "jwks_uri": "https://a.example/jwks.json",
                "scopes_supported": ["read", "write"],
                "bearer_methods_supported": ["header", "body", "query"],
                "resource_signing_alg_values_supported": ["ES256"],
                "resource_name": "A",
                "resource_documentation": "https://a.example/docs",
                "resource_policy_uri": "https://a.example/policy",
                "resource_tos_uri": "https://a.example/tos",
                "tls_client_certificate_bound_access_tokens": true,
                "authorization_details_types_supported": ["payment"],
                "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
                "dpop_bound_access_tokens_required": false,
                "resource_name#fr": "A en français",
                "signed_metadata": "eyJ...",
            })
        );
        // `resource` comes first, as readers of the raw document expect.
        assert!(full.to_json().starts_with(b"{\"resource\":"));
        // No member of the document comes from the fields kept for serving it.
        assert!(json.get("metadata_url").is_none());
    }

    #[tokio::test]
    async fn the_service_shares_one_serialized_document() {
        let meta = ProtectedResource::new("https://a.example").scopes_supported(["read"]);
        let mut svc = meta.service();
        // Always ready: no `poll_ready` needed before `call`.
        let a = svc.call(Request::new(())).await.unwrap();
        let b = svc.clone().call(Request::new(())).await.unwrap();
        let bytes = |r: Response<MetadataBody>| r.into_body().data.unwrap();
        let (a, b) = (bytes(a), bytes(b));
        assert_eq!(a, meta.to_json());
        // The same buffer, not a copy.
        assert_eq!(a.as_ptr(), b.as_ptr());
    }
}
