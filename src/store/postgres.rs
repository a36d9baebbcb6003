//! [`PostgresStore`] (feature `postgres`): keys in PostgreSQL, on the application's own sqlx
//! pool, with change notifications through `LISTEN/NOTIFY`.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, PgConnection, Row};

use super::credits::{check_credits, every_micros, refill_of};
use super::manager::check_new_record;
use super::{
    CreditCheck, CreditOutcome, CreditStore, Invalidate, IssuedKey, KeyManager, KeyPage, KeyStore,
    KeyUpdate, Lookup, LookupResult, ManageError, ManageFuture, Page, StoreError,
};
use crate::client_addr::Networks;
use crate::key::{Credits, KeyDigest, KeyFormat, KeyRecord, KeyStatus, Scopes};
use crate::limits::Limits;
use crate::outage::Chain;
use crate::{BoxError, MaybeReady};

/// The tables of a [`PostgresStore`], as SQL, with `{schema}` standing for the schema's name.
///
/// [`PostgresStore::migrate`] applies it to the store's schema (replacing `{schema}`) in one
/// transaction, under an advisory lock, so that instances starting together do not race; every
/// statement is `IF NOT EXISTS` (or checks first), so running it again changes nothing, and a
/// database made by an earlier version gains the newer columns. Services that run their
/// migrations with their own tool can take this text instead, with `{schema}` replaced by a
/// plain lowercase identifier (such as `public`).
///
/// Two tables, both keyed by what a lookup asks for:
///
/// - `keygate_records`: one row per record: `id` (primary key, compared byte by byte, so
///   pages come in the same order as in every other store), `owner` (indexed, for listing),
///   `scopes text[]`, `quota` (the text of a list of limits, such as `10/s;burst=20,
///   10000/d;fixed`), `tier`, `status` (`active`, `disabled` or `revoked`), `expires_at`,
///   `created_at`, `revoked_at` (set when the record is revoked), `metadata` (a JSON object of
///   strings), and the key's credits, all `NULL` when it has no budget: `credits_remaining`
///   (as of `credits_refilled_at`), `credits_refill_amount` and `credits_refill_every_us` (the
///   refill schedule, in microseconds; both `NULL` without one) and `credits_refilled_at` (when
///   the credits were set or last refilled), and `allowed_ips` (a `cidr[]` of the networks the
///   key may be used from; `NULL`: from anywhere);
/// - `keygate_digests`: one row per key: `digest` (the 32 bytes of the SHA-256 of the key,
///   primary key), `record_id` (deleted with its record) and `retire_at` (when a key rotated
///   out stops working; `NULL` for current keys).
///
/// The plaintext of a key is never stored. Operators may manage keys with SQL, too: a lookup
/// reads both tables on every call, and compares `expires_at` and `retire_at` with the
/// database's clock.
///
/// ```
/// use keygate::store::POSTGRES_MIGRATION;
///
/// let sql = POSTGRES_MIGRATION.replace("{schema}", "public");
/// assert!(sql.contains(r#"CREATE TABLE IF NOT EXISTS "public".keygate_records"#));
/// assert!(sql.contains(r#"CREATE TABLE IF NOT EXISTS "public".keygate_digests"#));
/// assert!(sql.contains("ADD COLUMN IF NOT EXISTS credits_remaining"));
/// assert!(sql.contains("ADD COLUMN IF NOT EXISTS allowed_ips"));
/// ```
pub const POSTGRES_MIGRATION: &str = r#"-- keygate key store, schema version 3: records, and the digests of their keys.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = '{schema}') THEN
        CREATE SCHEMA "{schema}";
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS "{schema}".keygate_records (
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
    CONSTRAINT keygate_records_status CHECK (status IN ('active', 'disabled', 'revoked')),
    CONSTRAINT keygate_records_metadata CHECK (
        jsonb_typeof(metadata) = 'object'
        AND NOT jsonb_path_exists(metadata, '$.* ? (@.type() != "string")')
    )
);

CREATE INDEX IF NOT EXISTS keygate_records_owner ON "{schema}".keygate_records (owner, id);

CREATE TABLE IF NOT EXISTS "{schema}".keygate_digests (
    digest      bytea NOT NULL,
    record_id   text COLLATE "C" NOT NULL,
    retire_at   timestamptz,
    CONSTRAINT keygate_digests_pkey PRIMARY KEY (digest),
    CONSTRAINT keygate_digests_length CHECK (octet_length(digest) = 32),
    CONSTRAINT keygate_digests_record FOREIGN KEY (record_id)
        REFERENCES "{schema}".keygate_records (id) ON DELETE CASCADE
);

CREATE INDEX IF NOT EXISTS keygate_digests_record_id ON "{schema}".keygate_digests (record_id);

-- Version 2: tiers and credits.
ALTER TABLE "{schema}".keygate_records
    ADD COLUMN IF NOT EXISTS tier                    text,
    ADD COLUMN IF NOT EXISTS credits_remaining       bigint,
    ADD COLUMN IF NOT EXISTS credits_refill_amount   bigint,
    ADD COLUMN IF NOT EXISTS credits_refill_every_us bigint,
    ADD COLUMN IF NOT EXISTS credits_refilled_at     timestamptz;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_constraint
        WHERE conname = 'keygate_records_credits'
          AND conrelid = '"{schema}".keygate_records'::regclass
    ) THEN
        ALTER TABLE "{schema}".keygate_records ADD CONSTRAINT keygate_records_credits CHECK (
            (credits_remaining IS NULL AND credits_refilled_at IS NULL
             AND credits_refill_amount IS NULL AND credits_refill_every_us IS NULL)
            OR (credits_remaining IS NOT NULL AND credits_remaining >= 0
                AND credits_refilled_at IS NOT NULL
                AND ((credits_refill_amount IS NULL AND credits_refill_every_us IS NULL)
                     OR (credits_refill_amount IS NOT NULL AND credits_refill_amount >= 0
                         AND credits_refill_every_us IS NOT NULL
                         AND credits_refill_every_us > 0)))
        );
    END IF;
END
$$;

-- Version 3: the networks a key may be used from.
ALTER TABLE "{schema}".keygate_records
    ADD COLUMN IF NOT EXISTS allowed_ips cidr[];
"#;

