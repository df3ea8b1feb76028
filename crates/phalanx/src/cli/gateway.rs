//! `phalanx gateway`: the command line of the `gateway` library and its
//! [`run`] entry point (signals: SIGHUP reloads, SIGTERM/SIGINT drain).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use gateway::config::{Algorithm, Config};
use gateway::Gateway;

/// `phalanx gateway` flags.
///
/// Quick start: `--listen 127.0.0.1:8080 --upstream http://127.0.0.1:9001
/// --upstream http://127.0.0.1:9002 [--algorithm least-conn]`.
/// Full configuration: `--config gateway.toml` (see docs/gateway.md); SIGHUP
/// reloads the file. `--admin-listen` and `--access-log` apply in both modes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GatewayArgs {
    /// Address of the HTTP listener (quick start).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Upstream endpoint, `http://ip:port` or `ip:port` (repeatable; quick start).
    #[arg(long = "upstream")]
    pub upstreams: Vec<String>,
    /// Balancing algorithm (quick start): round-robin, weighted-round-robin,
    /// least-conn, least-request, consistent-hash, random.
    #[arg(long)]
    pub algorithm: Option<String>,
    /// Tokio worker threads (default: number of cores).
    #[arg(long)]
    pub worker_threads: Option<usize>,
    /// TOML configuration file (exclusive with --listen/--upstream).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Admin endpoint address (/metrics, /pools, /config, /healthz).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Write a JSON access log line per request to stdout.
    #[arg(long)]
    pub access_log: bool,
    /// The zone this gateway runs in (overrides the file's `zone`): pools
    /// prefer endpoints with the same `zone` (zone-aware routing, docs/gateway.md).
    #[arg(long)]
    pub zone: Option<String>,
}

impl GatewayArgs {
    /// Build the configuration these flags describe.
    pub fn to_config(&self) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => {
                if self.listen.is_some() || !self.upstreams.is_empty() || self.algorithm.is_some() {
                    anyhow::bail!(
                        "--config cannot be combined with --listen/--upstream/--algorithm"
                    );
                }
                Config::from_file(path)?
            }
            None => {
                let listen = self.listen.context("--listen (or --config) is required")?;
                if self.upstreams.is_empty() {
                    anyhow::bail!("at least one --upstream is required");
                }
                let algo = match &self.algorithm {
                    Some(a) => {
                        Algorithm::parse(a).with_context(|| format!("unknown --algorithm `{a}`"))?
                    }
                    None => Algorithm::RoundRobin,
                };
                Config::quick_start(listen, &self.upstreams, algo)
            }
        };
        if self.admin_listen.is_some() {
            cfg.admin_listen = self.admin_listen;
        }
        if self.access_log {
            cfg.access_log = true;
        }
        if let Some(z) = &self.zone {
            cfg.zone = Some(z.clone());
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Run a gateway until SIGTERM/SIGINT, then drain gracefully.
pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let cfg = args.to_config()?;
    let gw = Gateway::start(cfg).await?;
    for (name, addr) in gw.local_addrs() {
        tracing::info!(listener = %name, %addr, "gateway listening");
        eprintln!("phalanx gateway: listener `{name}` on {addr}");
    }
    if let Some(a) = gw.admin_addr() {
        eprintln!("phalanx gateway: admin on http://{a}/metrics");
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Some(path) = &args.config {
                    match args.to_config() {
                        Ok(c) => match gw.apply_config(c) {
                            Ok(()) => eprintln!("phalanx gateway: reloaded {}", path.display()),
                            Err(e) => eprintln!("phalanx gateway: reload rejected, configuration in force kept: {e}"),
                        },
                        Err(e) => eprintln!("phalanx gateway: reload rejected, configuration in force kept: {e:#}"),
                    }
                }
            }
        }
    }
    eprintln!("phalanx gateway: draining");
    gw.shutdown().await;
    Ok(())
}
