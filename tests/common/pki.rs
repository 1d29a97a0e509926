//! A certificate authority for tests: its certificate in a PEM file, and certificates it signs
//! written as the `cert_file`/`key_file` pair a service's `certificates` names.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::CertificateDer;
use tunnelize::config::TlsFiles;

const DAY: u64 = 24 * 60 * 60;

/// A fresh CA whose certificate is in `file`.
pub struct TestCa {
    pub file: PathBuf,
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// Makes a CA and writes its certificate to `dir/ca.pem`.
    pub fn new(dir: &Path) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct subject names: OpenSSL takes a leaf whose subject equals its issuer for
        // self-signed.
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tunnelize test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let file = dir.join("ca.pem");
        std::fs::write(&file, cert.pem()).unwrap();
        TestCa {
            file,
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Signs a certificate for `name` (also its common name) and writes it and its key to
    /// `dir/STEM.crt` and `dir/STEM.key`. It is valid from a day ago for 90 days, as a public
    /// CA's are (rcgen's default, 1975 to 4096, is a finding of TLS scanners).
    pub fn issue(&self, dir: &Path, stem: &str, name: &str) -> (TlsFiles, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(DAY)).into();
        params.not_after = (now + Duration::from_secs(90 * DAY)).into();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let files = TlsFiles {
            cert_file: dir.join(format!("{stem}.crt")),
            key_file: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert_file, cert.pem()).unwrap();
        std::fs::write(&files.key_file, key.serialize_pem()).unwrap();
        (files, cert.der().clone())
    }
}
