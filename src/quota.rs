//! [`Quota`]: how many requests a caller may make. A leaf: it depends on nothing else of the
//! crate, so key records, principals and limiters can all name it.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

/// How many requests a caller may make: `limit` per `window`, with bursts of up to `burst`; or,
/// as a *fixed-window cap* (`;fixed`), at most `limit` in each UTC-aligned window.
///
/// A rate (the default) is decided by the generic cell rate algorithm: the limiter spreads the
/// limit evenly over the window (one request every `window / limit`) and lets a caller who has
/// been quiet save up to `burst` requests. So `3/d` admits 3 at once and then one more every 8
/// hours: up to 5 within the first calendar day, if the first 3 come at its start. That is a
/// rate, not a cap.
///
/// A fixed-window cap admits at most `limit` in each window, counted from the window's start
/// (windows are aligned to UTC: a `10000/d;fixed` window runs from midnight to midnight UTC,
/// an `h` window from the full hour) and resets at its end. Its window is a whole number of
/// seconds, and it has no burst. Use it for "10,000 a day" as a bill states it; a list of both
/// ([`Limits`](crate::Limits)) keeps a cap from being spent in one second.
///
/// ```
/// use std::time::Duration;
/// use keygate::Quota;
///
/// let q: Quota = "100/min;burst=20".parse()?;
/// assert_eq!(q, Quota::per_minute(100).with_burst(20));
/// assert_eq!(q.limit(), 100);
/// assert_eq!(q.window(), Duration::from_secs(60));
/// assert_eq!(q.burst(), 20);
/// assert_eq!(q.emission_interval(), Duration::from_millis(600));
/// assert_eq!(q.to_string(), "100/min;burst=20");
///
/// assert!("ten/s".parse::<Quota>().is_err());
///
/// let cap: Quota = "10000/d;fixed".parse()?;
/// assert!(cap.is_fixed());
/// assert_eq!(cap, Quota::per_day(10_000).fixed());
/// assert_eq!(cap.to_string(), "10000/d;fixed");
/// # Ok::<(), keygate::QuotaError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: NonZeroU32,
    window: Duration,
    burst: NonZeroU32,
    fixed: bool,
}

/// Why a quota could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// The text is not of the form `N/UNIT` or `N/UNIT;burst=B`.
    #[error("a quota looks like \"10/s\", \"100/min\", \"5000/h\" or \"100/min;burst=20\"")]
    Syntax,
    /// A count is zero or does not fit in 32 bits.
    #[error("a quota's limit and burst are whole numbers from 1 to 4294967295")]
    Count,
    /// The unit is not one of `s`, `min`, `h`, `d` (or their long forms), nor a whole number
    /// of `ms`, `us` or `ns` (such as `250ms`).
    #[error("a quota's unit is s, min, h, d, or a whole number of ms, us or ns such as 250ms")]
    Unit,
    /// The window is zero or longer than a year.
    #[error("a quota's window is between 1 ns and 365 days")]
    Window,
    /// The burst holds more than 2^62 ns (about 146 years) of requests.
    #[error("a quota's burst holds at most 146 years of requests (burst × window / limit)")]
    Burst,
    /// A fixed window that is not a whole number of seconds, or a fixed window with a burst.
    #[error("a fixed window (;fixed) is a whole number of seconds and has no burst")]
    Fixed,
    /// A limit's name is empty, too long, or has other characters than letters, digits, `-`,
    /// `_` and `.`.
    #[error("a limit's name is 1 to 32 letters, digits, '-', '_' or '.'")]
    Name,
    /// A quota lists no limit, or more than [`MAX_LIMITS`](crate::MAX_LIMITS).
    #[error("a quota lists 1 to 8 limits, separated by commas")]
    ListLength,
    /// One item of a list of limits is malformed: which one, and why.
    #[error("limit {} ({:?}): {reason}", .index + 1, .item)]
    Item {
        /// The item's place in the list, from 0.
        index: usize,
        /// The item's text (its first 40 characters).
        item: String,
        /// What is wrong with it.
        reason: Box<QuotaError>,
    },
}

const MAX_WINDOW: Duration = Duration::from_secs(365 * 86_400);

/// The most time a burst may hold, `burst × window / limit`: 2^62 ns, about 146 years. Below it
/// every sum a decision makes stays exact in 64-bit nanoseconds; a burst beyond it would make
/// the limiter's arithmetic saturate, and a saturated limit admits everything.
pub(crate) const MAX_TOLERANCE_NANOS: u64 = 1 << 62;

impl Quota {
    /// `limit` requests per `window`, with a burst of `limit`.
    pub fn new(limit: u32, window: Duration) -> Result<Self, QuotaError> {
        let limit = NonZeroU32::new(limit).ok_or(QuotaError::Count)?;
        if window.is_zero() || window > MAX_WINDOW {
            return Err(QuotaError::Window);
        }
        Ok(Self {
            limit,
            window,
            burst: limit,
            fixed: false,
        })
    }

