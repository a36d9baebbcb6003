//! One pass over a token's payload that reads the registered claims and the few others keygate
//! needs (subject, scopes, tier), skipping the rest.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use serde::Deserialize;

/// The claim names a verifier reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimNames {
    pub(crate) subject: Box<str>,
    pub(crate) tier: Option<Box<str>>,
    pub(crate) quota: Option<Box<str>>,
    pub(crate) owner: Option<Box<str>>,
    pub(crate) credits: Option<Box<str>>,
    /// The one claim holding the scopes; `None`: `scope`, `scp` and `permissions`.
    pub(crate) scope: Option<Box<str>>,
}

/// What keygate reads from a payload.
#[derive(Debug, Default)]
pub(crate) struct Registered {
    pub(crate) exp: Option<u64>,
    pub(crate) nbf: Option<u64>,
    pub(crate) iat: Option<u64>,
    pub(crate) iss: Option<String>,
    pub(crate) aud: Vec<String>,
    pub(crate) jti: Option<String>,
    pub(crate) sub: Option<String>,
    pub(crate) scopes: Vec<String>,
    pub(crate) tier: Option<String>,
    pub(crate) quota: Option<String>,
    pub(crate) owner: Option<String>,
    pub(crate) credits: bool,
}

impl Registered {
    pub(crate) fn parse(payload: &[u8], names: &ClaimNames) -> Result<Self, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(payload);
        let r = Seed(names).deserialize(&mut de)?;
        de.end()?;
        Ok(r)
    }
}

impl Registered {
    /// Adds the scopes of a scope claim: space-separated strings, one or many.
    fn add_scopes(&mut self, OneOrMany(list): OneOrMany) {
        for s in list {
            self.scopes
                .extend(s.split(' ').filter(|s| !s.is_empty()).map(String::from));
        }
    }
}

struct Seed<'a>(&'a ClaimNames);

#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Registered;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Registered, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Registered;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Registered, A::Error> {
        let mut r = Registered::default();
        let mut seen = Seen::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let k = &*key;
            // A member named twice is refused (RFC 7519 §4, RFC 8725 §3.1): two readers of one
            // token must never disagree on its claims, as one that takes the first value and
            // one that takes the last would.
            if !seen.first(&key, self.0) {
                return Err(de::Error::custom("a claim appears more than once"));
            }
            if k == &*self.0.subject && matches!(k, "iss" | "jti") {
                // A registered claim used as the subject (`.subject_claim("iss")`) still counts
                // as itself, for the issuer rule and revocation by `jti`.
                let value: String = map.next_value()?;
                r.sub = Some(value.clone());
                if k == "iss" {
                    r.iss = Some(value);
                } else {
                    r.jti = Some(value);
                }
            } else if k == &*self.0.subject {
                r.sub = Some(map.next_value::<Subject>()?.0);
            } else if self.0.tier.as_deref() == Some(k) {
                r.tier = Some(map.next_value::<Subject>()?.0);
            } else if self.0.quota.as_deref() == Some(k) {
                r.quota = Some(map.next_value()?);
            } else if self.0.owner.as_deref() == Some(k) {
                r.owner = Some(map.next_value::<Subject>()?.0);
            } else if self.0.credits.as_deref() == Some(k) {
                r.credits = map.next_value::<bool>()?;
            } else if self.0.scope.as_deref() == Some(k) {
                r.add_scopes(map.next_value()?);
            } else {
                match k {
                    "exp" => r.exp = Some(map.next_value::<NumericDate>()?.0),
                    "nbf" => r.nbf = Some(map.next_value::<NumericDate>()?.0),
                    "iat" => r.iat = Some(map.next_value::<NumericDate>()?.0),
                    "iss" => r.iss = Some(map.next_value()?),
                    "jti" => r.jti = Some(map.next_value()?),
                    "aud" => r.aud = map.next_value::<OneOrMany>()?.0,
                    "scope" | "scp" | "permissions" if self.0.scope.is_none() => {
                        r.add_scopes(map.next_value()?);
                    }
                    _ => {
                        map.next_value::<Skip>()?;
                    }
                }
            }
        }
        Ok(r)
    }
}

/// The members a payload has named so far: a bit for each claim keygate reads, a set (made
/// only when needed) for the others.
#[derive(Default)]
struct Seen<'de> {
    known: u16,
    others: Option<hashbrown::HashSet<Cow<'de, str>, foldhash::fast::RandomState>>,
}

impl<'de> Seen<'de> {
    /// Whether this is the first time `key` is named.
    // The `Cow` itself is kept (a borrowed key costs no copy), so a `&str` would not do.
    #[allow(clippy::ptr_arg)]
    fn first(&mut self, key: &Cow<'de, str>, names: &ClaimNames) -> bool {
        let bit = if **key == *names.subject {
            Some(0)
        } else if names.tier.as_deref() == Some(&**key) {
            Some(1)
        } else if names.quota.as_deref() == Some(&**key) {
            Some(KNOWN.len() + 2)
        } else if names.owner.as_deref() == Some(&**key) {
            Some(KNOWN.len() + 3)
        } else if names.credits.as_deref() == Some(&**key) {
            Some(KNOWN.len() + 4)
        } else if names.scope.as_deref() == Some(&**key) {
            Some(KNOWN.len() + 5)
        } else {
            KNOWN.iter().position(|k| *k == &**key).map(|i| i + 2)
        };
        match bit {
            Some(bit) => {
                let mask = 1u16 << bit;
                let first = self.known & mask == 0;
                self.known |= mask;
                first
            }
            None => self.others.get_or_insert_default().insert(key.clone()),
        }
    }
}

