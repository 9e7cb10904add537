//! TLS: serving `https` and `wss` directly with rustls (the `ring` provider), and
//! reloading the certificate without a restart when its files change.
//!
//! Reloading polls the files' modification times every `tls.reload_interval` rather
//! than waiting for a signal: certificate renewers (certbot, cert-manager's mounted
//! secrets) replace files and rarely know which process to signal.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// Why the certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("tls.{key} ({path}): {reason}")]
    File {
        /// The configuration key naming the file: `cert` or `key`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key does not fit the certificate, or rustls refused the pair.
    #[error("tls.cert and tls.key: {0}")]
    Pair(String),
}

/// The certificate served to new connections, replaced when the files change.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a whole certificate: the writer only swaps an Arc.
        let current = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(current.clone())
    }
}

/// A TLS server configuration whose certificate follows its files.
pub struct Tls {
    config: TlsConfig,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
    loaded: Stamps,
}

/// What identifies a version of the two files: modification time and length of each.
type Stamps = [Option<(SystemTime, u64)>; 2];

impl Tls {
    /// Loads `config.cert` and `config.key`.
    ///
    /// # Errors
    /// [`TlsError`] naming the key whose file is missing, unreadable or unusable.
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        let loaded = stamps(config);
        let key = load_pair(&config.cert, &config.key)?;
        let current = Arc::new(Current(RwLock::new(Arc::new(key))));
        let mut server = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pair(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // The front door speaks HTTP/1.1 only (WebSocket upgrades need it).
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: config.clone(),
            current,
            acceptor: TlsAcceptor::from(Arc::new(server)),
            loaded,
        })
    }

    /// The acceptor for the front door.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Checks the files every `tls.reload_interval` until `stop`, and loads them again
    /// when either changed. A pair that fails to load is logged and the previous
    /// certificate kept; it is tried again when the files change again.
    pub(crate) async fn watch(self, stop: CancellationToken) {
        let Self {
            config,
            current,
            mut loaded,
            ..
        } = self;
        let mut tick = tokio::time::interval(config.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Cancel-safe: holds no state.
                () = stop.cancelled() => return,
                // Cancel-safe: a missed tick is simply taken later.
                _ = tick.tick() => {}
            }
            let now = stamps(&config);
            if now == loaded {
                continue;
            }
            loaded = now;
            match load_pair(&config.cert, &config.key) {
                Ok(key) => {
                    *current
                        .0
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(key);
                    tracing::info!(cert = %config.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => tracing::warn!(error = %e, "TLS certificate not reloaded"),
            }
        }
    }
}

/// The files' current stamps (`None` for a file that can not be read now).
fn stamps(config: &TlsConfig) -> Stamps {
    let stamp = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    [stamp(&config.cert), stamp(&config.key)]
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let file_error = |name: &'static str, path: &Path, reason: String| TlsError::File {
        key: name,
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|items| items.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error("cert", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(
            "cert",
            cert,
            "no CERTIFICATE in the file".into(),
        ));
    }
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("key", key, e.to_string()))?;
    CertifiedKey::from_der(chain, private, &ring::default_provider())
        .map_err(|e| TlsError::Pair(e.to_string()))
}
