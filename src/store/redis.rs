//! The Redis key store (feature `redis`): key records shared by every process that talks to the
//! same Redis, with change notifications over pub/sub.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use ::redis::{Client, FromRedisValue, Msg, RedisError, Script, ScriptInvocation};
use futures_core::Stream;
use serde::{Deserialize, Serialize};

use super::credits::{Ledger, check_credits, every_micros, refill_of};
use super::manager::check_new_record;
use super::{
    CreditCheck, CreditOutcome, CreditStore, Invalidate, IssuedKey, KeyManager, KeyPage, KeyStore,
    KeyUpdate, Lookup, LookupResult, ManageError, ManageFuture, Page, StoreError,
};
use crate::client_addr::Networks;
use crate::key::{Credits, KeyDigest, KeyFormat, KeyRecord, KeyStatus, Scopes};
use crate::metrics::{RedisOp, timed_redis};
use crate::{Limits, MaybeReady};

/// The key prefix a [`RedisStore`] uses unless told otherwise ([`RedisStore::prefix`]).
const DEFAULT_PREFIX: &str = "keygate:keys:";

/// How long a lookup waits unless told otherwise ([`RedisStore::timeout`]).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

// How long `RedisStore::connect` and each (re)subscription of a watcher wait for Redis.
use crate::redis_conn::CONNECT_WAIT;

/// How long one round trip of a management call may take.
const MANAGE_WAIT: Duration = Duration::from_secs(5);

/// How often a change that raced with another one is tried again before the call gives up.
const MAX_ATTEMPTS: usize = 64;

/// How many records a purge reads at a time.
const PURGE_BATCH: usize = 200;

/// How often a watcher checks whether its sink is closed, whatever the traffic.
const CLOSED_CHECK: Duration = Duration::from_secs(1);

/// How long a watcher's subscription may stay silent before it pings Redis, and how long it
/// waits for the answer: a connection that died without closing is found out this way.
const PING_AFTER: Duration = Duration::from_secs(10);
const PING_WAIT: Duration = Duration::from_secs(3);

/// The first and the longest pause between two reconnection attempts of a watcher.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A thousand years, in microseconds: the longest grace a rotation gives.
const THOUSAND_YEARS_US: u64 = 1000 * 365 * 86_400 * 1_000_000;

// Layout, under the prefix P (see the type's documentation):
//   P d:{hex}    hash: id (the record's key part), retire (µs since the epoch, Redis's clock)
//   P r:{id}     hash: id, owner, okey (the owner's key part), record (JSON), created (ns),
//                      revoked (µs), digests (hex, newest first, space-separated), ver, and
//                      for a key with a budget: credits (the count as of refilled),
//                      refilled (µs), refill_amount and refill_every (µs) when refilled
//   P o:{owner}  sorted set of the owner's ids, all of score 0
//   P ids        sorted set of every id, all of score 0
//   P events     the pub/sub channel
// Times that scripts compare are microseconds of Redis's `TIME`, exact in Lua's doubles.

/// Resolves a digest to its record, checking a rotated-out key's retire time against Redis's
/// clock.
const LOOKUP_LUA: &str = r"-- keygate RedisStore: look a key up.
-- KEYS[1]: the key's digest entry. ARGV[1]: the prefix of record entries.
-- Returns {record JSON, created, retire, credits, refill_amount, refill_every, refilled, now},
-- or nil for an unknown or retired key.
local key = redis.call('HMGET', KEYS[1], 'id', 'retire')
if not key[1] then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if key[2] and tonumber(key[2]) <= now then return false end
local record = redis.call('HMGET', ARGV[1] .. key[1], 'record', 'created',
  'credits', 'refill_amount', 'refill_every', 'refilled')
if not record[1] then return false end
return {record[1], record[2], key[2], record[3], record[4], record[5], record[6],
  string.format('%.0f', now)}
";

/// Creates a record with one key.
const INSERT_LUA: &str = r"-- keygate RedisStore: create a record with one key.
-- KEYS: the record, the key's digest entry, the owner's index, the index of ids.
-- ARGV: id, owner, owner's key part, record JSON, created (ns, or '' for now), revoked ('1' or
-- '0'), digest (hex), id's key part, channel, credits ('' for none), refill amount and refill
-- interval (µs; '' for none).
-- Returns {0, created}, {1, ''} for a taken id, {2, ''} for a taken key.
if redis.replicate_commands then redis.replicate_commands() end
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, ''} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {2, ''} end
local t = redis.call('TIME')
local micros = t[1] .. string.format('%06d', tonumber(t[2]))
local created = ARGV[5]
if created == '' then created = micros .. '000' end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'owner', ARGV[2], 'okey', ARGV[3],
  'record', ARGV[4], 'created', created, 'digests', ARGV[7], 'ver', 1)
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'revoked', micros) end
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[1], 'credits', ARGV[10], 'refilled', micros)
  if ARGV[11] ~= '' then
    redis.call('HSET', KEYS[1], 'refill_amount', ARGV[11], 'refill_every', ARGV[12])
  end
end
redis.call('HSET', KEYS[2], 'id', ARGV[8])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
redis.call('PUBLISH', ARGV[9], 'digest:' .. ARGV[7])
return {0, created}
";

/// Replaces a record's fields if it is still the version that was read.
const UPDATE_LUA: &str = r"-- keygate RedisStore: replace a record's fields.
-- KEYS[1]: the record. ARGV: the version read, the new record JSON, revoked ('1' or '0'),
-- channel, credits ('keep', or 'set' to set them to the next three), credits ('' for none),
-- refill amount and refill interval (µs; '' for none).
-- Returns 0, 1 for no such record, 2 when it changed since it was read.
if redis.replicate_commands then redis.replicate_commands() end
local f = redis.call('HMGET', KEYS[1], 'ver', 'id')
if not f[1] then return 1 end
if f[1] ~= ARGV[1] then return 2 end
redis.call('HSET', KEYS[1], 'record', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'ver', 1)
if ARGV[3] == '1' and redis.call('HEXISTS', KEYS[1], 'revoked') == 0 then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'revoked', t[1] .. string.format('%06d', tonumber(t[2])))
end
if ARGV[5] == 'set' then
  redis.call('HDEL', KEYS[1], 'credits', 'refill_amount', 'refill_every', 'refilled')
  if ARGV[6] ~= '' then
    local t = redis.call('TIME')
    redis.call('HSET', KEYS[1], 'credits', ARGV[6],
      'refilled', t[1] .. string.format('%06d', tonumber(t[2])))
    if ARGV[7] ~= '' then
      redis.call('HSET', KEYS[1], 'refill_amount', ARGV[7], 'refill_every', ARGV[8])
    end
  end
end
redis.call('PUBLISH', ARGV[4], 'id:' .. f[2])
return 0
";

