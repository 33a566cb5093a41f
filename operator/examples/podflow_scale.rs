//! Scale benchmark of the agent's PodFlow writer against a real control
//! plane (etcd + kube-apiserver): `make bench-scale` (bench/scale.sh) runs
//! this example; `cargo test` only builds it.
//!
//! Simulated: WEIR_SCALE_PODS pods (1000) spread over WEIR_SCALE_NODES nodes
//! (10), each talking to WEIR_SCALE_PEERS peers (10) on other pods, every
//! conversation's counters growing every WEIR_SCALE_INTERVAL (10s), for
//! WEIR_SCALE_SECS (120). Each simulated node has its own client and its
//! own writer ([`writer::spawn`], WEIR_SCALE_QPS requests/s, 5) fed with
//! synthetic PodFlowViews of its pods through the same grouping the agent
//! uses ([`writer::conversations`]): a conversation's source node and
//! destination node both publish their observer entry, as real agents do.
//!
//! Measured: requests the clients made (writer stats) and what the API
//! server served (`apiserver_request_total`), etcd's database file, objects
//! stored, how many observer entries each interval refreshed, the time
//! from a counter change (a round handed to the writers) to its value
//! arriving on a watch of the PodFlows, and the writers' backlog as the
//! agent exports it (`weir_podflow_writer_due`,
//! `weir_podflow_writer_oldest_pending_seconds`), sampled at the end of each
//! interval, the largest of the nodes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event, watcher};
use weir_api::{CaptureProfile, CaptureProfileSpec, PodFlow};
use weir_e2e::controlplane::ControlPlane;
use weir_operator::agent::join::{FlowDirection, PodFlowView};
use weir_operator::agent::peers::Peer;
use weir_operator::agent::selection::{LocalPod, Selection};
use weir_operator::agent::writer::{self, Clock, WriterHandle, WriterStats};

const NS: &str = "scale";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pod_ip(i: u64) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(
        10,
        200 + (i / 65536) as u8,
        ((i / 256) % 256) as u8,
        (i % 256) as u8,
    ))
}

fn node_of(i: u64, nodes: u64) -> u64 {
    i % nodes
}

/// Packets of round `r`: the round can be read back from a written value.
fn packets(round: u64) -> u64 {
    round * 10 + 1
}

#[allow(clippy::too_many_arguments)]
fn view(
    pod: u64,
    egress: bool,
    src: (u64, u16),
    dst: (u64, u16),
    round: u64,
    first: u64,
    peer: u64,
    nodes: u64,
) -> PodFlowView {
    PodFlowView {
        pod_id: pod as u32 + 1,
        namespace: Some(NS.into()),
        pod: format!("pod-{pod}"),
        direction: if egress {
            FlowDirection::Egress
        } else {
            FlowDirection::Ingress
        },
        protocol: 6,
        source: pod_ip(src.0),
        source_port: src.1,
        destination: pod_ip(dst.0),
        destination_port: dst.1,
        packets: packets(round),
        bytes: packets(round) * 100,
        first_seen_ns: first,
        last_seen_ns: 1_000_000_000 * (round + 10),
        tcp_flags: 0,
        peer: Some(Peer {
            namespace: NS.into(),
            pod: format!("pod-{peer}"),
            node: format!("sim-{}", node_of(peer, nodes)),
        }),
        overlay: None,
    }
}

/// The views node `n` reads in round `r`: its pods as clients (egress
/// request, ingress reply) and as servers (ingress request, egress reply).
fn views(n: u64, round: u64, pods: u64, peers: u64, nodes: u64) -> Vec<PodFlowView> {
    let mut out = Vec::new();
    for i in (0..pods).filter(|i| node_of(*i, nodes) == n) {
        for k in 1..=peers {
            let j = (i + k * 7 + 1) % pods;
            let port = 40000 + k as u16;
            out.push(view(i, true, (i, port), (j, 8080), round, 1_000, j, nodes));
            out.push(view(i, false, (j, 8080), (i, port), round, 2_000, j, nodes));
        }
    }
    for i in (0..pods).filter(|i| node_of(*i, nodes) != n) {
        for k in 1..=peers {
            let j = (i + k * 7 + 1) % pods;
            if node_of(j, nodes) == n {
                let port = 40000 + k as u16;
                out.push(view(j, false, (i, port), (j, 8080), round, 1_000, i, nodes));
                out.push(view(j, true, (j, 8080), (i, port), round, 2_000, i, nodes));
            }
        }
    }
    out
}

