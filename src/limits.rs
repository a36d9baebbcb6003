//! [`Limits`]: a quota as a list of limits, every one of which must admit a request.
//!
//! A leaf beside [`Quota`]: key records, principals and limiters all name it.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::quota::{Quota, QuotaError};

/// The most limits one [`Limits`] lists.
pub const MAX_LIMITS: usize = 8;

const MAX_NAME: usize = 32;

/// Whose requests a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum LimitBy {
    /// Each caller (key, token subject, or what `key_by` returns) on its own.
    #[default]
    Caller,
    /// All of an owner's callers together: every key of one owner, and the tokens minted for
    /// them, share the limit. A caller without an owner counts on its own.
    Owner,
}

/// One limit of a list: a [`Quota`], with a name for the headers, whose requests it counts,
/// and whether it only observes.
///
/// Its text form is the quota's, with optional parameters: `;name=N` (the name in the
/// `RateLimit` headers and in a 429's detail), `;owner` ([`LimitBy::Owner`]) and `;shadow`
/// (decided and reported, never enforced).
///
/// ```
/// use keygate::{Limit, LimitBy, Quota};
///
/// let daily: Limit = "10000/d;fixed;name=daily;owner".parse()?;
/// assert_eq!(daily.quota(), &Quota::per_day(10_000).fixed());
/// assert_eq!(daily.name(), Some("daily"));
/// assert_eq!(daily.by(), LimitBy::Owner);
/// assert_eq!(daily, Limit::new(Quota::per_day(10_000).fixed()).named("daily").by_owner());
/// assert_eq!(daily.to_string(), "10000/d;fixed;name=daily;owner");
/// # Ok::<(), keygate::QuotaError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Limit {
    quota: Quota,
    name: Option<Arc<str>>,
    by: LimitBy,
    shadow: bool,
}

impl Limit {
    /// A limit of `quota`, per caller, enforced, without a name of its own.
    pub fn new(quota: Quota) -> Self {
        Self {
            quota,
            name: None,
            by: LimitBy::Caller,
            shadow: false,
        }
    }

    /// Names the limit (its policy name in the `RateLimit` headers). A name is 1 to 32
    /// letters, digits, `-`, `_` or `.`; other characters are dropped, and a name left empty
    /// is no name.
    #[must_use]
    pub fn named(mut self, name: &str) -> Self {
        let name: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .take(MAX_NAME)
            .collect();
        self.name = (!name.is_empty()).then(|| name.into());
        self
    }

    /// Counts the requests of all the caller's owner's callers together.
    #[must_use]
    pub fn by_owner(mut self) -> Self {
        self.by = LimitBy::Owner;
        self
    }

    /// Counts with `by`.
    #[must_use]
    pub fn counted_by(mut self, by: LimitBy) -> Self {
        self.by = by;
        self
    }

    /// Decides and reports the limit as usual, but never denies a request for it (see
    /// [`RateLimitLayer::shadow`](crate::ratelimit::RateLimitLayer::shadow)).
    #[must_use]
    pub fn shadow(mut self) -> Self {
        self.shadow = true;
        self
    }

    /// The quota.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// The name given, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whose requests it counts.
    pub fn by(&self) -> LimitBy {
        self.by
    }

    /// Whether it only observes.
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// The name given, or one derived from the window: `second`, `minute`, `hour`, `day`, or
    /// the window's text (`250ms`, `7200s`).
    ///
    /// ```
    /// use keygate::Limit;
    ///
    /// assert_eq!("10/s".parse::<Limit>()?.policy_name(), "second");
    /// assert_eq!("10000/d;fixed".parse::<Limit>()?.policy_name(), "day");
    /// assert_eq!("5/250ms".parse::<Limit>()?.policy_name(), "250ms");
    /// assert_eq!("5/s;name=burst".parse::<Limit>()?.policy_name(), "burst");
    /// # Ok::<(), keygate::QuotaError>(())
    /// ```
    pub fn policy_name(&self) -> Cow<'_, str> {
        if let Some(name) = &self.name {
            return Cow::Borrowed(name);
        }
        window_name(self.quota.window())
    }
}

