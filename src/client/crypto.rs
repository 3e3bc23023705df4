//! End-to-end payload encryption with AES-256-GCM, the same format as the
//! Python SDK's `encryption=` option (docs/patterns.md, "Encrypted
//! payloads"), so Rust and Python agents read each other's events.
//!
//! Only the payload is encrypted, into `{"ciphertext": "<base64>",
//! "nonce": "<base64>"}` (the ciphertext ends with the 16-byte tag); the
//! headers `encryption: aes-256-gcm` and `encryption-key-id: <id>` say which
//! key, and the event's type is authenticated with it. The router routes on
//! the envelope and never sees the payload; filters on payload fields
//! cannot match encrypted events. A wrong key, an unknown key id or a
//! tampered payload is a [`DecryptionError`], never garbage.
//!
//! # Examples
//! ```
//! use event_router::client::PayloadCipher;
//! use event_router::Event;
//!
//! let cipher = PayloadCipher::new("k1", &[7u8; 32]);
//! let mut event = Event::new("sensitive", serde_json::json!({"ssn": "123-45-6789"})).unwrap();
//! cipher.seal(&mut event).unwrap();
//! assert!(event.payload.get("ciphertext").is_some());
//! assert_eq!(cipher.open(&event).unwrap()["ssn"], "123-45-6789");
//! ```

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};

use crate::event::Event;

/// `encryption` header value.
pub const ALGORITHM: &str = "aes-256-gcm";
/// Header naming the algorithm.
pub const ALGORITHM_HEADER: &str = "encryption";
/// Header naming the key.
pub const KEY_ID_HEADER: &str = "encryption-key-id";

/// Why a payload did not decrypt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptionError {
    /// The event's headers do not say it is encrypted, or its payload is
    /// not an encrypted payload.
    #[error("the event is not encrypted")]
    NotEncrypted,
    /// No key has the event's key id.
    #[error("no key with id {0:?}")]
    UnknownKey(String),
    /// Wrong key, or tampered data.
    #[error(
        "payload of a {topic:?} event does not decrypt with key {key_id:?} (wrong key or tampered data)"
    )]
    Failed {
        /// The event's type.
        topic: String,
        /// The key tried.
        key_id: String,
    },
}

impl DecryptionError {
    /// Stable snake_case code, as the Python SDK's `DecryptionError.code`.
    pub fn code(&self) -> &'static str {
        match self {
            DecryptionError::NotEncrypted => "not_encrypted",
            DecryptionError::UnknownKey(_) => "unknown_key",
            DecryptionError::Failed { .. } => "decryption_failed",
        }
    }
}

/// Encrypts with one key, decrypts with any of its keys (keep old keys
/// after a rotation while their events are around).
pub struct PayloadCipher {
    key_id: String,
    keys: HashMap<String, LessSafeKey>,
    random: SystemRandom,
}

impl std::fmt::Debug for PayloadCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadCipher")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn key(bytes: &[u8; 32]) -> LessSafeKey {
    // Cannot fail: AES-256 keys are 32 bytes, which the type guarantees.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key"))
}

impl PayloadCipher {
    /// A cipher encrypting with `key` under the id `key_id`.
    pub fn new(key_id: impl Into<String>, key_bytes: &[u8; 32]) -> PayloadCipher {
        let key_id = key_id.into();
        let mut keys = HashMap::new();
        keys.insert(key_id.clone(), key(key_bytes));
        PayloadCipher {
            key_id,
            keys,
            random: SystemRandom::new(),
        }
    }

    /// Also decrypts events of key `key_id` (an older key).
    pub fn with_key(mut self, key_id: impl Into<String>, key_bytes: &[u8; 32]) -> PayloadCipher {
        self.keys.insert(key_id.into(), key(key_bytes));
        self
    }

