//! Keys in PostgreSQL with keygate's `PostgresStore`: every instance of a service that reaches
//! the database accepts the same keys.
//!
//! The example creates its tables in the schema `keygate_example`, issues a key that expires in
//! an hour, and serves `GET /v1/me` behind it until Ctrl-C, when it deletes its key again.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --example postgres_store --features postgres
//! ```

use std::time::{Duration, SystemTime};

use axum::{Json, Router, routing::get};
use keygate::key::{KeyFormat, KeyRecord};
use keygate::store::{KeyManager, PostgresStore};
use keygate::{Principal, auth::AuthLayer};
use sqlx::postgres::PgPoolOptions;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    // The service's own pool; a request fails with 503 after a second without the database.
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect(&url)
        .await?;
    let format = KeyFormat::new("pg_live_")?;
    let store = PostgresStore::new(pool)
        .key_format(format.clone())
        .schema("keygate_example");
    store.migrate().await?;
    // Records revoked or expired before now are of no more use.
    let purged = store.purge(SystemTime::now()).await?;
    println!("purged {purged} dead records");

    let id = format!("demo-{}", std::process::id());
    let issued = store
        .issue(
            KeyRecord::new(&id, "demo")
                .with_scopes(["weather:read"])
                .with_expiry(SystemTime::now() + Duration::from_secs(3600)),
        )
        .await?;

    let app = Router::new()
        .route("/v1/me", get(|p: Principal| async move { Json(p) }))
        .layer(AuthLayer::new(store.clone()).key_format(format));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    println!(
        "curl -H 'x-api-key: {}' http://{addr}/v1/me",
        issued.key.expose_secret()
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    store.delete(&id).await?;
    Ok(())
}
