//! TLS for `https://` endpoints: which files to trust and present ([`TlsConfig`], from
//! `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`, `…_CLIENT_CERTIFICATE`, `…_CLIENT_KEY`), loading
//! and checking them once at install ([`Tls::load`]), and the client configurations built from
//! them: rustls (ring provider, passed explicitly) for OTLP/HTTP and profile pushes, tonic's
//! for OTLP/gRPC.
//!
//! A configured CA file replaces the system trust store (as the Go and Java SDKs do): an
//! exporter pinned to a private CA should not also trust every public one. Without it, the
//! system store (`rustls-native-certs`) is used.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Certificate files (PEM). Each `None` falls back (see [`TlsConfig::or`]) or means the
/// default: the system roots, no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// CA certificates that replace the system roots (`OTEL_EXPORTER_OTLP_CERTIFICATE`).
    pub certificate: Option<PathBuf>,
    /// Client certificate chain for mTLS (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`).
    pub client_certificate: Option<PathBuf>,
    /// Its private key (`OTEL_EXPORTER_OTLP_CLIENT_KEY`).
    pub client_key: Option<PathBuf>,
}

impl TlsConfig {
    /// Each file of `self`, else `fallback`'s (a signal-specific variable over the general).
    pub fn or(&self, fallback: &TlsConfig) -> TlsConfig {
        let pick = |a: &Option<PathBuf>, b: &Option<PathBuf>| a.clone().or_else(|| b.clone());
        TlsConfig {
            certificate: pick(&self.certificate, &fallback.certificate),
            client_certificate: pick(&self.client_certificate, &fallback.client_certificate),
            client_key: pick(&self.client_key, &fallback.client_key),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read the {what} {path:?}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} {path:?} is not usable: {reason}")]
    Invalid { what: &'static str, path: PathBuf, reason: String },
    #[error(
        "a client certificate needs its key and a key its certificate: set both \
         OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY"
    )]
    IncompleteIdentity,
    #[error(
        "no trusted root certificates in the system store for an https endpoint; set \
         OTEL_EXPORTER_OTLP_CERTIFICATE to the CA file"
    )]
    NoSystemRoots,
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

const CA: &str = "CA certificate file";
const CLIENT_CERT: &str = "client certificate file";
const CLIENT_KEY: &str = "client key file";

/// A client certificate chain and its key, checked to belong together.
struct Identity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// The loaded, checked files of a [`TlsConfig`]. No `Debug`: it holds a private key.
pub(crate) struct Tls {
    /// The configured CA bundle: PEM and its certificates.
    ca: Option<(Vec<u8>, Vec<CertificateDer<'static>>)>,
    identity: Option<Identity>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // Explicit, never the process default: another crate may have installed (or, with both
    // ring and aws-lc-rs linked, made ambiguous) that default.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.into(), source })
}

fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |reason: String| TlsError::Invalid { what, path: path.into(), reason };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no PEM certificate in it".into()));
    }
    Ok(certs)
}

impl Tls {
    /// Reads and checks the configured files: every CA certificate must be parsable, a client
    /// certificate needs its key and the key must match it.
    pub(crate) fn load(cfg: &TlsConfig) -> Result<Tls, TlsError> {
        let ca = match &cfg.certificate {
            None => None,
            Some(path) => {
                let pem = read(CA, path)?;
                let certs = certificates(CA, path, &pem)?;
                let mut roots = RootCertStore::empty();
                for c in &certs {
                    roots.add(c.clone()).map_err(|e| TlsError::Invalid {
                        what: CA,
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                }
                Some((pem, certs))
            }
        };
        let identity = match (&cfg.client_certificate, &cfg.client_key) {
            (None, None) => None,
            (Some(cert_path), Some(key_path)) => {
                let cert_pem = read(CLIENT_CERT, cert_path)?;
                let chain = certificates(CLIENT_CERT, cert_path, &cert_pem)?;
                let key_pem = read(CLIENT_KEY, key_path)?;
                // The PEM error could quote the file; this one is a secret.
                let key =
                    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Invalid {
                        what: CLIENT_KEY,
                        path: key_path.clone(),
                        reason: "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it".into(),
                    })?;
                rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider())
                    .map_err(|e| TlsError::Invalid {
                    what: CLIENT_KEY,
                    path: key_path.clone(),
                    reason: format!("does not fit the client certificate {cert_path:?}: {e}"),
                })?;
                Some(Identity { cert_pem, key_pem, chain, key })
            }
            _ => return Err(TlsError::IncompleteIdentity),
        };
        Ok(Tls { ca, identity })
    }

