//! The key-management HTTP API: an axum [`Router`] over any [`KeyManager`].
//!
//! # This router does no authentication
//!
//! **Anyone who can send it a request can issue, read, change, rotate, revoke and delete every
//! key it manages.** Mount it behind your own authentication — keygate's
//! [`AuthLayer`](crate::auth::AuthLayer) over a separate store of admin keys, a network that
//! only operators reach, or both — and never on the public listener without it.
//!
//! Its routes are relative to where it is mounted: `Router::new().nest("/admin", router(…))`
//! serves `POST /admin/keys` and so on.
//!
//! ```
//! use axum::{Router, body::Body, routing::get};
//! use http::{Request, StatusCode};
//! use keygate::admin;
//! use keygate::auth::AuthLayer;
//! use keygate::key::{KeyFormat, KeyRecord};
//! use keygate::scope::RequireScopeLayer;
//! use keygate::store::MemoryStore;
//! use tower::ServiceExt as _; // oneshot
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The keys of the API's clients, which the admin API manages...
//! let keys = MemoryStore::new();
//! // ...and, apart from them, the keys allowed to call the admin API: one, for the operators.
//! let admins = MemoryStore::with_format(KeyFormat::new("kg_admin_")?);
//! let admin_key = admins.issue(KeyRecord::new("admin_1", "ops").with_scopes(["keys:admin"]))?;
//!
//! let app = Router::new()
//!     .route("/v1/weather", get(|| async { "sunny" }))
//!     .layer(AuthLayer::new(keys.clone()))
//!     .nest(
//!         "/admin",
//!         admin::router(keys.clone())
//!             .layer(RequireScopeLayer::new("keys:admin"))
//!             .layer(AuthLayer::new(admins)),
//!     );
//!
//! let issue = |key: &str| {
//!     Request::post("/admin/keys")
//!         .header("x-api-key", key)
//!         .header("content-type", "application/json")
//!         .body(Body::from(r#"{"owner": "acme", "scopes": ["weather:read"]}"#))
//! };
//! // Without an admin key: 401, and nothing is issued.
//! let res = app.clone().oneshot(issue("kg_not_an_admin")?).await?;
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! assert!(keys.is_empty());
//!
//! let res = app.clone().oneshot(issue(admin_key.expose_secret())?).await?;
//! assert_eq!(res.status(), StatusCode::CREATED);
//! assert_eq!(keys.len(), 1);
//! # Ok(()) }
//! ```
//!
//! # Routes
//!
//! | Route | Body | Answer |
//! |---|---|---|
//! | `POST /keys` | `{"owner", "scopes", "id"?, "quota"?, "tier"?, "credits"?, "allowed_ips"?, "expires_in"?, "metadata"?}` | 201 `{"key", "record"}` |
//! | `GET /keys?owner=O&limit=N&after=ID` | | 200 `{"keys": [RECORD], "next"?}` |
//! | `GET /keys/{id}` | | 200 RECORD |
//! | `PATCH /keys/{id}` | `{"scopes"?, "quota"?, "tier"?, "credits"?, "allowed_ips"?, "status"?, "metadata"?}` | 200 RECORD |
//! | `POST /keys/{id}/revoke` | | 200 RECORD |
//! | `POST /keys/{id}/rotate` | `{"grace_seconds"}` | 200 `{"key", "record"}` |
//! | `DELETE /keys/{id}` | | 204 |
//! | `GET /keys/{id}/usage` | | 200 `{"allowed", "limited", "last_used_at"}` |
//!
//! A RECORD is exactly
//!
//! ```json
//! {
//!   "id": "key_1", "owner": "acme", "scopes": ["weather:read"], "status": "active",
//!   "quota": "10/s;burst=20, 10000/d;fixed", "tier": "pro",
//!   "credits": {"remaining": 950, "refill": {"amount": 1000, "every": "1d"}},
//!   "allowed_ips": ["203.0.113.0/24", "2001:db8::/32"],
//!   "expires_at": "2026-12-02T05:59:00Z", "created_at": "2025-06-01T12:00:00Z",
//!   "metadata": {"plan": "pro"}
//! }
//! ```
//!
//! - `status` is `active`, `disabled` or `revoked`;
//! - `quota` is the key's own [`Limits`] in their text form (which parses back to the same
//!   limits), or `null` when the rate-limit layer's tier or default applies;
//! - `tier` is the key's rate-limit tier, or `null`;
//! - `credits` is the key's budget of uses, or `null` when it has none: `remaining` is the live
//!   count (a refill that came due applied), `refill` the schedule (`null`: never refilled),
//!   which sets the count back to `amount` every `every` (see
//!   [`CreditStore`](crate::store::CreditStore));
//! - `allowed_ips` lists the networks the key may be used from, in CIDR notation (a single
//!   address as `/32` or `/128`), or is `null` when it may be used from anywhere (see
//!   [IP allowlists](crate::store#ip-allowlists));
//! - `expires_at` (`null`: never) and `created_at` are RFC 3339 times in UTC, to the second
//!   (times past the year 9999 are written as `9999-12-31T23:59:59Z`);
//! - it never holds a key, nor a key's digest. A plaintext key is in the answers of `POST /keys`
//!   and of rotation only — the one time anyone sees it — and those carry
//!   `Cache-Control: no-store`.
//!
//! ## Issuing: `POST /keys`
//!
//! `owner` and `scopes` are required. Without an `id`, one is generated (`key_` and 24 random
//! base62 characters; ids are not secret). `quota` is a list of limits in the text form of
//! [`Limits`], such as `"100/min;burst=20"` or `"10/s;burst=20, 10000/d;fixed"`; a malformed
//! item is named in the 400's detail (`limit 2 ("10000/x"): …`). `tier` is a rate-limit tier's
//! name (1 to 64 bytes, without control characters). `credits` gives the key a budget of uses:
//! `{"remaining": N, "refill": {"amount": N, "every": "1d"}}`, where `refill` may be left out
//! (or `null`) for a budget that is never refilled; counts are whole numbers up to
//! 2<sup>53</sup> − 1, and `every` is a whole number of `s`, `min`, `h` or `d` (`"30s"`,
//! `"15min"`, `"12h"`, `"1d"`), from 1 second to 100 years. (A refill interval set otherwise,
//! not in whole seconds, is shown in `ms` or `us`.) `allowed_ips` lists the networks the key may
//! be used from: 1 to 100 IPv4 or IPv6 networks in CIDR notation (`"203.0.113.0/24"`,
//! `"2001:db8::/32"`) or single addresses (`"198.51.100.7"`); each is kept as the network it
//! names (`"203.0.113.7/24"` is shown as `"203.0.113.0/24"`; the list sorted, without
//! duplicates), and left out (or `null`), the key may be used from anywhere. `expires_in` is a number of seconds (1 to 100 years) from now.
//! `metadata` is an object of strings.
//!
//! ## Listing: `GET /keys`
//!
//! `owner` is required. The records come ordered by id, `limit` of them (default 100, at most
//! [`Page::MAX_LIMIT`]); when there may be more, the answer's `next` is the id to pass as
//! `after` for the next page, and it is absent on the last page.
//!
//! ## Changing: `PATCH /keys/{id}`
//!
//! Each field given replaces the record's; the others are kept. `"quota": null` removes the
//! key's own quota, `"tier": null` its tier, `"credits": null` its budget, `"allowed_ips": null`
//! its allowlist (the key may then be used from anywhere). `credits` sets the
//! count and the refill schedule as given, and the schedule starts anew then; a change that
//! leaves `credits` out leaves the live count alone. `status` is `active` or `disabled`:
//! revoking has its own route, and `"revoked"` is refused with 400.
//!
//! ## Rotating: `POST /keys/{id}/rotate`
//!
//! Issues a new key for the record. The current keys keep working for `grace_seconds` (required;
//! at most 100 years), then fail like unknown keys; `0` retires them at once.
//!
//! ## Usage: `GET /keys/{id}/usage`
//!
//! The counts a [`UsageStore`] keeps for the record's id, given with [`Admin::usage`]. Without
//! one, the route answers 404 `Usage is not tracked.` for every id.
//!
//! # Errors
//!
//! Every error is an `application/problem+json` body (RFC 9457) of the same shape as keygate's
//! authentication errors, `{"type": "about:blank", "title", "status", "detail"}`:
//!
//! - **400**: a body that is not JSON, not sent as `application/json`, with an unknown or
//!   missing field or a value of the wrong type; a malformed quota, tier or credits; an
//!   `allowed_ips` that is empty, has more than 100 entries, or an entry that is not an address
//!   or a network (named by its place, `allowed_ips[2]`); an id or owner that is blank, longer
//!   than 256 bytes or has control characters; more than 100 scopes, or a scope
//!   that is not 1 to 256 printable ASCII characters without space, `"` or `\`; metadata of
//!   more than 100 entries or 16 KiB; a bad `limit`; `"status": "revoked"` in a `PATCH`;
//! - **404**: no record has this id;
//! - **409**: the request conflicts with what the store holds: a duplicate id or key, rotating
//!   a revoked key, or making a revoked key active or disabled again (a revoked key stays
//!   revoked);
//! - **413**: a request body larger than 64 KiB;
//! - **503**: the key store (or the usage store) could not answer. The cause is logged, never
//!   sent to the client: at WARN (target `keygate`) when an outage starts, then once per 10 s
//!   with a count while it lasts.
//!
//! A known route asked with another method answers 405 (problem+json, with `Allow`); an unknown
//! route is left to the enclosing router (axum's empty 404 by default).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::axum::Json;
use ::axum::Router;
use ::axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use ::axum::extract::{DefaultBodyLimit, Path, Query, State};
use ::axum::response::{IntoResponse, Response};
use ::axum::routing::{get, post};
use http::StatusCode;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::client_addr::{Networks, parse_network};
use crate::clock::{self, Clock, SharedClock};
use crate::key::{Credits, KeyRecord, KeyStatus, Refill, Scopes};
use crate::limits::Limits;
use crate::outage::{OutageLog, info_recovered, warn_outage};
use crate::ratelimit::{UsageStore, UsageTotals};
use crate::store::{IssuedKey, KeyManager, KeyPage, KeyUpdate, ManageError, Page};

