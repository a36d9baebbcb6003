//! The Redis limiter (feature `redis`): limits shared by every process that talks to the same
//! Redis.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, RedisResult, Script, ScriptInvocation};
use smallvec::SmallVec;

use super::usage_redis::push_key_part;
use super::{
    Check, CheckAll, Decision, MemoryLimiter, Quota, RateLimitError, RateLimiter, Subject, Verdict,
};
use crate::metrics::RedisOp;
use crate::{Limit, Limits};

/// The key prefix a [`RedisLimiter`] uses unless told otherwise ([`RedisLimiter::prefix`]).
const DEFAULT_REDIS_PREFIX: &str = "keygate:rl:";

/// How long a [`RedisLimiter`] waits for one decision unless told otherwise
/// ([`RedisLimiter::timeout`]).
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

/// Integers up to 2^53 are exact in a Lua number (a double).
const EXACT: u64 = 1 << 53;

/// The GCRA of `gcra.rs`, as one Lua script: one atomic read-modify-write per decision.
///
/// The key holds the theoretical arrival time (TAT) in nanoseconds since the Unix epoch, in
/// decimal. The script splits it into microseconds and a sub-microsecond part so that every
/// number it computes with stays below 2^53 and is exact.
const LUA: &str = r"-- keygate GCRA: one rate-limit decision for KEYS[1].
-- ARGV: emission interval T, tolerance tau (= T * burst), cost, unit (nanoseconds per unit
-- of T and tau: 1, or 1000 for quotas too long for nanoseconds to stay below 2^53).
-- KEYS[1] holds the theoretical arrival time (TAT) in nanoseconds since the Unix epoch.
-- Returns {allowed (1 or 0), remaining, reset_after, retry_after}, durations in units.
if redis.replicate_commands then redis.replicate_commands() end
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local unit = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local used = 0
local stored = redis.call('GET', KEYS[1])
if stored and #stored > 3 then
  local us = tonumber(string.sub(stored, 1, -4))
  local sub = tonumber(string.sub(stored, -3))
  if us and sub then
    if unit == 1 then
      used = (us - now) * 1000 + sub
    else
      used = us - now
      if sub > 0 then used = used + 1 end
    end
    if used < 0 then used = 0 end
  end
end
local ahead = used + cost * t
if ahead > tau then
  local remaining = 0
  if tau > used then remaining = math.floor((tau - used) / t) end
  -- The wait, ahead - tau, as cost * t - (tau - used): exact whenever cost * t is, as for any
  -- cost within the burst. Held below 2^62, so that a cost far beyond the burst still replies
  -- a long wait and never an overflowed integer.
  local retry = cost * t - (tau - used)
  if retry > 4611686018427387904 then retry = 4611686018427387904 end
  return {0, remaining, used, retry}
end
if ahead > 0 then
  local us, sub
  if unit == 1 then
    us = now + math.floor(ahead / 1000)
    sub = ahead % 1000
  else
    us = now + ahead
    sub = 0
  end
  local ttl = math.ceil(ahead / (1000000 / unit))
  redis.call('SET', KEYS[1], string.format('%.0f%03d', us, sub), 'PX', ttl)
end
return {1, math.floor((tau - ahead) / t), ahead, 0}
";

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LUA));

/// A whole list of limits as one Lua script: every limit decided, and the spends written only
/// when every enforced one admits, in one atomic call.
///
/// A rate's key holds its TAT exactly as [`LUA`] stores it (so a caller's one rate reads the
/// same state through either script); a cap's key holds `<window id>:<count>`, the window id
/// being whole Unix seconds divided by the window, so that a key not yet expired at a window's
/// boundary is never read as the next window's count.
const LIST_LUA: &str = r"-- keygate limits: one decision for a list of limits, atomically.
-- KEYS[i] holds the state of limit i.
-- ARGV[1]: 1 to decide and spend, 0 to peek (decide, spend nothing). ARGV[2]: the cost.
-- Then five arguments per limit: kind, shadow (1 or 0), and three numbers:
--   kind 'g', a GCRA rate: emission interval T, tolerance tau (= T * burst), unit (nanoseconds
--     per unit of T and tau: 1, or 1000); KEYS[i] holds the TAT as the single-limit script
--     stores it.
--   kind 'f', a fixed-window cap: limit, window in seconds, 0; KEYS[i] holds
--     '<window id>:<count>', the window id being floor(unix time / window).
-- Nothing is written unless every limit not in shadow admits; then every limit that admits
-- is spent, and a shadow limit that denies is not.
-- Returns four numbers per limit: allowed (1 or 0), remaining, reset_after, retry_after;
-- durations in units for a rate, in microseconds for a cap. When spending and the request is
-- denied, a limit that would have admitted it replies what it has now (nothing was spent).
if redis.replicate_commands then redis.replicate_commands() end
local spend = ARGV[1] == '1'
local cost = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

local function rate(stored, cost, t, tau, unit)
  local used = 0
  if stored and #stored > 3 then
    local us = tonumber(string.sub(stored, 1, -4))
    local sub = tonumber(string.sub(stored, -3))
    if us and sub then
      if unit == 1 then
        used = (us - now) * 1000 + sub
      else
        used = us - now
        if sub > 0 then used = used + 1 end
      end
      if used < 0 then used = 0 end
    end
  end
  local ahead = used + cost * t
  if ahead > tau then
    local remaining = 0
    if tau > used then remaining = math.floor((tau - used) / t) end
    local retry = cost * t - (tau - used)
    if retry > 4611686018427387904 then retry = 4611686018427387904 end
    return 0, remaining, used, retry
  end
  local value, ttl
  if ahead > 0 then
    local us, sub
    if unit == 1 then
      us = now + math.floor(ahead / 1000)
      sub = ahead % 1000
    else
      us = now + ahead
      sub = 0
    end
    value = string.format('%.0f%03d', us, sub)
    ttl = math.ceil(ahead / (1000000 / unit))
  end
  return 1, math.floor((tau - ahead) / t), ahead, 0, value, ttl
