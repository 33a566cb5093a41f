//! `make bench` (via bench/run.sh): what weir costs, measured in one run with
//! the variants alternating round by round, so drift and noise on the host hit
//! every variant alike.
//!
//! Nodes are network namespaces with the reference bridge + host-local chain.
//! On weir's node (`weir` at the end of its chain) a client and a server pod
//! split by weir, and a client and a server ADDed through the chain without
//! weir on the same bridge: the unsplit baseline and the plain end of the
//! one-split-pod variants. Further nodes (without weir; with weir attaching
//! TCX links) are only for the ADD timings.
//! - TCP throughput (iperf3) pod to pod over the node's bridge: unsplit vs
//!   through one split pod (the other end a pod without weir on the same
//!   bridge), into it and out of it, in pass-through mode (weir's default)
//!   and counted; vs both pods split with the node program gone (the stubs
//!   redirect on their own: what the split's extra veth hop costs by
//!   itself), in pass-through mode and counted. Many short rounds, and a
//!   confidence interval on each median ratio: on a shared VM single runs
//!   swing ±20 %.
//! - Request/response round-trip time (sockperf ping-pong, UDP and TCP),
//!   same eight variants: p50 and p99.
//! - ADD time of the whole chain through cnitool, without weir vs with weir
//!   (default tc attach) vs with weir attaching TCX links, each ADD into a
//!   fresh pod namespace (DEL afterwards, not timed), on a node where the
//!   split program is already loaded (the first STATUS or ADD loads it).
//! - Where weir's share of an ADD goes: a few more ADDs with weir run under
//!   strace (if installed); and the once-per-node load of the split program,
//!   phase by phase, by bench/loader-probe (each sample a fresh process).
//!
//! Raw numbers go to the results directory as `*.raw`; the summary table
//! goes to stdout. Everything made here is removed on the way out.

use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use weir_e2e::bpf_stats;
use weir_e2e::chain::{ChainSpec, Node};
use weir_e2e::host;
use weir_e2e::netns::{self, Netns};
use weir_e2e::report::{Daemon, Raw, loadavg, med, median_ci, pct, uname_r, verdict};
use weir_ebpf::abi::PodMode;
use weir_ebpf::maps::NodeMaps;
use weir_ebpf::{BpfRoot, split};

/// The bench's own bpf root, apart from the node's and the tests' roots.
const BPF_ROOT: &str = "/sys/fs/bpf/weir-bench";
const IPERF_PORT: &str = "5201";
const SOCKPERF_UDP_PORT: &str = "11111";
const SOCKPERF_TCP_PORT: &str = "11112";
// Client and server pinned to a CPU each: the scheduler moving them around
// (and onto the other's CPU) made throughput swing by tens of percent from
// run to run on the 2-vCPU host; pinned, weir's per-packet cost shows.
const CLIENT_CPU: &str = "0";
const SERVER_CPU: &str = "1";

fn pinned<'a>(cpu: &'a str, argv: &[&'a str]) -> Vec<&'a str> {
    [&["taskset", "-c", cpu][..], argv].concat()
}

// Targets of the issue.
const MIN_THROUGHPUT_RATIO: f64 = 0.97;
const MAX_ADDED_RTT_P50_US: f64 = 3.0;
const MAX_ADDED_ADD_P50_MS: f64 = 10.0;
const MAX_ADDED_ADD_P99_MS: f64 = 25.0;

struct Settings {
    rounds: usize,
    rtt_rounds: usize,
    tcp_secs: u32,
    /// Offered rate of the fixed-rate transfers, Gbit/s.
    rate_gbps: f64,
    rtt_secs: u32,
    adds: usize,
    loader_samples: usize,
    traced_adds: usize,
    weir: PathBuf,
    results: PathBuf,
    loader_probe: Option<PathBuf>,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let usage = "usage: weir-bench <weir binary> <results dir> [<loader-probe binary>]";
        let mut args = std::env::args_os().skip(1);
        let weir = PathBuf::from(args.next().context(usage)?);
        let results = PathBuf::from(args.next().context(usage)?);
        let loader_probe = args.next().map(PathBuf::from);
        let num = |name: &str, default: usize| -> Result<usize> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .with_context(|| format!("{name}={v:?} is not a number")),
                Err(_) => Ok(default),
            }
        };
        Ok(Self {
            rounds: num("WEIR_BENCH_ROUNDS", 30)?.max(1),
            rtt_rounds: num("WEIR_BENCH_RTT_ROUNDS", 15)?.max(1),
            tcp_secs: num("WEIR_BENCH_TCP_SECS", 2)?.max(1) as u32,
            rate_gbps: num("WEIR_BENCH_RATE_GBPS", 8)?.max(1) as f64,
            rtt_secs: num("WEIR_BENCH_RTT_SECS", 2)?.max(1) as u32,
            adds: num("WEIR_BENCH_ADDS", 100)?.max(2),
            loader_samples: num("WEIR_BENCH_LOADER_SAMPLES", 20)?.max(1),
            traced_adds: num("WEIR_BENCH_TRACED_ADDS", 15)?.max(1),
            weir,
            results,
            loader_probe,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    /// A chain without weir: the pod's own veth on the bridge.
    Unsplit,
    /// Traffic through one split pod, as the targets put it, in
    /// weir's default mode (no CaptureProfile selects the pod): the server
    /// split, the client a pod without weir on the same bridge. The data goes
    /// into the split pod, the split's costlier direction (the extra veth hop
    /// towards the pod). Cross-node traffic passes one split on each node.
    PassIn,
    /// The other direction through one split pod in its default mode: the
    /// client split, the server a pod without weir. The data leaves the
    /// split pod, where the split enters the host veth by
    /// `bpf_redirect_peer`, without a second pass through the backlog; the
    /// ACKs take the extra hop.
    PassOut,
    /// As `PassIn`, with the split pod counted (PodMode::Count).
    CountIn,
    /// As `PassOut`, with the split pod counted.
    CountOut,
    /// Both pods split by weir, but the node program's jump slot emptied: each stub
    /// redirects by itself. The split's own cost, without weir's program.
    Bare,
    /// Both pods split by weir, in pass-through mode.
    Pass,
    /// Both pods split by weir and counted: pod to pod on one node with weir
    /// on every pod, the worst case.
    Count,
}

impl Variant {
    const ALL: [Variant; 8] = [
        Variant::Unsplit,
        Variant::PassIn,
        Variant::PassOut,
        Variant::CountIn,
        Variant::CountOut,
        Variant::Bare,
        Variant::Pass,
        Variant::Count,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Unsplit => "unsplit",
            Variant::PassIn => "one-split-pass-in",
            Variant::PassOut => "one-split-pass-out",
            Variant::CountIn => "one-split-count-in",
            Variant::CountOut => "one-split-count-out",
            Variant::Bare => "split-bare",
            Variant::Pass => "split-pass",
            Variant::Count => "split-count",
        }
    }

    /// The split pods' mode; `None` for unsplit and bare.
    fn mode(self) -> Option<PodMode> {
        match self {
            Variant::Unsplit | Variant::Bare => None,
            Variant::PassIn | Variant::PassOut | Variant::Pass => Some(PodMode::PassThrough),
            Variant::CountIn | Variant::CountOut | Variant::Count => Some(PodMode::Count),
        }
    }
}