/// The largest request body the router reads, in bytes.
const BODY_LIMIT: usize = 64 * 1024;
/// The most scopes a record may be given.
const MAX_SCOPES: usize = 100;
/// The longest scope, in bytes.
const MAX_SCOPE_LEN: usize = 256;
/// The most metadata entries a record may be given.
const MAX_METADATA_ENTRIES: usize = 100;
/// The most bytes of metadata (keys and values together) a record may be given.
const MAX_METADATA_BYTES: usize = 16 * 1024;
/// The longest `expires_in` and `grace_seconds`: 100 years.
const MAX_SECONDS: u64 = 100 * 365 * 86_400;
/// The page size of a list without `limit`.
const DEFAULT_LIMIT: usize = 100;
/// Random base62 characters in a generated id.
const GENERATED_ID_LEN: usize = 24;
/// How many generated ids to try before giving up on `DuplicateId` (which 143 random bits make
/// unheard of).
const GENERATED_ID_TRIES: usize = 3;
/// The longest `detail` taken from a parser's message, in bytes.
const MAX_DETAIL_LEN: usize = 512;
/// The longest tier name, in bytes.
const MAX_TIER_LEN: usize = 64;
/// The most networks a key's allowlist may be given.
const MAX_ALLOWED_IPS: usize = 100;

