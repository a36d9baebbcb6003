//! The in-memory limiter per decision, against `governor`'s keyed limiter in the same run.
//!
//! `cargo bench -p keygate-benches --bench ratelimit`
//!
//! Groups, each with `keygate` and `governor` on equivalent quotas:
//! - `admitted/1_key` and `admitted/100k_keys`: 10⁹ per hour with a burst of 10⁹, of which each
//!   key spent 10⁸ at once before measuring: every decision is admitted and is a full
//!   read-modify-write of a live key's state;
//! - `denied/1_key` and `denied/100k_keys`: 1 per hour with a burst of 1, spent before
//!   measuring: every decision is a denial (a read, no write);
//! - `idle/100k_keys`: 10⁹ per second, nothing spent ahead, so a key is idle again a nanosecond
//!   after its request. keygate forgets idle keys (its sweep), so most of its decisions insert
//!   the key anew; governor keeps every key until told to shrink.
//!
//! The 100k-key groups go round-robin over pre-built key strings (`key_` + 16 hex digits), all
//! inserted before measuring.
//!
//! - `at_capacity/1m_keys`: a limiter holding its `max_keys` of 1,000,000 live keys (1 per
//!   hour, spent). `known_key` is a decision for one of them (the baseline); `new_key_full` is a
//!   decision for a key never seen, which must look for room and fail with `Full`;
//!   `new_key_full_worst` and `known_key_worst` report, per sample, the *slowest* single decision
//!   of each kind (each timed on its own), so the figures are worst cases, not means, and print
//!   the 99.9th percentile of large samples. The known key's worst is the noise floor of one
//!   timed call on the machine.
//!
//! - `list/1_key` and `list/100k_keys`: what a list of limits costs against a single limit, in
//!   the same run, on the system clock, every decision admitted: `single_rate` is a list of one
//!   rate (the single-rate path, the cost of `check`), `two_rates` a list of two rates,
//!   `rate_and_cap` a rate and a fixed-window daily cap (which also reads the wall clock), and
//!   `rate_and_owner_cap` a rate per caller and a daily cap per owner (two entries, locked
//!   together). Each key spends 10⁷ at once before measuring, so that its states stay live and
//!   every measured decision is admitted and updates them. The goal: a list of two at most 1.5×
//!   a single limit.
//!
//! Diagnostics:
//! - `keygate_manual_clock`: keygate on a `ManualClock` (one atomic load) instead of the system
//!   clock, to show what the clock read costs;
//! - `keygate_quanta_clock`: keygate reading governor's TSC-based quanta clock through keygate's
//!   `Clock` trait, to show keygate with governor's clock;
//! - `governor_frozen_clock`: governor on its `FakeRelativeClock`, to compare the two limiters
//!   without their clocks;
//! - the `parts` group times pieces of a decision on their own: keygate's clock read,
//!   `Instant::now`, governor's quanta clock, and `Quota::emission_interval` (a 128-bit division
//!   keygate does per decision).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use governor::clock::FakeRelativeClock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{DefaultKeyedRateLimiter, Quota as GQuota, RateLimiter as GRateLimiter};
use keygate::clock::ManualClock;
use keygate::ratelimit::{MemoryLimiter, RateLimiter, Subject};
use keygate::{Limit, Limits, Quota};

const MANY: usize = 100_000;
const HUGE: u32 = 1_000_000_000;

fn keys(n: usize) -> Vec<String> {
    // Shaped like key record ids.
    (0..n).map(|i| format!("key_{i:016x}")).collect()
}

fn keygate_allowed(l: &MemoryLimiter, key: &str, q: &Quota) -> bool {
    l.check(key, q, 1)
        .take_ready()
        .expect("ready")
        .expect("no error")
        .allowed
}

/// governor's clock (quanta, TSC-based) as a keygate `Clock`.
struct Tsc {
    clock: governor::clock::DefaultClock,
    origin: governor::clock::QuantaInstant,
}

impl Tsc {
    fn new() -> Self {
        use governor::clock::Clock as _;
        let clock = governor::clock::DefaultClock::default();
        let origin = clock.now();
        Self { clock, origin }
    }
}

