//! Judging a run: [`analyze`] turns what was recorded into a [`Summary`]
//! (operation counts, availability, longest write gap, lost acknowledged
//! writes, per-window and per-member figures); [`render_markdown`] and
//! [`render_svg`] write `report.md` and `timeline.svg`.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::faults::FaultWindow;
use crate::http_load::{GatewaySummary, HttpOutcome, HttpRecord};
use crate::recorder::{Func, OpRecord, OpStatus};
pub use crate::verdict::Verdict;
use crate::workload::AtRevision;

/// Availability bucket: a bucket is available if at least one operation
/// completed successfully in it, in ms.
pub const AVAILABILITY_BUCKET_MS: u64 = 100;

/// Timeline bucket (throughput and p99 latency), in ms.
pub const TIMELINE_BUCKET_MS: u64 = 250;

/// Counts per operation kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub invoked: u64,
    pub ok: u64,
    pub failed: u64,
    pub indeterminate: u64,
}

impl Counts {
    fn add(&mut self, s: OpStatus) {
        self.invoked += 1;
        match s {
            OpStatus::Ok => self.ok += 1,
            OpStatus::Fail => self.failed += 1,
            OpStatus::Info => self.indeterminate += 1,
        }
    }
}

/// One acknowledged write missing from the final state.
#[derive(Debug, Clone, Serialize)]
pub struct LostWrite {
    pub key: String,
    pub value: String,
    pub acked_at_ms: u64,
    /// What the final read returned instead (`None` = key absent), or,
    /// for a write found missing at its own revision, what the key held
    /// there.
    pub final_value: Option<String>,
    /// Set when the write was found missing at this, its acknowledged
    /// revision.
    pub revision: Option<i64>,
}

/// Per fault window figures.
#[derive(Debug, Clone, Serialize)]
pub struct WindowStats {
    #[serde(flatten)]
    pub window: FaultWindow,
    pub ok_ops: u64,
    pub failed_ops: u64,
    pub indeterminate_ops: u64,
    pub longest_write_gap_ms: u64,
    /// Successful operations of clients pinned to a target member, invoked at
    /// least [`TARGET_GRACE_MS`] after the window started and completed
    /// before it ended.
    pub target_clients_ok_ops: u64,
    /// Median latency of the successful writes and compare-and-sets invoked
    /// and completed inside the window, in ms (`None`: there were none).
    pub write_latency_p50_ms: Option<f64>,
}

/// Operations invoked this soon after a window started may still complete
/// normally on the target; they are not counted in `target_clients_ok_ops`.
pub const TARGET_GRACE_MS: u64 = 1_000;

/// The whole judgement of a run (also written as `summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub duration_ms: u64,
    pub members: Vec<String>,
    pub total: Counts,
    pub by_kind: Vec<(String, Counts)>,
    pub by_member: Vec<(String, Counts)>,
    /// Fraction of [`AVAILABILITY_BUCKET_MS`] buckets of the workload period
    /// with at least one successful operation.
    pub availability: f64,
    pub longest_write_gap_ms: u64,
    /// Median latency of the successful writes and compare-and-sets that
    /// overlap no fault window, in ms (`None`: there were none).
    pub write_latency_p50_ms_outside_windows: Option<f64>,
    pub acknowledged_writes: u64,
    /// `None` when the final reads could not be made.
    pub lost_writes: Option<Vec<LostWrite>>,
    pub linearizable: Verdict,
    pub linearizable_detail: String,
    pub watch: Verdict,
    pub watch_detail: String,
    pub watch_events: u64,
    pub leases: Verdict,
    pub leases_detail: String,
    pub lease_reads: u64,
    pub lost_writes_verdict: Verdict,
    pub windows: Vec<WindowStats>,
    /// HTTP load through the members' gateways (runs with backend faults only).
    pub gateway: Option<GatewaySummary>,
    pub passed: bool,
}

impl Summary {
    /// Fault windows that were skipped, not injected or not healed (each
    /// carries a note saying why).
    pub fn faults_not_clean(&self) -> usize {
        self.windows
            .iter()
            .filter(|w| w.window.note.is_some())
            .count()
    }