    /// `n` requests per second. A zero `n` is taken as 1.
    pub fn per_second(n: u32) -> Self {
        Self::every(n, 1)
    }

    /// `n` requests per minute. A zero `n` is taken as 1.
    pub fn per_minute(n: u32) -> Self {
        Self::every(n, 60)
    }

    /// `n` requests per hour. A zero `n` is taken as 1.
    pub fn per_hour(n: u32) -> Self {
        Self::every(n, 3600)
    }

    /// `n` requests per day. A zero `n` is taken as 1.
    pub fn per_day(n: u32) -> Self {
        Self::every(n, 86_400)
    }

    fn every(n: u32, secs: u64) -> Self {
        let limit = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            limit,
            window: Duration::from_secs(secs),
            burst: limit,
            fixed: false,
        }
    }

    /// The same limit as a fixed-window cap: at most `limit` in each UTC-aligned window,
    /// reset at its end (see [`Quota`]). A window that is not a whole number of seconds is
    /// rounded up to one; the burst becomes the limit.
    ///
    /// ```
    /// use keygate::Quota;
    ///
    /// let cap = Quota::per_hour(500).fixed();
    /// assert!(cap.is_fixed());
    /// assert_eq!(cap.to_string(), "500/h;fixed");
    /// ```
    #[must_use]
    pub fn fixed(mut self) -> Self {
        let secs = self.window.as_secs() + u64::from(self.window.subsec_nanos() > 0);
        self.window = Duration::from_secs(secs.max(1));
        self.burst = self.limit;
        self.fixed = true;
        self
    }

    /// Whether this is a fixed-window cap rather than a rate.
    pub fn is_fixed(&self) -> bool {
        self.fixed
    }

    /// The same rate with a burst of `burst` requests. A zero `burst` is taken as 1, and a
    /// burst that would hold more than about 146 years of requests is cut to the largest one
    /// that holds less (only quotas of years per request with bursts in the millions get near).
    ///
    /// ```
    /// use keygate::Quota;
    ///
    /// assert_eq!(Quota::per_second(10).with_burst(50).burst(), 50);
    /// assert_eq!(Quota::per_day(1).with_burst(u32::MAX).burst(), 53_375);
    /// ```
    #[must_use]
    pub fn with_burst(mut self, burst: u32) -> Self {
        if self.fixed {
            return self;
        }
        let most = MAX_TOLERANCE_NANOS / self.emission_interval_nanos();
        let burst = burst.max(1).min(u32::try_from(most).unwrap_or(u32::MAX));
        self.burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        self
    }

    /// Requests per window.
    pub fn limit(&self) -> u32 {
        self.limit.get()
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Requests a quiet caller may make at once (a fixed-window cap: its limit).
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// The time one request "costs": `window / limit`.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.emission_interval_nanos())
    }

    /// `window / limit` in nanoseconds (at least 1).
    pub(crate) fn emission_interval_nanos(&self) -> u64 {
        let nanos = self.window.as_nanos() / u128::from(self.limit.get());
        u64::try_from(nanos).unwrap_or(u64::MAX).max(1)
    }
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Quota({self})")
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.window.as_nanos();
        write!(f, "{}/", self.limit)?;
        // The named units where they fit; otherwise the largest unit that holds the window
        // exactly, so that every quota's text parses back to the same quota.
        match nanos {
            NANOS_PER_SEC => f.write_str("s")?,
            NANOS_PER_MIN => f.write_str("min")?,
            NANOS_PER_HOUR => f.write_str("h")?,
            NANOS_PER_DAY => f.write_str("d")?,
            n if n % NANOS_PER_MS == 0 => write!(f, "{}ms", n / NANOS_PER_MS)?,
            n if n % NANOS_PER_US == 0 => write!(f, "{}us", n / NANOS_PER_US)?,
            n => write!(f, "{n}ns")?,
        }
        if self.fixed {
            f.write_str(";fixed")?;
        } else if self.burst != self.limit {
            write!(f, ";burst={}", self.burst)?;
        }
        Ok(())
    }
}

const NANOS_PER_US: u128 = 1_000;
const NANOS_PER_MS: u128 = 1_000_000;
const NANOS_PER_SEC: u128 = 1_000_000_000;
const NANOS_PER_MIN: u128 = 60 * NANOS_PER_SEC;
const NANOS_PER_HOUR: u128 = 3600 * NANOS_PER_SEC;
const NANOS_PER_DAY: u128 = 86_400 * NANOS_PER_SEC;

