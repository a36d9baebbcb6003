//! Which scopes a route requires (one, all of several, or any of several), and the check of a
//! caller's scopes against them.

use std::fmt;
use std::sync::Arc;

use crate::error::InsufficientScope;

/// The scopes a [`RequireScopeLayer`](super::RequireScopeLayer) requires. Built once, at
/// configuration; checking it against a caller allocates nothing unless the caller is refused.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ScopeExpr {
    /// Valid, distinct, in the order given; never empty.
    scopes: Arc<[Arc<str>]>,
    /// Whether any one of `scopes` is enough (else all are needed). Never set for one scope.
    any: bool,
}

impl ScopeExpr {
    /// Exactly `scope`.
    ///
    /// # Panics
    ///
    /// If `scope` is not a valid RFC 6749 scope.
    pub(crate) fn one(scope: Arc<str>) -> Self {
        check_scope(&scope);
        Self {
            scopes: Arc::from([scope]),
            any: false,
        }
    }

    /// Every scope of `scopes` (`any == false`), or any one of them.
    ///
    /// # Panics
    ///
    /// If `scopes` is empty or one of them is not a valid RFC 6749 scope; `what` names the
    /// constructor in the message.
    pub(crate) fn list<S: Into<Arc<str>>>(
        scopes: impl IntoIterator<Item = S>,
        any: bool,
        what: &str,
    ) -> Self {
        let mut distinct: Vec<Arc<str>> = Vec::new();
        for scope in scopes {
            let scope = scope.into();
            check_scope(&scope);
            // Configuration-time and short: a linear search keeps the order as written.
            if !distinct.contains(&scope) {
                distinct.push(scope);
            }
        }
        assert!(
            !distinct.is_empty(),
            "{what} needs at least one scope: an empty list would let every caller through \
             (all of none) or none (any of none)"
        );
        Self {
            any: any && distinct.len() > 1,
            scopes: distinct.into(),
        }
    }

    /// `Ok` when a caller that has the scopes for which `has` is true may pass; else what it
    /// lacks. Allocates only on the way to `Err`.
    pub(crate) fn check(&self, has: impl Fn(&str) -> bool) -> Result<(), InsufficientScope> {
        let passes = if self.any {
            self.scopes.iter().any(|s| has(s))
        } else {
            self.scopes.iter().all(|s| has(s))
        };
        if passes {
            return Ok(());
        }
        let missing = (!self.any).then(|| {
            self.scopes
                .iter()
                .filter(|s| !has(s))
                .cloned()
                .collect::<Box<[_]>>()
        });
        Err(InsufficientScope::from_parts(self.scopes.clone(), missing))
    }
}

/// `weather:read`, `all of [a, b]` or `any of [a, b]`, for `Debug` output.
impl fmt::Debug for ScopeExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&*self.scopes, self.any) {
            ([one], _) => fmt::Debug::fmt(one, f),
            (all, false) => write!(f, "all of {all:?}"),
            (any, true) => write!(f, "any of {any:?}"),
        }
    }
}

/// The scopes, space-separated, after `any of ` when one is enough: for log fields.
impl fmt::Display for ScopeExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.any {
            f.write_str("any of ")?;
        }
        for (i, s) in self.scopes.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(s)?;
        }
        Ok(())
    }
}

/// # Panics
///
/// If `scope` is empty or has characters RFC 6749 §3.3 does not allow in a scope (space, `"`,
/// `\`, control characters): a configuration mistake, found at start.
fn check_scope(scope: &str) {
    assert!(
        is_scope(scope),
        "invalid scope {scope:?}: RFC 6749 scopes are printable ASCII without space, '\"' or '\\'"
    );
}

