//! TLS for Phalanx's listeners and its peer client, on rustls (ring).
//!
//! - [`ServerSettings`] → [`ServerTls`]: a listener's certificate and key
//!   (re-read when the files change, checked at most every
//!   `reload_check_interval_ms` at a handshake), client-certificate
//!   verification against a CA file (`--client-cert-auth`), an optional
//!   allowed common name (`--peer-cert-allowed-cn`), cipher suites and
//!   minimum TLS version with etcd's names, ALPN.
//! - [`ClientSettings`] → [`ClientTls`]: the peer client's CA, certificate
//!   and key (or no verification, for `--peer-auto-tls`).
//! - [`incoming`]: a listener's accepted connections as [`TlsOrPlain`],
//!   handshakes done concurrently and bounded by `handshake_timeout_ms`: the
//!   seam for every server (tonic, hyper) that serves both.
//! - [`Connector`]: a tonic `Channel` connector that dials TCP and, for
//!   `https://` peers, does the TLS handshake.
//! - [`auto_tls`]: etcd's `--auto-tls`: a self-signed certificate in the data dir.
//! - [`certificate_expiries`]: every loaded certificate's expiry, per
//!   listener, for `phalanx_tls_certificate_expiry_seconds`.
//!
//! Every error names the file, the problem, and what to do about it.

pub mod certinfo;
mod conn;
mod reload;
mod reload_ca;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

pub use certinfo::CertInfo;
pub use conn::{incoming, local_pair, ConnInfo, Connector, TlsOrPlain, LOCAL_PIPE_BUFFER_BYTES};
pub use reload::ReloadingCert;
pub use rustls;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Default of [`ServerSettings::reload_check_interval_ms`]: how often (at
/// most) a handshake looks at the certificate files' modification times.
pub const DEFAULT_RELOAD_CHECK_INTERVAL_MS: u64 = 1_000;
/// Default of [`ServerSettings::handshake_timeout_ms`].
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Validity of an `--auto-tls` certificate, in days (etcd: 1 year).
pub const AUTO_TLS_VALIDITY_DAYS: i64 = 365;
/// Handshake failures on one listener are logged at most once per this many
/// ms (all are counted).
pub const HANDSHAKE_FAILURE_LOG_INTERVAL_MS: u64 = 5_000;

/// ALPN protocol ids.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// What went wrong loading TLS material. Each names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {}: cannot read the file: {source}; check the path and the permissions", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {}: {problem}", path.display())]
    Invalid {
        flag: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("{flag} {}: the certificate expired at {not_after} (Unix time {not_after_unix}); install a renewed certificate", path.display())]
    Expired {
        flag: &'static str,
        path: PathBuf,
        not_after: String,
        not_after_unix: i64,
    },
    #[error("--key-file {} does not match the certificate in {}: the key's public key differs from the certificate's; use the key the certificate was issued for", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{flag} {}: the certificate is not signed by any CA in {} ({problem}); peers that trust only that CA will refuse it", cert.display(), ca.display())]
    NotVerifiedByCa {
        flag: &'static str,
        cert: PathBuf,
        ca: PathBuf,
        problem: String,
    },
    #[error("{0}")]
    Setting(String),
    #[error("--auto-tls: cannot write a self-signed certificate in {}: {detail}", dir.display())]
    AutoTls { dir: PathBuf, detail: String },
}

/// `--tls-min-version`: etcd's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    #[default]
    Tls12,
    Tls13,
}

impl std::str::FromStr for MinVersion {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        match s {
            "TLS1.2" => Ok(MinVersion::Tls12),
            "TLS1.3" => Ok(MinVersion::Tls13),
            "TLS1.0" | "TLS1.1" => Err(TlsError::Setting(format!(
                "--tls-min-version {s}: not supported (TLS 1.0 and 1.1 are insecure and unavailable); use TLS1.2 or TLS1.3"
            ))),
            other => Err(TlsError::Setting(format!(
                "--tls-min-version {other:?}: expected TLS1.2 or TLS1.3"
            ))),
        }
    }
}

/// The cipher suites rustls offers, with etcd's (Go's) names.
pub fn supported_cipher_suites() -> Vec<String> {
    rustls::crypto::ring::default_provider()
        .cipher_suites
        .iter()
        .map(|s| format!("{:?}", s.suite()))
        .collect()
}

