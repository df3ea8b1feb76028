//! HTTP/1.1 on the client port, beside gRPC, driven by Debian's curl:
//! `/health`, `/version`, `/metrics` and etcd's gRPC-gateway JSON API under
//! `/v3/...` (put, range, deleterange, txn, lease grant / time-to-live /
//! revoke, a streamed watch, member list, status, authenticate).

mod support;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

fn b64(s: &str) -> String {
    // Tiny standard base64 encoder (test-only; the server uses the base64 crate).
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `curl` a path; returns (HTTP status, body).
fn curl(base: &str, path: &str, body: Option<&Value>, token: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "-w", "\n%{http_code}"]);
    if let Some(b) = body {
        cmd.args([
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            &b.to_string(),
        ]);
    }
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: {t}")]);
    }
    let out = cmd
        .arg(format!("{base}{path}"))
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("curl wrote a status line");
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn post(base: &str, path: &str, body: Value, token: Option<&str>) -> Value {
    let (code, text) = curl(base, path, Some(&body), token);
    assert_eq!(code, 200, "POST {path} {body}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: {e}: {text}"))
}

#[test]
fn curl_health_version_metrics_and_json_gateway() {
    let c = Cluster::start(3, &["--bcrypt-cost", "4"]);
    let base = c.members[0].client_url();

    let (code, body) = curl(&base, "/health", None, None);
    assert_eq!(
        (code, body.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
    let (code, body) = curl(&base, "/version", None, None);
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["etcdserver"], "3.4.0", "{body}");
    assert_eq!(v["etcdcluster"], "3.4.0", "{body}");
    assert!(v["phalanx"].as_str().is_some(), "{body}");
    let (code, body) = curl(&base, "/metrics", None, None);
    assert_eq!(code, 200);
    assert!(body.contains("# TYPE"), "{body}");
    let (code, _) = curl(&base, "/nope", None, None);
    assert_eq!(code, 404);

    // put / range with etcd's JSON mapping: base64 bytes, int64 as strings.
    let put = post(
        &base,
        "/v3/kv/put",
        json!({"key": b64("foo"), "value": b64("bar")}),
        None,
    );
    let rev: i64 = put["header"]["revision"].as_str().unwrap().parse().unwrap();
    assert!(rev > 1, "{put}");
    let r = post(&base, "/v3/kv/range", json!({"key": b64("foo")}), None);
    assert_eq!(r["kvs"][0]["key"], b64("foo"), "{r}");
    assert_eq!(r["kvs"][0]["value"], b64("bar"), "{r}");
    assert_eq!(r["kvs"][0]["create_revision"], rev.to_string(), "{r}");
    assert_eq!(r["count"], "1", "{r}");
    // the older /v3beta prefix too
    let r = post(&base, "/v3beta/kv/range", json!({"key": b64("foo")}), None);
    assert_eq!(r["kvs"][0]["value"], b64("bar"), "{r}");

    // lease grant, put with the lease, time-to-live with keys, revoke.
    let g = post(&base, "/v3/lease/grant", json!({"TTL": 60}), None);
    let id = g["ID"].as_str().unwrap().to_string();
    assert_eq!(g["TTL"], "60", "{g}");
    post(
        &base,
        "/v3/kv/put",
        json!({"key": b64("leased"), "value": b64("x"), "lease": id}),
        None,
    );
    let t = post(
        &base,
        "/v3/lease/timetolive",
        json!({"ID": id, "keys": true}),
        None,
    );
    assert_eq!(t["grantedTTL"], "60", "{t}");
    assert_eq!(t["keys"][0], b64("leased"), "{t}");
    post(&base, "/v3/lease/revoke", json!({"ID": id}), None);
    let r = post(&base, "/v3/kv/range", json!({"key": b64("leased")}), None);
    assert!(r.get("kvs").is_none(), "revoked lease's key is gone: {r}");

    // txn: compare value, then put / else range.
    let txn = json!({
        "compare": [{"key": b64("foo"), "result": "EQUAL", "target": "VALUE", "value": b64("bar")}],
        "success": [{"request_put": {"key": b64("foo"), "value": b64("baz")}}],
        "failure": [{"request_range": {"key": b64("foo")}}]
    });
    let t = post(&base, "/v3/kv/txn", txn.clone(), None);
    assert_eq!(t["succeeded"], true, "{t}");
    let t = post(&base, "/v3/kv/txn", txn, None);
    assert!(t.get("succeeded").is_none(), "{t}");
    assert_eq!(
        t["responses"][0]["response_range"]["kvs"][0]["value"],
        b64("baz"),
        "{t}"
    );

    // A streamed watch: created, then one event per put, one JSON object per line.
    let mut watch = Command::new("curl")
        .args(["-s", "-N", "--max-time", "20", "-X", "POST", "-d"])
        .arg(json!({"create_request": {"key": b64("w/"), "range_end": b64("w0")}}).to_string())
        .arg(format!("{base}/v3/watch"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<Value>::new()));
    {
        let lines = lines.clone();
        let out = watch.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&l) {
                    lines.lock().unwrap().push(v);
                }
            }
        });
    }
    wait_for("the watch to be created", Duration::from_secs(10), || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l["result"]["created"] == true)
            .then_some(())
    });
    post(
        &base,
        "/v3/kv/put",
        json!({"key": b64("w/1"), "value": b64("one")}),
        None,
    );
    post(
        &c.members[1].client_url(),
        "/v3/kv/put",
        json!({"key": b64("w/2"), "value": b64("two")}),
        None,
    );
    post(
        &base,
        "/v3/kv/deleterange",
        json!({"key": b64("w/1")}),
        None,
    );
    wait_for("three watch events", Duration::from_secs(10), || {
        let l = lines.lock().unwrap();
        let events: Vec<&Value> = l
            .iter()
            .filter_map(|l| l["result"]["events"].as_array())
            .flatten()
            .collect();
        (events.len() >= 3).then(|| {
            assert_eq!(events[0]["kv"]["value"], b64("one"));
            assert!(
                events[0].get("type").is_none(),
                "PUT is the default, omitted"
            );
            assert_eq!(events[1]["kv"]["value"], b64("two"));
            assert_eq!(events[2]["type"], "DELETE");
        })
    });
    let _ = watch.kill();
    let _ = watch.wait();

    // member list and status.
    let m = post(&base, "/v3/cluster/member/list", json!({}), None);
    assert_eq!(m["members"].as_array().unwrap().len(), 3, "{m}");
    assert!(
        m["members"][0]["peerURLs"][0]
            .as_str()
            .unwrap()
            .starts_with("http://"),
        "{m}"
    );
    let s = post(&base, "/v3/maintenance/status", json!({}), None);
    assert_eq!(s["version"], "3.4.0", "{s}");
    assert!(
        s["dbSize"].as_str().unwrap().parse::<i64>().unwrap() > 0,
        "{s}"
    );
    assert!(s["leader"].as_str().is_some(), "{s}");

    // Errors carry etcd's message and code; gRPC still works on the same port.
    let (code, body) = curl(&base, "/v3/kv/put", Some(&json!({"value": b64("x")})), None);
    assert_eq!(code, 400, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"], "etcdserver: key is not provided", "{body}");
    assert_eq!(e["code"], 3, "{body}");
    assert_eq!(c.ctl(&["get", "foo", "--print-value-only"]).trim(), "baz");

    // Auth through the gateway: authenticate, then the Authorization header.
    c.ctl(&["user", "add", "root:pw"]);
    c.ctl(&["auth", "enable"]);
    let (code, body) = curl(
        &base,
        "/v3/kv/range",
        Some(&json!({"key": b64("foo")})),
        None,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("etcdserver: user name is empty"), "{body}");
    let (code, body) = curl(
        &base,
        "/v3/auth/authenticate",
        Some(&json!({"name": "root", "password": "bad"})),
        None,
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("etcdserver: authentication failed, invalid user ID or password"),
        "{body}"
    );
    let a = post(
        &base,
        "/v3/auth/authenticate",
        json!({"name": "root", "password": "pw"}),
        None,
    );
    let token = a["token"].as_str().unwrap().to_string();
    let r = post(
        &base,
        "/v3/kv/range",
        json!({"key": b64("foo")}),
        Some(&token),
    );
    assert_eq!(r["kvs"][0]["value"], b64("baz"), "{r}");
    let (code, body) = curl(
        &base,
        "/v3/kv/range",
        Some(&json!({"key": b64("foo")})),
        Some("bogus"),
    );
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("etcdserver: invalid auth token"), "{body}");
    // /health and /version need no token.
    assert_eq!(curl(&base, "/health", None, None).0, 200);
}
