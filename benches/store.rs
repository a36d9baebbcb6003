//! A `CachedStore` hit against the in-memory store's lookup, in the same process.
//!
//! `cargo bench -p keygate-benches --bench store`
//!
//! Every figure is one `KeyStore::lookup` of a digest computed before the clock starts (the
//! SHA-256 of the key is the same for every store, and measured by the `overhead` bench), and
//! the answer taken with `take_ready` (what `AuthLayer` does), or for a pending answer polled
//! once with a no-op waker. Stores hold 10,000 issued keys; the cache is warm and fresh (TTL one
//! hour, on the system clock).
//!
//! Groups, each over `one_key` (the same key every time) and `10k_keys` (round-robin over all
//! 10,000 keys, so the map does not sit in L1):
//! - `memory`: `MemoryStore::lookup`, the baseline;
//! - `cached_memory`: a hit of `CachedStore<MemoryStore>`;
//! - `cached_pending`: a hit of `CachedStore` over a backend whose lookups are pending (a
//!   database-backed store, without the database): the case the cache is for;
//! - `pending`: that pending backend on its own, answering in its first poll: the floor of any
//!   store that waits (one boxed future), without any I/O.
//!
//! The goal: `cached_memory` and `cached_pending` at most 1.5 × `memory`. What differs: a hit
//! reads the clock (its TTL), about 13 ns on the 2-core machine of the README's figures, and
//! its map compares digests as plain bytes where `MemoryStore`'s uses `KeyDigest`'s
//! constant-time comparison, which takes a good part of a lookup.
//!
//! On a shared machine the groups measured one after the other see different loads, so the
//! bench also prints the ratios of `paired`: the four cases timed in turn, in rounds of 2,000
//! lookups, 300 rounds each; the best round of each case (the least disturbed one) is compared.
//!
//! Before measuring, every case is checked once to take the path it is named after (answered at
//! once, and whether the backend was asked).

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use keygate::key::{KeyDigest, KeyRecord};
use keygate::store::{CachedStore, KeyStore, Lookup, MemoryStore};

/// Keys in every store.
const KEYS: usize = 10_000;

/// A group with short timings.
fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group
}

/// A backend that answers from a `MemoryStore` through a pending future, as a store that waits
/// for a database does, and counts its lookups.
#[derive(Clone)]
struct Pending {
    inner: MemoryStore,
    lookups: Arc<AtomicUsize>,
}

impl KeyStore for Pending {
    fn lookup(&self, digest: &KeyDigest) -> Lookup {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let answer = self
            .inner
            .lookup(digest)
            .take_ready()
            .expect("memory is ready");
        Lookup::pending(async move { answer })
    }
}

/// The answer of a lookup: taken at once if ready, else polled once.
fn answer(mut lookup: Lookup) -> Option<Arc<KeyRecord>> {
    if let Some(answer) = lookup.take_ready() {
        return answer.expect("the store answers");
    }
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut lookup).poll(&mut cx) {
        Poll::Ready(answer) => answer.expect("the store answers"),
        Poll::Pending => panic!("the backend answers in its first poll"),
    }
}

/// A warm cache's settings: nothing expires while measuring.
fn cache<S: KeyStore>(store: S) -> CachedStore<S> {
    CachedStore::builder(store)
        .ttl(Duration::from_secs(3600))
        .max_entries(100_000)
        .build()
}

struct Fixture {
    memory: MemoryStore,
    cached_memory: CachedStore<MemoryStore>,
    pending: Pending,
    cached_pending: CachedStore<Pending>,
    digests: Vec<KeyDigest>,
}

