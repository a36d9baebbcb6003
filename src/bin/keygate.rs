//! `keygate`: manage the API keys of a keygate key store, PostgreSQL or Redis, from the command
//! line (feature `cli`).
//!
//! ```sh
//! cargo install keygate --features cli      # or, in this repository:
//! cargo run --features cli --bin keygate -- --help
//!
//! export KEYGATE_STORE=postgres://app@127.0.0.1:5432/app
//! keygate migrate
//! keygate keys issue --owner acme --scope weather:read --quota '100/min, 10000/d' \
//!   --expires-in 90d --key-prefix wk_live_
//! keygate keys list --owner acme --json
//! keygate keys rotate key_1 --grace 1h --key-prefix wk_live_
//! keygate keys disable key_1
//! keygate keys revoke key_1
//! keygate usage key_1
//! keygate --store redis://127.0.0.1:6379/ --prefix weather:keys: keys show key_1
//! ```
//!
//! Every change goes through the store's own
//! [`KeyManager`](keygate::store::KeyManager) implementation, the one the admin HTTP API
//! (`keygate::admin`) drives too: `PostgresStore` sends a `NOTIFY` and `RedisStore` publishes
//! to its channel on every change, so each running service whose
//! [`CachedStore`](keygate::store::CachedStore) watches the store forgets what changed, as
//! after a call to the admin API. The tool keeps no state of its own. With
//! `--revocations-prefix` it manages the keys through
//! [`RevokeMintedTokens`](keygate::jwt::RevokeMintedTokens) over the services' shared
//! [`RedisRevocations`](keygate::jwt::RedisRevocations), so that revoking, disabling or
//! deleting a key also revokes the JWTs minted for it, as the weather example's admin API does.
//!
//! **Output.** Text for people by default; with `--json`, one JSON document on stdout: a
//! record is the admin API's RECORD (`id`, `owner`, `scopes`, `status`, `quota`, `tier`,
//! `credits`, `allowed_ips`, `expires_at`, `created_at`, `metadata`; never a key nor its
//! digest), `keys list` an array of them, `keys issue` and `keys rotate` `{"key": ...,
//! "record": RECORD}`. A key's plaintext is printed by `issue` and `rotate` only, once, on the
//! first line (`key: ...`) or in the `key` field, and nowhere else: not in errors, not on
//! stderr.
//!
//! **Exit status.** 0: done. 1: the command failed, with `error: ...` and its causes on stderr
//! (an unknown id, a store URL that is not PostgreSQL or Redis, a store that cannot be reached,
//! a change the store refuses); a URL's password is never printed. 2: the command line is wrong
//! (clap's usage errors: an unknown option, a missing value, a malformed quota or duration).

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};
use keygate::Limits;
use keygate::key::KeyFormat;

#[path = "keygate/commands.rs"]
mod commands;
#[path = "keygate/output.rs"]
mod output;
#[path = "keygate/parse.rs"]
mod parse;
#[path = "keygate/store.rs"]
mod store;

/// Manage the API keys of a keygate key store (PostgreSQL or Redis).
///
/// Every change goes through the store's own key manager, as the admin HTTP API's do: the
/// services that watch the store (PostgreSQL LISTEN/NOTIFY, Redis pub/sub) see it at once.
///
/// Exit status: 0 done; 1 failed (`error: ...` on stderr); 2 wrong command line.
#[derive(Parser)]
#[command(name = "keygate", version, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    store: StoreArgs,

    /// Print JSON instead of text: one document on stdout.
    #[arg(long, global = true)]
    json: bool,

    /// Give up when the command has not finished after this long (connecting included), such
    /// as 30s or 2m.
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        default_value = "30s",
        value_parser = parse::timeout
    )]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