end

local function cap(stored, cost, limit, window)
  local span = window * 1000000
  local id = math.floor(now / span)
  local count = 0
  if stored then
    local sid, n = string.match(stored, '^(%d+):(%d+)$')
    if sid and tonumber(sid) == id then count = tonumber(n) end
  end
  -- Microseconds to the window's end: its reset, and the wait of a denied request.
  local left = (id + 1) * span - now
  if count + cost > limit then
    local remaining = limit - count
    if remaining < 0 then remaining = 0 end
    return 0, remaining, left, left
  end
  local value = string.format('%.0f:%.0f', id, count + cost)
  return 1, limit - count - cost, left, 0, value, math.ceil(left / 1000)
end

local function decide(i, stored, c)
  local a = 2 + (i - 1) * 5
  if ARGV[a + 1] == 'f' then
    return cap(stored, c, tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]))
  end
  return rate(stored, c, tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]))
end

local out = {}
local states = {}
local writes = {}
local admit = true
for i = 1, #KEYS do
  local stored = redis.call('GET', KEYS[i])
  states[i] = stored
  local allowed, remaining, reset, retry, value, ttl = decide(i, stored, cost)
  local shadow = ARGV[2 + (i - 1) * 5 + 2] == '1'
  if allowed == 0 and not shadow then admit = false end
  if value then writes[#writes + 1] = {KEYS[i], value, ttl} end
  out[#out + 1] = allowed
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
if spend and admit then
  for _, w in ipairs(writes) do
    redis.call('SET', w[1], w[2], 'PX', w[3])
  end
elseif spend then
  -- Denied: nothing was spent, so a limit that would have admitted replies its state as it is.
  for i = 1, #KEYS do
    local o = (i - 1) * 4
    if out[o + 1] == 1 then
      out[o + 1], out[o + 2], out[o + 3], out[o + 4] = decide(i, states[i], 0)
    end
  end
end
return out
";

static LIST_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LIST_LUA));

/// What a [`RedisLimiter`] answers when Redis fails or does not answer within the timeout.
///
/// ```
/// use keygate::ratelimit::{FailurePolicy, MemoryLimiter};
///
/// assert!(matches!(FailurePolicy::default(), FailurePolicy::Closed));
/// let degrade = FailurePolicy::Fallback(MemoryLimiter::new());
/// # let _ = degrade;
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Fail closed: the check fails with [`RateLimitError`], and the layer answers 503 (gRPC
    /// `UNAVAILABLE`). The default: an outage of Redis never lifts the limits.
    #[default]
    Closed,
    /// Fail open: admit the request, as if its caller had the whole burst left
    /// (`remaining = burst`). Keeps the API up at the price of its limits while Redis is away.
    Open,
    /// Decide in this process's memory instead. Each process then enforces the limit on its
    /// own (a caller may get up to one limit per process) until Redis is back.
    Fallback(MemoryLimiter),
}