/// The admin router with its defaults: no usage store (the usage route answers 404). The same
/// as `Admin::new(manager).into_router()`.
///
/// **It does no authentication**: mount it behind yours (see the [module](self) docs).
///
/// ```
/// use keygate::store::MemoryStore;
///
/// let store = MemoryStore::new();
/// let admin: axum::Router = keygate::admin::router(store.clone());
/// let app = axum::Router::new().nest("/admin", admin /* .layer(your_admin_auth) */);
/// # let _ = app;
/// ```
pub fn router(manager: impl KeyManager) -> Router {
    Admin::new(manager).into_router()
}

/// The admin router's options; [`into_router`](Self::into_router) builds it.
///
/// **The router does no authentication**: mount it behind yours (see the [module](self) docs).
///
/// ```
/// use std::sync::Arc;
/// use keygate::admin::Admin;
/// use keygate::ratelimit::UsageStore;
/// use keygate::store::MemoryStore;
///
/// # fn demo(usage: Arc<dyn UsageStore>) {
/// let store = MemoryStore::new();
/// let admin: axum::Router = Admin::new(store.clone()).usage(usage).into_router();
/// # let _ = admin; }
/// ```
pub struct Admin {
    manager: Arc<dyn KeyManager>,
    usage: Option<Arc<dyn UsageStore>>,
    clock: SharedClock,
}

impl Admin {
    /// The admin API over `manager`, without usage counts, on the system clock.
    pub fn new(manager: impl KeyManager) -> Self {
        Self {
            manager: Arc::new(manager),
            usage: None,
            clock: clock::system(),
        }
    }

    /// Answers `GET /keys/{id}/usage` from `store`, with the totals of the caller named by the
    /// record's id (the rate-limit key of a key's requests).
    #[must_use]
    pub fn usage(mut self, store: impl UsageStore) -> Self {
        self.usage = Some(Arc::new(store));
        self
    }

    /// Uses `clock` for `expires_in` (tests pin it with a
    /// [`ManualClock`](crate::clock::ManualClock)). Creation and rotation times are the store's.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The router, with its routes relative to where it is mounted.
    pub fn into_router(self) -> Router {
        let shared = Arc::new(Shared {
            manager: self.manager,
            usage: self.usage,
            clock: self.clock,
            store_outage: OutageLog::new(),
            usage_outage: OutageLog::new(),
        });
        Router::new()
            .route("/keys", post(create).get(list))
            .route("/keys/{id}", get(read).patch(change).delete(remove))
            .route("/keys/{id}/revoke", post(revoke))
            .route("/keys/{id}/rotate", post(rotate))
            .route("/keys/{id}/usage", get(usage))
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(shared)
    }
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("usage", &self.usage.is_some())
            .finish_non_exhaustive()
    }
}

struct Shared {
    manager: Arc<dyn KeyManager>,
    usage: Option<Arc<dyn UsageStore>>,
    clock: SharedClock,
    store_outage: OutageLog,
    usage_outage: OutageLog,
}

type AppState = State<Arc<Shared>>;

