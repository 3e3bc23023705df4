//! Client certificates (mTLS) as credentials: the names of a certificate
//! the TLS listener verified against `server.tls_client_ca`, and which of
//! them is the principal (`auth.client_certs.principal`).
//!
//! The TLS layer (`server::tls`) fills a [`ClientCertificate`] per
//! connection and the HTTP layer puts it in each request; the auth
//! middleware turns it into an [`Access`](super::Access) with the same ACL
//! as a principal of an API key or JWT. A bearer token on the request
//! takes precedence over the certificate.

use serde::{Deserialize, Serialize};

/// The names a verified client certificate carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The subject's common name (CN), when it has one.
    pub common_name: Option<String>,
    /// Subject alternative names: DNS names, URIs and email addresses, in
    /// certificate order.
    pub alt_names: Vec<String>,
}

/// Which name of a client certificate is the principal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertPrincipal {
    /// The subject's common name (default).
    #[default]
    CommonName,
    /// The first subject alternative name (DNS name, URI or email).
    AltName,
}

/// `auth.client_certs`: accept verified client certificates as credentials.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientCertConfig {
    /// Which name is the principal. Default `common_name`.
    pub principal: CertPrincipal,
}

impl ClientCertificate {
    /// The principal `from` selects, when the certificate has that name
    /// and it is not blank.
    pub fn principal(&self, from: CertPrincipal) -> Option<&str> {
        let name = match from {
            CertPrincipal::CommonName => self.common_name.as_deref(),
            CertPrincipal::AltName => self.alt_names.first().map(String::as_str),
        };
        name.map(str::trim).filter(|n| !n.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_principal_is_the_configured_name() {
        let cert = ClientCertificate {
            common_name: Some("planner".into()),
            alt_names: vec!["planner.agents.svc".into(), "spiffe://x/planner".into()],
        };
        assert_eq!(cert.principal(CertPrincipal::CommonName), Some("planner"));
        assert_eq!(
            cert.principal(CertPrincipal::AltName),
            Some("planner.agents.svc")
        );
        let blank = ClientCertificate {
            common_name: Some(" ".into()),
            alt_names: vec![],
        };
        assert_eq!(blank.principal(CertPrincipal::CommonName), None);
        assert_eq!(blank.principal(CertPrincipal::AltName), None);
    }
}