/// The schema a store uses unless told otherwise ([`PostgresStore::schema`]).
const DEFAULT_SCHEMA: &str = "public";
/// The notification channel a store uses unless told otherwise ([`PostgresStore::channel`]).
const DEFAULT_CHANNEL: &str = "keygate_keys";
/// How long a lookup may take unless told otherwise ([`PostgresStore::timeout`]).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// The shortest wait for the watcher's connection: connecting and authenticating take longer
/// than a lookup on a warm connection.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The advisory lock [`PostgresStore::migrate`] holds while it runs ("keygate" in ASCII).
const MIGRATION_LOCK: i64 = 0x006b_6579_6761_7465;
/// How often the watcher checks [`Invalidate::is_closed`] while nothing happens.
const CLOSED_CHECK: Duration = Duration::from_secs(1);
/// The watcher's first wait between two reconnection attempts; it doubles after each failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The watcher's longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The longest grace a rotation stores: a longer one keeps the old keys for 100,000 years,
/// which fits PostgreSQL's times and is as good as forever.
const MAX_GRACE_MICROS: u64 = 100_000 * 365 * 86_400 * 1_000_000;
/// The earliest time written to the database (about 4685 BC; PostgreSQL's times start in
/// 4713 BC). Earlier ones are stored as this one.
const MIN_MICROS: i64 = -210_000_000_000_000_000;
/// Attempts at a key that is not registered yet (a collision of 190 random bits never happens;
/// this bounds the loop all the same).
const KEY_ATTEMPTS: usize = 8;

/// A key store in PostgreSQL, on your application's [`PgPool`]: every instance of a service
/// that reaches the database shares the same keys.
///
/// It is a [`KeyStore`] (one query per lookup, on the pool) and a [`KeyManager`] (issue,
/// insert, update, revoke, rotate, delete and purge, each in one transaction, with the same
/// rules as [`MemoryStore`](super::MemoryStore)). The tables are created by
/// [`migrate`](Self::migrate); their layout is in [`POSTGRES_MIGRATION`].
///
/// **Time is the database's.** A lookup compares the record's expiry and a rotated-out key's
/// deadline with PostgreSQL's `now()`: a key rotated out is not found once its grace is over
/// (while it runs, the key looks up with its expiry cut to the end of the grace, so that a cache
/// stops serving it on time), and a record the database deems expired comes back with its
/// `expires_at` set to the Unix epoch, so that the layer rejects it whatever the application
/// server's clock says ([`get`](KeyManager::get) and [`list`](KeyManager::list) show the
/// stored expiry). Rotation deadlines, creation and revocation times are set by the database
/// too. Times are stored to the microsecond. PostgreSQL's text holds no NUL character: a
/// scope or metadata with one is [`ManageError::Invalid`].
///
/// **Failure.** A lookup waits at most [`timeout`](Self::timeout) (default 1 s), then fails
/// with [`StoreError::Timeout`]; a database error is [`StoreError::Unavailable`]. Both answer
/// 503, never 401. The pool reconnects by itself after an outage; give it an
/// [`acquire_timeout`](sqlx::pool::PoolOptions::acquire_timeout) no longer than the lookup
/// timeout if lookups should fail fast while the database is away. Management calls fail with
/// [`ManageError::Unavailable`].
///
/// **Notifications.** Every change sends a `NOTIFY` on [`channel`](Self::channel) in its own
/// transaction (so it is only heard once committed): `id:<id>` when a record changed or was
/// deleted, `digest:<64 hex digits>` when a key was created. [`watch`](Self::watch) listens to
/// them and tells a cache (an [`Invalidate`]) what to forget, so that every instance's cache
/// sees a change made by any of them.
///
/// **Credits.** It is a [`CreditStore`]: a spend is one `UPDATE … RETURNING` statement that
/// applies a refill that came due, then takes the cost away only if enough credits remain,
/// which PostgreSQL checks again on the row as it is once it holds its lock; so spends from any
/// number of instances never take the count below zero. Refills are timed by the database's
/// clock. Spends and reads of the count wait at most the [`timeout`](Self::timeout), as
/// lookups do. Counts are kept up to [`MAX_CREDITS`](super::MAX_CREDITS).
///
/// Cloning is cheap: clones share the pool and the settings. `Debug` shows the settings, never
/// the connection's credentials.
///
/// ```no_run
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use keygate::auth::AuthLayer;
/// use keygate::key::{KeyFormat, KeyRecord};
/// use keygate::store::{KeyManager, PostgresStore};
/// use sqlx::postgres::PgPoolOptions;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = PgPoolOptions::new()
///     .acquire_timeout(Duration::from_secs(1))
///     .connect("postgres://app@127.0.0.1:5432/app")
///     .await?;
/// let store = PostgresStore::new(pool)
///     .key_format(KeyFormat::new("wk_live_")?)
///     .schema("keygate")
///     .timeout(Duration::from_millis(500));
/// store.migrate().await?;
///
/// let issued = store.issue(KeyRecord::new("key_1", "acme").with_scopes(["weather:read"])).await?;
/// println!("your key (shown once): {}", issued.key.expose_secret());
///
/// let app: Router = Router::new()
///     .route("/v1/current.json", get(|| async { "sunny" }))
///     .layer(AuthLayer::new(store));
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    settings: Arc<Settings>,
}

#[derive(Clone)]
struct Settings {
    format: KeyFormat,
    schema: Box<str>,
    channel: Arc<str>,
    timeout: Duration,
    sql: Arc<Sql>,
}

