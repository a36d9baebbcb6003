//! A key store on PostgreSQL: how a service plugs its own storage into keygate.
//!
//! Keys live in one table, keyed by the SHA-256 digest of the key; the plaintext is never
//! stored. Issuing, revocation and expiry are plain SQL, so operators can also manage keys with
//! `psql`.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example postgres_store
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::{Json, Router, routing::get};
use keygate::key::{ApiKey, KeyDigest, KeyFormat, KeyRecord, KeyStatus};
use keygate::store::{KeyStore, Lookup, StoreError};
use keygate::{Principal, auth::AuthLayer};
use tokio_postgres::{Client, NoTls, Statement};

/// The table. `digest` is the SHA-256 of the key; `revoked_at` and `expires_at` are checked by
/// the lookup query itself.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS keygate_api_keys (
    digest      bytea PRIMARY KEY CHECK (octet_length(digest) = 32),
    id          text NOT NULL,
    owner       text NOT NULL,
    scopes      text[] NOT NULL DEFAULT '{}',
    quota       text,
    expires_at  timestamptz,
    revoked_at  timestamptz,
    metadata    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS keygate_api_keys_id ON keygate_api_keys (id);
";

const LOOKUP: &str = "
SELECT id, owner, scopes, quota, expires_at,
       revoked_at IS NOT NULL AS revoked,
       expires_at IS NOT NULL AND expires_at <= now() AS expired,
       metadata::text
  FROM keygate_api_keys
 WHERE digest = $1";

/// A [`KeyStore`] over PostgreSQL. Cheap to clone: clones share one connection, which
/// pipelines concurrent queries.
#[derive(Clone)]
pub struct PostgresStore {
    client: Arc<Client>,
    lookup: Statement,
    format: KeyFormat,
    timeout: Duration,
}

impl PostgresStore {
    /// Connects, creates the table if needed, and prepares the lookup.
    pub async fn connect(url: &str, format: KeyFormat) -> Result<Self, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("postgres connection ended: {e}");
            }
        });
        // Serialised with an advisory lock: concurrent `CREATE TABLE IF NOT EXISTS` can race.
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(7275010); {SCHEMA} COMMIT;"
            ))
            .await?;
        let lookup = client.prepare(LOOKUP).await?;
        Ok(Self {
            client: Arc::new(client),
            lookup,
            format,
            timeout: Duration::from_secs(2),
        })
    }

    /// Issues a new key for `record`: stores its digest, returns the plaintext once.
    pub async fn issue(&self, record: &KeyRecord) -> Result<ApiKey, tokio_postgres::Error> {
        let key = self.format.generate();
        self.insert(&key, record).await?;
        Ok(key)
    }

    /// Registers an existing key (any format) for `record`.
    pub async fn insert(
        &self,
        key: &ApiKey,
        record: &KeyRecord,
    ) -> Result<(), tokio_postgres::Error> {
        let scopes: Vec<&str> = record.scopes.iter().collect();
        let quota = record.quota.map(|q| q.to_string());
        let metadata = serde_json::to_string(&record.metadata).unwrap_or_else(|_| "{}".into());
        self.client
            .execute(
                "INSERT INTO keygate_api_keys (digest, id, owner, scopes, quota, expires_at, metadata)
                 VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb)",
                &[
                    &&key.digest().as_bytes()[..],
                    &record.id,
                    &record.owner,
                    &scopes,
                    &quota,
                    &record.expires_at,
                    &metadata,
                ],
            )
            .await?;
        Ok(())
    }

    /// Revokes every key of the record `id`; returns how many keys were revoked.
    pub async fn revoke(&self, id: &str) -> Result<u64, tokio_postgres::Error> {
        self.client
            .execute(
                "UPDATE keygate_api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                &[&id],
            )
            .await
    }

    /// Sets (or clears) the expiry of every key of the record `id`.
    pub async fn set_expiry(
        &self,
        id: &str,
        at: Option<SystemTime>,
    ) -> Result<u64, tokio_postgres::Error> {
        self.client
            .execute(
                "UPDATE keygate_api_keys SET expires_at = $2 WHERE id = $1",
                &[&id, &at],
            )
            .await
    }

    /// Deletes the rows of expired and revoked keys older than `age`.
    pub async fn purge(&self, age: Duration) -> Result<u64, tokio_postgres::Error> {
        let before = SystemTime::now() - age;
        self.client
            .execute(
                "DELETE FROM keygate_api_keys
                  WHERE (revoked_at IS NOT NULL AND revoked_at < $1)
                     OR (expires_at IS NOT NULL AND expires_at < $1)",
                &[&before],
            )
            .await
    }

    /// Whether `key` follows this store's format (issued keys always do).
    pub fn format_check(&self, key: &ApiKey) -> bool {
        self.format.check(key.expose_secret()).is_ok()
    }

    /// Ends the server side of the connection, as an outage would.
    pub async fn close_for_test(&self) {
        let _ = self
            .client
            .execute("SELECT pg_terminate_backend(pg_backend_pid())", &[])
            .await;
    }

    async fn find(&self, digest: KeyDigest) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let bytes: &[u8] = digest.as_bytes();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&bytes];
        let query = self.client.query_opt(&self.lookup, &params);
        let row = tokio::time::timeout(self.timeout, query)
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(StoreError::unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let get = |e: tokio_postgres::Error| StoreError::unavailable(e);
        let scopes: Vec<String> = row.try_get("scopes").map_err(get)?;
        let mut record = KeyRecord::new(
            row.try_get::<_, String>("id").map_err(get)?,
            row.try_get::<_, String>("owner").map_err(get)?,
        )
        .with_scopes(scopes);
        if let Some(q) = row.try_get::<_, Option<String>>("quota").map_err(get)? {
            record = record.with_quota(q.parse().map_err(StoreError::unavailable)?);
        }
        if let Some(at) = row
            .try_get::<_, Option<SystemTime>>("expires_at")
            .map_err(get)?
        {
            record = record.with_expiry(at);
        }
        if row.try_get::<_, bool>("revoked").map_err(get)? {
            record = record.with_status(KeyStatus::Revoked);
        }
        if row.try_get::<_, bool>("expired").map_err(get)? {
            // The database's clock said so: make sure keygate's check agrees.
            record = record.with_expiry(SystemTime::UNIX_EPOCH);
        }
        let metadata: String = row.try_get(7).map_err(get)?;
        if let Ok(map) =
            serde_json::from_str::<std::collections::BTreeMap<String, String>>(&metadata)
        {
            for (k, v) in map {
                record = record.with_metadata(k, v);
            }
        }
        Ok(Some(Arc::new(record)))
    }
}

impl KeyStore for PostgresStore {
    fn lookup(&self, digest: &KeyDigest) -> Lookup {
        let (this, digest) = (self.clone(), *digest);
        Lookup::pending(async move { this.find(digest).await })
    }
}

/// The demo app: `GET /v1/me` behind the PostgreSQL store.
pub fn app(store: PostgresStore) -> Router {
    Router::new()
        .route("/v1/me", get(|p: Principal| async move { Json(p) }))
        .layer(AuthLayer::new(store.clone()).key_format(store.format.clone()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let store = PostgresStore::connect(&url, KeyFormat::new("pg_live_")?).await?;
    let id = format!("demo-{}", std::process::id());
    let key = store
        .issue(&KeyRecord::new(&id, "demo").with_scopes(["weather:read"]))
        .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    println!(
        "curl -H 'x-api-key: {}' http://{addr}/v1/me",
        key.expose_secret()
    );
    axum::serve(listener, app(store)).await?;
    Ok(())
}
