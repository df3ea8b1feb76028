//! TLS towards upstreams (a pool's `tls`: CA, client certificate, SNI)
//! against a real TLS backend that requires client certificates, and hot
//! reload of an https listener's certificate when its files change.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use gateway::{Config, Gateway};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// PEM certificate and key files.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

impl Ca {
    fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "upstream-tls test CA");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn write(&self, dir: &Path) -> PathBuf {
        let p = dir.join("ca.pem");
        std::fs::write(&p, self.cert.pem()).unwrap();
        p
    }

    /// A certificate for `names` (DNS names or IPs), CN `cn`, into `dir/<cn>.{crt,key}`.
    fn issue(&self, dir: &Path, cn: &str, names: &[&str]) -> Pair {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let pair = Pair {
            cert: dir.join(format!("{cn}.crt")),
            key: dir.join(format!("{cn}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        pair
    }
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_file(path).unwrap()
}

/// A TLS backend (HTTP/1.1 and h2 by ALPN) that requires a client
/// certificate signed by `ca` and answers `sni=<SNI> version=<HTTP version>`.
async fn tls_backend(ca: &Path, server: &Pair) -> SocketAddr {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca) {
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&server.cert), key(&server.key))
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client without an acceptable certificate fails here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("none").to_string();
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let body = format!("sni={sni} version={:?}", req.version());
                    // What the backend was asked: Host and path (a
                    // fallback provider's own name and prefix).
                    let host = req.headers().get("host").cloned();
                    let path = req.uri().path_and_query().map(|p| p.to_string());
                    async move {
                        let mut r = http::Response::new(Full::new(Bytes::from(body)));
                        if let Some(h) = host {
                            r.headers_mut().insert("x-seen-host", h);
                        }
                        if let Some(p) = path.and_then(|p| p.parse().ok()) {
                            r.headers_mut().insert("x-seen-path", p);
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// The gateway's own error answer for an upstream it could not use: 503
/// `upstream connect failure` when the handshake fails while connecting
/// (TLS 1.2, or TLS 1.3 verification of the server), 502 when the server
/// refuses the client certificate after the client considered the handshake
/// done (TLS 1.3 sends that alert with the first response).
fn refused(r: &Resp) {
    assert!(
        (r.status == 503 || r.status == 502) && r.headers.contains_key("x-phalanx-error"),
        "{r:?}"
    );
}

fn pool_config(backend: SocketAddr, protocol: &str, tls: &str) -> Config {
    config_with(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [\"{backend}\"]\nprotocol = \"{protocol}\"\n{tls}\n[[routes]]\npool = \"p\"\n"
    ))
}

fn tls_table(ca: &Path, client: Option<&Pair>, server_name: Option<&str>) -> String {
    let mut t = format!("[pools.tls]\nca_path = \"{}\"\n", ca.display());
    if let Some(c) = client {
        t += &format!(
            "cert_path = \"{}\"\nkey_path = \"{}\"\n",
            c.cert.display(),
            c.key.display()
        );
    }
    if let Some(n) = server_name {
        t += &format!("server_name = \"{n}\"\n");
    }
    t
}

#[tokio::test]
async fn pool_with_mutual_tls_reaches_a_backend_that_requires_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let ca_file = ca.write(dir.path());
    // The backend's certificate names only a DNS name: reaching it needs the
    // configured SNI / verification name, not the endpoint's IP.
    let server = ca.issue(dir.path(), "backend.test", &["backend.test"]);
    let client_pair = ca.issue(dir.path(), "gateway", &["gateway.test"]);
    let backend = tls_backend(&ca_file, &server).await;

    let full = tls_table(&ca_file, Some(&client_pair), Some("backend.test"));
    let gw = Gateway::start(pool_config(backend, "http1", &full))
        .await
        .unwrap();
    let c = client();
    let url = format!("http://{}/", gw.local_addr());
    let r = get(&c, &url).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "sni=backend.test version=HTTP/1.1");

    // h2 over TLS (pool protocol h2c offers ALPN h2), applied live.
    gw.apply_config(pool_config(backend, "h2c", &full)).unwrap();
    wait_until(Duration::from_secs(5), "h2 over TLS", || async {
        get(&c, &url)
            .await
            .map(|r| r.status == 200 && r.body == "sni=backend.test version=HTTP/2.0")
            .unwrap_or(false)
    })
    .await;

    // No client certificate: the backend refuses the handshake.
    let no_cert = tls_table(&ca_file, None, Some("backend.test"));
    gw.apply_config(pool_config(backend, "http1", &no_cert))
        .unwrap();
    refused(&get(&c, &url).await.unwrap());

    // No server_name: the endpoint's IP is verified, which the certificate does not name.
    let by_ip = tls_table(&ca_file, Some(&client_pair), None);
    gw.apply_config(pool_config(backend, "http1", &by_ip))
        .unwrap();
    refused(&get(&c, &url).await.unwrap());

    // A CA that did not sign the backend's certificate → 502.
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = Ca::new().write(other_dir.path());
    let wrong_ca = tls_table(&other_ca, Some(&client_pair), Some("backend.test"));
    gw.apply_config(pool_config(backend, "http1", &wrong_ca))
        .unwrap();
    refused(&get(&c, &url).await.unwrap());

    // And back: the right settings work again.
    gw.apply_config(pool_config(backend, "http1", &full))
        .unwrap();
    let r = get(&c, &url).await.unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "sni=backend.test version=HTTP/1.1")
    );
    gw.shutdown().await;
}

