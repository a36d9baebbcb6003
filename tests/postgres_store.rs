//! `PostgresStore` against a real PostgreSQL: the `KeyManager` conformance suite and its credit
//! checks (two instances spending one key's credits), migrations (and the upgrade of a database
//! of the first schema version), the auth layer over it, change notifications between two instances, and outages of the
//! connection (through a proxy the test cuts; the server itself keeps running).
//!
//! The tests that need the server are ignored unless asked for: run them with
//! `KEYGATE_TEST_DATABASE_URL` set (e.g. `postgres://postgres@127.0.0.1:5432/test`) and
//! `-- --include-ignored`. Asked for without the variable, they fail, so that a run without
//! PostgreSQL never passes for one that tested it. Each test works in a schema of its own, with
//! a notification channel of the same name, and drops the schema when it ends (even when it
//! fails).
#![cfg(feature = "postgres")]

mod common;
mod services;

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::proxy::Proxy;
use common::{
    INVALID_TOKEN, NOT_VALID, REALM, assert_problem, conformance, routes, send, with_key,
};
use http::StatusCode;
use keygate::auth::AuthLayer;
use keygate::clock::ManualClock;
use keygate::key::{ApiKey, Credits, KeyDigest, KeyRecord, KeyStatus, Refill};
use keygate::store::{
    CachedStore, CreditOutcome, CreditStore, Invalidate, KeyManager, KeyStore, KeyUpdate,
    ManageError, PostgresStore, StoreError,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};

/// No test runs longer than this.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// How long a notification may take from one instance to another.
const DELIVERY: Duration = Duration::from_secs(2);
/// What a loaded 2-core machine may add to a timed answer.
const SLACK: Duration = Duration::from_millis(700);

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("the test took too long")
}

fn random_hex() -> String {
    let mut r = [0u8; 6];
    getrandom::fill(&mut r).unwrap();
    r.iter().map(|b| format!("{b:02x}")).collect()
}

/// A schema (and channel) name no other test or run uses; the schema is dropped with it.
struct Schema {
    name: String,
    url: String,
}

impl Schema {
    fn new(tag: &str) -> Self {
        Self {
            name: format!("kg_test_{tag}_{}", random_hex()),
            url: services::database_url(),
        }
    }

    /// The connection options of the test database, naming this test in `pg_stat_activity`.
    fn options(&self) -> PgConnectOptions {
        PgConnectOptions::from_str(&self.url)
            .expect("a valid KEYGATE_TEST_DATABASE_URL")
            .application_name(&self.name)
    }

    /// A store of its own pool in this schema, not migrated.
    async fn bare_store(&self) -> PostgresStore {
        PostgresStore::new(pool(self.options()).await)
            .schema(&self.name)
            .channel(&self.name)
            .timeout(Duration::from_secs(5))
    }

    /// A store of its own pool in this schema, migrated.
    async fn store(&self) -> PostgresStore {
        let store = self.bare_store().await;
        store.migrate().await.expect("migrate");
        store
    }

    /// Runs one SQL statement on a connection of its own.
    async fn sql(&self, sql: &str) {
        let mut conn = PgConnection::connect(&self.url).await.expect("connect");
        sqlx::raw_sql(&sql.replace("{schema}", &self.name))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = conn.close().await;
    }

    /// The connection options of the test database, through `proxy`.
    fn via(&self, proxy: &Proxy) -> PgConnectOptions {
        self.options().host("127.0.0.1").port(proxy.addr().port())
    }

    /// A proxy to the test database.
    async fn proxy(&self) -> Proxy {
        let options = PgConnectOptions::from_str(&self.url).expect("a valid URL");
        let upstream = tokio::net::lookup_host((options.get_host(), options.get_port()))
            .await
            .expect("resolve the database's host")
            .next()
            .expect("an address of the database");
        Proxy::start(upstream).await
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        services::drop_schema(&self.url, &self.name);
    }
}

async fn pool(options: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(10)
        // Generous: on a loaded machine, a new connection can take seconds.
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .expect("connect to KEYGATE_TEST_DATABASE_URL")
}

/// What a watcher told its sink.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Heard {
    Id(String),
    Digest(String),
    All,
}

