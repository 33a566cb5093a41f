//! `make bench-agent` (via bench/agent.sh): what the node agent and flannel's
//! VXLAN monitor cost, measured in one run with the variants alternating.
//!
//! Two nodes joined like flannel's VXLAN backend joins them (weir_e2e::flannel),
//! a pod on each node chained through bridge + host-local + weir by cnitool,
//! and more pods on node A so the agent has node state to name flows with.
//!
//! 1. Underlay TCP throughput across VXLAN, pod on A to pod on B (iperf3, one
//!    stream), with the monitor attached to both nodes' underlay (TCX, pinned,
//!    as the agent attaches it) and detached, alternating round by round.
//!    One more attached run with BPF_ENABLE_STATS on gives the monitor
//!    programs' own CPU time (read with bpftool).
//! 2. The agent's memory with N active flows: `weir_flows` (the pods' flow
//!    map) is filled with N synthetic flows of the node's real pods (half
//!    egress, half ingress, over all of them), and `weir_vx_flows` with the
//!    overlay leg of each one (N more), so the agent's join finds a VNI and
//!    outer addresses for every flow and names every peer (a peers file for
//!    the remote pods); the run's real flows are removed first. The release agent runs in node A's namespace with
//!    `--interval 1s`; VmRSS and VmHWM are read from /proc after a window of
//!    collections.
//! 3. CPU per collection: utime+stime of the agent over the window divided by
//!    the collections it made, and the agent's own
//!    `weir_collection_duration_seconds`.
//!
//! The flow counts alternate (0, 10k, 100k, then rotated) over repetitions,
//! each with a fresh agent process. Raw numbers go to `agent-*.raw` in the
//! results directory, the summary table to stdout. Everything made here is
//! removed on the way out.

use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use weir_e2e::agent::{AgentProcess, Endpoint};
use weir_e2e::bpf_stats;
use weir_e2e::chain::{ChainSpec, Node};
use weir_e2e::flannel::{self, FlannelNode};
use weir_e2e::host;
use weir_e2e::netns::{self, Netns};
use weir_e2e::report::{Daemon, Raw, loadavg, med, pct, uname_r, verdict};
use weir_ebpf::BpfRoot;
use weir_ebpf::abi::{self, FlowCounters, FlowKey, PodMode};
use weir_ebpf::maps::NodeMaps;
use weir_ebpf::vxlan::{self, VxlanMaps, VxlanParams};
use weir_ebpf::vxlan_abi::{self, VxFlowCounters, VxFlowKey};

/// The bench's own bpf roots live under this directory (one per node).
const BPF_PARENT: &str = "/sys/fs/bpf/weir-bench-agent";
const IPERF_PORT: &str = "5211";
const AGENT_LISTEN: &str = "127.0.0.1:9475";
const UNDERLAY_A: &str = "192.168.100.1";
const UNDERLAY_B: &str = "192.168.100.2";
const SUBNET_A: &str = "10.245.0.0/24";
const SUBNET_B: &str = "10.245.1.0/24";
/// flanneld sets the pods' MTU to the underlay's minus VXLAN's 50 bytes.
const POD_MTU: &str = "1450";
/// Remote (node B) pod addresses the synthetic flows talk to.
const REMOTE_PEERS: u32 = 200;

// Targets of the issue.
const MIN_THROUGHPUT_RATIO: f64 = 0.98;
const MAX_RSS_MIB_AT_10K: f64 = 30.0;

struct Settings {
    rounds: usize,
    tcp_secs: u32,
    reps: usize,
    window_secs: u64,
    pods: usize,
    sizes: Vec<usize>,
    weir: PathBuf,
    agent: PathBuf,
    results: PathBuf,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let usage =
            "usage: weir-bench-agent <weir plugin binary> <weir-operator binary> <results dir>";
        let mut args = std::env::args_os().skip(1);
        let weir = PathBuf::from(args.next().context(usage)?);
        let agent = PathBuf::from(args.next().context(usage)?);
        let results = PathBuf::from(args.next().context(usage)?);
        let num = |name: &str, default: usize| -> Result<usize> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .with_context(|| format!("{name}={v:?} is not a number")),
                Err(_) => Ok(default),
            }
        };
        let sizes = match std::env::var("WEIR_BENCH_AGENT_FLOWS") {
            Ok(v) => v
                .split(',')
                .map(|s| {
                    s.trim()
                        .parse::<usize>()
                        .with_context(|| format!("WEIR_BENCH_AGENT_FLOWS={v:?}"))
                })
                .collect::<Result<Vec<_>>>()?,
            Err(_) => vec![0, 10_000, 100_000],
        };
        if let Some(too_many) = sizes.iter().find(|n| **n > 120_000) {
            bail!(
                "{too_many} flows do not fit the flow maps ({} entries, LRU)",
                abi::FLOWS_MAX_ENTRIES
            );
        }
        Ok(Self {
            rounds: num("WEIR_BENCH_AGENT_ROUNDS", 16)?.max(1),
            tcp_secs: num("WEIR_BENCH_AGENT_TCP_SECS", 3)?.max(1) as u32,
            reps: num("WEIR_BENCH_AGENT_REPS", 3)?.max(1),
            window_secs: num("WEIR_BENCH_AGENT_WINDOW_SECS", 12)?.max(2) as u64,
            pods: num("WEIR_BENCH_AGENT_PODS", 100)?.clamp(1, 200),
            sizes,
            weir,
            agent,
            results,
        })
    }
}

