//! `phalanx node`'s TLS flags (etcd's names and meaning) turned into the
//! listeners' and the peer client's TLS configurations. See docs/security.md.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::NodeArgs;

/// The TLS configuration of every listener and of the peer client.
#[derive(Default)]
pub struct TlsSetup {
    /// For `https://` URLs of `--listen-client-urls`.
    pub client: Option<tls::ServerTls>,
    /// For `https://` URLs of `--listen-metrics-urls`.
    pub metrics: Option<tls::ServerTls>,
    /// For an `https://` `--listen-peer-urls`.
    pub peer_server: Option<tls::ServerTls>,
    /// For `https://` peer URLs.
    pub peer_client: Option<tls::ClientTls>,
}

pub fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// Hosts named by URLs (for `--auto-tls` certificates).
fn hosts(urls: &[String]) -> Vec<String> {
    let mut out: Vec<String> = urls
        .iter()
        .filter_map(|u| u.split_once("://").map(|(_, r)| r))
        .map(|r| {
            let hp = r.trim_end_matches('/');
            match hp.rsplit_once(':') {
                Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
                None => hp.to_string(),
            }
        })
        .filter(|h| h != "0.0.0.0" && h != "::")
        .collect();
    for h in ["127.0.0.1", "localhost"] {
        out.push(h.to_string());
    }
    out.sort();
    out.dedup();
    out
}

fn on(b: Option<bool>) -> bool {
    b.unwrap_or(false)
}

#[allow(clippy::too_many_arguments)]
fn server(
    listener: &str,
    flags: tls::FlagNames,
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    ca: Option<&PathBuf>,
    client_cert_auth: bool,
    allowed_cn: Option<String>,
    alpn: Vec<Vec<u8>>,
    args: &NodeArgs,
    suites: &[String],
    min: tls::MinVersion,
) -> anyhow::Result<tls::ServerTls> {
    let (Some(cert), Some(key)) = (cert, key) else {
        bail!(
            "{} and {} go together: give both (or neither)",
            flags.cert,
            flags.key
        );
    };
    let s = tls::ServerSettings {
        listener: listener.to_string(),
        flags,
        cert_file: cert.clone(),
        key_file: key.clone(),
        trusted_ca_file: ca.cloned(),
        client_cert_auth,
        allowed_cn,
        cipher_suites: suites.to_vec(),
        min_version: min,
        alpn,
        reload_check_interval_ms: args
            .tls_reload_check_interval_ms
            .unwrap_or(tls::DEFAULT_RELOAD_CHECK_INTERVAL_MS),
        handshake_timeout_ms: args
            .tls_handshake_timeout_ms
            .unwrap_or(tls::DEFAULT_HANDSHAKE_TIMEOUT_MS),
    };
    Ok(tls::ServerTls::new(&s)?)
}