impl Shared {
    /// `result` as the route answers it: an outage is logged (its cause never reaches the
    /// client), and `invalid` is the status of [`ManageError::Invalid`].
    fn managed<T>(
        &self,
        result: Result<T, ManageError>,
        invalid: StatusCode,
    ) -> Result<T, Problem> {
        match result {
            Ok(value) => {
                info_recovered!(self.store_outage, "admin API: key store");
                Ok(value)
            }
            Err(e) => {
                if matches!(e, ManageError::Unavailable(_)) {
                    warn_outage!(self.store_outage, e, "admin API: key store");
                } else {
                    info_recovered!(self.store_outage, "admin API: key store");
                }
                Err(Problem::from_manage(e, invalid))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Problems

/// An error answer: `application/problem+json` with this status and detail.
#[derive(Debug)]
struct Problem {
    status: StatusCode,
    detail: Cow<'static, str>,
}

impl Problem {
    fn new(status: StatusCode, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }

    fn bad_request(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "No key record has this id.")
    }

    /// The answer for a [`ManageError`]; `invalid` is the status of `Invalid` (400 for a
    /// request the store finds malformed, 409 for one the record's state forbids).
    fn from_manage(error: ManageError, invalid: StatusCode) -> Self {
        match error {
            ManageError::NotFound => Self::not_found(),
            ManageError::DuplicateId => Self::new(
                StatusCode::CONFLICT,
                "A key record with this id exists already.",
            ),
            ManageError::DuplicateKey => {
                Self::new(StatusCode::CONFLICT, "This key is registered already.")
            }
            ManageError::Invalid(why) => Self::new(invalid, sentence(&why)),
            ManageError::Unavailable(_) => Self::unavailable("The key store"),
        }
    }

    fn unavailable(what: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what} is unavailable; retry later."),
        )
    }

    fn from_json(rejection: &JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::bad_request(
                "The request body must be JSON, sent with `Content-Type: application/json`.",
            ),
            JsonRejection::JsonSyntaxError(e) => Self::bad_request(sentence(&e.body_text())),
            JsonRejection::JsonDataError(e) => Self::bad_request(sentence(&e.body_text())),
            r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("The request body is larger than {BODY_LIMIT} bytes."),
            ),
            _ => Self::bad_request("The request body could not be read."),
        }
    }

    fn from_query(rejection: &QueryRejection) -> Self {
        Self::bad_request(sentence(&rejection.body_text()))
    }

    fn from_path(rejection: &PathRejection) -> Self {
        Self::bad_request(sentence(&rejection.body_text()))
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        (
            self.status,
            [(
                CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            )],
            body.to_string(),
        )
            .into_response()
    }
}

/// `text` as a detail: capitalized, cut to [`MAX_DETAIL_LEN`] bytes, ending with a period.
fn sentence(text: &str) -> String {
    let mut end = text.len().min(MAX_DETAIL_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = text[..end].trim_end();
    let mut out = String::with_capacity(text.len() + 1);
    let mut chars = text.chars();
    if let Some(first) = chars.next() {
        out.extend(first.to_uppercase());
        out.push_str(chars.as_str());
    }
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "The route does not take this method.",
    )
}

// ---------------------------------------------------------------------------------------------
// What the routes answer

/// A record as the API shows it: never a key, never a digest.
#[derive(Serialize)]
struct RecordView<'a> {
    id: &'a str,
    owner: &'a str,
    scopes: &'a Scopes,
    status: &'static str,
    quota: Option<String>,
    tier: Option<&'a str>,
    credits: Option<CreditsView>,
    allowed_ips: Option<&'a Networks>,
    expires_at: Option<String>,
    created_at: Option<String>,
    metadata: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct CreditsView {
    remaining: u64,
    refill: Option<RefillView>,
}

#[derive(Serialize)]
struct RefillView {
    amount: u64,
    every: String,
}

impl CreditsView {
    fn of(credits: &Credits) -> Self {
        Self {
            remaining: credits.remaining,
            refill: credits.refill.map(|refill| RefillView {
                amount: refill.amount,
                every: duration_text(refill.every),
            }),
        }
    }
}

impl<'a> RecordView<'a> {
    fn of(record: &'a KeyRecord) -> Self {
        Self {
            id: &record.id,
            owner: &record.owner,
            scopes: &record.scopes,
            status: status_name(record.status),
            quota: record.quota.as_ref().map(ToString::to_string),
            tier: record.tier.as_deref(),
            credits: record.credits.as_ref().map(CreditsView::of),
            allowed_ips: record.allowed_ips.as_ref(),
            expires_at: record.expires_at.map(rfc3339),
            created_at: record.created_at.map(rfc3339),
            metadata: &record.metadata,
        }
    }
}

fn status_name(status: KeyStatus) -> &'static str {
    match status {
        KeyStatus::Active => "active",
        KeyStatus::Revoked => "revoked",
        KeyStatus::Disabled => "disabled",
    }
}