impl Fixture {
    fn new() -> Self {
        let memory = MemoryStore::new();
        let digests: Vec<KeyDigest> = (0..KEYS)
            .map(|i| {
                let record =
                    KeyRecord::new(format!("key_{i:05}"), "acme").with_scopes(["weather:read"]);
                memory.issue(record).expect("a fresh id").digest()
            })
            .collect();
        let pending = Pending {
            inner: memory.clone(),
            lookups: Arc::default(),
        };
        let fixture = Self {
            cached_memory: cache(memory.clone()),
            cached_pending: cache(pending.clone()),
            memory,
            pending,
            digests,
        };
        fixture.warm_and_check();
        fixture
    }

    /// The measured stores, the baseline first.
    fn cases(&self) -> [(&'static str, &dyn KeyStore); 4] {
        [
            ("memory", &self.memory),
            ("cached_memory", &self.cached_memory),
            ("cached_pending", &self.cached_pending),
            ("pending", &self.pending),
        ]
    }

    /// Fills the caches, and checks that every measured lookup is a ready hit.
    fn warm_and_check(&self) {
        // A miss over a pending backend waits for it with a timeout: on tokio's timer.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async {
            for d in &self.digests {
                assert!(self.cached_memory.lookup(d).await.unwrap().is_some());
                assert!(self.cached_pending.lookup(d).await.unwrap().is_some());
            }
        });
        assert_eq!(self.cached_memory.len(), KEYS);
        assert_eq!(self.cached_pending.len(), KEYS);
        let before = self.pending.lookups.load(Ordering::Relaxed);
        for d in &self.digests {
            for store in [
                &self.memory as &dyn KeyStore,
                &self.cached_memory,
                &self.cached_pending,
            ] {
                let mut lookup = store.lookup(d);
                let record = lookup.take_ready().expect("answered at once").unwrap();
                assert!(record.is_some());
            }
        }
        assert_eq!(
            self.pending.lookups.load(Ordering::Relaxed),
            before,
            "cache hits never reach the backend"
        );
        let mut direct = self.pending.lookup(&self.digests[0]);
        assert!(direct.take_ready().is_none(), "the backend is pending");
        assert!(answer(direct).is_some());
    }
}

fn bench_store(g: &mut BenchmarkGroup<'_, WallTime>, store: &dyn KeyStore, digests: &[KeyDigest]) {
    let one = digests[KEYS / 2];
    g.bench_function("one_key", |b| {
        b.iter(|| black_box(answer(store.lookup(black_box(&one)))))
    });
    let mut i = 0;
    g.bench_function("10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % digests.len();
            black_box(answer(store.lookup(black_box(&digests[i]))))
        })
    });
}

/// The cases timed in turn (see the module docs); prints the best round of each and its ratio
/// to `memory`.
fn paired(fx: &Fixture) {
    const ROUNDS: usize = 300;
    const BATCH: u32 = 2_000;
    let cases = fx.cases();
    for (name, keys) in [
        ("one_key", &fx.digests[KEYS / 2..=KEYS / 2]),
        ("10k_keys", &fx.digests[..]),
    ] {
        let mut best = [f64::MAX; 4];
        let mut i = 0;
        for _ in 0..ROUNDS {
            for (case, (_, store)) in cases.iter().enumerate() {
                let start = Instant::now();
                for _ in 0..BATCH {
                    i = (i + 1) % keys.len();
                    black_box(answer(store.lookup(black_box(&keys[i]))));
                }
                let ns = start.elapsed().as_nanos() as f64 / f64::from(BATCH);
                best[case] = best[case].min(ns);
            }
        }
        let line: Vec<String> = cases
            .iter()
            .zip(best)
            .map(|((case, _), ns)| format!("{case} {ns:.1} ns ({:.2}×)", ns / best[0]))
            .collect();
        println!("paired/{name}: {}", line.join(", "));
    }
}

fn stores(c: &mut Criterion) {
    let fx = Fixture::new();
    paired(&fx);
    for (name, store) in fx.cases() {
        let mut g = group(c, name);
        bench_store(&mut g, store, &fx.digests);
        g.finish();
    }
}

criterion_group!(benches, stores);
criterion_main!(benches);
