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
