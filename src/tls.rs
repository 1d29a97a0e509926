//! TLS for every hub-tunnel connection (rustls 0.23, ring provider).
//!
//! The hub presents a certificate from files, or one it generated (rcgen) and keeps in its state
//! directory. A tunnel verifies the hub by a CA file, the system roots, or a pinned SHA-256
//! fingerprint of the hub's certificate. There is deliberately no way to turn verification off.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Once};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::config::{HubTrust, TlsFiles};

/// File names of the generated certificate inside the hub's state directory.
pub const GENERATED_CERT: &str = "hub.crt";
/// File name of the generated private key inside the hub's state directory.
pub const GENERATED_KEY: &str = "hub.key";

/// Errors loading or building TLS material.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file did not contain what it should.
    #[error("{path}: {problem}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// Writing generated material failed.
    #[error("cannot write {path}: {source}; check that the state directory exists and is writable")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Generating a certificate failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The system trust store could not be loaded.
    #[error("no usable system root certificates ({0}); set hub_ca_file or hub_cert_sha256")]
    NoSystemRoots(String),
}

/// Installs the process-wide crypto provider (ring). Safe to call many times.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Fails only when another provider was installed first, which is fine too.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The crypto provider every configuration uses. Servers choose the cipher suite from its list,
/// strongest first (`ignore_client_order`), rather than the client's favourite.
fn provider() -> Arc<CryptoProvider> {
    install_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// A SHA-256 certificate fingerprint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Fingerprint of a DER certificate.
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        Fingerprint(Sha256::digest(cert.as_ref()).into())
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    /// Parses 64 hex digits, any case, colons optional: the `hub_cert_sha256` of a tunnel
    /// config and the `--fingerprint` of the command-line tools. The message says how to get one.
    fn from_str(text: &str) -> Result<Self, String> {
        const HINT: &str = "give the SHA-256 of the hub's certificate as 64 hex digits (colons \
                            allowed), as printed by `openssl x509 -noout -fingerprint -sha256 -in \
                            CERT.pem`";
        let digits: Vec<u8> = text
            .chars()
            .filter(|c| *c != ':')
            .map(|c| {
                // A hex digit is below 16, so it fits a byte.
                c.to_digit(16)
                    .map(|digit| digit as u8)
                    .ok_or_else(|| format!("{c:?} is not a hex digit; {HINT}"))
            })
            .collect::<Result<_, _>>()?;
        if digits.len() != 64 {
            return Err(format!(
                "found {} hex digits instead of 64; {HINT}",
                digits.len()
            ));
        }
        let mut fingerprint = [0u8; 32];
        for (byte, pair) in fingerprint.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = pair[0] << 4 | pair[1];
        }
        Ok(Fingerprint(fingerprint))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A certificate chain and its private key.
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Fingerprint of the leaf certificate (what tunnels pin).
    pub fn fingerprint(&self) -> Fingerprint {
        // An Identity is only built with at least one certificate.
        self.chain
            .first()
            .map(Fingerprint::of)
            .unwrap_or(Fingerprint([0; 32]))
    }

    /// Loads a PEM certificate chain and private key.
    pub fn from_files(files: &TlsFiles) -> Result<Self, TlsError> {
        let chain = read_certs(&files.cert_file, "certificate file")?;
        let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(|e| TlsError::BadPem {
            path: files.key_file.clone(),
            problem: format!("no usable private key ({e})"),
        })?;
        Ok(Identity { chain, key })
    }

    /// Generates a self-signed certificate in memory for the given names.
    pub fn generate(names: &[&str]) -> Result<Self, TlsError> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names)?;
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der()).map_err(|e| {
            TlsError::BadPem {
                path: PathBuf::from("<generated>"),
                problem: e.to_string(),
            }
        })?;
        Ok(Identity {
            chain: vec![certified.cert.der().clone()],
            key,
        })
    }

    /// Loads the certificate kept in `state_dir`, generating and saving one on first use.
    /// Returns whether it was generated now.
    pub fn load_or_generate(state_dir: &Path) -> Result<(Self, bool), TlsError> {
        let cert_file = state_dir.join(GENERATED_CERT);
        let key_file = state_dir.join(GENERATED_KEY);
        if cert_file.exists() && key_file.exists() {
            let files = TlsFiles {
                cert_file,
                key_file,
            };
            return Ok((Identity::from_files(&files)?, false));
        }
        std::fs::create_dir_all(state_dir).map_err(|source| TlsError::Write {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let host = hostname();
        let mut names = vec!["localhost", "tunnelize-hub"];
        if let Some(h) = host.as_deref() {
            names.push(h);
        }
        let certified = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )?;
        write_private(&key_file, certified.signing_key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_file, certified.cert.pem()).map_err(|source| TlsError::Write {
            path: cert_file.clone(),
            source,
        })?;
        let files = TlsFiles {
            cert_file,
            key_file,
        };
        Ok((Identity::from_files(&files)?, true))
    }

    /// A rustls server configuration presenting this identity.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.ignore_client_order = true;
        Ok(Arc::new(config))
    }
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.into(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadPem {
            path: path.into(),
            problem: format!("bad PEM ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::BadPem {
            path: path.into(),
            problem: "no certificate found; expected PEM `BEGIN CERTIFICATE` blocks".into(),
        });
    }
    Ok(certs)
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| TlsError::Write {
            path: path.into(),
            source,
        })?;
    file.write_all(contents).map_err(|source| TlsError::Write {
        path: path.into(),
        source,
    })
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// The rustls client configuration a tunnel uses to verify its hub.
pub fn client_config(trust: &HubTrust) -> Result<Arc<ClientConfig>, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = match trust {
        HubTrust::Fingerprint(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertVerifier {
                pin: Fingerprint(*pin),
                provider: provider(),
            }))
            .with_no_client_auth(),
        HubTrust::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path, "CA file")? {
                roots.add(cert).map_err(|e| TlsError::BadPem {
                    path: path.clone(),
                    problem: format!("unusable CA certificate ({e})"),
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        HubTrust::SystemRoots => {
            let loaded = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let why = loaded
                    .errors
                    .first()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "the system trust store is empty".into());
                return Err(TlsError::NoSystemRoots(why));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// The TLS server name for a hub address's host part.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|e| TlsError::BadPem {
        path: PathBuf::from("hub_server_name"),
        problem: format!("`{host}` is not a valid DNS name or IP address ({e})"),
    })
}