/// The Redis limiter: every process that uses the same Redis shares one state per caller and
/// limit.
///
/// Each decision is one round trip: an `EVALSHA` of one Lua script (loaded again by itself
/// after a `NOSCRIPT`, as when Redis restarted) that reads the stored state, decides with the
/// same integer GCRA as [`MemoryLimiter`], and stores the new state — atomically, so concurrent
/// requests from any number of processes never overspend. Time is Redis's own (`TIME`), so
/// servers whose clocks disagree still agree on the limit. The arithmetic is exact to the
/// nanosecond, like the in-memory limiter's, while `emission interval × burst` stays under
/// 2^53 ns (104 days); beyond, it counts whole microseconds (the emission interval rounded to
/// the nearest one), so that every number stays exact in Lua's doubles.
///
/// **Lists of limits.** [`check_all`](RateLimiter::check_all) decides a whole list
/// ([`Limits`]: rates, fixed-window caps, limits per owner, limits in shadow) in one script
/// call, [`LIST_SCRIPT`](RedisLimiter::LIST_SCRIPT): every limit is decided, and the spends are
/// written only when every limit not in shadow admits (a shadow limit that denies is never
/// spent), so a request denied by one limit spends nothing from the others, however many
/// processes decide at once. A fixed-window cap counts per UTC-aligned window, numbered from
/// Redis's clock; its key stores the window's number with the count, so a count left from the
/// previous window is never read as the current one's, and it expires at the window's end.
/// [`peek`](RateLimiter::peek) runs the same script without spending. A list of one rate
/// counted per caller is decided by the single-limit script, [`SCRIPT`](RedisLimiter::SCRIPT),
/// on the same key as [`check`](RateLimiter::check): it costs what a single check costs.
///
/// **Keys.** Every key starts with the [`prefix`](Self::prefix) (default `keygate:rl:`):
///
/// | state | Redis key |
/// |---|---|
/// | a caller's one rate (`check`, or a list of one rate per caller) | `<prefix><key>` ([`redis_key`](Self::redis_key)) |
/// | each limit of any other list, per caller (and a fixed-window cap given to `check`) | `<prefix>{caller:<id>}:<quota>` |
/// | each limit of a list counted per owner ([`LimitBy::Owner`](crate::LimitBy::Owner)) | `<prefix>{owner:<id>}:<quota>` |
///
/// `<quota>` is the limit's quota text (`10/s;burst=20`, `10000/d;fixed`), so the limits of a list
/// are independent states (two limits of one list with the same quota, counted alike, share one),
/// and a list that changes starts its changed limits afresh and leaves the others as they were.
/// `<id>` is the caller's key or the owner's name made safe for a key name, as
/// [`RedisUsage`](super::RedisUsage::redis_key) writes a caller: printable ASCII other than `%`,
/// `:`, `{`, `}`, `~`, `*`, `?`, `[`, `]` and `\` stays as it is, other bytes become `%XX`, and
/// names longer than 128 bytes so written become `~` and their SHA-256. So a caller and an owner of
/// the same name never share a key, and no caller can name its key into another's state: a caller
/// key that starts with `{` is written `<prefix>{}<key>` in the first form. A caller without an
/// owner counts the limits of its list that are per owner as its own (under `{caller:<id>}`).
/// [`redis_keys`](Self::redis_keys) lists the keys of a decision. Every key expires by itself once
/// its state holds nothing more (a rate's burst has refilled, a cap's window has ended), so idle
/// callers cost nothing.
///
/// **Redis Cluster.** A script call must touch keys of one hash slot. A single rate is one
/// key; the keys of a list counted all per caller, or all per owner, share that caller's or
/// owner's hash tag (`{caller:<id>}`), so they are in one slot, on one node. A list that mixes
/// limits per caller and per owner touches two slots, which a cluster refuses (the failure
/// policy then answers): on a cluster, give such a limiter a prefix with a hash tag of its own,
/// such as `{keygate:rl}:`, which puts all of its keys in one slot (and so on one node).
///
/// **Failure.** Each decision waits at most [`timeout`](Self::timeout) (default 50 ms); when
/// Redis fails or is late, the [`FailurePolicy`] answers (default [`FailurePolicy::Closed`]: 503),
/// for single checks, lists and peeks alike. The connection manager reconnects by itself in the
/// background, so the limiter recovers when Redis returns without being rebuilt. A request that
/// timed out may still have been counted by Redis.
///
/// The connection is a [`ConnectionManager`] by default; [`with_connection`](Self::with_connection)
/// takes any other async connection, such as a Redis Cluster connection (each decision goes to
/// its keys' node). Cloning is cheap and clones share the connection. `Debug` shows the server's
/// address but never its password.
///
/// ```no_run
/// use std::time::Duration;
/// use keygate::ratelimit::{FailurePolicy, MemoryLimiter, RateLimitLayer, RedisLimiter};
/// use keygate::Limits;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let limiter = RedisLimiter::connect("redis://127.0.0.1:6379/")
///     .await?
///     .prefix("weather:rl:")
///     .timeout(Duration::from_millis(20))
///     .on_failure(FailurePolicy::Fallback(MemoryLimiter::new()));
/// let limits: Limits = "10/s;burst=20, 10000/d;fixed".parse()?;
/// let layer = RateLimitLayer::new(limiter, limits);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
pub struct RedisLimiter<C = ConnectionManager> {
    inner: Arc<Inner<C>>,
}

#[derive(Clone)]
struct Inner<C> {
    conn: C,
    prefix: Box<str>,
    timeout: Duration,
    policy: FailurePolicy,
    /// `host:port/db` (no credentials), when known.
    addr: Option<Box<str>>,
    healthy: Arc<AtomicBool>,
}

impl RedisLimiter {
    /// The Lua script that decides a caller's one rate ([`check`](RateLimiter::check), and
    /// [`check_all`](RateLimiter::check_all) of a list of one rate per caller), for reading or for
    /// preloading with `SCRIPT LOAD` (the limiter loads it by itself when Redis does not know it).
    /// Its arguments: `KEYS[1]`, the prefixed key ([`redis_key`](Self::redis_key)); `ARGV`, the
    /// emission interval, the tolerance (interval × burst), the cost, and the nanoseconds per unit
    /// of the first two (1, or 1000 for quotas longer than 104 days).
    ///
    /// ```
    /// use keygate::ratelimit::RedisLimiter;
    ///
    /// assert!(RedisLimiter::SCRIPT.contains("redis.call('TIME')"));
    /// let sha = redis::Script::new(RedisLimiter::SCRIPT).get_hash().to_owned(); // for EVALSHA
    /// # let _ = sha;
    /// ```
    pub const SCRIPT: &'static str = LUA;

    /// The Lua script that decides a whole list of limits
    /// ([`check_all`](RateLimiter::check_all), and [`peek`](RateLimiter::peek)), for reading or
    /// for preloading with `SCRIPT LOAD` (the limiter loads it by itself, like
    /// [`SCRIPT`](Self::SCRIPT)). Its arguments: `KEYS`, the keys of the list's limits
    /// ([`redis_keys`](Self::redis_keys)); `ARGV`, `1` to spend (`0` to peek), the cost, then five
    /// per limit: its kind (`g` for a rate, `f` for a fixed-window cap), `1` if it is in shadow
    /// (else `0`), and for a rate the emission interval, the tolerance and the nanoseconds per
    /// unit of those two, as for [`SCRIPT`](Self::SCRIPT), for a cap its limit, its window in
    /// seconds and `0`. It answers four integers per limit: admitted (`1` or `0`), remaining,
    /// time to reset and time to wait, in the rate's units or, for a cap, in microseconds. When
    /// a spending call is denied, each limit that would have admitted it answers what it has
    /// now, as nothing was spent (as [`MemoryLimiter`] does).
    ///
    /// ```
    /// use keygate::ratelimit::RedisLimiter;
    ///
    /// assert!(RedisLimiter::LIST_SCRIPT.contains("redis.call('TIME')"));
    /// // For EVALSHA:
    /// let sha = redis::Script::new(RedisLimiter::LIST_SCRIPT).get_hash().to_owned();
    /// # let _ = sha;
    /// ```
    pub const LIST_SCRIPT: &'static str = LIST_LUA;