/// Which store, and how its keys look.
#[derive(Args)]
#[command(next_help_heading = "Store")]
struct StoreArgs {
    /// The key store: a postgres:// or postgresql:// URL (PostgreSQL), or a redis:// or
    /// rediss:// URL (Redis). Required.
    #[arg(
        long,
        global = true,
        env = "KEYGATE_STORE",
        hide_env_values = true,
        value_name = "URL"
    )]
    store: Option<String>,

    /// Redis: the prefix of the store's Redis keys and of its channel [default: keygate:keys:].
    /// The weather example's (its KEY_STORE_PREFIX) is weather:keys:.
    #[arg(
        long,
        global = true,
        env = "KEYGATE_STORE_PREFIX",
        value_name = "PREFIX",
        value_parser = parse::not_empty
    )]
    prefix: Option<String>,

    /// PostgreSQL: the schema of the store's tables [default: public].
    #[arg(
        long,
        global = true,
        env = "KEYGATE_SCHEMA",
        value_name = "NAME",
        value_parser = parse::identifier
    )]
    schema: Option<String>,

    /// PostgreSQL: the channel of the store's change notifications [default: keygate_keys].
    #[arg(
        long,
        global = true,
        env = "KEYGATE_CHANNEL",
        value_name = "NAME",
        value_parser = parse::identifier
    )]
    channel: Option<String>,

    /// The prefix of the keys `keys issue` and `keys rotate` make [default: kg_]: the one the
    /// services check keys against, such as wk_live_ for the weather example.
    #[arg(
        long,
        global = true,
        env = "KEYGATE_KEY_PREFIX",
        value_name = "PREFIX",
        value_parser = parse::key_format
    )]
    key_prefix: Option<KeyFormat>,

    /// Also revoke the JWTs minted for a key whenever a change stops or reshapes it (revoke,
    /// disable, delete, rotate with no grace), in the shared revocation list under this Redis
    /// prefix (keygate's RedisRevocations and RevokeMintedTokens, what the weather example's
    /// admin API does, with its REDIS_PREFIX and -revoked:, weather:rl-revoked: by default).
    #[arg(
        long,
        global = true,
        env = "KEYGATE_REVOCATIONS_PREFIX",
        value_name = "PREFIX",
        value_parser = parse::not_empty
    )]
    revocations_prefix: Option<String>,

    /// The Redis of that revocation list [default: the store's, when it is a Redis store].
    #[arg(
        long,
        global = true,
        env = "KEYGATE_REVOCATIONS_REDIS",
        hide_env_values = true,
        value_name = "URL",
        requires = "revocations_prefix"
    )]
    revocations_redis: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Issue, list, show, revoke, rotate, disable, enable and delete keys.
    #[command(subcommand)]
    Keys(Keys),

    /// Show what the store knows of a key's use: its credits, and its request counts.
    ///
    /// The credits are the key's budget of uses, the live count (a refill that came due
    /// applied), from the key store. Request counts are not in the key store: the services'
    /// usage trackers flush them to Redis (keygate's RedisUsage), under a prefix of the
    /// services' choosing, and this command reads them only when told where, with
    /// --usage-prefix. They are the totals of the key's id (the rate-limit key of its requests,
    /// and of the tokens minted for it); a service that rate limits by owner counts them under
    /// the owner instead. Without --usage-prefix the counts are not shown, rather than shown as
    /// zero.
    Usage(UsageArgs),

    /// Create the PostgreSQL schema and tables, or bring them up to date.
    ///
    /// Safe to run again, and from several places at once. A Redis store needs no schema: on
    /// Redis it says so and changes nothing.
    Migrate,
}

#[derive(Subcommand)]
enum Keys {
    /// Issue a new key: its plaintext is printed once, first (`key: ...`), then its record.
    Issue(IssueArgs),

    /// List every key of an owner, ordered by id.
    ///
    /// The stores list by owner (that is how they index keys), so --owner is required; every
    /// page of the owner's keys is read.
    List {
        /// Whose keys.
        #[arg(long)]
        owner: String,
    },

    /// Show a key's record.
    Show {
        /// The record's id.
        id: String,
    },

    /// Revoke a key for good: every key of the record stops working.
    Revoke {
        /// The record's id.
        id: String,
    },

    /// Give the record a new key, printed once; its current keys keep working for --grace.
    Rotate {
        /// The record's id.
        id: String,
        /// How long the current keys keep working, such as 1h or 7d (0s: they stop at once).
        #[arg(long, value_name = "DURATION", value_parser = parse::grace)]
        grace: Duration,
    },

    /// Switch a key off for now; `enable` switches it back on.
    Disable {
        /// The record's id.
        id: String,
    },

    /// Switch a disabled key back on (a revoked key stays revoked).
    Enable {
        /// The record's id.
        id: String,
    },

    /// Delete a key's record and all its keys (revoking keeps the record; deleting does not).
    Delete {
        /// The record's id.
        id: String,
    },
}

#[derive(Args)]
struct IssueArgs {
    /// Who the key belongs to (a user, a team, a customer account).
    #[arg(long, value_parser = parse::name)]
    owner: String,

    /// A scope the key grants, such as weather:read; repeat for more.
    #[arg(long = "scope", required = true, value_name = "SCOPE", value_parser = parse::scope)]
    scopes: Vec<String>,

    /// The key's own limits, in place of the services' default: such as 100/min, or a list
    /// that must all admit a request, such as '10/s;burst=20, 10000/d;fixed'.
    #[arg(long, value_name = "LIMITS", value_parser = parse::limits)]
    quota: Option<Limits>,