impl keygate::clock::Clock for Tsc {
    fn now(&self) -> std::time::SystemTime {
        std::time::SystemTime::now()
    }

    fn monotonic_nanos(&self) -> u64 {
        use governor::clock::{Clock as _, Reference as _};
        self.clock.now().duration_since(self.origin).as_u64()
    }
}

struct Setup {
    name: &'static str,
    sizes: &'static [usize],
    keygate: Quota,
    governor: GQuota,
    /// Units each key spends at once before measuring.
    spend: u32,
    /// Whether every measured decision must be admitted (else denied).
    admitted: bool,
}

fn setups() -> [Setup; 3] {
    let huge = NonZeroU32::new(HUGE).unwrap();
    let one = NonZeroU32::new(1).unwrap();
    [
        Setup {
            name: "admitted",
            sizes: &[1, MANY],
            keygate: Quota::per_hour(HUGE),
            governor: GQuota::per_hour(huge),
            spend: HUGE / 10,
            admitted: true,
        },
        Setup {
            name: "denied",
            sizes: &[1, MANY],
            keygate: Quota::per_hour(1),
            governor: GQuota::per_hour(one),
            spend: 1,
            admitted: false,
        },
        Setup {
            name: "idle",
            sizes: &[MANY],
            keygate: Quota::per_second(HUGE),
            governor: GQuota::per_second(huge),
            spend: 1,
            admitted: true,
        },
    ]
}

fn bench(c: &mut Criterion) {
    let all_keys = keys(MANY);
    for setup in setups() {
        for &n in setup.sizes {
            let keys = &all_keys[..n];
            let label = if n == 1 { "1_key" } else { "100k_keys" };
            let mut group = c.benchmark_group(format!("{}/{label}", setup.name));
            group.throughput(Throughput::Elements(1));
            group.warm_up_time(Duration::from_secs(1));
            group.measurement_time(Duration::from_secs(3));

            let q = setup.keygate;
            let mut limiters = vec![("keygate", MemoryLimiter::new())];
            if setup.name != "idle" {
                // A clock that never moves would keep "idle" keys alive: not the same test.
                let manual = MemoryLimiter::builder().clock(ManualClock::new()).build();
                limiters.push(("keygate_manual_clock", manual));
            }
            limiters.push((
                "keygate_quanta_clock",
                MemoryLimiter::builder().clock(Tsc::new()).build(),
            ));
            for (name, limiter) in limiters {
                // Insert every key, spending `spend` units at once.
                for k in keys {
                    let d = limiter.check(k, &q, setup.spend).take_ready();
                    assert!(d.unwrap().unwrap().allowed);
                }
                if setup.name != "idle" {
                    assert_eq!(limiter.len(), keys.len());
                }
                assert_eq!(keygate_allowed(&limiter, &keys[0], &q), setup.admitted);
                let mut i = 0;
                group.bench_function(name, |b| {
                    b.iter(|| {
                        let key = &keys[i];
                        i += 1;
                        if i == keys.len() {
                            i = 0;
                        }
                        black_box(limiter.check(black_box(key), &q, 1).take_ready())
                    })
                });
                // Check the decisions measured were the intended ones.
                assert_eq!(keygate_allowed(&limiter, &keys[i], &q), setup.admitted);
                if setup.name == "idle" {
                    println!(
                        "{name}: {} of {n} keys tracked after measuring",
                        limiter.len()
                    );
                }
            }

            let governor: DefaultKeyedRateLimiter<String> = GRateLimiter::keyed(setup.governor);
            bench_governor(&mut group, "governor", &governor, keys, &setup);
            if setup.name != "idle" {
                let frozen =
                    GRateLimiter::dashmap_with_clock(setup.governor, FakeRelativeClock::default());
                bench_governor(&mut group, "governor_frozen_clock", &frozen, keys, &setup);
            }
            group.finish();
        }
    }
}

