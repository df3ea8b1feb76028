//! `phalanx demo`: a local 3-member cluster in one command. Each member is a
//! real `phalanx node` child process (so you can `kill -9` one and watch the
//! cluster carry on) running a store-backed gateway (`--gateway-listen`);
//! three sample HTTP backends run as `phalanx sample-backend` child
//! processes, and the gateway configuration pointing at them is written into
//! the store. The demo prints the endpoints, a `curl` line per gateway and
//! the commands to try, and stops every child on Ctrl-C / SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

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

fn http_get_body(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(2500))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        status,
        buf.split("\r\n\r\n")
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_string(),
    ))
}

/// The last `lines` lines of a child's log, for an error message.
fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Outside the ephemeral range, so a member's outgoing connection cannot
/// take a port before the member that owns it binds it.
fn free_port() -> anyhow::Result<u16> {
    drill::ports::free_local_port().context("choosing a port for the demo")
}

fn http_get_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(2500))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

struct Members(Vec<Child>);
impl Drop for Members {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGTERM first so members shut down cleanly; then make sure.
            unsafe_kill(c.id() as i32, 15);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn unsafe_kill(pid: i32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.members == 0 || args.members > 9 {
        bail!("--members must be between 1 and 9");
    }
    let base = match &args.data_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("phalanx-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let exe = std::env::current_exe().context("locating the phalanx binary")?;
    // Signals are caught from the start, so an early Ctrl-C still stops the children.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut term = rt.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    })?;
    let mut int = rt.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    })?;
    let gateways = args.backends > 0;

    struct Plan {
        name: String,
        client: u16,
        peer: u16,
        metrics: u16,
        gateway: u16,
        gateway_admin: u16,
    }
    let mut plans = Vec::new();
    for i in 1..=args.members {
        plans.push(Plan {
            name: format!("n{i}"),
            client: free_port()?,
            peer: free_port()?,
            metrics: free_port()?,
            gateway: free_port()?,
            gateway_admin: free_port()?,
        });
    }
    let initial_cluster: Vec<String> = plans
        .iter()
        .map(|p| format!("{}=http://127.0.0.1:{}", p.name, p.peer))
        .collect();
    let initial_cluster = initial_cluster.join(",");

