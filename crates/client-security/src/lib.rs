//! How Phalanx's own tools reach an etcd-v3 cluster with TLS and auth on:
//! etcdctl's `--cacert`, `--cert`, `--key` and `--user name:password`, turned
//! into `etcd_client::ConnectOptions`. One owner for the concept: `bench`,
//! `drill`, and the binary's cluster-facing commands all go through
//! [`ClientSecurity`] (the binary's clap flags are `cli::client::SecurityArgs`).
//!
//! - [`ClientSecuritySettings`]: the file paths and the user, as given.
//! - [`ClientSecurity::load`]: reads and checks the files once (PEM parses,
//!   the key matches the certificate, not expired; errors name the flag and
//!   the file), so that the many reconnections of a drill or a benchmark do
//!   not re-read them.
//! - [`ClientSecurity::options`]: a client's connect options for a set of
//!   endpoints. `https://` endpoints get TLS (the `--cacert` CA, or the
//!   system's trust store without it, as etcdctl); `--user` makes
//!   etcd-client authenticate on connect and again whenever the server
//!   answers `invalid auth token` (a simple token is member-local and does
//!   not survive a restart).
//! - [`ClientSecurity::connect`]: a client; with a user and several
//!   endpoints it is pinned to one member (simple tokens are member-local).

use std::path::{Path, PathBuf};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// Errors of [`ClientSecurity::load`]; each names the flag and the file.
#[derive(Debug, thiserror::Error)]
pub enum ClientSecurityError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{flag} {}: cannot read the file: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

/// What the user gave: etcdctl's flags.
#[derive(Debug, Clone, Default)]
pub struct ClientSecuritySettings {
    /// `--cacert`: CA bundle verifying the servers' certificates.
    pub cacert: Option<PathBuf>,
    /// `--cert`, `--key`: client certificate and key (for `--client-cert-auth`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `--user name:password`.
    pub user: Option<String>,
}

