#![doc = include_str!("../docs/credentials.md")]

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use http::header::{AUTHORIZATION, COOKIE, Entry};
use http::uri::PathAndQuery;
use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};

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

    /// The head of a request taken apart (what axum extractors see).
    pub fn from_parts(parts: &'a http::request::Parts) -> Self {
        Self {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            extensions: &parts.extensions,
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
///
/// ```
/// use http::{HeaderMap, Uri};
/// use keygate::credential::{CredentialError, ExtractCredential, RequestHead};
///
/// /// The credential in `x-legacy-token`, taken out again by `strip_credential`.
/// struct LegacyToken;
///
/// impl ExtractCredential for LegacyToken {
///     fn extract(&self, head: &RequestHead<'_>) -> Result<Option<String>, CredentialError> {
///         let Some(value) = head.headers.get("x-legacy-token") else {
///             return Ok(None);
///         };
///         let value = value.to_str().map_err(|_| CredentialError::InvalidCharacters)?;
///         Ok(Some(value.to_owned()))
///     }
///
///     fn strip(&self, headers: &mut HeaderMap, _uri: &mut Uri) {
///         headers.remove("x-legacy-token");
///     }
/// }
/// ```
pub trait ExtractCredential: Send + Sync + 'static {
    /// Finds the credential, if any.
    fn extract(&self, head: &RequestHead<'_>) -> Result<Option<String>, CredentialError>;

    /// Takes the credential this extractor found out of an admitted request, for
    /// [`AuthLayer::strip_credential`](crate::auth::AuthLayer::strip_credential). Called only
    /// after [`extract`](Self::extract) found a credential in the same request.
    ///
    /// By default the request is left as it is: keygate cannot know where a custom extractor
    /// found its credential. Closures use this default.
    fn strip(&self, headers: &mut HeaderMap, uri: &mut Uri) {
        let _ = (headers, uri);
    }
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

    /// The name of the header, query parameter or cookie of a named source; `None` for
    /// `Bearer` (always `Authorization`) and custom sources.
    #[cfg(feature = "utoipa")]
    pub(crate) fn name(&self) -> Option<&str> {
        match &self.0 {
            Source::Header(name) => Some(name.as_str()),
            Source::Query(name) | Source::Cookie(name) => Some(name),
            Source::Bearer | Source::Custom(_) => None,
        }
    }

    /// The credential of this source, if any. The built-in sources check a value's raw length
    /// against `max_len` before they validate or decode it, so an oversized value costs no
    /// allocation and no pass over its bytes.
    fn find<'r>(
        &self,
        head: &RequestHead<'r>,
        max_len: usize,
    ) -> Result<Option<Cow<'r, str>>, CredentialError> {
        match &self.0 {
            Source::Bearer => bearer(head.headers, max_len),
            Source::Header(name) => header(head.headers, name, max_len),
            Source::Query(name) => query(head.uri.query().unwrap_or(""), name, max_len),
            Source::Cookie(name) => cookie(head.headers, name, max_len),
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
    /// Which source held it, so that it can be taken out again ([`strip`]).
    pub(crate) at: FoundIn,
}

/// Which of a layer's sources held a request's credential: the index into the list given to
/// [`extract`]. Enough to find the credential again, since extraction admits only one per
/// request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FoundIn(usize);

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
    for (index, source) in sources.iter().enumerate() {
        if let Some(value) = source.find(head, max_len)? {
            if found.is_some() {
                return Err(CredentialError::Ambiguous);
            }
            check_value(&value, max_len)?;
            found = Some(Found {
                value,
                source: source.kind(),
                at: FoundIn(index),
            });
        }
    }
    Ok(found)
}

/// Takes the credential that [`extract`] found `at` out of `req`, leaving every other byte of
/// the request as it was: the `Authorization` or named header; the cookie's pair (with one `;`
/// next to it) from its `Cookie` header, dropping the header if nothing is left; the query
/// parameter's `name=value` pair (with one `&` next to it), the `?` too when the query is left
/// empty. A custom source strips with its own [`ExtractCredential::strip`].
///
/// The work is one pass over the header or query, which the server already bounds, and one
/// allocation for the rewritten value.
pub(crate) fn strip<B>(sources: &[CredentialSource], at: FoundIn, req: &mut Request<B>) {
    let Some(source) = sources.get(at.0) else {
        return;
    };
    match &source.0 {
        // Extraction admits exactly one value of the header, so removing the header removes
        // just the credential.
        Source::Bearer => {
            req.headers_mut().remove(AUTHORIZATION);
        }
        Source::Header(name) => {
            req.headers_mut().remove(name);
        }
        Source::Query(name) => {
            strip_query(req.uri_mut(), name);
            // axum's router keeps a copy of the URI as it arrived, for `OriginalUri`: the
            // credential goes from that copy too.
            #[cfg(feature = "axum")]
            if let Some(original) = req.extensions_mut().get_mut::<axum::extract::OriginalUri>() {
                strip_query(&mut original.0, name);
            }
        }
        Source::Cookie(name) => strip_cookie(req.headers_mut(), name),
        Source::Custom(f) => {
            // Headers and URI are borrowed from the request at once.
            let mut uri = std::mem::take(req.uri_mut());
            f.strip(req.headers_mut(), &mut uri);
            *req.uri_mut() = uri;
        }
    }
}

/// The range to cut from `whole` to remove the piece `start..end` (one of the pieces `whole`
/// splits into at a separator) with one separator next to it: the one after it, or, for the
/// last piece, the one before it.
fn cut_with_separator(whole: usize, start: usize, end: usize) -> Range<usize> {
    if end < whole {
        start..end + 1
    } else {
        start.saturating_sub(1)..end
    }
}

/// Where the pair of the parameter `name` is in `query`, with one `&` next to it. The pair is
/// matched as [`query`] matches it, so it is the pair the credential came from.
fn query_cut(query: &str, name: &str) -> Option<Range<usize>> {
    QueryPairs::new(query)
        .find(|pair| is_named(pair.name, name))
        .map(|pair| cut_with_separator(query.len(), pair.at.start, pair.at.end))
}

/// One `name=value` pair of a query (the value empty when there is no `=`), where it is.
struct QueryPair<'q> {
    name: &'q str,
    value: &'q str,
    /// The pair's range in the query, without its `&`.
    at: Range<usize>,
}