/// The claims keygate reads besides the configured subject and tier claims.
const KNOWN: [&str; 9] = [
    "exp",
    "nbf",
    "iat",
    "iss",
    "jti",
    "aud",
    "scope",
    "scp",
    "permissions",
];

/// The `iss` of a payload (the first, if named twice: the verifier it is routed to refuses
/// such a payload anyway), reading nothing else.
pub(crate) fn issuer_of(payload: &[u8]) -> Result<Option<String>, serde_json::Error> {
    struct Iss;
    impl<'de> Visitor<'de> for Iss {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object of claims")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
            let mut iss = None;
            while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                if &*key == "iss" && iss.is_none() {
                    iss = Some(map.next_value::<String>()?);
                } else {
                    // serde_json skips without recursing; the verifier's own parse, which
                    // follows, refuses what is nested too deep.
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(iss)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(payload);
    let iss = de.deserialize_map(Iss)?;
    de.end()?;
    Ok(iss)
}

/// Skips a value like `IgnoredAny`, but through `deserialize_any`, so the JSON parser's nesting
/// limit applies: a payload nested a thousand levels deep is refused, not walked.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_unit<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
                while map.next_entry::<IgnoredAny, Skip>()?.is_some() {}
                Ok(Skip)
            }
        }
        d.deserialize_any(V)
    }
}

/// RFC 7519 NumericDate: a non-negative JSON number of seconds (fractions are dropped).
struct NumericDate(u64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumericDate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumericDate, E> {
                Ok(NumericDate(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumericDate, E> {
                u64::try_from(v)
                    .map(NumericDate)
                    .map_err(|_| E::custom("negative date"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumericDate, E> {
                if (0.0..1e15).contains(&v) {
                    Ok(NumericDate(v as u64))
                } else {
                    Err(E::custom("date out of range"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A subject: a string, or an integer (as in `{"userId": 12345}`, which many services mint), stringified.
struct Subject(String);

impl<'de> Deserialize<'de> for Subject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Subject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Subject, E> {
                Ok(Subject(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Subject, E> {
                Ok(Subject(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Subject, E> {
                Ok(Subject(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Subject, E> {
                Ok(Subject(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string or an array of strings (`aud`, `scp`).
struct OneOrMany(Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    if v.len() >= 256 {
                        return Err(de::Error::custom("too many entries"));
                    }
                    v.push(s);
                }
                Ok(OneOrMany(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> ClaimNames {
        ClaimNames {
            subject: "sub".into(),
            tier: Some("tier".into()),
            quota: None,
            owner: None,
            credits: None,
            scope: None,
        }
    }

    #[test]
    fn reads_what_it_needs() {
        let r = Registered::parse(
            br#"{"sub":"u1","exp":1700000000.5,"aud":["a","b"],"scope":"x y","scp":["z"],
                "tier":"gold","other":{"deep":[1,2,3]},"iss":"me","jti":"j","nbf":1,"iat":2}"#,
            &names(),
        )
        .unwrap();
        assert_eq!(r.sub.as_deref(), Some("u1"));
        assert_eq!(r.exp, Some(1_700_000_000));
        assert_eq!(r.aud, ["a", "b"]);
        assert_eq!(r.scopes, ["x", "y", "z"]);
        assert_eq!(r.tier.as_deref(), Some("gold"));
        assert_eq!((r.nbf, r.iat), (Some(1), Some(2)));
    }

    #[test]
    fn numeric_subject_and_rejections() {
        let n = ClaimNames {
            subject: "userId".into(),
            tier: None,
            quota: None,
            owner: None,
            credits: None,
            scope: None,
        };
        let r = Registered::parse(br#"{"userId":12345}"#, &n).unwrap();
        assert_eq!(r.sub.as_deref(), Some("12345"));
        for bad in [
            &br#"{"exp":"1700000000"}"#[..],
            br#"{"exp":-1}"#,
            br#"[1,2]"#,
            br#""str""#,
            br#"{"aud":5}"#,
            br#"{"sub":true}"#,
            br#"{"a":1} trailing"#,
        ] {
            assert!(
                Registered::parse(bad, &names()).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for duplicated in [
            &br#"{"scope":"a","scope":"b"}"#[..],
            br#"{"sub":"u1","sub":"admin"}"#,
            br#"{"exp":1,"exp":99999999999}"#,
            br#"{"tier":"free","tier":"gold"}"#,
            br#"{"scope":"a","sc\u006fpe":"admin"}"#,
            br#"{"x":1,"y":2,"x":3}"#,
        ] {
            assert!(
                Registered::parse(duplicated, &names()).is_err(),
                "{}",
                String::from_utf8_lossy(duplicated)
            );
        }
        // The same names in nested objects are no duplicates.
        assert!(Registered::parse(br#"{"a":{"sub":1},"b":{"sub":2},"sub":"u"}"#, &names()).is_ok());
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(1000), "]".repeat(1000));
        assert!(Registered::parse(deep.as_bytes(), &names()).is_err());
    }
}