/// Parse `--cipher-suites` (comma-separated, Go's names as etcd takes them,
/// e.g. `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`). As in etcd (Go), the list
/// restricts TLS 1.2 suites; TLS 1.3's suites are always enabled.
pub fn parse_cipher_suites(s: &str) -> Result<Vec<String>, TlsError> {
    let supported = supported_cipher_suites();
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        // Go also names the ChaCha20 suites without their hash.
        let canon = if name.ends_with("CHACHA20_POLY1305") {
            format!("{name}_SHA256")
        } else {
            name.to_string()
        };
        if !supported.contains(&canon) {
            return Err(TlsError::Setting(format!(
                "--cipher-suites: {name:?} is not supported (CBC and RSA key-exchange suites are not offered); supported: {}",
                supported.join(", ")
            )));
        }
        out.push(canon);
    }
    if out.is_empty() {
        return Err(TlsError::Setting(
            "--cipher-suites is empty; list at least one suite or leave the flag out".into(),
        ));
    }
    Ok(out)
}

fn provider(cipher_suites: &[String], min: MinVersion) -> Result<CryptoProvider, TlsError> {
    let mut p = rustls::crypto::ring::default_provider();
    if !cipher_suites.is_empty() {
        if min == MinVersion::Tls13 {
            return Err(TlsError::Setting(
                "--cipher-suites cannot be used with --tls-min-version TLS1.3: TLS 1.3's suites are not configurable (as in etcd); drop one of the two".into(),
            ));
        }
        p.cipher_suites.retain(|s| {
            s.version() == &rustls::version::TLS13
                || cipher_suites.contains(&format!("{:?}", s.suite()))
        });
    }
    Ok(p)
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn versions(min: MinVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match min {
        MinVersion::Tls12 => rustls::ALL_VERSIONS,
        MinVersion::Tls13 => TLS13_ONLY,
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file.
pub fn load_certs(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(flag, path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    let certs = certs.map_err(|e| TlsError::Invalid {
        flag,
        path: path.to_path_buf(),
        problem: format!(
            "not a PEM certificate file ({e}); expected -----BEGIN CERTIFICATE----- blocks"
        ),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            flag,
            path: path.to_path_buf(),
            problem: "holds no certificate; expected -----BEGIN CERTIFICATE----- blocks".into(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(flag, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Invalid {
        flag,
        path: path.to_path_buf(),
        problem: format!("no usable private key ({e}); expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block"),
    })
}

/// Read a certificate chain and its key, and check them: parsable, the key
/// matching the certificate, not expired.
pub fn load_certified_key(
    cert_flag: &'static str,
    cert: &Path,
    key_flag: &'static str,
    key: &Path,
) -> Result<(Arc<rustls::sign::CertifiedKey>, CertInfo), TlsError> {
    let chain = load_certs(cert_flag, cert)?;
    let key_der = load_key(key_flag, key)?;
    let info = certinfo::parse(&chain[0]).map_err(|e| TlsError::Invalid {
        flag: cert_flag,
        path: cert.to_path_buf(),
        problem: format!("unreadable X.509 certificate: {e}"),
    })?;
    let now = now_unix();
    if info.not_after_unix < now {
        return Err(TlsError::Expired {
            flag: cert_flag,
            path: cert.to_path_buf(),
            not_after: format_unix(info.not_after_unix),
            not_after_unix: info.not_after_unix,
        });
    }
    let provider = rustls::crypto::ring::default_provider();
    let ck =
        rustls::sign::CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            },
            other => TlsError::Invalid {
                flag: key_flag,
                path: key.to_path_buf(),
                problem: format!("the private key cannot be used: {other}"),
            },
        })?;
    Ok((Arc::new(ck), info))
}

/// A CA bundle as a root store.
pub fn load_roots(flag: &'static str, path: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(flag, path)? {
        roots.add(c).map_err(|e| TlsError::Invalid {
            flag,
            path: path.to_path_buf(),
            problem: format!("a certificate in it cannot be a trust anchor: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_unix(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Inverse of days_from_civil (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// One listener's TLS settings (etcd's flags for it).
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Listener name for logs and metrics: `client`, `peer`, `metrics`.
    pub listener: String,
    /// Flag names used in errors (`--cert-file` or `--peer-cert-file` ...).
    pub flags: FlagNames,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA bundle verifying client certificates.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `trusted_ca_file`.
    pub client_cert_auth: bool,
    /// Only client certificates with this subject CN are accepted.
    pub allowed_cn: Option<String>,
    /// TLS 1.2 suites allowed (empty: rustls's defaults).
    pub cipher_suites: Vec<String>,
    pub min_version: MinVersion,
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<Vec<u8>>,
    /// At most this often (ms) a handshake checks whether the files changed.
    pub reload_check_interval_ms: u64,
    /// Bound (ms) on one TLS handshake of an accepted connection.
    pub handshake_timeout_ms: u64,
}

/// The flag names of one listener's settings, for messages.
#[derive(Debug, Clone, Copy)]
pub struct FlagNames {
    pub cert: &'static str,
    pub key: &'static str,
    pub ca: &'static str,
}

pub const CLIENT_FLAGS: FlagNames = FlagNames {
    cert: "--cert-file",
    key: "--key-file",
    ca: "--trusted-ca-file",
};
pub const PEER_FLAGS: FlagNames = FlagNames {
    cert: "--peer-cert-file",
    key: "--peer-key-file",
    ca: "--peer-trusted-ca-file",
};
pub const METRICS_FLAGS: FlagNames = FlagNames {
    cert: "--metrics-cert-file",
    key: "--metrics-key-file",
    ca: "--metrics-trusted-ca-file",
};

/// A ready server-side TLS configuration.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub listener: String,
    pub config: Arc<rustls::ServerConfig>,
    pub cert: Arc<ReloadingCert>,
    pub handshake_timeout_ms: u64,
}

impl ServerTls {
    pub fn new(s: &ServerSettings) -> Result<ServerTls, TlsError> {
        let cert = ReloadingCert::load(
            &s.listener,
            s.flags,
            &s.cert_file,
            &s.key_file,
            s.reload_check_interval_ms,
        )?;
        let provider = Arc::new(provider(&s.cipher_suites, s.min_version)?);
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions(s.min_version))
            .map_err(|e| {
                TlsError::Setting(format!("TLS settings of the {} listener: {e}", s.listener))
            })?;
        let builder = if s.client_cert_auth {
            let Some(ca) = &s.trusted_ca_file else {
                return Err(TlsError::Setting(format!(
                    "client certificate authentication on the {} listener needs {} (the CA that signs client certificates)",
                    s.listener, s.flags.ca
                )));
            };
            // Re-read when the file changes (CA rotation without restart).
            let build_provider = provider.clone();
            let inner =
                reload_ca::ReloadingCa::<dyn rustls::server::danger::ClientCertVerifier>::load(
                    &s.listener,
                    s.flags.ca,
                    ca,
                    s.reload_check_interval_ms,
                    Box::new(move |roots| {
                        rustls::server::WebPkiClientVerifier::builder_with_provider(
                            roots,
                            build_provider.clone(),
                        )
                        .build()
                        .map(|v| v as Arc<dyn rustls::server::danger::ClientCertVerifier>)
                        .map_err(|e| format!("cannot verify client certificates with it: {e}"))
                    }),
                )?;
            builder.with_client_cert_verifier(Arc::new(verify::ClientVerifier {
                inner,
                allowed_cn: s.allowed_cn.clone(),
                listener: s.listener.clone(),
            }))
        } else {
            if s.allowed_cn.is_some() {
                return Err(TlsError::Setting(format!(
                    "an allowed common name on the {} listener needs client certificate authentication (--peer-client-cert-auth)",
                    s.listener
                )));
            }
            builder.with_no_client_auth()
        };
        let mut config = builder.with_cert_resolver(cert.clone());
        config.alpn_protocols = s.alpn.clone();
        Ok(ServerTls {
            listener: s.listener.clone(),
            config: Arc::new(config),
            cert,
            handshake_timeout_ms: s.handshake_timeout_ms,
        })
    }
}

/// Peer-client TLS settings.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    /// CA bundle verifying the server's certificate.
    pub trusted_ca_file: Option<PathBuf>,
    /// This member's certificate and key, presented to the server.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Do not verify the server (etcd's `--peer-auto-tls` does the same).
    pub insecure_skip_verify: bool,
    pub cipher_suites: Vec<String>,
    pub min_version: MinVersion,
    pub reload_check_interval_ms: u64,
}

/// A ready client-side TLS configuration.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// For messages: what this client trusts and presents.
    pub describe_ca: String,
    pub describe_cert: String,
}

impl ClientTls {
    pub fn new(s: &ClientSettings, flags: FlagNames) -> Result<ClientTls, TlsError> {
        let provider = Arc::new(provider(&s.cipher_suites, s.min_version)?);
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions(s.min_version))
            .map_err(|e| TlsError::Setting(format!("peer TLS settings: {e}")))?;
        let (builder, describe_ca) = match (&s.trusted_ca_file, s.insecure_skip_verify) {
            (_, true) => (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verify::NoServerVerification(provider))),
                "nothing (auto TLS: peers are not verified)".to_string(),
            ),
            (Some(ca), false) => {
                // Re-read when the file changes (CA rotation without restart).
                let build_provider = provider.clone();
                let inner = reload_ca::ReloadingCa::load(
                    "peer-client",
                    flags.ca,
                    ca,
                    s.reload_check_interval_ms,
                    Box::new(move |roots| {
                        rustls::client::WebPkiServerVerifier::builder_with_provider(
                            roots,
                            build_provider.clone(),
                        )
                        .build()
                        .map_err(|e| format!("cannot verify servers with it: {e}"))
                    }),
                )?;
                (
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(verify::ServerVerifier {
                            inner,
                        })),
                    format!("the CAs in {} {}", flags.ca, ca.display()),
                )
            }
            (None, false) => {
                return Err(TlsError::Setting(format!(
                    "TLS to peers needs {} (the CA that signs the peers' certificates), or --peer-auto-tls",
                    flags.ca
                )))
            }
        };
        let (config, describe_cert) = match (&s.cert_file, &s.key_file) {
            (Some(c), Some(k)) => {
                let cert =
                    ReloadingCert::load("peer-client", flags, c, k, s.reload_check_interval_ms)?;
                (
                    builder.with_client_cert_resolver(cert),
                    format!("{} {}", flags.cert, c.display()),
                )
            }
            (None, None) => (builder.with_no_client_auth(), "no certificate".to_string()),
            _ => {
                return Err(TlsError::Setting(format!(
                    "{} and {} go together: give both or neither",
                    flags.cert, flags.key
                )))
            }
        };
        let mut config = config;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
            describe_ca,
            describe_cert,
        })
    }
}

