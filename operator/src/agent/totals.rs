//! Monotonic per-pod totals for Prometheus, built from per-flow readings.
//!
//! The flow map is an LRU: a flow can be evicted and come back from zero, so
//! summing the map would make a counter go down. Instead each read adds every
//! flow's growth since the previous read (a flow smaller than before was
//! re-created and counts from zero); the agent's flow table
//! ([`super::table`]) keeps the previous reading and hands the growth here.
//! Series are keyed by namespace, pod, direction and VNI only — never by peer
//! address — so their number is bounded by local pods × 2 directions ×
//! (VNIs + 1), and capped at `max_series` beyond which growth lands in one
//! `_overflow` series rather than being dropped.

use std::collections::BTreeMap;

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

#[derive(Debug)]
pub struct Totals {
    series: BTreeMap<SeriesKey, Count>,
    max_series: usize,
}

pub const OVERFLOW_POD: &str = "_overflow";

impl Totals {
    pub fn new(max_series: usize) -> Self {
        Self {
            series: BTreeMap::new(),
            max_series: max_series.max(1),
        }
    }

    /// Adds growth to a series; a series that would pass the cap is not
    /// created and its growth goes to the overflow series.
    pub fn add(&mut self, mut key: SeriesKey, grew: Count) {
        if grew == Count::default() {
            return;
        }
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

    pub fn series(&self) -> &BTreeMap<SeriesKey, Count> {
        &self.series
    }

    /// The count of `pod`'s first series (tests look one up by pod).
    #[cfg(test)]
    pub(crate) fn pod_total(&self, pod: &str) -> Count {
        self.series
            .iter()
            .find(|(k, _)| k.pod == pod)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pod: &str) -> SeriesKey {
        SeriesKey {
            namespace: "shop".into(),
            pod: pod.into(),
            direction: "egress",
            vni: String::new(),
        }
    }

    #[test]
    fn series_are_capped_into_an_overflow_series_without_losing_counts() {
        let mut t = Totals::new(3);
        for (pod, packets) in [("a", 1), ("b", 2), ("c", 4), ("d", 8)] {
            t.add(
                key(pod),
                Count {
                    packets,
                    bytes: packets * 10,
                },
            );
        }
        assert_eq!(t.series().len(), 3);
        assert_eq!(
            t.pod_total("a").packets + t.pod_total("b").packets + t.pod_total(OVERFLOW_POD).packets,
            15
        );
        t.add(key("zero"), Count::default());
        assert_eq!(t.series().len(), 3, "no growth, no series");
    }
}
