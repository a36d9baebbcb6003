//! Where a request's credential is found, and the rules that keep finding it unambiguous.
//!
//! An [`AuthLayer`](crate::AuthLayer) looks in every configured [`CredentialSource`], in order.
//! Exactly one credential may be present: two (even equal ones, in two places), a repeated header
//! or query parameter, an empty value, control characters, non-UTF-8 bytes or an oversized value
//! make the request fail with 400 `invalid_request` (RFC 6750 §2: a client uses one method).
//!
//! ```
//! use keygate::{AuthLayer, CredentialSource, store::MemoryStore};
//!
//! let layer = AuthLayer::new(MemoryStore::new()).sources([
//!     CredentialSource::bearer(),
//!     CredentialSource::header("x-api-key"),
//!     CredentialSource::query("key"),
//!     CredentialSource::cookie("session_key"),
//!     CredentialSource::custom(|head: &keygate::RequestHead<'_>| {
//!         Ok(head
//!             .headers
//!             .get("x-legacy-token")
//!             .and_then(|v| v.to_str().ok())
//!             .map(str::to_owned))
//!     }),
//! ]);
//! # let _ = layer;
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::header::{AUTHORIZATION, COOKIE};
use http::{Extensions, HeaderMap, HeaderName, Method, Uri};

/// A view of a request's head, handed to custom extractors and error responders.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI, with its query.
    pub uri: &'a Uri,
    /// The headers (for gRPC: the metadata).
    pub headers: &'a HeaderMap,
    /// The extensions other layers put in.
    pub extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// The head of `req`.
    pub fn of<B>(req: &'a http::Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }

    /// Whether this is a gRPC request (`content-type` starts with `application/grpc`).
    pub fn is_grpc(&self) -> bool {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    }
}

/// Why a request's credential could not be read. Every case is answered with 400
/// `invalid_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// Credentials were found in two places (or twice in one custom source).
    #[error("the request carries more than one credential; send exactly one")]
    Ambiguous,
    /// The same header, query parameter or cookie appears more than once.
    #[error("the credential's header, query parameter or cookie appears more than once")]
    Repeated,
    /// The value is empty.
    #[error("the credential is empty")]
    Empty,
    /// The value is longer than the configured limit.
    #[error("the credential is too long")]
    TooLong,
    /// The value has control characters or is not UTF-8.
    #[error("the credential contains characters that are not allowed")]
    InvalidCharacters,
    /// `Authorization: Bearer` with nothing usable after it.
    #[error("the Authorization header is malformed; use \"Bearer <credential>\"")]
    MalformedAuthorization,
}

/// A custom way to find a credential in a request.
///
/// Implemented for closures `Fn(&RequestHead<'_>) -> Result<Option<String>, CredentialError>`.
/// Return `Ok(None)` when the request carries no credential of this kind.
pub trait ExtractCredential: Send + Sync + 'static {
    /// Finds the credential, if any.
    fn extract(&self, head: &RequestHead<'_>) -> Result<Option<String>, CredentialError>;
}

impl<F> ExtractCredential for F
where
    F: Fn(&RequestHead<'_>) -> Result<Option<String>, CredentialError> + Send + Sync + 'static,
{
    fn extract(&self, head: &RequestHead<'_>) -> Result<Option<String>, CredentialError> {
        self(head)
    }
}

/// One place a credential may be found.
#[derive(Clone)]
pub struct CredentialSource(Source);

#[derive(Clone)]
enum Source {
    Bearer,
    Header(HeaderName),
    Query(Box<str>),
    Cookie(Box<str>),
    Custom(Arc<dyn ExtractCredential>),
}

/// Which kind of source a credential came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceKind {
    /// `Authorization: Bearer`.
    Bearer,
    /// A named header.
    Header,
    /// A query parameter.
    Query,
    /// A cookie.
    Cookie,
    /// A custom extractor.
    Custom,
}

impl CredentialSource {
    /// `Authorization: Bearer <credential>` (the scheme is matched without regard to case).
    /// Other schemes, such as `Basic`, are not a credential for keygate and are left alone.
    pub fn bearer() -> Self {
        Self(Source::Bearer)
    }

