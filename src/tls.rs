//! TLS for clients (rustls): the server configuration built from `[tls]` (certificate chain,
//! private key, and optionally the CA that client certificates must be signed by), checked
//! when the config loads.

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let file = File::open(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{path}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no certificate in it"));
    }
    Ok(certs)
}

fn key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let file = File::open(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| format!("{path}: not a PEM private key: {e}"))?
        .ok_or_else(|| format!("{path}: no private key in it"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side of client TLS; errors name the `[tls]` key at fault.
pub fn server_config(
    cert: &str,
    key_path: &str,
    client_ca: Option<&str>,
) -> Result<Arc<ServerConfig>, (&'static str, String)> {
    let chain = certs(cert).map_err(|e| ("cert", e))?;
    let key = key(key_path).map_err(|e| ("key", e))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("listen", e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca).map_err(|e| ("client_ca", e))? {
                roots
                    .add(c)
                    .map_err(|e| ("client_ca", format!("{ca}: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| ("client_ca", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| ("key", format!("does not fit the certificate: {e}")))?;
    Ok(Arc::new(config))
}
