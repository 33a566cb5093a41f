//! A profile's alerts (`spec.alerts`), judged on each reconcile from its
//! PodFlows' summaries: which alert conditions each PodFlow carries and
//! which alerts to tell about. Pure: the caller supplies the clocks and
//! names the pods' workloads into the memory ([`pods_to_name`]), and
//! publishes what [`evaluate`] returns.
//!
//! What the controller remembers per profile (the known peers, the pods'
//! workloads, each conversation's rate samples and baseline) is in
//! [`AlertMemory`]; what a new leader needs survives in the PodFlows: a
//! PodFlow that carries `NewPeer` was judged, so its peer is known, and the
//! learning window's start is the profile's `status.learningSince`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use weir_api::alerts::{AlertsSpec, NewPeerAlert, RateSpikeAlert, conditions, reasons};
use weir_api::{PodFlowSpec, PodFlowStatus};

/// The most peers a profile remembers (beyond, new peers are still told
/// about once per PodFlow, from its condition).
pub const MAX_KNOWN_PEERS: usize = 10_000;

/// A flow as [`evaluate`] judges it.
pub struct FlowInput<'a> {
    pub name: &'a str,
    pub spec: &'a PodFlowSpec,
    /// The summary of the observers, as the controller writes it.
    pub summary: &'a PodFlowStatus,
    /// The conditions the PodFlow carries now.
    pub stored: &'a [Condition],
}

/// One alert to tell about.
#[derive(Debug, Clone, PartialEq)]
pub struct Raised {
    pub flow: String,
    /// The condition type (`NewPeer`, ...).
    pub alert: &'static str,
    pub reason: &'static str,
    pub message: String,
    /// The condition just turned True (else it stays True and is told
    /// again, as the event interval allows).
    pub transition: bool,
    /// The pods of the conversation, in the profile's namespace first.
    pub pods: Vec<(String, String)>,
}

/// What one evaluation decided.
#[derive(Debug, Default)]
pub struct Evaluation {
    /// The alert conditions of each flow, by name.
    pub conditions: HashMap<String, Vec<Condition>>,
    pub raised: Vec<Raised>,
    /// Per alert type: flows whose condition is True.
    pub firing: HashMap<&'static str, usize>,
}

/// The clocks and the profile of one evaluation.
pub struct Clocks {
    /// Monotonic, for rates.
    pub now: Instant,
    /// Wall clock, for the learning window and quiet conversations.
    pub wall: Timestamp,
    /// When `newPeer` was first asked for (`status.learningSince`): the
    /// learning window starts there.
    pub learning_since: Option<Timestamp>,
    pub flush_interval: Duration,
}

/// A conversation's rate samples and moving baseline.
#[derive(Debug, Clone)]
struct RateTrack {
    /// (when, bytes, packets) of both directions, oldest first.
    samples: VecDeque<(Instant, i64, i64)>,
    /// Bytes and packets per second.
    baseline: Option<(f64, f64)>,
    baseline_since: Instant,
}

/// What the controller remembers of one profile's alerts.
#[derive(Debug, Default)]
pub struct AlertMemory {
    known_peers: HashSet<(String, String)>,
    rates: HashMap<String, RateTrack>,
    /// The workloads of the pods at the ends of the profile's flows
    /// (`Deployment/web`), kept while such a flow exists.
    pub workloads: Workloads,
}

/// A pod's workload, by namespace and pod name.
pub type Workloads = HashMap<(String, String), String>;

/// The pods at the ends of a flow.
pub fn ends(spec: &PodFlowSpec) -> Vec<(String, String)> {
    [
        (&spec.source.namespace, &spec.source.pod),
        (&spec.destination.namespace, &spec.destination.pod),
    ]
    .into_iter()
    .filter_map(|(ns, pod)| Some((ns.clone()?, pod.clone()?)))
    .collect()
}