fn window_name(window: Duration) -> Cow<'static, str> {
    match window.as_nanos() {
        1_000_000_000 => "second".into(),
        60_000_000_000 => "minute".into(),
        3_600_000_000_000 => "hour".into(),
        86_400_000_000_000 => "day".into(),
        n if n % 1_000_000_000 == 0 => format!("{}s", n / 1_000_000_000).into(),
        n if n % 1_000_000 == 0 => format!("{}ms", n / 1_000_000).into(),
        n if n % 1_000 == 0 => format!("{}us", n / 1_000).into(),
        n => format!("{n}ns").into(),
    }
}

impl From<Quota> for Limit {
    fn from(quota: Quota) -> Self {
        Self::new(quota)
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.quota)?;
        if let Some(name) = &self.name {
            write!(f, ";name={name}")?;
        }
        if self.by == LimitBy::Owner {
            f.write_str(";owner")?;
        }
        if self.shadow {
            f.write_str(";shadow")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Limit({self})")
    }
}

impl FromStr for Limit {
    type Err = QuotaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut quota_text = String::with_capacity(s.len());
        let mut name = None;
        let mut by = LimitBy::Caller;
        let mut shadow = false;
        for (i, part) in s.split(';').enumerate() {
            let trimmed = part.trim();
            if i > 0 {
                match trimmed.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                    Some(("name", value)) if name.is_none() => {
                        let valid = !value.is_empty()
                            && value.len() <= MAX_NAME
                            && value
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                        if !valid {
                            return Err(QuotaError::Name);
                        }
                        name = Some(Arc::<str>::from(value));
                        continue;
                    }
                    Some(("name", _)) => return Err(QuotaError::Syntax),
                    _ => {}
                }
                match trimmed {
                    "owner" if by == LimitBy::Caller => {
                        by = LimitBy::Owner;
                        continue;
                    }
                    "shadow" if !shadow => {
                        shadow = true;
                        continue;
                    }
                    "owner" | "shadow" => return Err(QuotaError::Syntax),
                    _ => quota_text.push(';'),
                }
            }
            quota_text.push_str(part);
        }
        Ok(Self {
            quota: quota_text.parse()?,
            name,
            by,
            shadow,
        })
    }
}

/// A quota as people mean it: a list of limits (rates and fixed-window caps), all of which
/// must admit a request. A request denied by one spends nothing from the others.
///
/// Its text form lists the limits, separated by commas: `"10/s;burst=20, 10000/d;fixed"` is
/// "ten a second, in bursts of up to twenty, and at most ten thousand per UTC day". Parsing
/// names the item that is wrong. Cloning is cheap (one reference count). A single [`Quota`]
/// converts into a list of one.
///
/// ```
/// use keygate::{Limits, Quota, QuotaError};
///
/// let limits: Limits = "10/s;burst=20;name=burst, 10000/d;fixed;name=daily".parse()?;
/// assert_eq!(limits.len(), 2);
/// assert_eq!(limits[1].quota(), &Quota::per_day(10_000).fixed());
/// assert_eq!(limits.to_string(), "10/s;burst=20;name=burst, 10000/d;fixed;name=daily");
/// assert_eq!(Limits::from(Quota::per_minute(100)).to_string(), "100/min");
///
/// let err = "10/s, 10/fortnight".parse::<Limits>().unwrap_err();
/// assert!(matches!(err, QuotaError::Item { index: 1, .. }));
/// assert!(err.to_string().starts_with("limit 2 (\"10/fortnight\")"), "{err}");
/// # Ok::<(), QuotaError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Limits(Arc<[Limit]>);

impl Limits {
    /// A list of `limits`: 1 to [`MAX_LIMITS`] of them.
    pub fn new(limits: impl IntoIterator<Item = Limit>) -> Result<Self, QuotaError> {
        let limits: Arc<[Limit]> = limits.into_iter().take(MAX_LIMITS + 1).collect();
        if limits.is_empty() || limits.len() > MAX_LIMITS {
            return Err(QuotaError::ListLength);
        }
        Ok(Self(limits))
    }

    /// The limits, in their order.
    pub fn as_slice(&self) -> &[Limit] {
        &self.0
    }

