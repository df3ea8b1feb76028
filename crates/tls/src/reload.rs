//! A certificate and key re-read when their files change: rotation without
//! a restart. At a handshake, at most once per `check_interval_ms`, the
//! files' modification times and sizes are compared with the loaded ones; on
//! a change both are re-read and checked (key matches, not expired). A pair
//! that fails the check (e.g. the certificate was replaced but not yet the
//! key) is logged with the reason and the previous pair stays in use until
//! the next check.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::sign::CertifiedKey;

use crate::{load_certified_key, CertInfo, FlagNames};

/// What tells a changed file: modification time and size.
pub(crate) type Stamp = Option<(SystemTime, u64)>;

pub(crate) fn stamp(p: &Path) -> Stamp {
    std::fs::metadata(p)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())))
}

struct Current {
    key: Arc<CertifiedKey>,
    info: CertInfo,
    stamps: (Stamp, Stamp),
    last_check: Instant,
    /// The last reload failure logged, so it is logged once.
    last_error: Option<String>,
}

/// See the module docs. Serves as rustls's server and client certificate resolver.
pub struct ReloadingCert {
    listener: String,
    flags: FlagNames,
    cert: PathBuf,
    key: PathBuf,
    check_interval: Duration,
    current: Mutex<Current>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("listener", &self.listener)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl ReloadingCert {
    pub fn load(
        listener: &str,
        flags: FlagNames,
        cert: &Path,
        key: &Path,
        check_interval_ms: u64,
    ) -> Result<Arc<ReloadingCert>, crate::TlsError> {
        let stamps = (stamp(cert), stamp(key));
        let (ck, info) = load_certified_key(flags.cert, cert, flags.key, key)?;
        let rc = Arc::new(ReloadingCert {
            listener: listener.to_string(),
            flags,
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            check_interval: Duration::from_millis(check_interval_ms),
            current: Mutex::new(Current {
                key: ck,
                info,
                stamps,
                last_check: Instant::now(),
                last_error: None,
            }),
        });
        crate::register(listener, &rc);
        Ok(rc)
    }

    /// The certificate in use.
    pub fn info(&self) -> CertInfo {
        self.current.lock().expect("cert poisoned").info.clone()
    }

    /// The pair to use now, re-read first if the files changed.
    pub fn get(&self) -> Arc<CertifiedKey> {
        let mut cur = self.current.lock().expect("cert poisoned");
        if cur.last_check.elapsed() >= self.check_interval {
            cur.last_check = Instant::now();
            let now = (stamp(&self.cert), stamp(&self.key));
            if now != cur.stamps {
                match load_certified_key(self.flags.cert, &self.cert, self.flags.key, &self.key) {
                    Ok((k, info)) => {
                        tracing::info!(
                            "{} listener: reloaded certificate {} (serial {}, expires {})",
                            self.listener,
                            self.cert.display(),
                            info.serial_hex,
                            crate::format_unix(info.not_after_unix)
                        );
                        cur.key = k;
                        cur.info = info;
                        cur.stamps = now;
                        cur.last_error = None;
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        if cur.last_error.as_deref() != Some(&msg) {
                            tracing::warn!(
                                "{} listener: keeping the previous certificate (serial {}): the changed files cannot be used: {msg}",
                                self.listener,
                                cur.info.serial_hex
                            );
                            cur.last_error = Some(msg);
                        }
                    }
                }
            }
        }
        cur.key.clone()
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for ReloadingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