impl PostgresStore {
    /// A store on `pool`, in the schema `public`, notifying on `keygate_keys`, issuing keys of
    /// the format `kg_…`. Nothing is sent to the database until it is used; call
    /// [`migrate`](Self::migrate) once to create the tables.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            settings: Arc::new(Settings {
                format: KeyFormat::new("kg_").expect("a valid constant prefix"),
                schema: DEFAULT_SCHEMA.into(),
                channel: DEFAULT_CHANNEL.into(),
                timeout: DEFAULT_TIMEOUT,
                sql: Arc::new(Sql::new(DEFAULT_SCHEMA)),
            }),
        }
    }

    /// Issues keys of `format` (default `kg_…`); [`format`](Self::format) returns it.
    #[must_use]
    pub fn key_format(mut self, format: KeyFormat) -> Self {
        Arc::make_mut(&mut self.settings).format = format;
        self
    }

    /// The format of the keys this store issues.
    pub fn format(&self) -> &KeyFormat {
        &self.settings.format
    }

    /// Keeps the tables in the PostgreSQL schema `name` (default `public`), which
    /// [`migrate`](Self::migrate) creates if needed.
    ///
    /// # Panics
    ///
    /// If `name` is not a plain identifier: 1 to 63 lowercase ASCII letters, digits and `_`,
    /// not starting with a digit. It is written into SQL text, so this is checked once, at
    /// configuration.
    #[must_use]
    pub fn schema(mut self, name: &str) -> Self {
        assert!(
            is_plain_identifier(name),
            "a PostgreSQL schema for keygate is 1 to 63 lowercase ASCII letters, digits and '_', \
             not starting with a digit"
        );
        let settings = Arc::make_mut(&mut self.settings);
        settings.schema = name.into();
        settings.sql = Arc::new(Sql::new(name));
        self
    }

    /// Sends and listens for change notifications on the channel `name` (default
    /// `keygate_keys`). Stores that share tables must share the channel.
    ///
    /// # Panics
    ///
    /// If `name` is not a plain identifier (as for [`schema`](Self::schema)): a configuration
    /// mistake, found at start.
    #[must_use]
    pub fn channel(mut self, name: &str) -> Self {
        assert!(
            is_plain_identifier(name),
            "a PostgreSQL channel for keygate is 1 to 63 lowercase ASCII letters, digits and '_', \
             not starting with a digit"
        );
        Arc::make_mut(&mut self.settings).channel = name.into();
        self
    }

    /// How long a lookup may take, waiting for a connection included (default 1 s); a lookup
    /// still unanswered then fails with [`StoreError::Timeout`] (503).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.settings).timeout = timeout;
        self
    }

    /// The pool the store runs its queries on.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the schema, the tables and the indexes of [`POSTGRES_MIGRATION`] in the store's schema,
    /// if they are missing. Running it again, or from several instances at once, is fine: it
    /// runs in one transaction under an advisory lock, and changes nothing that exists.
    ///
    /// It needs the right to create tables in the schema (and to create the schema, when it
    /// does not exist).
    pub async fn migrate(&self) -> Result<(), ManageError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let result = self.migrate_in(&mut tx).await;
        finish(tx, result).await
    }

    async fn migrate_in(&self, conn: &mut PgConnection) -> Result<(), ManageError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        // Through `Executor::execute`, whose boxed future is `Send` for any caller.
        conn.execute(sqlx::raw_sql(&self.settings.sql.migration))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Listens for the store's change notifications and passes them to `sink` (usually a
    /// cache's invalidator): `invalidate_id` when a record changed, `invalidate_digest` when a
    /// key was created.
    ///
    /// Returns once listening, on a connection of its own (made with the pool's connection
    /// settings, outside the pool, so it never takes a connection from the queries), or with
    /// an error if it cannot connect and `LISTEN` now, within the store's timeout (at least
    /// 2 s; a refused connection is tried again until then, as the pool does). It then listens
    /// in a task of its own: when the connection is lost it connects again (waiting up to 1 s
    /// between attempts), and then calls `sink.invalidate_all()`, since it may have missed
    /// notifications meanwhile. The task ends when `sink.is_closed()` (checked at least once a
    /// second) or when the store's pool is closed.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the listener is a task).
    ///
    /// ```no_run
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use keygate::key::KeyDigest;
    /// use keygate::store::{Invalidate, PostgresStore};
    ///
    /// /// Counts the changes it hears of.
    /// #[derive(Default)]
    /// struct Changes(AtomicUsize);
    ///
    /// impl Invalidate for Changes {
    ///     fn invalidate_id(&self, _: &str) {
    ///         self.0.fetch_add(1, Ordering::Relaxed);
    ///     }
    ///     fn invalidate_digest(&self, _: &KeyDigest) {}
    ///     fn invalidate_all(&self) {}
    /// }
    ///
    /// # async fn run(store: PostgresStore) -> Result<(), keygate::store::StoreError> {
    /// store.watch(std::sync::Arc::new(Changes::default())).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn watch(&self, sink: impl Invalidate) -> Result<(), StoreError> {
        let watcher = Watcher {
            pool: self.pool.clone(),
            channel: self.settings.channel.clone(),
            connect_timeout: self.settings.timeout.max(MIN_CONNECT_TIMEOUT),
        };
        let listener = watcher.listen().await?;
        tokio::spawn(watcher.run(listener, sink));
        Ok(())
    }

    fn sql(&self) -> &Sql {
        &self.settings.sql
    }

    fn channel_name(&self) -> &str {
        &self.settings.channel
    }

    /// `NOTIFY`, in the transaction of `conn`.
    async fn notify(&self, conn: &mut PgConnection, payload: &str) -> Result<(), ManageError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(self.channel_name())
            .bind(payload)
            .execute(conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn insert_record(
        &self,
        digest: KeyDigest,
        record: KeyRecord,
    ) -> Result<KeyRecord, ManageError> {
        check_new_record(&record)?;
        check_storable(&record)?;
        if let Some(credits) = &record.credits {
            check_credits(credits)?;
        }
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let result = self.insert_in(&mut tx, &digest, &record).await;
        finish(tx, result).await
    }

    async fn insert_in(
        &self,
        conn: &mut PgConnection,
        digest: &KeyDigest,
        record: &KeyRecord,
    ) -> Result<KeyRecord, ManageError> {
        let (remaining, amount, every) = credit_params(record.credits.as_ref());
        let row = sqlx::query(&self.sql().insert_record)
            .bind(&record.id)
            .bind(&record.owner)
            .bind(scopes_vec(&record.scopes))
            .bind(record.quota.as_ref().map(ToString::to_string))
            .bind(status_text(record.status))
            .bind(record.expires_at.map(to_micros))
            .bind(record.created_at.map(to_micros))
            .bind(metadata_json(&record.metadata)?)
            .bind(record.tier.as_deref())
            .bind(remaining)
            .bind(amount)
            .bind(every)
            .bind(networks_vec(record.allowed_ips.as_ref()))
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
        let Some(row) = row else {
            return Err(ManageError::DuplicateId);
        };
        let stored = record_from_row(&row).map_err(ManageError::Unavailable)?;
        let added = sqlx::query(&self.sql().insert_digest)
            .bind(&digest.as_bytes()[..])
            .bind(&record.id)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        if added.rows_affected() == 0 {
            return Err(ManageError::DuplicateKey);
        }
        self.notify(conn, &digest_payload(digest)).await?;
        Ok(stored)
    }

    async fn issue_record(&self, record: KeyRecord) -> Result<IssuedKey, ManageError> {
        check_new_record(&record)?;
        for _ in 0..KEY_ATTEMPTS {
            let key = self.settings.format.generate();
            match self.insert_record(key.digest(), record.clone()).await {
                Ok(record) => return Ok(IssuedKey::new(key, record)),
                // A generated key that collides (never, with 190 random bits) gets another try.
                Err(ManageError::DuplicateKey) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ManageError::unavailable(
            "no new key could be generated: every one was registered already",
        ))
    }

    async fn get_record(&self, id: &str) -> Result<Option<KeyRecord>, ManageError> {
        if id.contains('\0') {
            return Ok(None); // no record has such an id: PostgreSQL's text cannot hold it
        }
        let row = sqlx::query(&self.sql().get)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|row| record_from_row(&row).map_err(ManageError::Unavailable))
            .transpose()
    }

    async fn list_records(&self, owner: &str, page: Page) -> Result<KeyPage, ManageError> {
        page.check()?;
        if owner.contains('\0') {
            return Ok(KeyPage::new(Vec::new(), page.limit));
        }
        // No id holds a NUL, so the ids after `a\0…` are the ids after `a`.
        let after = page
            .after
            .as_deref()
            .map(|after| after.split('\0').next().unwrap_or(""));
        let limit = i64::try_from(page.limit).unwrap_or(i64::MAX);
        let rows = sqlx::query(&self.sql().list)
            .bind(owner)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        let records = rows
            .iter()
            .map(record_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ManageError::Unavailable)?;
        Ok(KeyPage::new(records, page.limit))
    }

    /// The record `id`, locked until the end of the transaction of `conn`.
    async fn lock_record(
        &self,
        conn: &mut PgConnection,
        id: &str,
    ) -> Result<KeyRecord, ManageError> {
        if id.contains('\0') {
            return Err(ManageError::NotFound);
        }
        let row = sqlx::query(&self.sql().get_for_update)
            .bind(id)
            .fetch_optional(conn)
            .await
            .map_err(unavailable)?
            .ok_or(ManageError::NotFound)?;
        record_from_row(&row).map_err(ManageError::Unavailable)
    }

    async fn update_record(&self, id: &str, update: KeyUpdate) -> Result<KeyRecord, ManageError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let result = self.update_in(&mut tx, id, &update).await;
        finish(tx, result).await
    }

    async fn update_in(
        &self,
        conn: &mut PgConnection,
        id: &str,
        update: &KeyUpdate,
    ) -> Result<KeyRecord, ManageError> {
        let mut record = self.lock_record(conn, id).await?;
        update.apply(&mut record)?;
        check_storable(&record)?;
        let sets_credits = update.credits.is_some();
        if sets_credits && let Some(credits) = &record.credits {
            check_credits(credits)?;
        }
        let (remaining, amount, every) = credit_params(record.credits.as_ref());
        let row = sqlx::query(&self.sql().update)
            .bind(id)
            .bind(scopes_vec(&record.scopes))
            .bind(record.quota.as_ref().map(ToString::to_string))
            .bind(status_text(record.status))
            .bind(record.expires_at.map(to_micros))
            .bind(metadata_json(&record.metadata)?)
            .bind(record.tier.as_deref())
            .bind(sets_credits)
            .bind(remaining)
            .bind(amount)
            .bind(every)
            .bind(networks_vec(record.allowed_ips.as_ref()))
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?
            .ok_or(ManageError::NotFound)?;
        let stored = record_from_row(&row).map_err(ManageError::Unavailable)?;
        self.notify(conn, &id_payload(id)).await?;
        Ok(stored)
    }

    async fn rotate_record(&self, id: &str, grace: Duration) -> Result<IssuedKey, ManageError> {
        let grace =
            i64::try_from(grace.as_micros().min(u128::from(MAX_GRACE_MICROS))).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let result = self.rotate_in(&mut tx, id, grace).await;
        finish(tx, result).await
    }

    /// Rotates the record `id` with a grace of `grace` microseconds.
    async fn rotate_in(
        &self,
        conn: &mut PgConnection,
        id: &str,
        grace: i64,
    ) -> Result<IssuedKey, ManageError> {
        let record = self.lock_record(conn, id).await?;
        if record.status == KeyStatus::Revoked {
            return Err(ManageError::invalid("a revoked key cannot be rotated"));
        }
        // Keys whose grace is over are forgotten; a running grace may end sooner (a second
        // rotation with less grace, after a leak), never later.
        sqlx::query(&self.sql().forget_retired)
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        sqlx::query(&self.sql().start_grace)
            .bind(id)
            .bind(grace)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        for _ in 0..KEY_ATTEMPTS {
            let key = self.settings.format.generate();
            let added = sqlx::query(&self.sql().insert_digest)
                .bind(&key.digest().as_bytes()[..])
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            if added.rows_affected() == 1 {
                self.notify(conn, &id_payload(id)).await?;
                self.notify(conn, &digest_payload(&key.digest())).await?;
                return Ok(IssuedKey::new(key, record));
            }
        }
        Err(ManageError::unavailable(
            "no new key could be generated: every one was registered already",
        ))
    }

    async fn delete_record(&self, id: &str) -> Result<(), ManageError> {
        if id.contains('\0') {
            return Err(ManageError::NotFound);
        }
        // One statement: the deletion and its notification commit together.
        let deleted = sqlx::query(&self.sql().delete)
            .bind(id)
            .bind(self.channel_name())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        match deleted {
            Some(_) => Ok(()),
            None => Err(ManageError::NotFound),
        }
    }

    async fn purge_records(&self, before: SystemTime) -> Result<u64, ManageError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let result = self.purge_in(&mut tx, to_micros(before)).await;
        finish(tx, result).await
    }

    async fn purge_in(&self, conn: &mut PgConnection, before: i64) -> Result<u64, ManageError> {
        let purged: i64 = sqlx::query(&self.sql().purge_records)
            .bind(before)
            .bind(self.channel_name())
            .fetch_one(&mut *conn)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(unavailable)?;
        sqlx::query(&self.sql().purge_digests)
            .bind(before)
            .bind(self.channel_name())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(purged).unwrap_or(0))
    }
}

