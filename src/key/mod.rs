//! API keys: the secret a client presents, its SHA-256 digest, the key format and the record a
//! store keeps about it.
//!
//! A key is a secret. [`ApiKey`] wraps it so that `Debug` and `Display` never print it, wipes it
//! from memory on drop, and turns it into the only thing that is ever stored: its [`KeyDigest`].
//!
//! ```
//! use keygate::key::{ApiKey, KeyFormat};
//!
//! let format = KeyFormat::new("wk_live_").unwrap();
//! let key: ApiKey = format.generate();
//! assert!(format.check(key.expose_secret()).is_ok());
//! assert_eq!(format!("{key:?}"), "ApiKey(\"wk_live_…\")");
//! assert_eq!(key.digest(), ApiKey::new(key.expose_secret()).digest());
//! ```

mod format;
mod record;

pub(crate) use format::KeyFormats;
pub use format::{FormatError, KeyFormat};
pub use record::{Credits, KeyRecord, KeyStatus, Refill, Scopes};

use std::fmt;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// A presented or generated API key: a secret.
///
/// `Debug` and `Display` show only the non-secret prefix of a key made by
/// [`KeyFormat::generate`], and nothing of any other key (a prefix cannot be told from secret
/// characters in a key of unknown format). The memory holding the
/// key is wiped when the value is dropped.
///
/// ```
/// use keygate::key::ApiKey;
///
/// let key = ApiKey::new("legacy_3c1f9a0d2b");
/// assert_eq!(key.to_string(), "…");
/// assert_eq!(key.expose_secret(), "legacy_3c1f9a0d2b");
/// ```
#[derive(Clone)]
pub struct ApiKey {
    key: Box<str>,
    /// Length of the known, non-secret prefix (0 when unknown).
    prefix_len: usize,
}

impl ApiKey {
    /// Wraps a key given as text.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into().into_boxed_str(),
            prefix_len: 0,
        }
    }

    /// A key whose first `prefix_len` bytes are a known, public prefix.
    pub(crate) fn with_prefix(key: String, prefix_len: usize) -> Self {
        Self {
            prefix_len: prefix_len.min(key.len()),
            key: key.into_boxed_str(),
        }
    }

    /// The plaintext key. Show it to its owner once, when it is issued; never log it.
    pub fn expose_secret(&self) -> &str {
        &self.key
    }

    /// The SHA-256 digest under which stores keep this key.
    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of(&self.key)
    }

    /// The part of the key that is safe to show.
    fn public_prefix(&self) -> &str {
        self.key.get(..self.prefix_len).unwrap_or("")
    }
}

impl Drop for ApiKey {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey(\"{}…\")", self.public_prefix())
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", self.public_prefix())
    }
}

impl PartialEq for ApiKey {
    /// Compares in constant time.
    fn eq(&self, other: &Self) -> bool {
        self.key.as_bytes().ct_eq(other.key.as_bytes()).into()
    }
}

impl Eq for ApiKey {}

/// The SHA-256 digest of an API key: what stores keep and look keys up by.
///
/// Keys carry at least 128 bits of randomness, so a fast hash is the right one: nobody can search
/// the key space, and the digest alone does not let anyone call the API. Equality is decided in
/// constant time. `Debug` shows the first four bytes only, which is enough to tell digests apart in
/// a log and too little to look one up.
///
/// ```
/// use keygate::key::KeyDigest;
///
/// let d = KeyDigest::of("abc");
/// assert_eq!(
///     d.to_hex(),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// assert_eq!(KeyDigest::from_hex(&d.to_hex()), Some(d));
/// ```
#[derive(Clone, Copy, Eq)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// The digest of a key given as text.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// A digest from its 32 raw bytes (as read from a database column).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hexadecimal, 64 characters.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 0xf) as usize] as char);
        }
        s
    }

    /// Parses 64 hexadecimal characters (either case).
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = (nibble(hex[2 * i])? << 4) | nibble(hex[2 * i + 1])?;
        }
        Some(Self(out))
    }
}

impl PartialEq for KeyDigest {
    /// Compares in constant time: the four 64-bit words of each digest are XORed and the
    /// differences ORed together, with one comparison at the end and no branch on the bytes.
    /// (A byte-by-byte constant-time compare costs a map lookup ten times as much.)
    fn eq(&self, other: &Self) -> bool {
        let mut diff = 0u64;
        for (a, b) in self.0.chunks_exact(8).zip(other.0.chunks_exact(8)) {
            let word = |w: &[u8]| u64::from_ne_bytes(w.try_into().unwrap_or_default());
            diff |= word(a) ^ word(b);
        }
        diff == 0
    }
}

impl std::hash::Hash for KeyDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyDigest({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// Digests are SHA-256 outputs, already uniform: their first eight bytes are a good hash, and
/// skipping SipHash saves its cost on every lookup. Only the operator inserts keys, so nobody can
/// flood one bucket.
#[derive(Default)]
pub(crate) struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_stable_sha256() {
        // FIPS 180-2 test vector.
        assert_eq!(
            KeyDigest::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let key = ApiKey::new("wk_live_example");
        assert_eq!(key.digest(), KeyDigest::of("wk_live_example"));
        assert_ne!(key.digest(), KeyDigest::of("wk_live_examplf"));
    }

    #[test]
    fn digests_differing_in_any_byte_are_unequal() {
        let digest = KeyDigest::of("wk_live_example");
        assert_eq!(digest, KeyDigest::from_bytes(*digest.as_bytes()));
        for i in 0..32 {
            for bit in [0x01, 0x80] {
                let mut bytes = *digest.as_bytes();
                bytes[i] ^= bit;
                let changed = KeyDigest::from_bytes(bytes);
                assert_ne!(digest, changed, "byte {i}, bit {bit:#x}");
            }
        }
    }

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let d = KeyDigest::of("x");
        assert_eq!(KeyDigest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(KeyDigest::from_hex(&d.to_hex().to_uppercase()), Some(d));
        assert_eq!(KeyDigest::from_hex("zz"), None);
        assert_eq!(KeyDigest::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn secrets_never_printed() {
        let key = ApiKey::new("wk_live_SECRETSECRETSECRETSECRETSECRET");
        let shown = format!("{key:?} {key}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(
            !shown.contains("wk_"),
            "prefix of a key of unknown format: {shown}"
        );
        let generated = KeyFormat::new("wk_live_").unwrap().generate();
        assert_eq!(format!("{generated}"), "wk_live_…");
        let legacy = ApiKey::new("SECRET_x");
        assert!(!format!("{legacy:?} {legacy}").contains("SECRET"));
        let digest = format!("{:?}", KeyDigest::of("k"));
        assert!(digest.len() < 24, "{digest}");
    }
}