#[test]
fn unusable_upstream_tls_settings_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let ca_file = ca.write(dir.path());
    let b: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cfg = |tls: &str| {
        Config::from_toml_str(&format!(
            "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n[[pools]]\nname = \"p\"\nendpoints = [\"{b}\"]\n{tls}\n[[routes]]\npool = \"p\"\n"
        ))
    };
    let e = cfg("[pools.tls]\nserver_name = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("pools[0].tls.ca_path"), "{e}");
    let e = cfg("[pools.tls]\nca_path = \"/nonexistent/ca.pem\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pools[0].tls.ca_path") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
    let e = cfg(&format!(
        "[pools.tls]\nca_path = \"{}\"\ncert_path = \"{}\"\n",
        ca_file.display(),
        ca_file.display()
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("pools[0].tls.key_path"), "{e}");
    let e = cfg(&format!(
        "[pools.tls]\nca_path = \"{}\"\nserver_name = \"not a name\"\n",
        ca_file.display()
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("pools[0].tls.server_name"), "{e}");
    // A tcp listener cannot originate TLS.
    let e = Config::from_toml_str(&format!(
        "[[listeners]]\nname = \"l4\"\naddress = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"p\"\n[[pools]]\nname = \"p\"\nendpoints = [\"{b}\"]\n[pools.tls]\nca_path = \"{}\"\n",
        ca_file.display()
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("listeners[0].pool") && e.contains("tls"), "{e}");
    assert!(cfg(&format!(
        "[pools.tls]\nca_path = \"{}\"\n",
        ca_file.display()
    ))
    .is_ok());
}

/// The DER of the certificate `addr` serves for `localhost`.
async fn served_cert(addr: SocketAddr, ca: &Path) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca) {
        roots.add(c).unwrap();
    }
    let cc = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cc))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("handshake with the gateway's https listener");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn replace(path: &Path, from: &Path) {
    let tmp = path.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn https_listener_reloads_its_certificate_when_the_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let ca_file = ca.write(dir.path());
    let a = ca.issue(dir.path(), "first", &["localhost"]);
    let b = ca.issue(dir.path(), "second", &["localhost"]);
    let (cert, keyf) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    replace(&cert, &a.cert);
    replace(&keyf, &a.key);
    let backend = gateway::sample_backend::spawn(any_addr(), "b")
        .await
        .unwrap();
    let cfg = Config::from_toml_str(&format!(
        "[[listeners]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\nprotocol = \"https\"\ntls_cert_path = \"{}\"\ntls_key_path = \"{}\"\ntls_reload_check_interval_ms = 100\n[[pools]]\nname = \"p\"\nendpoints = [\"{}\"]\n[[routes]]\npool = \"p\"\n",
        cert.display(),
        keyf.display(),
        backend.local_addr()
    ))
    .unwrap();
    let gw = Gateway::start(cfg).await.unwrap();
    let addr = gw.local_addr();
    assert_eq!(served_cert(addr, &ca_file).await, a.der);

    // Rotate: key first, then certificate (in between, the pair does not
    // match and the old one goes on being served).
    replace(&keyf, &b.key);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        served_cert(addr, &ca_file).await,
        a.der,
        "a mismatched pair was served"
    );
    replace(&cert, &b.cert);
    let ca2 = ca_file.clone();
    let want = b.der.clone();
    wait_until(Duration::from_secs(5), "the new certificate served", || {
        let ca2 = ca2.clone();
        let want = want.clone();
        async move { served_cert(addr, &ca2).await == want }
    })
    .await;

    // A broken file does not take the listener down: the last good pair stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(served_cert(addr, &ca_file).await, b.der);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_tls_fallback_provider_gets_its_own_sni_host_and_path_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let ca_file = ca.write(dir.path());
    let server = ca.issue(
        dir.path(),
        "fx.other-provider.test",
        &["fx.other-provider.test"],
    );
    let client_pair = ca.issue(dir.path(), "gateway", &["gateway.test"]);
    let backend = tls_backend(&ca_file, &server).await;
    // The primary provider refuses connections (nothing listens there).
    let dead = free_addr();
    let tls = tls_table(&ca_file, Some(&client_pair), Some("fx.other-provider.test"));
    let cfg = config_with(&format!(
        "[[pools]]\nname = \"primary\"\nendpoints = [\"{dead}\"]\nbackups = [\"fallback\"]\n\
         [[pools]]\nname = \"fallback\"\nendpoints = [\"{backend}\"]\n\
         host_header = \"fx.other-provider.test\"\nupstream_path_prefix = \"/compat\"\n{tls}\n\
         [[routes]]\npool = \"primary\"\n"
    ));
    let gw = Gateway::start(cfg).await.unwrap();
    let c = client();
    let url = format!("http://{}/rates?cur=EUR", gw.local_addr());
    for _ in 0..5 {
        let r = get_with(&c, &url, &[("host", "api.primary.test")])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, "sni=fx.other-provider.test version=HTTP/1.1");
        assert_eq!(r.headers["x-seen-host"], "fx.other-provider.test");
        assert_eq!(r.headers["x-seen-path"], "/compat/rates?cur=EUR");
    }
    gw.shutdown().await;
}