impl FromStr for Quota {
    type Err = QuotaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(';');
        let rate = parts.next().ok_or(QuotaError::Syntax)?.trim();
        let (count, unit) = rate.split_once('/').ok_or(QuotaError::Syntax)?;
        let limit = parse_count(count)?;
        let window = parse_window(unit.trim())?;
        let mut quota = Quota::new(limit, window)?;
        let mut burst = None;
        let mut fixed = false;
        for param in parts {
            let param = param.trim();
            if param == "fixed" && !fixed {
                fixed = true;
                continue;
            }
            let (name, value) = param.split_once('=').ok_or(QuotaError::Syntax)?;
            match name.trim() {
                "burst" if burst.is_none() => burst = Some(parse_count(value)?),
                _ => return Err(QuotaError::Syntax),
            }
        }
        if fixed {
            if burst.is_some() || window.subsec_nanos() != 0 {
                return Err(QuotaError::Fixed);
            }
            return Ok(quota.fixed());
        }
        if let Some(burst) = burst {
            quota = quota.with_burst(burst);
            if quota.burst() != burst {
                return Err(QuotaError::Burst);
            }
        }
        Ok(quota)
    }
}

/// A named unit (`s`, `min`, `h`, `d` and their long forms), or a whole number of `ms`, `us`
/// (or `µs`) or `ns`, as `Display` writes windows that are not one named unit.
fn parse_window(unit: &str) -> Result<Duration, QuotaError> {
    let named = match unit {
        "s" | "sec" | "second" => Some(Duration::from_secs(1)),
        "m" | "min" | "minute" => Some(Duration::from_secs(60)),
        "h" | "hr" | "hour" => Some(Duration::from_secs(3600)),
        "d" | "day" => Some(Duration::from_secs(86_400)),
        _ => None,
    };
    if let Some(window) = named {
        return Ok(window);
    }
    let (digits, per) = [
        ("ms", NANOS_PER_MS),
        ("us", NANOS_PER_US),
        ("\u{b5}s", NANOS_PER_US),
        ("ns", 1),
    ]
    .into_iter()
    .find_map(|(suffix, per)| unit.strip_suffix(suffix).map(|d| (d, per)))
    .ok_or(QuotaError::Unit)?;
    // Digits only, and few enough that the product cannot overflow before the range check.
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuotaError::Unit);
    }
    let n: u128 = digits.parse().map_err(|_| QuotaError::Unit)?;
    let nanos = n.checked_mul(per).ok_or(QuotaError::Window)?;
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| QuotaError::Window)
}

fn parse_count(s: &str) -> Result<u32, QuotaError> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuotaError::Syntax);
    }
    match s.parse::<u32>() {
        Ok(0) | Err(_) => Err(QuotaError::Count),
        Ok(n) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!("10/s".parse(), Ok(Quota::per_second(10)));
        assert_eq!("100/min".parse(), Ok(Quota::per_minute(100)));
        assert_eq!("5000/h".parse(), Ok(Quota::per_hour(5000)));
        assert_eq!(
            "100/min;burst=20".parse(),
            Ok(Quota::per_minute(100).with_burst(20))
        );
        assert_eq!(" 7 / d ".parse(), Ok(Quota::per_day(7)));
        assert_eq!(
            "5/250ms".parse::<Quota>().unwrap().window(),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "10",
            "/s",
            "x/s",
            "-1/s",
            "0/s",
            "10/fortnight",
            "10/s;burst",
            "10/s;burst=0",
            "10/s;foo=1",
            "99999999999/s",
            "10/0ms",
            "10/0ns",
            "10/ms",
            "10/-5ms",
            "10/5.5ms",
            "10/99999999999999999999999ns",
            "10/400d",
            "1/d;burst=60000",
            "+5/s",
            "10/s;burst=2;burst=3",
            "10/250ms;fixed",
            "10/s;fixed;burst=5",
            "10/s;fixed;fixed",
        ] {
            assert!(bad.parse::<Quota>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn display_round_trips() {
        for q in [
            "10/s",
            "100/min",
            "5000/h",
            "3/d",
            "100/min;burst=20",
            "5/250ms",
            "3/500us",
            "7/1500ns",
            "2/90000ms",
            "10000/d;fixed",
            "3/5ms",
            "7/90000ms;fixed",
        ] {
            let parsed: Quota = q.parse().unwrap();
            assert_eq!(parsed.to_string(), q);
            assert_eq!(parsed.to_string().parse::<Quota>().unwrap(), parsed);
        }
    }

    #[test]
    fn sub_millisecond_windows_round_trip() {
        for nanos in [1, 999, 500_000, 1_500, 1_000_000_001, 59_999_999_999] {
            let q = Quota::new(3, Duration::from_nanos(nanos)).unwrap();
            assert_eq!(q.to_string().parse::<Quota>(), Ok(q), "{q}");
        }
        assert_eq!(
            Quota::new(3, Duration::from_micros(500))
                .unwrap()
                .to_string(),
            "3/500us"
        );
        assert_eq!(
            "3/500\u{b5}s".parse::<Quota>().unwrap().window(),
            Duration::from_micros(500)
        );
    }

    #[test]
    fn emission_interval() {
        assert_eq!(
            Quota::per_second(4).emission_interval(),
            Duration::from_millis(250)
        );
        assert_eq!(Quota::per_second(0).limit(), 1);
    }
}
