//! The parsers of the command line's values. Each answers a sentence clap prints after
//! `error: invalid value ... for '--option'`, and the command exits with status 2.

use std::time::Duration;

use keygate::Limits;
use keygate::key::KeyFormat;

/// The longest `--expires-in` and `--grace`: 100 years, as the admin API allows.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);
/// The longest scope, in bytes (the admin API's rule).
const MAX_SCOPE_LEN: usize = 256;

/// A duration such as `30d`, `12h`, `15m`, `90s` or `1h 30m` (humantime's syntax: `m` is
/// minutes, `M` months), at most 100 years.
fn duration(text: &str) -> Result<Duration, String> {
    let parsed = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{e}: a duration is a number and a unit, such as 30d, 12h, 15m or 90s")
    })?;
    if parsed > MAX_DURATION {
        return Err("a duration is at most 100 years".to_owned());
    }
    Ok(parsed)
}

/// `--expires-in`: at least one second.
pub(crate) fn expires_in(text: &str) -> Result<Duration, String> {
    let parsed = duration(text)?;
    if parsed < Duration::from_secs(1) {
        return Err("a key expires at least 1 second after it is issued".to_owned());
    }
    Ok(parsed)
}

/// `--grace`: zero retires the current keys at once.
pub(crate) fn grace(text: &str) -> Result<Duration, String> {
    duration(text)
}

/// `--timeout`: more than zero.
pub(crate) fn timeout(text: &str) -> Result<Duration, String> {
    let parsed = duration(text)?;
    if parsed.is_zero() {
        return Err("the timeout is more than zero".to_owned());
    }
    Ok(parsed)
}

/// `--quota`: the text form of [`Limits`], such as `100/min, 10000/d`.
pub(crate) fn limits(text: &str) -> Result<Limits, String> {
    text.parse::<Limits>().map_err(|e| e.to_string())
}

/// `--key-prefix`: the prefix of a [`KeyFormat`].
pub(crate) fn key_format(text: &str) -> Result<KeyFormat, String> {
    KeyFormat::new(text).map_err(|e| e.to_string())
}

/// `--scope`: 1 to 256 printable ASCII characters without space, `"` or `\` (what an RFC 6749
/// scope token is, and what the admin API accepts).
pub(crate) fn scope(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= MAX_SCOPE_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "a scope is 1 to {MAX_SCOPE_LEN} printable ASCII characters without space, '\"' or \
             '\\'"
        ))
    }
}

/// `--schema` and `--channel`: a plain PostgreSQL identifier, which the store writes into its
/// SQL text (1 to 63 lowercase ASCII letters, digits and `_`, not starting with a digit).
pub(crate) fn identifier(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 63
        && !text.starts_with(|c: char| c.is_ascii_digit())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(text.to_owned())
    } else {
        Err("1 to 63 lowercase ASCII letters, digits and '_', not starting with a digit".to_owned())
    }
}

/// The longest id or owner, in bytes: the admin API's limit.
const MAX_NAME_LEN: usize = 256;

/// `--owner` and `--id`: what the admin API accepts too (not blank, at most 256 bytes, no
/// control characters), so that the tool writes no record the API would refuse.
pub(crate) fn name(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        Err("the value is blank".to_owned())
    } else if text.len() > MAX_NAME_LEN {
        Err(format!("longer than {MAX_NAME_LEN} bytes"))
    } else if text.chars().any(char::is_control) {
        Err("has control characters".to_owned())
    } else {
        Ok(text.to_owned())
    }
}

/// A value that must not be empty (`--prefix`, `--usage-prefix`).
pub(crate) fn not_empty(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("the value is empty".to_owned())
    } else {
        Ok(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_admin_api() {
        assert_eq!(name("acme"), Ok("acme".to_owned()));
        assert!(name("").is_err() && name("  ").is_err());
        assert!(name("a\nb").is_err());
        assert!(name(&"x".repeat(257)).is_err());
        assert!(name(&"x".repeat(256)).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(expires_in("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(expires_in("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(expires_in("15m"), Ok(Duration::from_secs(15 * 60)));
        assert_eq!(expires_in("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(expires_in("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(expires_in("0s").is_err());
        assert!(expires_in("500ms").is_err());
        assert!(expires_in("30").is_err(), "a unit is required");
        assert!(expires_in("30x").is_err());
        assert!(expires_in("").is_err());
        assert!(expires_in("101y").is_err());
        assert_eq!(grace("0s"), Ok(Duration::ZERO));
        assert!(timeout("0s").is_err());
    }

    #[test]
    fn scopes_identifiers_and_prefixes() {
        assert!(scope("weather:read").is_ok());
        assert!(scope("").is_err());
        assert!(scope("a b").is_err());
        assert!(scope("a\"b").is_err());
        assert!(scope(&"a".repeat(257)).is_err());
        assert!(identifier("keygate_1").is_ok());
        assert!(identifier("1keygate").is_err());
        assert!(identifier("Public").is_err());
        assert!(identifier("a;drop").is_err());
        assert!(key_format("wk_live_").is_ok());
        assert!(key_format("has space").is_err());
        assert!(limits("100/min, 10000/d").is_ok());
        assert!(limits("10/fortnight").unwrap_err().contains("unit"));
    }
}