fn digest_of(key: &ApiKey) -> Heard {
    Heard::Digest(key.digest().to_hex())
}

/// An `Invalidate` that records what it is told, and closes when told to.
#[derive(Default)]
struct Recorder {
    heard: Mutex<Vec<Heard>>,
    closed: AtomicBool,
}

impl Invalidate for Recorder {
    fn invalidate_id(&self, id: &str) {
        self.heard.lock().unwrap().push(Heard::Id(id.to_owned()));
    }

    fn invalidate_digest(&self, digest: &KeyDigest) {
        self.heard
            .lock()
            .unwrap()
            .push(Heard::Digest(digest.to_hex()));
    }

    fn invalidate_all(&self) {
        self.heard.lock().unwrap().push(Heard::All);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Recorder {
    fn heard(&self) -> Vec<Heard> {
        self.heard.lock().unwrap().clone()
    }

    /// Waits up to `within` for what was heard to satisfy `done`, then forgets it.
    async fn wait(&self, what: &str, within: Duration, done: impl Fn(&[Heard]) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            {
                let mut heard = self.heard.lock().unwrap();
                if done(&heard) {
                    heard.clear();
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not heard within {within:?}; heard {:?}",
                self.heard()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for exactly `want`, in this order, and nothing else, then forgets it.
    async fn expect(&self, what: &str, want: &[Heard]) {
        let deadline = Instant::now() + DELIVERY;
        while self.heard.lock().unwrap().len() < want.len() {
            assert!(
                Instant::now() < deadline,
                "{what}: expected {want:?} within {DELIVERY:?}; heard {:?}",
                self.heard()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Anything heard beyond `want` would arrive with it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let heard = std::mem::take(&mut *self.heard.lock().unwrap());
        assert_eq!(heard, want, "{what}");
    }
}

// ---------------------------------------------------------------------------------------------
// The conformance suite

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_DATABASE_URL"]
async fn conformance_suite() {
    let schema = Schema::new("conformance");
    let store = schema.store().await;
    tokio::time::timeout(Duration::from_secs(120), async {
        conformance::run(&store).await;
    })
    .await
    .expect("the conformance suite took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_DATABASE_URL"]
async fn credit_conformance() {
    let schema = Schema::new("credits");
    let store = schema.store().await;
    bounded(conformance::credit_checks(&store)).await;
}

/// Two instances, each on a pool of its own, spend one key's credits from many tasks: exactly
/// the credits are admitted, and the count ends at exactly 0. Through caches, too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_DATABASE_URL"]
async fn credits_reach_exactly_zero_across_two_instances() {
    let schema = Schema::new("credits_shared");
    let (a, b) = (schema.store().await, schema.store().await);
    bounded(async {
        conformance::credits_across_instances(&a, &b).await;
        conformance::credits_across_instances(&CachedStore::new(a), &CachedStore::new(b)).await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_DATABASE_URL"]
async fn conformance_purge() {
    let schema = Schema::new("purge");
    let store = schema.store().await;
    bounded(conformance::purge_checks(&store)).await;
}

/// Disabled, expired and revoked records look up as they are, except that an expired one looks
/// up with the epoch as its expiry; `get` shows the stored expiry.
#[tokio::test]
#[ignore = "needs KEYGATE_TEST_DATABASE_URL"]
async fn expired_disabled_and_revoked_records_still_look_up() {
    let schema = Schema::new("expired");
    let store = schema.store().await;
    bounded(async {
        let expired_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let expired = store
            .issue(KeyRecord::new("expired", "o").with_expiry(expired_at))
            .await
            .unwrap();
        let looked = store.lookup(&expired.key.digest()).await.unwrap().unwrap();
        assert_eq!(looked.expires_at, Some(UNIX_EPOCH));
        assert_eq!(looked.status, KeyStatus::Active);
        let got = store.get("expired").await.unwrap().unwrap();
        assert_eq!(
            got.expires_at,
            Some(expired_at),
            "get shows the stored expiry"
        );

        let later = SystemTime::now() + Duration::from_secs(3600);
        let later =
            UNIX_EPOCH + Duration::from_secs(later.duration_since(UNIX_EPOCH).unwrap().as_secs());
        let expiring = store
            .issue(KeyRecord::new("expiring", "o").with_expiry(later))
            .await
            .unwrap();
        let looked = store.lookup(&expiring.key.digest()).await.unwrap().unwrap();
        assert_eq!(
            looked.expires_at,
            Some(later),
            "an expiry to come is as stored"
        );

        let disabled = store
            .issue(KeyRecord::new("disabled", "o").with_status(KeyStatus::Disabled))
            .await
            .unwrap();
        let looked = store.lookup(&disabled.key.digest()).await.unwrap().unwrap();
        assert_eq!(looked.status, KeyStatus::Disabled);

        let legacy = ApiKey::new("a key from an older system");
        store
            .insert(
                legacy.digest(),
                KeyRecord::new("revoked", "o").with_status(KeyStatus::Revoked),
            )
            .await
            .unwrap();
        let looked = store.lookup(&legacy.digest()).await.unwrap().unwrap();
        assert_eq!(looked.status, KeyStatus::Revoked);
        assert_eq!(
            store
                .update("revoked", KeyUpdate::new().status(KeyStatus::Active))
                .await,
            Err(ManageError::invalid("a revoked key stays revoked"))
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Migrations and instances

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_DATABASE_URL"]
async fn migrations_are_idempotent_and_instances_share_keys() {
    let schema = Schema::new("migrate");
    bounded(async {
        let stores = [
            schema.bare_store().await,
            schema.bare_store().await,
            schema.bare_store().await,
            schema.bare_store().await,
        ];
        // Before the migration there are no tables: lookups fail, they never answer "unknown".
        let probe = KeyDigest::of("probe");
        assert!(matches!(
            stores[0].lookup(&probe).await,
            Err(StoreError::Unavailable(_))
        ));
        // Instances starting together all migrate the same new schema.
        let racing: Vec<_> = stores
            .iter()
            .cloned()
            .map(|store| tokio::spawn(async move { store.migrate().await }))
            .collect();
        for migration in racing {
            migration
                .await
                .expect("a migration task")
                .expect("a concurrent migration");
        }
        stores[0].migrate().await.expect("a second migration");
        stores[1].migrate().await.expect("a third migration");
        assert!(matches!(stores[0].lookup(&probe).await, Ok(None)));

        let (a, b) = (&stores[0], &stores[1]);
        let issued = a
            .issue(KeyRecord::new("shared", "acme").with_scopes(["read"]))
            .await
            .unwrap();
        let seen = b
            .lookup(&issued.key.digest())
            .await
            .unwrap()
            .expect("B sees A's key");
        assert_eq!(*seen, issued.record);
        b.revoke("shared").await.unwrap();
        let seen = a.lookup(&issued.key.digest()).await.unwrap().unwrap();
        assert_eq!(seen.status, KeyStatus::Revoked, "A sees B's revocation");
        let page = b
            .list("acme", keygate::store::Page::first(10))
            .await
            .unwrap();
        assert_eq!(page.records.len(), 1);
    })
    .await;
}

/// The tables of schema version 1 (before tiers and credits), as that version created them.
const MIGRATION_V1: &str = r#"
CREATE SCHEMA "{schema}";
CREATE TABLE "{schema}".keygate_records (
    id          text COLLATE "C" NOT NULL,
    owner       text COLLATE "C" NOT NULL,
    scopes      text[] NOT NULL DEFAULT '{}',
    quota       text,
    status      text NOT NULL DEFAULT 'active',
    expires_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    metadata    jsonb NOT NULL DEFAULT '{}',
    CONSTRAINT keygate_records_pkey PRIMARY KEY (id),
    CONSTRAINT keygate_records_status CHECK (status IN ('active', 'disabled', 'revoked'))
);
CREATE INDEX keygate_records_owner ON "{schema}".keygate_records (owner, id);
CREATE TABLE "{schema}".keygate_digests (
    digest      bytea NOT NULL,
    record_id   text COLLATE "C" NOT NULL,
    retire_at   timestamptz,
    CONSTRAINT keygate_digests_pkey PRIMARY KEY (digest),
    CONSTRAINT keygate_digests_length CHECK (octet_length(digest) = 32),
    CONSTRAINT keygate_digests_record FOREIGN KEY (record_id)
        REFERENCES "{schema}".keygate_records (id) ON DELETE CASCADE
);
"#;

/// A database made by the first schema version gains tiers and credits on `migrate`, keeps its
/// keys, and migrating again changes nothing; the database refuses credits that break the
/// rules, whoever writes them.
#[tokio::test]
#[ignore = "needs KEYGATE_TEST_DATABASE_URL"]
async fn a_database_of_the_first_schema_version_is_upgraded() {
    let schema = Schema::new("upgrade");
    schema.sql(MIGRATION_V1).await;
    let old_key = ApiKey::new("a key of schema version 1");
    schema
        .sql(&format!(
            r#"INSERT INTO "{{schema}}".keygate_records (id, owner, scopes, quota)
               VALUES ('old', 'acme', '{{read}}', '100/min');
               INSERT INTO "{{schema}}".keygate_digests (digest, record_id)
               VALUES ('\x{}', 'old');"#,
            old_key.digest().to_hex()
        ))
        .await;
    let store = schema.bare_store().await;
    bounded(async {
        store.migrate().await.expect("the upgrade");
        store.migrate().await.expect("a second migration");
        let old = store
            .lookup(&old_key.digest())
            .await
            .unwrap()
            .expect("the old key still works");
        assert_eq!(
            old.quota.as_ref().map(ToString::to_string).as_deref(),
            Some("100/min")
        );
        assert_eq!((old.tier.as_deref(), old.credits), (None, None));
        assert_eq!(
            old.allowed_ips, None,
            "an old key may be used from anywhere"
        );
        assert_eq!(
            store.spend("old", 1).await.unwrap(),
            CreditOutcome::NoBudget
        );

        let daily = Credits::new(2).with_refill(Refill::new(5, Duration::from_secs(86_400)));
        let changed = store
            .update(
                "old",
                KeyUpdate::new().tier(Some("gold")).credits(Some(daily)),
            )
            .await
            .unwrap();
        assert_eq!(
            (changed.tier.as_deref(), changed.credits),
            (Some("gold"), Some(daily))
        );
        assert_eq!(
            store.spend("old", 2).await.unwrap(),
            CreditOutcome::Spent { remaining: 0 }
        );
        let CreditOutcome::Exhausted {
            refill_in: Some(wait),
        } = store.spend("old", 1).await.unwrap()
        else {
            panic!("a refill is scheduled");
        };
        assert!(wait <= Duration::from_secs(86_400) && wait > Duration::from_secs(86_000));

        // The database itself refuses broken credits.
        for broken in [
            "UPDATE {schema}.keygate_records SET credits_remaining = -1",
            "UPDATE {schema}.keygate_records SET credits_refilled_at = NULL",
            "UPDATE {schema}.keygate_records SET credits_refill_every_us = NULL",
            "UPDATE {schema}.keygate_records SET credits_refill_every_us = 0",
            "UPDATE {schema}.keygate_records SET allowed_ips = '{nonsense}'",
        ] {
            let sql = broken.replace("{schema}", &format!("\"{}\"", schema.name));
            let refused = sqlx::query(&sql).execute(store.pool()).await;
            assert!(refused.is_err(), "{broken}: accepted");
        }
        // Operators may set a count with SQL.
        schema
            .sql(r#"UPDATE "{schema}".keygate_records SET credits_remaining = 7"#)
            .await;
        assert_eq!(
            store.credits("old").await.unwrap(),
            Some(Credits::new(7).with_refill(Refill::new(5, Duration::from_secs(86_400))))
        );
        // ...and an allowlist.
        schema
            .sql(r#"UPDATE "{schema}".keygate_records SET allowed_ips = '{192.0.2.0/24, ::1}'"#)
            .await;
        let old = store.lookup(&old_key.digest()).await.unwrap().unwrap();
        assert_eq!(
            old.allowed_ips.as_ref().map(ToString::to_string).as_deref(),
            Some("192.0.2.0/24, ::1/128")
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Through the auth layer

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_DATABASE_URL"]
async fn the_auth_layer_over_postgres_follows_the_database() {
    let schema = Schema::new("http");
    let store = schema.store().await;
    bounded(async {
        // The application's clock is far behind the database's: only the database's clock can
        // make a key expired or retired.
        let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(86_400));
        let app = routes().layer(AuthLayer::new(store.clone()).realm(REALM).clock(clock));
        let call = |key: &ApiKey| send(app.clone(), with_key(key.expose_secret()));

        let k1 = store
            .issue(KeyRecord::new("key_1", "acme").with_scopes(["weather:read"]))
            .await
            .unwrap()
            .key;
        let reply = call(&k1).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.json()["id"], "key_1");
        assert_eq!(reply.json()["owner"], "acme");

        let unknown = KeyManager::format(&store).generate();
        assert_problem(&call(&unknown).await, 401, Some(INVALID_TOKEN), NOT_VALID);

        store.revoke("key_1").await.unwrap();
        assert_problem(&call(&k1).await, 401, Some(INVALID_TOKEN), NOT_VALID);

        // Expired by the database's clock, set with SQL as an operator would.
        let k2 = store
            .issue(
                KeyRecord::new("key_2", "acme")
                    .with_expiry(SystemTime::now() + Duration::from_secs(3600)),
            )
            .await
            .unwrap()
            .key;
        assert_eq!(call(&k2).await.status, StatusCode::OK);
        schema
            .sql(
                "UPDATE \"{schema}\".keygate_records \
                 SET expires_at = now() - interval '1 second' WHERE id = 'key_2'",
            )
            .await;
        assert_problem(&call(&k2).await, 401, Some(INVALID_TOKEN), NOT_VALID);

        // Retired by the database's clock: the old key of a rotation whose grace is over.
        let old = store
            .issue(KeyRecord::new("key_3", "acme"))
            .await
            .unwrap()
            .key;
        let new = store
            .rotate("key_3", Duration::from_secs(3600))
            .await
            .unwrap()
            .key;
        assert_eq!(call(&old).await.status, StatusCode::OK);
        assert_eq!(call(&new).await.status, StatusCode::OK);
        schema
            .sql(
                "UPDATE \"{schema}\".keygate_digests SET retire_at = now() - interval '1 second' \
                 WHERE record_id = 'key_3' AND retire_at IS NOT NULL",
            )
            .await;
        assert_problem(&call(&old).await, 401, Some(INVALID_TOKEN), NOT_VALID);
        assert_eq!(call(&new).await.status, StatusCode::OK);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Notifications

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_DATABASE_URL"]
async fn changes_through_one_instance_reach_the_watcher_of_another() {
    let schema = Schema::new("watch");
    let (a, b) = (schema.store().await, schema.store().await);
    bounded(async {
        let sink = Arc::new(Recorder::default());
        b.watch(sink.clone()).await.expect("watch");
        let id = |id: &str| Heard::Id(id.to_owned());

        let k1 = a.issue(KeyRecord::new("w1", "o")).await.unwrap().key;
        sink.expect("issue", &[digest_of(&k1)]).await;
        assert!(b.lookup(&k1.digest()).await.unwrap().is_some());

        let legacy = ApiKey::new("legacy key of w2");
        a.insert(legacy.digest(), KeyRecord::new("w2", "o"))
            .await
            .unwrap();
        sink.expect("insert", &[digest_of(&legacy)]).await;

        a.update("w1", KeyUpdate::new().scopes(["x"]))
            .await
            .unwrap();
        sink.expect("update", &[id("w1")]).await;

        let k1b = a.rotate("w1", Duration::from_secs(3600)).await.unwrap().key;
        sink.expect("rotate", &[id("w1"), digest_of(&k1b)]).await;

        a.revoke("w2").await.unwrap();
        sink.expect("revoke", &[id("w2")]).await;

        // Calls that fail change nothing and notify nothing: the next change is all that is heard.
        assert!(
            a.update("w2", KeyUpdate::new().status(KeyStatus::Active))
                .await
                .is_err()
        );
        assert!(a.issue(KeyRecord::new("w1", "o")).await.is_err());
        assert!(
            a.insert(k1.digest(), KeyRecord::new("w9", "o"))
                .await
                .is_err()
        );
        assert!(a.rotate("w2", Duration::ZERO).await.is_err());
        assert!(a.delete("nobody").await.is_err());
        a.delete("w2").await.unwrap();
        sink.expect("failures, then delete", &[id("w2")]).await;

        let k3 = a
            .issue(
                KeyRecord::new("w3", "o").with_expiry(UNIX_EPOCH + Duration::from_secs(1_000_000)),
            )
            .await
            .unwrap()
            .key;
        sink.expect("issue of an expired record", &[digest_of(&k3)])
            .await;
        assert_eq!(a.purge(SystemTime::now()).await.unwrap(), 1);
        sink.expect("purge", &[id("w3")]).await;

        // A rotated-out key forgotten by a purge tells its record's id too.
        a.rotate("w1", Duration::ZERO).await.unwrap();
        sink.wait("rotate", DELIVERY, |h| h.len() >= 2).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            a.purge(SystemTime::now() + Duration::from_secs(1))
                .await
                .unwrap(),
            0
        );
        sink.expect("purge of retired keys", &[id("w1")]).await;
    })
    .await;
}

/// The number of connections whose last statement was `LISTEN` on `channel`.
async fn listeners(schema: &Schema) -> i64 {
    let mut conn = PgConnection::connect(&schema.url).await.expect("connect");
    let count: (i64,) = sqlx::query_as("SELECT count(*) FROM pg_stat_activity WHERE query = $1")
        .bind(format!("LISTEN \"{}\"", schema.name))
        .fetch_one(&mut conn)
        .await
        .expect("pg_stat_activity");
    let _ = conn.close().await;
    count.0
}

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_DATABASE_URL"]
async fn the_watcher_stops_when_its_sink_closes() {
    let schema = Schema::new("closing");
    let store = schema.store().await;
    bounded(async {
        let sink = Arc::new(Recorder::default());
        store.watch(sink.clone()).await.expect("watch");
        assert_eq!(listeners(&schema).await, 1, "the watcher listens");
        sink.closed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(3);
        while listeners(&schema).await != 0 {
            assert!(
                Instant::now() < deadline,
                "the watcher still listens 3 s after its sink closed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(sink.heard().is_empty(), "{:?}", sink.heard());
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Outages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_DATABASE_URL"]
async fn lookups_fail_during_an_outage_and_recover_on_the_same_pool() {
    let schema = Schema::new("outage");
    let direct = schema.store().await;
    let proxy = schema.proxy().await;
    bounded(async {
        let key = direct
            .issue(KeyRecord::new("key_1", "acme"))
            .await
            .unwrap()
            .key;
        let timeout = Duration::from_secs(1);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_millis(300))
            .connect_with(schema.via(&proxy))
            .await
            .expect("connect through the proxy");
        let store = PostgresStore::new(pool)
            .schema(&schema.name)
            .channel(&schema.name)
            .timeout(timeout);
        let app = routes().layer(AuthLayer::new(store.clone()).realm(REALM));
        assert!(store.lookup(&key.digest()).await.unwrap().is_some());
        assert_eq!(
            send(app.clone(), with_key(key.expose_secret()))
                .await
                .status,
            StatusCode::OK
        );

        proxy.cut();
        for _ in 0..3 {
            let start = Instant::now();
            let answer = store.lookup(&key.digest()).await;
            assert!(
                matches!(
                    answer,
                    Err(StoreError::Unavailable(_) | StoreError::Timeout)
                ),
                "a lookup while the database is out of reach: {answer:?}"
            );
            assert!(start.elapsed() < timeout + SLACK, "{:?}", start.elapsed());
            let start = Instant::now();
            let spent = store.spend("key_1", 1).await;
            assert!(
                matches!(spent, Err(StoreError::Unavailable(_) | StoreError::Timeout)),
                "a spend while the database is out of reach: {spent:?}"
            );
            let read = store.credits("key_1").await;
            assert!(
                matches!(read, Err(StoreError::Unavailable(_) | StoreError::Timeout)),
                "a read of credits while the database is out of reach: {read:?}"
            );
            assert!(
                start.elapsed() < 2 * timeout + SLACK,
                "{:?}",
                start.elapsed()
            );
        }
        let reply = send(app.clone(), with_key(key.expose_secret())).await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "an outage is never a 401"
        );

        proxy.restore();
        // Reconnecting means new connections, which a loaded machine can take seconds to make.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match store.lookup(&key.digest()).await {
                Ok(Some(record)) => {
                    assert_eq!(record.id, "key_1");
                    break;
                }
                other => assert!(
                    Instant::now() < deadline,
                    "no recovery 5 s after the database came back: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            send(app.clone(), with_key(key.expose_secret()))
                .await
                .status,
            StatusCode::OK
        );

        // A database that accepts connections and never answers: the lookup's own timeout.
        proxy.blackhole();
        let patient_pool = PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(schema.via(&proxy));
        let hasty = PostgresStore::new(patient_pool)
            .schema(&schema.name)
            .timeout(Duration::from_millis(300));
        let start = Instant::now();
        let answer = hasty.lookup(&key.digest()).await;
        assert!(matches!(answer, Err(StoreError::Timeout)), "{answer:?}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(300) + SLACK,
            "{took:?}"
        );
        let start = Instant::now();
        let spent = hasty.spend("key_1", 1).await;
        assert!(matches!(spent, Err(StoreError::Timeout)), "{spent:?}");
        assert!(start.elapsed() < Duration::from_millis(300) + SLACK);
        proxy.restore();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_DATABASE_URL"]
async fn the_watcher_reconnects_and_then_invalidates_everything() {
    let schema = Schema::new("rewatch");
    let direct = schema.store().await;
    let proxy = schema.proxy().await;
    bounded(async {
        let pool = PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(300))
            .connect_with(schema.via(&proxy))
            .await
            .expect("connect through the proxy");
        let watched = PostgresStore::new(pool)
            .schema(&schema.name)
            .channel(&schema.name);
        let sink = Arc::new(Recorder::default());
        watched.watch(sink.clone()).await.expect("watch");

        let before = direct
            .issue(KeyRecord::new("before", "o"))
            .await
            .unwrap()
            .key;
        sink.expect("issue before the outage", &[digest_of(&before)])
            .await;

        proxy.cut();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Nobody listens now: this change is missed.
        direct
            .update("before", KeyUpdate::new().scopes(["missed"]))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            sink.heard().is_empty(),
            "nothing is heard, and nothing invalidated, while the watcher cannot connect: {:?}",
            sink.heard()
        );

        proxy.restore();
        sink.wait(
            "invalidate_all after reconnecting",
            Duration::from_secs(15),
            |h| h == [Heard::All],
        )
        .await;
        direct
            .update("before", KeyUpdate::new().scopes(["heard"]))
            .await
            .unwrap();
        sink.expect(
            "a change after the reconnection",
            &[Heard::Id("before".into())],
        )
        .await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Without a server

/// Neither `Debug` nor an error shows the pool's password or a digest, and what PostgreSQL
/// cannot store is refused before anything is sent.
#[tokio::test]
async fn secrets_stay_out_of_debug_and_errors() {
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy("postgres://keygate:hunter2-secret@127.0.0.1:1/db")
        .unwrap();
    let store = PostgresStore::new(pool).timeout(Duration::from_secs(3));
    let shown = format!("{store:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains("public") && shown.contains("keygate_keys"),
        "{shown}"
    );

    let digest = KeyDigest::of("some key");
    let error = store.lookup(&digest).await.unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    let mut text = format!("{error:?} {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(e) = source {
        text.push_str(&format!(" {e}"));
        source = e.source();
    }
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains(&digest.to_hex()[..16]), "{text}");

    let error = store.get("key_1").await.unwrap_err();
    assert!(matches!(error, ManageError::Unavailable(_)));
    assert!(!format!("{error:?}").contains("hunter2"));
    assert!(store.watch(Arc::new(Recorder::default())).await.is_err());

    // Refused before the database is asked (it is out of reach here).
    let nul = KeyRecord::new("key_1", "acme").with_metadata("note", "a\0b");
    assert!(matches!(
        store.issue(nul).await,
        Err(ManageError::Invalid(_))
    ));
    let nul = KeyRecord::new("key_1", "acme").with_scopes(["a\0b"]);
    assert!(matches!(
        store.issue(nul).await,
        Err(ManageError::Invalid(_))
    ));
    assert!(matches!(store.get("a\0b").await, Ok(None)));
    assert!(matches!(
        store.delete("a\0b").await,
        Err(ManageError::NotFound)
    ));
}
