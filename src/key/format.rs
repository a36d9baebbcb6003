//! The key format: `<prefix><32 random base62 characters><6 base62 characters of CRC32>`.

use std::sync::Arc;

use super::ApiKey;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Random characters in a key: 32 × log2(62) ≈ 190 bits.
const RANDOM_LEN: usize = 32;
/// Characters of the checksum: 62^6 > 2^32, so every CRC32 fits.
const CHECKSUM_LEN: usize = 6;
const MAX_PREFIX_LEN: usize = 32;

/// Why a text is not a key of a [`KeyFormat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The prefix given to [`KeyFormat::new`] is empty, longer than 32 bytes, or has characters
    /// other than ASCII letters, digits, `_` and `-`.
    #[error("a key prefix is 1 to 32 ASCII letters, digits, '_' or '-'")]
    InvalidPrefix,
    /// The key does not start with the format's prefix.
    #[error("the key does not start with the expected prefix")]
    WrongPrefix,
    /// The key has the prefix but not the length of the format.
    #[error("the key has the wrong length")]
    WrongLength,
    /// The key has a character outside base62 after its prefix.
    #[error("the key has a character outside base62")]
    BadCharacter,
    /// The checksum does not match: a typo, a truncated copy, or a made-up key.
    #[error("the key's checksum does not match")]
    BadChecksum,
}

/// The format of the keys a service issues.
///
/// A key is an owner-chosen prefix (say `wk_live_`, so that a leaked key is recognised by secret
/// scanners and by people), 32 characters of base62 drawn from the operating system's random
/// generator (about 190 bits), and 6 base62 characters encoding the CRC32 of everything before
/// them — the scheme GitHub's tokens use. The checksum lets a service turn away typos and
/// made-up keys without asking its store.
///
/// ```
/// use keygate::key::{FormatError, KeyFormat};
///
/// let format = KeyFormat::new("wk_live_")?;
/// let key = format.generate();
/// assert_eq!(key.expose_secret().len(), "wk_live_".len() + 38);
/// assert!(format.check(key.expose_secret()).is_ok());
///
/// let mut typo = key.expose_secret().to_owned();
/// let c = if typo.ends_with('A') { "B" } else { "A" };
/// typo.replace_range(typo.len() - 1.., c);
/// assert_eq!(format.check(&typo), Err(FormatError::BadChecksum));
/// # Ok::<(), FormatError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFormat {
    prefix: Box<str>,
}

impl KeyFormat {
    /// A format with this prefix.
    pub fn new(prefix: &str) -> Result<Self, FormatError> {
        let ok = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX_LEN
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self {
                prefix: prefix.into(),
            })
        } else {
            Err(FormatError::InvalidPrefix)
        }
    }

    /// The prefix every key of this format starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The length of every key of this format, in bytes.
    pub fn key_len(&self) -> usize {
        self.prefix.len() + RANDOM_LEN + CHECKSUM_LEN
    }

    /// A new random key.
    ///
    /// # Panics
    ///
    /// If the operating system's random generator fails, which leaves no safe way to make a key.
    pub fn generate(&self) -> ApiKey {
        let mut key = String::with_capacity(self.key_len());
        key.push_str(&self.prefix);
        let mut buf = [0u8; 64];
        let mut filled = 0;
        while filled < RANDOM_LEN {
            getrandom::fill(&mut buf).expect("the operating system's random generator failed");
            for &b in &buf {
                // 248 = 4 × 62: rejecting the rest keeps every character equally likely.
                if b < 248 && filled < RANDOM_LEN {
                    key.push(ALPHABET[(b % 62) as usize] as char);
                    filled += 1;
                }
            }
        }
        let crc = crc32fast::hash(key.as_bytes());
        push_base62(&mut key, crc);
        ApiKey::with_prefix(key, self.prefix.len())
    }

    /// Whether `key` starts with this format's prefix (and so must pass [`check`](Self::check)).
    pub fn has_prefix(&self, key: &str) -> bool {
        key.starts_with(&*self.prefix)
    }

    /// Checks that `key` is a well-formed key of this format with a matching checksum.
    pub fn check(&self, key: &str) -> Result<(), FormatError> {
        let rest = key
            .strip_prefix(&*self.prefix)
            .ok_or(FormatError::WrongPrefix)?;
        if rest.len() != RANDOM_LEN + CHECKSUM_LEN {
            return Err(FormatError::WrongLength);
        }
        if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(FormatError::BadCharacter);
        }
        let (body, checksum) = key.split_at(key.len() - CHECKSUM_LEN);
        if base62(crc32fast::hash(body.as_bytes())) == checksum.as_bytes() {
            Ok(())
        } else {
            Err(FormatError::BadChecksum)
        }
    }
}