    /// Replaces `event.payload` by its encryption and sets the headers.
    ///
    /// # Errors
    /// Only when the system random generator fails.
    pub fn seal(&self, event: &mut Event) -> Result<(), ring::error::Unspecified> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce)?;
        let mut data = serde_json::to_vec(&event.payload).unwrap_or_default();
        self.keys[&self.key_id].seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(event.topic.as_bytes()),
            &mut data,
        )?;
        event.payload = json!({
            "ciphertext": STANDARD.encode(&data),
            "nonce": STANDARD.encode(nonce),
        });
        event
            .headers
            .insert(ALGORITHM_HEADER.into(), ALGORITHM.into());
        event
            .headers
            .insert(KEY_ID_HEADER.into(), self.key_id.clone());
        Ok(())
    }

    /// The decrypted payload of `event`.
    ///
    /// # Errors
    /// See [`DecryptionError`].
    pub fn open(&self, event: &Event) -> Result<Value, DecryptionError> {
        if event.headers.get(ALGORITHM_HEADER) != Some(ALGORITHM) {
            return Err(DecryptionError::NotEncrypted);
        }
        let key_id = event
            .headers
            .get(KEY_ID_HEADER)
            .unwrap_or_default()
            .to_string();
        let key = self
            .keys
            .get(&key_id)
            .ok_or_else(|| DecryptionError::UnknownKey(key_id.clone()))?;
        let failed = || DecryptionError::Failed {
            topic: event.topic.clone(),
            key_id: key_id.clone(),
        };
        let field = |name: &str| {
            event
                .payload
                .get(name)
                .and_then(Value::as_str)
                .and_then(|text| STANDARD.decode(text).ok())
        };
        let (Some(mut data), Some(nonce)) = (field("ciphertext"), field("nonce")) else {
            return Err(DecryptionError::NotEncrypted);
        };
        let nonce = Nonce::try_assume_unique_for_key(&nonce).map_err(|_| failed())?;
        let plain = key
            .open_in_place(nonce, Aad::from(event.topic.as_bytes()), &mut data)
            .map_err(|_| failed())?;
        serde_json::from_slice(plain).map_err(|_| failed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event::new("sensitive", json!({"ssn": "123-45-6789"})).unwrap()
    }

    #[test]
    fn sealed_payloads_open_with_the_key_and_hide_the_payload() {
        let cipher = PayloadCipher::new("k1", &[1; 32]);
        let mut e = event();
        cipher.seal(&mut e).unwrap();
        assert!(!e.payload.to_string().contains("123-45-6789"));
        assert_eq!(e.headers.get("encryption").unwrap(), "aes-256-gcm");
        assert_eq!(e.headers.get("encryption-key-id").unwrap(), "k1");
        assert_eq!(cipher.open(&e).unwrap(), json!({"ssn": "123-45-6789"}));
    }

    #[test]
    fn wrong_keys_unknown_ids_tampering_and_plain_events_are_typed_errors() {
        let cipher = PayloadCipher::new("k1", &[1; 32]);
        let mut e = event();
        cipher.seal(&mut e).unwrap();
        let wrong = PayloadCipher::new("k1", &[2; 32]);
        assert_eq!(wrong.open(&e).unwrap_err().code(), "decryption_failed");
        let other = PayloadCipher::new("k2", &[1; 32]);
        assert_eq!(
            other.open(&e).unwrap_err(),
            DecryptionError::UnknownKey("k1".into())
        );
        let mut moved = e.clone();
        moved.topic = "public".into();
        assert_eq!(cipher.open(&moved).unwrap_err().code(), "decryption_failed");
        assert_eq!(
            cipher.open(&event()).unwrap_err(),
            DecryptionError::NotEncrypted
        );
        let rotated = PayloadCipher::new("k2", &[3; 32]).with_key("k1", &[1; 32]);
        assert_eq!(rotated.open(&e).unwrap()["ssn"], "123-45-6789");
    }

    #[test]
    fn payloads_sealed_by_the_python_sdk_open_here() {
        // Sealed by the Python SDK's format (cryptography's AESGCM) with key
        // bytes 0..32, nonce bytes 100..112 and type `sensitive`.
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut e = Event::new(
            "sensitive",
            json!({"ciphertext": "MzmtFRfLbLwPUGzF7lBHy3X6Pyj2Af4Ex4HmkA/JOMHe99sffA==", "nonce": "ZGVmZ2hpamtsbW5v"}),
        )
        .unwrap();
        e.headers.insert("encryption".into(), "aes-256-gcm".into());
        e.headers.insert("encryption-key-id".into(), "py".into());
        let cipher = PayloadCipher::new("py", &key);
        assert_eq!(cipher.open(&e).unwrap(), json!({"ssn": "123-45-6789"}));
    }
}