/// The pairs of a query, split at `&` and their first `=` by a scan of its bytes (both are
/// ASCII, so every piece is a `str`), cheaper than splitting on `char` patterns.
struct QueryPairs<'q> {
    query: &'q str,
    start: usize,
    done: bool,
}

impl<'q> QueryPairs<'q> {
    fn new(query: &'q str) -> Self {
        Self {
            query,
            start: 0,
            done: false,
        }
    }
}

impl<'q> Iterator for QueryPairs<'q> {
    type Item = QueryPair<'q>;

    fn next(&mut self) -> Option<QueryPair<'q>> {
        if self.done {
            return None;
        }
        let bytes = self.query.as_bytes();
        let start = self.start;
        let rest = bytes.get(start..).unwrap_or_default();
        // The name is short: scanned byte by byte; the value, maybe long, by `memchr`.
        let name_len = rest
            .iter()
            .position(|&b| b == b'&' || b == b'=')
            .unwrap_or(rest.len());
        let (end, eq) = match rest.get(name_len) {
            Some(b'=') => {
                let after = &rest[name_len + 1..];
                let len = memchr::memchr(b'&', after).unwrap_or(after.len());
                (start + name_len + 1 + len, Some(start + name_len))
            }
            _ => (start + name_len, None),
        };
        if end == bytes.len() {
            self.done = true;
        } else {
            self.start = end + 1;
        }
        // `&` and `=` are ASCII: every cut is at a character boundary.
        let piece = |r: Range<usize>| self.query.get(r).unwrap_or_default();
        let (name, value) = match eq {
            Some(eq) => (piece(start..eq), piece(eq + 1..end)),
            None => (piece(start..end), ""),
        };
        Some(QueryPair {
            name,
            value,
            at: start..end,
        })
    }
}

