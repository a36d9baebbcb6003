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
