//! TLS for the gateway, on rustls (ring):
//!
//! * `https` listeners: [`load_server_config`] checks a PEM certificate chain
//!   and key; [`reloading_server_config`] serves them through a
//!   [`ReloadingCert`] resolver that re-reads the files when they change
//!   (checked at most every `tls_reload_check_interval_ms`, at a handshake),
//!   so certificates rotate without a restart. ALPN `h2` and `http/1.1`.
//! * pools with `tls`: [`load_client_config`] builds the client side (CA,
//!   optional client certificate for mutual TLS); the pool's connector
//!   (`upstream.rs`) does the handshake with the configured SNI.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::config::UpstreamTlsConfig;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificate {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", path.display()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read private key {}: {e}", path.display()))
}

/// A certificate chain and its key, checked to match.
fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    CertifiedKey::from_der(chain, key_der, &provider())
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "certificate {} and key {} do not go together: {e}",
                cert.display(),
                key.display()
            )
        })
}

/// Build a rustls server configuration (ring provider) from PEM files
/// (read once).
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let ck = load_certified_key(cert, key)?;
    let resolver = rustls::sign::SingleCertAndKey::from(ck);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A server configuration whose certificate follows the files (see
/// [`ReloadingCert`]).
pub fn reloading_server_config(
    cert: &Path,
    key: &Path,
    check_interval_ms: u64,
) -> Result<(Arc<rustls::ServerConfig>, Arc<ReloadingCert>), String> {
    let rc = Arc::new(ReloadingCert::load(cert, key, check_interval_ms)?);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(rc.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(cfg), rc))
}

/// Modification time and size of both files: a change of either means
/// "look again".
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (m.modified().ok(), m.len()))
            .unwrap_or((None, 0))
    };
    [one(cert), one(key)]
}

struct ReloadState {
    current: Arc<CertifiedKey>,
    stamp: Stamp,
    last_check: Instant,
    /// The last reload failure, logged once per distinct message.
    last_error: Option<String>,
}

/// A listener's certificate, re-read from its files when they change:
/// at a handshake, at most once per check interval, the files' modification
/// times and sizes are compared; on a change both are loaded and checked
/// (parse, key matches certificate). A pair that does not load (e.g. the
/// certificate replaced but not yet the key) is not used: the previous one
/// goes on being served, the reason is logged once, and the files are looked
/// at again at the next interval. Connections keep the certificate they
/// were established with.
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    state: Mutex<ReloadState>,
    reloads: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl ReloadingCert {
    /// Load the pair now (an error names the file).
    pub fn load(cert: &Path, key: &Path, check_interval_ms: u64) -> Result<ReloadingCert, String> {
        let st = stamp(cert, key);
        let current = load_certified_key(cert, key)?;
        Ok(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            interval: Duration::from_millis(check_interval_ms),
            state: Mutex::new(ReloadState {
                current,
                stamp: st,
                last_check: Instant::now(),
                last_error: None,
            }),
            reloads: Default::default(),
        })
    }

    /// Successful reloads so far.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The certificate to serve, reloaded first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.last_check.elapsed() >= self.interval {
            st.last_check = Instant::now();
            let now = stamp(&self.cert, &self.key);
            if now != st.stamp {
                match load_certified_key(&self.cert, &self.key) {
                    Ok(ck) => {
                        st.current = ck;
                        st.stamp = now;
                        st.last_error = None;
                        self.reloads
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(
                            cert = %self.cert.display(),
                            "gateway: https listener certificate reloaded"
                        );
                    }
                    Err(e) => {
                        if st.last_error.as_deref() != Some(e.as_str()) {
                            tracing::warn!("gateway: https listener keeps its previous certificate: {e}; retrying at the next check");
                            st.last_error = Some(e);
                        }
                    }
                }
            }
        }
        st.current.clone()
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A pool's client-side TLS configuration, offering `alpn`. Errors are
/// (field, reason), the field relative to the pool's `tls` table.
pub fn load_client_config(
    t: &UpstreamTlsConfig,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, (&'static str, String)> {
    let Some(ca) = &t.ca_path else {
        return Err((
            "ca_path",
            "required: the CA bundle that verifies the endpoints' certificates".into(),
        ));
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca).map_err(|e| ("ca_path", e))? {
        roots.add(c).map_err(|e| {
            (
                "ca_path",
                format!("{}: not a usable CA certificate: {e}", ca.display()),
            )
        })?;
    }
    if let Some(n) = &t.server_name {
        rustls::pki_types::ServerName::try_from(n.as_str()).map_err(|e| {
            (
                "server_name",
                format!("`{n}` is not a DNS name or IP address: {e}"),
            )
        })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("ca_path", e.to_string()))?
        .with_root_certificates(roots);
    let mut cfg = match (&t.cert_path, &t.key_path) {
        (Some(c), Some(k)) => {
            let ck = load_certified_key(c, k).map_err(|e| ("cert_path", e))?;
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(ck)))
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => return Err(("key_path", "required with cert_path".into())),
        (None, Some(_)) => return Err(("cert_path", "required with key_path".into())),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}
