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
    /// Flows live, as the agents see them (not a PodFlow watch): one line per
    /// flow update with its deltas and totals. You see the namespaces where
    /// you may get pods.
    Observe(ObserveArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum ObserveFormat {
    Table,
    Json,
    Jsonl,
}

#[derive(clap::Args, Debug)]
struct ObserveArgs {
    /// Only flows of this pod (`name` or `namespace/name`).
    #[arg(long)]
    pod: Option<String>,
    /// Only flows whose source is this pod.
    #[arg(long)]
    from_pod: Option<String>,
    /// Only flows whose destination is this pod.
    #[arg(long)]
    to_pod: Option<String>,
    /// Only this protocol (tcp, udp, icmp, icmpv6, or a number).
    #[arg(long, value_parser = kubectl_weir::observe::protocol_number)]
    protocol: Option<u64>,
    /// Only flows from or to this port.
    #[arg(long)]
    port: Option<u64>,
    /// Only the agents of these nodes (repeatable).
    #[arg(long)]
    node: Vec<String>,
    /// Only updates from collections within this window (e.g. 1m).
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// Keep streaming (else: one collection from every agent).
    #[arg(short = 'f', long)]
    follow: bool,
    /// Output: table, json (one array), jsonl (one update per line).
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    output: ObserveFormat,
    /// Stop after this many updates (0: no limit).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// The bearer token the agents review (default: the kubeconfig user's).
    #[arg(long, env = "KUBECTL_WEIR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The agents' namespace.
    #[arg(long, default_value = "weir-system")]
    agent_namespace: String,
    /// How to reach the agents: through the API server (port-forward), or
    /// at their addresses (direct, from inside the cluster network).
    #[arg(long, value_enum, default_value = "port-forward")]
    via: kubectl_weir::observe::Via,
    /// The agents' port when their pods do not name a `metrics` port.
    #[arg(long, default_value_t = 9465)]
    agent_port: u16,
    /// Without -f: give up on an agent after this long.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    timeout: Duration,
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
        Cmd::Observe(args) => observe(&cli.access, args).await,
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
        Some(path) => {
            std::fs::write(path, &out).with_context(|| format!("writing {}", path.display()))?
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(out.as_bytes())
                .context("writing to stdout")?;
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

async fn agents(
    client: &kube::Client,
    args: &ObserveArgs,
) -> Result<Vec<kubectl_weir::observe::Agent>> {
    use k8s_openapi::api::core::v1::Pod;
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &args.agent_namespace);
    let selector = "app.kubernetes.io/name=weir,app.kubernetes.io/component=agent";
    let pods = api
        .list(&kube::api::ListParams::default().labels(selector))
        .await
        .map_err(|e| {
            cluster::explain(
                e,
                &format!(
                    "listing weir's agent pods in namespace {}",
                    args.agent_namespace
                ),
            )
        })?;
    let mut agents = Vec::new();
    for p in pods.items {
        let name = p.metadata.name.clone().unwrap_or_default();
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| "?".into());
        if !args.node.is_empty() && !args.node.contains(&node) {
            continue;
        }
        let port = p
            .spec
            .as_ref()
            .and_then(|s| {
                s.containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|cp| cp.name.as_deref() == Some("metrics"))
            })
            .map(|cp| cp.container_port as u16)
            .unwrap_or(args.agent_port);
        match p.status.as_ref().and_then(|s| s.pod_ip.clone()) {
            Some(ip) => agents.push(kubectl_weir::observe::Agent {
                namespace: args.agent_namespace.clone(),
                pod: name,
                node,
                address: if ip.contains(':') {
                    format!("[{ip}]:{port}")
                } else {
                    format!("{ip}:{port}")
                },
                port,
            }),
            None => eprintln!(
                "kubectl-weir: warning: agent {name} on node {node} has no address yet (not running?)"
            ),
        }
    }
    if agents.is_empty() {
        bail!(
            "no weir agent {}in namespace {} (pods labelled {selector}): is weir installed there? (--agent-namespace)",
            if args.node.is_empty() {
                String::new()
            } else {
                format!("on {} ", args.node.join(", "))
            },
            args.agent_namespace
        );
    }
    Ok(agents)
}

