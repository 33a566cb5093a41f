use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use weir_ebpf::abi::PodMode;
use weir_operator::node_flows;

/// weir's operator: cluster controller and node agent.
#[derive(Parser)]
#[command(name = "weir-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level (overridden by RUST_LOG).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// The node agent and its local tools.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// The cluster controller: CaptureProfile status, PodFlow summaries,
    /// TTL, cap and deletions; one leader at a time (a Lease).
    Controller(ControllerArgs),
    /// Install weir into the node's CNI chain (binary + conflist), keep it
    /// in step with the primary conflist, remove it on uninstall.
    InstallCni(weir_operator::install_cni::Args),
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// This replica's identity in the Lease (default: the hostname).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// The namespace of the Lease (the controller's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "weir-system")]
    lease_namespace: String,
    /// The name of the Lease.
    #[arg(long, default_value = "weir-controller")]
    lease_name: String,
    /// How long a leader's claim lasts without renewal, e.g. 15s.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_duration: std::time::Duration,
    /// How long the leader keeps leading without a successful renewal
    /// (less than --lease-duration).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    renew_deadline: std::time::Duration,
    /// How often to try to acquire or renew the Lease (less than --renew-deadline).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    retry_period: std::time::Duration,
    /// How often to delete PodFlows whose CaptureProfile is gone.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    orphan_sweep_interval: std::time::Duration,
    /// Where to serve /metrics and /healthz (OpenMetrics); empty: not served.
    #[arg(long, default_value = "0.0.0.0:9466")]
    metrics_listen: String,
    /// How long a profile's MapPressure condition stays True after its
    /// lostSamples last grew.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    map_pressure_window: std::time::Duration,
    /// The most alert Events per namespace and minute (bursts up to as
    /// many); the rest are counted in weir_alert_events_total.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=10000))]
    alert_events_per_minute: u32,
}

fn parse_listen(text: &str) -> Result<Option<std::net::SocketAddr>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|e| format!("{text:?} is not an address like 0.0.0.0:9466: {e}"))
}

/// Every duration flag reads the API's duration grammar
/// ([`weir_api::parse_duration`]: `15s`, `1m30s`, `500ms`, `1.5h`), positive.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    weir_api::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a positive duration like 15s, 1m30s or 500ms"))
}

