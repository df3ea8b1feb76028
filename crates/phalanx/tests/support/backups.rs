//! The backup tests' side of `phalanx backup`/`restore`: age keys and the
//! CLI run against moto's S3 ([`super::servers::Moto`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use super::BIN;

/// The environment that points the AWS SDK at moto on `endpoint`.
pub fn s3_env(endpoint: &str) -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ENDPOINT_URL".into(), endpoint.into()),
    ]
}

/// `phalanx ARGS` with `env`; the command, its duration and its output are
/// printed (the backup tests' timings are read from CI logs).
pub fn phalanx(args: &[&str], env: &[(String, String)]) -> Output {
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .expect("running phalanx");
    println!(
        "$ phalanx {} ({:.2}s)\n{}{}",
        args.join(" "),
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `phalanx backup schedule set --endpoints endpoints`: back up to
/// `destinations`, encrypted for `public`, with `settings` (intervals,
/// limits); asserts that the policy was stored.
pub fn set_schedule(
    endpoints: &str,
    destinations: &[&str],
    public: &str,
    settings: &[&str],
    env: &[(String, String)],
) {
    let mut args = vec!["backup", "schedule", "set", "--endpoints", endpoints];
    for to in destinations {
        args.extend(["--to", to]);
    }
    args.extend(["--recipient", public]);
    args.extend_from_slice(settings);
    ok(phalanx(&args, env));
}

/// Assert `out` succeeded; its stdout.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A new age identity in `<dir>/key.txt` (Debian's age-keygen): its file and
/// its public key.
pub fn keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("key.txt");
    let out = Command::new("/usr/bin/age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .expect("age-keygen (apt-get install age)");
    assert!(out.status.success());
    let text = std::fs::read_to_string(&key).unwrap();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .trim()
        .to_string();
    (key, public)
}
