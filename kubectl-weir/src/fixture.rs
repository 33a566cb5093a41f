//! Synthetic clusters for the tests and the benchmark: Deployments'
//! ReplicaSets and pods, and PodFlows between them, as the List that
//! `kubectl get podflows,pods,replicasets -A -o json` prints (and as typed
//! objects, for creating them on a real API server).

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use weir_api::{
    DestinationEndpoint, PodFlow, PodFlowSpec, PodFlowStatus, Protocol, SourceEndpoint, Totals,
    VxlanCounters,
};

/// One synthetic pod: namespace, name, its Deployment, node, IP.
#[derive(Debug, Clone)]
pub struct FakePod {
    pub namespace: String,
    pub name: String,
    pub deployment: String,
    pub node: String,
    pub ip: String,
}

/// The objects of a synthetic cluster.
#[derive(Debug, Clone, Default)]
pub struct Fixture {
    pub pods: Vec<Pod>,
    pub replicasets: Vec<ReplicaSet>,
    pub podflows: Vec<PodFlow>,
}

fn owner(api_version: &str, kind: &str, name: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: format!(
            "00000000-0000-0000-0000-{:012x}",
            fnv(name) & 0xffff_ffff_ffff
        ),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A PodFlow from `src` to `dst` (a pod, or an address when `None`).
#[allow(clippy::too_many_arguments)]
pub fn podflow(
    src: &FakePod,
    dst: Option<&FakePod>,
    dst_ip: &str,
    port: u16,
    bytes: i64,
    seconds: i64,
    vni: Option<i64>,
    loss: i64,
) -> PodFlow {
    let destination = match dst {
        Some(d) => DestinationEndpoint::pod(&d.namespace, &d.name, &d.ip, &d.node, Some(port)),
        None => DestinationEndpoint::address(dst_ip, Some(port)),
    };
    let spec = PodFlowSpec {
        source: SourceEndpoint::pod(&src.namespace, &src.name, &src.ip, &src.node),
        destination,
        protocol: Protocol::Tcp,
        profile: "all".into(),
    };
    let mut pf = PodFlow::new(&spec.object_name(), spec);
    pf.metadata.namespace = Some(src.namespace.clone());
    let packets = bytes / 1000 + 1;
    let start = 1_800_000_000i64;
    pf.status = Some(PodFlowStatus {
        totals: Some(Totals::default()),
        packets: Some(packets),
        bytes: Some(bytes),
        first_seen: Some(Time(Timestamp::from_second(start).expect("a valid time"))),
        last_seen: Some(Time(
            Timestamp::from_second(start + seconds).expect("a valid time"),
        )),
        vxlan: vni.map(|vni| VxlanCounters {
            vni: Some(vni),
            outer_source: None,
            outer_destination: None,
            encap_packets: packets,
            encap_bytes: bytes,
            decap_packets: packets - loss,
            decap_bytes: bytes,
            loss_packets: Some(loss),
        }),
        tcp: None,
        conditions: Vec::new(),
        observers: Vec::new(),
    });
    pf
}

impl Fixture {
    /// Adds a Deployment's ReplicaSet and `replicas` pods spread over
    /// `nodes`; returns the pods.
    pub fn deployment(
        &mut self,
        namespace: &str,
        name: &str,
        replicas: usize,
        nodes: &[&str],
        ip_base: u32,
    ) -> Vec<FakePod> {
        let rs_name = format!("{name}-{:08x}", fnv(name) as u32);
        self.replicasets.push(ReplicaSet {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(rs_name.clone()),
                owner_references: Some(vec![owner("apps/v1", "Deployment", name)]),
                ..Default::default()
            },
            ..Default::default()
        });
        (0..replicas)
            .map(|i| {
                let p = FakePod {
                    namespace: namespace.into(),
                    name: format!("{rs_name}-{i:05}"),
                    deployment: name.into(),
                    node: nodes[i % nodes.len()].into(),
                    ip: format!(
                        "10.{}.{}.{}",
                        (ip_base >> 16) & 0xff,
                        (ip_base + i as u32) >> 8 & 0xff,
                        (ip_base + i as u32) & 0xff
                    ),
                };
                self.pods.push(Pod {
                    metadata: ObjectMeta {
                        namespace: Some(p.namespace.clone()),
                        name: Some(p.name.clone()),
                        owner_references: Some(vec![owner("apps/v1", "ReplicaSet", &rs_name)]),
                        ..Default::default()
                    },
                    ..Default::default()
                });
                p
            })
            .collect()
    }

    /// `pods` pods in `namespaces` namespaces (10 pods per Deployment on 5
    /// nodes), each talking to `peers` others (about one in ten outside the
    /// cluster); cross-node flows carry VNI 1 and about one in fifty lost
    /// packets on the overlay. Deterministic.
    pub fn scale(pods: usize, peers: usize, namespaces: usize) -> Fixture {
        let mut fx = Fixture::default();
        let nodes = ["node-0", "node-1", "node-2", "node-3", "node-4"];
        let per_ns = pods.div_ceil(namespaces);
        let mut all = Vec::new();
        for n in 0..namespaces {
            let ns = format!("team-{n:02}");
            let mut left = per_ns.min(pods - all.len());
            let mut d = 0;
            while left > 0 {
                let replicas = left.min(10);
                let base = ((n as u32) << 16) + (d as u32) * 16;
                all.extend(fx.deployment(&ns, &format!("svc-{d:02}"), replicas, &nodes, base));
                left -= replicas;
                d += 1;
            }
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (i, src) in all.iter().enumerate() {
            for k in 0..peers {
                let r = next();
                let bytes = (r % 50_000_000) as i64 + 1000;
                let seconds = (r >> 32) as i64 % 3600 + 1;
                if r % 10 == 0 {
                    let ip = format!("203.0.113.{}", (r >> 8) % 16);
                    fx.podflows
                        .push(podflow(src, None, &ip, 443, bytes, seconds, None, 0));
                    continue;
                }
                // Mostly the same namespace, sometimes another one.
                let j = if r % 4 == 0 {
                    (r >> 16) as usize % all.len()
                } else {
                    let ns_start = i - i % per_ns;
                    ns_start + ((r >> 16) as usize + k) % per_ns.min(all.len() - ns_start)
                };
                let dst = &all[j];
                let cross = src.node != dst.node;
                let loss = if cross && r % 50 == 1 {
                    (r % 20 + 1) as i64
                } else {
                    0
                };
                fx.podflows.push(podflow(
                    src,
                    Some(dst),
                    &dst.ip,
                    8080 + (k as u16 % 3),
                    bytes,
                    seconds,
                    cross.then_some(1),
                    loss,
                ));
            }
        }
        fx
    }

    /// The `kubectl get podflows,pods,replicasets -A -o json` List.
    pub fn to_list_json(&self) -> serde_json::Value {
        let mut items = Vec::new();
        for p in &self.podflows {
            items.push(serde_json::to_value(p).expect("a PodFlow serializes"));
        }
        for p in &self.pods {
            let mut v = serde_json::to_value(p).expect("a Pod serializes");
            v["apiVersion"] = "v1".into();
            v["kind"] = "Pod".into();
            items.push(v);
        }
        for r in &self.replicasets {
            let mut v = serde_json::to_value(r).expect("a ReplicaSet serializes");
            v["apiVersion"] = "apps/v1".into();
            v["kind"] = "ReplicaSet".into();
            items.push(v);
        }
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
    }
}
