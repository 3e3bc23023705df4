//! API keys: stored as SHA-256 hex, compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::{ApiKeyEntry, AuthConfigError};

/// Bytes of randomness in a generated key.
const KEY_BYTES: usize = 32;
/// Prefix of generated keys, so that leaked keys are recognisable.
pub const KEY_PREFIX: &str = "erk_";

/// The configured keys.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("count", &self.keys.len())
            .finish()
    }
}

impl ApiKeys {
    /// Parses the hex digests.
    ///
    /// # Errors
    /// [`AuthConfigError::Invalid`] naming the entry whose name is empty or
    /// whose digest is not 64 hex digits.
    pub fn new(entries: &[ApiKeyEntry]) -> Result<ApiKeys, AuthConfigError> {
        let keys = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                if e.name.is_empty() {
                    return Err(AuthConfigError::Invalid(format!(
                        "api_keys[{i}].name must not be empty"
                    )));
                }
                let digest = from_hex(e.sha256.trim()).ok_or_else(|| {
                    AuthConfigError::Invalid(format!(
                        "api_keys[{i}] ({}): sha256 must be 64 hex digits",
                        e.name
                    ))
                })?;
                Ok((e.name.clone(), digest))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ApiKeys { keys })
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The principal whose key is `presented`. Every configured digest is
    /// compared, in constant time, whatever matches.
    pub fn verify(&self, presented: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (name, expected) in &self.keys {
            if bool::from(expected.ct_eq(&digest)) && found.is_none() {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// Lowercase hex SHA-256 of `key`.
pub fn sha256_hex(key: &str) -> String {
    to_hex(&Sha256::digest(key.as_bytes()))
}

/// A new random key (`erk_` + 64 hex digits).
pub fn generate_key() -> String {
    let mut bytes = [0u8; KEY_BYTES];
    rand::fill(&mut bytes);
    format!("{KEY_PREFIX}{}", to_hex(&bytes))
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn from_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_verify_by_their_digest_only() {
        let key = generate_key();
        assert!(key.starts_with(KEY_PREFIX));
        let keys = ApiKeys::new(&[ApiKeyEntry {
            name: "planner".into(),
            sha256: sha256_hex(&key),
        }])
        .unwrap();
        assert_eq!(keys.verify(&key), Some("planner"));
        assert_eq!(keys.verify("erk_wrong"), None);
        assert_eq!(keys.verify(&sha256_hex(&key)), None);
    }

    #[test]
    fn bad_digests_are_named() {
        let e = ApiKeys::new(&[ApiKeyEntry {
            name: "x".into(),
            sha256: "zz".into(),
        }])
        .unwrap_err();
        assert!(e.to_string().contains("api_keys[0] (x)"), "{e}");
    }
}