    /// Whether the run passed: every checker (and the gateway's verdict,
    /// when there was HTTP load) said PASS, and every fault window was
    /// injected and healed cleanly. A fault that was skipped, failed to
    /// inject or failed to heal proved nothing, whatever the checkers say.
    pub fn judge(&self) -> bool {
        [
            self.linearizable,
            self.watch,
            self.leases,
            self.lost_writes_verdict,
        ]
        .into_iter()
        .chain(self.gateway.as_ref().map(|g| g.verdict))
        .all(|v| v == Verdict::Pass)
            && self.faults_not_clean() == 0
    }

    /// The one-line verdict printed at the end of a run.
    pub fn verdict_line(&self) -> String {
        let gateway = match &self.gateway {
            Some(g) => format!(
                " gateway={} gateway_requests={} gateway_errors={}",
                g.verdict, g.counts.requests, g.counts.errors
            ),
            None => String::new(),
        };
        let faults = match self.faults_not_clean() {
            0 => String::new(),
            n => format!(" faults_not_injected_cleanly={n}"),
        };
        format!(
            "drill: {}: linearizable={} watch={} leases={} lost_writes={} longest_write_gap_ms={} availability={:.3} ops_ok={} ops_failed={} ops_indeterminate={}{gateway}",
            self.scenario,
            self.linearizable,
            self.watch,
            self.leases,
            self.lost_writes.as_ref().map(|l| l.len().to_string()).unwrap_or_else(|| "unknown".into()),
            self.longest_write_gap_ms,
            self.availability,
            self.total.ok,
            self.total.failed,
            self.total.indeterminate
        ) + &faults
    }
}

/// Median of `v` (sorted in place), `None` if empty.
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[(v.len() - 1) / 2])
}

/// Longest interval without a completion in `times` (µs, sorted) within
/// `[from, to]`, edges included, in ms.
pub fn longest_gap_ms(times: &[u64], from: u64, to: u64) -> u64 {
    let mut prev = from;
    let mut best = 0;
    for &t in times.iter().filter(|&&t| t >= from && t <= to) {
        best = best.max(t - prev);
        prev = t;
    }
    best = best.max(to.saturating_sub(prev));
    best / 1000
}

/// Lost acknowledged writes: for each key, the final linearizable read must
/// show the value of a write that was not strictly followed by another
/// acknowledged write. Every acknowledged write (write or successful cas)
/// invoked after the operation that produced the final value completed is
/// lost; if the final value is absent, or was never written by anyone, every
/// acknowledged write of the key is lost.
pub fn lost_writes(
    ops: &[OpRecord],
    finals: &HashMap<String, Option<String>>,
    keys: &[String],
) -> Option<Vec<LostWrite>> {
    let mut lost = Vec::new();
    for key in keys {
        let final_value = finals.get(key)?;
        let writes: Vec<&OpRecord> = ops
            .iter()
            .filter(|o| {
                &o.key == key
                    && matches!(o.f, Func::Write | Func::Cas)
                    && o.status != OpStatus::Fail
            })
            .collect();
        let producer = final_value
            .as_ref()
            .and_then(|v| writes.iter().find(|o| o.value.as_ref() == Some(v)));
        let horizon = match producer {
            // An indeterminate producer may have taken effect at any time.
            Some(p) if p.status == OpStatus::Info => continue,
            Some(p) => Some(p.complete_us),
            None => None,
        };
        for w in writes.iter().filter(|o| o.status == OpStatus::Ok) {
            if horizon.is_none_or(|h| w.invoke_us > h) {
                lost.push(LostWrite {
                    key: key.clone(),
                    value: w.value.clone().unwrap_or_default(),
                    acked_at_ms: w.complete_us / 1000,
                    final_value: final_value.clone(),
                    revision: None,
                });
            }
        }
    }
    Some(lost)
}

