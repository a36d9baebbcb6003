//! The conformance suite of `KeyManager`: every rule of `keygate::store::KeyManager`, checked
//! through the manager and through `KeyStore::lookup`, so that `MemoryStore`, `CachedStore`,
//! `PostgresStore` and `RedisStore` behave alike.
//!
//! A backend's test is two calls:
//!
//! - [`run`] on a store that may be shared with other tests running at the same time (the same
//!   database, the same Redis): it uses ids and owners with a random part per run, never assumes
//!   the store is empty, never counts all records, deletes what it created, and purges only with
//!   a cutoff an hour in the past (which deletes, in the whole store, records revoked or expired
//!   more than an hour ago).
//! - [`purge_checks`] on a store of its own (its own schema, its own key prefix), which nothing
//!   else uses while it runs: it purges with a cutoff in the future and counts exactly what the
//!   purge deleted, so it deletes every dead record of that store and would miscount records
//!   others create meanwhile.
//!
//! Stores compare rotation deadlines and expiry with their own clock (PostgreSQL and Redis with
//! the server's), so the suite waits in real time: a grace of [`GRACE`], then [`AFTER_GRACE`].
//! [`run`] takes about three seconds against an in-memory store. Times the suite stores are
//! whole seconds, which every backend keeps exactly.
//!
//! A key rotated out, deleted or purged must fail like an unknown key: it looks up to no record
//! or, from a cache that still holds it, to one keygate turns away (expired, revoked). While its
//! grace runs it looks up to the record with its expiry cut to the end of the grace.
//!
//! The suite needs a tokio runtime with its timer; it spawns tasks for its races.
//!
//! Each check is a function of its own that panics with what it expected, so a backend may also
//! call the ones it needs.
//!
//! Credits have checks of their own, for stores that are also a `CreditStore`:
//! [`credit_checks`] (spends, refills, concurrent spends on one store; about five seconds, as it
//! waits for refills of a 2 s schedule), and [`credits_across_instances`] (two store objects on
//! the same backend, many tasks spending on both: exactly the credits are admitted).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keygate::client_addr::Networks;
use keygate::key::{ApiKey, Credits, KeyDigest, KeyFormat, KeyRecord, KeyStatus, Refill};
use keygate::store::{
    CreditOutcome, CreditStore, IssuedKey, KeyManager, KeyStore, KeyUpdate, MAX_CREDITS,
    ManageError, Page, StoreError,
};
use keygate::{Limits, Quota};

/// The grace of the rotations whose end the suite waits for.
pub const GRACE: Duration = Duration::from_secs(3);
/// How long the suite waits for a [`GRACE`] to run out: long enough for a server's clock
/// resolution and a round trip, short enough to keep the suite quick.
pub const AFTER_GRACE: Duration = Duration::from_millis(3500);
/// A grace that does not run out while the suite runs.
const LONG_GRACE: Duration = Duration::from_secs(3600);
/// How far a store's clock (a database's, a Redis server's) may be from this process's when it
/// sets `created_at`.
const CLOCK_SLACK: Duration = Duration::from_secs(30);

/// Every check that is safe on a store other tests use at the same time.
pub async fn run<S: KeyManager + KeyStore + Clone>(store: &S) {
    issue_returns_a_working_key_of_the_store_format(store).await;
    issue_and_insert_keep_every_field(store).await;
    names_with_punctuation_and_unicode_round_trip(store).await;
    duplicate_ids_are_refused_and_create_nothing(store).await;
    registered_keys_are_refused_and_create_nothing(store).await;
    invalid_records_are_refused(store).await;
    unknown_ids_and_keys_are_not_found(store).await;
    list_pages_an_owners_records_by_id(store).await;
    list_refuses_empty_and_oversized_pages(store).await;
    update_changes_every_key_of_a_record(store).await;
    revoked_records_stay_revoked(store).await;
    disabled_expired_and_revoked_keys_still_look_up(store).await;
    rotation_with_zero_grace_retires_the_old_keys_at_once(store).await;
    delete_removes_the_record_and_every_key(store).await;
    purge_keeps_what_may_still_work(store).await;
    concurrent_creations_of_one_id_or_key_make_one_record(store).await;
    rotation_keeps_the_old_keys_for_the_grace(store).await;
    a_later_rotation_cuts_a_grace_short_and_never_lengthens_it(store).await;
    tiers_limits_and_credits_round_trip(store).await;
    out_of_range_credits_are_refused(store).await;
    allowed_ips_round_trip(store).await;
}

/// Every credit check that is safe on a store other tests use at the same time.
pub async fn credit_checks<S>(store: &S)
where
    S: KeyManager + KeyStore + CreditStore + Clone,
{
    spends_reach_exactly_zero_and_never_go_below(store).await;
    updates_leave_the_count_alone_and_setting_credits_sets_it(store).await;
    concurrent_spends_admit_exactly_the_credits(store, store).await;
    credits_are_refilled_on_their_schedule(store).await;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A name no other run, test or process uses: `tag`, a dash and 12 random hex digits.
pub fn unique(tag: &str) -> String {
    let random = KeyFormat::new("n")
        .expect("a valid prefix")
        .generate()
        .digest()
        .to_hex();
    format!("{tag}-{}", &random[..12])
}

/// `t` without its fraction of a second.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// An error the suite expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    NotFound,
    DuplicateId,
    DuplicateKey,
    Invalid,
}

fn kind(error: &ManageError) -> Option<Want> {
    match error {
        ManageError::NotFound => Some(Want::NotFound),
        ManageError::DuplicateId => Some(Want::DuplicateId),
        ManageError::DuplicateKey => Some(Want::DuplicateKey),
        ManageError::Invalid(_) => Some(Want::Invalid),
        _ => None,
    }
}

/// The value of a call that must succeed.
fn ok<T>(result: Result<T, ManageError>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: expected success, got {e:?}"))
}

/// Checks that a call failed with `want`.
fn fails<T: Debug>(result: Result<T, ManageError>, want: Want, what: &str) {
    match result {
        Ok(value) => panic!("{what}: expected {want:?}, but it succeeded with {value:?}"),
        Err(e) if kind(&e) == Some(want) => {}
        Err(e) => panic!("{what}: expected {want:?}, got {e:?}"),
    }
}

/// What `KeyStore::lookup` answers for `digest`.
async fn lookup<S: KeyStore>(store: &S, digest: &KeyDigest, what: &str) -> Option<KeyRecord> {
    match store.lookup(digest).await {
        Ok(found) => found.map(|record| KeyRecord::clone(&record)),
        Err(e) => panic!("{what}: the lookup failed: {e:?}"),
    }
}

/// The record `KeyStore::lookup` finds for `key`, which must be known.
async fn found<S: KeyStore>(store: &S, key: &ApiKey, what: &str) -> KeyRecord {
    lookup(store, &key.digest(), what)
        .await
        .unwrap_or_else(|| panic!("{what}: the key {key:?} looks up to no record"))
}

/// Checks that `KeyStore::lookup` does not know `key`.
async fn gone<S: KeyStore>(store: &S, key: &ApiKey, what: &str) {
    if let Some(record) = lookup(store, &key.digest(), what).await {
        panic!("{what}: the key {key:?} still looks up to {record:?}");
    }
}

/// Checks that `key` fails like an unknown key: it looks up to no record, or (from a cache that
/// still holds it) to one whose expiry has passed.
async fn retired<S: KeyStore>(store: &S, key: &ApiKey, what: &str) {
    if let Some(record) = lookup(store, &key.digest(), what).await {
        let now = SystemTime::now();
        assert!(
            record.expires_at.is_some_and(|at| at <= now),
            "{what}: the retired key {key:?} still looks up to a record that works: {record:?}"
        );
    }
}

/// Checks that `key` fails like an unknown key: it looks up to no record, or (from a cache that
/// still holds it) to one that keygate turns away.
async fn rejected<S: KeyStore>(store: &S, key: &ApiKey, what: &str) {
    if let Some(record) = lookup(store, &key.digest(), what).await {
        assert!(
            !record.is_usable_at(SystemTime::now()),
            "{what}: the key {key:?} still looks up to a record that works: {record:?}"
        );
    }
}

/// Checks the record a key in its grace looks up to: `want`, with its expiry cut to the key's
/// retire time (`retire`, give or take [`CLOCK_SLACK`]) when that comes first, so that a cache
/// holding it stops serving it on time.
fn retiring(looked: &KeyRecord, want: &KeyRecord, retire: SystemTime, what: &str) {
    let mut rest = looked.clone();
    rest.expires_at = want.expires_at;
    assert_eq!(
        rest, *want,
        "{what}: a key in its grace looks up to the record (its expiry aside)"
    );
    match want.expires_at {
        Some(at) if at + CLOCK_SLACK < retire => assert_eq!(
            looked.expires_at,
            Some(at),
            "{what}: a key in its grace keeps the record's expiry when it comes first"
        ),
        _ => {
            let at = looked.expires_at.unwrap_or_else(|| {
                panic!(
                    "{what}: a key in its grace must look up with an expiry no later than its \
                     retire time (about {retire:?}), so that a cache stops serving it on time; \
                     it has none"
                )
            });
            assert!(
                at + CLOCK_SLACK >= retire && at <= retire + CLOCK_SLACK,
                "{what}: a key in its grace must look up with its retire time (about \
                 {retire:?}) as expiry, not {at:?}"
            );
        }
    }
}

/// The record with this id, which must exist.
async fn get<S: KeyManager>(store: &S, id: &str, what: &str) -> KeyRecord {
    ok(store.get(id).await, what).unwrap_or_else(|| panic!("{what}: no record has id {id:?}"))
}

/// Checks that no record has this id.
async fn absent<S: KeyManager>(store: &S, id: &str, what: &str) {
    if let Some(record) = ok(store.get(id).await, what) {
        panic!("{what}: expected no record with id {id:?}, found {record:?}");
    }
}

