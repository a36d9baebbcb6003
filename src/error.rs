#![doc = include_str!("../docs/errors.md")]

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::caller::Passed;
use crate::credential::{CredentialError, RequestHead};
use crate::ratelimit::RateLimitError;
use crate::store::StoreError;

/// Why a credential that was read is not accepted. All are answered alike (401
/// `invalid_token`), except [`TokenExpired`](Self::TokenExpired), which says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidCredential {
    /// No record has this key.
    UnknownKey,
    /// The key has its format's prefix but fails its checksum.
    MalformedKey,
    /// The key was revoked.
    RevokedKey,
    /// The key is disabled.
    DisabledKey,
    /// The key is past its expiry, or was rotated out and its grace is over.
    ExpiredKey,
    /// The token is past its `exp` (plus leeway).
    TokenExpired,
    /// The token is malformed, badly signed, not yet valid, for another issuer or audience, or
    /// revoked.
    InvalidToken,
}

impl InvalidCredential {
    /// A short, fixed name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::UnknownKey => "unknown_key",
            Self::MalformedKey => "malformed_key",
            Self::RevokedKey => "revoked_key",
            Self::DisabledKey => "disabled_key",
            Self::ExpiredKey => "expired_key",
            Self::TokenExpired => "token_expired",
            Self::InvalidToken => "invalid_token",
        }
    }
}

/// What is unavailable when a request fails with 503. Its [`source`](std::error::Error::source)
/// is the backend's own error, so a log line can print the whole chain.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// The key store failed or timed out.
    #[error("the key store could not answer")]
    KeyStore(#[source] Arc<StoreError>),
    /// The rate limiter failed, timed out or is full.
    #[error("the rate limiter could not decide")]
    RateLimiter(#[source] Arc<RateLimitError>),
    /// The JWT keys could not be had.
    #[error("the token's signing keys could not be had")]
    JwtKeys,
}

/// Why an authenticated caller is refused (403) for something other than a missing scope.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Forbidden {
    /// The key may not be used from the client's address (its record lists the networks it
    /// may be used from, and the address is in none of them).
    AddressNotAllowed,
    /// A check of the caller's claims failed; the text is the problem's `detail` (no secrets:
    /// the client reads it).
    Denied(Cow<'static, str>),
}

impl Forbidden {
    /// A short, fixed name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::AddressNotAllowed => "address_not_allowed",
            Self::Denied(_) => "forbidden",
        }
    }
}

/// What a caller refused with 403 `insufficient_scope` lacks: the scopes the route requires
/// (all of them, or any one), and which of them the caller does not have.
///
/// The `scope` attribute of `WWW-Authenticate` (RFC 6750 §3) lists the required scopes,
/// space-separated; the problem's `detail` names the missing ones, or, when any one would do,
/// says so. It displays as the same sentence for logs.
///
/// ```
/// use keygate::error::{AuthError, InsufficientScope};
///
/// let one = AuthError::InsufficientScope(InsufficientScope::new("weather:read"));
/// assert_eq!(one.detail(), r#"The credential lacks the scope "weather:read"."#);
///
/// let all = InsufficientScope::all_of(["weather:read", "forecast:read"], ["forecast:read"]);
/// let all = AuthError::InsufficientScope(all);
/// assert_eq!(all.detail(), r#"The credential lacks the scope "forecast:read"."#);
/// assert_eq!(
///     all.www_authenticate("api").unwrap(),
///     r#"Bearer realm="api", error="insufficient_scope", scope="weather:read forecast:read""#
/// );
///
/// let any = AuthError::InsufficientScope(InsufficientScope::any_of(["alerts:read", "weather:admin"]));
/// assert_eq!(
///     any.detail(),
///     r#"The credential needs any of the scopes "alerts:read" or "weather:admin"."#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsufficientScope {
    required: Arc<[Arc<str>]>,
    /// The required scopes the caller lacks, when it needs all of them; `None` when any one of
    /// them would do (and so the caller lacks them all).
    missing: Option<Box<[Arc<str>]>>,
}

impl InsufficientScope {
    /// The caller lacks `scope`, the one the route requires.
    pub fn new(scope: impl Into<Arc<str>>) -> Self {
        let scope = scope.into();
        Self {
            required: Arc::from([scope.clone()]),
            missing: Some(Box::new([scope])),
        }
    }

    /// The route requires every scope of `required`; the caller lacks those of `missing`
    /// (when `missing` is empty: all of them).
    pub fn all_of<S: Into<Arc<str>>, M: Into<Arc<str>>>(
        required: impl IntoIterator<Item = S>,
        missing: impl IntoIterator<Item = M>,
    ) -> Self {
        Self::from_parts(
            required.into_iter().map(Into::into).collect(),
            Some(missing.into_iter().map(Into::into).collect()),
        )
    }

    /// The route requires any one scope of `required`, and the caller has none of them.
    pub fn any_of<S: Into<Arc<str>>>(required: impl IntoIterator<Item = S>) -> Self {
        Self::from_parts(required.into_iter().map(Into::into).collect(), None)
    }

