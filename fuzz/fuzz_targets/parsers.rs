//! keygate's public parsers: `KeyFormat::check`, `Quota` parsing and credential extraction.
//!
//! The first byte picks the parser, the rest is its input:
//!
//! - `q`: a quota text (`100/min;burst=20`); its first 16 bytes also build a `Quota::new`
//!   directly. Every quota that exists must survive `to_string` then `parse` unchanged.
//! - `k`: one byte of prefix length, the prefix, then a key text. Checked against the default
//!   format and one with that prefix (whose validity is checked against the documented rule);
//!   a key built from the bytes with its CRC32 must pass, and any one-character change to it
//!   must fail with `BadChecksum`.
//! - `e`: one control byte, then a credential value. The harness places the value in one
//!   source (or two), encoded as a client would; when the value is one the source can carry
//!   unchanged, the store must be asked for exactly that value's digest; when it is in two
//!   places, the answer must be 400 without asking the store.
//! - `n` / `o`: source names and a request, one a line: header name, query parameter name,
//!   cookie name, URI, then `name: value` headers; `o` makes the layer optional. Only the
//!   contract is checked: 200 (anonymous, optional only), 400 or 401, at most one lookup.
//!
//! Any other first byte picks one of these by its value modulo 4, so no input is wasted.

#![no_main]

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use keygate::key::{FormatError, KeyDigest, KeyFormat};
use keygate::store::{KeyStore, Lookup, MemoryStore};
use keygate::{Principal, Quota, auth::Auth, auth::AuthLayer, credential::CredentialSource};
use libfuzzer_sys::fuzz_target;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use tower::ServiceExt as _;
use tower::util::ServiceFn;

fuzz_target!(|data: &[u8]| {
    let Some((&tag, rest)) = data.split_first() else {
        return;
    };
    match tag {
        b'q' => quota(rest),
        b'k' => key_format(rest),
        b'e' => extraction(rest),
        b'n' => named_sources(rest, false),
        b'o' => named_sources(rest, true),
        other => match other % 4 {
            0 => quota(rest),
            1 => key_format(rest),
            2 => extraction(rest),
            _ => named_sources(rest, other & 4 != 0),
        },
    }
});

// ---------------------------------------------------------------------------------------------
// Quota

const MAX_WINDOW: Duration = Duration::from_secs(365 * 86_400);

fn quota(data: &[u8]) {
    if let Ok(q) = String::from_utf8_lossy(data).parse::<Quota>() {
        check_quota(q);
    }
    // The same property for quotas built in code, whose windows the text may never reach
    // (any number of nanoseconds): the text form must hold every quota that can exist.
    if let Some(bytes) = data.get(..16) {
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let limit = word(0);
        let burst = word(4);
        let nanos = u64::from(word(8)) << 32 | u64::from(word(12));
        // Spread over the valid range rather than mostly past a year.
        let window = Duration::from_nanos(nanos % (MAX_WINDOW.as_nanos() as u64 + 1));
        if let Ok(q) = Quota::new(limit, window) {
            check_quota(q);
            check_quota(q.with_burst(burst));
        }
    }
}

fn check_quota(q: Quota) {
    assert!(q.limit() >= 1 && q.burst() >= 1, "{q:?}");
    assert!(
        !q.window().is_zero() && q.window() <= MAX_WINDOW,
        "{q:?}: window {:?}",
        q.window()
    );
    assert!(!q.emission_interval().is_zero(), "{q:?}");
    let text = q.to_string();
    assert_eq!(
        text.parse::<Quota>(),
        Ok(q),
        "{text:?} does not parse back (window {:?}, limit {}, burst {})",
        q.window(),
        q.limit(),
        q.burst()
    );
}

// ---------------------------------------------------------------------------------------------
// KeyFormat

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The format a store issues by default.
static DEFAULT_FORMAT: LazyLock<KeyFormat> = LazyLock::new(|| MemoryStore::new().format().clone());