/// Spends a key's credits, applying a refill that came due first.
const SPEND_LUA: &str = r"-- keygate RedisStore: spend credits.
-- KEYS[1]: the record. ARGV[1]: the cost.
-- Returns {0} for no budget, {1, remaining} when spent, {2, µs to the next refill or -1} when
-- too few credits remain (nothing is spent).
if redis.replicate_commands then redis.replicate_commands() end
local f = redis.call('HMGET', KEYS[1], 'credits', 'refill_amount', 'refill_every', 'refilled')
local remaining = tonumber(f[1] or '')
if not remaining then return {0} end
local cost = tonumber(ARGV[1])
local amount = tonumber(f[2] or '')
local every = tonumber(f[3] or '')
local refilled = tonumber(f[4] or '')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local refill = amount and every and refilled and every > 0
local due = false
if refill and now - refilled >= every then
  -- Whole intervals only, so that the schedule keeps its beat.
  local k = math.floor((now - refilled) / every)
  while k > 0 and refilled + k * every > now do k = k - 1 end
  refilled = refilled + k * every
  remaining = amount
  due = true
end
if remaining >= cost then
  remaining = remaining - cost
  redis.call('HSET', KEYS[1], 'credits', string.format('%.0f', remaining))
  if due then redis.call('HSET', KEYS[1], 'refilled', string.format('%.0f', refilled)) end
  return {1, remaining}
end
if due then
  redis.call('HSET', KEYS[1], 'credits', string.format('%.0f', remaining),
    'refilled', string.format('%.0f', refilled))
end
if refill and amount >= cost then return {2, refilled + every - now} end
return {2, -1}
";

/// Adds a key to a record, retiring its current keys after a grace.
const ROTATE_LUA: &str = r"-- keygate RedisStore: give a record a new key.
-- KEYS: the record, the new key's digest entry. ARGV: the version read, the new digest (hex),
-- grace (µs), the prefix of digest entries, id's key part, channel.
-- Returns 0, 1 for no such record, 2 when it changed since it was read, 3 for a taken key.
if redis.replicate_commands then redis.replicate_commands() end
local f = redis.call('HMGET', KEYS[1], 'ver', 'id', 'digests')
if not f[1] then return 1 end
if f[1] ~= ARGV[1] then return 2 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 3 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local retire = now + tonumber(ARGV[3])
local kept = {ARGV[2]}
for hex in string.gmatch(f[3] or '', '%x+') do
  local entry = ARGV[4] .. hex
  if redis.call('HGET', entry, 'id') == ARGV[5] then
    local at = tonumber(redis.call('HGET', entry, 'retire') or '')
    if at and at <= now then
      redis.call('DEL', entry)
    else
      -- A running grace may end sooner, never later.
      if not at or at > retire then
        redis.call('HSET', entry, 'retire', string.format('%.0f', retire))
      end
      table.insert(kept, hex)
    end
  end
end
redis.call('HSET', KEYS[2], 'id', ARGV[5])
redis.call('HSET', KEYS[1], 'digests', table.concat(kept, ' '))
redis.call('HINCRBY', KEYS[1], 'ver', 1)
redis.call('PUBLISH', ARGV[6], 'id:' .. f[2])
redis.call('PUBLISH', ARGV[6], 'digest:' .. ARGV[2])
return 0
";

/// The Lua function that deletes a record, its keys and its index entries, shared by the
/// delete and purge scripts.
macro_rules! lua_forget {
    () => {
        r"-- Deletes the record KEYS[1], its keys and index entries (KEYS[2]: the index of ids),
-- and tells the watchers.
local function forget(id, okey, digests, part, dprefix, oprefix, channel)
  for hex in string.gmatch(digests or '', '%x+') do
    local entry = dprefix .. hex
    if redis.call('HGET', entry, 'id') == part then redis.call('DEL', entry) end
  end
  redis.call('ZREM', oprefix .. okey, id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', channel, 'id:' .. id)
end
"
    };
}

/// Deletes a record and all its keys.
const DELETE_LUA: &str = concat!(
    r"-- keygate RedisStore: delete a record.
-- KEYS: the record, the index of ids. ARGV: the prefix of digest entries, the prefix of owner
-- indexes, channel, id's key part.
-- Returns 1, or 0 for no such record.
",
    lua_forget!(),
    r"local f = redis.call('HMGET', KEYS[1], 'id', 'okey', 'digests')
if not f[1] then return 0 end
forget(f[1], f[2], f[3], ARGV[4], ARGV[1], ARGV[2], ARGV[3])
return 1
"
);

/// Deletes a dead record, or its rotated-out keys retired before a time.
const PURGE_LUA: &str = concat!(
    r"-- keygate RedisStore: purge one record.
-- KEYS: the record, the index of ids. ARGV: the version read, dead ('1': delete the record),
-- before (µs, rounded up), the prefix of digest entries, the prefix of owner indexes, channel,
-- id's key part.
-- Returns 1 (record deleted), 2 (retired keys deleted), 0 (nothing to do), -1 when it changed
-- since it was read.
if redis.replicate_commands then redis.replicate_commands() end
",
    lua_forget!(),
    r"local f = redis.call('HMGET', KEYS[1], 'ver', 'id', 'okey', 'digests')
if not f[1] then return 0 end
if f[1] ~= ARGV[1] then return -1 end
if ARGV[2] == '1' then
  forget(f[2], f[3], f[4], ARGV[7], ARGV[4], ARGV[5], ARGV[6])
  return 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local before = tonumber(ARGV[3])
local kept = {}
local dropped = false
for hex in string.gmatch(f[4] or '', '%x+') do
  local entry = ARGV[4] .. hex
  if redis.call('HGET', entry, 'id') == ARGV[7] then
    local at = tonumber(redis.call('HGET', entry, 'retire') or '')
    if at and at < before and at <= now then
      redis.call('DEL', entry)
      dropped = true
    else
      table.insert(kept, hex)
    end
  else
    dropped = true
  end
end
if not dropped then return 0 end
redis.call('HSET', KEYS[1], 'digests', table.concat(kept, ' '))
redis.call('HINCRBY', KEYS[1], 'ver', 1)
redis.call('PUBLISH', ARGV[6], 'id:' .. f[2])
return 2
"
);

static LOOKUP: LazyLock<Script> = LazyLock::new(|| Script::new(LOOKUP_LUA));
static INSERT: LazyLock<Script> = LazyLock::new(|| Script::new(INSERT_LUA));
static UPDATE: LazyLock<Script> = LazyLock::new(|| Script::new(UPDATE_LUA));
static ROTATE: LazyLock<Script> = LazyLock::new(|| Script::new(ROTATE_LUA));
static DELETE: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE_LUA));
static PURGE: LazyLock<Script> = LazyLock::new(|| Script::new(PURGE_LUA));
static SPEND: LazyLock<Script> = LazyLock::new(|| Script::new(SPEND_LUA));

/// The fields of a record's entry that hold its credits, in the order [`ledger_of`] reads them.
const CREDIT_FIELDS: [&str; 4] = ["credits", "refill_amount", "refill_every", "refilled"];