    /// A limiter on a connection manager you built (to set its reconnection or timeouts, start
    /// from [`manager_config`](Self::manager_config)).
    ///
    /// ```no_run
    /// use keygate::ratelimit::RedisLimiter;
    /// use redis::aio::ConnectionManager;
    ///
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let client = redis::Client::open("redis://127.0.0.1/")?;
    /// let manager =
    ///     ConnectionManager::new_with_config(client, RedisLimiter::manager_config()).await?;
    /// let limiter = RedisLimiter::new(manager);
    /// # let _ = limiter;
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(manager: ConnectionManager) -> Self {
        Self::build(manager, None)
    }

    /// Connects to the Redis at `url` (`redis://[:password@]host[:port][/db]`) and loads the
    /// scripts. Fails if the URL is invalid or Redis does not answer within a few seconds; to
    /// start while Redis may be down, use [`connect_lazy`](Self::connect_lazy).
    ///
    /// ```no_run
    /// use keygate::ratelimit::RedisLimiter;
    ///
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let limiter = RedisLimiter::connect("redis://127.0.0.1:6379/").await?;
    /// # let _ = limiter;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, RedisError> {
        let limiter = Self::connect_lazy(url)?;
        crate::redis_conn::load_scripts(&limiter.inner.conn, &[&SCRIPT, &LIST_SCRIPT]).await?;
        Ok(limiter)
    }

    /// A limiter for the Redis at `url` that connects on first use, so it can be built while
    /// Redis is down (decisions follow the [`FailurePolicy`] until it is up). Fails only on an
    /// invalid URL.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the connection manager starts a task).
    ///
    /// ```no_run
    /// use keygate::ratelimit::{FailurePolicy, RedisLimiter};
    ///
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let limiter = RedisLimiter::connect_lazy("redis://redis.internal:6379/")?
    ///     .on_failure(FailurePolicy::Open);
    /// # let _ = limiter;
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect_lazy(url: &str) -> Result<Self, RedisError> {
        let client = Client::open(url)?;
        let addr = crate::redis_conn::addr(&client);
        let manager = ConnectionManager::new_lazy_with_config(client, Self::manager_config())?;
        Ok(Self::build(manager, Some(addr)))
    }

    /// The connection-manager settings [`connect`](Self::connect) uses: each connection attempt
    /// gives up after 1 s and each response after 1 s, and a lost connection is retried twice
    /// with short backoff (50 ms up to 1 s), then again on the next decision. A stopped Redis or
    /// a closed port therefore never leaves a decision waiting for more than the limiter's own
    /// timeout, and the limiter reconnects by itself when Redis returns.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keygate::ratelimit::RedisLimiter;
    ///
    /// let config = RedisLimiter::manager_config().set_connection_timeout(Some(Duration::from_secs(3)));
    /// # let _ = config;
    /// ```
    pub fn manager_config() -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
    }
}

impl<C> RedisLimiter<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A limiter on any async Redis connection: a `MultiplexedConnection`, or a Redis Cluster
    /// connection (`redis::cluster_async::ClusterConnection`, feature `cluster-async` of the
    /// `redis` crate). Reconnecting is then the connection's own business.
    ///
    /// ```no_run
    /// use keygate::ratelimit::RedisLimiter;
    ///
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let client = redis::Client::open("redis://127.0.0.1/")?;
    /// let conn = client.get_multiplexed_async_connection().await?;
    /// let limiter = RedisLimiter::with_connection(conn);
    /// # let _ = limiter;
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_connection(conn: C) -> Self {
        Self::build(conn, None)
    }

    fn build(conn: C, addr: Option<Box<str>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                conn,
                prefix: DEFAULT_REDIS_PREFIX.into(),
                timeout: DEFAULT_REDIS_TIMEOUT,
                policy: FailurePolicy::default(),
                addr,
                healthy: Arc::new(AtomicBool::new(true)),
            }),
        }
    }

    fn inner(&mut self) -> &mut Inner<C> {
        Arc::make_mut(&mut self.inner)
    }

    /// Prefixes every Redis key with `prefix` (default
    /// `"keygate:rl:"`): the key of caller `key_1` is `keygate:rl:key_1`.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let limiter = keygate::ratelimit::RedisLimiter::connect("redis://127.0.0.1/")
    ///     .await?
    ///     .prefix("billing-api:rl:");
    /// # let _ = limiter;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.inner().prefix = prefix.into().into_boxed_str();
        self
    }

    /// Waits at most `timeout` for each decision (default 50 ms),
    /// then lets the [`FailurePolicy`] answer.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let limiter = keygate::ratelimit::RedisLimiter::connect("redis://127.0.0.1/")
    ///     .await?
    ///     .timeout(Duration::from_millis(10));
    /// # let _ = limiter;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.inner().timeout = timeout;
        self
    }

    /// What to answer when Redis fails or is late (default [`FailurePolicy::Closed`]).
    ///
    /// ```no_run
    /// use keygate::ratelimit::{FailurePolicy, MemoryLimiter, RedisLimiter};
    ///
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let limiter = RedisLimiter::connect("redis://127.0.0.1/")
    ///     .await?
    ///     .on_failure(FailurePolicy::Fallback(MemoryLimiter::new()));
    /// # let _ = limiter;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.inner().policy = policy;
        self
    }

    /// The Redis key that holds `key`'s one rate (its [`check`](RateLimiter::check)s, and
    /// its [`check_all`](RateLimiter::check_all) of a list of one rate per caller): the prefix,
    /// then `key`; a key that starts with `{` gets `{}` before it, so that no caller's key is
    /// ever a key of a list (see *Keys* at [`RedisLimiter`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), redis::RedisError> {
    /// // Connects on first use: building it needs no Redis.
    /// let limiter = keygate::ratelimit::RedisLimiter::connect_lazy("redis://127.0.0.1/")?;
    /// assert_eq!(limiter.redis_key("key_1"), "keygate:rl:key_1");
    /// assert_eq!(limiter.redis_key("{owner:acme}:5/s"), "keygate:rl:{}{owner:acme}:5/s");
    /// # Ok(())
    /// # }
    /// ```
    pub fn redis_key(&self, key: &str) -> String {
        single_key(&self.inner.prefix, key)
    }

    /// The Redis keys that hold the state of `limits` for `subject`, one per limit in the
    /// list's order: what [`check_all`](RateLimiter::check_all) and [`peek`](RateLimiter::peek)
    /// read and write (see *Keys* at [`RedisLimiter`]).
    ///
    /// ```
    /// use keygate::Limits;
    /// use keygate::ratelimit::Subject;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let limiter = keygate::ratelimit::RedisLimiter::connect_lazy("redis://127.0.0.1/")?;
    /// let limits: Limits = "10/s;burst=20, 10000/d;fixed;owner".parse()?;
    /// let keys = limiter.redis_keys(Subject::with_owner("key_1", Some("acme")), &limits);
    /// assert_eq!(
    ///     keys,
    ///     ["keygate:rl:{caller:key_1}:10/s;burst=20", "keygate:rl:{owner:acme}:10000/d;fixed"]
    /// );
    /// // A list of one rate per caller keeps the key of `check`.
    /// let one = limiter.redis_keys(Subject::new("key_1"), &"10/s".parse()?);
    /// assert_eq!(one, [limiter.redis_key("key_1")]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn redis_keys(&self, subject: Subject<'_>, limits: &Limits) -> Vec<String> {
        list_keys(&self.inner.prefix, subject, limits)
    }

    /// Whether the last decision reached Redis (`false` while the failure policy answers).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let limiter = keygate::ratelimit::RedisLimiter::connect("redis://127.0.0.1/").await?;
    /// assert!(limiter.is_healthy());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }
}