/// Round `r` runs the variants rotated by `r`, so none is always first.
fn rotation<T: Copy>(items: &[T], r: usize) -> Vec<T> {
    (0..items.len())
        .map(|i| items[(i + r) % items.len()])
        .collect()
}

fn daemon(ns: &Netns, argv: &[&str]) -> Result<Daemon> {
    // nsenter execs the server itself, so the child's pid is the server's.
    let child = ns
        .command(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {argv:?} in {}", ns.name()))?;
    Ok(Daemon(child))
}

struct Pair {
    client: Netns,
    server: Netns,
    server_ip: IpAddr,
    pod_ids: Vec<u32>,
}

/// Where a measurement runs: from a client pod to a server's address.
struct Route<'a> {
    client: &'a Netns,
    server_ip: IpAddr,
}

/// The nodes, and two client/server pod pairs on weir's node's bridge, one
/// split, one not. Field order is drop order: servers first, then pods, then
/// nodes.
struct Bed {
    _servers: Vec<Daemon>,
    split: Pair,
    /// ADDed through the chain with weir left out: the unsplit baseline, on
    /// the same bridge as the split pods, so the variants differ in weir only.
    plain: Pair,
    split_node: Node,
    /// Pods are only ADDed and DELeted here, through the chain without weir.
    unsplit_node: Node,
    /// Pods are only ADDed and DELeted here, with weir attaching TCX links.
    tcx_node: Node,
}

impl Bed {
    fn route(&self, v: Variant) -> Route<'_> {
        let (client, server) = match v {
            Variant::Unsplit => (&self.plain.client, &self.plain),
            Variant::PassIn | Variant::CountIn => (&self.plain.client, &self.split),
            Variant::PassOut | Variant::CountOut => (&self.split.client, &self.plain),
            Variant::Bare | Variant::Pass | Variant::Count => (&self.split.client, &self.split),
        };
        Route {
            client,
            server_ip: server.server_ip,
        }
    }

    fn maps(&self) -> Result<NodeMaps> {
        Ok(NodeMaps::open(&BpfRoot::new(&self.split_node.bpf_root))?)
    }

    /// Puts both split pods into the variant's mode (no-op for unsplit).
    fn set_mode(&self, v: Variant) -> Result<()> {
        let root = BpfRoot::new(&self.split_node.bpf_root);
        let mode = match (v, v.mode()) {
            (Variant::Unsplit, _) => return Ok(()),
            (Variant::Bare, _) => return empty_jump_slot(&root),
            (_, Some(mode)) => mode,
            (_, None) => bail!("{v:?} has no pod mode"),
        };
        // refills the jump slot if a bare round emptied it
        weir_ebpf::probe(&root).context("reloading the node program")?;
        let mut maps = self.maps()?;
        for id in &self.split.pod_ids {
            maps.set_pod_mode(*id, mode)?;
        }
        Ok(())
    }

    /// Runs `work` for variant `v` and checks that the split data path did
    /// what the variant says: passed through, or redirected and counted.
    fn measured<T>(&self, v: Variant, work: impl FnOnce(&Route) -> Result<T>) -> Result<T> {
        self.set_mode(v)?;
        let before = self.maps()?.stats()?;
        let out = work(&self.route(v))?;
        let after = self.maps()?.stats()?;
        let (redirects, passed) = (
            after.redirects - before.redirects,
            after.passthrough_packets - before.passthrough_packets,
        );
        // (the idle split pods' own chatter, e.g. IPv6 router solicitations,
        // is redirected too, whatever runs: hence thresholds, not zero)
        match (v, v.mode()) {
            (Variant::Bare, _) if redirects != 0 => {
                bail!("bare run: the node program redirected {redirects} frames")
            }
            (_, Some(PodMode::PassThrough)) if passed < 100 => {
                bail!("{}: only {passed} frames passed through weir", v.name())
            }
            (_, Some(PodMode::Count)) if redirects < 100 || passed != 0 => {
                bail!("{}: {redirects} redirects, {passed} not counted", v.name())
            }
            _ => Ok(out),
        }
    }
}

