//! TLS the edge alone uses: its public listener's certificate (HTTPS, with ALPN for HTTP/2 and
//! HTTP/1.1), and its side of the gRPC connections to the cores (a CA to trust, and a client
//! certificate when a core asks for one: mutual TLS). The files are read with the shared runtime's
//! loaders ([`openclaw_runtime::tls`]), so both processes name a bad file the same way.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use openclaw_runtime::tls::{TlsFiles, certificates, install_crypto_provider, private_key};
use tokio_rustls::rustls;

/// How the edge reaches the core over TLS. Used for `https://` core URLs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreTls {
    /// PEM file of the CA(s) that signed the core's certificate (`OPENCLAW_CORE_CA`). Absent: the
    /// system's trusted roots are not consulted, so an `https://` core URL needs it.
    pub ca: Option<PathBuf>,
    /// The edge's client certificate and key, for a core that requires mutual TLS
    /// (`OPENCLAW_CORE_CLIENT_CERT`, `OPENCLAW_CORE_CLIENT_KEY`).
    pub client: Option<TlsFiles>,
}

/// The public listener's TLS configuration: the certificate and key from `files`, ALPN offering
/// HTTP/2 then HTTP/1.1.
pub(crate) fn server_config(files: &TlsFiles) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    install_crypto_provider();
    let chain = certificates(&files.cert, "certificate chain")?;
    let key = private_key(&files.key)?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| {
            format!(
                "the certificate {} and the key {} do not make a usable pair",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What the edge's gRPC client presents and trusts, read from the files once: a TLS client
/// offering HTTP/2 (ALPN `h2`), trusting only the configured CA.
#[derive(Clone)]
pub(crate) struct CoreTlsMaterial {
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for CoreTlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreTlsMaterial").finish_non_exhaustive()
    }
}

impl CoreTlsMaterial {
    pub(crate) fn load(tls: &CoreTls) -> anyhow::Result<Self> {
        install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        if let Some(path) = &tls.ca {
            for ca in certificates(path, "core CA")? {
                roots.add(ca).with_context(|| {
                    format!(
                        "the core CA {} holds an unusable certificate",
                        path.display()
                    )
                })?;
            }
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let mut config = match &tls.client {
            Some(files) => builder
                .with_client_auth_cert(
                    certificates(&files.cert, "client certificate")?,
                    private_key(&files.key)?,
                )
                .with_context(|| {
                    format!(
                        "the client certificate {} and the key {} do not make a usable pair",
                        files.cert.display(),
                        files.key.display()
                    )
                })?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// The client side of a TLS connection to a core whose certificate names `domain` (the
    /// configured host, also when the connection goes to an address that host resolved to).
    pub(crate) fn connector(
        &self,
        domain: &str,
    ) -> anyhow::Result<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )> {
        let name = rustls::pki_types::ServerName::try_from(domain.to_owned())
            .with_context(|| format!("'{domain}' is not a host name a certificate can name"))?;
        Ok((self.connector.clone(), name))
    }
}
