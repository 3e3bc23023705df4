//! JWT verification: HS256 with a shared secret, RS256/ES256 with a PEM
//! public key, or any of those from a JWKS file (picked by `kid`).
//! `exp` is required; `exp`/`nbf` are checked with a leeway; `aud` and
//! `iss`, when configured, are required and checked. A token with a
//! `crit` header is refused (no extensions are understood).

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::config::{AuthConfigError, JwtConfig, read_file};

/// A verifier built from [`JwtConfig`].
pub struct JwtVerifier {
    keys: Keys,
    audience: Option<String>,
    issuer: Option<String>,
    principal_claim: String,
    leeway: u64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("principal_claim", &self.principal_claim)
            .finish_non_exhaustive()
    }
}

enum Keys {
    /// One key and the one algorithm it verifies.
    Single(DecodingKey, Algorithm),
    /// A key set: `(kid, key, algorithm)`.
    Set(Vec<(Option<String>, DecodingKey, Algorithm)>),
}

/// Why a token was rejected (shown to the client: no secrets in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JwtError(pub String);

impl JwtVerifier {
    /// Loads the key files.
    ///
    /// # Errors
    /// [`AuthConfigError`] naming the file, or when not exactly one key
    /// source is set.
    pub fn new(config: &JwtConfig) -> Result<JwtVerifier, AuthConfigError> {
        let sources = [
            config.hs256_secret_file.is_some(),
            config.rs256_public_key_file.is_some(),
            config.es256_public_key_file.is_some(),
            config.jwks_file.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(AuthConfigError::Invalid(
                "jwt: set exactly one of hs256_secret_file, rs256_public_key_file, \
                 es256_public_key_file, jwks_file"
                    .into(),
            ));
        }
        let invalid = |path: &std::path::Path, e: jsonwebtoken::errors::Error| {
            AuthConfigError::Invalid(format!("jwt: {}: {e}", path.display()))
        };
        let keys = if let Some(path) = &config.hs256_secret_file {
            let mut secret = read_file(path)?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            if secret.len() < 16 {
                return Err(AuthConfigError::Invalid(format!(
                    "jwt: {}: the HS256 secret must be at least 16 bytes",
                    path.display()
                )));
            }
            Keys::Single(DecodingKey::from_secret(&secret), Algorithm::HS256)
        } else if let Some(path) = &config.rs256_public_key_file {
            let pem = read_file(path)?;
            let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| invalid(path, e))?;
            Keys::Single(key, Algorithm::RS256)
        } else if let Some(path) = &config.es256_public_key_file {
            let pem = read_file(path)?;
            let key = DecodingKey::from_ec_pem(&pem).map_err(|e| invalid(path, e))?;
            Keys::Single(key, Algorithm::ES256)
        } else if let Some(path) = &config.jwks_file {
            let text = read_file(path)?;
            let set: JwkSet = serde_json::from_slice(&text).map_err(|e| {
                AuthConfigError::Invalid(format!("jwt: {}: not a JWKS: {e}", path.display()))
            })?;
            let mut keys = Vec::new();
            for (i, jwk) in set.keys.iter().enumerate() {
                let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                    AuthConfigError::Invalid(format!("jwt: {}: keys[{i}]: {e}", path.display()))
                })?;
                let alg = match key.family() {
                    jsonwebtoken::AlgorithmFamily::Hmac => Algorithm::HS256,
                    jsonwebtoken::AlgorithmFamily::Rsa => Algorithm::RS256,
                    jsonwebtoken::AlgorithmFamily::Ec => Algorithm::ES256,
                    jsonwebtoken::AlgorithmFamily::Ed => Algorithm::EdDSA,
                };
                keys.push((jwk.common.key_id.clone(), key, alg));
            }
            if keys.is_empty() {
                return Err(AuthConfigError::Invalid(format!(
                    "jwt: {}: the key set is empty",
                    path.display()
                )));
            }
            Keys::Set(keys)
        } else {
            unreachable!("exactly one source is set")
        };
        if config.principal_claim.is_empty() {
            return Err(AuthConfigError::Invalid(
                "jwt.principal_claim must not be empty".into(),
            ));
        }
        Ok(JwtVerifier {
            keys,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            principal_claim: config.principal_claim.clone(),
            leeway: config.leeway_secs,
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        // A configured audience or issuer is required, not only checked
        // when the token happens to carry it.
        let mut required = vec!["exp"];
        if self.audience.is_some() {
            required.push("aud");
        }
        if self.issuer.is_some() {
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
        }
        v
    }

    /// Verifies `token` and returns the principal named by the configured
    /// claim.
    ///
    /// # Errors
    /// [`JwtError`] saying why (expired, bad signature, wrong audience, ...).
    pub fn verify(&self, token: &str) -> Result<String, JwtError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| JwtError(format!("malformed token: {e}")))?;
        // RFC 7515 §4.1.11: extensions named in `crit` must be understood;
        // we understand none, so any `crit` (even an empty one) is refused.
        if let Some(crit) = &header.crit {
            return Err(JwtError(format!(
                "critical header extensions {crit:?} are not supported (crit)"
            )));
        }
        let (key, alg) = match &self.keys {
            Keys::Single(key, alg) => (key, *alg),
            Keys::Set(keys) => {
                let found = match &header.kid {
                    Some(kid) => keys.iter().find(|(k, _, _)| k.as_deref() == Some(kid)),
                    None if keys.len() == 1 => keys.first(),
                    None => None,
                };
                let (_, key, alg) = found.ok_or_else(|| {
                    JwtError("no key in the key set matches the token's kid".into())
                })?;
                (key, *alg)
            }
        };
        if header.alg != alg {
            return Err(JwtError(format!(
                "algorithm {:?} is not accepted (expected {alg:?})",
                header.alg
            )));
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation(alg))
            .map_err(|e| JwtError(describe(&e)))?;
        match data.claims.get(&self.principal_claim) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(JwtError(format!(
                "claim {:?} (the principal) is missing or not a string",
                self.principal_claim
            ))),
        }
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not yet valid (nbf)".into(),
        ErrorKind::InvalidAudience => "wrong audience (aud)".into(),
        ErrorKind::InvalidIssuer => "wrong issuer (iss)".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("missing claim {c:?}"),
        ErrorKind::InvalidAlgorithm => "algorithm not accepted".into(),
        _ => format!("invalid token: {e}"),
    }
}