/// Loaded and checked TLS material and credentials; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    tls: Option<TlsOptions>,
    /// Something TLS-specific was given (a CA or a certificate).
    tls_files_given: bool,
    user: Option<(String, String)>,
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, ClientSecurityError> {
    std::fs::read(path).map_err(|source| ClientSecurityError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

/// Splits etcdctl's `--user name:password` (the password may contain `:`).
pub fn parse_user(s: &str) -> Result<(String, String), ClientSecurityError> {
    match s.split_once(':') {
        Some((name, password)) if !name.is_empty() => Ok((name.to_string(), password.to_string())),
        _ => Err(ClientSecurityError::Usage(format!(
            "--user {:?}: expected name:password",
            s.split(':').next().unwrap_or_default()
        ))),
    }
}

impl ClientSecurity {
    /// No TLS material, no user: plain `http://` endpoints, no auth.
    pub fn plain() -> ClientSecurity {
        ClientSecurity::default()
    }

    /// Reads and checks the files of `s`.
    pub fn load(s: &ClientSecuritySettings) -> Result<ClientSecurity, ClientSecurityError> {
        let mut tls = TlsOptions::new();
        let mut given = false;
        match &s.cacert {
            Some(ca) => {
                tls::load_roots("--cacert", ca)?;
                tls = tls.ca_certificate(Certificate::from_pem(read("--cacert", ca)?));
                given = true;
            }
            None => tls = tls.with_native_roots(),
        }
        match (&s.cert, &s.key) {
            (Some(c), Some(k)) => {
                tls::load_certified_key("--cert", c, "--key", k)?;
                tls = tls.identity(Identity::from_pem(read("--cert", c)?, read("--key", k)?));
                given = true;
            }
            (None, None) => {}
            _ => {
                return Err(ClientSecurityError::Usage(
                    "--cert and --key go together: give both or neither".into(),
                ))
            }
        }
        let user = s.user.as_deref().map(parse_user).transpose()?;
        Ok(ClientSecurity {
            tls: Some(tls),
            tls_files_given: given,
            user,
        })
    }

    /// The user name of `--user`, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_ref().map(|(u, _)| u.as_str())
    }

    /// `--user`'s name and password (for a tool that calls Authenticate itself).
    pub fn credentials(&self) -> Option<(String, String)> {
        self.user.clone()
    }

    /// Were `--cacert` or `--cert` given?
    pub fn tls_files_given(&self) -> bool {
        self.tls_files_given
    }

    /// The TLS settings [`ClientSecurity::options`] gives `https://` endpoints, for a
    /// tool that builds its own gRPC channel (the backup's snapshot source).
    pub fn tls_options(&self) -> TlsOptions {
        self.tls
            .clone()
            .unwrap_or_else(|| TlsOptions::new().with_native_roots())
    }

    /// `base` with TLS (for `https://` endpoints) and the user added. The
    /// endpoints must all be `https://` or all `http://`; TLS files with
    /// `http://` endpoints are refused (they would silently go unused).
    /// The error is etcd-client's `InvalidArgs`, so callers that already
    /// propagate `etcd_client::Error` need nothing more.
    pub fn options(
        &self,
        base: ConnectOptions,
        endpoints: &[impl AsRef<str>],
    ) -> Result<ConnectOptions, etcd_client::Error> {
        let https = endpoints
            .iter()
            .filter(|e| e.as_ref().starts_with("https://"))
            .count();
        let mut opts = base;
        if https > 0 && https < endpoints.len() {
            return Err(etcd_client::Error::InvalidArgs(format!(
                "endpoints {} mix https:// and http://: give one scheme",
                endpoints
                    .iter()
                    .map(|e| e.as_ref())
                    .collect::<Vec<_>>()
                    .join(",")
            )));
        }
        if https > 0 {
            opts = opts.with_tls(self.tls_options());
        } else if self.tls_files_given && !endpoints.is_empty() {
            return Err(etcd_client::Error::InvalidArgs(format!(
                "--cacert/--cert/--key given but endpoint {} is http://: use https:// URLs",
                endpoints[0].as_ref()
            )));
        }
        if let Some((u, p)) = &self.user {
            opts = opts
                .with_user(u.clone(), p.clone())
                .with_auto_token_refresh(true);
        }
        Ok(opts)
    }
}

/// Spreads pinned clients over the endpoints (see [`ClientSecurity::connect`]).
static NEXT_ENDPOINT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl ClientSecurity {
    /// A client of `endpoints` with [`ClientSecurity::options`] applied to
    /// `base`. With `--user` and several endpoints the client is pinned to
    /// one member — the first that accepts the connection and the
    /// Authenticate call, trying them in turn from a rotating start — because
    /// Phalanx's simple tokens are member-local: a client balancing its
    /// requests over members would present a token to members that never
    /// issued it (`etcdserver: invalid auth token`). Without a user, the
    /// client balances over all endpoints as etcd-client does.
    pub async fn connect(
        &self,
        endpoints: &[String],
        base: ConnectOptions,
    ) -> Result<Client, etcd_client::Error> {
        let opts = self.options(base, endpoints)?;
        if self.user.is_none() || endpoints.len() < 2 {
            return Client::connect(endpoints, Some(opts)).await;
        }
        let start = NEXT_ENDPOINT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut last = None;
        for i in 0..endpoints.len() {
            let ep = &endpoints[(start + i) % endpoints.len()];
            match Client::connect([ep.as_str()], Some(opts.clone())).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no endpoints".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_is_name_colon_password() {
        assert_eq!(
            parse_user("alice:pa:ss").unwrap(),
            ("alice".into(), "pa:ss".into())
        );
        let e = parse_user("alice").unwrap_err().to_string();
        assert!(e.contains("name:password"), "{e}");
        assert!(parse_user(":pw").is_err());
    }

    #[test]
    fn errors_name_the_flag_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let s = ClientSecuritySettings {
            cacert: Some(missing.clone()),
            ..Default::default()
        };
        let e = ClientSecurity::load(&s).unwrap_err().to_string();
        assert!(e.contains("--cacert") && e.contains("nope.pem"), "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not pem").unwrap();
        let s = ClientSecuritySettings {
            cert: Some(garbage.clone()),
            key: Some(garbage),
            ..Default::default()
        };
        let e = ClientSecurity::load(&s).unwrap_err().to_string();
        assert!(e.contains("--cert") && e.contains("garbage.pem"), "{e}");
        let s = ClientSecuritySettings {
            cert: Some(missing),
            ..Default::default()
        };
        assert!(ClientSecurity::load(&s).is_err());
    }

    #[test]
    fn schemes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = tls::gen::Ca::new("test-ca").unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        let sec = ClientSecurity::load(&ClientSecuritySettings {
            cacert: Some(ca_file),
            user: Some("root:pw".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(sec.user(), Some("root"));
        assert!(sec
            .options(ConnectOptions::new(), &["https://127.0.0.1:1"])
            .is_ok());
        let e = sec
            .options(ConnectOptions::new(), &["http://127.0.0.1:1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("https://"), "{e}");
        let e = sec
            .options(
                ConnectOptions::new(),
                &["http://127.0.0.1:1", "https://127.0.0.1:2"],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("mix"), "{e}");
        assert!(ClientSecurity::plain()
            .options(ConnectOptions::new(), &["http://127.0.0.1:1"])
            .is_ok());
    }
}