/// Commits `tx` when `result` is a success, and rolls it back at once otherwise, so that a
/// refused change releases its row locks before the call returns.
async fn finish<T>(
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    result: Result<T, ManageError>,
) -> Result<T, ManageError> {
    match result {
        Ok(value) => {
            tx.commit().await.map_err(unavailable)?;
            Ok(value)
        }
        Err(e) => {
            // The change failed already; a failed rollback ends with the connection.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.settings.schema)
            .field("channel", &self.settings.channel)
            .field("format", &self.settings.format)
            .field("timeout", &self.settings.timeout)
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl KeyStore for PostgresStore {
    fn lookup(&self, digest: &KeyDigest) -> Lookup {
        let pool = self.pool.clone();
        let sql = self.settings.sql.clone();
        let timeout = self.settings.timeout;
        let digest = *digest;
        Lookup::pending(crate::metrics::timed_lookup(
            crate::metrics::Store::Postgres,
            async move {
                match tokio::time::timeout(timeout, find(&pool, &sql.lookup, &digest)).await {
                    Ok(found) => found,
                    Err(_) => Err(StoreError::Timeout),
                }
            },
        ))
    }
}

/// Each call is one statement on the pool, within the store's [`timeout`](PostgresStore::timeout)
/// (then [`StoreError::Timeout`]), on the database's clock.
impl CreditStore for PostgresStore {
    fn spend(&self, id: &str, cost: u32) -> CreditCheck {
        if id.contains('\0') {
            return MaybeReady::ready(Ok(CreditOutcome::NoBudget));
        }
        let pool = self.pool.clone();
        let sql = self.settings.sql.clone();
        let timeout = self.settings.timeout;
        let id = id.to_owned();
        MaybeReady::pending(async move {
            let spend = async {
                sqlx::query(&sql.spend)
                    .bind(&id)
                    .bind(i64::from(cost))
                    .fetch_optional(&pool)
                    .await
            };
            let row = match tokio::time::timeout(timeout, spend).await {
                Ok(row) => row.map_err(StoreError::unavailable)?,
                Err(_) => return Err(StoreError::Timeout),
            };
            spend_outcome(row.as_ref()).map_err(StoreError::Unavailable)
        })
    }

    fn credits(&self, id: &str) -> MaybeReady<Result<Option<Credits>, StoreError>> {
        if id.contains('\0') {
            return MaybeReady::ready(Ok(None));
        }
        let pool = self.pool.clone();
        let sql = self.settings.sql.clone();
        let timeout = self.settings.timeout;
        let id = id.to_owned();
        MaybeReady::pending(async move {
            let read = async {
                sqlx::query(&sql.credits)
                    .bind(&id)
                    .fetch_optional(&pool)
                    .await
            };
            let row = match tokio::time::timeout(timeout, read).await {
                Ok(row) => row.map_err(StoreError::unavailable)?,
                Err(_) => return Err(StoreError::Timeout),
            };
            match row {
                Some(row) => credits_from_row(&row, 0).map_err(|()| {
                    StoreError::unavailable(format!(
                        "record {id:?}: the credits columns are not credits"
                    ))
                }),
                None => Ok(None),
            }
        })
    }
}

/// What the row of a spend says: the count left when it spent, whether the key has a budget,
/// and when the next refill comes (µs).
fn spend_outcome(row: Option<&PgRow>) -> Result<CreditOutcome, BoxError> {
    let Some(row) = row else {
        return Ok(CreditOutcome::NoBudget);
    };
    let spent: Option<i64> = row.try_get(0)?;
    let budget: bool = row.try_get(1)?;
    let refill_in: Option<i64> = row.try_get(2)?;
    Ok(match spent {
        Some(remaining) => CreditOutcome::Spent {
            remaining: u64::try_from(remaining)
                .map_err(|_| "the credits column holds a negative count")?,
        },
        None if !budget => CreditOutcome::NoBudget,
        None => CreditOutcome::Exhausted {
            refill_in: refill_in
                .map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0).max(1))),
        },
    })
}