/// The pods whose workloads `newPeer` needs and `memory` does not hold;
/// forgets the workloads of pods no flow ends at.
pub fn pods_to_name(
    spec: &AlertsSpec,
    flows: &[FlowInput<'_>],
    memory: &mut AlertMemory,
) -> Vec<(String, String)> {
    if spec.new_peer.is_none() {
        memory.workloads.clear();
        return Vec::new();
    }
    let wanted: HashSet<(String, String)> = flows.iter().flat_map(|f| ends(f.spec)).collect();
    memory.workloads.retain(|pod, _| wanted.contains(pod));
    let mut out: Vec<(String, String)> = wanted
        .into_iter()
        .filter(|pod| !memory.workloads.contains_key(pod))
        .collect();
    out.sort();
    out
}

/// Judges `flows` against `spec`; see the module documentation.
pub fn evaluate(
    spec: &AlertsSpec,
    namespace: &str,
    clocks: &Clocks,
    memory: &mut AlertMemory,
    flows: &[FlowInput<'_>],
) -> Evaluation {
    let mut out = Evaluation::default();
    if let Some(np) = &spec.new_peer {
        // Judged flows first: their peers are known whatever their order
        // (and a new leader learns them here).
        for f in flows.iter().filter(|f| has(f.stored, conditions::NEW_PEER)) {
            let pair = peer_pair(np, f.spec, &memory.workloads);
            remember(memory, pair);
        }
    }
    let live: HashSet<&str> = flows.iter().map(|f| f.name).collect();
    memory.rates.retain(|name, _| live.contains(name.as_str()));
    for f in flows {
        // Each condition, and whether a True one is told (again).
        let mut judged: Vec<(Condition, bool)> = Vec::new();
        if let Some(np) = &spec.new_peer {
            let c = new_peer(np, clocks, memory, f);
            // Told once: when the PodFlow is first judged.
            let tell = !is_true(f.stored, conditions::NEW_PEER);
            judged.push((c, tell));
        }
        if let Some(rs) = &spec.rate_spike
            && let Some(c) = rate_spike(rs, clocks, memory, f)
        {
            judged.push((c, true));
        }
        if let Some(tr) = &spec.tcp_resets
            && let Some(tcp) = f.summary.tcp
        {
            let over_count = tr.count.is_some_and(|n| tcp.resets >= n);
            let over_share = tr.percent.is_some_and(|p| {
                tcp.connections >= tr.min_connections
                    && tcp.resets * 100 >= i64::from(p) * tcp.connections
            });
            let c = if over_count || over_share {
                condition(
                    f.stored,
                    conditions::TCP_RESETS,
                    true,
                    reasons::RESETS_SEEN,
                    format!(
                        "{} of {} TCP connections carried a reset",
                        tcp.resets, tcp.connections
                    ),
                    clocks.wall,
                )
            } else {
                condition(
                    f.stored,
                    conditions::TCP_RESETS,
                    false,
                    reasons::FEW_RESETS,
                    "resets below the profile's limits".into(),
                    clocks.wall,
                )
            };
            judged.push((c, true));
        }
        if let Some(ol) = &spec.overlay_loss
            && let Some(c) = overlay_loss(ol.packets, clocks, f)
        {
            judged.push((c, true));
        }
        let mut conds = Vec::with_capacity(judged.len());
        for (c, tell) in judged {
            if c.status == "True" {
                *out.firing.entry(alert_type(&c.type_)).or_default() += 1;
                if tell {
                    out.raised.push(Raised {
                        flow: f.name.to_owned(),
                        alert: alert_type(&c.type_),
                        reason: reason_of(&c.reason),
                        message: c.message.clone(),
                        transition: !is_true(f.stored, &c.type_),
                        pods: pods_of(f.spec, namespace),
                    });
                }
            }
            conds.push(c);
        }
        out.conditions.insert(f.name.to_owned(), conds);
    }
    out
}

fn new_peer(
    np: &NewPeerAlert,
    clocks: &Clocks,
    memory: &mut AlertMemory,
    f: &FlowInput<'_>,
) -> Condition {
    if let Some(stored) = find(f.stored, conditions::NEW_PEER) {
        return stored.clone();
    }
    let pair = peer_pair(np, f.spec, &memory.workloads);
    let window = weir_api::parse_duration(&np.learning_window).unwrap_or_default();
    // Learned when the conversation began within the window, however late
    // it is judged (a backlog, a leader change).
    let began = f.summary.first_seen.as_ref().map_or(clocks.wall, |t| t.0);
    let learning = clocks
        .learning_since
        .is_some_and(|since| began.duration_since(since).as_secs_f64() < window.as_secs_f64());
    let known = memory.known_peers.contains(&pair);
    let (status, reason, message) = if known {
        (
            false,
            reasons::KNOWN_PEER,
            format!("{} → {}: a known peer", pair.0, pair.1),
        )
    } else if learning {
        (
            false,
            reasons::LEARNED,
            format!(
                "{} → {}: learned within the first {}",
                pair.0, pair.1, np.learning_window
            ),
        )
    } else {
        (
            true,
            reasons::UNKNOWN_PEER,
            format!(
                "{} → {}: a peer not seen before (learning window {} ended)",
                pair.0, pair.1, np.learning_window
            ),
        )
    };
    remember(memory, pair);
    condition(
        f.stored,
        conditions::NEW_PEER,
        status,
        reason,
        message,
        clocks.wall,
    )
}

fn remember(memory: &mut AlertMemory, pair: (String, String)) {
    if memory.known_peers.len() < MAX_KNOWN_PEERS {
        memory.known_peers.insert(pair);
    }
}

/// Who talks to whom, as `newPeer` tells peers apart: a pod by its
/// workload, an address by its prefix.
fn peer_pair(np: &NewPeerAlert, spec: &PodFlowSpec, workloads: &Workloads) -> (String, String) {
    let id = |ns: &Option<String>, pod: &Option<String>, ip: &str| match (ns, pod) {
        (Some(ns), Some(pod)) => {
            let workload = workloads
                .get(&(ns.clone(), pod.clone()))
                .cloned()
                .unwrap_or_else(|| format!("Pod/{pod}"));
            format!("{ns}/{workload}")
        }
        _ => prefix(ip, np),
    };
    (
        id(&spec.source.namespace, &spec.source.pod, &spec.source.ip),
        id(
            &spec.destination.namespace,
            &spec.destination.pod,
            &spec.destination.ip,
        ),
    )
}

/// The address's network of the configured prefix length (`10.1.2.0/24`).
fn prefix(ip: &str, np: &NewPeerAlert) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => {
            let len = np.ipv4_prefix_length.clamp(0, 32) as u32;
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            format!("{}/{len}", std::net::Ipv4Addr::from(u32::from(a) & mask))
        }
        Ok(IpAddr::V6(a)) => {
            let len = np.ipv6_prefix_length.clamp(0, 128) as u32;
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            format!("{}/{len}", std::net::Ipv6Addr::from(u128::from(a) & mask))
        }
        Err(_) => ip.to_owned(),
    }
}