fn bench_governor<C: governor::clock::Clock>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    governor: &GRateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<C::Instant>>,
    keys: &[String],
    setup: &Setup,
) {
    let spend = NonZeroU32::new(setup.spend).unwrap();
    for k in keys {
        assert!(matches!(governor.check_key_n(k, spend), Ok(Ok(_))));
    }
    assert_eq!(governor.len(), keys.len());
    assert_eq!(governor.check_key(&keys[0]).is_ok(), setup.admitted);
    let mut i = 0;
    group.bench_function(name, |b| {
        b.iter(|| {
            let key = &keys[i];
            i += 1;
            if i == keys.len() {
                i = 0;
            }
            black_box(governor.check_key(black_box(key)).is_ok())
        })
    });
    assert_eq!(governor.check_key(&keys[i]).is_ok(), setup.admitted);
}

fn parts(c: &mut Criterion) {
    use governor::clock::{Clock as _, DefaultClock};
    use keygate::clock::{Clock as _, SystemClock};

    let mut group = c.benchmark_group("parts");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));
    let system = SystemClock;
    group.bench_function("keygate_system_clock", |b| {
        b.iter(|| black_box(&system).monotonic_nanos())
    });
    let shared: std::sync::Arc<dyn keygate::clock::Clock> = std::sync::Arc::new(SystemClock);
    group.bench_function("keygate_system_clock_dyn", |b| {
        b.iter(|| black_box(&shared).monotonic_nanos())
    });
    group.bench_function("instant_now", |b| b.iter(std::time::Instant::now));
    let start = std::time::Instant::now();
    group.bench_function("instant_elapsed_u64", |b| {
        b.iter(|| {
            let d = black_box(start).elapsed();
            d.as_secs() * 1_000_000_000 + u64::from(d.subsec_nanos())
        })
    });
    let tsc: std::sync::Arc<dyn keygate::clock::Clock> = std::sync::Arc::new(Tsc::new());
    group.bench_function("quanta_as_keygate_clock_dyn", |b| {
        b.iter(|| black_box(&tsc).monotonic_nanos())
    });
    let quanta = DefaultClock::default();
    group.bench_function("governor_quanta_clock", |b| {
        b.iter(|| black_box(&quanta).now())
    });
    let q = Quota::per_hour(HUGE);
    group.bench_function("quota_emission_interval", |b| {
        b.iter(|| black_box(&q).emission_interval())
    });
    group.finish();
}

const CAPACITY: usize = 1_000_000;

/// Writes the `i`-th key of a series into `buf`, without allocating once `buf` has grown.
fn key_into<'b>(buf: &'b mut String, series: &str, i: u64) -> &'b str {
    use std::fmt::Write as _;
    buf.clear();
    write!(buf, "{series}_{i:016x}").expect("writing to a String");
    buf
}