async fn find(pool: &PgPool, sql: &str, digest: &KeyDigest) -> LookupResult {
    let row = sqlx::query(sql)
        .bind(&digest.as_bytes()[..])
        .fetch_optional(pool)
        .await
        .map_err(StoreError::unavailable)?;
    match row {
        Some(row) => record_from_row(&row)
            .map(|record| Some(Arc::new(record)))
            .map_err(StoreError::Unavailable),
        None => Ok(None),
    }
}

/// Every call is one transaction (one statement for `get`, `list` and `delete`); a change
/// notifies [`PostgresStore::channel`] on commit.
impl KeyManager for PostgresStore {
    fn format(&self) -> &KeyFormat {
        &self.settings.format
    }

    fn issue(&self, record: KeyRecord) -> ManageFuture<'_, IssuedKey> {
        Box::pin(self.issue_record(record))
    }

    fn insert(&self, digest: KeyDigest, record: KeyRecord) -> ManageFuture<'_, KeyRecord> {
        Box::pin(self.insert_record(digest, record))
    }

    fn get(&self, id: &str) -> ManageFuture<'_, Option<KeyRecord>> {
        let id = id.to_owned();
        Box::pin(async move { self.get_record(&id).await })
    }

    fn list(&self, owner: &str, page: Page) -> ManageFuture<'_, KeyPage> {
        let owner = owner.to_owned();
        Box::pin(async move { self.list_records(&owner, page).await })
    }

    fn update(&self, id: &str, update: KeyUpdate) -> ManageFuture<'_, KeyRecord> {
        let id = id.to_owned();
        Box::pin(async move { self.update_record(&id, update).await })
    }

    fn rotate(&self, id: &str, grace: Duration) -> ManageFuture<'_, IssuedKey> {
        let id = id.to_owned();
        Box::pin(async move { self.rotate_record(&id, grace).await })
    }

    fn delete(&self, id: &str) -> ManageFuture<'_, ()> {
        let id = id.to_owned();
        Box::pin(async move { self.delete_record(&id).await })
    }

    fn purge(&self, before: SystemTime) -> ManageFuture<'_, u64> {
        Box::pin(self.purge_records(before))
    }
}

// ---------------------------------------------------------------------------------------------
// Notifications

/// What the watcher's task needs to (re)connect.
struct Watcher {
    /// The store's pool: its connection settings, and whether it was closed.
    pool: PgPool,
    channel: Arc<str>,
    connect_timeout: Duration,
}

impl Watcher {
    /// A new connection, outside the store's pool, listening on the channel.
    ///
    /// Each listener gets a pool of its own (of one connection, with no background task), so
    /// that a dead connection still being closed never holds up the next one.
    async fn listen(&self) -> Result<PgListener, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(self.connect_timeout)
            .connect_lazy_with((*self.pool.connect_options()).clone());
        let connect = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            // A lost connection makes `try_recv` return at once; this task reconnects.
            listener.eager_reconnect(false);
            listener.listen(&self.channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(listener)) => Ok(listener),
            Ok(Err(e)) => Err(StoreError::unavailable(e)),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    fn stopped(&self, sink: &impl Invalidate) -> bool {
        sink.is_closed() || self.pool.is_closed()
    }

    /// `future`, unless the sink closes (or the store's pool is closed) first.
    async fn unless_stopped<F: Future>(
        &self,
        sink: &impl Invalidate,
        future: F,
    ) -> Option<F::Output> {
        let mut future = std::pin::pin!(future);
        loop {
            tokio::select! {
                out = &mut future => return Some(out),
                () = tokio::time::sleep(CLOSED_CHECK) => {
                    if self.stopped(sink) {
                        return None;
                    }
                }
            }
        }
    }

