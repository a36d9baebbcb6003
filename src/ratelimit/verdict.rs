//! [`Verdict`]: a limiter's answer for a list of limits.

use std::time::Duration;

use smallvec::SmallVec;

use super::Decision;
use crate::{LimitBy, Limits};

/// Who a decision is for: the caller's key, and its owner for the limits counted by owner
/// ([`LimitBy::Owner`]). A caller without an owner counts its owner-wide limits on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    /// The caller's key (a principal id, or what `key_by` returned).
    pub key: &'a str,
    /// The caller's owner.
    pub owner: Option<&'a str>,
}

impl<'a> Subject<'a> {
    /// A caller with no owner.
    pub fn new(key: &'a str) -> Self {
        Self { key, owner: None }
    }

    /// A caller of `owner`.
    pub fn with_owner(key: &'a str, owner: Option<&'a str>) -> Self {
        Self { key, owner }
    }

    /// The key a limit counted `by` is kept under: the caller's key, or its owner's. Limiters
    /// keep the two apart (a caller whose key equals some owner's name shares nothing with
    /// that owner).
    pub fn key_for(&self, by: LimitBy) -> &'a str {
        match by {
            LimitBy::Owner => self.owner.unwrap_or(self.key),
            _ => self.key,
        }
    }

    /// Whether a limit counted `by` is kept in the owner's namespace.
    pub fn is_owner_wide(&self, by: LimitBy) -> bool {
        by == LimitBy::Owner && self.owner.is_some()
    }
}

/// A limiter's answer for a list of limits ([`RateLimiter::check_all`](super::RateLimiter::check_all)):
/// one [`Decision`] per limit, in the list's order, and whether the request is admitted.
///
/// A request is admitted when every limit that is not in shadow admits it; then (and only
/// then) each admitting limit was spent. A shadow limit that would have denied is reported
/// by [`shadow_denials`](Self::shadow_denials) and spent nothing.
///
/// ```
/// use std::time::Duration;
/// use keygate::ratelimit::{Decision, Verdict};
/// use keygate::Limits;
///
/// let limits: Limits = "10/s, 100/d;fixed".parse()?;
/// let admit = Decision { allowed: true, remaining: 9, reset_after: Duration::from_millis(100), retry_after: Duration::ZERO };
/// let deny = Decision { allowed: false, remaining: 0, reset_after: Duration::from_secs(60), retry_after: Duration::from_secs(60) };
/// let verdict = Verdict::new(&limits, [admit, deny]);
/// assert!(!verdict.allowed());
/// assert_eq!(verdict.denied_by(), Some(1));
/// assert_eq!(verdict.retry_after(), Duration::from_secs(60));
/// # Ok::<(), keygate::QuotaError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    decisions: SmallVec<[Decision; 2]>,
    /// Bit i: limit i denied and is enforced.
    denials: u16,
    /// Bit i: limit i denied and is in shadow.
    shadow: u16,
}

impl Verdict {
    /// The verdict of `decisions` (one per limit of `limits`, in order). Extra decisions are
    /// ignored; a missing one counts as a denial, so a backend that answers short never
    /// admits by mistake.
    pub fn new(limits: &Limits, decisions: impl IntoIterator<Item = Decision>) -> Self {
        let mut decisions: SmallVec<[Decision; 2]> =
            decisions.into_iter().take(limits.len()).collect();
        while decisions.len() < limits.len() {
            decisions.push(Decision {
                allowed: false,
                remaining: 0,
                reset_after: Duration::ZERO,
                retry_after: Duration::from_secs(1),
            });
        }
        let mut denials = 0;
        let mut shadow = 0;
        for (i, (limit, decision)) in limits.iter().zip(&decisions).enumerate() {
            if !decision.allowed {
                if limit.is_shadow() {
                    shadow |= 1 << i;
                } else {
                    denials |= 1 << i;
                }
            }
        }
        Self {
            decisions,
            denials,
            shadow,
        }
    }

    /// Whether the request is admitted.
    pub fn allowed(&self) -> bool {
        self.denials == 0
    }

    /// The first enforced limit that denied, if any.
    pub fn denied_by(&self) -> Option<usize> {
        (self.denials != 0).then(|| self.denials.trailing_zeros() as usize)
    }

    /// The enforced limits that denied, in order.
    pub fn denials(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.decisions.len()).filter(|i| self.denials & (1 << i) != 0)
    }

    /// The enforced limit that denied with the longest wait: the one `Retry-After` is for.
    pub fn longest_denial(&self) -> Option<usize> {
        self.denials()
            .max_by_key(|&i| (self.decisions[i].retry_after, std::cmp::Reverse(i)))
    }

    /// The shadow limits that would have denied, in order.
    pub fn shadow_denials(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.decisions.len()).filter(|i| self.shadow & (1 << i) != 0)
    }

    /// The decisions, one per limit in the list's order.
    pub fn decisions(&self) -> &[Decision] {
        &self.decisions
    }

    /// When denied: the time until every enforced limit would admit the request (the longest
    /// wait among those that denied). Zero when admitted.
    pub fn retry_after(&self) -> Duration {
        self.decisions
            .iter()
            .enumerate()
            .filter(|(i, _)| self.denials & (1 << i) != 0)
            .map(|(_, d)| d.retry_after)
            .max()
            .unwrap_or(Duration::ZERO)
    }
}
