//! `phalanx demo`: a local 3-member cluster in one command. Each member is a
//! real `phalanx node` child process (so you can `kill -9` one and watch the
//! cluster carry on) running a store-backed gateway (`--gateway-listen`);
//! three sample HTTP backends run as `phalanx sample-backend` child
//! processes, and the gateway configuration pointing at them is written into
//! the store. The demo prints the endpoints, a `curl` line per gateway and
//! the commands to try; it reports a child that exits (with the end of its
//! log), stops every child on SIGINT / SIGTERM / SIGHUP, and its children
//! die with it even when it is SIGKILLed. Logs are kept unless
//! `--remove-logs-on-exit`.
//!
//! This is wiring only: the cluster and the backends are started by the
//! drill's launchers (`drill::cluster::LocalCluster`,
//! `drill::backends::SampleBackends`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use drill::backends::SampleBackends;
use drill::cluster::{ClusterOptions, LocalCluster};
use tokio::signal::unix::{signal, Signal, SignalKind};

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Number of members.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Where the members keep their data (default: a fresh temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How long to wait for the cluster to become ready, in seconds.
    #[arg(long, default_value_t = 30)]
    pub ready_timeout_secs: u64,
    /// Number of sample HTTP backends behind the gateways (0 = no gateways).
    #[arg(long, default_value_t = 3)]
    pub backends: usize,
    /// Delete the data and logs on exit (by default they are kept for reading; a --data-dir
    /// you named is never deleted, only what the demo wrote into it).
    #[arg(long)]
    pub remove_logs_on_exit: bool,
}

/// `phalanx sample-backend` (hidden): a tiny HTTP server answering with its name.
#[derive(Args, Debug, Clone)]
pub struct SampleBackendArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// Name returned in every answer (body and `x-backend` header).
    #[arg(long, default_value = "backend")]
    pub name: String,
    /// Also serve runtime control on this address: `GET /control`, and `PUT /control`
    /// with `{"slow_ms": N}` (every answer, health checks included, waits N ms) or `{"status": N}`.
    #[arg(long)]
    pub control_listen: Option<std::net::SocketAddr>,
}

/// Run a sample backend until SIGTERM / Ctrl-C.
pub fn run_sample_backend(args: SampleBackendArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let b = gateway::sample_backend::spawn(args.listen, &args.name)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        eprintln!(
            "sample backend {} listening on http://{}",
            args.name,
            b.local_addr()
        );
        let _control = match args.control_listen {
            Some(a) => {
                let (addr, task) = gateway::sample_backend::serve_control(a, b.control())
                    .await
                    .with_context(|| format!("binding the control listener {a}"))?;
                eprintln!(
                    "sample backend {} control on http://{addr}/control",
                    args.name
                );
                Some(task)
            }
            None => None,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        b.stop().await;
        anyhow::Ok(())
    })
}

const GATEWAY_KEY: &str = "/phalanx/gateway/config";

fn gateway_toml(backends: &[u16]) -> String {
    let eps: Vec<String> = backends
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    format!(
        "# Gateway configuration shared by every member (phalanx node --gateway-listen).\n\
         # The `default` listener is each member's own --gateway-listen address.\n\
         [[pools]]\n\
         name = \"demo\"\n\
         algorithm = \"round-robin\"\n\
         endpoints = [{}]\n\
         health_check = {{ path = \"/healthz\", interval_ms = 1000, timeout_ms = 500, rise = 1, fall = 1 }}\n\
         \n\
         [[routes]]\n\
         path_prefix = \"/\"\n\
         pool = \"demo\"\n",
        eps.join(", ")
    )
}

/// How long stopping children may take before they are SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How often the demo looks for children that exited.
const REAP_INTERVAL: Duration = Duration::from_millis(200);

/// Bound on one HTTP request of the demo to a gateway.
const HTTP_TIMEOUT: Duration = Duration::from_millis(2_500);

