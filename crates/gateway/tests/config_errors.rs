//! Out-of-range numbers in the configuration (issue 10) are rejected with the
//! field path, the owner (pool, endpoint, listener, route) and the allowed
//! range, whether negative, zero where invalid, too large or mistyped; and
//! the same ranges apply to configurations built in code.

use gateway::Config;

const BASE: &str = r#"
[[listeners]]
name = "web"
address = "127.0.0.1:0"
LISTENER_EXTRA
[[pools]]
name = "api"
endpoints = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 2 }]
POOL_EXTRA
[[routes]]
pool = "api"
ROUTE_EXTRA
"#;

fn doc(listener: &str, pool: &str, route: &str) -> String {
    BASE.replace("LISTENER_EXTRA", listener)
        .replace("POOL_EXTRA", pool)
        .replace("ROUTE_EXTRA", route)
}

fn err(listener: &str, pool: &str, route: &str) -> String {
    let t = doc(listener, pool, route);
    match Config::from_toml_str(&t) {
        Ok(_) => panic!("accepted:\n{t}"),
        Err(e) => e.to_string(),
    }
}

fn assert_all(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "expected `{p}` in: {e}");
    }
}

#[test]
fn negative_weight_names_field_pool_endpoint_and_range() {
    let t = doc("", "", "").replace("weight = 2", "weight = -5");
    let e = Config::from_toml_str(&t).unwrap_err().to_string();
    assert_eq!(
        e,
        "invalid configuration: field `pools[0].endpoints[1].weight`: must be an integer \
         between 1 and 10000, got -5 (pool `api`, endpoint `127.0.0.1:9002`)"
    );
    for (w, got) in [
        ("0", "0"),
        ("10001", "10001"),
        ("2.5", "2.5"),
        ("\"heavy\"", "the string \"heavy\""),
    ] {
        let t = doc("", "", "").replace("weight = 2", &format!("weight = {w}"));
        let e = Config::from_toml_str(&t).unwrap_err().to_string();
        assert_all(
            &e,
            &[
                "pools[0].endpoints[1].weight",
                "between 1 and 10000",
                &format!("got {got}"),
                "endpoint `127.0.0.1:9002`",
            ],
        );
    }
}