    /// A header, such as `x-api-key`.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name; this is configuration, checked once at start.
    pub fn header(name: &str) -> Self {
        let name = HeaderName::try_from(name).expect("a valid header name");
        Self(Source::Header(name))
    }

    /// A query parameter, such as `key` in `?key=…&q=London`. Values are percent-decoded (and
    /// `+` read as a space), as HTML forms encode them.
    pub fn query(name: &str) -> Self {
        Self(Source::Query(name.into()))
    }

    /// A cookie.
    pub fn cookie(name: &str) -> Self {
        Self(Source::Cookie(name.into()))
    }

    /// A custom extractor.
    pub fn custom(extractor: impl ExtractCredential) -> Self {
        Self(Source::Custom(Arc::new(extractor)))
    }

    /// The kind of this source.
    pub fn kind(&self) -> SourceKind {
        match self.0 {
            Source::Bearer => SourceKind::Bearer,
            Source::Header(_) => SourceKind::Header,
            Source::Query(_) => SourceKind::Query,
            Source::Cookie(_) => SourceKind::Cookie,
            Source::Custom(_) => SourceKind::Custom,
        }
    }

    fn find<'r>(&self, head: &RequestHead<'r>) -> Result<Option<Cow<'r, str>>, CredentialError> {
        match &self.0 {
            Source::Bearer => bearer(head.headers),
            Source::Header(name) => header(head.headers, name),
            Source::Query(name) => query(head.uri.query().unwrap_or(""), name),
            Source::Cookie(name) => cookie(head.headers, name),
            Source::Custom(f) => Ok(f.extract(head)?.map(Cow::Owned)),
        }
    }
}

impl fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::Bearer => f.write_str("Bearer"),
            Source::Header(n) => write!(f, "Header({n})"),
            Source::Query(n) => write!(f, "Query({n})"),
            Source::Cookie(n) => write!(f, "Cookie({n})"),
            Source::Custom(_) => f.write_str("Custom"),
        }
    }
}

/// The default sources, in order: Bearer, the `x-api-key` header, the `key` query parameter.
pub(crate) fn default_sources() -> Vec<CredentialSource> {
    vec![
        CredentialSource::bearer(),
        CredentialSource::header("x-api-key"),
        CredentialSource::query("key"),
    ]
}

/// A credential found in a request, borrowed from it where possible.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Found<'r> {
    pub(crate) value: Cow<'r, str>,
    pub(crate) source: SourceKind,
}

impl fmt::Debug for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Found")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Looks in every source; exactly one may hold a credential. `max_len` bounds the value in bytes.
pub(crate) fn extract<'r>(
    sources: &[CredentialSource],
    head: &RequestHead<'r>,
    max_len: usize,
) -> Result<Option<Found<'r>>, CredentialError> {
    let mut found: Option<Found<'r>> = None;
    for source in sources {
        if let Some(value) = source.find(head)? {
            if found.is_some() {
                return Err(CredentialError::Ambiguous);
            }
            check_value(&value, max_len)?;
            found = Some(Found {
                value,
                source: source.kind(),
            });
        }
    }
    Ok(found)
}

fn check_value(value: &str, max_len: usize) -> Result<(), CredentialError> {
    if value.is_empty() {
        return Err(CredentialError::Empty);
    }
    if value.len() > max_len {
        return Err(CredentialError::TooLong);
    }
    if value
        .bytes()
        .fold(false, |bad, b| bad | (b < 0x20) | (b == 0x7f))
    {
        return Err(CredentialError::InvalidCharacters);
    }
    Ok(())
}

/// The only value of `name`, or an error when it is repeated.
fn single<'r>(
    headers: &'r HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'r http::HeaderValue>, CredentialError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(CredentialError::Repeated);
    }
    Ok(first)
}

