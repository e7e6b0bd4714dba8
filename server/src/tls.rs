//! TLS: the certificate chain and key of `--tls-cert`/`--tls-key` (PEM), served by rustls
//! with ALPN `h2` and `http/1.1`.
//!
//! The pair is held behind a resolver that every handshake asks, so [`Tls::reload`]
//! (on SIGHUP) swaps it for new connections while open ones keep the session they have:
//! renewing a certificate drops nothing. A reload that fails (a file half-written by a
//! renewal tool, a key that does not match) keeps the pair in use and says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{anyhow, Context};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// The server's TLS settings and its current certificate.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

/// The certificate handshakes are given.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

impl Tls {
    /// Reads the pair; the error names the file at fault and what is wrong with it.
    /// `http2`: whether ALPN offers `h2` besides `http/1.1`.
    pub fn load(cert: &Path, key: &Path, http2: bool) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let pair = certified_key(&provider, cert, key)?;
        let current = Arc::new(Current(RwLock::new(Arc::new(pair))));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS: no protocol version available")?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if http2 {
            config.alpn_protocols.insert(0, ALPN_H2.to_vec());
        }
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Reads the files again and serves the new pair to new connections; on error the
    /// pair in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let pair = certified_key(&provider, &self.cert, &self.key)?;
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
        Ok(())
    }

    /// Accepts TLS connections with the current pair.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// For the start-up log: where the pair comes from.
    pub fn describe(&self) -> String {
        let chain = self
            .current
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cert
            .len();
        let protocols = if self.acceptor.config().alpn_protocols.len() > 1 {
            "HTTP/2 and HTTP/1.1 (ALPN)"
        } else {
            "HTTP/1.1 only (--http2 false)"
        };
        format!(
            "certificate {} ({chain} in the chain), key {}; {protocols}; reloaded on SIGHUP",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// The chain of `cert` with the key of `key`, checked to belong together.
fn certified_key(
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<CertifiedKey> {
    let flag_cert = || format!("--tls-cert {}", cert.display());
    let flag_key = || format!("--tls-key {}", key.display());
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| anyhow!("{}: {}", flag_cert(), pem_error(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}: {}", flag_cert(), pem_error(e)))?;
    if chain.is_empty() {
        anyhow::bail!(
            "{}: no certificate in the file (expected PEM `-----BEGIN CERTIFICATE-----`)",
            flag_cert()
        );
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow!(
            "{}: no private key in the file (expected PEM `-----BEGIN PRIVATE KEY-----`, \
             `RSA PRIVATE KEY` or `EC PRIVATE KEY`)",
            flag_key()
        ),
        e => anyhow!("{}: {}", flag_key(), pem_error(e)),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| anyhow!("{}: unusable private key: {e}", flag_key()))?;
    let pair = CertifiedKey::new(chain, signing);
    match pair.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(pair)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(anyhow!(
                "{}: the key does not belong to the first certificate of {}",
                flag_key(),
                flag_cert()
            ))
        }
        Err(e) => Err(anyhow!("{}: unusable certificate: {e}", flag_cert())),
    }
}

/// A PEM reading error in words (the I/O error's own, e.g. "No such file or directory").
fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "nothing in PEM format in the file".into(),
        e => format!("not valid PEM: {e:?}"),
    }
}
