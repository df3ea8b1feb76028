//! The user's own scrape targets: a subset of Prometheus's `scrape_configs`
//! (static targets), kept in the replicated store under `<prefix>/targets`
//! and scraped by the leader every evaluation interval into the history,
//! labelled `job` and `instance`, with `up{job, instance}`.
//!
//! ```yaml
//! scrape_configs:
//! - job_name: api
//!   metrics_path: /metrics      # default
//!   scheme: http                # http (default) or https
//!   static_configs:
//!   - targets: ['10.0.0.5:9100', 'api-2:8080']
//! ```

use serde::Deserialize;

use crate::ConfigError;

/// Most targets in one document (each is scraped every evaluation).
pub const MAX_SCRAPE_TARGETS: usize = 256;

/// One scrape target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub job: String,
    /// `host:port`
    pub instance: String,
    /// The URL scraped.
    pub url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    scrape_configs: Vec<ScrapeConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScrapeConfig {
    job_name: String,
    metrics_path: Option<String>,
    scheme: Option<String>,
    #[serde(default)]
    static_configs: Vec<StaticConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticConfig {
    #[serde(default)]
    targets: Vec<String>,
}

/// Parse and validate a targets document; errors name the field and line.
pub fn parse_targets(file: &str, text: &str) -> Result<Vec<Target>, ConfigError> {
    let doc: Doc = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::yaml(file, &e))?;
    let err = |field: String, anchor: Option<(&str, &str)>, reason: String| ConfigError {
        file: file.to_string(),
        line: crate::rules::locate(text, anchor, field.rsplit('.').next().unwrap_or(&field)),
        field,
        reason,
    };
    let mut out = Vec::new();
    let mut jobs = std::collections::BTreeSet::new();
    for (i, c) in doc.scrape_configs.iter().enumerate() {
        let at = |f: &str| format!("scrape_configs[{i}].{f}");
        if c.job_name.is_empty() || !jobs.insert(c.job_name.clone()) {
            return Err(err(
                at("job_name"),
                Some(("job_name", &c.job_name)),
                format!(
                    "{:?}: empty or used twice; each job needs its own name",
                    c.job_name
                ),
            ));
        }
        let anchor = Some(("job_name", c.job_name.as_str()));
        let scheme = c.scheme.as_deref().unwrap_or("http");
        if scheme != "http" && scheme != "https" {
            return Err(err(
                at("scheme"),
                anchor,
                format!("{scheme:?}: use http or https"),
            ));
        }
        let path = c.metrics_path.as_deref().unwrap_or("/metrics");
        if !path.starts_with('/') {
            return Err(err(
                at("metrics_path"),
                anchor,
                format!("{path:?}: must start with /"),
            ));
        }
        for s in &c.static_configs {
            for t in &s.targets {
                let valid = t
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
                    && !t.contains('/');
                if !valid {
                    return Err(err(
                        at("static_configs.targets"),
                        anchor,
                        format!("{t:?}: expected host:port"),
                    ));
                }
                out.push(Target {
                    job: c.job_name.clone(),
                    instance: t.clone(),
                    url: format!("{scheme}://{t}{path}"),
                });
            }
        }
    }
    if out.len() > MAX_SCRAPE_TARGETS {
        return Err(err(
            "scrape_configs".into(),
            None,
            format!(
                "{} targets; at most MAX_SCRAPE_TARGETS = {MAX_SCRAPE_TARGETS}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_defaults_and_bad_input_is_named() {
        let t = parse_targets(
            "t.yml",
            "scrape_configs:\n- job_name: api\n  static_configs:\n  - targets: ['10.0.0.5:9100', 'api-2:8080']\n- job_name: web\n  scheme: https\n  metrics_path: /m\n  static_configs:\n  - targets: [web:443]\n",
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].url, "http://10.0.0.5:9100/metrics");
        assert_eq!(
            (t[2].job.as_str(), t[2].url.as_str()),
            ("web", "https://web:443/m")
        );
        for (doc, field, line) in [
            (
                "scrape_configs:\n- job_name: a\n  static_configs:\n  - targets: [nohost]\n",
                "targets",
                4,
            ),
            (
                "scrape_configs:\n- job_name: a\n  scheme: ftp\n",
                "scheme",
                3,
            ),
            (
                "scrape_configs:\n- job_name: a\n- job_name: a\n",
                "job_name",
                2,
            ),
            (
                "scrape_configs:\n- job_name: a\n  relabel_configs: []\n",
                "relabel_configs",
                3,
            ),
        ] {
            let e = parse_targets("t.yml", doc).unwrap_err();
            assert!(e.field.contains(field), "{doc}: {e}");
            assert_eq!(e.line, Some(line), "{doc}: {e}");
        }
    }
}
