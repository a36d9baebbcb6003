//! The commands: each opens the store, makes its calls through the store's key manager, and
//! answers what to print on stdout.

use std::time::SystemTime;

use keygate::key::{KeyRecord, KeyStatus};
use keygate::ratelimit::UsageStore as _;
use keygate::store::{IssuedKey, KeyManager, KeyUpdate, ManageError, Page};
use serde::Serialize;

use crate::output::{self, CreditsView, RecordView, RequestsView};
use crate::store::{Backend, Failure, Opened, Options, Store};
use crate::{Cli, Command, IssueArgs, Keys, UsageArgs};

/// Random base62 characters in a generated id (as the admin API generates them).
const GENERATED_ID_LEN: usize = 24;
/// How many generated ids to try before giving up on a duplicate (which 143 random bits make
/// unheard of).
const GENERATED_ID_TRIES: usize = 3;

/// Runs the command on the store at `url`, and answers what to print.
pub(crate) async fn run(cli: &Cli, url: &str) -> Result<String, Failure> {
    let backend = Backend::of(url)?;
    let store = Store::open(Options {
        url,
        backend,
        prefix: cli.store.prefix.as_deref(),
        schema: cli.store.schema.as_deref(),
        channel: cli.store.channel.as_deref(),
        key_format: cli.store.key_prefix.clone(),
        revocations: cli.store.revocations_prefix.as_deref().map(|prefix| {
            let redis = cli.store.revocations_redis.as_deref().unwrap_or(url);
            (redis, prefix)
        }),
    })
    .await?;
    let out = match &cli.command {
        Command::Keys(keys) => self::keys(store.manager(), keys, cli.json).await,
        Command::Usage(args) => usage(store.manager(), args, url, backend, cli.json).await,
        Command::Migrate => migrate(&store, cli).await,
    };
    store.close().await;
    out
}

/// Creates the PostgreSQL schema; nothing on Redis.
async fn migrate(store: &Store, cli: &Cli) -> Result<String, Failure> {
    match store.opened() {
        Opened::Postgres(postgres) => {
            postgres
                .migrate()
                .await
                .map_err(|e| Failure::caused("cannot create the PostgreSQL schema", &e))?;
            Ok(migrated(cli, true))
        }
        Opened::Redis(_) => Ok(migrated(cli, false)),
    }
}

/// What `migrate` prints.
fn migrated(cli: &Cli, postgres: bool) -> String {
    let schema = cli.store.schema.as_deref().unwrap_or("public");
    if cli.json {
        #[derive(Serialize)]
        struct View<'a> {
            store: &'static str,
            migrated: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            schema: Option<&'a str>,
        }
        return output::json(&View {
            store: if postgres { "postgres" } else { "redis" },
            migrated: postgres,
            schema: postgres.then_some(schema),
        });
    }
    if postgres {
        format!("the PostgreSQL schema {schema:?} has the key store's tables\n")
    } else {
        "a Redis key store needs no schema: nothing to do\n".to_owned()
    }
}

async fn keys(manager: &dyn KeyManager, command: &Keys, json: bool) -> Result<String, Failure> {
    let record = |record: KeyRecord| {
        if json {
            output::json(&RecordView::of(&record))
        } else {
            output::record_text(&record)
        }
    };
    let issued = |issued: IssuedKey| {
        if json {
            output::issued_json(&issued)
        } else {
            output::issued_text(&issued)
        }
    };
    let out = match command {
        Keys::Issue(args) => issued(issue(manager, args).await?),
        Keys::List { owner } => list(manager, owner, json).await?,
        Keys::Show { id } => record(get(manager, id).await?),
        Keys::Revoke { id } => record(
            manager
                .revoke(id)
                .await
                .map_err(|e| Failure::manage(id, &e))?,
        ),
        Keys::Rotate { id, grace } => {
            let rotated = manager
                .rotate(id, *grace)
                .await
                .map_err(|e| Failure::manage(id, &e))?;
            if !json {
                // On stderr, so that stdout stays the key and the record.
                eprintln!(
                    "the record's previous keys keep working for {}",
                    humantime::format_duration(*grace)
                );
            }
            issued(rotated)
        }
        Keys::Disable { id } => record(set_status(manager, id, KeyStatus::Disabled).await?),
        Keys::Enable { id } => record(set_status(manager, id, KeyStatus::Active).await?),
        Keys::Delete { id } => {
            manager
                .delete(id)
                .await
                .map_err(|e| Failure::manage(id, &e))?;
            if json {
                #[derive(Serialize)]
                struct View<'a> {
                    id: &'a str,
                    deleted: bool,
                }
                output::json(&View { id, deleted: true })
            } else {
                format!("deleted {id:?}\n")
            }
        }
    };
    Ok(out)
}