/// Explains a failed client handshake for people, and says whether TLS itself rejected the hub
/// (as opposed to the connection breaking).
pub fn describe_handshake_error(e: &std::io::Error) -> (String, bool) {
    let Some(tls_error) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return (e.to_string(), false);
    };
    let detail = match tls_error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            match other.0.downcast_ref::<PinMismatch>() {
                Some(mismatch) => mismatch.to_string(),
                None => format!("the hub's certificate is not trusted ({})", other.0),
            }
        }
        rustls::Error::InvalidCertificate(reason) => format!(
            "the hub's certificate is not trusted ({reason}); check hub_ca_file, \
             hub_server_name or hub_cert_sha256"
        ),
        other => other.to_string(),
    };
    (detail, true)
}

/// Accepts exactly one certificate: the one whose SHA-256 matches the pin. Handshake signatures
/// are still verified, so the hub must hold the pinned certificate's private key.
#[derive(Debug)]
struct PinnedCertVerifier {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

/// The hub presented a certificate other than the pinned one.
#[derive(Debug)]
struct PinMismatch {
    presented: Fingerprint,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the hub's certificate has SHA-256 fingerprint {}, which does not match hub_cert_sha256",
            self.presented
        )
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of(end_entity);
        if bool::from(presented.0.ct_eq(&self.pin.0)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch {
                    presented,
                }))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_server_picks_the_cipher_suite_strongest_first_whatever_the_clients_order() {
        use rustls::crypto::ring::cipher_suite;
        let identity = Identity::generate(&["localhost"]).unwrap();
        // A client that prefers AES-128 to AES-256.
        let mut weaker_first = (*provider()).clone();
        weaker_first.cipher_suites = vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
        ];
        let verifier = PinnedCertVerifier {
            pin: identity.fingerprint(),
            provider: provider(),
        };
        let client = ClientConfig::builder_with_provider(Arc::new(weaker_first))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config().unwrap());
        let server = tokio::spawn(async move { acceptor.accept(b).await.map(|_| ()) });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tls = connector
            .connect(server_name("localhost").unwrap(), a)
            .await
            .unwrap();
        let suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
        assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
        server.await.unwrap().unwrap();
    }

    #[test]
    fn fingerprint_prints_as_colon_separated_hex() {
        let fp = Fingerprint([0xab; 32]);
        let s = fp.to_string();
        assert_eq!(s.len(), 32 * 3 - 1);
        assert!(s.starts_with("AB:AB:"));
    }

    #[test]
    fn fingerprints_take_hex_with_optional_colons_in_any_case() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let Fingerprint(parsed) = hex.parse().unwrap();
        assert_eq!(parsed[0], 0x00);
        assert_eq!(parsed[1], 0x11);
        assert_eq!(parsed[15], 0xff);
        assert_eq!(parsed[31], 0xff);
        let with_colons: Vec<String> = hex
            .as_bytes()
            .chunks(2)
            .map(|p| String::from_utf8_lossy(p).into())
            .collect();
        assert_eq!(
            with_colons.join(":").parse::<Fingerprint>(),
            Ok(Fingerprint(parsed))
        );
        assert!(
            hex[..62]
                .parse::<Fingerprint>()
                .unwrap_err()
                .contains("62 hex digits")
        );
        assert!(
            format!("{}zz", &hex[..62])
                .parse::<Fingerprint>()
                .unwrap_err()
                .contains("'z'")
        );
    }

    #[test]
    fn fingerprints_take_hex_with_optional_colons() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let parse = |text: &str| text.parse::<Fingerprint>().map(|pin| pin.0);
        let parsed = parse(hex).unwrap();
        assert_eq!(parsed[1], 0x11);
        let with_colons: Vec<&str> = (0..32).map(|i| &hex[2 * i..2 * i + 2]).collect();
        assert_eq!(parse(&with_colons.join(":")), Ok(parsed));
        assert!(parse(&hex[..62]).unwrap_err().contains("62"));
        assert!(parse(&format!("{}zz", &hex[..62])).is_err());
    }

    #[test]
    fn a_fingerprint_prints_as_it_parses() {
        let pin = Fingerprint([0x5a; 32]);
        assert_eq!(pin.to_string().parse::<Fingerprint>(), Ok(pin));
    }

    #[test]
    fn generated_identity_is_saved_and_reloaded_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (first, generated) = Identity::load_or_generate(dir.path()).unwrap();
        assert!(generated);
        let (second, generated) = Identity::load_or_generate(dir.path()).unwrap();
        assert!(!generated);
        assert_eq!(first.fingerprint(), second.fingerprint());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(GENERATED_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "private key must not be readable by others"
        );
    }

    #[test]
    fn a_file_without_certificates_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "nothing here").unwrap();
        let err = client_config(&HubTrust::CaFile(path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no certificate found"), "{err}");
    }
}
