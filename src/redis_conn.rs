//! What every Redis backend (limiter, key store, revocations, usage) does the same way: how
//! long it waits at start, how it names its server without the password, and how it loads its
//! scripts.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Client, RedisError, Script};

/// How long a backend's `connect` waits for Redis to answer before giving up.
pub(crate) const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// `host:port/db` of `client`: what `Debug` and logs show, never the password.
pub(crate) fn addr(client: &Client) -> Box<str> {
    let info = client.get_connection_info();
    format!("{}/{}", info.addr(), info.redis_settings().db()).into_boxed_str()
}

/// Loads `scripts` into Redis, within [`CONNECT_WAIT`] (then a timed-out I/O error).
pub(crate) async fn load_scripts(
    conn: &ConnectionManager,
    scripts: &[&Script],
) -> Result<(), RedisError> {
    let mut conn = conn.clone();
    let load = async {
        for script in scripts {
            script.load_async(&mut conn).await?;
        }
        Ok(())
    };
    match tokio::time::timeout(CONNECT_WAIT, load).await {
        Ok(loaded) => loaded,
        Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
    }
}
