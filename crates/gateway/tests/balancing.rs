//! Balancing algorithms measured through a real gateway and real HTTP backends.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use gateway::sample_backend::{self, SampleBackend};
use gateway::Gateway;

async fn backends(n: usize) -> Vec<SampleBackend> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(
            sample_backend::spawn(any_addr(), &format!("b{i}"))
                .await
                .unwrap(),
        );
    }
    v
}

fn weighted_eps(bs: &[SampleBackend], weights: &[u32]) -> String {
    let v: Vec<String> = bs
        .iter()
        .zip(weights)
        .map(|(b, w)| format!("{{ address = \"{}\", weight = {w} }}", b.local_addr()))
        .collect();
    format!("[{}]", v.join(", "))
}

fn pool_cfg(algorithm: &str, endpoints: &str, extra: &str) -> String {
    format!(
        r#"
[[pools]]
name = "p"
algorithm = "{algorithm}"
endpoints = {endpoints}
{extra}
[[routes]]
pool = "p"
"#
    )
}

fn share(m: &HashMap<String, usize>, k: &str, n: usize) -> f64 {
    *m.get(k).unwrap_or(&0) as f64 / n as f64
}

#[tokio::test]
async fn weighted_round_robin_honours_weights() {
    let bs = backends(3).await;
    let cfg = config_with(&pool_cfg(
        "weighted-round-robin",
        &weighted_eps(&bs, &[1, 2, 3]),
        "",
    ));
    let gw = Gateway::start(cfg).await.unwrap();
    let c = client();
    let n = 600;
    let m = distribution(&c, &format!("http://{}/", gw.local_addr()), n).await;
    for (k, want) in [("b0", 1.0 / 6.0), ("b1", 2.0 / 6.0), ("b2", 3.0 / 6.0)] {
        let got = share(&m, k, n);
        assert!(
            (got - want).abs() < 0.03,
            "{k}: got {got:.3} want {want:.3} ({m:?})"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn random_weighted_and_round_robin_and_p2c_distribute() {
    let bs = backends(2).await;
    let c = client();
    // weighted random 1:3
    let gw = Gateway::start(config_with(&pool_cfg(
        "random",
        &weighted_eps(&bs, &[1, 3]),
        "",
    )))
    .await
    .unwrap();
    let n = 2000;
    let m = distribution(&c, &format!("http://{}/", gw.local_addr()), n).await;
    let got = share(&m, "b1", n);
    assert!(
        (got - 0.75).abs() < 0.05,
        "random b1 share {got:.3} ({m:?})"
    );
    gw.shutdown().await;
    // plain round robin: exactly alternating
    let gw = Gateway::start(config_with(&pool_cfg(
        "round-robin",
        &weighted_eps(&bs, &[1, 3]),
        "",
    )))
    .await
    .unwrap();
    let m = distribution(&c, &format!("http://{}/", gw.local_addr()), 100).await;
    assert_eq!(m.get("b0"), Some(&50), "{m:?}");
    gw.shutdown().await;
    // least request (p2c, peak EWMA): both serve traffic
    let gw = Gateway::start(config_with(&pool_cfg(
        "least-request",
        &weighted_eps(&bs, &[1, 1]),
        "peak_ewma = true",
    )))
    .await
    .unwrap();
    let m = distribution(&c, &format!("http://{}/", gw.local_addr()), 200).await;
    assert_eq!(m.values().sum::<usize>(), 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn least_conn_prefers_idle_endpoint() {
    let bs = backends(2).await;
    let gw = Gateway::start(config_with(&pool_cfg(
        "least-conn",
        &weighted_eps(&bs, &[1, 1]),
        "",
    )))
    .await
    .unwrap();
    let url = format!("http://{}/", gw.local_addr());
    let c = client();
    // One long request occupies one endpoint.
    let c2 = c.clone();
    let u2 = format!("{url}?sleep_ms=4000");
    let slow = tokio::spawn(async move { get(&c2, &u2).await.unwrap().body });
    let g = gw.clone();
    wait_until(Duration::from_secs(5), "slow request in flight", || {
        let g = g.clone();
        async move {
            g.pools_json()["pools"][0]["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["active_requests"].as_u64() == Some(1))
        }
    })
    .await;
    let m = distribution(&c, &url, 20).await;
    assert_eq!(
        m.len(),
        1,
        "all short requests go to the idle endpoint: {m:?}"
    );
    let busy = slow.await.unwrap();
    assert!(
        !m.contains_key(&busy),
        "idle endpoint chosen, busy was {busy}: {m:?}"
    );
    gw.shutdown().await;
}

async fn hash_mapping(c: &HttpClient, url: &str, keys: usize, cookie: bool) -> Vec<String> {
    let mut v = Vec::new();
    for k in 0..keys {
        let key = format!("user-{k}");
        let r = if cookie {
            get_with(c, url, &[("cookie", &format!("a=1; session={key}"))]).await
        } else {
            get_with(c, url, &[("x-user", &key)]).await
        }
        .unwrap();
        assert_eq!(r.status, 200);
        v.push(r.body);
    }
    v
}

async fn check_consistent_hash(method: &str, cookie: bool) -> f64 {
    let bs = backends(5).await;
    let eps = weighted_eps(&bs, &[1, 1, 1, 1, 1]);
    let hash = if cookie {
        format!("hash = {{ key = \"cookie\", name = \"session\", method = \"{method}\" }}")
    } else {
        format!("hash = {{ key = \"header\", name = \"x-user\", method = \"{method}\" }}")
    };
    let gw = Gateway::start(config_with(&pool_cfg("consistent-hash", &eps, &hash)))
        .await
        .unwrap();
    let url = format!("http://{}/", gw.local_addr());
    let c = client();
    let keys = 500;
    let first = hash_mapping(&c, &url, keys, cookie).await;
    let again = hash_mapping(&c, &url, keys, cookie).await;
    assert_eq!(first, again, "hashing is stable");
    let used: std::collections::HashSet<_> = first.iter().collect();
    assert_eq!(used.len(), 5, "all endpoints get keys");
    // Remove b2 live.
    let eps4 = weighted_eps_refs(&[&bs[0], &bs[1], &bs[3], &bs[4]], &[1, 1, 1, 1]);
    gw.apply_config(config_with(&pool_cfg("consistent-hash", &eps4, &hash)))
        .unwrap();
    let after = hash_mapping(&c, &url, keys, cookie).await;
    let moved = first.iter().zip(&after).filter(|(a, b)| a != b).count();
    let moved_off_survivors = first
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b && *a != "b2")
        .count();
    assert!(after.iter().all(|b| b != "b2"));
    let frac = moved as f64 / keys as f64;
    let extra = moved_off_survivors as f64 / keys as f64;
    eprintln!("{method}: fraction of keys remapped when 1 of 5 endpoints leaves = {frac:.3} (ideal 0.200), extra = {extra:.3}");
    assert!(frac < 0.30, "{method} remapped {frac}");
    assert!(
        extra < 0.06,
        "{method} moved keys of surviving endpoints: {extra}"
    );
    gw.shutdown().await;
    frac
}

fn weighted_eps_refs(bs: &[&SampleBackend], w: &[u32]) -> String {
    let v: Vec<String> = bs
        .iter()
        .zip(w)
        .map(|(b, w)| format!("{{ address = \"{}\", weight = {w} }}", b.local_addr()))
        .collect();
    format!("[{}]", v.join(", "))
}

#[tokio::test]
async fn consistent_hash_maglev_header_stable_minimal_remap() {
    check_consistent_hash("maglev", false).await;
}

#[tokio::test]
async fn consistent_hash_ring_cookie_stable_minimal_remap() {
    check_consistent_hash("ring", true).await;
}

#[tokio::test]
async fn consistent_hash_client_ip_sticks() {
    let bs = backends(3).await;
    let gw = Gateway::start(config_with(&pool_cfg(
        "consistent-hash",
        &weighted_eps(&bs, &[1, 1, 1]),
        "",
    )))
    .await
    .unwrap();
    let m = distribution(&client(), &format!("http://{}/", gw.local_addr()), 50).await;
    assert_eq!(m.len(), 1, "one client IP → one endpoint: {m:?}");
    gw.shutdown().await;
}

#[test]
fn maglev_and_ring_remap_fraction_10_endpoints() {
    use gateway::balance::remap_fraction;
    use gateway::config::HashMethod;
    let mg = remap_fraction(10, 4, 50_000, HashMethod::Maglev);
    let rg = remap_fraction(10, 4, 50_000, HashMethod::Ring);
    eprintln!("remapped when 1 of 10 leaves: maglev {mg:.4}, ring {rg:.4} (ideal 0.1000)");
    assert!(mg < 0.12 && mg > 0.09, "maglev {mg}");
    assert!(rg < 0.13 && rg > 0.07, "ring {rg}");
}
