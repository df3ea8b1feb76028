//! Default gateway rules on a 3-member cluster where every member runs a
//! store-backed gateway: under HTTP load, stopping one endpoint of pool
//! `api` fires `PhalanxGatewayEndpointDown` naming it; stopping the other
//! (every primary down, traffic on the backup pool `api-dr`) fires
//! `PhalanxGatewayOnBackupPool` naming the pool — and the load keeps being served.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gateway::sample_backend;
use support::alerts::get_json;
use support::{free_port, http_get, wait_for, Cluster};

/// Bound on an alert firing (`for: 10s` plus evaluation and health-check delays).
const FIRE_WITHIN: Duration = Duration::from_secs(60);

fn firing(api: u16, name: &str, label: &str, value: &str) -> Option<Vec<serde_json::Value>> {
    let v = get_json(api, "/api/v1/alerts")?;
    let list: Vec<serde_json::Value> = v["data"]["alerts"]
        .as_array()?
        .iter()
        .filter(|a| {
            a["labels"]["alertname"] == name
                && a["state"] == "firing"
                && a["labels"][label] == value
        })
        .cloned()
        .collect();
    (!list.is_empty()).then_some(list)
}

#[test]
fn endpoint_down_and_all_primaries_down_fire_the_gateway_rules() {
    let gw: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let api: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let (g2, a2) = (gw.clone(), api.clone());
    let c = Cluster::start_with(3, move |i| {
        vec![
            format!("--gateway-listen=127.0.0.1:{}", g2[i]),
            format!("--alerting-listen=127.0.0.1:{}", a2[i]),
            "--alerting-scrape-interval-ms=500".into(),
            "--alerting-evaluation-interval-ms=500".into(),
        ]
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let spawn = |name: &str| {
        rt.block_on(sample_backend::spawn("127.0.0.1:0".parse().unwrap(), name))
            .unwrap()
    };
    let (p1, p2, b1) = (spawn("p1"), spawn("p2"), spawn("b1"));
    let (p1_addr, p2_addr) = (p1.local_addr().to_string(), p2.local_addr().to_string());
    let cfg = format!(
        "[[pools]]\nname = \"api\"\nendpoints = [\"{p1_addr}\", \"{p2_addr}\"]\nbackups = [\"api-dr\"]\nhealth_check = {{ kind = \"tcp\", interval_ms = 300, rise = 1, fall = 1 }}\n\n[[pools]]\nname = \"api-dr\"\nendpoints = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\npool = \"api\"\nretry = {{ max_retries = 2 }}\n",
        b1.local_addr()
    );
    c.ctl(&["put", "/phalanx/gateway/config", &cfg]);
    for &p in &gw {
        wait_for(
            &format!("gateway :{p} routing"),
            Duration::from_secs(30),
            || matches!(http_get(p, "/"), Some((200, _))).then_some(()),
        );
    }
    let leader = c.wait_leader();

    // HTTP load through every gateway.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..3)
        .map(|t| {
            let (stop, ok, bad, gw) = (stop.clone(), ok.clone(), bad.clone(), gw.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    match http_get(gw[i % gw.len()], "/") {
                        Some((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => bad.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        firing(api[leader], "PhalanxGatewayEndpointDown", "pool", "api").is_none(),
        "nothing is down yet"
    );

    // One endpoint killed under load.
    rt.block_on(p1.stop());
    // Every member's gateway sees it (each fires on its own health checks).
    let down = wait_for(
        "PhalanxGatewayEndpointDown for the stopped endpoint, from every member's gateway",
        FIRE_WITHIN,
        || {
            firing(
                api[leader],
                "PhalanxGatewayEndpointDown",
                "endpoint",
                &p1_addr,
            )
            .filter(|l| l.len() == 3)
        },
    );
    let mut members: Vec<&str> = down
        .iter()
        .filter_map(|a| a["labels"]["member"].as_str())
        .collect();
    members.sort();
    assert_eq!(members, ["n1", "n2", "n3"], "{down:?}");
    assert_eq!(down[0]["labels"]["pool"], "api");
    assert!(
        firing(api[leader], "PhalanxGatewayOnBackupPool", "pool", "api").is_none(),
        "one primary is still up"
    );

    // Every primary down: traffic goes to the backup pool.
    rt.block_on(p2.stop());
    let before = b1.requests();
    let on_backup = wait_for(
        "PhalanxGatewayOnBackupPool for pool api",
        FIRE_WITHIN,
        || firing(api[leader], "PhalanxGatewayOnBackupPool", "pool", "api"),
    );
    assert!(
        on_backup[0]["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("backup"),
        "{on_backup:?}"
    );
    assert!(b1.requests() > before, "the backup pool serves the load");
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    eprintln!(
        "gateway load: {} ok, {} failed",
        ok.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 0);
}