/// The key store on Redis: every process that uses the same Redis (and prefix) shares the same
/// keys, and hears of every change through pub/sub.
///
/// **Lookups** are one round trip: an `EVALSHA` of a Lua script (loaded again by itself after a
/// `NOSCRIPT`) that resolves the digest to its record and checks a rotated-out key's retire time
/// against Redis's own clock (`TIME`), so that every instance agrees on when a grace ends. A key
/// in its grace looks up to the record with its expiry cut to the retire time (when that comes
/// first), so that a cache in front stops serving it on time. Each lookup waits at most
/// [`timeout`](Self::timeout) (default 1 s, then [`StoreError::Timeout`]); a failure of Redis is
/// [`StoreError::Unavailable`], which keygate answers with 503, never 401. The connection manager reconnects by itself, so the store
/// recovers when Redis returns without being rebuilt.
///
/// **Management** ([`KeyManager`]) follows the same rules as [`MemoryStore`](super::MemoryStore).
/// Every change is atomic: one script, which checks that the record is still the version that
/// was read, and tries again when another change came first.
///
/// **Credits.** It is a [`CreditStore`]: a spend is one script (one round trip) that applies a
/// refill that came due, by Redis's clock, and takes the cost away only if enough credits
/// remain, so spends from any number of instances never take the count below zero. The count
/// lives in fields of the record's hash of its own: a spend never rewrites the record, nor
/// tells the watchers. Spends and reads of the count wait at most the
/// [`timeout`](Self::timeout), as lookups do.
///
/// **Notifications.** Each change publishes, from inside its script, to the channel
/// `{prefix}events` ([`channel`](Self::channel)): `id:<id>` when a record was updated, revoked,
/// rotated, deleted or purged, and `digest:<64 hex digits>` for a newly created key (issue,
/// insert, rotate). [`watch`](Self::watch) feeds them to an [`Invalidate`], usually a cache's.
///
/// **Layout**, under the prefix (default `keygate:keys:`):
///
/// | key | type | holds |
/// |---|---|---|
/// | `{prefix}d:{digest in hex}` | hash | the record's id and, once rotated out, the key's retire time |
/// | `{prefix}r:{id}` | hash | the record (JSON), its digests, created and revoked times, a version, its credits |
/// | `{prefix}o:{owner}` | sorted set | the owner's ids, for [`list`](KeyManager::list) |
/// | `{prefix}ids` | sorted set | every id, for [`purge`](KeyManager::purge) |
///
/// Ids and owners may hold any character but control characters; in key names, `%`, `:`, `{`
/// and `}` are percent-encoded (`a:b` is `{prefix}r:a%3Ab`), so that no id or owner can reach
/// into another key's name, and names hold no hash tag but the prefix's. The scripts reach keys
/// they find (a record through its key's entry), so a store needs one Redis server, not a Redis
/// Cluster.
///
/// Cloning is cheap and clones share the connection. `Debug` shows the server's address but
/// never its password.
///
/// ```no_run
/// use std::time::Duration;
/// use keygate::auth::AuthLayer;
/// use keygate::key::KeyRecord;
/// use keygate::store::{KeyManager, RedisStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379/")
///     .await?
///     .prefix("weather:keys:")
///     .timeout(Duration::from_millis(200));
/// let issued = store.issue(KeyRecord::new("key_1", "acme").with_scopes(["weather:read"])).await?;
/// println!("shown once: {}", issued.key.expose_secret());
/// let layer = AuthLayer::new(store);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    client: Client,
    conn: ConnectionManager,
    prefix: Box<str>,
    format: KeyFormat,
    timeout: Duration,
    /// `host:port/db` (no credentials).
    addr: Box<str>,
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://[:password@]host[:port][/db]`) now and loads
    /// the store's scripts. Fails if the URL is invalid or Redis does not answer within a few
    /// seconds.
    ///
    /// ```no_run
    /// use keygate::store::RedisStore;
    ///
    /// # async fn run() -> Result<(), keygate::store::StoreError> {
    /// let store = RedisStore::connect("redis://127.0.0.1:6379/").await?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(StoreError::unavailable)?;
        let manager = ConnectionManager::new_with_config(client.clone(), Self::manager_config());
        let conn = match tokio::time::timeout(CONNECT_WAIT, manager).await {
            Ok(conn) => conn.map_err(StoreError::unavailable)?,
            Err(_) => return Err(StoreError::Timeout),
        };
        let store = Self::new(client, conn);
        let scripts: [&Script; 7] = [&LOOKUP, &INSERT, &UPDATE, &ROTATE, &DELETE, &PURGE, &SPEND];
        crate::redis_conn::load_scripts(&store.inner.conn, &scripts)
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    StoreError::Timeout
                } else {
                    StoreError::unavailable(e)
                }
            })?;
        Ok(store)
    }

    /// A store on a client and a connection manager you built (to set its reconnection or
    /// timeouts, start from [`manager_config`](Self::manager_config)). The client opens the
    /// pub/sub connection of [`watch`](Self::watch).
    ///
    /// ```no_run
    /// use keygate::store::RedisStore;
    /// use redis::aio::ConnectionManager;
    ///
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let client = redis::Client::open("redis://127.0.0.1/")?;
    /// let manager =
    ///     ConnectionManager::new_with_config(client.clone(), RedisStore::manager_config()).await?;
    /// let store = RedisStore::new(client, manager);
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(client: Client, conn: ConnectionManager) -> Self {
        let addr = crate::redis_conn::addr(&client);
        Self {
            inner: Arc::new(Inner {
                client,
                conn,
                prefix: DEFAULT_PREFIX.into(),
                format: KeyFormat::new("kg_").expect("a valid constant prefix"),
                timeout: DEFAULT_TIMEOUT,
                addr,
            }),
        }
    }

    /// The connection-manager settings [`connect`](Self::connect) uses: each connection attempt
    /// gives up after 1 s and each response after 1 s, and a lost connection is retried twice
    /// with short backoff (50 ms up to 1 s), then again on the next call.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keygate::store::RedisStore;
    ///
    /// let config = RedisStore::manager_config().set_response_timeout(Some(Duration::from_secs(2)));
    /// # let _ = config;
    /// ```
    pub fn manager_config() -> ConnectionManagerConfig {
        crate::ratelimit::RedisLimiter::manager_config()
    }

    fn inner(&mut self) -> &mut Inner {
        Arc::make_mut(&mut self.inner)
    }

    /// Prefixes every Redis key of the store, and its channel, with `prefix` (default
    /// `"keygate:keys:"`). Stores that share a prefix share their keys.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), keygate::store::StoreError> {
    /// let store = keygate::store::RedisStore::connect("redis://127.0.0.1/")
    ///     .await?
    ///     .prefix("billing-api:keys:");
    /// assert_eq!(store.channel(), "billing-api:keys:events");
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.inner().prefix = prefix.into().into_boxed_str();
        self
    }

    /// Issues keys of `format` (default: prefix `kg_`, like
    /// [`MemoryStore::new`](super::MemoryStore::new)); [`format`](Self::format) returns it.
    ///
    /// ```no_run
    /// use keygate::key::KeyFormat;
    /// use keygate::store::KeyManager;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = keygate::store::RedisStore::connect("redis://127.0.0.1/")
    ///     .await?
    ///     .key_format(KeyFormat::new("wk_live_")?);
    /// assert_eq!(store.format().prefix(), "wk_live_");
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn key_format(mut self, format: KeyFormat) -> Self {
        self.inner().format = format;
        self
    }

    /// The format of the keys this store issues.
    pub fn format(&self) -> &KeyFormat {
        KeyManager::format(self)
    }

    /// Waits at most `timeout` for each lookup (default 1 s), then fails it with
    /// [`StoreError::Timeout`].
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # async fn run() -> Result<(), keygate::store::StoreError> {
    /// let store = keygate::store::RedisStore::connect("redis://127.0.0.1/")
    ///     .await?
    ///     .timeout(Duration::from_millis(100));
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.inner().timeout = timeout;
        self
    }

    /// The pub/sub channel the store's changes are published to: the prefix, then `events`.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), keygate::store::StoreError> {
    /// let store = keygate::store::RedisStore::connect("redis://127.0.0.1/").await?;
    /// assert_eq!(store.channel(), "keygate:keys:events");
    /// # Ok(())
    /// # }
    /// ```
    pub fn channel(&self) -> String {
        [&*self.inner.prefix, "events"].concat()
    }

    /// Subscribes to the store's change notifications and passes each one to `sink`, from a
    /// task of its own, until [`sink.is_closed()`](Invalidate::is_closed) (checked at least once
    /// a second).
    ///
    /// Returns once subscribed, so that every change made after it reaches `sink`; fails if it
    /// cannot subscribe now (or is called outside a Tokio runtime). When the subscription is
    /// lost later, the task subscribes again, with a pause that grows up to 1 s between
    /// attempts, and then calls [`invalidate_all`](Invalidate::invalidate_all), since
    /// notifications may have been missed meanwhile.
    ///
    /// ```no_run
    /// use keygate::key::KeyDigest;
    /// use keygate::store::{Invalidate, RedisStore};
    ///
    /// struct Log;
    ///
    /// impl Invalidate for Log {
    ///     fn invalidate_id(&self, id: &str) {
    ///         println!("record {id} changed");
    ///     }
    ///     fn invalidate_digest(&self, digest: &KeyDigest) {
    ///         println!("new key {digest:?}");
    ///     }
    ///     fn invalidate_all(&self) {
    ///         println!("anything may have changed");
    ///     }
    /// }
    ///
    /// # async fn run() -> Result<(), keygate::store::StoreError> {
    /// let store = RedisStore::connect("redis://127.0.0.1/").await?;
    /// store.watch(Log).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn watch(&self, sink: impl Invalidate) -> Result<(), StoreError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(StoreError::unavailable)?;
        let client = self.inner.client.clone();
        let channel = self.channel();
        let pubsub = subscribe(&client, &channel).await?;
        runtime.spawn(watch_task(client, channel, pubsub, sink));
        Ok(())
    }

    fn digest_key(&self, digest: &KeyDigest) -> String {
        [&*self.inner.prefix, "d:", &digest.to_hex()].concat()
    }

    fn record_key(&self, id: &str) -> String {
        [&*self.inner.prefix, "r:", &escape(id)].concat()
    }

    fn owner_key(&self, owner: &str) -> String {
        [&*self.inner.prefix, "o:", &escape(owner)].concat()
    }

    fn ids_key(&self) -> String {
        [&*self.inner.prefix, "ids"].concat()
    }

    fn prefixed(&self, part: &str) -> String {
        [&*self.inner.prefix, part].concat()
    }

    /// Runs a script as one management round trip.
    async fn run<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, ManageError> {
        let mut conn = self.inner.conn.clone();
        match tokio::time::timeout(MANAGE_WAIT, invocation.invoke_async(&mut conn)).await {
            Ok(reply) => reply.map_err(ManageError::unavailable),
            Err(_) => Err(ManageError::unavailable(StoreError::Timeout)),
        }
    }

    /// Runs a command (or a pipeline) as one management round trip.
    async fn query<T: FromRedisValue>(
        &self,
        query: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, ManageError> {
        match tokio::time::timeout(MANAGE_WAIT, query).await {
            Ok(reply) => reply.map_err(ManageError::unavailable),
            Err(_) => Err(ManageError::unavailable(StoreError::Timeout)),
        }
    }

    /// The record `id` as stored, with its live credits and its version; `None` if there is
    /// none.
    async fn read(&self, id: &str) -> Result<Option<(KeyRecord, String)>, ManageError> {
        let mut conn = self.inner.conn.clone();
        let mut pipe = ::redis::pipe();
        pipe.cmd("HMGET")
            .arg(self.record_key(id))
            .arg("record")
            .arg("created")
            .arg("ver")
            .arg(&CREDIT_FIELDS)
            .cmd("TIME");
        let (fields, time): (Vec<Option<String>>, (i64, i64)) =
            self.query(pipe.query_async(&mut conn)).await?;
        let (Some(Some(json)), Some(created), Some(Some(ver))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return Ok(None);
        };
        let mut record = decode(json, created.as_deref()).map_err(ManageError::unavailable)?;
        record.credits = live_credits(fields.get(3..).unwrap_or_default(), time)
            .map_err(ManageError::unavailable)?;
        Ok(Some((record, ver.clone())))
    }

    async fn insert_record(
        &self,
        digest: KeyDigest,
        mut record: KeyRecord,
    ) -> Result<KeyRecord, ManageError> {
        check_new_record(&record)?;
        if let Some(credits) = &record.credits {
            check_credits(credits)?;
        }
        let json = encode(&record).map_err(ManageError::unavailable)?;
        let [remaining, amount, every] = credit_args(record.credits.as_ref());
        let created = record
            .created_at
            .map(|at| to_nanos(at).to_string())
            .unwrap_or_default();
        let hex = digest.to_hex();
        let mut invocation = INSERT.key(self.record_key(&record.id));
        invocation
            .key(self.digest_key(&digest))
            .key(self.owner_key(&record.owner))
            .key(self.ids_key())
            .arg(&record.id)
            .arg(&record.owner)
            .arg(&*escape(&record.owner))
            .arg(json)
            .arg(created)
            .arg(if record.status == KeyStatus::Revoked {
                "1"
            } else {
                "0"
            })
            .arg(hex)
            .arg(&*escape(&record.id))
            .arg(self.channel())
            .arg(remaining)
            .arg(amount)
            .arg(every);
        let (code, created): (i64, String) = self.run(&invocation).await?;
        match code {
            0 => {
                let created = created
                    .parse()
                    .ok()
                    .and_then(from_nanos)
                    .ok_or_else(|| ManageError::unavailable(Malformed))?;
                record.created_at = Some(created);
                Ok(record)
            }
            1 => Err(ManageError::DuplicateId),
            2 => Err(ManageError::DuplicateKey),
            _ => Err(ManageError::unavailable(Malformed)),
        }
    }

    async fn issue_record(&self, record: KeyRecord) -> Result<IssuedKey, ManageError> {
        check_new_record(&record)?;
        for _ in 0..MAX_ATTEMPTS {
            let key = self.inner.format.generate();
            match self.insert_record(key.digest(), record.clone()).await {
                Ok(record) => return Ok(IssuedKey::new(key, record)),
                // A generated key that collides (never, with 190 random bits) gets another try.
                Err(ManageError::DuplicateKey) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ManageError::unavailable(Contention))
    }

    async fn update_record(&self, id: &str, update: &KeyUpdate) -> Result<KeyRecord, ManageError> {
        let key = self.record_key(id);
        for _ in 0..MAX_ATTEMPTS {
            let (old, ver) = self.read(id).await?.ok_or(ManageError::NotFound)?;
            let mut record = old.clone();
            update.apply(&mut record)?;
            // What identifies a record is not the change's to make.
            record.id.clone_from(&old.id);
            record.owner.clone_from(&old.owner);
            record.created_at = old.created_at;
            let sets_credits = update.credits.is_some();
            if sets_credits && let Some(credits) = &record.credits {
                check_credits(credits)?;
            }
            let json = encode(&record).map_err(ManageError::unavailable)?;
            let [remaining, amount, every] = credit_args(record.credits.as_ref());
            let mut invocation = UPDATE.key(&key);
            invocation
                .arg(ver)
                .arg(json)
                .arg(if record.status == KeyStatus::Revoked {
                    "1"
                } else {
                    "0"
                })
                .arg(self.channel())
                .arg(if sets_credits { "set" } else { "keep" })
                .arg(remaining)
                .arg(amount)
                .arg(every);
            match self.run::<i64>(&invocation).await? {
                0 => return Ok(record),
                1 => return Err(ManageError::NotFound),
                _ => continue,
            }
        }
        Err(ManageError::unavailable(Contention))
    }

    async fn rotate_record(&self, id: &str, grace: Duration) -> Result<IssuedKey, ManageError> {
        let key = self.record_key(id);
        let grace_us = u64::try_from(grace.as_nanos().div_ceil(1000))
            .unwrap_or(u64::MAX)
            .min(THOUSAND_YEARS_US);
        for _ in 0..MAX_ATTEMPTS {
            let (record, ver) = self.read(id).await?.ok_or(ManageError::NotFound)?;
            if record.status == KeyStatus::Revoked {
                return Err(ManageError::invalid("a revoked key cannot be rotated"));
            }
            let new_key = self.inner.format.generate();
            let digest = new_key.digest();
            let mut invocation = ROTATE.key(&key);
            invocation
                .key(self.digest_key(&digest))
                .arg(ver)
                .arg(digest.to_hex())
                .arg(grace_us)
                .arg(self.prefixed("d:"))
                .arg(&*escape(id))
                .arg(self.channel());
            match self.run::<i64>(&invocation).await? {
                0 => return Ok(IssuedKey::new(new_key, record)),
                1 => return Err(ManageError::NotFound),
                // Changed since read, or a colliding key: read again, with a new key.
                _ => continue,
            }
        }
        Err(ManageError::unavailable(Contention))
    }

    async fn delete_record(&self, id: &str) -> Result<(), ManageError> {
        let mut invocation = DELETE.key(self.record_key(id));
        invocation
            .key(self.ids_key())
            .arg(self.prefixed("d:"))
            .arg(self.prefixed("o:"))
            .arg(self.channel())
            .arg(&*escape(id));
        match self.run::<i64>(&invocation).await? {
            1 => Ok(()),
            _ => Err(ManageError::NotFound),
        }
    }

    async fn list_records(&self, owner: &str, page: &Page) -> Result<KeyPage, ManageError> {
        page.check()?;
        let mut conn = self.inner.conn.clone();
        let min = match &page.after {
            Some(after) => [b"(".as_slice(), after.as_bytes()].concat(),
            None => b"-".to_vec(),
        };
        let mut cmd = ::redis::cmd("ZRANGEBYLEX");
        cmd.arg(self.owner_key(owner))
            .arg(min)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(page.limit);
        let ids: Vec<String> = self.query(cmd.query_async(&mut conn)).await?;
        if ids.is_empty() {
            return Ok(KeyPage::new(Vec::new(), page.limit));
        }
        let mut pipe = ::redis::pipe();
        pipe.cmd("TIME");
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(self.record_key(id))
                .arg("record")
                .arg("created")
                .arg(&CREDIT_FIELDS);
        }
        let replies: Vec<::redis::Value> = self.query(pipe.query_async(&mut conn)).await?;
        let mut replies = replies.into_iter();
        let time: (i64, i64) = replies
            .next()
            .ok_or(Malformed)
            .and_then(|reply| ::redis::from_redis_value(reply).map_err(|_| Malformed))
            .map_err(ManageError::unavailable)?;
        let mut records = Vec::with_capacity(ids.len());
        for reply in replies {
            let fields: Vec<Option<String>> =
                ::redis::from_redis_value(reply).map_err(ManageError::unavailable)?;
            // A record deleted since its id was read is left out.
            if let (Some(Some(json)), created) = (fields.first(), fields.get(1)) {
                let mut record = decode(json, created.and_then(Option::as_deref))
                    .map_err(ManageError::unavailable)?;
                record.credits = live_credits(fields.get(2..).unwrap_or_default(), time)
                    .map_err(ManageError::unavailable)?;
                records.push(record);
            }
        }
        Ok(KeyPage::new(records, page.limit))
    }

    async fn purge_records(&self, before: SystemTime) -> Result<u64, ManageError> {
        let before_ns = to_nanos(before);
        let before_us = before_ns.div_euclid(1000) + i128::from(before_ns.rem_euclid(1000) != 0);
        let before_us =
            i64::try_from(before_us).unwrap_or(if before_us < 0 { i64::MIN } else { i64::MAX });
        let ids_key = self.ids_key();
        let mut conn = self.inner.conn.clone();
        let mut after: Option<String> = None;
        let mut purged = 0;
        loop {
            let min = match &after {
                Some(after) => [b"(".as_slice(), after.as_bytes()].concat(),
                None => b"-".to_vec(),
            };
            let mut cmd = ::redis::cmd("ZRANGEBYLEX");
            cmd.arg(&ids_key)
                .arg(min)
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(PURGE_BATCH);
            let ids: Vec<String> = self.query(cmd.query_async(&mut conn)).await?;
            for id in &ids {
                if self.purge_one(id, before, before_us).await? {
                    purged += 1;
                }
            }
            if ids.len() < PURGE_BATCH {
                return Ok(purged);
            }
            after = ids.last().cloned();
        }
    }

    /// Purges the record `id`: whether it was deleted.
    async fn purge_one(
        &self,
        id: &str,
        before: SystemTime,
        before_us: i64,
    ) -> Result<bool, ManageError> {
        let key = self.record_key(id);
        for _ in 0..MAX_ATTEMPTS {
            let mut conn = self.inner.conn.clone();
            let mut cmd = ::redis::cmd("HMGET");
            cmd.arg(&key)
                .arg("record")
                .arg("ver")
                .arg("revoked")
                .arg("digests");
            let fields: Vec<Option<String>> = self.query(cmd.query_async(&mut conn)).await?;
            let mut fields = fields.into_iter();
            let (Some(Some(json)), Some(Some(ver)), revoked, digests) = (
                fields.next(),
                fields.next(),
                fields.next().flatten(),
                fields.next().flatten(),
            ) else {
                return Ok(false);
            };
            let record = decode(&json, None).map_err(ManageError::unavailable)?;
            let revoked_before = revoked
                .and_then(|us| us.parse::<i128>().ok())
                .and_then(|us| from_nanos(us.saturating_mul(1000)))
                .is_some_and(|at| at < before);
            let expired_before = record.expires_at.is_some_and(|at| at < before);
            let dead = revoked_before || expired_before;
            // A record with one key has no rotated-out key to forget.
            if !dead && digests.as_deref().is_none_or(|d| !d.contains(' ')) {
                return Ok(false);
            }
            let mut invocation = PURGE.key(&key);
            invocation
                .key(self.ids_key())
                .arg(ver)
                .arg(if dead { "1" } else { "0" })
                .arg(before_us)
                .arg(self.prefixed("d:"))
                .arg(self.prefixed("o:"))
                .arg(self.channel())
                .arg(&*escape(id));
            match self.run::<i64>(&invocation).await? {
                -1 => continue,
                code => return Ok(code == 1),
            }
        }
        Err(ManageError::unavailable(Contention))
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("RedisStore")
            .field("addr", &inner.addr)
            .field("prefix", &inner.prefix)
            .field("format", &inner.format)
            .field("timeout", &inner.timeout)
            .finish_non_exhaustive()
    }
}