    let mut members = Members(Vec::new());
    // Sample backends: real processes, so one can be killed by pid.
    let mut backends = Members(Vec::new());
    let mut backend_ports = Vec::new();
    for i in 1..=args.backends {
        let port = free_port()?;
        let name = format!("backend-{i}");
        let log = std::fs::File::create(base.join(format!("{name}.log")))?;
        let child = Command::new(&exe)
            .arg("sample-backend")
            .args(["--listen", &format!("127.0.0.1:{port}"), "--name", &name])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        backends.0.push(child);
        backend_ports.push(port);
    }
    for p in &plans {
        let log = std::fs::File::create(base.join(format!("{}.log", p.name)))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("node");
        if gateways {
            cmd.args(["--gateway-listen", &format!("127.0.0.1:{}", p.gateway)])
                .args([
                    "--gateway-admin-listen",
                    &format!("127.0.0.1:{}", p.gateway_admin),
                ]);
        }
        let child = cmd
            .args(["--name", &p.name])
            .arg("--data-dir")
            .arg(base.join(&p.name))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", p.client),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", p.client),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", p.peer),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", p.peer),
            ])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", p.metrics),
            ])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "phalanx-demo"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting member {}", p.name))?;
        members.0.push(child);
    }

    let deadline = Instant::now() + Duration::from_secs(args.ready_timeout_secs);
    for p in &plans {
        let addr = format!("127.0.0.1:{}", p.metrics);
        while http_get_status(&addr, "/health") != Some(200) {
            if Instant::now() > deadline {
                bail!(
                    "member {} did not become healthy within {} s; see {}",
                    p.name,
                    args.ready_timeout_secs,
                    base.join(format!("{}.log", p.name)).display()
                );
            }
            for (q, c) in plans.iter().zip(&mut members.0) {
                if let Ok(Some(status)) = c.try_wait() {
                    let log = base.join(format!("{}.log", q.name));
                    bail!(
                        "member {} exited early ({status}); the end of {}:\n{}",
                        q.name,
                        log.display(),
                        log_tail(&log, 15)
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let endpoint_list: Vec<String> = plans
        .iter()
        .map(|p| format!("http://127.0.0.1:{}", p.client))
        .collect();
    let endpoints = endpoint_list.join(",");

    if gateways {
        for (i, port) in backend_ports.iter().enumerate() {
            let addr = format!("127.0.0.1:{port}");
            while http_get_status(&addr, "/healthz") != Some(200) {
                if Instant::now() > deadline {
                    bail!(
                        "backend-{} did not start within {} s; see {}",
                        i + 1,
                        args.ready_timeout_secs,
                        base.join(format!("backend-{}.log", i + 1)).display()
                    );
                }
                if let Ok(Some(status)) = backends.0[i].try_wait() {
                    let log = base.join(format!("backend-{}.log", i + 1));
                    bail!(
                        "backend-{} exited early ({status}); the end of {}:\n{}",
                        i + 1,
                        log.display(),
                        log_tail(&log, 15)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let doc = gateway_toml(&backend_ports);
        std::fs::write(base.join("gateway.toml"), &doc)?;
        loop {
            let r = rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    gateway::store_config::write_document(&endpoint_list, GATEWAY_KEY, &doc),
                )
                .await
            });
            match r {
                Ok(Ok(_)) => break,
                _ if Instant::now() > deadline => {
                    bail!("could not write the gateway configuration into the store: {r:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        for p in &plans {
            let addr = format!("127.0.0.1:{}", p.gateway);
            while !matches!(http_get_body(&addr, "/"), Some((200, b)) if b.starts_with("backend-"))
            {
                if Instant::now() > deadline {
                    bail!("the gateway of {} ({addr}) did not route to the backends within {} s; see {}", p.name, args.ready_timeout_secs, base.join(format!("{}.log", p.name)).display());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    println!("Phalanx demo: {} members are up.", plans.len());
    for (p, c) in plans.iter().zip(&members.0) {
        println!(
            "  {}  pid {:<7} client http://127.0.0.1:{}  peer http://127.0.0.1:{}  metrics http://127.0.0.1:{}/metrics",
            p.name,
            c.id(),
            p.client,
            p.peer,
            p.metrics
        );
    }
    println!("ENDPOINTS={endpoints}");
    if gateways {
        println!();
        println!("Sample backends:");
        for (i, (port, c)) in backend_ports.iter().zip(&backends.0).enumerate() {
            println!(
                "  backend-{}  pid {:<7} http://127.0.0.1:{port}",
                i + 1,
                c.id()
            );
        }
        println!(
            "Gateways (one per member; configuration at store key {GATEWAY_KEY}, also in {}):",
            base.join("gateway.toml").display()
        );
        for p in &plans {
            println!(
                "  curl http://127.0.0.1:{}/      # gateway of {}, admin http://127.0.0.1:{}/pools",
                p.gateway, p.name, p.gateway_admin
            );
        }
    }
    println!();
    println!("Try:");
    println!("  ETCDCTL_API=3 etcdctl --endpoints={endpoints} put greeting hello");
    println!("  ETCDCTL_API=3 etcdctl --endpoints={endpoints} get greeting");
    println!("  ETCDCTL_API=3 etcdctl --endpoints={endpoints} endpoint status -w table");
    println!("  kill -9 <pid of the leader>   # the others elect a new leader within a second");
    if gateways {
        let g = plans[0].gateway;
        println!("  for i in $(seq 6); do curl -s http://127.0.0.1:{g}/; done   # round robin over the backends");
        println!(
            "  kill {}   # stop backend-1; repeat the curl loop: traffic moves to the others",
            backends.0[0].id()
        );
        println!(
            "  ETCDCTL_API=3 etcdctl --endpoints={endpoints} put {GATEWAY_KEY} \"$(cat {})\"   # edit and apply live on every gateway",
            base.join("gateway.toml").display()
        );
        println!("  ETCDCTL_API=3 etcdctl --endpoints={endpoints} get --prefix {GATEWAY_KEY}/status/   # per-member outcome (applied / rejected + reason)");
    }
    println!("Data and logs: {}", base.display());
    println!("Press Ctrl-C to stop.");
    std::io::stdout().flush()?;

    rt.block_on(async {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
    });
    println!("stopping members and backends");
    drop(members);
    drop(backends);
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&base);
    }
    Ok(())
}
