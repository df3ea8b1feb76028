//! [`SampleBackends`]: the HTTP backends behind the members' gateways in a
//! `--local` drill with backend faults — K child `phalanx sample-backend`
//! processes on free loopback ports, each with a control listener — and the
//! gateway configuration the drill writes into the store for them
//! ([`gateway_document`]).
//!
//! Backend faults ([`BackendFault`]):
//!
//! * `backend-kill` — SIGKILL the process; restarted (same port) at the end.
//! * `backend-hang` — SIGSTOP: the kernel still completes TCP handshakes
//!   into the listen backlog and buffers requests, but nothing is answered;
//!   SIGCONT at the end.
//! * `backend-slow` — `PUT /control {"slow_ms": --backend-delay-ms}`: every
//!   answer, health checks included, waits that long; back to 0 at the end.
//! * `backend-partition` — an iptables rule in the host's network namespace,
//!   `INPUT -i lo -p tcp --dport <port> -j DROP` (tagged with a comment naming
//!   the drill's pid): SYNs and data to the backend vanish, so new
//!   connections time out and open ones stall, as behind a real partition.
//!   Needs root and iptables. Deleted at the end, and on drop.
//!
//! Dropping [`SampleBackends`] resumes, kills and reaps every process and
//! deletes any iptables rule still in place.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway::config::{
    Algorithm, Config, EndpointConfig, HealthCheckConfig, OutlierConfig, PoolConfig, RetryConfig,
    RouteConfig,
};

use crate::cluster::{self, free_port};
use crate::{admin, DrillError};

/// How long a (re)started sample backend may take to answer `/healthz`, in ms.
pub const BACKEND_START_TIMEOUT_MS: u64 = 10_000;

/// Name of the pool the drill's gateway configuration defines.
pub const POOL: &str = "drill";

/// Gateway configuration profile the drill writes into the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayProfile {
    /// Up to 2 retries on another backend (connect failure, reset, 250 ms per-try timeout, 502/503/504),
    /// health checks every 200 ms, outlier ejection: one failing backend should cost no client request.
    Resilient,
    /// No retry, no per-try timeout, no health check, no ejection: every failure of a backend reaches
    /// the client (shows the gateway verdict can fail).
    Bare,
}

impl GatewayProfile {
    pub fn name(self) -> &'static str {
        match self {
            GatewayProfile::Resilient => "resilient",
            GatewayProfile::Bare => "bare",
        }
    }
}

/// Per-try timeout of the resilient profile, in ms.
pub const RESILIENT_PER_TRY_TIMEOUT_MS: u64 = 250;
/// Retries after the first try, resilient profile.
pub const RESILIENT_MAX_RETRIES: u32 = 2;
/// Connect timeout towards a backend, in ms (loopback: a dropped SYN must fail fast).
pub const CONNECT_TIMEOUT_MS: u64 = 100;
/// Health check interval and timeout of the resilient profile, in ms.
pub const RESILIENT_HEALTH_INTERVAL_MS: u64 = 200;
pub const RESILIENT_HEALTH_TIMEOUT_MS: u64 = 200;
/// First outlier ejection of the resilient profile, in ms.
pub const RESILIENT_EJECTION_MS: u64 = 1_000;
/// Overall deadline of one request inside the gateway (all tries), in ms,
/// both profiles: below the default `--http-timeout-ms` (the gateway answers
/// 504 before the client gives up) and below the default
/// `--backend-delay-ms` (a slowed backend is a failure, not just latency).
pub const ROUTE_TIMEOUT_MS: u64 = 800;