    async fn run(self, mut listener: PgListener, sink: impl Invalidate) {
        loop {
            // Pass notifications on until the connection is lost.
            loop {
                match self.unless_stopped(&sink, listener.try_recv()).await {
                    None => return,
                    Some(Ok(Some(notification))) => deliver(&sink, notification.payload()),
                    Some(Ok(None)) => {
                        tracing::warn!(
                            target: "keygate",
                            channel = &*self.channel,
                            "PostgreSQL key notifications: connection lost; reconnecting"
                        );
                        break;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(
                            target: "keygate",
                            channel = &*self.channel,
                            error = %Chain(&e),
                            "PostgreSQL key notifications: connection failed; reconnecting"
                        );
                        break;
                    }
                }
                if self.stopped(&sink) {
                    return;
                }
            }
            drop(listener);
            // Connect again, waiting longer after each failure, up to MAX_BACKOFF.
            let mut backoff = FIRST_BACKOFF;
            listener = loop {
                if self.stopped(&sink) {
                    return;
                }
                match self.unless_stopped(&sink, self.listen()).await {
                    None => return,
                    Some(Ok(listener)) => break listener,
                    Some(Err(e)) => {
                        tracing::debug!(
                            target: "keygate",
                            channel = &*self.channel,
                            error = %Chain(&e),
                            "PostgreSQL key notifications: reconnection failed"
                        );
                    }
                }
                if self
                    .unless_stopped(&sink, tokio::time::sleep(backoff))
                    .await
                    .is_none()
                {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            };
            // Whatever changed while nobody listened is unknown: forget everything.
            sink.invalidate_all();
            tracing::info!(
                target: "keygate",
                channel = &*self.channel,
                "PostgreSQL key notifications: listening again; every cached key was invalidated"
            );
        }
    }
}

/// Passes one notification's payload on to `sink`.
fn deliver(sink: &impl Invalidate, payload: &str) {
    if let Some(id) = payload.strip_prefix("id:").filter(|id| !id.is_empty()) {
        sink.invalidate_id(id);
    } else if let Some(digest) = payload
        .strip_prefix("digest:")
        .and_then(KeyDigest::from_hex)
    {
        sink.invalidate_digest(&digest);
    } else {
        tracing::debug!(
            target: "keygate",
            len = payload.len(),
            "PostgreSQL key notifications: ignored a payload that is neither id:… nor digest:…"
        );
    }
}

fn id_payload(id: &str) -> String {
    format!("id:{id}")
}

fn digest_payload(digest: &KeyDigest) -> String {
    format!("digest:{}", digest.to_hex())
}

// ---------------------------------------------------------------------------------------------
// SQL

/// Every statement of a store, for its schema, written once.
struct Sql {
    migration: String,
    lookup: String,
    spend: String,
    credits: String,
    get: String,
    get_for_update: String,
    list: String,
    insert_record: String,
    insert_digest: String,
    update: String,
    forget_retired: String,
    start_grace: String,
    delete: String,
    purge_records: String,
    purge_digests: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
        let records = format!(r#""{schema}".keygate_records"#);
        let digests = format!(r#""{schema}".keygate_digests"#);
        let expires = micros("r.expires_at");
        let created = micros("r.created_at");
        // The credits as of now: a refill that came due applied (the stored row is brought up
        // to date by the next spend).
        let elapsed = "(extract(epoch FROM (now() - r.credits_refilled_at)) * 1000000)::bigint";
        let due = format!(
            "(r.credits_refill_every_us IS NOT NULL AND {elapsed} >= r.credits_refill_every_us)"
        );
        let available =
            format!("CASE WHEN {due} THEN r.credits_refill_amount ELSE r.credits_remaining END");
        let credits = format!(
            "r.tier, {available}, r.credits_refill_amount, r.credits_refill_every_us, \
             r.allowed_ips::text[]"
        );
        let columns = format!(
            "r.id, r.owner, r.scopes, r.quota, r.status, {expires}, {created}, r.metadata::text, \
             {credits}"
        );
        // A lookup's expiry: the record's, cut to the end of the key's grace when it is rotated
        // out (so that a cache stops serving it on time), and the epoch once the database's
        // clock says it is past.
        let until = "LEAST(r.expires_at, d.retire_at)";
        let lookup_columns = format!(
            "r.id, r.owner, r.scopes, r.quota, r.status, \
             CASE WHEN {until} <= now() THEN 0::bigint ELSE {until_us} END, \
             {created}, r.metadata::text, {credits}",
            until_us = micros(until),
        );
        // When the next refill comes, from the row as it is: the interval less the time into
        // the current one.
        let refill_in = format!(
            "CASE WHEN {elapsed} < 0 THEN r.credits_refill_every_us - {elapsed} \
                  ELSE r.credits_refill_every_us - {elapsed} % r.credits_refill_every_us END"
        );
        Self {
            migration: POSTGRES_MIGRATION.replace("{schema}", schema),
            lookup: format!(
                "SELECT {lookup_columns} FROM {digests} d JOIN {records} r ON r.id = d.record_id \
                 WHERE d.digest = $1 AND (d.retire_at IS NULL OR d.retire_at > now())"
            ),
            // One statement: the update spends (a refill that came due applied first) when
            // enough credits remain, re-checked on the row as it is once its lock is had; the
            // select tells a key without a budget from one with too few credits, and when the
            // next refill comes.
            spend: format!(
                "WITH spent AS ( \
                   UPDATE {records} AS r SET \
                     credits_remaining = {available} - $2::bigint, \
                     credits_refilled_at = CASE WHEN {due} \
                       THEN r.credits_refilled_at + ({elapsed} / r.credits_refill_every_us \
                            * r.credits_refill_every_us) * interval '1 microsecond' \
                       ELSE r.credits_refilled_at END \
                   WHERE r.id = $1 AND r.credits_remaining IS NOT NULL \
                     AND {available} >= $2::bigint \
                   RETURNING r.credits_remaining) \
                 SELECT (SELECT credits_remaining FROM spent), \
                        r.credits_remaining IS NOT NULL, \
                        CASE WHEN r.credits_refill_every_us IS NOT NULL \
                              AND r.credits_refill_amount >= $2::bigint THEN {refill_in} END \
                 FROM {records} r WHERE r.id = $1"
            ),
            credits: format!(
                "SELECT {available}, r.credits_refill_amount, r.credits_refill_every_us \
                 FROM {records} r WHERE r.id = $1"
            ),
            get: format!("SELECT {columns} FROM {records} r WHERE r.id = $1"),
            get_for_update: format!("SELECT {columns} FROM {records} r WHERE r.id = $1 FOR UPDATE"),
            list: format!(
                "SELECT {columns} FROM {records} r \
                 WHERE r.owner = $1 AND ($2::text IS NULL OR r.id > $2::text) \
                 ORDER BY r.id LIMIT $3"
            ),
            insert_record: format!(
                "INSERT INTO {records} AS r \
                 (id, owner, scopes, quota, status, expires_at, created_at, revoked_at, metadata, \
                  tier, credits_remaining, credits_refill_amount, credits_refill_every_us, \
                  credits_refilled_at, allowed_ips) \
                 VALUES ($1, $2, $3, $4, $5::text, {at6}, COALESCE({at7}, now()), \
                         CASE WHEN $5::text = 'revoked' THEN now() END, $8::jsonb, \
                         $9::text, $10::bigint, $11::bigint, $12::bigint, \
                         CASE WHEN $10::bigint IS NULL THEN NULL ELSE now() END, \
                         $13::text[]::cidr[]) \
                 ON CONFLICT (id) DO NOTHING \
                 RETURNING {columns}",
                at6 = timestamp("$6"),
                at7 = timestamp("$7"),
            ),
            insert_digest: format!(
                "INSERT INTO {digests} (digest, record_id) VALUES ($1, $2) \
                 ON CONFLICT (digest) DO NOTHING"
            ),
            update: format!(
                "UPDATE {records} AS r SET scopes = $2, quota = $3, status = $4::text, \
                 expires_at = {at5}, metadata = $6::jsonb, \
                 revoked_at = CASE WHEN $4::text = 'revoked' THEN COALESCE(r.revoked_at, now()) \
                                   ELSE r.revoked_at END, \
                 tier = $7::text, \
                 credits_remaining = CASE WHEN $8::boolean THEN $9::bigint \
                                          ELSE r.credits_remaining END, \
                 credits_refill_amount = CASE WHEN $8::boolean THEN $10::bigint \
                                              ELSE r.credits_refill_amount END, \
                 credits_refill_every_us = CASE WHEN $8::boolean THEN $11::bigint \
                                                ELSE r.credits_refill_every_us END, \
                 credits_refilled_at = CASE WHEN NOT $8::boolean THEN r.credits_refilled_at \
                                            WHEN $9::bigint IS NULL THEN NULL ELSE now() END, \
                 allowed_ips = $12::text[]::cidr[] \
                 WHERE r.id = $1 RETURNING {columns}",
                at5 = timestamp("$5"),
            ),
            forget_retired: format!(
                "DELETE FROM {digests} WHERE record_id = $1 AND retire_at <= now()"
            ),
            start_grace: format!(
                "UPDATE {digests} SET retire_at = now() + $2::bigint * interval '1 microsecond' \
                 WHERE record_id = $1 \
                 AND (retire_at IS NULL OR retire_at > now() + $2::bigint * interval '1 microsecond')"
            ),
            delete: format!(
                "WITH gone AS (DELETE FROM {records} WHERE id = $1 RETURNING id) \
                 SELECT pg_notify($2, 'id:' || id)::text FROM gone"
            ),
            // pg_notify is volatile, so PostgreSQL evaluates it for every row even where only
            // the rows are counted.
            purge_records: format!(
                "WITH gone AS (DELETE FROM {records} \
                               WHERE revoked_at < {before} OR expires_at < {before} \
                               RETURNING id) \
                 SELECT count(*) FROM (SELECT pg_notify($2, 'id:' || id) FROM gone) AS notified",
                before = timestamp("$1"),
            ),
            purge_digests: format!(
                "WITH gone AS (DELETE FROM {digests} \
                               WHERE retire_at < {before} AND retire_at <= now() \
                               RETURNING record_id) \
                 SELECT count(*) FROM \
                   (SELECT pg_notify($2, 'id:' || record_id) \
                      FROM (SELECT DISTINCT record_id FROM gone) AS ids) AS notified",
                before = timestamp("$1"),
            ),
        }
    }
}

/// SQL for a `timestamptz` column as microseconds since the Unix epoch (`bigint`), held
/// within times a `SystemTime` and a `bigint` both hold (`infinity` becomes the year 290000).
fn micros(column: &str) -> String {
    format!(
        "CASE WHEN {column} IS NULL THEN NULL ELSE \
         round(extract(epoch FROM LEAST(GREATEST({column}, \
             timestamptz '4000-01-01 00:00:00+00 BC'), \
             timestamptz '290000-01-01 00:00:00+00')) * 1000000)::bigint END"
    )
}

/// SQL for the `timestamptz` of the microseconds since the Unix epoch in the `bigint`
/// parameter `param` (`NULL` stays `NULL`).
fn timestamp(param: &str) -> String {
    format!(
        "(to_timestamp(({param}::bigint / 1000000)::double precision) \
          + ({param}::bigint % 1000000) * interval '1 microsecond')"
    )
}

/// Whether `name` may be written into SQL text as an identifier: 1 to 63 lowercase ASCII
/// letters, digits and `_`, not starting with a digit.
fn is_plain_identifier(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && !bytes[0].is_ascii_digit()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

// ---------------------------------------------------------------------------------------------
// Rows and values

fn unavailable(e: sqlx::Error) -> ManageError {
    ManageError::unavailable(e)
}

fn record_from_row(row: &PgRow) -> Result<KeyRecord, BoxError> {
    let id: String = row.try_get(0)?;
    let owner: String = row.try_get(1)?;
    let scopes: Vec<String> = row.try_get(2)?;
    let quota: Option<String> = row.try_get(3)?;
    let status: String = row.try_get(4)?;
    let expires_at: Option<i64> = row.try_get(5)?;
    let created_at: Option<i64> = row.try_get(6)?;
    let metadata: String = row.try_get(7)?;
    let tier: Option<String> = row.try_get(8)?;
    let credits = credits_from_row(row, 9)
        .map_err(|()| format!("record {id:?}: the credits columns are not credits"))?;
    let allowed_ips: Option<Vec<String>> = row.try_get(12)?;
    let allowed_ips = allowed_ips
        .map(Networks::parse)
        .transpose()
        .map_err(|e| format!("record {id:?}: the allowed_ips column: {e}"))?;
    let quota = match quota {
        Some(text) => Some(
            text.parse::<Limits>()
                .map_err(|e| format!("record {id:?}: the quota column is not a quota: {e}"))?,
        ),
        None => None,
    };
    let status = match status.as_str() {
        "active" => KeyStatus::Active,
        "disabled" => KeyStatus::Disabled,
        "revoked" => KeyStatus::Revoked,
        _ => return Err(format!("record {id:?}: the status column is not a status").into()),
    };
    let metadata: BTreeMap<String, String> = serde_json::from_str(&metadata).map_err(|e| {
        format!("record {id:?}: the metadata column is not an object of strings: {e}")
    })?;
    let mut record = KeyRecord::new(id, owner)
        .with_scopes(scopes)
        .with_status(status);
    record.quota = quota;
    record.tier = tier;
    record.credits = credits;
    record.allowed_ips = allowed_ips;
    record.expires_at = expires_at.map(from_micros);
    record.created_at = created_at.map(from_micros);
    record.metadata = metadata;
    Ok(record)
}

/// The credits in the columns `at` (remaining), `at + 1` (refill amount) and `at + 2` (refill
/// interval, µs) of `row`.
fn credits_from_row(row: &PgRow, at: usize) -> Result<Option<Credits>, ()> {
    let remaining: Option<i64> = row.try_get(at).map_err(drop)?;
    let amount: Option<i64> = row.try_get(at + 1).map_err(drop)?;
    let every: Option<i64> = row.try_get(at + 2).map_err(drop)?;
    let Some(remaining) = remaining else {
        return Ok(None);
    };
    let mut credits = Credits::new(u64::try_from(remaining).map_err(drop)?);
    credits.refill = refill_of(amount, every)?;
    Ok(Some(credits))
}

/// The credit columns' parameters of `credits`: remaining, refill amount, refill interval (µs).
fn credit_params(credits: Option<&Credits>) -> (Option<i64>, Option<i64>, Option<i64>) {
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    match credits {
        None => (None, None, None),
        Some(c) => (
            Some(count(c.remaining)),
            c.refill.map(|r| count(r.amount)),
            c.refill.map(|r| every_micros(r.every)),
        ),
    }
}

/// PostgreSQL's `text` and `jsonb` cannot hold NUL characters: a record whose scopes or
/// metadata have one is refused as [`ManageError::Invalid`] (ids and owners never have one,
/// by [`check_new_record`]).
fn check_storable(record: &KeyRecord) -> Result<(), ManageError> {
    let nul = |s: &str| s.contains('\0');
    if record.scopes.iter().any(nul) {
        return Err(ManageError::invalid("a scope has a NUL character"));
    }
    if record.metadata.iter().any(|(k, v)| nul(k) || nul(v)) {
        return Err(ManageError::invalid("the metadata has a NUL character"));
    }
    if record.tier.as_deref().is_some_and(nul) {
        return Err(ManageError::invalid("the tier has a NUL character"));
    }
    Ok(())
}

/// The `allowed_ips` parameter: the networks in CIDR notation, which PostgreSQL's `cidr` reads
/// as they are (their bits after the prefix are cleared already).
fn networks_vec(networks: Option<&Networks>) -> Option<Vec<String>> {
    networks.map(|networks| networks.iter().map(|net| net.to_string()).collect())
}

fn scopes_vec(scopes: &Scopes) -> Vec<String> {
    scopes.iter().map(str::to_owned).collect()
}

fn status_text(status: KeyStatus) -> &'static str {
    match status {
        KeyStatus::Active => "active",
        KeyStatus::Disabled => "disabled",
        KeyStatus::Revoked => "revoked",
    }
}

fn metadata_json(metadata: &BTreeMap<String, String>) -> Result<String, ManageError> {
    serde_json::to_string(metadata).map_err(ManageError::unavailable)
}

/// Microseconds since the Unix epoch, held within what PostgreSQL stores.
fn to_micros(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros())
            .map_or(MIN_MICROS, |us| (-us).max(MIN_MICROS)),
    }
}