fn rate_spike(
    rs: &RateSpikeAlert,
    clocks: &Clocks,
    memory: &mut AlertMemory,
    f: &FlowInput<'_>,
) -> Option<Condition> {
    let window = weir_api::parse_duration(&rs.window)
        .unwrap_or(Duration::from_secs(30))
        .max(2 * clocks.flush_interval);
    let baseline_window =
        weir_api::parse_duration(&rs.baseline_window).unwrap_or(Duration::from_secs(600));
    let bytes = f.summary.bytes.unwrap_or(0);
    let packets = f.summary.packets.unwrap_or(0);
    let track = memory
        .rates
        .entry(f.name.to_owned())
        .or_insert_with(|| RateTrack {
            samples: VecDeque::new(),
            baseline: None,
            baseline_since: clocks.now,
        });
    if track
        .samples
        .back()
        .is_some_and(|&(_, b, p)| bytes < b || packets < p)
    {
        // Counted from zero again (the PodFlow was re-created).
        track.samples.clear();
        track.baseline = None;
        track.baseline_since = clocks.now;
    }
    let previous = track.samples.back().map(|s| s.0);
    track.samples.push_back((clocks.now, bytes, packets));
    // Keep one sample at or before the window's start, as the base.
    while track.samples.len() > 2 && clocks.now.duration_since(track.samples[1].0) >= window {
        track.samples.pop_front();
    }
    let &(t0, b0, p0) = track.samples.front()?;
    let span = clocks.now.duration_since(t0);
    if span < window / 2 {
        // Too short to judge: the condition stays as it is.
        return find(f.stored, conditions::RATE_SPIKE).cloned();
    }
    let secs = span.as_secs_f64();
    let (bps, pps) = ((bytes - b0) as f64 / secs, (packets - p0) as f64 / secs);
    let baseline = track.baseline;
    let learned = clocks.now.duration_since(track.baseline_since) >= baseline_window;
    // The baseline moves with every judged rate (an exponential average
    // with `baselineWindow` as its time constant).
    let dt = previous
        .map(|p| clocks.now.duration_since(p).as_secs_f64())
        .unwrap_or(0.0);
    let alpha = 1.0 - (-dt / baseline_window.as_secs_f64().max(1e-3)).exp();
    track.baseline = Some(match baseline {
        None => (bps, pps),
        Some((b, p)) => (b + alpha * (bps - b), p + alpha * (pps - p)),
    });
    let over = |limit: Option<i64>, rate: f64| limit.is_some_and(|l| rate > l as f64);
    let over_baseline = rs.baseline_multiplier.filter(|_| learned).and_then(|m| {
        let (b, _) = baseline?;
        (bps >= rs.baseline_floor_bytes_per_second as f64 && bps > f64::from(m) * b)
            .then_some((m, b))
    });
    let window_text = format!("{}s", window.as_secs());
    let c = if over(rs.bytes_per_second, bps) || over(rs.packets_per_second, pps) {
        condition(
            f.stored,
            conditions::RATE_SPIKE,
            true,
            reasons::ABOVE_THRESHOLD,
            format!(
                "{} B/s, {} packets/s over {window_text} (limits: {} B/s, {} packets/s)",
                bps.round(),
                pps.round(),
                limit_text(rs.bytes_per_second),
                limit_text(rs.packets_per_second)
            ),
            clocks.wall,
        )
    } else if let Some((m, b)) = over_baseline {
        condition(
            f.stored,
            conditions::RATE_SPIKE,
            true,
            reasons::ABOVE_BASELINE,
            format!(
                "{} B/s over {window_text}, above {m}× the baseline of {} B/s",
                bps.round(),
                b.round()
            ),
            clocks.wall,
        )
    } else {
        condition(
            f.stored,
            conditions::RATE_SPIKE,
            false,
            reasons::WITHIN_LIMITS,
            "the rate is within the profile's limits".into(),
            clocks.wall,
        )
    };
    Some(c)
}

