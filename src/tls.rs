//! TLS (rustls), both ways, built and checked when the config loads:
//!
//! - for clients, the server configuration from `[tls]` (certificate chain, private key, and
//!   optionally the CA that client certificates must be signed by), and the subject's common
//!   name of a verified client certificate (which can choose a tenant);
//! - for backends, the client configuration from `[upstream] tls_*` (the CA that server
//!   certificates must be signed by, else the system's roots; optionally a client certificate
//!   for servers that require one), and the name each server's certificate is checked against.

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

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

/// Who a verified client certificate names: its subject's common name, and its subject
/// alternative names (DNS names, URIs such as SPIFFE ids, e-mail addresses), as text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Identity {
    pub cn: Option<String>,
    pub sans: Vec<String>,
}

impl Identity {
    pub fn of(cert: &CertificateDer<'_>) -> Identity {
        use x509_parser::extensions::GeneralName;
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
            return Identity::default();
        };
        let cn = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let sans = match parsed.subject_alternative_name() {
            Ok(Some(ext)) => ext
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                        Some(s.to_string())
                    }
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Identity { cn, sans }
    }
}

/// How keygate connects to backends over TLS (`[upstream] tls = true`).
#[derive(Clone)]
pub struct Upstream {
    pub config: Arc<ClientConfig>,
    /// The name every server's certificate is checked against; by default each server's own
    /// host (a DNS name or an IP address).
    pub server_name: Option<ServerName<'static>>,
    /// A digest of the settings and of the files' contents: configs that would connect the
    /// same way compare equal, so a reload keeps the backends' connections unless a
    /// certificate changed.
    fingerprint: [u8; 32],
}

impl PartialEq for Upstream {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// The name to check `addr`'s certificate against (`host:port`, `[v6]:port`).
    pub fn name_for(&self, addr: &str) -> Result<ServerName<'static>, String> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = match addr.rsplit_once(':') {
            Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => addr,
        };
        ServerName::try_from(host.to_owned()).map_err(|e| {
            format!("{host:?} cannot be checked against a certificate ({e}); set upstream.tls_server_name")
        })
    }
}

/// The client side of backend TLS; errors name the `upstream.tls_*` key at fault.
pub fn upstream_config(
    ca: Option<&str>,
    cert: Option<&str>,
    key_path: Option<&str>,
    server_name: Option<&str>,
) -> Result<Upstream, (&'static str, String)> {
    let mut fingerprint = Sha256::new();
    let mut roots = RootCertStore::empty();
    match ca {
        Some(ca) => {
            for c in certs(ca).map_err(|e| ("tls_ca", e))? {
                fingerprint.update(&c);
                roots.add(c).map_err(|e| ("tls_ca", format!("{ca}: {e}")))?;
            }
        }
        None => {
            // No CA given: the system's, as a Redis client library would use.
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                fingerprint.update(&c);
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err((
                    "tls_ca",
                    "not set, and no CA certificates were found on this system".into(),
                ));
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("tls", e.to_string()))?
        .with_root_certificates(roots);
    let config = match (cert, key_path) {
        (Some(cert), Some(key_path)) => {
            let chain = certs(cert).map_err(|e| ("tls_cert", e))?;
            let key = key(key_path).map_err(|e| ("tls_key", e))?;
            for c in &chain {
                fingerprint.update(c);
            }
            fingerprint.update(key.secret_der());
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ("tls_key", format!("does not fit tls_cert: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => return Err(("tls_key", "required with tls_cert".into())),
        (None, Some(_)) => return Err(("tls_cert", "required with tls_key".into())),
    };
    let server_name = match server_name {
        Some(name) => {
            fingerprint.update(name.as_bytes());
            Some(
                ServerName::try_from(name.to_owned())
                    .map_err(|e| ("tls_server_name", format!("{name:?}: {e}")))?,
            )
        }
        None => None,
    };
    Ok(Upstream {
        config: Arc::new(config),
        server_name,
        fingerprint: fingerprint.finalize().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_address() {
        let upstream = Upstream {
            config: Arc::new(
                ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth(),
            ),
            server_name: None,
            fingerprint: [0; 32],
        };
        let name = |addr| upstream.name_for(addr).map(|n| n.to_str().into_owned());
        assert_eq!(name("127.0.0.1:6379").unwrap(), "127.0.0.1");
        assert_eq!(name("[::1]:6379").unwrap(), "::1");
        assert_eq!(name("redis.internal:6380").unwrap(), "redis.internal");
        assert!(name("bad_host!:1").is_err());
    }
}
