//! A local cluster with client and peer TLS and auth on (`phalanx drill
//! --local N --secure`): [`SecureFiles::generate`] makes a CA and the
//! certificates with rcgen in the report directory, [`SecureFiles::member_args`]
//! are the members' TLS flags, and [`SecureFiles::enable_auth`] creates the
//! users and turns auth on once the cluster is up.
//!
//! Users: `root` (role `root`, used only to set up auth) and [`DRILL_USER`],
//! whose role [`DRILL_ROLE`] may read and write the keys under
//! [`DRILL_KEY_PREFIX`] and nothing else: the workload, watch and lease
//! clients run as it, with its client certificate (CN = user name) and
//! password, so a drill exercises TLS, `--client-cert-auth`, Authenticate and
//! permission checks on every request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use client_security::{ClientSecurity, ClientSecuritySettings};
use etcd_client::{Client, ConnectOptions, Permission};

use crate::DrillError;

/// The workload's user.
pub const DRILL_USER: &str = "drill";
/// Its role: READWRITE on [`DRILL_KEY_PREFIX`].
pub const DRILL_ROLE: &str = "drill";
/// Every drill key starts with this (see `WorkloadConfig::prefix`).
pub const DRILL_KEY_PREFIX: &str = "drill/";
/// Validity of the generated certificates, in days.
pub const CERT_VALIDITY_DAYS: i64 = 7;
/// Bound on each request while auth is set up, in ms.
pub const SETUP_REQUEST_TIMEOUT_MS: u64 = 10_000;