fn limit_text(limit: Option<i64>) -> String {
    limit.map_or_else(|| "none".into(), |l| l.to_string())
}

/// Loss is judged on a quiet conversation only: both nodes then published
/// their final counts, so what one sent and the other never took out was
/// lost, not in flight.
fn overlay_loss(threshold: i64, clocks: &Clocks, f: &FlowInput<'_>) -> Option<Condition> {
    let loss = f.summary.vxlan.as_ref()?.loss_packets?;
    let quiet = f.summary.last_seen.as_ref().is_some_and(|t| {
        clocks.wall.duration_since(t.0).as_secs_f64() >= (2 * clocks.flush_interval).as_secs_f64()
    });
    if !quiet {
        return find(f.stored, conditions::OVERLAY_LOSS).cloned();
    }
    Some(if loss >= threshold {
        condition(
            f.stored,
            conditions::OVERLAY_LOSS,
            true,
            reasons::PACKETS_LOST,
            format!("{loss} packets entered the VXLAN overlay and never left it"),
            clocks.wall,
        )
    } else {
        condition(
            f.stored,
            conditions::OVERLAY_LOSS,
            false,
            reasons::NO_LOSS,
            format!("{loss} packets lost in the overlay"),
            clocks.wall,
        )
    })
}

/// The pods of a conversation, those in `namespace` first.
fn pods_of(spec: &PodFlowSpec, namespace: &str) -> Vec<(String, String)> {
    let mut pods = ends(spec);
    pods.sort_by_key(|(ns, _)| ns != namespace);
    pods.dedup();
    pods
}