/// The ids of `owner`'s records, all pages of at most 1000.
async fn listed<S: KeyManager>(store: &S, owner: &str, what: &str) -> Vec<String> {
    pages(store, owner, Page::MAX_LIMIT, what)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Follows `next` from the first page of `limit` to the end and returns the ids of each page,
/// checking on the way that every page holds only `owner`'s records, in increasing id order,
/// after the page's `after`; that a page with a `next` is full and `next` starts after its last
/// id. A trailing empty page (the answer to a full page's `next`) is left out.
async fn pages<S: KeyManager>(
    store: &S,
    owner: &str,
    limit: usize,
    what: &str,
) -> Vec<Vec<String>> {
    let mut page = Page::first(limit);
    let mut pages: Vec<Vec<String>> = Vec::new();
    for _ in 0..50 {
        let got = ok(store.list(owner, page.clone()).await, what);
        let ids: Vec<String> = got.records.iter().map(|r| r.id.clone()).collect();
        for record in &got.records {
            assert_eq!(
                record.owner, owner,
                "{what}: the list of {owner:?} holds another owner's record {record:?}"
            );
        }
        assert!(
            ids.len() <= limit,
            "{what}: a page of limit {limit} holds {} records",
            ids.len()
        );
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{what}: a page is not in increasing id order (as bytes): {ids:?}"
        );
        if let (Some(after), Some(first)) = (&page.after, ids.first()) {
            assert!(
                first > after,
                "{what}: the page after {after:?} starts with {first:?}"
            );
        }
        match got.next {
            None => {
                if !ids.is_empty() || pages.is_empty() {
                    pages.push(ids);
                }
                return pages;
            }
            Some(next) => {
                assert_eq!(
                    ids.len(),
                    limit,
                    "{what}: a page of {} records with limit {limit} says more may follow: {ids:?}",
                    ids.len()
                );
                assert_eq!(
                    next.after.as_deref(),
                    ids.last().map(String::as_str),
                    "{what}: the next page must start after the last id of this one"
                );
                assert_eq!(next.limit, limit, "{what}: the next page changed the limit");
                pages.push(ids);
                page = next;
            }
        }
    }
    panic!("{what}: the list of {owner:?} did not end after 50 pages of {limit}");
}

/// Checks that `shown`'s `Debug` text holds no secret part of `key`.
fn hidden(store_format: &KeyFormat, key: &ApiKey, shown: &impl Debug, what: &str) {
    let secret = key.expose_secret();
    let random = secret.strip_prefix(store_format.prefix()).unwrap_or(secret);
    assert!(
        !format!("{shown:?}").contains(random),
        "{what}: the Debug text holds the plaintext key"
    );
}

/// Checks that a time a store set is this process's time, give or take [`CLOCK_SLACK`].
fn recent(at: Option<SystemTime>, start: SystemTime, what: &str) {
    let at = at.unwrap_or_else(|| panic!("{what}: created_at is not set"));
    let end = SystemTime::now();
    assert!(
        at + CLOCK_SLACK >= start && at <= end + CLOCK_SLACK,
        "{what}: created_at {at:?} is not the time of the call ({start:?} to {end:?})"
    );
}

/// Checks that `key` was made in the store's format.
fn of_format<S: KeyManager>(store: &S, key: &ApiKey, what: &str) {
    if let Err(e) = store.format().check(key.expose_secret()) {
        panic!(
            "{what}: the key {key:?} is not of the store's format {:?}: {e}",
            store.format()
        );
    }
}

/// Deletes the records of a check that are still there.
async fn clean<S: KeyManager>(store: &S, ids: &[&str]) {
    for id in ids {
        match store.delete(id).await {
            Ok(()) | Err(ManageError::NotFound) => {}
            Err(e) => panic!("cleaning up {id:?}: {e:?}"),
        }
    }
}

/// A key of no store's format, never issued.
fn legacy_key() -> ApiKey {
    ApiKey::new(unique("legacy-key-from-2019"))
}

// ---------------------------------------------------------------------------------------------
// Creating records

/// `issue` returns a key of `store.format()` whose digest looks up to the new record, with
/// `created_at` set, and whose plaintext is in no `Debug` text.
pub async fn issue_returns_a_working_key_of_the_store_format<S: KeyManager + KeyStore>(store: &S) {
    let what = "issue";
    let id = unique("issue");
    let owner = unique("owner");
    let start = SystemTime::now();
    let issued: IssuedKey = ok(
        store
            .issue(KeyRecord::new(&id, &owner).with_scopes(["conformance:read"]))
            .await,
        what,
    );
    of_format(store, &issued.key, what);
    let record = &issued.record;
    assert_eq!(record.id, id, "{what}: the record's id");
    assert_eq!(record.owner, owner, "{what}: the record's owner");
    assert_eq!(
        record.scopes.iter().collect::<Vec<_>>(),
        ["conformance:read"],
        "{what}: the record's scopes"
    );
    assert_eq!(record.status, KeyStatus::Active, "{what}: the status");
    assert_eq!(record.quota, None, "{what}: the quota");
    assert_eq!(record.expires_at, None, "{what}: the expiry");
    assert!(record.metadata.is_empty(), "{what}: the metadata");
    recent(record.created_at, start, what);

    let looked = found(store, &issued.key, "issue: lookup of the new key").await;
    assert_eq!(
        &looked, record,
        "issue: the lookup must return the issued record"
    );
    let got = get(store, &id, "issue: get").await;
    assert_eq!(&got, record, "issue: get must return the issued record");

    let format = store.format();
    hidden(format, &issued.key, &issued, "issue: the IssuedKey");
    hidden(format, &issued.key, record, "issue: the issued record");
    hidden(format, &issued.key, &got, "issue: the record from get");
    hidden(
        format,
        &issued.key,
        &looked,
        "issue: the record from lookup",
    );
    let page = ok(store.list(&owner, Page::first(10)).await, "issue: list");
    hidden(format, &issued.key, &page, "issue: the list page");

    let other = ok(
        store.issue(KeyRecord::new(unique("issue"), &owner)).await,
        "issue: a second record",
    );
    assert_ne!(other.key, issued.key, "issue: two records got the same key");
    assert_eq!(
        found(store, &other.key, "issue: lookup of the second key")
            .await
            .id,
        other.record.id,
        "issue: the second key looks up to the second record"
    );
    assert_eq!(
        found(
            store,
            &issued.key,
            "issue: the first key after the second issue"
        )
        .await
        .id,
        id
    );
    clean(store, &[&id, &other.record.id]).await;
}

/// Scopes, quota, expiry, status, metadata and a given `created_at` come back as they were
/// given, through `issue` and `insert`, from the call, `get` and `lookup`.
pub async fn issue_and_insert_keep_every_field<S: KeyManager + KeyStore>(store: &S) {
    let owner = unique("owner");
    let expires = whole_seconds(SystemTime::now() + Duration::from_secs(86_400));
    let created = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let full = |id: &str, quota: Quota, status: KeyStatus| {
        KeyRecord::new(id, &owner)
            .with_scopes(["b:write", "a:read", "a:read", "weather:read"])
            .with_quota(quota)
            .with_tier("gold")
            .with_credits(
                Credits::new(1234).with_refill(Refill::new(5000, Duration::from_secs(86_400))),
            )
            .with_expiry(expires)
            .with_status(status)
            .with_metadata("plan", "pro")
            .with_metadata("quote\"back\\slash", "{\"json\": [1, 2], \"nul\": null}")
            .with_metadata("ünïcødé ключ", "✓ значение")
            .with_metadata("empty", "")
            .with_created_at(created)
    };

    let id1 = unique("fields");
    let want = full(
        &id1,
        Quota::per_minute(90).with_burst(15),
        KeyStatus::Disabled,
    );
    let issued = ok(store.issue(want.clone()).await, "issue of a full record");
    assert_eq!(
        issued.record, want,
        "issue must keep every field (and the given created_at)"
    );
    assert_eq!(
        found(store, &issued.key, "lookup of an issued full record").await,
        want,
        "lookup of an issued full record"
    );
    assert_eq!(
        get(store, &id1, "get of an issued full record").await,
        want,
        "get of an issued full record"
    );

    let id2 = unique("fields");
    let legacy = legacy_key();
    let quota = Quota::new(7, Duration::from_millis(250)).expect("a valid quota");
    let want = full(&id2, quota, KeyStatus::Active);
    let inserted = ok(
        store.insert(legacy.digest(), want.clone()).await,
        "insert of a full record",
    );
    assert_eq!(
        inserted, want,
        "insert must keep every field (and the given created_at)"
    );
    assert_eq!(
        found(store, &legacy, "lookup of an inserted full record").await,
        want,
        "lookup of an inserted full record"
    );
    assert_eq!(
        get(store, &id2, "get of an inserted full record").await,
        want,
        "get of an inserted full record"
    );
    clean(store, &[&id1, &id2]).await;
}

/// Ids and owners are any text without control characters, up to 256 bytes: punctuation that
/// means something to SQL patterns, Redis key names or globs, and unicode, come back as given,
/// and an owner's list never picks up owners its name would match as a pattern.
pub async fn names_with_punctuation_and_unicode_round_trip<S: KeyManager + KeyStore>(store: &S) {
    let p = unique("names");
    let owners = [
        format!("{p}*"),
        format!("{p}%"),
        format!("{p}_"),
        format!("{p}ab"),
        format!("{p}:ab"),
    ];
    let mut ids = Vec::new();
    for (i, owner) in owners.iter().enumerate() {
        let id = format!("{p}:{i}/a b {{c}} ü*?[x]%_'\"\\ \u{1F511}");
        let issued = ok(
            store.issue(KeyRecord::new(&id, owner)).await,
            "issue with punctuation in id and owner",
        );
        assert_eq!(issued.record.id, id);
        assert_eq!(issued.record.owner, *owner);
        let looked = found(store, &issued.key, "lookup with punctuation in the id").await;
        assert_eq!(looked.id, id, "the id comes back as given");
        assert_eq!(looked.owner, *owner, "the owner comes back as given");
        assert_eq!(
            get(store, &id, "get of an id with punctuation").await.id,
            id
        );
        ids.push(id);
    }
    for (owner, id) in owners.iter().zip(&ids) {
        assert_eq!(
            listed(store, owner, "list of an owner with punctuation").await,
            [id.as_str()],
            "the list of {owner:?} must hold its one record only"
        );
    }

    // 256 bytes, some of them in two-byte characters, is the longest id.
    let mut long = format!("{p}-");
    while long.len() + 2 <= 256 {
        long.push('é');
    }
    while long.len() < 256 {
        long.push('x');
    }
    let issued = ok(
        store.issue(KeyRecord::new(&long, &owners[0])).await,
        "issue with an id of 256 bytes",
    );
    assert_eq!(
        found(store, &issued.key, "lookup with an id of 256 bytes")
            .await
            .id,
        long
    );
    let too_long = format!("{long}x");
    fails(
        store.issue(KeyRecord::new(&too_long, &owners[0])).await,
        Want::Invalid,
        "issue with an id of 257 bytes",
    );
    ids.push(long);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    clean(store, &ids).await;
}

/// A taken id is `DuplicateId`, through `issue` and `insert`, and the failed call leaves the
/// first record as it was and creates nothing: no key, no listing for its owner.
pub async fn duplicate_ids_are_refused_and_create_nothing<S: KeyManager + KeyStore>(store: &S) {
    let id = unique("dup-id");
    let first_owner = unique("owner");
    let second_owner = unique("owner");
    let first = ok(
        store
            .issue(KeyRecord::new(&id, &first_owner).with_scopes(["first"]))
            .await,
        "issue",
    );
    fails(
        store
            .issue(KeyRecord::new(&id, &second_owner).with_scopes(["second"]))
            .await,
        Want::DuplicateId,
        "issue with a taken id",
    );
    let legacy = legacy_key();
    fails(
        store
            .insert(legacy.digest(), KeyRecord::new(&id, &second_owner))
            .await,
        Want::DuplicateId,
        "insert with a taken id",
    );
    gone(store, &legacy, "the key of an insert refused for its id").await;
    let kept = get(store, &id, "get after refused duplicates").await;
    assert_eq!(
        kept, first.record,
        "a refused duplicate must leave the first record as it was"
    );
    assert_eq!(
        found(store, &first.key, "the first key after refused duplicates").await,
        first.record
    );
    assert!(
        listed(store, &second_owner, "list of the refused owner")
            .await
            .is_empty(),
        "a refused duplicate must not list a record for its owner"
    );
    assert_eq!(
        listed(store, &first_owner, "list of the first owner").await,
        [id.as_str()]
    );
    clean(store, &[&id]).await;
}

