//! TLS for the tests: a CA made with rcgen (through `tls::gen`), the flags of
//! a member with client and peer TLS, and etcdctl with `--cacert/--cert/--key`.
//! Members on https:// URLs are ordinary [`super::Member`]s with
//! `client_scheme`/`peer_scheme` set ([`super::Cluster::set_schemes`]).

use std::path::{Path, PathBuf};
use std::process::Output;

/// Write `text` to `path` atomically (temp file + rename), as a rotation tool would.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Files of one certificate.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA, its PEM file, and the certificates it issued into `dir`.
pub struct TestCa {
    pub ca: tls::gen::Ca,
    pub ca_file: PathBuf,
    pub dir: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let ca = tls::gen::Ca::new(name).unwrap();
        let ca_file = dir.join(format!("{name}.pem"));
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        TestCa {
            ca,
            ca_file,
            dir: dir.to_path_buf(),
        }
    }

    /// A certificate for 127.0.0.1/localhost with subject CN `cn`.
    pub fn issue(&self, cn: &str, serial: u64, valid_days: i64) -> CertFiles {
        let g = self
            .ca
            .issue(
                cn,
                &["127.0.0.1".into(), "localhost".into()],
                serial,
                valid_days,
            )
            .unwrap();
        let cert = self.dir.join(format!("{cn}-{serial}.crt"));
        let key = self.dir.join(format!("{cn}-{serial}.key"));
        std::fs::write(&cert, g.cert_pem).unwrap();
        std::fs::write(&key, g.key_pem).unwrap();
        CertFiles { cert, key }
    }
}

/// Run etcdctl (API 3) against `endpoints` with `tls_args` (e.g.
/// `--cacert=...`), bounded by a 10 s command timeout and a 3 s dial timeout
/// (a refused handshake must fail the command, not retry until the end).
pub fn etcdctl(endpoints: &str, tls_args: &[String], args: &[&str]) -> Output {
    super::etcdctl_command(endpoints)
        .arg("--dial-timeout=3s")
        .args(tls_args)
        .args(args)
        .output()
        .expect("running etcdctl")
}

pub fn ctl_ok(endpoints: &str, tls_args: &[String], args: &[&str]) -> String {
    let out = etcdctl(endpoints, tls_args, args);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn tls_args(ca: &Path, client: Option<&CertFiles>) -> Vec<String> {
    let mut v = vec![format!("--cacert={}", ca.display())];
    if let Some(c) = client {
        v.push(format!("--cert={}", c.cert.display()));
        v.push(format!("--key={}", c.key.display()));
    }
    v
}

/// Flags of a member with client and peer TLS, client-certificate auth on both.
pub fn member_tls_flags(ca: &Path, own: &CertFiles) -> Vec<String> {
    let p = |p: &Path| p.display().to_string();
    vec![
        "--cert-file".into(),
        p(&own.cert),
        "--key-file".into(),
        p(&own.key),
        "--trusted-ca-file".into(),
        p(ca),
        "--client-cert-auth".into(),
        "--peer-cert-file".into(),
        p(&own.cert),
        "--peer-key-file".into(),
        p(&own.key),
        "--peer-trusted-ca-file".into(),
        p(ca),
        "--peer-client-cert-auth".into(),
        "--tls-reload-check-interval-ms".into(),
        "100".into(),
    ]
}