fn selection(n: u64, pods: u64, nodes: u64, interval: Duration) -> Selection {
    let mut spec = CaptureProfileSpec::selecting(Default::default());
    spec.flush_interval = format!("{}s", interval.as_secs());
    spec.max_pod_flows = 10_000;
    let profile = Arc::new(CaptureProfile {
        metadata: ObjectMeta {
            name: Some("all".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        spec,
        status: None,
    });
    let names: Vec<String> = (0..pods)
        .filter(|i| node_of(*i, nodes) == n)
        .map(|i| format!("pod-{i}"))
        .collect();
    let labels = BTreeMap::new();
    Selection::compute(
        &[profile],
        names.iter().map(|p| LocalPod {
            namespace: NS,
            name: p,
            labels: &labels,
        }),
    )
}

fn apiserver_metric(cp: &ControlPlane, prefix: &str, must: &[&str]) -> Result<f64> {
    let text = cp.kubectl_ok(["get", "--raw", "/metrics"])?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(prefix) && must.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let (pods, peers, nodes) = (
        env("WEIR_SCALE_PODS", 1000),
        env("WEIR_SCALE_PEERS", 10),
        env("WEIR_SCALE_NODES", 10),
    );
    let interval = Duration::from_secs(env("WEIR_SCALE_INTERVAL", 10));
    let secs = env("WEIR_SCALE_SECS", 120);
    let qps = env("WEIR_SCALE_QPS", 5) as f64;
    let cp =
        ControlPlane::start().context("the control plane (etcd + kube-apiserver) is needed")?;
    cp.kubectl_ok([
        "apply",
        "--server-side",
        "--field-manager=weir-bench",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../crds"),
    ])?;
    cp.kubectl_ok([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/podflows.weir.dev",
    ])?;
    let admin = cp.client().await?;
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(NS.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    let db_file = cp.dir().join("etcd/member/snap/db");
    let db_before = std::fs::metadata(&db_file).map(|m| m.len()).unwrap_or(0);

    // Round publish times, and what the watch sees.
    let published: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    #[derive(Default)]
    struct Seen {
        latencies: Vec<f64>,
        /// (name, node) → rounds whose value arrived
        writes: HashMap<(String, String), Vec<u64>>,
        events: u64,
    }
    let seen: Arc<Mutex<Seen>> = Arc::default();
    {
        let (published, seen) = (published.clone(), seen.clone());
        let stream = watcher(
            Api::<PodFlow>::namespaced(admin.clone(), NS),
            watcher::Config::default(),
        )
        .default_backoff();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut last: HashMap<(String, String), u64> = HashMap::new();
            while let Some(Ok(event)) = stream.next().await {
                let (Event::Apply(pf) | Event::InitApply(pf)) = event else {
                    continue;
                };
                let now = Instant::now();
                let name = pf.metadata.name.clone().unwrap_or_default();
                let mut seen = seen.lock().unwrap();
                seen.events += 1;
                for o in pf.status.iter().flat_map(|s| &s.observers) {
                    let round = (o.forward.packets as u64).saturating_sub(1) / 10;
                    let key = (name.clone(), o.node.clone());
                    if last.get(&key) == Some(&round) {
                        continue;
                    }
                    last.insert(key.clone(), round);
                    if let Some(t) = published.lock().unwrap().get(&round) {
                        seen.latencies.push(now.duration_since(*t).as_secs_f64());
                    }
                    seen.writes.entry(key).or_default().push(round);
                }
            }
        });
    }

    let mut writers: Vec<WriterHandle> = Vec::new();
    let mut selections = Vec::new();
    for n in 0..nodes {
        writers.push(writer::spawn(cp.client().await?, &format!("sim-{n}"), qps)?);
        selections.push(selection(n, pods, nodes, interval));
    }
    let applies_before = apiserver_metric(
        &cp,
        "apiserver_request_total{",
        &[r#"resource="podflows""#, r#"verb="APPLY""#],
    )?;
    let clock = Clock::at(0);
    let uids: HashMap<(String, String), String> = HashMap::new();
    let started = Instant::now();
    let rounds = secs / interval.as_secs().max(1);
    let mut observer_entries = 0usize;
    let mut conversations = HashSet::new();
    // Per interval: (largest due, largest oldest pending age in s) over the nodes.
    let mut backlog: Vec<(u64, f64)> = Vec::new();
    for round in 1..=rounds {
        let t = Instant::now();
        published.lock().unwrap().insert(round, t);
        for n in 0..nodes {
            let v = views(n, round, pods, peers, nodes);
            let c = writer::conversations(
                &v,
                &format!("sim-{n}"),
                &selections[n as usize],
                &uids,
                &(),
                &clock,
            );
            if round == 1 {
                observer_entries += c.flows.len();
                conversations.extend(c.flows.iter().map(|f| f.name.clone()));
            }
            writers[n as usize].publish(c.flows);
        }
        let next = started + interval * round as u32;
        tokio::time::sleep_until((next - Duration::from_millis(100)).into()).await;
        backlog.push(writers.iter().fold((0, 0f64), |(due, age), w| {
            (
                due.max(WriterStats::get(&w.stats.due)),
                age.max(w.stats.oldest_pending_age().as_secs_f64()),
            )
        }));
        tokio::time::sleep_until(next.into()).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests: u64 = writers
        .iter()
        .map(|w| WriterStats::get(&w.stats.requests))
        .sum();
    let failures: u64 = writers
        .iter()
        .map(|w| WriterStats::get(&w.stats.failures))
        .sum();
    let dirty: u64 = writers
        .iter()
        .map(|w| WriterStats::get(&w.stats.dirty))
        .sum();
    let applies = apiserver_metric(
        &cp,
        "apiserver_request_total{",
        &[r#"resource="podflows""#, r#"verb="APPLY""#],
    )? - applies_before;
    let objects = apiserver_metric(&cp, "apiserver_storage_objects{", &["podflows.weir.dev"])?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let db_after = std::fs::metadata(&db_file).map(|m| m.len()).unwrap_or(0);
    let seen = seen.lock().unwrap();
    let mut lat = seen.latencies.clone();
    lat.sort_by(f64::total_cmp);
    // Per observer entry, writes per round-interval (must be ≤ 1).
    let max_per_interval = seen
        .writes
        .values()
        .map(|rounds| {
            let mut per: HashMap<u64, u64> = HashMap::new();
            for r in rounds {
                *per.entry(*r).or_default() += 1;
            }
            per.values().copied().max().unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    let refreshed: u64 = seen.writes.values().map(|r| r.len() as u64).sum();
    let summary = serde_json::json!({
        "pods": pods, "peers": peers, "nodes": nodes, "interval_s": interval.as_secs(), "qps_per_node": qps,
        "seconds": (elapsed * 10.0).round() / 10.0,
        "conversations": conversations.len(),
        "observer_entries_changed_per_interval": observer_entries,
        "client_requests": requests,
        "client_requests_per_s": (requests as f64 / elapsed * 100.0).round() / 100.0,
        "client_requests_per_s_per_node": (requests as f64 / elapsed / nodes as f64 * 100.0).round() / 100.0,
        "client_failures": failures,
        "apiserver_podflow_applies": applies,
        "apiserver_podflow_applies_per_s": (applies / elapsed * 100.0).round() / 100.0,
        "podflows_stored": objects,
        "observer_entries_visible": seen.writes.len(),
        "observer_values_written": refreshed,
        "refreshed_per_interval_pct": (refreshed as f64 / rounds as f64 / observer_entries.max(1) as f64 * 1000.0).round() / 10.0,
        "max_writes_per_entry_per_interval": max_per_interval,
        "dirty_at_end": dirty,
        "backlog_per_interval": {
            "due_max_per_node": backlog.iter().map(|b| b.0).collect::<Vec<_>>(),
            "oldest_pending_s_max": backlog.iter().map(|b| (b.1 * 10.0).round() / 10.0).collect::<Vec<_>>(),
        },
        "visible_latency_s": { "p50": percentile(&lat, 0.5), "p90": percentile(&lat, 0.9), "p99": percentile(&lat, 0.99), "max": lat.last() },
        "etcd_db_bytes": { "before": db_before, "after": db_after },
    });
    println!("SCALE {summary}");
    assert!(
        max_per_interval <= 1,
        "an observer entry was written more than once per interval"
    );
    assert!(
        requests as f64 <= qps * nodes as f64 * (elapsed + 1.0),
        "{requests} requests exceed {qps}/s per node"
    );
    Ok(())
}
