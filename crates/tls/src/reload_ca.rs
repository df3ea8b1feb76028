//! A CA bundle re-read when its file changes, like [`crate::ReloadingCert`]:
//! at a handshake, at most once per `check_interval_ms`, the file's
//! modification time and size are compared with the loaded one's; on a
//! change the bundle is re-read and a new verifier built from it. A bundle
//! that cannot be used (unreadable, no certificate, not a CA) is logged
//! once with the reason and the previous verifier stays in use until the
//! next check. Connections already established keep the verification they
//! had.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::reload::{stamp, Stamp};
use crate::{load_roots, TlsError};

/// Builds a verifier from a root store; errors are the problem, for people.
type Build<V> = Box<dyn Fn(Arc<rustls::RootCertStore>) -> Result<Arc<V>, String> + Send + Sync>;

struct Current<V: ?Sized> {
    verifier: Arc<V>,
    stamp: Stamp,
    last_check: Instant,
    /// The last reload failure logged, so it is logged once.
    last_error: Option<String>,
}

/// A verifier built from a CA file, rebuilt when the file changes.
pub(crate) struct ReloadingCa<V: ?Sized> {
    /// For logs: `client`, `peer`, `peer-client`, `metrics`.
    listener: String,
    flag: &'static str,
    path: PathBuf,
    check_interval: Duration,
    build: Build<V>,
    current: Mutex<Current<V>>,
}

impl<V: ?Sized> std::fmt::Debug for ReloadingCa<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCa")
            .field("listener", &self.listener)
            .field("path", &self.path)
            .finish()
    }
}

impl<V: ?Sized> ReloadingCa<V> {
    /// Read `path` (the value of `flag`) and build its verifier; errors name
    /// the flag, the file and the problem.
    pub(crate) fn load(
        listener: &str,
        flag: &'static str,
        path: &Path,
        check_interval_ms: u64,
        build: Build<V>,
    ) -> Result<ReloadingCa<V>, TlsError> {
        let stamp = stamp(path);
        let verifier = build(load_roots(flag, path)?).map_err(|problem| TlsError::Invalid {
            flag,
            path: path.to_path_buf(),
            problem,
        })?;
        Ok(ReloadingCa {
            listener: listener.to_string(),
            flag,
            path: path.to_path_buf(),
            check_interval: Duration::from_millis(check_interval_ms),
            build,
            current: Mutex::new(Current {
                verifier,
                stamp,
                last_check: Instant::now(),
                last_error: None,
            }),
        })
    }

    /// The verifier to use now, rebuilt first if the file changed.
    pub(crate) fn get(&self) -> Arc<V> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.last_check.elapsed() >= self.check_interval {
            cur.last_check = Instant::now();
            let now = stamp(&self.path);
            if now != cur.stamp {
                let rebuilt = load_roots(self.flag, &self.path)
                    .map_err(|e| e.to_string())
                    .and_then(|roots| {
                        let n = roots.len();
                        (self.build)(roots).map(|v| (v, n)).map_err(|problem| {
                            format!("{} {}: {problem}", self.flag, self.path.display())
                        })
                    });
                match rebuilt {
                    Ok((v, n)) => {
                        tracing::info!(
                            "{} listener: reloaded CA bundle {} ({n} certificates)",
                            self.listener,
                            self.path.display()
                        );
                        cur.verifier = v;
                        cur.stamp = now;
                        cur.last_error = None;
                    }
                    Err(msg) => {
                        if cur.last_error.as_deref() != Some(&msg) {
                            tracing::warn!(
                                "{} listener: keeping the previous CA bundle: the changed file cannot be used: {msg}",
                                self.listener
                            );
                            cur.last_error = Some(msg);
                        }
                    }
                }
            }
        }
        cur.verifier.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    fn leaf(pem: &str) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
    }

    /// The peer client's verifier (`ClientTls` with `--peer-trusted-ca-file`)
    /// follows a rotated bundle: a server of a newly trusted CA passes, one
    /// of a retired CA fails, and an unusable file keeps the previous bundle.
    #[test]
    fn peer_client_verification_follows_the_ca_file() {
        let d = tempfile::tempdir().unwrap();
        let old = crate::gen::Ca::new("old").unwrap();
        let new = crate::gen::Ca::new("new").unwrap();
        let host = vec!["127.0.0.1".to_string()];
        let old_srv = leaf(&old.issue("a", &host, 1, 30).unwrap().cert_pem);
        let new_srv = leaf(&new.issue("b", &host, 2, 30).unwrap().cert_pem);
        let file = d.path().join("ca.pem");
        std::fs::write(&file, old.cert_pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = ReloadingCa::load(
            "peer-client",
            "--peer-trusted-ca-file",
            &file,
            0,
            Box::new(move |roots| {
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| e.to_string())
            }),
        )
        .unwrap();
        let v = crate::verify::ServerVerifier { inner: ca };
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let check = |c: &CertificateDer<'_>| {
            v.verify_server_cert(c, &[], &name, &[], UnixTime::now())
                .is_ok()
        };
        assert!(check(&old_srv));
        assert!(!check(&new_srv));

        // Rewrite with both: the size changes, so the next check reloads.
        std::fs::write(&file, old.cert_pem() + &new.cert_pem()).unwrap();
        assert!(check(&new_srv) && check(&old_srv));

        // Unusable: the previous bundle (both CAs) stays in force.
        std::fs::write(&file, "garbage").unwrap();
        assert!(check(&new_srv) && check(&old_srv));

        std::fs::write(&file, new.cert_pem()).unwrap();
        assert!(check(&new_srv));
        assert!(!check(&old_srv));
    }
}
