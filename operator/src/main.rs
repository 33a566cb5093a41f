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
}

#[derive(Subcommand)]
enum Command {
    /// The node agent and its local tools.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
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
        /// How often to read the maps, e.g. 10s or 500ms.
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
        /// Log level (overridden by RUST_LOG).
        #[arg(long, default_value = "info")]
        log_level: String,
    },
    /// Print the flows counted on this node, without Kubernetes at hand.
    Dump {
        #[command(flatten)]
        paths: NodePaths,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// Only flows of this pod (`namespace/name`); repeatable.
        #[arg(long)]
        pod: Vec<String>,
        /// Only flows of this protocol (tcp, udp, icmp, icmpv6, ...); repeatable.
        #[arg(long)]
        protocol: Vec<String>,
    },
    /// Start or stop counting for one local pod (`namespace/name` or a
    /// container id): what a CaptureProfile selecting it does.
    Observe {
        #[command(flatten)]
        paths: NodePaths,
        pod: String,
        #[arg(long, value_enum, default_value_t = Mode::Count)]
        mode: Mode,
    },
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

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = text.find(|c: char| !c.is_ascii_digit()).map(|i| text.split_at(i)).unwrap_or((text, "s"));
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 10s or 500ms"))?;
    let d = match unit {
        "ms" => std::time::Duration::from_millis(n),
        "s" | "" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n * 60),
        _ => return Err(format!("{text:?}: unit must be ms, s or m")),
    };
    if d.is_zero() {
        return Err("the interval must be positive".into());
    }
    Ok(d)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Agent { command } => match command {
            AgentCommand::Run { paths, node_name, interval, listen, peers_file, max_series, no_vxlan, log_level } => {
                let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log_level));
                tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
                let config = weir_operator::agent::run::AgentConfig {
                    node_name: node_name.unwrap_or_else(hostname),
                    state_dir: paths.state_dir,
                    bpf_root: paths.bpf_root,
                    interval,
                    listen,
                    peers_file,
                    max_series,
                    watch_vxlan: !no_vxlan,
                };
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(weir_operator::agent::run::run(config))?;
            }
            AgentCommand::Dump { paths, output, pod, protocol } => {
                let mut view = node_flows::read(&paths.state_dir, &paths.bpf_root)?;
                view.flows.retain(|f| node_flows::matches(f, &pod, &protocol));
                match output {
                    Format::Table => {
                        print!("{}", node_flows::render_table(&view.flows, node_flows::boot_time_ns()));
                        let pressure: Vec<String> = view
                            .stats
                            .iter()
                            .filter(|(_, v)| *v > 0)
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect();
                        println!("\nnode counters: {}", if pressure.is_empty() { "none".into() } else { pressure.join(" ") });
                    }
                    Format::Json => {
                        let stats: serde_json::Map<String, serde_json::Value> =
                            view.stats.into_iter().map(|(k, v)| (k, v.into())).collect();
                        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "flows": view.flows, "stats": stats }))?);
                    }
                }
            }
            AgentCommand::Observe { paths, pod, mode } => {
                let mode = match mode {
                    Mode::Count => PodMode::Count,
                    Mode::PassThrough => PodMode::PassThrough,
                };
                let ids = node_flows::set_mode(&paths.state_dir, &paths.bpf_root, &pod, mode)?;
                eprintln!("{pod}: {mode:?} (pod ids {ids:?})");
            }
        },
    }
    Ok(())
}