fn find<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

fn has(conds: &[Condition], type_: &str) -> bool {
    find(conds, type_).is_some()
}

fn is_true(conds: &[Condition], type_: &str) -> bool {
    find(conds, type_).is_some_and(|c| c.status == "True")
}

fn alert_type(type_: &str) -> &'static str {
    conditions::ALL
        .into_iter()
        .find(|t| *t == type_)
        .unwrap_or("Unknown")
}

fn reason_of(reason: &str) -> &'static str {
    [
        reasons::UNKNOWN_PEER,
        reasons::ABOVE_THRESHOLD,
        reasons::ABOVE_BASELINE,
        reasons::RESETS_SEEN,
        reasons::PACKETS_LOST,
    ]
    .into_iter()
    .find(|r| *r == reason)
    .unwrap_or("Alert")
}

/// A condition, keeping the stored one's transition time while its status
/// stays.
fn condition(
    stored: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let since = find(stored, type_)
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: since,
        observed_generation: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_api::alerts::{OverlayLossAlert, TcpResetsAlert};
    use weir_api::{DestinationEndpoint, Protocol, SourceEndpoint, TcpConnections, VxlanCounters};

    fn spec(src: &str, dst_ns: &str, dst: &str) -> PodFlowSpec {
        PodFlowSpec {
            source: SourceEndpoint::pod("shop", src, "10.244.1.5", "node-a"),
            destination: if dst_ns.is_empty() {
                DestinationEndpoint::address(dst, Some(443))
            } else {
                DestinationEndpoint::pod(dst_ns, dst, "10.244.2.7", "node-b", Some(5432))
            },
            protocol: Protocol::Tcp,
            profile: "p".into(),
        }
    }

    fn clocks(start: Instant, secs: u64, created_secs_ago: i64) -> Clocks {
        let wall = Timestamp::from_second(1_800_000_000 + secs as i64).unwrap();
        Clocks {
            now: start + Duration::from_secs(secs),
            wall,
            learning_since: Some(
                Timestamp::from_second(1_800_000_000 + secs as i64 - created_secs_ago).unwrap(),
            ),
            flush_interval: Duration::from_secs(1),
        }
    }

    fn memory() -> AlertMemory {
        AlertMemory {
            workloads: workloads(),
            ..Default::default()
        }
    }

    fn workloads() -> Workloads {
        [
            (("shop".into(), "web-1".into()), "Deployment/web".into()),
            (("shop".into(), "web-2".into()), "Deployment/web".into()),
            (("shop".into(), "db-0".into()), "StatefulSet/db".into()),
        ]
        .into()
    }

    fn new_peer_spec() -> AlertsSpec {
        AlertsSpec {
            new_peer: Some(NewPeerAlert {
                learning_window: "60s".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn status(c: &[Condition], t: &str) -> Option<String> {
        find(c, t).map(|c| format!("{} {}", c.status, c.reason))
    }

    #[test]
    fn a_new_peer_is_told_once_after_the_learning_window_by_workload_and_prefix() {
        let start = Instant::now();
        let alerts = new_peer_spec();
        let mut mem = memory();
        let s = PodFlowStatus::default();
        let learned = spec("web-1", "shop", "db-0");
        let flows = [FlowInput {
            name: "a",
            spec: &learned,
            summary: &s,
            stored: &[],
        }];
        // Within the window: learned.
        let e = evaluate(&alerts, "shop", &clocks(start, 0, 10), &mut mem, &flows);
        assert!(e.raised.is_empty());
        assert_eq!(
            status(&e.conditions["a"], "NewPeer").as_deref(),
            Some("False Learned")
        );
        let stored_a = e.conditions["a"].clone();

        // After it: another pod of the same workloads is known; an address
        // in a new /24 is new, told once; the same /24 later is known.
        let same_workloads = spec("web-2", "shop", "db-0");
        let outside = spec("web-1", "", "203.0.113.9");
        let outside_again = spec("web-2", "", "203.0.113.77");
        let flows = [
            FlowInput {
                name: "a",
                spec: &learned,
                summary: &s,
                stored: &stored_a,
            },
            FlowInput {
                name: "b",
                spec: &same_workloads,
                summary: &s,
                stored: &[],
            },
            FlowInput {
                name: "c",
                spec: &outside,
                summary: &s,
                stored: &[],
            },
        ];
        let e = evaluate(&alerts, "shop", &clocks(start, 120, 130), &mut mem, &flows);
        assert_eq!(
            status(&e.conditions["b"], "NewPeer").as_deref(),
            Some("False KnownPeer")
        );
        assert_eq!(
            status(&e.conditions["c"], "NewPeer").as_deref(),
            Some("True UnknownPeer")
        );
        assert_eq!(e.raised.len(), 1, "{:?}", e.raised);
        assert_eq!(e.raised[0].flow, "c");
        assert!(e.raised[0].transition);
        assert_eq!(
            e.raised[0].pods,
            vec![("shop".to_owned(), "web-1".to_owned())]
        );
        assert!(
            e.raised[0].message.contains("203.0.113.0/24"),
            "{}",
            e.raised[0].message
        );
        assert_eq!(e.firing[conditions::NEW_PEER], 1);
        let stored_c = e.conditions["c"].clone();

        // A new leader (empty memory) learns the judged flows from their
        // conditions: nothing is told again, and the /24 stays known.
        let mut fresh = memory();
        let flows = [
            FlowInput {
                name: "c",
                spec: &outside,
                summary: &s,
                stored: &stored_c,
            },
            FlowInput {
                name: "d",
                spec: &outside_again,
                summary: &s,
                stored: &[],
            },
        ];
        let e = evaluate(
            &alerts,
            "shop",
            &clocks(start, 200, 210),
            &mut fresh,
            &flows,
        );
        assert!(e.raised.is_empty(), "{:?}", e.raised);
        assert_eq!(
            status(&e.conditions["c"], "NewPeer").as_deref(),
            Some("True UnknownPeer")
        );
        assert_eq!(
            status(&e.conditions["d"], "NewPeer").as_deref(),
            Some("False KnownPeer")
        );
    }

    #[test]
    fn a_new_leader_relearns_by_workload_and_late_judged_conversations_stay_learned() {
        let start = Instant::now();
        let alerts = new_peer_spec();
        let judged = spec("web-1", "shop", "db-0");
        let stored = vec![condition(
            &[],
            conditions::NEW_PEER,
            false,
            reasons::LEARNED,
            "learned".into(),
            Timestamp::from_second(1_800_000_000).unwrap(),
        )];
        let s = PodFlowStatus::default();
        // Another pod of the same Deployment, after a rollout: known.
        let rolled = spec("web-2", "shop", "db-0");
        let flows = [
            FlowInput {
                name: "a",
                spec: &judged,
                summary: &s,
                stored: &stored,
            },
            FlowInput {
                name: "b",
                spec: &rolled,
                summary: &s,
                stored: &[],
            },
        ];
        let mut fresh = memory();
        let e = evaluate(
            &alerts,
            "shop",
            &clocks(start, 500, 510),
            &mut fresh,
            &flows,
        );
        assert!(e.raised.is_empty(), "{:?}", e.raised);
        assert_eq!(
            status(&e.conditions["b"], "NewPeer").as_deref(),
            Some("False KnownPeer")
        );
        // A conversation that began within the window (60 s after the
        // start), first judged long after it: learned, not new.
        let early = PodFlowStatus {
            first_seen: Some(Time(Timestamp::from_second(1_800_000_000 + 30).unwrap())),
            ..Default::default()
        };
        let outside = spec("web-1", "", "198.51.100.7");
        let flows = [FlowInput {
            name: "c",
            spec: &outside,
            summary: &early,
            stored: &[],
        }];
        let e = evaluate(
            &alerts,
            "shop",
            &clocks(start, 600, 600),
            &mut memory(),
            &flows,
        );
        assert_eq!(
            status(&e.conditions["c"], "NewPeer").as_deref(),
            Some("False Learned")
        );
    }

    fn counted(bytes: i64, packets: i64) -> PodFlowStatus {
        PodFlowStatus {
            bytes: Some(bytes),
            packets: Some(packets),
            ..Default::default()
        }
    }

    /// Feeds one flow's byte counter, one sample per second; returns each
    /// second's RateSpike condition.
    fn feed(alerts: &AlertsSpec, bytes_per_second: &[i64]) -> Vec<Option<String>> {
        let start = Instant::now();
        let mut mem = memory();
        let sp = spec("web-1", "shop", "db-0");
        let (mut total, mut stored) = (0i64, Vec::new());
        let mut out = Vec::new();
        for (i, rate) in bytes_per_second.iter().enumerate() {
            total += rate;
            let s = counted(total, total / 100);
            let flows = [FlowInput {
                name: "a",
                spec: &sp,
                summary: &s,
                stored: &stored,
            }];
            let e = evaluate(
                alerts,
                "shop",
                &clocks(start, i as u64, 1000),
                &mut mem,
                &flows,
            );
            stored = e.conditions["a"].clone();
            out.push(status(&stored, "RateSpike"));
        }
        out
    }

    #[test]
    fn a_rate_above_the_threshold_is_a_spike_and_one_below_is_not() {
        let alerts = AlertsSpec {
            rate_spike: Some(RateSpikeAlert {
                bytes_per_second: Some(10_000),
                window: "2s".into(),
                ..RateSpikeAlert::with_defaults()
            }),
            ..Default::default()
        };
        let seen = feed(
            &alerts,
            &[
                5_000, 5_000, 5_000, 5_000, 50_000, 50_000, 50_000, 1_000, 1_000, 1_000,
            ],
        );
        assert_eq!(seen[0], None, "too short to judge");
        assert_eq!(seen[3].as_deref(), Some("False WithinLimits"));
        assert_eq!(seen[6].as_deref(), Some("True AboveThreshold"));
        assert_eq!(seen[9].as_deref(), Some("False WithinLimits"));
    }

    #[test]
    fn a_rate_many_times_the_learned_baseline_is_a_spike() {
        let alerts = AlertsSpec {
            rate_spike: Some(RateSpikeAlert {
                baseline_multiplier: Some(5),
                baseline_window: "10s".into(),
                baseline_floor_bytes_per_second: 1000,
                window: "2s".into(),
                ..RateSpikeAlert::with_defaults()
            }),
            ..Default::default()
        };
        let mut rates = vec![2_000; 20];
        rates.extend([40_000; 3]);
        let seen = feed(&alerts, &rates);
        assert!(
            seen[..20]
                .iter()
                .all(|s| s.as_deref() != Some("True AboveBaseline")),
            "{seen:?}"
        );
        assert_eq!(seen[22].as_deref(), Some("True AboveBaseline"), "{seen:?}");
        // Before the baseline learned, the same jump says nothing.
        let mut early = vec![2_000; 4];
        early.extend([40_000; 3]);
        let seen = feed(&alerts, &early);
        assert!(
            seen.iter()
                .all(|s| s.as_deref() != Some("True AboveBaseline")),
            "{seen:?}"
        );
    }

    /// [`evaluate`] of one flow named "a".
    fn one(
        alerts: &AlertsSpec,
        clocks: &Clocks,
        memory: &mut AlertMemory,
        spec: &PodFlowSpec,
        summary: &PodFlowStatus,
        stored: &[Condition],
    ) -> Evaluation {
        let flow = FlowInput {
            name: "a",
            spec,
            summary,
            stored,
        };
        evaluate(alerts, "shop", clocks, memory, &[flow])
    }

    #[test]
    fn resets_raise_by_count_or_share_and_overlay_loss_waits_for_a_quiet_flow() {
        let start = Instant::now();
        let alerts = AlertsSpec {
            tcp_resets: Some(TcpResetsAlert {
                percent: Some(50),
                min_connections: 4,
                ..TcpResetsAlert::with_defaults()
            }),
            overlay_loss: Some(OverlayLossAlert { packets: 3 }),
            ..Default::default()
        };
        let sp = spec("web-1", "shop", "db-0");
        let mut mem = memory();
        let at = |secs: u64| clocks(start, secs, 1000);
        let summary =
            |resets: i64, connections: i64, loss: i64, last_seen_secs: i64| PodFlowStatus {
                tcp: Some(TcpConnections {
                    connections,
                    resets,
                }),
                vxlan: Some(VxlanCounters {
                    loss_packets: Some(loss),
                    ..Default::default()
                }),
                last_seen: Some(Time(
                    Timestamp::from_second(1_800_000_000 + last_seen_secs).unwrap(),
                )),
                ..Default::default()
            };
        // 2 of 3: below minConnections. 2 of 4: 50 %.
        let s = summary(2, 3, 5, 10);
        let e = one(&alerts, &at(11), &mut mem, &sp, &s, &[]);
        assert_eq!(
            status(&e.conditions["a"], "TCPResets").as_deref(),
            Some("False FewResets")
        );
        assert_eq!(
            status(&e.conditions["a"], "OverlayLoss"),
            None,
            "in flight, not judged"
        );
        let s = summary(2, 4, 5, 10);
        let e = one(&alerts, &at(12), &mut mem, &sp, &s, &[]);
        assert_eq!(
            status(&e.conditions["a"], "TCPResets").as_deref(),
            Some("True ResetsSeen")
        );
        assert_eq!(
            status(&e.conditions["a"], "OverlayLoss").as_deref(),
            Some("True PacketsLost")
        );
        assert_eq!(e.raised.len(), 2);
        assert!(e.raised.iter().all(|r| r.transition));
        // Still True: told again (the event interval decides), not a transition.
        let stored = e.conditions["a"].clone();
        let e = one(&alerts, &at(13), &mut mem, &sp, &s, &stored);
        assert!(e.raised.iter().all(|r| !r.transition), "{:?}", e.raised);
        assert_eq!(
            find(&e.conditions["a"], "TCPResets")
                .unwrap()
                .last_transition_time,
            find(&stored, "TCPResets").unwrap().last_transition_time
        );
        // A count alert: one reset is enough.
        let by_count = AlertsSpec {
            tcp_resets: Some(TcpResetsAlert {
                count: Some(1),
                ..TcpResetsAlert::with_defaults()
            }),
            ..Default::default()
        };
        let s = summary(1, 100, 0, 10);
        let e = one(&by_count, &at(14), &mut mem, &sp, &s, &[]);
        assert_eq!(
            status(&e.conditions["a"], "TCPResets").as_deref(),
            Some("True ResetsSeen")
        );
    }

    #[test]
    fn prefixes_group_addresses() {
        let np = NewPeerAlert {
            ipv4_prefix_length: 16,
            ipv6_prefix_length: 48,
            ..Default::default()
        };
        assert_eq!(prefix("10.1.2.3", &np), "10.1.0.0/16");
        assert_eq!(prefix("2001:db8:1:2::5", &np), "2001:db8:1::/48");
        let all = NewPeerAlert {
            ipv4_prefix_length: 0,
            ..Default::default()
        };
        assert_eq!(prefix("10.1.2.3", &all), "0.0.0.0/0");
    }
}
