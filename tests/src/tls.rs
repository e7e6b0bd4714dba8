//! Throwaway certificates for the TLS tests: a certificate authority and the server
//! certificates it signs, generated in the test (rcgen) and written as PEM files into the
//! test's temporary directory. Nothing of this is kept in the repository.

use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// A certificate authority that exists for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A server certificate (signed by a [`TestCa`]) and its key.
pub struct ServerCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
    /// base64 of the SHA-256 of its public key (SubjectPublicKeyInfo), as Chromium's
    /// `--ignore-certificate-errors-spki-list` takes it.
    pub spki_sha256: String,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(30);
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA's certificate to `dir/name` and returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, &self.pem).expect("write CA certificate");
        p
    }

    /// A server certificate for `localhost` and `127.0.0.1` (and `names`), valid from
    /// yesterday for a month.
    pub fn issue(&self, names: &[&str]) -> ServerCert {
        let now = OffsetDateTime::now_utc();
        self.issue_valid(names, now - Duration::days(1), now + Duration::days(30))
    }

    /// A server certificate for `names` only (not localhost), valid now.
    pub fn issue_only(&self, names: &[&str]) -> ServerCert {
        let now = OffsetDateTime::now_utc();
        self.make(
            names.iter().map(|n| n.to_string()).collect(),
            now - Duration::days(1),
            now + Duration::days(30),
        )
    }

    /// A server certificate for `localhost` and `127.0.0.1` that expired yesterday.
    pub fn issue_expired(&self) -> ServerCert {
        let now = OffsetDateTime::now_utc();
        self.issue_valid(&[], now - Duration::days(30), now - Duration::days(1))
    }

    fn issue_valid(
        &self,
        names: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> ServerCert {
        let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        sans.extend(names.iter().map(|n| n.to_string()));
        self.make(sans, not_before, not_after)
    }

    fn make(
        &self,
        sans: Vec<String>,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> ServerCert {
        let common_name = sans[0].clone();
        let mut params = CertificateParams::new(sans).expect("server params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            spki_sha256: base64::engine::general_purpose::STANDARD
                .encode(Sha256::digest(key.subject_public_key_info())),
        }
    }
}

impl ServerCert {
    /// Writes `dir/{stem}.crt` and `dir/{stem}.key`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write certificate");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}

/// A client that trusts only `ca` (HTTP/2 by ALPN, HTTP/1.1 otherwise).
pub fn client_trusting(ca: &TestCa) -> reqwest::Client {
    client_builder(ca).build().expect("https client")
}

/// A client builder that trusts only `ca`.
pub fn client_builder(ca: &TestCa) -> reqwest::ClientBuilder {
    let cert = reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).expect("CA PEM");
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .no_proxy()
        .timeout(std::time::Duration::from_secs(60))
}