// --- raw bpf(2) on the pinned maps -------------------------------------------
//
// The e2e crate reaches the maps only through weir-ebpf, which reads them; the
// bench writes synthetic flows with three plain bpf(2) commands instead.

mod bpf {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::path::Path;

    use anyhow::{Context, Result, bail};

    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_ANY: u64 = 0;

    #[repr(C)]
    #[derive(Default)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        pad: u32,
    }

    #[repr(C)]
    #[derive(Default)]
    struct ElemAttr {
        map_fd: u32,
        pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }

    /// The head of `struct bpf_map_info`.
    #[repr(C)]
    #[derive(Default, Debug)]
    struct MapInfo {
        map_type: u32,
        id: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        name: [u8; 16],
    }

    fn sys<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
        // SAFETY: `attr` is a properly sized, zero-padded prefix of union
        // bpf_attr for `cmd`; the kernel reads at most size_of::<T>() bytes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut T,
                size_of::<T>() as libc::c_uint,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    /// A pinned hash map with keys `K` and values `V`, sizes checked.
    pub struct Map<K, V> {
        fd: OwnedFd,
        _types: std::marker::PhantomData<(K, V)>,
    }

    impl<K: Copy, V: Copy> Map<K, V> {
        pub fn open(path: &Path) -> Result<Self> {
            let c_path = CString::new(path.as_os_str().as_encoded_bytes())?;
            let mut attr = ObjGetAttr {
                pathname: c_path.as_ptr() as u64,
                ..Default::default()
            };
            let fd = sys(BPF_OBJ_GET, &mut attr)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            // SAFETY: BPF_OBJ_GET returned a new fd that we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            let mut info = MapInfo::default();
            let mut attr = InfoAttr {
                bpf_fd: fd.as_raw_fd() as u32,
                info_len: size_of::<MapInfo>() as u32,
                info: &mut info as *mut MapInfo as u64,
            };
            sys(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("map info")?;
            if (info.key_size as usize, info.value_size as usize)
                != (size_of::<K>(), size_of::<V>())
            {
                bail!(
                    "{}: key/value sizes {}/{} differ from this build's ABI ({}/{})",
                    path.display(),
                    info.key_size,
                    info.value_size,
                    size_of::<K>(),
                    size_of::<V>()
                );
            }
            Ok(Self {
                fd,
                _types: std::marker::PhantomData,
            })
        }

        pub fn insert(&self, key: &K, value: &V) -> Result<()> {
            let mut attr = ElemAttr {
                map_fd: self.fd.as_raw_fd() as u32,
                key: key as *const K as u64,
                value: value as *const V as u64,
                flags: BPF_ANY,
                ..Default::default()
            };
            sys(BPF_MAP_UPDATE_ELEM, &mut attr).context("map update")?;
            Ok(())
        }

        /// Deletes every entry; returns how many there were.
        pub fn clear(&self) -> Result<usize> {
            let mut keys: Vec<K> = Vec::new();
            // SAFETY: K is plain data (a map key); the kernel fills it.
            let mut next: K = unsafe { std::mem::zeroed() };
            loop {
                let mut attr = ElemAttr {
                    map_fd: self.fd.as_raw_fd() as u32,
                    key: keys.last().map_or(0, |k| k as *const K as u64),
                    value: &mut next as *mut K as u64,
                    ..Default::default()
                };
                match sys(BPF_MAP_GET_NEXT_KEY, &mut attr) {
                    Ok(_) => keys.push(next),
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
                    Err(e) => return Err(e).context("map get_next_key"),
                }
            }
            for k in &keys {
                self.remove(k)?;
            }
            Ok(keys.len())
        }

        /// False when the key was not there.
        pub fn remove(&self, key: &K) -> Result<bool> {
            let mut attr = ElemAttr {
                map_fd: self.fd.as_raw_fd() as u32,
                key: key as *const K as u64,
                ..Default::default()
            };
            match sys(BPF_MAP_DELETE_ELEM, &mut attr) {
                Ok(_) => Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
                Err(e) => Err(e).context("map delete"),
            }
        }
    }
}

// --- the test bed ------------------------------------------------------------

struct Pod {
    ns: Netns,
    ip: Ipv4Addr,
    id: u32,
}

/// Field order is drop order after `Drop::drop` DELs the pods: the iperf
/// server, the pods' namespaces, then the nodes (namespaces, work dirs, pins).
struct Bed {
    iperf: Option<Daemon>,
    pods_a: Vec<Pod>,
    pod_b: Pod,
    a: Node,
    b: Node,
    a_ifindex: u32,
}

impl Drop for Bed {
    /// DEL every pod through its chain, as a runtime would, so no cnitool
    /// result cache or IPAM lease outlives the run.
    fn drop(&mut self) {
        drop(self.iperf.take());
        for pod in &self.pods_a {
            let _ = self.a.del(&pod.ns.path(), "eth0");
        }
        let _ = self.b.del(&self.pod_b.ns.path(), "eth0");
    }
}

fn node(tag: &str, subnet: &str, weir: &Path) -> Result<Node> {
    let mut spec = ChainSpec::new("1.1.0", subnet);
    // The plugin's default log level, as in production (the harness uses debug).
    spec.weir_options = json!({ "logLevel": "info" });
    let mut node = Node::new(tag, &spec, weir)?;
    node.bpf_root = Path::new(BPF_PARENT).join(tag);
    node.write_conflist(&spec)?;
    Ok(node)
}