fn key_format(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    // Up to 39 bytes, so that prefixes just over the 32-byte limit are tried too.
    let (prefix, rest) = rest.split_at(usize::from(n % 40).min(rest.len()));
    let key = String::from_utf8_lossy(rest);

    check_key(&DEFAULT_FORMAT, &key);
    built_key(&DEFAULT_FORMAT, rest);

    let Ok(prefix) = std::str::from_utf8(prefix) else {
        return;
    };
    let documented = !prefix.is_empty()
        && prefix.len() <= 32
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match KeyFormat::new(prefix) {
        Ok(format) => {
            assert!(documented, "prefix {prefix:?} accepted");
            assert_eq!(format.prefix(), prefix);
            assert_eq!(format.key_len(), prefix.len() + 38);
            check_key(&format, &key);
            built_key(&format, rest);
        }
        Err(e) => {
            assert!(!documented, "prefix {prefix:?} refused: {e}");
            assert_eq!(e, FormatError::InvalidPrefix);
        }
    }
}

/// Whatever `key` is: `check` does not panic, and what it accepts has the format's shape.
fn check_key(format: &KeyFormat, key: &str) {
    let result = format.check(key);
    if !format.has_prefix(key) {
        assert_eq!(result, Err(FormatError::WrongPrefix), "{key:?}");
    }
    if result.is_ok() {
        assert_eq!(key.len(), format.key_len(), "{key:?}");
        let rest = &key[format.prefix().len()..];
        assert!(rest.bytes().all(|b| b.is_ascii_alphanumeric()), "{key:?}");
        let (body, checksum) = key.split_at(key.len() - 6);
        assert_eq!(
            base62(crc32fast::hash(body.as_bytes())),
            checksum.as_bytes()
        );
    }
}

/// A key made from the fuzzer's bytes with the documented recipe (prefix, 32 base62
/// characters, six base62 digits of the CRC32 of what precedes them) must pass; changing any
/// one character after the prefix must make it fail with `BadChecksum` (CRC32 catches every
/// single-byte error, and a changed checksum digit no longer encodes the CRC).
fn built_key(format: &KeyFormat, bytes: &[u8]) {
    let Some(bytes) = bytes.get(..34) else {
        return;
    };
    let mut key = format.prefix().as_bytes().to_vec();
    key.extend(bytes[..32].iter().map(|&b| ALPHABET[usize::from(b % 62)]));
    key.extend(base62(crc32fast::hash(&key)));
    let valid = String::from_utf8(key.clone()).expect("ASCII");
    assert_eq!(format.check(&valid), Ok(()), "{valid:?}");

    let at = format.prefix().len() + usize::from(bytes[32]) % 38;
    let replacement = ALPHABET[usize::from(bytes[33] % 62)];
    if key[at] != replacement {
        key[at] = replacement;
        let changed = String::from_utf8(key).expect("ASCII");
        assert_eq!(
            format.check(&changed),
            Err(FormatError::BadChecksum),
            "{valid:?} changed at {at} to {changed:?}"
        );
    }
}

fn base62(mut n: u32) -> [u8; 6] {
    let mut digits = [b'0'; 6];
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    digits
}

// ---------------------------------------------------------------------------------------------
// Credential extraction

thread_local! {
    /// The digests the store was asked for during this run.
    static LOOKUPS: RefCell<Vec<KeyDigest>> = const { RefCell::new(Vec::new()) };
    /// Whether the inner service was called, and with a Principal.
    static REACHED: RefCell<Option<bool>> = const { RefCell::new(None) };
}

/// A store that knows no key and remembers what it was asked: the only public window on what
/// the layer extracted (the extraction functions themselves are private).
struct Recorder;

impl KeyStore for Recorder {
    fn lookup(&self, digest: &KeyDigest) -> Lookup {
        LOOKUPS.with(|l| l.borrow_mut().push(*digest));
        Lookup::ready(Ok(None))
    }
}

type Inner = fn(Request<()>) -> Ready<Result<Response<Full<Bytes>>, Infallible>>;

fn inner(req: Request<()>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    let has_principal = req.extensions().get::<Principal>().is_some();
    REACHED.with(|r| *r.borrow_mut() = Some(has_principal));
    ready(Ok(Response::new(Full::new(Bytes::new()))))
}

const HEADER: &str = "x-api-key";
const QUERY: &str = "key";
const COOKIE: &str = "sid";
/// The layer's default limit on an API key.
const MAX_KEY_LEN: usize = 512;