/// A new key and its record: the one answer that holds a plaintext key, never to be cached.
fn issued_response(status: StatusCode, issued: &IssuedKey) -> Response {
    #[derive(Serialize)]
    struct View<'a> {
        key: &'a str,
        record: RecordView<'a>,
    }
    (
        status,
        [(CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(View {
            key: issued.key.expose_secret(),
            record: RecordView::of(&issued.record),
        }),
    )
        .into_response()
}

fn record_response(record: &KeyRecord) -> Response {
    Json(RecordView::of(record)).into_response()
}

// ---------------------------------------------------------------------------------------------
// Request bodies

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    owner: String,
    scopes: Vec<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    quota: Option<String>,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    credits: Option<Object<CreditsBody>>,
    #[serde(default)]
    allowed_ips: Option<Vec<String>>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    #[serde(default, deserialize_with = "present")]
    scopes: Option<Vec<String>>,
    /// `Some(None)`: `"quota": null`, remove the key's own quota.
    #[serde(default, deserialize_with = "present")]
    quota: Option<Option<String>>,
    /// `Some(None)`: `"tier": null`, remove the key's tier.
    #[serde(default, deserialize_with = "present")]
    tier: Option<Option<String>>,
    /// `Some(None)`: `"credits": null`, remove the key's budget.
    #[serde(default, deserialize_with = "present")]
    credits: Option<Option<Object<CreditsBody>>>,
    /// `Some(None)`: `"allowed_ips": null`, let the key be used from anywhere.
    #[serde(default, deserialize_with = "present")]
    allowed_ips: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    status: Option<StatusField>,
    #[serde(default, deserialize_with = "present")]
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditsBody {
    remaining: u64,
    #[serde(default)]
    refill: Option<Object<RefillBody>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefillBody {
    amount: u64,
    every: String,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum StatusField {
    Active,
    Disabled,
    Revoked,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    grace_seconds: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    owner: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<String>,
}

/// A JSON object deserialized as `T`: serde would also take an array of a struct's fields in
/// order, which no client means.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        d.deserialize_map(ObjectVisitor(PhantomData)).map(Object)
    }
}

/// A field that is there: its value (`null` only where `T` takes it), as opposed to a field
/// left out (`None`, by `#[serde(default)]`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

fn check_scopes(scopes: Vec<String>) -> Result<Scopes, Problem> {
    if scopes.len() > MAX_SCOPES {
        return Err(Problem::bad_request(format!(
            "A key has at most {MAX_SCOPES} scopes."
        )));
    }
    for (i, scope) in scopes.iter().enumerate() {
        let ok = !scope.is_empty()
            && scope.len() <= MAX_SCOPE_LEN
            && scope
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !ok {
            return Err(Problem::bad_request(format!(
                "The scope at scopes[{i}] is not valid: a scope is 1 to {MAX_SCOPE_LEN} printable ASCII \
                 characters without space, '\"' or '\\'."
            )));
        }
    }
    Ok(scopes.into_iter().collect())
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), Problem> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(Problem::bad_request(format!(
            "The metadata has more than {MAX_METADATA_ENTRIES} entries."
        )));
    }
    let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_METADATA_BYTES {
        return Err(Problem::bad_request(format!(
            "The metadata is longer than {MAX_METADATA_BYTES} bytes."
        )));
    }
    Ok(())
}

/// A list of limits. What is wrong with a malformed item is told with the item's place and
/// text (`limit 2 ("10/x"): …`), unless the list has one item only.
fn parse_quota(text: &str) -> Result<Limits, Problem> {
    text.parse().map_err(|e: crate::QuotaError| {
        let e = match e {
            crate::QuotaError::Item { reason, .. } if !text.contains(',') => *reason,
            e => e,
        };
        Problem::bad_request(format!("The quota is invalid: {e}."))
    })
}

fn check_tier(tier: String) -> Result<String, Problem> {
    if tier.trim().is_empty() || tier.len() > MAX_TIER_LEN || tier.chars().any(char::is_control) {
        return Err(Problem::bad_request(format!(
            "The tier is 1 to {MAX_TIER_LEN} bytes, not blank, without control characters."
        )));
    }
    Ok(tier)
}

/// An allowlist: 1 to [`MAX_ALLOWED_IPS`] networks. A bad entry is named by its place, not
/// echoed.
fn parse_allowed_ips(entries: Vec<String>) -> Result<Networks, Problem> {
    if entries.is_empty() {
        return Err(Problem::bad_request(
            "The field `allowed_ips` lists at least one network; `null` lets the key be used \
             from anywhere.",
        ));
    }
    if entries.len() > MAX_ALLOWED_IPS {
        return Err(Problem::bad_request(format!(
            "The field `allowed_ips` lists at most {MAX_ALLOWED_IPS} networks."
        )));
    }
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            parse_network(entry).map_err(|_| {
                Problem::bad_request(format!(
                    "The entry at allowed_ips[{i}] is not an IP address or a network in CIDR \
                     notation (such as \"203.0.113.0/24\" or \"2001:db8::/32\")."
                ))
            })
        })
        .collect()
}

