//! The admin HTTP API (`keygate::admin`) through a real axum `Router`, mounted under `/admin`
//! over a `MemoryStore`: every route's answer, the exact record shape, every error status as
//! problem+json, where plaintext keys appear (and where they never do), and that what it issues,
//! rotates, changes and revokes is what the `AuthLayer` in front of the API then sees.
#![cfg(feature = "admin")]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use common::*;
use http::{Method, Request, StatusCode};
use keygate::BoxError;
use keygate::admin::{self, Admin};
use keygate::auth::AuthLayer;
use keygate::clock::ManualClock;
use keygate::key::{Credits, KeyDigest, KeyFormat, KeyRecord, Refill};
use keygate::ratelimit::{UsageEntry, UsageFuture, UsageStore, UsageTotals};
use keygate::store::{
    CreditOutcome, CreditStore, IssuedKey, KeyManager, KeyPage, KeyUpdate, ManageError,
    ManageFuture, MemoryStore, Page,
};
use serde_json::{Value, json};

/// 2026-12-02T05:59:00Z.
const T0_SECS: u64 = 1_796_191_140;
const T0: &str = "2026-12-02T05:59:00Z";

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0_SECS)
}

/// A usage store in memory: the sums of the batches added to it.
#[derive(Clone, Default)]
struct FakeUsage(Arc<Mutex<HashMap<String, UsageTotals>>>);

impl FakeUsage {
    fn set(&self, caller: &str, totals: UsageTotals) {
        self.0.lock().unwrap().insert(caller.to_owned(), totals);
    }
}

impl UsageStore for FakeUsage {
    fn add(&self, batch: Vec<UsageEntry>) -> UsageFuture<'_, ()> {
        let mut all = self.0.lock().unwrap();
        for entry in batch {
            let t = all.entry(entry.caller).or_default();
            *t = UsageTotals::new(
                t.allowed + entry.usage.allowed,
                t.limited + entry.usage.limited,
                t.last_used_at.max(entry.last_used_at),
            );
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn totals(&self, caller: &str) -> UsageFuture<'_, UsageTotals> {
        let totals = self
            .0
            .lock()
            .unwrap()
            .get(caller)
            .copied()
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(totals)))
    }
}

/// The text every failing backend below fails with: it must never reach a client.
const CAUSE: &str = "connection to 10.0.0.7 refused (password=hunter2)";

/// A usage store that is down.
struct DownUsage;

impl UsageStore for DownUsage {
    fn add(&self, _: Vec<UsageEntry>) -> UsageFuture<'_, ()> {
        Box::pin(std::future::ready(Err(BoxError::from(CAUSE))))
    }

    fn totals(&self, _: &str) -> UsageFuture<'_, UsageTotals> {
        Box::pin(std::future::ready(Err(BoxError::from(CAUSE))))
    }
}

/// A key manager that is down.
struct DownManager(KeyFormat);

fn down<'a, T: Send + 'a>() -> ManageFuture<'a, T> {
    Box::pin(std::future::ready(Err(ManageError::unavailable(CAUSE))))
}

impl KeyManager for DownManager {
    fn format(&self) -> &KeyFormat {
        &self.0
    }
    fn issue(&self, _: KeyRecord) -> ManageFuture<'_, IssuedKey> {
        down()
    }
    fn insert(&self, _: KeyDigest, _: KeyRecord) -> ManageFuture<'_, KeyRecord> {
        down()
    }
    fn get(&self, _: &str) -> ManageFuture<'_, Option<KeyRecord>> {
        down()
    }
    fn list(&self, _: &str, _: Page) -> ManageFuture<'_, KeyPage> {
        down()
    }
    fn update(&self, _: &str, _: KeyUpdate) -> ManageFuture<'_, KeyRecord> {
        down()
    }
    fn rotate(&self, _: &str, _: Duration) -> ManageFuture<'_, IssuedKey> {
        down()
    }
    fn delete(&self, _: &str) -> ManageFuture<'_, ()> {
        down()
    }
    fn purge(&self, _: SystemTime) -> ManageFuture<'_, u64> {
        down()
    }
}

/// The admin API under `/admin` and an API behind an `AuthLayer`, over one store, on one
/// manual clock set to [`T0`].
struct Fixture {
    store: MemoryStore,
    usage: FakeUsage,
    clock: ManualClock,
    admin: Router,
    api: Router,
}

fn fixture() -> Fixture {
    let clock = ManualClock::at(t0());
    let store = MemoryStore::new().with_clock(clock.clone());
    let usage = FakeUsage::default();
    let admin = Router::new().nest(
        "/admin",
        Admin::new(store.clone())
            .usage(usage.clone())
            .clock(clock.clone())
            .into_router(),
    );
    let api = routes().layer(
        AuthLayer::new(store.clone())
            .realm(REALM)
            .clock(clock.clone()),
    );
    Fixture {
        store,
        usage,
        clock,
        admin,
        api,
    }
}

impl Fixture {
    async fn call(&self, method: Method, uri: &str, body: Option<&str>) -> Reply {
        send(self.admin.clone(), json_request(method, uri, body)).await
    }

    async fn post(&self, uri: &str, body: &str) -> Reply {
        self.call(Method::POST, uri, Some(body)).await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, None).await
    }

    async fn patch(&self, uri: &str, body: &str) -> Reply {
        self.call(Method::PATCH, uri, Some(body)).await
    }

    /// Issues a key through the API and returns (plaintext, record).
    async fn create(&self, body: Value) -> (String, Value) {
        let reply = self.post("/admin/keys", &body.to_string()).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        let json = reply.json();
        (
            json["key"].as_str().unwrap().to_owned(),
            json["record"].clone(),
        )
    }

    /// The status `GET /me` answers with `key` in front of the `AuthLayer`.
    async fn use_key(&self, key: &str) -> StatusCode {
        send(self.api.clone(), with_key(key)).await.status
    }
}

fn json_request(method: Method, uri: &str, body: Option<&str>) -> Request<Body> {
    let builder = Request::builder().method(method).uri(uri);
    match body {
        Some(body) => builder
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned())),
        None => builder.body(Body::empty()),
    }
    .unwrap()
}