/// Acknowledged writes that are not in the store at their own revision
/// (see [`crate::workload::revision_reads`]): the value or `mod_revision`
/// read there is another write's, or the revision is beyond the store's.
/// Writes already in `found` are not repeated.
pub fn lost_at_revision(
    ops: &[OpRecord],
    at: &HashMap<(String, i64), AtRevision>,
    found: &[LostWrite],
) -> Vec<LostWrite> {
    let mut lost = Vec::new();
    for o in ops
        .iter()
        .filter(|o| o.status == OpStatus::Ok && matches!(o.f, Func::Write | Func::Cas))
    {
        let Some(rev) = o.revision else { continue };
        let Some(read) = at.get(&(o.key.clone(), rev)) else {
            continue;
        };
        let written = o.value.clone().unwrap_or_default();
        let held = match read {
            AtRevision::Held(Some((v, mod_rev))) if *mod_rev == rev && *v == written => continue,
            AtRevision::Held(Some((v, mod_rev))) => Some(format!("{v} (mod_revision {mod_rev})")),
            AtRevision::Held(None) => None,
            AtRevision::Future => Some(format!("(revision {rev} is beyond the store's)")),
        };
        if found.iter().any(|l| l.key == o.key && l.value == written) {
            continue;
        }
        lost.push(LostWrite {
            key: o.key.clone(),
            value: written,
            acked_at_ms: o.complete_us / 1000,
            final_value: held,
            revision: Some(rev),
        });
    }
    lost
}

pub struct Inputs<'a> {
    pub scenario: String,
    pub members: Vec<String>,
    pub ops: &'a [OpRecord],
    pub workload_start_us: u64,
    pub workload_end_us: u64,
    pub windows: Vec<FaultWindow>,
    pub finals: Option<HashMap<String, Option<String>>>,
    pub keys: Vec<String>,
    /// Acknowledged writes read back at their revisions.
    pub at_revision: HashMap<(String, i64), AtRevision>,
}

/// Everything but the checker verdicts (filled in by the caller).
pub fn analyze(inp: &Inputs) -> Summary {
    let ops: Vec<&OpRecord> = inp
        .ops
        .iter()
        .filter(|o| o.process < crate::workload::FINAL_READ_PROCESS)
        .collect();
    let mut total = Counts::default();
    let mut kinds: Vec<(String, Counts)> = ["read", "write", "cas"]
        .iter()
        .map(|k| (k.to_string(), Counts::default()))
        .collect();
    let mut members: Vec<(String, Counts)> = inp
        .members
        .iter()
        .map(|m| (m.clone(), Counts::default()))
        .collect();
    for o in &ops {
        total.add(o.status);
        let k = match o.f {
            Func::Read => 0,
            Func::Write => 1,
            Func::Cas => 2,
        };
        kinds[k].1.add(o.status);
        if let Some(m) = o.member {
            if let Some(slot) = members.get_mut(m) {
                slot.1.add(o.status);
            }
        }
    }
    let (from, to) = (
        inp.workload_start_us,
        inp.workload_end_us.max(inp.workload_start_us + 1),
    );
    let bucket = AVAILABILITY_BUCKET_MS * 1000;
    let nb = (to - from).div_ceil(bucket) as usize;
    let mut avail = vec![false; nb.max(1)];
    for o in ops
        .iter()
        .filter(|o| o.status == OpStatus::Ok && o.complete_us >= from && o.complete_us < to)
    {
        avail[((o.complete_us - from) / bucket) as usize] = true;
    }
    let availability = avail.iter().filter(|b| **b).count() as f64 / avail.len() as f64;
    let mut write_times: Vec<u64> = ops
        .iter()
        .filter(|o| o.status == OpStatus::Ok && matches!(o.f, Func::Write | Func::Cas))
        .map(|o| o.complete_us)
        .collect();
    write_times.sort_unstable();
    let acknowledged_writes = write_times.len() as u64;
    let windows = inp
        .windows
        .iter()
        .map(|w| {
            let (ws, we) = (w.start_ms * 1000, w.end_ms * 1000);
            let mut c = Counts::default();
            for o in ops
                .iter()
                .filter(|o| o.complete_us >= ws && o.complete_us <= we)
            {
                c.add(o.status);
            }
            let targets: Vec<usize> = w
                .targets
                .iter()
                .filter_map(|t| inp.members.iter().position(|m| m == t))
                .collect();
            let target_ok = ops
                .iter()
                .filter(|o| {
                    o.status == OpStatus::Ok
                        && o.member.is_some_and(|m| targets.contains(&m))
                        && o.invoke_us >= ws + TARGET_GRACE_MS * 1000
                        && o.complete_us <= we
                })
                .count() as u64;
            let mut lat: Vec<f64> = ops
                .iter()
                .filter(|o| {
                    o.status == OpStatus::Ok
                        && matches!(o.f, Func::Write | Func::Cas)
                        && o.invoke_us >= ws
                        && o.complete_us <= we
                })
                .map(|o| (o.complete_us - o.invoke_us) as f64 / 1000.0)
                .collect();
            WindowStats {
                window: w.clone(),
                write_latency_p50_ms: median(&mut lat),
                ok_ops: c.ok,
                failed_ops: c.failed,
                indeterminate_ops: c.indeterminate,
                longest_write_gap_ms: longest_gap_ms(&write_times, ws, we),
                target_clients_ok_ops: target_ok,
            }
        })
        .collect();
    let mut outside: Vec<f64> = ops
        .iter()
        .filter(|o| o.status == OpStatus::Ok && matches!(o.f, Func::Write | Func::Cas))
        .filter(|o| {
            inp.windows
                .iter()
                .all(|w| o.complete_us < w.start_ms * 1000 || o.invoke_us > w.end_ms * 1000)
        })
        .map(|o| (o.complete_us - o.invoke_us) as f64 / 1000.0)
        .collect();
    let lost = inp
        .finals
        .as_ref()
        .and_then(|f| lost_writes(inp.ops, f, &inp.keys))
        .map(|mut l| {
            let more = lost_at_revision(inp.ops, &inp.at_revision, &l);
            l.extend(more);
            l
        });
    let lost_writes_verdict = match &lost {
        Some(l) if l.is_empty() => Verdict::Pass,
        Some(_) => Verdict::Fail,
        None => Verdict::Unknown,
    };
    Summary {
        scenario: inp.scenario.clone(),
        duration_ms: (to - from) / 1000,
        members: inp.members.clone(),
        total,
        by_kind: kinds,
        by_member: members,
        availability,
        longest_write_gap_ms: longest_gap_ms(&write_times, from, to),
        write_latency_p50_ms_outside_windows: median(&mut outside),
        acknowledged_writes,
        lost_writes: lost,
        linearizable: Verdict::Unknown,
        linearizable_detail: String::new(),
        watch: Verdict::Unknown,
        watch_detail: String::new(),
        watch_events: 0,
        leases: Verdict::Unknown,
        leases_detail: String::new(),
        lease_reads: 0,
        lost_writes_verdict,
        windows,
        gateway: None,
        passed: false,
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1} ms"))
        .unwrap_or_else(|| "-".into())
}