fn strip_query(uri: &mut Uri, name: &str) {
    let Some(pq) = uri.path_and_query() else {
        return;
    };
    let Some(query) = pq.query() else {
        return;
    };
    let Some(cut) = query_cut(query, name) else {
        return;
    };
    let path = pq.path();
    let rest = query.len() - cut.len();
    let mut rebuilt = String::with_capacity(path.len() + 1 + rest);
    rebuilt.push_str(path);
    if rest > 0 {
        rebuilt.push('?');
        rebuilt.push_str(&query[..cut.start]);
        rebuilt.push_str(&query[cut.end..]);
    }
    // Taking characters out of a valid URI leaves a valid one; should that ever fail, the
    // request keeps the URI it came with rather than lose its path.
    let Ok(pq) = PathAndQuery::try_from(rebuilt) else {
        return;
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(rebuilt) = Uri::from_parts(parts) {
        *uri = rebuilt;
    }
}

/// Where the pair of cookie `name` is in a `Cookie` header's value, with one `;` next to it.
/// The pair is matched as [`cookie`] matches it.
fn cookie_cut(value: &[u8], name: &str) -> Option<Range<usize>> {
    let mut start = 0;
    for pair in value.split(|&b| b == b';') {
        let end = start + pair.len();
        if let Some(eq) = pair.iter().position(|&b| b == b'=')
            && pair[..eq].trim_ascii() == name.as_bytes()
        {
            return Some(cut_with_separator(value.len(), start, end));
        }
        start = end + 1;
    }
    None
}

fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let Entry::Occupied(mut entry) = headers.entry(COOKIE) else {
        return;
    };
    let mut emptied = None;
    for (i, value) in entry.iter_mut().enumerate() {
        let bytes = value.as_bytes();
        let Some(cut) = cookie_cut(bytes, name) else {
            continue;
        };
        let kept = [&bytes[..cut.start], &bytes[cut.end..]].concat();
        // What was around the pair is the separator's whitespace (`a=1; k=v` loses `; k=v`,
        // `k=v; a=1` loses `k=v;` and the space).
        let kept = trim_ows(&kept);
        if kept.is_empty() {
            emptied = Some(i);
        } else if let Ok(mut new) = HeaderValue::from_bytes(kept) {
            new.set_sensitive(value.is_sensitive());
            *value = new;
        }
        // Extraction admits the cookie only once in all the headers.
        break;
    }
    if let Some(emptied) = emptied {
        // A header value cannot be taken out of the middle of a name's values in place.
        let kept: Vec<HeaderValue> = entry
            .remove_entry_mult()
            .1
            .enumerate()
            .filter_map(|(i, v)| (i != emptied).then_some(v))
            .collect();
        for value in kept {
            headers.append(COOKIE, value);
        }
    }
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

/// Fails with `TooLong` when a raw value is longer than `max_len`.
fn within(raw: &[u8], max_len: usize) -> Result<&[u8], CredentialError> {
    if raw.len() > max_len {
        return Err(CredentialError::TooLong);
    }
    Ok(raw)
}

fn utf8(bytes: &[u8]) -> Result<&str, CredentialError> {
    std::str::from_utf8(bytes).map_err(|_| CredentialError::InvalidCharacters)
}

/// An RFC 9110 `tchar`: the characters of an authentication scheme's name.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `Authorization: Bearer <token>` (RFC 9110 §11.4, RFC 6750 §2.1): the scheme, one or more
/// spaces, the token. A header of the Bearer scheme in any other shape (a tab or a comma after
/// the scheme, two tokens) is a malformed credential, never a missing one. Other schemes are
/// not ours.
fn bearer(headers: &HeaderMap, max_len: usize) -> Result<Option<Cow<'_, str>>, CredentialError> {
    let Some(value) = single(headers, &AUTHORIZATION)? else {
        return Ok(None);
    };
    let bytes = trim_ows(value.as_bytes());
    let scheme_end = bytes
        .iter()
        .position(|&b| !is_tchar(b))
        .unwrap_or(bytes.len());
    if !bytes[..scheme_end].eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let rest = &bytes[scheme_end..];
    let token_start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    let token = &rest[token_start..];
    // A tab inside the token is a control character, refused as such by `check_value`.
    // `memchr` searches by vector; a token is a few hundred bytes.
    if token_start == 0 || token.is_empty() || memchr::memchr(b' ', token).is_some() {
        return Err(CredentialError::MalformedAuthorization);
    }
    Ok(Some(Cow::Borrowed(utf8(within(token, max_len)?)?)))
}

/// Strips optional whitespace (spaces and tabs) around a field value.
fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