/// SIGINT, SIGTERM and SIGHUP (a closed terminal): each stops the demo cleanly.
struct StopSignals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        let on =
            |kind: SignalKind, name: &str| signal(kind).with_context(|| format!("handling {name}"));
        Ok(StopSignals {
            int: on(SignalKind::interrupt(), "SIGINT")?,
            term: on(SignalKind::terminate(), "SIGTERM")?,
            hup: on(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The name of the first of them to arrive.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// The demo's children, once started.
struct Children {
    cluster: LocalCluster,
    backends: Option<SampleBackends>,
}

impl Children {
    /// Print every child that exited since the last call.
    fn report_exits(&mut self) {
        for e in self.cluster.reap_exited() {
            println!("member {e}");
        }
        for e in self.backends.iter_mut().flat_map(|b| b.reap_exited()) {
            println!("sample backend {e}");
        }
    }

    fn stop(mut self) {
        self.cluster.stop(STOP_GRACE);
        if let Some(b) = &mut self.backends {
            b.stop(STOP_GRACE);
        }
    }
}

/// Start the backends, the members, and the gateway configuration.
async fn start(args: &DemoArgs, base: &Path, exe: &Path) -> anyhow::Result<Children> {
    let gateways = args.backends > 0;
    let backends = if gateways {
        Some(SampleBackends::start(args.backends, exe, base).await?)
    } else {
        None
    };
    let mut o = ClusterOptions::new(args.members, exe, base);
    o.data_dir = Some(base.to_path_buf());
    o.gateways = gateways;
    o.gateway_admin = true;
    o.token_prefix = "phalanx-demo".into();
    o.start_timeout = Duration::from_secs(args.ready_timeout_secs);
    let cluster = LocalCluster::launch(o).await?;
    if let Some(b) = &backends {
        let deadline = Instant::now() + Duration::from_secs(args.ready_timeout_secs);
        let doc = gateway_toml(&b.ports());
        let path = base.join("gateway.toml");
        std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
        let endpoints = cluster.client_urls();
        loop {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                gateway_store::write_document(&endpoints, GATEWAY_KEY, &doc),
            )
            .await;
            match r {
                Ok(Ok(_)) => break,
                _ if Instant::now() > deadline => {
                    bail!("could not write the gateway configuration into the store: {r:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        for m in &cluster.members {
            let Some(addr) = m.gateway_addr() else {
                continue;
            };
            let addr = addr.to_string();
            loop {
                let r = drill::admin::exchange(&addr, "GET", "/", None, HTTP_TIMEOUT).await;
                if matches!(&r, Ok((200, body)) if body.starts_with("backend-")) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "the gateway of {} ({addr}) did not route to the backends within {} s; see {}",
                        m.name,
                        args.ready_timeout_secs,
                        m.log.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(Children { cluster, backends })
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.members == 0 || args.members > 9 {
        bail!("--members must be between 1 and 9");
    }
    let (base, created) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("phalanx-demo-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let exe = std::env::current_exe().context("locating the phalanx binary")?;
    // A current-thread runtime: every child is spawned from this (the main)
    // thread, which lives as long as the demo, so the children's
    // parent-death signal fires when the demo dies, not before.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Signals are caught from the start, so an early Ctrl-C still stops the
    // children (dropping the start-up future drops what it started).
    let mut signals = rt.block_on(async { StopSignals::install() })?;
    let started = rt.block_on(async {
        tokio::select! {
            r = start(&args, &base, &exe) => r.map(Some),
            s = signals.recv() => {
                println!("{s} while starting: stopped the members and backends");
                Ok(None)
            }
        }
    });
    let outcome = match started {
        Ok(Some(mut children)) => {
            print_usage(&children, &base);
            let s = rt.block_on(async {
                loop {
                    tokio::select! {
                        s = signals.recv() => break s,
                        _ = tokio::time::sleep(REAP_INTERVAL) => children.report_exits(),
                    }
                }
            });
            println!("{s}: stopping members and backends");
            children.stop();
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    finish(&args, &base, created);
    outcome
}

/// Keep the logs (and say where), or remove what the demo wrote.
fn finish(args: &DemoArgs, base: &Path, created: bool) {
    if !args.remove_logs_on_exit {
        println!("Data and logs kept in {}", base.display());
        return;
    }
    if created {
        let _ = std::fs::remove_dir_all(base);
        return;
    }
    // A directory the user named: only what the demo wrote into it.
    for i in 1..=args.members {
        let _ = std::fs::remove_dir_all(base.join(format!("n{i}")));
        let _ = std::fs::remove_file(base.join(format!("n{i}.log")));
    }
    for i in 1..=args.backends {
        let _ = std::fs::remove_file(base.join(format!("backend-{i}.log")));
    }
    let _ = std::fs::remove_file(base.join("gateway.toml"));
}

fn print_usage(children: &Children, base: &Path) {
    let cluster = &children.cluster;
    let endpoints = cluster.client_urls().join(",");
    println!(
        "Phalanx demo: {} members are up (pid of the demo: {}).",
        cluster.members.len(),
        std::process::id()
    );
    for m in &cluster.members {
        println!(
            "  {}  pid {:<7} client {}  peer {}  metrics {}/metrics",
            m.name,
            m.pid().unwrap_or(0),
            m.client_url(),
            m.peer_url(),
            m.admin_url()
        );
    }
    println!("ENDPOINTS={endpoints}");
    if let Some(b) = &children.backends {
        println!();
        println!("Sample backends:");
        for (i, s) in b.backends.iter().enumerate() {
            println!(
                "  {}  pid {:<7} {}",
                s.name,
                b.pid_of(i).unwrap_or(0),
                s.url()
            );
        }
        println!(
            "Gateways (one per member; configuration at store key {GATEWAY_KEY}, also in {}):",
            base.join("gateway.toml").display()
        );
        for m in &cluster.members {
            if let (Some(g), Some(a)) = (m.gateway_port, m.gateway_admin_port) {
                println!(
                    "  curl http://127.0.0.1:{g}/      # gateway of {}, admin http://127.0.0.1:{a}/pools",
                    m.name
                );
            }
        }
    }
    println!();
    println!("Try:");
    println!("  ETCDCTL_API=3 etcdctl --endpoints={endpoints} put greeting hello");
    println!("  ETCDCTL_API=3 etcdctl --endpoints={endpoints} get greeting");
    println!("  ETCDCTL_API=3 etcdctl --endpoints={endpoints} endpoint status -w table");
    println!("  kill -9 <pid of the leader>   # the others elect a new leader within a second");
    if let (Some(b), Some(g)) = (&children.backends, cluster.members[0].gateway_port) {
        println!("  for i in $(seq 6); do curl -s http://127.0.0.1:{g}/; done   # round robin over the backends");
        println!(
            "  kill {}   # stop backend-1; repeat the curl loop: traffic moves to the others",
            b.pid_of(0).unwrap_or(0)
        );
        println!(
            "  ETCDCTL_API=3 etcdctl --endpoints={endpoints} put {GATEWAY_KEY} \"$(cat {})\"   # edit and apply live on every gateway",
            base.join("gateway.toml").display()
        );
        println!("  ETCDCTL_API=3 etcdctl --endpoints={endpoints} get --prefix {GATEWAY_KEY}/status/   # per-member outcome (applied / rejected + reason)");
    }
    println!(
        "Data and logs: {} (kept when the demo exits; --remove-logs-on-exit deletes them)",
        base.display()
    );
    println!("A child that exits is reported here, with the end of its log.");
    println!("Press Ctrl-C to stop.");
    let _ = std::io::stdout().flush();
}