#[test]
fn negative_zero_and_too_large_numbers_of_every_section() {
    let cases: &[(&str, &str, &str, &[&str])] = &[
        // Listener.
        (
            "max_connections = 0",
            "",
            "",
            &[
                "listeners[0].max_connections",
                "between 1 and 1000000",
                "got 0",
                "listener `web`",
            ],
        ),
        (
            "max_connections = -1",
            "",
            "",
            &["listeners[0].max_connections", "got -1"],
        ),
        (
            "max_connections_per_client_ip = -3",
            "",
            "",
            &[
                "listeners[0].max_connections_per_client_ip",
                "between 0 and 1000000",
            ],
        ),
        (
            "client_first_byte_timeout_ms = 0",
            "",
            "",
            &[
                "listeners[0].client_first_byte_timeout_ms",
                "between 1 and 3600000",
                "got 0",
            ],
        ),
        (
            "client_keepalive_idle_timeout_ms = 9999999999",
            "",
            "",
            &[
                "listeners[0].client_keepalive_idle_timeout_ms",
                "between 1 and 86400000",
            ],
        ),
        (
            "header_read_timeout_ms = -10",
            "",
            "",
            &["listeners[0].header_read_timeout_ms", "got -10"],
        ),
        (
            "max_header_bytes = 100",
            "",
            "",
            &["listeners[0].max_header_bytes", "between 8192 and 1048576"],
        ),
        (
            "http2_max_concurrent_streams = 0",
            "",
            "",
            &["listeners[0].http2_max_concurrent_streams"],
        ),
        (
            "tcp_connect_timeout_ms = 9223372036854775807",
            "",
            "",
            &[
                "listeners[0].tcp_connect_timeout_ms",
                "got 9223372036854775807",
            ],
        ),
        // Pool.
        (
            "",
            "connect_timeout_ms = -1",
            "",
            &[
                "pools[0].connect_timeout_ms",
                "between 1 and 600000",
                "got -1",
                "pool `api`",
            ],
        ),
        (
            "",
            "connect_timeout_ms = 0",
            "",
            &["pools[0].connect_timeout_ms", "got 0"],
        ),
        (
            "",
            "max_concurrent_requests = -100",
            "",
            &["pools[0].max_concurrent_requests", "got -100"],
        ),
        (
            "",
            "panic_threshold_percent = 101",
            "",
            &["pools[0].panic_threshold_percent", "between 0 and 100"],
        ),
        (
            "",
            "max_idle_connections_per_endpoint = -1",
            "",
            &["pools[0].max_idle_connections_per_endpoint"],
        ),
        (
            "",
            "health_check = { interval_ms = -5 }",
            "",
            &["pools[0].health_check.interval_ms", "got -5", "pool `api`"],
        ),
        (
            "",
            "health_check = { expected_status = 700 }",
            "",
            &[
                "pools[0].health_check.expected_status",
                "between 100 and 599",
            ],
        ),
        (
            "",
            "outlier_detection = { consecutive_5xx = -1 }",
            "",
            &["pools[0].outlier_detection.consecutive_5xx"],
        ),
        (
            "",
            "retry_budget = { ratio = -0.5 }",
            "",
            &[
                "pools[0].retry_budget.ratio",
                "between 0 and 1000",
                "got -0.5",
            ],
        ),
        (
            "",
            "retry_budget = { ratio = nan }",
            "",
            &["pools[0].retry_budget.ratio", "non-finite"],
        ),
        (
            "",
            "circuit_breaker = { open_ms = 0 }",
            "",
            &["pools[0].circuit_breaker.open_ms", "got 0"],
        ),
        (
            "",
            "hash = { maglev_table_size = -7 }",
            "",
            &["pools[0].hash.maglev_table_size"],
        ),
        // Route.
        (
            "",
            "",
            "timeout_ms = -1",
            &[
                "routes[0].timeout_ms",
                "between 0 and 86400000",
                "route to pool `api`",
            ],
        ),
        (
            "",
            "",
            "max_request_body_bytes = -1",
            &["routes[0].max_request_body_bytes", "got -1"],
        ),
        (
            "",
            "",
            "max_request_body_bytes = 99999999999",
            &[
                "routes[0].max_request_body_bytes",
                "between 0 and 1073741824",
            ],
        ),
        (
            "",
            "",
            "retry = { max_retries = 11 }",
            &["routes[0].retry.max_retries", "between 0 and 10", "got 11"],
        ),
        (
            "",
            "",
            "retry = { max_retries = -1 }",
            &["routes[0].retry.max_retries", "got -1"],
        ),
        (
            "",
            "",
            "retry = { retry_on_status = [502, -1] }",
            &["routes[0].retry.retry_on_status[1]", "between 100 and 599"],
        ),
        (
            "",
            "",
            "retry = { per_try_timeout_ms = -20 }",
            &["routes[0].retry.per_try_timeout_ms"],
        ),
        (
            "",
            "",
            "rate_limit = { requests_per_s = 0 }",
            &["routes[0].rate_limit.requests_per_s", "greater than 0"],
        ),
        (
            "",
            "",
            "rate_limit = { burst = -1 }",
            &["routes[0].rate_limit.burst", "got -1"],
        ),
    ];
    for (l, p, r, want) in cases {
        let e = err(l, p, r);
        assert_all(&e, want);
    }
    // Top level.
    let e = Config::from_toml_str(&format!("drain_timeout_ms = -1\n{}", doc("", "", "")))
        .unwrap_err()
        .to_string();
    assert_all(
        &e,
        &[
            "field `drain_timeout_ms`",
            "between 0 and 3600000",
            "got -1",
        ],
    );
}

#[test]
fn configurations_built_in_code_get_the_same_ranges() {
    let mut c = Config::from_toml_str(&doc("", "", "")).unwrap();
    c.routes[0].timeout_ms = u64::MAX;
    let e = c.validate().unwrap_err().to_string();
    assert_all(
        &e,
        &[
            "routes[0].timeout_ms",
            "between 0 and 86400000",
            "got 18446744073709551615",
        ],
    );
    let mut c = Config::from_toml_str(&doc("", "", "")).unwrap();
    c.listeners[0].client_first_byte_timeout_ms = 0;
    let e = c.validate().unwrap_err().to_string();
    assert_all(
        &e,
        &[
            "listeners[0].client_first_byte_timeout_ms",
            "listener `web`",
        ],
    );
}

#[test]
fn valid_extremes_are_accepted() {
    let t = doc(
        "max_connections = 1000000\nmax_connections_per_client_ip = 0\nclient_first_byte_timeout_ms = 1",
        "panic_threshold_percent = 0\nmax_pending_requests = 0\nendpoints = [{ address = \"127.0.0.1:1\", weight = 10000 }]",
        "timeout_ms = 0\nmax_request_body_bytes = 0\nretry = { max_retries = 10 }",
    )
    .replace(
        "endpoints = [\"127.0.0.1:9001\", { address = \"127.0.0.1:9002\", weight = 2 }]\n",
        "",
    );
    Config::from_toml_str(&t).unwrap_or_else(|e| panic!("{e}\n{t}"));
}
