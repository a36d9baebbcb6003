//! Heap bytes per key of a `MemoryStore`, against the floor of any in-memory API-key store in the
//! same run.
//!
//! `cargo bench -p keygate-benches --bench store_memory`
//!
//! The floor is a `DashMap<KeyDigest, Arc<KeyRecord>>` holding the same records: the digest and
//! the record are what any in-memory store of API keys must hold. The store holds more: the
//! index by id (for `get`, `update`, `rotate`, `revoke`, credits) and the index by owner (for
//! paging `list`), and a rotated key's retire time.
//!
//! Both hold [`KEYS`] keys, each issued for a record
//! `KeyRecord::new(format!("key_{i:06}"), owner).with_scopes(["weather:read"])`, the owners
//! spread over [`OWNERS`] owners (`owner_0000` …) in turn. The rows:
//! - `issued keys`: those keys;
//! - `issued, 1000 of them rotated`: the same store after a rotation of [`ROTATED`] of its
//!   records, each with a day's grace, so that two keys work for each of them meanwhile, the
//!   old one with a record of its own (its expiry cut to the end of the grace); its floor holds
//!   one more digest and record for each;
//! - `issued keys with credits`: the records with a budget of credits each
//!   (`.with_credits(Credits::new(1_000))`), which the store counts next to the record.
//!
//! Bytes are counted by a global allocator (`keygate_benches::heap`): what the maps and records
//! asked the allocator for, without its rounding and bookkeeping. The figures are exact and
//! repeatable (no timing), but they step with the number of keys, since hash tables grow by
//! doubling, and they depend on the number of cores (a `DashMap` has four shards per core,
//! rounded up to a power of two), the same for the store and the floor.
//!
//! The goal: a store at most 2 × its floor.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use keygate::key::{Credits, KeyDigest, KeyFormat, KeyRecord};
use keygate::store::MemoryStore;
use keygate_benches::heap::{self, Counting};

#[global_allocator]
static HEAP: Counting = Counting;

/// Keys in every store.
const KEYS: usize = 100_000;
/// Owners the keys are spread over.
const OWNERS: usize = 1_000;
/// Keys rotated in the second row.
const ROTATED: usize = 1_000;

/// The record of the `i`-th key.
fn record(i: usize) -> KeyRecord {
    KeyRecord::new(format!("key_{i:06}"), format!("owner_{:04}", i % OWNERS))
        .with_scopes(["weather:read"])
}

/// The same record with a budget of credits.
fn record_with_credits(i: usize) -> KeyRecord {
    record(i).with_credits(Credits::new(1_000))
}

/// A store holding `KEYS` issued keys, of the records `make` makes.
fn store(make: fn(usize) -> KeyRecord) -> MemoryStore {
    let store = MemoryStore::new();
    for i in 0..KEYS {
        store.issue(make(i)).expect("a fresh id");
    }
    assert_eq!(store.len(), KEYS);
    store
}

/// The floor of `keys` keys: each under a digest of its own, the record `make` makes of the
/// key's number modulo `KEYS` (the records of a store's keys, a rotated record's twice).
fn floor(keys: usize, make: fn(usize) -> KeyRecord) -> DashMap<KeyDigest, Arc<KeyRecord>> {
    let format = KeyFormat::new("kg_").expect("a valid prefix");
    let map = DashMap::new();
    for i in 0..keys {
        map.insert(format.generate().digest(), Arc::new(make(i % KEYS)));
    }
    assert_eq!(map.len(), keys);
    map
}

/// Prints a row: bytes per key of the store and of its floor, and their ratio.
fn row(what: &str, store: f64, floor: f64) {
    println!(
        "{what:<34} {store:>9.1} {floor:>9.1} {:>7.2}×",
        store / floor
    );
}

fn main() {
    println!(
        "heap bytes per key, {KEYS} keys of {OWNERS} owners\n{:<34} {:>9} {:>9} {:>8}",
        "", "store", "floor", "ratio"
    );

    let (floor_bytes, floor_map) = heap::per_entry(KEYS, || floor(KEYS, record));
    drop(floor_map);
    let (store_bytes, store_map) = heap::per_entry(KEYS, || store(record));
    row("issued keys", store_bytes, floor_bytes);

    // A day's grace: the rotated-out keys keep working, each with a record of its own (its
    // expiry cut to the end of the grace).
    let (rotated_bytes, ()) = heap::per_entry(KEYS, || {
        for i in 0..ROTATED {
            store_map
                .rotate(&format!("key_{i:06}"), Duration::from_secs(86_400))
                .expect("an issued id");
        }
    });
    drop(store_map);
    let (floor_bytes, floor_map) = heap::per_entry(KEYS, || floor(KEYS + ROTATED, record));
    drop(floor_map);
    row(
        &format!("issued, {ROTATED} of them rotated"),
        store_bytes + rotated_bytes,
        floor_bytes,
    );

    let (floor_bytes, floor_map) = heap::per_entry(KEYS, || floor(KEYS, record_with_credits));
    drop(floor_map);
    let (store_bytes, store_map) = heap::per_entry(KEYS, || store(record_with_credits));
    drop(store_map);
    row("issued keys with credits", store_bytes, floor_bytes);
}
