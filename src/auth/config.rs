//! The auth file (`serve --auth FILE`, `EVENT_ROUTER_AUTH`, or the `auth:`
//! section of the main config): API keys, JWT verification, the ACL,
//! anonymous access and per-principal limits. See `docs/security.md`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default JWT clock-skew leeway, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 60;

/// The whole auth configuration.
///
/// ```
/// use event_router::auth::AuthConfig;
///
/// let config = AuthConfig::from_yaml(
///     "api_keys:\n  - name: planner\n    sha256: \"00\"\nacl:\n  - principal: planner\n    publish: [\"task.*\"]\n",
/// ).unwrap();
/// assert_eq!(config.api_keys[0].name, "planner");
/// assert!(!config.anonymous);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// API keys by principal name; only the SHA-256 of each key is stored.
    #[serde(deserialize_with = "null_is_default")]
    pub api_keys: Vec<ApiKeyEntry>,
    /// JWT verification; absent means JWTs are not accepted.
    pub jwt: Option<JwtConfig>,
    /// Who may publish, subscribe, join groups and administer.
    #[serde(deserialize_with = "null_is_default")]
    pub acl: Vec<AclEntry>,
    /// Client certificates (mTLS) as credentials: a certificate verified
    /// against `server.tls_client_ca` authenticates the principal named by
    /// its common name or first alternative name. Absent: certificates are
    /// not credentials.
    pub client_certs: Option<super::cert::ClientCertConfig>,
    /// Whether requests without a token are served as principal
    /// `anonymous` (with the ACL entries naming `anonymous`). Default false.
    pub anonymous: bool,
    /// Per-principal limits.
    #[serde(deserialize_with = "null_is_default")]
    pub limits: LimitsConfig,
}

/// One API key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// The principal the key authenticates.
    pub name: String,
    /// Lowercase hex SHA-256 of the key (`event-router auth hash-key`).
    pub sha256: String,
}

/// JWT verification. Exactly one key source must be set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// File holding the HS256 shared secret (trailing newline ignored).
    pub hs256_secret_file: Option<PathBuf>,
    /// PEM file with the RSA public key for RS256.
    pub rs256_public_key_file: Option<PathBuf>,
    /// PEM file with the EC P-256 public key for ES256.
    pub es256_public_key_file: Option<PathBuf>,
    /// A JWKS (JSON Web Key Set) file; keys are picked by `kid`.
    pub jwks_file: Option<PathBuf>,
    /// Required `aud`: when set, a token must carry it and match; unchecked
    /// when absent.
    pub audience: Option<String>,
    /// Required `iss`: when set, a token must carry it and match; unchecked
    /// when absent.
    pub issuer: Option<String>,
    /// The claim naming the principal. Default `sub`.
    pub principal_claim: String,
    /// Clock-skew leeway for `exp` and `nbf`, in seconds. Default 60.
    pub leeway_secs: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            hs256_secret_file: None,
            rs256_public_key_file: None,
            es256_public_key_file: None,
            jwks_file: None,
            audience: None,
            issuer: None,
            principal_claim: "sub".into(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }
}

/// One ACL entry. A principal's grants are the union of the entries naming
/// it and, for authenticated principals, the entries naming `*`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AclEntry {
    /// Principal name, `*` (every authenticated principal) or `anonymous`.
    pub principal: String,
    /// Topic patterns it may publish to (`*`, `#` globs).
    pub publish: Vec<String>,
    /// Topic patterns it may subscribe to; a subscription pattern is
    /// allowed only when every topic it can match is allowed.
    pub subscribe: Vec<String>,
    /// Durable groups it may consume, read and ack (`*` for any; a trailing
    /// `*` is a prefix match, e.g. `planners-*`).
    pub groups: Vec<String>,
    /// Whether it may manage subscriptions (create, update, delete), redrive
    /// and purge dead letters, and read stats.
    pub admin: bool,
}

/// Per-principal limits; absent values mean unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most concurrent WebSocket and SSE connections per principal.
    pub max_connections_per_principal: Option<usize>,
    /// Sustained publish rate per principal, in events per second.
    pub publish_rate: Option<f64>,
    /// Burst size of the publish token bucket, in events. Default: one
    /// second's worth of `publish_rate` (at least 1).
    pub publish_burst: Option<f64>,
}

/// Why the auth configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML is malformed or has unknown fields.
    #[error("invalid auth configuration: {0}")]
    Parse(String),
    /// A value is out of range or inconsistent.
    #[error("invalid auth configuration: {0}")]
    Invalid(String),
}

impl AuthConfig {
    /// Reads an auth file.
    ///
    /// # Errors
    /// [`AuthConfigError`] naming the file or the bad field.
    pub fn load(path: &Path) -> Result<AuthConfig, AuthConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|e| match e {
            AuthConfigError::Parse(m) => AuthConfigError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses auth YAML.
    ///
    /// # Errors
    /// [`AuthConfigError::Parse`] with the parser's message.
    pub fn from_yaml(text: &str) -> Result<AuthConfig, AuthConfigError> {
        if text.trim().is_empty() {
            return Ok(AuthConfig::default());
        }
        serde_saphyr::from_str(text).map_err(|e| AuthConfigError::Parse(e.to_string()))
    }
}

/// An empty YAML value (`limits:`) means the default.
fn null_is_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Reads a small key or secret file.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(path).map_err(|source| AuthConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}