async fn issue(manager: &dyn KeyManager, args: &IssueArgs) -> Result<IssuedKey, Failure> {
    let expires_at = match args.expires_in {
        Some(after) => Some(
            SystemTime::now()
                .checked_add(after)
                .ok_or_else(|| Failure::new("--expires-in is too far in the future"))?,
        ),
        None => None,
    };
    let tries = if args.id.is_some() {
        1
    } else {
        GENERATED_ID_TRIES
    };
    let mut last = ManageError::DuplicateId;
    let mut last_id = String::new();
    for _ in 0..tries {
        let id = match &args.id {
            Some(id) => id.clone(),
            None => generate_id()?,
        };
        let mut record = KeyRecord::new(id.clone(), args.owner.clone())
            .with_scopes(args.scopes.iter().map(String::as_str));
        record.quota.clone_from(&args.quota);
        record.expires_at = expires_at;
        match manager.issue(record).await {
            Err(ManageError::DuplicateId) if args.id.is_none() => {
                last = ManageError::DuplicateId;
                last_id = id;
            }
            Ok(issued) => return Ok(issued),
            Err(e) => return Err(Failure::manage(&id, &e)),
        }
    }
    Err(Failure::manage(&last_id, &last))
}

/// `key_` and [`GENERATED_ID_LEN`] random base62 characters.
fn generate_id() -> Result<String, Failure> {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut id = String::with_capacity(4 + GENERATED_ID_LEN);
    id.push_str("key_");
    let mut buf = [0u8; 64];
    let mut filled = 0;
    // Each round keeps about 97% of 64 bytes, so one round is all but certain; the bound keeps
    // the loop finite whatever the generator returns.
    for _ in 0..64 {
        getrandom::fill(&mut buf)
            .map_err(|e| Failure::new(format!("cannot generate an id for the key: {e}")))?;
        for &b in &buf {
            // 248 = 4 × 62: rejecting the rest keeps every character equally likely.
            if b < 248 && filled < GENERATED_ID_LEN {
                id.push(char::from(ALPHABET[usize::from(b % 62)]));
                filled += 1;
            }
        }
        if filled == GENERATED_ID_LEN {
            return Ok(id);
        }
    }
    Err(Failure::new(
        "cannot generate an id for the key: the random generator returned too few usable bytes",
    ))
}

/// Every record of `owner`, page after page.
async fn list(manager: &dyn KeyManager, owner: &str, json: bool) -> Result<String, Failure> {
    let mut records = Vec::new();
    let mut page = Some(Page::first(Page::MAX_LIMIT));
    while let Some(next) = page {
        let got = manager
            .list(owner, next)
            .await
            .map_err(|e| Failure::caused(format_args!("owner {owner:?}"), &e))?;
        records.extend(got.records);
        page = got.next;
    }
    if json {
        let views: Vec<RecordView<'_>> = records.iter().map(RecordView::of).collect();
        return Ok(output::json(&views));
    }
    if records.is_empty() {
        return Ok(format!("no keys of owner {owner:?}\n"));
    }
    Ok(output::list_text(&records))
}

async fn get(manager: &dyn KeyManager, id: &str) -> Result<KeyRecord, Failure> {
    manager
        .get(id)
        .await
        .map_err(|e| Failure::manage(id, &e))?
        .ok_or_else(|| Failure::manage(id, &ManageError::NotFound))
}

async fn set_status(
    manager: &dyn KeyManager,
    id: &str,
    status: KeyStatus,
) -> Result<KeyRecord, Failure> {
    manager
        .update(id, KeyUpdate::new().status(status))
        .await
        .map_err(|e| Failure::manage(id, &e))
}

async fn usage(
    manager: &dyn KeyManager,
    args: &UsageArgs,
    store_url: &str,
    backend: Backend,
    json: bool,
) -> Result<String, Failure> {
    // The record first: an unknown id fails, whatever the usage store says of it.
    let record = get(manager, &args.id).await?;
    let totals = match &args.usage_prefix {
        Some(prefix) => {
            let url = match (&args.usage_redis, backend) {
                (Some(url), _) => url.as_str(),
                (None, Backend::Redis) => store_url,
                // Refused as a usage error before anything ran.
                (None, Backend::Postgres) => {
                    return Err(Failure::new(
                        "the request counts are in Redis: give --usage-redis",
                    ));
                }
            };
            let reader = crate::store::usage(url, prefix).await?;
            let totals = reader
                .totals(&record.id)
                .await
                .map_err(|e| Failure::caused("cannot read the request counts", &*e))?;
            Some(totals)
        }
        None => None,
    };
    if json {
        #[derive(Serialize)]
        struct View<'a> {
            id: &'a str,
            credits: Option<CreditsView>,
            requests: Option<RequestsView>,
        }
        return Ok(output::json(&View {
            id: &record.id,
            credits: record.credits.as_ref().map(CreditsView::of),
            requests: totals.as_ref().map(RequestsView::of),
        }));
    }
    let mut fields = vec![
        ("id", record.id.clone()),
        (
            "credits",
            record.credits.as_ref().map_or_else(
                || "none (no budget of uses)".to_owned(),
                output::credits_text,
            ),
        ),
    ];
    match totals {
        Some(totals) => {
            fields.push(("allowed", totals.allowed.to_string()));
            fields.push(("limited", totals.limited.to_string()));
            fields.push((
                "last used at",
                totals
                    .last_used_at
                    .map_or_else(|| "never".to_owned(), output::rfc3339),
            ));
        }
        None => fields.push((
            "requests",
            "not read (give --usage-prefix: the counts are where the services flush them)"
                .to_owned(),
        )),
    }
    Ok(output::lines(&fields))
}