/// `insert` of a digest that belongs to a record (inserted or issued) is `DuplicateKey`, and
/// leaves no record with the new id. A digest unknown before `insert` looks up after it.
pub async fn registered_keys_are_refused_and_create_nothing<S: KeyManager + KeyStore>(store: &S) {
    let owner = unique("owner");
    let other_owner = unique("owner");
    let legacy = legacy_key();
    gone(store, &legacy, "a legacy key before its insert").await;
    let id1 = unique("dup-key");
    let start = SystemTime::now();
    let inserted = ok(
        store
            .insert(legacy.digest(), KeyRecord::new(&id1, &owner))
            .await,
        "insert",
    );
    assert_eq!(inserted.id, id1);
    assert_eq!(inserted.owner, owner);
    recent(inserted.created_at, start, "insert");
    assert_eq!(
        found(store, &legacy, "lookup of an inserted key").await,
        inserted,
        "a key unknown before its insert looks up to the inserted record"
    );
    assert_eq!(
        get(store, &id1, "get of an inserted record").await,
        inserted
    );

    let id2 = unique("dup-key");
    fails(
        store
            .insert(legacy.digest(), KeyRecord::new(&id2, &other_owner))
            .await,
        Want::DuplicateKey,
        "insert of a registered digest",
    );
    absent(store, &id2, "get of the id of a refused insert").await;
    assert!(
        listed(store, &other_owner, "list of the owner of a refused insert")
            .await
            .is_empty(),
        "a refused insert must not list a record for its owner"
    );
    assert_eq!(
        found(store, &legacy, "the key after a refused insert")
            .await
            .id,
        id1,
        "a refused insert must leave the key with its record"
    );

    let issued = ok(
        store.issue(KeyRecord::new(unique("dup-key"), &owner)).await,
        "issue",
    );
    let id3 = unique("dup-key");
    fails(
        store
            .insert(issued.key.digest(), KeyRecord::new(&id3, &other_owner))
            .await,
        Want::DuplicateKey,
        "insert of the digest of an issued key",
    );
    absent(store, &id3, "get of the id of a refused insert").await;
    assert_eq!(
        found(store, &issued.key, "an issued key after a refused insert")
            .await
            .id,
        issued.record.id
    );
    clean(store, &[&id1, &issued.record.id]).await;
}

/// Records with an empty or blank id or owner, control characters, or more than 256 bytes are
/// `Invalid`, through `issue` and `insert`, and nothing is created.
pub async fn invalid_records_are_refused<S: KeyManager + KeyStore>(store: &S) {
    let p = unique("invalid");
    let owner = unique("owner");
    let cases = [
        (String::new(), owner.clone(), "an empty id"),
        ("   ".to_owned(), owner.clone(), "a blank id"),
        (format!("{p}\nx"), owner.clone(), "an id with a newline"),
        (format!("{p}\u{0}"), owner.clone(), "an id with NUL"),
        (format!("{p}\u{1b}[31m"), owner.clone(), "an id with ESC"),
        (format!("{p}\u{85}"), owner.clone(), "an id with NEL"),
        (
            format!("{p}{}", "x".repeat(257 - p.len())),
            owner.clone(),
            "an id of 257 bytes",
        ),
        (format!("{p}-a"), String::new(), "an empty owner"),
        (format!("{p}-b"), "\t".to_owned(), "a blank owner"),
        (
            format!("{p}-c"),
            format!("{owner}\u{7f}"),
            "an owner with DEL",
        ),
        (format!("{p}-d"), format!("{owner}\r"), "an owner with CR"),
        (format!("{p}-e"), "o".repeat(257), "an owner of 257 bytes"),
    ];
    for (id, owner, why) in &cases {
        fails(
            store.issue(KeyRecord::new(id, owner)).await,
            Want::Invalid,
            &format!("issue of a record with {why}"),
        );
        let legacy = legacy_key();
        fails(
            store
                .insert(legacy.digest(), KeyRecord::new(id, owner))
                .await,
            Want::Invalid,
            &format!("insert of a record with {why}"),
        );
        gone(store, &legacy, &format!("the key of a record with {why}")).await;
        // A store may refuse to read an invalid id, or find nothing.
        match store.get(id).await {
            Ok(None) | Err(ManageError::Invalid(_)) => {}
            other => panic!("get of the id of a refused record with {why}: {other:?}"),
        }
    }
    assert!(
        listed(store, &owner, "list after refused records")
            .await
            .is_empty(),
        "refused records must not be listed"
    );
}

/// Unknown ids: `get` is `None`; `update`, `revoke`, `rotate` and `delete` are `NotFound`.
/// Unknown keys, of the store's format or not, look up to `None`.
pub async fn unknown_ids_and_keys_are_not_found<S: KeyManager + KeyStore>(store: &S) {
    let id = unique("unknown");
    absent(store, &id, "get of an unknown id").await;
    fails(
        store.update(&id, KeyUpdate::new().scopes(["x"])).await,
        Want::NotFound,
        "update of an unknown id",
    );
    fails(
        store.revoke(&id).await,
        Want::NotFound,
        "revoke of an unknown id",
    );
    fails(
        store.rotate(&id, LONG_GRACE).await,
        Want::NotFound,
        "rotate of an unknown id",
    );
    fails(
        store.delete(&id).await,
        Want::NotFound,
        "delete of an unknown id",
    );
    absent(store, &id, "get after calls on an unknown id").await;
    gone(
        store,
        &store.format().generate(),
        "a key of the store's format never issued",
    )
    .await;
    gone(store, &legacy_key(), "a key of another format never issued").await;
    assert!(
        listed(store, &unique("owner"), "list of an unknown owner")
            .await
            .is_empty(),
        "an unknown owner has no records"
    );
}

// ---------------------------------------------------------------------------------------------
// Listing

/// `list` pages an owner's records in increasing id order (as bytes, whatever the case), from
/// the id after `after`, never showing other owners' records; a record rotated or revoked is
/// still listed once.
pub async fn list_pages_an_owners_records_by_id<S: KeyManager + KeyStore>(store: &S) {
    let what = "list";
    let owner = unique("owner");
    let p = unique("list");
    // Created out of order; as bytes, upper case sorts before lower case.
    let names = ["c3", "a1", "E5", "b2", "D4"];
    let mut ids = Vec::new();
    for name in names {
        let id = format!("{p}-{name}");
        ok(
            store.issue(KeyRecord::new(&id, &owner)).await,
            "issue for the list",
        );
        ids.push(id);
    }
    // Other owners' records with ids among them, one owner's name extending the other's.
    let neighbours = [
        (format!("{p}-b2x"), format!("{owner}x")),
        (format!("{p}-a0"), unique("owner")),
        (format!("{p}-F"), format!("{owner}:other")),
    ];
    for (id, other) in &neighbours {
        ok(
            store.issue(KeyRecord::new(id, other)).await,
            "issue for another owner",
        );
    }
    let id = |name: &str| format!("{p}-{name}");
    let sorted = [id("D4"), id("E5"), id("a1"), id("b2"), id("c3")];

    assert_eq!(
        pages(store, &owner, 2, what).await,
        [
            vec![sorted[0].clone(), sorted[1].clone()],
            vec![sorted[2].clone(), sorted[3].clone()],
            vec![sorted[4].clone()],
        ],
        "{what}: five records in pages of 2, by id as bytes"
    );
    assert_eq!(
        pages(store, &owner, 5, what).await,
        [sorted.to_vec()],
        "{what}: five records in a page of 5"
    );
    assert_eq!(
        pages(store, &owner, 1, what).await,
        sorted
            .iter()
            .map(|id| vec![id.as_str()])
            .collect::<Vec<_>>(),
        "{what}: five records in pages of 1"
    );
    let all = ok(store.list(&owner, Page::first(Page::MAX_LIMIT)).await, what);
    assert_eq!(
        all.next, None,
        "{what}: a page that is not full is the last"
    );
    for record in &all.records {
        assert_eq!(
            *record,
            get(store, &record.id, what).await,
            "{what}: a listed record is the record get returns"
        );
    }

    // Paging is by id, not by position: `after` need not be an id of the store.
    let after_z = ok(store.list(&owner, Page::after(id("Z"), 10)).await, what);
    assert_eq!(
        after_z.records.iter().map(|r| &r.id).collect::<Vec<_>>(),
        [&sorted[2], &sorted[3], &sorted[4]],
        "{what}: the page after {:?}",
        id("Z")
    );
    assert_eq!(after_z.next, None);
    let after_last = ok(store.list(&owner, Page::after(id("c3"), 10)).await, what);
    assert!(
        after_last.records.is_empty() && after_last.next.is_none(),
        "{what}: the page after the last id is empty and the last: {after_last:?}"
    );

    for (id, other) in &neighbours {
        assert_eq!(
            listed(store, other, what).await,
            [id.as_str()],
            "{what}: the list of {other:?} holds its own record only"
        );
    }

    // Rotated (two keys) and revoked records are listed once, as they are.
    ok(store.rotate(&sorted[1], LONG_GRACE).await, "rotate");
    ok(store.revoke(&sorted[2]).await, "revoke");
    let after = ok(store.list(&owner, Page::first(10)).await, what);
    assert_eq!(
        after.records.iter().map(|r| &r.id).collect::<Vec<_>>(),
        sorted.iter().collect::<Vec<_>>(),
        "{what}: a rotated or revoked record is listed once"
    );
    assert_eq!(after.records[2].status, KeyStatus::Revoked);

    let mut every: Vec<&str> = ids.iter().map(String::as_str).collect();
    every.extend(neighbours.iter().map(|(id, _)| id.as_str()));
    clean(store, &every).await;
}

