//! Prometheus exposition (OpenMetrics text) of the latest collection.
//!
//! Every value is computed at collection time and only rendered here, so a
//! scrape never touches the kernel maps.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::totals::{Count, SeriesKey};

/// What the last collection found, as the metrics show it.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    pub pod_series: Vec<(SeriesKey, Count)>,
    pub active_pod_flows: u64,
    pub active_overlay_flows: u64,
    /// (map, kind, value): failed updates and derived LRU evictions.
    pub map_pressure: Vec<(&'static str, &'static str, u64)>,
    /// (source, value)
    pub events_lost: Vec<(&'static str, u64)>,
    /// (vni, direction, count)
    pub vxlan_by_vni: Vec<(u32, &'static str, Count)>,
    /// (interface, direction, count)
    pub vxlan_by_interface: Vec<(String, &'static str, Count)>,
    pub collection_seconds: f64,
    pub collections: u64,
    pub collection_errors: u64,
}

pub type Shared = Arc<Mutex<MetricsSnapshot>>;

#[derive(Debug)]
struct SnapshotCollector(Shared);

pub fn registry(shared: Shared) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(shared)));
    registry
}

pub fn render(registry: &Registry) -> String {
    crate::http::render(registry)
}

type Labels = Vec<(&'static str, String)>;

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let probe = ConstCounter::new(0u64);
    let mut family = encoder.encode_descriptor(name, help, None, probe.metric_type())?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let probe = ConstGauge::new(0f64);
    let mut family = encoder.encode_descriptor(name, help, None, probe.metric_type())?;
    for (labels, value) in rows {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Rendered under the lock (held for no await) rather than from a copy.
        let s = self.0.lock().expect("metrics snapshot lock");
        let pod_labels = |k: &SeriesKey| -> Labels {
            vec![
                ("namespace", k.namespace.clone()),
                ("pod", k.pod.clone()),
                ("direction", k.direction.to_string()),
                ("vni", k.vni.clone()),
            ]
        };
        let rows: Vec<(Labels, u64)> = s
            .pod_series
            .iter()
            .map(|(k, c)| (pod_labels(k), c.packets))
            .collect();
        counters(
            &mut encoder,
            "weir_pod_packets",
            "Wire packets of observed pods, by direction and VXLAN VNI (empty: stayed on the node).",
            &rows,
        )?;
        let rows: Vec<(Labels, u64)> = s
            .pod_series
            .iter()
            .map(|(k, c)| (pod_labels(k), c.bytes))
            .collect();
        counters(
            &mut encoder,
            "weir_pod_bytes",
            "Wire bytes of observed pods, by direction and VXLAN VNI.",
            &rows,
        )?;
        gauge(
            &mut encoder,
            "weir_active_flows",
            "Flows currently in the node's flow maps.",
            &[
                (vec![("source", "pods".into())], s.active_pod_flows as f64),
                (
                    vec![("source", "overlay".into())],
                    s.active_overlay_flows as f64,
                ),
            ],
        )?;
        let rows: Vec<(Labels, u64)> = s
            .map_pressure
            .iter()
            .map(|(map, kind, v)| {
                (
                    vec![("map", map.to_string()), ("kind", kind.to_string())],
                    *v,
                )
            })
            .collect();
        counters(
            &mut encoder,
            "weir_map_pressure",
            "Flows not recorded because a map was full (update_failed) or pushed out by newer ones (lru_evicted).",
            &rows,
        )?;
        let rows: Vec<(Labels, u64)> = s
            .events_lost
            .iter()
            .map(|(src, v)| (vec![("source", src.to_string())], *v))
            .collect();
        counters(
            &mut encoder,
            "weir_ring_events_lost",
            "New-flow events dropped because the ring buffer was full.",
            &rows,
        )?;
        let vni_labels = |vni: &u32, dir: &&str| -> Labels {
            vec![("vni", vni.to_string()), ("direction", dir.to_string())]
        };
        let rows: Vec<(Labels, u64)> = s
            .vxlan_by_vni
            .iter()
            .map(|(vni, dir, c)| (vni_labels(vni, dir), c.packets))
            .collect();
        counters(
            &mut encoder,
            "weir_vxlan_packets",
            "VXLAN wire packets on the underlay by VNI; encap = sent, decap = received.",
            &rows,
        )?;
        let rows: Vec<(Labels, u64)> = s
            .vxlan_by_vni
            .iter()
            .map(|(vni, dir, c)| (vni_labels(vni, dir), c.bytes))
            .collect();
        counters(
            &mut encoder,
            "weir_vxlan_bytes",
            "VXLAN wire bytes on the underlay by VNI.",
            &rows,
        )?;
        let if_labels = |name: &String, dir: &&str| -> Labels {
            vec![("interface", name.clone()), ("direction", dir.to_string())]
        };
        let rows: Vec<(Labels, u64)> = s
            .vxlan_by_interface
            .iter()
            .map(|(n, dir, c)| (if_labels(n, dir), c.packets))
            .collect();
        counters(
            &mut encoder,
            "weir_vxlan_interface_packets",
            "VXLAN wire packets by underlay interface.",
            &rows,
        )?;
        let rows: Vec<(Labels, u64)> = s
            .vxlan_by_interface
            .iter()
            .map(|(n, dir, c)| (if_labels(n, dir), c.bytes))
            .collect();
        counters(
            &mut encoder,
            "weir_vxlan_interface_bytes",
            "VXLAN wire bytes by underlay interface.",
            &rows,
        )?;
        gauge(
            &mut encoder,
            "weir_collection_duration_seconds",
            "How long the last read of the node's maps took.",
            &[(vec![], s.collection_seconds)],
        )?;
        counters(
            &mut encoder,
            "weir_collections",
            "Reads of the node's maps.",
            &[(vec![], s.collections)],
        )?;
        counters(
            &mut encoder,
            "weir_collection_errors",
            "Reads of the node's maps that failed.",
            &[(vec![], s.collection_errors)],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_labelled_counters_and_eof() {
        let shared: Shared = Default::default();
        {
            let mut s = shared.lock().unwrap();
            s.pod_series.push((
                SeriesKey {
                    namespace: "shop".into(),
                    pod: "cart".into(),
                    direction: "egress",
                    vni: "1".into(),
                },
                Count {
                    packets: 7,
                    bytes: 700,
                },
            ));
            s.vxlan_by_vni.push((
                1,
                "encap",
                Count {
                    packets: 3,
                    bytes: 450,
                },
            ));
            s.events_lost.push(("pods", 2));
        }
        let text = render(&registry(shared));
        assert!(text.contains(r#"weir_pod_packets_total{namespace="shop",pod="cart",direction="egress",vni="1"} 7"#), "{text}");
        assert!(text.contains(r#"weir_pod_bytes_total{namespace="shop",pod="cart",direction="egress",vni="1"} 700"#), "{text}");
        assert!(
            text.contains(r#"weir_vxlan_bytes_total{vni="1",direction="encap"} 450"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_ring_events_lost_total{source="pods"} 2"#),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
