//! Per-caller rate limiting.

mod quota;

pub use quota::{Quota, QuotaError};