fn parse_credits(body: CreditsBody) -> Result<Credits, Problem> {
    let mut credits = Credits::new(body.remaining);
    if let Some(Object(refill)) = body.refill {
        credits = credits.with_refill(Refill::new(refill.amount, parse_every(&refill.every)?));
    }
    crate::store::check_credits(&credits)
        .map_err(|e| Problem::from_manage(e, StatusCode::BAD_REQUEST))?;
    Ok(credits)
}

/// A refill interval: a whole number of `s`, `min`, `h` or `d`, from 1 second to 100 years.
fn parse_every(text: &str) -> Result<Duration, Problem> {
    let invalid = || {
        Problem::bad_request(
            "The refill interval `every` is a whole number of s, min, h or d, such as \"30s\", \
             \"15min\", \"12h\" or \"1d\", from 1 second to 100 years.",
        )
    };
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (count, unit) = text.split_at(digits);
    let unit_secs: u64 = match unit {
        "s" => 1,
        "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(invalid()),
    };
    let secs = count
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_secs))
        .filter(|&secs| (1..=MAX_SECONDS).contains(&secs))
        .ok_or_else(invalid)?;
    Ok(Duration::from_secs(secs))
}

/// A refill interval as [`parse_every`] reads it: in the largest of `d`, `h`, `min` and `s`
/// that it is a whole number of; an interval of a fraction of a second (which only the Rust
/// API sets) in `ms` or `us`.
fn duration_text(every: Duration) -> String {
    if every.subsec_nanos() == 0 {
        let secs = every.as_secs();
        return match secs {
            s if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
            s if s.is_multiple_of(3600) => format!("{}h", s / 3600),
            s if s.is_multiple_of(60) => format!("{}min", s / 60),
            s => format!("{s}s"),
        };
    }
    if every.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{}ms", every.as_millis());
    }
    format!("{}us", every.as_micros())
}

fn check_seconds(name: &str, secs: u64) -> Result<Duration, Problem> {
    if secs > MAX_SECONDS {
        return Err(Problem::bad_request(format!(
            "The field `{name}` is at most {MAX_SECONDS} seconds (100 years)."
        )));
    }
    Ok(Duration::from_secs(secs))
}

/// `key_` and [`GENERATED_ID_LEN`] random base62 characters.
fn generate_id() -> Result<String, getrandom::Error> {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut id = String::with_capacity(4 + GENERATED_ID_LEN);
    id.push_str("key_");
    let mut buf = [0u8; 64];
    let mut filled = 0;
    // Each round keeps about 97% of 64 bytes, so two rounds are all but certain; the bound keeps
    // the loop finite whatever the generator returns.
    for _ in 0..64 {
        getrandom::fill(&mut buf)?;
        for &b in &buf {
            // 248 = 4 × 62: rejecting the rest keeps every character equally likely.
            if b < 248 && filled < GENERATED_ID_LEN {
                id.push(char::from(ALPHABET[usize::from(b % 62)]));
                filled += 1;
            }
        }
        if filled == GENERATED_ID_LEN {
            return Ok(id);
        }
    }
    Err(getrandom::Error::UNEXPECTED)
}

// ---------------------------------------------------------------------------------------------
// Handlers

fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    path.map(|Path(id)| id)
        .map_err(|rejection| Problem::from_path(&rejection))
}

fn json_body<T>(body: Result<Json<Object<T>>, JsonRejection>) -> Result<T, Problem> {
    body.map(|Json(Object(body))| body)
        .map_err(|rejection| Problem::from_json(&rejection))
}

async fn create(
    State(shared): AppState,
    body: Result<Json<Object<CreateBody>>, JsonRejection>,
) -> Result<Response, Problem> {
    let body = json_body(body)?;
    let scopes = check_scopes(body.scopes)?;
    let quota = body.quota.as_deref().map(parse_quota).transpose()?;
    let tier = body.tier.map(check_tier).transpose()?;
    let credits = body
        .credits
        .map(|Object(credits)| parse_credits(credits))
        .transpose()?;
    let allowed_ips = body.allowed_ips.map(parse_allowed_ips).transpose()?;
    let metadata = body.metadata.unwrap_or_default();
    check_metadata(&metadata)?;
    let expires_at = match body.expires_in {
        Some(0) => {
            return Err(Problem::bad_request(
                "The field `expires_in` is at least 1 second.",
            ));
        }
        Some(secs) => {
            let secs = check_seconds("expires_in", secs)?;
            let at = shared.clock.now().checked_add(secs).ok_or_else(|| {
                Problem::bad_request("The field `expires_in` is too far in the future.")
            })?;
            Some(at)
        }
        None => None,
    };
    let generated = body.id.is_none();
    let tries = if generated { GENERATED_ID_TRIES } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let id = match &body.id {
            Some(id) => id.clone(),
            None => generate_id().map_err(|e| {
                tracing::warn!(target: "keygate", error = %e, "admin API: no random id");
                Problem::unavailable("The id generator")
            })?,
        };
        let mut record = KeyRecord::new(id, body.owner.clone());
        record.scopes = scopes.clone();
        record.quota.clone_from(&quota);
        record.tier.clone_from(&tier);
        record.credits = credits;
        record.allowed_ips.clone_from(&allowed_ips);
        record.expires_at = expires_at;
        record.metadata = metadata.clone();
        crate::store::check_new_record(&record)
            .map_err(|e| Problem::from_manage(e, StatusCode::BAD_REQUEST))?;
        match shared.manager.issue(record).await {
            Err(ManageError::DuplicateId) if generated => last = Some(ManageError::DuplicateId),
            result => {
                let issued = shared.managed(result, StatusCode::BAD_REQUEST)?;
                return Ok(issued_response(StatusCode::CREATED, &issued));
            }
        }
    }
    Err(Problem::from_manage(
        last.unwrap_or(ManageError::DuplicateId),
        StatusCode::BAD_REQUEST,
    ))
}

