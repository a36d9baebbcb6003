//! Heap bytes per key of the in-memory limiter, against `governor`'s keyed limiter in the same
//! run, and what the limiter gives back once a spike of keys has gone idle.
//!
//! `cargo bench -p keygate-benches --bench limiter_memory`
//!
//! The binary installs a counting global allocator ([`keygate_benches::heap`]): every figure is
//! bytes asked of the allocator and not given back (without the allocator's own rounding and
//! bookkeeping), read before and after, in this one process.
//!
//! - **Per key.** `n` distinct keys (`key_` + 16 hex digits, 20 bytes, shaped like a key record
//!   id), each decided once with `Quota::per_minute(1)` (so every entry is live when measured),
//!   by keygate's `MemoryLimiter` and by governor's `RateLimiter::keyed` (a `DashMap` holding an
//!   owned copy of each key), for `n` of 100,000 to 2,000,000. The key is written into one
//!   buffer built before measuring, so only what each limiter keeps is counted. The goal:
//!   keygate at most 64 bytes a key at 1,000,000 keys. The figures depend on the number of
//!   shards (keygate's: 8 per core, rounded up to a power of two; governor's `DashMap`: 4 per
//!   core), printed with them.
//! - **Spike.** 1,000,000 keys on a `ManualClock`, which is then moved past their window, so
//!   that every entry is idle. Then traffic of new keys, one per millisecond of the clock, each
//!   live for a second (about 1,000 live at a time), with the heap after each 250,000; then, on
//!   a second limiter with the same spike, `sweep()`. Against it, governor with the same spike
//!   on its `FakeRelativeClock`: `retain_recent()` (which drops idle keys, once idle for one
//!   more window), then `shrink_to_fit()`.

use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::FakeRelativeClock;
use governor::{DefaultKeyedRateLimiter, Quota as GQuota, RateLimiter as GRateLimiter};
use keygate::Quota;
use keygate::clock::ManualClock;
use keygate::ratelimit::{MemoryLimiter, RateLimiter};
use keygate_benches::heap;

#[global_allocator]
static HEAP: heap::Counting = heap::Counting;

const SIZES: [usize; 4] = [100_000, 500_000, 1_000_000, 2_000_000];
const SPIKE: usize = 1_000_000;
const MIB: f64 = 1024.0 * 1024.0;

/// Writes the `i`-th key of a series into `buf`, without allocating once `buf` has grown.
fn key_into<'b>(buf: &'b mut String, series: &str, i: usize) -> &'b str {
    buf.clear();
    write!(buf, "{series}_{i:016x}").expect("writing to a String");
    buf
}

fn admitted(limiter: &MemoryLimiter, key: &str, quota: &Quota) {
    let decision = limiter
        .check(key, quota, 1)
        .take_ready()
        .expect("the memory limiter answers at once")
        .expect("below max_keys");
    assert!(decision.allowed, "{key} is new: admitted");
}

/// A limiter holding `n` live keys of `series`.
/// `limiter` (empty) once it holds `n` live keys of `series`.
fn filled(limiter: MemoryLimiter, n: usize, series: &str, buf: &mut String) -> MemoryLimiter {
    let quota = Quota::per_minute(1);
    for i in 0..n {
        admitted(&limiter, key_into(buf, series, i), &quota);
    }
    assert_eq!(limiter.len(), n);
    limiter
}

fn heap_now() -> isize {
    heap::in_use()
}

fn mib(bytes: isize) -> f64 {
    bytes as f64 / MIB
}