/// The time `us` microseconds after the Unix epoch (before it, when negative). A time the
/// platform cannot hold becomes the epoch: long past, so an expiry read that way rejects.
fn from_micros(us: i64) -> SystemTime {
    let offset = Duration::from_micros(us.unsigned_abs());
    let at = if us >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    at.unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_identifiers() {
        for ok in ["public", "keygate", "_x", "a1_b2", &"a".repeat(63)] {
            assert!(is_plain_identifier(ok), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "Public",
            "a-b",
            "a b",
            "a\"b",
            "a;drop",
            "é",
            &"a".repeat(64),
        ] {
            assert!(!is_plain_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn micros_round_trip() {
        for us in [0, 1, -1, 1_700_000_000_123_456, -1_500_000, i64::MAX] {
            assert_eq!(to_micros(from_micros(us)), us, "{us}");
        }
        assert_eq!(to_micros(from_micros(i64::MIN)), MIN_MICROS);
        let now = SystemTime::now();
        let back = from_micros(to_micros(now));
        assert!(back <= now && now.duration_since(back).unwrap() < Duration::from_micros(1));
    }

    #[test]
    fn payloads() {
        struct Seen(std::sync::Mutex<Vec<String>>);
        impl Invalidate for Seen {
            fn invalidate_id(&self, id: &str) {
                self.0.lock().unwrap().push(format!("id {id}"));
            }
            fn invalidate_digest(&self, digest: &KeyDigest) {
                self.0
                    .lock()
                    .unwrap()
                    .push(format!("digest {}", digest.to_hex()));
            }
            fn invalidate_all(&self) {
                self.0.lock().unwrap().push("all".into());
            }
        }
        let seen = Seen(Default::default());
        let digest = KeyDigest::of("k");
        deliver(&seen, &id_payload("key_1"));
        deliver(&seen, &digest_payload(&digest));
        for bad in ["", "id:", "digest:", "digest:zz", "other:1", "key_1"] {
            deliver(&seen, bad);
        }
        assert_eq!(
            *seen.0.lock().unwrap(),
            ["id key_1".to_owned(), format!("digest {}", digest.to_hex())]
        );
    }

    fn send<T: Send>(_: &T) {}

    #[tokio::test]
    async fn futures_are_send() {
        let store = PostgresStore::new(
            PgPoolOptions::new()
                .connect_lazy("postgres://127.0.0.1:1/none")
                .unwrap(),
        );
        send(&store.migrate());
        send(&store.watch(std::sync::Arc::new(NoSink)));
        send(&store.lookup(&KeyDigest::of("k")));
    }

    struct NoSink;
    impl Invalidate for NoSink {
        fn invalidate_id(&self, _: &str) {}
        fn invalidate_digest(&self, _: &KeyDigest) {}
        fn invalidate_all(&self) {}
    }

    #[test]
    fn migration_is_written_for_the_schema() {
        let sql = Sql::new("tenant_a");
        assert!(!sql.migration.contains("{schema}"));
        assert!(sql.migration.contains(r#""tenant_a".keygate_digests"#));
        assert!(sql.lookup.contains(r#""tenant_a".keygate_records"#));
    }

    #[tokio::test]
    #[should_panic(expected = "PostgreSQL schema")]
    async fn quoted_schema_is_refused() {
        let pool = PgPoolOptions::new()
            .connect_lazy("postgres://127.0.0.1:1/none")
            .unwrap();
        let _ = PostgresStore::new(pool).schema("x\"; DROP TABLE y; --");
    }
}