/// Whether `scope` is an RFC 6749 §3.3 scope token.
pub(crate) fn is_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(scopes: &[&str]) -> ScopeExpr {
        ScopeExpr::list(scopes.iter().copied(), false, "all")
    }

    fn any(scopes: &[&str]) -> ScopeExpr {
        ScopeExpr::list(scopes.iter().copied(), true, "any")
    }

    /// A caller with exactly `scopes`.
    fn has<'a>(scopes: &'a [&'a str]) -> impl Fn(&str) -> bool + 'a {
        move |s| scopes.contains(&s)
    }

    fn missing(e: &InsufficientScope) -> Vec<&str> {
        e.missing().collect()
    }

    #[test]
    fn one_scope() {
        let one = ScopeExpr::one("a".into());
        assert_eq!(one.check(has(&["a", "b"])), Ok(()));
        let e = one.check(has(&["b"])).unwrap_err();
        assert_eq!(e, InsufficientScope::new("a"));
        assert!(!e.is_any_of());
        assert_eq!(format!("{one:?} / {one}"), r#""a" / a"#);
    }

    #[test]
    fn all_of_needs_every_scope_and_names_the_missing_ones() {
        let expr = all(&["weather:read", "forecast:read", "x"]);
        assert_eq!(
            expr.check(has(&["x", "forecast:read", "weather:read"])),
            Ok(())
        );

        let e = expr.check(has(&["weather:read"])).unwrap_err();
        assert!(!e.is_any_of());
        assert_eq!(
            e.required().collect::<Vec<_>>(),
            ["weather:read", "forecast:read", "x"]
        );
        assert_eq!(missing(&e), ["forecast:read", "x"]);

        let e = expr.check(has(&[])).unwrap_err();
        assert_eq!(missing(&e), ["weather:read", "forecast:read", "x"]);
        assert_eq!(
            expr.check(has(&["x", "forecast:read"])).unwrap_err(),
            InsufficientScope::all_of(["weather:read", "forecast:read", "x"], ["weather:read"])
        );
    }

    #[test]
    fn any_of_needs_one_scope() {
        let expr = any(&["alerts:read", "weather:admin"]);
        assert_eq!(expr.check(has(&["alerts:read"])), Ok(()));
        assert_eq!(expr.check(has(&["weather:admin", "other"])), Ok(()));
        let e = expr.check(has(&["weather:read"])).unwrap_err();
        assert!(e.is_any_of());
        assert_eq!(missing(&e), ["alerts:read", "weather:admin"]);
        assert_eq!(
            e,
            InsufficientScope::any_of(["alerts:read", "weather:admin"])
        );
        assert_eq!(
            format!("{expr:?}"),
            r#"any of ["alerts:read", "weather:admin"]"#
        );
        assert_eq!(expr.to_string(), "any of alerts:read weather:admin");
    }

    #[test]
    fn duplicates_collapse_and_a_list_of_one_is_that_scope() {
        assert_eq!(all(&["a", "b", "a"]), all(&["a", "b"]));
        assert_eq!(any(&["a", "a"]), ScopeExpr::one("a".into()));
        assert_eq!(all(&["a"]), ScopeExpr::one("a".into()));
        // Refused alike, too: the single-scope wording.
        assert_eq!(
            any(&["a", "a"]).check(has(&[])).unwrap_err(),
            InsufficientScope::new("a")
        );
        assert_eq!(format!("{:?}", all(&["a", "b"])), r#"all of ["a", "b"]"#);
        assert_eq!(all(&["a", "b"]).to_string(), "a b");
    }

    #[test]
    #[should_panic(expected = "all needs at least one scope")]
    fn an_empty_list_is_a_configuration_error() {
        let _ = all(&[]);
    }

    #[test]
    #[should_panic(expected = "invalid scope \"b c\"")]
    fn an_invalid_scope_in_a_list_is_a_configuration_error() {
        let _ = any(&["a", "b c"]);
    }

    #[test]
    fn valid_scopes_are_rfc_6749s() {
        for ok in ["!", "#", "[", "]", "~", "a:b/c.d"] {
            let _ = ScopeExpr::one(ok.into());
        }
        for bad in ["", " ", "\"", "\\", "\u{7f}", "é", "a\tb"] {
            let panicked = std::panic::catch_unwind(|| ScopeExpr::one(bad.into())).is_err();
            assert!(panicked, "{bad:?} was accepted");
        }
    }
}
