//! The cost of choosing a token's issuer: a token of the second of two issuers, verified by
//! `JwtIssuers`, against the same token verified by a lone `JwtVerifier` of that issuer.
//!
//! `cargo bench -p keygate-benches --bench issuers`
//!
//! Both verify with the same key and rules; the token is built before measuring. Per algorithm
//! (`hs256`, where the signature is cheapest and the routing shows most, and `es256`):
//! - `cached/one_issuer` and `cached/second_of_two`: the verdict is in the cache (the usual
//!   case: a client sends its token many times);
//! - `first_sight/one_issuer` and `first_sight/second_of_two`: the cache is off, so every call
//!   decodes, routes and checks the signature;
//! - `first_sight/second_of_two_own_claims`: as above, but the two issuers read different claim
//!   names, so the issuer is found by a pass of its own over the payload before the verifier
//!   parses it.
//!
//! The goal: `second_of_two` ≤ 1.05 × `one_issuer`, cached and first sight.
//!
//! Criterion runs one case after the other, and on a small shared machine two runs of one case
//! differ by more than 5%. So the bench first prints the ratios of `paired`: the cases of one
//! algorithm and path timed in turn, in rounds (2,000 calls a round when cached, 200 for HS256
//! and 20 for ES256 on first sight; 200 rounds), the best round of each case (the least
//! disturbed one) compared with the best of `one_issuer`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keygate::jwt::{JwtIssuers, JwtKey, JwtVerifier};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/");

#[derive(serde::Serialize)]
struct TokenClaims {
    iss: &'static str,
    sub: &'static str,
    aud: &'static str,
    exp: u64,
    scope: &'static str,
}

fn issuers(c: &mut Criterion) {
    let read = |name: &str| std::fs::read(format!("{FIXTURES}{name}")).expect("a fixture key");
    let secret = b"a benchmark secret of 32 bytes!!";
    let other = b"the other issuer's secret, 32 b!";
    let cases = [
        (
            "hs256",
            Algorithm::HS256,
            EncodingKey::from_secret(secret),
            JwtKey::hmac(secret),
        ),
        (
            "es256",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&read("test_only_ec_p256_private.pem")).unwrap(),
            JwtKey::ec_pem(&read("test_only_ec_p256_public.pem")).unwrap(),
        ),
    ];
    let claims = TokenClaims {
        iss: "https://second.example.com",
        sub: "user-42",
        aud: "weather",
        exp: 4_000_000_000,
        scope: "weather:read weather:write",
    };
    for (name, alg, encoding, key) in cases {
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, &encoding).unwrap();
        let second = || {
            JwtVerifier::with_keys([key.clone()])
                .issuer([claims.iss])
                .audience([claims.aud])
        };
        let first = || {
            JwtVerifier::with_keys([JwtKey::hmac(other)])
                .issuer(["https://first.example.com"])
                .audience([claims.aud])
        };
        let one = second();
        let two = JwtIssuers::new([first(), second()]).unwrap();
        let one_uncached = second().cache(0);
        let two_uncached = JwtIssuers::new([first(), second()]).unwrap().cache(0);
        let two_own_claims = JwtIssuers::new([first().subject_claim("uid"), second()])
            .unwrap()
            .cache(0);
        for verified in [
            one.verify(&token),
            two.verify(&token),
            one_uncached.verify(&token),
            two_uncached.verify(&token),
            two_own_claims.verify(&token),
        ] {
            assert_eq!(verified.expect("the token verifies").id(), "user-42");
        }
        assert_eq!((one.cached(), two.cached()), (1, 1));

        let first_sight_batch = if alg == Algorithm::HS256 { 200 } else { 20 };
        paired(
            &format!("{name}/cached"),
            2_000,
            &[
                ("one_issuer", &|t| one.verify(t).is_ok()),
                ("second_of_two", &|t| two.verify(t).is_ok()),
            ],
            &token,
        );
        paired(
            &format!("{name}/first_sight"),
            first_sight_batch,
            &[
                ("one_issuer", &|t| one_uncached.verify(t).is_ok()),
                ("second_of_two", &|t| two_uncached.verify(t).is_ok()),
                ("second_of_two_own_claims", &|t| {
                    two_own_claims.verify(t).is_ok()
                }),
            ],
            &token,
        );

        let mut g = c.benchmark_group(format!("issuers/{name}"));
        g.warm_up_time(Duration::from_secs(1));
        g.measurement_time(Duration::from_secs(3));
        g.bench_function("cached/one_issuer", |b| {
            b.iter(|| black_box(one.verify(black_box(&token))))
        });
        g.bench_function("cached/second_of_two", |b| {
            b.iter(|| black_box(two.verify(black_box(&token))))
        });
        g.bench_function("first_sight/one_issuer", |b| {
            b.iter(|| black_box(one_uncached.verify(black_box(&token))))
        });
        g.bench_function("first_sight/second_of_two", |b| {
            b.iter(|| black_box(two_uncached.verify(black_box(&token))))
        });
        g.bench_function("first_sight/second_of_two_own_claims", |b| {
            b.iter(|| black_box(two_own_claims.verify(black_box(&token))))
        });
        g.finish();
    }
}

/// A check of a token, as timed by [`paired`].
type Check<'a> = &'a dyn Fn(&str) -> bool;

/// Times `cases` in turn, `batch` calls each per round, and prints the best round of each and
/// its ratio to the first case's.
fn paired(name: &str, batch: u32, cases: &[(&str, Check<'_>)], token: &str) {
    const ROUNDS: usize = 200;
    let mut best = vec![f64::MAX; cases.len()];
    for _ in 0..ROUNDS {
        for (case, (_, check)) in cases.iter().enumerate() {
            let start = Instant::now();
            for _ in 0..batch {
                assert!(black_box(check(black_box(token))));
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(batch);
            best[case] = best[case].min(ns);
        }
    }
    let line: Vec<String> = cases
        .iter()
        .zip(&best)
        .map(|((case, _), ns)| format!("{case} {ns:.0} ns ({:.3}×)", ns / best[0]))
        .collect();
    println!("paired/issuers/{name}: {}", line.join(", "));
}

criterion_group!(benches, issuers);
criterion_main!(benches);