fn field_names(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

const RECORD_FIELDS: [&str; 11] = [
    "allowed_ips",
    "created_at",
    "credits",
    "expires_at",
    "id",
    "metadata",
    "owner",
    "quota",
    "scopes",
    "status",
    "tier",
];

/// Asserts that `record` has exactly the fields of a RECORD.
#[track_caller]
fn assert_record_shape(record: &Value) {
    assert_eq!(
        field_names(record),
        RECORD_FIELDS.into_iter().collect(),
        "{record}"
    );
}

/// Asserts a problem+json answer of this status, of the documented shape.
#[track_caller]
fn assert_status_problem(reply: &Reply, status: u16) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text());
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let json = reply.json();
    assert_eq!(
        field_names(&json),
        ["detail", "status", "title", "type"].into_iter().collect()
    );
    assert_eq!(json["type"], "about:blank");
    assert_eq!(json["status"], status);
    assert_eq!(
        json["title"],
        StatusCode::from_u16(status)
            .unwrap()
            .canonical_reason()
            .unwrap()
    );
    assert!(!json["detail"].as_str().unwrap().is_empty());
}

const NOT_FOUND: &str = "No key record has this id.";
const DUPLICATE_ID: &str = "A key record with this id exists already.";

#[tokio::test]
async fn create_answers_the_key_once_and_the_exact_record() {
    let f = fixture();
    let reply = f
        .post(
            "/admin/keys",
            r#"{"owner": "acme", "scopes": ["weather:write", "weather:read"], "id": "key_1",
                "quota": "10/s;burst=20, 10000/d;fixed", "tier": "pro",
                "credits": {"remaining": 950, "refill": {"amount": 1000, "every": "1d"}},
                "expires_in": 3600, "metadata": {"plan": "pro"}}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let json = reply.json();
    assert_eq!(field_names(&json), ["key", "record"].into_iter().collect());
    let key = json["key"].as_str().unwrap();
    assert!(f.store.format().check(key).is_ok(), "{key}");
    let record = &json["record"];
    assert_record_shape(record);
    assert_eq!(
        *record,
        json!({
            "id": "key_1",
            "owner": "acme",
            "scopes": ["weather:read", "weather:write"],
            "status": "active",
            "quota": "10/s;burst=20, 10000/d;fixed",
            "tier": "pro",
            "credits": {"remaining": 950, "refill": {"amount": 1000, "every": "1d"}},
            "allowed_ips": null,
            "expires_at": "2026-12-02T06:59:00Z",
            "created_at": T0,
            "metadata": {"plan": "pro"},
        })
    );
    assert!(!record.to_string().contains(key));

    // The store holds what the answer says.
    let stored = f.store.get("key_1").unwrap();
    assert_eq!(
        stored.quota,
        Some("10/s;burst=20, 10000/d;fixed".parse().unwrap())
    );
    assert_eq!(stored.tier.as_deref(), Some("pro"));
    assert_eq!(
        stored.credits,
        Some(Credits::new(950).with_refill(Refill::new(1000, Duration::from_secs(86_400))))
    );
    assert_eq!(stored.expires_at, Some(t0() + Duration::from_secs(3600)));

    // Reading it back shows the same record and never the key.
    let read = f.get("/admin/keys/key_1").await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.json(), *record);
    assert_eq!(read.header("cache-control"), None);
    read.assert_no_leak(key);

    // The key works in front of the API, and expires when its record says.
    assert_eq!(f.use_key(key).await, StatusCode::OK);
    f.clock.advance(Duration::from_secs(3600));
    assert_eq!(f.use_key(key).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn create_with_only_the_required_fields() {
    let f = fixture();
    let (_, record) = f.create(json!({"owner": "acme", "scopes": []})).await;
    assert_record_shape(&record);
    let id = record["id"].as_str().unwrap();
    assert!(id.starts_with("key_"), "{id}");
    assert_eq!(id.len(), 4 + 24);
    assert!(id[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(record["scopes"], json!([]));
    assert_eq!(record["quota"], Value::Null);
    assert_eq!(record["tier"], Value::Null);
    assert_eq!(record["credits"], Value::Null);
    assert_eq!(record["expires_at"], Value::Null);
    assert_eq!(record["metadata"], json!({}));
    assert_eq!(record["status"], "active");
    // `null` is the same as leaving the field out.
    let (_, other) = f
        .create(
            json!({"owner": "acme", "scopes": [], "id": null, "quota": null,
                       "tier": null, "credits": null}),
        )
        .await;
    assert_ne!(other["id"], record["id"]);
    assert_eq!(f.store.len(), 2);
}

#[tokio::test]
async fn a_duplicate_id_is_a_conflict() {
    let f = fixture();
    let (key, _) = f
        .create(json!({"owner": "acme", "scopes": ["a"], "id": "key_1"}))
        .await;
    let reply = f
        .post(
            "/admin/keys",
            r#"{"owner": "mallory", "scopes": [], "id": "key_1"}"#,
        )
        .await;
    assert_problem(&reply, 409, None, DUPLICATE_ID);
    assert_eq!(f.store.get("key_1").unwrap().owner, "acme");
    assert_eq!(f.use_key(&key).await, StatusCode::OK);
}

#[tokio::test]
async fn bad_create_requests_are_400_problems() {
    let f = fixture();
    let many_scopes: Vec<String> = (0..101).map(|i| format!("s{i}")).collect();
    let many_entries: serde_json::Map<String, Value> =
        (0..101).map(|i| (format!("k{i}"), json!("v"))).collect();
    let long_id = "x".repeat(257);
    let cases: Vec<(String, Option<&str>)> = vec![
        ("{".into(), None),
        ("".into(), None),
        (r#"{"owner": "acme", "scopes": []} x"#.into(), None),
        (
            r#"{"owner": "acme", "scopes": [], "admin": true}"#.into(),
            None,
        ),
        (r#"["acme", []]"#.into(), None),
        ("[]".into(), None),
        ("null".into(), None),
        (r#"{"scopes": []}"#.into(), None),
        (r#"{"owner": "acme"}"#.into(), None),
        (r#"{"owner": "acme", "scopes": "a"}"#.into(), None),
        (r#"{"owner": 7, "scopes": []}"#.into(), None),
        (
            r#"{"owner": "acme", "owner": "evil", "scopes": []}"#.into(),
            None,
        ),
        (
            r#"{"owner": "acme", "scopes": [], "quota": "ten/s"}"#.into(),
            Some(
                "The quota is invalid: a quota looks like \"10/s\", \"100/min\", \"5000/h\" or \
                 \"100/min;burst=20\".",
            ),
        ),
        (
            r#"{"owner": "acme", "scopes": [], "quota": "0/s"}"#.into(),
            Some(
                "The quota is invalid: a quota's limit and burst are whole numbers from 1 to \
                 4294967295.",
            ),
        ),
        (
            r#"{"owner": "   ", "scopes": []}"#.into(),
            Some("The owner is empty."),
        ),
        (
            r#"{"owner": "acme", "scopes": [], "id": ""}"#.into(),
            Some("The id is empty."),
        ),
        (
            json!({"owner": "acme", "scopes": [], "id": long_id}).to_string(),
            Some("The id is longer than 256 bytes."),
        ),
        (
            json!({"owner": "ac\u{7}me", "scopes": []}).to_string(),
            Some("The owner has control characters."),
        ),
        (
            json!({"owner": "acme", "scopes": many_scopes}).to_string(),
            Some("A key has at most 100 scopes."),
        ),
        (
            json!({"owner": "acme", "scopes": ["a", "b c"]}).to_string(),
            None,
        ),
        (json!({"owner": "acme", "scopes": [""]}).to_string(), None),
        (json!({"owner": "acme", "scopes": ["é"]}).to_string(), None),
        (
            json!({"owner": "acme", "scopes": [], "metadata": many_entries}).to_string(),
            Some("The metadata has more than 100 entries."),
        ),
        (
            json!({"owner": "acme", "scopes": [], "metadata": {"big": "v".repeat(17_000)}})
                .to_string(),
            Some("The metadata is longer than 16384 bytes."),
        ),
        (
            r#"{"owner": "acme", "scopes": [], "metadata": {"n": 1}}"#.into(),
            None,
        ),
        (
            r#"{"owner": "acme", "scopes": [], "expires_in": 0}"#.into(),
            Some("The field `expires_in` is at least 1 second."),
        ),
        (
            r#"{"owner": "acme", "scopes": [], "expires_in": -5}"#.into(),
            None,
        ),
        (
            r#"{"owner": "acme", "scopes": [], "expires_in": 1.5}"#.into(),
            None,
        ),
        (
            r#"{"owner": "acme", "scopes": [], "expires_in": 18446744073709551615}"#.into(),
            Some("The field `expires_in` is at most 3153600000 seconds (100 years)."),
        ),
    ];
    for (body, detail) in &cases {
        let reply = f.post("/admin/keys", body).await;
        assert_status_problem(&reply, 400);
        if let Some(detail) = detail {
            assert_eq!(reply.detail(), *detail, "{body}");
        }
    }
    let unknown = f
        .post(
            "/admin/keys",
            r#"{"owner": "acme", "scopes": [], "admin": true}"#,
        )
        .await
        .detail();
    assert!(unknown.contains("unknown field `admin`"), "{unknown}");
    let scope_detail = f
        .post(
            "/admin/keys",
            r#"{"owner": "acme", "scopes": ["ok", "b c"]}"#,
        )
        .await
        .detail();
    assert!(
        scope_detail.starts_with("The scope at scopes[1] is not valid"),
        "{scope_detail}"
    );

    // Not sent as JSON.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = Request::post("/admin/keys");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let req = req
            .body(Body::from(r#"{"owner": "acme", "scopes": []}"#))
            .unwrap();
        let reply = send(f.admin.clone(), req).await;
        assert_problem(
            &reply,
            400,
            None,
            "The request body must be JSON, sent with `Content-Type: application/json`.",
        );
    }
    assert!(f.store.is_empty(), "a refused request created a record");

    // `expires_in` as long as allowed is fine.
    f.create(json!({"owner": "acme", "scopes": [], "expires_in": 3_153_600_000u64}))
        .await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let f = fixture();
    let body = json!({"owner": "acme", "scopes": [], "metadata": {"pad": "x".repeat(70_000)}});
    let reply = f.post("/admin/keys", &body.to_string()).await;
    assert_problem(
        &reply,
        413,
        None,
        "The request body is larger than 65536 bytes.",
    );
    // A body that does not say its length is cut off the same way.
    let stream = chunked_body(body.to_string().into_bytes());
    let req = Request::post("/admin/keys")
        .header("content-type", "application/json")
        .body(stream)
        .unwrap();
    let reply = send(f.admin.clone(), req).await;
    assert_status_problem(&reply, 413);
    assert!(f.store.is_empty());

    // Just under the limit goes through to the checks.
    let body = json!({"owner": "acme", "scopes": [], "metadata": {"pad": "x".repeat(60_000)}});
    let reply = f.post("/admin/keys", &body.to_string()).await;
    assert_problem(
        &reply,
        400,
        None,
        "The metadata is longer than 16384 bytes.",
    );
}

/// A body of unknown length, sent in 1 KiB chunks.
fn chunked_body(bytes: Vec<u8>) -> Body {
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = bytes
        .chunks(1024)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    Body::from_stream(stream_of(chunks))
}

fn stream_of<T: Send + 'static>(
    items: Vec<T>,
) -> impl futures_core::Stream<Item = T> + Send + 'static {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T> Unpin for Iter<T> {}
    impl<T> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

#[tokio::test]
async fn list_pages_by_id() {
    let f = fixture();
    let mut keys = Vec::new();
    for id in ["k3", "k1", "k5", "k2", "k4"] {
        let (key, _) = f
            .create(json!({"owner": "acme", "scopes": [], "id": id}))
            .await;
        keys.push(key);
    }
    f.create(json!({"owner": "other", "scopes": [], "id": "k0"}))
        .await;
    let ids = |reply: &Reply| -> Vec<String> {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert_record_shape(r);
                r["id"].as_str().unwrap().to_owned()
            })
            .collect()
    };

    let all = f.get("/admin/keys?owner=acme").await;
    assert_eq!(ids(&all), ["k1", "k2", "k3", "k4", "k5"]);
    assert_eq!(field_names(&all.json()), ["keys"].into_iter().collect());
    for key in &keys {
        all.assert_no_leak(key);
    }

    let first = f.get("/admin/keys?owner=acme&limit=2").await;
    assert_eq!(ids(&first), ["k1", "k2"]);
    assert_eq!(first.json()["next"], "k2");
    let second = f.get("/admin/keys?owner=acme&limit=2&after=k2").await;
    assert_eq!(ids(&second), ["k3", "k4"]);
    assert_eq!(second.json()["next"], "k4");
    let last = f.get("/admin/keys?owner=acme&limit=2&after=k4").await;
    assert_eq!(ids(&last), ["k5"]);
    assert_eq!(field_names(&last.json()), ["keys"].into_iter().collect());

    // A full last page may have more after it; the page after says there is none.
    let full = f.get("/admin/keys?owner=acme&limit=5").await;
    assert_eq!(full.json()["next"], "k5");
    let empty = f.get("/admin/keys?owner=acme&limit=5&after=k5").await;
    assert_eq!(empty.json(), json!({"keys": []}));

    assert_eq!(ids(&f.get("/admin/keys?owner=other").await), ["k0"]);
    assert_eq!(
        f.get("/admin/keys?owner=nobody").await.json(),
        json!({"keys": []})
    );
    assert_eq!(
        ids(&f.get("/admin/keys?owner=acme&limit=1000").await).len(),
        5
    );

    for uri in [
        "/admin/keys",
        "/admin/keys?limit=2",
        "/admin/keys?owner=",
        "/admin/keys?owner=acme&limit=0",
        "/admin/keys?owner=acme&limit=1001",
        "/admin/keys?owner=acme&limit=-1",
        "/admin/keys?owner=acme&limit=two",
        "/admin/keys?owner=acme&owner=other",
        "/admin/keys?owner=acme&sort=desc",
    ] {
        let reply = f.get(uri).await;
        assert_status_problem(&reply, 400);
        assert!(!reply.detail().is_empty(), "{uri}");
    }
    assert_eq!(
        f.get("/admin/keys?owner=acme&limit=1001").await.detail(),
        "The limit is 1 to 1000."
    );
}

#[tokio::test]
async fn get_and_unknown_ids() {
    let f = fixture();
    f.create(json!({"owner": "acme", "scopes": [], "id": "team/a b"}))
        .await;
    let reply = f.get("/admin/keys/team%2Fa%20b").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["id"], "team/a b");

    for (method, uri, body) in [
        (Method::GET, "/admin/keys/nope", None),
        (Method::PATCH, "/admin/keys/nope", Some("{}")),
        (Method::POST, "/admin/keys/nope/revoke", None),
        (
            Method::POST,
            "/admin/keys/nope/rotate",
            Some(r#"{"grace_seconds": 0}"#),
        ),
        (Method::DELETE, "/admin/keys/nope", None),
        (Method::GET, "/admin/keys/nope/usage", None),
    ] {
        let reply = f.call(method.clone(), uri, body).await;
        assert_problem(&reply, 404, None, NOT_FOUND);
    }
}

#[tokio::test]
async fn revoke_stops_the_key() {
    let f = fixture();
    let (key, _) = f
        .create(json!({"owner": "acme", "scopes": ["weather:read"], "id": "key_1"}))
        .await;
    let me = send(f.api.clone(), with_key(&key)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["id"], "key_1");

    let reply = f.call(Method::POST, "/admin/keys/key_1/revoke", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_record_shape(&reply.json());
    assert_eq!(reply.json()["status"], "revoked");
    reply.assert_no_leak(&key);
    assert_eq!(f.use_key(&key).await, StatusCode::UNAUTHORIZED);

    // Again: nothing changes, and it succeeds.
    let again = f.call(Method::POST, "/admin/keys/key_1/revoke", None).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json(), reply.json());
    assert_eq!(f.get("/admin/keys/key_1").await.json()["status"], "revoked");
}

#[tokio::test]
async fn rotate_keeps_the_old_key_for_the_grace() {
    let f = fixture();
    let (first, record) = f
        .create(json!({"owner": "acme", "scopes": ["weather:read"], "id": "key_1"}))
        .await;
    let reply = f
        .post("/admin/keys/key_1/rotate", r#"{"grace_seconds": 60}"#)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let json = reply.json();
    assert_eq!(field_names(&json), ["key", "record"].into_iter().collect());
    assert_eq!(json["record"], record);
    let second = json["key"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert!(f.store.format().check(&second).is_ok());
    assert!(!json["record"].to_string().contains(&second));
    f.get("/admin/keys/key_1").await.assert_no_leak(&second);

    // Both work during the grace; then only the new one.
    assert_eq!(f.use_key(&first).await, StatusCode::OK);
    assert_eq!(f.use_key(&second).await, StatusCode::OK);
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(f.use_key(&first).await, StatusCode::UNAUTHORIZED);
    assert_eq!(f.use_key(&second).await, StatusCode::OK);

    // No grace: the key it replaces stops at once.
    let reply = f
        .post("/admin/keys/key_1/rotate", r#"{"grace_seconds": 0}"#)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let third = reply.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(f.use_key(&second).await, StatusCode::UNAUTHORIZED);
    assert_eq!(f.use_key(&third).await, StatusCode::OK);

    for body in [
        "{}",
        r#"{"grace_seconds": -1}"#,
        r#"{"grace_seconds": "60"}"#,
        r#"{"grace_seconds": 60, "force": true}"#,
        r#"{"grace_seconds": 3153600001}"#,
        "[60]",
        "",
    ] {
        assert_status_problem(&f.post("/admin/keys/key_1/rotate", body).await, 400);
    }
    let no_body = f.call(Method::POST, "/admin/keys/key_1/rotate", None).await;
    assert_status_problem(&no_body, 400);
    assert_eq!(f.use_key(&third).await, StatusCode::OK);

    // A revoked key cannot be rotated.
    f.call(Method::POST, "/admin/keys/key_1/revoke", None).await;
    let reply = f
        .post("/admin/keys/key_1/rotate", r#"{"grace_seconds": 0}"#)
        .await;
    assert_problem(&reply, 409, None, "A revoked key cannot be rotated.");
    assert_eq!(f.use_key(&third).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn patch_changes_the_given_fields() {
    let f = fixture();
    let (key, _) = f
        .create(json!({"owner": "acme", "scopes": ["a"], "id": "key_1",
                       "quota": "10/s", "metadata": {"plan": "free"}}))
        .await;

    let reply = f
        .patch(
            "/admin/keys/key_1",
            r#"{"scopes": ["weather:read", "b"], "metadata": {"plan": "pro", "team": "x"}}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.assert_no_leak(&key);
    let record = reply.json();
    assert_record_shape(&record);
    assert_eq!(record["scopes"], json!(["b", "weather:read"]));
    assert_eq!(record["metadata"], json!({"plan": "pro", "team": "x"}));
    assert_eq!(record["quota"], "10/s", "a field left out is kept");
    assert_eq!(record["created_at"], T0);
    assert_eq!(
        send(f.api.clone(), with_key(&key)).await.json()["scopes"],
        json!(["b", "weather:read"])
    );

    let reply = f
        .patch("/admin/keys/key_1", r#"{"quota": "5000/h;burst=100"}"#)
        .await;
    assert_eq!(reply.json()["quota"], "5000/h;burst=100");
    assert_eq!(reply.json()["scopes"], json!(["b", "weather:read"]));
    let reply = f.patch("/admin/keys/key_1", r#"{"quota": null}"#).await;
    assert_eq!(reply.json()["quota"], Value::Null);
    assert_eq!(f.store.get("key_1").unwrap().quota, None);

    // Nothing to change: the record as it is.
    let unchanged = f.patch("/admin/keys/key_1", "{}").await;
    assert_eq!(unchanged.status, StatusCode::OK);
    assert_eq!(unchanged.json(), reply.json());

    // Disabled, the key stops; active again, it works.
    let reply = f
        .patch("/admin/keys/key_1", r#"{"status": "disabled"}"#)
        .await;
    assert_eq!(reply.json()["status"], "disabled");
    assert_eq!(f.use_key(&key).await, StatusCode::UNAUTHORIZED);
    let reply = f
        .patch("/admin/keys/key_1", r#"{"status": "active"}"#)
        .await;
    assert_eq!(reply.json()["status"], "active");
    assert_eq!(f.use_key(&key).await, StatusCode::OK);

    // Revoking is not done here.
    let reply = f
        .patch("/admin/keys/key_1", r#"{"status": "revoked"}"#)
        .await;
    assert_problem(
        &reply,
        400,
        None,
        "The status is \"active\" or \"disabled\"; revoke a key with POST /keys/{id}/revoke.",
    );
    assert_eq!(f.use_key(&key).await, StatusCode::OK);

    for body in [
        r#"{"scopes": null}"#,
        r#"{"status": null}"#,
        r#"{"metadata": null}"#,
        r#"{"status": "paused"}"#,
        r#"{"quota": "fast"}"#,
        r#"{"owner": "mallory"}"#,
        r#"{"id": "key_2"}"#,
        r#"{"expires_at": null}"#,
        r#"{"scopes": ["no spaces please"]}"#,
        r#"[]"#,
        "nope",
    ] {
        let reply = f.patch("/admin/keys/key_1", body).await;
        assert_status_problem(&reply, 400);
    }
    let record = f.get("/admin/keys/key_1").await.json();
    assert_eq!(record["owner"], "acme");
    assert_eq!(record["scopes"], json!(["b", "weather:read"]));

    // A revoked key stays revoked.
    f.call(Method::POST, "/admin/keys/key_1/revoke", None).await;
    for status in ["active", "disabled"] {
        let reply = f
            .patch("/admin/keys/key_1", &json!({"status": status}).to_string())
            .await;
        assert_problem(&reply, 409, None, "A revoked key stays revoked.");
    }
    assert_eq!(f.use_key(&key).await, StatusCode::UNAUTHORIZED);
    assert_eq!(f.get("/admin/keys/key_1").await.json()["status"], "revoked");
}

#[tokio::test]
async fn delete_removes_the_record_and_its_keys() {
    let f = fixture();
    let (key, _) = f
        .create(json!({"owner": "acme", "scopes": [], "id": "key_1"}))
        .await;
    let reply = f.call(Method::DELETE, "/admin/keys/key_1", None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(reply.body.is_empty());
    assert_problem(&f.get("/admin/keys/key_1").await, 404, None, NOT_FOUND);
    assert_problem(
        &f.call(Method::DELETE, "/admin/keys/key_1", None).await,
        404,
        None,
        NOT_FOUND,
    );
    assert_eq!(f.use_key(&key).await, StatusCode::UNAUTHORIZED);
    assert!(f.store.is_empty());
}

#[tokio::test]
async fn usage_comes_from_the_usage_store() {
    let f = fixture();
    f.create(json!({"owner": "acme", "scopes": [], "id": "key_1"}))
        .await;
    f.create(json!({"owner": "acme", "scopes": [], "id": "key_2"}))
        .await;
    f.usage.set("key_1", UsageTotals::new(7, 2, Some(t0())));
    f.usage.set("other", UsageTotals::new(99, 99, None));

    let reply = f.get("/admin/keys/key_1/usage").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.json(),
        json!({"allowed": 7, "limited": 2, "last_used_at": T0})
    );
    assert_eq!(
        f.get("/admin/keys/key_2/usage").await.json(),
        json!({"allowed": 0, "limited": 0, "last_used_at": null})
    );
    assert_problem(
        &f.get("/admin/keys/other/usage").await,
        404,
        None,
        NOT_FOUND,
    );

    // Without a usage store.
    let plain = Router::new().nest("/admin", admin::router(f.store.clone()));
    let reply = send(
        plain,
        json_request(Method::GET, "/admin/keys/key_1/usage", None),
    )
    .await;
    assert_problem(&reply, 404, None, "Usage is not tracked.");
}

#[tokio::test]
async fn an_unavailable_store_is_503_logged_with_its_cause() {
    // The only test that makes a backend fail: tracing caches per call site whether anyone
    // listens, so these call sites are reached under this capture only.
    let (logs, _guard) = LogCapture::install(tracing::Level::DEBUG);
    let format = KeyFormat::new("kg_").unwrap();
    let app = Router::new().nest("/admin", admin::router(DownManager(format)));
    for (method, uri, body) in [
        (
            Method::POST,
            "/admin/keys",
            Some(r#"{"owner": "a", "scopes": []}"#),
        ),
        (
            Method::POST,
            "/admin/keys",
            Some(r#"{"owner": "a", "scopes": [], "id": "k"}"#),
        ),
        (Method::GET, "/admin/keys?owner=a", None),
        (Method::GET, "/admin/keys/k", None),
        (
            Method::PATCH,
            "/admin/keys/k",
            Some(r#"{"status": "disabled"}"#),
        ),
        (Method::POST, "/admin/keys/k/revoke", None),
        (
            Method::POST,
            "/admin/keys/k/rotate",
            Some(r#"{"grace_seconds": 1}"#),
        ),
        (Method::DELETE, "/admin/keys/k", None),
    ] {
        let reply = send(app.clone(), json_request(method, uri, body)).await;
        assert_problem(
            &reply,
            503,
            None,
            "The key store is unavailable; retry later.",
        );
        reply.assert_no_leak("hunter2");
        reply.assert_no_leak("10.0.0.7");
    }

    // A usage store that is down, behind a key store that answers.
    let store = MemoryStore::new();
    store.issue(KeyRecord::new("key_1", "acme")).unwrap();
    let app = Admin::new(store).usage(DownUsage).into_router();
    let reply = send(app, json_request(Method::GET, "/keys/key_1/usage", None)).await;
    assert_problem(
        &reply,
        503,
        None,
        "The usage store is unavailable; retry later.",
    );
    reply.assert_no_leak("hunter2");

    // The cause is in the log, at WARN once per outage (the repeats at DEBUG).
    let warned = |what: &str| logs.count("WARN", &format!("admin API: {what} unavailable"));
    assert_eq!(warned("key store"), 1, "{}", logs.text());
    assert_eq!(warned("usage store"), 1, "{}", logs.text());
    assert_eq!(logs.count("WARN", CAUSE), 2, "{}", logs.text());
    assert_eq!(logs.count("DEBUG", CAUSE), 7, "{}", logs.text());
}

#[tokio::test]
async fn times_are_rfc3339_utc() {
    let f = fixture();
    let cases = [
        (UNIX_EPOCH, "1970-01-01T00:00:00Z"),
        (
            UNIX_EPOCH + Duration::from_secs(951_868_799),
            "2000-02-29T23:59:59Z",
        ),
        (
            UNIX_EPOCH + Duration::from_millis(1_999),
            "1970-01-01T00:00:01Z",
        ),
        (
            UNIX_EPOCH - Duration::from_secs(2_203_891_200),
            "1900-03-01T00:00:00Z",
        ),
        (
            UNIX_EPOCH + Duration::from_secs(4_107_501_296),
            "2100-02-28T12:34:56Z",
        ),
        (
            UNIX_EPOCH + Duration::from_secs(400 * 365 * 86_400 * 30),
            "9999-12-31T23:59:59Z",
        ),
    ];
    for (i, (at, text)) in cases.iter().enumerate() {
        let id = format!("t{i}");
        f.store
            .issue(
                KeyRecord::new(id.clone(), "acme")
                    .with_created_at(*at)
                    .with_expiry(*at),
            )
            .unwrap();
        let record = f.get(&format!("/admin/keys/{id}")).await.json();
        assert_eq!(record["created_at"], *text, "{at:?}");
        assert_eq!(record["expires_at"], *text, "{at:?}");
    }
}

#[tokio::test]
async fn other_methods_are_405_problems() {
    let f = fixture();
    for (method, uri) in [
        (Method::PUT, "/admin/keys"),
        (Method::DELETE, "/admin/keys"),
        (Method::POST, "/admin/keys/k"),
        (Method::GET, "/admin/keys/k/revoke"),
        (Method::DELETE, "/admin/keys/k/usage"),
    ] {
        let reply = f.call(method, uri, None).await;
        assert_status_problem(&reply, 405);
        assert!(reply.header("allow").is_some(), "{uri}");
    }
}

#[test]
fn debug_shows_no_store_internals() {
    let admin = Admin::new(MemoryStore::new()).usage(FakeUsage::default());
    assert_eq!(format!("{admin:?}"), "Admin { usage: true, .. }");
}

/// The live count of `id`'s credits, as the store has it.
async fn spend(f: &Fixture, id: &str, cost: u32) -> CreditOutcome {
    f.store.spend(id, cost).await.unwrap()
}

#[tokio::test]
async fn tiers_and_credits_are_set_shown_and_removed() {
    let f = fixture();
    let (key, record) = f
        .create(json!({"owner": "acme", "scopes": [], "id": "key_1",
                       "credits": {"remaining": 5}}))
        .await;
    assert_eq!(record["credits"], json!({"remaining": 5, "refill": null}));
    assert_eq!(record["tier"], Value::Null);
    assert_eq!(
        spend(&f, "key_1", 2).await,
        CreditOutcome::Spent { remaining: 3 }
    );
    assert_eq!(
        f.get("/admin/keys/key_1").await.json()["credits"],
        json!({"remaining": 3, "refill": null}),
        "RECORD shows the live count"
    );
    let listed = f.get("/admin/keys?owner=acme").await.json();
    assert_eq!(
        listed["keys"][0]["credits"],
        json!({"remaining": 3, "refill": null})
    );

    // A change of something else leaves the count alone.
    let reply = f
        .patch("/admin/keys/key_1", r#"{"tier": "gold", "scopes": ["a"]}"#)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.assert_no_leak(&key);
    let record = reply.json();
    assert_record_shape(&record);
    assert_eq!(record["tier"], "gold");
    assert_eq!(record["credits"], json!({"remaining": 3, "refill": null}));
    assert_eq!(f.store.get("key_1").unwrap().tier.as_deref(), Some("gold"));

    // Setting the credits sets the count and starts the schedule now.
    let reply = f
        .patch(
            "/admin/keys/key_1",
            r#"{"credits": {"remaining": 2, "refill": {"amount": 10, "every": "15min"}}}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.json()["credits"],
        json!({"remaining": 2, "refill": {"amount": 10, "every": "15min"}})
    );
    assert_eq!(reply.json()["tier"], "gold", "a field left out is kept");
    assert_eq!(
        spend(&f, "key_1", 2).await,
        CreditOutcome::Spent { remaining: 0 }
    );
    assert_eq!(
        spend(&f, "key_1", 1).await,
        CreditOutcome::Exhausted {
            refill_in: Some(Duration::from_secs(900))
        }
    );
    f.clock.advance(Duration::from_secs(900));
    assert_eq!(
        f.get("/admin/keys/key_1").await.json()["credits"],
        json!({"remaining": 10, "refill": {"amount": 10, "every": "15min"}}),
        "RECORD shows the count with the refill that came due"
    );

    // Intervals are shown in the largest unit they are a whole number of.
    for (every, shown) in [
        ("30s", "30s"),
        ("120s", "2min"),
        ("90min", "90min"),
        ("24h", "1d"),
        ("36h", "36h"),
        ("7d", "7d"),
    ] {
        let body = json!({"credits": {"remaining": 1, "refill": {"amount": 1, "every": every}}});
        let reply = f.patch("/admin/keys/key_1", &body.to_string()).await;
        assert_eq!(reply.status, StatusCode::OK, "{every}: {}", reply.text());
        assert_eq!(reply.json()["credits"]["refill"]["every"], shown, "{every}");
    }

    // Removing them.
    let reply = f
        .patch("/admin/keys/key_1", r#"{"tier": null, "credits": null}"#)
        .await;
    assert_eq!(reply.json()["tier"], Value::Null);
    assert_eq!(reply.json()["credits"], Value::Null);
    assert_eq!(spend(&f, "key_1", 1).await, CreditOutcome::NoBudget);
    assert_eq!(f.use_key(&key).await, StatusCode::OK);
}

/// A refill interval set through the Rust API in a fraction of a second is shown in `ms`.
#[tokio::test]
async fn sub_second_refill_intervals_are_shown_in_ms() {
    let f = fixture();
    f.store
        .issue(
            KeyRecord::new("key_1", "acme").with_credits(
                Credits::new(1).with_refill(Refill::new(1, Duration::from_millis(1500))),
            ),
        )
        .unwrap();
    assert_eq!(
        f.get("/admin/keys/key_1").await.json()["credits"],
        json!({"remaining": 1, "refill": {"amount": 1, "every": "1500ms"}})
    );
}

#[tokio::test]
async fn bad_quotas_tiers_and_credits_are_refused_with_what_is_wrong() {
    let f = fixture();
    f.create(
        json!({"owner": "acme", "scopes": [], "id": "key_1", "tier": "t",
                    "credits": {"remaining": 4}}),
    )
    .await;
    let every = "The refill interval `every` is a whole number of s, min, h or d, such as \
                 \"30s\", \"15min\", \"12h\" or \"1d\", from 1 second to 100 years.";
    let tier = "The tier is 1 to 64 bytes, not blank, without control characters.";
    let cases: Vec<(Value, Option<String>)> = vec![
        (
            json!({"quota": "10/s, 10/x"}),
            Some(
                "The quota is invalid: limit 2 (\"10/x\"): a quota's unit is s, min, h, d, or \
                 a whole number of ms, us or ns such as 250ms."
                    .into(),
            ),
        ),
        (
            json!({"quota": "10/s;burst=20, 100/d;fixed;burst=3"}),
            Some(
                "The quota is invalid: limit 2 (\"100/d;fixed;burst=3\"): a fixed window \
                 (;fixed) is a whole number of seconds and has no burst."
                    .into(),
            ),
        ),
        (json!({"quota": ""}), None),
        (json!({"tier": ""}), Some(tier.into())),
        (json!({"tier": "   "}), Some(tier.into())),
        (json!({"tier": "g".repeat(65)}), Some(tier.into())),
        (json!({"tier": "a\u{0}b"}), Some(tier.into())),
        (json!({"tier": 5}), None),
        (json!({"credits": {}}), None),
        (json!({"credits": 5}), None),
        (json!({"credits": [5, null]}), None),
        (json!({"credits": {"remaining": -1}}), None),
        (json!({"credits": {"remaining": 1.5}}), None),
        (json!({"credits": {"remaining": "5"}}), None),
        (json!({"credits": {"remaining": 1, "left": 1}}), None),
        (
            json!({"credits": {"remaining": 9_007_199_254_740_992u64}}),
            Some("The remaining credits are more than 9007199254740991.".into()),
        ),
        (
            json!({"credits": {"remaining": 1, "refill": {"amount": 9_007_199_254_740_992u64,
                                                          "every": "1d"}}}),
            Some("The refill amount is more than 9007199254740991.".into()),
        ),
        (
            json!({"credits": {"remaining": 1, "refill": {"amount": 1}}}),
            None,
        ),
        (
            json!({"credits": {"remaining": 1, "refill": {"amount": 1, "every": 60}}}),
            None,
        ),
        (
            json!({"credits": {"remaining": 1, "refill": [1, "1d"]}}),
            None,
        ),
    ];
    let mut cases = cases;
    for bad in ["0s", "1w", "1.5h", "36501d", "", "1 d", "1m", "1ms"] {
        cases.push((
            json!({"credits": {"remaining": 1, "refill": {"amount": 1, "every": bad}}}),
            Some(every.into()),
        ));
    }
    for (body, detail) in &cases {
        // On create...
        let mut create = json!({"owner": "acme", "scopes": []});
        for (k, v) in body.as_object().unwrap() {
            create[k] = v.clone();
        }
        let reply = f.post("/admin/keys", &create.to_string()).await;
        assert_status_problem(&reply, 400);
        if let Some(detail) = detail {
            assert_eq!(reply.detail(), *detail, "{create}");
        }
        // ...and on change.
        let reply = f.patch("/admin/keys/key_1", &body.to_string()).await;
        assert_status_problem(&reply, 400);
        if let Some(detail) = detail {
            assert_eq!(reply.detail(), *detail, "{body}");
        }
    }
    assert_eq!(f.store.len(), 1, "a refused request created a record");
    let record = f.get("/admin/keys/key_1").await.json();
    assert_eq!(record["tier"], "t");
    assert_eq!(record["credits"], json!({"remaining": 4, "refill": null}));
    assert_eq!(record["quota"], Value::Null);

    // The longest interval and the largest counts are fine.
    let reply = f
        .patch(
            "/admin/keys/key_1",
            r#"{"credits": {"remaining": 9007199254740991,
                            "refill": {"amount": 9007199254740991, "every": "36500d"}}}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.json()["credits"],
        json!({"remaining": 9_007_199_254_740_991u64,
               "refill": {"amount": 9_007_199_254_740_991u64, "every": "36500d"}})
    );
}

#[tokio::test]
async fn allowed_ips_are_set_shown_normalised_and_removed() {
    let f = fixture();
    let (key, record) = f
        .create(json!({"owner": "acme", "scopes": [], "id": "key_1",
                       "allowed_ips": ["203.0.113.7/24", "2001:db8::1", "198.51.100.0/24"]}))
        .await;
    assert_record_shape(&record);
    let shown = json!(["198.51.100.0/24", "203.0.113.0/24", "2001:db8::1/128"]);
    assert_eq!(record["allowed_ips"], shown);
    assert_eq!(
        f.store.get("key_1").unwrap().allowed_ips,
        Some(
            "198.51.100.0/24, 203.0.113.0/24, 2001:db8::1"
                .parse()
                .unwrap()
        )
    );
    assert_eq!(
        f.get("/admin/keys/key_1").await.json()["allowed_ips"],
        shown
    );
    assert_eq!(
        f.get("/admin/keys?owner=acme").await.json()["keys"][0]["allowed_ips"],
        shown
    );
    // The API's requests in this fixture carry no client address: the key is refused.
    assert_eq!(f.use_key(&key).await, StatusCode::FORBIDDEN);

    // A change of something else keeps the list; a new list replaces it.
    let reply = f.patch("/admin/keys/key_1", r#"{"scopes": ["a"]}"#).await;
    assert_eq!(reply.json()["allowed_ips"], shown);
    let reply = f
        .patch("/admin/keys/key_1", r#"{"allowed_ips": ["10.0.0.0/8"]}"#)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_record_shape(&reply.json());
    assert_eq!(reply.json()["allowed_ips"], json!(["10.0.0.0/8"]));

    // `null` lets the key be used from anywhere.
    let reply = f
        .patch("/admin/keys/key_1", r#"{"allowed_ips": null}"#)
        .await;
    assert_eq!(reply.json()["allowed_ips"], Value::Null);
    assert_eq!(f.store.get("key_1").unwrap().allowed_ips, None);
    assert_eq!(f.use_key(&key).await, StatusCode::OK);
    let (_, other) = f
        .create(json!({"owner": "acme", "scopes": [], "allowed_ips": null}))
        .await;
    assert_eq!(other["allowed_ips"], Value::Null);
}

#[tokio::test]
async fn bad_allowed_ips_are_refused_with_what_is_wrong() {
    let f = fixture();
    f.create(json!({"owner": "acme", "scopes": [], "id": "key_1",
                    "allowed_ips": ["192.0.2.0/24"]}))
        .await;
    let entry = |i: usize| {
        format!(
            "The entry at allowed_ips[{i}] is not an IP address or a network in CIDR notation \
             (such as \"203.0.113.0/24\" or \"2001:db8::/32\")."
        )
    };
    let many: Vec<String> = (0..101).map(|i| format!("10.0.0.{i}")).collect();
    let cases: Vec<(Value, Option<String>)> = vec![
        (
            json!({"allowed_ips": []}),
            Some(
                "The field `allowed_ips` lists at least one network; `null` lets the key be \
                 used from anywhere."
                    .into(),
            ),
        ),
        (json!({"allowed_ips": ["nonsense"]}), Some(entry(0))),
        (
            json!({"allowed_ips": ["10.0.0.0/8", "192.0.2.0/33"]}),
            Some(entry(1)),
        ),
        (
            json!({"allowed_ips": ["10.0.0.0/8", " 10.0.0.1"]}),
            Some(entry(1)),
        ),
        (json!({"allowed_ips": ["example.com"]}), Some(entry(0))),
        (
            json!({"allowed_ips": many}),
            Some("The field `allowed_ips` lists at most 100 networks.".into()),
        ),
        (json!({"allowed_ips": "10.0.0.0/8"}), None),
        (json!({"allowed_ips": [5]}), None),
        (json!({"allowed_ips": {"a": "10.0.0.0/8"}}), None),
    ];
    for (body, detail) in &cases {
        let mut create = json!({"owner": "acme", "scopes": []});
        for (k, v) in body.as_object().unwrap() {
            create[k] = v.clone();
        }
        let reply = f.post("/admin/keys", &create.to_string()).await;
        assert_status_problem(&reply, 400);
        if let Some(detail) = detail {
            assert_eq!(reply.detail(), *detail, "{create}");
        }
        let reply = f.patch("/admin/keys/key_1", &body.to_string()).await;
        assert_status_problem(&reply, 400);
        if let Some(detail) = detail {
            assert_eq!(reply.detail(), *detail, "{body}");
        }
        assert!(
            !reply.text().contains("nonsense"),
            "the entry is not echoed"
        );
    }
    assert_eq!(f.store.len(), 1, "a refused request created a record");
    assert_eq!(
        f.get("/admin/keys/key_1").await.json()["allowed_ips"],
        json!(["192.0.2.0/24"])
    );
    // 100 networks are fine.
    let reply = f
        .patch(
            "/admin/keys/key_1",
            &json!({"allowed_ips": many[..100]}).to_string(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}
