//! Logging of failures that can repeat at request rate: a backend that is down fails every
//! request, and one warning per request would flood the logs (and let any client fill them).
//! [`OutageLog`] turns a run of failures into a warning when it starts, one summary per interval
//! while it lasts, and a note when the backend answers again.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a failure that goes on is reported again, with a count.
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// What to log for a failure, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    /// The first failure after a success (or ever), and no report within the interval: log it.
    Started,
    /// Still failing; `failures` since the last report (this one included): log a summary.
    Continuing { failures: u64 },
}

/// The state of one backend (or one misconfigured place), shared by every request.
///
/// At most one failure report per [`REPORT_INTERVAL`], and a recovery only after a reported
/// outage: a backend that fails every other request (a flaky store, a limiter that is full for
/// new keys only) gives two lines per interval, not two per request. The success path is one
/// relaxed load of a flag no request writes while the backend is up, so it costs nothing
/// measurable and contends with nothing.
#[derive(Debug)]
pub(crate) struct OutageLog {
    down: AtomicBool,
    /// Whether the current outage was logged (so its end is logged too).
    reported: AtomicBool,
    /// Failures since the last report.
    unreported: AtomicU64,
    /// Failures since the last logged recovery.
    total: AtomicU64,
    /// When the last report was logged: 1 + milliseconds since the process's first report, or
    /// 0 for never.
    last_report: AtomicU64,
}

fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A clone starts with no outage: it belongs to a layer being configured, not yet serving.
impl Clone for OutageLog {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl Default for OutageLog {
    fn default() -> Self {
        Self::new()
    }
}

impl OutageLog {
    pub(crate) const fn new() -> Self {
        Self {
            down: AtomicBool::new(false),
            reported: AtomicBool::new(false),
            unreported: AtomicU64::new(0),
            total: AtomicU64::new(0),
            last_report: AtomicU64::new(0),
        }
    }

    /// Records a failure; says what to log for it.
    pub(crate) fn failure(&self) -> Option<Report> {
        self.failure_at(now_ms())
    }

    fn failure_at(&self, now: u64) -> Option<Report> {
        self.total.fetch_add(1, Ordering::Relaxed);
        let failures = self.unreported.fetch_add(1, Ordering::Relaxed) + 1;
        let was_down = self.down.swap(true, Ordering::AcqRel);
        let last = self.last_report.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last - 1) >= REPORT_INTERVAL.as_millis() as u64;
        // One request wins the report of each interval.
        if !due
            || self
                .last_report
                .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        self.reported.store(true, Ordering::Relaxed);
        let failures = self.unreported.swap(0, Ordering::Relaxed).max(failures);
        Some(if was_down {
            Report::Continuing { failures }
        } else {
            Report::Started
        })
    }

    /// Records a success; returns the failures since the last logged recovery when it ends an
    /// outage that was reported.
    #[inline]
    pub(crate) fn success(&self) -> Option<u64> {
        if !self.down.load(Ordering::Relaxed) {
            return None;
        }
        self.recovered()
    }

    #[cold]
    fn recovered(&self) -> Option<u64> {
        if self.down.swap(false, Ordering::AcqRel) && self.reported.swap(false, Ordering::AcqRel) {
            Some(self.total.swap(0, Ordering::Relaxed))
        } else {
            None
        }
    }
}

/// An error and its sources, displayed as `error: cause: cause of the cause`, so that a log line
/// says why a backend failed, not only that it did.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

/// Logs a failure of `what` through `log` at WARN: when it starts, then once per interval with
/// the count of failures since.
macro_rules! warn_outage {
    ($log:expr, $error:expr, $what:literal) => {
        match $log.failure() {
            Some($crate::outage::Report::Started) => {
                tracing::warn!(target: "keygate", error = %$crate::outage::Chain(&$error), concat!($what, " unavailable"));
            }
            Some($crate::outage::Report::Continuing { failures }) => {
                tracing::warn!(
                    target: "keygate",
                    error = %$crate::outage::Chain(&$error),
                    failures,
                    concat!($what, " still unavailable; failures since the last report")
                );
            }
            None => {
                tracing::debug!(target: "keygate", error = %$crate::outage::Chain(&$error), concat!($what, " unavailable"));
            }
        }
    };
}

/// Logs that `what` answers again after an outage, if `log` says one just ended.
macro_rules! info_recovered {
    ($log:expr, $what:literal) => {
        if let Some(failures) = $log.success() {
            tracing::info!(target: "keygate", failures, concat!($what, " available again"));
        }
    };
}

/// Logs a misconfiguration met at request rate at ERROR: the first time, then once per interval
/// with the count.
macro_rules! error_misconfigured {
    ($($field:tt)*) => {{
        static LOG: $crate::outage::OutageLog = $crate::outage::OutageLog::new();
        match LOG.failure() {
            Some($crate::outage::Report::Started) => tracing::error!(target: "keygate", $($field)*),
            Some($crate::outage::Report::Continuing { failures }) => {
                tracing::error!(target: "keygate", failures, $($field)*)
            }
            None => {}
        }
    }};
}

pub(crate) use {error_misconfigured, info_recovered, warn_outage};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_when_it_starts_then_once_per_interval() {
        let log = OutageLog::new();
        assert_eq!(log.success(), None);
        assert_eq!(log.failure_at(1_000), Some(Report::Started));
        for t in 1_001..1_500 {
            assert_eq!(log.failure_at(t), None);
        }
        let interval = REPORT_INTERVAL.as_millis() as u64;
        assert_eq!(
            log.failure_at(1_000 + interval),
            Some(Report::Continuing { failures: 500 })
        );
        assert_eq!(log.failure_at(1_001 + interval), None);
        assert_eq!(log.success(), Some(502));
        assert_eq!(log.success(), None);
        // The next outage is a new one.
        assert_eq!(log.failure_at(90_000), Some(Report::Started));
    }

    #[test]
    fn a_logged_error_says_its_causes() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = crate::store::StoreError::unavailable(refused);
        assert_eq!(
            Chain(&error).to_string(),
            "the key store is unavailable: refused"
        );
    }

    #[test]
    fn a_backend_that_fails_every_other_request_is_reported_once_per_interval() {
        let log = OutageLog::new();
        let mut lines = 0;
        for t in 0..1_000 {
            lines += usize::from(log.failure_at(5_000 + t).is_some());
            lines += usize::from(log.success().is_some());
        }
        assert_eq!(lines, 2, "one warning and one recovery");
        let interval = REPORT_INTERVAL.as_millis() as u64;
        assert_eq!(log.failure_at(5_000 + interval), Some(Report::Started));
        assert_eq!(log.success(), Some(1_000), "every failure is counted");
    }
}