    /// The trusted roots: the configured CA, else the system store (`system`: for an https
    /// endpoint; otherwise no roots are needed and none are loaded).
    fn roots(&self, system: bool) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some((_, certs)) => {
                roots.add_parsable_certificates(certs.iter().cloned());
            }
            None if system => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(TlsError::NoSystemRoots);
                }
            }
            None => {}
        }
        Ok(roots)
    }

    /// A rustls client configuration with the ring provider (ALPN is left to the caller).
    pub(crate) fn rustls(&self, system_roots: bool) -> Result<ClientConfig, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_root_certificates(self.roots(system_roots)?);
        match &self.identity {
            None => Ok(builder.with_no_client_auth()),
            Some(id) => builder
                .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
                .map_err(|e| TlsError::Setup(e.to_string())),
        }
    }

    /// tonic's TLS settings for the same files (tonic builds its own rustls configuration,
    /// with ring unless the process installed a default provider).
    pub(crate) fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut c = match &self.ca {
            Some((pem, _)) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let Some(id) = &self.identity {
            c = c.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap_or_default();
        p
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("skein-tls-{name}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    }

    #[test]
    fn the_signal_specific_file_wins_per_file() {
        let general = TlsConfig {
            certificate: Some("ca.pem".into()),
            client_certificate: Some("c.pem".into()),
            client_key: Some("k.pem".into()),
        };
        let traces = TlsConfig { certificate: Some("traces-ca.pem".into()), ..Default::default() };
        let t = traces.or(&general);
        assert_eq!(t.certificate, Some("traces-ca.pem".into()));
        assert_eq!(t.client_key, Some("k.pem".into()));
        assert_eq!(TlsConfig::default().or(&TlsConfig::default()), TlsConfig::default());
    }

    #[test]
    fn unreadable_or_invalid_files_are_clear_errors() {
        let d = tmpdir("invalid");
        let missing = d.join("missing.pem");
        let e = Tls::load(&TlsConfig { certificate: Some(missing.clone()), ..Default::default() })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("CA certificate file") && e.contains("missing.pem"), "{e}");
        let junk = write(&d, "junk.pem", b"not a certificate");
        let e = Tls::load(&TlsConfig { certificate: Some(junk), ..Default::default() })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("junk.pem") && e.contains("no PEM certificate"), "{e}");
        let bad =
            write(&d, "bad.pem", b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n");
        let e = Tls::load(&TlsConfig { certificate: Some(bad), ..Default::default() })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("bad.pem"), "{e}");
        let secret_key = write(&d, "key.pem", b"s3cret key material");
        let e = Tls::load(&TlsConfig {
            client_certificate: Some(missing),
            client_key: Some(secret_key.clone()),
            ..Default::default()
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("client certificate file"), "{e}");
        let e = Tls::load(&TlsConfig { client_key: Some(secret_key), ..Default::default() })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn nothing_configured_loads_nothing_and_plain_http_needs_no_roots() {
        let t = Tls::load(&TlsConfig::default()).ok();
        assert!(t.as_ref().is_some_and(|t| t.ca.is_none() && t.identity.is_none()));
        assert!(t.is_some_and(|t| t.rustls(false).is_ok()));
    }
}