/// The gateway configuration (TOML, the schema of `gateway::config::Config`)
/// for backends on `127.0.0.1:<ports>`: one round-robin pool [`POOL`] and a
/// catch-all route. Resilient: up to [`RESILIENT_MAX_RETRIES`] retries on
/// connect failure, reset, timeout ([`RESILIENT_PER_TRY_TIMEOUT_MS`]) or
/// 502/503/504, on another backend; health checks of `/healthz` every
/// [`RESILIENT_HEALTH_INTERVAL_MS`] (one failure marks a backend down, one
/// success up); outlier ejection after one connect failure or timeout.
/// Bare: no retry, no per-try timeout, no health check, no ejection. Both:
/// [`ROUTE_TIMEOUT_MS`] per request, [`CONNECT_TIMEOUT_MS`] per connect.
pub fn gateway_document(ports: &[u16], profile: GatewayProfile) -> String {
    let endpoints = ports
        .iter()
        .map(|p| EndpointConfig::Address(format!("127.0.0.1:{p}")))
        .collect();
    let resilient = profile == GatewayProfile::Resilient;
    let pool = PoolConfig {
        name: POOL.into(),
        endpoints,
        algorithm: Algorithm::RoundRobin,
        connect_timeout_ms: CONNECT_TIMEOUT_MS,
        health_check: resilient.then(|| HealthCheckConfig {
            interval_ms: RESILIENT_HEALTH_INTERVAL_MS,
            timeout_ms: RESILIENT_HEALTH_TIMEOUT_MS,
            rise: 1,
            fall: 1,
            jitter_percent: 0,
            ..Default::default()
        }),
        outlier_detection: if resilient {
            OutlierConfig {
                enabled: true,
                consecutive_5xx: 3,
                consecutive_connect_failures: 1,
                consecutive_timeouts: 1,
                base_ejection_ms: RESILIENT_EJECTION_MS,
                max_ejection_ms: 5 * RESILIENT_EJECTION_MS,
                max_ejection_percent: 50,
            }
        } else {
            OutlierConfig {
                enabled: false,
                ..Default::default()
            }
        },
        ..Default::default()
    };
    let retry = if resilient {
        RetryConfig {
            max_retries: RESILIENT_MAX_RETRIES,
            per_try_timeout_ms: RESILIENT_PER_TRY_TIMEOUT_MS,
            retry_on_status: vec![502, 503, 504],
            retry_on_reset: true,
            retry_on_timeout: true,
            backoff_base_ms: 5,
            backoff_max_ms: 50,
            ..Default::default()
        }
    } else {
        RetryConfig {
            max_retries: 0,
            per_try_timeout_ms: 0,
            retry_on_status: vec![],
            retry_on_reset: false,
            retry_on_timeout: false,
            ..Default::default()
        }
    };
    let cfg = Config {
        pools: vec![pool],
        routes: vec![RouteConfig {
            path_prefix: "/".into(),
            pool: POOL.into(),
            timeout_ms: ROUTE_TIMEOUT_MS,
            retry,
            ..Default::default()
        }],
        ..Default::default()
    };
    format!(
        "# Written by phalanx drill (gateway profile {}). The `default` listener is each member's --gateway-listen.\n{}",
        profile.name(),
        cfg.to_toml_string()
    )
}

/// A backend fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendFault {
    Kill,
    Hang,
    Slow,
    Partition,
}

/// What must be undone at the end of a backend fault window.
#[derive(Debug)]
pub enum Undo {
    Restart(usize),
    Resume(usize),
    Unslow(usize),
    Unpartition(usize),
}

/// One sample backend process.
#[derive(Debug)]
pub struct SampleBackend {
    pub name: String,
    pub port: u16,
    pub control_port: u16,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub paused: bool,
    pub partitioned: bool,
}

impl SampleBackend {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn control_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.control_port)
    }
}

/// The drill's sample backends.
#[derive(Debug)]
pub struct SampleBackends {
    exe: PathBuf,
    pub backends: Vec<SampleBackend>,
}

/// Whether iptables can be used in this network namespace (root, binary present).
pub fn iptables_usable() -> Result<(), String> {
    match Command::new("iptables")
        .args(["-w", "-S", "INPUT"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`iptables -S INPUT` failed: {} (run as root)",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run iptables: {e}")),
    }
}

impl SampleBackends {
    /// Start `k` backends (logs in `log_dir`) and wait until each answers `/healthz`.
    pub async fn start(k: usize, exe: &Path, log_dir: &Path) -> Result<SampleBackends, DrillError> {
        cluster::create_dir(log_dir)?;
        let mut b = SampleBackends {
            exe: exe.to_path_buf(),
            backends: Vec::new(),
        };
        for i in 1..=k {
            let name = format!("backend-{i}");
            b.backends.push(SampleBackend {
                log: log_dir.join(format!("{name}.log")),
                name,
                port: free_port()?,
                control_port: free_port()?,
                child: None,
                paused: false,
                partitioned: false,
            });
        }
        for i in 0..k {
            b.spawn(i)?;
        }
        for i in 0..k {
            b.wait_ready(i).await?;
        }
        Ok(b)
    }

