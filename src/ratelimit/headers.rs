//! Rate-limit response headers: the IETF httpapi RateLimit header fields (draft 10), one entry
//! per limit, and the widespread legacy `X-RateLimit-*` ones.

use std::fmt::Write as _;
use std::sync::Arc;

use http::header::Entry;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Decision, Verdict};
use crate::Limits;
use crate::error::retry_after_secs;

/// Which rate-limit headers responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// `RateLimit-Policy: "default";q=100;w=60` and `RateLimit: "default";r=42;t=18`
    /// (draft-ietf-httpapi-ratelimit-headers-10), one entry per limit.
    #[default]
    Draft,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (seconds from now), of
    /// the limit with the fewest requests remaining.
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

/// A list of limits with its policy names and its `RateLimit-Policy` value, built once.
#[derive(Debug, Clone)]
pub(crate) struct Policies {
    pub(crate) limits: Limits,
    names: Box<[Arc<str>]>,
    policy_value: HeaderValue,
    /// The decisions counted under this list's name.
    pub(crate) counters: crate::metrics::PolicyCounters,
}

impl Policies {
    /// The policies of `limits`. A list of one unnamed limit takes `name` (the default, a
    /// tier's name, `key`); otherwise each limit its own name or one derived from its window,
    /// made unique within the list.
    pub(crate) fn new(name: &str, limits: Limits) -> Self {
        Self::with_counters(name, limits, crate::metrics::PolicyCounters::new(name))
    }

    /// [`new`](Self::new), with decisions counted by `counters` (registered once for lists
    /// built per request).
    pub(crate) fn with_counters(
        name: &str,
        limits: Limits,
        counters: crate::metrics::PolicyCounters,
    ) -> Self {
        let mut names: Vec<Arc<str>> = Vec::with_capacity(limits.len());
        for limit in limits.iter() {
            let base: String = match limit.name() {
                Some(n) => n.to_owned(),
                None if limits.len() == 1 => sanitise(name),
                None => limit.policy_name().into_owned(),
            };
            let mut unique = base.clone();
            let mut n = 2;
            while names.iter().any(|taken| **taken == *unique) {
                unique = format!("{base}-{n}");
                n += 1;
            }
            names.push(unique.into());
        }
        let mut value = String::new();
        for (i, (limit, name)) in limits.iter().zip(&names).enumerate() {
            if i > 0 {
                value.push_str(", ");
            }
            let quota = limit.quota();
            let _ = write!(
                value,
                "\"{name}\";q={};w={}",
                quota.burst(),
                retry_after_secs(quota.window())
            );
        }
        Self {
            counters,
            limits,
            names: names.into(),
            policy_value: HeaderValue::try_from(value).unwrap_or(HeaderValue::from_static("")),
        }
    }

    /// The policy name of limit `i`.
    pub(crate) fn name(&self, i: usize) -> &str {
        self.names.get(i).map_or("", |n| n)
    }

    /// Writes the headers of `style` for `verdict`, after those a rate-limit layer further in
    /// wrote (several layers report all their limits).
    pub(crate) fn write(&self, headers: &mut HeaderMap, verdict: &Verdict, style: HeaderStyle) {
        let decisions = verdict.decisions();
        if matches!(style, HeaderStyle::Draft | HeaderStyle::Both) {
            append(headers, &RATELIMIT_POLICY, self.policy_value.clone());
            // Written by hand rather than with `write!`, into a buffer of the exact length that
            // becomes the header value without a copy: this runs for every admitted request,
            // and the value is its one allocation.
            let len: usize = decisions
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let separator = if i > 0 { 2 } else { 0 };
                    let digits = decimal_len(d.remaining.into()) + decimal_len(reset_secs(d));
                    separator + self.name(i).len() + r#""";r=;t="#.len() + digits
                })
                .sum();
            let mut value = Vec::with_capacity(len);
            let mut digits = itoa::Buffer::new();
            for (i, d) in decisions.iter().enumerate() {
                if i > 0 {
                    value.extend_from_slice(b", ");
                }
                value.push(b'"');
                value.extend_from_slice(self.name(i).as_bytes());
                value.extend_from_slice(b"\";r=");
                value.extend_from_slice(digits.format(d.remaining).as_bytes());
                value.extend_from_slice(b";t=");
                value.extend_from_slice(digits.format(reset_secs(d)).as_bytes());
            }
            debug_assert_eq!(value.len(), len);
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
                append(headers, &RATELIMIT, v);
            }
        }
        if matches!(style, HeaderStyle::Legacy | HeaderStyle::Both)
            && let Some((i, d)) = decisions
                .iter()
                .enumerate()
                .min_by_key(|(_, d)| d.remaining)
        {
            let outer_remaining = headers
                .get(&X_REMAINING)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok());
            if outer_remaining.is_none_or(|r| d.remaining < r) {
                let limit = self.limits.get(i).map_or(0, |l| l.quota().burst());
                headers.insert(X_LIMIT.clone(), HeaderValue::from(limit));
                headers.insert(X_REMAINING.clone(), HeaderValue::from(d.remaining));
                headers.insert(X_RESET.clone(), HeaderValue::from(reset_secs(d)));
            }
        }
    }
}

