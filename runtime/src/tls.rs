//! TLS material both processes load the same way: one cryptography provider, certificate and
//! key file pairs, and PEM certificate chains and private keys read with messages that name the
//! file. What each process builds from them stays with it: the core's gRPC listener (tonic), the
//! edge's HTTPS listener and its client side towards the cores.
//!
//! Files are read once, at start-up; a missing or unreadable file stops the process with a message
//! naming the file and the setting that points at it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (`OPENCLAW_TLS_CERT`).
    pub cert: PathBuf,
    /// The private key of the leaf certificate, PKCS#8, PKCS#1 or SEC1 (`OPENCLAW_TLS_KEY`).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Both paths or neither: one without the other is a configuration mistake, named.
    pub fn from_pair(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        (cert_setting, key_setting): (&str, &str),
    ) -> anyhow::Result<Option<Self>> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Self { cert, key })),
            (None, None) => Ok(None),
            (Some(_), None) => {
                anyhow::bail!(
                    "{cert_setting} is set but {key_setting} is not: set both, or neither"
                )
            }
            (None, Some(_)) => {
                anyhow::bail!(
                    "{key_setting} is set but {cert_setting} is not: set both, or neither"
                )
            }
        }
    }
}

/// The same cryptography everywhere (aws-lc-rs), whatever else the dependency tree enables.
pub fn install_crypto_provider() {
    // Err only means a provider is installed already, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

/// The PEM certificates in `path` (a chain, leaf first, or CAs), refused when it holds none;
/// `what` names the file in errors ("certificate chain", "core CA").
pub fn certificates(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read(path, what)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("the {what} {} is not valid PEM", path.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "the {what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        path.display()
    );
    Ok(chain)
}

/// The PEM private key in `path`: PKCS#8, PKCS#1 or SEC1.
pub fn private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = read(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&pem).with_context(|| {
        format!(
            "the private key {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        )
    })
}