/// Takes the node program out of its jump slot, as a broken upgrade would:
/// the stubs then forward on their own (see ebpf/src/stub.rs).
fn empty_jump_slot(root: &BpfRoot) -> Result<()> {
    if weir_ebpf::node_program::open(root)?.is_none() {
        return Ok(());
    }
    let jump = weir_ebpf::node_program::dir(root).join("jump");
    let status = Command::new("bpftool")
        .args(["map", "delete", "pinned"])
        .arg(&jump)
        .args(["key", "0", "0", "0", "0"])
        .status()
        .context("bpftool (run scripts/bootstrap.sh)")?;
    if !status.success() {
        bail!("bpftool could not empty {}", jump.display());
    }
    Ok(())
}

impl Drop for Bed {
    /// DEL the pods through their chains, as a runtime would, so no CNI
    /// result cache, IPAM lease or weir state outlives the run.
    fn drop(&mut self) {
        // (weir's DEL of a pod it never split leaves it to the bridge)
        for pod in [
            &self.split.client,
            &self.split.server,
            &self.plain.client,
            &self.plain.server,
        ] {
            let _ = self.split_node.del(&pod.path(), "eth0");
        }
    }
}

/// `attach`: weir's `attach` option; `None` leaves weir's default.
fn node(
    tag: &str,
    subnet: &str,
    with_weir: bool,
    attach: Option<&str>,
    weir: &Path,
) -> Result<(Node, ChainSpec)> {
    let mut spec = ChainSpec::new("1.1.0", subnet);
    spec.with_weir = with_weir;
    // The plugin's default log level, as in production (the harness uses debug).
    spec.weir_options = json!({ "logLevel": "info" });
    if let Some(attach) = attach {
        spec.weir_options["attach"] = json!(attach);
    }
    let mut node = Node::new(tag, &spec, weir)?;
    node.bpf_root = PathBuf::from(BPF_ROOT);
    node.write_conflist(&spec)?;
    Ok((node, spec))
}

fn pair(node: &Node, tag: &str, split: bool) -> Result<Pair> {
    let mut pods = Vec::new();
    for name in ["client", "server"] {
        let ns = Netns::create(&format!("{tag}-{name}"))?;
        let result = node.add(&ns, "eth0", "bench", name)?.ok()?.json()?;
        let ip = Node::pod_ipv4(&result)?;
        let id = if split { Some(node.pod_id(&ns)?) } else { None };
        pods.push((ns, ip, id));
    }
    let (server, server_ip, server_id) = pods.pop().context("server")?;
    let (client, _, client_id) = pods.pop().context("client")?;
    Ok(Pair {
        client,
        server,
        server_ip,
        pod_ids: [client_id, server_id].into_iter().flatten().collect(),
    })
}

/// A client and a server pod on `node`'s bridge, ADDed through its chain
/// with weir left out.
fn plain_pair(node: &Node, spec: &ChainSpec, tag: &str) -> Result<Pair> {
    let without_weir = ChainSpec {
        with_weir: false,
        ..spec.clone()
    };
    node.write_conflist(&without_weir)?;
    let added = pair(node, &format!("{tag}-plain"), false);
    node.write_conflist(spec)?;
    let plain = added?;
    for pod in [&plain.client, &plain.server] {
        if pod.links()?.iter().any(|l| l.starts_with("w")) {
            bail!("a plain pod was split: {:?}", pod.links()?);
        }
    }
    Ok(plain)
}