/// The generated CA, certificates, keys and passwords (files under `dir`).
#[derive(Debug, Clone)]
pub struct SecureFiles {
    pub dir: PathBuf,
    pub ca: PathBuf,
    /// One certificate for every member, client and peer port (127.0.0.1, localhost).
    pub member_cert: PathBuf,
    pub member_key: PathBuf,
    /// Client certificates, CN = user name.
    pub root_cert: PathBuf,
    pub root_key: PathBuf,
    pub user_cert: PathBuf,
    pub user_key: PathBuf,
    pub root_password: String,
    pub user_password: String,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> DrillError {
    move |source| DrillError::Io { what, source }
}

/// A password nobody guesses: 128 bits from the kernel's clock and this
/// process, hashed (the drill needs no cryptographic RNG: the cluster lives
/// for one run, on loopback).
fn password(salt: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for round in 0..2u8 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(salt.as_bytes());
        h.write_u8(round);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

impl SecureFiles {
    /// Make the CA and certificates in `dir` (created if missing), and the
    /// passwords (written to `dir/users.txt`, mode 0600, so the cluster can
    /// be inspected with etcdctl while the drill runs).
    pub fn generate(dir: &Path) -> Result<SecureFiles, DrillError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let gen_err = |e: String| {
            DrillError::Cluster(format!("generating certificates in {}: {e}", dir.display()))
        };
        let ca = tls::gen::Ca::new("phalanx drill CA").map_err(|e| gen_err(e.to_string()))?;
        let write = |name: &str, text: &str| -> Result<PathBuf, DrillError> {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(io(format!("writing {}", p.display())))?;
            Ok(p)
        };
        let ca_file = write("ca.pem", &ca.cert_pem())?;
        let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
        let pair = |cn: &str, serial: u64| -> Result<(PathBuf, PathBuf), DrillError> {
            let g = ca
                .issue(cn, &hosts, serial, CERT_VALIDITY_DAYS)
                .map_err(|e| gen_err(e.to_string()))?;
            Ok((
                write(&format!("{cn}.crt"), &g.cert_pem)?,
                write(&format!("{cn}.key"), &g.key_pem)?,
            ))
        };
        let (member_cert, member_key) = pair("member", 1)?;
        let (root_cert, root_key) = pair("root", 2)?;
        let (user_cert, user_key) = pair(DRILL_USER, 3)?;
        let f = SecureFiles {
            dir: dir.to_path_buf(),
            ca: ca_file,
            member_cert,
            member_key,
            root_cert,
            root_key,
            user_cert,
            user_key,
            root_password: password("root"),
            user_password: password(DRILL_USER),
        };
        let users = dir.join("users.txt");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&users)
                .map_err(io(format!("writing {}", users.display())))?;
            writeln!(
                file,
                "root:{}\n{DRILL_USER}:{}",
                f.root_password, f.user_password
            )
            .map_err(io(format!("writing {}", users.display())))?;
        }
        Ok(f)
    }

    /// The members' TLS flags: client and peer ports with these
    /// certificates, client and peer certificates required.
    pub fn member_args(&self) -> Vec<String> {
        let p = |x: &Path| x.display().to_string();
        [
            ("--cert-file", p(&self.member_cert)),
            ("--key-file", p(&self.member_key)),
            ("--trusted-ca-file", p(&self.ca)),
            ("--peer-cert-file", p(&self.member_cert)),
            ("--peer-key-file", p(&self.member_key)),
            ("--peer-trusted-ca-file", p(&self.ca)),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .chain([
            "--client-cert-auth".into(),
            "--peer-client-cert-auth".into(),
        ])
        .collect()
    }

    fn security(
        &self,
        user: &str,
        cert: &Path,
        key: &Path,
        pw: &str,
    ) -> Result<ClientSecurity, DrillError> {
        ClientSecurity::load(&ClientSecuritySettings {
            cacert: Some(self.ca.clone()),
            cert: Some(cert.to_path_buf()),
            key: Some(key.to_path_buf()),
            user: Some(format!("{user}:{pw}")),
        })
        .map_err(|e| DrillError::Cluster(e.to_string()))
    }

    /// What the workload clients present: the drill user's certificate and password.
    pub fn workload_security(&self) -> Result<ClientSecurity, DrillError> {
        self.security(
            DRILL_USER,
            &self.user_cert,
            &self.user_key,
            &self.user_password,
        )
    }

    /// Create `root` and [`DRILL_USER`] (with [`DRILL_ROLE`]) and enable
    /// auth, through `endpoints` (https://), as root's certificate (auth is
    /// still off). Idempotent enough for one fresh cluster.
    pub async fn enable_auth(&self, endpoints: &[String]) -> Result<(), DrillError> {
        let fail = |what: &str, e: etcd_client::Error| {
            DrillError::Cluster(format!(
                "enabling auth ({what}) through {}: {e}",
                endpoints.join(",")
            ))
        };
        let sec = ClientSecurity::load(&ClientSecuritySettings {
            cacert: Some(self.ca.clone()),
            cert: Some(self.root_cert.clone()),
            key: Some(self.root_key.clone()),
            user: None,
        })
        .map_err(|e| DrillError::Cluster(e.to_string()))?;
        let t = Duration::from_millis(SETUP_REQUEST_TIMEOUT_MS);
        let opts = sec
            .options(
                ConnectOptions::new()
                    .with_connect_timeout(t)
                    .with_timeout(t),
                endpoints,
            )
            .map_err(|e| fail("connect options", e))?;
        let mut c = Client::connect(endpoints, Some(opts))
            .await
            .map_err(|e| fail("connect", e))?;
        c.user_add("root", self.root_password.clone(), None)
            .await
            .map_err(|e| fail("user add root", e))?;
        c.user_grant_role("root", "root")
            .await
            .map_err(|e| fail("grant root", e))?;
        c.role_add(DRILL_ROLE)
            .await
            .map_err(|e| fail("role add", e))?;
        c.role_grant_permission(
            DRILL_ROLE,
            Permission::read_write(DRILL_KEY_PREFIX).with_prefix(),
        )
        .await
        .map_err(|e| fail("grant permission", e))?;
        c.user_add(DRILL_USER, self.user_password.clone(), None)
            .await
            .map_err(|e| fail("user add", e))?;
        c.user_grant_role(DRILL_USER, DRILL_ROLE)
            .await
            .map_err(|e| fail("grant role", e))?;
        c.auth_enable().await.map_err(|e| fail("auth enable", e))?;
        Ok(())
    }
}