fn counts_row(name: &str, c: &Counts) -> String {
    format!(
        "| {name} | {} | {} | {} | {} |\n",
        c.invoked, c.ok, c.failed, c.indeterminate
    )
}

/// `report.md`.
pub fn render_markdown(s: &Summary, settings: &[(String, String)]) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# Drill report: {}\n", s.scenario);
    let _ = writeln!(
        m,
        "**Overall: {}**\n",
        if s.passed { "PASS" } else { "FAIL" }
    );
    let _ = writeln!(m, "```\n{}\n```\n", s.verdict_line());
    m.push_str("## Verdicts\n\n| check | verdict | detail |\n| --- | --- | --- |\n");
    let one = |d: &str| d.lines().next().unwrap_or("").replace('|', "\\|");
    let _ = writeln!(
        m,
        "| linearizability (WGL checker) | {} | {} |",
        s.linearizable,
        one(&s.linearizable_detail)
    );
    let _ = writeln!(
        m,
        "| watch (every committed change once, in order) | {} | {} |",
        s.watch,
        one(&s.watch_detail)
    );
    let _ = writeln!(
        m,
        "| leases (key never vanishes while kept alive; gone after revoke) | {} | {} |",
        s.leases,
        one(&s.leases_detail)
    );
    let lost = match &s.lost_writes {
        Some(l) => format!(
            "{} of {} acknowledged writes lost",
            l.len(),
            s.acknowledged_writes
        ),
        None => "final reads failed: cannot verify".into(),
    };
    let _ = writeln!(
        m,
        "| lost acknowledged writes (final linearizable reads, and each write read back at its revision) | {} | {lost} |",
        s.lost_writes_verdict
    );
    if let Some(g) = &s.gateway {
        let _ = writeln!(
            m,
            "| gateway (client-visible HTTP errors within the budget) | {} | {} |",
            g.verdict,
            one(&g.detail)
        );
    }
    m.push('\n');
    m.push_str("## Settings\n\n| setting | value |\n| --- | --- |\n");
    for (k, v) in settings {
        let _ = writeln!(m, "| {k} | {v} |");
    }
    m.push_str("\n## Operations\n\n| kind | invoked | ok | failed | indeterminate |\n| --- | --- | --- | --- | --- |\n");
    for (k, c) in &s.by_kind {
        m.push_str(&counts_row(k, c));
    }
    m.push_str(&counts_row("**all**", &s.total));
    m.push_str("\nBy the member the client was pinned to:\n\n| member | invoked | ok | failed | indeterminate |\n| --- | --- | --- | --- | --- |\n");
    for (k, c) in &s.by_member {
        m.push_str(&counts_row(k, c));
    }
    let _ = writeln!(
        m,
        "\n## Availability\n\n| figure | value |\n| --- | --- |\n| workload period | {} ms |\n| availability ({} ms buckets with ≥ 1 successful operation) | {:.1} % |\n| longest interval without a successful write | {} ms |\n| median write latency outside fault windows | {} |\n| acknowledged writes | {} |\n| watch events received | {} |\n| lease reads | {} |\n",
        s.duration_ms,
        AVAILABILITY_BUCKET_MS,
        s.availability * 100.0,
        s.longest_write_gap_ms,
        fmt_ms(s.write_latency_p50_ms_outside_windows),
        s.acknowledged_writes,
        s.watch_events,
        s.lease_reads
    );
    m.push_str("## Fault windows\n\nTimes are ms since the drill started; “new leader” means another member reported itself leader during the window.\n\n");
    m.push_str("| # | fault | targets | start | end | leader before | leader during | new leader | ok ops | failed | indeterminate | longest write gap (ms) | median write latency | note |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (i, w) in s.windows.iter().enumerate() {
        let f = &w.window;
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            f.kind,
            f.targets.join(", "),
            f.start_ms,
            f.end_ms,
            f.leader_before.as_deref().unwrap_or("-"),
            f.leader_during.as_deref().unwrap_or("-"),
            if f.new_leader_elected { "yes" } else { "no" },
            w.ok_ops,
            w.failed_ops,
            w.indeterminate_ops,
            w.longest_write_gap_ms,
            fmt_ms(w.write_latency_p50_ms),
            f.note.as_deref().unwrap_or("")
        );
    }
    if s.windows.is_empty() {
        m.push_str("| - | (no faults) | | | | | | | | | | | | |\n");
    }
    if let Some(g) = &s.gateway {
        render_gateway(&mut m, g);
    }
    if let Some(l) = s.lost_writes.as_ref().filter(|l| !l.is_empty()) {
        m.push_str("\n## Lost acknowledged writes (first 20)\n\n| key | value | acknowledged at (ms) | revision | found instead |\n| --- | --- | --- | --- | --- |\n");
        for w in l.iter().take(20) {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} |",
                w.key,
                w.value,
                w.acked_at_ms,
                w.revision
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "(final read)".into()),
                w.final_value.as_deref().unwrap_or("(absent)")
            );
        }
    }
    for (title, d) in [
        ("Linearizability", &s.linearizable_detail),
        ("Watch", &s.watch_detail),
        ("Leases", &s.leases_detail),
    ] {
        if d.lines().count() > 1 {
            let _ = writeln!(m, "\n## {title} details\n\n```\n{}\n```", d.trim_end());
        }
    }
    m.push_str("\n## Files\n\n* `history.jsonl` — operation history (docs/history-format.md §1; times in µs); check with `phalanx check history.jsonl`\n* `watch.jsonl` — watch log (`phalanx check --watch`)\n* `leases.jsonl` — lease log (`phalanx check --leases`; times in ms)\n* `timeline.svg` — throughput and p99 latency per 250 ms (and gateway requests/errors per second with backend faults), fault windows shaded\n* `summary.json` — this report as JSON\n* `logs/` — member logs (local clusters only)\n");
    if s.gateway.is_some() {
        m.push_str("* `gateway.toml` — the gateway configuration the drill wrote into the store; `logs/backend-*.log` — sample backend logs\n");
    }
    m
}