async fn observe(access: &Access, args: &ObserveArgs) -> Result<()> {
    use kubectl_weir::observe::{Filter, TABLE_HEADER, connect, dial, table_line};
    use tokio::io::AsyncBufReadExt as _;
    let (client, default_ns, kube_token) = cluster::client_and_token(access).await?;
    let token = args.token.clone().or(kube_token).ok_or_else(|| {
        anyhow::anyhow!(
            "observe needs a bearer token for the agents to review (they ask the API server who you are): your kubeconfig user has none (a client certificate?); pass --token (e.g. from `kubectl create token <serviceaccount>`)"
        )
    })?;
    let agents = agents(&client, args).await?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let filter = Filter {
        namespace: (!access.all_namespaces).then(|| access.namespace.clone().unwrap_or(default_ns)),
        pod: args.pod.clone(),
        from_pod: args.from_pod.clone(),
        to_pod: args.to_pod.clone(),
        protocol: args.protocol,
        port: args.port,
        since_ms: args
            .since
            .map(|s| now_ms.saturating_sub(s.as_millis() as u64)),
    };
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(usize, Result<serde_json::Value, String>)>(1024);
    let mut open = 0usize;
    for (i, agent) in agents.iter().enumerate() {
        let (tx, agent, token, timeout) = (tx.clone(), agent.clone(), token.clone(), args.timeout);
        let (client, via) = (client.clone(), args.via);
        open += 1;
        tokio::spawn(async move {
            let wait = Duration::from_secs(10).min(timeout);
            let opened = match dial(&agent, via, &client, wait).await {
                Ok(stream) => connect(stream, &agent, &token, wait).await,
                Err(e) => Err(e),
            };
            let mut reader = match opened {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send((i, Err(format!("{e:#}")))).await;
                    return;
                }
            };
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line).await {
                    Ok(0) => {
                        let _ = tx
                            .send((
                                i,
                                Err(format!(
                                    "agent {} on node {}: the stream ended",
                                    agent.pod, agent.node
                                )),
                            ))
                            .await;
                        return;
                    }
                    Ok(_) => match serde_json::from_str(&line) {
                        Ok(v) => {
                            if tx.send((i, Ok(v))).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx
                                .send((
                                    i,
                                    Err(format!("agent {}: not JSON ({e}): {line}", agent.pod)),
                                ))
                                .await;
                            return;
                        }
                    },
                    Err(e) => {
                        let _ = tx
                            .send((
                                i,
                                Err(format!("agent {} on node {}: {e}", agent.pod, agent.node)),
                            ))
                            .await;
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    let mut stdout = std::io::stdout().lock();
    if args.output == ObserveFormat::Table {
        writeln!(stdout, "{TABLE_HEADER}")?;
    }
    let mut done = vec![false; agents.len()];
    let mut failed = 0usize;
    let mut printed = 0u64;
    let mut collected = Vec::new();
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        let next = if args.follow {
            rx.recv().await
        } else {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(n) => n,
                Err(_) => {
                    for (i, d) in done.iter().enumerate() {
                        if !d {
                            eprintln!(
                                "kubectl-weir: agent {} on node {} sent no collection within {:?}",
                                agents[i].pod, agents[i].node, args.timeout
                            );
                        }
                    }
                    break;
                }
            }
        };
        let Some((i, item)) = next else { break };
        match item {
            Err(e) => {
                eprintln!("kubectl-weir: {e}");
                if !done[i] {
                    done[i] = true;
                    failed += 1;
                }
                open -= 1;
                if open == 0 {
                    break;
                }
            }
            Ok(v) if v["endOfCollection"] == true => {
                done[i] = true;
                if !args.follow && done.iter().all(|d| *d) {
                    break;
                }
            }
            Ok(v) => {
                let lost = v.get("lostUpdates").is_some();
                if !lost && !filter.passes(&v) {
                    continue;
                }
                match args.output {
                    ObserveFormat::Table => {
                        if let Some(l) = table_line(&v) {
                            writeln!(stdout, "{l}")?;
                        }
                    }
                    ObserveFormat::Jsonl => writeln!(stdout, "{v}")?,
                    ObserveFormat::Json if args.follow => {
                        writeln!(stdout, "{}", serde_json::to_string_pretty(&v)?)?
                    }
                    ObserveFormat::Json => collected.push(v),
                }
                stdout.flush()?;
                if !lost {
                    printed += 1;
                    if args.count > 0 && printed >= args.count {
                        break;
                    }
                }
            }
        }
    }
    if args.output == ObserveFormat::Json && !args.follow {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&collected)?)?;
    }
    if failed == agents.len() {
        bail!("no agent could be streamed from ({} tried)", agents.len());
    }
    Ok(())
}
