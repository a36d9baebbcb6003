//! The PostgreSQL key store of `examples/postgres_store.rs`, against a real server.
//!
//! Every test here needs the server, so all are ignored unless asked for: run them with
//! `KEYGATE_TEST_DATABASE_URL` set (e.g. `postgres://postgres@127.0.0.1:5432/test`) and
//! `-- --include-ignored`. Asked for without the variable, they fail, so that a run without
//! PostgreSQL never passes for one that tested it.

#[allow(dead_code)]
#[path = "../examples/postgres_store.rs"]
mod pg;
mod services;

use std::time::{Duration, SystemTime};

use axum::body::Body;
use http::{Request, StatusCode};
use keygate::key::{ApiKey, KeyFormat, KeyRecord, KeyStatus};
use keygate::store::KeyStore;
use tower::ServiceExt;

async fn store() -> pg::PostgresStore {
    pg::PostgresStore::connect(
        &services::database_url(),
        KeyFormat::new("pg_test_").unwrap(),
    )
    .await
    .expect("connect to KEYGATE_TEST_DATABASE_URL")
}

fn unique(name: &str) -> String {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).unwrap();
    format!("{name}-{}", u64::from_le_bytes(r))
}

async fn status(app: &axum::Router, key: &str) -> StatusCode {
    let req = Request::get("/v1/me")
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(req).await.unwrap().status()
}

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_DATABASE_URL"]
async fn issue_lookup_revoke() {
    let store = store().await;
    let id = unique("issue");
    let record = KeyRecord::new(&id, "acme")
        .with_scopes(["weather:read", "weather:write"])
        .with_quota("100/min".parse().unwrap())
        .with_metadata("plan", "pro");
    let key = store.issue(&record).await.unwrap();
    assert!(store.format_check(&key));

    let found = store.lookup(&key.digest()).await.unwrap().expect("found");
    assert_eq!(found.id, id);
    assert_eq!(found.owner, "acme");
    assert!(found.scopes.contains("weather:write"));
    assert_eq!(found.quota, Some("100/min".parse().unwrap()));
    assert_eq!(found.metadata.get("plan").map(String::as_str), Some("pro"));
    assert_eq!(found.status, KeyStatus::Active);

    let unknown = ApiKey::new(unique("nope"));
    assert!(store.lookup(&unknown.digest()).await.unwrap().is_none());

    let app = pg::app(store.clone());
    assert_eq!(status(&app, key.expose_secret()).await, StatusCode::OK);
    assert_eq!(
        status(&app, unknown.expose_secret()).await,
        StatusCode::UNAUTHORIZED
    );

    assert_eq!(store.revoke(&id).await.unwrap(), 1);
    let found = store.lookup(&key.digest()).await.unwrap().unwrap();
    assert_eq!(found.status, KeyStatus::Revoked);
    assert_eq!(
        status(&app, key.expose_secret()).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_DATABASE_URL"]
async fn legacy_keys_and_expiry_in_sql() {
    let store = store().await;
    let id = unique("legacy");
    let key = ApiKey::new(unique("legacy-plaintext"));
    store
        .insert(&key, &KeyRecord::new(&id, "old"))
        .await
        .unwrap();
    let app = pg::app(store.clone());
    assert_eq!(status(&app, key.expose_secret()).await, StatusCode::OK);

    // The database decides that the key expired.
    store
        .set_expiry(&id, Some(SystemTime::now() - Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(
        status(&app, key.expose_secret()).await,
        StatusCode::UNAUTHORIZED
    );
    store
        .set_expiry(&id, Some(SystemTime::now() + Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(status(&app, key.expose_secret()).await, StatusCode::OK);
    // A duplicate digest is refused by the primary key.
    assert!(
        store
            .insert(&key, &KeyRecord::new(unique("dup"), "x"))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs KEYGATE_TEST_DATABASE_URL"]
async fn concurrent_lookups() {
    let store = store().await;
    let mut keys = Vec::new();
    for i in 0..20 {
        let id = unique(&format!("conc{i}"));
        let key = store.issue(&KeyRecord::new(&id, "c")).await.unwrap();
        keys.push((id, key));
    }
    let app = pg::app(store.clone());
    let mut tasks = Vec::new();
    for _ in 0..10 {
        for (id, key) in &keys {
            let app = app.clone();
            let (id, key) = (id.clone(), key.expose_secret().to_owned());
            tasks.push(tokio::spawn(async move {
                let req = Request::get("/v1/me")
                    .header("authorization", format!("Bearer {key}"))
                    .body(Body::empty())
                    .unwrap();
                let res = app.oneshot(req).await.unwrap();
                let status = res.status();
                let body = axum::body::to_bytes(res.into_body(), 1 << 16)
                    .await
                    .unwrap();
                let principal: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or_default();
                (id, status, principal["id"].as_str().map(str::to_owned))
            }));
        }
    }
    let results = tokio::time::timeout(Duration::from_secs(30), async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    })
    .await
    .expect("200 concurrent lookups finish in time");
    assert!(results.iter().all(|(_, s, _)| *s == StatusCode::OK));
    // Each lookup found its own key's record, not another one in flight at the same time.
    for (id, _, principal) in &results {
        assert_eq!(principal.as_deref(), Some(id.as_str()));
    }
}

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_DATABASE_URL"]
async fn unreachable_database_is_503_not_401() {
    // A store whose connection is gone: every lookup fails.
    let store = store().await;
    let id = unique("down");
    let key = store.issue(&KeyRecord::new(&id, "x")).await.unwrap();
    let app = pg::app(store.clone());
    store.close_for_test().await;
    assert_eq!(
        status(&app, key.expose_secret()).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
}
