//! Prometheus-style durations: `500ms`, `5s`, `1m30s`, `4h`, `7d`, `1w`, `1y`.

/// Parse a Prometheus duration into milliseconds.
pub fn parse_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(0);
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "{s:?}: expected a number before the unit (e.g. 30s, 5m, 1h30m)"
            ));
        }
        let n: u64 = rest[..digits].parse().map_err(|e| format!("{s:?}: {e}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            "" => return Err(format!("{s:?}: missing unit (ms, s, m, h, d, w, y)")),
            u => return Err(format!("{s:?}: unknown unit {u:?} (ms, s, m, h, d, w, y)")),
        };
        total = total
            .checked_add(
                n.checked_mul(mult)
                    .ok_or_else(|| format!("{s:?}: too large"))?,
            )
            .ok_or_else(|| format!("{s:?}: too large"))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Format milliseconds the way Prometheus prints durations (`1m30s`, `500ms`, `0s`).
pub fn format_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, m) in [
        ("d", 86_400_000u64),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if rest >= m {
            out.push_str(&format!("{}{unit}", rest / m));
            rest %= m;
        }
    }
    out
}

/// `--since`-style input: a duration ago (`10m`) or RFC 3339 / unix ms.
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(d) = parse_ms(s) {
        return Ok(now_ms - d as i64);
    }
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        })
        .map_err(|_| format!("{s:?}: expected a duration ago (10m), unix ms or RFC 3339 time"))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn durations() {
        assert_eq!(parse_ms("1m30s").unwrap(), 90_000);
        assert_eq!(parse_ms("500ms").unwrap(), 500);
        assert_eq!(parse_ms("0").unwrap(), 0);
        assert!(parse_ms("5").unwrap_err().contains("missing unit"));
        assert!(parse_ms("5x").unwrap_err().contains("unknown unit"));
        assert_eq!(format_ms(90_500), "1m30s500ms");
    }
}
