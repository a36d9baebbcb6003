//! The URLs of the servers some tests need, from the environment.
//!
//! Those tests are `#[ignore = "needs KEYGATE_TEST_…_URL"]`, so `cargo test` reports them as
//! ignored; asked for (`-- --include-ignored`) without their variable, they fail here instead of
//! passing without having run.

// Each test crate uses one of the two.
#![allow(dead_code)]

fn required(var: &str, needs: &str, example: &str) -> String {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!("{var} is not set: this test needs {needs}, e.g. {var}={example}"),
    }
}

/// `KEYGATE_TEST_REDIS_URL`, such as `redis://127.0.0.1:6379/`.
pub fn redis_url() -> String {
    required(
        "KEYGATE_TEST_REDIS_URL",
        "a Redis",
        "redis://127.0.0.1:6379/",
    )
}

/// `KEYGATE_TEST_DATABASE_URL`, such as `postgres://postgres@127.0.0.1:5432/test`.
pub fn database_url() -> String {
    required(
        "KEYGATE_TEST_DATABASE_URL",
        "PostgreSQL",
        "postgres://postgres@127.0.0.1:5432/test",
    )
}

/// Drops the PostgreSQL schema `name` of the database at `url`, after ending the sessions that
/// name it as their `application_name` (a test's own, which may still hold locks): on a runtime
/// of its own, as a `Drop` may run while the test's runtime unwinds. A failure is printed, not
/// raised, so that it never hides the test's own.
#[cfg(feature = "postgres")]
pub fn drop_schema(url: &str, name: &str) {
    use sqlx::Connection;
    let (url, schema) = (url.to_owned(), name.to_owned());
    let dropped = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&schema)
            .execute(&mut conn)
            .await?;
            sqlx::raw_sql(&format!(
                r#"SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS "{schema}" CASCADE"#
            ))
            .execute(&mut conn)
            .await?;
            conn.close().await
        })
    })
    .join();
    if !matches!(dropped, Ok(Ok(()))) {
        eprintln!("could not drop the test schema {name}");
    }
}

/// A prefix no other test or run uses.
#[cfg(feature = "redis")]
pub fn unique_prefix(test: &str) -> String {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).unwrap();
    format!("kgtest:{test}:{:016x}:", u64::from_le_bytes(r))
}

/// Deletes every Redis key under its prefix when dropped, so that a failed test cleans up too.
#[cfg(feature = "redis")]
pub struct Cleanup {
    url: String,
    prefix: String,
}

#[cfg(feature = "redis")]
impl Cleanup {
    pub fn new(prefix: &str) -> Self {
        Self {
            url: redis_url(),
            prefix: prefix.to_owned(),
        }
    }
}

#[cfg(feature = "redis")]
impl Drop for Cleanup {
    fn drop(&mut self) {
        match keys_under(&self.url, &self.prefix) {
            Ok(keys) if !keys.is_empty() => {
                let deleted = redis::Client::open(self.url.as_str())
                    .and_then(|c| c.get_connection())
                    .and_then(|mut c| redis::cmd("DEL").arg(&keys).query::<i64>(&mut c));
                if let Err(e) = deleted {
                    eprintln!(
                        "could not delete the test's keys under {}: {e}",
                        self.prefix
                    );
                }
            }
            Ok(_) => {}
            Err(e) => eprintln!("could not list the test's keys under {}: {e}", self.prefix),
        }
    }
}

/// Every Redis key whose name starts with `prefix` (which holds no glob character).
#[cfg(feature = "redis")]
pub fn keys_under(url: &str, prefix: &str) -> redis::RedisResult<Vec<String>> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query(&mut conn)?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}