/// A page of 0 or of more than `Page::MAX_LIMIT` is `Invalid`; a page of `MAX_LIMIT` is fine.
pub async fn list_refuses_empty_and_oversized_pages<S: KeyManager + KeyStore>(store: &S) {
    let owner = unique("owner");
    let id = unique("paging");
    ok(store.issue(KeyRecord::new(&id, &owner)).await, "issue");
    for owner in [owner.as_str(), "an owner with no records"] {
        fails(
            store.list(owner, Page::first(0)).await,
            Want::Invalid,
            "list with Page::first(0)",
        );
        fails(
            store.list(owner, Page::after(&id, 0)).await,
            Want::Invalid,
            "list with a limit of 0 after an id",
        );
        fails(
            store.list(owner, Page::first(Page::MAX_LIMIT + 1)).await,
            Want::Invalid,
            "list with a limit above Page::MAX_LIMIT",
        );
    }
    let page = ok(
        store.list(&owner, Page::first(Page::MAX_LIMIT)).await,
        "list with a limit of Page::MAX_LIMIT",
    );
    assert_eq!(page.records.len(), 1);
    clean(store, &[&id]).await;
}

// ---------------------------------------------------------------------------------------------
// Changing records

/// `update` replaces what it sets and keeps the rest, for every key of the record (both keys of
/// a rotation), never changing id, owner or `created_at`.
pub async fn update_changes_every_key_of_a_record<S: KeyManager + KeyStore>(store: &S) {
    let owner = unique("owner");
    let id = unique("update");
    let created = UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    let old = ok(
        store
            .issue(
                KeyRecord::new(&id, &owner)
                    .with_scopes(["a"])
                    .with_quota(Quota::per_second(5))
                    .with_metadata("plan", "free")
                    .with_created_at(created),
            )
            .await,
        "issue",
    );
    let retire = SystemTime::now() + LONG_GRACE;
    let new = ok(store.rotate(&id, LONG_GRACE).await, "rotate");
    // Both keys are looked up (and may be cached) before the updates.
    found(store, &old.key, "the old key before the update").await;
    found(store, &new.key, "the new key before the update").await;

    let both = |what: &'static str, want: KeyRecord| {
        let (old, new) = (&old.key, &new.key);
        async move {
            assert_eq!(
                get(store, &want.id, what).await,
                want,
                "{what}: get after the update"
            );
            retiring(
                &found(store, old, what).await,
                &want,
                retire,
                &format!("{what}: the key from before the rotation"),
            );
            assert_eq!(
                found(store, new, what).await,
                want,
                "{what}: the key from the rotation"
            );
        }
    };

    let expires = whole_seconds(SystemTime::now() + Duration::from_secs(7 * 86_400));
    let metadata = BTreeMap::from([
        ("plan".to_owned(), "pro".to_owned()),
        ("team".to_owned(), "ops".to_owned()),
    ]);
    let quota = Quota::per_hour(1000).with_burst(50);
    let changed = ok(
        store
            .update(
                &id,
                KeyUpdate::new()
                    .scopes(["x", "y"])
                    .quota(Some(quota))
                    .status(KeyStatus::Disabled)
                    .expires_at(Some(expires))
                    .metadata(metadata.clone()),
            )
            .await,
        "update of every field",
    );
    let mut want = KeyRecord::new(&id, &owner)
        .with_scopes(["x", "y"])
        .with_quota(quota)
        .with_status(KeyStatus::Disabled)
        .with_expiry(expires)
        .with_created_at(created);
    want.metadata = metadata.clone();
    assert_eq!(
        changed, want,
        "update of every field returns the new record"
    );
    both("update of every field", want.clone()).await;

    // Unset fields are kept; `Some(None)` removes quota and expiry.
    let changed = ok(
        store
            .update(
                &id,
                KeyUpdate::new()
                    .quota(None::<keygate::Limits>)
                    .expires_at(None)
                    .status(KeyStatus::Active),
            )
            .await,
        "update removing quota and expiry",
    );
    want.quota = None;
    want.expires_at = None;
    want.status = KeyStatus::Active;
    assert_eq!(changed, want, "update removing quota and expiry");
    both("update removing quota and expiry", want.clone()).await;

    let unchanged = ok(
        store.update(&id, KeyUpdate::new()).await,
        "an update that changes nothing",
    );
    assert_eq!(unchanged, want, "an update that changes nothing");

    let changed = ok(
        store
            .update(
                &id,
                KeyUpdate::new()
                    .metadata(BTreeMap::new())
                    .scopes(Vec::<String>::new()),
            )
            .await,
        "update emptying metadata and scopes",
    );
    want.metadata.clear();
    want.scopes = Default::default();
    assert_eq!(changed, want, "update emptying metadata and scopes");
    both("update emptying metadata and scopes", want.clone()).await;

    clean(store, &[&id]).await;
}

/// A revoked record stays revoked: bringing it back (active or disabled) is `Invalid` and
/// changes nothing, revoking it again succeeds, rotating it is `Invalid`, and every key of it
/// still looks up, as revoked (the layer rejects it).
pub async fn revoked_records_stay_revoked<S: KeyManager + KeyStore>(store: &S) {
    let owner = unique("owner");
    let id = unique("revoke");
    let old = ok(
        store
            .issue(KeyRecord::new(&id, &owner).with_scopes(["a"]))
            .await,
        "issue",
    );
    let retire = SystemTime::now() + LONG_GRACE;
    let new = ok(store.rotate(&id, LONG_GRACE).await, "rotate");
    found(store, &old.key, "the old key before the revocation").await;
    found(store, &new.key, "the new key before the revocation").await;

    let revoked = ok(store.revoke(&id).await, "revoke");
    assert_eq!(
        revoked.status,
        KeyStatus::Revoked,
        "revoke returns the record, revoked"
    );
    assert_eq!(
        revoked.created_at, old.record.created_at,
        "revoke keeps created_at"
    );
    assert_eq!(revoked.scopes, old.record.scopes, "revoke keeps the scopes");
    let check = |what: &'static str| {
        let (old, new, revoked) = (&old.key, &new.key, &revoked);
        async move {
            retiring(
                &found(store, old, what).await,
                revoked,
                retire,
                &format!(
                    "{what}: a revoked key still looks up, as revoked (the key from before the \
                     rotation)"
                ),
            );
            assert_eq!(
                found(store, new, what).await,
                *revoked,
                "{what}: a revoked key still looks up, as revoked (the key from the rotation)"
            );
            assert_eq!(get(store, &revoked.id, what).await, *revoked, "{what}: get");
        }
    };
    check("after revoke").await;

    fails(
        store
            .update(&id, KeyUpdate::new().status(KeyStatus::Active))
            .await,
        Want::Invalid,
        "update of a revoked record to active",
    );
    fails(
        store
            .update(&id, KeyUpdate::new().status(KeyStatus::Disabled))
            .await,
        Want::Invalid,
        "update of a revoked record to disabled",
    );
    fails(
        store
            .update(
                &id,
                KeyUpdate::new().scopes(["b"]).status(KeyStatus::Active),
            )
            .await,
        Want::Invalid,
        "update of a revoked record to active with new scopes",
    );
    check("after refused reactivations").await;

    let again = ok(store.revoke(&id).await, "revoking a revoked record");
    assert_eq!(again, revoked, "revoking again changes nothing");
    let again = ok(
        store
            .update(&id, KeyUpdate::new().status(KeyStatus::Revoked))
            .await,
        "an update to revoked of a revoked record",
    );
    assert_eq!(again, revoked, "an update to revoked changes nothing");

    fails(
        store.rotate(&id, LONG_GRACE).await,
        Want::Invalid,
        "rotate of a revoked record",
    );
    check("after a refused rotation").await;

    // Changes that leave the status alone are allowed; the record stays revoked.
    let changed = ok(
        store
            .update(
                &id,
                KeyUpdate::new()
                    .metadata(BTreeMap::from([("why".to_owned(), "leaked".to_owned())])),
            )
            .await,
        "an update of a revoked record's metadata",
    );
    assert_eq!(
        changed.status,
        KeyStatus::Revoked,
        "a revoked record stays revoked"
    );
    assert_eq!(changed.metadata["why"], "leaked");
    assert_eq!(
        found(store, &new.key, "the revoked key after a metadata update")
            .await
            .status,
        KeyStatus::Revoked
    );
    assert_eq!(
        listed(store, &owner, "list of a revoked record").await,
        [id.as_str()]
    );
    clean(store, &[&id]).await;
}

/// Disabled, expired and revoked records look up as they are: keygate rejects them itself.
pub async fn disabled_expired_and_revoked_keys_still_look_up<S: KeyManager + KeyStore>(store: &S) {
    let owner = unique("owner");
    let expired_at = whole_seconds(SystemTime::now() - Duration::from_secs(600));
    let expired = ok(
        store
            .issue(KeyRecord::new(unique("expired"), &owner).with_expiry(expired_at))
            .await,
        "issue of an expired record",
    );
    let looked = found(store, &expired.key, "an expired key").await;
    // A store may answer an earlier expiry (PostgreSQL answers the epoch for what its own
    // clock deems expired), never a later one or none: the layer must reject the key.
    assert!(
        looked.expires_at.is_some_and(|at| at <= expired_at),
        "an expired key must look up expired, got {:?}",
        looked.expires_at
    );
    assert_eq!(looked.status, KeyStatus::Active);

    let disabled = ok(
        store
            .issue(KeyRecord::new(unique("disabled"), &owner).with_status(KeyStatus::Disabled))
            .await,
        "issue of a disabled record",
    );
    assert_eq!(
        found(store, &disabled.key, "a disabled key").await.status,
        KeyStatus::Disabled
    );
    let enabled = ok(
        store
            .update(
                &disabled.record.id,
                KeyUpdate::new().status(KeyStatus::Active),
            )
            .await,
        "enabling a disabled record",
    );
    assert_eq!(enabled.status, KeyStatus::Active);
    assert_eq!(
        found(store, &disabled.key, "an enabled key").await.status,
        KeyStatus::Active
    );

    // A record may arrive revoked (brought from another system), and then stays revoked.
    let legacy = legacy_key();
    let id = unique("inserted-revoked");
    ok(
        store
            .insert(
                legacy.digest(),
                KeyRecord::new(&id, &owner).with_status(KeyStatus::Revoked),
            )
            .await,
        "insert of a revoked record",
    );
    assert_eq!(
        found(store, &legacy, "a key inserted revoked").await.status,
        KeyStatus::Revoked
    );
    fails(
        store
            .update(&id, KeyUpdate::new().status(KeyStatus::Active))
            .await,
        Want::Invalid,
        "update to active of a record inserted revoked",
    );
    clean(store, &[&expired.record.id, &disabled.record.id, &id]).await;
}

// ---------------------------------------------------------------------------------------------
// Rotating and deleting

