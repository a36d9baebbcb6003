//! The Redis GCRA limiter (feature `redis`): one limit shared by every process that talks to
//! the same Redis.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, Script};

use super::{Check, Decision, MemoryLimiter, Quota, RateLimitError, RateLimiter};

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

/// The Redis GCRA limiter: every process that uses the same Redis shares one limit per key.
///
/// Each decision is one round trip: an `EVALSHA` of one Lua script (loaded again by itself
/// after a `NOSCRIPT`, as when Redis restarted) that reads the key's stored timestamp, decides
/// with the same integer GCRA as [`MemoryLimiter`], and stores the new timestamp — atomically,
/// so concurrent requests from any number of processes never overspend. Time is Redis's own
/// (`TIME`), so servers whose clocks disagree still agree on the limit. Each limited key is one
/// Redis key, `{prefix}{key}` (one key per script call, as Redis Cluster requires), which expires
/// by itself once the caller's burst has refilled, so idle callers cost nothing. The arithmetic
/// is exact to the nanosecond, like the in-memory limiter's, while `emission interval × burst`
/// stays under 2^53 ns (104 days); beyond, it counts whole microseconds (the emission interval
/// rounded to the nearest one), so that every number stays exact in Lua's doubles.
///
/// **Failure.** Each decision waits at most [`timeout`](Self::timeout) (default 50 ms); when
/// Redis fails or is late, the [`FailurePolicy`] answers (default [`FailurePolicy::Closed`]: 503).
/// The connection manager reconnects by itself in the background, so the limiter recovers when
/// Redis returns without being rebuilt. A request that timed out may still have been counted by
/// Redis.
///
/// The connection is a [`ConnectionManager`] by default; [`with_connection`](Self::with_connection)
/// takes any other async connection, such as a Redis Cluster connection (each decision touches
/// one key, so it goes to that key's node). Cloning is cheap and clones share the connection.
/// `Debug` shows the server's address but never its password.
///
/// ```no_run
/// use std::time::Duration;
/// use keygate::ratelimit::{FailurePolicy, MemoryLimiter, RateLimitLayer, RedisLimiter};
/// use keygate::Quota;
///
/// # async fn run() -> Result<(), redis::RedisError> {
/// let limiter = RedisLimiter::connect("redis://127.0.0.1:6379/")
///     .await?
///     .prefix("weather:rl:")
///     .timeout(Duration::from_millis(20))
///     .on_failure(FailurePolicy::Fallback(MemoryLimiter::new()));
/// let layer = RateLimitLayer::new(limiter, Quota::per_minute(100));
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
    /// The Lua script the limiter runs, for reading or for preloading with `SCRIPT LOAD`
    /// (the limiter loads it by itself when Redis does not know it). Its arguments: `KEYS[1]`,
    /// the prefixed key; `ARGV`, the emission interval, the tolerance (interval × burst), the
    /// cost, and the nanoseconds per unit of the first two (1, or 1000 for quotas longer than
    /// 104 days).
    ///
    /// ```
    /// use keygate::ratelimit::RedisLimiter;
    ///
    /// assert!(RedisLimiter::SCRIPT.contains("redis.call('TIME')"));
    /// let sha = redis::Script::new(RedisLimiter::SCRIPT).get_hash().to_owned(); // for EVALSHA
    /// # let _ = sha;
    /// ```
    pub const SCRIPT: &'static str = LUA;

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
    /// script. Fails if the URL is invalid or Redis does not answer within a few seconds; to
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
        crate::redis_conn::load_scripts(&limiter.inner.conn, &[&SCRIPT]).await?;
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

    /// The Redis key that holds `key`'s state: the prefix, then `key`.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let limiter = keygate::ratelimit::RedisLimiter::connect("redis://127.0.0.1/").await?;
    /// assert_eq!(limiter.redis_key("key_1"), "keygate:rl:key_1");
    /// # Ok(())
    /// # }
    /// ```
    pub fn redis_key(&self, key: &str) -> String {
        [&*self.inner.prefix, key].concat()
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

    fn decision(self, (allowed, remaining, reset, retry): (i64, i64, i64, i64)) -> Decision {
        let duration = |v: i64| {
            let v = u64::try_from(v).unwrap_or(0);
            Duration::from_nanos(v.saturating_mul(self.unit))
        };
        Decision {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            reset_after: duration(reset),
            retry_after: duration(retry),
        }
    }
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> Inner<C> {
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
        let error = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(reply)) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(target: "keygate", "Redis rate limiter reachable again");
                }
                return Ok(args.decision(reply));
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
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> RateLimiter for RedisLimiter<C> {
    fn check(&self, key: &str, quota: &Quota, cost: u32) -> Check {
        let inner = self.inner.clone();
        let redis_key = self.redis_key(key);
        let key = matches!(inner.policy, FailurePolicy::Fallback(_)).then(|| key.to_owned());
        let quota = *quota;
        Check::pending(async move { inner.decide(redis_key, key, quota, cost).await })
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
}