/// Check that `cert` (first of the chain) is signed by a CA in `ca`: a member
/// whose own peer certificate its peers' CA does not sign would be refused
/// by every peer, so it is better refused at start, with the reason.
pub fn check_signed_by(
    cert_flag: &'static str,
    cert: &Path,
    ca_flag: &'static str,
    ca: &Path,
) -> Result<(), TlsError> {
    let roots = load_roots(ca_flag, ca)?;
    let chain = load_certs(cert_flag, cert)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots,
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| TlsError::Setting(format!("{ca_flag} {}: {e}", ca.display())))?;
    verifier
        .verify_client_cert(&chain[0], &chain[1..], rustls::pki_types::UnixTime::now())
        .map(|_| ())
        .map_err(|e| TlsError::NotVerifiedByCa {
            flag: cert_flag,
            cert: cert.to_path_buf(),
            ca: ca.to_path_buf(),
            problem: e.to_string(),
        })
}

/// Check that `cert` (first of the chain) names `name` as its subject CN or
/// a DNS subject alternative name (what [`ConnInfo::certificate_names`]
/// checks on the peer's side): with `--peer-cert-identity` every peer would
/// refuse a member whose own certificate does not name it, so it is better
/// refused at start, with the reason.
pub fn check_names(cert_flag: &'static str, cert: &Path, name: &str) -> Result<(), TlsError> {
    let chain = load_certs(cert_flag, cert)?;
    let info = certinfo::parse(&chain[0]).map_err(|e| TlsError::Invalid {
        flag: cert_flag,
        path: cert.to_path_buf(),
        problem: format!("unreadable certificate: {e}"),
    })?;
    let conn = ConnInfo {
        peer_cn: info.subject_cn.clone(),
        peer_dns_names: info.dns_names.clone(),
        ..Default::default()
    };
    if conn.certificate_names(name) {
        return Ok(());
    }
    Err(TlsError::Invalid {
        flag: cert_flag,
        path: cert.to_path_buf(),
        problem: format!(
            "its subject CN is {:?} and its DNS names are {:?}: neither is this member's name {name:?}, \
             so with --peer-cert-identity every peer would refuse it; issue it with CN or a DNS name {name:?}",
            info.subject_cn.unwrap_or_default(),
            info.dns_names,
        ),
    })
}