/// Runs `f` `iters` times, timing each call; prints percentiles and the maximum, and
/// returns the maximum as the time of every call (criterion divides by `iters`), so that the
/// figure criterion reports is the slowest call of each sample.
fn worst_of(iters: u64, name: &str, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..iters)
        .map(|_| {
            let start = std::time::Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort_unstable();
    let worst = times.last().copied().unwrap_or_default();
    if times.len() >= 10_000 {
        let at = |per_mille: usize| times[times.len() * per_mille / 1000];
        println!(
            "{name}: {} calls, p50 {:?}, p99 {:?}, p99.9 {:?}, max {worst:?}",
            times.len(),
            at(500),
            at(990),
            at(999)
        );
    }
    worst * u32::try_from(iters).unwrap_or(u32::MAX)
}

fn at_capacity(c: &mut Criterion) {
    let mut group = c.benchmark_group("at_capacity/1m_keys");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let q = Quota::per_hour(1);
    let mut buf = String::new();

    // Full of live keys: every new key is turned away.
    let full = MemoryLimiter::builder().max_keys(CAPACITY).build();
    for i in 0..CAPACITY as u64 {
        assert!(keygate_allowed(&full, key_into(&mut buf, "live", i), &q));
    }
    assert_eq!(full.len(), CAPACITY);
    let known = key_into(&mut buf, "live", 7).to_owned();
    group.bench_function("known_key", |b| {
        b.iter(|| black_box(full.check(black_box(&known), &q, 1).take_ready()))
    });
    let mut n = 0u64;
    group.bench_function("new_key_full", |b| {
        b.iter(|| {
            n += 1;
            let key = key_into(&mut buf, "new", n);
            black_box(full.check(black_box(key), &q, 1).take_ready())
        })
    });
    // The slowest single decisions, each timed on its own. The same is measured for the known
    // key, whose work is a few dozen nanoseconds: what its slowest decision takes is what the
    // machine (an interrupt, a preemption) adds to any one timed decision.
    group.bench_function("known_key_worst", |b| {
        b.iter_custom(|iters| {
            worst_of(iters, "known_key", || {
                black_box(full.check(black_box(&known), &q, 1).take_ready());
            })
        })
    });
    group.bench_function("new_key_full_worst", |b| {
        b.iter_custom(|iters| {
            worst_of(iters, "new_key_full", || {
                n += 1;
                let key = key_into(&mut buf, "new", n);
                black_box(full.check(black_box(key), &q, 1).take_ready());
            })
        })
    });
    assert!(matches!(
        full.check("never seen", &q, 1).take_ready(),
        Some(Err(keygate::ratelimit::RateLimitError::Full))
    ));
    assert_eq!(full.len(), CAPACITY);
    group.finish();
}

/// What each key of the `list` groups spends before measuring.
const SPEND: u32 = HUGE / 100;

fn lists(c: &mut Criterion) {
    let all_keys = keys(MANY);
    let rate = Limit::new(Quota::per_hour(HUGE));
    let cases: [(&str, Limits, bool); 4] = [
        ("single_rate", rate.clone().into(), false),
        (
            "two_rates",
            Limits::new([rate.clone(), Limit::new(Quota::per_day(HUGE))]).unwrap(),
            false,
        ),
        (
            "rate_and_cap",
            Limits::new([rate.clone(), Limit::new(Quota::per_day(HUGE).fixed())]).unwrap(),
            false,
        ),
        (
            "rate_and_owner_cap",
            Limits::new([rate, Limit::new(Quota::per_day(HUGE).fixed()).by_owner()]).unwrap(),
            true,
        ),
    ];
    // An owner per 10 keys, shaped like an account id.
    let owners: Vec<String> = (0..MANY / 10).map(|i| format!("acct_{i:08x}")).collect();
    for n in [1, MANY] {
        let keys = &all_keys[..n];
        let label = if n == 1 { "1_key" } else { "100k_keys" };
        let mut group = c.benchmark_group(format!("list/{label}"));
        group.throughput(Throughput::Elements(1));
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(3));
        for (name, limits, owned) in &cases {
            let limiter = MemoryLimiter::new();
            let admitted = |i: usize, cost: u32| {
                let subject = subject(i, keys, &owners, *owned);
                let mut verdict = limiter.check_all(subject, limits, cost);
                verdict
                    .take_ready()
                    .expect("ready")
                    .expect("no error")
                    .allowed()
            };
            // Each key spends 10^7 at once (ten hours of the rate): its states stay live while
            // measuring, so every decision is admitted and updates them.
            for i in 0..n {
                assert!(admitted(i, SPEND));
            }
            let mut i = 0;
            group.bench_function(*name, |b| {
                b.iter(|| {
                    let subject = subject(i, keys, &owners, *owned);
                    i += 1;
                    if i == n {
                        i = 0;
                    }
                    black_box(
                        limiter
                            .check_all(black_box(subject), limits, 1)
                            .take_ready(),
                    )
                })
            });
            // The decisions measured were admitted ones.
            assert!(admitted(i, 1));
        }
        group.finish();
    }
}

/// The `i`-th caller, with its owner (one per 10 callers) when `owned`.
fn subject<'a>(i: usize, keys: &'a [String], owners: &'a [String], owned: bool) -> Subject<'a> {
    let owner = owned.then(|| owners[i / 10].as_str());
    Subject::with_owner(&keys[i], owner)
}

criterion_group!(benches, bench, parts, at_capacity, lists);
criterion_main!(benches);