impl KeyStore for RedisStore {
    fn lookup(&self, digest: &KeyDigest) -> Lookup {
        let key = self.digest_key(digest);
        let records = self.prefixed("r:");
        let mut conn = self.inner.conn.clone();
        let timeout = self.inner.timeout;
        Lookup::pending(crate::metrics::timed_lookup(
            crate::metrics::Store::Redis,
            async move {
                let mut invocation = LOOKUP.key(key);
                invocation.arg(records);
                let call = invocation.invoke_async::<Option<Vec<Option<String>>>>(&mut conn);
                match timed_redis(RedisOp::KeyLookup, timeout, call).await {
                    Ok(Ok(reply)) => found(reply),
                    Ok(Err(e)) => Err(StoreError::unavailable(e)),
                    Err(_) => Err(StoreError::Timeout),
                }
            },
        ))
    }
}

/// The record of a lookup's reply.
fn found(reply: Option<Vec<Option<String>>>) -> LookupResult {
    let Some(fields) = reply else {
        return Ok(None);
    };
    let mut fields = fields.into_iter();
    let Some(Some(json)) = fields.next() else {
        return Ok(None);
    };
    let created = fields.next().flatten();
    let mut record = decode(&json, created.as_deref()).map_err(StoreError::unavailable)?;
    let retire = fields.next().flatten();
    let credit_fields: Vec<Option<String>> = fields.by_ref().take(CREDIT_FIELDS.len()).collect();
    let now = fields
        .next()
        .flatten()
        .and_then(|now| now.parse::<i64>().ok())
        .ok_or_else(|| StoreError::unavailable(Malformed))?;
    record.credits = ledger_of(&credit_fields)
        .map_err(StoreError::unavailable)?
        .map(|ledger| ledger.at(now).credits());
    // A key in its grace carries its retire time as expiry when that comes first, so that a
    // cache in front stops serving it on time.
    if let Some(retire) = retire {
        let retire = retire
            .parse::<i128>()
            .ok()
            .and_then(|us| from_nanos(us.saturating_mul(1000)))
            .ok_or_else(|| StoreError::unavailable(Malformed))?;
        if record.expires_at.is_none_or(|at| retire < at) {
            record.expires_at = Some(retire);
        }
    }
    Ok(Some(Arc::new(record)))
}