/// The key formats an [`AuthLayer`](crate::auth::AuthLayer) checks keys against, each of an
/// environment or of none, longest prefix first.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyFormats {
    formats: Vec<(KeyFormat, Option<Arc<str>>)>,
}

/// A format's prefix is already that of another environment's format (or of the format without
/// one, `None`).
#[derive(Debug)]
pub(crate) struct PrefixTaken {
    pub(crate) prefix: Box<str>,
    pub(crate) environment: Option<Arc<str>>,
}

impl KeyFormats {
    /// Adds `format`, of `environment`. The same format of the same environment again changes
    /// nothing.
    pub(crate) fn add(
        &mut self,
        format: KeyFormat,
        environment: Option<Arc<str>>,
    ) -> Result<(), PrefixTaken> {
        if let Some((_, taken)) = self.formats.iter().find(|(f, _)| *f == format) {
            if *taken == environment {
                return Ok(());
            }
            return Err(PrefixTaken {
                prefix: format.prefix,
                environment: taken.clone(),
            });
        }
        self.formats.push((format, environment));
        // Longest first, so that `wk_live_` is tried before `wk_`; stable, so that equal
        // lengths keep the order they were added in.
        self.formats
            .sort_by_key(|(f, _)| std::cmp::Reverse(f.prefix.len()));
        Ok(())
    }