/// The number of decimal digits of `n`.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Seconds until a limit resets: 0 when it is full, else rounded up.
pub(crate) fn reset_secs(d: &Decision) -> u64 {
    if d.reset_after.is_zero() {
        0
    } else {
        retry_after_secs(d.reset_after)
    }
}

/// Sets `name` to `value`, or appends `value` to the list a layer further in wrote (one lookup).
fn append(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
    match headers.entry(name) {
        Entry::Occupied(mut existing) if !existing.get().is_empty() => {
            let old = existing.get().as_bytes();
            let mut joined = Vec::with_capacity(old.len() + 2 + value.len());
            joined.extend_from_slice(old);
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(value.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                existing.insert(v);
            }
        }
        Entry::Occupied(mut empty) => {
            empty.insert(value);
        }
        Entry::Vacant(vacant) => {
            vacant.insert(value);
        }
    }
}

/// A structured-field string: printable ASCII without '"' and '\'.
fn sanitise(name: &str) -> String {
    name.chars()
        .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Quota;

    fn decision(allowed: bool, remaining: u32, reset_ms: u64) -> Decision {
        Decision {
            allowed,
            remaining,
            reset_after: Duration::from_millis(reset_ms),
            retry_after: Duration::ZERO,
        }
    }

    #[test]
    fn decimal_len_counts_digits() {
        for n in [0, 1, 9, 10, 99, 100, 4_294_967_295, u64::MAX] {
            assert_eq!(decimal_len(n), n.to_string().len(), "{n}");
        }
    }

    #[test]
    fn draft_and_legacy_values() {
        let limits = Limits::from(Quota::per_minute(100));
        let p = Policies::new("default", limits.clone());
        let v = Verdict::new(&limits, [decision(true, 42, 17_200)]);
        let mut h = HeaderMap::new();
        p.write(&mut h, &v, HeaderStyle::Both);
        assert_eq!(h["ratelimit-policy"], "\"default\";q=100;w=60");
        assert_eq!(h["ratelimit"], "\"default\";r=42;t=18");
        assert_eq!(h["x-ratelimit-limit"], "100");
        assert_eq!(h["x-ratelimit-remaining"], "42");
        assert_eq!(h["x-ratelimit-reset"], "18");
        let mut h = HeaderMap::new();
        p.write(&mut h, &v, HeaderStyle::None);
        assert!(h.is_empty());
    }

    #[test]
    fn several_policies_and_stacked_layers() {
        let limits: Limits = "10/s;burst=20;name=burst, 10000/d;fixed;name=daily"
            .parse()
            .unwrap();
        let p = Policies::new("default", limits.clone());
        let v = Verdict::new(
            &limits,
            [decision(true, 19, 100), decision(true, 9_999, 51_233_400)],
        );
        let mut h = HeaderMap::new();
        p.write(&mut h, &v, HeaderStyle::Both);
        assert_eq!(
            h["ratelimit-policy"],
            "\"burst\";q=20;w=1, \"daily\";q=10000;w=86400"
        );
        assert_eq!(
            h["ratelimit"],
            "\"burst\";r=19;t=1, \"daily\";r=9999;t=51234"
        );
        assert_eq!(h["x-ratelimit-limit"], "20");
        assert_eq!(h["x-ratelimit-remaining"], "19");
        // An outer layer appends its policy; the legacy set keeps the lower remaining.
        let outer = Limits::from(Quota::per_minute(100));
        let o = Policies::new("tenant", outer.clone());
        o.write(
            &mut h,
            &Verdict::new(&outer, [decision(true, 50, 1_000)]),
            HeaderStyle::Both,
        );
        assert_eq!(
            h["ratelimit-policy"],
            "\"burst\";q=20;w=1, \"daily\";q=10000;w=86400, \"tenant\";q=100;w=60"
        );
        assert_eq!(
            h["ratelimit"],
            "\"burst\";r=19;t=1, \"daily\";r=9999;t=51234, \"tenant\";r=50;t=1"
        );
        assert_eq!(h["x-ratelimit-remaining"], "19");
    }

    #[test]
    fn names_are_derived_unique_and_sanitised() {
        let p = Policies::new("go\"ld\\\n", Limits::from(Quota::per_second(1)));
        assert_eq!(p.policy_value, "\"gold\";q=1;w=1");
        let p = Policies::new("x", "1/s, 5/s, 3/d;fixed".parse().unwrap());
        assert_eq!(
            p.policy_value,
            "\"second\";q=1;w=1, \"second-2\";q=5;w=1, \"day\";q=3;w=86400"
        );
    }
}