fn render_gateway(m: &mut String, g: &GatewaySummary) {
    let kinds = |c: &crate::http_load::HttpCounts| {
        HttpOutcome::ERRORS
            .iter()
            .map(|k| {
                c.errors_by_kind
                    .get(k.name())
                    .copied()
                    .unwrap_or(0)
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let _ = writeln!(
        m,
        "\n## Gateway\n\n{} HTTP clients sent `GET /` to the members' gateways in turn ({}), each request bounded by {} ms; a request whose gateway refused the connection moved on to the next gateway (`failovers`); gateway profile `{}` (`gateway.toml`), backends {}. An error is a status ≥ 500 (`http_5xx`), another non-2xx status (`http_other`), a failed or lost connection (`connection`) or no answer in time (`timeout`).\n",
        g.http_clients,
        g.gateways.join(", "),
        g.http_timeout_ms,
        g.profile,
        g.backends.join(", ")
    );
    let _ = writeln!(
        m,
        "| figure | value |\n| --- | --- |\n| requests | {} |\n| ok | {} |\n| errors | {} ({:.2} %; budget {} %) |\n| availability (ok / requests) | {:.2} % |\n| latency p50 / p99 (all requests) | {} / {} |\n| errors outside fault windows | {} |\n| requests that failed over to another gateway | {} |\n",
        g.counts.requests,
        g.counts.ok,
        g.counts.errors,
        g.error_percent,
        g.max_error_percent,
        g.availability_percent,
        fmt_ms(g.latency_p50_ms),
        fmt_ms(g.latency_p99_ms),
        g.errors_outside_windows,
        g.counts.failovers
    );
    m.push_str("| errors by kind | http_5xx | http_other | connection | timeout |\n| --- | --- | --- | --- | --- |\n");
    let _ = writeln!(m, "| whole run | {} |\n", kinds(&g.counts));
    m.push_str("Requests that completed inside each fault window:\n\n| # | fault | targets | start | end | requests | ok | errors | http_5xx | http_other | connection | timeout | failovers | latency p99 | latency max |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (i, w) in g.windows.iter().enumerate() {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            w.kind,
            w.targets.join(", "),
            w.start_ms,
            w.end_ms,
            w.counts.requests,
            w.counts.ok,
            w.counts.errors,
            kinds(&w.counts),
            w.counts.failovers,
            fmt_ms(w.latency_p99_ms),
            fmt_ms(w.latency_max_ms)
        );
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `timeline.svg`: two panels (throughput of successful operations, p99
/// latency of successful operations) per [`TIMELINE_BUCKET_MS`] bucket, and
/// with `http` a third (gateway requests per second: ok and errors), with
/// fault windows shaded and labeled across all of them.
pub fn render_svg(
    ops: &[OpRecord],
    http: Option<&[HttpRecord]>,
    windows: &[FaultWindow],
    end_us: u64,
    title: &str,
) -> String {
    let bucket = TIMELINE_BUCKET_MS * 1000;
    let nb = (end_us.div_ceil(bucket) as usize).max(1);
    let mut lat: Vec<Vec<u64>> = vec![Vec::new(); nb];
    for o in ops
        .iter()
        .filter(|o| o.status == OpStatus::Ok && o.process < crate::workload::FINAL_READ_PROCESS)
    {
        let b = ((o.complete_us / bucket) as usize).min(nb - 1);
        lat[b].push(o.complete_us.saturating_sub(o.invoke_us));
    }
    let tput: Vec<f64> = lat
        .iter()
        .map(|l| l.len() as f64 * 1000.0 / TIMELINE_BUCKET_MS as f64)
        .collect();
    let p99: Vec<Option<f64>> = lat
        .iter_mut()
        .map(|l| {
            if l.is_empty() {
                return None;
            }
            l.sort_unstable();
            let idx = ((l.len() as f64 * 0.99).ceil() as usize).clamp(1, l.len()) - 1;
            Some(l[idx] as f64 / 1000.0)
        })
        .collect();
    let (w, left, right) = (1000.0, 70.0, 20.0);
    let plot_w = w - left - right;
    let (p1_top, p1_h, p2_top, p2_h, p3_top, p3_h) = (40.0, 150.0, 240.0, 150.0, 440.0, 150.0);
    // Bottom of the lowest panel.
    let bottom = if http.is_some() {
        p3_top + p3_h
    } else {
        p2_top + p2_h
    };
    let h = bottom + 40.0;
    let total_s = nb as f64 * TIMELINE_BUCKET_MS as f64 / 1000.0;
    let x = |s: f64| left + s / total_s * plot_w;
    let max_t = tput.iter().cloned().fold(1.0, f64::max);
    let max_l = p99.iter().flatten().cloned().fold(1.0, f64::max);
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        o,
        r#"<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>"#
    );
    let _ = writeln!(
        o,
        r#"<text x="{left}" y="18" font-size="14" font-weight="bold">{}</text>"#,
        esc(title)
    );
    // Fault windows across both panels.
    for (i, f) in windows.iter().enumerate() {
        let (x0, x1) = (x(f.start_ms as f64 / 1000.0), x(f.end_ms as f64 / 1000.0));
        let _ = writeln!(
            o,
            r##"<rect x="{x0:.1}" y="{p1_top}" width="{:.1}" height="{:.1}" fill="#f4a261" fill-opacity="0.25" stroke="#e76f51" stroke-opacity="0.6"><title>{} {}..{} ms</title></rect>"##,
            (x1 - x0).max(1.0),
            bottom - p1_top,
            esc(f.kind.name()),
            f.start_ms,
            f.end_ms
        );
        let ly = p1_top + 12.0 + (i % 3) as f64 * 12.0;
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{ly}" fill="#9c3d1f">{}</text>"##,
            x0 + 2.0,
            esc(&format!("{} {}", f.kind, f.targets.join(",")))
        );
    }
    let panel = |o: &mut String,
                 top: f64,
                 ph: f64,
                 label: &str,
                 maxv: f64,
                 series: &[(&[Option<f64>], &str)]| {
        let _ = writeln!(
            o,
            r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{ph}" fill="none" stroke="#888"/>"##
        );
        let _ = writeln!(
            o,
            r##"<text x="{left}" y="{}" fill="#333">{}</text>"##,
            top - 4.0,
            esc(label)
        );
        for k in 0..=4 {
            let v = maxv * k as f64 / 4.0;
            let y = top + ph - ph * k as f64 / 4.0;
            let _ = writeln!(
                o,
                r##"<line x1="{}" y1="{y:.1}" x2="{left}" y2="{y:.1}" stroke="#888"/><text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"##,
                left - 4.0,
                left - 6.0,
                y + 4.0
            );
        }
        for (vals, color) in series {
            let mut path = String::new();
            let mut pen_up = true;
            for (i, v) in vals.iter().enumerate() {
                match v {
                    Some(v) => {
                        let px = x((i as f64 + 0.5) * TIMELINE_BUCKET_MS as f64 / 1000.0);
                        let py = top + ph - (v / maxv).min(1.0) * ph;
                        let _ = write!(path, "{}{px:.1},{py:.1} ", if pen_up { "M" } else { "L" });
                        pen_up = false;
                    }
                    None => pen_up = true,
                }
            }
            let _ = writeln!(
                o,
                r##"<path d="{}" fill="none" stroke="{color}" stroke-width="1.5"/>"##,
                path.trim_end()
            );
        }
    };
    let tv: Vec<Option<f64>> = tput.iter().map(|v| Some(*v)).collect();
    panel(
        &mut o,
        p1_top,
        p1_h,
        "successful operations per second (250 ms buckets)",
        max_t,
        &[(&tv, "#2a9d8f")],
    );
    panel(
        &mut o,
        p2_top,
        p2_h,
        "p99 latency of successful operations, ms (250 ms buckets; gaps = none succeeded)",
        max_l,
        &[(&p99, "#264653")],
    );
    if let Some(http) = http {
        let (mut ok, mut err) = (vec![0u64; nb], vec![0u64; nb]);
        for r in http {
            let b = ((r.end_us / bucket) as usize).min(nb - 1);
            if r.outcome == HttpOutcome::Ok {
                ok[b] += 1;
            } else {
                err[b] += 1;
            }
        }
        let per_s = |v: &[u64]| {
            v.iter()
                .map(|c| Some(*c as f64 * 1000.0 / TIMELINE_BUCKET_MS as f64))
                .collect::<Vec<_>>()
        };
        let (okv, errv) = (per_s(&ok), per_s(&err));
        let max_h = okv
            .iter()
            .chain(&errv)
            .flatten()
            .cloned()
            .fold(1.0, f64::max);
        panel(&mut o, p3_top, p3_h, "gateway: successful requests per second (green), errors per second (red), 250 ms buckets", max_h, &[(&okv, "#2a9d8f"), (&errv, "#d62828")]);
    }
    let step = if total_s > 60.0 {
        10.0
    } else if total_s > 20.0 {
        5.0
    } else {
        2.0
    };
    let mut s = 0.0;
    while s <= total_s + 1e-9 {
        let px = x(s);
        let _ = writeln!(
            o,
            r##"<line x1="{px:.1}" y1="{bottom}" x2="{px:.1}" y2="{}" stroke="#888"/><text x="{px:.1}" y="{}" text-anchor="middle">{s:.0}s</text>"##,
            bottom + 4.0,
            bottom + 16.0
        );
        s += step;
    }
    let _ = writeln!(
        o,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#333">time since drill start</text>"##,
        left + plot_w / 2.0,
        h - 6.0
    );
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: &str, value: &str, revision: i64) -> OpRecord {
        OpRecord {
            process: 0,
            member: None,
            f: Func::Write,
            key: key.into(),
            status: OpStatus::Ok,
            value: Some(value.into()),
            revision: Some(revision),
            invoke_us: 0,
            complete_us: 1_000,
        }
    }

    #[test]
    fn a_write_missing_at_its_revision_is_lost_even_when_overwritten_later() {
        let ops = [
            write("k", "a", 5),
            write("k", "b", 6),
            write("j", "c", 7),
            write("j", "d", 9),
        ];
        let held = |v: &str, r: i64| AtRevision::Held(Some((v.to_string(), r)));
        let at: HashMap<(String, i64), AtRevision> = [
            (("k".to_string(), 5), held("a", 5)),
            // Revision 6 was reused by another write after a loss.
            (("k".to_string(), 6), held("a", 5)),
            (("j".to_string(), 7), AtRevision::Held(None)),
            (("j".to_string(), 9), AtRevision::Future),
        ]
        .into_iter()
        .collect();
        let lost = lost_at_revision(&ops, &at, &[]);
        let got: Vec<(&str, &str, Option<i64>)> = lost
            .iter()
            .map(|l| (l.key.as_str(), l.value.as_str(), l.revision))
            .collect();
        assert_eq!(
            got,
            [
                ("k", "b", Some(6)),
                ("j", "c", Some(7)),
                ("j", "d", Some(9))
            ]
        );
        assert_eq!(lost[0].final_value.as_deref(), Some("a (mod_revision 5)"));
        // Already reported by the final reads: not repeated.
        let again = lost_at_revision(&ops, &at, &lost[..1]);
        assert_eq!(again.len(), 2);
        // Pairs never answered are not judged.
        assert!(lost_at_revision(&ops, &HashMap::new(), &[]).is_empty());
    }

    #[test]
    fn a_run_whose_fault_was_not_injected_does_not_pass() {
        let ops = [write("k", "a", 5)];
        let window = |note: Option<&str>| FaultWindow {
            kind: crate::faults::FaultKind::KillAll,
            targets: vec![],
            start_ms: 1,
            end_ms: 1,
            leader_before: None,
            leader_during: None,
            new_leader_elected: false,
            note: note.map(str::to_string),
        };
        let judged = |windows: Vec<FaultWindow>| {
            let mut s = analyze(&Inputs {
                scenario: "kill-all".into(),
                members: vec!["m1".into()],
                ops: &ops,
                workload_start_us: 0,
                workload_end_us: 2_000,
                windows,
                finals: None,
                keys: vec![],
                at_revision: HashMap::new(),
            });
            s.linearizable = Verdict::Pass;
            s.watch = Verdict::Pass;
            s.leases = Verdict::Pass;
            s.lost_writes_verdict = Verdict::Pass;
            (s.judge(), s.verdict_line())
        };
        let (passed, line) = judged(vec![window(None)]);
        assert!(passed, "{line}");
        assert!(!line.contains("faults_not_injected_cleanly"), "{line}");
        let (passed, line) = judged(vec![
            window(None),
            window(Some("skipped: no leader within 15000 ms")),
        ]);
        assert!(!passed, "{line}");
        assert!(line.ends_with(" faults_not_injected_cleanly=1"), "{line}");
    }
}