fn bearer(headers: &HeaderMap) -> Result<Option<Cow<'_, str>>, CredentialError> {
    let Some(value) = single(headers, &AUTHORIZATION)? else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let scheme_end = bytes.iter().position(|&b| b == b' ').unwrap_or(bytes.len());
    if !bytes[..scheme_end].eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let token = bytes[scheme_end..].trim_ascii();
    if token.is_empty() || token.contains(&b' ') {
        return Err(CredentialError::MalformedAuthorization);
    }
    let token = std::str::from_utf8(token).map_err(|_| CredentialError::InvalidCharacters)?;
    Ok(Some(Cow::Borrowed(token)))
}

fn header<'r>(
    headers: &'r HeaderMap,
    name: &HeaderName,
) -> Result<Option<Cow<'r, str>>, CredentialError> {
    let Some(value) = single(headers, name)? else {
        return Ok(None);
    };
    let s =
        std::str::from_utf8(value.as_bytes()).map_err(|_| CredentialError::InvalidCharacters)?;
    Ok(Some(Cow::Borrowed(s.trim_matches(' '))))
}

fn query<'r>(query: &'r str, name: &str) -> Result<Option<Cow<'r, str>>, CredentialError> {
    let mut found = None;
    let mut rest = query;
    loop {
        let (pair, next) = match rest.find('&') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let b = pair.as_bytes();
        let n = name.len();
        let value = if b.len() > n && b[n] == b'=' && &b[..n] == name.as_bytes() {
            // `name=...`: ours, no decoding of the name needed.
            Some(&pair[n + 1..])
        } else if b.len() >= n {
            // A name with escapes may decode to ours; one without is not ours.
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let matches = k.len() >= n
                && if has_escape(k) {
                    percent_encoding::percent_decode_str(&k.replace('+', " ")).eq(name.bytes())
                } else {
                    k == name
                };
            matches.then_some(v)
        } else {
            None
        };
        if let Some(v) = value {
            if found.is_some() {
                return Err(CredentialError::Repeated);
            }
            found = Some(match decode(v)? {
                Some(owned) => Cow::Owned(owned),
                None => Cow::Borrowed(v),
            });
        }
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    Ok(found)
}

fn has_escape(s: &str) -> bool {
    // No early exit, so that the loop vectorises.
    s.bytes()
        .fold(false, |found, b| found | (b == b'%') | (b == b'+'))
}

/// Form-decodes `s` (`%XX` escapes, `+` as space); `None` when it has nothing to decode.
fn decode(s: &str) -> Result<Option<String>, CredentialError> {
    if !has_escape(s) {
        return Ok(None);
    }
    let plus_free = s.replace('+', " ");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(&plus_free).collect();
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| CredentialError::InvalidCharacters)
}

