//! Certificates of an `https` service, chosen per connection by the name the client asks for
//! (SNI): an exact name first, then a wildcard (`*.tunnel.example.com` covers one label), then
//! the first certificate configured. The names come from each certificate's subjectAltName.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use x509_parser::extensions::GeneralName;

use crate::config::TlsFiles;
use crate::tls::{Identity, TlsError};

/// Picks a certificate by SNI.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    fallback: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name().map(str::to_ascii_lowercase) else {
            return Some(self.fallback.clone());
        };
        if let Some(key) = self.exact.get(&name) {
            return Some(key.clone());
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(key) = self.wildcard.get(parent)
        {
            return Some(key.clone());
        }
        Some(self.fallback.clone())
    }
}

/// DNS names a certificate is for (subjectAltName), lowercased; wildcards keep their `*.`.
fn names_of(identity: &Identity, path: &std::path::Path) -> Result<Vec<String>, TlsError> {
    let bad = |problem: String| TlsError::BadPem {
        path: path.to_path_buf(),
        problem,
    };
    let leaf = identity
        .chain
        .first()
        .ok_or_else(|| bad("no certificate".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| bad(format!("cannot read the certificate ({e})")))?;
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        return Err(bad(
            "the certificate names no DNS host (subjectAltName)".into()
        ));
    }
    Ok(names)
}

/// A TLS acceptor for an `https` service: SNI-selected certificates, ALPN h2 and http/1.1.
pub fn acceptor(certificates: &[TlsFiles]) -> Result<TlsAcceptor, TlsError> {
    crate::tls::install_crypto_provider();
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut fallback = None;
    for files in certificates {
        let identity = Identity::from_files(files)?;
        let names = names_of(&identity, &files.cert_file)?;
        let key = Arc::new(CertifiedKey::from_der(
            identity.chain.clone(),
            identity.key.clone_key(),
            &provider,
        )?);
        for name in names {
            match name.strip_prefix("*.") {
                Some(parent) => wildcard
                    .entry(parent.to_owned())
                    .or_insert_with(|| key.clone()),
                None => exact.entry(name).or_insert_with(|| key.clone()),
            };
        }
        fallback.get_or_insert(key);
    }
    let fallback = fallback.ok_or_else(|| TlsError::BadPem {
        path: "certificates".into(),
        problem: "an https service needs at least one certificate".into(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            exact,
            wildcard,
            fallback,
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's order of cipher suites (strongest first), not the client's.
    config.ignore_client_order = true;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