/// A pod chained by cnitool; `count` turns weir's counting on for it (the
/// others stay in pass-through: their own chatter would add flows).
fn add_pod(node: &Node, ns_name: &str, k8s_name: &str, count: bool) -> Result<Pod> {
    let ns = Netns::create(ns_name)?;
    let result = node.add(&ns, "eth0", "bench", k8s_name)?.ok()?.json()?;
    let IpAddr::V4(ip) = Node::pod_ipv4(&result)? else {
        bail!("no IPv4 for {k8s_name}")
    };
    ns.exec(&["ip", "link", "set", "eth0", "mtu", POD_MTU])?;
    let id = node.pod_id(&ns)?;
    if count {
        NodeMaps::open(&BpfRoot::new(&node.bpf_root))?.set_pod_mode(id, PodMode::Count)?;
    }
    Ok(Pod { ns, ip, id })
}

fn ifindex(ns: &Netns, dev: &str) -> Result<u32> {
    let json: Value = serde_json::from_str(&ns.exec(&["ip", "-j", "link", "show", dev])?)?;
    json[0]["ifindex"]
        .as_u64()
        .map(|i| i as u32)
        .context("no ifindex")
}

fn setup(s: &Settings) -> Result<Bed> {
    let a = node("wbaa", SUBNET_A, &s.weir)?;
    let b = node("wbab", SUBNET_B, &s.weir)?;
    flannel::connect(
        &FlannelNode {
            ns: &a.ns,
            underlay_ip: UNDERLAY_A,
            pod_subnet: SUBNET_A,
        },
        &FlannelNode {
            ns: &b.ns,
            underlay_ip: UNDERLAY_B,
            pod_subnet: SUBNET_B,
        },
    )?;
    let pod_b = add_pod(&b, "wbab-p0", "server", true)?;
    let mut pods_a = Vec::new();
    let started = Instant::now();
    for i in 0..s.pods {
        pods_a.push(add_pod(
            &a,
            &format!("wbaa-p{i}"),
            &format!("web-{i}"),
            i == 0,
        )?);
    }
    eprintln!(
        "weir-bench-agent: {} pods on node A in {:.1} s",
        s.pods,
        started.elapsed().as_secs_f64()
    );
    let a_ifindex = ifindex(&a.ns, "eth0")?;
    let mut bed = Bed {
        iperf: None,
        pods_a,
        pod_b,
        a,
        b,
        a_ifindex,
    };
    let mut server = Daemon(
        bed.pod_b
            .ns
            .command(&["iperf3", "-s", "-p", IPERF_PORT])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?,
    );
    std::thread::sleep(Duration::from_millis(500));
    if let Some(status) = server.0.try_wait()? {
        bail!("iperf3 server exited at once ({status})");
    }
    bed.iperf = Some(server);
    // Across the overlay before anything is measured.
    weir_e2e::chain::ping(&bed.pods_a[0].ns, IpAddr::V4(bed.pod_b.ip), 3)
        .context("pod A to pod B across flannel.1")?;
    Ok(bed)
}

fn params() -> VxlanParams {
    VxlanParams {
        port: flannel::PORT,
    }
}

/// Attaches or detaches the monitor on both nodes' underlay, as the agent
/// does (from inside the node's namespace).
fn set_monitor(bed: &Bed, on: bool) -> Result<()> {
    for node in [&bed.a, &bed.b] {
        let root = BpfRoot::new(&node.bpf_root);
        if on {
            node.ns
                .run(move || vxlan::attach(&root, "eth0", &params()))??;
        } else {
            node.ns.run(move || vxlan::detach(&root, "eth0"))??;
        }
    }
    Ok(())
}

/// VXLAN packets the monitor counted on node A's underlay, both ways.
fn monitor_packets(bed: &Bed) -> Result<u64> {
    let maps = VxlanMaps::open(&BpfRoot::new(&bed.a.bpf_root))?;
    Ok(maps
        .per_interface()?
        .iter()
        .filter(|(i, _)| *i == bed.a_ifindex)
        .map(|(_, c)| c.encap_packets + c.decap_packets)
        .sum())
}

// --- 1. throughput -----------------------------------------------------------