/// Each call is one round trip (a script for a spend, a pipeline for a read), within the store's
/// [`timeout`](RedisStore::timeout), on Redis's clock.
impl CreditStore for RedisStore {
    fn spend(&self, id: &str, cost: u32) -> CreditCheck {
        let key = self.record_key(id);
        let mut conn = self.inner.conn.clone();
        let timeout = self.inner.timeout;
        MaybeReady::pending(async move {
            let mut invocation = SPEND.key(key);
            invocation.arg(cost);
            let call = invocation.invoke_async::<Vec<i64>>(&mut conn);
            match timed_redis(RedisOp::Credits, timeout, call).await {
                Ok(Ok(reply)) => spend_outcome(&reply).map_err(StoreError::unavailable),
                Ok(Err(e)) => Err(StoreError::unavailable(e)),
                Err(_) => Err(StoreError::Timeout),
            }
        })
    }

    fn credits(&self, id: &str) -> MaybeReady<Result<Option<Credits>, StoreError>> {
        let key = self.record_key(id);
        let mut conn = self.inner.conn.clone();
        let timeout = self.inner.timeout;
        MaybeReady::pending(async move {
            let mut pipe = ::redis::pipe();
            pipe.cmd("HMGET").arg(key).arg(&CREDIT_FIELDS).cmd("TIME");
            let call = pipe.query_async::<(Vec<Option<String>>, (i64, i64))>(&mut conn);
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok((fields, time))) => {
                    live_credits(&fields, time).map_err(StoreError::unavailable)
                }
                Ok(Err(e)) => Err(StoreError::unavailable(e)),
                Err(_) => Err(StoreError::Timeout),
            }
        })
    }
}

