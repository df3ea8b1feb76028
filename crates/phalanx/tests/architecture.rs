//! Enforces ARCHITECTURE.md's dependency rules from `cargo metadata`.
//!
//! The rules are read from ARCHITECTURE.md itself (section "Dependency
//! rules", lines of the form ``- forbid `a`, `b` in `x`, `y`: why``, where
//! the targets may also be `every library crate`), so the document and the
//! check cannot drift apart. Only normal dependencies count: tests and
//! build scripts may use anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

const BIN_CRATE: &str = "phalanx";

/// One rule: none of `forbidden` may be a normal dependency of `targets`.
#[derive(Debug)]
struct Rule {
    forbidden: Vec<String>,
    /// `None`: every library crate (every workspace crate but the binary).
    targets: Option<Vec<String>>,
    line: String,
}

fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, t)| t.to_string())
        .collect()
}

/// Parses the rules of ARCHITECTURE.md's "Dependency rules" section.
fn parse_rules(doc: &str) -> Vec<Rule> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Dependency rules"))
        .expect("ARCHITECTURE.md has no '## Dependency rules' section");
    let mut rules = Vec::new();
    for line in section.lines() {
        let Some(rest) = line.strip_prefix("- forbid ") else {
            continue;
        };
        let head = rest.split(':').next().unwrap();
        let (what, targets) = head
            .split_once(" in ")
            .unwrap_or_else(|| panic!("rule without ' in ': {line}"));
        let forbidden = backticked(what);
        assert!(!forbidden.is_empty(), "rule names no crate: {line}");
        let targets = if targets.trim() == "every library crate" {
            None
        } else {
            let t = backticked(targets);
            assert!(!t.is_empty(), "rule names no target crate: {line}");
            Some(t)
        };
        rules.push(Rule {
            forbidden,
            targets,
            line: line.to_string(),
        });
    }
    assert!(
        !rules.is_empty(),
        "no '- forbid' lines under Dependency rules"
    );
    rules
}

/// Workspace crate -> its normal (non-dev, non-build) dependency names.
fn normal_deps(metadata: &serde_json::Value) -> BTreeMap<String, BTreeSet<String>> {
    let members: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let mut out = BTreeMap::new();
    for p in metadata["packages"].as_array().unwrap() {
        if !members.contains(p["id"].as_str().unwrap()) {
            continue;
        }
        let deps = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect();
        out.insert(p["name"].as_str().unwrap().to_string(), deps);
    }
    out
}

/// Every broken rule, as "crate depends on dep (rule line)".
fn violations(rules: &[Rule], deps: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for rule in rules {
        for (krate, krate_deps) in deps {
            let applies = match &rule.targets {
                None => krate != BIN_CRATE,
                Some(t) => t.contains(krate),
            };
            if !applies {
                continue;
            }
            for f in &rule.forbidden {
                if krate_deps.contains(f) {
                    out.push(format!(
                        "crate `{krate}` depends on `{f}`, which ARCHITECTURE.md forbids: {}",
                        rule.line
                    ));
                }
            }
        }
        if let Some(targets) = &rule.targets {
            for t in targets {
                assert!(
                    deps.contains_key(t),
                    "rule names crate `{t}`, which is not in the workspace: {}",
                    rule.line
                );
            }
        }
    }
    out
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
}

#[test]
fn library_crates_respect_architecture_dependency_rules() {
    let doc = std::fs::read_to_string(workspace_root().join("ARCHITECTURE.md")).unwrap();
    let rules = parse_rules(&doc);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let deps = normal_deps(&metadata);
    assert!(deps.len() >= 9, "workspace crates not found: {deps:?}");
    for r in &rules {
        println!("rule: {}", r.line);
    }
    let broken = violations(&rules, &deps);
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The check does fail when a rule is broken: the same rules over a
/// workspace where a library gained `anyhow` and mvcc gained `tonic`.
#[test]
fn a_broken_rule_is_reported() {
    let doc = std::fs::read_to_string(workspace_root().join("ARCHITECTURE.md")).unwrap();
    let rules = parse_rules(&doc);
    let mut deps = BTreeMap::new();
    deps.insert(
        "mvcc".to_string(),
        BTreeSet::from(["redb".to_string(), "tonic".to_string()]),
    );
    deps.insert("bench".to_string(), BTreeSet::from(["anyhow".to_string()]));
    deps.insert(
        BIN_CRATE.to_string(),
        BTreeSet::from(["anyhow".to_string(), "clap".to_string()]),
    );
    for t in rules.iter().filter_map(|r| r.targets.as_ref()).flatten() {
        deps.entry(t.clone()).or_default();
    }
    let broken = violations(&rules, &deps);
    assert!(
        broken
            .iter()
            .any(|b| b.starts_with("crate `mvcc` depends on `tonic`")),
        "{broken:?}"
    );
    assert!(
        broken
            .iter()
            .any(|b| b.starts_with("crate `bench` depends on `anyhow`")),
        "{broken:?}"
    );
    assert!(
        !broken
            .iter()
            .any(|b| b.contains(&format!("`{BIN_CRATE}` depends"))),
        "the binary may use anyhow and clap: {broken:?}"
    );
}