async fn list(
    State(shared): AppState,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(query) = query.map_err(|rejection| Problem::from_query(&rejection))?;
    if query.owner.trim().is_empty() {
        return Err(Problem::bad_request("The owner is empty."));
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > Page::MAX_LIMIT {
        return Err(Problem::bad_request(format!(
            "The limit is 1 to {}.",
            Page::MAX_LIMIT
        )));
    }
    let page = match query.after {
        Some(after) => Page::after(after, limit),
        None => Page::first(limit),
    };
    let KeyPage { records, next } = shared.managed(
        shared.manager.list(&query.owner, page).await,
        StatusCode::BAD_REQUEST,
    )?;

    #[derive(Serialize)]
    struct View<'a> {
        keys: Vec<RecordView<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    }
    let view = View {
        keys: records.iter().map(RecordView::of).collect(),
        next: next.and_then(|page| page.after),
    };
    Ok(Json(view).into_response())
}

async fn read(
    State(shared): AppState,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let id = path_id(id)?;
    let record = shared.managed(shared.manager.get(&id).await, StatusCode::BAD_REQUEST)?;
    record
        .as_ref()
        .map(record_response)
        .ok_or_else(Problem::not_found)
}

async fn change(
    State(shared): AppState,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<Object<PatchBody>>, JsonRejection>,
) -> Result<Response, Problem> {
    let id = path_id(id)?;
    let body = json_body(body)?;
    let mut update = KeyUpdate::new();
    if let Some(scopes) = body.scopes {
        update.scopes = Some(check_scopes(scopes)?);
    }
    if let Some(quota) = body.quota {
        update.quota = Some(quota.as_deref().map(parse_quota).transpose()?);
    }
    if let Some(tier) = body.tier {
        update.tier = Some(tier.map(check_tier).transpose()?);
    }
    if let Some(credits) = body.credits {
        update.credits = Some(
            credits
                .map(|Object(credits)| parse_credits(credits))
                .transpose()?,
        );
    }
    if let Some(allowed_ips) = body.allowed_ips {
        update.allowed_ips = Some(allowed_ips.map(parse_allowed_ips).transpose()?);
    }
    match body.status {
        Some(StatusField::Active) => update.status = Some(KeyStatus::Active),
        Some(StatusField::Disabled) => update.status = Some(KeyStatus::Disabled),
        Some(StatusField::Revoked) => {
            return Err(Problem::bad_request(
                "The status is \"active\" or \"disabled\"; revoke a key with \
                 POST /keys/{id}/revoke.",
            ));
        }
        None => {}
    }
    if let Some(metadata) = body.metadata {
        check_metadata(&metadata)?;
        update.metadata = Some(metadata);
    }
    let record = shared.managed(
        shared.manager.update(&id, update).await,
        StatusCode::CONFLICT,
    )?;
    Ok(record_response(&record))
}

async fn revoke(
    State(shared): AppState,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let id = path_id(id)?;
    let record = shared.managed(shared.manager.revoke(&id).await, StatusCode::CONFLICT)?;
    Ok(record_response(&record))
}

async fn rotate(
    State(shared): AppState,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<Object<RotateBody>>, JsonRejection>,
) -> Result<Response, Problem> {
    let id = path_id(id)?;
    let body = json_body(body)?;
    let grace = check_seconds("grace_seconds", body.grace_seconds)?;
    let issued = shared.managed(
        shared.manager.rotate(&id, grace).await,
        StatusCode::CONFLICT,
    )?;
    Ok(issued_response(StatusCode::OK, &issued))
}

