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

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Agent { command } => match command {
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
