//! Benchmarks of keygate, kept in a package of their own so that building the library's main
//! example does not build criterion, governor and their dependencies.
//!
//! ```text
//! cargo bench -p keygate-benches --bench overhead
//! cargo bench -p keygate-benches --bench ratelimit
//! cargo bench -p keygate-benches --bench limiter_memory
//! cargo bench -p keygate-benches --bench store
//! cargo bench -p keygate-benches --bench store_memory
//! cargo bench -p keygate-benches --bench issuers
//! cargo run --release -p keygate-benches --example requests -- valid_key 1000
//! cargo run --release -p keygate-benches --example serve -- api_key
//! ```
//!
//! Each bench's module docs say what its groups measure and against which baseline; `requests`
//! sends one kind of request a given number of times, for counting its instructions with
//! callgrind, and `serve` serves the same route over HTTP, for a load generator.

#[path = "heap.rs"]
pub mod heap;
