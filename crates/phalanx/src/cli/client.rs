//! etcdctl's client security flags, shared by every command that talks to a
//! cluster (`bench`, `drill`, `backup`, `alerting`, `events`): flatten
//! [`SecurityArgs`] into the command and call [`SecurityArgs::load`].

use std::path::PathBuf;

use anyhow::Context;

/// `--cacert`, `--cert`, `--key`, `--user` (etcdctl's names and meaning).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecurityArgs {
    /// CA bundle verifying the servers' certificates (https:// endpoints; without it, the system's trust store).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) presented to servers that require one (--client-cert-auth).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Key of --cert (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Authenticate as this user (`name:password`) when the cluster has auth enabled.
    #[arg(long, value_name = "NAME:PASSWORD")]
    pub user: Option<String>,
}

impl SecurityArgs {
    pub fn settings(&self) -> client_security::ClientSecuritySettings {
        client_security::ClientSecuritySettings {
            cacert: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            user: self.user.clone(),
        }
    }

    /// Reads and checks the files (errors name the flag and the file).
    pub fn load(&self) -> anyhow::Result<client_security::ClientSecurity> {
        client_security::ClientSecurity::load(&self.settings())
            .context("client TLS/auth settings (--cacert, --cert, --key, --user)")
    }
}