    /// The same limits, every one in shadow (decided and reported, never enforced).
    #[must_use]
    pub fn shadow(&self) -> Self {
        if self.0.iter().all(Limit::is_shadow) {
            return self.clone();
        }
        Self(self.0.iter().cloned().map(Limit::shadow).collect())
    }

    /// The same limits, every one counted by `by`.
    #[must_use]
    pub fn by(&self, by: LimitBy) -> Self {
        if self.0.iter().all(|l| l.by == by) {
            return self.clone();
        }
        Self(self.0.iter().cloned().map(|l| l.counted_by(by)).collect())
    }

    /// Whether some limit counts by owner.
    pub fn has_owner_limits(&self) -> bool {
        self.0.iter().any(|l| l.by == LimitBy::Owner)
    }
}

impl std::ops::Deref for Limits {
    type Target = [Limit];

    fn deref(&self) -> &[Limit] {
        &self.0
    }
}

impl From<Quota> for Limits {
    fn from(quota: Quota) -> Self {
        Self(Arc::new([Limit::new(quota)]))
    }
}

impl From<Limit> for Limits {
    fn from(limit: Limit) -> Self {
        Self(Arc::new([limit]))
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, limit) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{limit}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Limits({self})")
    }
}

impl FromStr for Limits {
    type Err = QuotaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut limits = Vec::new();
        for (index, item) in s.split(',').enumerate() {
            if index >= MAX_LIMITS {
                return Err(QuotaError::ListLength);
            }
            let parsed = item.parse::<Limit>().map_err(|reason| QuotaError::Item {
                index,
                item: item.trim().chars().take(40).collect(),
                reason: Box::new(reason),
            })?;
            limits.push(parsed);
        }
        Self::new(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_round_trip() {
        for text in [
            "10/s",
            "10/s;burst=20, 10000/d;fixed",
            "2/s;burst=3, 5/h;fixed",
            "1/s;name=a, 2/s;name=b;owner, 3/min;shadow, 4/h;fixed;owner;shadow",
        ] {
            let limits: Limits = text.parse().unwrap();
            assert_eq!(limits.to_string(), text);
            assert_eq!(limits.to_string().parse::<Limits>().unwrap(), limits);
        }
        let limits: Limits = " 10/s ; burst=20 ,10000/d ; fixed ".parse().unwrap();
        assert_eq!(limits.to_string(), "10/s;burst=20, 10000/d;fixed");
    }

    #[test]
    fn errors_name_the_item() {
        let cases = [
            ("10/s,", 1),
            ("10/s, 5/fortnight", 1),
            ("nonsense", 0),
            ("10/s;name=", 0),
            ("10/s;name=a b", 0),
            ("10/s;name=a;name=b", 0),
            ("10/s, 10/s;owner;owner", 1),
            ("1/s, 2/s, 3/s;shadow;shadow", 2),
            ("1/s, 2/250ms;fixed", 1),
        ];
        for (text, index) in cases {
            match text.parse::<Limits>() {
                Err(QuotaError::Item { index: i, .. }) => assert_eq!(i, index, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let nine = ["1/s"; 9].join(",");
        assert_eq!(nine.parse::<Limits>(), Err(QuotaError::ListLength));
        assert_eq!(Limits::new([]), Err(QuotaError::ListLength));
        let long = format!("{}/fortnight", "9".repeat(100));
        let err = long.parse::<Limits>().unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn names() {
        assert_eq!(
            Limit::new(Quota::per_second(1)).named("go ld!").name(),
            Some("gold")
        );
        assert_eq!(Limit::new(Quota::per_second(1)).named("\"").name(), None);
        assert_eq!("1/90s".parse::<Limit>().unwrap_err(), QuotaError::Unit);
        assert_eq!("1/90000ms".parse::<Limit>().unwrap().policy_name(), "90s");
    }

    #[test]
    fn shadow_and_by_apply_to_every_item() {
        let limits: Limits = "1/s, 2/h;fixed;shadow".parse().unwrap();
        assert!(limits.shadow().iter().all(Limit::is_shadow));
        assert!(limits.by(LimitBy::Owner).has_owner_limits());
        assert!(!limits.has_owner_limits());
    }
}
