//! `kubectl-weir`: installed on PATH, it runs as `kubectl weir ...`.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use kubectl_weir::cluster::{self, Access, Scope, Snapshot};
use kubectl_weir::graph::{Graph, render_svg};
use kubectl_weir::model::parse_duration;
use kubectl_weir::top::{self, By, SortBy};

/// See what weir observes: who talks to whom, and the top talkers.
#[derive(Parser, Debug)]
#[command(name = "kubectl weir", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    access: Access,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// A picture of who talks to whom, from PodFlows: workloads grouped by
    /// namespace, edges labelled with bytes and rate; cross-node edges carry
    /// their VNI (dashed) and turn red when the overlay lost packets.
    Graph(GraphArgs),
    /// The top talkers among the PodFlows (by pod, workload, namespace or
    /// node pair), refreshing like `top` on a terminal.
    Top(TopArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum GraphFormat {
    /// SVG, laid out by Graphviz `dot` (needs Graphviz installed).
    Svg,
    /// Graphviz DOT source.
    Dot,
    /// A Mermaid flowchart.
    Mermaid,
    /// One self-contained HTML page: the SVG inline and a table of the edges.
    Html,
}

#[derive(clap::Args, Debug)]
struct GraphArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "svg")]
    output: GraphFormat,
    /// Keep the N busiest edges (by bytes); the rest is summarised into one
    /// "(other)" edge per namespace pair. 0 keeps every edge.
    #[arg(long, default_value_t = 40)]
    top: usize,
    /// Write to this file instead of stdout.
    #[arg(long = "out", value_name = "FILE")]
    out: Option<PathBuf>,
    /// Read `kubectl get podflows,pods,replicasets -o json` output from
    /// this file (`-`: stdin) instead of the cluster.
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct TopArgs {
    /// What a talker is.
    #[arg(long, value_enum, default_value = "workload")]
    by: By,
    /// What to sort by. `rate`: bytes/s between refreshes (the first frame:
    /// over the flows' lifetimes).
    #[arg(long, value_enum, default_value = "bytes")]
    sort: SortBy,
    /// How many talkers to show (0: all).
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Only flows seen within this window (e.g. 5m); default: all.
    #[arg(long, value_parser = parse_duration)]
    window: Option<Duration>,
    /// Refresh every --interval (the default on a terminal).
    #[arg(short = 'w', long, conflicts_with = "once")]
    watch: bool,
    /// Print once and exit (the default when stdout is not a terminal).
    #[arg(long)]
    once: bool,
    /// Time between refreshes.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    interval: Duration,
    /// Stop after this many refreshes (0: until interrupted).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Read `kubectl get podflows,pods,replicasets -o json` output from
    /// this file instead of the cluster (prints once).
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("kubectl-weir: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Cmd::Graph(args) => graph(&cli.access, args).await,
        Cmd::Top(args) => top_cmd(&cli.access, args).await,
    }
}

fn scope_of(access: &Access, default_ns: &str) -> Scope {
    if access.all_namespaces {
        Scope::All
    } else {
        Scope::Namespace(
            access
                .namespace
                .clone()
                .unwrap_or_else(|| default_ns.to_owned()),
        )
    }
}

async fn snapshot(
    access: &Access,
    from_file: Option<&PathBuf>,
    client: &mut Option<(kube::Client, String)>,
) -> Result<Snapshot> {
    if let Some(path) = from_file {
        let scope = match (&access.all_namespaces, &access.namespace) {
            (false, Some(ns)) => Scope::Namespace(ns.clone()),
            _ => Scope::All,
        };
        return cluster::read_file(path, &scope);
    }
    if client.is_none() {
        *client = Some(cluster::client(access).await?);
    }
    let (c, default_ns) = client.as_ref().expect("set above");
    let snap = cluster::read(c, &scope_of(access, default_ns)).await?;
    for w in &snap.warnings {
        eprintln!("kubectl-weir: warning: {w}");
    }
    Ok(snap)
}

async fn graph(access: &Access, args: &GraphArgs) -> Result<()> {
    let started = Instant::now();
    let snap = snapshot(access, args.from_file.as_ref(), &mut None).await?;
    let graph = Graph::build(&snap.flows, &snap.inventory, args.top);
    let title = match (access.all_namespaces, &access.namespace) {
        (false, Some(ns)) => format!("weir flows in {ns}"),
        (true, _) => "weir flows, all namespaces".to_owned(),
        _ => "weir flows".to_owned(),
    };
    let out = match args.output {
        GraphFormat::Dot => graph.to_dot(),
        GraphFormat::Mermaid => graph.to_mermaid(),
        GraphFormat::Svg => render_svg(&graph.to_dot())?,
        GraphFormat::Html => graph.to_html(&render_svg(&graph.to_dot())?, &title),
    };
    match &args.out {
        Some(path) => std::fs::write(path, &out).with_context(|| format!("writing {}", path.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(out.as_bytes()).context("writing to stdout")?;
            stdout.flush().context("writing to stdout")?;
        }
    }
    if std::env::var_os("KUBECTL_WEIR_TIMING").is_some() {
        eprintln!(
            "kubectl-weir: {} flows, {} workload edges, {} drawn, {} bytes of output in {:.3} s",
            graph.flows,
            graph.workload_edges,
            graph.edges.len(),
            out.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn top_cmd(access: &Access, args: &TopArgs) -> Result<()> {
    let terminal = std::io::stdout().is_terminal();
    let watch = !args.once && args.from_file.is_none() && (args.watch || terminal);
    let mut client = None;
    let mut previous: Option<(std::collections::HashMap<String, u64>, Instant)> = None;
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut frames = 0u64;
    loop {
        ticker.tick().await;
        let snap = snapshot(access, args.from_file.as_ref(), &mut client).await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let prev = previous
            .as_ref()
            .map(|(p, at)| (p, at.elapsed().as_secs_f64()));
        let talkers = top::talkers(
            &snap.flows,
            &snap.inventory,
            args.by,
            prev,
            args.window.map(|w| (now, w.as_secs_f64())),
        );
        let table = top::render(&top::top_n(talkers, args.sort, args.limit), args.by);
        let mut stdout = std::io::stdout().lock();
        if watch && terminal {
            // Like top: redraw in place.
            write!(stdout, "\x1b[H\x1b[2J")?;
        }
        if watch {
            writeln!(
                stdout,
                "kubectl weir top --by {:?} --sort {:?}: {} flows, every {:?}",
                args.by,
                args.sort,
                snap.flows.len(),
                args.interval
            )?;
        }
        stdout.write_all(table.as_bytes())?;
        if watch && !terminal {
            writeln!(stdout)?;
        }
        stdout.flush()?;
        frames += 1;
        if !watch || (args.count > 0 && frames >= args.count) {
            break;
        }
        previous = Some((top::snapshot(&snap.flows), Instant::now()));
    }
    if frames == 0 {
        bail!("nothing printed");
    }
    Ok(())
}