    /// `missing`: as the field. Any one of a single scope is that scope.
    pub(crate) fn from_parts(required: Arc<[Arc<str>]>, missing: Option<Box<[Arc<str>]>>) -> Self {
        let missing = match missing {
            Some(m) if m.is_empty() => Some(required.iter().cloned().collect()),
            None if required.len() == 1 => Some(required.iter().cloned().collect()),
            m => m,
        };
        Self { required, missing }
    }

    /// The scopes the route requires, in the order it names them.
    pub fn required(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.required.iter().map(|s| &**s)
    }

    /// The required scopes the caller lacks: for [`any_of`](Self::any_of), all of them.
    pub fn missing(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.missing
            .as_deref()
            .unwrap_or(&self.required)
            .iter()
            .map(|s| &**s)
    }

    /// Whether any one of the [`required`](Self::required) scopes would do.
    pub fn is_any_of(&self) -> bool {
        self.missing.is_none() && self.required.len() > 1
    }

    /// The problem's `detail`.
    fn detail(&self) -> String {
        struct Detail<'a>(&'a InsufficientScope);
        impl fmt::Display for Detail<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.write_sentence(f, "The")?;
                f.write_str(".")
            }
        }
        Detail(self).to_string()
    }

    /// The `scope` attribute of the challenge: the required scopes, space-separated.
    fn scope_attribute(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.required().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(s);
        }
        out
    }

    /// The sentence of [`detail`](AuthError::detail) and `Display`, without its capital and
    /// full stop.
    fn write_sentence(&self, f: &mut fmt::Formatter<'_>, first: &str) -> fmt::Result {
        let (verb, list, conjunction): (_, &[Arc<str>], _) = if self.is_any_of() {
            ("needs any of", &self.required, "or")
        } else {
            (
                "lacks",
                self.missing.as_deref().unwrap_or(&self.required),
                "and",
            )
        };
        let noun = match list.len() {
            0 => return write!(f, "{first} credential lacks a scope"),
            1 => "scope",
            _ => "scopes",
        };
        write!(f, "{first} credential {verb} the {noun} ")?;
        for (i, s) in list.iter().enumerate() {
            match i {
                0 => {}
                i if i + 1 == list.len() => write!(f, " {conjunction} ")?,
                _ => f.write_str(", ")?,
            }
            write!(f, "\"{s}\"")?;
        }
        Ok(())
    }
}

impl fmt::Display for InsufficientScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_sentence(f, "the")
    }
}

impl From<&str> for InsufficientScope {
    fn from(scope: &str) -> Self {
        Self::new(scope)
    }
}

impl From<String> for InsufficientScope {
    fn from(scope: String) -> Self {
        Self::new(scope)
    }
}

impl From<Arc<str>> for InsufficientScope {
    fn from(scope: Arc<str>) -> Self {
        Self::new(scope)
    }
}

