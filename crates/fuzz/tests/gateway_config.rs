//! Fuzz target: the gateway's TOML configuration (files, SIGHUP reloads and
//! the store-backed document every member applies). Property: every input
//! is accepted or refused with a `ConfigError`; no panic; an accepted
//! configuration validates again after a round trip through its own
//! serialisation-free path (parsing the same text twice gives the same verdict).

use gateway::Config;

fn seeds() -> Vec<Vec<u8>> {
    // Every TOML example in docs/gateway.md.
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/gateway.md"
    ))
    .expect("docs/gateway.md");
    let mut s: Vec<Vec<u8>> = doc
        .split("```toml")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .map(|b| b.as_bytes().to_vec())
        .collect();
    s.push(
        br#"
[[listeners]]
name = "web"
address = "127.0.0.1:8080"

[[pools]]
name = "app"
algorithm = "least-conn"
endpoints = [{ address = "127.0.0.1:9001", weight = 2 }, "127.0.0.1:9002"]

[[routes]]
listener = "web"
pool = "app"
"#
        .to_vec(),
    );
    s
}

#[test]
fn fuzz_gateway_config() {
    let seeds = seeds();
    assert!(seeds.len() >= 2, "docs/gateway.md lost its TOML examples");
    let report = fuzz::fuzz("gateway_config", &seeds, |input| {
        let Ok(text) = std::str::from_utf8(input) else {
            return;
        };
        let first = Config::from_toml_str(text)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let second = Config::from_toml_str(text)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(first, second, "the same document gave two verdicts");
        if let Err(msg) = first {
            assert!(!msg.is_empty(), "a refusal must say why");
        }
    });
    assert!(report.executions > 0);
}
