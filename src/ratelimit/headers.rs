//! Rate-limit response headers: the IETF httpapi RateLimit header fields (draft 10) and the
//! widespread legacy `X-RateLimit-*` ones.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Decision, Quota};
use crate::error::retry_after_secs;

/// Which rate-limit headers responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// `RateLimit-Policy: "default";q=100;w=60` and `RateLimit: "default";r=42;t=18`
    /// (draft-ietf-httpapi-ratelimit-headers-10).
    #[default]
    Draft,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (seconds from now).
    Legacy,
    /// Both sets.
    Both,
    /// None (a 429 still carries `Retry-After`).
    None,
}

static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// A named quota, with its `RateLimit-Policy` value built once.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) name: Arc<str>,
    pub(crate) quota: Quota,
    policy_value: HeaderValue,
}

impl Policy {
    pub(crate) fn new(name: &str, quota: Quota) -> Self {
        // A structured-field string: printable ASCII without '"' and '\'.
        let name: String = name
            .chars()
            .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
            .collect();
        let window = retry_after_secs(quota.window());
        let value = format!("\"{name}\";q={};w={window}", quota.limit());
        Self {
            name: name.into(),
            quota,
            policy_value: HeaderValue::try_from(value).unwrap_or(HeaderValue::from_static("")),
        }
    }

    /// Writes the headers of `style` for `decision` under this policy.
    pub(crate) fn write(&self, headers: &mut HeaderMap, decision: &Decision, style: HeaderStyle) {
        let reset = if decision.reset_after.is_zero() {
            0
        } else {
            retry_after_secs(decision.reset_after)
        };
        if matches!(style, HeaderStyle::Draft | HeaderStyle::Both) {
            headers.insert(RATELIMIT_POLICY.clone(), self.policy_value.clone());
            let value = format!("\"{}\";r={};t={reset}", self.name, decision.remaining);
            if let Ok(v) = HeaderValue::try_from(value) {
                headers.insert(RATELIMIT.clone(), v);
            }
        }
        if matches!(style, HeaderStyle::Legacy | HeaderStyle::Both) {
            headers.insert(X_LIMIT.clone(), HeaderValue::from(self.quota.limit()));
            headers.insert(X_REMAINING.clone(), HeaderValue::from(decision.remaining));
            headers.insert(X_RESET.clone(), HeaderValue::from(reset));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn draft_and_legacy_values() {
        let p = Policy::new("default", Quota::per_minute(100));
        let d = Decision {
            allowed: true,
            remaining: 42,
            reset_after: Duration::from_millis(17_200),
            retry_after: Duration::ZERO,
        };
        let mut h = HeaderMap::new();
        p.write(&mut h, &d, HeaderStyle::Both);
        assert_eq!(h["ratelimit-policy"], "\"default\";q=100;w=60");
        assert_eq!(h["ratelimit"], "\"default\";r=42;t=18");
        assert_eq!(h["x-ratelimit-limit"], "100");
        assert_eq!(h["x-ratelimit-remaining"], "42");
        assert_eq!(h["x-ratelimit-reset"], "18");
        let mut h = HeaderMap::new();
        p.write(&mut h, &d, HeaderStyle::None);
        assert!(h.is_empty());
    }

    #[test]
    fn names_are_sanitised() {
        let p = Policy::new("go\"ld\\\n", Quota::per_second(1));
        assert_eq!(p.policy_value, "\"gold\";q=1;w=1");
    }
}
