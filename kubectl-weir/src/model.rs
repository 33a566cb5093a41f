//! What the plugin computes with: flows read from PodFlows, and the
//! inventory (pods and ReplicaSets) that names each pod's workload.

use std::collections::HashMap;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use weir_api::PodFlow;

/// One end of a flow as a PodFlow names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct End {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub ip: String,
    pub node: Option<String>,
}

/// One conversation, with the numbers the views need.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    /// The PodFlow's namespace (the profile's).
    pub namespace: String,
    pub name: String,
    pub source: End,
    pub destination: End,
    pub protocol: String,
    pub port: Option<i32>,
    /// Both directions.
    pub packets: u64,
    pub bytes: u64,
    /// Seconds since the Unix epoch.
    pub first_seen: Option<f64>,
    pub last_seen: Option<f64>,
    pub vni: Option<i64>,
    /// Overlay loss (encap − decap), packets.
    pub loss_packets: u64,
}

fn seconds(t: &Option<Time>) -> Option<f64> {
    t.as_ref().map(|t| t.0.as_millisecond() as f64 / 1000.0)
}

fn count(v: Option<i64>) -> u64 {
    v.map(|v| v.max(0) as u64).unwrap_or(0)
}

impl Flow {
    /// The numbers of a PodFlow: its status summary when the controller has
    /// written one, else the busiest observer's entry.
    pub fn from_podflow(pf: &PodFlow) -> Flow {
        let spec = &pf.spec;
        let status = pf.status.clone().unwrap_or_default();
        let (mut packets, mut bytes) = (count(status.packets), count(status.bytes));
        let (mut first, mut last) = (seconds(&status.first_seen), seconds(&status.last_seen));
        if status.packets.is_none() && status.bytes.is_none() {
            // No summary yet: the busiest observer's view.
            if let Some(o) = status
                .observers
                .iter()
                .max_by_key(|o| o.forward.bytes.saturating_add(o.reverse.bytes))
            {
                packets = count(Some(o.forward.packets.saturating_add(o.reverse.packets)));
                bytes = count(Some(o.forward.bytes.saturating_add(o.reverse.bytes)));
                first = seconds(&o.first_seen);
                last = seconds(&o.last_seen);
            }
        }
        let vxlan = status
            .vxlan
            .clone()
            .or_else(|| status.observers.iter().find_map(|o| o.vxlan.clone()));
        Flow {
            namespace: pf.metadata.namespace.clone().unwrap_or_default(),
            name: pf.metadata.name.clone().unwrap_or_default(),
            source: End {
                namespace: spec.source.namespace.clone(),
                pod: spec.source.pod.clone(),
                ip: spec.source.ip.clone(),
                node: spec.source.node.clone(),
            },
            destination: End {
                namespace: spec.destination.namespace.clone(),
                pod: spec.destination.pod.clone(),
                ip: spec.destination.ip.clone(),
                node: spec.destination.node.clone(),
            },
            protocol: spec.protocol.as_str().to_owned(),
            port: spec.destination.port,
            packets,
            bytes,
            first_seen: first,
            last_seen: last,
            vni: vxlan.as_ref().and_then(|v| v.vni),
            loss_packets: count(vxlan.as_ref().and_then(|v| v.loss_packets)),
        }
    }

    /// Bytes per second over the flow's lifetime (lastSeen − firstSeen, at
    /// least one second so a single burst does not read as infinite).
    pub fn rate(&self) -> f64 {
        let span = match (self.first_seen, self.last_seen) {
            (Some(f), Some(l)) => (l - f).max(1.0),
            _ => 1.0,
        };
        self.bytes as f64 / span
    }

    /// Whether the two ends sit on different nodes (the overlay carried it).
    pub fn cross_node(&self) -> bool {
        match (&self.source.node, &self.destination.node) {
            (Some(a), Some(b)) => a != b,
            _ => self.vni.is_some(),
        }
    }
}

