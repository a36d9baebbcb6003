//! Decisions per second of the Redis rate limiter, with concurrent callers, against a real
//! Redis — next to what `redis-benchmark` gets for an `EVALSHA` of the same script.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ \
//!     cargo run --release --no-default-features --features redis --example redis_throughput
//! ```
//!
//! Settings (environment): `REDIS_URL` (default `redis://127.0.0.1:6379/`), `CALLERS` (32),
//! `SECS` (5), `KEYS` (distinct callers' keys, 10000; 1 for one hot key). Each caller awaits
//! one decision at a time, like a request handler. The quota is 1,000,000/s per key, so (with
//! many keys) every decision is admitted and writes its key: the full cost of the script. It
//! prints the `redis-benchmark` command that runs the same script with the same arguments.

#[cfg(not(feature = "redis"))]
fn main() {
    eprintln!("this example needs the `redis` feature: --features redis");
}

#[cfg(feature = "redis")]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use keygate::Quota;
    use keygate::ratelimit::{RateLimiter, RedisLimiter};

    fn setting(name: &str, default: u64) -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let callers = setting("CALLERS", 32) as usize;
    let secs = setting("SECS", 5);
    let keys = setting("KEYS", 10_000).max(1);
    let prefix = "keygate:bench:";

    let limiter = RedisLimiter::connect(&url)
        .await?
        .prefix(prefix)
        .timeout(Duration::from_secs(1));
    let quota = Quota::per_second(1_000_000); // T = 1000 ns, tau = 1 s

    // Warm up (connection, script cache).
    for i in 0..100 {
        limiter
            .check(&format!("{:012}", i % keys), &quota, 1)
            .await?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let limiter = limiter.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                let (mut allowed, mut denied, mut failed) = (0u64, 0u64, 0u64);
                let mut n = c as u64;
                while !stop.load(Ordering::Relaxed) {
                    // A cheap spread of keys (an LCG), formatted as redis-benchmark's
                    // __rand_int__ (12 digits).
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let key = format!("{:012}", (n >> 33) % keys);
                    let t = Instant::now();
                    match limiter.check(&key, &quota, 1).await {
                        Ok(d) if d.allowed => allowed += 1,
                        Ok(_) => denied += 1,
                        Err(_) => failed += 1,
                    }
                    latencies.push(t.elapsed());
                }
                (allowed, denied, failed, latencies)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut allowed, mut denied, mut failed, mut latencies) = (0, 0, 0, Vec::new());
    for t in tasks {
        let (a, d, f, l) = t.await?;
        allowed += a;
        denied += d;
        failed += f;
        latencies.extend(l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let total = allowed + denied + failed;
    println!(
        "{callers} callers, {keys} keys, {secs} s: {total} decisions ({allowed} allowed, {denied} denied, {failed} failed)"
    );
    println!(
        "{:.0} decisions/s; latency p50 {:?}, p99 {:?}, max {:?}",
        total as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or_default()
    );

    let sha = redis::Script::new(RedisLimiter::SCRIPT)
        .get_hash()
        .to_owned();
    let rand = if keys > 1 {
        format!("-r {keys} ")
    } else {
        String::new()
    };
    let key = if keys > 1 {
        format!("{prefix}__rand_int__")
    } else {
        format!("{prefix}000000000000")
    };
    println!("the same script with redis-benchmark (the script is loaded already):");
    println!(
        "  redis-benchmark -n 100000 -c {callers} {rand}EVALSHA {sha} 1 {key} 1000 1000000000 1 1"
    );
    Ok(())
}