/// `rotate` with zero grace retires the current keys at once; the new key carries the record.
pub async fn rotation_with_zero_grace_retires_the_old_keys_at_once<S: KeyManager + KeyStore>(
    store: &S,
) {
    let owner = unique("owner");
    let id = unique("rotate-now");
    let k0 = ok(
        store
            .issue(KeyRecord::new(&id, &owner).with_scopes(["a"]))
            .await,
        "issue",
    );
    found(store, &k0.key, "the key before the rotation").await;
    let k1 = ok(
        store.rotate(&id, Duration::ZERO).await,
        "rotate with zero grace",
    );
    of_format(store, &k1.key, "rotate");
    assert_ne!(k1.key, k0.key, "rotate must make a new key");
    assert_eq!(k1.record, k0.record, "rotate returns the record as it was");
    hidden(store.format(), &k1.key, &k1, "rotate: the IssuedKey");
    retired(
        store,
        &k0.key,
        "the old key after a rotation with zero grace",
    )
    .await;
    assert_eq!(found(store, &k1.key, "the new key").await, k0.record);

    let k2 = ok(
        store.rotate(&id, Duration::ZERO).await,
        "a second rotation with zero grace",
    );
    retired(store, &k0.key, "the first key after two rotations").await;
    retired(
        store,
        &k1.key,
        "the second key after a rotation with zero grace",
    )
    .await;
    assert_eq!(found(store, &k2.key, "the newest key").await, k0.record);
    assert_eq!(get(store, &id, "get after rotations").await, k0.record);
    assert_eq!(
        listed(store, &owner, "list after rotations").await,
        [id.as_str()],
        "a rotated record is listed once"
    );
    clean(store, &[&id]).await;
}

/// `delete` removes the record and every key of it; the id and the keys' digests are free again.
pub async fn delete_removes_the_record_and_every_key<S: KeyManager + KeyStore>(store: &S) {
    let owner = unique("owner");
    let id = unique("delete");
    let k0 = ok(store.issue(KeyRecord::new(&id, &owner)).await, "issue");
    let k1 = ok(store.rotate(&id, LONG_GRACE).await, "rotate");
    let keep = ok(
        store
            .issue(KeyRecord::new(unique("delete-keep"), &owner))
            .await,
        "issue of a record to keep",
    );
    found(store, &k0.key, "the old key before the delete").await;
    found(store, &k1.key, "the new key before the delete").await;

    ok(store.delete(&id).await, "delete");
    gone(
        store,
        &k0.key,
        "the key from before the rotation after delete",
    )
    .await;
    gone(store, &k1.key, "the key from the rotation after delete").await;
    absent(store, &id, "get after delete").await;
    assert_eq!(
        listed(store, &owner, "list after delete").await,
        [keep.record.id.as_str()],
        "a deleted record is not listed, the others are"
    );
    found(store, &keep.key, "another record's key after delete").await;
    fails(
        store.delete(&id).await,
        Want::NotFound,
        "delete of a deleted record",
    );
    fails(
        store.update(&id, KeyUpdate::new().scopes(["x"])).await,
        Want::NotFound,
        "update of a deleted record",
    );
    fails(
        store.revoke(&id).await,
        Want::NotFound,
        "revoke of a deleted record",
    );
    fails(
        store.rotate(&id, LONG_GRACE).await,
        Want::NotFound,
        "rotate of a deleted record",
    );

    // Nothing of it is left: the id and the digests may be used again.
    let again = ok(
        store.issue(KeyRecord::new(&id, &owner)).await,
        "issue with the id of a deleted record",
    );
    gone(store, &k0.key, "an old key after its id was issued again").await;
    gone(store, &k1.key, "an old key after its id was issued again").await;
    assert_eq!(
        found(store, &again.key, "the new record's key").await.id,
        id
    );
    let reused = unique("delete-reuse");
    ok(
        store
            .insert(k0.key.digest(), KeyRecord::new(&reused, &owner))
            .await,
        "insert of the digest of a deleted record's key",
    );
    assert_eq!(
        found(store, &k0.key, "a deleted record's key inserted again")
            .await
            .id,
        reused
    );
    clean(store, &[&id, &reused, &keep.record.id]).await;
}

/// `purge` with a cutoff an hour ago keeps records revoked or expired since, and keys in their
/// grace. (Safe on a shared store; [`purge_checks`] checks what a purge deletes.)
pub async fn purge_keeps_what_may_still_work<S: KeyManager + KeyStore>(store: &S) {
    let owner = unique("owner");
    let revoked = ok(
        store
            .issue(KeyRecord::new(unique("purge-revoked"), &owner))
            .await,
        "issue",
    );
    ok(store.revoke(&revoked.record.id).await, "revoke");
    let expired_at = whole_seconds(SystemTime::now() - Duration::from_secs(600));
    let expired = ok(
        store
            .issue(KeyRecord::new(unique("purge-expired"), &owner).with_expiry(expired_at))
            .await,
        "issue of an expired record",
    );
    let rotated = ok(
        store
            .issue(KeyRecord::new(unique("purge-rotated"), &owner))
            .await,
        "issue",
    );
    let current = ok(store.rotate(&rotated.record.id, LONG_GRACE).await, "rotate");
    let disabled = ok(
        store
            .issue(
                KeyRecord::new(unique("purge-disabled"), &owner).with_status(KeyStatus::Disabled),
            )
            .await,
        "issue of a disabled record",
    );

    let before = SystemTime::now() - Duration::from_secs(3600);
    ok(store.purge(before).await, "purge of what died an hour ago");
    for (issued, what) in [
        (&revoked, "a record revoked after the cutoff"),
        (&expired, "a record expired after the cutoff"),
        (&rotated, "a rotated record"),
        (&disabled, "a disabled record"),
    ] {
        let what = format!("purge kept {what}");
        get(store, &issued.record.id, &what).await;
        found(store, &issued.key, &what).await;
    }
    found(
        store,
        &current.key,
        "purge kept the current key of a rotated record",
    )
    .await;
    assert_eq!(
        found(store, &revoked.key, "a revoked key after purge")
            .await
            .status,
        KeyStatus::Revoked
    );
    assert_eq!(listed(store, &owner, "list after purge").await.len(), 4);
    clean(
        store,
        &[
            &revoked.record.id,
            &expired.record.id,
            &rotated.record.id,
            &disabled.record.id,
        ],
    )
    .await;
}