/// What a workload is called: a controller (`Deployment`, `StatefulSet`,
/// `DaemonSet`, `Job`, a bare `ReplicaSet`), a pod without one, or an
/// address that is no pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    Controller {
        namespace: String,
        kind: String,
        name: String,
    },
    Pod {
        namespace: String,
        name: String,
    },
    Address(String),
}

impl Workload {
    /// The namespace the workload is drawn in (`None` for an address).
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Workload::Controller { namespace, .. } | Workload::Pod { namespace, .. } => {
                Some(namespace)
            }
            Workload::Address(_) => None,
        }
    }

    /// A stable identifier: `ns/Kind/name`, `ns/Pod/name`, or the address.
    pub fn id(&self) -> String {
        match self {
            Workload::Controller {
                namespace,
                kind,
                name,
            } => format!("{namespace}/{kind}/{name}"),
            Workload::Pod { namespace, name } => format!("{namespace}/Pod/{name}"),
            Workload::Address(ip) => ip.clone(),
        }
    }

    /// The short label drawn on the node: `deploy/cart`, `pod/x`, the IP.
    pub fn label(&self) -> String {
        match self {
            Workload::Controller { kind, name, .. } => {
                let short = match kind.as_str() {
                    "Deployment" => "deploy",
                    "StatefulSet" => "sts",
                    "DaemonSet" => "ds",
                    "ReplicaSet" => "rs",
                    "Job" => "job",
                    "CronJob" => "cronjob",
                    other => other,
                };
                format!("{short}/{name}")
            }
            Workload::Pod { name, .. } => format!("pod/{name}"),
            Workload::Address(ip) => ip.clone(),
        }
    }
}

/// The pods and ReplicaSets the owner chain is read from.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    /// (namespace, pod) → the pod's controller owner.
    pods: HashMap<(String, String), Option<(String, String)>>,
    /// (namespace, ReplicaSet) → its controller owner.
    replicasets: HashMap<(String, String), Option<(String, String)>>,
}

fn controller_of(refs: Option<&Vec<OwnerReference>>) -> Option<(String, String)> {
    let refs = refs?;
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
        .map(|r| (r.kind.clone(), r.name.clone()))
}

impl Inventory {
    pub fn new(pods: &[Pod], replicasets: &[ReplicaSet]) -> Inventory {
        let mut inv = Inventory::default();
        for p in pods {
            inv.add_pod(p);
        }
        for rs in replicasets {
            inv.add_replicaset(rs);
        }
        inv
    }

    pub fn add_pod(&mut self, p: &Pod) {
        let (Some(ns), Some(name)) = (&p.metadata.namespace, &p.metadata.name) else {
            return;
        };
        self.pods.insert(
            (ns.clone(), name.clone()),
            controller_of(p.metadata.owner_references.as_ref()),
        );
    }

    pub fn add_replicaset(&mut self, rs: &ReplicaSet) {
        let (Some(ns), Some(name)) = (&rs.metadata.namespace, &rs.metadata.name) else {
            return;
        };
        self.replicasets.insert(
            (ns.clone(), name.clone()),
            controller_of(rs.metadata.owner_references.as_ref()),
        );
    }