/// A gRPC status code keygate answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum GrpcCode {
    /// 7: the caller lacks a scope.
    PermissionDenied = 7,
    /// 8: rate limited.
    ResourceExhausted = 8,
    /// 13: the server is misconfigured.
    Internal = 13,
    /// 14: a backend is down.
    Unavailable = 14,
    /// 16: no credential, or a bad one.
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The code's number, as sent in `grpc-status`.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The code's name in the gRPC spec, such as `"UNAUTHENTICATED"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::Internal => "INTERNAL",
            Self::Unavailable => "UNAVAILABLE",
            Self::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

/// A rate-limited request: what its 429 tells the client.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RateLimited {
    /// How long until the request would be admitted; zero when no wait would help (credits
    /// used up with no refill scheduled), and then no `Retry-After` is sent.
    pub retry_after: Duration,
    /// Headers describing the limit (`RateLimit`, `RateLimit-Policy`, ...).
    pub headers: HeaderMap,
    /// What the problem's `detail` says (which limit denied, or that the credits are used
    /// up); by default "Too many requests; retry in N s."
    pub detail: Option<String>,
}

impl RateLimited {
    /// A rejection to retry after `retry_after`, with these headers.
    pub fn new(retry_after: Duration, headers: HeaderMap) -> Self {
        Self {
            retry_after,
            headers,
            detail: None,
        }
    }

    /// With this problem `detail` (no secrets: the client reads it).
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// Every way keygate turns a request away.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The request carries no credential.
    #[error("the request carries no credential")]
    MissingCredential,
    /// The credential could not be read: 400 `invalid_request`.
    #[error(transparent)]
    InvalidRequest(#[from] CredentialError),
    /// The credential is not accepted: 401 `invalid_token`.
    #[error("the credential is not valid ({})", .0.as_str())]
    InvalidCredential(InvalidCredential),
    /// The caller lacks a scope: 403 `insufficient_scope`.
    #[error("{0}")]
    InsufficientScope(InsufficientScope),
    /// The caller is authenticated but refused: 403.
    #[error("the caller is refused ({})", .0.as_str())]
    Forbidden(Forbidden),
    /// Too many requests: 429.
    #[error("rate limited")]
    RateLimited(Box<RateLimited>),
    /// A backend is down: 503.
    #[error("authentication is unavailable")]
    Unavailable(#[source] Unavailable),
    /// A handler asked for a `Principal` on a route no `AuthLayer` covers: 500.
    #[error("no Principal in the request: the route is not behind keygate's AuthLayer")]
    MissingLayer,
    /// A handler asked for `Claims<T>` of a token whose verifier decodes no claims of type `T`
    /// (it was configured without `.claims::<T>()`, or with another type): 500. Holds the name
    /// of the type asked for, for logs; the client is not told it.
    #[error(
        "the token's claims are not decoded as {0}: configure the JwtVerifier with .claims::<{0}>()"
    )]
    ClaimsType(&'static str),
}

impl AuthError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingCredential | Self::InvalidCredential(_) => StatusCode::UNAUTHORIZED,
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::InsufficientScope(_) | Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::MissingLayer | Self::ClaimsType(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code.
    pub fn grpc_code(&self) -> GrpcCode {
        match self {
            Self::MissingCredential | Self::InvalidRequest(_) | Self::InvalidCredential(_) => {
                GrpcCode::Unauthenticated
            }
            Self::InsufficientScope(_) | Self::Forbidden(_) => GrpcCode::PermissionDenied,
            Self::RateLimited(_) => GrpcCode::ResourceExhausted,
            Self::Unavailable(_) => GrpcCode::Unavailable,
            Self::MissingLayer | Self::ClaimsType(_) => GrpcCode::Internal,
        }
    }

    /// A short, fixed name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MissingCredential => "missing_credential",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidCredential(c) => c.as_str(),
            Self::InsufficientScope(_) => "insufficient_scope",
            Self::Forbidden(f) => f.as_str(),
            Self::RateLimited(_) => "rate_limited",
            Self::Unavailable(_) => "unavailable",
            Self::MissingLayer => "missing_layer",
            Self::ClaimsType(_) => "claims_type",
        }
    }

    /// What the client is told: enough to fix a legitimate request, nothing about the key.
    pub fn detail(&self) -> Cow<'static, str> {
        match self {
            Self::MissingCredential => "The request carries no credential.".into(),
            Self::InvalidRequest(e) => format!("{}.", capitalize(&e.to_string())).into(),
            Self::InvalidCredential(InvalidCredential::TokenExpired) => {
                "The token has expired.".into()
            }
            Self::InvalidCredential(_) => "The credential is not valid.".into(),
            Self::InsufficientScope(s) => s.detail().into(),
            Self::Forbidden(Forbidden::AddressNotAllowed) => {
                "The client's address is not allowed for this key.".into()
            }
            Self::Forbidden(Forbidden::Denied(detail)) => detail.clone(),
            Self::RateLimited(r) => match &r.detail {
                Some(detail) => detail.clone().into(),
                None => format!(
                    "Too many requests; retry in {} s.",
                    retry_after_secs(r.retry_after)
                )
                .into(),
            },
            Self::Unavailable(_) => "Authentication is unavailable; retry later.".into(),
            Self::MissingLayer => "The server's authentication is misconfigured: no Principal \
                                   in the request; is keygate's AuthLayer applied to this route?"
                .into(),
            Self::ClaimsType(_) => "The server's authentication is misconfigured: the route asks \
                                    for token claims of a type the JwtVerifier does not decode; \
                                    configure the verifier with .claims::<T>() for that type."
                .into(),
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750 §3) for this error, if it has one.
    pub fn www_authenticate(&self, realm: &str) -> Option<HeaderValue> {
        self.www_authenticate_with(realm, None)
    }

    /// [`www_authenticate`](Self::www_authenticate), and when `resource_metadata` is given,
    /// with a `resource_metadata` parameter pointing to the resource's metadata (RFC 9728
    /// §5.1), such as a [`ProtectedResource`](crate::resource::ProtectedResource)'s
    /// `metadata_url()`.
    pub fn www_authenticate_with(
        &self,
        realm: &str,
        resource_metadata: Option<&str>,
    ) -> Option<HeaderValue> {
        // The challenges that depend on the realm and the metadata URL alone are built once
        // per realm: a refusal does not format its header anew.
        let fixed = match self {
            Self::MissingCredential => Some(0),
            Self::InvalidRequest(_) => Some(1),
            Self::InvalidCredential(InvalidCredential::TokenExpired) => Some(2),
            Self::InvalidCredential(_) => Some(3),
            _ => None,
        };
        let Some(kind) = fixed else {
            return self.build_www_authenticate(realm, resource_metadata);
        };
        let key = ChallengeRef(kind, realm, resource_metadata);
        if let Some(value) = CHALLENGES.get(&key) {
            return Some(value);
        }
        let value = self.build_www_authenticate(realm, resource_metadata)?;
        CHALLENGES.insert(
            ChallengeKey(kind, realm.into(), resource_metadata.map(Into::into)),
            value.clone(),
        );
        Some(value)
    }

    fn build_www_authenticate(
        &self,
        realm: &str,
        resource_metadata: Option<&str>,
    ) -> Option<HeaderValue> {
        let realm = quote(realm);
        let mut value = match self {
            Self::MissingCredential => format!("Bearer realm={realm}"),
            Self::InvalidRequest(_) => format!("Bearer realm={realm}, error=\"invalid_request\""),
            Self::InvalidCredential(InvalidCredential::TokenExpired) => format!(
                "Bearer realm={realm}, error=\"invalid_token\", error_description=\"token expired\""
            ),
            Self::InvalidCredential(_) => format!("Bearer realm={realm}, error=\"invalid_token\""),
            Self::InsufficientScope(s) => format!(
                "Bearer realm={realm}, error=\"insufficient_scope\", scope={}",
                quote(&s.scope_attribute())
            ),
            // A failed claims check asks for a token with other claims; an address cannot be
            // fixed by another credential, so it gets no challenge.
            Self::Forbidden(Forbidden::Denied(_)) => {
                format!("Bearer realm={realm}, error=\"insufficient_scope\"")
            }
            _ => return None,
        };
        if let Some(url) = resource_metadata {
            value.push_str(", resource_metadata=");
            value.push_str(&quote(url));
        }
        HeaderValue::from_str(&value).ok()
    }

    /// The standard HTTP response: status, headers, `application/problem+json` body.
    pub fn to_http_response(&self, realm: &str) -> Response<Bytes> {
        self.http_response(realm, None)
    }

    /// The standard HTTP response in `ctx`: with its realm, and its
    /// [`resource_metadata`](ErrorContext::resource_metadata) in the challenge when the layers
    /// have one. What the [`DefaultResponder`] sends; a responder that changes only the body
    /// starts from it.
    pub fn to_http_response_for(&self, ctx: &ErrorContext<'_>) -> Response<Bytes> {
        self.http_response(ctx.realm, ctx.resource_metadata)
    }

    /// The body of a refusal whose body never varies, serialised the first time it is sent:
    /// a flood of bad keys costs no serialisation per request. `None` for the errors whose
    /// detail varies (scopes, a claims check's detail, a rate limit's wait).
    fn fixed_body(&self) -> Option<Bytes> {
        use std::sync::OnceLock;
        // One body per arm: each expansion is a static of its own.
        macro_rules! once {
            () => {{
                static BODY: OnceLock<Bytes> = OnceLock::new();
                let body = BODY.get_or_init(|| {
                    let status = self.status();
                    let title = status.canonical_reason().unwrap_or("Error");
                    problem_body("about:blank", title, status, &self.detail())
                });
                Some(body.clone())
            }};
        }
        match self {
            Self::MissingCredential => once!(),
            Self::InvalidRequest(CredentialError::Ambiguous) => once!(),
            Self::InvalidRequest(CredentialError::Repeated) => once!(),
            Self::InvalidRequest(CredentialError::Empty) => once!(),
            Self::InvalidRequest(CredentialError::TooLong) => once!(),
            Self::InvalidRequest(CredentialError::InvalidCharacters) => once!(),
            Self::InvalidRequest(CredentialError::MalformedAuthorization) => once!(),
            Self::InvalidCredential(InvalidCredential::TokenExpired) => once!(),
            // Every other refused credential has the same body: the client learns nothing of
            // why (unknown, revoked, disabled, ...).
            Self::InvalidCredential(_) => once!(),
            Self::Forbidden(Forbidden::AddressNotAllowed) => once!(),
            Self::Unavailable(_) => once!(),
            Self::MissingLayer => once!(),
            Self::ClaimsType(_) => once!(),
            _ => None,
        }
    }

    fn http_response(&self, realm: &str, resource_metadata: Option<&str>) -> Response<Bytes> {
        let status = self.status();
        let (problem_type, title) = match self {
            Self::RateLimited(_) => (
                "https://iana.org/assignments/http-problem-types#quota-exceeded",
                "Request cannot be satisfied as assigned quota has been exceeded",
            ),
            _ => ("about:blank", status.canonical_reason().unwrap_or("Error")),
        };
        let body = self
            .fixed_body()
            .unwrap_or_else(|| problem_body(problem_type, title, status, &self.detail()));
        let mut res = Response::new(body);
        *res.status_mut() = status;
        let headers = res.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(v) = self.www_authenticate_with(realm, resource_metadata) {
            headers.insert(WWW_AUTHENTICATE, v);
        }
        match self {
            Self::RateLimited(r) => {
                if !r.retry_after.is_zero() {
                    headers.insert(
                        RETRY_AFTER,
                        HeaderValue::from(retry_after_secs(r.retry_after)),
                    );
                }
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                for (name, value) in &r.headers {
                    headers.append(name, value.clone());
                }
            }
            Self::InvalidCredential(_) | Self::MissingCredential | Self::InvalidRequest(_) => {
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
            _ => {}
        }
        res
    }

    /// The standard gRPC response: trailers-only, `grpc-status`, percent-encoded `grpc-message`.
    pub fn to_grpc_response(&self) -> Response<Bytes> {
        let mut res = Response::new(Bytes::new());
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc_code().as_u8())),
        );
        let message = grpc_percent_encode(&self.detail());
        if let Ok(v) = HeaderValue::from_str(&message) {
            headers.insert("grpc-message", v);
        }
        if let Self::RateLimited(r) = self {
            if !r.retry_after.is_zero() {
                headers.insert(
                    RETRY_AFTER,
                    HeaderValue::from(retry_after_secs(r.retry_after)),
                );
            }
            for (name, value) in &r.headers {
                headers.append(name, value.clone());
            }
        }
        res
    }
}

/// The challenges built so far, by kind, realm and metadata URL. Realms and metadata URLs come
/// from the service's configuration, so a few entries serve every refusal; the bound keeps a
/// responder that makes up realms from growing it.
static CHALLENGES: std::sync::LazyLock<quick_cache::sync::Cache<ChallengeKey, HeaderValue>> =
    std::sync::LazyLock::new(|| quick_cache::sync::Cache::new(256));

/// A key of [`CHALLENGES`].
#[derive(Hash, PartialEq, Eq)]
struct ChallengeKey(u8, Box<str>, Option<Box<str>>);

/// A [`ChallengeKey`] looked up without allocating; hashes as the key does.
#[derive(Hash)]
struct ChallengeRef<'a>(u8, &'a str, Option<&'a str>);

impl quick_cache::Equivalent<ChallengeKey> for ChallengeRef<'_> {
    fn equivalent(&self, key: &ChallengeKey) -> bool {
        self.0 == key.0 && self.1 == &*key.1 && self.2 == key.2.as_deref()
    }
}

/// An `application/problem+json` body (RFC 9457).
fn problem_body(problem_type: &str, title: &str, status: StatusCode, detail: &str) -> Bytes {
    let body = serde_json::json!({
        "type": problem_type,
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    Bytes::from(body.to_string())
}

/// Seconds to wait, rounded up, at least 1.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// An RFC 9110 quoted-string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if (' '..='~').contains(&c) => out.push(c),
            _ => {}
        }
    }
    out.push('"');
    out
}

/// The gRPC spec's percent-encoding of `grpc-message`: bytes outside 0x20..=0x7E, and `%`.
fn grpc_percent_encode(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What a responder knows about the failed request.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ErrorContext<'a> {
    /// The realm in effect: the layer's own, else that of the `AuthLayer` the request passed,
    /// else `"api"`.
    pub realm: &'a str,
    /// The request's head.
    pub head: RequestHead<'a>,
    /// The URL of the protected-resource metadata (RFC 9728) that challenges point to, if the
    /// layers were given one: the layer's own, else that of the `AuthLayer` the request passed.
    pub resource_metadata: Option<&'a str>,
}

impl<'a> ErrorContext<'a> {
    /// A context for a request with this head in this realm, with no resource metadata.
    pub fn new(realm: &'a str, head: RequestHead<'a>) -> Self {
        Self {
            realm,
            head,
            resource_metadata: None,
        }
    }

    /// The same context, with challenges pointing to the resource metadata at `url`.
    #[must_use]
    pub fn with_resource_metadata(mut self, url: &'a str) -> Self {
        self.resource_metadata = Some(url);
        self
    }
}

/// Turns an [`AuthError`] into a response. Replace it to change bodies, add headers or log.
pub trait ErrorResponder: Send + Sync + 'static {
    /// The response for `error`.
    fn respond(&self, error: &AuthError, ctx: &ErrorContext<'_>) -> Response<Bytes>;
}

/// The standard responder: gRPC for gRPC requests, problem+json for the rest.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultResponder;

impl ErrorResponder for DefaultResponder {
    fn respond(&self, error: &AuthError, ctx: &ErrorContext<'_>) -> Response<Bytes> {
        if ctx.head.is_grpc() {
            error.to_grpc_response()
        } else {
            error.to_http_response_for(ctx)
        }
    }
}

/// The realm and responder used when neither a layer nor the request names one.
const DEFAULT_REALM: &str = "api";

/// How a layer renders errors: the realm, responder and resource-metadata URL it was given, if
/// any. Cheap to clone (at most three reference counts; none for a layer left at the defaults).
///
/// [`AuthLayer`](crate::auth::AuthLayer) puts its own into every request it lets through
/// ([`Passed`]), so the layers and extractors behind it render with the same settings unless
/// they were given their own.
#[derive(Clone, Default)]
pub(crate) struct Rendering {
    realm: Option<Arc<str>>,
    responder: Option<Arc<dyn ErrorResponder>>,
    resource_metadata: Option<Arc<str>>,
}

impl Rendering {
    /// Whether nothing is set: a layer behind renders as it would without these settings.
    pub(crate) fn is_default(&self) -> bool {
        self.realm.is_none() && self.responder.is_none() && self.resource_metadata.is_none()
    }

    pub(crate) fn set_realm(&mut self, realm: impl Into<Arc<str>>) {
        self.realm = Some(realm.into());
    }

    /// # Panics
    ///
    /// If `url` is not an absolute `https` or `http` URL without fragment, made of the
    /// characters a URL holds unencoded: a configuration mistake, found at start.
    pub(crate) fn set_resource_metadata(&mut self, url: impl Into<Arc<str>>) {
        let url = url.into();
        if let Err(e) = crate::resource::check_url(&url) {
            panic!("invalid resource_metadata URL {url:?}: {e}");
        }
        self.resource_metadata = Some(url);
    }

    pub(crate) fn set_responder(&mut self, responder: impl ErrorResponder) {
        self.responder = Some(Arc::new(responder));
    }

    /// The realm in effect for a request that carries `carried` (the `AuthLayer`'s rendering).
    fn realm<'a>(&'a self, carried: Option<&'a Self>) -> &'a str {
        self.realm
            .as_deref()
            .or_else(|| carried.and_then(|c| c.realm.as_deref()))
            .unwrap_or(DEFAULT_REALM)
    }

    /// The resource-metadata URL in effect for a request that carries `carried`.
    fn resource_metadata<'a>(&'a self, carried: Option<&'a Self>) -> Option<&'a str> {
        self.resource_metadata
            .as_deref()
            .or_else(|| carried.and_then(|c| c.resource_metadata.as_deref()))
    }

    /// The response for `error`: this layer's realm, responder and resource metadata, else
    /// those the request carries from its `AuthLayer`, else the defaults.
    pub(crate) fn render_head(&self, error: &AuthError, head: RequestHead<'_>) -> Response<Bytes> {
        let carried = head.extensions.get::<Passed>().map(|p| &p.rendering);
        let responder: &dyn ErrorResponder = match &self.responder {
            Some(r) => &**r,
            None => match carried.and_then(|c| c.responder.as_deref()) {
                Some(r) => r,
                None => &DefaultResponder,
            },
        };
        let ctx = ErrorContext {
            realm: self.realm(carried),
            head,
            resource_metadata: self.resource_metadata(carried),
        };
        responder.respond(error, &ctx)
    }

    /// [`render_head`](Self::render_head) for a request.
    pub(crate) fn render<B>(&self, error: &AuthError, req: &http::Request<B>) -> Response<Bytes> {
        self.render_head(error, RequestHead::of(req))
    }
}

impl fmt::Debug for Rendering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `None`: the setting of the `AuthLayer` in front, or the default.
        f.debug_struct("Rendering")
            .field("realm", &self.realm)
            .field("responder", &self.responder.as_ref().map(|_| "custom"))
            .field("resource_metadata", &self.resource_metadata)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_built_once_per_realm_and_metadata() {
        let missing = AuthError::MissingCredential;
        let first = missing.www_authenticate("cached realm").unwrap();
        let again = missing.www_authenticate("cached realm").unwrap();
        assert_eq!(first, "Bearer realm=\"cached realm\"");
        assert_eq!(first.as_bytes().as_ptr(), again.as_bytes().as_ptr());
        // Another realm, another metadata URL, another error: each its own value.
        let other = missing.www_authenticate("other realm").unwrap();
        assert_eq!(other, "Bearer realm=\"other realm\"");
        let with_url = missing
            .www_authenticate_with("cached realm", Some("https://a.example/m"))
            .unwrap();
        assert_eq!(
            with_url,
            "Bearer realm=\"cached realm\", resource_metadata=\"https://a.example/m\""
        );
        let expired = AuthError::InvalidCredential(InvalidCredential::TokenExpired);
        assert_eq!(
            expired.www_authenticate("cached realm").unwrap(),
            "Bearer realm=\"cached realm\", error=\"invalid_token\", error_description=\"token expired\""
        );
        let unknown = AuthError::InvalidCredential(InvalidCredential::UnknownKey);
        assert_eq!(
            unknown.www_authenticate("cached realm").unwrap(),
            "Bearer realm=\"cached realm\", error=\"invalid_token\""
        );
        assert_eq!(
            missing.www_authenticate("cached realm").unwrap(),
            "Bearer realm=\"cached realm\""
        );
    }

    #[test]
    fn fixed_bodies_are_the_problem_bodies_serialised_once() {
        let store_down = StoreError::Timeout;
        let fixed = [
            AuthError::MissingCredential,
            AuthError::InvalidRequest(CredentialError::Ambiguous),
            AuthError::InvalidRequest(CredentialError::Repeated),
            AuthError::InvalidRequest(CredentialError::Empty),
            AuthError::InvalidRequest(CredentialError::TooLong),
            AuthError::InvalidRequest(CredentialError::InvalidCharacters),
            AuthError::InvalidRequest(CredentialError::MalformedAuthorization),
            AuthError::InvalidCredential(InvalidCredential::TokenExpired),
            AuthError::InvalidCredential(InvalidCredential::UnknownKey),
            AuthError::InvalidCredential(InvalidCredential::RevokedKey),
            AuthError::Forbidden(Forbidden::AddressNotAllowed),
            AuthError::Unavailable(Unavailable::KeyStore(Arc::new(store_down))),
            AuthError::MissingLayer,
        ];
        for error in &fixed {
            let status = error.status();
            let fresh = problem_body(
                "about:blank",
                status.canonical_reason().unwrap_or("Error"),
                status,
                &error.detail(),
            );
            let first = error.to_http_response("api");
            let again = error.to_http_response("api");
            assert_eq!(first.body(), &fresh, "{error:?}");
            // The same buffer: nothing serialised for the second refusal.
            assert_eq!(first.body().as_ptr(), again.body().as_ptr(), "{error:?}");
        }
        // Refused credentials share one body, so that the client learns nothing of why.
        let unknown = AuthError::InvalidCredential(InvalidCredential::UnknownKey);
        let revoked = AuthError::InvalidCredential(InvalidCredential::RevokedKey);
        assert_eq!(
            unknown.to_http_response("a").body(),
            revoked.to_http_response("b").body()
        );
        // Bodies whose detail varies are built for each refusal.
        let scope = AuthError::InsufficientScope(InsufficientScope::new("weather:read"));
        assert!(scope.fixed_body().is_none());
        let denied = AuthError::Forbidden(Forbidden::Denied("No.".into()));
        assert!(denied.fixed_body().is_none());
        assert!(
            String::from_utf8_lossy(denied.to_http_response("a").body())
                .contains("\"detail\":\"No.\"")
        );
    }

    #[test]
    fn www_authenticate_values() {
        let realm = "api";
        let v = |e: AuthError| {
            e.www_authenticate(realm)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            v(AuthError::MissingCredential).unwrap(),
            "Bearer realm=\"api\""
        );
        assert_eq!(
            v(AuthError::InvalidRequest(CredentialError::Ambiguous)).unwrap(),
            "Bearer realm=\"api\", error=\"invalid_request\""
        );
        assert_eq!(
            v(AuthError::InvalidCredential(InvalidCredential::RevokedKey)).unwrap(),
            "Bearer realm=\"api\", error=\"invalid_token\""
        );
        assert_eq!(
            v(AuthError::InvalidCredential(
                InvalidCredential::TokenExpired
            ))
            .unwrap(),
            "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"token expired\""
        );
        assert_eq!(
            v(AuthError::InsufficientScope("a:b".into())).unwrap(),
            "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"a:b\""
        );
        assert!(v(AuthError::MissingLayer).is_none());
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn resource_metadata_ends_every_challenge() {
        let url = "https://api.example.com/.well-known/oauth-protected-resource";
        let v = |e: AuthError| {
            e.www_authenticate_with("api", Some(url))
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let param = format!("resource_metadata=\"{url}\"");
        assert_eq!(
            v(AuthError::MissingCredential).unwrap(),
            format!("Bearer realm=\"api\", {param}")
        );
        assert_eq!(
            v(AuthError::InvalidCredential(
                InvalidCredential::TokenExpired
            ))
            .unwrap(),
            format!(
                "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"token \
                 expired\", {param}"
            )
        );
        assert_eq!(
            v(AuthError::Forbidden(Forbidden::Denied("no".into()))).unwrap(),
            format!("Bearer realm=\"api\", error=\"insufficient_scope\", {param}")
        );
        // Errors without a challenge get none for the metadata alone.
        assert!(v(AuthError::Forbidden(Forbidden::AddressNotAllowed)).is_none());
        assert!(v(AuthError::Unavailable(Unavailable::JwtKeys)).is_none());
        // Without a URL, the challenge is the one `www_authenticate` gives.
        let e = AuthError::InvalidRequest(CredentialError::Ambiguous);
        assert_eq!(
            e.www_authenticate_with("api", None),
            e.www_authenticate("api")
        );
    }

    #[test]
    fn the_context_carries_the_metadata_into_the_response() {
        let url = "https://api.example.com/.well-known/oauth-protected-resource";
        let req = http::Request::new(());
        let ctx = ErrorContext::new("weather", RequestHead::of(&req));
        assert_eq!(ctx.resource_metadata, None);
        let error = AuthError::MissingCredential;
        assert_eq!(
            error.to_http_response_for(&ctx).headers(),
            error.to_http_response("weather").headers()
        );
        let res = DefaultResponder.respond(&error, &ctx.with_resource_metadata(url));
        assert_eq!(
            res.headers()[WWW_AUTHENTICATE],
            format!("Bearer realm=\"weather\", resource_metadata=\"{url}\"")
        );
    }

    #[test]
    fn a_layer_inherits_the_metadata_url_unless_it_has_its_own() {
        let auth_layer = {
            let mut r = Rendering::default();
            r.set_resource_metadata("https://a.example/.well-known/oauth-protected-resource");
            r
        };
        let mut req = http::Request::new(());
        req.extensions_mut().insert(Passed {
            rendering: auth_layer,
        });
        let challenge = |r: &Rendering| {
            r.render(&AuthError::MissingCredential, &req).headers()[WWW_AUTHENTICATE].clone()
        };
        assert_eq!(
            challenge(&Rendering::default()),
            "Bearer realm=\"api\", \
             resource_metadata=\"https://a.example/.well-known/oauth-protected-resource\""
        );
        let mut own = Rendering::default();
        own.set_resource_metadata("https://b.example/m");
        assert_eq!(
            challenge(&own),
            "Bearer realm=\"api\", resource_metadata=\"https://b.example/m\""
        );
        // Without an `AuthLayer` in front, and no URL of its own: no parameter.
        let alone =
            Rendering::default().render(&AuthError::MissingCredential, &http::Request::new(()));
        assert_eq!(alone.headers()[WWW_AUTHENTICATE], "Bearer realm=\"api\"");
    }

    #[test]
    #[should_panic(expected = "invalid resource_metadata URL")]
    fn a_metadata_url_that_is_not_a_url_is_refused() {
        Rendering::default().set_resource_metadata("/.well-known/oauth-protected-resource");
    }

    #[test]
    fn unknown_and_revoked_read_alike() {
        let a = AuthError::InvalidCredential(InvalidCredential::UnknownKey).to_http_response("r");
        let b = AuthError::InvalidCredential(InvalidCredential::RevokedKey).to_http_response("r");
        assert_eq!(a.body(), b.body());
        assert_eq!(a.headers(), b.headers());
    }

    #[test]
    fn grpc_rendering() {
        let res = AuthError::InsufficientScope("é%".into()).to_grpc_response();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["grpc-status"], "7");
        assert_eq!(
            res.headers()["grpc-message"],
            "The credential lacks the scope \"%C3%A9%25\"."
        );
        assert!(res.body().is_empty());
    }

    #[test]
    fn insufficient_scope_names_what_is_missing() {
        let challenge = |e: &AuthError| e.www_authenticate("api").unwrap();
        let one = AuthError::InsufficientScope("a:b".into());
        assert_eq!(one.detail(), "The credential lacks the scope \"a:b\".");
        assert_eq!(one.to_string(), "the credential lacks the scope \"a:b\"");

        let all =
            AuthError::InsufficientScope(InsufficientScope::all_of(["a", "b", "c"], ["b", "c"]));
        assert_eq!(
            challenge(&all),
            "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"a b c\""
        );
        assert_eq!(
            all.detail(),
            "The credential lacks the scopes \"b\" and \"c\"."
        );
        let three = InsufficientScope::all_of(["a", "b", "c"], Vec::<&str>::new());
        assert_eq!(three.missing().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(
            AuthError::InsufficientScope(three).detail(),
            "The credential lacks the scopes \"a\", \"b\" and \"c\"."
        );

        let any = AuthError::InsufficientScope(InsufficientScope::any_of(["a", "b", "c"]));
        assert_eq!(
            challenge(&any),
            "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"a b c\""
        );
        assert_eq!(
            any.detail(),
            "The credential needs any of the scopes \"a\", \"b\" or \"c\"."
        );
        assert_eq!(any.kind(), "insufficient_scope");
        assert_eq!(any.grpc_code(), GrpcCode::PermissionDenied);
        assert_eq!(
            any.to_grpc_response().headers()["grpc-message"],
            "The credential needs any of the scopes \"a\", \"b\" or \"c\"."
        );
        // Any of one scope is that scope.
        assert_eq!(
            InsufficientScope::any_of(["a"]),
            InsufficientScope::new("a")
        );
        assert!(!InsufficientScope::any_of(["a"]).is_any_of());
    }

    /// Every message from `error` down its chain of sources.
    fn chain(error: &dyn std::error::Error) -> Vec<String> {
        let mut out = vec![error.to_string()];
        let mut next = error.source();
        while let Some(e) = next {
            out.push(e.to_string());
            next = e.source();
        }
        out
    }

    #[test]
    fn an_outage_keeps_its_cause() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let store = AuthError::Unavailable(Unavailable::KeyStore(Arc::new(
            StoreError::unavailable(refused),
        )));
        assert_eq!(
            chain(&store),
            [
                "authentication is unavailable",
                "the key store could not answer",
                "the key store is unavailable",
                "refused"
            ]
        );
        let limiter =
            AuthError::Unavailable(Unavailable::RateLimiter(Arc::new(RateLimitError::Timeout)));
        assert_eq!(
            chain(&limiter),
            [
                "authentication is unavailable",
                "the rate limiter could not decide",
                "the rate limiter's backend did not answer in time"
            ]
        );
        // The client is told none of it.
        assert_eq!(
            store.detail(),
            "Authentication is unavailable; retry later."
        );
    }

    #[test]
    fn grpc_codes_are_the_specs() {
        let cases = [
            (AuthError::MissingCredential, 16, "UNAUTHENTICATED"),
            (
                AuthError::InsufficientScope("s".into()),
                7,
                "PERMISSION_DENIED",
            ),
            (
                AuthError::Unavailable(Unavailable::JwtKeys),
                14,
                "UNAVAILABLE",
            ),
            (AuthError::MissingLayer, 13, "INTERNAL"),
        ];
        for (error, number, name) in cases {
            assert_eq!(error.grpc_code().as_u8(), number);
            assert_eq!(error.grpc_code().as_str(), name);
            assert_eq!(
                error.to_grpc_response().headers()["grpc-status"],
                number.to_string()
            );
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
    }
}