fn setup(s: &Settings) -> Result<Bed> {
    let (split_node, split_spec) = node("wbs", "10.245.1.0/24", true, None, &s.weir)?;
    let (unsplit_node, _) = node("wbu", "10.245.2.0/24", false, None, &s.weir)?;
    let (tcx_node, _) = node("wbt", "10.245.3.0/24", true, Some("tcx"), &s.weir)?;
    let split = pair(&split_node, "wbs", true)?;
    let plain = plain_pair(&split_node, &split_spec, "wbs")?;
    if split
        .client
        .links()?
        .iter()
        .filter(|l| l.starts_with("w"))
        .count()
        != 2
    {
        bail!("the weir pod is not split: {:?}", split.client.links()?);
    }
    let mut servers = Vec::new();
    for p in [&split, &plain] {
        for argv in [
            &["iperf3", "-s", "-p", IPERF_PORT][..],
            &[
                "sockperf",
                "server",
                "-i",
                "0.0.0.0",
                "-p",
                SOCKPERF_UDP_PORT,
            ],
            &[
                "sockperf",
                "server",
                "--tcp",
                "-i",
                "0.0.0.0",
                "-p",
                SOCKPERF_TCP_PORT,
            ],
        ] {
            servers.push(daemon(&p.server, &pinned(SERVER_CPU, argv))?);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    for (i, d) in servers.iter_mut().enumerate() {
        if let Some(status) = d.0.try_wait()? {
            bail!("benchmark server {i} exited at once ({status})");
        }
    }
    Ok(Bed {
        _servers: servers,
        split,
        plain,
        split_node,
        unsplit_node,
        tcx_node,
    })
}

// --- measurements -----------------------------------------------------------

/// One iperf3 run.
struct Transfer {
    gbps: f64,
    retransmits: u64,
    /// CPU seconds per GB the server received, client and server process
    /// together (iperf3's getrusage: the softirq work of the path runs in
    /// their context). A second view of the cost, with its own noise.
    cpu_s_per_gb: f64,
}

/// `rate_gbps`: iperf3's `-b`, the offered rate; `None` sends as fast as
/// the path takes.
fn iperf(p: &Route, secs: u32, rate_gbps: Option<f64>) -> Result<Transfer> {
    let ip = p.server_ip.to_string();
    let secs = secs.to_string();
    let mut argv = pinned(
        CLIENT_CPU,
        &[
            "iperf3", "-c", &ip, "-p", IPERF_PORT, "-t", &secs, "-O", "1", "-J",
        ],
    );
    let rate = rate_gbps.map(|g| format!("{g}G"));
    if let Some(rate) = &rate {
        argv.extend(["-b", rate.as_str()]);
    }
    let out = netns::run(&mut p.client.command(&argv))?;
    let j: Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    let end = &j["end"];
    let number = |v: &Value, what: &str| {
        v.as_f64()
            .with_context(|| format!("no {what} in iperf3's output {j}"))
    };
    let bps = number(&end["sum_received"]["bits_per_second"], "throughput")?;
    let gb = number(&end["sum_received"]["bytes"], "received bytes")? / 1e9;
    let seconds = number(&end["sum_received"]["seconds"], "duration")?;
    let cpu = &end["cpu_utilization_percent"];
    let cpu_pct =
        number(&cpu["host_total"], "client CPU")? + number(&cpu["remote_total"], "server CPU")?;
    Ok(Transfer {
        gbps: bps / 1e9,
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        cpu_s_per_gb: cpu_pct / 100.0 * seconds / gb,
    })
}

/// Round-trip p50 and p99 in µs, as sockperf reports them.
fn sockperf(p: &Route, tcp: bool, secs: u32) -> Result<(f64, f64)> {
    let ip = p.server_ip.to_string();
    let secs = secs.to_string();
    let port = if tcp {
        SOCKPERF_TCP_PORT
    } else {
        SOCKPERF_UDP_PORT
    };
    let mut argv = pinned(
        CLIENT_CPU,
        &[
            "sockperf",
            "ping-pong",
            "-i",
            &ip,
            "-p",
            port,
            "-t",
            &secs,
            "--full-rtt",
        ],
    );
    if tcp {
        argv.push("--tcp");
    }
    let out = netns::run(&mut p.client.command(&argv))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let pct = |which: &str| -> Result<f64> {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("percentile {which} =")))
            .with_context(|| format!("no percentile {which} in sockperf output:\n{text}"))?;
        Ok(line.rsplit('=').next().unwrap_or("").trim().parse()?)
    };
    Ok((pct("50.000")?, pct("99.000")?))
}

/// Milliseconds of one ADD of the node's whole chain into a fresh pod netns;
/// DEL and the namespace's removal are not timed.
fn timed_add(node: &Node, tag: &str, i: usize) -> Result<f64> {
    let ns = Netns::create(&format!("{tag}-add{i}"))?;
    let start = Instant::now();
    let call = node.add(&ns, "eth0", "bench", &format!("add{i}"))?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    call.ok()
        .with_context(|| format!("ADD {i} on {}", node.network))?;
    node.del(&ns.path(), "eth0")?.ok()?;
    Ok(ms)
}

// --- statistics and output --------------------------------------------------

/// weir's cost taken within each round (the variants ran back to back), its
/// median over the rounds (drift between rounds cancels out), and that
/// median's 95 % confidence interval.
fn paired_ci(v: &[f64], base: &[f64], cost: fn(f64, f64) -> f64) -> (f64, f64, f64) {
    let per_round: Vec<f64> = v.iter().zip(base).map(|(&a, &b)| cost(a, b)).collect();
    let (lo, hi) = median_ci(&per_round);
    (med(&per_round), lo, hi)
}