/// Gbit/s the server received, and the sender's retransmissions.
fn iperf(bed: &Bed, secs: u32) -> Result<(f64, u64)> {
    let ip = bed.pod_b.ip.to_string();
    let secs = secs.to_string();
    let out = netns::run(&mut bed.pods_a[0].ns.command(&[
        "iperf3", "-c", &ip, "-p", IPERF_PORT, "-t", &secs, "-O", "1", "-J",
    ]))?;
    let j: Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    let bps = j["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no throughput in {j}"))?;
    Ok((
        bps / 1e9,
        j["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    ))
}

struct Throughput {
    off: Vec<f64>,
    on: Vec<f64>,
}

fn throughput(bed: &Bed, s: &Settings, raw: &Raw) -> Result<Throughput> {
    // Pins the monitor's maps once, so "off" rounds can read them too.
    set_monitor(bed, true)?;
    let mut t = Throughput {
        off: Vec::new(),
        on: Vec::new(),
    };
    let mut lines = Vec::new();
    for round in 0..s.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for on in order {
            set_monitor(bed, on)?;
            let before = monitor_packets(bed)?;
            let (gbps, retrans) = iperf(bed, s.tcp_secs)?;
            let counted = monitor_packets(bed)? - before;
            // The monitor must have seen the run when attached, and nothing when not.
            if on && counted < 1000 {
                bail!("round {round}: monitor attached but counted only {counted} VXLAN packets");
            }
            if !on && counted != 0 {
                bail!("round {round}: monitor detached but counted {counted} VXLAN packets");
            }
            let name = if on { "attached" } else { "detached" };
            eprintln!(
                "  round {round} monitor {name}: {gbps:.3} Gbit/s, {retrans} retransmits, {counted} VXLAN packets counted"
            );
            lines.push(format!(
                "{round} {name} {gbps:.3} {retrans} {counted} {}",
                loadavg().replace(' ', ",")
            ));
            if on {
                t.on.push(gbps)
            } else {
                t.off.push(gbps)
            }
        }
    }
    set_monitor(bed, true)?;
    raw.write(
        "agent-throughput.raw",
        "round monitor gbit_per_s retransmits vxlan_packets_counted_on_node_a loadavg_after (iperf3 pod A -> pod B across flannel.1, one TCP stream)",
        &lines,
    )?;
    Ok(t)
}

/// The monitor's own CPU time during one more run with it attached, from the
/// kernel's per-program statistics (BPF_ENABLE_STATS, on for this run only).
struct MonitorCpu {
    runs: u64,
    run_time_ns: u64,
    wire_packets: u64,
    wall_s: f64,
    gbps: f64,
}

/// (prog id, run_time_ns, run_cnt) of the four monitor programs (both nodes, both hooks).
fn monitor_prog_stats(bed: &Bed) -> Result<Vec<(u64, u64, u64)>> {
    let mut out = Vec::new();
    for node in [&bed.a, &bed.b] {
        let dir = vxlan::links_dir(&BpfRoot::new(&node.bpf_root), "eth0")?;
        for pin in [vxlan::INGRESS_PIN, vxlan::EGRESS_PIN] {
            let path = dir.join(pin);
            let link: Value = serde_json::from_slice(
                &netns::run(
                    std::process::Command::new("bpftool")
                        .args(["-j", "link", "show", "pinned"])
                        .arg(&path),
                )?
                .stdout,
            )?;
            let id = link["prog_id"]
                .as_u64()
                .with_context(|| format!("no prog_id for {}: {link}", path.display()))?;
            let prog = bpf_stats::program(id)?;
            out.push((id, prog.run_time_ns, prog.run_cnt));
        }
    }
    Ok(out)
}

fn monitor_cpu(bed: &Bed, s: &Settings, raw: &Raw) -> Result<Option<MonitorCpu>> {
    if host::which("bpftool").is_none() {
        eprintln!("weir-bench-agent: bpftool not found: no per-program CPU time of the monitor");
        return Ok(None);
    }
    set_monitor(bed, true)?;
    let stats = bpf_stats::enable()?;
    let before = monitor_prog_stats(bed)?;
    let packets_before = monitor_packets(bed)?;
    let started = Instant::now();
    let (gbps, _) = iperf(bed, s.tcp_secs)?;
    let wall_s = started.elapsed().as_secs_f64();
    let after = monitor_prog_stats(bed)?;
    let wire_packets = monitor_packets(bed)? - packets_before;
    drop(stats);
    let mut lines = Vec::new();
    let (mut run_time_ns, mut runs) = (0, 0);
    for ((id, t0, c0), (_, t1, c1)) in before.iter().zip(&after) {
        lines.push(format!("{id} {} {}", t1 - t0, c1 - c0));
        run_time_ns += t1 - t0;
        runs += c1 - c0;
    }
    if runs == 0 {
        bail!("the monitor programs did not run during the stats run");
    }
    lines.push(format!("# total {run_time_ns} ns, {runs} runs, {wire_packets} wire packets on node A, {wall_s:.3} s wall, {gbps:.3} Gbit/s"));
    raw.write(
        "agent-monitor-cpu.raw",
        "prog_id run_time_ns run_cnt (BPF_ENABLE_STATS during one iperf3 run, monitor on both nodes)",
        &lines,
    )?;
    Ok(Some(MonitorCpu {
        runs,
        run_time_ns,
        wire_packets,
        wall_s,
        gbps,
    }))
}

// --- 2./3. the agent with N flows -------------------------------------------

/// Synthetic flows of node A's pods: flow `i` is half `i / 2` of a
/// conversation of pod `(i / 2) % pods` with a remote pod on node B, egress
/// for even `i`, ingress for odd; each has the overlay leg VXLAN would give
/// it (encap on A's underlay for egress, decap for ingress).
struct Synth {
    pods: Vec<(u32, Ipv4Addr)>,
    ifindex: u32,
    now_ns: u64,
    flows: bpf::Map<FlowKey, FlowCounters>,
    vx_flows: bpf::Map<VxFlowKey, VxFlowCounters>,
    /// Keys 0..filled are in the maps.
    filled: usize,
}

fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn remote_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 245, 1, 10 + (k % REMOTE_PEERS as usize) as u8)
}