fn header<'r>(
    headers: &'r HeaderMap,
    name: &HeaderName,
    max_len: usize,
) -> Result<Option<Cow<'r, str>>, CredentialError> {
    let Some(value) = single(headers, name)? else {
        return Ok(None);
    };
    let trimmed = value.as_bytes().trim_ascii();
    Ok(Some(Cow::Borrowed(utf8(within(trimmed, max_len)?)?)))
}

/// The longest raw text of a value that may decode to `max_len` bytes: each byte can be
/// written as a three-character `%XX` escape.
fn max_encoded_len(max_len: usize) -> usize {
    max_len.saturating_mul(3)
}

fn query<'r>(
    query: &'r str,
    name: &str,
    max_len: usize,
) -> Result<Option<Cow<'r, str>>, CredentialError> {
    let mut found = None;
    for pair in QueryPairs::new(query) {
        if !is_named(pair.name, name) {
            continue;
        }
        if found.is_some() {
            return Err(CredentialError::Repeated);
        }
        within(pair.value.as_bytes(), max_encoded_len(max_len))?;
        found = Some(decode(pair.value, max_len)?);
    }
    Ok(found)
}

/// Whether the raw parameter name `k` is `name` once form-decoded.
fn is_named(k: &str, name: &str) -> bool {
    // Decoding never lengthens a name: a shorter one cannot be ours.
    if k.len() < name.len() {
        return false;
    }
    if has_escape(k) {
        // A name with escapes may decode to ours; compared byte by byte, without decoding it
        // into a buffer.
        FormDecoded::new(k.as_bytes()).eq(name.bytes())
    } else {
        k == name
    }
}

fn has_escape(s: &str) -> bool {
    let bytes = s.as_bytes();
    // A parameter's name is a few bytes: a plain loop is cheaper than setting up a vector search.
    if bytes.len() < 16 {
        return bytes.iter().any(|&b| b == b'%' || b == b'+');
    }
    memchr::memchr2(b'%', b'+', bytes).is_some()
}

/// The bytes of form-encoded text (`%XX` escapes, `+` for a space), decoded one at a time. A
/// `%` not followed by two hex digits stands for itself.
struct FormDecoded<'a> {
    rest: &'a [u8],
}

impl<'a> FormDecoded<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }
}

impl Iterator for FormDecoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        match first {
            b'+' => Some(b' '),
            b'%' => match rest {
                [hi, lo, tail @ ..] => match (hex(*hi), hex(*lo)) {
                    (Some(hi), Some(lo)) => {
                        self.rest = tail;
                        Some(hi << 4 | lo)
                    }
                    _ => Some(b'%'),
                },
                _ => Some(b'%'),
            },
            b => Some(b),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.rest.len().div_ceil(3), Some(self.rest.len()))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Form-decodes `s`, borrowing it when it has nothing to decode; one allocation otherwise. A
/// value that decodes to more than `max_len` bytes is refused first, its length counted without
/// decoding, so it costs no allocation.
fn decode(s: &str, max_len: usize) -> Result<Cow<'_, str>, CredentialError> {
    if !has_escape(s) {
        return Ok(Cow::Borrowed(s));
    }
    if FormDecoded::new(s.as_bytes()).count() > max_len {
        return Err(CredentialError::TooLong);
    }
    let mut bytes = Vec::with_capacity(s.len());
    bytes.extend(FormDecoded::new(s.as_bytes()));
    String::from_utf8(bytes)
        .map(Cow::Owned)
        .map_err(|_| CredentialError::InvalidCharacters)
}