    /// The workload of one end: Pod → ReplicaSet → Deployment (or the
    /// ReplicaSet when it has no owner), StatefulSet, DaemonSet, Job; else
    /// the pod itself. A pod weir recorded without a namespace, or a pod
    /// that is gone, stays a pod; an address stays an address.
    pub fn workload(&self, end: &End) -> Workload {
        let (Some(ns), Some(pod)) = (&end.namespace, &end.pod) else {
            return match &end.pod {
                Some(pod) => Workload::Pod {
                    namespace: String::new(),
                    name: pod.clone(),
                },
                None => Workload::Address(end.ip.clone()),
            };
        };
        let owner = self.pods.get(&(ns.clone(), pod.clone())).cloned().flatten();
        match owner {
            Some((kind, name)) if kind == "ReplicaSet" => {
                match self
                    .replicasets
                    .get(&(ns.clone(), name.clone()))
                    .cloned()
                    .flatten()
                {
                    Some((kind, name)) => Workload::Controller {
                        namespace: ns.clone(),
                        kind,
                        name,
                    },
                    None => Workload::Controller {
                        namespace: ns.clone(),
                        kind: "ReplicaSet".into(),
                        name,
                    },
                }
            }
            Some((kind, name)) => Workload::Controller {
                namespace: ns.clone(),
                kind,
                name,
            },
            None => Workload::Pod {
                namespace: ns.clone(),
                name: pod.clone(),
            },
        }
    }
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", UNITS[0])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// A rate in bytes per second: `1.5 KiB/s`.
pub fn human_rate(r: f64) -> String {
    format!("{}/s", human_bytes(r))
}

/// Counts with SI suffixes: `950`, `12.3k`, `4.0M`.
pub fn human_count(n: f64) -> String {
    if n < 1000.0 {
        format!("{n:.0}")
    } else if n < 1e6 {
        format!("{:.1}k", n / 1e3)
    } else if n < 1e9 {
        format!("{:.1}M", n / 1e6)
    } else {
        format!("{:.1}G", n / 1e9)
    }
}

/// Parses `30s`, `5m`, `2h`, `1d`, `500ms` (or plain seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 5m, 1h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    pub fn owner(kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    pub fn pod(ns: &str, name: &str, owner_ref: Option<OwnerReference>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                owner_references: owner_ref.map(|o| vec![o]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    pub fn rs(ns: &str, name: &str, owner_ref: Option<OwnerReference>) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                owner_references: owner_ref.map(|o| vec![o]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn end(ns: Option<&str>, pod: Option<&str>, ip: &str) -> End {
        End {
            namespace: ns.map(Into::into),
            pod: pod.map(Into::into),
            ip: ip.into(),
            node: None,
        }
    }

    #[test]
    fn owner_chain_names_the_workload() {
        let inv = Inventory::new(
            &[
                pod("shop", "cart-7d-abc", Some(owner("ReplicaSet", "cart-7d"))),
                pod("shop", "db-0", Some(owner("StatefulSet", "db"))),
                pod("kube-system", "proxy-x", Some(owner("DaemonSet", "proxy"))),
                pod("shop", "lonely", None),
                pod("shop", "bare-rs-1", Some(owner("ReplicaSet", "bare"))),
            ],
            &[
                rs("shop", "cart-7d", Some(owner("Deployment", "cart"))),
                rs("shop", "bare", None),
            ],
        );
        let w = |ns, p| inv.workload(&end(Some(ns), Some(p), "10.0.0.1")).id();
        assert_eq!(w("shop", "cart-7d-abc"), "shop/Deployment/cart");
        assert_eq!(w("shop", "db-0"), "shop/StatefulSet/db");
        assert_eq!(w("kube-system", "proxy-x"), "kube-system/DaemonSet/proxy");
        assert_eq!(w("shop", "lonely"), "shop/Pod/lonely");
        assert_eq!(w("shop", "bare-rs-1"), "shop/ReplicaSet/bare");
        assert_eq!(w("shop", "gone"), "shop/Pod/gone");
        assert_eq!(inv.workload(&end(None, None, "1.2.3.4")).id(), "1.2.3.4");
        assert_eq!(
            inv.workload(&end(None, Some("podman-pod"), "10.1.1.1"))
                .label(),
            "pod/podman-pod"
        );
    }

    #[test]
    fn units_and_durations() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_rate(3.0 * 1024.0 * 1024.0), "3.0 MiB/s");
        assert_eq!(human_count(12_345.0), "12.3k");
        assert_eq!(parse_duration("5m").unwrap().as_secs(), 300);
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }
}