impl Synth {
    fn new(bed: &Bed) -> Result<Self> {
        let root = BpfRoot::new(&bed.a.bpf_root);
        Ok(Self {
            pods: bed.pods_a.iter().map(|p| (p.id, p.ip)).collect(),
            ifindex: bed.a_ifindex,
            now_ns: boottime_ns(),
            flows: bpf::Map::open(&root.map_path(abi::FLOWS_MAP))?,
            vx_flows: bpf::Map::open(&root.map_path(vxlan_abi::FLOWS_MAP))?,
            filled: 0,
        })
    }

    fn keys(&self, i: usize) -> (FlowKey, VxFlowKey) {
        let conv = i / 2;
        let egress = i.is_multiple_of(2);
        let (pod_id, pod_ip) = self.pods[conv % self.pods.len()];
        let k = conv / self.pods.len();
        let (pod_ip, remote) = (IpAddr::V4(pod_ip), IpAddr::V4(remote_ip(k)));
        // (remote, local port) is unique per conversation of the pod
        let (local_port, remote_port) = (1024 + (k / REMOTE_PEERS as usize) as u16, 443u16);
        let mut key = FlowKey {
            pod_id,
            proto: 6,
            ..Default::default()
        };
        let mut vx = VxFlowKey {
            vni: flannel::VNI,
            ifindex: self.ifindex,
            inner_proto: 6,
            ..Default::default()
        };
        let (a, b): (IpAddr, IpAddr) = (
            UNDERLAY_A.parse().expect("ip"),
            UNDERLAY_B.parse().expect("ip"),
        );
        if egress {
            key.direction = abi::Direction::FromPod as u8;
            key.set_addrs(pod_ip, remote);
            (key.sport, key.dport) = (local_port, remote_port);
            vx.direction = vxlan_abi::VxDirection::Encap as u8;
            vx.set_outer(a, b);
        } else {
            key.direction = abi::Direction::ToPod as u8;
            key.set_addrs(remote, pod_ip);
            (key.sport, key.dport) = (remote_port, local_port);
            vx.direction = vxlan_abi::VxDirection::Decap as u8;
            vx.set_outer(b, a);
        }
        vx.set_inner(key.src_ip(), key.dst_ip());
        (vx.inner_sport, vx.inner_dport) = (key.sport, key.dport);
        (key, vx)
    }

    fn insert(&self, i: usize) -> Result<()> {
        let (key, vx) = self.keys(i);
        let packets = 10 + (i % 100) as u64;
        let bytes = packets * 1_000;
        let counters = FlowCounters {
            packets,
            bytes,
            first_seen_ns: self.now_ns - 60_000_000_000,
            last_seen_ns: self.now_ns,
            tcp_flags: 0x1b,
            pad: 0,
        };
        let encap = vx.direction == vxlan_abi::VxDirection::Encap as u8;
        let outer = bytes + 50 * packets;
        let vx_counters = VxFlowCounters {
            packets,
            bytes: outer,
            first_seen_ns: counters.first_seen_ns,
            last_seen_ns: counters.last_seen_ns,
            encap_packets: if encap { packets } else { 0 },
            encap_bytes: if encap { outer } else { 0 },
            decap_packets: if encap { 0 } else { packets },
            decap_bytes: if encap { 0 } else { outer },
            tcp_flags: 0x1b,
            pad: 0,
        };
        self.flows.insert(&key, &counters)?;
        self.vx_flows.insert(&vx, &vx_counters)
    }

    /// Exactly flows 0..n in the maps (besides the real ones of the run).
    fn fill(&mut self, n: usize) -> Result<()> {
        for i in self.filled..n {
            self.insert(i)?;
        }
        for i in n..self.filled {
            let (key, vx) = self.keys(i);
            self.flows.remove(&key)?;
            self.vx_flows.remove(&vx)?;
        }
        self.filled = n;
        Ok(())
    }

    /// The peers file naming the remote pods, as the agent reads it.
    fn peers_file(path: &Path) -> Result<()> {
        let mut peers = serde_json::Map::new();
        for k in 0..REMOTE_PEERS as usize {
            peers.insert(
                remote_ip(k).to_string(),
                json!({ "namespace": "remote", "pod": format!("peer-{k}"), "node": "node-b" }),
            );
        }
        fs::write(path, serde_json::to_vec(&Value::Object(peers))?)?;
        Ok(())
    }
}

/// The agent, started in node A's namespace; killed when dropped.
struct Agent {
    process: AgentProcess,
}