/// The medians of the eight variants' values, as table cells in
/// [`Variant::ALL`] order (the arrays are indexed by variant).
fn medians<'a>(per_variant: impl Iterator<Item = &'a Vec<f64>>) -> String {
    per_variant
        .map(|values| format!("{:.2}", med(values)))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn show((median, lo, hi): (f64, f64, f64), digits: usize) -> String {
    format!("{median:.digits$} ({lo:.digits$}–{hi:.digits$})")
}

fn ratio(a: f64, b: f64) -> f64 {
    a / b
}

fn diff(a: f64, b: f64) -> f64 {
    a - b
}

fn main() -> Result<()> {
    let s = Settings::from_env()?;
    host::require_privileged_host();
    if std::thread::available_parallelism().map_or(0, |n| n.get()) < 2 {
        bail!("needs at least 2 CPUs: client and server are pinned to CPUs 0 and 1");
    }
    for tool in ["iperf3", "sockperf", "taskset", "bpftool"] {
        if host::which(tool).is_none() {
            bail!("{tool} not found (run scripts/bootstrap.sh)");
        }
    }
    if !s.weir.is_file() {
        bail!(
            "{} is missing; build it first (`make bench` does)",
            s.weir.display()
        );
    }
    fs::create_dir_all(&s.results)?;
    let raw = Raw {
        dir: s.results.clone(),
    };
    let load_before = loadavg();
    eprintln!(
        "weir-bench: {} rounds; TCP {} s, RTT {} s per run; {} ADDs per chain; load average {load_before}",
        s.rounds, s.tcp_secs, s.rtt_secs, s.adds
    );

    let bed = setup(&s)?;
    let tput = throughput(&bed, &s, &raw)?;
    let ebpf = ebpf_time(&bed, &s, &raw)?;
    let rtt = latency(&bed, &s, &raw)?;
    if bed.maps()?.live_flow_count()? == 0 {
        bail!("counting rounds left no flows in weir_flows: counting was not in effect");
    }
    let adds = add_times(&bed, &s, &raw)?;
    // Where weir's share of an ADD goes: traced ADDs, and the eBPF loader's
    // phases timed on their own.
    let mut parts = Vec::new();
    if host::which("strace").is_none() {
        eprintln!("weir-bench: WARNING: strace not found: no per-phase breakdown of the ADD");
    } else {
        // A diagnostic: its failure is reported, not allowed to lose the run.
        match traced_adds(&bed.split_node, &s.weir, s.traced_adds, &raw) {
            Ok(phases) => {
                let how = format!(
                    "{} more ADDs, weir under strace (seccomp-filtered)",
                    s.traced_adds
                );
                parts.extend(phases.into_iter().map(|(name, ms)| (name, ms, how.clone())));
            }
            Err(e) => eprintln!("weir-bench: WARNING: no per-phase breakdown of the ADD: {e:#}"),
        }
    }
    if let Some(probe) = &s.loader_probe {
        let how = format!(
            "bench/loader-probe, {} fresh processes each",
            s.loader_samples
        );
        for (name, ms) in loader_phases(probe, s.loader_samples, &raw)? {
            parts.push((name, ms, how.clone()));
        }
    }
    drop(bed);

    let header = format!(
        "weir bench: kernel {}, {} CPUs, load average {load_before} before, {} after\n\
         medians over {} alternating rounds (TCP {} s, RTT {} s each); ADD over {} alternating ADDs per chain\n\n",
        uname_r(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        s.rounds,
        s.tcp_secs,
        s.rtt_secs,
        s.adds
    );
    let out = header + &summary(&s, &tput, &ebpf, &rtt, &adds, &parts)?;
    print!("{out}");
    fs::write(s.results.join("summary.raw"), &out)?;
    Ok(())
}

/// Per variant, of each round: Gbit/s and CPU seconds per GB as fast as the
/// path goes, and CPU seconds per GB and Gbit/s at the fixed offered rate.
#[derive(Default)]
struct Throughput {
    gbps: [Vec<f64>; 8],
    cpu_s_per_gb: [Vec<f64>; 8],
    fixed_cpu_s_per_gb: [Vec<f64>; 8],
    fixed_gbps: [Vec<f64>; 8],
}

/// Each variant twice per round, back to back: as fast as the path goes,
/// then at a fixed offered rate below every variant's capacity. At full
/// speed a single stream between two CPUs swings ±20 % from run to run on
/// this VM (reordering between the CPUs' backlogs, spurious retransmits,
/// the host's steal); at a fixed rate the CPU it costs per GB swings ±4 %,
/// so weir's cost per byte shows through in far fewer rounds. On a
/// CPU-bound path, throughput is the inverse of that cost.
fn throughput(bed: &Bed, s: &Settings, raw: &Raw) -> Result<Throughput> {
    let mut tput = Throughput::default();
    let mut lines = Vec::new();
    for r in 0..s.rounds {
        for v in rotation(&Variant::ALL, r) {
            let t = bed.measured(v, |p| iperf(p, s.tcp_secs, None))?;
            let fixed = bed.measured(v, |p| iperf(p, s.tcp_secs, Some(s.rate_gbps)))?;
            let i = v as usize;
            tput.gbps[i].push(t.gbps);
            tput.cpu_s_per_gb[i].push(t.cpu_s_per_gb);
            tput.fixed_cpu_s_per_gb[i].push(fixed.cpu_s_per_gb);
            tput.fixed_gbps[i].push(fixed.gbps);
            lines.push(format!(
                "{r} {} {:.3} {} {:.4} {:.3} {:.4}",
                v.name(),
                t.gbps,
                t.retransmits,
                t.cpu_s_per_gb,
                fixed.gbps,
                fixed.cpu_s_per_gb
            ));
        }
        eprintln!("weir-bench: throughput round {}/{} done", r + 1, s.rounds);
    }
    raw.write(
        "throughput.raw",
        &format!(
            "round variant gbit_per_s retransmits cpu_s_per_gb fixed_rate_gbit_per_s fixed_rate_cpu_s_per_gb (iperf3, one TCP stream, as fast as it goes, then at -b {}G; CPU of client + server processes)",
            s.rate_gbps
        ),
        &lines,
    )?;
    Ok(tput)
}

/// Time the kernel spent in weir's programs during one transfer.
struct EbpfTime {
    ns_per_run: f64,
    /// Of one CPU, over the transfer's wall time.
    cpu_pct: f64,
}

/// One more transfer per split variant with the kernel's BPF statistics on:
/// the stubs' run time includes the node program they tail-call (a tail
/// call never returns to account separately), so it is all of weir's eBPF
/// time. What the split costs beyond this is the kernel's (tc, redirect, the
/// extra veth hop), which the bare variant's throughput shows.
fn ebpf_time(bed: &Bed, s: &Settings, raw: &Raw) -> Result<[EbpfTime; 3]> {
    bed.set_mode(Variant::Pass)?;
    let root = BpfRoot::new(&bed.split_node.bpf_root);
    let jump = weir_ebpf::node_program::open(&root)?
        .context("the node program is not loaded")?
        .jump_map_id();
    let stub_ids: Vec<u64> = bpf_stats::programs()?
        .into_iter()
        .filter(|p| {
            [split::OUTER_STUB, split::INNER_STUB].contains(&p.name.as_str())
                && p.map_ids.contains(&u64::from(jump))
        })
        .map(|p| p.id)
        .collect();
    if stub_ids.len() != 4 {
        bail!("expected the 4 stubs of the two split pods, found {stub_ids:?}");
    }
    let totals = || -> Result<(u64, u64)> {
        let mut sum = (0, 0);
        for id in &stub_ids {
            let p = bpf_stats::program(*id)?;
            sum.0 += p.run_time_ns;
            sum.1 += p.run_cnt;
        }
        Ok(sum)
    };
    let mut lines = Vec::new();
    let mut out = Vec::new();
    for v in [Variant::Bare, Variant::Pass, Variant::Count] {
        let stats = bpf_stats::enable()?;
        let (ns0, runs0) = totals()?;
        let started = Instant::now();
        let t = bed.measured(v, |p| iperf(p, s.tcp_secs, None))?;
        let wall = started.elapsed().as_secs_f64();
        let (ns1, runs1) = totals()?;
        drop(stats);
        let (ns, runs) = (ns1 - ns0, runs1 - runs0);
        if runs == 0 {
            bail!("{}: the stubs did not run", v.name());
        }
        lines.push(format!("{} {ns} {runs} {wall:.3} {:.3}", v.name(), t.gbps));
        out.push(EbpfTime {
            ns_per_run: ns as f64 / runs as f64,
            cpu_pct: ns as f64 / (wall * 1e9) * 100.0,
        });
    }
    raw.write(
        "ebpf-time.raw",
        "variant run_time_ns run_cnt wall_s gbit_per_s (4 stubs incl. the tail-called node program, BPF_ENABLE_STATS, one iperf3 run)",
        &lines,
    )?;
    out.try_into()
        .map_err(|_| anyhow::anyhow!("three variants measured"))
}

/// Per protocol (UDP, TCP) and variant, (p50s, p99s) in µs of each round.
type Rtts = [[(Vec<f64>, Vec<f64>); 8]; 2];

fn latency(bed: &Bed, s: &Settings, raw: &Raw) -> Result<Rtts> {
    let mut rtt: Rtts = Default::default();
    let mut lines = Vec::new();
    for r in 0..s.rtt_rounds {
        for (proto, tcp) in [("udp", false), ("tcp", true)] {
            for v in rotation(&Variant::ALL, r) {
                let (p50, p99) = bed.measured(v, |p| sockperf(p, tcp, s.rtt_secs))?;
                let slot = &mut rtt[tcp as usize][v as usize];
                slot.0.push(p50);
                slot.1.push(p99);
                lines.push(format!("{r} {proto} {} {p50:.3} {p99:.3}", v.name()));
            }
        }
        eprintln!("weir-bench: latency round {}/{} done", r + 1, s.rtt_rounds);
    }
    raw.write(
        "latency.raw",
        "round proto variant rtt_p50_us rtt_p99_us (sockperf ping-pong --full-rtt)",
        &lines,
    )?;
    Ok(rtt)
}

/// ms of each ADD, [without weir, with weir], alternating which goes first.
fn add_times(bed: &Bed, s: &Settings, raw: &Raw) -> Result<[Vec<f64>; 3]> {
    bed.set_mode(Variant::Pass)?;
    let mut adds: [Vec<f64>; 3] = Default::default();
    let mut lines = Vec::new();
    let nodes = [
        ("without-weir", &bed.unsplit_node, "wbu"),
        ("with-weir", &bed.split_node, "wbs"),
        ("with-weir-tcx", &bed.tcx_node, "wbt"),
    ];
    for i in 0..s.adds {
        for k in rotation(&[0, 1, 2], i) {
            let (name, node, tag) = nodes[k];
            let ms = timed_add(node, tag, i)?;
            adds[k].push(ms);
            lines.push(format!("{i} {name} {ms:.3}"));
        }
    }
    raw.write(
        "add.raw",
        "i chain add_ms (cnitool ADD of bridge+host-local[+weir (tc|tcx)], fresh netns)",
        &lines,
    )?;
    eprintln!("weir-bench: {} ADDs done", 3 * s.adds);
    Ok(adds)
}

/// The results table (markdown) with the targets, and the ADD breakdown.
fn summary(
    s: &Settings,
    tput: &Throughput,
    ebpf: &[EbpfTime; 3],
    rtt: &Rtts,
    adds: &[Vec<f64>; 3],
    parts: &[(&str, f64, String)],
) -> Result<String> {
    use Variant::{Bare, Count, CountIn, CountOut, Pass, PassIn, PassOut, Unsplit};
    // Every variant but the unsplit one, in table order (Variant::ALL's).
    const COMPARED: [Variant; 7] = [PassIn, PassOut, CountIn, CountOut, Bare, Pass, Count];
    let cells = |f: &dyn Fn(Variant) -> String| COMPARED.map(f).join(" | ");
    let rate = s.rate_gbps;
    let mut out = String::new();
    writeln!(
        out,
        "| measure | unsplit | one pod split, pass-through (default), into it | one pod split, pass-through, out of it | one pod split, counting, into it | one pod split, counting, out of it | both split, no program | both split, pass-through | both split, counting | target | result (one pod pass-through in; out; counting in; out; both counting) |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")?;
    let at = |v: Variant| v as usize;
    // The targets are for traffic through a split pod (the one-pod
    // variants); both pods split on one node is the worst case, judged the
    // same way.
    let verdicts = |ok: &dyn Fn(Variant) -> bool| {
        [PassIn, PassOut, CountIn, CountOut]
            .map(ok)
            .into_iter()
            .chain([ok(Count) && ok(Pass)])
            .map(verdict)
            .collect::<Vec<_>>()
            .join("; ")
    };
    writeln!(
        out,
        "| TCP throughput, Gbit/s | {} | | |",
        medians(tput.gbps.iter())
    )?;
    let tput_ratio = |v: Variant| paired_ci(&tput.gbps[at(v)], &tput.gbps[at(Unsplit)], ratio);
    writeln!(
        out,
        "| throughput ratio to unsplit (95 % CI) | 1 | {} | >= {MIN_THROUGHPUT_RATIO} | {} |",
        cells(&|v| show(tput_ratio(v), 3)),
        verdicts(&|v| tput_ratio(v).0 >= MIN_THROUGHPUT_RATIO)
    )?;
    let cpu = &tput.cpu_s_per_gb;
    writeln!(
        out,
        "| CPU s per GB, client + server (ratio to unsplit, 95 % CI) | {:.3} | {} | (reported) | |",
        med(&cpu[at(Unsplit)]),
        cells(&|v| {
            let r = paired_ci(&cpu[at(v)], &cpu[at(Unsplit)], ratio);
            format!("{:.3}: {}", med(&cpu[at(v)]), show(r, 3))
        })
    )?;
    let fixed = &tput.fixed_cpu_s_per_gb;
    let fixed_ratio = |v: Variant| paired_ci(&fixed[at(v)], &fixed[at(Unsplit)], ratio);
    writeln!(
        out,
        "| CPU s per GB at a fixed {rate} Gbit/s (ratio to unsplit, 95 % CI) | {:.3} | {} | (reported) | |",
        med(&fixed[at(Unsplit)]),
        cells(&|v| format!("{:.3}: {}", med(&fixed[at(v)]), show(fixed_ratio(v), 3)))
    )?;
    // Where the CPU is the bound, throughput scales as 1 / (CPU per byte).
    let cpu_bound = |v: Variant| {
        let (m, lo, hi) = fixed_ratio(v);
        (1.0 / m, 1.0 / hi, 1.0 / lo)
    };
    writeln!(
        out,
        "| CPU-bound throughput ratio: 1 / the ratio above (95 % CI) | 1 | {} | >= {MIN_THROUGHPUT_RATIO} | {} |",
        cells(&|v| show(cpu_bound(v), 3)),
        verdicts(&|v| cpu_bound(v).0 >= MIN_THROUGHPUT_RATIO)
    )?;
    writeln!(
        out,
        "| Gbit/s reached at the fixed rate, lowest round | {} | (reported) | |",
        tput.fixed_gbps
            .iter()
            .map(|g| format!("{:.2}", g.iter().copied().fold(f64::INFINITY, f64::min)))
            .collect::<Vec<_>>()
            .join(" | ")
    )?;
    // measured for the both-split variants only
    let ebpf_cell = |v: Variant, f: &dyn Fn(&EbpfTime) -> String| match v {
        Bare => f(&ebpf[0]),
        Pass => f(&ebpf[1]),
        Count => f(&ebpf[2]),
        _ => String::new(),
    };
    writeln!(
        out,
        "| weir's eBPF per frame (kernel BPF stats, one run each), ns | | {} | (reported) | |",
        cells(&|v| ebpf_cell(v, &|e| format!("{:.0}", e.ns_per_run)))
    )?;
    writeln!(
        out,
        "| weir's eBPF CPU at that rate, % of one CPU | | {} | (reported) | |",
        cells(&|v| ebpf_cell(v, &|e| format!("{:.2}", e.cpu_pct)))
    )?;
    for (proto, per) in ["UDP", "TCP"].iter().zip(rtt) {
        let p50 = |v: Variant| &per[at(v)].0;
        writeln!(
            out,
            "| {proto} round trip p50, µs | {} | | |",
            medians(per.iter().map(|(p50, _)| p50))
        )?;
        let added = |v: Variant| paired_ci(p50(v), p50(Unsplit), diff);
        writeln!(
            out,
            "| {proto} p50 added, µs (95 % CI) | 0 | {} | <= +{MAX_ADDED_RTT_P50_US} | {} |",
            cells(&|v| show(added(v), 2)),
            verdicts(&|v| added(v).0 <= MAX_ADDED_RTT_P50_US)
        )?;
        writeln!(
            out,
            "| {proto} round trip p99, µs | {} | (reported) | |",
            medians(per.iter().map(|(_, p99)| p99))
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "| chain ADD | without weir | with weir (tc) | with weir (tcx) | weir's cost (tc; tcx) | target | result |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---|---|")?;
    for (q, target) in [(50.0, MAX_ADDED_ADD_P50_MS), (99.0, MAX_ADDED_ADD_P99_MS)] {
        let (without, with, tcx) = (pct(&adds[0], q), pct(&adds[1], q), pct(&adds[2], q));
        writeln!(
            out,
            "| p{q}, ms | {without:.1} | {with:.1} | {tcx:.1} | {:+.1}; {:+.1} | <= +{target} ms | {} |",
            with - without,
            tcx - without,
            verdict(with - without <= target)
        )?;
    }
    writeln!(out, "\nwhere weir's share of an ADD goes (medians):\n")?;
    writeln!(out, "| part | ms | how |")?;
    writeln!(out, "|---|---:|---|")?;
    writeln!(
        out,
        "| chain ADD with weir (tc) minus without, p50 | {:.1} | the timed ADDs above |",
        med(&adds[1]) - med(&adds[0])
    )?;
    for (name, ms, how) in parts {
        writeln!(out, "| {name} | {ms:.1} | {how} |")?;
    }
    Ok(out)
}

/// Runs the loader probe `samples` times (each a fresh process, as every ADD
/// is) per phase and returns the medians.
fn loader_phases(probe: &Path, samples: usize, raw: &Raw) -> Result<Vec<(&'static str, f64)>> {
    let root = PathBuf::from(BPF_ROOT).join("loader-probe");
    let phases = [
        (
            "read",
            "once per node: reading /sys/kernel/btf/vmlinux (I/O only)",
        ),
        (
            "btf",
            "once per node: aya Btf::from_sys_fs(), read + parse, as EbpfLoader::new() does",
        ),
        ("features", "once per node: aya's feature probing"),
        (
            "load",
            "once per node: loading the split program (BTF, features, object, maps, verifier, pins)",
        ),
    ];
    let mut lines = Vec::new();
    let mut medians = Vec::new();
    for (phase, label) in phases {
        let mut v = Vec::new();
        for _ in 0..samples {
            // a fresh root each time: the load happens once per node, so
            // after the first sample it would only open pins
            let _ = fs::remove_dir_all(&root);
            let out = netns::run(Command::new(probe).arg(phase).arg(&root))?;
            let ms: f64 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .context("probe output")?;
            lines.push(format!("{phase} {ms:.3}"));
            v.push(ms);
        }
        medians.push((label, med(&v)));
    }
    let _ = fs::remove_dir_all(&root);
    raw.write(
        "loader.raw",
        "phase ms (each line a fresh weir-loader-probe process)",
        &lines,
    )?;
    Ok(medians)
}

/// A few more ADDs through the chain with weir, the plugin run under strace
/// filtered by seccomp (only the marker syscalls stop it, so the overhead is
/// small): medians of the chain's time and of the phases between the markers.
fn traced_adds(
    node: &Node,
    weir: &Path,
    samples: usize,
    raw: &Raw,
) -> Result<Vec<(&'static str, f64)>> {
    let weir = fs::canonicalize(weir)?;
    let dir = node.work_dir.join("strace");
    fs::create_dir_all(&dir)?;
    let plugin = node.work_dir.join("bin/weir");
    let script = format!(
        "#!/bin/sh\n[ \"$CNI_COMMAND\" = ADD ] || exec {w} \"$@\"\n\
         exec strace -f --seccomp-bpf -q -ttt -T -e trace=execve,bpf,exit_group -o {d}/\"${{CNI_NETNS##*/}}\" {w} \"$@\"\n",
        w = weir.display(),
        d = dir.display()
    );
    fs::remove_file(&plugin)?;
    fs::write(&plugin, script)?;
    fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let chain: Result<Vec<f64>> = (0..samples)
        .map(|i| timed_add(node, "wbs", 1000 + i))
        .collect();
    fs::remove_file(&plugin)?;
    std::os::unix::fs::symlink(&weir, &plugin)?;

    const LABELS: [&str; 7] = [
        "chain ADD with weir, these traced ADDs",
        "weir process, exec until reaped",
        "- start, state, split by netlink (until the first bpf())",
        "- node program lookup, both stubs loaded (verifier)",
        "- attach (tc filters by netlink) and pins",
        "- state record, up to exit_group",
        "- exit_group until reaped",
    ];
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); LABELS.len()];
    let mut lines = Vec::new();
    for (i, chain_ms) in chain?.into_iter().enumerate() {
        let text = fs::read_to_string(dir.join(format!("wbs-add{}", 1000 + i)))?;
        let phases =
            trace_phases(&text).with_context(|| format!("unexpected strace output:\n{text}"))?;
        let row: Vec<f64> = [chain_ms].into_iter().chain(phases).collect();
        lines.push(
            row.iter()
                .map(|ms| format!("{ms:.3}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        for (v, ms) in per.iter_mut().zip(row) {
            v.push(ms);
        }
    }
    raw.write(
        "add-phases.raw",
        &format!("ms per traced ADD: {}", LABELS.join(" | ")),
        &lines,
    )?;
    Ok(LABELS.into_iter().zip(per.iter().map(|v| med(v))).collect())
}

/// The phases of one traced weir ADD, in ms, in the order of the labels above
/// (after the chain's time).
fn trace_phases(text: &str) -> Option<[f64; 6]> {
    // "<pid> <unix time> <call>(<args>) = <ret> <<duration>>" or "... +++ exited with 0 +++"
    let calls: Vec<(f64, &str, f64)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_ascii_whitespace();
            let (_pid, ts_text) = (f.next()?, f.next()?);
            let ts: f64 = ts_text.parse().ok()?;
            let call = l[l.find(ts_text)? + ts_text.len()..].trim_start();
            let dur = call
                .rsplit_once('<')
                .and_then(|(_, d)| d.trim_end_matches('>').parse().ok())
                .unwrap_or(0.0);
            Some((ts, call, dur))
        })
        .collect();
    let find = |pred: &dyn Fn(&str) -> bool, from: usize| {
        calls
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, c)| pred(c.1))
            .map(|(i, _)| i)
    };
    let last = |pred: &dyn Fn(&str) -> bool, from: usize, to: usize| {
        (from..to).rev().find(|&i| pred(calls[i].1))
    };
    let exec = find(&|c| c.starts_with("execve("), 0)?;
    let first_bpf = find(&|c| c.starts_with("bpf("), exec)?;
    let exit = find(&|c| c.starts_with("exit_group("), first_bpf)?;
    let loaded = last(&|c| c.starts_with("bpf(BPF_PROG_LOAD"), first_bpf, exit)?;
    let pinned = last(&|c| c.starts_with("bpf(BPF_OBJ_PIN"), loaded, exit)?;
    let reaped = calls.len() - 1;
    if !calls[reaped].1.starts_with("+++ exited") {
        return None;
    }
    let t = |i: usize| calls[i].0;
    let end = |i: usize| calls[i].0 + calls[i].2;
    Some(
        [
            t(reaped) - t(exec),
            t(first_bpf) - t(exec),
            end(loaded) - t(first_bpf),
            end(pinned) - end(loaded),
            t(exit) - end(pinned),
            t(reaped) - t(exit),
        ]
        .map(|s| s * 1e3),
    )
}