#[derive(clap::Args)]
struct NodePaths {
    /// Where the CNI plugin keeps its node state (its `stateDir`).
    #[arg(long, env = "WEIR_STATE_DIR", default_value = "/var/lib/weir")]
    state_dir: PathBuf,
    /// Where the programs' maps are pinned (the plugin's `bpfRoot`).
    #[arg(long, env = "WEIR_BPF_ROOT", default_value = "/sys/fs/bpf/weir")]
    bpf_root: PathBuf,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Run the node agent: watch flannel's VXLAN traffic, join it with the
    /// pods' flows, serve /metrics, /flows and /healthz.
    Run {
        #[command(flatten)]
        paths: NodePaths,
        /// This node's name (Kubernetes node name).
        #[arg(long, env = "NODE_NAME")]
        node_name: Option<String>,
        /// How often to read the maps, e.g. 10s, 1m30s or 500ms.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        interval: std::time::Duration,
        /// Where to serve /metrics, /flows and /healthz.
        #[arg(long, default_value = "0.0.0.0:9465")]
        listen: std::net::SocketAddr,
        /// JSON file naming remote pod IPs ({"ip": {"namespace", "pod", "node"}}),
        /// for nodes without the API server at hand.
        #[arg(long)]
        peers_file: Option<PathBuf>,
        /// Upper bound on per-pod metric series; growth beyond it is kept in
        /// one `_overflow` series.
        #[arg(long, default_value_t = 10_000)]
        max_series: usize,
        /// Do not look for flannel VXLAN devices or attach the overlay monitor.
        #[arg(long)]
        no_vxlan: bool,
        /// Kubeconfig of the API server: CaptureProfiles select the pods that
        /// count and PodFlows are written. Without it, the in-cluster
        /// configuration is used when KUBERNETES_SERVICE_HOST is set; else the
        /// agent runs without Kubernetes (file peers, pod modes untouched).
        #[arg(long, env = "WEIR_KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// Run without the API server even in a cluster.
        #[arg(long, conflicts_with = "kubeconfig")]
        no_kube: bool,
        /// Upper bound on this node's PodFlow write requests per second.
        #[arg(long, default_value_t = 5.0, value_parser = parse_rate)]
        api_qps: f64,
        /// Who may read /flows: `kube` (with the API server: callers whose
        /// bearer token it authenticates, each seeing the namespaces where
        /// it may get pods) or `none` (anyone who reaches the port).
        #[arg(long, value_enum, default_value_t = FlowsAuth::Kube)]
        flows_auth: FlowsAuth,
        /// The agent's own DaemonSet: gone (or access to it revoked) on
        /// SIGTERM means `helm uninstall`, and the agent cleans the node.
        #[arg(long, env = "WEIR_DAEMONSET_NAME", requires = "daemonset_namespace")]
        daemonset_name: Option<String>,
        /// The DaemonSet's namespace.
        #[arg(long, env = "POD_NAMESPACE")]
        daemonset_namespace: Option<String>,
    },
    /// Print the flows counted on this node, without Kubernetes at hand.
    Dump {
        #[command(flatten)]
        paths: NodePaths,
        /// Output format; json prints the flows as the agent serves them on /flows (one schema: docs/flow.schema.json).
        #[arg(long, short, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// Only flows of this pod (`namespace/name`); repeatable.
        #[arg(long)]
        pod: Vec<String>,
        /// Only flows of this protocol (tcp, udp, icmp, icmpv6, ...); repeatable.
        #[arg(long)]
        protocol: Vec<String>,
        /// JSON file naming remote pod IPs ({"ip": {"namespace", "pod", "node"}}),
        /// as the agent's --peers-file: remote peers are named like /flows names them.
        #[arg(long)]
        peers_file: Option<PathBuf>,
    },
    /// Start (or, with --stop, stop) counting one local pod's flows: what a
    /// CaptureProfile selecting it does, without Kubernetes at hand.
    Observe {
        #[command(flatten)]
        paths: NodePaths,
        /// The pod, by any name `agent dump` shows: `namespace/name`, the bare
        /// name of a pod recorded without a namespace (podman passes only
        /// K8S_POD_NAME), or its container id.
        #[arg(value_name = "POD")]
        pod: String,
        /// Stop counting: the pod's traffic passes through uncounted (the
        /// default for a pod no profile selects).
        #[arg(long, conflicts_with = "mode")]
        stop: bool,
        /// `count` (the default) or `pass-through` (the same as --stop).
        #[arg(long, value_enum)]
        mode: Option<Mode>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FlowsAuth {
    Kube,
    None,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Count,
    PassThrough,
}

/// A positive, finite number of requests per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|e| format!("{text:?} is not a number: {e}"))?;
    weir_operator::agent::writer::TokenBucket::new(rate)
        .map(|_| rate)
        .map_err(|e| e.to_string())
}

/// The one log setup of every subcommand: to stderr, `RUST_LOG` or
/// `--log-level`, colours only when stderr is a terminal (never in
/// `kubectl logs` or a log file).
fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn run_controller(args: ControllerArgs) -> Result<()> {
    let config = weir_operator::controller::Config {
        lease: weir_operator::controller::leader::LeaseConfig {
            namespace: args.lease_namespace,
            name: args.lease_name,
            identity: args
                .identity
                .filter(|i| !i.is_empty())
                .unwrap_or_else(hostname),
            lease_duration: args.lease_duration,
            renew_deadline: args.renew_deadline,
            retry_period: args.retry_period,
        },
        orphan_sweep_interval: args.orphan_sweep_interval,
        error_requeue: std::time::Duration::from_secs(5),
        metrics_listen: parse_listen(&args.metrics_listen).map_err(anyhow::Error::msg)?,
        map_pressure_window: args.map_pressure_window,
        alert_events_per_minute: args.alert_events_per_minute,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = kube::Client::try_default().await?;
        weir_operator::controller::run::run(client, config).await?;
        anyhow::Ok(())
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_level);
    match cli.command {
        Command::Controller(args) => run_controller(args)?,
        Command::InstallCni(args) => weir_operator::install_cni::main(args)?,
        Command::Agent { command } => match command {
            AgentCommand::Run {
                paths,
                node_name,
                interval,
                listen,
                peers_file,
                max_series,
                no_vxlan,
                kubeconfig,
                no_kube,
                api_qps,
                flows_auth,
                daemonset_name,
                daemonset_namespace,
            } => {
                use weir_operator::agent::kube_agent::{KubeSettings, KubeSource};
                let source = match kubeconfig {
                    Some(path) => Some(KubeSource::Kubeconfig(path)),
                    None if !no_kube && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                        Some(KubeSource::InCluster)
                    }
                    None => None,
                };
                let config = weir_operator::agent::run::AgentConfig {
                    node_name: node_name.unwrap_or_else(hostname),
                    state_dir: paths.state_dir,
                    bpf_root: paths.bpf_root,
                    interval,
                    listen,
                    peers_file,
                    max_series,
                    watch_vxlan: !no_vxlan,
                    kube: source.map(|source| KubeSettings { source, api_qps }),
                    flows_auth: flows_auth == FlowsAuth::Kube,
                    daemonset: daemonset_namespace.zip(daemonset_name),
                };
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(weir_operator::agent::run::run(config))?;
            }
            AgentCommand::Dump {
                paths,
                output,
                pod,
                protocol,
                peers_file,
            } => {
                if let Some(path) = &peers_file
                    && !path.exists()
                {
                    anyhow::bail!("--peers-file {}: no such file", path.display());
                }
                let mut peers = peers_file
                    .as_deref()
                    .map(weir_operator::agent::peers::FilePeers::new);
                if let Some(warning) = peers.as_mut().and_then(|p| p.refresh()) {
                    anyhow::bail!("--peers-file: {warning}");
                }
                let none: std::collections::HashMap<
                    std::net::IpAddr,
                    weir_operator::agent::peers::Peer,
                > = Default::default();
                let directory: &dyn weir_operator::agent::peers::PeerDirectory = match &peers {
                    Some(p) => p,
                    None => &none,
                };
                let mut view = node_flows::read_with(&paths.state_dir, &paths.bpf_root, directory)?;
                view.retain(&pod, &protocol);
                match output {
                    Format::Table => {
                        print!(
                            "{}",
                            node_flows::render_table(&view.flows, node_flows::boot_time_ns())
                        );
                        let pressure: Vec<String> = view
                            .stats
                            .iter()
                            .filter(|(_, v)| *v > 0)
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect();
                        println!(
                            "\nnode counters: {}",
                            if pressure.is_empty() {
                                "none".into()
                            } else {
                                pressure.join(" ")
                            }
                        );
                    }
                    Format::Json => {
                        let stats: serde_json::Map<String, serde_json::Value> =
                            view.stats.into_iter().map(|(k, v)| (k, v.into())).collect();
                        println!(
                            "{}",
                            serde_json::to_string_pretty(
                                &serde_json::json!({ "flows": view.views, "stats": stats })
                            )?
                        );
                    }
                }
            }
            AgentCommand::Observe {
                paths,
                pod,
                stop,
                mode,
            } => {
                let mode = match (stop, mode) {
                    (true, _) | (false, Some(Mode::PassThrough)) => PodMode::PassThrough,
                    (false, Some(Mode::Count) | None) => PodMode::Count,
                };
                let ids = node_flows::set_mode(&paths.state_dir, &paths.bpf_root, &pod, mode)?;
                eprintln!("{pod}: {mode:?} (pod ids {ids:?})");
            }
        },
    }
    Ok(())
}
