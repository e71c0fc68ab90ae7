//! TLS for the HTTP port: a rustls `ServerConfig` (ring provider; TLS 1.3 and 1.2; ALPN `h2`, then
//! `http/1.1`) built from PEM files: the certificate chain, its private key and, for mutual TLS,
//! the CA certificates client certificates must chain to. `Tls` holds the current config; `reload`
//! re-reads the files and swaps it in for the next handshakes, keeping the old one on any error.
//! Open connections keep the config they were accepted with. No sockets and no signals here: the
//! accept loop (`net`) does the handshakes and calls `reload` on SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;

/// ALPN protocols offered, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} in the file")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("{path}: bad PEM {what}: {message}")]
    BadPem {
        path: PathBuf,
        what: &'static str,
        message: String,
    },
    #[error("client CA {path}: {message}")]
    ClientCa { path: PathBuf, message: String },
    /// rustls refused the combination, e.g. a key that does not match the certificate.
    #[error("certificate {cert} with key {key}: {source}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every `CERTIFICATE` block of a PEM file, in order; at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |e: rustls::pki_types::pem::Error| TlsError::BadPem {
        path: path.to_owned(),
        what: "certificate",
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    if certs.is_empty() {
        return Err(TlsError::NoPem {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1). Its bytes never reach a log or
/// an error message.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPem {
            path: path.to_owned(),
            what: "private key",
        },
        e => TlsError::BadPem {
            path: path.to_owned(),
            what: "private key",
            message: e.to_string(),
        },
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config from the files: the certificate chain and key, client certificates required
/// and verified when a client CA is given, ALPN `h2` and `http/1.1`.
pub fn server_config(files: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let config_error = |source| TlsError::Config {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let ca_error = |message: String| TlsError::ClientCa {
                path: path.clone(),
                message,
            };
            let mut roots = RootCertStore::empty();
            for ca in read_certs(path)? {
                roots.add(ca).map_err(|e| ca_error(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
                .build()
                .map_err(|e| ca_error(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(config_error)?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The TLS state of a listener: where the files are and the config new handshakes use.
pub struct Tls {
    files: TlsSettings,
    /// Read once per accepted connection and written on reload: a std lock, held only to clone or
    /// replace an `Arc` (no `.await` inside), so neither side waits measurably.
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads the files; an error here means the server does not start.
    pub fn load(files: &TlsSettings) -> Result<Tls, TlsError> {
        Ok(Tls {
            current: RwLock::new(Arc::new(server_config(files)?)),
            files: files.clone(),
        })
    }

    pub fn files(&self) -> &TlsSettings {
        &self.files
    }

    /// Mutual TLS: every connection presents a verified client certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// An acceptor with the current config, for one connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .expect("no panics while the lock is held. This is a bug.")
            .clone();
        TlsAcceptor::from(config)
    }

    /// Re-reads the files; on success the next handshakes use them, on error the old config stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(server_config(&self.files)?);
        *self
            .current
            .write()
            .expect("no panics while the lock is held. This is a bug.") = fresh;
        Ok(())
    }
}