impl Agent {
    fn start(bed: &Bed, s: &Settings, peers: &Path) -> Result<Self> {
        let agent = s.agent.to_str().context("agent path")?;
        let mut cmd = bed.a.ns.command(&[
            agent,
            "agent",
            "run",
            "--node-name",
            "node-a",
            "--interval",
            "1s",
            "--listen",
            AGENT_LISTEN,
            "--no-kube",
        ]);
        cmd.arg("--state-dir")
            .arg(&bed.a.state_dir)
            .arg("--bpf-root")
            .arg(&bed.a.bpf_root)
            .arg("--peers-file")
            .arg(peers)
            .env_remove("RUST_LOG");
        let process = AgentProcess::spawn(
            cmd,
            &bed.a.work_dir.join("agent.log"),
            endpoint(&bed.a.ns),
            Duration::from_secs(15),
        )?;
        // nsenter execs the agent, so the child's pid is the agent's.
        let comm = fs::read_to_string(format!("/proc/{}/comm", process.pid()))?;
        if !comm.starts_with("weir-operator") {
            bail!("pid {} is {comm:?}, not the agent", process.pid());
        }
        Ok(Self { process })
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn log(&self) -> String {
        self.process.log()
    }

    /// utime + stime in clock ticks, all threads.
    fn cpu_ticks(&self) -> Result<u64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        let rest = stat.rsplit_once(')').context("malformed stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // fields 14 and 15 of stat(5); `rest` starts at field 3
        Ok(f.get(11).context("utime")?.parse::<u64>()?
            + f.get(12).context("stime")?.parse::<u64>()?)
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory_kib(&self) -> Result<(u64, u64)> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name}"))?;
            Ok(line
                .split_whitespace()
                .nth(1)
                .context(name.to_string())?
                .parse()?)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    fn stop(self) -> Result<()> {
        let log = self.log();
        let status = self.process.terminate()?;
        if !status.success() {
            bail!("agent exited with {status} on SIGTERM; log: {log}");
        }
        Ok(())
    }
}

fn endpoint(ns: &Netns) -> Endpoint<'_> {
    Endpoint {
        ns: Some(ns),
        addr: AGENT_LISTEN.parse().expect("AGENT_LISTEN is an address"),
    }
}

/// GET from inside the node namespace, where the agent listens.
fn http_get(ns: &Netns, path: &str) -> Result<String> {
    endpoint(ns).get(path, Duration::from_secs(30))
}

#[derive(Debug, Clone, Copy, Default)]
struct Scrape {
    collections: u64,
    errors: u64,
    duration_s: f64,
    pod_flows: u64,
    overlay_flows: u64,
}

fn scrape(ns: &Netns) -> Result<Scrape> {
    let text = http_get(ns, "/metrics")?;
    let value = |prefix: &str| -> Result<f64> {
        // (series without labels are written `name{} value`)
        let line = text
            .lines()
            .find(|l| {
                l.strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with("{} "))
            })
            .with_context(|| format!("no {prefix} in /metrics:\n{text}"))?;
        Ok(line.rsplit(' ').next().unwrap_or("").parse()?)
    };
    Ok(Scrape {
        collections: value("weir_collections_total")? as u64,
        errors: value("weir_collection_errors_total")? as u64,
        duration_s: value("weir_collection_duration_seconds")?,
        pod_flows: value(r#"weir_active_flows{source="pods"}"#)? as u64,
        overlay_flows: value(r#"weir_active_flows{source="overlay"}"#)? as u64,
    })
}

fn wait_collections(ns: &Netns, at_least: u64) -> Result<Scrape> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = scrape(ns)?;
        if s.collections >= at_least {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("the agent made only {} collections in 60 s", s.collections);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One agent run with `n` synthetic flows.
struct AgentRun {
    size: usize,
    rep: usize,
    pod_flows: u64,
    overlay_flows: u64,
    collections: u64,
    ticks: u64,
    cpu_ms_per_collection: f64,
    durations_ms: Vec<f64>,
    rss_kib: u64,
    hwm_kib: u64,
    /// After one GET /flows (the last repetition only): RSS, HWM, flows served, body bytes.
    after_flows: Option<(u64, u64, usize, usize)>,
}

fn agent_run(
    bed: &Bed,
    s: &Settings,
    synth: &mut Synth,
    peers: &Path,
    size: usize,
    rep: usize,
    check_flows: bool,
) -> Result<AgentRun> {
    synth.fill(size)?;
    let agent = Agent::start(bed, s, peers)?;
    let ns = &bed.a.ns;
    // Warm-up: the first collections attach-check and size the buffers.
    wait_collections(ns, 3)?;
    let ticks0 = agent.cpu_ticks()?;
    let first = scrape(ns)?;
    std::thread::sleep(Duration::from_secs(s.window_secs));
    let ticks1 = agent.cpu_ticks()?;
    let last = scrape(ns)?;
    let collections = last.collections - first.collections;
    if collections == 0 {
        bail!("no collection in {} s", s.window_secs);
    }
    let ticks = ticks1 - ticks0;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut durations_ms = vec![first.duration_s * 1e3, last.duration_s * 1e3];
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(1100));
        durations_ms.push(scrape(ns)?.duration_s * 1e3);
    }
    let (rss_kib, hwm_kib) = agent.memory_kib()?;
    let end = scrape(ns)?;
    if end.errors != 0 {
        bail!("{} failed collections; log: {}", end.errors, agent.log());
    }
    if (end.pod_flows as usize) < size || (end.overlay_flows as usize) < size {
        bail!(
            "the agent sees {} pod and {} overlay flows, {size} were written",
            end.pod_flows,
            end.overlay_flows
        );
    }
    let after_flows = if check_flows {
        let body = http_get(ns, "/flows")?;
        let flows: Vec<Value> = serde_json::from_str(&body)?;
        if size == 0 && std::env::var_os("WEIR_BENCH_AGENT_SAVE_FLOWS").is_some() {
            // The run's own (real) flows, for a look at what the data path made.
            fs::write(s.results.join("agent-flows-real.raw"), &body)?;
        }
        check_join(&flows, size)?;
        let (rss, hwm) = agent.memory_kib()?;
        Some((rss, hwm, flows.len(), body.len()))
    } else {
        None
    };
    agent.stop()?;
    Ok(AgentRun {
        size,
        rep,
        pod_flows: end.pod_flows,
        overlay_flows: end.overlay_flows,
        collections,
        ticks,
        cpu_ms_per_collection: ticks as f64 / hz * 1e3 / collections as f64,
        durations_ms,
        rss_kib,
        hwm_kib,
        after_flows,
    })
}