static EXTRACTING: LazyLock<Auth<ServiceFn<Inner>>> = LazyLock::new(|| {
    let layer = AuthLayer::new(Recorder).sources([
        CredentialSource::bearer(),
        CredentialSource::header(HEADER),
        CredentialSource::query(QUERY),
        CredentialSource::cookie(COOKIE),
    ]);
    tower::Layer::layer(&layer, tower::service_fn(inner as Inner))
});

/// What happened to one request.
struct Outcome {
    status: StatusCode,
    lookups: Vec<KeyDigest>,
    /// `Some(has_principal)` when the inner service was called.
    reached: Option<bool>,
}

fn run(service: Auth<ServiceFn<Inner>>, req: Request<()>) -> Outcome {
    LOOKUPS.with(|l| l.borrow_mut().clear());
    REACHED.with(|r| *r.borrow_mut() = None);
    // The recorder and the inner service answer at once: nothing here ever waits.
    let res = futures::executor::block_on(service.oneshot(req));
    let status = match res {
        Ok(res) => res.status(),
        Err(never) => match never {},
    };
    Outcome {
        status,
        lookups: LOOKUPS.with(|l| std::mem::take(&mut *l.borrow_mut())),
        reached: REACHED.with(|r| r.borrow_mut().take()),
    }
}