    pub fn ports(&self) -> Vec<u16> {
        self.backends.iter().map(|b| b.port).collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.backends.iter().map(|b| b.name.clone()).collect()
    }

    fn spawn(&mut self, i: usize) -> Result<(), DrillError> {
        let b = &mut self.backends[i];
        if b.child.is_some() {
            return Ok(());
        }
        let (log, log2) = cluster::open_child_log(&b.log)?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("sample-backend")
            .args(["--listen", &format!("127.0.0.1:{}", b.port)])
            .args(["--control-listen", &format!("127.0.0.1:{}", b.control_port)])
            .args(["--name", &b.name])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cluster::exit_with_parent(&mut cmd).spawn().map_err(|e| {
            DrillError::Cluster(format!(
                "starting {} sample-backend: {e}",
                self.exe.display()
            ))
        })?;
        b.child = Some(child);
        b.paused = false;
        Ok(())
    }

    /// Wait until backend `i` answers `/healthz` with 200 and its control listener is up.
    pub async fn wait_ready(&mut self, i: usize) -> Result<(), DrillError> {
        let deadline = Instant::now() + Duration::from_millis(BACKEND_START_TIMEOUT_MS);
        let (url, control) = (self.backends[i].url(), self.backends[i].control_url());
        loop {
            if matches!(
                admin::request(&url, "GET", "/healthz", None).await,
                Ok((200, _))
            ) && matches!(
                admin::request(&control, "GET", "/control", None).await,
                Ok((200, _))
            ) {
                return Ok(());
            }
            let b = &mut self.backends[i];
            if let Some(e) = cluster::reap(&mut b.child, &b.name, &b.log) {
                return Err(DrillError::Cluster(format!("while starting, {e}")));
            }
            if Instant::now() > deadline {
                return Err(DrillError::Cluster(format!(
                    "{} not ready after {BACKEND_START_TIMEOUT_MS} ms; see {}",
                    b.name,
                    b.log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(cluster::POLL_INTERVAL_MS)).await;
        }
    }

    pub fn pid_of(&self, i: usize) -> Option<u32> {
        self.backends[i].child.as_ref().map(|c| c.id())
    }

    /// Backends that exited on their own since the last call (one stopped
    /// by a `backend-kill` fault is not reported).
    pub fn reap_exited(&mut self) -> Vec<cluster::Exited> {
        self.backends
            .iter_mut()
            .filter_map(|b| cluster::reap(&mut b.child, &b.name, &b.log))
            .collect()
    }

    /// Stop every backend cleanly: SIGTERM, SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let children = self
            .backends
            .iter_mut()
            .filter_map(|b| {
                b.paused = false;
                b.child.take()
            })
            .collect();
        cluster::stop_gracefully(children, grace);
    }

    fn kill(&mut self, i: usize) {
        let b = &mut self.backends[i];
        if let Some(mut c) = b.child.take() {
            if b.paused {
                let _ = cluster::signal(c.id(), "CONT");
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        b.paused = false;
    }

    fn pid(&self, i: usize) -> Result<u32, DrillError> {
        let b = &self.backends[i];
        b.child
            .as_ref()
            .map(|c| c.id())
            .ok_or_else(|| DrillError::Fault(format!("{} is not running", b.name)))
    }

    async fn set_slow(&self, i: usize, ms: u64) -> Result<(), DrillError> {
        let body = serde_json::json!({ "slow_ms": ms }).to_string();
        let url = self.backends[i].control_url();
        let (status, reply) = admin::request(&url, "PUT", "/control", Some(&body)).await?;
        if status != 200 {
            return Err(DrillError::Fault(format!(
                "{}: PUT /control: HTTP {status}: {}",
                self.backends[i].name,
                reply.trim()
            )));
        }
        Ok(())
    }

    fn partition_rule(&self, i: usize, op: &str) -> Vec<String> {
        let tag = format!(
            "phalanx-drill-{}-{}",
            std::process::id(),
            self.backends[i].name
        );
        [
            "-w",
            op,
            "INPUT",
            "-i",
            "lo",
            "-p",
            "tcp",
            "--dport",
            &self.backends[i].port.to_string(),
            "-m",
            "comment",
            "--comment",
            &tag,
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn iptables(args: &[String]) -> Result<(), DrillError> {
        let out = Command::new("iptables")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| DrillError::Fault(format!("running iptables: {e}")))?;
        if !out.status.success() {
            return Err(DrillError::Fault(format!(
                "iptables {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Inject `fault` into backend `i`; `slow_ms` is the delay of `Slow`.
    pub async fn inject(
        &mut self,
        fault: BackendFault,
        i: usize,
        slow_ms: u64,
    ) -> Result<Undo, DrillError> {
        match fault {
            BackendFault::Kill => {
                self.pid(i)?;
                self.kill(i);
                Ok(Undo::Restart(i))
            }
            BackendFault::Hang => {
                cluster::signal(self.pid(i)?, "STOP")?;
                self.backends[i].paused = true;
                Ok(Undo::Resume(i))
            }
            BackendFault::Slow => {
                self.set_slow(i, slow_ms).await?;
                Ok(Undo::Unslow(i))
            }
            BackendFault::Partition => {
                // Inserted first, ahead of any ACCEPT rule for loopback.
                let mut rule = self.partition_rule(i, "-I");
                rule.insert(3, "1".into());
                Self::iptables(&rule)?;
                self.backends[i].partitioned = true;
                Ok(Undo::Unpartition(i))
            }
        }
    }

    /// Undo a fault; a restarted backend is waited for.
    pub async fn heal(&mut self, undo: Undo) -> Result<(), DrillError> {
        match undo {
            Undo::Restart(i) => {
                self.spawn(i)?;
                self.wait_ready(i).await
            }
            Undo::Resume(i) => {
                cluster::signal(self.pid(i)?, "CONT")?;
                self.backends[i].paused = false;
                Ok(())
            }
            Undo::Unslow(i) => self.set_slow(i, 0).await,
            Undo::Unpartition(i) => {
                Self::iptables(&self.partition_rule(i, "-D"))?;
                self.backends[i].partitioned = false;
                Ok(())
            }
        }
    }

    /// Best-effort: undo every backend fault that may be in force.
    pub async fn heal_everything(&mut self) {
        for i in 0..self.backends.len() {
            self.unpartition(i);
            if self.backends[i].paused {
                if let Some(c) = &self.backends[i].child {
                    let _ = cluster::signal(c.id(), "CONT");
                }
                self.backends[i].paused = false;
            }
            if self.backends[i].child.is_none() {
                let _ = self.spawn(i);
                let _ = self.wait_ready(i).await;
            }
            let _ = self.set_slow(i, 0).await;
        }
    }

    fn unpartition(&mut self, i: usize) {
        if self.backends[i].partitioned {
            // Delete every copy of the rule (normally exactly one).
            while Self::iptables(&self.partition_rule(i, "-D")).is_ok() {}
            self.backends[i].partitioned = false;
        }
    }
}

impl Drop for SampleBackends {
    fn drop(&mut self) {
        for i in 0..self.backends.len() {
            self.unpartition(i);
            self.kill(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_profiles_are_valid_store_documents() {
        for p in [GatewayProfile::Resilient, GatewayProfile::Bare] {
            let doc = gateway_document(&[12001, 12002, 12003], p);
            let opts = gateway_store::StoreBackedOptions {
                node_name: "n1".into(),
                listen: ([127, 0, 0, 1], 0).into(),
                admin_listen: None,
                zone: None,
            };
            let cfg = gateway_store::parse_document(&doc, &opts)
                .unwrap_or_else(|e| panic!("{}: {e}\n{doc}", p.name()));
            assert_eq!(cfg.pools[0].endpoints.len(), 3);
            assert_eq!(
                cfg.pools[0].health_check.is_some(),
                p == GatewayProfile::Resilient
            );
            assert_eq!(
                cfg.routes[0].retry.max_retries,
                if p == GatewayProfile::Resilient {
                    RESILIENT_MAX_RETRIES
                } else {
                    0
                }
            );
            assert_eq!(
                cfg.pools[0].outlier_detection.enabled,
                p == GatewayProfile::Resilient
            );
        }
    }
}