/// Whether `limits` is one rate counted for the caller itself: decided by [`SCRIPT`] on the
/// key of [`RedisLimiter::redis_key`], as a single check is.
fn single_rate<'l>(subject: Subject<'_>, limits: &'l Limits) -> Option<&'l Quota> {
    match limits.as_slice() {
        [limit] if !limit.quota().is_fixed() && !subject.is_owner_wide(limit.by()) => {
            Some(limit.quota())
        }
        _ => None,
    }
}

/// The key of a caller's one rate: `prefix` and `key`, with `{}` between them when `key`
/// starts with `{`, so that it never reads as a key of [`item_key`] (whose part after the
/// prefix starts with `{c` or `{o`).
fn single_key(prefix: &str, key: &str) -> String {
    let brace = if key.starts_with('{') { "{}" } else { "" };
    [prefix, brace, key].concat()
}

/// The key of `limit` of a list for `subject`: `prefix`, the hash tag of the caller or owner
/// (`{caller:<id>}`, `{owner:<id>}`, the id escaped so that it never holds `:`, `{` or `}`),
/// `:` and the limit's quota text.
fn item_key(prefix: &str, subject: Subject<'_>, limit: &Limit) -> String {
    let by = limit.by();
    let (namespace, id) = if subject.is_owner_wide(by) {
        ("{owner:", subject.key_for(by))
    } else {
        ("{caller:", subject.key)
    };
    let mut key = String::with_capacity(prefix.len() + id.len() + 32);
    key.push_str(prefix);
    key.push_str(namespace);
    push_key_part(&mut key, id);
    key.push_str("}:");
    // Display into the key itself: no allocation of the quota's text on its own.
    let _ = fmt::Write::write_fmt(&mut key, format_args!("{}", limit.quota()));
    key
}

/// The keys of `limits` for `subject`, in the list's order.
fn list_keys(prefix: &str, subject: Subject<'_>, limits: &Limits) -> Vec<String> {
    if single_rate(subject, limits).is_some() {
        return vec![single_key(prefix, subject.key)];
    }
    limits
        .iter()
        .map(|limit| item_key(prefix, subject, limit))
        .collect()
}

/// The script's arguments for one quota and cost.
#[derive(Clone, Copy)]
struct Args {
    /// Emission interval, in units.
    t: u64,
    /// Tolerance (`t × burst`), in units.
    tau: u64,
    cost: u32,
    /// Nanoseconds per unit.
    unit: u64,
}

impl Args {
    fn new(quota: &Quota, cost: u32) -> Self {
        let t = quota.emission_interval_nanos();
        let burst = u64::from(quota.burst());
        let tau = t.saturating_mul(burst);
        if tau < EXACT {
            return Self {
                t,
                tau,
                cost,
                unit: 1,
            };
        }
        // Longer than 104 days: count in microseconds (up to 285 years).
        let t = t.saturating_add(500) / 1000;
        let t = t.max(1);
        Self {
            t,
            tau: t.saturating_mul(burst).min(EXACT - 1),
            cost,
            unit: 1000,
        }
    }

    fn decision(self, reply: (i64, i64, i64, i64)) -> Decision {
        decision(self.unit, reply)
    }
}

/// A decision from the script's four numbers, its durations in units of `unit` nanoseconds.
fn decision(unit: u64, (allowed, remaining, reset, retry): (i64, i64, i64, i64)) -> Decision {
    let duration = |v: i64| {
        let v = u64::try_from(v).unwrap_or(0);
        Duration::from_nanos(v.saturating_mul(unit))
    };
    Decision {
        allowed: allowed == 1,
        remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
        reset_after: duration(reset),
        retry_after: duration(retry),
    }
}

/// One limit of a list, as [`LIST_SCRIPT`] takes it.
#[derive(Clone, Copy)]
enum Item {
    Rate(Args),
    Cap { limit: u32, window_secs: u64 },
}