    /// Make the key expire this long after now, such as 90d, 12h, 15m or 90s (m is minutes, M
    /// months) [default: never].
    #[arg(long, value_name = "DURATION", value_parser = parse::expires_in)]
    expires_in: Option<Duration>,

    /// The record's id [default: key_ and 24 random characters].
    #[arg(long, value_parser = parse::name)]
    id: Option<String>,
}

#[derive(Args)]
struct UsageArgs {
    /// The record's id.
    id: String,

    /// Read the key's request counts from the usage totals under this Redis key prefix (what
    /// the services give RedisUsage::prefix; the weather example's is its REDIS_PREFIX with
    /// -usage:, weather:rl-usage: by default).
    #[arg(long, env = "KEYGATE_USAGE_PREFIX", value_name = "PREFIX", value_parser = parse::not_empty)]
    usage_prefix: Option<String>,

    /// The Redis those totals are in [default: the store's, when it is a Redis store].
    #[arg(
        long,
        env = "KEYGATE_USAGE_REDIS",
        hide_env_values = true,
        value_name = "URL",
        requires = "usage_prefix"
    )]
    usage_redis: Option<String>,
}

/// The most scopes a key may be given (the admin API's rule).
const MAX_SCOPES: usize = 100;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(url) = cli.store.store.clone().filter(|url| !url.trim().is_empty()) else {
        usage_error(
            ErrorKind::MissingRequiredArgument,
            "no key store: give --store URL or set KEYGATE_STORE",
        );
    };
    check(&cli);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&store::Failure::caused("cannot start the runtime", &e), &[]),
    };
    let usage_url = match &cli.command {
        Command::Usage(args) => args.usage_redis.clone(),
        _ => None,
    };
    let urls: Vec<&str> = [
        Some(url.as_str()),
        usage_url.as_deref(),
        cli.store.revocations_redis.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let timeout = cli.timeout;
    let result = runtime.block_on(async {
        match tokio::time::timeout(timeout, commands::run(&cli, &url)).await {
            Ok(result) => result,
            Err(_) => Err(store::Failure::new(format!(
                "the store did not finish the command within {} (see --timeout)",
                humantime::format_duration(timeout)
            ))),
        }
    });
    // Tasks the stores started (connection managers) end with the runtime.
    drop(runtime);
    match result {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&store::Failure::caused("cannot write to stdout", &e), &urls),
            }
        }
        Err(failure) => fail(&failure, &urls),
    }
}

/// Refuses options that do not apply to the store or the command, as usage errors.
fn check(cli: &Cli) {
    let backend = cli
        .store
        .store
        .as_deref()
        .and_then(|url| store::Backend::of(url).ok());
    let conflict = |message: &str| usage_error(ErrorKind::ArgumentConflict, message);
    match backend {
        Some(store::Backend::Postgres) if cli.store.prefix.is_some() => {
            conflict("--prefix (KEYGATE_STORE_PREFIX) is for Redis stores; this one is PostgreSQL")
        }
        Some(store::Backend::Redis) if cli.store.schema.is_some() => {
            conflict("--schema (KEYGATE_SCHEMA) is for PostgreSQL stores; this one is Redis")
        }
        Some(store::Backend::Redis) if cli.store.channel.is_some() => {
            conflict("--channel (KEYGATE_CHANNEL) is for PostgreSQL stores; this one is Redis")
        }
        Some(store::Backend::Postgres)
            if cli.store.revocations_prefix.is_some() && cli.store.revocations_redis.is_none() =>
        {
            conflict(
                "the revocation list is in Redis and this store is not: give --revocations-redis \
                 URL",
            )
        }
        _ => {}
    }
    match &cli.command {
        Command::Keys(Keys::Issue(args)) if args.scopes.len() > MAX_SCOPES => usage_error(
            ErrorKind::TooManyValues,
            &format!("a key has at most {MAX_SCOPES} scopes"),
        ),
        Command::Usage(args)
            if args.usage_prefix.is_some()
                && args.usage_redis.is_none()
                && backend != Some(store::Backend::Redis) =>
        {
            conflict(
                "the request counts are in Redis and this store is not: give --usage-redis URL",
            )
        }
        _ => {}
    }
}

/// Prints a usage error as clap does and exits with status 2.
fn usage_error(kind: ErrorKind, message: &str) -> ! {
    Cli::command().error(kind, message).exit()
}

/// Prints `error: ...` and answers exit status 1.
fn fail(failure: &store::Failure, urls: &[&str]) -> ExitCode {
    eprintln!("error: {}", failure.message(urls));
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