/// A request under construction: its query and headers.
#[derive(Default)]
struct Draft {
    query: String,
    headers: Vec<(&'static str, Vec<u8>)>,
}

/// Whether every source may carry `v`, as the credential rules define a readable value.
fn readable(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_KEY_LEN && !v.bytes().any(|b| b < 0x20 || b == 0x7f)
}

/// Puts `v` in source `source` (0 bearer, 1 header, 2 query, 3 cookie), in one of four
/// spellings each. Returns whether that spelling must carry `v` through unchanged; `false`
/// leaves the outcome unchecked (apart from the contract).
fn place(draft: &mut Draft, source: u8, spelling: u8, v: &str) -> bool {
    let readable = readable(v);
    match source & 3 {
        0 => {
            let value = match spelling & 3 {
                0 => format!("Bearer {v}"),
                1 => format!("bearer {v}"),
                2 => format!("BEARER   {v}"),
                _ => format!("Bearer {v}  "),
            };
            draft.headers.push(("authorization", value.into_bytes()));
            // The token is one word: spaces inside make it malformed, at its edges they go.
            readable && !v.contains(' ')
        }
        1 => {
            let value = match spelling & 3 {
                0 => v.to_owned(),
                1 => format!(" {v}"),
                2 => format!("{v}  "),
                _ => format!("  {v} "),
            };
            draft.headers.push((HEADER, value.into_bytes()));
            readable && !v.starts_with(' ') && !v.ends_with(' ')
        }
        2 => {
            let encoded = utf8_percent_encode(v, NON_ALPHANUMERIC).to_string();
            let pair = match spelling & 3 {
                0 => format!("{QUERY}={encoded}"),
                // Spaces as `+`, as HTML forms send them, among other parameters.
                1 => format!(
                    "a=1&{QUERY}={}&b=2",
                    v.split(' ')
                        .map(|w| utf8_percent_encode(w, NON_ALPHANUMERIC).to_string())
                        .collect::<Vec<_>>()
                        .join("+")
                ),
                // The name escaped too: `k%65y` is `key`.
                2 => format!("k%65y={encoded}"),
                _ => format!("x=&{QUERY}={encoded}&"),
            };
            if !draft.query.is_empty() {
                draft.query.push('&');
            }
            draft.query.push_str(&pair);
            readable
        }
        _ => {
            let (value, quoted): (Vec<u8>, bool) = match spelling & 3 {
                0 => (format!("{COOKIE}={v}").into_bytes(), false),
                1 => (format!("a=1; {COOKIE}={v}; b=2").into_bytes(), false),
                2 => (format!("{COOKIE}=\"{v}\"").into_bytes(), true),
                // Another cookie that is not UTF-8 must not spoil ours.
                _ => (
                    [&b"a=\xff; "[..], format!("{COOKIE}={v}").as_bytes()].concat(),
                    false,
                ),
            };
            draft.headers.push(("cookie", value));
            let edges_kept = quoted
                || !(v.starts_with(' ')
                    || v.ends_with(' ')
                    || (v.len() >= 2 && v.starts_with('"') && v.ends_with('"')));
            readable && !v.contains(';') && edges_kept
        }
    }
}

fn build(draft: Draft) -> Option<Request<()>> {
    let uri = if draft.query.is_empty() {
        "/v1/items".to_owned()
    } else {
        format!("/v1/items?{}", draft.query)
    };
    let mut req = Request::new(());
    *req.uri_mut() = Uri::try_from(uri).ok()?;
    for (name, value) in draft.headers {
        // A value no HTTP parser would let through (a control byte, say) is not a request
        // keygate can be handed.
        let value = HeaderValue::from_bytes(&value).ok()?;
        req.headers_mut()
            .append(HeaderName::from_static(name), value);
    }
    Some(req)
}

/// Control byte: bits 0-1 the source, 2-3 its spelling, 4-5 a second source, bit 6 whether
/// the value goes to the second source too.
fn extraction(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let value = String::from_utf8_lossy(rest);
    let twice = control & 0x40 != 0;
    let mut draft = Draft::default();
    let mut carried = place(&mut draft, control, control >> 2, &value);
    if twice {
        carried &= place(&mut draft, control >> 4, 0, &value);
    }
    let Some(req) = build(draft) else {
        return;
    };
    let outcome = run(EXTRACTING.clone(), req);

    // The contract, whatever the value: the store knows no key, so nothing gets through.
    assert!(
        [StatusCode::BAD_REQUEST, StatusCode::UNAUTHORIZED].contains(&outcome.status),
        "status {}",
        outcome.status
    );
    assert!(outcome.reached.is_none(), "reached the inner service");
    assert!(
        outcome.lookups.len() <= 1,
        "{} lookups",
        outcome.lookups.len()
    );
    if outcome.status == StatusCode::BAD_REQUEST {
        assert!(outcome.lookups.is_empty(), "a 400 after asking the store");
    }

    if !carried {
        return;
    }
    if twice {
        assert_eq!(
            outcome.status,
            StatusCode::BAD_REQUEST,
            "a credential in two places (or twice in one) must be refused as ambiguous"
        );
    } else {
        assert_eq!(
            outcome.status,
            StatusCode::UNAUTHORIZED,
            "{value:?} not read"
        );
        assert!(
            outcome.lookups == [KeyDigest::of(&value)],
            "the store was not asked for {value:?} exactly"
        );
    }
}

/// Source names from the input, configuration that can be anything an operator types.
fn named_sources(data: &[u8], optional: bool) {
    let mut lines = data.split(|&b| b == b'\n');
    let header_name = lines.next().unwrap_or_default();
    let query_name = String::from_utf8_lossy(lines.next().unwrap_or_default());
    let cookie_name = String::from_utf8_lossy(lines.next().unwrap_or_default());
    let Some(uri) = lines.next().and_then(|u| Uri::try_from(u).ok()) else {
        return;
    };

    let mut sources = vec![
        CredentialSource::bearer(),
        CredentialSource::query(&query_name),
        CredentialSource::cookie(&cookie_name),
    ];
    // `CredentialSource::header` panics on an invalid name (configuration is checked once, at
    // start), so only names `http` accepts are handed to it.
    if let Ok(header_name) = std::str::from_utf8(header_name)
        && HeaderName::from_bytes(header_name.as_bytes()).is_ok()
    {
        sources.push(CredentialSource::header(header_name));
    }
    let mut layer = AuthLayer::new(Recorder).sources(sources);
    if optional {
        layer = layer.optional();
    }
    let service = tower::Layer::layer(&layer, tower::service_fn(inner as Inner));

    let mut req = Request::new(());
    *req.uri_mut() = uri;
    keygate_fuzz::append_header_lines(&mut req, lines);

    let outcome = run(service, req);
    assert!(
        outcome.lookups.len() <= 1,
        "{} lookups",
        outcome.lookups.len()
    );
    match outcome.status {
        StatusCode::OK => {
            assert!(optional, "200 from a layer that is not optional");
            assert_eq!(outcome.reached, Some(false), "200 must be anonymous here");
            assert!(outcome.lookups.is_empty(), "anonymous after a lookup");
        }
        StatusCode::BAD_REQUEST => assert!(outcome.lookups.is_empty()),
        StatusCode::UNAUTHORIZED => assert!(outcome.reached.is_none()),
        other => panic!("status {other}"),
    }
}