impl Item {
    fn new(quota: &Quota, cost: u32) -> Self {
        if quota.is_fixed() {
            // A cap's window is a whole number of seconds (a `Quota` invariant).
            Self::Cap {
                limit: quota.limit(),
                window_secs: quota.window().as_secs().max(1),
            }
        } else {
            Self::Rate(Args::new(quota, cost))
        }
    }

    /// Appends the item's five arguments.
    fn push_args(self, invocation: &mut ScriptInvocation<'_>, shadow: bool) {
        match self {
            Self::Rate(a) => invocation
                .arg("g")
                .arg(u8::from(shadow))
                .arg(a.t)
                .arg(a.tau)
                .arg(a.unit),
            Self::Cap { limit, window_secs } => invocation
                .arg("f")
                .arg(u8::from(shadow))
                .arg(limit)
                .arg(window_secs)
                .arg(0),
        };
    }

    fn decision(self, reply: &[i64]) -> Decision {
        let &[allowed, remaining, reset, retry] = reply else {
            // Never sent by the script; a reply short of numbers denies.
            return decision(1, (0, 0, 0, 1_000_000_000));
        };
        let unit = match self {
            Self::Rate(a) => a.unit,
            // The script counts a cap's time in microseconds.
            Self::Cap { .. } => 1000,
        };
        decision(unit, (allowed, remaining, reset, retry))
    }
}

/// A [`Subject`] kept for the memory fallback, which decides after Redis failed.
struct OwnedSubject {
    key: String,
    owner: Option<String>,
}

impl OwnedSubject {
    fn new(subject: Subject<'_>) -> Self {
        Self {
            key: subject.key.to_owned(),
            owner: subject.owner.map(str::to_owned),
        }
    }

    fn get(&self) -> Subject<'_> {
        Subject::with_owner(&self.key, self.owner.as_deref())
    }
}

/// The decision of a verdict's first limit (a verdict has one per limit: a denial if none).
fn first_decision(verdict: &Verdict) -> Decision {
    verdict.decisions().first().copied().unwrap_or(Decision {
        allowed: false,
        remaining: 0,
        reset_after: Duration::ZERO,
        retry_after: Duration::from_secs(1),
    })
}

/// The decision of every limit when the limiter fails open: admitted, with the whole burst.
fn open_verdict(limits: &Limits) -> Verdict {
    Verdict::new(
        limits,
        limits.iter().map(|limit| Decision {
            allowed: true,
            remaining: limit.quota().burst(),
            reset_after: Duration::ZERO,
            retry_after: Duration::ZERO,
        }),
    )
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> Inner<C> {
    /// Runs one Redis call within the timeout, and keeps the health flag (and its log lines)
    /// up to date.
    async fn call<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, RateLimitError> {
        let answer = crate::metrics::timed_redis(RedisOp::RateLimit, self.timeout, call).await;
        let error = match answer {
            Ok(Ok(reply)) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(target: "keygate", "Redis rate limiter reachable again");
                }
                return Ok(reply);
            }
            Ok(Err(e)) => RateLimitError::Backend(Box::new(e)),
            Err(_) => RateLimitError::Timeout,
        };
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                target: "keygate",
                error = %error,
                policy = ?self.policy,
                "Redis rate limiter unavailable; the failure policy decides until it is back"
            );
        } else {
            tracing::debug!(target: "keygate", error = %error, "Redis rate limiter unavailable");
        }
        Err(error)
    }

    async fn decide(
        &self,
        redis_key: String,
        key: Option<String>,
        quota: Quota,
        cost: u32,
    ) -> Result<Decision, RateLimitError> {
        let args = Args::new(&quota, cost);
        let mut conn = self.conn.clone();
        let mut invocation = SCRIPT.key(redis_key);
        invocation
            .arg(args.t)
            .arg(args.tau)
            .arg(args.cost)
            .arg(args.unit);
        let call = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut conn);
        let error = match self.call(call).await {
            Ok(reply) => return Ok(args.decision(reply)),
            Err(error) => error,
        };
        match &self.policy {
            FailurePolicy::Closed => Err(error),
            FailurePolicy::Open => Ok(Decision {
                allowed: true,
                remaining: quota.burst(),
                reset_after: Duration::ZERO,
                retry_after: Duration::ZERO,
            }),
            FailurePolicy::Fallback(memory) => {
                memory
                    .check(key.as_deref().unwrap_or_default(), &quota, cost)
                    .await
            }
        }
    }

    /// Decides (or peeks at) a list of limits by `plan`, on `keys` (one per limit).
    async fn decide_list(
        &self,
        keys: Vec<String>,
        plan: Plan,
        subject: Option<OwnedSubject>,
        limits: Limits,
        cost: u32,
    ) -> Result<Verdict, RateLimitError> {
        let mut conn = self.conn.clone();
        let answer = match &plan {
            Plan::Single(args) => {
                let mut invocation = SCRIPT.prepare_invoke();
                invocation
                    .key(keys)
                    .arg(args.t)
                    .arg(args.tau)
                    .arg(args.cost)
                    .arg(args.unit);
                let call = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut conn);
                self.call(call)
                    .await
                    .map(|reply| Verdict::new(&limits, [args.decision(reply)]))
            }
            Plan::List { items, spend } => {
                let mut invocation = LIST_SCRIPT.prepare_invoke();
                invocation.key(keys).arg(u8::from(*spend)).arg(cost);
                for (limit, item) in limits.iter().zip(items) {
                    item.push_args(&mut invocation, limit.is_shadow());
                }
                let call = invocation.invoke_async::<Vec<i64>>(&mut conn);
                self.call(call).await.map(|reply| {
                    let decisions = reply.chunks(4).zip(items).map(|(r, i)| i.decision(r));
                    Verdict::new(&limits, decisions)
                })
            }
        };
        let error = match answer {
            Ok(verdict) => return Ok(verdict),
            Err(error) => error,
        };
        match &self.policy {
            FailurePolicy::Closed => Err(error),
            FailurePolicy::Open => Ok(open_verdict(&limits)),
            FailurePolicy::Fallback(memory) => {
                let subject = subject.as_ref().map_or(Subject::new(""), OwnedSubject::get);
                if plan.spends() {
                    memory.check_all(subject, &limits, cost).await
                } else {
                    RateLimiter::peek(memory, subject, &limits).await
                }
            }
        }
    }
}