/// What a spend script answered.
fn spend_outcome(reply: &[i64]) -> Result<CreditOutcome, Malformed> {
    match reply {
        [0] => Ok(CreditOutcome::NoBudget),
        [1, remaining] => Ok(CreditOutcome::Spent {
            remaining: u64::try_from(*remaining).map_err(|_| Malformed)?,
        }),
        [2, wait] => Ok(CreditOutcome::Exhausted {
            refill_in: u64::try_from(*wait)
                .ok()
                .map(|us| Duration::from_micros(us.max(1))),
        }),
        _ => Err(Malformed),
    }
}

impl KeyManager for RedisStore {
    fn format(&self) -> &KeyFormat {
        &self.inner.format
    }

    fn issue(&self, record: KeyRecord) -> ManageFuture<'_, IssuedKey> {
        Box::pin(self.issue_record(record))
    }

    fn insert(&self, digest: KeyDigest, record: KeyRecord) -> ManageFuture<'_, KeyRecord> {
        Box::pin(self.insert_record(digest, record))
    }

    fn get(&self, id: &str) -> ManageFuture<'_, Option<KeyRecord>> {
        let id = id.to_owned();
        Box::pin(async move { Ok(self.read(&id).await?.map(|(record, _)| record)) })
    }

    fn list(&self, owner: &str, page: Page) -> ManageFuture<'_, KeyPage> {
        let owner = owner.to_owned();
        Box::pin(async move { self.list_records(&owner, &page).await })
    }

    fn update(&self, id: &str, update: KeyUpdate) -> ManageFuture<'_, KeyRecord> {
        let id = id.to_owned();
        Box::pin(async move { self.update_record(&id, &update).await })
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
// Watching

/// Opens a pub/sub connection and subscribes to `channel`.
async fn subscribe(client: &Client, channel: &str) -> Result<PubSub, StoreError> {
    let attempt = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, RedisError>(pubsub)
    };
    match tokio::time::timeout(CONNECT_WAIT, attempt).await {
        Ok(subscribed) => subscribed.map_err(StoreError::unavailable),
        Err(_) => Err(StoreError::Timeout),
    }
}

