//! Monotonic per-pod totals for Prometheus, built from per-flow readings.
//!
//! The flow map is an LRU: a flow can be evicted and come back from zero, so
//! summing the map would make a counter go down. Instead each read adds every
//! flow's growth since the previous read (a flow smaller than before was
//! re-created and counts from zero). Series are keyed by namespace, pod,
//! direction and VNI only — never by peer address — so their number is
//! bounded by local pods × 2 directions × (VNIs + 1), and capped at
//! `max_series` beyond which growth lands in one `_overflow` series rather
//! than being dropped.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use super::join::PodFlowView;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub namespace: String,
    pub pod: String,
    pub direction: &'static str,
    /// Empty for traffic that stayed on the node.
    pub vni: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

type FlowIdentity = (u32, &'static str, u8, IpAddr, u16, IpAddr, u16);

#[derive(Debug)]
pub struct Totals {
    last: HashMap<FlowIdentity, Count>,
    series: BTreeMap<SeriesKey, Count>,
    max_series: usize,
}

pub const OVERFLOW_POD: &str = "_overflow";

impl Totals {
    pub fn new(max_series: usize) -> Self {
        Self {
            last: HashMap::new(),
            series: BTreeMap::new(),
            max_series: max_series.max(1),
        }
    }

    pub fn update(&mut self, views: &[PodFlowView]) {
        let mut seen = HashMap::with_capacity(views.len());
        for view in views {
            let id = (
                view.pod_id,
                view.direction,
                view.protocol,
                view.source,
                view.source_port,
                view.destination,
                view.destination_port,
            );
            let now = Count {
                packets: view.packets,
                bytes: view.bytes,
            };
            let before = self.last.get(&id).copied().unwrap_or_default();
            let grew = if now.packets >= before.packets && now.bytes >= before.bytes {
                Count {
                    packets: now.packets - before.packets,
                    bytes: now.bytes - before.bytes,
                }
            } else {
                now
            };
            seen.insert(id, now);
            if grew == Count::default() {
                continue;
            }
            let mut key = SeriesKey {
                namespace: view.namespace.clone().unwrap_or_default(),
                pod: view.pod.clone(),
                direction: view.direction,
                vni: view
                    .overlay
                    .as_ref()
                    .map(|o| o.vni.to_string())
                    .unwrap_or_default(),
            };
            if !self.series.contains_key(&key) && self.series.len() + 1 >= self.max_series {
                key = SeriesKey {
                    namespace: String::new(),
                    pod: OVERFLOW_POD.into(),
                    direction: "any",
                    vni: String::new(),
                };
            }
            let total = self.series.entry(key).or_default();
            total.packets += grew.packets;
            total.bytes += grew.bytes;
        }
        // Flows gone from the map are gone for good; keep the baseline bounded.
        self.last = seen;
    }

    pub fn series(&self) -> &BTreeMap<SeriesKey, Count> {
        &self.series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(pod: &str, sport: u16, packets: u64) -> PodFlowView {
        PodFlowView {
            pod_id: 1,
            namespace: Some("shop".into()),
            pod: pod.into(),
            direction: "egress",
            protocol: 6,
            source: "10.0.0.1".parse().unwrap(),
            source_port: sport,
            destination: "10.0.0.2".parse().unwrap(),
            destination_port: 80,
            packets,
            bytes: packets * 10,
            first_seen_ns: 0,
            last_seen_ns: 0,
            tcp_flags: 0,
            peer: None,
            overlay: None,
        }
    }

    fn total(t: &Totals, pod: &str) -> Count {
        t.series()
            .iter()
            .find(|(k, _)| k.pod == pod)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }

    #[test]
    fn totals_only_grow_across_evictions_and_restarts_of_a_flow() {
        let mut t = Totals::new(100);
        t.update(&[view("a", 1, 5)]);
        t.update(&[view("a", 1, 8)]);
        assert_eq!(
            total(&t, "a"),
            Count {
                packets: 8,
                bytes: 80
            }
        );
        // Evicted and re-created from zero: its 3 new packets still count.
        t.update(&[view("a", 1, 3)]);
        assert_eq!(total(&t, "a").packets, 11);
        // Gone from the map, then back: counted from zero again.
        t.update(&[]);
        t.update(&[view("a", 1, 2)]);
        assert_eq!(total(&t, "a").packets, 13);
    }

    #[test]
    fn series_are_capped_into_an_overflow_series_without_losing_counts() {
        let mut t = Totals::new(3);
        t.update(&[
            view("a", 1, 1),
            view("b", 1, 2),
            view("c", 1, 4),
            view("d", 1, 8),
        ]);
        assert_eq!(t.series().len(), 3);
        assert_eq!(
            total(&t, "a").packets + total(&t, "b").packets + total(&t, OVERFLOW_POD).packets,
            15
        );
    }
}