/// etcd's `--auto-tls`/`--peer-auto-tls`: a self-signed certificate for
/// `hosts` (IPs and names) in `dir` (`cert.pem`, `key.pem`), made once and
/// reused while it is valid. Returns (cert, key) paths.
pub fn auto_tls(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let err = |detail: String| TlsError::AutoTls {
        dir: dir.to_path_buf(),
        detail,
    };
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists()
        && key.exists()
        && load_certified_key("--auto-tls", &cert, "--auto-tls", &key).is_ok()
    {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let mut hosts = hosts.to_vec();
    if hosts.is_empty() {
        hosts.push("localhost".into());
    }
    let g = gen::self_signed(&hosts, "phalanx auto-tls", AUTO_TLS_VALIDITY_DAYS)
        .map_err(|e| err(e.to_string()))?;
    std::fs::write(&cert, g.cert_pem).map_err(|e| err(e.to_string()))?;
    write_private(&key, &g.key_pem).map_err(|e| err(e.to_string()))?;
    Ok((cert, key))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Certificate generation (rcgen), for `--auto-tls` and for tests.
pub mod gen {
    /// A PEM certificate and its PEM key.
    pub struct Generated {
        pub cert_pem: String,
        pub key_pem: String,
    }

    fn params(
        hosts: &[String],
        cn: &str,
        valid_days: i64,
    ) -> Result<rcgen::CertificateParams, rcgen::Error> {
        let mut p = rcgen::CertificateParams::new(hosts.to_vec())?;
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let now = rcgen::date_time_ymd(2000, 1, 1)
            + std::time::Duration::from_secs((super::now_unix() - 946_684_800 - 3600).max(0) as u64);
        p.not_before = now;
        p.not_after = now + std::time::Duration::from_secs((valid_days.max(0) as u64) * 86_400);
        Ok(p)
    }

    pub fn self_signed(
        hosts: &[String],
        cn: &str,
        valid_days: i64,
    ) -> Result<Generated, rcgen::Error> {
        let key = rcgen::KeyPair::generate()?;
        let cert = params(hosts, cn, valid_days)?.self_signed(&key)?;
        Ok(Generated {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A certificate authority that issues certificates.
    pub struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    impl Ca {
        pub fn new(cn: &str) -> Result<Ca, rcgen::Error> {
            let key = rcgen::KeyPair::generate()?;
            let mut p = params(&[], cn, 3650)?;
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
            let cert = p.self_signed(&key)?;
            Ok(Ca { cert, key })
        }

        pub fn cert_pem(&self) -> String {
            self.cert.pem()
        }

        /// A certificate for `hosts` (usable as server and client) with
        /// subject CN `cn`, valid `valid_days` from an hour ago (negative:
        /// already expired), with the given serial.
        pub fn issue(
            &self,
            cn: &str,
            hosts: &[String],
            serial: u64,
            valid_days: i64,
        ) -> Result<Generated, rcgen::Error> {
            let key = rcgen::KeyPair::generate()?;
            let mut p = params(hosts, cn, valid_days.max(0))?;
            if valid_days < 0 {
                let d = std::time::Duration::from_secs((-valid_days) as u64 * 86_400);
                p.not_after = p.not_before - std::time::Duration::from_secs(60);
                p.not_before = p.not_before - d - d;
            }
            p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial.to_be_bytes()));
            p.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = p.signed_by(&key, &self.cert, &self.key)?;
            Ok(Generated {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        }
    }
}

/// Process-wide view of the certificates in use, for metrics.
static CERTS: Mutex<Vec<(String, Weak<ReloadingCert>)>> = Mutex::new(Vec::new());
static HANDSHAKE_FAILURES: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

pub(crate) fn register(listener: &str, cert: &Arc<ReloadingCert>) {
    let mut v = CERTS.lock().expect("tls registry poisoned");
    v.retain(|(_, w)| w.strong_count() > 0);
    v.push((listener.to_string(), Arc::downgrade(cert)));
}

pub(crate) fn count_handshake_failure(listener: &str) -> u64 {
    let mut v = HANDSHAKE_FAILURES.lock().expect("tls registry poisoned");
    match v.iter_mut().find(|(l, _)| l == listener) {
        Some((_, n)) => {
            *n += 1;
            *n
        }
        None => {
            v.push((listener.to_string(), 1));
            1
        }
    }
}

/// (listener, `notAfter` as Unix seconds) of every certificate in use.
pub fn certificate_expiries() -> Vec<(String, i64)> {
    let v = CERTS.lock().expect("tls registry poisoned");
    v.iter()
        .filter_map(|(l, w)| w.upgrade().map(|c| (l.clone(), c.info().not_after_unix)))
        .collect()
}

/// (listener, failed TLS handshakes so far).
pub fn handshake_failures() -> Vec<(String, u64)> {
    HANDSHAKE_FAILURES
        .lock()
        .expect("tls registry poisoned")
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_member_certificate_must_name_the_member() {
        let d = tempfile::tempdir().unwrap();
        let ca = gen::Ca::new("ca").unwrap();
        let g = ca
            .issue(
                "n1",
                &["127.0.0.1".into(), "n1.peers.example".into()],
                1,
                30,
            )
            .unwrap();
        let cert = write(d.path(), "n1.crt", &g.cert_pem);
        check_names("--peer-cert-file", &cert, "n1").unwrap();
        check_names("--peer-cert-file", &cert, "N1.peers.example").unwrap();
        let e = check_names("--peer-cert-file", &cert, "n2")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("n1.crt")
                && e.contains("\"n1\"")
                && e.contains("n1.peers.example")
                && e.contains("\"n2\""),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let d = tempfile::tempdir().unwrap();
        let ca = gen::Ca::new("ca").unwrap();
        let a = ca.issue("a", &["127.0.0.1".into()], 1, 30).unwrap();
        let b = ca.issue("b", &["127.0.0.1".into()], 2, 30).unwrap();
        let old = ca.issue("old", &["127.0.0.1".into()], 3, -2).unwrap();
        let (ac, ak) = (
            write(d.path(), "a.pem", &a.cert_pem),
            write(d.path(), "a.key", &a.key_pem),
        );
        let bk = write(d.path(), "b.key", &b.key_pem);
        let (oc, ok) = (
            write(d.path(), "o.pem", &old.cert_pem),
            write(d.path(), "o.key", &old.key_pem),
        );
        let junk = write(d.path(), "junk.pem", "hello");
        let missing = d.path().join("missing.pem");

        let (_, info) = load_certified_key("--cert-file", &ac, "--key-file", &ak).unwrap();
        assert_eq!(info.serial_hex, "01");
        let e = load_certified_key("--cert-file", &ac, "--key-file", &bk)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("b.key") && e.contains("does not match") && e.contains("a.pem"),
            "{e}"
        );
        let e = load_certified_key("--cert-file", &oc, "--key-file", &ok)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("o.pem") && e.contains("expired") && e.contains("renewed"),
            "{e}"
        );
        let e = load_certified_key("--cert-file", &missing, "--key-file", &ak)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );
        let e = load_certified_key("--cert-file", &junk, "--key-file", &ak)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("junk.pem") && e.contains("no certificate"),
            "{e}"
        );

        let other = gen::Ca::new("other").unwrap();
        let caf = write(d.path(), "ca.pem", &ca.cert_pem());
        let otherf = write(d.path(), "other.pem", &other.cert_pem());
        check_signed_by("--peer-cert-file", &ac, "--peer-trusted-ca-file", &caf).unwrap();
        let e = check_signed_by("--peer-cert-file", &ac, "--peer-trusted-ca-file", &otherf)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.pem") && e.contains("other.pem") && e.contains("not signed"),
            "{e}"
        );
    }

    #[test]
    fn cipher_suites_and_versions_use_etcd_names() {
        let s = parse_cipher_suites(
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        let e = parse_cipher_suites("TLS_RSA_WITH_AES_128_CBC_SHA")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not supported") && e.contains("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
            "{e}"
        );
        assert_eq!("TLS1.3".parse::<MinVersion>().unwrap(), MinVersion::Tls13);
        assert!("TLS1.1".parse::<MinVersion>().is_err());
        assert!(provider(&s, MinVersion::Tls13).is_err());
        let p = provider(&s, MinVersion::Tls12).unwrap();
        assert_eq!(p.cipher_suites.len(), 2 + 3);
    }

    #[test]
    fn format_unix_is_iso8601() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(2_876_860_800 + 3661), "2061-03-01T01:01:01Z");
    }
}