async fn remove(
    State(shared): AppState,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let id = path_id(id)?;
    shared.managed(shared.manager.delete(&id).await, StatusCode::BAD_REQUEST)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn usage(
    State(shared): AppState,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let id = path_id(id)?;
    let Some(store) = &shared.usage else {
        return Err(Problem::new(StatusCode::NOT_FOUND, "Usage is not tracked."));
    };
    let record = shared.managed(shared.manager.get(&id).await, StatusCode::BAD_REQUEST)?;
    let record = record.ok_or_else(Problem::not_found)?;
    let totals: UsageTotals = match store.totals(&record.id).await {
        Ok(totals) => {
            info_recovered!(shared.usage_outage, "admin API: usage store");
            totals
        }
        Err(e) => {
            warn_outage!(shared.usage_outage, *e, "admin API: usage store");
            return Err(Problem::unavailable("The usage store"));
        }
    };

    #[derive(Serialize)]
    struct View {
        allowed: u64,
        limited: u64,
        last_used_at: Option<String>,
    }
    Ok(Json(View {
        allowed: totals.allowed,
        limited: totals.limited,
        last_used_at: totals.last_used_at.map(rfc3339),
    })
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// Time

/// `0000-01-01T00:00:00Z`, in seconds from the Unix epoch.
const MIN_RFC3339_SECS: i64 = -62_167_219_200;
/// `9999-12-31T23:59:59Z`, in seconds from the Unix epoch.
const MAX_RFC3339_SECS: i64 = 253_402_300_799;

/// `t` in RFC 3339, UTC, to the second (rounded down), such as `2026-12-02T05:59:00Z`. Times
/// outside the years 0000 to 9999, which RFC 3339 cannot write, are written as the nearest one
/// it can.
fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let whole = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            // Rounded down: half a second before the epoch is 23:59:59.
            whole.saturating_neg() - i64::from(before.subsec_nanos() > 0)
        }
    };
    let secs = secs.clamp(MIN_RFC3339_SECS, MAX_RFC3339_SECS);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let of_day = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> SystemTime {
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    }

    #[test]
    fn rfc3339_known_values() {
        // Checked against `date -u -d @SECS`.
        for (secs, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (1_796_191_140, "2026-12-02T05:59:00Z"),
            (951_868_799, "2000-02-29T23:59:59Z"),
            (-1, "1969-12-31T23:59:59Z"),
            (-2_203_891_200, "1900-03-01T00:00:00Z"),
            (4_107_501_296, "2100-02-28T12:34:56Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
            (-62_167_219_200, "0000-01-01T00:00:00Z"),
        ] {
            assert_eq!(rfc3339(at(secs)), text, "{secs}");
        }
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_999)),
            "1970-01-01T00:00:01Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_millis(500)),
            "1969-12-31T23:59:59Z"
        );
        assert_eq!(rfc3339(at(253_402_300_800)), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(at(-62_167_219_201)), "0000-01-01T00:00:00Z");
    }

    #[test]
    fn civil_from_days_walks_every_day() {
        // Day by day over 1600-2400: each date is the one after the previous.
        let mut date = (1600, 1, 1);
        assert_eq!(civil_from_days(-135_140), date);
        for days in -135_139..157_000 {
            let (y, m, d) = date;
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            date = if d < len[usize::try_from(m - 1).unwrap()] {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            assert_eq!(civil_from_days(days), date, "{days}");
        }
        assert_eq!(date, (2399, 11, 7));
    }

    #[test]
    fn sentences() {
        assert_eq!(sentence("failed: x"), "Failed: x.");
        assert_eq!(sentence("Done."), "Done.");
        assert!(sentence(&"é".repeat(1000)).len() <= MAX_DETAIL_LEN + 1);
    }

    #[test]
    fn refill_intervals() {
        for (text, secs) in [
            ("1s", 1),
            ("30s", 30),
            ("90s", 90),
            ("15min", 900),
            ("12h", 43_200),
            ("1d", 86_400),
            ("36500d", MAX_SECONDS),
        ] {
            let every = parse_every(text).unwrap();
            assert_eq!(every, Duration::from_secs(secs), "{text}");
            assert_eq!(parse_every(&duration_text(every)).unwrap(), every, "{text}");
        }
        assert_eq!(duration_text(Duration::from_secs(60)), "1min");
        assert_eq!(duration_text(Duration::from_secs(7200)), "2h");
        assert_eq!(duration_text(Duration::from_secs(172_800)), "2d");
        assert_eq!(duration_text(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration_text(Duration::from_micros(1_000_001)), "1000001us");
        for bad in [
            "",
            "0s",
            "1",
            "s",
            "1 s",
            " 1s",
            "1S",
            "1m",
            "1.5h",
            "-1s",
            "1ms",
            "36501d",
            "99999999999999999999d",
            "18446744073709551615d",
            "1d1h",
        ] {
            let e = parse_every(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.detail.contains("every"), "{bad}: {}", e.detail);
        }
    }

    #[test]
    fn generated_ids() {
        let a = generate_id().unwrap();
        let b = generate_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + GENERATED_ID_LEN);
        assert!(a.starts_with("key_"));
        assert!(a[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
