//! rustls client settings for `wss://` tunnels: the webpki roots plus an optional extra CA file.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

/// A TLS connector trusting the webpki roots and every certificate in `ca_file`.
pub fn connector(ca_file: Option<&Path>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .with_context(|| format!("proxyview.caFile {}: cannot read", path.display()))?
        {
            let cert =
                cert.with_context(|| format!("proxyview.caFile {}: bad PEM", path.display()))?;
            roots.add(cert).with_context(|| {
                format!("proxyview.caFile {}: unusable certificate", path.display())
            })?;
            n += 1;
        }
        anyhow::ensure!(
            n > 0,
            "proxyview.caFile {}: no certificate found",
            path.display()
        );
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