/// Why a subscription ended.
enum Ended {
    /// The sink is closed: stop.
    Closed,
    /// The connection was lost: subscribe again.
    Lost,
}

async fn watch_task(client: Client, channel: String, pubsub: PubSub, sink: impl Invalidate) {
    let mut pubsub = pubsub;
    loop {
        if let Ended::Closed = follow(pubsub, &sink).await {
            return;
        }
        tracing::warn!(
            target: "keygate",
            channel = %channel,
            "lost the Redis key store's notifications; subscribing again"
        );
        let mut pause = MIN_BACKOFF;
        pubsub = loop {
            if !sleep_unless_closed(&sink, pause).await {
                return;
            }
            match unless_closed(&sink, subscribe(&client, &channel)).await {
                None => return,
                Some(Ok(pubsub)) => break pubsub,
                Some(Err(error)) => {
                    tracing::debug!(
                        target: "keygate",
                        %error,
                        "Redis key store notifications still unavailable"
                    );
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
            }
        };
        // Whatever changed while nobody listened is forgotten as a whole.
        sink.invalidate_all();
        tracing::info!(
            target: "keygate",
            channel = %channel,
            "receiving the Redis key store's notifications again"
        );
    }
}

/// Dispatches the notifications of one subscription until it is lost or the sink is closed.
async fn follow(pubsub: PubSub, sink: &impl Invalidate) -> Ended {
    let (control, mut messages) = pubsub.split();
    let mut tick = tokio::time::interval(CLOSED_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut silent = Duration::ZERO;
    type Ping = Pin<Box<dyn Future<Output = bool> + Send>>;
    let mut ping: Option<Ping> = None;
    loop {
        tokio::select! {
            message = std::future::poll_fn(|cx| Pin::new(&mut messages).poll_next(cx)) => {
                match message {
                    Some(message) => {
                        dispatch(&message, sink);
                        silent = Duration::ZERO;
                    }
                    None => return Ended::Lost,
                }
            }
            answered = async {
                match ping.as_mut() {
                    Some(ping) => ping.await,
                    None => std::future::pending().await,
                }
            } => {
                ping = None;
                if !answered {
                    return Ended::Lost;
                }
            }
            _ = tick.tick() => {
                if sink.is_closed() {
                    return Ended::Closed;
                }
                silent += CLOSED_CHECK;
                if silent >= PING_AFTER && ping.is_none() {
                    silent = Duration::ZERO;
                    let mut control = control.clone();
                    ping = Some(Box::pin(async move {
                        let answer = control.ping::<::redis::Value>();
                        matches!(tokio::time::timeout(PING_WAIT, answer).await, Ok(Ok(_)))
                    }));
                }
            }
        }
    }
}

/// Passes one notification to the sink; ignores any it does not know.
fn dispatch(message: &Msg, sink: &impl Invalidate) {
    let payload = message.get_payload_bytes();
    if let Some(id) = payload.strip_prefix(b"id:") {
        if let Ok(id) = std::str::from_utf8(id) {
            sink.invalidate_id(id);
        }
    } else if let Some(hex) = payload.strip_prefix(b"digest:") {
        if let Some(digest) = std::str::from_utf8(hex).ok().and_then(KeyDigest::from_hex) {
            sink.invalidate_digest(&digest);
        }
    } else {
        tracing::debug!(target: "keygate", "ignored an unknown Redis key store notification");
    }
}

/// Sleeps for `pause`, checking the sink every second: `false` if it closed meanwhile.
async fn sleep_unless_closed(sink: &impl Invalidate, pause: Duration) -> bool {
    unless_closed(sink, tokio::time::sleep(pause))
        .await
        .is_some()
}

/// Runs `work` to its end, or until the sink is closed (checked every second): `None` then.
async fn unless_closed<T>(sink: &impl Invalidate, work: impl Future<Output = T>) -> Option<T> {
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval(CLOSED_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            done = &mut work => return Some(done),
            _ = tick.tick() => {
                if sink.is_closed() {
                    return None;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// A stored record the store cannot read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a key record stored in Redis is malformed")]
struct Malformed;

/// A change that kept losing the race against others.
#[derive(Debug, thiserror::Error)]
#[error("the key record kept changing while this change was made; try again")]
struct Contention;

/// A record's fields, as the JSON of `{prefix}r:{id}`'s `record` field.
#[derive(Serialize, Deserialize)]
struct Stored {
    id: String,
    owner: String,
    #[serde(default)]
    scopes: Vec<String>,
    /// A quota's text (`100/min;burst=20`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota: Option<String>,
    /// The rate-limit tier's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tier: Option<String>,
    /// The networks the key may be used from, in CIDR notation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allowed_ips: Option<Vec<String>>,
    /// Nanoseconds since the Unix epoch, in decimal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    status: Status,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Active,
    Revoked,
    Disabled,
}

fn encode(record: &KeyRecord) -> Result<String, serde_json::Error> {
    let stored = Stored {
        id: record.id.clone(),
        owner: record.owner.clone(),
        scopes: record.scopes.iter().map(str::to_owned).collect(),
        quota: record.quota.as_ref().map(ToString::to_string),
        tier: record.tier.clone(),
        allowed_ips: record
            .allowed_ips
            .as_ref()
            .map(|networks| networks.iter().map(|net| net.to_string()).collect()),
        expires_at: record.expires_at.map(|at| to_nanos(at).to_string()),
        status: match record.status {
            KeyStatus::Active => Status::Active,
            KeyStatus::Revoked => Status::Revoked,
            KeyStatus::Disabled => Status::Disabled,
        },
        metadata: record.metadata.clone(),
    };
    serde_json::to_string(&stored)
}

fn decode(json: &str, created: Option<&str>) -> Result<KeyRecord, Malformed> {
    let stored: Stored = serde_json::from_str(json).map_err(|_| Malformed)?;
    let time = |text: &str| {
        text.parse::<i128>()
            .ok()
            .and_then(from_nanos)
            .ok_or(Malformed)
    };
    let quota = match stored.quota {
        Some(quota) => Some(quota.parse::<Limits>().map_err(|_| Malformed)?),
        None => None,
    };
    let mut record = KeyRecord::new(stored.id, stored.owner);
    record.scopes = stored.scopes.into_iter().collect::<Scopes>();
    record.quota = quota;
    record.tier = stored.tier;
    record.allowed_ips = stored
        .allowed_ips
        .map(Networks::parse)
        .transpose()
        .map_err(|_| Malformed)?;
    record.expires_at = stored.expires_at.as_deref().map(time).transpose()?;
    record.status = match stored.status {
        Status::Active => KeyStatus::Active,
        Status::Revoked => KeyStatus::Revoked,
        Status::Disabled => KeyStatus::Disabled,
    };
    record.metadata = stored.metadata;
    record.created_at = created.map(time).transpose()?;
    Ok(record)
}

/// The ledger of a record's [`CREDIT_FIELDS`]: `None` for a key without a budget.
fn ledger_of(fields: &[Option<String>]) -> Result<Option<Ledger>, Malformed> {
    let number = |at: usize| -> Result<Option<i64>, Malformed> {
        match fields.get(at).and_then(Option::as_deref) {
            Some(text) => text.parse().map(Some).map_err(|_| Malformed),
            None => Ok(None),
        }
    };
    let Some(remaining) = number(0)? else {
        return Ok(None);
    };
    let refilled_at = number(3)?.ok_or(Malformed)?;
    Ok(Some(Ledger {
        remaining: u64::try_from(remaining).map_err(|_| Malformed)?,
        refill: refill_of(number(1)?, number(2)?).map_err(|()| Malformed)?,
        refilled_at,
    }))
}

/// The credits of a record's [`CREDIT_FIELDS`] at the time `TIME` answered (seconds,
/// microseconds).
fn live_credits(fields: &[Option<String>], time: (i64, i64)) -> Result<Option<Credits>, Malformed> {
    let now = time.0.saturating_mul(1_000_000).saturating_add(time.1);
    Ok(ledger_of(fields)?.map(|ledger| ledger.at(now).credits()))
}

/// The arguments that set credits: remaining, refill amount, refill interval (µs), each `""`
/// when missing.
fn credit_args(credits: Option<&Credits>) -> [String; 3] {
    match credits {
        None => Default::default(),
        Some(c) => [
            c.remaining.to_string(),
            c.refill.map(|r| r.amount.to_string()).unwrap_or_default(),
            c.refill
                .map(|r| every_micros(r.every).to_string())
                .unwrap_or_default(),
        ],
    }
}

/// Nanoseconds since the Unix epoch (negative before it).
fn to_nanos(at: SystemTime) -> i128 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => i128::try_from(before.duration().as_nanos()).map_or(i128::MIN, |n| -n),
    }
}

/// The time `nanos` nanoseconds after the Unix epoch, if the platform can hold it.
fn from_nanos(nanos: i128) -> Option<SystemTime> {
    let abs = nanos.unsigned_abs();
    let secs = u64::try_from(abs / 1_000_000_000).ok()?;
    let sub = u32::try_from(abs % 1_000_000_000).ok()?;
    let span = Duration::new(secs, sub);
    if nanos >= 0 {
        UNIX_EPOCH.checked_add(span)
    } else {
        UNIX_EPOCH.checked_sub(span)
    }
}

/// An id or owner as part of a key name: `%`, `:`, `{` and `}` percent-encoded, so that the
/// name's structure, and any hash tag, stay the prefix's.
fn escape(name: &str) -> Cow<'_, str> {
    if !name.contains(['%', ':', '{', '}']) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_is_injective_on_what_it_touches() {
        assert_eq!(escape("key_1"), "key_1");
        assert!(matches!(escape("key_1"), Cow::Borrowed(_)));
        assert_eq!(escape("a:b"), "a%3Ab");
        assert_eq!(escape("a%3Ab"), "a%253Ab");
        assert_eq!(escape("{tag}"), "%7Btag%7D");
        assert_ne!(escape("a:b"), escape("a%3Ab"));
    }

    #[test]
    fn records_round_trip() {
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let mut record = KeyRecord::new("id:1", "owner {x}")
            .with_scopes(["b", "a"])
            .with_quota(
                "100/min;burst=7;name=burst, 5/d;fixed;owner;shadow"
                    .parse::<Limits>()
                    .unwrap(),
            )
            .with_tier("gold")
            .with_allowed_ips("203.0.113.0/24, 2001:db8::1".parse::<Networks>().unwrap())
            .with_expiry(at)
            .with_status(KeyStatus::Disabled)
            .with_metadata("plan", "pro");
        let json = encode(&record).unwrap();
        assert!(json.contains(r#""allowed_ips":["203.0.113.0/24","2001:db8::1/128"]"#));
        record.created_at = Some(UNIX_EPOCH - Duration::new(5, 1));
        let created = to_nanos(UNIX_EPOCH - Duration::new(5, 1)).to_string();
        assert_eq!(decode(&json, Some(&created)).unwrap(), record);
        assert!(decode("{}", None).is_err());
        assert!(decode(&json.replace("100/min", "ten"), None).is_err());
        assert!(decode(&json.replace("203.0.113.0/24", "203.0.113.0/33"), None).is_err());
        // A record stored without the field (by an earlier version) has no allowlist.
        let plain = KeyRecord::new("k", "o");
        assert!(!encode(&plain).unwrap().contains("allowed_ips"));
        assert_eq!(decode(&encode(&plain).unwrap(), None).unwrap(), plain);
    }

    #[test]
    fn credit_fields_and_spend_replies() {
        let field = |s: &str| Some(s.to_owned());
        assert_eq!(ledger_of(&[None, None, None, None]), Ok(None));
        assert_eq!(ledger_of(&[]), Ok(None));
        let ledger = ledger_of(&[field("4"), field("9"), field("2000000"), field("10000000")])
            .unwrap()
            .unwrap();
        assert_eq!(
            ledger.credits(),
            Credits::new(4).with_refill(crate::key::Refill::new(9, Duration::from_secs(2)))
        );
        assert_eq!(
            live_credits(
                &[field("4"), field("9"), field("2000000"), field("10000000")],
                (12, 5)
            ),
            Ok(Some(Credits::new(9).with_refill(crate::key::Refill::new(
                9,
                Duration::from_secs(2)
            ))))
        );
        for bad in [
            [field("-1"), None, None, field("0")],
            [field("x"), None, None, field("0")],
            [field("1"), None, None, None],
            [field("1"), field("2"), None, field("0")],
            [field("1"), field("2"), field("0"), field("0")],
        ] {
            assert!(ledger_of(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(spend_outcome(&[0]), Ok(CreditOutcome::NoBudget));
        assert_eq!(
            spend_outcome(&[1, 3]),
            Ok(CreditOutcome::Spent { remaining: 3 })
        );
        assert_eq!(
            spend_outcome(&[2, -1]),
            Ok(CreditOutcome::Exhausted { refill_in: None })
        );
        assert_eq!(
            spend_outcome(&[2, 1_500_000]),
            Ok(CreditOutcome::Exhausted {
                refill_in: Some(Duration::from_millis(1500))
            })
        );
        assert!(spend_outcome(&[1, -1]).is_err());
        assert!(spend_outcome(&[3]).is_err());
        assert_eq!(
            credit_args(Some(
                &Credits::new(5).with_refill(crate::key::Refill::new(6, Duration::from_secs(7)))
            )),
            ["5".to_owned(), "6".to_owned(), "7000000".to_owned()]
        );
        assert_eq!(credit_args(None), <[String; 3]>::default());
    }

    #[test]
    fn times_round_trip_to_the_nanosecond() {
        for at in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1, 1),
            UNIX_EPOCH - Duration::new(1, 1),
            UNIX_EPOCH + Duration::from_secs(40_000 * 365 * 86_400),
        ] {
            assert_eq!(from_nanos(to_nanos(at)), Some(at));
        }
        assert_eq!(from_nanos(i128::MAX), None);
    }
}