/// How a list is decided.
enum Plan {
    /// A caller's one rate, by [`SCRIPT`].
    Single(Args),
    /// Any list by [`LIST_SCRIPT`], spending or (peek) not.
    List {
        items: SmallVec<[Item; 2]>,
        spend: bool,
    },
}

impl Plan {
    fn spends(&self) -> bool {
        match self {
            Self::Single(_) => true,
            Self::List { spend, .. } => *spend,
        }
    }
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> RedisLimiter<C> {
    fn list(&self, subject: Subject<'_>, limits: &Limits, plan: Plan, cost: u32) -> CheckAll {
        let inner = self.inner.clone();
        let keys = self.redis_keys(subject, limits);
        let subject =
            matches!(inner.policy, FailurePolicy::Fallback(_)).then(|| OwnedSubject::new(subject));
        let limits = limits.clone();
        CheckAll::pending(async move { inner.decide_list(keys, plan, subject, limits, cost).await })
    }
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> RateLimiter for RedisLimiter<C> {
    fn check(&self, key: &str, quota: &Quota, cost: u32) -> Check {
        if quota.is_fixed() {
            // A cap is decided as a list of one, on that list's key.
            let all = self.check_all(Subject::new(key), &Limits::from(*quota), cost);
            return Check::pending(async move { all.await.map(|v| first_decision(&v)) });
        }
        let inner = self.inner.clone();
        let redis_key = self.redis_key(key);
        let key = matches!(inner.policy, FailurePolicy::Fallback(_)).then(|| key.to_owned());
        let quota = *quota;
        Check::pending(async move { inner.decide(redis_key, key, quota, cost).await })
    }

    /// Decides the whole list in one round trip (see *Lists of limits* at [`RedisLimiter`]).
    fn check_all(&self, subject: Subject<'_>, limits: &Limits, cost: u32) -> CheckAll {
        let plan = match single_rate(subject, limits) {
            Some(quota) => Plan::Single(Args::new(quota, cost)),
            None => Plan::List {
                items: limits.iter().map(|l| Item::new(l.quota(), cost)).collect(),
                spend: true,
            },
        };
        self.list(subject, limits, plan, cost)
    }

    /// Reads what a request of cost 1 would get from each limit, in one round trip, spending
    /// nothing.
    fn peek(&self, subject: Subject<'_>, limits: &Limits) -> CheckAll {
        let plan = Plan::List {
            items: limits.iter().map(|l| Item::new(l.quota(), 1)).collect(),
            spend: false,
        };
        self.list(subject, limits, plan, 1)
    }
}

impl<C> Clone for RedisLimiter<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C> fmt::Debug for RedisLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("RedisLimiter")
            .field("addr", &inner.addr)
            .field("prefix", &inner.prefix)
            .field("timeout", &inner.timeout)
            .field("policy", &inner.policy)
            .field("healthy", &inner.healthy.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_are_exact_nanoseconds_for_ordinary_quotas() {
        let a = Args::new(&Quota::per_second(3), 1);
        assert_eq!((a.t, a.tau, a.unit), (333_333_333, 999_999_999, 1));
        let a = Args::new(&Quota::per_day(1000), 2);
        assert_eq!(
            (a.t, a.tau, a.unit),
            (86_400_000_000, 86_400_000_000_000, 1)
        );
    }

    #[test]
    fn very_long_quotas_count_in_microseconds_below_2_pow_53() {
        let year: Quota = "3/d".parse::<Quota>().unwrap().with_burst(u32::MAX);
        let a = Args::new(&year, 1);
        assert_eq!(a.unit, 1000);
        assert_eq!(a.t, 28_800_000_000);
        assert!(a.tau < EXACT);
        let d = a.decision((0, 5, 10, 3));
        assert_eq!(d.reset_after, Duration::from_micros(10));
        assert_eq!(d.retry_after, Duration::from_micros(3));
        assert_eq!(d.remaining, 5);
        assert!(!d.allowed);
    }

    #[test]
    fn script_is_the_documented_constant() {
        // Services that preload the script call it by this hash (`EVALSHA`): a change to the
        // script must be a deliberate one, made here too.
        assert_eq!(
            ::redis::Script::new(RedisLimiter::SCRIPT).get_hash(),
            "04aacc80db98003a90b09c7bf214a5d49ddfc7a7"
        );
        assert_eq!(
            SCRIPT.get_hash(),
            "04aacc80db98003a90b09c7bf214a5d49ddfc7a7"
        );
    }

    #[test]
    fn list_script_is_the_documented_constant() {
        // As for `SCRIPT`: preloaded by hash, so a change must be a deliberate one.
        assert_eq!(
            ::redis::Script::new(RedisLimiter::LIST_SCRIPT).get_hash(),
            "f5dd258ec347209349068bf0690f7059972b0e49"
        );
        assert_eq!(
            LIST_SCRIPT.get_hash(),
            "f5dd258ec347209349068bf0690f7059972b0e49"
        );
    }

    fn limits(text: &str) -> Limits {
        text.parse().unwrap()
    }

    /// The hash tag Redis Cluster hashes a key by: between the first `{` and the first `}`
    /// after it, when not empty; else the whole key.
    fn hash_tag(key: &str) -> &str {
        if let Some(open) = key.find('{')
            && let Some(len) = key[open + 1..].find('}')
            && len > 0
        {
            return &key[open + 1..open + 1 + len];
        }
        key
    }

    #[test]
    fn a_callers_one_rate_keeps_the_key_of_check() {
        let p = "rl:";
        for text in ["10/s", "10/s;burst=20", "3/d;shadow", "5/min;name=x"] {
            let keys = list_keys(p, Subject::new("key_1"), &limits(text));
            assert_eq!(keys, ["rl:key_1"], "{text}");
        }
        // Counted by owner, for a caller without an owner: its own.
        let keys = list_keys(p, Subject::new("key_1"), &limits("10/s;owner"));
        assert_eq!(keys, ["rl:key_1"]);
        // A cap, or a rate of the owner, is not the caller's one rate.
        let keys = list_keys(p, Subject::new("key_1"), &limits("10/h;fixed"));
        assert_eq!(keys, ["rl:{caller:key_1}:10/h;fixed"]);
        let owned = Subject::with_owner("key_1", Some("acme"));
        assert_eq!(
            list_keys(p, owned, &limits("10/s;owner")),
            ["rl:{owner:acme}:10/s"]
        );
        assert_eq!(list_keys(p, owned, &limits("10/s")), ["rl:key_1"]);
    }

    #[test]
    fn list_keys_keep_limits_callers_and_owners_apart() {
        let p = "rl:";
        let list = limits("10/s;burst=20, 10000/d;fixed;name=daily, 100/min;owner;shadow");
        let keys = list_keys(p, Subject::with_owner("key_1", Some("acme")), &list);
        assert_eq!(
            keys,
            [
                "rl:{caller:key_1}:10/s;burst=20",
                "rl:{caller:key_1}:10000/d;fixed",
                "rl:{owner:acme}:100/min",
            ]
        );
        // A caller named like the owner: its keys are the caller's, never the owner's.
        let keys = list_keys(p, Subject::new("acme"), &limits("1/s, 100/min;owner"));
        assert_eq!(keys, ["rl:{caller:acme}:1/s", "rl:{caller:acme}:100/min"]);
        let keys = list_keys(
            p,
            Subject::with_owner("acme", Some("x")),
            &limits("1/s, 100/min"),
        );
        assert!(keys.iter().all(|k| k.starts_with("rl:{caller:acme}:")));
    }

    #[test]
    fn no_caller_key_reaches_into_another_state() {
        let p = "rl:";
        let owner_key = item_key(
            p,
            Subject::with_owner("k", Some("acme")),
            &"5/s;owner".parse().unwrap(),
        );
        assert_eq!(owner_key, "rl:{owner:acme}:5/s");
        // The one-rate key of a caller named like that key's suffix.
        assert_eq!(single_key(p, "{owner:acme}:5/s"), "rl:{}{owner:acme}:5/s");
        assert_eq!(single_key(p, "{"), "rl:{}{");
        assert_eq!(single_key(p, "}{"), "rl:}{");
        // A caller whose id holds the separators keeps them inside its own tag, escaped.
        let tricky = item_key(p, Subject::new("a}:5/s;x{owner:b"), &"5/s".parse().unwrap());
        assert_eq!(tricky, "rl:{caller:a%7D%3A5/s;x%7Bowner%3Ab}:5/s");
        assert_eq!(hash_tag(&tricky), "caller:a%7D%3A5/s;x%7Bowner%3Ab");
        // The empty caller, and a very long one.
        assert_eq!(
            item_key(p, Subject::new(""), &"1/s".parse().unwrap()),
            "rl:{caller:%}:1/s"
        );
        let long = "x".repeat(500);
        let key = item_key(p, Subject::new(&long), &"1/s".parse().unwrap());
        assert!(key.starts_with("rl:{caller:~") && key.len() < 100, "{key}");
    }

    #[test]
    fn a_lists_keys_share_one_hash_slot_unless_it_mixes_callers_and_owners() {
        let p = "keygate:rl:";
        let caller = Subject::with_owner("key:1", Some("acme"));
        let tags = |list: &str| -> Vec<String> {
            list_keys(p, caller, &limits(list))
                .iter()
                .map(|k| hash_tag(k).to_owned())
                .collect()
        };
        assert_eq!(
            tags("1/s, 2/min, 3/h;fixed"),
            ["caller:key%3A1", "caller:key%3A1", "caller:key%3A1"]
        );
        assert_eq!(
            tags("1/s;owner, 3/h;fixed;owner"),
            ["owner:acme", "owner:acme"]
        );
        assert_eq!(
            tags("1/s, 3/h;fixed;owner"),
            ["caller:key%3A1", "owner:acme"]
        );
        // A prefix with a hash tag of its own puts every key in its slot.
        let keys = list_keys("{rl}:", caller, &limits("1/s, 3/h;fixed;owner"));
        assert!(keys.iter().all(|k| hash_tag(k) == "rl"), "{keys:?}");
    }

    #[test]
    fn caps_pass_their_limit_and_window_and_answer_in_microseconds() {
        let cap = Item::new(&Quota::per_day(10_000).fixed(), 3);
        assert!(matches!(
            cap,
            Item::Cap {
                limit: 10_000,
                window_secs: 86_400
            }
        ));
        let d = cap.decision(&[0, 4, 2_000_000, 2_000_000]);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 4);
        assert_eq!(d.reset_after, Duration::from_secs(2));
        assert_eq!(d.retry_after, Duration::from_secs(2));
        let rate = Item::new(&Quota::per_second(3), 1);
        assert!(matches!(
            rate,
            Item::Rate(Args {
                t: 333_333_333,
                unit: 1,
                ..
            })
        ));
        let d = rate.decision(&[1, 2, 333_333_333, 0]);
        assert!(d.allowed);
        assert_eq!(d.reset_after, Duration::from_nanos(333_333_333));
        // A reply short of numbers denies.
        assert!(!rate.decision(&[1, 2]).allowed);
    }
}