fn per_key() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "heap bytes per live key ({cores} cores: keygate {} shards, governor's DashMap {} shards)",
        (cores * 8).next_power_of_two().max(2),
        (cores * 4).next_power_of_two(),
    );
    println!(
        "{:>10}  {:>8}  {:>9}  {:>16}",
        "keys", "keygate", "governor", "keygate/governor"
    );
    let mut buf = String::with_capacity(64);
    let one = NonZeroU32::new(1).expect("1 is not 0");
    for n in SIZES {
        let (keygate, limiter) =
            heap::per_entry(n, || filled(MemoryLimiter::new(), n, "key", &mut buf));
        drop(limiter);
        let (governor, limiter) = heap::per_entry(n, || {
            let limiter: DefaultKeyedRateLimiter<String> =
                GRateLimiter::keyed(GQuota::per_minute(one));
            for i in 0..n {
                key_into(&mut buf, "key", i);
                assert!(limiter.check_key(&buf).is_ok());
            }
            assert_eq!(limiter.len(), n);
            limiter
        });
        drop(limiter);
        println!(
            "{n:>10}  {keygate:>8.1}  {governor:>9.1}  {:>16.2}",
            keygate / governor
        );
    }
}

fn spike() {
    let mut buf = String::with_capacity(64);
    let second = Quota::per_second(1);

    // New keys after the spike drop it a few entries at a time; the tables shrink as it goes.
    let base = heap_now();
    let clock = ManualClock::new();
    let empty = MemoryLimiter::builder().clock(clock.clone()).build();
    let limiter = filled(empty, SPIKE, "spike", &mut buf);
    let full = heap_now() - base;
    println!(
        "\nspike: {SPIKE} live keys: keygate {:.1} MiB ({:.1} bytes/key)",
        mib(full),
        full as f64 / SPIKE as f64
    );
    clock.advance(Duration::from_secs(61));
    println!("every key idle; then new keys, one per ms, each live for 1 s:");
    println!(
        "{:>12}  {:>9}  {:>9}  {:>8}",
        "new keys", "tracked", "heap MiB", "of spike"
    );
    let mut started = Instant::now();
    for i in 0..SPIKE {
        admitted(&limiter, key_into(&mut buf, "new", i), &second);
        clock.advance(Duration::from_millis(1));
        if (i + 1) % (SPIKE / 4) == 0 {
            let held = heap_now() - base;
            println!(
                "{:>12}  {:>9}  {:>9.2}  {:>7.1}%",
                i + 1,
                limiter.len(),
                mib(held),
                100.0 * held as f64 / full as f64
            );
        }
    }
    let traffic = started.elapsed();
    println!(
        "  ({:.0} ns per new key, its share of dropping and shrinking included)",
        traffic.as_nanos() as f64 / SPIKE as f64
    );
    drop(limiter);

    // The same spike, swept at once.
    let base = heap_now();
    let clock = ManualClock::new();
    let empty = MemoryLimiter::builder().clock(clock.clone()).build();
    let limiter = filled(empty, SPIKE, "spike", &mut buf);
    let full = heap_now() - base;
    clock.advance(Duration::from_secs(61));
    started = Instant::now();
    assert_eq!(limiter.sweep(), SPIKE);
    let took = started.elapsed();
    let after = heap_now() - base;
    println!(
        "keygate sweep(): {:.1} MiB -> {:.3} MiB in {took:?}",
        mib(full),
        mib(after)
    );
    drop(limiter);

    // governor with the same spike.
    let base = heap_now();
    let clock = FakeRelativeClock::default();
    let one = NonZeroU32::new(1).expect("1 is not 0");
    let limiter = GRateLimiter::dashmap_with_clock(GQuota::per_minute(one), clock.clone());
    for i in 0..SPIKE {
        key_into(&mut buf, "spike", i);
        assert!(limiter.check_key(&buf).is_ok());
    }
    let full = heap_now() - base;
    // governor drops a state one emission interval after it became the same as a fresh one.
    clock.advance(Duration::from_secs(121));
    limiter.retain_recent();
    assert!(limiter.is_empty());
    let retained = heap_now() - base;
    limiter.shrink_to_fit();
    let shrunk = heap_now() - base;
    println!(
        "governor: {:.1} MiB ({:.1} bytes/key); retain_recent(): {:.1} MiB; then \
         shrink_to_fit(): {:.3} MiB",
        mib(full),
        full as f64 / SPIKE as f64,
        mib(retained),
        mib(shrunk)
    );
}

fn main() {
    // Arguments (`cargo bench` passes `--bench`) are ignored: everything runs, in this order.
    per_key();
    spike();
}
