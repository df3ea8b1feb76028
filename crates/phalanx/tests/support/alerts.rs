//! The alerting tests' side of the alerting API and CLI.

use std::path::Path;
use std::process::Command;

use super::{free_port, http_get, Cluster, BIN};

/// GET `http://127.0.0.1:port/path` as JSON (5 s bound).
pub fn get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    let (code, body) = http_get(port, path)?;
    if code != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// Percent-encode a query parameter.
pub fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// `phalanx ARGS`.
pub fn phalanx(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running phalanx")
}

/// Store a rule file or alertmanager.yml with the CLI (`what`: `rules` or `config`).
pub fn set_doc(dir: &Path, what: &str, name: &str, text: &str, endpoints: &str) {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    let out = phalanx(&[
        "alerting",
        what,
        "set",
        p.to_str().unwrap(),
        "--endpoints",
        endpoints,
    ]);
    assert!(
        out.status.success(),
        "alerting {what} set {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `n` members with alerting's API on free ports and scrapes and rule
/// evaluations every 500 ms, plus `extra` flags; returns the cluster and
/// each member's alerting API port.
pub fn alerting_cluster(n: usize, extra: &[&str]) -> (Cluster, Vec<u16>) {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let p = ports.clone();
    let c = Cluster::start_with(n, move |i| {
        let mut v: Vec<String> = vec![
            "--alerting-listen".into(),
            format!("127.0.0.1:{}", p[i]),
            "--alerting-scrape-interval-ms".into(),
            "500".into(),
            "--alerting-evaluation-interval-ms".into(),
            "500".into(),
        ];
        v.extend(extra.iter().cloned());
        v
    });
    (c, ports)
}

/// `up` as a member's alerting history sees it (its query API on
/// `api_port`): member → value.
pub fn up_values(api_port: u16) -> Option<Vec<(String, String)>> {
    let (code, body) = http_get(api_port, "/api/v1/query?query=up")?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(
        v["data"]["result"]
            .as_array()?
            .iter()
            .map(|r| {
                (
                    r["metric"]["member"].as_str().unwrap_or("").to_string(),
                    r["value"][1].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}