fn cookie<'r>(
    headers: &'r HeaderMap,
    name: &str,
    max_len: usize,
) -> Result<Option<Cow<'r, str>>, CredentialError> {
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
            found = Some(Cow::Borrowed(utf8(within(v, max_len)?)?));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_split_as_str_split_does() {
        let queries = [
            "",
            "&",
            "&&",
            "=",
            "==",
            "a",
            "a=",
            "=b",
            "a=b",
            "a=b=c",
            "a=b&",
            "&a=b",
            "a&b",
            "a=1&b=2&c",
            "key=v&key=w",
            "k%65y=x&q=London",
            "a=&=b&&c=d=e&",
            "é=ü&ß",
        ];
        for query in queries {
            let expected: Vec<(&str, &str)> = query
                .split('&')
                .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
                .collect();
            let pairs: Vec<QueryPair<'_>> = QueryPairs::new(query).collect();
            let got: Vec<(&str, &str)> = pairs.iter().map(|p| (p.name, p.value)).collect();
            assert_eq!(got, expected, "{query:?}");
            let mut start = 0;
            for (pair, raw) in pairs.iter().zip(query.split('&')) {
                assert_eq!(pair.at, start..start + raw.len(), "{query:?}");
                start += raw.len() + 1;
            }
        }
    }

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
        for malformed in [
            "Bearer a b",
            "Bearer\tabc",
            "bearer\t\tabc",
            "Bearer,abc",
            "Bearer=abc",
        ] {
            assert_eq!(
                r(get("/").header("authorization", malformed)),
                Err(CredentialError::MalformedAuthorization),
                "{malformed:?}"
            );
        }
        assert_eq!(
            r(get("/").header("authorization", "Bearer \tabc")),
            Err(CredentialError::InvalidCharacters)
        );
        // Another scheme whose name merely starts with "Bearer" is not ours.
        assert_eq!(
            r(get("/").header("authorization", "Bearer-Token abc")),
            Ok(None)
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
    fn raw_length_is_checked_before_decoding() {
        let r = |b: http::request::Builder| run(b.body(()).unwrap(), &all());
        // 512 bytes decoded from 1536 escaped ones is within the limit.
        assert_eq!(
            r(get(&format!("/?key={}", "%41".repeat(512)))),
            Ok(Some("A".repeat(512)))
        );
        // Raw text longer than any value within the limit is refused as it is, even when it is
        // not valid UTF-8 once decoded.
        assert_eq!(
            r(get(&format!("/?key={}", "%FF".repeat(600)))),
            Err(CredentialError::TooLong)
        );
        let long = http::HeaderValue::from_bytes(&[0xff; 600]).unwrap();
        assert_eq!(
            r(get("/").header("x-api-key", long.clone())),
            Err(CredentialError::TooLong)
        );
        let cookie = http::HeaderValue::from_bytes(&[b"k=".as_slice(), &[0xff; 600]].concat());
        assert_eq!(
            r(get("/").header("cookie", cookie.unwrap())),
            Err(CredentialError::TooLong)
        );
    }

    #[test]
    fn form_decoding() {
        let d = |s: &str| decode(s, usize::MAX).map(Cow::into_owned);
        assert_eq!(d("a%2Fb+c"), Ok("a/b c".into()));
        assert_eq!(d("100%"), Ok("100%".into()));
        assert_eq!(d("%4"), Ok("%4".into()));
        assert_eq!(d("%zz%41"), Ok("%zzA".into()));
        assert!(matches!(decode("plain", 1), Ok(Cow::Borrowed("plain"))));
        assert_eq!(decode("%41%41", 1), Err(CredentialError::TooLong));
        assert_eq!(d("%C3%A9"), Ok("\u{e9}".into()));
        assert_eq!(d("%C3"), Err(CredentialError::InvalidCharacters));
    }

    /// The request after stripping the credential the sources find in it.
    fn stripped(req: http::request::Builder, sources: &[CredentialSource]) -> http::Request<()> {
        let mut req = req.body(()).unwrap();
        let at = extract(sources, &RequestHead::of(&req), 512)
            .unwrap()
            .expect("a credential")
            .at;
        strip(sources, at, &mut req);
        req
    }

    #[test]
    fn strips_the_query_pair_only() {
        let key = [CredentialSource::query("key")];
        for (before, after) in [
            ("/p?key=K", "/p"),
            ("/p?a=1&key=K&a=2", "/p?a=1&a=2"),
            ("/p?key=K&b=%26x%3D", "/p?b=%26x%3D"),
            ("/p?b=c+d&key=K", "/p?b=c+d"),
            ("/p?&&key=K&", "/p?&&"),
            ("/p?&key=K", "/p"),
            ("/p?key=K%2B%26&x", "/p?x"),
            (
                "/p?k%65y=K&key2=x&%6Bey%3D=y&Key=z&key+=w",
                "/p?key2=x&%6Bey%3D=y&Key=z&key+=w",
            ),
            ("/p?a=&b&key=K&c==&d=%zz", "/p?a=&b&c==&d=%zz"),
            ("/a%2Fb/?key=K&q=1", "/a%2Fb/?q=1"),
        ] {
            let req = stripped(get(before), &key);
            assert_eq!(req.uri().to_string(), after, "{before}");
        }
        let req = stripped(get("https://example.com:8443/p?key=K&q=1"), &key);
        assert_eq!(req.uri().to_string(), "https://example.com:8443/p?q=1");
    }

    #[test]
    fn strips_the_cookie_pair_only() {
        let k = [CredentialSource::cookie("k")];
        let cookies = |req: &http::Request<()>| -> Vec<Vec<u8>> {
            req.headers()
                .get_all(COOKIE)
                .iter()
                .map(|v| v.as_bytes().to_vec())
                .collect()
        };
        for (before, after) in [
            ("k=abc", None),
            ("k=abc; a=1", Some("a=1")),
            ("a=1; k=abc; b=\"x y\"", Some("a=1; b=\"x y\"")),
            ("a=1; k=abc", Some("a=1")),
            ("a=1;k=abc;b=2", Some("a=1;b=2")),
            ("a=1; k=\"abc\";", Some("a=1;")),
            ("kk=1; k=abc; k2=2", Some("kk=1; k2=2")),
        ] {
            let req = stripped(get("/").header("cookie", before), &k);
            let want: Vec<Vec<u8>> = after.into_iter().map(|a| a.as_bytes().to_vec()).collect();
            assert_eq!(cookies(&req), want, "{before}");
        }
        // Other cookies keep their bytes, UTF-8 or not; the other headers keep theirs.
        let other = http::HeaderValue::from_bytes(b"a=\xff; k=abc; b=%20").unwrap();
        let req = stripped(get("/").header("cookie", other).header("x-y", "z"), &k);
        assert_eq!(cookies(&req), [b"a=\xff; b=%20".to_vec()]);
        assert_eq!(req.headers()["x-y"], "z");
        // Several Cookie headers: only the one with the pair changes, or goes if left empty.
        let req = stripped(
            get("/")
                .header("cookie", "a=1")
                .header("cookie", "k=abc")
                .header("cookie", "b=2"),
            &k,
        );
        assert_eq!(cookies(&req), [b"a=1".to_vec(), b"b=2".to_vec()]);
        let req = stripped(
            get("/")
                .header("cookie", "a=1")
                .header("cookie", "b=2; k=abc"),
            &k,
        );
        assert_eq!(cookies(&req), [b"a=1".to_vec(), b"b=2".to_vec()]);
    }

    #[test]
    fn strips_headers() {
        let req = stripped(
            get("/")
                .header("authorization", "Bearer abc")
                .header("x-other", "1"),
            &all(),
        );
        assert!(req.headers().get(AUTHORIZATION).is_none());
        assert_eq!(req.headers()["x-other"], "1");
        let req = stripped(
            get("/?key2=x")
                .header("x-api-key", "abc")
                .header("authorization", "Basic dTpw"),
            &all(),
        );
        assert!(req.headers().get("x-api-key").is_none());
        assert_eq!(req.headers()[AUTHORIZATION], "Basic dTpw");
        assert_eq!(req.uri(), "/?key2=x");
    }

    #[test]
    fn custom_sources_strip_with_their_hook() {
        struct Token;
        impl ExtractCredential for Token {
            fn extract(&self, h: &RequestHead<'_>) -> Result<Option<String>, CredentialError> {
                Ok(h.headers.get("x-t").map(|_| "zz".to_owned()))
            }
            fn strip(&self, headers: &mut HeaderMap, uri: &mut Uri) {
                headers.remove("x-t");
                *uri = Uri::from_static("/stripped");
            }
        }
        let req = stripped(
            get("/?a=1").header("x-t", "zz"),
            &[CredentialSource::custom(Token)],
        );
        assert!(req.headers().get("x-t").is_none());
        assert_eq!(req.uri(), "/stripped");
        // A closure has the default hook: the request stays as it was.
        let closure = CredentialSource::custom(|h: &RequestHead<'_>| {
            Ok(h.headers.get("x-t").map(|_| "zz".to_owned()))
        });
        let req = stripped(get("/?a=1").header("x-t", "zz"), &[closure]);
        assert_eq!(req.headers()["x-t"], "zz");
        assert_eq!(req.uri(), "/?a=1");
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
