//! Benchmarks of keygate, kept in a package of their own so that building the library's main
//! example does not build criterion, governor and their dependencies.
//!
//! ```text
//! cargo bench -p keygate-benches --bench overhead
//! cargo bench -p keygate-benches --bench ratelimit
//! cargo bench -p keygate-benches --bench store
//! ```
//!
//! Each bench's module docs say what its groups measure and against which baseline.