#[allow(clippy::too_many_arguments)] // wiring: one argument per listener setting
pub fn setup(
    args: &NodeArgs,
    data_dir: &Path,
    listen_client: &[String],
    advertise_client: &[String],
    listen_peer: &[String],
    advertise_peer: &[String],
    initial_cluster: &[(String, Vec<String>)],
    listen_metrics: &[String],
) -> anyhow::Result<TlsSetup> {
    let min = match &args.tls_min_version {
        Some(v) => v.parse::<tls::MinVersion>()?,
        None => tls::MinVersion::Tls12,
    };
    let suites = match &args.cipher_suites {
        Some(s) => tls::parse_cipher_suites(s)?,
        None => Vec::new(),
    };
    if args.tls_reload_check_interval_ms == Some(0) {
        bail!("--tls-reload-check-interval-ms must be at least 1");
    }
    if args.tls_handshake_timeout_ms == Some(0) {
        bail!("--tls-handshake-timeout-ms must be at least 1");
    }
    let mut out = TlsSetup::default();
    let both = vec![tls::ALPN_H2.to_vec(), tls::ALPN_HTTP11.to_vec()];

    // --- client listeners ---
    let client_https = listen_client.iter().any(|u| is_https(u));
    let (mut cert, mut key) = (args.cert_file.clone(), args.key_file.clone());
    if cert.is_none() && key.is_none() && on(args.auto_tls) && client_https {
        let mut all = listen_client.to_vec();
        all.extend_from_slice(advertise_client);
        let (c, k) = tls::auto_tls(&data_dir.join("fixtures").join("client"), &hosts(&all))?;
        eprintln!(
            "phalanx node: --auto-tls: self-signed client certificate {}",
            c.display()
        );
        (cert, key) = (Some(c), Some(k));
    }
    if on(args.client_cert_auth) && args.trusted_ca_file.is_none() {
        bail!("--client-cert-auth needs --trusted-ca-file (the CA that signs client certificates)");
    }
    if client_https {
        if cert.is_none() && key.is_none() {
            bail!(
                "--listen-client-urls has an https:// URL but no certificate: give --cert-file and --key-file (or --auto-tls)"
            );
        }
        out.client = Some(server(
            "client",
            tls::CLIENT_FLAGS,
            cert.as_ref(),
            key.as_ref(),
            args.trusted_ca_file.as_ref(),
            on(args.client_cert_auth),
            None,
            both.clone(),
            args,
            &suites,
            min,
        )?);
    } else if cert.is_some() {
        eprintln!("WARNING: --cert-file is set but no --listen-client-urls URL is https://: clients are served without TLS");
    }

    // --- metrics listeners: their own --metrics-* settings, else the client's (as etcd) ---
    if listen_metrics.iter().any(|u| is_https(u)) {
        out.metrics = Some(
            if args.metrics_cert_file.is_some() || args.metrics_key_file.is_some() {
                if on(args.metrics_client_cert_auth) && args.metrics_trusted_ca_file.is_none() {
                    bail!("--metrics-client-cert-auth needs --metrics-trusted-ca-file");
                }
                server(
                    "metrics",
                    tls::METRICS_FLAGS,
                    args.metrics_cert_file.as_ref(),
                    args.metrics_key_file.as_ref(),
                    args.metrics_trusted_ca_file.as_ref(),
                    on(args.metrics_client_cert_auth),
                    None,
                    both.clone(),
                    args,
                    &suites,
                    min,
                )?
            } else if cert.is_some() {
                server(
                    "metrics",
                    tls::CLIENT_FLAGS,
                    cert.as_ref(),
                    key.as_ref(),
                    args.trusted_ca_file.as_ref(),
                    on(args.client_cert_auth),
                    None,
                    both.clone(),
                    args,
                    &suites,
                    min,
                )?
            } else {
                bail!("--listen-metrics-urls has an https:// URL but no certificate: give --metrics-cert-file and --metrics-key-file (or the client's --cert-file and --key-file, which it then uses)");
            },
        );
    }

    // --- peers ---
    let peer_https = listen_peer.iter().any(|u| is_https(u))
        || advertise_peer.iter().any(|u| is_https(u))
        || initial_cluster
            .iter()
            .flat_map(|(_, u)| u)
            .any(|u| is_https(u));
    let (mut pcert, mut pkey) = (args.peer_cert_file.clone(), args.peer_key_file.clone());
    let peer_auto = on(args.peer_auto_tls) && pcert.is_none() && pkey.is_none();
    if peer_auto && peer_https {
        let mut all = listen_peer.to_vec();
        all.extend_from_slice(advertise_peer);
        let (c, k) = tls::auto_tls(&data_dir.join("fixtures").join("peer"), &hosts(&all))?;
        eprintln!("phalanx node: --peer-auto-tls: self-signed peer certificate {} (peers are not verified)", c.display());
        (pcert, pkey) = (Some(c), Some(k));
    }
    if on(args.peer_client_cert_auth) && args.peer_trusted_ca_file.is_none() {
        bail!("--peer-client-cert-auth needs --peer-trusted-ca-file (the CA that signs the members' peer certificates)");
    }
    if args.peer_cert_allowed_cn.is_some() && !on(args.peer_client_cert_auth) {
        bail!("--peer-cert-allowed-cn needs --peer-client-cert-auth (the CN is read from the verified client certificate)");
    }
    if let (Some(c), Some(ca)) = (&args.peer_cert_file, &args.peer_trusted_ca_file) {
        // Peers trusting only that CA would refuse this member: say so now.
        tls::check_signed_by("--peer-cert-file", c, "--peer-trusted-ca-file", ca)?;
    }
    if listen_peer.iter().any(|u| is_https(u)) {
        if pcert.is_none() && pkey.is_none() {
            bail!("--listen-peer-urls is https:// but there is no peer certificate: give --peer-cert-file and --peer-key-file (or --peer-auto-tls)");
        }
        out.peer_server = Some(server(
            "peer",
            tls::PEER_FLAGS,
            pcert.as_ref(),
            pkey.as_ref(),
            args.peer_trusted_ca_file.as_ref(),
            on(args.peer_client_cert_auth),
            args.peer_cert_allowed_cn.clone(),
            vec![tls::ALPN_H2.to_vec()],
            args,
            &suites,
            min,
        )?);
    }
    if peer_https {
        let s = tls::ClientSettings {
            trusted_ca_file: args.peer_trusted_ca_file.clone(),
            cert_file: pcert.clone(),
            key_file: pkey.clone(),
            insecure_skip_verify: on(args.peer_auto_tls) && args.peer_trusted_ca_file.is_none(),
            cipher_suites: suites.clone(),
            min_version: min,
            reload_check_interval_ms: args
                .tls_reload_check_interval_ms
                .unwrap_or(tls::DEFAULT_RELOAD_CHECK_INTERVAL_MS),
        };
        out.peer_client =
            Some(tls::ClientTls::new(&s, tls::PEER_FLAGS).context("peer client TLS")?);
    }
    Ok(out)
}