    /// Checks `key` against the formats whose prefix it has: `Ok` with the environment of the
    /// one it passes (`None` for a format without one), `Ok(None)` when it has no format's
    /// prefix, the first format's error when it passes none.
    ///
    /// A key passes at most one of them: formats with different prefixes have keys of different
    /// lengths. So the longest matching prefix is the one a key of overlapping prefixes is read
    /// with, unless the key is a well-formed key of the shorter one. No allocation.
    pub(crate) fn check(&self, key: &str) -> Result<Option<&Arc<str>>, FormatError> {
        let mut refused = None;
        for (format, environment) in &self.formats {
            if !format.has_prefix(key) {
                continue;
            }
            match format.check(key) {
                Ok(()) => return Ok(environment.as_ref()),
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
        }
        refused.map_or(Ok(None), Err)
    }
}

/// Appends `n` as exactly six base62 digits, most significant first.
fn push_base62(out: &mut String, n: u32) {
    out.extend(base62(n).iter().map(|&b| b as char));
}

/// `n` as exactly six base62 digits, most significant first, on the stack.
fn base62(mut n: u32) -> [u8; CHECKSUM_LEN] {
    let mut digits = [b'0'; CHECKSUM_LEN];
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format() -> KeyFormat {
        KeyFormat::new("wk_live_").unwrap()
    }

    #[test]
    fn generated_keys_parse_and_differ() {
        let f = format();
        let a = f.generate();
        let b = f.generate();
        assert!(f.check(a.expose_secret()).is_ok());
        assert!(f.check(b.expose_secret()).is_ok());
        assert_ne!(a, b);
        assert_eq!(a.expose_secret().len(), f.key_len());
        assert!(f.has_prefix(a.expose_secret()));
    }

    #[test]
    fn checksum_rejects_every_one_character_change() {
        let f = format();
        let key = f.generate();
        let s = key.expose_secret();
        for i in f.prefix().len()..s.len() {
            for &c in ALPHABET.iter() {
                if s.as_bytes()[i] == c {
                    continue;
                }
                let mut changed = s.as_bytes().to_vec();
                changed[i] = c;
                let changed = String::from_utf8(changed).unwrap();
                assert_eq!(
                    f.check(&changed),
                    Err(FormatError::BadChecksum),
                    "position {i}"
                );
            }
        }
    }

    #[test]
    fn rejects_wrong_shapes() {
        let f = format();
        let key = f.generate();
        let s = key.expose_secret();
        assert_eq!(
            f.check(&s.replace("wk_live_", "wk_test_")),
            Err(FormatError::WrongPrefix)
        );
        assert_eq!(f.check(&s[..s.len() - 1]), Err(FormatError::WrongLength));
        assert_eq!(f.check(&format!("{s}A")), Err(FormatError::WrongLength));
        let mut bad = s.to_owned();
        bad.replace_range(10..11, "!");
        assert_eq!(f.check(&bad), Err(FormatError::BadCharacter));
        assert_eq!(f.check(""), Err(FormatError::WrongPrefix));
        // Multi-byte characters must not cause a slicing panic.
        let multibyte = format!("wk_live_{}", "é".repeat(19));
        assert_eq!(f.check(&multibyte), Err(FormatError::BadCharacter));
    }

    #[test]
    fn prefix_rules() {
        assert!(KeyFormat::new("").is_err());
        assert!(KeyFormat::new("has space").is_err());
        assert!(KeyFormat::new(&"a".repeat(33)).is_err());
        assert!(KeyFormat::new("sk-proj-").is_ok());
    }

    #[test]
    fn formats_of_environments() {
        let live = KeyFormat::new("wk_live_").unwrap();
        let test = KeyFormat::new("wk_test_").unwrap();
        let short = KeyFormat::new("wk_").unwrap();
        let mut formats = KeyFormats::default();
        formats.add(short.clone(), None).unwrap();
        formats.add(live.clone(), Some("live".into())).unwrap();
        formats.add(test.clone(), Some("test".into())).unwrap();
        // The same format of the same environment again is no change; of another, an error.
        formats.add(live.clone(), Some("live".into())).unwrap();
        let taken = formats.add(live.clone(), Some("test".into())).unwrap_err();
        assert_eq!(&*taken.prefix, "wk_live_");
        assert_eq!(taken.environment.as_deref(), Some("live"));
        assert!(formats.add(short.clone(), Some("x".into())).is_err());

        let env = |key: &ApiKey| formats.check(key.expose_secret()).map(|e| e.cloned());
        assert_eq!(env(&live.generate()), Ok(Some("live".into())));
        assert_eq!(env(&test.generate()), Ok(Some("test".into())));
        // A key of the shorter prefix is read with it, even where a longer one matches too.
        assert_eq!(env(&short.generate()), Ok(None));
        // Overlapping prefixes: a key of `kg` whose random part starts with `A` has the prefix
        // `kgA` too, and is still read as a key of `kg`.
        let mut overlapping = KeyFormats::default();
        let kg = KeyFormat::new("kg").unwrap();
        overlapping.add(kg.clone(), Some("kg".into())).unwrap();
        overlapping
            .add(KeyFormat::new("kgA").unwrap(), Some("kgA".into()))
            .unwrap();
        let key = std::iter::repeat_with(|| kg.generate())
            .take(10_000)
            .find(|k| k.expose_secret().starts_with("kgA"))
            .unwrap();
        let found = overlapping.check(key.expose_secret()).unwrap();
        assert_eq!(found.map(|e| &**e), Some("kg"));
        assert_eq!(formats.check("legacy_123"), Ok(None));
        // A longer prefix's key with a bad checksum is refused by that format.
        let mut typo = live.generate().expose_secret().to_owned();
        let c = if typo.ends_with('A') { "B" } else { "A" };
        typo.replace_range(typo.len() - 1.., c);
        assert_eq!(formats.check(&typo), Err(FormatError::BadChecksum));
    }

    #[test]
    fn base62_checksum_is_fixed_width() {
        let mut s = String::new();
        push_base62(&mut s, 0);
        assert_eq!(s, "000000");
        s.clear();
        push_base62(&mut s, u32::MAX);
        assert_eq!(s, "4gfFC3");
    }
}