/// Issues of one id and inserts of one digest racing each other create one record: one call
/// succeeds, the others are `DuplicateId` or `DuplicateKey` and leave nothing behind.
pub async fn concurrent_creations_of_one_id_or_key_make_one_record<S>(store: &S)
where
    S: KeyManager + KeyStore + Clone,
{
    const RACERS: usize = 8;
    let id = unique("race");
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..RACERS {
        let (store, id) = (store.clone(), id.clone());
        let owner = format!("{id}-owner-{i}");
        racers.spawn(async move {
            let result = store.issue(KeyRecord::new(id, &owner)).await;
            (owner, result)
        });
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    while let Some(joined) = racers.join_next().await {
        let (owner, result) = joined.expect("a racing issue panicked");
        match result {
            Ok(issued) => winners.push((owner, issued)),
            Err(ManageError::DuplicateId) => losers.push(owner),
            Err(e) => panic!("a racing issue of one id: expected DuplicateId, got {e:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "racing issues of one id: exactly one must succeed, {} did",
        winners.len()
    );
    let (winner, issued) = &winners[0];
    assert_eq!(
        get(store, &id, "get after racing issues").await.owner,
        *winner
    );
    assert_eq!(
        found(store, &issued.key, "the winning key").await.owner,
        *winner
    );
    for owner in &losers {
        assert!(
            listed(store, owner, "list of a losing owner")
                .await
                .is_empty(),
            "a losing issue must not list a record for its owner"
        );
    }

    let legacy = legacy_key();
    let digest = legacy.digest();
    let owner = unique("owner");
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..RACERS {
        let (store, owner) = (store.clone(), owner.clone());
        let id = format!("{id}-insert-{i}");
        racers.spawn(async move {
            let result = store.insert(digest, KeyRecord::new(&id, owner)).await;
            (id, result)
        });
    }
    let mut inserted = Vec::new();
    let mut refused = Vec::new();
    while let Some(joined) = racers.join_next().await {
        let (id, result) = joined.expect("a racing insert panicked");
        match result {
            Ok(_) => inserted.push(id),
            Err(ManageError::DuplicateKey) => refused.push(id),
            Err(e) => panic!("a racing insert of one digest: expected DuplicateKey, got {e:?}"),
        }
    }
    assert_eq!(
        inserted.len(),
        1,
        "racing inserts of one digest: exactly one must succeed, {} did",
        inserted.len()
    );
    assert_eq!(
        found(store, &legacy, "the raced digest").await.id,
        inserted[0]
    );
    for id in &refused {
        absent(store, id, "get of a refused racing insert").await;
    }
    assert_eq!(
        listed(store, &owner, "list after racing inserts").await,
        inserted
    );
    clean(store, &[&id, &inserted[0]]).await;
}

/// `rotate` makes a new key; the old one keeps working for the grace, then fails like an
/// unknown key.
pub async fn rotation_keeps_the_old_keys_for_the_grace<S: KeyManager + KeyStore>(store: &S) {
    let owner = unique("owner");
    let id = unique("rotate");
    let old = ok(
        store
            .issue(
                KeyRecord::new(&id, &owner)
                    .with_scopes(["a"])
                    .with_metadata("plan", "pro"),
            )
            .await,
        "issue",
    );
    found(store, &old.key, "the key before the rotation").await;
    let retire = SystemTime::now() + GRACE;
    let new = ok(store.rotate(&id, GRACE).await, "rotate");
    of_format(store, &new.key, "rotate");
    assert_ne!(new.key, old.key, "rotate must make a new key");
    assert_eq!(
        new.record, old.record,
        "rotate returns the record as it was"
    );
    retiring(
        &found(store, &old.key, "the old key during the grace").await,
        &old.record,
        retire,
        "the old key works during the grace",
    );
    assert_eq!(
        found(store, &new.key, "the new key during the grace").await,
        old.record,
        "the new key carries the same record"
    );
    tokio::time::sleep(AFTER_GRACE).await;
    retired(store, &old.key, "the old key after the grace").await;
    assert_eq!(
        found(store, &new.key, "the new key after the grace").await,
        old.record
    );
    assert_eq!(get(store, &id, "get after the grace").await, old.record);
    assert_eq!(
        listed(store, &owner, "list after the grace").await,
        [id.as_str()]
    );
    clean(store, &[&id]).await;
}

/// A later rotation may cut a running grace short, never lengthen it; one with zero grace retires
/// every old key at once (after a leak).
pub async fn a_later_rotation_cuts_a_grace_short_and_never_lengthens_it<S>(store: &S)
where
    S: KeyManager + KeyStore,
{
    let owner = unique("owner");
    // Cut short: a long grace, then a short one.
    let cut = unique("rotate-cut");
    let a0 = ok(store.issue(KeyRecord::new(&cut, &owner)).await, "issue");
    let a1 = ok(
        store.rotate(&cut, LONG_GRACE).await,
        "rotate with a long grace",
    );
    let a_retire = SystemTime::now() + GRACE;
    let a2 = ok(store.rotate(&cut, GRACE).await, "rotate with a short grace");
    // Not lengthened: a short grace, then a long one.
    let kept = unique("rotate-kept");
    let b0 = ok(store.issue(KeyRecord::new(&kept, &owner)).await, "issue");
    let b0_retire = SystemTime::now() + GRACE;
    let b1 = ok(
        store.rotate(&kept, GRACE).await,
        "rotate with a short grace",
    );
    let b1_retire = SystemTime::now() + LONG_GRACE;
    let b2 = ok(
        store.rotate(&kept, LONG_GRACE).await,
        "rotate with a long grace",
    );
    for (key, record, retire, what) in [
        (
            &a0,
            &a2.record,
            a_retire,
            "a key whose long grace a shorter one cut",
        ),
        (
            &a1,
            &a2.record,
            a_retire,
            "a key whose long grace a shorter one cut",
        ),
        (
            &b0,
            &b2.record,
            b0_retire,
            "a key whose short grace a longer one must not lengthen",
        ),
        (&b1, &b2.record, b1_retire, "a key in its long grace"),
    ] {
        let looked = found(
            store,
            &key.key,
            &format!("{what}, before the short grace ends"),
        )
        .await;
        retiring(&looked, record, retire, what);
    }
    assert_eq!(found(store, &a2.key, "the current key").await, a2.record);
    assert_eq!(found(store, &b2.key, "the current key").await, b2.record);

    tokio::time::sleep(AFTER_GRACE).await;
    retired(store, &a0.key, "a key whose long grace a shorter one cut").await;
    retired(store, &a1.key, "a key whose long grace a shorter one cut").await;
    found(store, &a2.key, "the current key").await;
    retired(
        store,
        &b0.key,
        "a key whose short grace a longer one must not lengthen",
    )
    .await;
    found(store, &b1.key, "a key in its long grace").await;
    found(store, &b2.key, "the current key").await;

    // A rotation with zero grace retires every older key at once.
    let b3 = ok(
        store.rotate(&kept, Duration::ZERO).await,
        "rotate with zero grace",
    );
    retired(
        store,
        &b1.key,
        "a key in a long grace after a rotation with zero grace",
    )
    .await;
    retired(
        store,
        &b2.key,
        "the current key after a rotation with zero grace",
    )
    .await;
    found(store, &b3.key, "the newest key").await;
    assert_eq!(listed(store, &owner, "list after rotations").await.len(), 2);
    clean(store, &[&cut, &kept]).await;
}

// ---------------------------------------------------------------------------------------------
// Purging

/// What `purge` deletes and counts. Needs a store of its own: it first purges every dead record
/// of the store, then counts exactly what its own purge deletes.
///
/// Deleted and counted: records revoked before the cutoff (revoked by `revoke`, or inserted
/// revoked, with or without a rotation's keys) and records expired before it. Kept: active,
/// disabled and not yet expired records, and keys in their grace. Rotated-out keys retired before
/// the cutoff are forgotten: their digests may be inserted again.
pub async fn purge_checks<S: KeyManager + KeyStore>(store: &S) {
    let cutoff = || SystemTime::now() + Duration::from_secs(2);
    ok(
        store.purge(cutoff()).await,
        "the purge that clears the store",
    );

    let owner = unique("owner");
    let issue = |tag: &str, record: fn(KeyRecord) -> KeyRecord| {
        let record = record(KeyRecord::new(unique(tag), &owner));
        async move { ok(store.issue(record).await, "issue") }
    };
    // To be deleted.
    let revoked = issue("purge-revoked", |r| r).await;
    ok(store.revoke(&revoked.record.id).await, "revoke");
    let expired = issue("purge-expired", |r| {
        r.with_expiry(whole_seconds(SystemTime::now() - Duration::from_secs(600)))
    })
    .await;
    let legacy = legacy_key();
    let inserted_revoked = ok(
        store
            .insert(
                legacy.digest(),
                KeyRecord::new(unique("purge-inserted-revoked"), &owner)
                    .with_status(KeyStatus::Revoked),
            )
            .await,
        "insert of a revoked record",
    );
    let rotated_revoked = issue("purge-rotated-revoked", |r| r).await;
    let rotated_revoked_new = ok(
        store.rotate(&rotated_revoked.record.id, LONG_GRACE).await,
        "rotate",
    );
    ok(store.revoke(&rotated_revoked.record.id).await, "revoke");
    let dead = [
        (&revoked.record.id, &revoked.key),
        (&expired.record.id, &expired.key),
        (&inserted_revoked.id, &legacy),
        (&rotated_revoked.record.id, &rotated_revoked.key),
    ];

    // To be kept.
    let active = issue("purge-active", |r| r).await;
    let expiring = issue("purge-expiring", |r| {
        r.with_expiry(whole_seconds(SystemTime::now() + Duration::from_secs(3600)))
    })
    .await;
    let disabled = issue("purge-disabled", |r| r.with_status(KeyStatus::Disabled)).await;
    let retiree = issue("purge-retired", |r| r).await;
    let retired_new = ok(
        store.rotate(&retiree.record.id, Duration::ZERO).await,
        "rotate with zero grace",
    );
    let in_grace = issue("purge-in-grace", |r| r).await;
    let in_grace_new = ok(
        store.rotate(&in_grace.record.id, LONG_GRACE).await,
        "rotate",
    );

    let purged = ok(store.purge(cutoff()).await, "purge");
    assert_eq!(
        purged,
        dead.len() as u64,
        "purge must delete and count the revoked and expired records, and only them"
    );
    for (id, key) in dead {
        absent(store, id, "a purged record").await;
        rejected(store, key, "the key of a purged record").await;
    }
    rejected(
        store,
        &rotated_revoked_new.key,
        "the newer key of a purged record",
    )
    .await;
    for (issued, what) in [
        (&active, "an active record"),
        (&expiring, "a record expiring after the cutoff"),
        (&disabled, "a disabled record"),
        (&in_grace, "a key in its grace"),
    ] {
        let what = format!("purge must keep {what}");
        get(store, &issued.record.id, &what).await;
        found(store, &issued.key, &what).await;
    }
    found(
        store,
        &in_grace_new.key,
        "purge must keep a rotated record's current key",
    )
    .await;
    found(
        store,
        &retired_new.key,
        "purge must keep a rotated record's current key",
    )
    .await;
    retired(store, &retiree.key, "a key retired before the cutoff").await;
    let mut kept = vec![
        active.record.id.clone(),
        expiring.record.id.clone(),
        disabled.record.id.clone(),
        retiree.record.id.clone(),
        in_grace.record.id.clone(),
    ];
    kept.sort();
    assert_eq!(
        listed(store, &owner, "list after purge").await,
        kept,
        "purge keeps exactly the records that may still work"
    );

    // The retired key is forgotten: its digest belongs to no record any more.
    let reused = unique("purge-reused");
    ok(
        store
            .insert(retiree.key.digest(), KeyRecord::new(&reused, &owner))
            .await,
        "insert of the digest of a purged retired key",
    );
    assert_eq!(
        found(store, &retiree.key, "a purged retired key inserted again")
            .await
            .id,
        reused
    );
    assert_eq!(
        ok(store.purge(cutoff()).await, "a second purge"),
        0,
        "a second purge finds nothing more to delete"
    );
    kept.push(reused);
    let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
    clean(store, &kept).await;
}

// ---------------------------------------------------------------------------------------------
// Tiers, limits and credits

/// How long a [`credits_are_refilled_on_their_schedule`] refill may come late or early, as
/// measured here: a round trip, a loaded machine, a server's clock resolution.
const REFILL_SLACK: Duration = Duration::from_millis(400);
/// How far off the beat of its schedule a refill may be found, beyond what the duration of the
/// calls that measure it allows: a server's clock resolution and rounding.
const BEAT_SLACK: Duration = Duration::from_millis(100);

/// A list of limits with every part of the text form: burst, fixed window, names, owner-wide
/// and shadow items.
fn rich_limits() -> Limits {
    "10/s;burst=20;name=burst, 10000/d;fixed;name=daily, 5/min;owner;shadow, 250/100ms"
        .parse()
        .expect("a valid list of limits")
}

/// The value of a spend or read of credits, which must succeed.
fn answered<T>(result: Result<T, StoreError>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: the credit store failed: {e:?}"))
}

async fn spend<S: CreditStore>(store: &S, id: &str, cost: u32, what: &str) -> CreditOutcome {
    answered(store.spend(id, cost).await, what)
}

async fn credits_of<S: CreditStore>(store: &S, id: &str, what: &str) -> Option<Credits> {
    answered(store.credits(id).await, what)
}

/// A tier, a list of limits (each item's name, owner-wide and shadow flags included) and
/// credits with a refill schedule come back as given through `issue`, `insert`, `get`, `list`
/// and `lookup`; updates replace and remove each, and keep the others.
pub async fn tiers_limits_and_credits_round_trip<S: KeyManager + KeyStore>(store: &S) {
    let owner = unique("owner");
    let limits = rich_limits();
    let credits = Credits::new(40).with_refill(Refill::new(100, Duration::from_secs(3600)));
    let want = |id: &str| {
        KeyRecord::new(id, &owner)
            .with_quota(limits.clone())
            .with_tier("enterprise plan ✓")
            .with_credits(credits)
            .with_created_at(UNIX_EPOCH + Duration::from_secs(1_650_000_000))
    };

    let id1 = unique("tiers");
    let issued = ok(
        store.issue(want(&id1)).await,
        "issue with a tier, limits and credits",
    );
    assert_eq!(
        issued.record,
        want(&id1),
        "issue keeps tier, limits and credits"
    );
    let quota = issued.record.quota.as_ref().expect("the limits");
    assert_eq!(quota.to_string(), limits.to_string(), "the limits' text");
    assert_eq!(quota.len(), 4, "every item of the list");
    assert_eq!(
        found(
            store,
            &issued.key,
            "lookup of a record with tier and credits"
        )
        .await,
        want(&id1),
        "lookup keeps tier, limits and credits"
    );
    assert_eq!(get(store, &id1, "get").await, want(&id1), "get keeps them");

    let id2 = unique("tiers");
    let legacy = legacy_key();
    let mut plain = want(&id2);
    plain.credits = Some(Credits::new(0));
    let inserted = ok(
        store.insert(legacy.digest(), plain.clone()).await,
        "insert with credits and no refill",
    );
    assert_eq!(inserted, plain, "insert keeps a budget of 0 without refill");
    assert_eq!(
        found(store, &legacy, "lookup of the inserted record").await,
        plain
    );
    let page = ok(store.list(&owner, Page::first(10)).await, "list");
    let mut want_page = vec![want(&id1), plain.clone()];
    want_page.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        page.records, want_page,
        "list shows tiers, limits and credits"
    );

    // Replacing each.
    let other_limits: Limits = "3/s, 100/h;fixed".parse().expect("valid limits");
    let other_credits = Credits::new(7).with_refill(Refill::new(9, Duration::from_secs(90)));
    let changed = ok(
        store
            .update(
                &id1,
                KeyUpdate::new()
                    .tier(Some("free"))
                    .quota(Some(other_limits.clone()))
                    .credits(Some(other_credits)),
            )
            .await,
        "update of tier, limits and credits",
    );
    let mut now = want(&id1);
    now.tier = Some("free".into());
    now.quota = Some(other_limits);
    now.credits = Some(other_credits);
    assert_eq!(changed, now, "update of tier, limits and credits");
    assert_eq!(get(store, &id1, "get after the update").await, now);
    assert_eq!(
        found(store, &issued.key, "lookup after the update").await,
        now
    );

    // Other updates keep them.
    let changed = ok(
        store.update(&id1, KeyUpdate::new().scopes(["s"])).await,
        "an update of the scopes",
    );
    now.scopes = ["s"].into_iter().collect();
    assert_eq!(
        changed, now,
        "an update of the scopes keeps tier, limits and credits"
    );

    // Removing each.
    let changed = ok(
        store
            .update(
                &id1,
                KeyUpdate::new()
                    .tier(None::<String>)
                    .quota(None::<Limits>)
                    .credits(None),
            )
            .await,
        "update removing tier, limits and credits",
    );
    now.tier = None;
    now.quota = None;
    now.credits = None;
    assert_eq!(changed, now, "update removing tier, limits and credits");
    assert_eq!(get(store, &id1, "get after the removal").await, now);
    assert_eq!(
        found(store, &issued.key, "lookup after the removal").await,
        now
    );
    clean(store, &[&id1, &id2]).await;
}

/// A key's IP allowlist (IPv4 and IPv6 networks, single addresses, an empty list) comes back as
/// given through `issue`, `insert`, `get`, `list` and `lookup`; an update replaces or removes it,
/// and other updates keep it.
pub async fn allowed_ips_round_trip<S: KeyManager + KeyStore>(store: &S) {
    let owner = unique("owner");
    let networks: Networks = "203.0.113.0/24, 198.51.100.7, 2001:db8:cafe::/48, ::1, 0.0.0.0/0"
        .parse()
        .expect("valid networks");
    let want = |id: &str, networks: &Networks| {
        KeyRecord::new(id, &owner)
            .with_scopes(["read"])
            .with_allowed_ips(networks.clone())
            .with_created_at(UNIX_EPOCH + Duration::from_secs(1_650_000_000))
    };

    let id1 = unique("ips");
    let issued = ok(
        store.issue(want(&id1, &networks)).await,
        "issue with an allowlist",
    );
    assert_eq!(
        issued.record,
        want(&id1, &networks),
        "issue keeps the allowlist"
    );
    assert_eq!(
        found(store, &issued.key, "lookup of a record with an allowlist").await,
        want(&id1, &networks),
        "lookup keeps the allowlist"
    );
    assert_eq!(get(store, &id1, "get").await, want(&id1, &networks));

    // An empty list (no address allowed) is not the same as none (any address).
    let id2 = unique("ips");
    let legacy = legacy_key();
    let empty = want(&id2, &Networks::new());
    let inserted = ok(
        store.insert(legacy.digest(), empty.clone()).await,
        "insert with an empty allowlist",
    );
    assert_eq!(inserted, empty, "insert keeps an empty allowlist");
    assert_eq!(
        found(store, &legacy, "lookup of the inserted record").await,
        empty
    );
    let page = ok(store.list(&owner, Page::first(10)).await, "list");
    let mut want_page = vec![want(&id1, &networks), empty.clone()];
    want_page.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(page.records, want_page, "list shows the allowlists");

    // Replacing it.
    let other: Networks = "192.0.2.0/25, 2001:db8::/32"
        .parse()
        .expect("valid networks");
    let changed = ok(
        store
            .update(&id1, KeyUpdate::new().allowed_ips(Some(other.clone())))
            .await,
        "update of the allowlist",
    );
    let mut now = want(&id1, &other);
    assert_eq!(changed, now, "update of the allowlist");
    assert_eq!(get(store, &id1, "get after the update").await, now);
    assert_eq!(
        found(store, &issued.key, "lookup after the update").await,
        now
    );

    // Other updates keep it.
    let changed = ok(
        store.update(&id1, KeyUpdate::new().scopes(["s"])).await,
        "an update of the scopes",
    );
    now.scopes = ["s"].into_iter().collect();
    assert_eq!(changed, now, "an update of the scopes keeps the allowlist");

    // Removing it.
    let changed = ok(
        store
            .update(&id1, KeyUpdate::new().allowed_ips(None::<Networks>))
            .await,
        "update removing the allowlist",
    );
    now.allowed_ips = None;
    assert_eq!(changed, now, "update removing the allowlist");
    assert_eq!(get(store, &id1, "get after the removal").await, now);
    assert_eq!(
        found(store, &issued.key, "lookup after the removal").await,
        now
    );
    clean(store, &[&id1, &id2]).await;
}

/// Counts beyond `MAX_CREDITS` and refill intervals out of range are `Invalid`, on create and
/// update, and change nothing.
pub async fn out_of_range_credits_are_refused<S: KeyManager + KeyStore>(store: &S) {
    let owner = unique("owner");
    let mut zero_every = Refill::new(1, Duration::from_secs(1));
    zero_every.every = Duration::from_millis(500);
    let mut huge_amount = Refill::new(1, Duration::from_secs(1));
    huge_amount.amount = MAX_CREDITS + 1;
    let bad = [
        Credits::new(MAX_CREDITS + 1),
        Credits::new(1).with_refill(zero_every),
        Credits::new(1).with_refill(huge_amount),
        Credits::new(1).with_refill(Refill::new(1, Duration::from_secs(101 * 365 * 86_400))),
    ];
    let id = unique("credits-range");
    for credits in bad {
        let what = format!("issue with {credits:?}");
        fails(
            store
                .issue(KeyRecord::new(&id, &owner).with_credits(credits))
                .await,
            Want::Invalid,
            &what,
        );
        absent(store, &id, &what).await;
    }
    let max = Credits::new(MAX_CREDITS).with_refill(Refill::new(
        MAX_CREDITS,
        Duration::from_secs(100 * 365 * 86_400),
    ));
    let issued = ok(
        store
            .issue(KeyRecord::new(&id, &owner).with_credits(max))
            .await,
        "issue with the largest budget",
    );
    assert_eq!(
        issued.record.credits,
        Some(max),
        "the largest budget is kept exactly"
    );
    assert_eq!(
        get(store, &id, "get of the largest budget").await.credits,
        Some(max)
    );
    for credits in bad {
        let what = format!("update to {credits:?}");
        fails(
            store
                .update(&id, KeyUpdate::new().credits(Some(credits)))
                .await,
            Want::Invalid,
            &what,
        );
        assert_eq!(get(store, &id, &what).await.credits, Some(max), "{what}");
    }
    clean(store, &[&id]).await;
}

/// A spend takes exactly its cost while enough credits remain; one larger than what remains is
/// refused and spends nothing; the count reaches exactly 0. A key without a budget, and an
/// unknown id, answer `NoBudget`.
pub async fn spends_reach_exactly_zero_and_never_go_below<S>(store: &S)
where
    S: KeyManager + KeyStore + CreditStore,
{
    let owner = unique("owner");
    let id = unique("spend");
    let issued = ok(
        store
            .issue(KeyRecord::new(&id, &owner).with_credits(Credits::new(5)))
            .await,
        "issue with 5 credits",
    );
    let what = "spends of 5 credits";
    assert_eq!(
        spend(store, &id, 2, what).await,
        CreditOutcome::Spent { remaining: 3 }
    );
    assert_eq!(
        spend(store, &id, 4, what).await,
        CreditOutcome::Exhausted { refill_in: None },
        "{what}: a spend of more than remains is refused"
    );
    assert_eq!(
        credits_of(store, &id, what).await,
        Some(Credits::new(3)),
        "{what}: a refused spend spends nothing"
    );
    assert_eq!(get(store, &id, what).await.credits, Some(Credits::new(3)));
    assert_eq!(
        spend(store, &id, 3, what).await,
        CreditOutcome::Spent { remaining: 0 }
    );
    assert_eq!(
        spend(store, &id, 1, what).await,
        CreditOutcome::Exhausted { refill_in: None },
        "{what}: at 0, every spend is refused"
    );
    assert_eq!(
        spend(store, &id, u32::MAX, what).await,
        CreditOutcome::Exhausted { refill_in: None }
    );
    assert_eq!(
        spend(store, &id, 0, what).await,
        CreditOutcome::Spent { remaining: 0 },
        "{what}: a cost of 0 spends nothing and succeeds"
    );
    assert_eq!(credits_of(store, &id, what).await, Some(Credits::new(0)));
    let page = ok(store.list(&owner, Page::first(10)).await, what);
    assert_eq!(
        page.records[0].credits,
        Some(Credits::new(0)),
        "{what}: list shows the count"
    );
    assert!(
        found(store, &issued.key, what).await.credits.is_some(),
        "{what}: the lookup shows the key has a budget"
    );

    let free = unique("spend-free");
    ok(
        store.issue(KeyRecord::new(&free, &owner)).await,
        "issue without credits",
    );
    assert_eq!(
        spend(store, &free, 1, "a key without credits").await,
        CreditOutcome::NoBudget
    );
    assert_eq!(
        credits_of(store, &free, "a key without credits").await,
        None
    );
    let unknown = unique("spend-unknown");
    assert_eq!(
        spend(store, &unknown, 1, "an unknown id").await,
        CreditOutcome::NoBudget
    );
    assert_eq!(credits_of(store, &unknown, "an unknown id").await, None);
    assert_eq!(
        spend(store, "with:colon{and}%25", 1, "an odd unknown id").await,
        CreditOutcome::NoBudget
    );
    clean(store, &[&id, &free]).await;
    assert_eq!(
        spend(store, &id, 1, "a deleted key").await,
        CreditOutcome::NoBudget,
        "a deleted key's credits are gone with it"
    );
}

/// An update that does not set the credits keeps the live count; one that sets them sets the
/// count (even to what the record showed) and one that removes them removes the budget.
pub async fn updates_leave_the_count_alone_and_setting_credits_sets_it<S>(store: &S)
where
    S: KeyManager + KeyStore + CreditStore,
{
    let owner = unique("owner");
    let id = unique("credits-update");
    let issued = ok(
        store
            .issue(KeyRecord::new(&id, &owner).with_credits(Credits::new(10)))
            .await,
        "issue with 10 credits",
    );
    let what = "updates and the count";
    assert_eq!(
        spend(store, &id, 4, what).await,
        CreditOutcome::Spent { remaining: 6 }
    );
    let changed = ok(
        store
            .update(
                &id,
                KeyUpdate::new()
                    .scopes(["x"])
                    .tier(Some("t"))
                    .quota(Some(Quota::per_second(3)))
                    .metadata(BTreeMap::from([("k".to_owned(), "v".to_owned())])),
            )
            .await,
        "an update of everything but the credits",
    );
    assert_eq!(
        changed.credits,
        Some(Credits::new(6)),
        "{what}: the updated record shows the live count"
    );
    assert_eq!(
        spend(store, &id, 1, what).await,
        CreditOutcome::Spent { remaining: 5 }
    );
    ok(
        store
            .update(&id, KeyUpdate::new().status(KeyStatus::Disabled))
            .await,
        what,
    );
    ok(
        store
            .update(&id, KeyUpdate::new().status(KeyStatus::Active))
            .await,
        what,
    );
    let rotated = ok(store.rotate(&id, LONG_GRACE).await, "rotate");
    assert_eq!(
        rotated.record.credits,
        Some(Credits::new(5)),
        "{what}: a rotation keeps the count"
    );
    assert_eq!(
        spend(store, &id, 1, what).await,
        CreditOutcome::Spent { remaining: 4 }
    );

    let set = ok(
        store
            .update(&id, KeyUpdate::new().credits(Some(Credits::new(4))))
            .await,
        "setting the credits to what remains",
    );
    assert_eq!(set.credits, Some(Credits::new(4)));
    let set = ok(
        store
            .update(&id, KeyUpdate::new().credits(Some(Credits::new(2))))
            .await,
        "setting the credits",
    );
    assert_eq!(set.credits, Some(Credits::new(2)));
    assert_eq!(credits_of(store, &id, what).await, Some(Credits::new(2)));
    assert_eq!(
        spend(store, &id, 2, what).await,
        CreditOutcome::Spent { remaining: 0 }
    );
    let set = ok(
        store
            .update(&id, KeyUpdate::new().credits(Some(Credits::new(3))))
            .await,
        "setting the credits of an exhausted key",
    );
    assert_eq!(set.credits, Some(Credits::new(3)));
    assert_eq!(
        spend(store, &id, 3, what).await,
        CreditOutcome::Spent { remaining: 0 }
    );

    let removed = ok(
        store.update(&id, KeyUpdate::new().credits(None)).await,
        "removing the credits",
    );
    assert_eq!(removed.credits, None);
    assert_eq!(spend(store, &id, 1, what).await, CreditOutcome::NoBudget);
    assert_eq!(credits_of(store, &id, what).await, None);
    for key in [&issued.key, &rotated.key] {
        assert_eq!(
            found(store, key, what).await.credits,
            None,
            "{what}: lookup"
        );
    }
    let again = ok(
        store
            .update(&id, KeyUpdate::new().credits(Some(Credits::new(1))))
            .await,
        "giving the key credits again",
    );
    assert_eq!(again.credits, Some(Credits::new(1)));
    assert_eq!(
        spend(store, &id, 1, what).await,
        CreditOutcome::Spent { remaining: 0 }
    );
    clean(store, &[&id]).await;
}

/// Many tasks spending on `a` and `b` (two store objects on the same backend, or one store
/// twice) admit exactly as many credits as the key had, never more; the count ends at exactly
/// 0, as both see.
pub async fn concurrent_spends_admit_exactly_the_credits<A, B>(a: &A, b: &B)
where
    A: KeyManager + CreditStore + Clone,
    B: KeyManager + CreditStore + Clone,
{
    const CREDITS: u64 = 120;
    const TASKS: usize = 12;
    let owner = unique("owner");
    let id = unique("credits-race");
    ok(
        a.issue(KeyRecord::new(&id, &owner).with_credits(Credits::new(CREDITS)))
            .await,
        "issue of the raced key",
    );
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..TASKS {
        // Costs of 1, 2 and 3: the tasks of cost 1 drain what the others cannot spend.
        let cost = u32::try_from(i % 3 + 1).expect("a small cost");
        let id = id.clone();
        let (a, b) = (a.clone(), b.clone());
        tasks.spawn(async move {
            let mut spent = 0u64;
            let mut last = None;
            for round in 0..=CREDITS {
                let outcome = if (i + usize::try_from(round).unwrap_or(0)) % 2 == 0 {
                    a.spend(&id, cost).await
                } else {
                    b.spend(&id, cost).await
                };
                match outcome {
                    Ok(CreditOutcome::Spent { remaining }) => {
                        assert!(remaining < CREDITS, "a spend left {remaining} credits");
                        spent += u64::from(cost);
                        last = Some(remaining);
                    }
                    Ok(CreditOutcome::Exhausted { refill_in: None }) => return (spent, last),
                    Ok(other) => panic!("a racing spend: unexpected {other:?}"),
                    Err(e) => panic!("a racing spend failed: {e:?}"),
                }
            }
            panic!("a task spent more rounds than there are credits");
        });
    }
    let mut admitted = 0u64;
    let mut zero_seen = false;
    while let Some(joined) = tasks.join_next().await {
        let (spent, last) = joined.expect("a spending task panicked");
        admitted += spent;
        zero_seen |= last == Some(0);
    }
    assert_eq!(
        admitted, CREDITS,
        "concurrent spends on two instances must admit exactly the credits ({CREDITS}), \
         admitted {admitted}"
    );
    assert!(zero_seen, "one spend must have left exactly 0");
    for (name, credits) in [
        ("a", answered(a.credits(&id).await, "a's count")),
        ("b", answered(b.credits(&id).await, "b's count")),
    ] {
        assert_eq!(credits, Some(Credits::new(0)), "{name} sees exactly 0 left");
    }
    assert_eq!(
        ok(b.get(&id).await, "get through b")
            .expect("the raced record")
            .credits,
        Some(Credits::new(0))
    );
    clean(a, &[&id]).await;
}

/// The instances of [`concurrent_spends_admit_exactly_the_credits`], and what one of them sets
/// the other sees: the credits, the tier and the limits.
pub async fn credits_across_instances<A, B>(a: &A, b: &B)
where
    A: KeyManager + CreditStore + Clone,
    B: KeyManager + CreditStore + Clone,
{
    concurrent_spends_admit_exactly_the_credits(a, b).await;
    let owner = unique("owner");
    let id = unique("credits-shared");
    ok(
        a.issue(KeyRecord::new(&id, &owner).with_credits(Credits::new(2)))
            .await,
        "issue through a",
    );
    assert_eq!(
        spend(b, &id, 1, "b spends").await,
        CreditOutcome::Spent { remaining: 1 }
    );
    assert_eq!(
        spend(a, &id, 1, "a spends").await,
        CreditOutcome::Spent { remaining: 0 }
    );
    let limits = rich_limits();
    ok(
        b.update(
            &id,
            KeyUpdate::new()
                .credits(Some(Credits::new(5)))
                .tier(Some("gold"))
                .quota(Some(limits.clone())),
        )
        .await,
        "b sets the credits",
    );
    assert_eq!(
        spend(a, &id, 5, "a spends what b set").await,
        CreditOutcome::Spent { remaining: 0 }
    );
    let seen = ok(a.get(&id).await, "get through a").expect("the shared record");
    assert_eq!(seen.tier.as_deref(), Some("gold"));
    assert_eq!(seen.quota, Some(limits));
    assert_eq!(seen.credits, Some(Credits::new(0)));
    clean(a, &[&id]).await;
}

/// A spend of 1 at 0 credits, which must say when the next refill comes: that time, and when it
/// falls on this process's clock (between two bounds: the store computed it sometime during
/// the call).
async fn when_refilled<S: CreditStore>(
    store: &S,
    id: &str,
    what: &str,
) -> (Duration, (tokio::time::Instant, tokio::time::Instant)) {
    let before = tokio::time::Instant::now();
    let outcome = spend(store, id, 1, what).await;
    let after = tokio::time::Instant::now();
    match outcome {
        CreditOutcome::Exhausted {
            refill_in: Some(wait),
        } if !wait.is_zero() => (wait, (before + wait, after + wait)),
        other => panic!(
            "{what}: at 0 with a refill scheduled, a spend must be refused with the time to the \
             next refill; got {other:?}"
        ),
    }
}

/// With a refill of 3 every 2 s: at 0, a spend is refused with the time to the next refill
/// (when the refill covers the cost); after it, the count is 3 again (not 3 more); and the
/// schedule keeps its beat: a key left unused for several intervals is refilled on the
/// multiples of the interval from when its credits were set, never from when it was next used.
pub async fn credits_are_refilled_on_their_schedule<S>(store: &S)
where
    S: KeyManager + KeyStore + CreditStore,
{
    const EVERY: Duration = Duration::from_secs(2);
    let refill = Refill::new(3, EVERY);
    let owner = unique("owner");
    let id = unique("refill");
    ok(
        store
            .issue(KeyRecord::new(&id, &owner).with_credits(Credits::new(2).with_refill(refill)))
            .await,
        "issue with a refill",
    );
    let what = "refills";
    assert_eq!(
        spend(store, &id, 2, what).await,
        CreditOutcome::Spent { remaining: 0 }
    );
    let (first, beat) = when_refilled(store, &id, what).await;
    assert!(
        first <= EVERY,
        "{what}: the next refill is within the interval, not in {first:?}"
    );
    assert_eq!(
        spend(store, &id, 4, what).await,
        CreditOutcome::Exhausted { refill_in: None },
        "{what}: a refill that cannot cover the cost is no reason to wait"
    );
    assert_eq!(
        credits_of(store, &id, what).await,
        Some(Credits::new(0).with_refill(refill))
    );

    tokio::time::sleep_until(beat.1 + REFILL_SLACK).await;
    assert_eq!(
        credits_of(store, &id, what).await,
        Some(Credits::new(3).with_refill(refill)),
        "{what}: after the interval, the count is the refill's amount"
    );
    assert_eq!(
        spend(store, &id, 1, what).await,
        CreditOutcome::Spent { remaining: 2 },
        "{what}: the refill sets the count to its amount"
    );

    // Unused for one and a half intervals more: a refill came due (setting the count to 3,
    // not adding to it), on the beat.
    tokio::time::sleep_until(beat.1 + EVERY + EVERY / 2).await;
    assert_eq!(
        credits_of(store, &id, what).await,
        Some(Credits::new(3).with_refill(refill)),
        "{what}: unused credits do not pile up"
    );
    assert_eq!(
        spend(store, &id, 3, what).await,
        CreditOutcome::Spent { remaining: 0 }
    );
    let (_, at) = when_refilled(store, &id, what).await;
    // The next refill is on the beat: a whole number of intervals after the first one, give or
    // take what the two measures allow.
    let earliest = at.0.saturating_duration_since(beat.1);
    let latest = at.1.saturating_duration_since(beat.0);
    let on_beat = (1..10u32).any(|k| {
        let multiple = EVERY * k;
        multiple + BEAT_SLACK >= earliest && multiple <= latest + BEAT_SLACK
    });
    assert!(
        on_beat,
        "{what}: refills keep the schedule's beat: the next refill comes {earliest:?} to \
         {latest:?} after the first, not a whole number of {EVERY:?} (a store that restarts the \
         schedule when it refills is half an interval off)"
    );
    clean(store, &[&id]).await;
}