/// Every synthetic flow the agent served is named (pod from node state, peer
/// from the peers file) and joined with its overlay leg.
fn check_join(flows: &[Value], size: usize) -> Result<()> {
    let synthetic: Vec<&Value> = flows
        .iter()
        .filter(|f| f["protocol"] == 6 && (f["sourcePort"] == 443 || f["destinationPort"] == 443))
        .collect();
    if synthetic.len() != size {
        bail!(
            "/flows has {} synthetic flows, {size} were written",
            synthetic.len()
        );
    }
    for f in synthetic {
        let named =
            f["namespace"] == "bench" && f["pod"].as_str().is_some_and(|p| p.starts_with("web-"));
        let peer = f["peer"]["namespace"] == "remote";
        let overlay = f["overlay"]["vni"] == flannel::VNI;
        if !(named && peer && overlay) {
            bail!("a synthetic flow is not named or not joined: {f}");
        }
    }
    Ok(())
}

// --- statistics and output ---------------------------------------------------

/// "median (min–max)".
fn spread(values: &[f64], decimals: usize) -> String {
    format!(
        "{:.d$} ({:.d$}–{:.d$})",
        med(values),
        pct(values, 0.0),
        pct(values, 100.0),
        d = decimals
    )
}

fn size_label(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn summary(
    s: &Settings,
    t: &Throughput,
    mon: Option<&MonitorCpu>,
    runs: &[AgentRun],
) -> Result<String> {
    let mut out = String::new();
    let ratios: Vec<f64> = t.on.iter().zip(&t.off).map(|(on, off)| on / off).collect();
    let ratio = med(&ratios);
    writeln!(out, "| VXLAN monitor | TCP Gbit/s, median (min–max) |")?;
    writeln!(out, "|---|---:|")?;
    writeln!(out, "| detached | {} |", spread(&t.off, 2))?;
    writeln!(
        out,
        "| attached (both nodes' underlay, ingress + egress) | {} |",
        spread(&t.on, 2)
    )?;
    writeln!(
        out,
        "| ratio attached/detached, median of per-round ratios | {} — target >= {MIN_THROUGHPUT_RATIO}: {} |",
        spread(&ratios, 3),
        verdict(ratio >= MIN_THROUGHPUT_RATIO)
    )?;
    if let Some(m) = mon {
        writeln!(
            out,
            "| monitor's own CPU (kernel BPF stats, 1 run at {:.2} Gbit/s) | {:.0} ns per program run, {:.0} ns per wire packet (both ends); {:.1} ms in {:.1} s = {:.2}% of one CPU |",
            m.gbps,
            m.run_time_ns as f64 / m.runs as f64,
            m.run_time_ns as f64 / m.wire_packets.max(1) as f64,
            m.run_time_ns as f64 / 1e6,
            m.wall_s,
            m.run_time_ns as f64 / 1e7 / m.wall_s
        )?;
    }
    writeln!(out)?;

    let sizes: Vec<usize> = s.sizes.clone();
    write!(
        out,
        "| agent, flows in weir_flows (+ as many in weir_vx_flows) |"
    )?;
    for n in &sizes {
        write!(out, " {} |", size_label(*n))?;
    }
    writeln!(out, " target | result |")?;
    write!(out, "|---|")?;
    for _ in &sizes {
        write!(out, "---:|")?;
    }
    writeln!(out, "---|---|")?;
    let of = |n: usize| -> Vec<&AgentRun> { runs.iter().filter(|r| r.size == n).collect() };
    let row = |out: &mut String,
               name: &str,
               f: &dyn Fn(&AgentRun) -> f64,
               d: usize,
               target: &str,
               result: &str|
     -> Result<()> {
        write!(out, "| {name} |")?;
        for n in &sizes {
            let v: Vec<f64> = of(*n).iter().map(|r| f(r)).collect();
            write!(out, " {} |", spread(&v, d))?;
        }
        writeln!(out, " {target} | {result} |")?;
        Ok(())
    };
    let mib = |kib: u64| kib as f64 / 1024.0;
    let rss_10k: Vec<f64> = of(10_000).iter().map(|r| mib(r.rss_kib)).collect();
    let rss_result = if rss_10k.is_empty() {
        "(no 10k run)".to_string()
    } else {
        format!("{} at 10k", verdict(med(&rss_10k) <= MAX_RSS_MIB_AT_10K))
    };
    row(
        &mut out,
        "VmRSS, MiB",
        &|r| mib(r.rss_kib),
        1,
        &format!("<= {MAX_RSS_MIB_AT_10K} MiB at 10k"),
        &rss_result,
    )?;
    row(
        &mut out,
        "VmHWM (peak RSS), MiB",
        &|r| mib(r.hwm_kib),
        1,
        "(reported)",
        "",
    )?;
    row(
        &mut out,
        "CPU per collection, ms (utime+stime / collections)",
        &|r| r.cpu_ms_per_collection,
        1,
        "(reported)",
        "",
    )?;
    write!(out, "| weir_collection_duration_seconds, ms |")?;
    for n in &sizes {
        let v: Vec<f64> = of(*n)
            .iter()
            .flat_map(|r| r.durations_ms.iter().copied())
            .collect();
        write!(out, " {} |", spread(&v, 1))?;
    }
    writeln!(out, " (reported) | |")?;
    write!(
        out,
        "| after one GET /flows: VmRSS / VmHWM, MiB (flows served, body MB) |"
    )?;
    for n in &sizes {
        match of(*n).iter().find_map(|r| r.after_flows) {
            Some((rss, hwm, count, body)) => write!(
                out,
                " {:.1} / {:.1} ({count}, {:.1}) |",
                mib(rss),
                mib(hwm),
                body as f64 / 1e6
            )?,
            None => write!(out, " - |")?,
        }
    }
    writeln!(out, " (reported) | |")?;
    Ok(out)
}

fn main() -> Result<()> {
    let s = Settings::from_env()?;
    host::require_privileged_host();
    if host::which("iperf3").is_none() {
        bail!("iperf3 not found (run scripts/bootstrap.sh)");
    }
    for bin in [&s.weir, &s.agent] {
        if !bin.is_file() {
            bail!(
                "{} is missing; build it first (`make bench-agent` does)",
                bin.display()
            );
        }
    }
    fs::create_dir_all(&s.results)?;
    let raw = Raw {
        dir: s.results.clone(),
    };
    let load_before = loadavg();
    eprintln!(
        "weir-bench-agent: {} throughput rounds of {} s; agent with {:?} flows, {} repetitions, {} s windows; load average {load_before}",
        s.rounds, s.tcp_secs, s.sizes, s.reps, s.window_secs
    );
    let _ = fs::remove_dir_all(BPF_PARENT);
    let result = (|| -> Result<(Throughput, Option<MonitorCpu>, Vec<AgentRun>)> {
        let bed = setup(&s)?;
        let tput = throughput(&bed, &s, &raw)?;
        let mon = monitor_cpu(&bed, &s, &raw)?;

        let peers = bed.a.work_dir.join("peers.json");
        Synth::peers_file(&peers)?;
        let mut synth = Synth::new(&bed)?;
        // Only the synthetic flows (and what trickles in meanwhile) count.
        let (real, real_vx) = (synth.flows.clear()?, synth.vx_flows.clear()?);
        eprintln!(
            "weir-bench-agent: removed the run's {real} pod and {real_vx} overlay flows before the agent runs"
        );
        let mut runs = Vec::new();
        for rep in 0..s.reps {
            let order: Vec<usize> = (0..s.sizes.len())
                .map(|i| s.sizes[(i + rep) % s.sizes.len()])
                .collect();
            for size in order {
                let run = agent_run(&bed, &s, &mut synth, &peers, size, rep, rep + 1 == s.reps)?;
                eprintln!(
                    "  rep {rep} {size} flows: RSS {:.1} MiB, HWM {:.1} MiB, CPU {:.1} ms/collection over {} collections, duration {:.1} ms",
                    run.rss_kib as f64 / 1024.0,
                    run.hwm_kib as f64 / 1024.0,
                    run.cpu_ms_per_collection,
                    run.collections,
                    med(&run.durations_ms)
                );
                runs.push(run);
            }
        }
        synth.fill(0)?;
        drop(bed);
        Ok((tput, mon, runs))
    })();
    let _ = fs::remove_dir_all(BPF_PARENT);
    let (tput, mon, runs) = result?;

    raw.write(
        "agent-resources.raw",
        "rep flows pod_flows_seen overlay_flows_seen collections cpu_ticks cpu_ms_per_collection vmrss_kib vmhwm_kib (agent run --interval 1s, fresh process per line)",
        &runs
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {} {} {} {:.2} {} {}",
                    r.rep, r.size, r.pod_flows, r.overlay_flows, r.collections, r.ticks, r.cpu_ms_per_collection, r.rss_kib, r.hwm_kib
                )
            })
            .collect::<Vec<_>>(),
    )?;
    raw.write(
        "agent-duration.raw",
        "rep flows weir_collection_duration_ms (gauge, one scrape per line)",
        &runs
            .iter()
            .flat_map(|r| {
                r.durations_ms
                    .iter()
                    .map(move |d| format!("{} {} {d:.3}", r.rep, r.size))
            })
            .collect::<Vec<_>>(),
    )?;
    raw.write(
        "agent-flows-endpoint.raw",
        "flows vmrss_kib vmhwm_kib flows_served body_bytes (after one GET /flows, last repetition)",
        &runs
            .iter()
            .filter_map(|r| {
                r.after_flows
                    .map(|(rss, hwm, n, b)| format!("{} {rss} {hwm} {n} {b}", r.size))
            })
            .collect::<Vec<_>>(),
    )?;
    let header = format!(
        "weir agent bench: kernel {}, {} CPUs, load average {load_before} before, {} after\n\
         throughput: {} alternating rounds of {} s; agent: {} repetitions per flow count, {} s windows at --interval 1s, {} pods on the node\n\n",
        uname_r(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        s.rounds,
        s.tcp_secs,
        s.reps,
        s.window_secs,
        s.pods
    );
    let out = header + &summary(&s, &tput, mon.as_ref(), &runs)?;
    print!("{out}");
    fs::write(s.results.join("agent-summary.raw"), &out)?;
    Ok(())
}