fn cookie<'r>(headers: &'r HeaderMap, name: &str) -> Result<Option<Cow<'r, str>>, CredentialError> {
    let mut found = None;
    // HTTP/2 may split cookies over several headers. Other cookies may hold any bytes; only ours
    // must be UTF-8, and a non-UTF-8 one is an error, not a missing credential.
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if pair[..eq].trim_ascii() != name.as_bytes() {
                continue;
            }
            if found.is_some() {
                return Err(CredentialError::Repeated);
            }
            let v = pair[eq + 1..].trim_ascii();
            let v = v
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v);
            let v = std::str::from_utf8(v).map_err(|_| CredentialError::InvalidCharacters)?;
            found = Some(Cow::Borrowed(v));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        req: http::Request<()>,
        sources: &[CredentialSource],
    ) -> Result<Option<String>, CredentialError> {
        let head = RequestHead::of(&req);
        extract(sources, &head, 512).map(|f| f.map(|f| f.value.into_owned()))
    }

    fn all() -> Vec<CredentialSource> {
        let mut s = default_sources();
        s.push(CredentialSource::cookie("k"));
        s
    }

    fn get(uri: &str) -> http::request::Builder {
        http::Request::get(uri)
    }

    #[test]
    fn finds_each_source() {
        let ok = |r: http::request::Builder| run(r.body(()).unwrap(), &all());
        assert_eq!(
            ok(get("/").header("authorization", "Bearer abc")),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            ok(get("/").header("authorization", "bearer   abc")),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            ok(get("/").header("x-api-key", "abc")),
            Ok(Some("abc".into()))
        );
        assert_eq!(ok(get("/?q=1&key=a%2Fb+c")), Ok(Some("a/b c".into())));
        assert_eq!(ok(get("/?k%65y=abc")), Ok(Some("abc".into())));
        assert_eq!(
            ok(get("/").header("cookie", "a=1; k=\"abc\"")),
            Ok(Some("abc".into()))
        );
        assert_eq!(ok(get("/?q=London")), Ok(None));
        assert_eq!(ok(get("/").header("authorization", "Basic dTpw")), Ok(None));
    }

    #[test]
    fn ambiguity_and_repetition() {
        let r = |b: http::request::Builder| run(b.body(()).unwrap(), &all());
        assert_eq!(
            r(get("/?key=a").header("x-api-key", "a")),
            Err(CredentialError::Ambiguous)
        );
        assert_eq!(r(get("/?key=a&key=a")), Err(CredentialError::Repeated));
        assert_eq!(r(get("/?key=a&k%65y=b")), Err(CredentialError::Repeated));
        assert_eq!(
            r(get("/").header("x-api-key", "a").header("x-api-key", "a")),
            Err(CredentialError::Repeated)
        );
        assert_eq!(
            r(get("/")
                .header("authorization", "Bearer a")
                .header("authorization", "Bearer a")),
            Err(CredentialError::Repeated)
        );
        assert_eq!(
            r(get("/").header("cookie", "k=1").header("cookie", "k=2")),
            Err(CredentialError::Repeated)
        );
    }

    #[test]
    fn bad_values() {
        let r = |b: http::request::Builder| run(b.body(()).unwrap(), &all());
        assert_eq!(r(get("/?key=")), Err(CredentialError::Empty));
        assert_eq!(r(get("/?key")), Err(CredentialError::Empty));
        assert_eq!(
            r(get("/?key=%00abc")),
            Err(CredentialError::InvalidCharacters)
        );
        assert_eq!(
            r(get("/?key=%FF%FE")),
            Err(CredentialError::InvalidCharacters)
        );
        assert_eq!(
            r(get(&format!("/?key={}", "a".repeat(513)))),
            Err(CredentialError::TooLong)
        );
        assert_eq!(
            r(get("/").header("authorization", "Bearer")),
            Err(CredentialError::MalformedAuthorization)
        );
        assert_eq!(
            r(get("/").header("authorization", "Bearer a b")),
            Err(CredentialError::MalformedAuthorization)
        );
        let non_utf8 = http::HeaderValue::from_bytes(b"\xffabc").unwrap();
        assert_eq!(
            r(get("/").header("x-api-key", non_utf8)),
            Err(CredentialError::InvalidCharacters)
        );
        // Our cookie must be UTF-8; other cookies may hold anything.
        let cookie = http::HeaderValue::from_bytes(b"a=\xff; k=\xe9t\xe9").unwrap();
        assert_eq!(
            r(get("/").header("cookie", cookie)),
            Err(CredentialError::InvalidCharacters)
        );
        let cookie = http::HeaderValue::from_bytes(b"a=\xff; k=abc").unwrap();
        assert_eq!(r(get("/").header("cookie", cookie)), Ok(Some("abc".into())));
        // Another parameter's name that is not UTF-8 once decoded is just not ours.
        assert_eq!(r(get("/?stra%DFe=1&key=abc")), Ok(Some("abc".into())));
        assert_eq!(r(get("/?%FF")), Ok(None));
    }

    #[test]
    fn custom_source() {
        let custom = CredentialSource::custom(|h: &RequestHead<'_>| {
            Ok(h.headers
                .get("x-t")
                .map(|v| v.to_str().unwrap_or("").to_owned()))
        });
        let req = get("/").header("x-t", "zz").body(()).unwrap();
        assert_eq!(run(req, &[custom]), Ok(Some("zz".into())));
    }
}
