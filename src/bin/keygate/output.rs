//! What the commands print: text for people, or JSON of the admin API's shapes.
//!
//! A record as JSON is exactly the admin API's RECORD (see `keygate::admin`): `id`, `owner`,
//! `scopes`, `status`, `quota`, `tier`, `credits`, `allowed_ips`, `expires_at`, `created_at`,
//! `metadata`; never a key, nor a key's digest. Times are RFC 3339 in UTC, to the second.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keygate::client_addr::Networks;
use keygate::key::{Credits, KeyRecord, KeyStatus, Scopes};
use keygate::ratelimit::UsageTotals;
use keygate::store::IssuedKey;
use serde::Serialize;

/// A record as JSON: the admin API's RECORD.
#[derive(Serialize)]
pub(crate) struct RecordView<'a> {
    id: &'a str,
    owner: &'a str,
    scopes: &'a Scopes,
    status: &'static str,
    quota: Option<String>,
    tier: Option<&'a str>,
    credits: Option<CreditsView>,
    allowed_ips: Option<&'a Networks>,
    expires_at: Option<String>,
    created_at: Option<String>,
    metadata: &'a BTreeMap<String, String>,
}

impl<'a> RecordView<'a> {
    pub(crate) fn of(record: &'a KeyRecord) -> Self {
        Self {
            id: &record.id,
            owner: &record.owner,
            scopes: &record.scopes,
            status: status_name(record.status),
            quota: record.quota.as_ref().map(ToString::to_string),
            tier: record.tier.as_deref(),
            credits: record.credits.as_ref().map(CreditsView::of),
            allowed_ips: record.allowed_ips.as_ref(),
            expires_at: record.expires_at.map(rfc3339),
            created_at: record.created_at.map(rfc3339),
            metadata: &record.metadata,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct CreditsView {
    remaining: u64,
    refill: Option<RefillView>,
}

#[derive(Serialize)]
struct RefillView {
    amount: u64,
    every: String,
}

impl CreditsView {
    pub(crate) fn of(credits: &Credits) -> Self {
        Self {
            remaining: credits.remaining,
            refill: credits.refill.map(|refill| RefillView {
                amount: refill.amount,
                every: duration_text(refill.every),
            }),
        }
    }
}

/// A key's request counts as JSON: the admin API's usage answer.
#[derive(Serialize)]
pub(crate) struct RequestsView {
    allowed: u64,
    limited: u64,
    last_used_at: Option<String>,
}

impl RequestsView {
    pub(crate) fn of(totals: &UsageTotals) -> Self {
        Self {
            allowed: totals.allowed,
            limited: totals.limited,
            last_used_at: totals.last_used_at.map(rfc3339),
        }
    }
}

fn status_name(status: KeyStatus) -> &'static str {
    match status {
        KeyStatus::Active => "active",
        KeyStatus::Revoked => "revoked",
        KeyStatus::Disabled => "disabled",
        // `KeyStatus` is non-exhaustive: a status added later is not usable until this tool
        // knows its name.
        _ => "unknown",
    }
}

/// `value` as pretty-printed JSON, and a newline.
pub(crate) fn json(value: &impl Serialize) -> String {
    // Serializing these views cannot fail: every map has string keys.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// An issued key and its record as JSON: `{"key": "...", "record": RECORD}`.
pub(crate) fn issued_json(issued: &IssuedKey) -> String {
    #[derive(Serialize)]
    struct View<'a> {
        key: &'a str,
        record: RecordView<'a>,
    }
    json(&View {
        key: issued.key.expose_secret(),
        record: RecordView::of(&issued.record),
    })
}

/// An issued key and its record as text: the key on the first line, then the record.
pub(crate) fn issued_text(issued: &IssuedKey) -> String {
    let mut out = format!("key: {}\n", issued.key.expose_secret());
    out.push_str(&record_text(&issued.record));
    out
}

/// A record as text: one `name: value` line per field.
pub(crate) fn record_text(record: &KeyRecord) -> String {
    let none = || "none".to_owned();
    let scopes = if record.scopes.is_empty() {
        none()
    } else {
        record.scopes.iter().collect::<Vec<_>>().join(" ")
    };
    let metadata = if record.metadata.is_empty() {
        none()
    } else {
        record
            .metadata
            .iter()
            .map(|(k, v)| format!("{}={}", printable(k), printable(v)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let fields = [
        ("id", printable(&record.id)),
        ("owner", printable(&record.owner)),
        ("status", status_name(record.status).to_owned()),
        ("scopes", scopes),
        (
            "quota",
            record.quota.as_ref().map_or_else(none, ToString::to_string),
        ),
        ("tier", record.tier.as_deref().map_or_else(none, printable)),
        (
            "credits",
            record.credits.as_ref().map_or_else(none, credits_text),
        ),
        (
            "allowed ips",
            record
                .allowed_ips
                .as_ref()
                .map_or_else(|| "anywhere".to_owned(), ToString::to_string),
        ),
        (
            "expires at",
            record
                .expires_at
                .map_or_else(|| "never".to_owned(), rfc3339),
        ),
        (
            "created at",
            record
                .created_at
                .map_or_else(|| "unknown".to_owned(), rfc3339),
        ),
        ("metadata", metadata),
    ];
    lines(&fields)
}

/// A key's credits as text, such as `950 (set back to 1000 every 1d)`.
pub(crate) fn credits_text(credits: &Credits) -> String {
    match credits.refill {
        Some(refill) => format!(
            "{} (set back to {} every {})",
            credits.remaining,
            refill.amount,
            duration_text(refill.every)
        ),
        None => format!("{} (never refilled)", credits.remaining),
    }
}

/// `name: value` lines, the values aligned.
pub(crate) fn lines(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(name, _)| name.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (name, value) in fields {
        let label = format!("{name}:");
        let _ = writeln!(out, "{label:<width$} {value}");
    }
    out
}

/// An owner's records as a table: a header, then one line per record.
pub(crate) fn list_text(records: &[KeyRecord]) -> String {
    let header = ["ID", "STATUS", "SCOPES", "QUOTA", "EXPIRES AT"];
    let rows: Vec<[String; 5]> = records
        .iter()
        .map(|r| {
            [
                printable(&r.id),
                status_name(r.status).to_owned(),
                if r.scopes.is_empty() {
                    "-".to_owned()
                } else {
                    r.scopes.iter().collect::<Vec<_>>().join(",")
                },
                r.quota
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |q| q.to_string().replace(' ', "")),
                r.expires_at.map_or_else(|| "never".to_owned(), rfc3339),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

/// `text` as it is when it has no control character, else quoted with Rust's escapes: what a
/// store holds is printed, never interpreted by the terminal.
fn printable(text: &str) -> String {
    if text.chars().any(char::is_control) {
        format!("{text:?}")
    } else {
        text.to_owned()
    }
}

/// A refill interval as the admin API writes it: whole days, hours, minutes or seconds (`1d`,
/// `12h`, `15min`, `30s`), else `ms` or `us`.
fn duration_text(every: Duration) -> String {
    if every.subsec_nanos() == 0 {
        let secs = every.as_secs();
        return match secs {
            s if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
            s if s.is_multiple_of(3600) => format!("{}h", s / 3600),
            s if s.is_multiple_of(60) => format!("{}min", s / 60),
            s => format!("{s}s"),
        };
    }
    if every.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{}ms", every.as_millis());
    }
    format!("{}us", every.as_micros())
}

/// `9999-12-31T23:59:59Z`, in seconds from the Unix epoch: the last time RFC 3339 can write.
const MAX_RFC3339_SECS: u64 = 253_402_300_799;

/// `t` in RFC 3339, UTC, to the second (rounded down), such as `2026-12-02T05:59:00Z`. A time
/// past the year 9999 is written as `9999-12-31T23:59:59Z` (as the admin API does), one before
/// 1970 as the epoch (which no store sets: they set times from their clocks).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().min(MAX_RFC3339_SECS));
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate::Quota;
    use keygate::key::Refill;

    #[test]
    fn times() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_780_379_940_900);
        assert_eq!(rfc3339(t), "2026-06-02T05:59:00Z");
        let far = UNIX_EPOCH + Duration::from_secs(400 * 365 * 86_400 * 100);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn record_json_is_the_admin_shape() {
        let record = KeyRecord::new("key_1", "acme")
            .with_scopes(["b", "a"])
            .with_quota(Quota::per_minute(100))
            .with_credits(Credits::new(5).with_refill(Refill::new(10, Duration::from_secs(86_400))))
            .with_metadata("plan", "pro");
        let value: serde_json::Value =
            serde_json::from_str(&json(&RecordView::of(&record))).unwrap();
        let mut keys: Vec<&str> = value.as_object().unwrap().keys().map(|k| &**k).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "allowed_ips",
                "created_at",
                "credits",
                "expires_at",
                "id",
                "metadata",
                "owner",
                "quota",
                "scopes",
                "status",
                "tier"
            ]
        );
        assert_eq!(value["scopes"], serde_json::json!(["a", "b"]));
        assert_eq!(value["quota"], "100/min");
        assert_eq!(
            value["credits"],
            serde_json::json!({"remaining": 5, "refill": {"amount": 10, "every": "1d"}})
        );
        assert_eq!(value["expires_at"], serde_json::Value::Null);
    }

    #[test]
    fn text_never_lets_control_characters_through() {
        let record = KeyRecord::new("key_1", "acme").with_metadata("note", "\x1b[31mred");
        let text = record_text(&record);
        assert!(!text.contains('\x1b'), "{text}");
        assert!(text.contains(r"\u{1b}[31mred"), "{text}");
        let table = list_text(&[record]);
        assert!(table.starts_with("ID "), "{table}");
        assert_eq!(table.lines().count(), 2, "{table}");
    }
}
